//! The generation loop: prefill the prompt, sample token by token, and hand out text deltas that
//! never split a UTF-8 character and never show the start of a stop string.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use candle_transformers::generation::{LogitsProcessor, Sampling};
use serde::{Deserialize, Serialize};

use super::InferenceError;
use super::llm::Llm;

/// How to sample an answer. Temperature 0 is greedy decoding, which is reproducible.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerationSettings {
    pub max_tokens: usize,
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    /// 1.0 disables it.
    pub repeat_penalty: f32,
    /// How many recent tokens the repeat penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
    /// Generation ends before any of these strings; they are not part of the answer.
    pub stop: Vec<String>,
}

impl Default for GenerationSettings {
    fn default() -> GenerationSettings {
        GenerationSettings {
            max_tokens: 512,
            temperature: 0.7,
            top_p: Some(0.9),
            top_k: Some(40),
            repeat_penalty: 1.1,
            repeat_last_n: 64,
            seed: 299_792_458,
            stop: Vec::new(),
        }
    }
}

impl GenerationSettings {
    /// Greedy decoding with the default repeat penalty.
    pub fn greedy(max_tokens: usize) -> GenerationSettings {
        GenerationSettings {
            max_tokens,
            temperature: 0.0,
            ..GenerationSettings::default()
        }
    }

    fn sampling(&self) -> Sampling {
        if self.temperature <= 0.0 {
            return Sampling::ArgMax;
        }
        let temperature = self.temperature;
        match (self.top_k, self.top_p) {
            (Some(k), Some(p)) => Sampling::TopKThenTopP { k, p, temperature },
            (Some(k), None) => Sampling::TopK { k, temperature },
            (None, Some(p)) => Sampling::TopP { p, temperature },
            (None, None) => Sampling::All { temperature },
        }
    }
}

/// What a caller of the OpenAI-compatible API asked of one generation; each `None` keeps the
/// setting it is applied to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamplingOverrides {
    pub max_tokens: Option<usize>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
    /// Added to the stop strings already set.
    pub stop: Vec<String>,
}

impl SamplingOverrides {
    pub fn apply(&self, settings: &mut GenerationSettings) {
        if let Some(max_tokens) = self.max_tokens {
            settings.max_tokens = max_tokens;
        }
        if let Some(temperature) = self.temperature {
            settings.temperature = temperature;
        }
        if let Some(top_p) = self.top_p {
            // OpenAI's nucleus sampling has no top-k: with top_p given, top-k does not cut first.
            settings.top_p = Some(top_p);
            settings.top_k = None;
        }
        if let Some(seed) = self.seed {
            settings.seed = seed;
        }
        settings.stop.extend(self.stop.iter().cloned());
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model ended its turn or produced a stop string.
    Stop,
    /// `max_tokens` (or the context window) was reached.
    Length,
    /// The consumer went away (client disconnected).
    Cancelled,
    /// The call's deadline passed.
    Deadline,
}

/// Figures for one call. Definitions match `companero bench llm`.
#[derive(Debug, Clone, Serialize)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    /// Prompt tokens whose attention state came from an earlier request (not recomputed).
    pub reused_prompt_tokens: usize,
    /// Sampled tokens, the first one included.
    pub completion_tokens: usize,
    /// From the start of the first forward pass to the first sampled token.
    pub ttft_s: f64,
    /// `prompt_tokens / ttft_s`.
    pub prefill_tok_s: f64,
    /// Tokens after the first, over the time from the first to the last.
    pub gen_tok_s: f64,
    pub total_s: f64,
    pub finish_reason: FinishReason,
}

/// Generates a continuation of `prompt` for `owner` (a tenant: attention state kept from earlier
/// prompts is reused only for the same owner). `on_delta` receives text as it becomes final and
/// may return `Break` to stop (the consumer is gone). Returns the figures.
pub fn generate(
    llm: &mut Llm,
    owner: &str,
    prompt: &[u32],
    settings: &GenerationSettings,
    deadline: Option<Instant>,
    mut on_delta: impl FnMut(&str) -> ControlFlow<()>,
) -> Result<GenerationStats, InferenceError> {
    if prompt.is_empty() {
        return Err(InferenceError::InvalidRequest("the prompt is empty".into()));
    }
    let context = llm.info.context_length;
    if prompt.len() >= context {
        return Err(InferenceError::ContextOverflow {
            prompt_tokens: prompt.len(),
            context_length: context,
        });
    }
    let max_tokens = settings.max_tokens.min(context - prompt.len());
    let mut sampler = LogitsProcessor::from_sampling(settings.seed, settings.sampling());
    let mut text = TextAssembler::new(&settings.stop);
    let mut history: Vec<u32> = prompt.to_vec();
    let mut completion: Vec<u32> = Vec::new();

    let started = Instant::now();
    let mut first_token_at = None;
    let mut last_token_at = started;
    let mut finish = FinishReason::Length;
    let mut sampled = 0usize;
    let (mut logits, reused) = llm.start(owner, prompt)?;

    while sampled < max_tokens {
        if settings.repeat_penalty != 1.0 {
            let start = history.len().saturating_sub(settings.repeat_last_n);
            logits = candle_transformers::utils::apply_repeat_penalty(
                &logits,
                settings.repeat_penalty,
                &history[start..],
            )?;
        }
        let token = sampler.sample(&logits)?;
        sampled += 1;
        last_token_at = Instant::now();
        first_token_at.get_or_insert(last_token_at);
        if llm.stop_tokens.contains(&token) {
            finish = FinishReason::Stop;
            break;
        }
        completion.push(token);
        history.push(token);

        let decoded = llm.tokenizer.decode(&completion)?;
        let (delta, stopped) = text.push(&decoded);
        if !delta.is_empty() && on_delta(delta).is_break() {
            finish = FinishReason::Cancelled;
            break;
        }
        if stopped {
            finish = FinishReason::Stop;
            break;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            finish = FinishReason::Deadline;
            break;
        }
        if sampled >= max_tokens {
            break;
        }
        logits = llm.forward(&[token], history.len() - 1)?;
    }
    if finish != FinishReason::Cancelled {
        let rest = text.finish();
        if !rest.is_empty() {
            let _ = on_delta(rest);
        }
    }

    let first = first_token_at.unwrap_or(last_token_at);
    let ttft = first.duration_since(started);
    let after_first = sampled.saturating_sub(1);
    let generation_time = last_token_at.duration_since(first);
    Ok(GenerationStats {
        prompt_tokens: prompt.len(),
        reused_prompt_tokens: reused,
        completion_tokens: sampled,
        ttft_s: ttft.as_secs_f64(),
        prefill_tok_s: rate(prompt.len(), ttft),
        gen_tok_s: rate(after_first, generation_time),
        total_s: started.elapsed().as_secs_f64(),
        finish_reason: finish,
    })
}

fn rate(count: usize, over: Duration) -> f64 {
    if over.is_zero() {
        0.0
    } else {
        count as f64 / over.as_secs_f64()
    }
}

/// Turns the growing decoded completion into final deltas: a character is released only when it
/// is complete, and text that might be the start of a stop string is held back until it is not.
struct TextAssembler<'a> {
    stop: &'a [String],
    /// Bytes of the decoded completion already released.
    released: usize,
    decoded: String,
    stopped_at: Option<usize>,
}

impl<'a> TextAssembler<'a> {
    fn new(stop: &'a [String]) -> TextAssembler<'a> {
        TextAssembler {
            stop,
            released: 0,
            decoded: String::new(),
            stopped_at: None,
        }
    }

    /// Takes the whole decoded completion so far; returns the new final text and whether a stop
    /// string was reached.
    fn push(&mut self, decoded: &str) -> (&str, bool) {
        // An incomplete UTF-8 sequence decodes to U+FFFD until its last byte arrives.
        if decoded.ends_with('\u{FFFD}')
            || !decoded.is_char_boundary(self.released.min(decoded.len()))
            || decoded.len() < self.released
        {
            return ("", false);
        }
        self.decoded = decoded.to_string();
        if let Some(at) = self.find_stop() {
            self.stopped_at = Some(at);
            let start = self.released;
            self.released = at.max(start);
            return (&self.decoded[start..self.released], true);
        }
        let end = self.decoded.len() - self.partial_stop_suffix();
        let start = self.released;
        self.released = end.max(start);
        (&self.decoded[start..self.released], false)
    }

    /// Releases what was held back (the completion ended without a stop string).
    fn finish(&mut self) -> &str {
        if self.stopped_at.is_some() {
            return "";
        }
        let start = self.released;
        self.released = self.decoded.len();
        &self.decoded[start..]
    }

    fn find_stop(&self) -> Option<usize> {
        let longest = self.stop.iter().map(String::len).max().unwrap_or(0);
        let mut from = self.released.saturating_sub(longest);
        while !self.decoded.is_char_boundary(from) {
            from -= 1;
        }
        self.stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.decoded[from..].find(s.as_str()).map(|i| from + i))
            .min()
    }

    /// Length of the longest end of the text that could still grow into a stop string.
    fn partial_stop_suffix(&self) -> usize {
        let text = &self.decoded[self.released..];
        self.stop
            .iter()
            .flat_map(|stop| {
                (1..stop.len())
                    .filter(|&n| stop.is_char_boundary(n))
                    .filter(|&n| text.ends_with(&stop[..n]))
                    .max()
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stop: &[&str], steps: &[&str]) -> (String, bool) {
        let stop: Vec<String> = stop.iter().map(|s| s.to_string()).collect();
        let mut assembler = TextAssembler::new(&stop);
        let mut out = String::new();
        for step in steps {
            let (delta, stopped) = assembler.push(step);
            out.push_str(delta);
            if stopped {
                return (out, true);
            }
        }
        out.push_str(assembler.finish());
        (out, false)
    }

    #[test]
    fn incomplete_characters_are_held_until_complete() {
        let stop = Vec::new();
        let mut assembler = TextAssembler::new(&stop);
        assert_eq!(assembler.push("ma").0, "ma");
        assert_eq!(assembler.push("ma\u{FFFD}").0, "");
        assert_eq!(assembler.push("mañ").0, "ñ");
    }

    #[test]
    fn stop_strings_end_the_text_and_are_never_shown() {
        assert_eq!(
            run(
                &["\nUser:"],
                &["Hi", "Hi\n", "Hi\nUs", "Hi\nUser:", "Hi\nUser: x"]
            ),
            ("Hi".to_string(), true)
        );
        // A held-back prefix that turns out not to be a stop string is released.
        assert_eq!(
            run(&["\nUser:"], &["Hi", "Hi\n", "Hi\nUs", "Hi\nUsa"]),
            ("Hi\nUsa".to_string(), false)
        );
        assert_eq!(run(&["END"], &["a", "ab"]), ("ab".to_string(), false));
    }
}
