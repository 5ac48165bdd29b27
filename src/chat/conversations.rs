//! Visitors, conversations, messages and knowledge gaps in SQLite. Every function is scoped to
//! a tenant, and conversation access goes through [`Speaker`], so a visitor only ever reaches
//! its own conversations.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::ChatError;
use super::citations::Citation;
use crate::auth::tokens::{secret_hash, secret_token};
use crate::auth::{TenantScope, new_id};

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
    /// A member of the tenant trying the coach out.
    Staff {
        scope: TenantScope,
        user_id: Option<String>,
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
) -> rusqlite::Result<(String, String)> {
    let id = new_id();
    let token = secret_token(VISITOR_TOKEN_PREFIX);
    c.execute(
        "INSERT INTO visitors (id, tenant_id, token_hash, origin) VALUES (?1, ?2, ?3, ?4)",
        params![id, tenant_id, secret_hash(&token), origin],
    )?;
    Ok((id, token))
}

/// The visitor a token belongs to.
pub fn authenticate_visitor(c: &Connection, token: &str) -> Result<Speaker, ChatError> {
    let found: Option<(String, String)> = c
        .query_row(
            "UPDATE visitors SET last_seen_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
             WHERE token_hash = ?1 RETURNING id, tenant_id",
            params![secret_hash(token)],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (visitor_id, tenant_id) = found.ok_or(ChatError::Unauthorized)?;
    Ok(Speaker::Visitor {
        scope: TenantScope::new(tenant_id),
        visitor_id,
    })
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Conversation {
    pub id: String,
    /// `visitor` or `staff` (a test conversation).
    pub started_by: String,
    pub created_at: String,
    pub updated_at: String,
}

pub fn create(c: &Connection, speaker: &Speaker) -> rusqlite::Result<Conversation> {
    let id = new_id();
    let (visitor, user) = match speaker {
        Speaker::Visitor { visitor_id, .. } => (Some(visitor_id.as_str()), None),
        Speaker::Staff { user_id, .. } => (None, user_id.as_deref()),
    };
    c.query_row(
        "INSERT INTO conversations (id, tenant_id, visitor_id, user_id) VALUES (?1, ?2, ?3, ?4) \
         RETURNING id, CASE WHEN visitor_id IS NULL THEN 'staff' ELSE 'visitor' END, created_at, updated_at",
        params![id, speaker.scope().tenant_id(), visitor, user],
        conversation,
    )
}

fn conversation(r: &rusqlite::Row<'_>) -> rusqlite::Result<Conversation> {
    Ok(Conversation {
        id: r.get(0)?,
        started_by: r.get(1)?,
        created_at: r.get(2)?,
        updated_at: r.get(3)?,
    })
}

/// What a speaker may do with a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// Finds the conversation if the speaker may use it: visitors their own; staff read any of the
/// tenant's and write only their own test conversations. Others are "not found" (404), except
/// staff writing into a visitor's conversation, which is forbidden.
pub fn open(
    c: &Connection,
    speaker: &Speaker,
    id: &str,
    access: Access,
) -> Result<Conversation, ChatError> {
    let row: Option<(Conversation, Option<String>, Option<String>)> = c
        .query_row(
            "SELECT id, CASE WHEN visitor_id IS NULL THEN 'staff' ELSE 'visitor' END, created_at, \
             updated_at, visitor_id, user_id FROM conversations WHERE tenant_id = ?1 AND id = ?2",
            params![speaker.scope().tenant_id(), id],
            |r| Ok((conversation(r)?, r.get(4)?, r.get(5)?)),
        )
        .optional()?;
    let (conversation, visitor, user) = row.ok_or(ChatError::NotFound("no such conversation"))?;
    match speaker {
        Speaker::Visitor { visitor_id, .. } if visitor.as_deref() != Some(visitor_id) => {
            Err(ChatError::NotFound("no such conversation"))
        }
        Speaker::Staff { user_id, .. }
            if access == Access::Write && (visitor.is_some() || user != *user_id) =>
        {
            Err(ChatError::Forbidden(
                "staff can write only in their own test conversations",
            ))
        }
        _ => Ok(conversation),
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Message {
    pub id: String,
    pub conversation_id: String,
    /// `user` or `assistant`.
    pub role: String,
    pub content: String,
    pub citations: Vec<Citation>,
    /// Assistant messages: how well retrieval and the passages support the answer, 0 to 1.
    pub confidence: Option<f64>,
    /// Assistant messages: true when the coach said it does not know.
    pub fallback: bool,
    pub created_at: String,
    /// Assistant messages: retrieval score, support, timings, token counts and the model's
    /// raw answer before its citations were aligned.
    #[schema(value_type = Option<Object>)]
    pub stats: Option<serde_json::Value>,
}

const MESSAGE_COLUMNS: &str =
    "id, conversation_id, role, content, citations, confidence, fallback, created_at, stats";

fn message(r: &rusqlite::Row<'_>) -> rusqlite::Result<Message> {
    Ok(Message {
        id: r.get(0)?,
        conversation_id: r.get(1)?,
        role: r.get(2)?,
        content: r.get(3)?,
        citations: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or_default(),
        confidence: r.get(5)?,
        fallback: r.get(6)?,
        created_at: r.get(7)?,
        stats: r
            .get::<_, Option<String>>(8)?
            .and_then(|s| serde_json::from_str(&s).ok()),
    })
}

/// The conversation's messages, oldest first (the caller has checked access).
pub fn messages(
    c: &Connection,
    scope: &TenantScope,
    conversation_id: &str,
) -> rusqlite::Result<Vec<Message>> {
    let mut statement = c.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE tenant_id = ?1 AND conversation_id = ?2 \
         ORDER BY rowid"
    ))?;
    statement
        .query_map(params![scope.tenant_id(), conversation_id], message)?
        .collect()
}

/// The conversation's last `count` messages, oldest first: what a prompt can hold.
pub fn recent_messages(
    c: &Connection,
    scope: &TenantScope,
    conversation_id: &str,
    count: u32,
) -> rusqlite::Result<Vec<Message>> {
    let mut statement = c.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE tenant_id = ?1 AND conversation_id = ?2 \
         ORDER BY rowid DESC LIMIT ?3"
    ))?;
    let mut messages = statement
        .query_map(params![scope.tenant_id(), conversation_id, count], message)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    messages.reverse();
    Ok(messages)
}

/// A message to store.
pub struct NewMessage<'a> {
    pub role: &'a str,
    pub content: &'a str,
    pub citations: &'a [Citation],
    pub confidence: Option<f64>,
    pub fallback: bool,
    pub stats: Option<serde_json::Value>,
}

pub fn add_message(
    c: &Connection,
    scope: &TenantScope,
    conversation_id: &str,
    new: &NewMessage<'_>,
) -> rusqlite::Result<Message> {
    c.execute(
        "UPDATE conversations SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
         WHERE tenant_id = ?1 AND id = ?2",
        params![scope.tenant_id(), conversation_id],
    )?;
    c.query_row(
        &format!(
            "INSERT INTO messages (id, conversation_id, tenant_id, role, content, citations, \
             confidence, fallback, stats) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
             RETURNING {MESSAGE_COLUMNS}"
        ),
        params![
            new_id(),
            conversation_id,
            scope.tenant_id(),
            new.role,
            new.content,
            serde_json::to_string(new.citations).expect("citations serialise"),
            new.confidence,
            new.fallback,
            new.stats.as_ref().map(|s| s.to_string()),
        ],
        message,
    )
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KnowledgeGap {
    pub id: String,
    /// The question, with personal data masked.
    pub question: String,
    /// The best retrieval score it got (0 to 1).
    pub best_score: f64,
    pub conversation_id: Option<String>,
    pub created_at: String,
}

pub fn record_gap(
    c: &Connection,
    scope: &TenantScope,
    conversation_id: &str,
    message_id: &str,
    question: &str,
    best_score: f64,
) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO knowledge_gaps (id, tenant_id, conversation_id, message_id, question, best_score) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![new_id(), scope.tenant_id(), conversation_id, message_id, question, best_score],
    )?;
    Ok(())
}

pub fn gaps(
    c: &Connection,
    scope: &TenantScope,
    limit: u32,
) -> rusqlite::Result<Vec<KnowledgeGap>> {
    let mut statement = c.prepare_cached(
        "SELECT id, question, best_score, conversation_id, created_at FROM knowledge_gaps \
         WHERE tenant_id = ?1 ORDER BY created_at DESC, rowid DESC LIMIT ?2",
    )?;
    statement
        .query_map(params![scope.tenant_id(), limit.clamp(1, 500)], |r| {
            Ok(KnowledgeGap {
                id: r.get(0)?,
                question: r.get(1)?,
                best_score: r.get(2)?,
                conversation_id: r.get(3)?,
                created_at: r.get(4)?,
            })
        })?
        .collect()
}
