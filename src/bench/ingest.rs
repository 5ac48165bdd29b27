//! `companero bench ingest`: ingestion throughput on a generated PDF, stage by stage, with the
//! server's own components: the sandboxed reader (a child process), the chunker at the default
//! settings and the embedder in batches of 32.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::sample_pdf;
use crate::inference::DeviceKind;
use crate::inference::embed::{EmbedKind, Embedder, EmbedderOptions};
use crate::knowledge::chunk::{self, ChunkSettings};
use crate::knowledge::extract::ExtractLimits;
use crate::knowledge::sandbox::Sandbox;
use crate::knowledge::sniff::DocumentKind;
use crate::knowledge::{DEFAULT_CHUNK_OVERLAP, DEFAULT_CHUNK_TOKENS};

#[derive(Debug, Serialize)]
pub struct IngestReport {
    pub pages: usize,
    pub pdf_bytes: usize,
    pub extract_s: f64,
    pub extract_pages_per_s: f64,
    pub chunks: usize,
    pub chunk_s: f64,
    pub embed_s: f64,
    pub embed_chunks_per_s: f64,
    pub total_s: f64,
    pub total_pages_per_s: f64,
}

/// About one printed page of prose.
const WORDS_PER_PAGE: usize = 380;

pub fn run(
    embedder: &Path,
    pages: usize,
    threads: usize,
    device: DeviceKind,
) -> anyhow::Result<IngestReport> {
    crate::inference::set_cpu_threads(threads);
    let words: Vec<&str> = super::DEFAULT_TEXT.split_whitespace().collect();
    let mut cursor = 0;
    let content: Vec<Vec<String>> = (0..pages)
        .map(|_| {
            (0..4)
                .map(|_| {
                    let paragraph: Vec<&str> = (0..WORDS_PER_PAGE / 4)
                        .map(|i| words[(cursor + i) % words.len()])
                        .collect();
                    cursor += WORDS_PER_PAGE / 4;
                    paragraph.join(" ")
                })
                .collect()
        })
        .collect();
    let bytes = sample_pdf::pdf(&content);
    let pdf_bytes = bytes.len();
    let device = device.open()?;
    let embedder = Embedder::load(embedder, &device, &EmbedderOptions::default())?;
    let tokens = embedder.token_counter()?;
    let sandbox = Sandbox {
        executable: std::env::current_exe()?,
        limits: ExtractLimits::default(),
        timeout: Duration::from_secs(600),
        memory_bytes: 2 << 30,
        max_output_bytes: Sandbox::output_limit(bytes.len() as u64),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    let started = Instant::now();
    let extracted = runtime
        .block_on(sandbox.extract(DocumentKind::Pdf, bytes))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let extract_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let settings = ChunkSettings {
        target_tokens: DEFAULT_CHUNK_TOKENS,
        overlap_tokens: DEFAULT_CHUNK_OVERLAP,
    };
    let chunks = chunk::chunk(&extracted, settings, &tokens);
    let chunk_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let inputs: Vec<String> = chunks.iter().map(|c| c.embedding_input()).collect();
    embedder.embed(&inputs, EmbedKind::Document)?;
    let embed_s = started.elapsed().as_secs_f64();

    let total_s = extract_s + chunk_s + embed_s;
    Ok(IngestReport {
        pages,
        pdf_bytes,
        extract_s,
        extract_pages_per_s: pages as f64 / extract_s,
        chunks: chunks.len(),
        chunk_s,
        embed_s,
        embed_chunks_per_s: chunks.len() as f64 / embed_s,
        total_s,
        total_pages_per_s: pages as f64 / total_s,
    })
}
