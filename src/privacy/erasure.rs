//! Erasing one end user (the right to erasure). One transaction removes every row of theirs
//! and records the erasure in the audit log (who, when, how many rows; never what). With
//! `secure_delete` on (every connection, `db::connect`), freed pages are zeroed; a
//! `wal_checkpoint(TRUNCATE)` afterwards leaves no older copy of them in the write-ahead log.
//! The model's kept attention state for the tenant is dropped too, and their export files.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Privacy, PrivacyError, Requester, audit_event};
use crate::auth::{RequestContext, TenantScope, audit};
use crate::db::privacy::{PrivacyStore, checkpoint_truncate};
use crate::jobs::{BoxFuture, Handler, Job, JobError, NewJob, Outcome};

/// What one erasure removed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Erasure {
    pub end_user_id: String,
    /// Rows removed, per kind (messages, goals, identities, jobs, ...).
    #[schema(value_type = Object)]
    pub removed: serde_json::Map<String, serde_json::Value>,
}

/// The job kind that finishes an erasure the process died in the middle of.
pub const ERASURE_JOB: &str = "erasure";

/// Who asked for an erasure, kept in its job so a resumed one is audited as the original.
#[derive(Debug, Serialize, Deserialize)]
struct ErasureRequest {
    actor_label: String,
    actor_user_id: Option<String>,
    ip: Option<std::net::IpAddr>,
    request_id: String,
}

impl Privacy {
    /// Erases the end user and everything of theirs. Answers `NotFound` for an id the tenant
    /// does not have (an erased one too).
    ///
    /// Interrupted (`kill -9`), it finishes after the restart: an `erasure` job is committed
    /// first, due only after a lease's time, and the erasure's own transaction deletes it
    /// (it names the end user). The rows go in that one transaction, so nothing is ever half
    /// erased.
    pub async fn erase_end_user(
        &self,
        scope: &TenantScope,
        end_user_id: &str,
        requester: &Requester,
        context: &RequestContext,
    ) -> Result<Erasure, PrivacyError> {
        self.inner.coaching.end_user(scope, end_user_id).await?;
        let event = audit_event(requester, scope, "end_user.erased", context).target(end_user_id);
        let request = ErasureRequest {
            actor_label: event.actor_label().to_string(),
            actor_user_id: event.actor_user_id().map(str::to_string),
            ip: context.ip,
            request_id: context.request_id.clone(),
        };
        let lease = chrono::Duration::from_std(crate::jobs::LEASE).expect("small");
        self.inner
            .jobs
            .enqueue(NewJob {
                kind: ERASURE_JOB,
                tenant_id: Some(scope.tenant_id().to_string()),
                subject_id: end_user_id.to_string(),
                payload: serde_json::to_value(&request).expect("plain fields"),
                run_at: Utc::now() + lease,
                dedupe_key: Some(format!("erasure:{}:{end_user_id}", scope.tenant_id())),
                clock_id: None,
            })
            .await?;
        self.finish_erasure(scope, end_user_id, event).await
    }

    async fn finish_erasure(
        &self,
        scope: &TenantScope,
        end_user_id: &str,
        event: audit::AuditEvent,
    ) -> Result<Erasure, PrivacyError> {
        // Their export files first: a crash after this leaves exports that answer "expired",
        // never a file of someone erased.
        self.remove_owner_dir(scope, Some(end_user_id)).await?;
        crate::crash_points::reached("erasure.before_commit");
        let (scope_moved, id) = (scope.clone(), end_user_id.to_string());
        let removed = self
            .db()
            .call(move |c| {
                crate::db::immediate(c, |c| {
                    let Some(counts) = c.erase_end_user(&scope_moved, &id)? else {
                        return Ok(None);
                    };
                    let removed: serde_json::Map<_, _> = counts
                        .into_iter()
                        .map(|(kind, n)| (kind.to_string(), n.into()))
                        .collect();
                    audit::record(c, &event.detail(serde_json::json!({ "removed": removed })))
                        .map_err(crate::db::DbError::from)?;
                    Ok::<_, crate::db::DbError>(Some(removed))
                })
            })
            .await?
            .ok_or(PrivacyError::NotFound("end user"))?;
        self.scrub_database().await?;
        if let Ok(engine) = self.inner.inference.chat() {
            engine.forget(scope.tenant_id());
        }
        tracing::info!(tenant = scope.tenant_id(), "an end user was erased");
        Ok(Erasure {
            end_user_id: end_user_id.to_string(),
            removed,
        })
    }

    /// The end user behind a visitor token erases themselves (the chat page's "delete my
    /// data").
    pub async fn erase_myself(
        &self,
        scope: &TenantScope,
        visitor_id: &str,
        context: &RequestContext,
    ) -> Result<Erasure, PrivacyError> {
        let user = self
            .inner
            .coaching
            .end_user_of_visitor(scope, visitor_id)
            .await?;
        self.erase_end_user(scope, &user.id, &Requester::EndUser, context)
            .await
    }

    /// Moves everything in the write-ahead log into the database file and empties the log, so
    /// deleted rows survive in neither. Also used after a tenant's deletion.
    pub async fn scrub_database(&self) -> Result<(), PrivacyError> {
        let complete = self.db().call(|c| checkpoint_truncate(c)).await?;
        if !complete {
            // Long reads held old pages; the next checkpoint (SQLite's own, at 1,000 pages)
            // writes the zeroed pages over them.
            tracing::warn!("the write-ahead log could not be emptied yet: reads were running");
        }
        Ok(())
    }
}

/// Finishes an erasure whose process died before its transaction committed.
pub(super) struct ErasureJob(pub(super) Privacy);

impl Handler for ErasureJob {
    fn run<'a>(
        &'a self,
        job: &'a Job,
        _now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Outcome, JobError>> {
        Box::pin(async move {
            let scope = crate::jobs::tenant_scope(job)?;
            let request: ErasureRequest = serde_json::from_value(job.payload.clone())
                .map_err(|e| JobError::Fatal(format!("an erasure job's payload: {e}")))?;
            let context = RequestContext {
                ip: request.ip,
                request_id: request.request_id,
            };
            let mut event =
                audit::AuditEvent::new("end_user.erased", &request.actor_label, &context)
                    .tenant(scope.tenant_id())
                    .target(&job.subject_id);
            if let Some(user) = &request.actor_user_id {
                event = event.actor(user);
            }
            match self.0.finish_erasure(&scope, &job.subject_id, event).await {
                Ok(_) => {
                    tracing::info!(job = job.id, "an interrupted erasure was finished");
                    Ok(Outcome::Done)
                }
                // Erased already (the request's own transaction won).
                Err(PrivacyError::NotFound(_)) => Ok(Outcome::Done),
                Err(PrivacyError::Db(error)) => Err(error.into()),
                Err(error) => Err(JobError::Retry(error.to_string())),
            }
        })
    }
}
