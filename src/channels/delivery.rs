//! Hands a queued outbox message to its platform, exactly once as far as the platform lets
//! us know. Neither platform takes an idempotency key, so each part is recorded as being
//! handed over before the call and as sent after it. A part whose call may have reached the
//! platform (a timeout, or the process stopped mid-call) is never sent again: it counts as
//! sent, unconfirmed. A part the platform refused, or that never left, is tried again.

use chrono::{DateTime, Utc};

use super::format::{MAX_PART, render, split};
use super::telegram::CallError;
use super::whatsapp::{self, Template};
use super::{Channels, TELEGRAM, WHATSAPP};
use crate::auth::TenantScope;
use crate::chat::conversations::Message;
use crate::db::DbError;
use crate::db::channels::{ChannelStore, Delivery};
use crate::db::coaching::OutboxStore;
use crate::db::coaching::{NudgeStore, NudgeUpdate};
use crate::jobs::{BoxFuture, Handler, Job, JobError, Outcome};

/// Tries (refusals and unreachable platforms; `retry_after` waits do not count) before a
/// message is recorded `failed`.
const MAX_TRIES: i64 = 6;

/// Why a message to WhatsApp was not sent: more than 24 hours since the person wrote, and no
/// template to carry it.
pub const WINDOW_CLOSED: &str = "whatsapp_window_closed";

/// Rate limits: Telegram's `retry_after`, WhatsApp's throughput errors.
fn is_rate_limit(error: &CallError) -> bool {
    matches!(
        error,
        CallError::Refused {
            retry_after: Some(_),
            ..
        }
    ) || whatsapp::is_rate_limit(error)
}

/// An account lookup, its storage errors kept, anything else as "not there".
fn opened<T>(result: Result<Option<T>, super::ChannelError>) -> Result<Option<T>, DbError> {
    match result {
        Ok(found) => Ok(found),
        Err(super::ChannelError::Db(error)) => Err(error),
        Err(_) => Ok(None),
    }
}

fn channel_name(delivery: &Delivery) -> &'static str {
    if delivery.channel == WHATSAPP {
        WHATSAPP
    } else {
        TELEGRAM
    }
}

/// What became of one delivery run.
enum Handed {
    /// Every part went out (`unconfirmed`: some may have; the platform never said).
    Sent { unconfirmed: bool },
    /// Try again at this time.
    Later(DateTime<Utc>),
    /// Given up, with the reason the outbox shows.
    Failed(String),
}

/// Runs `channel_delivery` jobs.
pub struct DeliveryJob(pub Channels);

impl Handler for DeliveryJob {
    fn run<'a>(
        &'a self,
        job: &'a Job,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Outcome, JobError>> {
        Box::pin(async move {
            let (scope, outbox_id) = super::outbox_target(job)?;
            let (scope_moved, id) = (scope.clone(), outbox_id.clone());
            let Some(delivery) = self
                .0
                .db()
                .call(move |c| c.delivery(&scope_moved, &id))
                .await?
            else {
                return Ok(Outcome::Done);
            };
            if delivery.status != "queued" {
                return Ok(Outcome::Done);
            }
            let (scope_moved, waiting) = (scope.clone(), delivery.clone());
            if self
                .0
                .db()
                .read(move |c| c.earlier_delivery_queued(&scope_moved, &waiting))
                .await?
            {
                return Ok(Outcome::Again {
                    at: now + chrono::Duration::milliseconds(200),
                    payload: job.payload.clone(),
                });
            }
            let handed = self.0.hand_over(&scope, &delivery, now).await?;
            let (status, error) = match handed {
                Handed::Later(at) => {
                    return Ok(Outcome::Again {
                        at,
                        payload: job.payload.clone(),
                    });
                }
                Handed::Sent { unconfirmed: false } => ("sent", None),
                Handed::Sent { unconfirmed: true } => (
                    "sent",
                    Some(
                        "the platform did not confirm every part; none was sent twice".to_string(),
                    ),
                ),
                Handed::Failed(reason) => ("failed", Some(reason)),
            };
            self.0
                .db()
                .call(move |c| c.set_outbound_status(&scope, &outbox_id, status, error.as_deref()))
                .await?;
            Ok(Outcome::Done)
        })
    }
}

/// How one message reaches its platform.
enum Sender {
    Telegram {
        token: String,
    },
    WhatsApp {
        phone_number_id: String,
        token: String,
        /// Outside the 24-hour window: the template that carries the text, if any.
        template: Option<Template>,
        window_open: bool,
    },
}

/// How much of a text WhatsApp takes as a template parameter or an interactive body.
const WHATSAPP_SHORT_TEXT: usize = 1024;

impl Channels {
    /// The platform connection the delivery goes out through, and whether the channel shows
    /// an error (a success then clears it); `None` when it was removed.
    async fn sender(
        &self,
        scope: &TenantScope,
        delivery: &Delivery,
    ) -> Result<Option<(Sender, bool)>, DbError> {
        Ok(match delivery.channel.as_str() {
            TELEGRAM => opened(self.telegram_account(scope).await)?.map(|(account, secrets)| {
                let sender = Sender::Telegram {
                    token: secrets.token,
                };
                (sender, account.last_error.is_some())
            }),
            WHATSAPP => match opened(self.whatsapp_account(scope).await)? {
                Some((account, secrets)) => {
                    let (scope, visitor) = (scope.clone(), delivery.visitor_id.clone());
                    let last = self
                        .db()
                        .read(move |c| c.last_written_at(&scope, &visitor))
                        .await?;
                    let had_error = account.last_error.is_some();
                    Some((
                        Sender::WhatsApp {
                            phone_number_id: account.name,
                            token: secrets.access_token,
                            template: serde_json::from_value(account.settings["template"].clone())
                                .ok(),
                            window_open: last
                                .is_some_and(|at| Utc::now() - at < chrono::Duration::hours(24)),
                        },
                        had_error,
                    ))
                }
                None => None,
            },
            _ => None,
        })
    }

    /// The parts to send, and the quick replies to attach to the last one.
    fn parts(sender: &Sender, message: &Message) -> (Vec<String>, Vec<String>) {
        let mut text = render(message);
        let mut buttons = message.quick_replies.clone();
        if let Sender::WhatsApp { .. } = sender
            && !buttons.is_empty()
            && (!whatsapp::fits_buttons(&buttons) || text.chars().count() > WHATSAPP_SHORT_TEXT)
        {
            // More than WhatsApp's three short buttons: the choices are listed instead.
            text.push_str("\n\nReply with one of: ");
            text.push_str(&buttons.join(" · "));
            buttons.clear();
        }
        (split(&text, MAX_PART), buttons)
    }

    async fn send_part(
        &self,
        sender: &Sender,
        to: &str,
        text: &str,
        buttons: &[String],
    ) -> Result<String, CallError> {
        match sender {
            Sender::Telegram { token } => {
                self.inner
                    .telegram
                    .send_message(token, to, text, buttons)
                    .await
            }
            Sender::WhatsApp {
                phone_number_id,
                token,
                template,
                window_open,
            } => {
                let short: String = text.chars().take(WHATSAPP_SHORT_TEXT).collect();
                let content = match (window_open, template) {
                    (false, Some(template)) => whatsapp::Outgoing::Template(template, &short),
                    _ if !buttons.is_empty() => whatsapp::Outgoing::Buttons(text, buttons),
                    _ => whatsapp::Outgoing::Text(text),
                };
                self.inner
                    .whatsapp
                    .send(phone_number_id, token, to, &content)
                    .await
            }
        }
    }

    async fn hand_over(
        &self,
        scope: &TenantScope,
        delivery: &Delivery,
        now: DateTime<Utc>,
    ) -> Result<Handed, DbError> {
        let Some((sender, had_error)) = self.sender(scope, delivery).await? else {
            return Ok(Handed::Failed(format!(
                "the {} connection was removed",
                delivery.channel
            )));
        };
        let (mut parts, buttons) = Self::parts(&sender, &delivery.message);
        if let Sender::WhatsApp {
            window_open: false,
            template,
            ..
        } = &sender
        {
            if template.is_none() {
                // Meta refuses free text now (131047): nothing is sent.
                self.suppress_nudge(scope, &delivery.message).await?;
                return Ok(Handed::Failed(WINDOW_CLOSED.into()));
            }
            // A template carries one text.
            parts.truncate(1);
        }
        let mut next = delivery.parts_sent;
        let mut unconfirmed = false;
        if let Some(part) = delivery.part_in_flight {
            // The last run stopped during this part's call: it may be in the chat already.
            self.record(scope, delivery, move |c, s, id| {
                c.delivery_part_sent(s, id, part, None)
            })
            .await?;
            next = part + 1;
            unconfirmed = true;
        }
        let mut tries = delivery.attempts;
        for (index, text) in parts.iter().enumerate().skip(next.max(0) as usize) {
            let part = index as i64;
            self.record(scope, delivery, move |c, s, id| {
                c.delivery_attempt(s, id, part)
            })
            .await?;
            tries += 1;
            // Quick replies go under the last part, where the person reads the question.
            let last = index + 1 == parts.len();
            let buttons: &[String] = if last { &buttons } else { &[] };
            let sent = self
                .send_part(&sender, &delivery.external_id, text, buttons)
                .await;
            match sent {
                Ok(message_id) => {
                    self.record(scope, delivery, move |c, s, id| {
                        c.delivery_part_sent(s, id, part, Some(&message_id))
                    })
                    .await?;
                }
                Err(CallError::Unknown(error)) => {
                    tracing::warn!(%error, outbox = %delivery.outbox_id, "the platform did not answer; the part is not sent again");
                    self.record(scope, delivery, move |c, s, id| {
                        c.delivery_part_sent(s, id, part, None)
                    })
                    .await?;
                    unconfirmed = true;
                }
                Err(error) => {
                    // A wait the platform asked for is no failed try.
                    let counts = !is_rate_limit(&error);
                    self.record(scope, delivery, move |c, s, id| {
                        c.delivery_part_refused(s, id, counts)
                    })
                    .await?;
                    return self.after_refusal(scope, delivery, error, tries, now).await;
                }
            }
        }
        // Only a channel that shows an error is written to: a delivery is otherwise no write.
        if had_error {
            self.record_error(scope, channel_name(delivery), None).await;
        }
        Ok(Handed::Sent { unconfirmed })
    }

    /// A proactive message that cannot go out: its nudge is suppressed, with the reason.
    async fn suppress_nudge(&self, scope: &TenantScope, message: &Message) -> Result<(), DbError> {
        let Some(nudge) = message
            .stats
            .as_ref()
            .and_then(|s| s["proactive"]["nudge_id"].as_str())
            .map(str::to_string)
        else {
            return Ok(());
        };
        let scope = scope.clone();
        self.db()
            .call(move |c| {
                c.update_nudge(
                    &scope,
                    &nudge,
                    &NudgeUpdate {
                        status: Some("suppressed"),
                        reason: Some(WINDOW_CLOSED),
                        ..NudgeUpdate::default()
                    },
                )
            })
            .await
    }

    /// Nothing of the part went out: wait as asked, try again later, or give up.
    async fn after_refusal(
        &self,
        scope: &TenantScope,
        delivery: &Delivery,
        error: CallError,
        tries: i64,
        now: DateTime<Utc>,
    ) -> Result<Handed, DbError> {
        let reason = error.to_string();
        let telegram = delivery.channel == TELEGRAM;
        if telegram && error.is_blocked() {
            let (scope, visitor) = (scope.clone(), delivery.visitor_id.clone());
            self.db()
                .call(move |c| c.opt_out_visitor(&scope, &visitor, Utc::now()))
                .await?;
            return Ok(Handed::Failed(reason));
        }
        if let CallError::Refused {
            retry_after: Some(wait),
            ..
        } = error
        {
            return Ok(Handed::Later(
                now + chrono::Duration::seconds(wait.max(1) as i64),
            ));
        }
        let backoff = chrono::Duration::seconds(5 * 4_i64.pow((tries.clamp(1, 5) - 1) as u32));
        if is_rate_limit(&error) {
            return Ok(Handed::Later(now + backoff));
        }
        self.record_error(scope, channel_name(delivery), Some(reason.clone()))
            .await;
        // A request the platform will never take (a bad chat, a text it rejects) fails now.
        let permanent = match (&error, telegram) {
            (CallError::Refused { code, .. }, true) => *code == 400,
            // Graph's temporary errors; everything else it refuses stays refused.
            (CallError::Refused { code, .. }, false) => {
                !matches!(code, 1 | 2 | 131000 | 131016 | 500..=599)
            }
            _ => false,
        };
        if permanent || tries >= MAX_TRIES {
            return Ok(Handed::Failed(reason));
        }
        Ok(Handed::Later(now + backoff))
    }

    async fn record(
        &self,
        scope: &TenantScope,
        delivery: &Delivery,
        write: impl FnOnce(&dyn ChannelStore, &TenantScope, &str) -> Result<(), DbError>
        + Send
        + 'static,
    ) -> Result<(), DbError> {
        let (scope, id) = (scope.clone(), delivery.outbox_id.clone());
        self.db().call(move |c| write(&*c, &scope, &id)).await
    }
}
