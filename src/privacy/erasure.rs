//! Erasing one end user (the right to erasure). One transaction removes every row of theirs
//! and records the erasure in the audit log (who, when, how many rows; never what). With
//! `secure_delete` on (every connection, `db::connect`), freed pages are zeroed; a
//! `wal_checkpoint(TRUNCATE)` afterwards leaves no older copy of them in the write-ahead log.
//! The model's kept attention state for the tenant is dropped too, and their export files.

use serde::Serialize;

use super::{Privacy, PrivacyError, Requester, audit_event};
use crate::auth::{RequestContext, TenantScope, audit};
use crate::db::privacy::{PrivacyStore, checkpoint_truncate};

/// What one erasure removed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Erasure {
    pub end_user_id: String,
    /// Rows removed, per kind (messages, goals, identities, jobs, ...).
    #[schema(value_type = Object)]
    pub removed: serde_json::Map<String, serde_json::Value>,
}

impl Privacy {
    /// Erases the end user and everything of theirs. Answers `NotFound` for an id the tenant
    /// does not have (an erased one too). Interrupted (`kill -9`), it leaves everything or
    /// nothing: the rows go in one transaction.
    pub async fn erase_end_user(
        &self,
        scope: &TenantScope,
        end_user_id: &str,
        requester: &Requester,
        context: &RequestContext,
    ) -> Result<Erasure, PrivacyError> {
        // Their export files first: a crash after this leaves exports that answer "expired",
        // never a file of someone erased.
        self.inner.coaching.end_user(scope, end_user_id).await?;
        self.remove_owner_dir(scope, Some(end_user_id)).await?;
        let event = audit_event(requester, scope, "end_user.erased", context).target(end_user_id);
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
