//! The live chat protocol's messages, version [`PROTOCOL_VERSION`] (docs/websocket-protocol.md).
//! The same server events travel over a WebSocket and over the Server-Sent Events fallback.

use serde::{Deserialize, Serialize};

use super::conversations::{Conversation, Message, ReceiptStatus, Side};

/// Bumped when a change could break an existing client.
pub const PROTOCOL_VERSION: u32 = 1;

/// What a client sends (WebSocket text frames, one JSON object each).
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientCommand {
    /// First frame of a connection: a visitor token (`vis_...`), an access token or API key.
    Hello {
        token: String,
        #[serde(default)]
        protocol: Option<u32>,
    },
    /// Follow a conversation and receive the messages numbered after `after_seq` (0: all).
    /// Visitors may omit the id to continue their newest conversation or start one.
    Open {
        #[serde(default)]
        conversation_id: Option<String>,
        #[serde(default)]
        after_seq: i64,
        /// Visitors: start a new conversation even if one exists.
        #[serde(default)]
        new: bool,
    },
    Send {
        conversation_id: String,
        /// Chosen by the client, unique per conversation: a message resent with the same id
        /// (after a dropped connection) is stored and answered once.
        client_id: String,
        content: String,
    },
    Typing {
        conversation_id: String,
        active: bool,
    },
    Receipt {
        conversation_id: String,
        seq: i64,
        status: ReceiptStatus,
    },
    /// The end user asks for a person.
    RequestHuman {
        conversation_id: String,
    },
    /// Staff: take the conversation over (the coach stops answering).
    Takeover {
        conversation_id: String,
    },
    /// Staff: give the conversation back to the coach.
    Handback {
        conversation_id: String,
    },
    Ping,
}

/// What the server sends.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerEvent {
    Welcome {
        protocol: u32,
        /// `visitor` or `staff`.
        role: String,
        visitor_id: Option<String>,
        user_id: Option<String>,
        /// The server pings this often; a connection silent for `idle_timeout_s` is closed.
        heartbeat_s: u64,
        idle_timeout_s: u64,
        max_message_chars: usize,
        messages_per_minute: u32,
    },
    /// To end users: whether a person of the team is online.
    Presence {
        staff_online: bool,
    },
    /// To staff: an end user connected or left.
    VisitorPresence {
        visitor_id: String,
        online: bool,
    },
    /// The conversation now followed; its missed messages follow as `message` events.
    Opened {
        conversation: Conversation,
    },
    Message {
        message: Message,
    },
    /// The server stored the client's message.
    Ack {
        client_id: String,
        conversation_id: String,
        message_id: String,
        seq: i64,
        /// The message had been received before (a resend).
        duplicate: bool,
    },
    /// The `index`-th piece (0, 1, 2...) of the coach's answer to message `reply_to`. A client
    /// that missed a piece waits for the `message` event that follows, which is authoritative.
    Delta {
        conversation_id: String,
        reply_to: i64,
        index: usize,
        text: String,
    },
    Typing {
        conversation_id: String,
        /// `visitor`, `staff` or `coach` (the AI is writing).
        from: String,
        name: Option<String>,
        active: bool,
    },
    Receipt {
        conversation_id: String,
        by: Side,
        status: ReceiptStatus,
        seq: i64,
    },
    /// The conversation's state changed (taken over, handed back, a person requested).
    Conversation {
        conversation: Conversation,
    },
    Error {
        code: String,
        message: String,
        /// The `client_id` of the command it answers, when it had one.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_s: Option<u64>,
    },
    Pong,
}

impl ServerEvent {
    /// The conversation the event belongs to, if any.
    pub fn conversation_id(&self) -> Option<&str> {
        match self {
            ServerEvent::Message { message } => Some(&message.conversation_id),
            ServerEvent::Opened { conversation } | ServerEvent::Conversation { conversation } => {
                Some(&conversation.id)
            }
            ServerEvent::Ack {
                conversation_id, ..
            }
            | ServerEvent::Delta {
                conversation_id, ..
            }
            | ServerEvent::Typing {
                conversation_id, ..
            }
            | ServerEvent::Receipt {
                conversation_id, ..
            } => Some(conversation_id),
            _ => None,
        }
    }

    /// The SSE event name: the JSON `type`.
    pub fn name(&self) -> &'static str {
        match self {
            ServerEvent::Welcome { .. } => "welcome",
            ServerEvent::Presence { .. } => "presence",
            ServerEvent::VisitorPresence { .. } => "visitor_presence",
            ServerEvent::Opened { .. } => "opened",
            ServerEvent::Message { .. } => "message",
            ServerEvent::Ack { .. } => "ack",
            ServerEvent::Delta { .. } => "delta",
            ServerEvent::Typing { .. } => "typing",
            ServerEvent::Receipt { .. } => "receipt",
            ServerEvent::Conversation { .. } => "conversation",
            ServerEvent::Error { .. } => "error",
            ServerEvent::Pong => "pong",
        }
    }
}
