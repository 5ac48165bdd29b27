//! Live chat: the WebSocket (`GET /api/v1/live`) and, for clients that cannot use one, a
//! Server-Sent Events stream per conversation (`GET /api/v1/conversations/{id}/events`) whose
//! commands are the plain conversation routes. Protocol: docs/websocket-protocol.md.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message as Frame, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::stream;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use tokio::sync::broadcast;

use super::AppState;
use super::auth::{Client, current_principal};
use super::chat::{Caller, answering_member, speaker_from_token, staff_speaker};
use super::cors;
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::route_table::Routes;
use super::streams::sse_until_shutdown;
use crate::auth::{Principal, Role};
use crate::chat::answer::MAX_MESSAGE_CHARS;
use crate::chat::conversations::{ReceiptStatus, Speaker};
use crate::chat::hub::{Connection, Event, Participant};
use crate::chat::live::{ConnectionSlot, Follower, Hands};
use crate::chat::protocol::{ClientCommand, PROTOCOL_VERSION, ServerEvent};

pub fn routes() -> Routes {
    Routes::new()
        .route("/api/v1/live", get(websocket))
        .route("/api/v1/conversations/{id}/events", get(events))
}

/// Largest frame a client may send: a message of `MAX_MESSAGE_CHARS` (up to 4 bytes each) and
/// its envelope. Larger frames close the connection (1009).
const MAX_FRAME_BYTES: usize = 4 * MAX_MESSAGE_CHARS + 1024;
/// Frames up to this size are read whole, so one over `MAX_FRAME_BYTES` is refused with a
/// close frame the client receives; beyond it the WebSocket layer cuts the connection.
const READ_LIMIT_BYTES: usize = 256 * 1024;
/// After our close frame, how long the client's own close (and anything it still sends) is
/// read and dropped. Closing with unread bytes makes the kernel reset the connection, and a
/// reset can destroy the close frame before the client reads why it was closed.
const CLOSE_LINGER: Duration = Duration::from_secs(5);
/// A connection must say hello this soon.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Refused commands (bad JSON, rate limits, errors) tolerated before the connection is closed.
const MAX_STRIKES: u32 = 10;
/// Typing notices passed on per conversation, at most one per this interval unless the state
/// changes: a client that sends one per keystroke costs nothing.
const TYPING_INTERVAL: Duration = Duration::from_secs(2);
/// Commands of any kind one connection may send per minute (a burst of a quarter of it):
/// typing, receipts and `open` cost a database call each, so none is free.
const COMMANDS_PER_MINUTE: u32 = 120;
/// Close codes (4000-4999 are the application's): the credential no longer gives access
/// (removed, signed out everywhere, key revoked), or the tenant was suspended.
const CLOSE_ACCESS_ENDED: u16 = 4401;
const CLOSE_FORBIDDEN: u16 = 4403;

#[utoipa::path(get, path = "/api/v1/live", tag = "chat",
    responses(
        (status = 101, description = "WebSocket; the first frame must be `hello` with a token. See docs/websocket-protocol.md"),
        (status = 400, description = "Not a WebSocket upgrade", body = ErrorBody),
    ))]
pub(crate) async fn websocket(
    State(state): State<AppState>,
    Client(context): Client,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let origin = cors::foreign_origin(&headers);
    let ip = context.ip;
    upgrade
        // Small buffers: most connections sit idle, and 10,000 of them must fit in memory.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_frame_size(READ_LIMIT_BYTES)
        .max_message_size(READ_LIMIT_BYTES)
        .on_upgrade(move |socket| async move {
            if let Some(session) = Session::start(socket, state, origin, ip).await {
                session.run().await;
            }
        })
}

/// One authenticated WebSocket connection.
struct Session {
    socket: WebSocket,
    state: AppState,
    speaker: Speaker,
    principal: Option<Principal>,
    connection: Connection,
    follower: Follower,
    strikes: u32,
    typing_sent: HashMap<String, (bool, Instant)>,
    /// The newest receipt this connection passed on per conversation: repeats cost nothing.
    receipts_sent: HashMap<String, (i64, ReceiptStatus)>,
    commands: DefaultDirectRateLimiter,
    /// Changes of access in any tenant; this connection looks again when its tenant's change.
    access: broadcast::Receiver<String>,
    /// The access epoch at the last look: unchanged means nothing to look at again.
    access_epoch: u64,
    /// Set when a command found the connection's access gone: the session closes.
    closing: Option<(u16, &'static str)>,
    _slot: ConnectionSlot,
}

/// How a session ends.
enum Ending {
    Gone,
    Close(u16, &'static str),
}

fn json(event: &ServerEvent) -> String {
    serde_json::to_string(event).expect("events serialise")
}

fn error_event(error: ApiError, reference: Option<String>) -> ServerEvent {
    ServerEvent::Error {
        code: error.code.as_str().to_string(),
        message: error.message,
        reference,
        retry_after_s: error.retry_after.map(|d| d.as_secs().max(1)),
    }
}

impl Session {
    /// Waits for `hello`, authenticates, checks the origin and registers the connection.
    async fn start(
        mut socket: WebSocket,
        state: AppState,
        origin: Option<String>,
        ip: Option<std::net::IpAddr>,
    ) -> Option<Session> {
        let hello = tokio::time::timeout(HELLO_TIMEOUT, socket.recv()).await;
        let token = match hello {
            Ok(Some(Ok(Frame::Text(text)))) => match serde_json::from_str(&text) {
                Ok(ClientCommand::Hello { token, protocol }) => {
                    if protocol.is_some_and(|p| p != PROTOCOL_VERSION) {
                        let error = ApiError::new(
                            super::error::ErrorCode::BadRequest,
                            format!("this server speaks protocol {PROTOCOL_VERSION}"),
                        );
                        refuse(socket, error).await;
                        return None;
                    }
                    token
                }
                _ => {
                    let error = ApiError::new(
                        super::error::ErrorCode::Unauthorized,
                        "the first frame must be {\"type\":\"hello\",\"token\":\"...\"}",
                    );
                    refuse(socket, error).await;
                    return None;
                }
            },
            _ => {
                let error = ApiError::new(
                    super::error::ErrorCode::Unauthorized,
                    "no hello within 10 s",
                );
                refuse(socket, error).await;
                return None;
            }
        };
        // Subscribed before authenticating: a change while this connection starts is seen.
        let access = state.auth.accounts.changes().subscribe();
        let access_epoch = state.auth.accounts.changes().epoch();
        let authenticated = async {
            let (speaker, principal) = speaker_from_token(&state, token).await?;
            cors::check_caller_origin(&state, speaker.scope().tenant_id(), origin.as_deref())
                .await?;
            Ok::<_, ApiError>((speaker, principal))
        };
        let (speaker, principal) = match authenticated.await {
            Ok(found) => found,
            Err(error) => {
                refuse(socket, error).await;
                return None;
            }
        };
        let Some(slot) = state
            .chat
            .limits()
            .connection_slot(ip, &credential_key(&speaker, principal.as_ref()))
        else {
            let error = ApiError::new(
                ErrorCode::RateLimited,
                "too many live connections from this address or with this token; close some first",
            )
            .with_retry_after(Duration::from_secs(30));
            refuse(socket, error).await;
            return None;
        };
        let tenant_id = speaker.scope().tenant_id().to_string();
        let (participant, role, visitor_id) = match &speaker {
            Speaker::Visitor { visitor_id, .. } => (
                Participant::Visitor {
                    visitor_id: visitor_id.clone(),
                },
                "visitor",
                Some(visitor_id.clone()),
            ),
            Speaker::Staff { .. } => (Participant::Staff, "staff", None),
        };
        let connection = state.chat.hub().connect(&tenant_id, participant);
        let mut session = Session {
            socket,
            speaker,
            principal,
            connection,
            follower: Follower::default(),
            strikes: 0,
            typing_sent: HashMap::new(),
            receipts_sent: HashMap::new(),
            commands: RateLimiter::direct(
                Quota::per_minute(NonZeroU32::new(COMMANDS_PER_MINUTE).expect("≥1"))
                    .allow_burst(NonZeroU32::new(COMMANDS_PER_MINUTE / 4).expect("≥1")),
            ),
            access,
            access_epoch,
            closing: None,
            _slot: slot,
            state,
        };
        let welcome = ServerEvent::Welcome {
            protocol: PROTOCOL_VERSION,
            role: role.into(),
            visitor_id,
            user_id: session.principal.as_ref().and_then(|p| p.user_id.clone()),
            heartbeat_s: session.state.live.heartbeat.as_secs(),
            idle_timeout_s: session.state.live.idle_timeout.as_secs(),
            max_message_chars: MAX_MESSAGE_CHARS,
            messages_per_minute: session.state.chat.limits().messages_per_minute,
        };
        let presence = ServerEvent::Presence {
            staff_online: session.state.chat.hub().is_staff_online(&tenant_id),
        };
        for event in [welcome, presence] {
            if session.send(json(&event)).await.is_err() {
                return None;
            }
        }
        Some(session)
    }

    async fn send(&mut self, text: String) -> Result<(), axum::Error> {
        self.socket.send(Frame::Text(text.into())).await
    }

    async fn run(mut self) {
        let live = self.state.live;
        let mut heartbeat = tokio::time::interval(live.heartbeat);
        heartbeat.tick().await;
        let mut last_heard = Instant::now();
        let shutdown = self.state.shutdown.clone();
        let ending = loop {
            tokio::select! {
                frame = self.socket.recv() => match frame {
                    None | Some(Err(_)) | Some(Ok(Frame::Close(_))) => break Ending::Gone,
                    Some(Ok(Frame::Text(text))) if text.len() > MAX_FRAME_BYTES => {
                        break Ending::Close(close_code::SIZE, "frame too large");
                    }
                    Some(Ok(Frame::Text(text))) => {
                        last_heard = Instant::now();
                        let replies = self.handle(&text).await;
                        if self.deliver(replies).await.is_err() {
                            break Ending::Gone;
                        }
                        if let Some((code, reason)) = self.closing {
                            break Ending::Close(code, reason);
                        }
                        if self.strikes >= MAX_STRIKES {
                            break Ending::Close(close_code::POLICY, "too many refused commands");
                        }
                    }
                    Some(Ok(Frame::Binary(_))) => {
                        self.strikes += 1;
                        let error = ApiError::new(
                            super::error::ErrorCode::BadRequest,
                            "frames are JSON text",
                        );
                        if self.deliver(vec![error_event(error, None)]).await.is_err() {
                            break Ending::Gone;
                        }
                        if self.strikes >= MAX_STRIKES {
                            break Ending::Close(close_code::POLICY, "too many refused commands");
                        }
                    }
                    Some(Ok(Frame::Ping(_) | Frame::Pong(_))) => last_heard = Instant::now(),
                },
                event = self.connection.events.recv() => match event {
                    // The hub cut this connection off: it fell behind. The client resumes.
                    None => break Ending::Close(close_code::AGAIN, "fell behind; reconnect and resume"),
                    Some(event) => {
                        if self.forward(event).await.is_err() {
                            break Ending::Gone;
                        }
                    }
                },
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() >= live.idle_timeout {
                        break Ending::Close(close_code::AWAY, "idle");
                    }
                    if self.socket.send(Frame::Ping(Default::default())).await.is_err() {
                        break Ending::Gone;
                    }
                }
                change = self.access.recv() => {
                    let ours = match change {
                        Ok(tenant_id) => tenant_id == self.speaker.scope().tenant_id(),
                        // Missed some: look again to be safe.
                        Err(broadcast::error::RecvError::Lagged(_)) => true,
                        Err(broadcast::error::RecvError::Closed) => false,
                    };
                    if ours && let Err((code, reason)) = self.recheck().await {
                        break Ending::Close(code, reason);
                    }
                }
                _ = shutdown.cancelled() => break Ending::Close(close_code::RESTART, "server restarting"),
            }
        };
        if let Ending::Close(code, reason) = ending {
            close(&mut self.socket, code, reason).await;
        }
    }

    async fn deliver(&mut self, events: Vec<ServerEvent>) -> Result<(), axum::Error> {
        for event in events {
            self.send(json(&event)).await?;
        }
        Ok(())
    }

    /// Passes a hub event on, in order and without duplicates.
    async fn forward(&mut self, event: Arc<Event>) -> Result<(), axum::Error> {
        let scope = self.speaker.scope().clone();
        let admitted = match self.follower.admit(&self.state.chat, &scope, event).await {
            Ok(admitted) => admitted,
            Err(error) => {
                tracing::warn!(%error, "could not fill a gap in a live conversation");
                return Ok(());
            }
        };
        let visitor = matches!(self.speaker, Speaker::Visitor { .. });
        for event in admitted {
            if let Some(json) = event.json_for(visitor) {
                self.send(json.to_string()).await?;
            }
        }
        Ok(())
    }

    /// Judges the connection on its access *now* when anything changed since the last look:
    /// a removed member, a revoked key or a suspended tenant end it (4401/4403); a new role
    /// applies to the next command.
    async fn recheck(&mut self) -> Result<(), (u16, &'static str)> {
        let epoch = self.state.auth.accounts.changes().epoch();
        if epoch == self.access_epoch {
            return Ok(());
        }
        // Taken before the look: a change during it bumps the epoch again.
        self.access_epoch = epoch;
        match standing(&self.state, &self.speaker, self.principal.as_ref()).await {
            Ok(Some(principal)) => {
                self.speaker = staff_speaker(&principal);
                self.principal = Some(principal);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(error) => match close_for(&error) {
                Some(close) => Err(close),
                None => {
                    // Not a verdict (the database was busy): look again next time.
                    self.access_epoch = epoch.wrapping_sub(1);
                    Ok(())
                }
            },
        }
    }

    /// Carries out one command; returns the replies for this connection only (everything
    /// others see goes through the hub).
    async fn handle(&mut self, text: &str) -> Vec<ServerEvent> {
        if let Err(close) = self.recheck().await {
            self.closing = Some(close);
            return Vec::new();
        }
        if let Err(not_until) = self.commands.check() {
            self.strikes += 1;
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            let error = ApiError::new(
                ErrorCode::RateLimited,
                format!("too many commands; at most {COMMANDS_PER_MINUTE} a minute"),
            )
            .with_retry_after(wait.max(Duration::from_secs(1)));
            return vec![error_event(error, None)];
        }
        let command = match serde_json::from_str::<ClientCommand>(text) {
            Ok(command) => command,
            Err(error) => {
                self.strikes += 1;
                let error = ApiError::new(
                    super::error::ErrorCode::BadRequest,
                    format!("not a command: {error}"),
                );
                return vec![error_event(error, None)];
            }
        };
        let reference = match &command {
            ClientCommand::Send { client_id, .. } => Some(client_id.clone()),
            _ => None,
        };
        match self.command(command).await {
            Ok(replies) => replies,
            Err(error) => {
                self.strikes += 1;
                vec![error_event(error, reference)]
            }
        }
    }

    async fn command(&mut self, command: ClientCommand) -> Result<Vec<ServerEvent>, ApiError> {
        let chat = self.state.chat.clone();
        let speaker = self.speaker.clone();
        match command {
            ClientCommand::Hello { .. } => Err(ApiError::new(
                super::error::ErrorCode::BadRequest,
                "already authenticated",
            )),
            ClientCommand::Ping => Ok(vec![ServerEvent::Pong]),
            ClientCommand::Open {
                conversation_id,
                after_seq,
                new,
            } => {
                let conversation = chat
                    .open_conversation(&speaker, conversation_id, new)
                    .await?;
                // Follow first, then read: a message stored in between arrives both ways and
                // the follower drops the second copy.
                chat.hub().follow(&self.connection, &conversation.id);
                let missed = chat
                    .messages_after(speaker.scope(), &conversation.id, after_seq)
                    .await?;
                let up_to = missed
                    .last()
                    .map_or(after_seq.min(conversation.last_seq), |m| m.seq);
                self.follower.delivered_up_to(&conversation.id, up_to);
                let mut replies = vec![ServerEvent::Opened { conversation }];
                replies.extend(missed.into_iter().map(|message| ServerEvent::Message {
                    message: message.seen_by(&speaker),
                }));
                Ok(replies)
            }
            ClientCommand::Send {
                conversation_id,
                client_id,
                content,
            } => {
                let asked = chat
                    .ask(&speaker, &conversation_id, &content, Some(&client_id))
                    .await?;
                let ack = ServerEvent::Ack {
                    client_id,
                    conversation_id: conversation_id.clone(),
                    message_id: asked.message.id.clone(),
                    seq: asked.message.seq,
                    duplicate: asked.duplicate,
                };
                if let Some(pending) = asked.pending {
                    chat.answer_in_background(speaker, conversation_id, pending)
                        .await;
                }
                Ok(vec![ack])
            }
            ClientCommand::Typing {
                conversation_id,
                active,
            } => {
                let last = self.typing_sent.get(&conversation_id);
                let repeat =
                    last.is_some_and(|(was, at)| *was == active && at.elapsed() < TYPING_INTERVAL);
                if !repeat {
                    chat.typing(&speaker, &conversation_id, active, Some(self.connection.id))
                        .await?;
                    self.typing_sent
                        .insert(conversation_id, (active, Instant::now()));
                }
                Ok(Vec::new())
            }
            ClientCommand::Receipt {
                conversation_id,
                seq,
                status,
            } => {
                let known = self.receipts_sent.get(&conversation_id);
                let repeat = known.is_some_and(|(sent, sent_status)| {
                    *sent >= seq && (*sent_status == status || status == ReceiptStatus::Delivered)
                });
                if repeat {
                    return Ok(Vec::new());
                }
                self.receipts_sent
                    .insert(conversation_id.clone(), (seq, status));
                chat.receipt(
                    &speaker,
                    &conversation_id,
                    seq,
                    status,
                    Some(self.connection.id),
                )
                .await?;
                Ok(Vec::new())
            }
            ClientCommand::RequestHuman { conversation_id } => {
                chat.request_person(&speaker, &conversation_id).await?;
                Ok(Vec::new())
            }
            ClientCommand::Takeover { conversation_id } => {
                let (member, user) = answering_member(self.principal.as_ref())?;
                let admin = member.role >= Role::Admin;
                chat.hand_to(
                    speaker.scope(),
                    user,
                    admin,
                    &conversation_id,
                    Hands::Person,
                )
                .await?;
                Ok(Vec::new())
            }
            ClientCommand::Handback { conversation_id } => {
                let (member, user) = answering_member(self.principal.as_ref())?;
                let admin = member.role >= Role::Admin;
                chat.hand_to(speaker.scope(), user, admin, &conversation_id, Hands::Coach)
                    .await?;
                Ok(Vec::new())
            }
        }
    }
}

/// Who a connection counts against for the per-credential cap.
fn credential_key(speaker: &Speaker, principal: Option<&Principal>) -> String {
    match (speaker, principal) {
        (Speaker::Visitor { visitor_id, .. }, _) => format!("visitor:{visitor_id}"),
        (_, Some(principal)) => match &principal.credential {
            crate::auth::Credential::ApiKey { key_id } => format!("key:{key_id}"),
            crate::auth::Credential::AccessToken { .. } => {
                format!("user:{}", principal.user_id.as_deref().unwrap_or_default())
            }
        },
        (Speaker::Staff { scope, .. }, None) => format!("staff:{}", scope.tenant_id()),
    }
}

/// Whether a participant that authenticated earlier still has access: `Ok(Some(principal))`
/// with a member's role now, `Ok(None)` for an end user who may go on.
async fn standing(
    state: &AppState,
    speaker: &Speaker,
    principal: Option<&Principal>,
) -> Result<Option<Principal>, ApiError> {
    match (speaker, principal) {
        (Speaker::Visitor { scope, visitor_id }, _) => {
            let (scope, visitor_id) = (scope.clone(), visitor_id.clone());
            state
                .db
                .call(move |c| crate::chat::conversations::visitor_standing(c, &scope, &visitor_id))
                .await?;
            Ok(None)
        }
        (_, Some(principal)) => Ok(Some(current_principal(state, principal).await?)),
        (Speaker::Staff { .. }, None) => Err(ApiError::new(
            ErrorCode::Unauthorized,
            "no credential behind this connection",
        )),
    }
}

/// The close code for a verdict on access, or `None` when the error is not one.
fn close_for(error: &ApiError) -> Option<(u16, &'static str)> {
    match error.code {
        ErrorCode::Unauthorized => Some((CLOSE_ACCESS_ENDED, "access_ended")),
        ErrorCode::TenantSuspended => Some((CLOSE_FORBIDDEN, "tenant_suspended")),
        ErrorCode::Forbidden => Some((CLOSE_FORBIDDEN, "forbidden")),
        _ => None,
    }
}

/// Tells an unauthenticated connection why it is refused, and closes it.
async fn refuse(mut socket: WebSocket, error: ApiError) {
    let event = error_event(error, None);
    let _ = socket.send(Frame::Text(json(&event).into())).await;
    close(&mut socket, close_code::POLICY, "refused").await;
}

/// Sends a close frame, then reads until the client's close (bounded by [`CLOSE_LINGER`]).
async fn close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let frame = Frame::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    if socket.send(frame).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while let Some(Ok(frame)) = socket.recv().await {
            if matches!(frame, Frame::Close(_)) {
                break;
            }
        }
    })
    .await;
}

#[derive(Deserialize, utoipa::IntoParams)]
pub(crate) struct EventsQuery {
    /// Replay messages numbered after this one (the `Last-Event-ID` header wins) [default: 0].
    after: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/conversations/{id}/events", tag = "chat",
    params(("id" = String, Path, description = "Conversation id"), EventsQuery),
    responses(
        (status = 200, description = "Server-Sent Events with the WebSocket's server events (`event:` is the type; messages carry `id:` = their sequence number, so a reconnecting EventSource resumes by itself)"),
        (status = 404, description = "No such conversation for this caller", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn events(
    State(state): State<AppState>,
    Client(context): Client,
    Caller(speaker, principal): Caller,
    Path(id): Path<String>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let access = state.auth.accounts.changes().subscribe();
    let slot = state
        .chat
        .limits()
        .connection_slot(context.ip, &credential_key(&speaker, principal.as_ref()))
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::RateLimited,
                "too many live connections from this address or with this token; close some first",
            )
            .with_retry_after(Duration::from_secs(30))
        })?;
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .or(query.after)
        .unwrap_or(0);
    let chat = state.chat.clone();
    let conversation = chat.conversation(&speaker, &id).await?;
    let tenant_id = speaker.scope().tenant_id().to_string();
    let participant = match &speaker {
        Speaker::Visitor { visitor_id, .. } => Participant::Visitor {
            visitor_id: visitor_id.clone(),
        },
        Speaker::Staff { .. } => Participant::Staff,
    };
    let connection = chat.hub().connect(&tenant_id, participant);
    chat.hub().follow(&connection, &id);
    let missed = chat.messages_after(speaker.scope(), &id, after).await?;
    let mut follower = Follower::default();
    follower.delivered_up_to(
        &id,
        missed
            .last()
            .map_or(after.min(conversation.last_seq), |m| m.seq),
    );
    let mut first = vec![
        ServerEvent::Opened { conversation },
        ServerEvent::Presence {
            staff_online: chat.hub().is_staff_online(&tenant_id),
        },
    ];
    first.extend(missed.into_iter().map(|message| ServerEvent::Message {
        message: message.seen_by(&speaker),
    }));
    let visitor = matches!(speaker, Speaker::Visitor { .. });
    let first: Vec<SseEvent> = first
        .iter()
        .filter_map(|event| sse_event(&Event::new(event), visitor))
        .collect();
    let watch = Watch {
        state: state.clone(),
        speaker: speaker.clone(),
        principal,
        access,
        _slot: slot,
    };
    let scope = speaker.scope().clone();
    let live = stream::unfold(
        (connection, follower, chat, scope, id, Some(watch)),
        |(mut connection, mut follower, chat, scope, id, watch)| async move {
            let mut watch = watch?;
            loop {
                let event = tokio::select! {
                    event = connection.events.recv() => event?,
                    change = watch.access.recv() => {
                        let ours = match change {
                            Ok(tenant_id) => tenant_id == scope.tenant_id(),
                            Err(broadcast::error::RecvError::Lagged(_)) => true,
                            Err(broadcast::error::RecvError::Closed) => false,
                        };
                        let verdict = if ours {
                            standing(&watch.state, &watch.speaker, watch.principal.as_ref()).await
                        } else {
                            Ok(None)
                        };
                        match verdict {
                            Err(error) if close_for(&error).is_some() => {
                                // The stream ends with the reason, like a WebSocket's close.
                                let last = SseEvent::default().event("error").data(
                                    json(&error_event(error, None)),
                                );
                                return Some((
                                    stream::iter(vec![last]),
                                    (connection, follower, chat, scope, id, None),
                                ));
                            }
                            Ok(Some(principal)) => watch.principal = Some(principal),
                            _ => {}
                        }
                        continue;
                    }
                };
                // Only this conversation (and presence), not the staff's whole inbox.
                if event.conversation_id.as_deref().is_some_and(|c| c != id) {
                    continue;
                }
                let admitted = follower
                    .admit(&chat, &scope, event)
                    .await
                    .unwrap_or_default();
                let visitor = matches!(watch.speaker, Speaker::Visitor { .. });
                let events: Vec<SseEvent> = admitted
                    .iter()
                    .filter_map(|e| sse_event(e, visitor))
                    .collect();
                return Some((
                    stream::iter(events),
                    (connection, follower, chat, scope, id, Some(watch)),
                ));
            }
        },
    );
    use futures_util::StreamExt;
    let events = stream::iter(first).chain(live.flatten());
    Ok(sse_until_shutdown(events, state.shutdown.clone()).into_response())
}

/// What an event stream keeps to judge its access while it lasts.
struct Watch {
    state: AppState,
    speaker: Speaker,
    principal: Option<Principal>,
    access: broadcast::Receiver<String>,
    _slot: ConnectionSlot,
}

fn sse_event(event: &Event, visitor: bool) -> Option<SseEvent> {
    let sse = SseEvent::default()
        .event(event.name)
        .data(event.json_for(visitor)?);
    Some(match event.seq {
        Some(seq) => sse.id(seq.to_string()),
        None => sse,
    })
}
