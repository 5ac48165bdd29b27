//! The outbox: every proactive message is stored in the end user's conversation first (once:
//! its client id is the nudge's), recorded with a delivery status, then handed to its channel.
//! Channels are a small trait: the web (live connections) today; Telegram and WhatsApp plug in
//! beside it.

use chrono::{DateTime, Utc};
use serde_json::json;

use super::model::{EndUser, Nudge, Step};
use super::writer::Written;
use super::{Coaching, CoachingError};
use crate::auth::TenantScope;
use crate::chat::Chat;
use crate::chat::conversations::Message;
use crate::db::coaching::{EndUserStore, NudgeStore, NudgeUpdate, OutboxStore};
use crate::jobs::BoxFuture;

/// Where a message goes out.
pub trait Channel: Send + Sync {
    fn name(&self) -> &'static str;
    /// Hands a stored message to the channel; the status it reached (`sent`, or `failed`).
    fn deliver<'a>(
        &'a self,
        scope: &'a TenantScope,
        message: &'a Message,
    ) -> BoxFuture<'a, Result<&'static str, String>>;
}

/// The web: the message is in the conversation, and every open connection gets it now. It
/// becomes `delivered` and `read` with the end user's receipts.
pub struct WebChannel(pub Chat);

impl Channel for WebChannel {
    fn name(&self) -> &'static str {
        "web"
    }

    fn deliver<'a>(
        &'a self,
        scope: &'a TenantScope,
        message: &'a Message,
    ) -> BoxFuture<'a, Result<&'static str, String>> {
        Box::pin(async move {
            self.0.publish_message(scope.tenant_id(), message);
            Ok("sent")
        })
    }
}

impl Coaching {
    /// Stores, records and delivers a nudge's message, then marks the nudge sent (and, for a
    /// check-in, waits for the value in the chat). Safe to repeat after a crash at any point.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn send_nudge(
        &self,
        scope: &TenantScope,
        user: &EndUser,
        nudge: &Nudge,
        step: Option<&Step>,
        written: &Written,
        visitor: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<(), CoachingError> {
        let visitor = match visitor {
            Some(visitor) => visitor,
            None => self.web_visitor(scope, user).await?,
        };
        let mut stats = json!({
            "proactive": {
                "kind": nudge.kind,
                "nudge_id": nudge.id,
                "rule_id": nudge.rule_id,
                "step_key": nudge.step_key,
                "goal_id": nudge.goal_id,
                "written_by": written.by,
            }
        });
        if let Some(step) = step.filter(|s| !s.choices.is_empty()) {
            stats["choices"] = json!(step.choices.iter().map(|c| &c.label).collect::<Vec<_>>());
        }
        let message = self
            .inner
            .chat
            .store_proactive(
                scope,
                &visitor,
                &format!("nudge-{}", nudge.id),
                &written.text,
                &written.citations,
                stats,
            )
            .await?;
        let channel = WebChannel(self.inner.chat.clone());
        let outbox_id = format!("out-{}", nudge.id);
        let status = match channel.deliver(scope, &message).await {
            Ok(status) => status,
            Err(error) => {
                tracing::warn!(%error, nudge = %nudge.id, "delivery failed");
                "failed"
            }
        };
        let awaiting = nudge
            .goal_id
            .clone()
            .filter(|_| asks_for_value(nudge, step));
        let (scope_moved, id, user_moved) = (scope.clone(), nudge.id.clone(), user.clone());
        let message_id = message.id.clone();
        let name = channel.name();
        let text = written.text.clone();
        let (conversation_id, seq) = (message.conversation_id.clone(), message.seq);
        // Stored first (above), then recorded with what delivery reached. A crash in between
        // delivers again on the retry, which a client shows once (same seq); each write here
        // is idempotent.
        self.db()
            .call(move |c| {
                c.add_outbound(
                    &scope_moved,
                    &outbox_id,
                    &message_id,
                    &conversation_id,
                    seq,
                    name,
                )?;
                c.set_outbound_status(&scope_moved, &outbox_id, status, None)?;
                c.update_nudge(
                    &scope_moved,
                    &id,
                    &NudgeUpdate {
                        status: Some(if status == "failed" { "failed" } else { "sent" }),
                        reason: (status == "failed").then_some("delivery_failed"),
                        sent: Some((now, name, &message_id, &outbox_id)),
                        content: Some(&text),
                        ..NudgeUpdate::default()
                    },
                )?;
                if let Some(goal) = awaiting {
                    let mut user = c
                        .end_user(&scope_moved, &user_moved.id)?
                        .unwrap_or(user_moved);
                    user.awaiting_goal_id = Some(goal);
                    user.awaiting_retried = false;
                    c.update_end_user(&scope_moved, &user)?;
                }
                Ok::<_, crate::db::DbError>(())
            })
            .await?;
        Ok(())
    }
}

/// A check-in prompt, or a check-in step: the reply is the goal's value.
fn asks_for_value(nudge: &Nudge, step: Option<&Step>) -> bool {
    match nudge.kind {
        super::model::NudgeKind::CheckIn => true,
        super::model::NudgeKind::Step => {
            step.is_some_and(|s| s.kind == super::model::StepKind::CheckIn)
        }
        super::model::NudgeKind::Rule => false,
    }
}
