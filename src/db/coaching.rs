//! Storage for the coaching engine: test clocks, end users, goals and check-ins, programs and
//! their versions, enrolments, nudge rules, nudges and the outbox. Every tenant-owned query
//! takes the tenant's scope; the few that do not (a job's clock) say why.

use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::jobs::{JobStore, NewJob};
use super::{DbError, instant, parse_instant};
use crate::auth::TenantScope;
use crate::coaching::model::{
    Audience, CheckIn, CheckInSchedule, Direction, EndUser, Enrollment, Goal, NewNudge, Nudge,
    NudgeKind, NudgeRule, ProgramDefinition, Trigger,
};

fn opt_instant(text: Option<String>) -> Option<DateTime<Utc>> {
    text.map(|t| parse_instant(&t))
}

fn json_or<T: serde::de::DeserializeOwned>(text: &str, default: T) -> T {
    serde_json::from_str(text).unwrap_or(default)
}

/// A unique index refused the row.
fn is_unique_violation(error: &rusqlite::Error) -> bool {
    matches!(error, rusqlite::Error::SqliteFailure(e, _)
        if e.code == rusqlite::ErrorCode::ConstraintViolation)
}

// ---------------------------------------------------------------- end users

const END_USER_COLUMNS: &str = "id, name, email, time_zone, locale, tags, last_active_at, consent, \
     consent_at, consent_channel, opted_out_at, test_clock_id, created_at, awaiting_goal_id, awaiting_retried";

fn end_user(r: &Row<'_>) -> rusqlite::Result<EndUser> {
    let tags: String = r.get(5)?;
    Ok(EndUser {
        id: r.get(0)?,
        name: r.get(1)?,
        email: r.get(2)?,
        time_zone: r.get(3)?,
        locale: r.get(4)?,
        tags: json_or(&tags, Vec::new()),
        last_active_at: opt_instant(r.get(6)?),
        consent: r.get(7)?,
        consent_at: opt_instant(r.get(8)?),
        consent_channel: r.get(9)?,
        opted_out_at: opt_instant(r.get(10)?),
        test_clock_id: r.get(11)?,
        created_at: parse_instant(&r.get::<_, String>(12)?),
        awaiting_goal_id: r.get(13)?,
        awaiting_retried: r.get(14)?,
    })
}

/// Filters of the end-user list.
#[derive(Debug, Clone, Default)]
pub struct EndUserFilter {
    pub tag: Option<String>,
    pub program_id: Option<String>,
    /// Active (wrote) since this instant.
    pub active_since: Option<DateTime<Utc>>,
    /// Not active since this instant.
    pub inactive_since: Option<DateTime<Utc>>,
    /// Part of the name or email (case is ignored for ASCII letters).
    pub search: Option<String>,
    pub limit: u32,
    pub offset: u32,
}

/// One of an end user's conversations.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ConversationRef {
    pub id: String,
    pub channel: String,
    pub last_message_at: Option<String>,
    /// A person of the team is handling it (the coach keeps quiet).
    pub taken_over: bool,
}

pub trait EndUserStore {
    fn create_end_user(&self, scope: &TenantScope, user: &EndUser) -> Result<(), DbError>;
    fn end_user(&self, scope: &TenantScope, id: &str) -> Result<Option<EndUser>, DbError>;
    fn end_user_of_visitor(
        &self,
        scope: &TenantScope,
        visitor_id: &str,
    ) -> Result<Option<EndUser>, DbError>;
    /// The zone the visitor's browser sent, if any.
    fn visitor_time_zone(
        &self,
        scope: &TenantScope,
        visitor_id: &str,
    ) -> Result<Option<String>, DbError>;
    fn link_visitor(
        &self,
        scope: &TenantScope,
        visitor_id: &str,
        end_user_id: &str,
    ) -> Result<(), DbError>;
    /// The visitor that speaks for the end user on the web (the newest one).
    fn visitor_of_end_user(
        &self,
        scope: &TenantScope,
        end_user_id: &str,
    ) -> Result<Option<String>, DbError>;
    fn list_end_users(
        &self,
        scope: &TenantScope,
        filter: &EndUserFilter,
    ) -> Result<(Vec<EndUser>, i64), DbError>;
    /// Every end user of the tenant on one timeline (real: no test clock), for rule sweeps.
    /// Everyone on a timeline (real time, or a test clock) who has not opted out; with
    /// `quiet_since`, only those who have not written since then (or never wrote and were
    /// created before it).
    fn end_users_on(
        &self,
        scope: &TenantScope,
        clock_id: Option<&str>,
        quiet_since: Option<DateTime<Utc>>,
    ) -> Result<Vec<EndUser>, DbError>;
    fn update_end_user(&self, scope: &TenantScope, user: &EndUser) -> Result<(), DbError>;
    fn end_user_conversations(
        &self,
        scope: &TenantScope,
        end_user_id: &str,
    ) -> Result<Vec<ConversationRef>, DbError>;
    /// Program ids the end user is (or was, to the end) enrolled in: rule audiences.
    fn enrolled_programs(
        &self,
        scope: &TenantScope,
        end_user_id: &str,
    ) -> Result<Vec<String>, DbError>;
}

impl EndUserStore for Connection {
    fn create_end_user(&self, scope: &TenantScope, u: &EndUser) -> Result<(), DbError> {
        self.prepare_cached("INSERT INTO end_users (id, tenant_id, name, email, time_zone, locale, tags, last_active_at, \
             consent, consent_at, consent_channel, opted_out_at, test_clock_id, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)")?.execute(params![
                u.id,
                scope.tenant_id(),
                u.name,
                u.email,
                u.time_zone,
                u.locale,
                serde_json::to_string(&u.tags).expect("tags serialise"),
                u.last_active_at.map(instant),
                u.consent,
                u.consent_at.map(instant),
                u.consent_channel,
                u.opted_out_at.map(instant),
                u.test_clock_id,
                instant(u.created_at),
            ],
        )?;
        Ok(())
    }

    fn end_user(&self, scope: &TenantScope, id: &str) -> Result<Option<EndUser>, DbError> {
        Ok(self
            .query_row(
                &format!(
                    "SELECT {END_USER_COLUMNS} FROM end_users WHERE tenant_id = ?1 AND id = ?2"
                ),
                params![scope.tenant_id(), id],
                end_user,
            )
            .optional()?)
    }

    fn end_user_of_visitor(
        &self,
        scope: &TenantScope,
        visitor_id: &str,
    ) -> Result<Option<EndUser>, DbError> {
        Ok(self
            .query_row(
                &format!(
                    "SELECT {END_USER_COLUMNS} FROM end_users WHERE tenant_id = ?1 AND id = \
                     (SELECT end_user_id FROM visitors WHERE tenant_id = ?1 AND id = ?2)"
                ),
                params![scope.tenant_id(), visitor_id],
                end_user,
            )
            .optional()?)
    }

    fn visitor_time_zone(
        &self,
        scope: &TenantScope,
        visitor_id: &str,
    ) -> Result<Option<String>, DbError> {
        Ok(self
            .query_row(
                "SELECT time_zone FROM visitors WHERE tenant_id = ?1 AND id = ?2",
                params![scope.tenant_id(), visitor_id],
                |r| r.get(0),
            )
            .optional()?
            .flatten())
    }

    fn link_visitor(
        &self,
        scope: &TenantScope,
        visitor_id: &str,
        end_user_id: &str,
    ) -> Result<(), DbError> {
        self.prepare_cached(
            "UPDATE visitors SET end_user_id = ?3 WHERE tenant_id = ?1 AND id = ?2",
        )?
        .execute(params![scope.tenant_id(), visitor_id, end_user_id])?;
        Ok(())
    }

    fn visitor_of_end_user(
        &self,
        scope: &TenantScope,
        end_user_id: &str,
    ) -> Result<Option<String>, DbError> {
        Ok(self
            .query_row(
                // The channel they chose, else the one they used last, unless they left it
                // (blocked the bot).
                "SELECT id FROM visitors WHERE tenant_id = ?1 AND end_user_id = ?2 \
                 ORDER BY opted_out_at IS NOT NULL, \
                   id IS (SELECT preferred_visitor_id FROM end_users WHERE id = ?2) DESC, \
                   last_seen_at DESC, rowid DESC LIMIT 1",
                params![scope.tenant_id(), end_user_id],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn list_end_users(
        &self,
        scope: &TenantScope,
        f: &EndUserFilter,
    ) -> Result<(Vec<EndUser>, i64), DbError> {
        let filter = "tenant_id = ?1 \
             AND (?2 IS NULL OR EXISTS (SELECT 1 FROM json_each(end_users.tags) WHERE value = ?2)) \
             AND (?3 IS NULL OR EXISTS (SELECT 1 FROM enrollments e WHERE e.end_user_id = end_users.id \
                  AND e.program_id = ?3 AND e.tenant_id = ?1)) \
             AND (?4 IS NULL OR last_active_at >= ?4) \
             AND (?5 IS NULL OR coalesce(last_active_at, created_at) < ?5) \
             AND (?8 IS NULL OR instr(lower(coalesce(name, '') || ' ' || coalesce(email, '')), lower(?8)) > 0)";
        let args = params![
            scope.tenant_id(),
            f.tag,
            f.program_id,
            f.active_since.map(instant),
            f.inactive_since.map(instant),
            f.limit,
            f.offset,
            f.search
        ];
        let total: i64 = self.prepare_cached(&format!("SELECT count(*) FROM end_users WHERE {filter} AND ?6 IS NOT NULL AND ?7 IS NOT NULL"))?.query_row(args,
            |r| r.get(0),
        )?;
        let mut statement = self.prepare(&format!(
            "SELECT {END_USER_COLUMNS} FROM end_users WHERE {filter} \
             ORDER BY coalesce(last_active_at, created_at) DESC, id LIMIT ?6 OFFSET ?7"
        ))?;
        let users = statement
            .query_map(args, end_user)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok((users, total))
    }

    fn end_users_on(
        &self,
        scope: &TenantScope,
        clock_id: Option<&str>,
        quiet_since: Option<DateTime<Utc>>,
    ) -> Result<Vec<EndUser>, DbError> {
        let mut statement = self.prepare_cached(&format!(
            "SELECT {END_USER_COLUMNS} FROM end_users WHERE tenant_id = ?1 AND test_clock_id IS ?2 \
             AND opted_out_at IS NULL AND (?3 IS NULL OR coalesce(last_active_at, created_at) <= ?3)"
        ))?;
        Ok(statement
            .query_map(
                params![scope.tenant_id(), clock_id, quiet_since.map(instant)],
                end_user,
            )?
            .collect::<Result<Vec<_>, _>>()?)
    }

    fn update_end_user(&self, scope: &TenantScope, u: &EndUser) -> Result<(), DbError> {
        self.prepare_cached(
            "UPDATE end_users SET name = ?3, email = ?4, time_zone = ?5, locale = ?6, tags = ?7, \
             last_active_at = ?8, consent = ?9, consent_at = ?10, consent_channel = ?11, \
             opted_out_at = ?12, awaiting_goal_id = ?13, awaiting_retried = ?14 \
             WHERE tenant_id = ?1 AND id = ?2",
        )?
        .execute(params![
            scope.tenant_id(),
            u.id,
            u.name,
            u.email,
            u.time_zone,
            u.locale,
            serde_json::to_string(&u.tags).expect("tags serialise"),
            u.last_active_at.map(instant),
            u.consent,
            u.consent_at.map(instant),
            u.consent_channel,
            u.opted_out_at.map(instant),
            u.awaiting_goal_id,
            u.awaiting_retried,
        ])?;
        Ok(())
    }

    fn end_user_conversations(
        &self,
        scope: &TenantScope,
        end_user_id: &str,
    ) -> Result<Vec<ConversationRef>, DbError> {
        let mut statement = self.prepare(
            "SELECT c.id, (SELECT max(m.created_at) FROM messages m WHERE m.conversation_id = c.id), \
             c.mode = 'human', c.channel \
             FROM visitors v CROSS JOIN conversations c ON c.visitor_id = v.id \
             WHERE v.tenant_id = ?1 AND v.end_user_id = ?2 AND +c.tenant_id = ?1 \
             ORDER BY c.updated_at DESC",
        )?;
        Ok(statement
            .query_map(params![scope.tenant_id(), end_user_id], |r| {
                Ok(ConversationRef {
                    id: r.get(0)?,
                    channel: r.get(3)?,
                    last_message_at: r.get(1)?,
                    taken_over: r.get(2)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?)
    }

    fn enrolled_programs(
        &self,
        scope: &TenantScope,
        end_user_id: &str,
    ) -> Result<Vec<String>, DbError> {
        let mut statement = self.prepare_cached(
            "SELECT program_id FROM enrollments WHERE tenant_id = ?1 AND end_user_id = ?2 \
             AND status != 'unenrolled'",
        )?;
        Ok(statement
            .query_map(params![scope.tenant_id(), end_user_id], |r| r.get(0))?
            .collect::<Result<Vec<_>, _>>()?)
    }
}

// ---------------------------------------------------------------- test clocks

pub trait ClockStore {
    fn create_clock(
        &self,
        scope: &TenantScope,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<(), DbError>;
    fn clock_now(&self, scope: &TenantScope, id: &str) -> Result<Option<DateTime<Utc>>, DbError>;
    /// Moves the clock on (never back).
    fn set_clock_now(
        &self,
        scope: &TenantScope,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<(), DbError>;
    /// Test clocks of a tenant.
    fn clocks_of(&self, scope: &TenantScope) -> Result<Vec<String>, DbError>;
}

impl ClockStore for Connection {
    fn create_clock(
        &self,
        scope: &TenantScope,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<(), DbError> {
        self.prepare_cached("INSERT INTO test_clocks (id, tenant_id, now) VALUES (?1, ?2, ?3)")?
            .execute(params![id, scope.tenant_id(), instant(now)])?;
        Ok(())
    }

    fn clock_now(&self, scope: &TenantScope, id: &str) -> Result<Option<DateTime<Utc>>, DbError> {
        let now: Option<String> = self
            .query_row(
                "SELECT now FROM test_clocks WHERE tenant_id = ?1 AND id = ?2",
                params![scope.tenant_id(), id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(now.map(|t| parse_instant(&t)))
    }

    fn set_clock_now(
        &self,
        scope: &TenantScope,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<(), DbError> {
        self.prepare_cached(
            "UPDATE test_clocks SET now = max(now, ?3) WHERE tenant_id = ?1 AND id = ?2",
        )?
        .execute(params![scope.tenant_id(), id, instant(now)])?;
        Ok(())
    }

    fn clocks_of(&self, scope: &TenantScope) -> Result<Vec<String>, DbError> {
        let mut statement = self.prepare("SELECT id FROM test_clocks WHERE tenant_id = ?1")?;
        Ok(statement
            .query_map([scope.tenant_id()], |r| r.get(0))?
            .collect::<Result<Vec<_>, _>>()?)
    }
}

// ---------------------------------------------------------------- goals

const GOAL_COLUMNS: &str = "id, end_user_id, enrollment_id, goal_key, title, metric, unit, baseline, target, \
     direction, due_date, check_in_every, check_in_at, status, reached_at, created_at";

fn goal(r: &Row<'_>) -> rusqlite::Result<Goal> {
    let every: Option<u32> = r.get(11)?;
    let at: Option<String> = r.get(12)?;
    let due: Option<String> = r.get(10)?;
    Ok(Goal {
        id: r.get(0)?,
        end_user_id: r.get(1)?,
        enrollment_id: r.get(2)?,
        key: r.get(3)?,
        title: r.get(4)?,
        metric: r.get(5)?,
        unit: r.get(6)?,
        baseline: r.get(7)?,
        target: r.get(8)?,
        direction: Direction::parse(&r.get::<_, String>(9)?),
        due_date: due.and_then(|d| d.parse().ok()),
        check_in: match (every, at) {
            (Some(days), Some(at)) => Some(CheckInSchedule {
                every: if days % 7 == 0 {
                    format!("P{}W", days / 7)
                } else {
                    format!("P{days}D")
                },
                at,
            }),
            _ => None,
        },
        status: r.get(13)?,
        reached_at: opt_instant(r.get(14)?),
        created_at: parse_instant(&r.get::<_, String>(15)?),
        every_days: every,
    })
}

pub trait GoalStore {
    fn create_goal(&self, scope: &TenantScope, goal: &Goal) -> Result<(), DbError>;
    fn goal(&self, scope: &TenantScope, id: &str) -> Result<Option<Goal>, DbError>;
    fn goals_of(&self, scope: &TenantScope, end_user_id: &str) -> Result<Vec<Goal>, DbError>;
    fn add_check_in(
        &self,
        scope: &TenantScope,
        goal_id: &str,
        check_in: &CheckIn,
    ) -> Result<(), DbError>;
    /// Oldest first.
    fn check_ins(&self, scope: &TenantScope, goal_id: &str) -> Result<Vec<CheckIn>, DbError>;
    fn set_goal_status(
        &self,
        scope: &TenantScope,
        id: &str,
        status: &str,
        reached_at: Option<DateTime<Utc>>,
    ) -> Result<(), DbError>;
}

impl GoalStore for Connection {
    fn create_goal(&self, scope: &TenantScope, g: &Goal) -> Result<(), DbError> {
        self.prepare_cached(&format!(
                "INSERT INTO goals (tenant_id, {GOAL_COLUMNS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
            ))?.execute(params![
                scope.tenant_id(),
                g.id,
                g.end_user_id,
                g.enrollment_id,
                g.key,
                g.title,
                g.metric,
                g.unit,
                g.baseline,
                g.target,
                g.direction.as_str(),
                g.due_date.map(|d| d.to_string()),
                g.every_days,
                g.check_in.as_ref().map(|c| c.at.clone()),
                g.status,
                g.reached_at.map(instant),
                instant(g.created_at),
            ],
        )?;
        Ok(())
    }

    fn goal(&self, scope: &TenantScope, id: &str) -> Result<Option<Goal>, DbError> {
        Ok(self
            .query_row(
                &format!("SELECT {GOAL_COLUMNS} FROM goals WHERE tenant_id = ?1 AND id = ?2"),
                params![scope.tenant_id(), id],
                goal,
            )
            .optional()?)
    }

    fn goals_of(&self, scope: &TenantScope, end_user_id: &str) -> Result<Vec<Goal>, DbError> {
        let mut statement = self.prepare_cached(&format!(
            "SELECT {GOAL_COLUMNS} FROM goals WHERE tenant_id = ?1 AND end_user_id = ?2 \
             ORDER BY created_at, id"
        ))?;
        Ok(statement
            .query_map(params![scope.tenant_id(), end_user_id], goal)?
            .collect::<Result<Vec<_>, _>>()?)
    }

    fn add_check_in(&self, scope: &TenantScope, goal_id: &str, c: &CheckIn) -> Result<(), DbError> {
        self.prepare_cached(
            "INSERT INTO check_ins (id, tenant_id, goal_id, value, note, source, local_date, at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            crate::auth::new_id(),
            scope.tenant_id(),
            goal_id,
            c.value,
            c.note,
            c.source,
            c.local_date.to_string(),
            instant(c.at)
        ])?;
        Ok(())
    }

    fn check_ins(&self, scope: &TenantScope, goal_id: &str) -> Result<Vec<CheckIn>, DbError> {
        let mut statement = self.prepare_cached(
            "SELECT value, note, at, source, local_date FROM check_ins \
             WHERE tenant_id = ?1 AND goal_id = ?2 ORDER BY at, rowid",
        )?;
        Ok(statement
            .query_map(params![scope.tenant_id(), goal_id], |r| {
                let date: String = r.get(4)?;
                Ok(CheckIn {
                    value: r.get(0)?,
                    note: r.get(1)?,
                    at: parse_instant(&r.get::<_, String>(2)?),
                    source: r.get(3)?,
                    local_date: date.parse().unwrap_or(NaiveDate::MIN),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?)
    }

    fn set_goal_status(
        &self,
        scope: &TenantScope,
        id: &str,
        status: &str,
        reached_at: Option<DateTime<Utc>>,
    ) -> Result<(), DbError> {
        self.prepare_cached(
            "UPDATE goals SET status = ?3, reached_at = coalesce(?4, reached_at) \
             WHERE tenant_id = ?1 AND id = ?2",
        )?
        .execute(params![
            scope.tenant_id(),
            id,
            status,
            reached_at.map(instant)
        ])?;
        Ok(())
    }
}

// ---------------------------------------------------------------- programs and enrolments

/// A program's row and one of its versions.
#[derive(Debug, Clone)]
pub struct ProgramRow {
    pub id: String,
    pub latest_version: i64,
    pub published_version: Option<i64>,
    pub created_at: DateTime<Utc>,
}

const ENROLLMENT_COLUMNS: &str =
    "id, program_id, version, end_user_id, status, enrolled_at, completed_at, steps_done";

fn enrollment(r: &Row<'_>) -> rusqlite::Result<Enrollment> {
    let done: String = r.get(7)?;
    Ok(Enrollment {
        id: r.get(0)?,
        program_id: r.get(1)?,
        version: r.get(2)?,
        end_user_id: r.get(3)?,
        status: r.get(4)?,
        enrolled_at: parse_instant(&r.get::<_, String>(5)?),
        completed_at: opt_instant(r.get(6)?),
        steps_done: json_or(&done, Vec::new()),
    })
}

pub trait ProgramStore {
    fn create_program(
        &self,
        scope: &TenantScope,
        id: &str,
        definition: &ProgramDefinition,
    ) -> Result<(), DbError>;
    /// Saves a new version; `None` when there is no such program.
    fn add_program_version(
        &self,
        scope: &TenantScope,
        id: &str,
        definition: &ProgramDefinition,
    ) -> Result<Option<i64>, DbError>;
    /// Publishes the newest version; `None` when there is no such program.
    fn publish_program(&self, scope: &TenantScope, id: &str) -> Result<Option<i64>, DbError>;
    fn program_row(&self, scope: &TenantScope, id: &str) -> Result<Option<ProgramRow>, DbError>;
    fn program_version(
        &self,
        scope: &TenantScope,
        id: &str,
        version: i64,
    ) -> Result<Option<ProgramDefinition>, DbError>;
    fn programs(&self, scope: &TenantScope) -> Result<Vec<ProgramRow>, DbError>;

    /// False when the person already has a live enrolment in the program.
    fn create_enrollment(
        &self,
        scope: &TenantScope,
        enrollment: &Enrollment,
    ) -> Result<bool, DbError>;
    fn enrollment(&self, scope: &TenantScope, id: &str) -> Result<Option<Enrollment>, DbError>;
    fn enrollments_of(
        &self,
        scope: &TenantScope,
        end_user_id: &str,
    ) -> Result<Vec<Enrollment>, DbError>;
    /// Real end users' enrolments (test end users are left out of analytics).
    fn real_enrollments_in(
        &self,
        scope: &TenantScope,
        program_id: &str,
    ) -> Result<Vec<Enrollment>, DbError>;
    fn update_enrollment(
        &self,
        scope: &TenantScope,
        enrollment: &Enrollment,
    ) -> Result<(), DbError>;
}

impl ProgramStore for Connection {
    fn create_program(
        &self,
        scope: &TenantScope,
        id: &str,
        definition: &ProgramDefinition,
    ) -> Result<(), DbError> {
        self.prepare_cached(
            "INSERT INTO programs (id, tenant_id, latest_version) VALUES (?1, ?2, 1)",
        )?
        .execute(params![id, scope.tenant_id()])?;
        self.prepare_cached(
            "INSERT INTO program_versions (program_id, version, tenant_id, definition) \
             VALUES (?1, 1, ?2, ?3)",
        )?
        .execute(params![
            id,
            scope.tenant_id(),
            serde_json::to_string(definition).expect("programs serialise")
        ])?;
        Ok(())
    }

    fn add_program_version(
        &self,
        scope: &TenantScope,
        id: &str,
        definition: &ProgramDefinition,
    ) -> Result<Option<i64>, DbError> {
        let version: Option<i64> = self
            .query_row(
                "UPDATE programs SET latest_version = latest_version + 1, \
                 updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
                 WHERE tenant_id = ?1 AND id = ?2 RETURNING latest_version",
                params![scope.tenant_id(), id],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(version) = version {
            self.prepare_cached(
                "INSERT INTO program_versions (program_id, version, tenant_id, definition) \
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                id,
                version,
                scope.tenant_id(),
                serde_json::to_string(definition).expect("programs serialise")
            ])?;
        }
        Ok(version)
    }

    fn publish_program(&self, scope: &TenantScope, id: &str) -> Result<Option<i64>, DbError> {
        Ok(self
            .query_row(
                "UPDATE programs SET published_version = latest_version, \
                 updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
                 WHERE tenant_id = ?1 AND id = ?2 RETURNING published_version",
                params![scope.tenant_id(), id],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn program_row(&self, scope: &TenantScope, id: &str) -> Result<Option<ProgramRow>, DbError> {
        Ok(self
            .query_row(
                "SELECT id, latest_version, published_version, created_at FROM programs \
                 WHERE tenant_id = ?1 AND id = ?2",
                params![scope.tenant_id(), id],
                program_row,
            )
            .optional()?)
    }

    fn program_version(
        &self,
        scope: &TenantScope,
        id: &str,
        version: i64,
    ) -> Result<Option<ProgramDefinition>, DbError> {
        let text: Option<String> = self
            .query_row(
                "SELECT definition FROM program_versions \
                 WHERE tenant_id = ?1 AND program_id = ?2 AND version = ?3",
                params![scope.tenant_id(), id, version],
                |r| r.get(0),
            )
            .optional()?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    fn programs(&self, scope: &TenantScope) -> Result<Vec<ProgramRow>, DbError> {
        let mut statement = self.prepare(
            "SELECT id, latest_version, published_version, created_at FROM programs \
             WHERE tenant_id = ?1 ORDER BY created_at DESC",
        )?;
        Ok(statement
            .query_map([scope.tenant_id()], program_row)?
            .collect::<Result<Vec<_>, _>>()?)
    }

    fn create_enrollment(&self, scope: &TenantScope, e: &Enrollment) -> Result<bool, DbError> {
        let inserted = self
            .prepare_cached(&format!(
                "INSERT INTO enrollments (tenant_id, {ENROLLMENT_COLUMNS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            ))?
            .execute(params![
                scope.tenant_id(),
                e.id,
                e.program_id,
                e.version,
                e.end_user_id,
                e.status,
                instant(e.enrolled_at),
                e.completed_at.map(instant),
                serde_json::to_string(&e.steps_done).expect("keys serialise"),
            ]);
        match inserted {
            Ok(_) => Ok(true),
            Err(error) if is_unique_violation(&error) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    fn enrollment(&self, scope: &TenantScope, id: &str) -> Result<Option<Enrollment>, DbError> {
        Ok(self
            .query_row(
                &format!(
                    "SELECT {ENROLLMENT_COLUMNS} FROM enrollments WHERE tenant_id = ?1 AND id = ?2"
                ),
                params![scope.tenant_id(), id],
                enrollment,
            )
            .optional()?)
    }

    fn enrollments_of(
        &self,
        scope: &TenantScope,
        end_user_id: &str,
    ) -> Result<Vec<Enrollment>, DbError> {
        let mut statement = self.prepare(&format!(
            "SELECT {ENROLLMENT_COLUMNS} FROM enrollments WHERE tenant_id = ?1 AND end_user_id = ?2 \
             ORDER BY enrolled_at"
        ))?;
        Ok(statement
            .query_map(params![scope.tenant_id(), end_user_id], enrollment)?
            .collect::<Result<Vec<_>, _>>()?)
    }

    fn real_enrollments_in(
        &self,
        scope: &TenantScope,
        program_id: &str,
    ) -> Result<Vec<Enrollment>, DbError> {
        let columns = ENROLLMENT_COLUMNS
            .split(", ")
            .map(|c| format!("e.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut statement = self.prepare(&format!(
            "SELECT {columns} FROM enrollments e JOIN end_users u ON u.id = e.end_user_id \
             WHERE e.tenant_id = ?1 AND e.program_id = ?2 AND u.test_clock_id IS NULL"
        ))?;
        Ok(statement
            .query_map(params![scope.tenant_id(), program_id], enrollment)?
            .collect::<Result<Vec<_>, _>>()?)
    }

    fn update_enrollment(&self, scope: &TenantScope, e: &Enrollment) -> Result<(), DbError> {
        self.prepare_cached(
            "UPDATE enrollments SET status = ?3, completed_at = ?4, steps_done = ?5 \
             WHERE tenant_id = ?1 AND id = ?2",
        )?
        .execute(params![
            scope.tenant_id(),
            e.id,
            e.status,
            e.completed_at.map(instant),
            serde_json::to_string(&e.steps_done).expect("keys serialise"),
        ])?;
        Ok(())
    }
}

fn program_row(r: &Row<'_>) -> rusqlite::Result<ProgramRow> {
    Ok(ProgramRow {
        id: r.get(0)?,
        latest_version: r.get(1)?,
        published_version: r.get(2)?,
        created_at: parse_instant(&r.get::<_, String>(3)?),
    })
}

// ---------------------------------------------------------------- rules and nudges

const RULE_COLUMNS: &str = "id, name, enabled, trigger, audience, instruction, created_at";

fn rule(r: &Row<'_>) -> rusqlite::Result<NudgeRule> {
    let trigger: String = r.get(3)?;
    let audience: String = r.get(4)?;
    Ok(NudgeRule {
        id: r.get(0)?,
        name: r.get(1)?,
        enabled: r.get(2)?,
        trigger: json_or(&trigger, Trigger::GoalReached),
        audience: json_or(&audience, Audience::default()),
        instruction: r.get(5)?,
        created_at: parse_instant(&r.get::<_, String>(6)?),
    })
}

/// The status a nudge shows: its plan's, with delivery receipts and replies folded in.
const NUDGE_STATUS: &str = "CASE WHEN n.status = 'sent' AND n.replied_at IS NOT NULL THEN 'replied' \
     WHEN n.status = 'sent' AND o.status IS NOT NULL AND o.status != 'queued' THEN o.status \
     WHEN n.status = 'sending' THEN 'scheduled' ELSE n.status END";

const NUDGE_COLUMNS: &str = "n.id, n.end_user_id, n.kind, n.rule_id, n.enrollment_id, n.step_key, n.goal_id, \
     n.status, n.reason, n.scheduled_for, n.sent_at, n.channel, n.content, n.message_id, n.dedupe_key, \
     n.replied_at, o.status";

fn nudge(r: &Row<'_>) -> rusqlite::Result<Nudge> {
    let planned: String = r.get(7)?;
    let replied: Option<String> = r.get(15)?;
    let delivery: Option<String> = r.get(16)?;
    let status = match (planned.as_str(), replied, delivery) {
        ("sent", Some(_), _) => "replied".to_string(),
        ("sent", None, Some(delivery)) if delivery != "queued" => delivery,
        ("sending", _, _) => "scheduled".to_string(),
        _ => planned.clone(),
    };
    Ok(Nudge {
        id: r.get(0)?,
        end_user_id: r.get(1)?,
        kind: NudgeKind::parse(&r.get::<_, String>(2)?),
        rule_id: r.get(3)?,
        enrollment_id: r.get(4)?,
        step_key: r.get(5)?,
        goal_id: r.get(6)?,
        status,
        reason: r.get(8)?,
        scheduled_for: parse_instant(&r.get::<_, String>(9)?),
        sent_at: opt_instant(r.get(10)?),
        channel: r.get(11)?,
        content: r.get(12)?,
        message_id: r.get(13)?,
        dedupe_key: r.get(14)?,
        planned_status: planned,
    })
}

/// How a nudge's planning state changes.
#[derive(Debug, Clone, Default)]
pub struct NudgeUpdate<'a> {
    pub status: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub content: Option<&'a str>,
    pub sent: Option<(DateTime<Utc>, &'a str, &'a str, &'a str)>,
}

pub trait NudgeStore {
    fn create_rule(&self, scope: &TenantScope, rule: &NudgeRule) -> Result<(), DbError>;
    fn rule(&self, scope: &TenantScope, id: &str) -> Result<Option<NudgeRule>, DbError>;
    fn rules(&self, scope: &TenantScope) -> Result<Vec<NudgeRule>, DbError>;
    fn update_rule(&self, scope: &TenantScope, rule: &NudgeRule) -> Result<(), DbError>;
    fn delete_rule(&self, scope: &TenantScope, id: &str) -> Result<bool, DbError>;
    /// What the enrolment's newest sent step said, and when it went out.
    fn latest_step_sent(
        &self,
        scope: &TenantScope,
        enrollment_id: &str,
    ) -> Result<Option<(String, DateTime<Utc>)>, DbError>;

    /// Plans a nudge and queues its job in one transaction (a crash leaves both or neither).
    /// False when a nudge with its dedupe key exists (it was planned already).
    fn plan_nudge(
        &self,
        scope: &TenantScope,
        id: &str,
        nudge: &NewNudge,
        job: &NewJob,
    ) -> Result<bool, DbError>;
    fn nudge(&self, scope: &TenantScope, id: &str) -> Result<Option<Nudge>, DbError>;
    fn update_nudge(
        &self,
        scope: &TenantScope,
        id: &str,
        update: &NudgeUpdate<'_>,
    ) -> Result<(), DbError>;
    /// Newest first; `status`: only those showing it.
    fn nudges(
        &self,
        scope: &TenantScope,
        end_user_id: Option<&str>,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Nudge>, DbError>;
    /// Rule nudges sent to the end user at or after `since`, and those on their way (the caps
    /// count these).
    fn rule_nudges_sent_since(
        &self,
        scope: &TenantScope,
        end_user_id: &str,
        since: DateTime<Utc>,
    ) -> Result<i64, DbError>;
    /// The end user wrote: nudges sent to them before `at` and not yet replied to are replied.
    fn mark_replied(
        &self,
        scope: &TenantScope,
        end_user_id: &str,
        at: DateTime<Utc>,
    ) -> Result<(), DbError>;
    /// Every nudge of real end users of the tenant (analytics).
    fn real_nudges(&self, scope: &TenantScope) -> Result<Vec<Nudge>, DbError>;
}

impl NudgeStore for Connection {
    fn latest_step_sent(
        &self,
        scope: &TenantScope,
        enrollment_id: &str,
    ) -> Result<Option<(String, DateTime<Utc>)>, DbError> {
        let found: Option<(String, String)> = self
            .prepare_cached(
                "SELECT content, sent_at FROM nudges WHERE tenant_id = ?1 AND enrollment_id = ?2 \
                 AND kind = 'step' AND sent_at IS NOT NULL AND content IS NOT NULL \
                 ORDER BY sent_at DESC LIMIT 1",
            )?
            .query_row(params![scope.tenant_id(), enrollment_id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        Ok(found.map(|(content, at)| (content, parse_instant(&at))))
    }

    fn create_rule(&self, scope: &TenantScope, r: &NudgeRule) -> Result<(), DbError> {
        self.prepare_cached(&format!(
                "INSERT INTO nudge_rules (tenant_id, {RULE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            ))?.execute(params![
                scope.tenant_id(),
                r.id,
                r.name,
                r.enabled,
                serde_json::to_string(&r.trigger).expect("triggers serialise"),
                serde_json::to_string(&r.audience).expect("audiences serialise"),
                r.instruction,
                instant(r.created_at)
            ],
        )?;
        Ok(())
    }

    fn rule(&self, scope: &TenantScope, id: &str) -> Result<Option<NudgeRule>, DbError> {
        Ok(self
            .query_row(
                &format!("SELECT {RULE_COLUMNS} FROM nudge_rules WHERE tenant_id = ?1 AND id = ?2"),
                params![scope.tenant_id(), id],
                rule,
            )
            .optional()?)
    }

    fn rules(&self, scope: &TenantScope) -> Result<Vec<NudgeRule>, DbError> {
        let mut statement = self.prepare_cached(&format!(
            "SELECT {RULE_COLUMNS} FROM nudge_rules WHERE tenant_id = ?1 ORDER BY created_at, id"
        ))?;
        Ok(statement
            .query_map([scope.tenant_id()], rule)?
            .collect::<Result<Vec<_>, _>>()?)
    }

    fn update_rule(&self, scope: &TenantScope, r: &NudgeRule) -> Result<(), DbError> {
        self.prepare_cached(
            "UPDATE nudge_rules SET name = ?3, enabled = ?4, trigger = ?5, audience = ?6, \
             instruction = ?7 WHERE tenant_id = ?1 AND id = ?2",
        )?
        .execute(params![
            scope.tenant_id(),
            r.id,
            r.name,
            r.enabled,
            serde_json::to_string(&r.trigger).expect("triggers serialise"),
            serde_json::to_string(&r.audience).expect("audiences serialise"),
            r.instruction
        ])?;
        Ok(())
    }

    fn delete_rule(&self, scope: &TenantScope, id: &str) -> Result<bool, DbError> {
        Ok(self
            .prepare_cached("DELETE FROM nudge_rules WHERE tenant_id = ?1 AND id = ?2")?
            .execute(params![scope.tenant_id(), id])?
            == 1)
    }

    fn plan_nudge(
        &self,
        scope: &TenantScope,
        id: &str,
        n: &NewNudge,
        job: &NewJob,
    ) -> Result<bool, DbError> {
        crate::db::atomically(self, |tx| {
            let planned = tx.prepare_cached("INSERT INTO nudges (id, tenant_id, end_user_id, kind, rule_id, enrollment_id, step_key, \
             goal_id, dedupe_key, status, reason, scheduled_for) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) ON CONFLICT DO NOTHING")?.execute(params![
                id,
                scope.tenant_id(),
                n.end_user_id,
                n.kind.as_str(),
                n.rule_id,
                n.enrollment_id,
                n.step_key,
                n.goal_id,
                n.dedupe_key,
                n.status,
                n.reason,
                instant(n.scheduled_for)
            ],
        )? == 1;
            if planned {
                tx.enqueue_job(job)?;
            }
            Ok(planned)
        })
    }

    fn nudge(&self, scope: &TenantScope, id: &str) -> Result<Option<Nudge>, DbError> {
        Ok(self
            .query_row(
                &format!(
                    "SELECT {NUDGE_COLUMNS} FROM nudges n LEFT JOIN outbox o ON o.id = n.outbox_id \
                     WHERE n.tenant_id = ?1 AND n.id = ?2"
                ),
                params![scope.tenant_id(), id],
                nudge,
            )
            .optional()?)
    }

    fn update_nudge(
        &self,
        scope: &TenantScope,
        id: &str,
        u: &NudgeUpdate<'_>,
    ) -> Result<(), DbError> {
        let (sent_at, channel, message_id, outbox_id) = match u.sent {
            Some((at, channel, message, outbox)) => (
                Some(instant(at)),
                Some(channel),
                Some(message),
                Some(outbox),
            ),
            None => (None, None, None, None),
        };
        self.prepare_cached(
            "UPDATE nudges SET status = coalesce(?3, status), reason = coalesce(?4, reason), \
             scheduled_for = coalesce(?5, scheduled_for), content = coalesce(?6, content), \
             sent_at = coalesce(?7, sent_at), channel = coalesce(?8, channel), \
             message_id = coalesce(?9, message_id), outbox_id = coalesce(?10, outbox_id) \
             WHERE tenant_id = ?1 AND id = ?2",
        )?
        .execute(params![
            scope.tenant_id(),
            id,
            u.status,
            u.reason,
            u.scheduled_for.map(instant),
            u.content,
            sent_at,
            channel,
            message_id,
            outbox_id
        ])?;
        Ok(())
    }

    fn nudges(
        &self,
        scope: &TenantScope,
        end_user_id: Option<&str>,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Nudge>, DbError> {
        let mut statement = self.prepare(&format!(
            "SELECT {NUDGE_COLUMNS} FROM nudges n LEFT JOIN outbox o ON o.id = n.outbox_id \
             WHERE n.tenant_id = ?1 AND (?2 IS NULL OR n.end_user_id = ?2) \
             AND (?4 IS NULL OR {NUDGE_STATUS} = ?4) \
             ORDER BY n.scheduled_for DESC, n.rowid DESC LIMIT ?3"
        ))?;
        Ok(statement
            .query_map(
                params![scope.tenant_id(), end_user_id, limit, status],
                nudge,
            )?
            .collect::<Result<Vec<_>, _>>()?)
    }

    fn rule_nudges_sent_since(
        &self,
        scope: &TenantScope,
        end_user_id: &str,
        since: DateTime<Utc>,
    ) -> Result<i64, DbError> {
        Ok(self
            .prepare_cached(
                "SELECT count(*) FROM nudges WHERE tenant_id = ?1 AND end_user_id = ?2 \
             AND kind = 'rule' AND (status = 'sent' AND sent_at >= ?3 OR status = 'sending')",
            )?
            .query_row(
                params![scope.tenant_id(), end_user_id, instant(since)],
                |r| r.get(0),
            )?)
    }

    fn mark_replied(
        &self,
        scope: &TenantScope,
        end_user_id: &str,
        at: DateTime<Utc>,
    ) -> Result<(), DbError> {
        self.prepare_cached(
            "UPDATE nudges SET replied_at = ?3 WHERE tenant_id = ?1 AND end_user_id = ?2 \
             AND status = 'sent' AND replied_at IS NULL AND sent_at <= ?3",
        )?
        .execute(params![scope.tenant_id(), end_user_id, instant(at)])?;
        Ok(())
    }

    fn real_nudges(&self, scope: &TenantScope) -> Result<Vec<Nudge>, DbError> {
        let mut statement = self.prepare(&format!(
            "SELECT {NUDGE_COLUMNS} FROM nudges n LEFT JOIN outbox o ON o.id = n.outbox_id \
             JOIN end_users u ON u.id = n.end_user_id \
             WHERE n.tenant_id = ?1 AND u.test_clock_id IS NULL"
        ))?;
        Ok(statement
            .query_map([scope.tenant_id()], nudge)?
            .collect::<Result<Vec<_>, _>>()?)
    }
}

// ---------------------------------------------------------------- outbox

/// Delivery states of an outbound message, in the order they are reached.
pub const OUTBOX_STATES: [&str; 5] = ["queued", "sent", "delivered", "read", "failed"];

pub trait OutboxStore {
    fn add_outbound(
        &self,
        scope: &TenantScope,
        id: &str,
        message_id: &str,
        conversation_id: &str,
        seq: i64,
        channel: &str,
    ) -> Result<(), DbError>;
    fn set_outbound_status(
        &self,
        scope: &TenantScope,
        id: &str,
        status: &str,
        error: Option<&str>,
    ) -> Result<(), DbError>;
    /// A receipt from the end user's side: messages up to `seq` are delivered (or read).
    fn outbound_receipt(
        &self,
        scope: &TenantScope,
        conversation_id: &str,
        seq: i64,
        read: bool,
    ) -> Result<(), DbError>;
}

impl OutboxStore for Connection {
    fn add_outbound(
        &self,
        scope: &TenantScope,
        id: &str,
        message_id: &str,
        conversation_id: &str,
        seq: i64,
        channel: &str,
    ) -> Result<(), DbError> {
        self.prepare_cached(
            "INSERT INTO outbox (id, tenant_id, message_id, conversation_id, seq, channel, status) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued') ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            id,
            scope.tenant_id(),
            message_id,
            conversation_id,
            seq,
            channel
        ])?;
        Ok(())
    }

    fn set_outbound_status(
        &self,
        scope: &TenantScope,
        id: &str,
        status: &str,
        error: Option<&str>,
    ) -> Result<(), DbError> {
        self.prepare_cached(
            // A receipt can come before the delivery is recorded (the client is fast): a sent
            // message the end user's side already has is delivered, or read, at once.
            "UPDATE outbox SET error = ?4, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), \
             status = CASE WHEN ?3 != 'sent' THEN ?3 \
               WHEN seq <= (SELECT visitor_read_seq FROM conversations c WHERE c.id = outbox.conversation_id) THEN 'read' \
               WHEN seq <= (SELECT visitor_delivered_seq FROM conversations c WHERE c.id = outbox.conversation_id) THEN 'delivered' \
               ELSE 'sent' END \
             WHERE tenant_id = ?1 AND id = ?2",
        )?
        .execute(params![scope.tenant_id(), id, status, error])?;
        Ok(())
    }

    fn outbound_receipt(
        &self,
        scope: &TenantScope,
        conversation_id: &str,
        seq: i64,
        read: bool,
    ) -> Result<(), DbError> {
        let (to, from) = if read {
            ("read", "('queued', 'sent', 'delivered')")
        } else {
            ("delivered", "('queued', 'sent')")
        };
        self.prepare_cached(&format!(
            "UPDATE outbox SET status = ?4, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
                 WHERE tenant_id = ?1 AND conversation_id = ?2 AND seq <= ?3 AND status IN {from}"
        ))?
        .execute(params![scope.tenant_id(), conversation_id, seq, to])?;
        Ok(())
    }
}
