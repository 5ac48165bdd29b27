//! Storage for the durable job system (`crate::jobs`): rows in `jobs`, claimed with one
//! `UPDATE … RETURNING` under a lease that runs out when the process holding it dies.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use super::{DbError, instant, parse_instant};

/// A job to put in the queue.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: &'static str,
    pub tenant_id: Option<String>,
    pub subject_id: String,
    pub payload: serde_json::Value,
    pub run_at: DateTime<Utc>,
    /// A second job with the same key is not queued (the first one stands).
    pub dedupe_key: Option<String>,
    /// `None`: real time; otherwise the test clock whose advance runs it.
    pub clock_id: Option<String>,
}

/// A claimed job.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    pub tenant_id: Option<String>,
    pub subject_id: String,
    pub payload: serde_json::Value,
    pub run_at: DateTime<Utc>,
    pub attempts: i64,
    pub clock_id: Option<String>,
}

/// Which jobs a claim may take.
#[derive(Debug, Clone, Copy)]
pub enum Timeline<'a> {
    /// Jobs on real time, due by `now`.
    Real,
    /// Jobs of one test clock, due by the time the clock is advanced to.
    Clock(&'a str),
}

pub trait JobStore {
    /// Queues a job; false when a job with its dedupe key exists already.
    fn enqueue_job(&self, job: &NewJob) -> Result<bool, DbError>;

    /// Queues a recurring job unless it is waiting or running already: a finished one with the
    /// same dedupe key is queued again at `run_at`.
    fn ensure_job(&self, job: &NewJob) -> Result<(), DbError>;

    /// Takes the earliest job of one of `kinds` due by `due_by`: queued, or running under a
    /// lease that ran out before `now` (real time). It is leased until `lease_until`.
    fn claim_job(
        &self,
        kinds: &[&str],
        timeline: Timeline<'_>,
        due_by: DateTime<Utc>,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<Job>, DbError>;

    /// The job is still being worked on.
    fn extend_lease(&self, id: i64, until: DateTime<Utc>) -> Result<(), DbError>;

    fn complete_job(&self, id: i64) -> Result<(), DbError>;

    /// Back in the queue at `run_at` with the error it met (attempts keep counting).
    fn retry_job(&self, id: i64, run_at: DateTime<Utc>, error: Option<&str>)
    -> Result<(), DbError>;

    /// The same job again at `run_at` (a new phase, a recurring job), attempts reset.
    fn reschedule_job(
        &self,
        id: i64,
        run_at: DateTime<Utc>,
        payload: &serde_json::Value,
    ) -> Result<(), DbError>;

    fn fail_job(&self, id: i64, error: &str) -> Result<(), DbError>;

    /// When the next real-time job of `kinds` is due (or its lease runs out).
    fn next_due(&self, kinds: &[&str]) -> Result<Option<DateTime<Utc>>, DbError>;

    /// When the next job of `kind` on the tenant's test clock is due (for nudges: when the
    /// message goes out, not when it is written ahead).
    fn next_clock_job(
        &self,
        scope: &crate::auth::TenantScope,
        clock_id: &str,
        kind: &str,
    ) -> Result<Option<DateTime<Utc>>, DbError>;

    /// Whether a job of the same kind and subject queued before `job` is still waiting or
    /// running (work that must happen in order, such as one chat's messages).
    fn earlier_job_pending(&self, job: &Job) -> Result<bool, DbError>;

    /// Jobs of a test clock running under a lease that has not run out: held by a process
    /// (alive, or dead with its lease still counting).
    fn held_clock_jobs(&self, clock_id: &str, now: DateTime<Utc>) -> Result<i64, DbError>;

    /// Jobs of `kind` waiting or running.
    fn pending_jobs(&self, kind: &str) -> Result<i64, DbError>;

    /// Finished jobs last touched before `before` are forgotten.
    fn prune_jobs(&self, before: DateTime<Utc>) -> Result<usize, DbError>;
}

/// Queues the job that delivers outbox row `outbox_id` now, inside the transaction that
/// stores the message (whose closure speaks rusqlite's errors). Once per `dedupe_key`.
pub fn queue_outbox_job(
    c: &Connection,
    scope: &crate::auth::TenantScope,
    kind: &'static str,
    outbox_id: &str,
    dedupe_key: String,
) -> rusqlite::Result<()> {
    let job = NewJob {
        kind,
        tenant_id: Some(scope.tenant_id().to_string()),
        subject_id: outbox_id.to_string(),
        payload: serde_json::json!({ "outbox_id": outbox_id }),
        run_at: Utc::now(),
        dedupe_key: Some(dedupe_key),
        clock_id: None,
    };
    match c.enqueue_job(&job) {
        Ok(_) => Ok(()),
        Err(DbError::Sqlite(error)) => Err(error),
        Err(other) => Err(rusqlite::Error::ToSqlConversionFailure(
            other.to_string().into(),
        )),
    }
}

fn kinds_json(kinds: &[&str]) -> String {
    serde_json::to_string(kinds).expect("strings serialise")
}

const JOB_COLUMNS: &str = "id, kind, tenant_id, subject_id, payload, run_at, attempts, clock_id";

fn job(r: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
    let payload: String = r.get(4)?;
    let run_at: String = r.get(5)?;
    Ok(Job {
        id: r.get(0)?,
        kind: r.get(1)?,
        tenant_id: r.get(2)?,
        subject_id: r.get(3)?,
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
        run_at: parse_instant(&run_at),
        attempts: r.get(6)?,
        clock_id: r.get(7)?,
    })
}

impl JobStore for Connection {
    fn enqueue_job(&self, job: &NewJob) -> Result<bool, DbError> {
        Ok(self.prepare_cached("INSERT INTO jobs (tenant_id, kind, subject_id, status, payload, run_at, dedupe_key, clock_id) \
             VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING")?.execute(params![
                job.tenant_id,
                job.kind,
                job.subject_id,
                job.payload.to_string(),
                instant(job.run_at),
                job.dedupe_key,
                job.clock_id
            ],
        )? == 1)
    }

    fn ensure_job(&self, job: &NewJob) -> Result<(), DbError> {
        self.prepare_cached("INSERT INTO jobs (tenant_id, kind, subject_id, status, payload, run_at, dedupe_key, clock_id) \
             VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6, ?7) \
             ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL DO UPDATE SET status = 'queued', \
             run_at = excluded.run_at, payload = excluded.payload, attempts = 0, last_error = NULL \
             WHERE jobs.status IN ('done', 'failed')")?.execute(params![
                job.tenant_id,
                job.kind,
                job.subject_id,
                job.payload.to_string(),
                instant(job.run_at),
                job.dedupe_key,
                job.clock_id
            ],
        )?;
        Ok(())
    }

    fn claim_job(
        &self,
        kinds: &[&str],
        timeline: Timeline<'_>,
        due_by: DateTime<Utc>,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<Job>, DbError> {
        let clock = match timeline {
            Timeline::Real => None,
            Timeline::Clock(id) => Some(id),
        };
        // Two index range scans (queued; running with a lease that ran out), earliest first.
        Ok(self
            .prepare_cached(&format!(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, lease_until = ?5, \
                 updated_at = ?4 \
                 WHERE id = (SELECT id FROM ( \
                   SELECT * FROM (SELECT id, run_at FROM jobs WHERE status = 'queued' \
                     AND clock_id IS ?2 AND run_at <= ?3 \
                     AND kind IN (SELECT value FROM json_each(?1)) ORDER BY run_at, id LIMIT 1) \
                   UNION ALL \
                   SELECT * FROM (SELECT id, run_at FROM jobs WHERE status = 'running' \
                     AND clock_id IS ?2 AND run_at <= ?3 AND lease_until < ?4 \
                     AND kind IN (SELECT value FROM json_each(?1)) ORDER BY run_at, id LIMIT 1)) \
                   ORDER BY run_at, id LIMIT 1) \
                 RETURNING {JOB_COLUMNS}"
            ))?
            .query_row(
                params![
                    kinds_json(kinds),
                    clock,
                    instant(due_by),
                    instant(now),
                    instant(lease_until)
                ],
                job,
            )
            .optional()?)
    }

    fn extend_lease(&self, id: i64, until: DateTime<Utc>) -> Result<(), DbError> {
        self.prepare_cached(
            "UPDATE jobs SET lease_until = ?2 WHERE id = ?1 AND status = 'running'",
        )?
        .execute(params![id, instant(until)])?;
        Ok(())
    }

    fn complete_job(&self, id: i64) -> Result<(), DbError> {
        self.prepare_cached(
            "UPDATE jobs SET status = 'done', lease_until = NULL, last_error = NULL, \
             updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1",
        )?
        .execute([id])?;
        Ok(())
    }

    fn retry_job(
        &self,
        id: i64,
        run_at: DateTime<Utc>,
        error: Option<&str>,
    ) -> Result<(), DbError> {
        self.prepare_cached(
            "UPDATE jobs SET status = 'queued', run_at = ?2, lease_until = NULL, \
             last_error = coalesce(?3, last_error), \
             updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1",
        )?
        .execute(params![id, instant(run_at), error])?;
        Ok(())
    }

    fn reschedule_job(
        &self,
        id: i64,
        run_at: DateTime<Utc>,
        payload: &serde_json::Value,
    ) -> Result<(), DbError> {
        self.prepare_cached(
            "UPDATE jobs SET status = 'queued', run_at = ?2, payload = ?3, attempts = 0, \
             lease_until = NULL, last_error = NULL, \
             updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1",
        )?
        .execute(params![id, instant(run_at), payload.to_string()])?;
        Ok(())
    }

    fn fail_job(&self, id: i64, error: &str) -> Result<(), DbError> {
        self.prepare_cached(
            "UPDATE jobs SET status = 'failed', lease_until = NULL, last_error = ?2, \
             updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1",
        )?
        .execute(params![id, error])?;
        Ok(())
    }

    fn next_due(&self, kinds: &[&str]) -> Result<Option<DateTime<Utc>>, DbError> {
        let next: Option<String> = self
            .prepare_cached(
                "SELECT min(CASE status WHEN 'queued' THEN run_at ELSE lease_until END) FROM jobs \
             WHERE status IN ('queued', 'running') AND clock_id IS NULL \
               AND kind IN (SELECT value FROM json_each(?1))",
            )?
            .query_row([kinds_json(kinds)], |r| r.get(0))?;
        Ok(next.map(|t| parse_instant(&t)))
    }

    fn next_clock_job(
        &self,
        scope: &crate::auth::TenantScope,
        clock_id: &str,
        kind: &str,
    ) -> Result<Option<DateTime<Utc>>, DbError> {
        // A nudge written ahead runs a few minutes before it is sent: the later of the two
        // is when the person gets it.
        let next: Option<String> = self
            .prepare_cached(
                "SELECT min(max(j.run_at, coalesce(n.scheduled_for, j.run_at))) FROM jobs j \
                 LEFT JOIN nudges n ON n.id = j.subject_id AND n.tenant_id = j.tenant_id \
                 WHERE j.tenant_id = ?1 AND j.clock_id = ?2 AND j.kind = ?3 AND j.status = 'queued'",
            )?
            .query_row(params![scope.tenant_id(), clock_id, kind], |r| r.get(0))?;
        Ok(next.map(|t| parse_instant(&t)))
    }

    fn earlier_job_pending(&self, job: &Job) -> Result<bool, DbError> {
        Ok(self
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE status IN ('queued', 'running') \
                 AND id < ?1 AND kind = ?2 AND tenant_id IS ?3 AND subject_id = ?4)",
            )?
            .query_row(
                params![job.id, job.kind, job.tenant_id, job.subject_id],
                |r| r.get(0),
            )?)
    }

    fn held_clock_jobs(&self, clock_id: &str, now: DateTime<Utc>) -> Result<i64, DbError> {
        Ok(self.prepare_cached("SELECT count(*) FROM jobs WHERE clock_id = ?1 AND status = 'running' AND lease_until >= ?2")?.query_row(params![clock_id, instant(now)],
            |r| r.get(0),
        )?)
    }

    fn pending_jobs(&self, kind: &str) -> Result<i64, DbError> {
        Ok(self
            .prepare_cached(
                "SELECT count(*) FROM jobs WHERE kind = ?1 AND status IN ('queued', 'running')",
            )?
            .query_row([kind], |r| r.get(0))?)
    }

    fn prune_jobs(&self, before: DateTime<Utc>) -> Result<usize, DbError> {
        Ok(self
            .prepare_cached(
                "DELETE FROM jobs WHERE status IN ('done', 'failed') AND updated_at < ?1",
            )?
            .execute([instant(before)])?)
    }
}
