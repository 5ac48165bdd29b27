//! Conversations with the coach: visitors, grounded answers with citations and confidence,
//! the fallback and knowledge gaps, personal-data masking.

pub mod analytics;
pub mod answer;
pub mod answering;
pub mod citations;
pub mod coach;
pub mod completions;
pub mod conversations;
pub mod delivery;
pub mod faithfulness;
pub mod gaps;
pub mod hub;
pub mod live;
pub mod pii;
pub mod protocol;

use crate::db::{Db, DbError};
use crate::inference::InferenceError;
use crate::inference::runtime::Inference;
use crate::knowledge::{Knowledge, KnowledgeError};

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("the visitor token is missing, unknown or revoked; get a new one")]
    Unauthorized,
    #[error("this coach was suspended by the owner of this server")]
    Suspended,
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("too many messages; wait {} s before sending another", .0.as_secs().max(1))]
    RateLimited(std::time::Duration),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Knowledge(#[from] KnowledgeError),
    #[error(transparent)]
    Inference(#[from] InferenceError),
}

impl From<rusqlite::Error> for ChatError {
    fn from(error: rusqlite::Error) -> ChatError {
        ChatError::Db(DbError::Sqlite(error))
    }
}

/// Looks at an end user's message before the coach answers it (the coaching engine: opt-outs,
/// check-in values, quick replies). `Some(text)`: it was handled, and `text` (when not empty)
/// is the coach's reply; the coach then does not answer from the knowledge base.
pub trait EndUserHook: Send + Sync {
    fn end_user_wrote<'a>(
        &'a self,
        scope: &'a crate::auth::TenantScope,
        visitor_id: &'a str,
        text: &'a str,
    ) -> crate::jobs::BoxFuture<'a, Option<String>>;
}

/// The conversation service. Cheap to clone.
#[derive(Clone)]
pub struct Chat {
    db: Db,
    knowledge: Knowledge,
    inference: Inference,
    hub: hub::Hub,
    limits: live::VisitorLimits,
    /// Set once at start (the coaching engine is built after the chat it sends through).
    hook: std::sync::Arc<std::sync::OnceLock<std::sync::Arc<dyn EndUserHook>>>,
    /// Background answers run as durable jobs once [`Chat::use_jobs`] was called.
    jobs: std::sync::Arc<std::sync::OnceLock<crate::jobs::Jobs>>,
    /// Questions being answered now, so a resend does not start a second answer.
    answering: answering::Answering,
}

impl Chat {
    pub fn new(
        db: Db,
        knowledge: Knowledge,
        inference: Inference,
        limits: live::VisitorLimits,
    ) -> Chat {
        Chat {
            db,
            knowledge,
            inference,
            hub: hub::Hub::new(),
            limits,
            hook: std::sync::Arc::default(),
            jobs: std::sync::Arc::default(),
            answering: answering::Answering::default(),
        }
    }

    /// Background answers become durable jobs of `jobs`.
    pub fn use_jobs(&self, jobs: &crate::jobs::Jobs) {
        jobs.register(
            live::ANSWER_JOB,
            std::sync::Arc::new(live::AnswerJob(self.clone())),
        );
        let _ = self.jobs.set(jobs.clone());
    }

    /// Installs the hook that sees end users' messages first.
    pub fn set_hook(&self, hook: std::sync::Arc<dyn EndUserHook>) {
        let _ = self.hook.set(hook);
    }

    /// Live connections and the fan-out of events to them.
    pub fn hub(&self) -> &hub::Hub {
        &self.hub
    }

    pub fn limits(&self) -> &live::VisitorLimits {
        &self.limits
    }
}
