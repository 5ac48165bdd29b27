//! `companero bench index`: vector index memory and search latency at scale, on synthetic data.
//!
//! Builds a throw-away data directory with `chunks` synthetic passages (Zipf-distributed words)
//! and clustered unit vectors in SQLite, then measures what the server would: rebuilding the
//! usearch index from SQLite, its memory, recall@10 of the f16 HNSW index against exact search,
//! and the latency of the real search path (BM25 + vectors + fusion + reading the passages) per
//! mode. Then it builds `tenants` small per-tenant indexes and reports their memory.

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rusqlite::params;
use serde::Serialize;

use crate::auth::TenantScope;
use crate::knowledge::index::{self, VectorIndexes, vector_to_blob};
use crate::knowledge::search::{DEFAULT_LEXICAL_WEIGHT, Fusion, SearchMode, search_blocking};

#[derive(Debug, Clone, Copy)]
pub struct IndexBenchOptions {
    pub chunks: usize,
    pub dimensions: usize,
    pub queries: usize,
    pub tenants: usize,
    pub tenant_chunks: usize,
}

#[derive(Debug, Serialize)]
pub struct LatencyReport {
    pub mode: SearchMode,
    pub p50_ms: f64,
    pub p95_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct IndexReport {
    pub chunks: usize,
    pub dimensions: usize,
    pub sqlite_insert_s: f64,
    pub index_rebuild_s: f64,
    pub index_memory_mb: f64,
    pub rss_growth_mb: f64,
    pub recall_at_10_f16: f64,
    pub recall_at_10_i8: f64,
    pub index_memory_i8_mb: f64,
    pub latency: Vec<LatencyReport>,
    pub tenants: usize,
    pub tenant_chunks: usize,
    pub tenants_index_memory_mb: f64,
    pub tenants_rss_growth_mb: f64,
    pub shared_index_memory_mb: f64,
}

const EMBEDDER: &str = "synthetic:384";

pub fn run(options: IndexBenchOptions) -> anyhow::Result<IndexReport> {
    let mut rng = StdRng::seed_from_u64(7);
    let dir = ScratchDir::new()?;
    let mut c = crate::db::connect(&dir.path().join("bench.db"))?;
    crate::db::migrations::apply(&mut c)?;
    c.execute("INSERT INTO tenants (id, name) VALUES ('t', 'bench')", [])?;
    c.execute(
        "INSERT INTO documents (id, tenant_id, title, filename, kind, size_bytes, sha256, status) \
         VALUES ('d', 't', 'Synthetic', 'synthetic.txt', 'text', 0, '', 'ready')",
        [],
    )?;
    let vocabulary = vocabulary(&mut rng, 20_000);
    let centers: Vec<Vec<f32>> = (0..1000)
        .map(|_| unit(random_vector(&mut rng, options.dimensions)))
        .collect();
    let started = Instant::now();
    let mut vectors = Vec::with_capacity(options.chunks);
    {
        let tx = c.transaction()?;
        {
            let mut chunk = tx.prepare(
                "INSERT INTO chunks (tenant_id, document_id, ordinal, text, char_start, char_end, \
                 token_count) VALUES ('t', 'd', ?1, ?2, 0, 0, 150)",
            )?;
            let mut vector = tx.prepare(
                "INSERT INTO chunk_vectors (chunk_id, embedder, tenant_id, vector) VALUES (?1, ?2, 't', ?3)",
            )?;
            for ordinal in 0..options.chunks {
                let text = sentence(&mut rng, &vocabulary, 120);
                chunk.execute(params![ordinal as i64, text])?;
                let id = tx.last_insert_rowid();
                let v = clustered(&mut rng, &centers);
                vector.execute(params![id, EMBEDDER, vector_to_blob(&v)])?;
                vectors.push((id, v));
            }
        }
        tx.commit()?;
    }
    let sqlite_insert_s = started.elapsed().as_secs_f64();

    let scope = TenantScope::new("t".into());
    let indexes = VectorIndexes::new(dir.path().join("index"));
    let rss_before = rss_mb();
    let started = Instant::now();
    indexes.search(&c, &scope, EMBEDDER, &vectors[0].1, 1)?;
    let index_rebuild_s = started.elapsed().as_secs_f64();
    let index_memory_mb = indexes.memory_bytes() as f64 / 1e6;
    let rss_growth_mb = rss_mb() - rss_before;

    let queries: Vec<(String, Vec<f32>)> = (0..options.queries)
        .map(|_| {
            let text = sentence(&mut rng, &vocabulary, 6);
            (text, clustered(&mut rng, &centers))
        })
        .collect();
    let exact: Vec<Vec<i64>> = queries
        .iter()
        .map(|(_, q)| exact_top(&vectors, q, 10))
        .collect();
    let recall = |found: &[Vec<i64>]| {
        let hits: usize = found
            .iter()
            .zip(&exact)
            .map(|(f, e)| f.iter().filter(|id| e.contains(id)).count())
            .sum();
        hits as f64 / (10 * found.len()) as f64
    };
    let found_f16: Vec<Vec<i64>> = queries
        .iter()
        .map(|(_, q)| {
            indexes
                .search(&c, &scope, EMBEDDER, q, 10)
                .map(|m| m.into_iter().map(|(id, _)| id).collect())
        })
        .collect::<Result<_, _>>()?;
    let i8_index = index::new_index(options.dimensions, usearch::ScalarKind::I8)?;
    index::add_all(&i8_index, &vectors)?;
    let found_i8: Vec<Vec<i64>> = queries
        .iter()
        .map(|(_, q)| {
            i8_index
                .search(q, 10)
                .map(|m| m.keys.iter().map(|&k| k as i64).collect())
        })
        .collect::<Result<_, _>>()?;
    let index_memory_i8_mb = i8_index.memory_usage() as f64 / 1e6;
    drop(i8_index);

    let mut latency = Vec::new();
    for mode in [SearchMode::Lexical, SearchMode::Vector, SearchMode::Hybrid] {
        let mut times = Vec::with_capacity(queries.len());
        for (text, vector) in &queries {
            let embedded = (EMBEDDER.to_string(), vector.clone());
            let started = Instant::now();
            let fusion = Fusion {
                lexical_weight: DEFAULT_LEXICAL_WEIGHT,
                min_score: 0.0,
            };
            search_blocking(
                &c,
                &indexes,
                &scope,
                text,
                mode,
                Some(&embedded),
                fusion,
                10,
            )?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        latency.push(LatencyReport {
            mode,
            p50_ms: times[times.len() / 2],
            p95_ms: times[(times.len() * 95 / 100).min(times.len() - 1)],
        });
    }
    drop(indexes);

    // Many small tenants: one index each, as the server keeps them.
    let rss_before = rss_mb();
    let mut tenant_indexes = Vec::with_capacity(options.tenants);
    let mut tenants_memory = 0usize;
    for tenant in 0..options.tenants {
        let index = index::new_index(options.dimensions, index::QUANTIZATION)?;
        let start = (tenant * options.tenant_chunks) % vectors.len().max(1);
        let items: Vec<(i64, Vec<f32>)> = (0..options.tenant_chunks)
            .map(|i| vectors[(start + i) % vectors.len()].clone())
            .collect();
        index::add_all(&index, &items)?;
        tenants_memory += index.memory_usage();
        tenant_indexes.push(index);
    }
    let tenants_rss_growth_mb = rss_mb() - rss_before;
    drop(tenant_indexes);
    let shared = index::new_index(options.dimensions, index::QUANTIZATION)?;
    let total = (options.tenants * options.tenant_chunks).min(vectors.len());
    index::add_all(&shared, &vectors[..total])?;
    let shared_index_memory_mb = shared.memory_usage() as f64 / 1e6;

    Ok(IndexReport {
        chunks: options.chunks,
        dimensions: options.dimensions,
        sqlite_insert_s,
        index_rebuild_s,
        index_memory_mb,
        rss_growth_mb,
        recall_at_10_f16: recall(&found_f16),
        recall_at_10_i8: recall(&found_i8),
        index_memory_i8_mb,
        latency,
        tenants: options.tenants,
        tenant_chunks: options.tenant_chunks,
        tenants_index_memory_mb: tenants_memory as f64 / 1e6,
        tenants_rss_growth_mb,
        shared_index_memory_mb,
    })
}

/// A temporary directory removed when dropped.
struct ScratchDir(std::path::PathBuf);

impl ScratchDir {
    fn new() -> std::io::Result<ScratchDir> {
        let path = std::env::temp_dir().join(format!("companero-bench-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path)?;
        Ok(ScratchDir(path))
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn exact_top(vectors: &[(i64, Vec<f32>)], query: &[f32], k: usize) -> Vec<i64> {
    let mut scored: Vec<(f32, i64)> = vectors
        .iter()
        .map(|(id, v)| (crate::inference::embed::cosine(v, query), *id))
        .collect();
    scored.select_nth_unstable_by(k, |a, b| b.0.total_cmp(&a.0));
    scored.truncate(k);
    scored.into_iter().map(|(_, id)| id).collect()
}

fn vocabulary(rng: &mut StdRng, size: usize) -> Vec<String> {
    const SYLLABLES: &[&str] = &[
        "ka", "lo", "mi", "ter", "sun", "ra", "bel", "do", "vin", "ex", "pra", "tor", "li", "an",
        "co", "ment", "ful", "ness", "tion", "ing",
    ];
    (0..size)
        .map(|_| {
            let n = rng.gen_range(2..=4);
            (0..n)
                .map(|_| SYLLABLES[rng.gen_range(0..SYLLABLES.len())])
                .collect()
        })
        .collect()
}

/// Words drawn with a Zipf-like distribution, as in natural text.
fn sentence(rng: &mut StdRng, vocabulary: &[String], words: usize) -> String {
    (0..words)
        .map(|_| {
            let u: f64 = rng.r#gen::<f64>().max(1e-9);
            let rank = ((vocabulary.len() as f64).powf(u) - 1.0) as usize;
            vocabulary[rank.min(vocabulary.len() - 1)].as_str()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn random_vector(rng: &mut StdRng, dimensions: usize) -> Vec<f32> {
    (0..dimensions).map(|_| rng.r#gen::<f32>() - 0.5).collect()
}

fn clustered(rng: &mut StdRng, centers: &[Vec<f32>]) -> Vec<f32> {
    let center = &centers[rng.gen_range(0..centers.len())];
    let noise = random_vector(rng, center.len());
    unit(
        center
            .iter()
            .zip(noise)
            .map(|(c, n)| c + 0.12 * n)
            .collect(),
    )
}

fn unit(v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.into_iter().map(|x| x / norm).collect()
}

fn rss_mb() -> f64 {
    super::memory_mb("self", "VmRSS")
}
