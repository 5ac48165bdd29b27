//! Storage for data protection (`crate::privacy`): erasing one end user in one transaction,
//! export records, and the rows an export writes out, read one at a time.

use chrono::{DateTime, Utc};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

use super::{DbError, instant, parse_instant};
use crate::auth::TenantScope;

/// The rows one erasure removed, per kind.
pub type ErasedCounts = Vec<(&'static str, i64)>;

/// An export of one end user (`end_user_id`) or of the whole tenant.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ExportRecord {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_user_id: Option<String>,
    /// `queued`, `running`, `ready` or `failed`.
    pub status: String,
    #[serde(skip)]
    pub requested_by: String,
    /// The ZIP's size once ready.
    pub bytes: Option<i64>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// After this the file is deleted (the retention policy's hours; an end user's link: 24 h).
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub tenant_id: String,
}

pub(super) fn export_record(r: &Row<'_>) -> rusqlite::Result<ExportRecord> {
    let at = |text: Option<String>| text.as_deref().map(parse_instant);
    Ok(ExportRecord {
        id: r.get("id")?,
        tenant_id: r.get("tenant_id")?,
        end_user_id: r.get("end_user_id")?,
        status: r.get("status")?,
        requested_by: r.get("requested_by")?,
        bytes: r.get("bytes")?,
        error: r.get("error")?,
        created_at: parse_instant(&r.get::<_, String>("created_at")?),
        finished_at: at(r.get("finished_at")?),
        expires_at: at(r.get("expires_at")?),
    })
}

/// What an export reads, each a query over one tenant (`?1`) and, for one end user's records,
/// the end user (`?2`). Secrets (password and token hashes, sealed channel credentials) are
/// never selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Records {
    // One end user's.
    Profile,
    Identities,
    Conversations,
    Messages,
    Goals,
    CheckIns,
    Enrollments,
    Nudges,
    // The tenant's.
    Tenant,
    Coach,
    Members,
    ApiKeys,
    Channels,
    Documents,
    Programs,
    ProgramVersions,
    NudgeRules,
    EndUsers,
    AllIdentities,
    AllConversations,
    AllMessages,
    AllGoals,
    AllCheckIns,
    AllEnrollments,
    AllNudges,
    KnowledgeGaps,
    AuditLog,
}

/// An end user's conversations: those of every identity (visitor) of theirs.
const THEIR_CONVERSATIONS: &str = "SELECT c.id FROM conversations c JOIN visitors v ON v.id = c.visitor_id \
     WHERE c.tenant_id = ?1 AND v.end_user_id = ?2";

impl Records {
    fn sql(self) -> String {
        let identity =
            "id, channel, external_id, origin, time_zone, opted_out_at, created_at, last_seen_at";
        let conversation = "id, channel, mode, visitor_id, created_at, updated_at";
        let message = "conversation_id, seq, role, author_name, content, citations, confidence, fallback, channel, created_at";
        match self {
            Records::Profile => "SELECT * FROM end_users WHERE tenant_id = ?1 AND id = ?2".into(),
            Records::Identities => format!(
                "SELECT {identity} FROM visitors WHERE tenant_id = ?1 AND end_user_id = ?2 ORDER BY created_at"
            ),
            Records::Conversations => format!(
                "SELECT {conversation} FROM conversations WHERE id IN ({THEIR_CONVERSATIONS}) ORDER BY created_at"
            ),
            Records::Messages => format!(
                "SELECT {message} FROM messages WHERE conversation_id IN ({THEIR_CONVERSATIONS}) \
                 ORDER BY conversation_id, seq"
            ),
            Records::Goals => {
                "SELECT * FROM goals WHERE tenant_id = ?1 AND end_user_id = ?2 ORDER BY created_at"
                    .into()
            }
            Records::CheckIns => "SELECT k.* FROM check_ins k JOIN goals g ON g.id = k.goal_id \
                 WHERE g.tenant_id = ?1 AND g.end_user_id = ?2 ORDER BY k.goal_id, k.at"
                .into(),
            Records::Enrollments => {
                "SELECT * FROM enrollments WHERE tenant_id = ?1 AND end_user_id = ?2 \
                 ORDER BY enrolled_at"
                    .into()
            }
            Records::Nudges => "SELECT * FROM nudges WHERE tenant_id = ?1 AND end_user_id = ?2 \
                 ORDER BY scheduled_for"
                .into(),
            Records::Tenant => "SELECT * FROM tenants WHERE id = ?1".into(),
            Records::Coach => "SELECT * FROM coaches WHERE tenant_id = ?1".into(),
            Records::Members => "SELECT u.id, u.email, u.full_name, m.role, m.created_at \
                 FROM memberships m JOIN users u ON u.id = m.user_id WHERE m.tenant_id = ?1 \
                 ORDER BY m.created_at"
                .into(),
            Records::ApiKeys => {
                "SELECT id, name, prefix, role, created_by, expires_at, last_used_at, \
                 revoked_at, created_at FROM api_keys WHERE tenant_id = ?1 ORDER BY created_at"
                    .into()
            }
            Records::Channels => {
                "SELECT channel, hint, name, settings, mode, created_at, updated_at \
                 FROM channel_accounts WHERE tenant_id = ?1"
                    .into()
            }
            Records::Documents => {
                "SELECT * FROM documents WHERE tenant_id = ?1 ORDER BY created_at".into()
            }
            Records::Programs => {
                "SELECT * FROM programs WHERE tenant_id = ?1 ORDER BY created_at".into()
            }
            Records::ProgramVersions => "SELECT v.* FROM program_versions v JOIN programs p \
                 ON p.id = v.program_id WHERE p.tenant_id = ?1 ORDER BY v.program_id, v.version"
                .into(),
            Records::NudgeRules => {
                "SELECT * FROM nudge_rules WHERE tenant_id = ?1 ORDER BY created_at".into()
            }
            Records::EndUsers => {
                "SELECT * FROM end_users WHERE tenant_id = ?1 ORDER BY created_at".into()
            }
            Records::AllIdentities => format!(
                "SELECT end_user_id, {identity} FROM visitors WHERE tenant_id = ?1 ORDER BY created_at"
            ),
            Records::AllConversations => format!(
                "SELECT {conversation} FROM conversations WHERE tenant_id = ?1 ORDER BY created_at"
            ),
            Records::AllMessages => format!(
                "SELECT {message} FROM messages WHERE tenant_id = ?1 ORDER BY conversation_id, seq"
            ),
            Records::AllGoals => {
                "SELECT * FROM goals WHERE tenant_id = ?1 ORDER BY created_at".into()
            }
            Records::AllCheckIns => "SELECT k.* FROM check_ins k JOIN goals g ON g.id = k.goal_id \
                 WHERE g.tenant_id = ?1 ORDER BY k.goal_id, k.at"
                .into(),
            Records::AllEnrollments => {
                "SELECT * FROM enrollments WHERE tenant_id = ?1 ORDER BY enrolled_at".into()
            }
            Records::AllNudges => {
                "SELECT * FROM nudges WHERE tenant_id = ?1 ORDER BY scheduled_for".into()
            }
            Records::KnowledgeGaps => {
                "SELECT * FROM knowledge_gaps WHERE tenant_id = ?1 ORDER BY created_at".into()
            }
            Records::AuditLog => "SELECT * FROM audit_log WHERE tenant_id = ?1 ORDER BY id".into(),
        }
    }
}

/// Columns that hold JSON text: exported as JSON, not as a string of it.
const JSON_COLUMNS: &[&str] = &[
    "citations",
    "tags",
    "settings",
    "detail",
    "definition",
    "allowed_origins",
    "trigger",
    "audience",
    "schedule",
    "external_ids",
    "steps_done",
];

/// One row as a JSON object, column by column (blobs are left out).
fn row_json(row: &Row<'_>, names: &[String]) -> rusqlite::Result<serde_json::Value> {
    let mut object = serde_json::Map::new();
    for (i, name) in names.iter().enumerate() {
        let value = match row.get_ref(i)? {
            ValueRef::Null => serde_json::Value::Null,
            ValueRef::Integer(n) => n.into(),
            ValueRef::Real(x) => x.into(),
            ValueRef::Text(bytes) => {
                let text = String::from_utf8_lossy(bytes).into_owned();
                match JSON_COLUMNS.contains(&name.as_str()) {
                    true => serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
                    false => serde_json::Value::String(text),
                }
            }
            ValueRef::Blob(_) => continue,
        };
        object.insert(name.clone(), value);
    }
    Ok(serde_json::Value::Object(object))
}

pub trait PrivacyStore {
    /// Removes the end user and everything of theirs in one transaction: their identities
    /// (visitors) and push subscriptions, conversations with their messages and outbox rows,
    /// knowledge gaps from those conversations, goals and check-ins, enrolments, nudges, link
    /// codes, exports, and every job about any of them (finished jobs too: payloads quote
    /// messages). `None` when there is no such end user in the tenant.
    fn erase_end_user(
        &self,
        scope: &TenantScope,
        end_user_id: &str,
    ) -> Result<Option<ErasedCounts>, DbError>;

    /// Calls `each` with every row of `records`, in order, one at a time (an export of any size
    /// never holds more than one row).
    fn for_each_record(
        &self,
        scope: &TenantScope,
        end_user_id: Option<&str>,
        records: Records,
        each: &mut dyn FnMut(serde_json::Value) -> Result<(), DbError>,
    ) -> Result<(), DbError>;

    fn create_export(&self, scope: &TenantScope, export: &ExportRecord) -> Result<(), DbError>;
    fn export(&self, scope: &TenantScope, id: &str) -> Result<Option<ExportRecord>, DbError>;
    /// The export an end user's download link names; the link itself is the credential.
    fn export_by_link(&self, link_hash: &str) -> Result<Option<ExportRecord>, DbError>;
    fn set_export_link(
        &self,
        scope: &TenantScope,
        id: &str,
        link_hash: &str,
    ) -> Result<(), DbError>;
    fn export_started(&self, scope: &TenantScope, id: &str) -> Result<(), DbError>;
    fn export_finished(
        &self,
        scope: &TenantScope,
        id: &str,
        outcome: Result<i64, &str>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(), DbError>;
}

impl PrivacyStore for Connection {
    fn erase_end_user(
        &self,
        scope: &TenantScope,
        end_user_id: &str,
    ) -> Result<Option<ErasedCounts>, DbError> {
        super::atomically(self, |c| {
            let tenant = scope.tenant_id();
            let exists = c
                .query_row(
                    "SELECT 1 FROM end_users WHERE tenant_id = ?1 AND id = ?2",
                    params![tenant, end_user_id],
                    |_| Ok(()),
                )
                .optional()?;
            if exists.is_none() {
                return Ok(None);
            }
            let count = |sql: &str| -> Result<i64, DbError> {
                Ok(c.query_row(sql, params![tenant, end_user_id], |r| r.get(0))?)
            };
            let delete = |sql: &str| -> Result<i64, DbError> {
                Ok(c.execute(sql, params![tenant, end_user_id])? as i64)
            };
            let mut counts = Vec::new();
            // Jobs first, while the ids they name can still be looked up.
            counts.push((
                "jobs",
                delete(&format!(
                    "DELETE FROM jobs WHERE tenant_id = ?1 AND ( \
                       subject_id = ?2 OR instr(payload, ?2) > 0 \
                       OR subject_id IN (SELECT id FROM goals WHERE tenant_id = ?1 AND end_user_id = ?2) \
                       OR subject_id IN (SELECT id FROM nudges WHERE tenant_id = ?1 AND end_user_id = ?2) \
                       OR subject_id IN ({THEIR_CONVERSATIONS}) \
                       OR subject_id IN (SELECT channel || ':' || external_id FROM visitors \
                                         WHERE tenant_id = ?1 AND end_user_id = ?2) \
                       OR EXISTS (SELECT 1 FROM visitors v WHERE v.tenant_id = ?1 \
                                  AND v.end_user_id = ?2 AND instr(jobs.payload, v.id) > 0) \
                       OR EXISTS (SELECT 1 FROM ({THEIR_CONVERSATIONS}) t \
                                  WHERE instr(jobs.payload, t.id) > 0))"
                ))?,
            ));
            counts.push((
                "knowledge_gaps",
                delete(&format!(
                    "DELETE FROM knowledge_gaps WHERE tenant_id = ?1 AND conversation_id IN ({THEIR_CONVERSATIONS})"
                ))?,
            ));
            // What goes with the rows below by cascade, counted before.
            counts.push((
                "messages",
                count(&format!(
                    "SELECT COUNT(*) FROM messages WHERE conversation_id IN ({THEIR_CONVERSATIONS})"
                ))?,
            ));
            counts.push((
                "outbox",
                count(&format!(
                    "SELECT COUNT(*) FROM outbox WHERE conversation_id IN ({THEIR_CONVERSATIONS})"
                ))?,
            ));
            counts.push((
                "push_subscriptions",
                count(
                    "SELECT COUNT(*) FROM push_subscriptions WHERE tenant_id = ?1 AND visitor_id IN \
                     (SELECT id FROM visitors WHERE tenant_id = ?1 AND end_user_id = ?2)",
                )?,
            ));
            counts.push((
                "check_ins",
                count(
                    "SELECT COUNT(*) FROM check_ins WHERE goal_id IN \
                     (SELECT id FROM goals WHERE tenant_id = ?1 AND end_user_id = ?2)",
                )?,
            ));
            for table in ["goals", "enrollments", "nudges", "link_codes", "exports"] {
                counts.push((
                    table,
                    count(&format!(
                        "SELECT COUNT(*) FROM {table} WHERE tenant_id = ?1 AND end_user_id = ?2"
                    ))?,
                ));
            }
            counts.push((
                "conversations",
                delete(&format!(
                    "DELETE FROM conversations WHERE id IN ({THEIR_CONVERSATIONS})"
                ))?,
            ));
            counts.push((
                "identities",
                delete("DELETE FROM visitors WHERE tenant_id = ?1 AND end_user_id = ?2")?,
            ));
            counts.push((
                "end_users",
                delete("DELETE FROM end_users WHERE tenant_id = ?1 AND id = ?2")?,
            ));
            Ok(Some(counts))
        })
    }

    fn for_each_record(
        &self,
        scope: &TenantScope,
        end_user_id: Option<&str>,
        records: Records,
        each: &mut dyn FnMut(serde_json::Value) -> Result<(), DbError>,
    ) -> Result<(), DbError> {
        let sql = records.sql();
        let mut statement = self.prepare(&sql)?;
        let names: Vec<String> = statement.column_names().map(str::to_string).collect();
        let mut rows = match (statement.parameter_count(), end_user_id) {
            (2, Some(end_user)) => statement.query(params![scope.tenant_id(), end_user])?,
            (2, None) => return Err(DbError::Task(format!("{records:?} needs an end user"))),
            _ => statement.query(params![scope.tenant_id()])?,
        };
        while let Some(row) = rows.next()? {
            each(row_json(row, &names)?)?;
        }
        Ok(())
    }

    fn create_export(&self, scope: &TenantScope, e: &ExportRecord) -> Result<(), DbError> {
        self.execute(
            "INSERT INTO exports (id, tenant_id, end_user_id, status, requested_by, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                e.id,
                scope.tenant_id(),
                e.end_user_id,
                e.status,
                e.requested_by,
                instant(e.created_at)
            ],
        )?;
        Ok(())
    }

    fn export(&self, scope: &TenantScope, id: &str) -> Result<Option<ExportRecord>, DbError> {
        Ok(self
            .query_row(
                "SELECT * FROM exports WHERE tenant_id = ?1 AND id = ?2",
                params![scope.tenant_id(), id],
                export_record,
            )
            .optional()?)
    }

    fn export_by_link(&self, link_hash: &str) -> Result<Option<ExportRecord>, DbError> {
        Ok(self
            .query_row(
                "SELECT * FROM exports WHERE link_hash = ?1",
                params![link_hash],
                export_record,
            )
            .optional()?)
    }

    fn set_export_link(
        &self,
        scope: &TenantScope,
        id: &str,
        link_hash: &str,
    ) -> Result<(), DbError> {
        self.execute(
            "UPDATE exports SET link_hash = ?3 WHERE tenant_id = ?1 AND id = ?2",
            params![scope.tenant_id(), id, link_hash],
        )?;
        Ok(())
    }

    fn export_started(&self, scope: &TenantScope, id: &str) -> Result<(), DbError> {
        self.execute(
            "UPDATE exports SET status = 'running' WHERE tenant_id = ?1 AND id = ?2",
            params![scope.tenant_id(), id],
        )?;
        Ok(())
    }

    fn export_finished(
        &self,
        scope: &TenantScope,
        id: &str,
        outcome: Result<i64, &str>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(), DbError> {
        let (status, bytes, error) = match outcome {
            Ok(bytes) => ("ready", Some(bytes), None),
            Err(error) => ("failed", None, Some(error)),
        };
        self.execute(
            "UPDATE exports SET status = ?3, bytes = ?4, error = ?5, expires_at = ?6, \
             finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE tenant_id = ?1 AND id = ?2",
            params![
                scope.tenant_id(),
                id,
                status,
                bytes,
                error,
                expires_at.map(instant)
            ],
        )?;
        Ok(())
    }
}

/// Writes the WAL back into the database file and truncates it, so that pages an erasure
/// overwrote (with `secure_delete` on, freed pages are zeroed) leave no older copy in the
/// log. Readers holding an old snapshot can stop it for a moment: it is tried a few times.
pub fn checkpoint_truncate(c: &Connection) -> Result<bool, DbError> {
    for attempt in 0..20 {
        let busy: i64 = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        if busy == 0 {
            return Ok(true);
        }
        std::thread::sleep(std::time::Duration::from_millis(10 * (attempt + 1)));
    }
    Ok(false)
}

/// Runs `work` inside one read transaction: everything it reads is one consistent snapshot,
/// however long it takes and whatever is written meanwhile.
pub fn in_snapshot<T, E: From<DbError>>(
    c: &mut Connection,
    work: impl FnOnce(&dyn PrivacyStore) -> Result<T, E>,
) -> Result<T, E> {
    let tx = c.transaction().map_err(|e| E::from(DbError::from(e)))?;
    let result = work(&*tx);
    // Nothing was written: ending the transaction either way is the same.
    drop(tx);
    result
}
