//! Storage for messaging channels (`crate::channels`): each tenant's platform connection,
//! platform updates already taken in, identities on a channel (visitors with an external id),
//! delivery of outbound messages part by part, and link codes that join identities.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use super::{DbError, instant, parse_instant};
use crate::auth::TenantScope;
use crate::auth::tokens::{secret_hash, secret_token};
use crate::chat::conversations::{Message, VISITOR_TOKEN_PREFIX, message_by_id};

/// The job kind that hands an outbound message to its platform.
pub const DELIVER_JOB: &str = "channel_delivery";

/// A message the end user is to read on a messaging app: recorded `queued` in the outbox with
/// the job that delivers it. Called inside the transaction that stores the message.
pub fn queue_delivery(
    c: &Connection,
    scope: &TenantScope,
    message: &Message,
) -> rusqlite::Result<()> {
    let outbox_id = delivery_id(&message.id);
    c.prepare_cached(
        "INSERT INTO outbox (id, tenant_id, message_id, conversation_id, seq, channel, status) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued') ON CONFLICT DO NOTHING",
    )?
    .execute(params![
        outbox_id,
        scope.tenant_id(),
        message.id,
        message.conversation_id,
        message.seq,
        message.channel
    ])?;
    super::jobs::queue_outbox_job(
        c,
        scope,
        DELIVER_JOB,
        &outbox_id,
        format!("deliver-{outbox_id}"),
    )
}

/// The outbox id of a message delivered on a channel.
pub fn delivery_id(message_id: &str) -> String {
    format!("out-{message_id}")
}

/// A tenant's connection to a platform, credentials still sealed.
#[derive(Debug, Clone)]
pub struct ChannelAccount {
    pub tenant_id: String,
    pub channel: String,
    pub sealed: Vec<u8>,
    pub hint: String,
    pub name: String,
    /// What is not secret (WhatsApp: `display_phone_number`, `template`).
    pub settings: serde_json::Value,
    /// `webhook` or `polling`.
    pub mode: String,
    pub poll_offset: i64,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// An outbound message on its way to a platform.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub outbox_id: String,
    pub channel: String,
    pub status: String,
    pub attempts: i64,
    pub parts_sent: i64,
    /// A part recorded as being handed over whose answer never came (the process stopped).
    pub part_in_flight: Option<i64>,
    pub message: Message,
    /// The person's id on the platform (a Telegram chat id).
    pub external_id: String,
    pub visitor_id: String,
}

/// What the channels screen shows of one channel.
#[derive(Debug, Clone, Default)]
pub struct ChannelCounts {
    /// People who wrote through it.
    pub people: i64,
    /// Messages they sent.
    pub received: i64,
    pub queued: i64,
    pub sent: i64,
    pub failed: i64,
}

pub trait ChannelStore {
    fn channel_account(
        &self,
        scope: &TenantScope,
        channel: &str,
    ) -> Result<Option<ChannelAccount>, DbError>;
    /// Every tenant's account on `channel` (the server starts their pollers).
    fn accounts_on(&self, channel: &str) -> Result<Vec<ChannelAccount>, DbError>;
    fn save_channel_account(&self, account: &ChannelAccount) -> Result<(), DbError>;
    fn delete_channel_account(&self, scope: &TenantScope, channel: &str) -> Result<bool, DbError>;
    fn set_poll_offset(
        &self,
        scope: &TenantScope,
        channel: &str,
        offset: i64,
    ) -> Result<(), DbError>;
    /// Records the last error talking to the platform (`None`: it works again).
    fn set_channel_error(
        &self,
        scope: &TenantScope,
        channel: &str,
        error: Option<&str>,
    ) -> Result<(), DbError>;
    /// Whether a platform update is new: the first call for an id says yes, later ones no.
    fn take_inbound(
        &self,
        scope: &TenantScope,
        channel: &str,
        external_id: &str,
    ) -> Result<bool, DbError>;
    /// The visitor who is `external_id` on `channel`, made on first contact; each contact
    /// marks it the channel the person used last.
    fn channel_visitor(
        &self,
        scope: &TenantScope,
        channel: &str,
        external_id: &str,
    ) -> Result<String, DbError>;
    fn delivery(&self, scope: &TenantScope, outbox_id: &str) -> Result<Option<Delivery>, DbError>;
    /// Whether a message before this one in its conversation (queued in the last 15 minutes)
    /// is still waiting to go out on the same channel: messages reach the app in the order
    /// they were written.
    fn earlier_delivery_queued(
        &self,
        scope: &TenantScope,
        delivery: &Delivery,
    ) -> Result<bool, DbError>;
    /// Records that part `part` is being handed to the platform, before the call.
    fn delivery_attempt(
        &self,
        scope: &TenantScope,
        outbox_id: &str,
        part: i64,
    ) -> Result<(), DbError>;
    /// Part `part` reached the platform (`external_id`: its id there) or may have (`None`).
    fn delivery_part_sent(
        &self,
        scope: &TenantScope,
        outbox_id: &str,
        part: i64,
        external_id: Option<&str>,
    ) -> Result<(), DbError>;
    /// The platform refused the part: nothing went out, so it may be tried again
    /// (`counts`: the refusal counts as one of the tries; a wait Telegram asked for does not).
    fn delivery_part_refused(
        &self,
        scope: &TenantScope,
        outbox_id: &str,
        counts: bool,
    ) -> Result<(), DbError>;
    /// The person blocked the bot or left the channel: proactive messages stop going there,
    /// and stop altogether when they have no other channel.
    fn opt_out_visitor(
        &self,
        scope: &TenantScope,
        visitor_id: &str,
        at: DateTime<Utc>,
    ) -> Result<(), DbError>;
    fn channel_counts(&self, scope: &TenantScope, channel: &str) -> Result<ChannelCounts, DbError>;
    /// A platform's receipt for one of our messages (by its id there): the outbox moves on,
    /// never back (receipts come in any order); `failed` only before delivery.
    fn platform_receipt(
        &self,
        scope: &TenantScope,
        channel: &str,
        external_id: &str,
        status: &str,
        error: Option<&str>,
    ) -> Result<(), DbError>;
    /// When the person last wrote through this visitor.
    fn last_written_at(
        &self,
        scope: &TenantScope,
        visitor_id: &str,
    ) -> Result<Option<DateTime<Utc>>, DbError>;
    /// Whether a proactive message to this visitor cannot go out: WhatsApp, more than 24 hours
    /// since they last wrote, and no template to carry it.
    fn window_closed(&self, scope: &TenantScope, visitor_id: &str) -> Result<bool, DbError>;
    /// Stores a link code (hashed) for an end user, replacing their earlier ones; at most
    /// `per_hour` codes an hour (`false` when over).
    fn add_link_code(
        &self,
        scope: &TenantScope,
        end_user_id: &str,
        code: &str,
        expires_at: DateTime<Utc>,
        per_hour: i64,
    ) -> Result<bool, DbError>;
    /// The end user a code belongs to, if it is live; the code is used up either way.
    fn take_link_code(
        &self,
        scope: &TenantScope,
        code: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, DbError>;
    /// The person chose this visitor's channel for the coach's own messages.
    fn prefer_visitor(
        &self,
        scope: &TenantScope,
        end_user_id: &str,
        visitor_id: &str,
    ) -> Result<(), DbError>;
    /// Makes `visitor_id` one more identity of `end_user_id`: its own end user's goals,
    /// enrolments, nudges and consent move over, and that end user is removed.
    fn join_identity(
        &self,
        scope: &TenantScope,
        visitor_id: &str,
        end_user_id: &str,
    ) -> Result<(), DbError>;
}

const ACCOUNT_COLUMNS: &str = "tenant_id, channel, sealed, hint, name, mode, poll_offset, \
                               last_error, last_error_at, updated_at, settings";

fn account(r: &rusqlite::Row<'_>) -> rusqlite::Result<ChannelAccount> {
    Ok(ChannelAccount {
        tenant_id: r.get(0)?,
        channel: r.get(1)?,
        sealed: r.get(2)?,
        hint: r.get(3)?,
        name: r.get(4)?,
        mode: r.get(5)?,
        poll_offset: r.get(6)?,
        last_error: r.get(7)?,
        last_error_at: r.get::<_, Option<String>>(8)?.map(|t| parse_instant(&t)),
        updated_at: parse_instant(&r.get::<_, String>(9)?),
        settings: serde_json::from_str(&r.get::<_, String>(10)?).unwrap_or_default(),
    })
}

impl ChannelStore for Connection {
    fn channel_account(
        &self,
        scope: &TenantScope,
        channel: &str,
    ) -> Result<Option<ChannelAccount>, DbError> {
        Ok(self
            .query_row(
                &format!(
                    "SELECT {ACCOUNT_COLUMNS} FROM channel_accounts WHERE tenant_id = ?1 AND channel = ?2"
                ),
                params![scope.tenant_id(), channel],
                account,
            )
            .optional()?)
    }

    fn accounts_on(&self, channel: &str) -> Result<Vec<ChannelAccount>, DbError> {
        let mut statement = self.prepare(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM channel_accounts WHERE channel = ?1"
        ))?;
        let rows = statement.query_map([channel], account)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn save_channel_account(&self, a: &ChannelAccount) -> Result<(), DbError> {
        self.execute(
            "INSERT INTO channel_accounts (tenant_id, channel, sealed, hint, name, mode, poll_offset, settings) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
             ON CONFLICT (tenant_id, channel) DO UPDATE SET sealed = ?3, hint = ?4, name = ?5, \
               mode = ?6, poll_offset = ?7, settings = ?8, last_error = NULL, last_error_at = NULL, \
               updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
            params![a.tenant_id, a.channel, a.sealed, a.hint, a.name, a.mode, a.poll_offset, a.settings.to_string()],
        )?;
        Ok(())
    }

    fn delete_channel_account(&self, scope: &TenantScope, channel: &str) -> Result<bool, DbError> {
        Ok(self.execute(
            "DELETE FROM channel_accounts WHERE tenant_id = ?1 AND channel = ?2",
            params![scope.tenant_id(), channel],
        )? == 1)
    }

    fn set_poll_offset(
        &self,
        scope: &TenantScope,
        channel: &str,
        offset: i64,
    ) -> Result<(), DbError> {
        self.execute(
            "UPDATE channel_accounts SET poll_offset = max(poll_offset, ?3) \
             WHERE tenant_id = ?1 AND channel = ?2",
            params![scope.tenant_id(), channel, offset],
        )?;
        Ok(())
    }

    fn set_channel_error(
        &self,
        scope: &TenantScope,
        channel: &str,
        error: Option<&str>,
    ) -> Result<(), DbError> {
        self.prepare_cached(
            "UPDATE channel_accounts SET last_error = ?3, \
             last_error_at = CASE WHEN ?3 IS NULL THEN NULL ELSE strftime('%Y-%m-%dT%H:%M:%fZ', 'now') END \
             WHERE tenant_id = ?1 AND channel = ?2 AND last_error IS NOT ?3",
        )?
        .execute(params![scope.tenant_id(), channel, error])?;
        Ok(())
    }

    fn take_inbound(
        &self,
        scope: &TenantScope,
        channel: &str,
        external_id: &str,
    ) -> Result<bool, DbError> {
        Ok(self
            .prepare_cached(
                "INSERT INTO channel_inbound (tenant_id, channel, external_id) VALUES (?1, ?2, ?3) \
                 ON CONFLICT DO NOTHING",
            )?
            .execute(params![scope.tenant_id(), channel, external_id])?
            == 1)
    }

    fn channel_visitor(
        &self,
        scope: &TenantScope,
        channel: &str,
        external_id: &str,
    ) -> Result<String, DbError> {
        let found: Option<String> = self
            .prepare_cached(
                "UPDATE visitors SET last_seen_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
                 WHERE tenant_id = ?1 AND channel = ?2 AND external_id = ?3 RETURNING id",
            )?
            .query_row(params![scope.tenant_id(), channel, external_id], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some(id) = found {
            return Ok(id);
        }
        let id = crate::auth::new_id();
        // Nobody holds this token: a channel's people are known by their platform id.
        let token = secret_token(VISITOR_TOKEN_PREFIX);
        self.execute(
            "INSERT INTO visitors (id, tenant_id, token_hash, channel, external_id) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                id,
                scope.tenant_id(),
                secret_hash(&token),
                channel,
                external_id
            ],
        )?;
        Ok(id)
    }

    fn earlier_delivery_queued(
        &self,
        scope: &TenantScope,
        delivery: &Delivery,
    ) -> Result<bool, DbError> {
        Ok(self
            .prepare_cached(
                // Fifteen minutes at most: a message stuck behind a platform that keeps
                // refusing does not hold the rest of the conversation for ever.
                "SELECT EXISTS (SELECT 1 FROM outbox WHERE conversation_id = ?2 AND seq < ?3 \
                 AND channel = ?4 AND status = 'queued' AND tenant_id = ?1 \
                 AND created_at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-15 minutes'))",
            )?
            .query_row(
                params![
                    scope.tenant_id(),
                    delivery.message.conversation_id,
                    delivery.message.seq,
                    delivery.channel
                ],
                |r| r.get(0),
            )?)
    }

    fn delivery(&self, scope: &TenantScope, outbox_id: &str) -> Result<Option<Delivery>, DbError> {
        let row = self
            .query_row(
                "SELECT o.channel, o.status, o.attempts, o.parts_sent, o.part_in_flight, \
                        o.message_id, v.external_id, v.id \
                 FROM outbox o JOIN conversations c ON c.id = o.conversation_id \
                 JOIN visitors v ON v.id = c.visitor_id \
                 WHERE o.tenant_id = ?1 AND o.id = ?2",
                params![scope.tenant_id(), outbox_id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, Option<i64>>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, Option<String>>(6)?,
                        r.get::<_, String>(7)?,
                    ))
                },
            )
            .optional()?;
        let Some((
            channel,
            status,
            attempts,
            parts_sent,
            part_in_flight,
            message_id,
            external,
            visitor,
        )) = row
        else {
            return Ok(None);
        };
        let (Some(message), Some(external_id)) =
            (message_by_id(self, scope, &message_id)?, external)
        else {
            return Ok(None);
        };
        Ok(Some(Delivery {
            outbox_id: outbox_id.to_string(),
            channel,
            status,
            attempts,
            parts_sent,
            part_in_flight,
            message,
            external_id,
            visitor_id: visitor,
        }))
    }

    fn delivery_attempt(
        &self,
        scope: &TenantScope,
        outbox_id: &str,
        part: i64,
    ) -> Result<(), DbError> {
        self.prepare_cached(
            "UPDATE outbox SET attempts = attempts + 1, part_in_flight = ?3, \
             updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE tenant_id = ?1 AND id = ?2",
        )?
        .execute(params![scope.tenant_id(), outbox_id, part])?;
        Ok(())
    }

    fn delivery_part_sent(
        &self,
        scope: &TenantScope,
        outbox_id: &str,
        part: i64,
        external_id: Option<&str>,
    ) -> Result<(), DbError> {
        self.prepare_cached(
            "UPDATE outbox SET parts_sent = ?3 + 1, part_in_flight = NULL, \
             external_ids = CASE WHEN ?4 IS NULL THEN external_ids ELSE json_insert(external_ids, '$[#]', ?4) END, \
             updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE tenant_id = ?1 AND id = ?2",
        )?
        .execute(params![scope.tenant_id(), outbox_id, part, external_id])?;
        Ok(())
    }

    fn delivery_part_refused(
        &self,
        scope: &TenantScope,
        outbox_id: &str,
        counts: bool,
    ) -> Result<(), DbError> {
        self.prepare_cached(
            "UPDATE outbox SET part_in_flight = NULL, attempts = attempts - (NOT ?3), \
             updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE tenant_id = ?1 AND id = ?2",
        )?
        .execute(params![scope.tenant_id(), outbox_id, counts])?;
        Ok(())
    }

    fn opt_out_visitor(
        &self,
        scope: &TenantScope,
        visitor_id: &str,
        at: DateTime<Utc>,
    ) -> Result<(), DbError> {
        let end_user: Option<Option<String>> = self
            .query_row(
                "UPDATE visitors SET opted_out_at = coalesce(opted_out_at, ?3) \
                 WHERE tenant_id = ?1 AND id = ?2 RETURNING end_user_id",
                params![scope.tenant_id(), visitor_id, instant(at)],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(Some(end_user)) = end_user {
            self.execute(
                "UPDATE end_users SET opted_out_at = coalesce(opted_out_at, ?3), consent = 0 \
                 WHERE tenant_id = ?1 AND id = ?2 AND NOT EXISTS (SELECT 1 FROM visitors v \
                   WHERE v.tenant_id = ?1 AND v.end_user_id = ?2 AND v.opted_out_at IS NULL)",
                params![scope.tenant_id(), end_user, instant(at)],
            )?;
        }
        Ok(())
    }

    fn channel_counts(&self, scope: &TenantScope, channel: &str) -> Result<ChannelCounts, DbError> {
        let mut counts = self.query_row(
            "SELECT (SELECT count(*) FROM visitors WHERE tenant_id = ?1 AND channel = ?2), \
                    (SELECT count(*) FROM messages WHERE tenant_id = ?1 AND channel = ?2 AND role = 'user')",
            params![scope.tenant_id(), channel],
            |r| {
                Ok(ChannelCounts {
                    people: r.get(0)?,
                    received: r.get(1)?,
                    ..ChannelCounts::default()
                })
            },
        )?;
        let mut statement = self.prepare(
            "SELECT status, count(*) FROM outbox WHERE tenant_id = ?1 AND channel = ?2 GROUP BY status",
        )?;
        let rows = statement.query_map(params![scope.tenant_id(), channel], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        for row in rows {
            let (status, n) = row?;
            match status.as_str() {
                "queued" => counts.queued += n,
                "failed" => counts.failed += n,
                _ => counts.sent += n,
            }
        }
        Ok(counts)
    }

    fn platform_receipt(
        &self,
        scope: &TenantScope,
        channel: &str,
        external_id: &str,
        status: &str,
        error: Option<&str>,
    ) -> Result<(), DbError> {
        self.prepare_cached(
            "UPDATE outbox SET status = ?4, error = coalesce(?5, error), \
               updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
             WHERE tenant_id = ?1 AND channel = ?2 \
               AND EXISTS (SELECT 1 FROM json_each(outbox.external_ids) WHERE value = ?3) \
               AND CASE ?4 WHEN 'failed' THEN status IN ('queued', 'sent') \
                 WHEN 'read' THEN status IN ('queued', 'sent', 'delivered', 'failed') \
                 WHEN 'delivered' THEN status IN ('queued', 'sent', 'failed') \
                 WHEN 'sent' THEN status = 'queued' ELSE 0 END",
        )?
        .execute(params![
            scope.tenant_id(),
            channel,
            external_id,
            status,
            error
        ])?;
        Ok(())
    }

    fn last_written_at(
        &self,
        scope: &TenantScope,
        visitor_id: &str,
    ) -> Result<Option<DateTime<Utc>>, DbError> {
        let at: Option<String> = self.query_row(
            "SELECT max(m.created_at) FROM conversations c JOIN messages m ON m.conversation_id = c.id \
             WHERE c.tenant_id = ?1 AND c.visitor_id = ?2 AND m.role = 'user'",
            params![scope.tenant_id(), visitor_id],
            |r| r.get(0),
        )?;
        Ok(at.map(|t| parse_instant(&t)))
    }

    fn window_closed(&self, scope: &TenantScope, visitor_id: &str) -> Result<bool, DbError> {
        let on_whatsapp: Option<bool> = self
            .prepare_cached(
                "SELECT v.channel = 'whatsapp' AND coalesce(json_extract(a.settings, '$.template.name'), '') = '' \
                 FROM visitors v LEFT JOIN channel_accounts a ON a.tenant_id = v.tenant_id AND a.channel = v.channel \
                 WHERE v.tenant_id = ?1 AND v.id = ?2",
            )?
            .query_row(params![scope.tenant_id(), visitor_id], |r| r.get(0))
            .optional()?
            .flatten();
        if on_whatsapp != Some(true) {
            return Ok(false);
        }
        let last = self.last_written_at(scope, visitor_id)?;
        Ok(last.is_none_or(|at| Utc::now() - at > chrono::Duration::hours(24)))
    }

    fn add_link_code(
        &self,
        scope: &TenantScope,
        end_user_id: &str,
        code: &str,
        expires_at: DateTime<Utc>,
        per_hour: i64,
    ) -> Result<bool, DbError> {
        let recent: i64 = self.query_row(
            "SELECT count(*) FROM link_codes WHERE tenant_id = ?1 AND end_user_id = ?2 \
             AND created_at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 hour')",
            params![scope.tenant_id(), end_user_id],
            |r| r.get(0),
        )?;
        if recent >= per_hour {
            return Ok(false);
        }
        // Earlier codes stop working (they stay, expired, so the hourly count holds).
        self.execute(
            "UPDATE link_codes SET expires_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
             WHERE tenant_id = ?1 AND end_user_id = ?2 AND expires_at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
            params![scope.tenant_id(), end_user_id],
        )?;
        self.execute(
            "INSERT INTO link_codes (code_hash, tenant_id, end_user_id, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![secret_hash(code), scope.tenant_id(), end_user_id, instant(expires_at)],
        )?;
        Ok(true)
    }

    fn take_link_code(
        &self,
        scope: &TenantScope,
        code: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, DbError> {
        let found: Option<(String, String)> = self
            .query_row(
                "UPDATE link_codes SET expires_at = ?3 WHERE tenant_id = ?1 AND code_hash = ?2 \
                 AND expires_at > ?3 RETURNING end_user_id, expires_at",
                params![scope.tenant_id(), secret_hash(code), instant(now)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(found.map(|(user, _)| user))
    }

    fn prefer_visitor(
        &self,
        scope: &TenantScope,
        end_user_id: &str,
        visitor_id: &str,
    ) -> Result<(), DbError> {
        self.execute(
            "UPDATE end_users SET preferred_visitor_id = ?3 WHERE tenant_id = ?1 AND id = ?2 \
             AND EXISTS (SELECT 1 FROM visitors WHERE tenant_id = ?1 AND id = ?3 AND end_user_id = ?2)",
            params![scope.tenant_id(), end_user_id, visitor_id],
        )?;
        Ok(())
    }

    fn join_identity(
        &self,
        scope: &TenantScope,
        visitor_id: &str,
        end_user_id: &str,
    ) -> Result<(), DbError> {
        let tenant = scope.tenant_id();
        let previous: Option<String> = self
            .query_row(
                "SELECT end_user_id FROM visitors WHERE tenant_id = ?1 AND id = ?2",
                params![tenant, visitor_id],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        if let Some(old) = previous.as_deref().filter(|old| *old != end_user_id) {
            // What the other identity built up follows the person (an enrolment in a program
            // the person already follows stays behind and goes with the old end user).
            for table in ["goals", "nudges", "visitors"] {
                self.execute(
                    &format!("UPDATE {table} SET end_user_id = ?3 WHERE tenant_id = ?1 AND end_user_id = ?2"),
                    params![tenant, old, end_user_id],
                )?;
            }
            self.execute(
                "UPDATE OR IGNORE enrollments SET end_user_id = ?3 WHERE tenant_id = ?1 AND end_user_id = ?2",
                params![tenant, old, end_user_id],
            )?;
            self.execute(
                "UPDATE end_users SET consent = max(consent, (SELECT consent FROM end_users \
                   WHERE tenant_id = ?1 AND id = ?2)), \
                 consent_at = coalesce(consent_at, (SELECT consent_at FROM end_users WHERE tenant_id = ?1 AND id = ?2)), \
                 consent_channel = coalesce(consent_channel, (SELECT consent_channel FROM end_users WHERE tenant_id = ?1 AND id = ?2)) \
                 WHERE tenant_id = ?1 AND id = ?3",
                params![tenant, old, end_user_id],
            )?;
            self.execute(
                "DELETE FROM end_users WHERE tenant_id = ?1 AND id = ?2",
                params![tenant, old],
            )?;
        }
        self.execute(
            "UPDATE visitors SET end_user_id = ?3 WHERE tenant_id = ?1 AND id = ?2",
            params![tenant, visitor_id, end_user_id],
        )?;
        Ok(())
    }
}
