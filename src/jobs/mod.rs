//! One durable job system for all background work: a job is a row (kind, JSON payload,
//! `run_at`, dedupe key) claimed under a lease. A job whose process died is claimed again when
//! its lease runs out, so work in flight survives a crash (handlers are idempotent). Failures
//! are retried with backoff, then recorded.
//!
//! Jobs on real time run in the background runner ([`Jobs::start`]). Jobs of a test clock run
//! only when the clock is advanced ([`Jobs::advance`]), each at its own time on the clock, so a
//! 30-day program plays out in seconds.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::auth::TenantScope;
use crate::db::coaching::ClockStore;
use crate::db::jobs::JobStore;
pub use crate::db::jobs::{Job, NewJob, Timeline};
use crate::db::{Db, DbError};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a handler did.
#[derive(Debug)]
pub enum Outcome {
    Done,
    /// Run the same job again at `at` with `payload` (a next phase, a recurring job).
    Again {
        at: DateTime<Utc>,
        payload: serde_json::Value,
    },
}

#[derive(Debug)]
pub enum JobError {
    /// Worth trying again later (a busy database, no model yet).
    Retry(String),
    /// Will not get better by retrying.
    Fatal(String),
}

impl From<DbError> for JobError {
    fn from(error: DbError) -> JobError {
        JobError::Retry(error.to_string())
    }
}

/// The scope of a tenant's job; a job of a tenant's kind without one is broken for good.
pub fn tenant_scope(job: &Job) -> Result<TenantScope, JobError> {
    job.tenant_id
        .clone()
        .map(TenantScope::new)
        .ok_or_else(|| JobError::Fatal(format!("a {} job without a tenant", job.kind)))
}

/// Runs jobs of one kind. `now` is the job's time: real time, or its test clock's.
pub trait Handler: Send + Sync + 'static {
    fn run<'a>(
        &'a self,
        job: &'a Job,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Outcome, JobError>>;
}

/// How long a claim holds a job without a heartbeat.
pub const LEASE: Duration = Duration::from_secs(15);
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Attempts before a job is recorded as failed.
pub const MAX_ATTEMPTS: i64 = 5;
/// Jobs the runner works on at once (answers wait for the model's own queue anyway).
const CONCURRENCY: usize = 8;
/// The longest the idle runner sleeps without looking (new jobs wake it at once).
const IDLE_WAKE: Duration = Duration::from_secs(60);
/// Most jobs one advance of a test clock runs: a runaway schedule stops here.
const MAX_ADVANCE_JOBS: usize = 200_000;

#[derive(Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    handlers: RwLock<HashMap<&'static str, Arc<dyn Handler>>>,
    wake: Notify,
    /// One advance at a time per test clock.
    clocks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Delay before attempt `attempts + 1`: 5 s, 20 s, 80 s, 320 s...
fn backoff(attempts: i64) -> chrono::Duration {
    let exponent = attempts.clamp(1, 6) as u32 - 1;
    chrono::Duration::seconds(5 * 4_i64.pow(exponent))
}

/// Runs `work` for job `job_id`, extending the job's lease every few seconds until it is done,
/// so a long job (an answer, a large document) keeps its claim while its process lives.
pub async fn under_lease<F: Future>(db: &Db, job_id: i64, work: F) -> F::Output {
    under_lease_every(db, job_id, work, HEARTBEAT).await
}

async fn under_lease_every<F: Future>(
    db: &Db,
    job_id: i64,
    work: F,
    heartbeat: Duration,
) -> F::Output {
    // The heartbeat runs beside the work, never instead of it: were the work paused while the
    // heartbeat waits for the database writer, and the work itself inside a write (holding the
    // writer's turn), neither would ever finish, and with them every write of the server.
    let beat = async {
        #[allow(clippy::infinite_loop)]
        loop {
            tokio::time::sleep(heartbeat).await;
            let until = lease_from(Utc::now());
            if let Err(error) = db.call(move |c| c.extend_lease(job_id, until)).await {
                tracing::warn!(%error, job = job_id, "cannot extend a job's lease");
            }
        }
    };
    tokio::select! {
        output = work => output,
        _ = beat => unreachable!("the heartbeat never ends"),
    }
}

fn lease_from(now: DateTime<Utc>) -> DateTime<Utc> {
    now + chrono::Duration::from_std(LEASE).expect("small")
}

impl Jobs {
    pub fn new(db: Db) -> Jobs {
        Jobs {
            inner: Arc::new(Inner {
                db,
                handlers: RwLock::new(HashMap::new()),
                wake: Notify::new(),
                clocks: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn register(&self, kind: &'static str, handler: Arc<dyn Handler>) {
        self.inner
            .handlers
            .write()
            .expect("handlers lock")
            .insert(kind, handler);
    }

    fn kinds(&self) -> Vec<&'static str> {
        let mut kinds: Vec<_> = self
            .inner
            .handlers
            .read()
            .expect("handlers lock")
            .keys()
            .copied()
            .collect();
        kinds.sort_unstable();
        kinds
    }

    fn handler(&self, kind: &str) -> Option<Arc<dyn Handler>> {
        self.inner
            .handlers
            .read()
            .expect("handlers lock")
            .get(kind)
            .cloned()
    }

    /// Queues a job (once per dedupe key) and wakes the runner; false when it existed.
    pub async fn enqueue(&self, job: NewJob) -> Result<bool, DbError> {
        let queued = self.inner.db.call(move |c| c.enqueue_job(&job)).await?;
        self.inner.wake.notify_one();
        Ok(queued)
    }

    /// Queues a recurring job unless it is already waiting or running.
    pub async fn ensure(&self, job: NewJob) -> Result<(), DbError> {
        self.inner.db.call(move |c| c.ensure_job(&job)).await?;
        self.inner.wake.notify_one();
        Ok(())
    }

    /// New jobs were queued from inside a transaction of another service.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Starts the runner of real-time jobs; it stops with `shutdown`.
    pub fn start(&self, shutdown: CancellationToken) {
        let this = self.clone();
        tokio::spawn(async move { this.run_loop(shutdown).await });
    }

    async fn run_loop(self, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(CONCURRENCY));
        loop {
            let permit = tokio::select! {
                permit = Arc::clone(&permits).acquire_owned() => permit.expect("never closed"),
                _ = shutdown.cancelled() => return,
            };
            let kinds = self.kinds();
            let now = Utc::now();
            let claimed = {
                let kinds = kinds.clone();
                self.inner
                    .db
                    .call(move |c| c.claim_job(&kinds, Timeline::Real, now, now, lease_from(now)))
                    .await
            };
            match claimed {
                Ok(Some(job)) => {
                    let this = self.clone();
                    tokio::spawn(async move {
                        this.execute(job, Utc::now()).await;
                        drop(permit);
                    });
                }
                Ok(None) => {
                    drop(permit);
                    let next = self
                        .inner
                        .db
                        .call(move |c| c.next_due(&kinds))
                        .await
                        .ok()
                        .flatten();
                    let wait = next
                        .map(|at| (at - Utc::now()).to_std().unwrap_or(Duration::ZERO))
                        .unwrap_or(IDLE_WAKE)
                        .min(IDLE_WAKE);
                    tokio::select! {
                        _ = self.inner.wake.notified() => {}
                        _ = tokio::time::sleep(wait + Duration::from_millis(5)) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
                Err(error) => {
                    drop(permit);
                    tracing::error!(%error, "cannot claim a job");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    /// Runs a claimed job under a heartbeat and records what came of it.
    async fn execute(&self, job: Job, now: DateTime<Utc>) {
        let result = self.run_handler(&job, now).await;
        let id = job.id;
        let record = self
            .inner
            .db
            .call(move |c| record_outcome(c, &job, result, now))
            .await;
        if let Err(error) = record {
            tracing::error!(%error, job = id, "cannot record a job's outcome");
        }
    }

    /// Runs a claimed job's handler under a heartbeat.
    async fn run_handler(&self, job: &Job, now: DateTime<Utc>) -> Result<Outcome, JobError> {
        match self.handler(&job.kind) {
            Some(handler) => under_lease(&self.inner.db, job.id, handler.run(job, now)).await,
            None => Err(JobError::Fatal(format!(
                "no handler for jobs of kind {}",
                job.kind
            ))),
        }
    }

    /// Moves a test clock forward to `to`, running every job of the clock due by then in time
    /// order, including jobs those jobs queue before `to`. Returns how many ran.
    pub async fn advance(
        &self,
        scope: &TenantScope,
        clock_id: &str,
        to: DateTime<Utc>,
    ) -> Result<usize, DbError> {
        let lock = Arc::clone(
            self.inner
                .clocks
                .lock()
                .expect("clocks lock")
                .entry(clock_id.to_string())
                .or_default(),
        );
        let _one_at_a_time = lock.lock().await;
        let kinds = self.kinds();
        let mut ran = 0;
        // Jobs that ran and whose outcomes are recorded by the next call, with the next claim.
        let mut finished: Vec<Finished> = Vec::new();
        loop {
            let (scope_moved, clock, kinds_claimed) =
                (scope.clone(), clock_id.to_string(), kinds.clone());
            let records = std::mem::take(&mut finished);
            let claimed = self
                .inner
                .db
                .call(move |c| {
                    for (job, result, at) in records {
                        record_outcome(c, &job, result, at)?;
                    }
                    let now = Utc::now();
                    // Time does not pass a job another process holds (one that died mid-run
                    // holds it until its lease runs out): its successors must run after it.
                    if c.held_clock_jobs(&clock, now)? > 0 {
                        return Ok::<_, DbError>(Claim::Wait);
                    }
                    let claim = |due| {
                        c.claim_job(
                            &kinds_claimed,
                            Timeline::Clock(&clock),
                            due,
                            now,
                            lease_from(now),
                        )
                    };
                    let Some(job) = claim(to)? else {
                        return Ok(Claim::Finished);
                    };
                    let clock_now = c.clock_now(&scope_moved, &clock)?.unwrap_or(job.run_at);
                    let at = job.run_at.max(clock_now);
                    c.set_clock_now(&scope_moved, &clock, at)?;
                    // Jobs due at the very same instant are independent (nothing orders them):
                    // they run together, as the real-time runner would run them.
                    let due = job.run_at;
                    let mut batch = vec![job];
                    while batch.len() < CONCURRENCY {
                        match claim(due)? {
                            Some(job) => batch.push(job),
                            None => break,
                        }
                    }
                    Ok(Claim::Run(batch, at))
                })
                .await?;
            let (batch, at) = match claimed {
                Claim::Run(batch, at) => (batch, at),
                Claim::Finished => break,
                Claim::Wait => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            };
            ran += batch.len();
            finished = futures_util::future::join_all(batch.into_iter().map(|job| async move {
                let result = self.run_handler(&job, at).await;
                (job, result, at)
            }))
            .await;
            if ran >= MAX_ADVANCE_JOBS {
                tracing::warn!(clock = clock_id, "advance stopped after {ran} jobs");
                break;
            }
        }
        if !finished.is_empty() {
            self.inner
                .db
                .call(move |c| {
                    for (job, result, at) in finished {
                        record_outcome(c, &job, result, at)?;
                    }
                    Ok::<_, DbError>(())
                })
                .await?;
        }
        let (scope, clock) = (scope.clone(), clock_id.to_string());
        self.inner
            .db
            .call(move |c| c.set_clock_now(&scope, &clock, to))
            .await?;
        Ok(ran)
    }
}

/// What an advance of a test clock does next.
enum Claim {
    /// Jobs due at the same instant, and the clock's time for them.
    Run(Vec<Job>, DateTime<Utc>),
    Wait,
    Finished,
}

/// A job that ran, what came of it, and the time it ran at.
type Finished = (Job, Result<Outcome, JobError>, DateTime<Utc>);

/// Records what came of a job: done, again later, retried with backoff, or failed.
fn record_outcome<S: JobStore>(
    c: &S,
    job: &Job,
    result: Result<Outcome, JobError>,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    let (id, attempts, kind) = (job.id, job.attempts, &job.kind);
    match result {
        Ok(Outcome::Done) => c.complete_job(id),
        Ok(Outcome::Again { at, payload }) => c.reschedule_job(id, at, &payload),
        Err(JobError::Retry(error)) if attempts < MAX_ATTEMPTS => {
            tracing::warn!(job = id, %kind, attempts, %error, "job will be retried");
            c.retry_job(id, now + backoff(attempts), Some(&error))
        }
        Err(JobError::Retry(error)) | Err(JobError::Fatal(error)) => {
            tracing::error!(job = id, %kind, attempts, %error, "job failed");
            c.fail_job(id, &error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A heartbeat due while the work is inside a long write must wait for that write, not
    /// take the writer from under it (which once hung every write of a server ingesting a
    /// large knowledge base).
    #[tokio::test]
    async fn a_heartbeat_never_deadlocks_a_job_that_is_writing() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("jobs.db"), 2).unwrap();
        db.call(|c| crate::db::migrations::apply(c).map_err(DbError::from))
            .await
            .unwrap();
        let work = async {
            for _ in 0..3 {
                db.call(|_| {
                    std::thread::sleep(Duration::from_millis(120));
                    Ok::<_, DbError>(())
                })
                .await
                .unwrap();
            }
            "done"
        };
        let outcome = tokio::time::timeout(
            Duration::from_secs(20),
            under_lease_every(&db, 1, work, Duration::from_millis(50)),
        )
        .await;
        assert_eq!(
            outcome.expect("the job finishes while its lease is extended"),
            "done"
        );
    }

    #[test]
    fn backoff_grows_and_stays_bounded() {
        assert_eq!(backoff(1).num_seconds(), 5);
        assert_eq!(backoff(2).num_seconds(), 20);
        assert_eq!(backoff(3).num_seconds(), 80);
        assert_eq!(backoff(50), backoff(6));
    }
}
