//! The embedding engine: one dedicated thread owns the embedder and serves a fair, bounded queue.
//! With a remote backend, a few threads serve the same queue over HTTP.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use super::InferenceError;
use super::chat_engine::REMOTE_WORKERS;
use super::embed::{EmbedKind, Embedder, EmbedderInfo, Pooling, TokenCounter};
use super::queue::{CloseOnDrop, FairQueue};
use super::remote::{RemoteModel, RemoteServer};

/// What a remote embedder is assumed to hold per input when its server does not say: what
/// BERT-family embedders (MiniLM, bge, e5) hold. Passages are sized to fit it.
pub const REMOTE_MAX_TOKENS: usize = 512;

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
            .spawn(move || run_worker(&Backend::Local(Box::new(embedder)), &worker_queue))
            .expect("spawn the embedder thread");
        Ok(EmbedEngine {
            _worker: Arc::new(CloseOnDrop(Arc::clone(&queue))),
            queue,
            info,
            tokens,
        })
    }

    /// Serves the same queue from `model` on a remote OpenAI-compatible server. `dimensions`
    /// comes from a first call (the readiness probe); query and document prefixes follow the
    /// model family, as for a local model without a sentence-transformers config.
    pub fn start_remote(
        server: RemoteServer,
        model: RemoteModel,
        dimensions: usize,
        queue_capacity: usize,
    ) -> Result<EmbedEngine, InferenceError> {
        let queue = Arc::new(FairQueue::new("embedder", queue_capacity));
        let max_tokens = model
            .context_length
            .unwrap_or(REMOTE_MAX_TOKENS)
            .min(REMOTE_MAX_TOKENS);
        let (query_prefix, document_prefix) =
            super::embed::prompts(&serde_json::Value::Null, "", &[model.id.as_str()]);
        let info = Arc::new(EmbedderInfo {
            name: model.id.clone(),
            path: std::path::PathBuf::from(server.url()),
            architecture: "remote".into(),
            dimensions,
            max_tokens,
            pooling: Pooling::Mean,
            load_seconds: 0.0,
            remote: Some(server.url().to_string()),
        });
        let overhead = super::remote::estimate_tokens(&document_prefix) + 2;
        let tokens = TokenCounter::estimated(max_tokens.saturating_sub(overhead).max(8));
        for worker in 0..REMOTE_WORKERS {
            let runtime = super::chat_engine::remote_runtime()?;
            let backend = Backend::Remote {
                server: server.clone(),
                model: model.id.clone(),
                query_prefix: query_prefix.clone(),
                document_prefix: document_prefix.clone(),
                runtime,
            };
            let worker_queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("companero-embed-remote-{worker}"))
                .spawn(move || run_worker(&backend, &worker_queue))
                .expect("spawn a remote embedder thread");
        }
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

/// What runs a popped job: the embedder in this process, or a remote server.
enum Backend {
    Local(Box<Embedder>),
    Remote {
        server: RemoteServer,
        model: String,
        query_prefix: String,
        document_prefix: String,
        runtime: tokio::runtime::Runtime,
    },
}

impl Backend {
    fn embed(&self, texts: &[String], kind: EmbedKind) -> Result<Vec<Vec<f32>>, InferenceError> {
        match self {
            Backend::Local(embedder) => embedder.embed(texts, kind),
            Backend::Remote {
                server,
                model,
                query_prefix,
                document_prefix,
                runtime,
            } => {
                let prefix = match kind {
                    EmbedKind::Query => query_prefix,
                    EmbedKind::Document => document_prefix,
                };
                let inputs: Vec<String> = texts.iter().map(|t| format!("{prefix}{t}")).collect();
                runtime.block_on(server.embed(model, &inputs))
            }
        }
    }
}

fn run_worker(embedder: &Backend, queue: &FairQueue<EmbedJob>) {
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
