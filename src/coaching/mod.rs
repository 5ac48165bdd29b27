//! The coaching engine: end users who persist, goals with check-ins, versioned programs run
//! over days, nudge rules with guardrails, and the outbox that delivers what the coach sends on
//! its own. Everything time-driven is a durable job (`crate::jobs`) with a dedupe key, so a
//! restart neither loses nor repeats a message; test end users live on test clocks.

pub mod analytics;
pub mod goals;
pub mod linking;
pub mod model;
pub mod nudges;
pub mod outbox;
pub mod people;
pub mod programs;
pub mod replies;
pub mod rules;
pub mod schedule;
pub mod writer;

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::auth::TenantScope;
use crate::chat::Chat;
use crate::db::coaching::ClockStore;
use crate::db::{Db, DbError};
use crate::inference::runtime::Inference;
use crate::jobs::Jobs;
use crate::knowledge::Knowledge;
use model::EndUser;

#[derive(Debug, thiserror::Error)]
pub enum CoachingError {
    #[error("{0}")]
    NotFound(&'static str),
    /// A bad time zone, time of day, period or recurrence rule.
    #[error("{0}")]
    InvalidSchedule(String),
    /// A program whose steps do not hold together.
    #[error("{0}")]
    InvalidProgram(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    OptedOut(String),
    #[error("{0}")]
    AlreadyEnrolled(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<schedule::ScheduleError> for CoachingError {
    fn from(error: schedule::ScheduleError) -> CoachingError {
        CoachingError::InvalidSchedule(error.to_string())
    }
}

impl From<crate::chat::ChatError> for CoachingError {
    fn from(error: crate::chat::ChatError) -> CoachingError {
        match error {
            crate::chat::ChatError::Db(error) => CoachingError::Db(error),
            crate::chat::ChatError::NotFound(what) => CoachingError::NotFound(what),
            other => CoachingError::Invalid(other.to_string()),
        }
    }
}

/// Job kinds of the engine.
pub mod kinds {
    /// Write, then send, one planned nudge (rule, step or check-in prompt).
    pub const NUDGE: &str = "nudge";
    /// Plan a goal's next check-in prompt (recurring).
    pub const CHECK_IN: &str = "check_in_prompt";
    /// Evaluate a tenant's nudge rules on one timeline (recurring).
    pub const RULES: &str = "rule_sweep";
}

/// The coaching service. Cheap to clone.
#[derive(Clone)]
pub struct Coaching {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    jobs: Jobs,
    chat: Chat,
    knowledge: Knowledge,
    inference: Inference,
}

impl Coaching {
    /// The service, with its job handlers registered on `jobs`.
    pub fn new(
        db: Db,
        jobs: Jobs,
        chat: Chat,
        knowledge: Knowledge,
        inference: Inference,
    ) -> Coaching {
        let coaching = Coaching {
            inner: Arc::new(Inner {
                db,
                jobs: jobs.clone(),
                chat,
                knowledge,
                inference,
            }),
        };
        jobs.register(kinds::NUDGE, Arc::new(nudges::NudgeJob(coaching.clone())));
        jobs.register(
            kinds::CHECK_IN,
            Arc::new(goals::CheckInJob(coaching.clone())),
        );
        jobs.register(kinds::RULES, Arc::new(rules::RuleSweep(coaching.clone())));
        coaching
    }

    fn db(&self) -> &Db {
        &self.inner.db
    }

    pub fn jobs(&self) -> &Jobs {
        &self.inner.jobs
    }

    /// Now on the end user's timeline: their test clock's time, or real time.
    async fn now_for(&self, scope: &TenantScope, user: &EndUser) -> Result<DateTime<Utc>, DbError> {
        match &user.test_clock_id {
            None => Ok(Utc::now()),
            Some(clock) => {
                let (scope, clock) = (scope.clone(), clock.clone());
                let now = self.db().call(move |c| c.clock_now(&scope, &clock)).await?;
                Ok(now.unwrap_or_else(Utc::now))
            }
        }
    }
}

/// A job's tenant scope (every coaching job has one).
fn job_scope(job: &crate::jobs::Job) -> Result<TenantScope, crate::jobs::JobError> {
    job.tenant_id
        .clone()
        .map(TenantScope::new)
        .ok_or_else(|| crate::jobs::JobError::Fatal("a coaching job without a tenant".into()))
}
