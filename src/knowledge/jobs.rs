//! Ingestion's jobs in the shared durable job system (`crate::jobs`, `db::jobs`): a document
//! to extract, chunk and embed. Ingestion keeps workers of its own (their number is a setting,
//! and they wait for the embedder), but claims, leases and retries are the shared ones, so a
//! document whose worker died is taken up again when its lease runs out.

use chrono::Utc;
use rusqlite::Connection;

use crate::db::DbError;
pub use crate::db::jobs::Job;
use crate::db::jobs::{JobStore, NewJob, Timeline};

/// Ingest a document: extract, chunk, embed.
pub const INGEST: &str = "ingest";

pub fn enqueue(
    c: &Connection,
    tenant_id: Option<&str>,
    kind: &'static str,
    subject_id: &str,
) -> Result<(), DbError> {
    c.enqueue_job(&NewJob {
        kind,
        tenant_id: tenant_id.map(str::to_string),
        subject_id: subject_id.to_string(),
        payload: serde_json::json!({}),
        run_at: Utc::now(),
        dedupe_key: None,
        clock_id: None,
    })?;
    Ok(())
}

/// Takes the oldest due job of `kind` under a lease (kept with `crate::jobs::under_lease`).
pub fn claim(c: &Connection, kind: &str) -> Result<Option<Job>, DbError> {
    let now = Utc::now();
    c.claim_job(&[kind], Timeline::Real, now, now, lease_from_now())
}

fn lease_from_now() -> chrono::DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(crate::jobs::LEASE).expect("small")
}

pub fn finish(c: &Connection, id: i64, error: Option<&str>) -> Result<(), DbError> {
    match error {
        None => c.complete_job(id),
        Some(error) => c.fail_job(id, error),
    }
}

/// Puts a job back in the queue (it could not run yet, e.g. no embedder).
pub fn requeue(c: &Connection, id: i64) -> Result<(), DbError> {
    c.retry_job(id, Utc::now(), None)
}

/// Finished jobs of every kind older than a week are forgotten.
pub fn prune(c: &Connection) -> Result<usize, DbError> {
    c.prune_jobs(Utc::now() - chrono::Duration::days(7))
}
