//! Data protection: what a creator owes the people they coach. Exports (one end user, or the
//! whole tenant) are jobs that end in a ZIP; erasure removes an end user in one transaction
//! and leaves nothing readable in the database file, its log or the model's kept state.

pub mod erasure;
pub mod export;
pub mod retention;

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

use crate::auth::{Principal, RequestContext, TenantScope, new_id, tokens};
use crate::coaching::Coaching;
use crate::db::jobs::JobStore;
use crate::db::privacy::{ExportRecord, PrivacyStore};
use crate::db::{Db, DbError};
use crate::inference::runtime::Inference;
use crate::jobs::{Jobs, NewJob};

/// The job kind that writes an export's ZIP.
pub const EXPORT_JOB: &str = "export";
/// How long an end user's download link works.
pub const LINK_VALID: Duration = Duration::hours(24);
/// How long a staff export stays on disk unless the retention policy says less.
pub const EXPORT_KEPT: Duration = Duration::days(7);
/// Download links start with this, so a leaked one is recognisable.
pub const LINK_PREFIX: &str = "exp_";

#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    #[error("no such {0}")]
    NotFound(&'static str),
    /// The export's file is gone: it expired, or its end user was erased.
    #[error("this export has expired; ask for a new one")]
    Expired,
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("the export could not be written: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Coaching(#[from] crate::coaching::CoachingError),
    /// A retention policy out of bounds.
    #[error("{0}")]
    Invalid(String),
}

/// Who asked, for the audit log and the export's record.
#[derive(Debug, Clone)]
pub enum Requester {
    Staff(Principal),
    /// The end user themselves, from the chat page.
    EndUser,
}

impl Requester {
    fn label(&self) -> String {
        match self {
            Requester::Staff(p) => match &p.credential {
                crate::auth::Credential::ApiKey { key_id } => format!("key:{key_id}"),
                _ => format!("user:{}", p.user_id.as_deref().unwrap_or("")),
            },
            Requester::EndUser => "end_user".into(),
        }
    }
}

/// The data-protection service. Cheap to clone.
#[derive(Clone)]
pub struct Privacy {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    jobs: Jobs,
    inference: Inference,
    coaching: Coaching,
    /// `<data-dir>/exports`: `<tenant>/<end user>/<export>.zip`, `<tenant>/tenant/<export>.zip`.
    exports_dir: PathBuf,
    /// `<data-dir>/originals`, read by tenant exports.
    originals_dir: PathBuf,
}

impl Privacy {
    /// The service, with its export job registered on `jobs`.
    pub fn new(
        db: Db,
        jobs: Jobs,
        inference: Inference,
        coaching: Coaching,
        exports_dir: PathBuf,
        originals_dir: PathBuf,
    ) -> Privacy {
        let privacy = Privacy {
            inner: Arc::new(Inner {
                db,
                jobs: jobs.clone(),
                inference,
                coaching,
                exports_dir,
                originals_dir,
            }),
        };
        jobs.register(EXPORT_JOB, Arc::new(export::ExportJob(privacy.clone())));
        jobs.register(
            erasure::ERASURE_JOB,
            Arc::new(erasure::ErasureJob(privacy.clone())),
        );
        retention::register(&privacy, &jobs);
        privacy
    }

    fn db(&self) -> &Db {
        &self.inner.db
    }

    /// Where an export's ZIP lives.
    fn export_path(&self, tenant_id: &str, record: &ExportRecord) -> PathBuf {
        self.owner_dir(tenant_id, record.end_user_id.as_deref())
            .join(format!("{}.zip", record.id))
    }

    /// Removes the export files of one end user (`Some`) or the tenant's own (`None`).
    async fn remove_owner_dir(
        &self,
        scope: &TenantScope,
        end_user_id: Option<&str>,
    ) -> Result<(), PrivacyError> {
        match tokio::fs::remove_dir_all(self.owner_dir(scope.tenant_id(), end_user_id)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn owner_dir(&self, tenant_id: &str, end_user_id: Option<&str>) -> PathBuf {
        self.inner
            .exports_dir
            .join(tenant_id)
            .join(end_user_id.unwrap_or("tenant"))
    }

    /// Starts an export of one end user (`Some`) or of the whole tenant (`None`).
    pub async fn start_export(
        &self,
        scope: &TenantScope,
        end_user_id: Option<&str>,
        requester: &Requester,
    ) -> Result<ExportRecord, PrivacyError> {
        if let Some(id) = end_user_id {
            self.inner.coaching.end_user(scope, id).await?;
        }
        let record = ExportRecord {
            id: new_id(),
            tenant_id: scope.tenant_id().to_string(),
            end_user_id: end_user_id.map(str::to_string),
            status: "queued".into(),
            requested_by: requester.label(),
            bytes: None,
            error: None,
            created_at: Utc::now(),
            finished_at: None,
            expires_at: None,
        };
        let (scope_moved, row) = (scope.clone(), record.clone());
        self.db()
            .call(move |c| {
                crate::db::atomically(c, |c| {
                    c.create_export(&scope_moved, &row)?;
                    c.enqueue_job(&NewJob {
                        kind: EXPORT_JOB,
                        tenant_id: Some(scope_moved.tenant_id().to_string()),
                        subject_id: row.id.clone(),
                        payload: serde_json::json!({}),
                        run_at: Utc::now(),
                        dedupe_key: None,
                        clock_id: None,
                    })
                    .map(|_| ())
                })
            })
            .await?;
        self.inner.jobs.wake();
        Ok(record)
    }

    /// An export of the end user's own data, asked for on the chat page: the same job, and a
    /// download link that works for [`LINK_VALID`]. Returns the record and the link's secret.
    pub async fn start_own_export(
        &self,
        scope: &TenantScope,
        visitor_id: &str,
    ) -> Result<(ExportRecord, String), PrivacyError> {
        let user = self
            .inner
            .coaching
            .end_user_of_visitor(scope, visitor_id)
            .await?;
        let record = self
            .start_export(scope, Some(&user.id), &Requester::EndUser)
            .await?;
        let secret = tokens::secret_token(LINK_PREFIX);
        let (scope_moved, id, hash) = (
            scope.clone(),
            record.id.clone(),
            tokens::secret_hash(&secret),
        );
        self.db()
            .call(move |c| c.set_export_link(&scope_moved, &id, &hash))
            .await?;
        Ok((record, secret))
    }

    /// An export as its tenant sees it; with `end_user_id`, only one of theirs.
    pub async fn export(
        &self,
        scope: &TenantScope,
        id: &str,
        end_user_id: Option<&str>,
    ) -> Result<ExportRecord, PrivacyError> {
        let (scope_moved, id) = (scope.clone(), id.to_string());
        let record = self
            .db()
            .read(move |c| c.export(&scope_moved, &id))
            .await?
            .filter(|r| r.end_user_id.as_deref() == end_user_id)
            .ok_or(PrivacyError::NotFound("export"))?;
        Ok(record)
    }

    /// The file of a ready export, unless it expired.
    pub fn ready_file(&self, record: &ExportRecord) -> Result<PathBuf, PrivacyError> {
        let expired = record.expires_at.is_some_and(|at| at <= Utc::now());
        let path = self.export_path(&record.tenant_id, record);
        if expired || !path.exists() {
            return Err(PrivacyError::Expired);
        }
        Ok(path)
    }

    /// The export an end user's link names, whatever its state.
    pub async fn export_by_link(&self, secret: &str) -> Result<ExportRecord, PrivacyError> {
        let hash = tokens::secret_hash(secret);
        let record = self
            .db()
            .read(move |c| c.export_by_link(&hash))
            .await?
            .ok_or(PrivacyError::NotFound("export"))?;
        let link_expired = record.created_at + LINK_VALID <= Utc::now();
        if link_expired {
            return Err(PrivacyError::Expired);
        }
        Ok(record)
    }

    /// Removes a deleted tenant's exports from disk.
    pub async fn forget_tenant(&self, tenant_id: &str) -> Result<(), PrivacyError> {
        match tokio::fs::remove_dir_all(self.inner.exports_dir.join(tenant_id)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

/// When a finished export's file is removed: `kept` after it was written (the retention
/// policy's hours, at most [`EXPORT_KEPT`]); an end user's link lapses sooner.
fn expiry(record: &ExportRecord, finished: DateTime<Utc>, kept: Duration) -> DateTime<Utc> {
    match record.requested_by.as_str() {
        "end_user" => (record.created_at + LINK_VALID).min(finished + kept),
        _ => finished + kept,
    }
}

/// The audit event of a data-protection action.
fn audit_event(
    requester: &Requester,
    scope: &TenantScope,
    action: &'static str,
    context: &RequestContext,
) -> crate::auth::audit::AuditEvent {
    match requester {
        Requester::Staff(principal) => {
            crate::auth::audit::AuditEvent::by(principal, action, context)
        }
        Requester::EndUser => {
            crate::auth::audit::AuditEvent::new(action, "end user (chat page)", context)
                .tenant(scope.tenant_id())
        }
    }
}
