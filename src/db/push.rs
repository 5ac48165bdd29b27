//! Web Push subscriptions and the outbox rows that carry messages to them.

use rusqlite::{Connection, OptionalExtension, params};

use super::DbError;
use crate::auth::TenantScope;
use crate::chat::conversations::{Message, message_by_id};

/// The job kind that hands a message to the visitor's push subscriptions.
pub const PUSH_JOB: &str = "push_delivery";
/// The outbox channel of a push.
pub const PUSH_CHANNEL: &str = "push";

/// The outbox id of a message pushed to a browser.
pub fn push_id(message_id: &str) -> String {
    format!("push-{message_id}")
}

/// Whether a web message is one the end user did not ask for and may not be there to see:
/// a staff reply, or a nudge or program step. Answers to the person's own question are read
/// on the page that asked.
pub fn worth_a_push(message: &Message) -> bool {
    message.role == "staff"
        || (message.role == "assistant"
            && message
                .stats
                .as_ref()
                .is_some_and(|s| s.get("proactive").is_some()))
}

/// Queues a push of `message`, inside the transaction that stores it, when the conversation's
/// visitor has a subscription. The page marking the message delivered or read first (it was
/// open) leaves the push with nothing to do.
pub fn queue_push(c: &Connection, scope: &TenantScope, message: &Message) -> rusqlite::Result<()> {
    let outbox_id = push_id(&message.id);
    let queued = c
        .prepare_cached(
            "INSERT INTO outbox (id, tenant_id, message_id, conversation_id, seq, channel, status) \
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, 'queued' WHERE EXISTS ( \
               SELECT 1 FROM push_subscriptions p JOIN conversations c ON c.visitor_id = p.visitor_id \
               WHERE c.tenant_id = ?2 AND c.id = ?4 AND p.tenant_id = ?2) \
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            outbox_id,
            scope.tenant_id(),
            message.id,
            message.conversation_id,
            message.seq,
            PUSH_CHANNEL
        ])?;
    if queued == 0 {
        return Ok(());
    }
    super::jobs::queue_outbox_job(c, scope, PUSH_JOB, &outbox_id, format!("push-{outbox_id}"))
}

/// A browser's subscription, as `PushManager.subscribe` gave it.
#[derive(Debug, Clone)]
pub struct PushSubscription {
    pub id: String,
    pub endpoint: String,
    /// The browser's P-256 public key, base64url.
    pub p256dh: String,
    /// Its 16-byte auth secret, base64url.
    pub auth: String,
}

/// A queued push: the message and everywhere it goes.
#[derive(Debug, Clone)]
pub struct PushDelivery {
    pub status: String,
    pub message: Message,
    pub subscriptions: Vec<PushSubscription>,
    pub coach_name: String,
    pub coach_slug: String,
}

pub trait PushStore {
    /// Keeps the subscription for the visitor. An endpoint is one browser: subscribing it
    /// again (new keys, or another visitor on the same browser) replaces what was there.
    fn save_push_subscription(
        &self,
        scope: &TenantScope,
        visitor_id: &str,
        subscription: &PushSubscription,
    ) -> Result<(), DbError>;
    /// Removes the visitor's subscriptions; how many there were.
    fn delete_push_subscriptions(
        &self,
        scope: &TenantScope,
        visitor_id: &str,
    ) -> Result<usize, DbError>;
    fn push_subscription_count(
        &self,
        scope: &TenantScope,
        visitor_id: &str,
    ) -> Result<i64, DbError>;
    fn push_delivery(
        &self,
        scope: &TenantScope,
        outbox_id: &str,
    ) -> Result<Option<PushDelivery>, DbError>;
    /// The push service said the subscription is gone (404, 410).
    fn drop_push_subscription(&self, scope: &TenantScope, id: &str) -> Result<(), DbError>;
    /// What the push service last said when it refused (`None`: it took one).
    fn set_push_error(
        &self,
        scope: &TenantScope,
        id: &str,
        error: Option<&str>,
    ) -> Result<(), DbError>;
}

impl PushStore for Connection {
    fn save_push_subscription(
        &self,
        scope: &TenantScope,
        visitor_id: &str,
        subscription: &PushSubscription,
    ) -> Result<(), DbError> {
        self.prepare_cached(
            "INSERT INTO push_subscriptions (id, tenant_id, visitor_id, endpoint, p256dh, auth) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (tenant_id, endpoint) DO UPDATE SET visitor_id = excluded.visitor_id, \
               p256dh = excluded.p256dh, auth = excluded.auth, last_error = NULL",
        )?
        .execute(params![
            subscription.id,
            scope.tenant_id(),
            visitor_id,
            subscription.endpoint,
            subscription.p256dh,
            subscription.auth
        ])?;
        Ok(())
    }

    fn delete_push_subscriptions(
        &self,
        scope: &TenantScope,
        visitor_id: &str,
    ) -> Result<usize, DbError> {
        Ok(self
            .prepare_cached(
                "DELETE FROM push_subscriptions WHERE tenant_id = ?1 AND visitor_id = ?2",
            )?
            .execute(params![scope.tenant_id(), visitor_id])?)
    }

    fn push_subscription_count(
        &self,
        scope: &TenantScope,
        visitor_id: &str,
    ) -> Result<i64, DbError> {
        Ok(self
            .prepare_cached(
                "SELECT COUNT(*) FROM push_subscriptions WHERE tenant_id = ?1 AND visitor_id = ?2",
            )?
            .query_row(params![scope.tenant_id(), visitor_id], |r| r.get(0))?)
    }

    fn push_delivery(
        &self,
        scope: &TenantScope,
        outbox_id: &str,
    ) -> Result<Option<PushDelivery>, DbError> {
        let row = self
            .prepare_cached(
                "SELECT o.status, o.message_id, c.visitor_id, k.name, k.slug \
                 FROM outbox o JOIN conversations c ON c.id = o.conversation_id \
                 JOIN coaches k ON k.tenant_id = o.tenant_id \
                 WHERE o.tenant_id = ?1 AND o.id = ?2 AND o.channel = ?3",
            )?
            .query_row(params![scope.tenant_id(), outbox_id, PUSH_CHANNEL], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })
            .optional()?;
        let Some((status, message_id, visitor_id, coach_name, coach_slug)) = row else {
            return Ok(None);
        };
        let Some(message) = message_by_id(self, scope, &message_id)? else {
            return Ok(None);
        };
        let subscriptions = self
            .prepare_cached(
                "SELECT id, endpoint, p256dh, auth FROM push_subscriptions \
                 WHERE tenant_id = ?1 AND visitor_id = ?2 ORDER BY created_at",
            )?
            .query_map(params![scope.tenant_id(), visitor_id], |r| {
                Ok(PushSubscription {
                    id: r.get(0)?,
                    endpoint: r.get(1)?,
                    p256dh: r.get(2)?,
                    auth: r.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(Some(PushDelivery {
            status,
            message,
            subscriptions,
            coach_name,
            coach_slug,
        }))
    }

    fn drop_push_subscription(&self, scope: &TenantScope, id: &str) -> Result<(), DbError> {
        self.prepare_cached("DELETE FROM push_subscriptions WHERE tenant_id = ?1 AND id = ?2")?
            .execute(params![scope.tenant_id(), id])?;
        Ok(())
    }

    fn set_push_error(
        &self,
        scope: &TenantScope,
        id: &str,
        error: Option<&str>,
    ) -> Result<(), DbError> {
        self.prepare_cached(
            "UPDATE push_subscriptions SET last_error = ?3 WHERE tenant_id = ?1 AND id = ?2",
        )?
        .execute(params![scope.tenant_id(), id, error])?;
        Ok(())
    }
}
