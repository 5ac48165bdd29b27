//! An update from a platform becomes a turn of the conversation: the person is a visitor of
//! the channel (made on first contact), their text goes through the same pipeline as the
//! widget's (the coaching engine first, then a grounded answer as a background job), and what
//! the coach says goes back through the outbox.

use chrono::Utc;

use super::telegram::{self, Inbound};
use super::{Channels, TELEGRAM, WHATSAPP, whatsapp};
use crate::auth::TenantScope;
use crate::chat::ChatError;
use crate::chat::conversations::Speaker;
use crate::coaching::CoachingError;
use crate::db::channels::ChannelStore;
use crate::db::jobs::JobStore;
use crate::jobs::{BoxFuture, Handler, Job, JobError, Outcome};

/// `/start p-<program id>`: a link that enrols whoever opens it in a program.
pub const PROGRAM_LINK_PREFIX: &str = "p-";

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
            let scope = crate::jobs::tenant_scope(job)?;
            // One chat's messages are answered in the order they came.
            let earlier = job.clone();
            if self
                .0
                .db()
                .read(move |c| c.earlier_job_pending(&earlier))
                .await?
            {
                return Ok(Outcome::Again {
                    at: Utc::now() + chrono::Duration::milliseconds(100),
                    payload: job.payload.clone(),
                });
            }
            match self.0.handle(&scope, &job.payload).await {
                Ok(()) => Ok(Outcome::Done),
                // A suspended coach, a visitor gone: nothing to answer.
                Err(ChatError::Suspended | ChatError::Unauthorized | ChatError::NotFound(_)) => {
                    Ok(Outcome::Done)
                }
                Err(ChatError::Invalid(message)) => {
                    tracing::info!(%message, "a channel message was not taken");
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

/// What a person did on a platform, once read.
enum Said {
    Text(String),
    /// Pressed the button of one of the latest quick replies.
    Choice(usize),
    /// A photo, a voice note, a sticker.
    Unreadable,
    /// Blocked the bot.
    Blocked,
}

/// An event of any platform: who (their id there), what, and the id that makes it once.
struct Incoming {
    channel: &'static str,
    external_id: String,
    client_id: String,
    said: Said,
    /// Telegram's pressed-button query, to acknowledge.
    callback_id: Option<String>,
}

/// Reads a `channel_inbound` job's payload; `None` when there is nothing for the coach.
fn read(payload: &serde_json::Value) -> Option<Incoming> {
    match payload["channel"].as_str()? {
        TELEGRAM => {
            let update = &payload["update"];
            let client_id = format!("tg-{}", telegram::update_id(update)?);
            let (external_id, said, callback_id) = match telegram::read_update(update) {
                Inbound::Text { chat_id, text, .. } => (chat_id, Said::Text(text), None),
                Inbound::Choice {
                    chat_id,
                    callback_id,
                    index,
                } => (chat_id, Said::Choice(index), Some(callback_id)),
                Inbound::Unreadable { chat_id } => (chat_id, Said::Unreadable, None),
                Inbound::Blocked { chat_id } => (chat_id, Said::Blocked, None),
                Inbound::Ignored => return None,
            };
            Some(Incoming {
                channel: TELEGRAM,
                external_id,
                client_id,
                said,
                callback_id,
            })
        }
        WHATSAPP => {
            let message = &payload["message"];
            let said = match whatsapp::read_message(message) {
                whatsapp::Said::Text(text) => Said::Text(text),
                whatsapp::Said::Choice(index) => Said::Choice(index),
                whatsapp::Said::Unreadable => Said::Unreadable,
            };
            Some(Incoming {
                channel: WHATSAPP,
                external_id: message["from"].as_str()?.to_string(),
                client_id: format!("wa-{}", message["id"].as_str()?),
                said,
                callback_id: None,
            })
        }
        _ => None,
    }
}

impl Channels {
    async fn handle(
        &self,
        scope: &TenantScope,
        payload: &serde_json::Value,
    ) -> Result<(), ChatError> {
        let Some(incoming) = read(payload) else {
            return Ok(());
        };
        let Incoming {
            channel,
            external_id,
            client_id,
            said,
            callback_id,
        } = incoming;
        let (scope_moved, external) = (scope.clone(), external_id.clone());
        let visitor_id = self
            .db()
            .call(move |c| c.channel_visitor(&scope_moved, channel, &external))
            .await?;
        if let Said::Blocked = said {
            let (scope, visitor) = (scope.clone(), visitor_id);
            self.db()
                .call(move |c| c.opt_out_visitor(&scope, &visitor, Utc::now()))
                .await?;
            return Ok(());
        }
        let chat = &self.inner.chat;
        let conversation = chat.conversation_of_visitor(scope, &visitor_id).await?;
        let text = match said {
            Said::Text(text) => text,
            Said::Choice(index) => {
                if let Some(callback_id) = callback_id {
                    self.answer_callback(scope, &callback_id).await;
                }
                let choices = chat.latest_quick_replies(scope, &conversation).await?;
                match choices.into_iter().nth(index) {
                    Some(label) => label,
                    None => return Ok(()),
                }
            }
            Said::Unreadable => {
                chat.store_coach_reply(scope, &conversation, UNREADABLE_REPLY, Some(&client_id))
                    .await?;
                return Ok(());
            }
            Said::Blocked => return Ok(()),
        };
        let chat_id = (channel == TELEGRAM).then_some(external_id);
        // `/start` opens the chat (and may carry a deep link's payload); the coach greets.
        if let Some(payload) = start_payload(&text) {
            let program = payload.strip_prefix(PROGRAM_LINK_PREFIX);
            if payload.is_empty() || program.is_some() {
                let scope_moved = scope.clone();
                let coach = self
                    .db()
                    .call(move |c| crate::chat::coach::get(c, &scope_moved))
                    .await?;
                let mut greeting = coach.greeting;
                if let Some(program) = program {
                    greeting.push_str("\n\n");
                    greeting.push_str(&self.enrol_from_link(scope, &visitor_id, program).await);
                }
                chat.store_coach_reply(scope, &conversation, &greeting, Some(&client_id))
                    .await?;
                return Ok(());
            }
            // A deep link's payload is what the person would have typed (a link code).
            return self
                .turn(
                    scope,
                    &visitor_id,
                    &conversation,
                    chat_id.as_deref(),
                    payload,
                    &client_id,
                )
                .await;
        }
        self.turn(
            scope,
            &visitor_id,
            &conversation,
            chat_id.as_deref(),
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
        // Telegram's chat, for "typing…" (WhatsApp shows none).
        chat_id: Option<&str>,
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
            if let Some(chat_id) = chat_id {
                self.typing(scope, chat_id).await;
            }
            chat.answer_in_background(speaker, conversation.to_string(), pending)
                .await;
        }
        Ok(())
    }

    /// A program link (`/start p-<program id>`): the person is enrolled; what to tell them.
    async fn enrol_from_link(
        &self,
        scope: &TenantScope,
        visitor_id: &str,
        program_id: &str,
    ) -> String {
        let coaching = &self.inner.coaching;
        let enrolled = match coaching.end_user_of_visitor(scope, visitor_id).await {
            Ok(user) => coaching.enroll(scope, program_id, &user.id).await.map(drop),
            Err(error) => Err(error),
        };
        match enrolled {
            Ok(()) => "You're enrolled: your first step comes at its time.".into(),
            Err(CoachingError::AlreadyEnrolled(_)) => {
                "You're already enrolled in this program.".into()
            }
            Err(CoachingError::OptedOut(_)) => {
                "You asked me not to message you, so I haven't enrolled you in this program.".into()
            }
            Err(error) => {
                tracing::info!(%error, "a program link did not enrol");
                "That program link doesn't work any more; ask your coach for a new one.".into()
            }
        }
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
