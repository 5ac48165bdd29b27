//! One turn of a conversation: store the question, retrieve passages, either say "I don't know"
//! (nothing relevant) or generate a grounded answer, then align its citations, score its
//! confidence and store it.

use std::time::{Duration, Instant};

use serde_json::json;

use super::citations::{self, Aligned, Embeddings};
use super::coach::{self, Coach};
use super::conversations::{self, Access, Message, NewMessage, Speaker};
use super::pii;
use super::{Chat, ChatError};
use crate::inference::chat_engine::{ChatRequest, ChatStream, ChatSummary};
use crate::inference::chat_template::{ChatMessage, Role};
use crate::inference::embed::EmbedKind;
use crate::inference::generate::GenerationSettings;
use crate::knowledge::search::{SearchHit, SearchMode, SearchRequest};

/// Passages put in the prompt.
pub const PASSAGES: usize = 3;
/// Prompt budget, in characters (about four per token): passages and history are cut to fit so
/// that prefill, which dominates the time to first token on a CPU, stays around 700 tokens.
pub const PASSAGE_CHARS: usize = 1800;
pub const HISTORY_CHARS: usize = 900;
/// Most earlier messages read for the prompt (their text is then cut to `HISTORY_CHARS`).
const HISTORY_MESSAGES: u32 = 12;
/// Longest end-user message.
pub const MAX_MESSAGE_CHARS: usize = 4000;
/// How long one answer may take before generation stops.
const ANSWER_DEADLINE: Duration = Duration::from_secs(120);
/// Added to the creator's fallback message.
pub const HANDOFF_OFFER: &str =
    "If you like, I can pass your question on to the team so a person can get back to you.";

/// A turn ready to be answered.
pub struct Prepared {
    pub speaker: Speaker,
    pub conversation_id: String,
    pub coach: Coach,
    /// The question as logged and recorded in knowledge gaps (personal data masked).
    pub masked_question: String,
    pub passages: Vec<SearchHit>,
    pub retrieval_score: f32,
    pub reply: Reply,
    pub started: Instant,
}

pub enum Reply {
    /// Nothing in the knowledge base is relevant enough: the fallback, without the model.
    Fallback,
    /// The model's answer, as it is generated.
    Generate(ChatStream),
}

impl Chat {
    /// Stores the visitor's message and starts the answer. Errors that the client must see as
    /// a status (no model, queue full) happen here, before any streaming starts.
    pub async fn prepare(
        &self,
        speaker: Speaker,
        conversation_id: &str,
        content: &str,
    ) -> Result<Prepared, ChatError> {
        let started = Instant::now();
        let content = content.trim();
        if content.is_empty() || content.chars().count() > MAX_MESSAGE_CHARS {
            return Err(ChatError::Invalid(format!(
                "a message needs 1 to {MAX_MESSAGE_CHARS} characters"
            )));
        }
        let masked = pii::mask(content);
        let (history, coach, stored_question) = {
            let (speaker, id, content, masked_text) = (
                speaker.clone(),
                conversation_id.to_string(),
                content.to_string(),
                masked.text.clone(),
            );
            self.db
                .call(move |c| {
                    conversations::open(c, &speaker, &id, Access::Write)?;
                    let coach = coach::get(c, speaker.scope())?;
                    // Only what the history budget can hold is read, however long the conversation.
                    let history =
                        conversations::recent_messages(c, speaker.scope(), &id, HISTORY_MESSAGES)?;
                    // The creator chose whether personal data reaches the model (and storage).
                    let question = if coach.redact_pii {
                        masked_text
                    } else {
                        content
                    };
                    conversations::add_message(
                        c,
                        speaker.scope(),
                        &id,
                        &NewMessage {
                            role: "user",
                            content: &question,
                            citations: &[],
                            confidence: None,
                            fallback: false,
                            stats: None,
                        },
                    )?;
                    Ok::<_, ChatError>((history, coach, question))
                })
                .await?
        };
        tracing::info!(
            conversation = %conversation_id,
            question = %masked.text,
            personal_data = ?masked.kinds,
            "question"
        );
        let query = retrieval_query(&stored_question, &history);
        let passages = self
            .knowledge
            .search(
                speaker.scope(),
                SearchRequest {
                    query,
                    limit: Some(PASSAGES),
                    mode: SearchMode::Hybrid,
                },
            )
            .await?
            .results;
        let retrieval_score = passages.first().map(|p| p.score).unwrap_or(0.0);
        let reply = if passages.is_empty() || (retrieval_score as f64) < coach.confidence_threshold
        {
            Reply::Fallback
        } else {
            let engine = self.inference.chat()?;
            let messages = prompt(&coach, &passages, &history, &stored_question);
            let mut settings = GenerationSettings::greedy(coach.answer_length.max_tokens());
            if coach.temperature > 0.0 {
                settings.temperature = coach.temperature;
                settings.top_p = Some(0.9);
            }
            Reply::Generate(engine.chat(
                speaker.scope().tenant_id(),
                ChatRequest {
                    messages,
                    settings,
                    deadline: Some(Instant::now() + ANSWER_DEADLINE),
                },
            )?)
        };
        Ok(Prepared {
            speaker,
            conversation_id: conversation_id.to_string(),
            coach,
            masked_question: masked.text,
            passages,
            retrieval_score,
            reply,
            started,
        })
    }

    /// The fallback's text, for streaming it like an answer.
    pub fn fallback_text(coach: &Coach) -> String {
        format!("{} {HANDOFF_OFFER}", coach.fallback_message.trim_end())
    }

    /// Aligns citations, scores confidence, stores the answer (or the fallback, with a
    /// knowledge gap) and returns the stored message. `generated` is `None` for a fallback.
    pub async fn finish(
        &self,
        prepared: Prepared,
        generated: Option<(String, ChatSummary)>,
    ) -> Result<Message, ChatError> {
        let Prepared {
            speaker,
            conversation_id,
            coach,
            masked_question,
            passages,
            retrieval_score,
            started,
            ..
        } = prepared;
        let mut stats = json!({
            "retrieval_score": retrieval_score,
            "passages": passages.len(),
        });
        let (content, citations, confidence, fallback) = match generated {
            None => (
                Chat::fallback_text(&coach),
                Vec::new(),
                0.5 * retrieval_score,
                true,
            ),
            Some((answer, summary)) => {
                let embeddings = self.embed_for_alignment(&speaker, &answer, &passages).await;
                let Aligned {
                    text,
                    citations,
                    support,
                    model_markers_correct,
                } = citations::align(&answer, &passages, embeddings.as_ref());
                let confidence = (0.5 * retrieval_score + 0.5 * support).clamp(0.0, 1.0);
                stats["support"] = json!(support);
                stats["model_markers_correct"] = json!(model_markers_correct);
                stats["ttft_s"] = json!(summary.stats.ttft_s);
                stats["prompt_tokens"] = json!(summary.stats.prompt_tokens);
                stats["completion_tokens"] = json!(summary.stats.completion_tokens);
                stats["raw_answer"] = json!(answer);
                // An answer that no passage supports is not grounded, whatever retrieval scored.
                let grounded = !citations.is_empty();
                if (confidence as f64) < coach.confidence_threshold || !grounded {
                    (Chat::fallback_text(&coach), Vec::new(), confidence, true)
                } else {
                    (text, citations, confidence, false)
                }
            }
        };
        stats["total_s"] = json!(started.elapsed().as_secs_f64());
        let confidence = ((confidence as f64) * 1000.0).round() / 1000.0;
        self.db
            .call(move |c| {
                let scope = speaker.scope();
                let message = conversations::add_message(
                    c,
                    scope,
                    &conversation_id,
                    &NewMessage {
                        role: "assistant",
                        content: &content,
                        citations: &citations,
                        confidence: Some(confidence),
                        fallback,
                        stats: Some(stats),
                    },
                )?;
                if fallback {
                    conversations::record_gap(
                        c,
                        scope,
                        &conversation_id,
                        &message.id,
                        &masked_question,
                        retrieval_score as f64,
                    )?;
                }
                Ok::<_, ChatError>(message)
            })
            .await
    }

    /// Embeddings of the answer's sentences and the passages, when the embedder is there.
    async fn embed_for_alignment(
        &self,
        speaker: &Speaker,
        answer: &str,
        passages: &[SearchHit],
    ) -> Option<Embeddings> {
        let engine = self.inference.embedder().ok()?;
        let sentences = citations::claims(answer);
        let mut texts = sentences.clone();
        texts.extend(passages.iter().map(|p| p.text.clone()));
        let mut vectors = engine
            .embed(speaker.scope().tenant_id(), texts, EmbedKind::Document)
            .await
            .ok()?;
        let passages = vectors.split_off(sentences.len());
        Some(Embeddings {
            sentences: vectors,
            passages,
        })
    }
}

/// A short follow-up ("and for kids?") is searched together with the previous question.
fn retrieval_query(question: &str, history: &[Message]) -> String {
    let words = question.split_whitespace().count();
    match history.iter().rev().find(|m| m.role == "user") {
        Some(previous) if words < 6 => format!("{} {question}", previous.content),
        _ => question.to_string(),
    }
}

/// System message (persona, rules, numbered passages), recent history, the question.
fn prompt(
    coach: &Coach,
    passages: &[SearchHit],
    history: &[Message],
    question: &str,
) -> Vec<ChatMessage> {
    let persona = if coach.persona.trim().is_empty() {
        format!("You are {}, a friendly and practical coach.", coach.name)
    } else {
        format!("You are {}. {}", coach.name, coach.persona.trim())
    };
    let mut system = format!(
        "{persona}\nAnswer the question using only the passages below. After each sentence, \
         cite the passage it comes from by its number in square brackets, like [1]. If the \
         passages do not contain the answer, say that you do not know. {}\n\nPassages:",
        coach.answer_length.instruction()
    );
    let mut budget = PASSAGE_CHARS;
    for (i, passage) in passages.iter().enumerate() {
        if budget < 80 {
            break;
        }
        let source = if passage.heading_path.is_empty() {
            passage.document_title.clone()
        } else {
            format!("{} / {}", passage.document_title, passage.heading_path)
        };
        let text: String = passage.text.chars().take(budget).collect();
        budget = budget.saturating_sub(text.chars().count());
        system.push_str(&format!("\n[{}] ({source}) {text}", i + 1));
    }
    let mut messages = vec![ChatMessage::new(Role::System, system)];
    // Most recent turns first until the history budget is spent; answers lose their markers
    // (they refer to earlier passages) and fallbacks are left out.
    let mut recent = Vec::new();
    let mut budget = HISTORY_CHARS;
    for message in history.iter().rev().filter(|m| !m.fallback) {
        let text: String = message.content.chars().take(budget).collect();
        if text.is_empty() {
            break;
        }
        budget -= text.chars().count();
        let role = if message.role == "user" {
            Role::User
        } else {
            Role::Assistant
        };
        recent.push(ChatMessage::new(role, strip_markers(&text)));
    }
    // A history that opens with an assistant turn confuses some chat templates.
    while recent.last().is_some_and(|m| m.role == Role::Assistant) {
        recent.pop();
    }
    messages.extend(recent.into_iter().rev());
    messages.push(ChatMessage::new(Role::User, question));
    messages
}

fn strip_markers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find(" [") {
        let after = &rest[open + 2..];
        match after.find(']') {
            Some(close)
                if after[..close]
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == ',' || c == ' ') =>
            {
                out.push_str(&rest[..open]);
                rest = &after[close + 1..];
            }
            _ => {
                out.push_str(&rest[..open + 2]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follow_ups_are_searched_with_the_previous_question() {
        let previous = Message {
            id: "m".into(),
            conversation_id: "c".into(),
            role: "user".into(),
            content: "How long do refunds take?".into(),
            citations: vec![],
            confidence: None,
            fallback: false,
            created_at: String::new(),
            stats: None,
        };
        assert_eq!(
            retrieval_query("and for gift cards?", std::slice::from_ref(&previous)),
            "How long do refunds take? and for gift cards?"
        );
        let long = "What is the best time of day to do the breathing exercise?";
        assert_eq!(retrieval_query(long, &[previous]), long);
        assert_eq!(strip_markers("Yes [1]. And no [2, 3]."), "Yes. And no.");
    }
}
