//! The questions this process is answering right now. A client that resends a question (after
//! a network error, or after a crash cut its answer off) gets it answered only when no answer
//! to it is under way: a crash empties this set, a live answer holds its entry until it is
//! stored or abandoned. The stored answer is unique per question anyway (see `Chat::finish`);
//! this only saves generating it twice.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
pub struct Answering(Arc<Mutex<HashSet<(String, i64)>>>);

/// Held while question `seq` of a conversation is being answered; dropping it frees it.
pub struct Claim {
    answering: Answering,
    key: (String, i64),
}

impl Answering {
    /// Claims question `seq` of `conversation_id`; `None` when an answer to it is under way.
    pub fn claim(&self, conversation_id: &str, seq: i64) -> Option<Claim> {
        let key = (conversation_id.to_string(), seq);
        let fresh = self.0.lock().expect("answering set").insert(key.clone());
        fresh.then(|| Claim {
            answering: self.clone(),
            key,
        })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.answering
            .0
            .lock()
            .expect("answering set")
            .remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_question_is_claimed_once_until_its_claim_is_dropped() {
        let answering = Answering::default();
        let claim = answering.claim("c1", 3).expect("first claim");
        assert!(answering.claim("c1", 3).is_none());
        assert!(answering.claim("c1", 4).is_some());
        assert!(answering.claim("c2", 3).is_some());
        drop(claim);
        assert!(answering.claim("c1", 3).is_some());
    }
}
