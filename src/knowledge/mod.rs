//! The knowledge base: documents in, passages out.
//!
//! upload → original saved under `originals/` and an `ingest` job queued (one transaction) →
//! a worker extracts text in a sandboxed child process ([`sandbox`]), cuts it into chunks
//! ([`chunk`]), stores them (FTS5 indexes them through triggers), embeds them in batches and adds
//! the vectors to the tenant's usearch index ([`index`]) → `ready`. [`search`] combines BM25 and
//! vector similarity.

pub mod chunk;
pub mod confine;
pub mod documents;
pub mod extract;
pub mod focus;
pub mod index;
mod ingest;
pub mod jobs;
pub mod quota;
pub mod sandbox;
pub mod search;
pub mod sniff;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::auth::TenantScope;
use crate::db::{Db, DbError};
use crate::inference::InferenceError;
use crate::inference::runtime::Inference;
use chunk::ChunkSettings;
use index::{IndexError, VectorIndexes};
use sandbox::Sandbox;

/// Default passage size, in embedder tokens, chosen on the retrieval evaluation
/// (docs/architecture.md has the figures).
pub const DEFAULT_CHUNK_TOKENS: usize = 200;
/// Default overlap between consecutive passages of a section, in tokens.
pub const DEFAULT_CHUNK_OVERLAP: usize = 32;
/// Fused relevance below which search returns nothing (an unrelated passage scores under it
/// with MiniLM; see docs/architecture.md).
pub const DEFAULT_MIN_SCORE: f32 = 0.2;

#[derive(Debug, thiserror::Error)]
pub enum KnowledgeError {
    #[error("no such document")]
    NotFound,
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("the file is larger than this server's limit of {max_mb} MB")]
    TooLarge { max_mb: u64 },
    #[error(
        "this upload would take your documents over their storage quota: {} of {} used; delete documents or ask the server's owner for more room",
        quota::human(*used_bytes),
        quota::human(*quota_bytes)
    )]
    QuotaExceeded { used_bytes: u64, quota_bytes: u64 },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Inference(#[from] InferenceError),
    #[error("file storage: {0}")]
    Io(#[from] std::io::Error),
}

impl From<rusqlite::Error> for KnowledgeError {
    fn from(error: rusqlite::Error) -> KnowledgeError {
        KnowledgeError::Db(DbError::Sqlite(error))
    }
}

/// Knowledge-base settings from the configuration.
#[derive(Debug, Clone)]
pub struct KnowledgeSettings {
    pub chunking: ChunkSettings,
    pub max_upload_bytes: u64,
    /// Storage per tenant unless the owner set another; `None` is unlimited.
    pub storage_quota_bytes: Option<u64>,
    /// Documents ingested at the same time; more than one so a slow file never blocks the rest.
    pub workers: usize,
    pub sandbox: Sandbox,
    /// How search combines BM25 and vectors.
    pub fusion: search::Fusion,
    /// How a reranker, when one runs, reorders the best candidates.
    pub rerank: search::RerankSettings,
}

/// The knowledge-base service. Cheap to clone.
#[derive(Clone)]
pub struct Knowledge {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    inference: Inference,
    indexes: VectorIndexes,
    originals: PathBuf,
    settings: KnowledgeSettings,
    /// Wakes idle workers when a job is queued.
    wake: Notify,
    /// After a change of embedder: the previous one, loaded to embed queries for tenants whose
    /// chunks are not all re-embedded yet, so their search keeps its quality meanwhile.
    previous_embedder: std::sync::Mutex<Option<crate::inference::embed_engine::EmbedEngine>>,
}

impl Knowledge {
    pub fn new(
        db: Db,
        inference: Inference,
        index_dir: PathBuf,
        originals: PathBuf,
        settings: KnowledgeSettings,
    ) -> Knowledge {
        Knowledge {
            inner: Arc::new(Inner {
                db,
                inference,
                indexes: VectorIndexes::new(index_dir),
                originals,
                settings,
                wake: Notify::new(),
                previous_embedder: std::sync::Mutex::new(None),
            }),
        }
    }

    pub fn settings(&self) -> &KnowledgeSettings {
        &self.inner.settings
    }

    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// Where the uploaded file of document `id` is kept.
    pub fn original_path(&self, scope: &TenantScope, id: &str) -> PathBuf {
        self.inner.originals.join(scope.tenant_id()).join(id)
    }

    /// A directory for uploads in progress, on the same filesystem as the originals.
    pub fn upload_dir(&self) -> PathBuf {
        self.inner.originals.join(".incoming")
    }

    /// Removes what uploads of a previous run left in the upload directory (a crash or a kill
    /// in the middle of one). Nothing else writes there, and the data directory's lock keeps
    /// other servers out, so everything in it is a leftover.
    async fn sweep_incoming(&self) -> Result<(), KnowledgeError> {
        let dir = self.upload_dir();
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut removed = 0;
        while let Some(entry) = entries.next_entry().await? {
            let path = entry.path();
            let result = if entry.file_type().await?.is_dir() {
                tokio::fs::remove_dir_all(&path).await
            } else {
                tokio::fs::remove_file(&path).await
            };
            match result {
                Ok(()) => removed += 1,
                Err(error) => {
                    tracing::warn!(%error, path = %path.display(), "cannot remove a leftover upload")
                }
            }
        }
        if removed > 0 {
            tracing::info!(
                files = removed,
                "removed unfinished uploads of a previous run"
            );
        }
        Ok(())
    }

    /// Tells the workers that a job is waiting.
    pub fn wake(&self) {
        self.inner.wake.notify_waiters();
        self.inner.wake.notify_one();
    }

    /// Deletes a document with its original, chunks and vectors.
    pub async fn delete(&self, scope: &TenantScope, id: &str) -> Result<(), KnowledgeError> {
        let (owned_scope, owned_id) = (scope.clone(), id.to_string());
        let removed = self
            .inner
            .db
            .call(move |c| documents::delete(c, &owned_scope, &owned_id))
            .await?;
        let indexes = self.inner.indexes.clone();
        let owned_scope = scope.clone();
        tokio::task::spawn_blocking(move || indexes.remove(&owned_scope, &removed))
            .await
            .map_err(|e| IndexError::Usearch(e.to_string()))??;
        match tokio::fs::remove_file(self.original_path(scope, id)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Removes the files of a tenant whose rows were deleted: originals and vector indexes.
    pub async fn forget_tenant(&self, tenant_id: &str) -> Result<(), KnowledgeError> {
        let indexes = self.inner.indexes.clone();
        let tenant = tenant_id.to_string();
        tokio::task::spawn_blocking(move || indexes.drop_tenant(&tenant))
            .await
            .map_err(|e| IndexError::Usearch(e.to_string()))??;
        match tokio::fs::remove_dir_all(self.inner.originals.join(tenant_id)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Starts the ingestion workers and
    /// the background embedder (which embeds chunks that lack a vector from the current
    /// embedder, e.g. after the embedder changed).
    pub async fn start(&self, shutdown: CancellationToken) -> Result<(), KnowledgeError> {
        self.sweep_incoming().await?;
        // Jobs a previous run left unfinished are claimed again when their lease runs out.
        self.inner
            .db
            .call(|c| jobs::prune(c).map_err(KnowledgeError::from))
            .await?;
        for worker in 0..self.inner.settings.workers.max(1) {
            let this = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { this.run_worker(worker, shutdown).await });
        }
        let this = self.clone();
        tokio::spawn(async move { this.run_reembedder(shutdown).await });
        Ok(())
    }
}

/// How long an idle worker sleeps before looking at the queue again (it is also woken).
const IDLE_POLL: Duration = Duration::from_secs(2);
