//! An update from a platform becomes a turn of the conversation: the person is a visitor of
//! the channel (made on first contact), their text goes through the same pipeline as the
//! widget's (the coaching engine first, then a grounded answer as a background job), and what
//! the coach says goes back through the outbox.

use chrono::Utc;

use super::telegram::{self, Inbound};
use super::{Channels, TELEGRAM};
use crate::auth::TenantScope;
use crate::chat::ChatError;
use crate::chat::conversations::Speaker;
use crate::db::channels::ChannelStore;
use crate::jobs::{BoxFuture, Handler, Job, JobError, Outcome};

/// The coach's answer to a message it cannot read.
pub const UNREADABLE_REPLY: &str =
    "I can only read text messages for now. Please type your question and I'll answer it.";

/// Runs `channel_inbound` jobs.
pub struct InboundJob(pub Channels);

impl Handler for InboundJob {
    fn run<'a>(
        &'a self,
        job: &'a Job,
        _now: chrono::DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Outcome, JobError>> {
        Box::pin(async move {
            let scope = TenantScope::new(
                job.tenant_id
                    .clone()
                    .ok_or_else(|| JobError::Fatal("an update without a tenant".into()))?,
            );
            let update = &job.payload["update"];
            let update_id = telegram::update_id(update).unwrap_or_default();
            match self.0.handle_update(&scope, update_id, update).await {
                Ok(()) => Ok(Outcome::Done),
                // A suspended coach, a visitor gone: nothing to answer.
                Err(ChatError::Suspended | ChatError::Unauthorized | ChatError::NotFound(_)) => {
                    Ok(Outcome::Done)
                }
                Err(ChatError::Invalid(message)) => {
                    tracing::info!(%message, "a Telegram message was not taken");
                    Ok(Outcome::Done)
                }
                Err(ChatError::RateLimited(wait)) => Ok(Outcome::Again {
                    at: Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default(),
                    payload: job.payload.clone(),
                }),
                Err(error) => Err(JobError::Retry(error.to_string())),
            }
        })
    }
}

impl Channels {
    async fn handle_update(
        &self,
        scope: &TenantScope,
        update_id: i64,
        update: &serde_json::Value,
    ) -> Result<(), ChatError> {
        let inbound = telegram::read_update(update);
        let chat_id = match &inbound {
            Inbound::Text { chat_id, .. }
            | Inbound::Choice { chat_id, .. }
            | Inbound::Unreadable { chat_id }
            | Inbound::Blocked { chat_id } => chat_id.clone(),
            Inbound::Ignored => return Ok(()),
        };
        let (scope_moved, external) = (scope.clone(), chat_id.clone());
        let visitor_id = self
            .db()
            .call(move |c| c.channel_visitor(&scope_moved, TELEGRAM, &external))
            .await?;
        if let Inbound::Blocked { .. } = inbound {
            let (scope, visitor) = (scope.clone(), visitor_id);
            self.db()
                .call(move |c| c.opt_out_visitor(&scope, &visitor, Utc::now()))
                .await?;
            return Ok(());
        }
        let chat = &self.inner.chat;
        let conversation = chat.conversation_of_visitor(scope, &visitor_id).await?;
        // The message's id: a job run again after a crash stores and answers it once.
        let client_id = format!("tg-{update_id}");
        let text = match inbound {
            Inbound::Text { text, .. } => text,
            Inbound::Choice {
                callback_id, index, ..
            } => {
                self.answer_callback(scope, &callback_id).await;
                let choices = chat.latest_quick_replies(scope, &conversation).await?;
                match choices.into_iter().nth(index) {
                    Some(label) => label,
                    None => return Ok(()),
                }
            }
            Inbound::Unreadable { .. } => {
                chat.store_coach_reply(scope, &conversation, UNREADABLE_REPLY, Some(&client_id))
                    .await?;
                return Ok(());
            }
            Inbound::Blocked { .. } | Inbound::Ignored => return Ok(()),
        };
        // `/start` opens the chat (and may carry a deep link's payload); the coach greets.
        if let Some(payload) = start_payload(&text) {
            if payload.is_empty() {
                let scope_moved = scope.clone();
                let coach = self
                    .db()
                    .call(move |c| crate::chat::coach::get(c, &scope_moved))
                    .await?;
                chat.store_coach_reply(scope, &conversation, &coach.greeting, Some(&client_id))
                    .await?;
                return Ok(());
            }
            // A deep link's payload is what the person would have typed (a link code).
            return self
                .turn(
                    scope,
                    &visitor_id,
                    &conversation,
                    &chat_id,
                    payload,
                    &client_id,
                )
                .await;
        }
        self.turn(
            scope,
            &visitor_id,
            &conversation,
            &chat_id,
            &text,
            &client_id,
        )
        .await
    }

    /// The person's message through the chat pipeline; the coach's answer follows as a job.
    async fn turn(
        &self,
        scope: &TenantScope,
        visitor_id: &str,
        conversation: &str,
        chat_id: &str,
        text: &str,
        client_id: &str,
    ) -> Result<(), ChatError> {
        let speaker = Speaker::Visitor {
            scope: scope.clone(),
            visitor_id: visitor_id.to_string(),
        };
        let chat = &self.inner.chat;
        let asked = chat
            .ask(&speaker, conversation, text, Some(client_id))
            .await?;
        if asked.duplicate {
            return Ok(());
        }
        if let Some(pending) = asked.pending {
            self.typing(scope, chat_id).await;
            chat.answer_in_background(speaker, conversation.to_string(), pending)
                .await;
        }
        Ok(())
    }

    /// "typing…" while the coach writes; a failure only costs the indicator.
    async fn typing(&self, scope: &TenantScope, chat_id: &str) {
        if let Ok(Some((_, secrets))) = self.telegram_account(scope).await
            && let Err(error) = self
                .inner
                .telegram
                .send_typing(&secrets.token, chat_id)
                .await
        {
            tracing::debug!(%error, "typing indicator not shown");
        }
    }

    async fn answer_callback(&self, scope: &TenantScope, callback_id: &str) {
        if let Ok(Some((_, secrets))) = self.telegram_account(scope).await
            && let Err(error) = self
                .inner
                .telegram
                .answer_callback(&secrets.token, callback_id)
                .await
        {
            tracing::debug!(%error, "button press not acknowledged");
        }
    }
}

/// `/start` or `/start <payload>` (also `/start@BotName`): the payload, or `None` for any
/// other text.
fn start_payload(text: &str) -> Option<&str> {
    let rest = text.trim().strip_prefix("/start")?;
    let rest = match rest.strip_prefix('@') {
        Some(named) => named.split_once(' ').map_or("", |(_, payload)| payload),
        None if rest.is_empty() || rest.starts_with(' ') => rest,
        None => return None,
    };
    Some(rest.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_commands_carry_their_payload() {
        assert_eq!(start_payload("/start"), Some(""));
        assert_eq!(start_payload("/start K7PQ-X4ZD"), Some("K7PQ-X4ZD"));
        assert_eq!(start_payload("/start@CoachBot abc"), Some("abc"));
        assert_eq!(start_payload("/starting"), None);
        assert_eq!(start_payload("how do I start?"), None);
    }
}
