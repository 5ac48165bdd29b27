//! The outbox: every proactive message is stored in the end user's conversation first (once:
//! its client id is the nudge's), recorded with a delivery status, then handed to its channel.
//! Channels are a small trait: the web (live connections) today; Telegram and WhatsApp plug in
//! beside it.

use chrono::{DateTime, Utc};
use serde_json::json;

use super::model::{EndUser, Nudge, Step};
use super::programs::StepAdvance;
use super::writer::Written;
use super::{Coaching, CoachingError};
use crate::auth::TenantScope;
use crate::chat::Chat;
use crate::chat::coach::Coach;
use crate::chat::conversations::{Message, NewMessage, ProactiveStore, WEB_CHANNEL};
use crate::db::channels::delivery_id;
use crate::db::coaching::{
    EndUserStore, GoalStore, NudgeStore, NudgeUpdate, OutboxStore, ProgramStore,
};
use crate::jobs::BoxFuture;

/// Where a message goes out. Each channel also names itself and the status its messages are
/// recorded with when stored (`WebChannel::NAME`, `WebChannel::STATUS_WHEN_STORED`): that is
/// written inside the sending transaction, before the channel is at hand.
pub trait Channel: Send + Sync {
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

impl WebChannel {
    const NAME: &'static str = "web";
    /// A message is recorded `sent` as it is stored: it is in the conversation, which the page
    /// shows when it next loads (other channels record `queued` until they hand it over).
    const STATUS_WHEN_STORED: &'static str = "sent";
}

impl Channel for WebChannel {
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

/// A nudge's message ready to go out: everything the one transaction that sends it writes.
pub(super) struct Outgoing {
    scope: TenantScope,
    nudge_id: String,
    user: EndUser,
    visitor: String,
    written: Written,
    stats: serde_json::Value,
    /// The goal whose value the reply gives (a check-in).
    awaiting: Option<String>,
    /// The program's next step, planned in the same transaction.
    advance: Option<(StepAdvance, Coach)>,
    channel: &'static str,
    status: &'static str,
    now: DateTime<Utc>,
}

/// A nudge's message stored and recorded, to hand to its channel.
pub(super) struct Recorded {
    nudge_id: String,
    message: Message,
    /// The status it was recorded with.
    status: &'static str,
    /// A next step was planned (the job runner needs a wake).
    planned: bool,
}

impl Outgoing {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        scope: &TenantScope,
        user: &EndUser,
        nudge: &Nudge,
        step: Option<&Step>,
        unit: Option<&str>,
        written: Written,
        visitor: String,
        advance: Option<(StepAdvance, Coach)>,
        now: DateTime<Utc>,
    ) -> Outgoing {
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
        let awaiting = nudge
            .goal_id
            .clone()
            .filter(|_| asks_for_value(nudge, step));
        stats["asks_value"] = json!(awaiting.is_some());
        if awaiting.is_some()
            && let Some(unit) = unit.filter(|u| !u.is_empty())
        {
            stats["value_unit"] = json!(unit);
        }
        Outgoing {
            scope: scope.clone(),
            nudge_id: nudge.id.clone(),
            user: user.clone(),
            visitor,
            written,
            stats,
            awaiting: nudge
                .goal_id
                .clone()
                .filter(|_| asks_for_value(nudge, step)),
            advance,
            channel: WebChannel::NAME,
            status: WebChannel::STATUS_WHEN_STORED,
            now,
        }
    }

    /// Stores the message (once per client id: a retry after a crash finds it), records it in
    /// the outbox and on the nudge, and plans the next step. Call it inside a transaction.
    pub(super) fn record<C>(self, c: &C) -> Result<Recorded, CoachingError>
    where
        C: ProactiveStore + OutboxStore + NudgeStore + EndUserStore + ProgramStore + GoalStore,
    {
        let Outgoing {
            scope,
            nudge_id,
            user,
            visitor,
            written,
            stats,
            awaiting,
            advance,
            channel,
            status,
            now,
        } = self;
        let message = c.add_proactive(
            &scope,
            &visitor,
            &NewMessage {
                role: "assistant",
                content: &written.text,
                citations: &written.citations,
                stats: Some(stats),
                client_id: Some(&format!("nudge-{nudge_id}")),
                ..NewMessage::default()
            },
        )?;
        // The web needs no delivery (being stored is being sent); a messaging app's delivery
        // was queued with the message.
        let (outbox_id, channel, status) = if message.channel == WEB_CHANNEL {
            let outbox_id = outbox_id(&nudge_id);
            c.add_outbound(
                &scope,
                &outbox_id,
                &message.id,
                &message.conversation_id,
                message.seq,
                channel,
            )?;
            c.set_outbound_status(&scope, &outbox_id, status, None)?;
            (outbox_id, channel.to_string(), status)
        } else {
            (delivery_id(&message.id), message.channel.clone(), "queued")
        };
        c.update_nudge(
            &scope,
            &nudge_id,
            &NudgeUpdate {
                status: Some("sent"),
                sent: Some((now, &channel, &message.id, &outbox_id)),
                content: Some(&written.text),
                ..NudgeUpdate::default()
            },
        )?;
        if let Some(goal) = awaiting {
            let mut user = c.end_user(&scope, &user.id)?.unwrap_or(user);
            user.awaiting_goal_id = Some(goal);
            user.awaiting_retried = false;
            c.update_end_user(&scope, &user)?;
        }
        let planned = match advance {
            Some((advance, coach)) => advance.apply(c, &coach)?,
            None => false,
        };
        Ok(Recorded {
            nudge_id,
            message,
            status,
            planned,
        })
    }
}

fn outbox_id(nudge_id: &str) -> String {
    format!("out-{nudge_id}")
}

impl Coaching {
    /// Sends a nudge: stored and recorded in one transaction, then handed to its channel.
    pub(super) async fn send_nudge(
        &self,
        scope: &TenantScope,
        outgoing: Outgoing,
    ) -> Result<(), CoachingError> {
        let recorded = self
            .db()
            .call(move |c| crate::db::immediate(c, |c| outgoing.record(c)))
            .await?;
        self.hand_over(scope, recorded).await
    }

    /// Hands a recorded message to its channel, and records what delivery reached when it is
    /// not what was recorded already.
    pub(super) async fn hand_over(
        &self,
        scope: &TenantScope,
        recorded: Recorded,
    ) -> Result<(), CoachingError> {
        if recorded.planned {
            self.jobs().wake();
        }
        if recorded.message.channel != WEB_CHANNEL {
            // Staff see it now; its delivery job takes it to the messaging app.
            self.inner
                .chat
                .publish_message(scope.tenant_id(), &recorded.message);
            return Ok(());
        }
        let channel = WebChannel(self.inner.chat.clone());
        let status = match channel.deliver(scope, &recorded.message).await {
            Ok(status) => status,
            Err(error) => {
                tracing::warn!(%error, nudge = %recorded.nudge_id, "delivery failed");
                "failed"
            }
        };
        if status == recorded.status {
            return Ok(());
        }
        let (scope, id) = (scope.clone(), recorded.nudge_id);
        self.db()
            .call(move |c| {
                c.set_outbound_status(&scope, &outbox_id(&id), status, None)?;
                if status == "failed" {
                    c.update_nudge(
                        &scope,
                        &id,
                        &NudgeUpdate {
                            status: Some("failed"),
                            reason: Some("delivery_failed"),
                            ..NudgeUpdate::default()
                        },
                    )?;
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
