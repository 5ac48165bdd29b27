//! Conversations with the coach: visitors, grounded answers with citations and confidence,
//! the fallback and knowledge gaps, personal-data masking.

pub mod answer;
pub mod citations;
pub mod coach;
pub mod conversations;
pub mod pii;

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
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
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

/// The conversation service. Cheap to clone.
#[derive(Clone)]
pub struct Chat {
    db: Db,
    knowledge: Knowledge,
    inference: Inference,
}

impl Chat {
    pub fn new(db: Db, knowledge: Knowledge, inference: Inference) -> Chat {
        Chat {
            db,
            knowledge,
            inference,
        }
    }
}
