//! Storage for retention (`crate::privacy::retention`): each tenant's policy and last run, and
//! the batches a run deletes. Every batch is its own short transaction, so a run over years of
//! data never holds the database writer for long.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::privacy::ExportRecord;
use super::{DbError, instant, parse_instant};
use crate::auth::TenantScope;

/// How long a tenant keeps each kind of data; `None` keeps it until someone deletes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RetentionPolicy {
    /// Conversations with no message for this many days are deleted.
    pub conversation_days: Option<u32>,
    /// End users with no activity (message, check-in, sign-in) for this many days are erased.
    pub end_user_days: Option<u32>,
    /// Exports are deleted this many hours after they were written.
    pub export_hours: Option<u32>,
    /// Audit-log entries older than this many days are deleted (at least 30).
    pub audit_days: Option<u32>,
}

/// A policy with the outcome of its last run.
#[derive(Debug, Clone, Default)]
pub struct StoredPolicy {
    pub policy: RetentionPolicy,
    pub last_run_at: Option<DateTime<Utc>>,
    pub last_result: Option<serde_json::Value>,
}

pub trait RetentionStore {
    fn retention_policy(&self, scope: &TenantScope) -> Result<StoredPolicy, DbError>;
    fn set_retention_policy(
        &self,
        scope: &TenantScope,
        policy: &RetentionPolicy,
    ) -> Result<(), DbError>;
    fn record_retention_run(
        &self,
        scope: &TenantScope,
        at: DateTime<Utc>,
        result: &serde_json::Value,
    ) -> Result<(), DbError>;
    /// Tenants that have any period set.
    fn tenants_with_retention(&self) -> Result<Vec<String>, DbError>;
    /// When the tenant's waiting retention job runs.
    fn next_retention_run(&self, scope: &TenantScope) -> Result<Option<DateTime<Utc>>, DbError>;

    /// Deletes up to `limit` conversations without a message since `before` (their messages,
    /// outbox rows, the knowledge gaps they raised and the jobs naming them go too). Answers
    /// (conversations, messages) removed.
    fn delete_stale_conversations(
        &self,
        scope: &TenantScope,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<(i64, i64), DbError>;
    /// Up to `limit` end users with no activity since `before`.
    fn inactive_end_users(
        &self,
        scope: &TenantScope,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<String>, DbError>;
    /// Up to `limit` exports past their expiry, or finished before `finished_before`.
    fn expired_exports(
        &self,
        scope: &TenantScope,
        now: DateTime<Utc>,
        finished_before: Option<DateTime<Utc>>,
        limit: u32,
    ) -> Result<Vec<ExportRecord>, DbError>;
    fn delete_export(&self, scope: &TenantScope, id: &str) -> Result<(), DbError>;
    /// Deletes up to `limit` of the tenant's audit entries older than `before`.
    fn delete_old_audit(
        &self,
        scope: &TenantScope,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<i64, DbError>;
}

/// The tenant's conversations without a message since `?2`, oldest first, `?3` at most.
const STALE_CONVERSATIONS: &str = "SELECT id FROM conversations WHERE tenant_id = ?1 \
     AND updated_at < ?2 ORDER BY updated_at LIMIT ?3";

fn period(value: Option<i64>) -> Option<u32> {
    value.and_then(|v| u32::try_from(v).ok())
}

impl RetentionStore for Connection {
    fn retention_policy(&self, scope: &TenantScope) -> Result<StoredPolicy, DbError> {
        let stored = self
            .query_row(
                "SELECT conversation_days, end_user_days, export_hours, audit_days, last_run_at, \
                 last_result FROM retention_policies WHERE tenant_id = ?1",
                [scope.tenant_id()],
                |r| {
                    Ok(StoredPolicy {
                        policy: RetentionPolicy {
                            conversation_days: period(r.get(0)?),
                            end_user_days: period(r.get(1)?),
                            export_hours: period(r.get(2)?),
                            audit_days: period(r.get(3)?),
                        },
                        last_run_at: r.get::<_, Option<String>>(4)?.as_deref().map(parse_instant),
                        last_result: r
                            .get::<_, Option<String>>(5)?
                            .and_then(|json| serde_json::from_str(&json).ok()),
                    })
                },
            )
            .optional()?;
        Ok(stored.unwrap_or_default())
    }

    fn set_retention_policy(
        &self,
        scope: &TenantScope,
        policy: &RetentionPolicy,
    ) -> Result<(), DbError> {
        self.execute(
            "INSERT INTO retention_policies (tenant_id, conversation_days, end_user_days, \
             export_hours, audit_days) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (tenant_id) DO UPDATE SET conversation_days = excluded.conversation_days, \
             end_user_days = excluded.end_user_days, export_hours = excluded.export_hours, \
             audit_days = excluded.audit_days, \
             updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
            params![
                scope.tenant_id(),
                policy.conversation_days,
                policy.end_user_days,
                policy.export_hours,
                policy.audit_days
            ],
        )?;
        Ok(())
    }

    fn record_retention_run(
        &self,
        scope: &TenantScope,
        at: DateTime<Utc>,
        result: &serde_json::Value,
    ) -> Result<(), DbError> {
        self.execute(
            "INSERT INTO retention_policies (tenant_id, last_run_at, last_result) \
             VALUES (?1, ?2, ?3) ON CONFLICT (tenant_id) DO UPDATE SET \
             last_run_at = excluded.last_run_at, last_result = excluded.last_result",
            params![scope.tenant_id(), instant(at), result.to_string()],
        )?;
        Ok(())
    }

    fn tenants_with_retention(&self) -> Result<Vec<String>, DbError> {
        let mut statement = self.prepare(
            "SELECT tenant_id FROM retention_policies WHERE conversation_days IS NOT NULL \
             OR end_user_days IS NOT NULL OR export_hours IS NOT NULL OR audit_days IS NOT NULL",
        )?;
        let rows = statement.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn next_retention_run(&self, scope: &TenantScope) -> Result<Option<DateTime<Utc>>, DbError> {
        let at: Option<String> = self
            .query_row(
                "SELECT run_at FROM jobs WHERE tenant_id = ?1 AND dedupe_key = ?2 \
                 AND status IN ('queued', 'running')",
                params![
                    scope.tenant_id(),
                    crate::privacy::retention::dedupe_key(scope.tenant_id())
                ],
                |r| r.get(0),
            )
            .optional()?;
        Ok(at.as_deref().map(parse_instant))
    }

    fn delete_stale_conversations(
        &self,
        scope: &TenantScope,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<(i64, i64), DbError> {
        super::atomically(self, |c| {
            let bind = params![scope.tenant_id(), instant(before), limit];
            c.execute(
                "CREATE TEMP TABLE IF NOT EXISTS retention_batch (id TEXT PRIMARY KEY)",
                [],
            )?;
            c.execute("DELETE FROM temp.retention_batch", [])?;
            c.execute(
                &format!("INSERT INTO temp.retention_batch {STALE_CONVERSATIONS}"),
                bind,
            )?;
            let batch = "SELECT id FROM temp.retention_batch";
            c.execute(
                &format!(
                    "DELETE FROM jobs WHERE tenant_id = ?1 AND (subject_id IN ({batch}) \
                     OR EXISTS (SELECT 1 FROM temp.retention_batch b WHERE instr(jobs.payload, b.id) > 0))"
                ),
                [scope.tenant_id()],
            )?;
            c.execute(
                &format!(
                    "DELETE FROM knowledge_gaps WHERE tenant_id = ?1 AND conversation_id IN ({batch})"
                ),
                [scope.tenant_id()],
            )?;
            let messages: i64 = c.query_row(
                &format!("SELECT COUNT(*) FROM messages WHERE conversation_id IN ({batch})"),
                [],
                |r| r.get(0),
            )?;
            let conversations = c.execute(
                &format!("DELETE FROM conversations WHERE tenant_id = ?1 AND id IN ({batch})"),
                [scope.tenant_id()],
            )? as i64;
            c.execute("DELETE FROM temp.retention_batch", [])?;
            Ok((conversations, messages))
        })
    }

    fn inactive_end_users(
        &self,
        scope: &TenantScope,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<String>, DbError> {
        // Active: signed in or replied (`last_active_at`), wrote in a conversation, checked in.
        let mut statement = self.prepare(
            "SELECT e.id FROM end_users e WHERE e.tenant_id = ?1 \
               AND COALESCE(e.last_active_at, e.created_at) < ?2 AND e.created_at < ?2 \
               AND NOT EXISTS (SELECT 1 FROM conversations c JOIN visitors v ON v.id = c.visitor_id \
                               WHERE v.tenant_id = ?1 AND v.end_user_id = e.id AND c.updated_at >= ?2) \
               AND NOT EXISTS (SELECT 1 FROM check_ins ci JOIN goals g ON g.id = ci.goal_id \
                               WHERE g.tenant_id = ?1 AND g.end_user_id = e.id AND ci.at >= ?2) \
             ORDER BY COALESCE(e.last_active_at, e.created_at) LIMIT ?3",
        )?;
        let rows = statement
            .query_map(params![scope.tenant_id(), instant(before), limit], |r| {
                r.get(0)
            })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn expired_exports(
        &self,
        scope: &TenantScope,
        now: DateTime<Utc>,
        finished_before: Option<DateTime<Utc>>,
        limit: u32,
    ) -> Result<Vec<ExportRecord>, DbError> {
        let mut statement = self.prepare(
            "SELECT * FROM exports WHERE tenant_id = ?1 AND (expires_at <= ?2 \
               OR (?3 IS NOT NULL AND COALESCE(finished_at, created_at) < ?3)) \
             ORDER BY created_at LIMIT ?4",
        )?;
        let rows = statement.query_map(
            params![
                scope.tenant_id(),
                instant(now),
                finished_before.map(instant),
                limit
            ],
            super::privacy::export_record,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn delete_export(&self, scope: &TenantScope, id: &str) -> Result<(), DbError> {
        self.execute(
            "DELETE FROM jobs WHERE tenant_id = ?1 AND kind = ?3 AND subject_id = ?2",
            params![scope.tenant_id(), id, crate::privacy::EXPORT_JOB],
        )?;
        self.execute(
            "DELETE FROM exports WHERE tenant_id = ?1 AND id = ?2",
            params![scope.tenant_id(), id],
        )?;
        Ok(())
    }

    fn delete_old_audit(
        &self,
        scope: &TenantScope,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<i64, DbError> {
        Ok(self.execute(
            "DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log \
             WHERE tenant_id = ?1 AND created_at < ?2 ORDER BY created_at LIMIT ?3)",
            params![scope.tenant_id(), instant(before), limit],
        )? as i64)
    }
}
