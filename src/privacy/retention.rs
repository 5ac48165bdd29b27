//! Retention: each tenant says how long it keeps conversations, end users, exports and its
//! audit log, and a daily job per tenant deletes what is older. Deletion goes in batches of
//! [`BATCH`] rows, each its own transaction, so other writes get their turn between them. An
//! inactive end user is erased exactly as `DELETE /end-users/{id}` would. Every run is audited
//! with its counts (never what was deleted) and kept as the policy's "last run".

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::{Privacy, PrivacyError, Requester, audit_event};
use crate::auth::audit::{self, AuditEvent};
use crate::auth::{RequestContext, TenantScope};
use crate::db::DbError;
use crate::db::privacy::PrivacyStore;
use crate::db::retention::{RetentionPolicy, RetentionStore};
use crate::jobs::{BoxFuture, Handler, Job, JobError, NewJob, Outcome};

/// The job kind of a tenant's daily run.
pub const RETENTION_JOB: &str = "retention";
/// Rows deleted per transaction.
const BATCH: u32 = 200;
/// Time between two runs of a tenant's policy.
pub const EVERY: Duration = Duration::hours(24);
/// The instance keeps at least this much audit log, whatever a tenant asks.
pub const AUDIT_MINIMUM_DAYS: u32 = 30;
/// The longest period a policy takes (100 years): beyond it, keep the data (`null`).
const LONGEST_DAYS: u32 = 36_500;

/// The job's dedupe key: one waiting run per tenant.
pub fn dedupe_key(tenant_id: &str) -> String {
    format!("retention:{tenant_id}")
}

/// What a tenant keeps, when the next run is and what the last one did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RetentionView {
    #[serde(flatten)]
    pub policy: RetentionPolicy,
    /// Shortest audit-log period this instance allows.
    pub audit_minimum_days: u32,
    /// When the next run starts; null when no period is set.
    pub next_run_at: Option<DateTime<Utc>>,
    pub last_run: Option<RetentionRun>,
}

/// One run's outcome.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RetentionRun {
    pub at: DateTime<Utc>,
    /// Rows removed, per kind: conversations, messages, end_users, exports, audit_entries
    /// (and the rows that went with erased end users).
    #[schema(value_type = Object)]
    pub removed: serde_json::Map<String, serde_json::Value>,
}

impl Privacy {
    pub async fn retention(&self, scope: &TenantScope) -> Result<RetentionView, PrivacyError> {
        let scope = scope.clone();
        let (stored, next_run_at) = self
            .db()
            .read(move |c| {
                Ok::<_, DbError>((c.retention_policy(&scope)?, c.next_retention_run(&scope)?))
            })
            .await?;
        let last_run = match (stored.last_run_at, stored.last_result) {
            (Some(at), Some(serde_json::Value::Object(removed))) => {
                Some(RetentionRun { at, removed })
            }
            _ => None,
        };
        Ok(RetentionView {
            policy: stored.policy,
            audit_minimum_days: AUDIT_MINIMUM_DAYS,
            next_run_at,
            last_run,
        })
    }

    /// Replaces the tenant's policy (admins), audited, and schedules its runs: the first one
    /// at once, so a shorter period takes effect today.
    pub async fn set_retention(
        &self,
        scope: &TenantScope,
        policy: RetentionPolicy,
        requester: &Requester,
        context: &RequestContext,
    ) -> Result<RetentionView, PrivacyError> {
        check(&policy)?;
        let event = audit_event(requester, scope, "retention.updated", context)
            .detail(serde_json::to_value(policy).expect("plain fields"));
        let scope_moved = scope.clone();
        self.db()
            .call(move |c| {
                crate::db::immediate(c, |c| {
                    c.set_retention_policy(&scope_moved, &policy)?;
                    audit::record(c, &event).map_err(DbError::from)
                })
            })
            .await?;
        if policy != RetentionPolicy::default() {
            self.schedule_retention(scope, Utc::now()).await?;
        }
        self.retention(scope).await
    }

    /// Queues the tenant's run at `at` unless one is waiting.
    async fn schedule_retention(
        &self,
        scope: &TenantScope,
        at: DateTime<Utc>,
    ) -> Result<(), PrivacyError> {
        self.inner
            .jobs
            .ensure(NewJob {
                kind: RETENTION_JOB,
                tenant_id: Some(scope.tenant_id().to_string()),
                subject_id: scope.tenant_id().to_string(),
                payload: serde_json::json!({}),
                run_at: at,
                dedupe_key: Some(dedupe_key(scope.tenant_id())),
                clock_id: None,
            })
            .await?;
        Ok(())
    }

    /// At start-up: every tenant with a policy has its run waiting (one lost to a failure,
    /// or to a database restored from before it, is queued again).
    pub async fn schedule_all_retention(&self) -> Result<(), PrivacyError> {
        let tenants = self.db().read(|c| c.tenants_with_retention()).await?;
        for tenant in tenants {
            self.schedule_retention(&TenantScope::new(tenant), Utc::now())
                .await?;
        }
        Ok(())
    }

    /// Applies the tenant's policy as of `now`: deletes what is older, in batches, audits the
    /// counts and records them as the last run.
    pub async fn apply_retention(
        &self,
        scope: &TenantScope,
        now: DateTime<Utc>,
        context: &RequestContext,
    ) -> Result<RetentionRun, PrivacyError> {
        let policy = {
            let scope = scope.clone();
            self.db()
                .read(move |c| c.retention_policy(&scope))
                .await?
                .policy
        };
        let mut removed = serde_json::Map::new();
        let mut add = |kind: &str, n: i64| {
            let total = removed.get(kind).and_then(|v| v.as_i64()).unwrap_or(0) + n;
            removed.insert(kind.to_string(), total.into());
        };
        if let Some(days) = policy.conversation_days {
            let before = now - Duration::days(days.into());
            loop {
                let scope = scope.clone();
                let (conversations, messages) = self
                    .db()
                    .call(move |c| c.delete_stale_conversations(&scope, before, BATCH))
                    .await?;
                add("conversations", conversations);
                add("messages", messages);
                if conversations < i64::from(BATCH) {
                    break;
                }
            }
        }
        if let Some(days) = policy.end_user_days {
            let before = now - Duration::days(days.into());
            let mut erased = 0;
            loop {
                let scope_moved = scope.clone();
                let ids = self
                    .db()
                    .read(move |c| c.inactive_end_users(&scope_moved, before, BATCH))
                    .await?;
                for id in &ids {
                    self.remove_owner_dir(scope, Some(id)).await?;
                    let (scope_moved, id) = (scope.clone(), id.clone());
                    let counts = self
                        .db()
                        .call(move |c| c.erase_end_user(&scope_moved, &id))
                        .await?;
                    for (kind, n) in counts.unwrap_or_default() {
                        // The retention's own kinds keep their names; the rest says what
                        // went with the erased end users.
                        add(kind, n);
                    }
                    erased += 1;
                }
                if ids.len() < BATCH as usize {
                    break;
                }
            }
            if erased > 0
                && let Ok(engine) = self.inner.inference.chat()
            {
                engine.forget(scope.tenant_id());
            }
        }
        let finished_before = policy
            .export_hours
            .map(|hours| now - Duration::hours(hours.into()));
        loop {
            let scope_moved = scope.clone();
            let expired = self
                .db()
                .read(move |c| c.expired_exports(&scope_moved, now, finished_before, BATCH))
                .await?;
            for export in &expired {
                // The file first: a crash between leaves a record that answers "expired".
                match tokio::fs::remove_file(self.export_path(scope.tenant_id(), export)).await {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                    _ => {}
                }
                let (scope_moved, id) = (scope.clone(), export.id.clone());
                self.db()
                    .call(move |c| c.delete_export(&scope_moved, &id))
                    .await?;
            }
            add("exports", expired.len() as i64);
            if expired.len() < BATCH as usize {
                break;
            }
        }
        if let Some(days) = policy.audit_days {
            let before = now - Duration::days(days.max(AUDIT_MINIMUM_DAYS).into());
            loop {
                let scope = scope.clone();
                let deleted = self
                    .db()
                    .call(move |c| c.delete_old_audit(&scope, before, BATCH))
                    .await?;
                add("audit_entries", deleted);
                if deleted < i64::from(BATCH) {
                    break;
                }
            }
        }
        removed.retain(|_, n| n.as_i64() != Some(0));
        let run = RetentionRun { at: now, removed };
        let event = AuditEvent::new("retention.applied", "retention policy", context)
            .tenant(scope.tenant_id())
            .detail(serde_json::json!({ "removed": run.removed, "policy": policy }));
        let (scope_moved, result) = (
            scope.clone(),
            serde_json::Value::Object(run.removed.clone()),
        );
        self.db()
            .call(move |c| {
                crate::db::immediate(c, |c| {
                    c.record_retention_run(&scope_moved, now, &result)?;
                    audit::record(c, &event).map_err(DbError::from)
                })
            })
            .await?;
        if !run.removed.is_empty() {
            self.scrub_database().await?;
        }
        tracing::info!(tenant = scope.tenant_id(), removed = ?run.removed, "retention applied");
        Ok(run)
    }

    /// When an export made now will be deleted: the policy's hours, or `default` when shorter
    /// or unset.
    pub(super) async fn export_kept(
        &self,
        scope: &TenantScope,
        default: Duration,
    ) -> Result<Duration, PrivacyError> {
        let scope = scope.clone();
        let policy = self
            .db()
            .read(move |c| c.retention_policy(&scope))
            .await?
            .policy;
        Ok(match policy.export_hours {
            Some(hours) => Duration::hours(hours.into()).min(default),
            None => default,
        })
    }
}

fn check(policy: &RetentionPolicy) -> Result<(), PrivacyError> {
    let days = [
        ("conversation_days", policy.conversation_days),
        ("end_user_days", policy.end_user_days),
        ("audit_days", policy.audit_days),
    ];
    for (name, value) in days {
        if value.is_some_and(|d| d == 0 || d > LONGEST_DAYS) {
            return Err(PrivacyError::Invalid(format!(
                "{name} must be 1 to {LONGEST_DAYS} days, or null to keep the data"
            )));
        }
    }
    if policy
        .export_hours
        .is_some_and(|h| h == 0 || h > LONGEST_DAYS * 24)
    {
        return Err(PrivacyError::Invalid(
            "export_hours must be at least 1, or null for the default (7 days)".into(),
        ));
    }
    if policy.audit_days.is_some_and(|d| d < AUDIT_MINIMUM_DAYS) {
        return Err(PrivacyError::Invalid(format!(
            "this server keeps the audit log for at least {AUDIT_MINIMUM_DAYS} days"
        )));
    }
    Ok(())
}

/// The daily run of one tenant's policy.
pub(super) struct RetentionJob(pub(super) Privacy);

impl Handler for RetentionJob {
    fn run<'a>(
        &'a self,
        job: &'a Job,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Outcome, JobError>> {
        Box::pin(async move {
            let scope = crate::jobs::tenant_scope(job)?;
            let context = RequestContext {
                ip: None,
                request_id: format!("job-{}", job.id),
            };
            let run = crate::jobs::under_lease(
                self.0.db(),
                job.id,
                self.0.apply_retention(&scope, now, &context),
            )
            .await;
            match run {
                Ok(_) => {}
                Err(PrivacyError::Db(error)) => return Err(error.into()),
                Err(error) => return Err(JobError::Retry(error.to_string())),
            }
            // A policy emptied since: no next run until one is set again.
            let scope_moved = scope.clone();
            let policy = self
                .0
                .db()
                .read(move |c| c.retention_policy(&scope_moved))
                .await?
                .policy;
            if policy == RetentionPolicy::default() {
                return Ok(Outcome::Done);
            }
            Ok(Outcome::Again {
                at: now + EVERY,
                payload: serde_json::json!({}),
            })
        })
    }
}

pub(super) fn register(privacy: &Privacy, jobs: &crate::jobs::Jobs) {
    jobs.register(RETENTION_JOB, Arc::new(RetentionJob(privacy.clone())));
}
