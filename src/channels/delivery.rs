//! Hands a queued outbox message to its platform, exactly once as far as the platform lets
//! us know. Neither platform takes an idempotency key, so each part is recorded as being
//! handed over before the call and as sent after it. A part whose call may have reached the
//! platform (a timeout, or the process stopped mid-call) is never sent again: it counts as
//! sent, unconfirmed. A part the platform refused, or that never left, is tried again.

use chrono::{DateTime, Utc};

use super::format::{MAX_PART, render, split};
use super::telegram::CallError;
use super::{Channels, TELEGRAM};
use crate::auth::TenantScope;
use crate::db::DbError;
use crate::db::channels::{ChannelStore, Delivery};
use crate::db::coaching::OutboxStore;
use crate::jobs::{BoxFuture, Handler, Job, JobError, Outcome};

/// Tries (refusals and unreachable platforms; `retry_after` waits do not count) before a
/// message is recorded `failed`.
const MAX_TRIES: i64 = 6;

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
            let scope = TenantScope::new(
                job.tenant_id
                    .clone()
                    .ok_or_else(|| JobError::Fatal("a delivery without a tenant".into()))?,
            );
            let outbox_id = job.payload["outbox_id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
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

impl Channels {
    async fn hand_over(
        &self,
        scope: &TenantScope,
        delivery: &Delivery,
        now: DateTime<Utc>,
    ) -> Result<Handed, DbError> {
        if delivery.channel != TELEGRAM {
            return Ok(Handed::Failed(format!(
                "no {} connection",
                delivery.channel
            )));
        }
        let Ok(Some((_, secrets))) = self.telegram_account(scope).await else {
            return Ok(Handed::Failed("the Telegram bot was disconnected".into()));
        };
        let parts = split(&render(&delivery.message), MAX_PART);
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
            let buttons: &[String] = if last {
                &delivery.message.quick_replies
            } else {
                &[]
            };
            let sent = self
                .inner
                .telegram
                .send_message(&secrets.token, &delivery.external_id, text, buttons)
                .await;
            match sent {
                Ok(message_id) => {
                    self.record(scope, delivery, move |c, s, id| {
                        c.delivery_part_sent(s, id, part, Some(&message_id))
                    })
                    .await?;
                }
                Err(CallError::Unknown(error)) => {
                    tracing::warn!(%error, outbox = %delivery.outbox_id, "Telegram did not answer; the part is not sent again");
                    self.record(scope, delivery, move |c, s, id| {
                        c.delivery_part_sent(s, id, part, None)
                    })
                    .await?;
                    unconfirmed = true;
                }
                Err(error) => {
                    // Too many requests: Telegram says how long to wait; that is no failed try.
                    let counts = !matches!(
                        error,
                        CallError::Refused {
                            retry_after: Some(_),
                            ..
                        }
                    );
                    self.record(scope, delivery, move |c, s, id| {
                        c.delivery_part_refused(s, id, counts)
                    })
                    .await?;
                    return self.after_refusal(scope, delivery, error, tries, now).await;
                }
            }
        }
        self.record_error(scope, None).await;
        Ok(Handed::Sent { unconfirmed })
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
        if error.is_blocked() {
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
        self.record_error(scope, Some(reason.clone())).await;
        // A request Telegram will never take (a bad chat id, a text it rejects) fails now.
        let permanent = matches!(error, CallError::Refused { code: 400, .. });
        if permanent || tries >= MAX_TRIES {
            return Ok(Handed::Failed(reason));
        }
        let backoff = chrono::Duration::seconds(5 * 4_i64.pow((tries.clamp(1, 5) - 1) as u32));
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
