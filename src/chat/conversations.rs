//! Visitors, conversations, messages and knowledge gaps in SQLite. Every function is scoped to
//! a tenant, and conversation access goes through [`Speaker`], so a visitor only ever reaches
//! its own conversations.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::ChatError;
use super::citations::Citation;
use crate::auth::tokens::{secret_hash, secret_token};
use crate::auth::{Role, TenantScope, new_id};

/// The channel of the chat page, the widget and the API.
pub const WEB_CHANNEL: &str = "web";

/// Visitor tokens start with this, so they are told from staff credentials at a glance.
pub const VISITOR_TOKEN_PREFIX: &str = "vis_";

/// Who is talking to the coach.
#[derive(Debug, Clone)]
pub enum Speaker {
    /// An end user, through the chat page, the widget or the API.
    Visitor {
        scope: TenantScope,
        visitor_id: String,
    },
    /// A member of the tenant (or an API key) trying the coach out or answering end users.
    Staff {
        scope: TenantScope,
        user_id: Option<String>,
        /// Their role now: analysts only read.
        role: Role,
    },
}

impl Speaker {
    pub fn scope(&self) -> &TenantScope {
        match self {
            Speaker::Visitor { scope, .. } | Speaker::Staff { scope, .. } => scope,
        }
    }
}

/// Registers a visitor for the coach's tenant; returns (visitor id, token shown once).
pub fn create_visitor(
    c: &Connection,
    tenant_id: &str,
    origin: Option<&str>,
    time_zone: Option<&str>,
) -> rusqlite::Result<(String, String)> {
    let id = new_id();
    let token = secret_token(VISITOR_TOKEN_PREFIX);
    c.execute(
        "INSERT INTO visitors (id, tenant_id, token_hash, origin, time_zone) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, tenant_id, secret_hash(&token), origin, time_zone],
    )?;
    Ok((id, token))
}

/// A new token for an existing visitor (the old one stops working); `None` if no such visitor.
pub fn reissue_visitor_token(
    c: &Connection,
    scope: &TenantScope,
    visitor_id: &str,
) -> rusqlite::Result<Option<String>> {
    let token = secret_token(VISITOR_TOKEN_PREFIX);
    let changed = c.execute(
        "UPDATE visitors SET token_hash = ?3 WHERE tenant_id = ?1 AND id = ?2",
        params![scope.tenant_id(), visitor_id, secret_hash(&token)],
    )?;
    Ok((changed == 1).then_some(token))
}

/// How often a visitor's last-seen time is written: every request writing it would make end
/// users contend with everything else for SQLite's single writer.
const LAST_SEEN_RESOLUTION_SECONDS: i64 = 60;

/// The visitor a token belongs to (whose coach is not suspended).
pub fn authenticate_visitor(c: &Connection, token: &str) -> Result<Speaker, ChatError> {
    let found: Option<(String, String, bool, bool)> = c
        .query_row(
            "SELECT v.id, v.tenant_id, t.suspended_at IS NOT NULL, \
                    v.last_seen_at IS NULL OR (julianday('now') - julianday(v.last_seen_at)) * 86400 > ?2 \
             FROM visitors v JOIN tenants t ON t.id = v.tenant_id WHERE v.token_hash = ?1",
            params![secret_hash(token), LAST_SEEN_RESOLUTION_SECONDS],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let (visitor_id, tenant_id, suspended, stale) = found.ok_or(ChatError::Unauthorized)?;
    if suspended {
        return Err(ChatError::Suspended);
    }
    if stale {
        c.execute(
            "UPDATE visitors SET last_seen_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1",
            [&visitor_id],
        )?;
    }
    Ok(Speaker::Visitor {
        scope: TenantScope::new(tenant_id),
        visitor_id,
    })
}

/// Whether a visitor that authenticated earlier (an open connection) may still talk.
pub fn visitor_standing(
    c: &Connection,
    scope: &TenantScope,
    visitor_id: &str,
) -> Result<(), ChatError> {
    let suspended: Option<bool> = c
        .query_row(
            "SELECT t.suspended_at IS NOT NULL FROM visitors v JOIN tenants t ON t.id = v.tenant_id \
             WHERE v.id = ?1 AND v.tenant_id = ?2",
            params![visitor_id, scope.tenant_id()],
            |r| r.get(0),
        )
        .optional()?;
    match suspended {
        None => Err(ChatError::Unauthorized),
        Some(true) => Err(ChatError::Suspended),
        Some(false) => Ok(()),
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Conversation {
    pub id: String,
    /// `visitor` or `staff` (a test conversation).
    pub started_by: String,
    /// The end user's id (their profile: `GET /api/v1/inbox?visitor=...`); null for tests.
    pub visitor_id: Option<String>,
    /// `ai` (the coach answers) or `human` (a person of the team took it over).
    pub mode: String,
    /// The person who took it over.
    pub assigned_user_id: Option<String>,
    pub assigned_name: Option<String>,
    /// When the end user asked for a person (cleared when someone takes over).
    pub handoff_requested_at: Option<String>,
    /// The sequence number of the newest message.
    pub last_seq: i64,
    /// Receipts: the newest message each side has received and read.
    pub visitor_delivered_seq: i64,
    pub visitor_read_seq: i64,
    pub staff_delivered_seq: i64,
    pub staff_read_seq: i64,
    pub created_at: String,
    pub updated_at: String,
    /// Where it takes place: `web` or `telegram` (staff replies go out there).
    pub channel: String,
}

impl Conversation {
    pub fn is_human(&self) -> bool {
        self.mode == MODE_HUMAN
    }
}

pub const MODE_AI: &str = "ai";
pub const MODE_HUMAN: &str = "human";

const CONVERSATION_COLUMNS: &str = "c.id, CASE WHEN c.visitor_id IS NULL THEN 'staff' ELSE 'visitor' END, \
     c.mode, c.assigned_user_id, (SELECT full_name FROM users u WHERE u.id = c.assigned_user_id), \
     c.handoff_requested_at, c.last_seq, c.visitor_delivered_seq, c.visitor_read_seq, \
     c.staff_delivered_seq, c.staff_read_seq, c.created_at, c.updated_at, c.visitor_id, c.user_id, \
     c.channel";

fn conversation(r: &rusqlite::Row<'_>) -> rusqlite::Result<Conversation> {
    Ok(Conversation {
        id: r.get(0)?,
        started_by: r.get(1)?,
        mode: r.get(2)?,
        assigned_user_id: r.get(3)?,
        assigned_name: r.get(4)?,
        handoff_requested_at: r.get(5)?,
        last_seq: r.get(6)?,
        visitor_delivered_seq: r.get(7)?,
        visitor_read_seq: r.get(8)?,
        staff_delivered_seq: r.get(9)?,
        staff_read_seq: r.get(10)?,
        created_at: r.get(11)?,
        updated_at: r.get(12)?,
        visitor_id: r.get(13)?,
        channel: r.get(15)?,
    })
}

pub fn create(c: &Connection, speaker: &Speaker) -> rusqlite::Result<Conversation> {
    let id = new_id();
    let (visitor, user) = match speaker {
        Speaker::Visitor { visitor_id, .. } => (Some(visitor_id.as_str()), None),
        Speaker::Staff { user_id, .. } => (None, user_id.as_deref()),
    };
    // A conversation is on its visitor's channel for good: replies go out where it came in.
    c.execute(
        "INSERT INTO conversations (id, tenant_id, visitor_id, user_id, channel) VALUES \
         (?1, ?2, ?3, ?4, COALESCE((SELECT channel FROM visitors WHERE id = ?3), 'web'))",
        params![id, speaker.scope().tenant_id(), visitor, user],
    )?;
    get(c, speaker.scope(), &id).map(|found| found.expect("just inserted"))
}

/// The tenant's conversation, without access checks (the caller has made them).
pub fn get(
    c: &Connection,
    scope: &TenantScope,
    id: &str,
) -> rusqlite::Result<Option<Conversation>> {
    c.query_row(
        &format!("SELECT {CONVERSATION_COLUMNS} FROM conversations c WHERE c.tenant_id = ?1 AND c.id = ?2"),
        params![scope.tenant_id(), id],
        conversation,
    )
    .optional()
}

/// What a speaker may do with a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    /// Typing, receipts, asking for a person: visitors in their own conversations, staff with
    /// the coach role or above in any of the tenant's.
    Act,
    Write,
}

/// Finds the conversation if the speaker may use it: visitors their own; staff read any of the
/// tenant's, and write in their own test conversations and in visitors' conversations they
/// took over. Others are "not found" (404), except staff writing where they may only read,
/// which is forbidden.
pub fn open(
    c: &Connection,
    speaker: &Speaker,
    id: &str,
    access: Access,
) -> Result<Conversation, ChatError> {
    // Before the lookup: a refusal by role tells nothing about which conversations exist.
    if let Speaker::Staff { role, .. } = speaker
        && access != Access::Read
        && *role < Role::Coach
    {
        return Err(ChatError::Forbidden(
            "the analyst role reads conversations; it cannot act in them",
        ));
    }
    let row: Option<(Conversation, Option<String>, Option<String>)> = c
        .query_row(
            &format!(
                "SELECT {CONVERSATION_COLUMNS} FROM conversations c \
                 WHERE c.tenant_id = ?1 AND c.id = ?2"
            ),
            params![speaker.scope().tenant_id(), id],
            |r| Ok((conversation(r)?, r.get(13)?, r.get(14)?)),
        )
        .optional()?;
    let (conversation, visitor, user) = row.ok_or(ChatError::NotFound("no such conversation"))?;
    match speaker {
        Speaker::Visitor { visitor_id, .. } if visitor.as_deref() != Some(visitor_id) => {
            Err(ChatError::NotFound("no such conversation"))
        }
        Speaker::Staff { user_id, .. } if access == Access::Write => {
            let own_test = visitor.is_none() && user == *user_id;
            let taken_over = visitor.is_some()
                && conversation.is_human()
                && user_id.is_some()
                && conversation.assigned_user_id == *user_id;
            if own_test || taken_over {
                Ok(conversation)
            } else if visitor.is_some() {
                Err(ChatError::Forbidden(
                    "take the conversation over before replying in it",
                ))
            } else {
                Err(ChatError::Forbidden(
                    "staff can write only in their own test conversations",
                ))
            }
        }
        _ => Ok(conversation),
    }
}

/// The end user's newest conversation, if any.
pub fn latest_of_visitor(
    c: &Connection,
    scope: &TenantScope,
    visitor_id: &str,
) -> rusqlite::Result<Option<String>> {
    c.query_row(
        // `+tenant_id`: look up by the visitor's index; the tenant's index, ordered by time,
        // would walk every conversation of the tenant.
        "SELECT id FROM conversations WHERE +tenant_id = ?1 AND visitor_id = ?2 \
         ORDER BY updated_at DESC, rowid DESC LIMIT 1",
        params![scope.tenant_id(), visitor_id],
        |r| r.get(0),
    )
    .optional()
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Message {
    pub id: String,
    pub conversation_id: String,
    /// 1, 2, 3... within the conversation: a client that reconnects asks for what follows the
    /// last one it saw.
    pub seq: i64,
    /// `user` (the end user), `assistant` (the AI coach), `staff` (a person of the team) or
    /// `event` (someone joined or left, a person was asked for).
    pub role: String,
    pub content: String,
    /// The id the sending client gave the message, if any.
    pub client_id: Option<String>,
    /// Staff messages: the person's name.
    pub author_name: Option<String>,
    pub citations: Vec<Citation>,
    /// Assistant messages: how well retrieval and the passages support the answer, 0 to 1.
    pub confidence: Option<f64>,
    /// Assistant messages: true when the coach said it does not know.
    pub fallback: bool,
    pub created_at: String,
    /// Assistant messages: retrieval score, support, timings, token counts and the model's
    /// raw answer before its citations were aligned. Events: what happened (`event`).
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<serde_json::Value>,
    /// A proactive message's answers to pick from (a program's choice step); a reply with one
    /// of them takes its branch. End users see these, unlike `stats`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quick_replies: Vec<String>,
    /// A proactive message that asks for a number (a check-in): the reply is the value.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub asks_value: bool,
    /// The unit of the number it asks for (`reps`, `km`), when the goal has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_unit: Option<String>,
    /// Where the conversation takes place: `web` (chat page, widget, API) or `telegram`.
    pub channel: String,
}

impl Message {
    /// What the coaching engine recorded about a proactive message's expected reply (in
    /// `stats`), as fields every reader sees.
    fn with_prompts(mut self) -> Message {
        if let Some(stats) = self.stats.as_ref().filter(|s| s.get("proactive").is_some()) {
            self.quick_replies = stats["choices"]
                .as_array()
                .map(|choices| {
                    choices
                        .iter()
                        .filter_map(|c| c.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            self.asks_value = stats["asks_value"].as_bool().unwrap_or(false);
            self.value_unit = stats["value_unit"].as_str().map(str::to_string);
        }
        self
    }

    /// An assistant message that is returned without being stored (an API completion): no
    /// conversation, no sequence number, made now.
    pub fn unsaved() -> Message {
        Message {
            id: String::new(),
            conversation_id: String::new(),
            seq: 0,
            role: String::new(),
            content: String::new(),
            client_id: None,
            author_name: None,
            citations: Vec::new(),
            confidence: None,
            fallback: false,
            created_at: chrono::Utc::now()
                .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string(),
            stats: None,
            quick_replies: Vec::new(),
            asks_value: false,
            value_unit: None,
            channel: String::new(),
        }
    }

    /// The message without how it was made (for end users and channels).
    pub fn without_stats(mut self) -> Message {
        self.stats = None;
        self
    }

    /// What `speaker` may see of this message: end users never see `stats` (the passages
    /// retrieval found, the model's raw answer, timings), whatever the answer became.
    pub fn seen_by(self, speaker: &Speaker) -> Message {
        match speaker {
            Speaker::Visitor { .. } => self.without_stats(),
            Speaker::Staff { .. } => self,
        }
    }
}

const MESSAGE_COLUMNS: &str = "id, conversation_id, seq, role, content, client_id, author_name, \
                               citations, confidence, fallback, created_at, stats, channel";

fn message(r: &rusqlite::Row<'_>) -> rusqlite::Result<Message> {
    Ok(Message {
        id: r.get(0)?,
        conversation_id: r.get(1)?,
        seq: r.get(2)?,
        role: r.get(3)?,
        content: r.get(4)?,
        client_id: r.get(5)?,
        author_name: r.get(6)?,
        citations: serde_json::from_str(&r.get::<_, String>(7)?).unwrap_or_default(),
        confidence: r.get(8)?,
        fallback: r.get(9)?,
        created_at: r.get(10)?,
        quick_replies: Vec::new(),
        asks_value: false,
        value_unit: None,
        stats: r
            .get::<_, Option<String>>(11)?
            .and_then(|s| serde_json::from_str(&s).ok()),
        channel: r.get(12)?,
    }
    .with_prompts())
}

/// One of the tenant's messages (the caller has checked access).
pub fn message_by_id(
    c: &Connection,
    scope: &TenantScope,
    id: &str,
) -> rusqlite::Result<Option<Message>> {
    c.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE tenant_id = ?1 AND id = ?2"
    ))?
    .query_row(params![scope.tenant_id(), id], message)
    .optional()
}

/// The conversation's messages, oldest first (the caller has checked access).
pub fn messages(
    c: &Connection,
    scope: &TenantScope,
    conversation_id: &str,
) -> rusqlite::Result<Vec<Message>> {
    messages_after(c, scope, conversation_id, 0, u32::MAX)
}

/// Messages numbered after `after_seq`, oldest first, at most `limit`: what a reconnecting
/// client missed.
pub fn messages_after(
    c: &Connection,
    scope: &TenantScope,
    conversation_id: &str,
    after_seq: i64,
    limit: u32,
) -> rusqlite::Result<Vec<Message>> {
    let mut statement = c.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE tenant_id = ?1 AND conversation_id = ?2 \
         AND seq > ?3 ORDER BY seq LIMIT ?4"
    ))?;
    statement
        .query_map(
            params![scope.tenant_id(), conversation_id, after_seq, limit],
            message,
        )?
        .collect()
}

/// The conversation's last `count` messages, oldest first: what a prompt can hold.
pub fn recent_messages(
    c: &Connection,
    scope: &TenantScope,
    conversation_id: &str,
    count: u32,
) -> rusqlite::Result<Vec<Message>> {
    recent_messages_before(c, scope, conversation_id, i64::MAX, count)
}

/// The last `count` messages numbered before `before_seq`, oldest first.
pub fn recent_messages_before(
    c: &Connection,
    scope: &TenantScope,
    conversation_id: &str,
    before_seq: i64,
    count: u32,
) -> rusqlite::Result<Vec<Message>> {
    let mut statement = c.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE tenant_id = ?1 AND conversation_id = ?2 \
         AND seq < ?4 ORDER BY seq DESC LIMIT ?3"
    ))?;
    let mut messages = statement
        .query_map(
            params![scope.tenant_id(), conversation_id, count, before_seq],
            message,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    messages.reverse();
    Ok(messages)
}

/// Whether the coach's answer to message `seq` is stored.
pub fn is_answered(
    c: &Connection,
    scope: &TenantScope,
    conversation_id: &str,
    seq: i64,
) -> rusqlite::Result<bool> {
    Ok(answer_to(c, scope, conversation_id, seq)?.is_some())
}

/// The coach's stored answer to message `seq`, if any.
pub fn answer_to(
    c: &Connection,
    scope: &TenantScope,
    conversation_id: &str,
    seq: i64,
) -> rusqlite::Result<Option<Message>> {
    c.query_row(
        &format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE tenant_id = ?1 AND conversation_id = ?2 \
             AND role = 'assistant' AND seq > ?3 AND json_extract(stats, '$.reply_to') = ?3 \
             ORDER BY seq LIMIT 1"
        ),
        params![scope.tenant_id(), conversation_id, seq],
        message,
    )
    .optional()
}

/// Whether message `seq` still waits for the coach: nothing after it answers it, and nothing
/// after it dealt with it otherwise (a coaching reply, a person asked for, staff joining).
/// Later questions and the answers to them do not count.
pub fn awaits_answer(
    c: &Connection,
    scope: &TenantScope,
    conversation_id: &str,
    seq: i64,
) -> rusqlite::Result<bool> {
    c.query_row(
        "SELECT NOT EXISTS (SELECT 1 FROM messages WHERE tenant_id = ?1 AND conversation_id = ?2 \
         AND seq > ?3 AND role <> 'user' AND (role <> 'assistant' \
         OR json_extract(stats, '$.reply_to') IS NULL OR json_extract(stats, '$.reply_to') = ?3))",
        params![scope.tenant_id(), conversation_id, seq],
        |r| r.get(0),
    )
}

/// A message to store.
#[derive(Default)]
pub struct NewMessage<'a> {
    pub role: &'a str,
    pub content: &'a str,
    pub citations: &'a [Citation],
    pub confidence: Option<f64>,
    pub fallback: bool,
    pub stats: Option<serde_json::Value>,
    /// The sender's id for the message: a second message with the same id is not stored again.
    pub client_id: Option<&'a str>,
    /// Staff messages: (user id, name).
    pub author: Option<(&'a str, &'a str)>,
}

/// A stored message, and whether it was already there (same `client_id`).
pub struct Stored {
    pub message: Message,
    pub duplicate: bool,
}

/// Numbers and stores a message in one transaction, so sequence numbers are committed in order.
pub fn add_message(
    c: &Connection,
    scope: &TenantScope,
    conversation_id: &str,
    new: &NewMessage<'_>,
) -> rusqlite::Result<Stored> {
    crate::db::atomically(c, |tx| {
        if let Some(client_id) = new.client_id {
            let existing = tx
                .query_row(
                    &format!(
                        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE tenant_id = ?1 \
                     AND conversation_id = ?2 AND client_id = ?3"
                    ),
                    params![scope.tenant_id(), conversation_id, client_id],
                    message,
                )
                .optional()?;
            if let Some(message) = existing {
                return Ok(Stored {
                    message,
                    duplicate: true,
                });
            }
        }
        let (seq, channel): (i64, String) = tx.query_row(
            "UPDATE conversations SET last_seq = last_seq + 1, \
         updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
         WHERE tenant_id = ?1 AND id = ?2 RETURNING last_seq, channel",
            params![scope.tenant_id(), conversation_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let message = tx.query_row(
        &format!(
            "INSERT INTO messages (id, conversation_id, tenant_id, seq, role, content, citations, \
             confidence, fallback, stats, client_id, author_id, author_name, channel) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) \
             RETURNING {MESSAGE_COLUMNS}"
        ),
        params![
            new_id(),
            conversation_id,
            scope.tenant_id(),
            seq,
            new.role,
            new.content,
            serde_json::to_string(new.citations).expect("citations serialise"),
            new.confidence,
            new.fallback,
            new.stats.as_ref().map(|s| s.to_string()),
            new.client_id,
            new.author.map(|(id, _)| id),
            new.author.map(|(_, name)| name),
            channel,
        ],
        message,
    )?;
        // What the end user is to read goes out to their messaging app in the same
        // transaction, so a crash after it loses nothing (the web needs no delivery: the
        // stored message is what the page shows).
        if channel != WEB_CHANNEL && message.role != "user" {
            crate::db::channels::queue_delivery(tx, scope, &message)?;
        } else if channel == WEB_CHANNEL && crate::db::push::worth_a_push(&message) {
            // A closed page learns of it by Web Push, when the visitor subscribed.
            crate::db::push::queue_push(tx, scope, &message)?;
        }
        Ok(Stored {
            message,
            duplicate: false,
        })
    })
}

/// Messages the coach sends first (nudges), stored inside the coaching engine's transactions.
pub trait ProactiveStore {
    /// Stores the message in the visitor's latest conversation, opening one when they have
    /// none. Once per `client_id`, like every message.
    fn add_proactive(
        &self,
        scope: &TenantScope,
        visitor_id: &str,
        new: &NewMessage<'_>,
    ) -> Result<Message, crate::db::DbError>;
}

impl ProactiveStore for Connection {
    fn add_proactive(
        &self,
        scope: &TenantScope,
        visitor_id: &str,
        new: &NewMessage<'_>,
    ) -> Result<Message, crate::db::DbError> {
        let id = match latest_of_visitor(self, scope, visitor_id)? {
            Some(id) => id,
            None => {
                let speaker = Speaker::Visitor {
                    scope: scope.clone(),
                    visitor_id: visitor_id.to_string(),
                };
                create(self, &speaker)?.id
            }
        };
        Ok(add_message(self, scope, &id, new)?.message)
    }
}

/// Hands the conversation to a person (`Some(user)`) or back to the coach (`None`). A takeover
/// answers the end user's request for a person, so the request is cleared.
pub fn set_mode(
    c: &Connection,
    scope: &TenantScope,
    conversation_id: &str,
    assigned: Option<&str>,
) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE conversations SET mode = ?3, assigned_user_id = ?4, \
         handoff_requested_at = CASE WHEN ?4 IS NULL THEN handoff_requested_at ELSE NULL END \
         WHERE tenant_id = ?1 AND id = ?2",
        params![
            scope.tenant_id(),
            conversation_id,
            if assigned.is_some() {
                MODE_HUMAN
            } else {
                MODE_AI
            },
            assigned
        ],
    )?;
    Ok(())
}

/// Records that the end user asked for a person; false when a request was already open.
pub fn request_handoff(
    c: &Connection,
    scope: &TenantScope,
    conversation_id: &str,
) -> rusqlite::Result<bool> {
    Ok(c.execute(
        "UPDATE conversations SET handoff_requested_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
         WHERE tenant_id = ?1 AND id = ?2 AND handoff_requested_at IS NULL AND mode = 'ai'",
        params![scope.tenant_id(), conversation_id],
    )? == 1)
}

/// Which side of a conversation a receipt comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Visitor,
    Staff,
}

/// `delivered` (the client has it) or `read` (it was shown to the person).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReceiptStatus {
    Delivered,
    Read,
}

/// Moves a receipt forward (never back, never past the newest message); returns the new value.
/// Reading implies delivery.
pub fn record_receipt(
    c: &Connection,
    scope: &TenantScope,
    conversation_id: &str,
    side: Side,
    status: ReceiptStatus,
    seq: i64,
) -> rusqlite::Result<i64> {
    let (delivered, read) = match side {
        Side::Visitor => ("visitor_delivered_seq", "visitor_read_seq"),
        Side::Staff => ("staff_delivered_seq", "staff_read_seq"),
    };
    let sql = match status {
        ReceiptStatus::Delivered => format!(
            "UPDATE conversations SET {delivered} = MAX({delivered}, MIN(?3, last_seq)) \
             WHERE tenant_id = ?1 AND id = ?2 RETURNING {delivered}"
        ),
        ReceiptStatus::Read => format!(
            "UPDATE conversations SET {read} = MAX({read}, MIN(?3, last_seq)), \
             {delivered} = MAX({delivered}, MIN(?3, last_seq)) \
             WHERE tenant_id = ?1 AND id = ?2 RETURNING {read}"
        ),
    };
    c.query_row(
        &sql,
        params![scope.tenant_id(), conversation_id, seq],
        |r| r.get(0),
    )
}

/// The display name of a member of the team.
pub fn staff_name(c: &Connection, user_id: &str) -> rusqlite::Result<String> {
    Ok(c.query_row(
        "SELECT full_name FROM users WHERE id = ?1",
        params![user_id],
        |r| r.get::<_, String>(0),
    )
    .optional()?
    .filter(|name| !name.trim().is_empty())
    .unwrap_or_else(|| "Someone from the team".to_string()))
}

/// A conversation as the staff inbox lists it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InboxItem {
    pub conversation: Conversation,
    /// The newest message that is not an event.
    pub last_message: Option<InboxPreview>,
    /// End-user messages after the staff's read receipt.
    pub unread: i64,
    /// Whether the end user is connected right now.
    pub visitor_online: bool,
    pub visitor_id: String,
    /// The person behind the visitor (the same on every channel they linked), once the
    /// coaching engine knows them.
    pub end_user_id: Option<String>,
    pub end_user_name: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InboxPreview {
    pub role: String,
    /// The first 200 characters.
    pub content: String,
    pub created_at: String,
}

/// Which conversations the inbox shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InboxFilter {
    /// Every end-user conversation.
    #[default]
    All,
    /// The end user asked for a person and nobody has taken over yet.
    NeedsHuman,
    /// Taken over by a person.
    Human,
    /// The coach answers.
    Ai,
    /// The coach fell back, or answered with a confidence under 0.5, at least once.
    LowConfidence,
}

/// Which end-user conversations to list.
#[derive(Debug, Clone, Default)]
pub struct InboxQuery {
    pub filter: InboxFilter,
    /// Only this end user's conversations (their profile), on every channel they linked.
    pub visitor_id: Option<String>,
    /// Only conversations active on or after this day (`YYYY-MM-DD`).
    pub since: Option<String>,
    pub limit: u32,
    pub offset: u32,
}

/// End users' conversations: those waiting for a person first, then the most recently active.
pub fn inbox(
    c: &Connection,
    scope: &TenantScope,
    query: &InboxQuery,
) -> rusqlite::Result<Vec<InboxItem>> {
    let condition = match query.filter {
        InboxFilter::All => "",
        InboxFilter::NeedsHuman => " AND c.handoff_requested_at IS NOT NULL AND c.mode = 'ai'",
        InboxFilter::Human => " AND c.mode = 'human'",
        InboxFilter::Ai => " AND c.mode = 'ai'",
        InboxFilter::LowConfidence => {
            " AND EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = c.id \
               AND m.role = 'assistant' AND (m.fallback = 1 OR m.confidence < 0.5))"
        }
    };
    let mut statement = c.prepare_cached(&format!(
        "SELECT {CONVERSATION_COLUMNS}, \
           (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id AND m.role = 'user' \
              AND m.seq > c.staff_read_seq), \
           (SELECT json_array(m.role, substr(m.content, 1, 200), m.created_at) FROM messages m \
              WHERE m.conversation_id = c.id AND m.role != 'event' ORDER BY m.seq DESC LIMIT 1), \
           e.id, e.name \
         FROM conversations c LEFT JOIN visitors v ON v.id = c.visitor_id \
           LEFT JOIN end_users e ON e.id = v.end_user_id \
         WHERE c.tenant_id = ?1 AND c.visitor_id IS NOT NULL{condition} \
           AND (?4 IS NULL OR c.visitor_id IN (SELECT other.id FROM visitors one \
                JOIN visitors other ON other.tenant_id = one.tenant_id \
                  AND (other.id = one.id OR other.end_user_id = one.end_user_id) \
                WHERE one.tenant_id = ?1 AND one.id = ?4)) \
           AND (?5 IS NULL OR c.updated_at >= ?5) \
         ORDER BY (c.handoff_requested_at IS NOT NULL AND c.mode = 'ai') DESC, c.updated_at DESC \
         LIMIT ?2 OFFSET ?3"
    ))?;
    statement
        .query_map(
            params![
                scope.tenant_id(),
                query.limit.clamp(1, 200),
                query.offset,
                query.visitor_id,
                query.since
            ],
            |r| {
                let visitor_id: String = r.get(13)?;
                let preview = r
                    .get::<_, Option<String>>(17)?
                    .and_then(|json| serde_json::from_str::<(String, String, String)>(&json).ok())
                    .map(|(role, content, created_at)| InboxPreview {
                        role,
                        content,
                        created_at,
                    });
                Ok(InboxItem {
                    conversation: conversation(r)?,
                    last_message: preview,
                    unread: r.get(16)?,
                    visitor_online: false,
                    visitor_id,
                    end_user_id: r.get(18)?,
                    end_user_name: r.get::<_, Option<String>>(19)?.filter(|n| !n.is_empty()),
                })
            },
        )?
        .collect()
}
