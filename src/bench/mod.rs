//! `companero bench llm | embed | index`: the yardstick for inference speed. Field names are stable:
//! `scripts/bench-compare` and other tools read them.
//!
//! Definitions (kept identical in scripts/bench-compare for the peers):
//! - llm: the prompt file is one user turn under the model's chat template, with the system
//!   prompt "You are a helpful assistant."; greedy decoding, repeat penalty 1.1. `ttft_s` runs
//!   from the start of the first forward pass to the first sampled token; `prefill_tok_s =
//!   prompt_tokens / ttft_s`; `gen_tokens` excludes that first token; `gen_tok_s = gen_tokens /
//!   (time of last token - time of first token)`.
//! - embed: the text is cut into consecutive 200-word windows (wrapping around a short text),
//!   truncated to 256 tokens, 96 chunks, embedded after one warm-up batch, once one at a time and
//!   once in batches of 32.
//! - rerank: passages are 150-word windows of the text (about 200 tokens, a default chunk);
//!   each query reorders `candidates` of them, after one warm-up; the latency is what a search
//!   waits for the reranker.

pub mod index;
pub mod ingest;
pub mod live;
pub mod nudges;
pub mod sample_pdf;

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use crate::inference::chat_template::{ChatMessage, Role};
use crate::inference::embed::{EmbedKind, Embedder, EmbedderOptions};
use crate::inference::generate::{self, GenerationSettings};
use crate::inference::llm::{Kernels, Llm, LlmOptions};
use crate::inference::{DeviceKind, chat_engine};

pub const DEFAULT_TEXT: &str = include_str!("default_text.txt");
pub const SYSTEM_PROMPT: &str = "You are a helpful assistant.";
const CHUNKS: usize = 96;
const WORDS_PER_CHUNK: usize = 200;
const TOKENS_PER_CHUNK: usize = 256;

#[derive(Debug, Serialize)]
pub struct LlmReport {
    pub model: String,
    pub kernels: String,
    pub threads: usize,
    pub load_s: f64,
    pub prompt_tokens: usize,
    pub prefill_tok_s: f64,
    pub ttft_s: f64,
    pub gen_tokens: usize,
    pub gen_tok_s: f64,
    /// The second turn of the conversation: the first turn, its answer, new passages and a new
    /// question.
    pub follow_up_prompt_tokens: usize,
    /// Of those, tokens whose attention state was kept from the first turn.
    pub follow_up_reused_tokens: usize,
    pub follow_up_ttft_s: f64,
    /// The same second-turn prompt with nothing cached.
    pub follow_up_cold_ttft_s: f64,
    pub peak_rss_mb: f64,
    pub finish_reason: generate::FinishReason,
    pub output: String,
}

/// Tokens generated for each follow-up measurement (only the time to the first one counts).
const FOLLOW_UP_TOKENS: usize = 4;

pub fn llm(
    model: &Path,
    prompt: &str,
    max_tokens: usize,
    threads: usize,
    device: DeviceKind,
    kernels: Kernels,
) -> anyhow::Result<LlmReport> {
    let device = device.open()?;
    let started = Instant::now();
    let options = LlmOptions {
        kernels,
        ..LlmOptions::default()
    };
    let mut llm = Llm::load_with(model, &device, &options)?;
    let load_s = started.elapsed().as_secs_f64();
    let mut messages = vec![
        ChatMessage::new(Role::System, SYSTEM_PROMPT),
        ChatMessage::new(Role::User, prompt),
    ];
    let (output, stats) = run_turn(&mut llm, &messages, max_tokens)?;

    // A follow-up in the same conversation: new passages and a new question after the answer.
    messages.push(ChatMessage::new(Role::Assistant, output.trim()));
    messages.push(ChatMessage::new(Role::User, follow_up_turn()));
    let (_, follow_up) = run_turn(&mut llm, &messages, FOLLOW_UP_TOKENS)?;
    // The same prompt again from a fresh model: nothing cached.
    let mut cold = Llm::load_with(model, &device, &options)?;
    let (_, follow_up_cold) = run_turn(&mut cold, &messages, FOLLOW_UP_TOKENS)?;
    Ok(LlmReport {
        model: llm.info.name.clone(),
        kernels: llm.info.kernels.clone(),
        threads,
        load_s,
        prompt_tokens: stats.prompt_tokens,
        prefill_tok_s: stats.prefill_tok_s,
        ttft_s: stats.ttft_s,
        gen_tokens: stats.completion_tokens.saturating_sub(1),
        gen_tok_s: stats.gen_tok_s,
        follow_up_prompt_tokens: follow_up.prompt_tokens,
        follow_up_reused_tokens: follow_up.reused_prompt_tokens,
        follow_up_ttft_s: follow_up.ttft_s,
        follow_up_cold_ttft_s: follow_up_cold.ttft_s,
        peak_rss_mb: peak_rss_mb(),
        finish_reason: stats.finish_reason,
        output,
    })
}

/// Generates a greedy answer to `messages`.
fn run_turn(
    llm: &mut Llm,
    messages: &[ChatMessage],
    max_tokens: usize,
) -> anyhow::Result<(String, generate::GenerationStats)> {
    let (tokens, _) = chat_engine::fit_prompt(llm, messages, max_tokens)?;
    let mut output = String::new();
    let stats = generate::generate(
        llm,
        "bench",
        &tokens,
        &GenerationSettings::greedy(max_tokens),
        None,
        |delta| {
            output.push_str(delta);
            std::ops::ControlFlow::Continue(())
        },
    )?;
    Ok((output, stats))
}

/// A follow-up user turn: about 300 tokens of passages not in the first prompt and a question
/// of about 60 tokens.
pub fn follow_up_turn() -> String {
    let paragraphs: Vec<&str> = DEFAULT_TEXT.split("\n\n").collect();
    let mut passages = String::new();
    for (i, paragraph) in paragraphs.iter().skip(3).enumerate() {
        if passages.split_whitespace().count() > 220 {
            break;
        }
        passages.push_str(&format!("[{}] {paragraph}\n\n", i + 4));
    }
    format!(
        "{passages}Question: Thanks, that helps. I am coming back after two weeks off with a \
         slightly sore knee and a race in six weeks. How should I rebuild my weekly mileage, \
         which runs should I drop first if the knee gets worse, and when should I see someone \
         about it?"
    )
}

#[derive(Debug, Serialize)]
pub struct EmbedReport {
    pub model: String,
    pub kernels: String,
    pub threads: usize,
    pub load_s: f64,
    pub chunks: usize,
    pub mean_tokens_per_chunk: f64,
    pub chunks_per_s_batch1: f64,
    pub chunks_per_s_batch32: f64,
    pub peak_rss_mb: f64,
}

pub fn embed(
    model: &Path,
    text: &str,
    threads: usize,
    device: DeviceKind,
    kernels: Kernels,
) -> anyhow::Result<EmbedReport> {
    let device = device.open()?;
    let started = Instant::now();
    let embedder = Embedder::load(
        model,
        &device,
        &EmbedderOptions {
            max_tokens: Some(TOKENS_PER_CHUNK),
            kernels,
            ..EmbedderOptions::default()
        },
    )?;
    let load_s = started.elapsed().as_secs_f64();
    let chunks = windows(text, CHUNKS, WORDS_PER_CHUNK).context("the text has no words")?;
    let tokens: usize = chunks
        .iter()
        .map(|c| embedder.count_tokens(c).map(|n| n.min(TOKENS_PER_CHUNK)))
        .sum::<Result<_, _>>()?;

    embedder.embed_batched(&chunks[..32], EmbedKind::Document, 32)?;
    let timed = |batch: usize| -> anyhow::Result<f64> {
        let started = Instant::now();
        embedder.embed_batched(&chunks, EmbedKind::Document, batch)?;
        Ok(chunks.len() as f64 / started.elapsed().as_secs_f64())
    };
    let chunks_per_s_batch1 = timed(1)?;
    let chunks_per_s_batch32 = timed(32)?;
    Ok(EmbedReport {
        model: embedder.info.name.clone(),
        kernels: embedder.kernels(),
        threads,
        load_s,
        chunks: chunks.len(),
        mean_tokens_per_chunk: tokens as f64 / chunks.len() as f64,
        chunks_per_s_batch1,
        chunks_per_s_batch32,
        peak_rss_mb: peak_rss_mb(),
    })
}

#[derive(Debug, Serialize)]
pub struct RerankLatency {
    pub candidates: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct RerankReport {
    pub model: String,
    pub architecture: String,
    pub kernels: String,
    pub threads: usize,
    pub load_s: f64,
    pub queries: usize,
    pub latency: Vec<RerankLatency>,
    pub peak_rss_mb: f64,
}

const RERANK_QUERIES: [&str; 4] = [
    "how do I keep a new habit going",
    "what should I do when I miss a day",
    "how long until I see results",
    "can I change my plan later",
];

/// Latency a cross-encoder adds to one search, per number of candidates.
pub fn rerank(
    model: &Path,
    text: &str,
    candidates: &[usize],
    queries: usize,
    device: DeviceKind,
    kernels: Kernels,
) -> anyhow::Result<RerankReport> {
    let device = device.open()?;
    let started = Instant::now();
    let reranker = crate::inference::rerank::Reranker::load(model, &device, kernels)?;
    let load_s = started.elapsed().as_secs_f64();
    let most = candidates.iter().copied().max().unwrap_or(1);
    let passages = windows(text, most, 150).context("the text has no words")?;
    reranker.score(RERANK_QUERIES[0], &passages[..most.min(8)])?;
    let mut latency = Vec::new();
    for &count in candidates {
        let mut times: Vec<f64> = (0..queries.max(1))
            .map(|i| {
                let started = Instant::now();
                let query = RERANK_QUERIES[i % RERANK_QUERIES.len()];
                reranker.score(query, &passages[..count])?;
                Ok(started.elapsed().as_secs_f64() * 1000.0)
            })
            .collect::<anyhow::Result<_>>()?;
        times.sort_by(f64::total_cmp);
        latency.push(RerankLatency {
            candidates: count,
            p50_ms: times[times.len() / 2],
            p95_ms: times[(times.len() * 95 / 100).min(times.len() - 1)],
        });
    }
    Ok(RerankReport {
        model: reranker.info.name.clone(),
        architecture: reranker.info.architecture.clone(),
        kernels: reranker.kernels(),
        threads: crate::inference::kernels::pool::Pool::global().threads(),
        load_s,
        queries,
        latency,
        peak_rss_mb: peak_rss_mb(),
    })
}

/// `count` consecutive windows of `words` words, wrapping around the text.
pub fn windows(text: &str, count: usize, words: usize) -> Option<Vec<String>> {
    let all: Vec<&str> = text.split_whitespace().collect();
    if all.is_empty() {
        return None;
    }
    Some(
        (0..count)
            .map(|i| {
                (0..words)
                    .map(|k| all[(i * words + k) % all.len()])
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect(),
    )
}

/// The process's peak resident memory, from /proc (0 where unavailable).
pub fn peak_rss_mb() -> f64 {
    memory_mb("self", "VmHWM")
}

/// A memory figure (`VmRSS`, `VmHWM`...) of a process (`self` or a pid) from
/// /proc/PROCESS/status, in MB; 0 where unavailable.
pub fn memory_mb(process: &str, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{process}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn windows_wrap_around_a_short_text() {
        let chunks = super::windows("a b c", 2, 4).unwrap();
        assert_eq!(chunks, ["a b c a", "b c a b"]);
        assert!(super::windows("  ", 2, 4).is_none());
    }
}
