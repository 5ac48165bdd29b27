//! The live side of conversations, shared by the WebSocket and the event-stream fallback:
//! publishing stored messages, answers generated in the background with streamed pieces,
//! typing, receipts, human handoff, the staff inbox, and per-connection ordering of messages.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde_json::json;

use super::answer::Pending;
use super::conversations::{
    self, Access, Conversation, InboxItem, InboxQuery, Message, NewMessage, ReceiptStatus, Side,
    Speaker,
};
use super::delivery::Delivered;
use super::hub::{Audience, Event};
use super::protocol::ServerEvent;
use super::{Chat, ChatError};
use crate::auth::TenantScope;
use crate::db::coaching::OutboxStore;

/// Limits on what one end user may send, and on live connections.
#[derive(Clone)]
pub struct VisitorLimits {
    pub messages_per_minute: u32,
    messages: Arc<DefaultKeyedRateLimiter<String>>,
    /// New conversations per end user: each is a row, and `open` with `new` costs nothing else.
    conversations: Arc<DefaultKeyedRateLimiter<String>>,
    connections: Arc<ConnectionSlots>,
}

/// New conversations an end user may start per hour.
pub const CONVERSATIONS_PER_HOUR: u32 = 30;
/// Live connections one credential (an end user's token, a member, a key) may hold at once.
pub const CONNECTIONS_PER_CREDENTIAL: u32 = 16;

impl VisitorLimits {
    pub fn new(messages_per_minute: u32, connections_per_ip: u32) -> VisitorLimits {
        let per_minute = NonZeroU32::new(messages_per_minute.max(1)).expect("at least one");
        // A burst of a third of the minute's budget, so a quick follow-up is never refused.
        let burst = NonZeroU32::new((messages_per_minute / 3).max(1)).expect("at least one");
        let conversations = Quota::per_hour(NonZeroU32::new(CONVERSATIONS_PER_HOUR).expect("≥1"))
            .allow_burst(NonZeroU32::new(5).expect("≥1"));
        VisitorLimits {
            messages_per_minute,
            messages: Arc::new(RateLimiter::keyed(
                Quota::per_minute(per_minute).allow_burst(burst),
            )),
            conversations: Arc::new(RateLimiter::keyed(conversations)),
            connections: Arc::new(ConnectionSlots {
                per_ip: connections_per_ip,
                open: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn check_visitor(&self, visitor_id: &str) -> Result<(), ChatError> {
        limited(&self.messages, visitor_id)
    }

    /// An end user starts a conversation.
    pub fn check_new_conversation(&self, visitor_id: &str) -> Result<(), ChatError> {
        limited(&self.conversations, visitor_id)
    }

    /// A live connection from `network` for `credential`, or `None` when either already holds
    /// as many as allowed. Dropping the slot frees it.
    pub fn connection_slot(
        &self,
        network: Option<IpAddr>,
        credential: &str,
    ) -> Option<ConnectionSlot> {
        self.connections.take(network, credential)
    }

    /// Forgets idle visitors so memory stays bounded; call now and then.
    pub fn prune(&self) {
        self.messages.retain_recent();
        self.conversations.retain_recent();
    }
}

fn limited(limiter: &DefaultKeyedRateLimiter<String>, key: &str) -> Result<(), ChatError> {
    limiter.check_key(&key.to_string()).map_err(|not_until| {
        ChatError::RateLimited(
            not_until
                .wait_time_from(DefaultClock::default().now())
                .max(Duration::from_secs(1)),
        )
    })
}

/// Open live connections per client network and per credential.
struct ConnectionSlots {
    per_ip: u32,
    open: Mutex<HashMap<String, u32>>,
}

impl ConnectionSlots {
    fn take(self: &Arc<Self>, network: Option<IpAddr>, credential: &str) -> Option<ConnectionSlot> {
        let mut keys = vec![(format!("key:{credential}"), CONNECTIONS_PER_CREDENTIAL)];
        if let Some(ip) = network {
            keys.push((
                format!("ip:{}", crate::auth::rate_limit::network_of(ip)),
                self.per_ip,
            ));
        }
        let mut open = self.open.lock().expect("slots lock");
        if keys
            .iter()
            .any(|(key, limit)| open.get(key).copied().unwrap_or(0) >= *limit)
        {
            return None;
        }
        for (key, _) in &keys {
            *open.entry(key.clone()).or_default() += 1;
        }
        Some(ConnectionSlot {
            slots: Arc::clone(self),
            keys: keys.into_iter().map(|(key, _)| key).collect(),
        })
    }
}

/// One open live connection, counted until dropped.
pub struct ConnectionSlot {
    slots: Arc<ConnectionSlots>,
    keys: Vec<String>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().expect("slots lock");
        for key in &self.keys {
            if let Some(count) = open.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    open.remove(key);
                }
            }
        }
    }
}

/// Who answers a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hands {
    /// A person of the team (the one asking).
    Person,
    /// The AI coach.
    Coach,
}

/// Who is typing, as the other side sees it.
fn side_name(speaker: &Speaker) -> &'static str {
    match speaker {
        Speaker::Visitor { .. } => "visitor",
        Speaker::Staff { .. } => "staff",
    }
}

fn side(speaker: &Speaker) -> Side {
    match speaker {
        Speaker::Visitor { .. } => Side::Visitor,
        Speaker::Staff { .. } => Side::Staff,
    }
}

/// "Can I talk to a person?" and the like. Deliberately narrow: a false positive silences the
/// coach, so only explicit requests count (the chat page also has a button).
pub fn asks_for_a_person(text: &str) -> bool {
    static PATTERN: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r"(?i)\b(talk|speak|chat|connect me)\s+(to|with)\s+(a|an|some|the)?\s*(real\s+|actual\s+)?(human|person|people|someone|somebody|agent|staff|team member)\b|\b(human|real person|live agent),?\s+please\b",
        )
        .expect("valid pattern")
    });
    PATTERN.is_match(text)
}

impl Chat {
    /// Delivers a stored message to the conversation's followers and the tenant's staff.
    pub fn publish_message(&self, tenant_id: &str, message: &Message) {
        // Its delivery to a messaging app (or its push to a browser, when the visitor
        // subscribed) was queued with it: start it now.
        if (message.channel != conversations::WEB_CHANNEL || crate::db::push::worth_a_push(message))
            && let Some(jobs) = self.jobs.get()
        {
            jobs.wake();
        }
        let event = ServerEvent::Message {
            message: message.clone(),
        };
        self.hub
            .publish(tenant_id, Event::new(&event), Audience::FollowersAndStaff);
    }

    fn publish_conversation(&self, tenant_id: &str, conversation: Conversation) {
        let event = ServerEvent::Conversation { conversation };
        self.hub
            .publish(tenant_id, Event::new(&event), Audience::FollowersAndStaff);
    }

    /// Stores an event message ("Ana joined") and publishes it with the conversation's state.
    async fn record_event(
        &self,
        scope: &TenantScope,
        conversation_id: &str,
        kind: &'static str,
        text: String,
    ) -> Result<(), ChatError> {
        let (scope_moved, id) = (scope.clone(), conversation_id.to_string());
        let (message, conversation) = self
            .db
            .call(move |c| {
                let stored = conversations::add_message(
                    c,
                    &scope_moved,
                    &id,
                    &NewMessage {
                        role: "event",
                        content: &text,
                        stats: Some(json!({ "event": kind })),
                        ..NewMessage::default()
                    },
                )?;
                let conversation = conversations::get(c, &scope_moved, &id)?
                    .ok_or(ChatError::NotFound("no such conversation"))?;
                Ok::<_, ChatError>((stored.message, conversation))
            })
            .await?;
        self.publish_message(scope.tenant_id(), &message);
        self.publish_conversation(scope.tenant_id(), conversation);
        Ok(())
    }

    /// The end user asks for a person: the request shows in the staff inbox, and the end user
    /// is told. Asking twice is harmless.
    pub async fn request_person(
        &self,
        speaker: &Speaker,
        conversation_id: &str,
    ) -> Result<Conversation, ChatError> {
        let (who, id) = (speaker.clone(), conversation_id.to_string());
        let newly = self
            .db
            .call(move |c| {
                let conversation = conversations::open(c, &who, &id, Access::Act)?;
                if conversation.started_by != "visitor" {
                    return Err(ChatError::Invalid(
                        "only end users' conversations can be handed to a person".into(),
                    ));
                }
                Ok(conversations::request_handoff(c, who.scope(), &id)?)
            })
            .await?;
        if newly {
            let text = if self.hub.is_staff_online(speaker.scope().tenant_id()) {
                "You asked to talk to a person. Someone from the team will join here shortly."
            } else {
                "You asked to talk to a person. The team has been told and will reply here as \
                 soon as someone is available."
            };
            self.record_event(
                speaker.scope(),
                conversation_id,
                "handoff_requested",
                text.into(),
            )
            .await?;
        }
        self.conversation(speaker, conversation_id).await
    }

    /// A person takes the conversation over (the coach stops answering it), or hands it back
    /// to the coach: the person who took it over, or an admin (`overrides`). The end user sees
    /// an event message either way.
    pub async fn hand_to(
        &self,
        scope: &TenantScope,
        user_id: &str,
        overrides: bool,
        conversation_id: &str,
        hands: Hands,
    ) -> Result<Conversation, ChatError> {
        let (scope_moved, user, id) = (
            scope.clone(),
            user_id.to_string(),
            conversation_id.to_string(),
        );
        let (name, changed) = self
            .db
            .call(move |c| {
                let conversation = conversations::get(c, &scope_moved, &id)?
                    .ok_or(ChatError::NotFound("no such conversation"))?;
                if conversation.started_by != "visitor" {
                    return Err(ChatError::Invalid(
                        "test conversations cannot change hands".into(),
                    ));
                }
                let changed = match hands {
                    Hands::Person => {
                        if conversation.is_human()
                            && conversation.assigned_user_id.as_deref() != Some(&user)
                        {
                            return Err(ChatError::Conflict(format!(
                                "{} is already handling this conversation",
                                conversation
                                    .assigned_name
                                    .unwrap_or_else(|| "someone".into())
                            )));
                        }
                        conversations::set_mode(c, &scope_moved, &id, Some(&user))?;
                        !conversation.is_human()
                    }
                    Hands::Coach => {
                        if !conversation.is_human() {
                            return Err(ChatError::Conflict(
                                "the coach is already answering this conversation".into(),
                            ));
                        }
                        if conversation.assigned_user_id.as_deref() != Some(&user) && !overrides {
                            return Err(ChatError::Forbidden(
                                "only the person handling this conversation (or an admin) can hand it back",
                            ));
                        }
                        conversations::set_mode(c, &scope_moved, &id, None)?;
                        true
                    }
                };
                Ok((conversations::staff_name(c, &user)?, changed))
            })
            .await?;
        if changed {
            let (kind, text) = match hands {
                Hands::Person => (
                    "staff_joined",
                    format!("{name} from the team joined the conversation."),
                ),
                Hands::Coach => (
                    "staff_left",
                    format!("{name} handed the conversation back to the coach."),
                ),
            };
            self.record_event(scope, conversation_id, kind, text)
                .await?;
        }
        self.conversation_in(scope, conversation_id).await
    }

    /// The conversation, if the speaker may read it.
    pub async fn conversation(
        &self,
        speaker: &Speaker,
        conversation_id: &str,
    ) -> Result<Conversation, ChatError> {
        let (speaker, id) = (speaker.clone(), conversation_id.to_string());
        self.db
            .call(move |c| conversations::open(c, &speaker, &id, Access::Read))
            .await
    }

    async fn conversation_in(
        &self,
        scope: &TenantScope,
        conversation_id: &str,
    ) -> Result<Conversation, ChatError> {
        let (scope, id) = (scope.clone(), conversation_id.to_string());
        self.db
            .call(move |c| {
                conversations::get(c, &scope, &id)?
                    .ok_or(ChatError::NotFound("no such conversation"))
            })
            .await
    }

    /// Starts a conversation: an end user's (within their hourly budget), or a test
    /// conversation of a member who may act (coach role or above).
    pub async fn start_conversation(&self, speaker: &Speaker) -> Result<Conversation, ChatError> {
        match speaker {
            Speaker::Visitor { visitor_id, .. } => {
                self.limits.check_new_conversation(visitor_id)?
            }
            Speaker::Staff { role, .. } if *role < crate::auth::Role::Coach => {
                return Err(ChatError::Forbidden(
                    "the analyst role reads conversations; it cannot start them",
                ));
            }
            Speaker::Staff { .. } => {}
        }
        let speaker = speaker.clone();
        self.db
            .call(move |c| Ok(conversations::create(c, &speaker)?))
            .await
    }

    /// The conversation to follow. Visitors without an id continue their newest conversation
    /// (or start one); `new` always starts one.
    pub async fn open_conversation(
        &self,
        speaker: &Speaker,
        conversation_id: Option<String>,
        new: bool,
    ) -> Result<Conversation, ChatError> {
        let (speaker, limits) = (speaker.clone(), self.limits.clone());
        self.db
            .call(move |c| {
                let id = match (&speaker, conversation_id, new) {
                    (Speaker::Visitor { visitor_id, .. }, _, true) => {
                        limits.check_new_conversation(visitor_id)?;
                        conversations::create(c, &speaker)?.id
                    }
                    (_, Some(id), _) => id,
                    (Speaker::Visitor { visitor_id, .. }, None, false) => {
                        match conversations::latest_of_visitor(c, speaker.scope(), visitor_id)? {
                            Some(id) => id,
                            None => conversations::create(c, &speaker)?.id,
                        }
                    }
                    (Speaker::Staff { .. }, None, _) => {
                        return Err(ChatError::Invalid(
                            "staff open a conversation by its id".into(),
                        ));
                    }
                };
                conversations::open(c, &speaker, &id, Access::Read)
            })
            .await
    }

    /// The messages numbered after `after_seq` (the caller has checked access).
    pub async fn messages_after(
        &self,
        scope: &TenantScope,
        conversation_id: &str,
        after_seq: i64,
    ) -> Result<Vec<Message>, ChatError> {
        let (scope, id) = (scope.clone(), conversation_id.to_string());
        self.db
            .call(move |c| {
                Ok::<_, ChatError>(conversations::messages_after(
                    c,
                    &scope,
                    &id,
                    after_seq,
                    u32::MAX,
                )?)
            })
            .await
    }

    /// Tells the other side that someone is (or stopped) typing.
    pub async fn typing(
        &self,
        speaker: &Speaker,
        conversation_id: &str,
        active: bool,
        from_connection: Option<u64>,
    ) -> Result<(), ChatError> {
        let (who, id) = (speaker.clone(), conversation_id.to_string());
        let name = self
            .db
            .call(move |c| {
                conversations::open(c, &who, &id, Access::Act)?;
                match &who {
                    Speaker::Staff {
                        user_id: Some(user),
                        ..
                    } => Ok::<_, ChatError>(Some(conversations::staff_name(c, user)?)),
                    _ => Ok(None),
                }
            })
            .await?;
        let event = ServerEvent::Typing {
            conversation_id: conversation_id.to_string(),
            from: side_name(speaker).to_string(),
            name,
            active,
        };
        self.hub.publish(
            speaker.scope().tenant_id(),
            Event::new(&event).from_connection(from_connection),
            Audience::Followers,
        );
        Ok(())
    }

    /// Records that the speaker's side received or read the messages up to `seq`.
    pub async fn receipt(
        &self,
        speaker: &Speaker,
        conversation_id: &str,
        seq: i64,
        status: ReceiptStatus,
        from_connection: Option<u64>,
    ) -> Result<i64, ChatError> {
        let (who, id) = (speaker.clone(), conversation_id.to_string());
        let by = side(speaker);
        let seq = self
            .db
            .call(move |c| {
                conversations::open(c, &who, &id, Access::Act)?;
                let seq = conversations::record_receipt(c, who.scope(), &id, by, status, seq)?;
                // What the coach sent out is delivered (or read) once the end user's side says so.
                if by == Side::Visitor {
                    c.outbound_receipt(who.scope(), &id, seq, status == ReceiptStatus::Read)?;
                }
                Ok::<_, ChatError>(seq)
            })
            .await?;
        let event = ServerEvent::Receipt {
            conversation_id: conversation_id.to_string(),
            by,
            status,
            seq,
        };
        self.hub.publish(
            speaker.scope().tenant_id(),
            Event::new(&event).from_connection(from_connection),
            Audience::FollowersAndStaff,
        );
        Ok(seq)
    }

    /// End users' conversations for the staff inbox, with who is online.
    pub async fn inbox(
        &self,
        scope: &TenantScope,
        query: InboxQuery,
    ) -> Result<Vec<InboxItem>, ChatError> {
        let scope_moved = scope.clone();
        let mut items = self
            .db
            .call(move |c| Ok::<_, ChatError>(conversations::inbox(c, &scope_moved, &query)?))
            .await?;
        for item in &mut items {
            item.visitor_online = self
                .hub
                .is_visitor_online(scope.tenant_id(), &item.visitor_id);
        }
        Ok(items)
    }

    /// Stores and publishes the coach's reply that needs no model (a check-in recorded, a
    /// greeting), once per `client_id` when one is given.
    pub async fn store_coach_reply(
        &self,
        scope: &TenantScope,
        conversation_id: &str,
        text: &str,
        client_id: Option<&str>,
    ) -> Result<Message, ChatError> {
        let (scope_moved, id, text, client_id) = (
            scope.clone(),
            conversation_id.to_string(),
            text.to_string(),
            client_id.map(str::to_string),
        );
        let message = self
            .db
            .call(move |c| {
                Ok::<_, ChatError>(
                    conversations::add_message(
                        c,
                        &scope_moved,
                        &id,
                        &NewMessage {
                            role: "assistant",
                            content: &text,
                            stats: Some(json!({ "coaching": true })),
                            client_id: client_id.as_deref(),
                            ..NewMessage::default()
                        },
                    )?
                    .message,
                )
            })
            .await?;
        self.publish_message(scope.tenant_id(), &message);
        Ok(message)
    }

    /// The visitor's latest conversation, opened when they have none (a person writing
    /// through a messaging app has one running conversation).
    pub async fn conversation_of_visitor(
        &self,
        scope: &TenantScope,
        visitor_id: &str,
    ) -> Result<String, ChatError> {
        let speaker = Speaker::Visitor {
            scope: scope.clone(),
            visitor_id: visitor_id.to_string(),
        };
        let (scope, visitor) = (scope.clone(), visitor_id.to_string());
        self.db
            .call(move |c| {
                conversations::visitor_standing(c, &scope, &visitor)?;
                Ok::<_, ChatError>(
                    match conversations::latest_of_visitor(c, &scope, &visitor)? {
                        Some(id) => id,
                        None => conversations::create(c, &speaker)?.id,
                    },
                )
            })
            .await
    }

    /// The latest answers the coach offered to pick from in a conversation (a choice step).
    pub async fn latest_quick_replies(
        &self,
        scope: &TenantScope,
        conversation_id: &str,
    ) -> Result<Vec<String>, ChatError> {
        let (scope, id) = (scope.clone(), conversation_id.to_string());
        self.db
            .call(move |c| {
                let recent = conversations::recent_messages(c, &scope, &id, 20)?;
                Ok::<_, ChatError>(
                    recent
                        .into_iter()
                        .rev()
                        .find(|m| !m.quick_replies.is_empty())
                        .map(|m| m.quick_replies)
                        .unwrap_or_default(),
                )
            })
            .await
    }

    /// A visitor with no browser behind it yet (an end user made through the API).
    pub async fn create_visitor_for(&self, scope: &TenantScope) -> Result<String, ChatError> {
        let tenant = scope.tenant_id().to_string();
        let (id, _token) = self
            .db
            .call(move |c| {
                Ok::<_, ChatError>(conversations::create_visitor(c, &tenant, None, None)?)
            })
            .await?;
        Ok(id)
    }

    /// A new token for the visitor (test end users' sessions).
    pub async fn reissue_visitor_token(
        &self,
        scope: &TenantScope,
        visitor_id: &str,
    ) -> Result<String, ChatError> {
        let (scope, id) = (scope.clone(), visitor_id.to_string());
        self.db
            .call(move |c| {
                conversations::reissue_visitor_token(c, &scope, &id)?
                    .ok_or(ChatError::NotFound("no such visitor"))
            })
            .await
    }

    /// Answers as a durable job, so the answer is stored (and reaches the end user when they
    /// come back) even if the connection that asked drops, or the process dies: a job whose
    /// lease ran out is run again, and answers the question unless its answer is stored.
    /// Pieces are published as they come.
    pub async fn answer_in_background(
        &self,
        speaker: Speaker,
        conversation_id: String,
        pending: Pending,
    ) {
        let chat = self.clone();
        let Some(jobs) = self.jobs.get().cloned() else {
            // Without the job system (a bare service in a unit test): a task of its own.
            tokio::spawn(async move { chat.answer_now(speaker, conversation_id, pending).await });
            return;
        };
        // Queued before the caller is told "accepted", so a crash right after loses nothing.
        let queued = jobs
            .enqueue(crate::jobs::NewJob {
                kind: ANSWER_JOB,
                tenant_id: Some(speaker.scope().tenant_id().to_string()),
                subject_id: conversation_id.clone(),
                payload: answer_payload(&speaker, &conversation_id, pending.seq()),
                run_at: chrono::Utc::now(),
                dedupe_key: None,
                clock_id: None,
            })
            .await;
        if let Err(error) = queued {
            tracing::warn!(%error, "cannot queue an answer; answering at once");
            tokio::spawn(async move { chat.answer_now(speaker, conversation_id, pending).await });
        }
    }

    /// Answers, telling followers the coach is typing and what went wrong if it did.
    async fn answer_now(&self, speaker: Speaker, conversation_id: String, pending: Pending) {
        let chat = self;
        let tenant_id = speaker.scope().tenant_id().to_string();
        let typing = |active: bool| ServerEvent::Typing {
            conversation_id: conversation_id.clone(),
            from: "coach".into(),
            name: None,
            active,
        };
        chat.hub
            .publish(&tenant_id, Event::new(&typing(true)), Audience::Followers);
        let result = chat
            .answer_published(speaker, &conversation_id, pending)
            .await;
        chat.hub
            .publish(&tenant_id, Event::new(&typing(false)), Audience::Followers);
        if let Err(error) = result {
            tracing::warn!(conversation = %conversation_id, %error, "answer failed");
            // Model errors say what to do ("install a model..."); others stay internal.
            let message = match &error {
                ChatError::Inference(error) => error.to_string(),
                _ => "the coach could not answer just now; please try again".to_string(),
            };
            let event = ServerEvent::Error {
                code: "answer_failed".into(),
                message,
                reference: None,
                retry_after_s: None,
            };
            let mut event = Event::new(&event);
            event.conversation_id = Some(conversation_id.clone());
            chat.hub.publish(&tenant_id, event, Audience::Followers);
        }
    }

    async fn answer_published(
        &self,
        speaker: Speaker,
        conversation_id: &str,
        pending: Pending,
    ) -> Result<Message, ChatError> {
        let tenant_id = speaker.scope().tenant_id().to_string();
        let prepared = self.start_answer(speaker, conversation_id, pending).await?;
        let reply_to = prepared.reply_to;
        let mut delivery = std::pin::pin!(self.deliver(prepared));
        let mut index = 0;
        while let Some(item) = delivery.next().await {
            match item {
                // Checked sentences only: every follower may see them as they come.
                Delivered::Text(text) => {
                    let event = ServerEvent::Delta {
                        conversation_id: conversation_id.to_string(),
                        reply_to,
                        index,
                        text,
                    };
                    self.hub
                        .publish(&tenant_id, Event::new(&event), Audience::Followers);
                    index += 1;
                }
                Delivered::Done(stored) => return *stored,
            }
        }
        Err(ChatError::Invalid(
            "the answer ended before it was stored".into(),
        ))
    }
}

/// Jobs that answer a question in the background.
pub const ANSWER_JOB: &str = "answer";

fn answer_payload(speaker: &Speaker, conversation_id: &str, seq: i64) -> serde_json::Value {
    match speaker {
        Speaker::Visitor { visitor_id, .. } => {
            json!({"conversation_id": conversation_id, "seq": seq, "visitor_id": visitor_id})
        }
        Speaker::Staff { user_id, role, .. } => json!({
            "conversation_id": conversation_id, "seq": seq,
            "user_id": user_id, "role": role.as_str(),
        }),
    }
}

/// Runs answer jobs: the question is read again from SQLite.
pub struct AnswerJob(pub Chat);

impl crate::jobs::Handler for AnswerJob {
    fn run<'a>(
        &'a self,
        job: &'a crate::jobs::Job,
        _now: chrono::DateTime<chrono::Utc>,
    ) -> crate::jobs::BoxFuture<'a, Result<crate::jobs::Outcome, crate::jobs::JobError>> {
        Box::pin(async move {
            use crate::jobs::{JobError, Outcome};
            let p = &job.payload;
            let scope = crate::jobs::tenant_scope(job)?;
            let text = |key: &str| p[key].as_str().map(str::to_string);
            let speaker = match (
                text("visitor_id"),
                text("role").and_then(|r| crate::auth::Role::parse(&r)),
            ) {
                (Some(visitor_id), _) => Speaker::Visitor { scope, visitor_id },
                (None, Some(role)) => Speaker::Staff {
                    scope,
                    user_id: text("user_id"),
                    role,
                },
                _ => return Err(JobError::Fatal("an answer job names nobody".into())),
            };
            let conversation_id = text("conversation_id").unwrap_or_default();
            let seq = p["seq"].as_i64().unwrap_or_default();
            // After a restart the models are still loading: answer once they are, not with an
            // error now.
            if self.0.inference.on_its_way() {
                return Err(JobError::Retry("the models are still loading".into()));
            }
            let pending = match self.0.pending_for(&speaker, &conversation_id, seq).await {
                Ok(Some(pending)) => pending,
                Ok(None) | Err(ChatError::NotFound(_)) => return Ok(Outcome::Done),
                Err(error) => return Err(JobError::Retry(error.to_string())),
            };
            self.0.answer_now(speaker, conversation_id, pending).await;
            Ok(Outcome::Done)
        })
    }
}

/// Orders the message events one connection receives: drops those it already has and fills a
/// gap (a message published out of order, or while the connection was being set up) from
/// SQLite, so each message is delivered exactly once and in sequence.
#[derive(Default)]
pub struct Follower {
    /// conversation id → the last sequence number delivered.
    delivered: HashMap<String, i64>,
}

impl Follower {
    /// The conversation is followed and everything up to `seq` has been delivered.
    pub fn delivered_up_to(&mut self, conversation_id: &str, seq: i64) {
        let last = self
            .delivered
            .entry(conversation_id.to_string())
            .or_insert(0);
        *last = (*last).max(seq);
    }

    pub fn follows(&self, conversation_id: &str) -> bool {
        self.delivered.contains_key(conversation_id)
    }

    /// What to send for `event`: nothing, the event, or missing messages and then the event.
    pub async fn admit(
        &mut self,
        chat: &Chat,
        scope: &TenantScope,
        event: Arc<Event>,
    ) -> Result<Vec<Arc<Event>>, ChatError> {
        let (Some(conversation_id), Some(seq)) = (event.conversation_id.clone(), event.seq) else {
            return Ok(vec![event]);
        };
        let conversation_id = conversation_id.as_str();
        // Staff receive every conversation's messages for their inbox, unordered.
        let Some(&last) = self.delivered.get(conversation_id) else {
            return Ok(vec![event]);
        };
        if seq <= last {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        if seq > last + 1 {
            let (scope, id) = (scope.clone(), conversation_id.to_string());
            let missing = chat
                .db
                .call(move |c| {
                    Ok::<_, ChatError>(conversations::messages_after(
                        c,
                        &scope,
                        &id,
                        last,
                        (seq - last - 1) as u32,
                    )?)
                })
                .await?;
            out.extend(
                missing
                    .into_iter()
                    .filter(|m| m.seq < seq)
                    .map(|message| Arc::new(Event::new(&ServerEvent::Message { message }))),
            );
        }
        out.push(event);
        self.delivered.insert(conversation_id.to_string(), seq);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_requests_for_a_person_are_recognised() {
        for yes in [
            "Can I talk to a human?",
            "I want to speak with someone",
            "please connect me to a real person",
            "Human, please",
        ] {
            assert!(asks_for_a_person(yes), "{yes}");
        }
        for no in [
            "How do I talk to my kids about sleep?",
            "Is the coach a real person?",
            "What should a human eat before a run?",
        ] {
            assert!(!asks_for_a_person(no), "{no}");
        }
    }
}
