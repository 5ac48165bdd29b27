//! The embedding engine: one dedicated thread owns the embedder and serves a fair, bounded queue.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use super::InferenceError;
use super::embed::{EmbedKind, Embedder, EmbedderInfo, TokenCounter};
use super::queue::{CloseOnDrop, FairQueue};

struct EmbedJob {
    texts: Vec<String>,
    kind: EmbedKind,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, InferenceError>>,
}

/// A handle to the embedder's thread. Cheap to clone.
#[derive(Clone)]
pub struct EmbedEngine {
    queue: Arc<FairQueue<EmbedJob>>,
    info: Arc<EmbedderInfo>,
    tokens: TokenCounter,
    _worker: Arc<CloseOnDrop<EmbedJob>>,
}

impl EmbedEngine {
    pub fn start(embedder: Embedder, queue_capacity: usize) -> Result<EmbedEngine, InferenceError> {
        let tokens = embedder.token_counter()?;
        let queue = Arc::new(FairQueue::new("embedder", queue_capacity));
        let info = Arc::new(embedder.info.clone());
        let worker_queue = Arc::clone(&queue);
        std::thread::Builder::new()
            .name("companero-embed".into())
            .spawn(move || run_worker(&embedder, &worker_queue))
            .expect("spawn the embedder thread");
        Ok(EmbedEngine {
            _worker: Arc::new(CloseOnDrop(Arc::clone(&queue))),
            queue,
            info,
            tokens,
        })
    }

    pub fn info(&self) -> &EmbedderInfo {
        &self.info
    }

    /// Counts and splits text in this embedder's tokens, for chunking.
    pub fn tokens(&self) -> &TokenCounter {
        &self.tokens
    }

    /// Names the vectors this embedder makes: "name:dimensions". Vectors from different
    /// embedders are never compared.
    pub fn key(&self) -> String {
        format!("{}:{}", self.info.name, self.info.dimensions)
    }

    /// Embeds `texts` for `tenant`; fails at once with `Overloaded` when the queue is full.
    pub async fn embed(
        &self,
        tenant: &str,
        texts: Vec<String>,
        kind: EmbedKind,
    ) -> Result<Vec<Vec<f32>>, InferenceError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        self.queue.push(tenant, EmbedJob { texts, kind, reply })?;
        answer.await.map_err(|_| InferenceError::ShuttingDown)?
    }
}

fn run_worker(embedder: &Embedder, queue: &FairQueue<EmbedJob>) {
    while let Some(job) = queue.pop() {
        if job.reply.is_closed() {
            continue;
        }
        let started = Instant::now();
        let result =
            std::panic::catch_unwind(AssertUnwindSafe(|| embedder.embed(&job.texts, job.kind)))
                .unwrap_or_else(|_| Err(InferenceError::Model("the embedder failed".into())));
        let took = started.elapsed();
        queue.record_job_time(took);
        metrics::histogram!("inference_embed_seconds").record(took.as_secs_f64());
        metrics::counter!("inference_embedded_texts_total").increment(job.texts.len() as u64);
        if result.is_err() {
            metrics::counter!("inference_errors_total", "engine" => "embedder").increment(1);
        }
        let _ = job.reply.send(result);
    }
}
