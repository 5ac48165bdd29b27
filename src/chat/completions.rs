//! Answers for the OpenAI-compatible API (`model: "coach"`): the caller sends the whole
//! conversation and the coach answers its last message exactly as on the chat page
//! (retrieval, sentences checked as they are delivered, citations, the fallback). Nothing is
//! stored: the caller keeps the conversation, as with any OpenAI-style endpoint.

use super::answer::{MAX_MESSAGE_CHARS, Pending, Prepared};
use super::coach;
use super::conversations::{Message, Speaker};
use super::pii;
use super::{Chat, ChatError};
use crate::inference::generate::SamplingOverrides;

/// Who said a message of the caller's conversation. System messages are not part of it: the
/// coach speaks with the persona and rules its creator set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    User,
    Assistant,
}

#[derive(Debug, Clone)]
pub struct Turn {
    pub side: Side,
    pub text: String,
}

impl Chat {
    /// Starts the coach's answer to the last of `turns` (which must be the user's). The
    /// result is delivered with [`Chat::deliver`] like any answer; its final message is not
    /// stored.
    pub async fn complete(
        &self,
        speaker: Speaker,
        turns: Vec<Turn>,
        sampling: SamplingOverrides,
    ) -> Result<Prepared, ChatError> {
        let Some((last, earlier)) = turns.split_last() else {
            return Err(ChatError::Invalid("messages needs a user message".into()));
        };
        if last.side != Side::User {
            return Err(ChatError::Invalid(
                "the last message must be the user's: the coach answers it".into(),
            ));
        }
        let question = last.text.trim();
        if question.is_empty() || question.chars().count() > MAX_MESSAGE_CHARS {
            return Err(ChatError::Invalid(format!(
                "the last user message needs 1 to {MAX_MESSAGE_CHARS} characters"
            )));
        }
        let scope = speaker.scope().clone();
        let coach = self.db.read(move |c| coach::get(c, &scope)).await?;
        // The creator chose whether personal data reaches the model: the same on every surface.
        let as_sent = |text: &str| {
            if coach.redact_pii {
                pii::mask(text).text
            } else {
                text.to_string()
            }
        };
        let history = earlier
            .iter()
            .map(|turn| Message {
                role: match turn.side {
                    Side::User => "user",
                    Side::Assistant => "assistant",
                }
                .into(),
                content: as_sent(&turn.text),
                ..Message::unsaved()
            })
            .collect();
        let question = Message {
            role: "user".into(),
            content: as_sent(question),
            ..Message::unsaved()
        };
        let pending = Pending::unsaved(coach, history, question, sampling);
        self.prepare(speaker, None, pending).await
    }
}
