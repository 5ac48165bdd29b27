//! Chat templates: the model's own Jinja template (`tokenizer.chat_template` in the GGUF metadata
//! or `tokenizer_config.json` beside the model), rendered the way Hugging Face renders it, with a
//! fallback chosen from the model's special tokens when it ships none.

use std::path::Path;

use minijinja::{Environment, Error, ErrorKind, Value, context};
use serde::{Deserialize, Serialize};

use super::InferenceError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role,
            content: content.into(),
        }
    }
}

const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
const LLAMA3: &str = "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";
/// Gemma has no system role: the system text opens the first user turn.
const GEMMA: &str = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first_user_prefix = messages[0]['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}{% for message in loop_messages %}{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else 'user') + '\n' + (first_user_prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}";
const PHI3: &str = "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}";

/// Tokens that end an assistant turn in the common template families.
pub const END_OF_TURN_TOKENS: [&str; 6] = [
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
];

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// Where the template came from, for logs and `models list`.
    pub source: &'static str,
}

impl ChatTemplate {
    /// `template` is the model's own, if it has one; `has_token` tells which special tokens the
    /// vocabulary has, to choose a fallback.
    pub fn new(
        template: Option<String>,
        has_token: impl Fn(&str) -> bool,
        bos_token: String,
        eos_token: String,
    ) -> Result<ChatTemplate, InferenceError> {
        let (source, text) = match template {
            Some(text) => ("model", text),
            None => {
                let fallback = if has_token("<|start_header_id|>") {
                    LLAMA3
                } else if has_token("<start_of_turn>") {
                    GEMMA
                } else if has_token("<|assistant|>") && has_token("<|end|>") {
                    PHI3
                } else {
                    CHATML
                };
                ("fallback", fallback.to_string())
            }
        };
        let mut env = Environment::new();
        // The settings transformers uses for chat templates.
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .expect("default delimiters are valid"),
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned("chat", text).map_err(|e| {
            InferenceError::Template(format!("the chat template does not parse: {e}"))
        })?;
        Ok(ChatTemplate {
            env,
            bos_token,
            eos_token,
            source,
        })
    }

    /// Renders the conversation, ending with the assistant's turn opened.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, InferenceError> {
        let template = self.env.get_template("chat").expect("added in new");
        template
            .render(context! {
                messages => Value::from(minijinja::value::Serde(messages)),
                add_generation_prompt => true,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
                tools => Value::from(()),
            })
            .map_err(|e| InferenceError::Template(format!("cannot render the chat template: {e}")))
    }
}

/// Reads `chat_template` from `tokenizer_config.json` beside the model, if there is one.
pub fn template_beside(model_path: &Path) -> Option<String> {
    let path = model_path.with_file_name("tokenizer_config.json");
    let text = std::fs::read_to_string(path).ok()?;
    let config: serde_json::Value = serde_json::from_str(&text).ok()?;
    match &config["chat_template"] {
        serde_json::Value::String(template) => Some(template.clone()),
        // Some models ship a list of named templates; "default" is the chat one.
        serde_json::Value::Array(named) => named
            .iter()
            .find(|t| t["name"] == "default")
            .and_then(|t| t["template"].as_str())
            .map(str::to_string),
        _ => None,
    }
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// `strftime_now(format)`, which Llama 3.x templates call for today's date.
fn strftime_now(format: String) -> String {
    let now = time::OffsetDateTime::now_utc();
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{:02}", now.day())),
            Some('m') => out.push_str(&format!("{:02}", u8::from(now.month()))),
            Some('Y') => out.push_str(&now.year().to_string()),
            Some('b') => out.push_str(&now.month().to_string()[..3]),
            Some('B') => out.push_str(&now.month().to_string()),
            Some('H') => out.push_str(&format!("{:02}", now.hour())),
            Some('M') => out.push_str(&format!("{:02}", now.minute())),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation() -> Vec<ChatMessage> {
        vec![
            ChatMessage::new(Role::System, "Be kind."),
            ChatMessage::new(Role::User, "Hi!"),
        ]
    }

    #[test]
    fn renders_a_model_template_with_python_methods_and_trimmed_blocks() {
        let template = "{% for m in messages %}\n{{ m['role'].upper() }}: {{ m.content.strip() }}\n{% endfor %}";
        let chat = ChatTemplate::new(
            Some(template.into()),
            |_| false,
            "<s>".into(),
            "</s>".into(),
        )
        .unwrap();
        assert_eq!(chat.source, "model");
        assert_eq!(
            chat.render(&conversation()).unwrap(),
            "SYSTEM: Be kind.\nUSER: Hi!\n"
        );
    }

    #[test]
    fn falls_back_by_the_special_tokens_the_model_has() {
        let chatml =
            ChatTemplate::new(None, |t| t == "<|im_start|>", "".into(), "".into()).unwrap();
        assert_eq!(
            chatml.render(&conversation()).unwrap(),
            "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
        );
        let llama3 = ChatTemplate::new(
            None,
            |t| t == "<|start_header_id|>",
            "<|begin_of_text|>".into(),
            "".into(),
        )
        .unwrap();
        let text = llama3.render(&conversation()).unwrap();
        assert!(
            text.starts_with(
                "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe kind.<|eot_id|>"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("<|start_header_id|>assistant<|end_header_id|>\n\n"),
            "{text}"
        );
        let gemma =
            ChatTemplate::new(None, |t| t == "<start_of_turn>", "<bos>".into(), "".into()).unwrap();
        assert_eq!(
            gemma.render(&conversation()).unwrap(),
            "<bos><start_of_turn>user\nBe kind.\n\nHi!<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn a_template_can_refuse_a_conversation() {
        let template = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversations must start with a user turn') }}{% endif %}";
        let chat =
            ChatTemplate::new(Some(template.into()), |_| false, "".into(), "".into()).unwrap();
        let error = chat.render(&conversation()).unwrap_err().to_string();
        assert!(error.contains("must start with a user turn"), "{error}");
    }
}
