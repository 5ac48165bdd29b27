//! The durable job queue: rows in `jobs` that workers claim one at a time. A restart re-queues
//! whatever was running, so work interrupted by a crash is done again (jobs are idempotent).

use rusqlite::{Connection, OptionalExtension, params};

/// Ingest a document: extract, chunk, embed.
pub const INGEST: &str = "ingest";

/// A claimed job.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    pub tenant_id: Option<String>,
    pub subject_id: String,
    pub attempts: i64,
}

pub fn enqueue(
    c: &Connection,
    tenant_id: Option<&str>,
    kind: &str,
    subject_id: &str,
) -> rusqlite::Result<i64> {
    c.execute(
        "INSERT INTO jobs (tenant_id, kind, subject_id, status) VALUES (?1, ?2, ?3, 'queued')",
        params![tenant_id, kind, subject_id],
    )?;
    Ok(c.last_insert_rowid())
}

/// Takes the oldest queued job of `kind`, marking it running.
pub fn claim(c: &Connection, kind: &str) -> rusqlite::Result<Option<Job>> {
    c.query_row(
        "UPDATE jobs SET status = 'running', attempts = attempts + 1, \
         updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
         WHERE id = (SELECT id FROM jobs WHERE status = 'queued' AND kind = ?1 ORDER BY id LIMIT 1) \
         RETURNING id, tenant_id, subject_id, attempts",
        params![kind],
        |r| {
            Ok(Job {
                id: r.get(0)?,
                tenant_id: r.get(1)?,
                subject_id: r.get(2)?,
                attempts: r.get(3)?,
            })
        },
    )
    .optional()
}

pub fn finish(c: &Connection, id: i64, error: Option<&str>) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE jobs SET status = CASE WHEN ?2 IS NULL THEN 'done' ELSE 'failed' END, \
         last_error = ?2, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1",
        params![id, error],
    )?;
    Ok(())
}

/// Puts a job back in the queue (it could not run yet, e.g. no embedder).
pub fn requeue(c: &Connection, id: i64) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE jobs SET status = 'queued', updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
         WHERE id = ?1",
        params![id],
    )?;
    Ok(())
}

/// At start: jobs a previous process was running are queued again; returns how many.
pub fn recover(c: &Connection) -> rusqlite::Result<usize> {
    c.execute(
        "UPDATE jobs SET status = 'queued' WHERE status = 'running'",
        [],
    )
}

/// Jobs waiting or running, for readiness and metrics.
pub fn pending(c: &Connection, kind: &str) -> rusqlite::Result<i64> {
    c.query_row(
        "SELECT count(*) FROM jobs WHERE kind = ?1 AND status IN ('queued', 'running')",
        params![kind],
        |r| r.get(0),
    )
}

/// Finished jobs older than a week are forgotten.
pub fn prune(c: &Connection) -> rusqlite::Result<usize> {
    c.execute(
        "DELETE FROM jobs WHERE status IN ('done', 'failed') \
         AND updated_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-7 days')",
        [],
    )
}
