//! Ingestion workers and the background re-embedder.

use std::time::Duration;

use rusqlite::{OptionalExtension, params};
use tokio_util::sync::CancellationToken;

use super::chunk::{self, Chunk};
use super::documents;
use super::jobs::{self, Job};
use super::sniff::DocumentKind;
use super::{IDLE_POLL, Knowledge, KnowledgeError};
use crate::auth::TenantScope;
use crate::inference::InferenceError;
use crate::inference::embed::EmbedKind;
use crate::inference::embed_engine::EmbedEngine;

/// Tries of one ingestion job before an internal error fails the document.
const MAX_ATTEMPTS: i64 = 3;

/// Chunks per embedding request: one batch of the embedder, so progress moves steadily.
const EMBED_BATCH: usize = crate::inference::embed::BATCH_SIZE;

/// Why a job stopped without finishing.
enum Interrupted {
    /// The document no longer exists, or the server is shutting down: nothing to record.
    Gone,
    /// The embedder is not there yet (or its remote server is down); try again later.
    NotReady,
    /// A failure of ours (database, index), not of the document.
    Internal(KnowledgeError),
}

impl From<KnowledgeError> for Interrupted {
    fn from(error: KnowledgeError) -> Interrupted {
        match error {
            KnowledgeError::NotFound => Interrupted::Gone,
            // A remote embedder that is down after its retries is waited for the same way.
            KnowledgeError::Inference(
                InferenceError::NotReady(_) | InferenceError::Unavailable(_),
            ) => Interrupted::NotReady,
            KnowledgeError::Inference(InferenceError::ShuttingDown) => Interrupted::Gone,
            other => Interrupted::Internal(other),
        }
    }
}

impl From<crate::db::DbError> for Interrupted {
    fn from(error: crate::db::DbError) -> Interrupted {
        Interrupted::Internal(error.into())
    }
}

impl Knowledge {
    pub(super) async fn run_worker(self, worker: usize, shutdown: CancellationToken) {
        // Every wait watches for shutdown: a worker still sleeping after the server stopped
        // would later write to the database another process (the restarted server) now owns.
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let claimed = self
                .inner
                .db
                .call(|c| jobs::claim(c, jobs::INGEST).map_err(KnowledgeError::from))
                .await;
            let job = match claimed {
                Ok(Some(job)) => job,
                Ok(None) => {
                    tokio::select! {
                        _ = self.inner.wake.notified() => {}
                        _ = tokio::time::sleep(IDLE_POLL) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    continue;
                }
                Err(error) => {
                    tracing::error!(%error, "cannot claim an ingestion job");
                    tokio::time::sleep(IDLE_POLL).await;
                    continue;
                }
            };
            tracing::info!(worker, job = job.id, document = %job.subject_id, "ingesting");
            let outcome = tokio::select! {
                outcome = crate::jobs::under_lease(&self.inner.db, job.id, self.ingest(&job)) => outcome,
                // Left 'running': its lease runs out and the next process takes it up.
                _ = shutdown.cancelled() => return,
            };
            let id = job.id;
            let record = match outcome {
                Ok(()) | Err(Interrupted::Gone) => {
                    self.inner
                        .db
                        .call(move |c| jobs::finish(c, id, None).map_err(KnowledgeError::from))
                        .await
                }
                Err(Interrupted::NotReady) => {
                    if pause_or_stop(&shutdown).await {
                        return;
                    }
                    self.inner
                        .db
                        .call(move |c| jobs::requeue(c, id).map_err(KnowledgeError::from))
                        .await
                }
                Err(Interrupted::Internal(error)) if job.attempts < MAX_ATTEMPTS => {
                    // Transient trouble (a busy database, a full disk being cleared): retry.
                    tracing::warn!(%error, document = %job.subject_id, attempt = job.attempts, "ingestion will be retried");
                    if pause_or_stop(&shutdown).await {
                        return;
                    }
                    self.inner
                        .db
                        .call(move |c| jobs::requeue(c, id).map_err(KnowledgeError::from))
                        .await
                }
                Err(Interrupted::Internal(error)) => {
                    tracing::error!(%error, document = %job.subject_id, "ingestion failed");
                    let message = error.to_string();
                    let scope = job.tenant_id.clone().map(TenantScope::new);
                    let document = job.subject_id.clone();
                    self.inner
                        .db
                        .call(move |c| {
                            if let Some(scope) = scope {
                                documents::set_failed(
                                    c,
                                    &scope,
                                    &document,
                                    "the server could not store this document; try re-ingesting it",
                                )?;
                            }
                            jobs::finish(c, id, Some(&message)).map_err(KnowledgeError::from)
                        })
                        .await
                }
            };
            if let Err(error) = record {
                tracing::error!(%error, "cannot record a job's outcome");
            }
        }
    }

    /// Extract → chunk → store → embed → ready. Failures of the document are recorded on it
    /// and return `Ok`.
    async fn ingest(&self, job: &Job) -> Result<(), Interrupted> {
        let scope = TenantScope::new(job.tenant_id.clone().ok_or(Interrupted::Gone)?);
        let id = job.subject_id.clone();
        let db = &self.inner.db;
        let document = {
            let (scope, id) = (scope.clone(), id.clone());
            db.call(move |c| {
                let document = documents::get(c, &scope, &id)?;
                documents::set_progress(c, &scope, &id, "processing", 0.05)?;
                Ok::<_, KnowledgeError>(document)
            })
            .await?
        };
        let bytes = match tokio::fs::read(self.original_path(&scope, &id)).await {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!(%error, document = %id, "the original file is missing");
                return self
                    .fail(
                        &scope,
                        &id,
                        "the uploaded file is missing on the server; upload it again",
                    )
                    .await;
            }
        };
        let extracted = match self
            .inner
            .settings
            .sandbox
            .extract(document.kind, bytes)
            .await
        {
            Ok(extracted) => extracted,
            Err(error) => return self.fail(&scope, &id, &error.to_string()).await,
        };
        self.progress(&scope, &id, 0.2).await?;

        // Chunks are measured in the embedder's tokens, so ingestion waits for it.
        let engine = self
            .inner
            .inference
            .embedder()
            .map_err(KnowledgeError::from)?;
        let settings = self.inner.settings.chunking;
        let tokens = engine.tokens().clone();
        let chunks = tokio::task::spawn_blocking(move || {
            let chunks = chunk::chunk(&extracted, settings, &tokens);
            (chunks, extracted.pages, extracted.title)
        })
        .await
        .map_err(|e| Interrupted::Internal(KnowledgeError::Invalid(e.to_string())))?;
        let (chunks, pages, found_title) = chunks;
        if chunks.is_empty() {
            return self
                .fail(&scope, &id, "no text was found in this file")
                .await;
        }
        let stored = {
            let (scope, id, chunks) = (scope.clone(), id.clone(), chunks.clone());
            let title = found_title.filter(|_| document.kind != DocumentKind::Text);
            db.call(move |c| {
                documents::replace_chunks(c, &scope, &id, &chunks, pages, title.as_deref())
                    .map_err(KnowledgeError::from)
            })
            .await?
        };
        let (ids, old) = stored;
        self.remove_from_index(&scope, old).await?;
        self.progress(&scope, &id, 0.3).await?;

        let items: Vec<(i64, Chunk)> = ids.into_iter().zip(chunks).collect();
        let total = items.len();
        for (done, batch) in items.chunks(EMBED_BATCH).enumerate() {
            let batch: Vec<(i64, String)> = batch
                .iter()
                .map(|(id, chunk)| (*id, chunk.embedding_input()))
                .collect();
            self.embed_and_store(&engine, &scope, batch).await?;
            let fraction = ((done + 1) * EMBED_BATCH).min(total) as f64 / total as f64;
            self.progress(&scope, &id, 0.3 + 0.69 * fraction).await?;
        }
        let (scope_for_db, id_for_db) = (scope.clone(), id.clone());
        let (indexes, key) = (self.inner.indexes.clone(), engine.key());
        db.call(move |c| {
            indexes.flush(&scope_for_db, &key)?;
            documents::set_ready(c, &scope_for_db, &id_for_db)?;
            Ok::<_, KnowledgeError>(())
        })
        .await?;
        tracing::info!(document = %id, chunks = total, "document ready");
        metrics::counter!("knowledge_documents_ingested_total").increment(1);
        metrics::counter!("knowledge_chunks_embedded_total").increment(total as u64);
        Ok(())
    }

    async fn fail(&self, scope: &TenantScope, id: &str, message: &str) -> Result<(), Interrupted> {
        tracing::info!(document = %id, reason = %message, "document failed");
        metrics::counter!("knowledge_documents_failed_total").increment(1);
        let (scope, id, message) = (scope.clone(), id.to_string(), message.to_string());
        self.inner
            .db
            .call(move |c| {
                documents::set_failed(c, &scope, &id, &message).map_err(KnowledgeError::from)
            })
            .await?;
        Ok(())
    }

    async fn progress(
        &self,
        scope: &TenantScope,
        id: &str,
        progress: f64,
    ) -> Result<(), Interrupted> {
        let (scope, id) = (scope.clone(), id.to_string());
        let changed = self
            .inner
            .db
            .call(move |c| {
                c.execute(
                    "UPDATE documents SET progress = ?3, status = 'processing' \
                     WHERE tenant_id = ?1 AND id = ?2",
                    params![scope.tenant_id(), id, progress],
                )
                .map_err(KnowledgeError::from)
            })
            .await?;
        if changed == 0 {
            return Err(Interrupted::Gone);
        }
        Ok(())
    }

    async fn remove_from_index(
        &self,
        scope: &TenantScope,
        ids: Vec<i64>,
    ) -> Result<(), Interrupted> {
        let indexes = self.inner.indexes.clone();
        let scope = scope.clone();
        tokio::task::spawn_blocking(move || indexes.remove(&scope, &ids))
            .await
            .map_err(|e| Interrupted::Internal(KnowledgeError::Invalid(e.to_string())))?
            .map_err(|e| Interrupted::Internal(e.into()))
    }

    /// Embeds `(chunk id, input)` pairs, stores the vectors in SQLite, then adds them to the
    /// index. Waits and retries while the embedder's queue is full.
    async fn embed_and_store(
        &self,
        engine: &EmbedEngine,
        scope: &TenantScope,
        batch: Vec<(i64, String)>,
    ) -> Result<(), Interrupted> {
        let inputs: Vec<String> = batch.iter().map(|(_, text)| text.clone()).collect();
        let vectors = loop {
            match engine
                .embed(scope.tenant_id(), inputs.clone(), EmbedKind::Document)
                .await
            {
                Ok(vectors) => break vectors,
                Err(InferenceError::Overloaded { retry_after }) => {
                    tokio::time::sleep(retry_after.max(Duration::from_millis(200))).await;
                }
                Err(error) => return Err(KnowledgeError::from(error).into()),
            }
        };
        let items: Vec<(i64, Vec<f32>)> =
            batch.into_iter().map(|(id, _)| id).zip(vectors).collect();
        let key = engine.key();
        let dimensions = engine.info().dimensions;
        let indexes = self.inner.indexes.clone();
        let scope = scope.clone();
        self.inner
            .db
            .call(move |c| {
                documents::store_vectors(c, &scope, &key, &items)?;
                indexes.add(c, &scope, &key, dimensions, &items)?;
                Ok::<_, KnowledgeError>(())
            })
            .await?;
        Ok(())
    }

    /// Embeds chunks of ready documents that have no vector from the current embedder (the
    /// embedder changed, or a crash came between storing chunks and vectors). When a tenant is
    /// complete, vectors from other embedders are dropped.
    pub(super) async fn run_reembedder(self, shutdown: CancellationToken) {
        loop {
            let pause = match self.reembed_some().await {
                Ok(true) => Duration::ZERO,
                Ok(false) => Duration::from_secs(30),
                Err(error) => {
                    tracing::debug!(error = ?error.to_string(), "re-embedding waits");
                    Duration::from_secs(5)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// One batch; `Ok(true)` when there may be more.
    async fn reembed_some(&self) -> Result<bool, KnowledgeError> {
        let engine = self.inner.inference.embedder()?;
        let key = engine.key();
        self.remember_embedder(&engine).await?;
        self.load_previous_embedder(&key).await;
        let missing_key = key.clone();
        let missing: Vec<(String, i64, String, String)> = self
            .inner
            .db
            .call(move |c| {
                let mut statement = c.prepare_cached(
                    "SELECT c.tenant_id, c.id, c.heading_path, c.text FROM chunks c \
                     JOIN documents d ON d.id = c.document_id AND d.status = 'ready' \
                     WHERE NOT EXISTS (SELECT 1 FROM chunk_vectors v \
                                       WHERE v.chunk_id = c.id AND v.embedder = ?1) \
                     ORDER BY c.tenant_id, c.id LIMIT ?2",
                )?;
                let rows = statement
                    .query_map(params![missing_key, EMBED_BATCH as i64], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok::<_, KnowledgeError>(rows)
            })
            .await?;
        if missing.is_empty() {
            self.drop_stale_vectors(&key).await?;
            if self
                .inner
                .previous_embedder
                .lock()
                .expect("previous")
                .take()
                .is_some()
            {
                tracing::info!(embedder = %key, "re-embedding complete");
            }
            return Ok(false);
        }
        let tenant = missing[0].0.clone();
        let scope = TenantScope::new(tenant.clone());
        let batch: Vec<(i64, String)> = missing
            .into_iter()
            .filter(|(t, ..)| *t == tenant)
            .map(|(_, id, heading_path, text)| {
                let input = Chunk {
                    text,
                    heading_path,
                    page: None,
                    char_start: 0,
                    char_end: 0,
                    token_count: 0,
                }
                .embedding_input();
                (id, input)
            })
            .collect();
        tracing::info!(tenant = %tenant, chunks = batch.len(), embedder = %key, "re-embedding");
        match self.embed_and_store(&engine, &scope, batch).await {
            Ok(()) => {
                // A tenant finished (the next batch is another tenant's or none) is saved now.
                let more_of_tenant = self.tenant_needs_vectors(&scope, &key).await?;
                if !more_of_tenant {
                    let indexes = self.inner.indexes.clone();
                    tokio::task::spawn_blocking(move || indexes.flush(&scope, &key))
                        .await
                        .map_err(|e| IndexError::Usearch(e.to_string()))??;
                }
                Ok(true)
            }
            Err(Interrupted::Internal(error)) => Err(error),
            Err(_) => Ok(false),
        }
    }

    /// Records where the current embedder comes from, for the next change of embedder.
    async fn remember_embedder(&self, engine: &EmbedEngine) -> Result<(), KnowledgeError> {
        let key = engine.key();
        let path = engine.info().path.display().to_string();
        self.inner
            .db
            .call(move |c| {
                c.execute(
                    "INSERT INTO embedders (key, path) VALUES (?1, ?2) ON CONFLICT (key) \
                     DO UPDATE SET path = excluded.path, \
                     updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE path != excluded.path",
                    params![key, path],
                )
                .map_err(KnowledgeError::from)
            })
            .await?;
        Ok(())
    }

    /// When vectors from another embedder remain and its files are still here, loads it to
    /// embed queries until re-embedding is complete (a failure only costs that quality).
    async fn load_previous_embedder(&self, key: &str) {
        if self
            .inner
            .previous_embedder
            .lock()
            .expect("previous")
            .is_some()
        {
            return;
        }
        let key = key.to_string();
        let previous: Result<Option<(String, String)>, KnowledgeError> = self
            .inner
            .db
            .call(move |c| {
                c.query_row(
                    "SELECT e.key, e.path FROM embedders e WHERE e.key != ?1 AND EXISTS \
                     (SELECT 1 FROM chunk_vectors v WHERE v.embedder = e.key) \
                     ORDER BY e.updated_at DESC LIMIT 1",
                    params![key],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(KnowledgeError::from)
            })
            .await;
        let Ok(Some((previous_key, path))) = previous else {
            return;
        };
        let loaded = tokio::task::spawn_blocking(move || {
            let embedder = crate::inference::embed::Embedder::load(
                std::path::Path::new(&path),
                &candle_core::Device::Cpu,
                &crate::inference::embed::EmbedderOptions::default(),
            )?;
            EmbedEngine::start(embedder, 64)
        })
        .await;
        match loaded {
            Ok(Ok(engine)) if engine.key() == previous_key => {
                tracing::info!(embedder = %previous_key, "previous embedder serves queries while chunks are re-embedded");
                *self.inner.previous_embedder.lock().expect("previous") = Some(engine);
            }
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, embedder = %previous_key, "cannot load the previous embedder; search uses the new one as it fills")
            }
            Err(error) => tracing::warn!(%error, "loading the previous embedder crashed"),
        }
    }

    /// The embedder for a tenant's queries: the previous one while this tenant's chunks are
    /// being re-embedded and it still has the previous vectors, otherwise the current one.
    pub(super) async fn query_embedder(
        &self,
        scope: &TenantScope,
    ) -> Result<EmbedEngine, KnowledgeError> {
        let current = self.inner.inference.embedder()?;
        let previous = self
            .inner
            .previous_embedder
            .lock()
            .expect("previous")
            .clone();
        let Some(previous) = previous else {
            return Ok(current);
        };
        let use_previous = self.tenant_needs_vectors(scope, &current.key()).await?
            && self.tenant_has_vectors(scope, &previous.key()).await?;
        Ok(if use_previous { previous } else { current })
    }

    /// Whether some ready chunk of the tenant has no vector from embedder `key`.
    async fn tenant_needs_vectors(
        &self,
        scope: &TenantScope,
        key: &str,
    ) -> Result<bool, KnowledgeError> {
        self.tenant_check(
            scope,
            key,
            "SELECT EXISTS (SELECT 1 FROM chunks c \
               JOIN documents d ON d.id = c.document_id AND d.status = 'ready' \
               WHERE c.tenant_id = ?1 AND NOT EXISTS (SELECT 1 FROM chunk_vectors v \
                 WHERE v.chunk_id = c.id AND v.embedder = ?2))",
        )
        .await
    }

    /// Whether the tenant has any vector from embedder `key`.
    async fn tenant_has_vectors(
        &self,
        scope: &TenantScope,
        key: &str,
    ) -> Result<bool, KnowledgeError> {
        self.tenant_check(
            scope,
            key,
            "SELECT EXISTS (SELECT 1 FROM chunk_vectors WHERE tenant_id = ?1 AND embedder = ?2)",
        )
        .await
    }

    /// Runs a yes/no `query` with the tenant id as ?1 and the embedder key as ?2.
    async fn tenant_check(
        &self,
        scope: &TenantScope,
        key: &str,
        query: &'static str,
    ) -> Result<bool, KnowledgeError> {
        let (tenant, key) = (scope.tenant_id().to_string(), key.to_string());
        self.inner
            .db
            .call(move |c| {
                c.query_row(query, params![tenant, key], |r| r.get::<_, bool>(0))
                    .map_err(KnowledgeError::from)
            })
            .await
    }

    /// Vectors of embedders other than `key`, in tenants that are fully embedded with `key`.
    async fn drop_stale_vectors(&self, key: &str) -> Result<(), KnowledgeError> {
        let key_owned = key.to_string();
        let tenants: Vec<String> = self
            .inner
            .db
            .call(move |c| {
                let mut statement = c.prepare_cached(
                    "SELECT DISTINCT tenant_id FROM chunk_vectors WHERE embedder != ?1",
                )?;
                let tenants = statement
                    .query_map(params![key_owned], |r| r.get(0))?
                    .collect::<Result<Vec<String>, _>>()?;
                Ok::<_, KnowledgeError>(tenants)
            })
            .await?;
        for tenant in tenants {
            let (t, k) = (tenant.clone(), key.to_string());
            self.inner
                .db
                .call(move |c| {
                    c.execute(
                        "DELETE FROM chunk_vectors WHERE tenant_id = ?1 AND embedder != ?2",
                        params![t, k],
                    )
                    .map_err(KnowledgeError::from)
                })
                .await?;
            let indexes = self.inner.indexes.clone();
            let key = key.to_string();
            tokio::task::spawn_blocking(move || indexes.drop_others(&tenant, &key))
                .await
                .map_err(|e| IndexError::Usearch(e.to_string()))??;
        }
        Ok(())
    }
}

use super::index::IndexError;

/// Waits `IDLE_POLL` before a retry; true when the server stops meanwhile (the job stays
/// 'running' and the next start queues it again).
async fn pause_or_stop(shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(IDLE_POLL) => false,
        _ = shutdown.cancelled() => true,
    }
}
