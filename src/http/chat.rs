//! Chat routes: the coach's settings, visitor tokens, conversations and answers (JSON or
//! Server-Sent Events), knowledge gaps.

use std::time::Duration;

use axum::Json;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::{AdminRole, Authenticated, Client, bearer_token, principal_from_token};
use super::cors;
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::route_table::Routes;
use super::streams::sse_until_shutdown;
use crate::auth::{Principal, Role};
use crate::chat::ChatError;
use crate::chat::coach::{self, Coach, CoachUpdate, WidgetPosition};
use crate::chat::conversations::{
    self, Access, Conversation, InboxFilter, InboxItem, InboxQuery, Message, ReceiptStatus,
    Speaker, VISITOR_TOKEN_PREFIX,
};
use crate::chat::delivery::Delivered;
use crate::chat::live::Hands;

pub fn routes() -> Routes {
    Routes::new()
        .route("/api/v1/coach", get(get_coach).patch(update_coach))
        .route("/api/v1/public/coaches/{slug}", get(public_coach))
        .route(
            "/api/v1/public/coaches/{slug}/visitors",
            post(create_visitor),
        )
        .route("/api/v1/conversations", post(create_conversation))
        .route("/api/v1/conversations/{id}", get(get_conversation))
        .route(
            "/api/v1/conversations/{id}/messages",
            get(list_messages).post(send_message),
        )
        .route("/api/v1/conversations/{id}/typing", post(typing))
        .route("/api/v1/conversations/{id}/receipts", post(receipt))
        .route("/api/v1/conversations/{id}/handoff", post(request_person))
        .route("/api/v1/conversations/{id}/takeover", post(take_over))
        .route("/api/v1/conversations/{id}/handback", post(hand_back))
        .route("/api/v1/inbox", get(inbox))
}

/// Whoever calls a conversation route: a visitor (token `vis_...`) or a member of the tenant
/// (access token or API key, with its principal). A browser calling from another website must
/// come from an origin the tenant allowed.
pub struct Caller(pub Speaker, pub Option<Principal>);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer_token(&parts.headers).ok_or(ApiError::new(
            ErrorCode::Unauthorized,
            "send a visitor token or an access token as 'Authorization: Bearer ...'",
        ))?;
        let (speaker, principal) = speaker_from_token(state, token).await?;
        let origin = cors::foreign_origin(&parts.headers);
        cors::check_caller_origin(state, speaker.scope().tenant_id(), origin.as_deref()).await?;
        Ok(Caller(speaker, principal))
    }
}

/// The participant behind a token: an end user (`vis_...`) or a member of the team.
pub async fn speaker_from_token(
    state: &AppState,
    token: String,
) -> Result<(Speaker, Option<Principal>), ApiError> {
    if token.starts_with(VISITOR_TOKEN_PREFIX) {
        let speaker = state
            .db
            .call(move |c| conversations::authenticate_visitor(c, &token))
            .await?;
        charge(state, &speaker)?;
        return Ok((speaker, None));
    }
    let principal = principal_from_token(state, token).await?;
    let speaker = staff_speaker(&principal);
    charge(state, &speaker)?;
    Ok((speaker, Some(principal)))
}

/// A member of the team as a participant in conversations.
pub fn staff_speaker(principal: &Principal) -> Speaker {
    Speaker::Staff {
        scope: principal.scope().clone(),
        user_id: principal.user_id.clone(),
        role: principal.role,
    }
}

/// Counts a request against its budget: end users' against theirs and their tenant's public
/// traffic, staff against the tenant's API budget, so visitors never lock out the team.
pub fn charge(state: &AppState, speaker: &Speaker) -> Result<(), ApiError> {
    let limiters = &state.auth.limiters;
    match speaker {
        Speaker::Visitor { scope, visitor_id } => {
            limiters.check_visitor(scope.tenant_id(), visitor_id)?
        }
        Speaker::Staff { scope, .. } => limiters.check_tenant(scope.tenant_id())?,
    }
    Ok(())
}

/// The member of the team behind a caller who may answer conversations (coach role or above).
pub fn answering_member(principal: Option<&Principal>) -> Result<(&Principal, &str), ApiError> {
    let principal = principal.ok_or(ApiError::new(
        ErrorCode::Forbidden,
        "only members of the team can take conversations over",
    ))?;
    let user = principal
        .user_id
        .as_deref()
        .filter(|_| principal.role >= Role::Coach);
    match user {
        Some(user) => Ok((principal, user)),
        None => Err(ApiError::new(
            ErrorCode::Forbidden,
            "taking a conversation over needs a signed-in member with the coach role or above",
        )),
    }
}

#[utoipa::path(get, path = "/api/v1/coach", tag = "chat",
    responses(
        (status = 200, description = "The tenant's coach", body = Coach),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn get_coach(
    State(state): State<AppState>,
    auth: Authenticated,
) -> Result<Json<Coach>, ApiError> {
    let scope = auth.scope().clone();
    Ok(Json(state.db.call(move |c| coach::get(c, &scope)).await?))
}

#[utoipa::path(patch, path = "/api/v1/coach", tag = "chat", request_body = CoachUpdate,
    responses(
        (status = 200, description = "Updated", body = Coach),
        (status = 409, description = "The slug is taken", body = ErrorBody),
        (status = 422, description = "A value is out of range", body = ErrorBody),
        (status = 403, description = "Admins only", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn update_coach(
    State(state): State<AppState>,
    auth: Authenticated<AdminRole>,
    Json(change): Json<CoachUpdate>,
) -> Result<Json<Coach>, ApiError> {
    let scope = auth.scope().clone();
    Ok(Json(
        state
            .db
            .call(move |c| coach::update(c, &scope, &change))
            .await?,
    ))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct NewVisitor {
    visitor_id: String,
    /// Send as `Authorization: Bearer <token>` on the conversation routes. Shown once.
    token: String,
    coach: PublicCoach,
}

/// What the chat page and the widget show of a coach.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct PublicCoach {
    slug: String,
    name: String,
    greeting: String,
    avatar_url: String,
    brand_color: String,
    widget_position: WidgetPosition,
    opening_message: String,
    /// Whether a person of the team is online right now.
    staff_online: bool,
}

impl PublicCoach {
    fn new(coach: Coach, staff_online: bool) -> PublicCoach {
        PublicCoach {
            slug: coach.slug,
            name: coach.name,
            greeting: coach.greeting,
            avatar_url: coach.avatar_url,
            brand_color: coach.brand_color,
            widget_position: coach.widget_position,
            opening_message: coach.opening_message,
            staff_online,
        }
    }
}

#[utoipa::path(get, path = "/api/v1/public/coaches/{slug}", tag = "chat",
    params(("slug" = String, Path, description = "The coach's public slug")),
    responses(
        (status = 200, description = "The coach's name, greeting and branding", body = PublicCoach),
        (status = 403, description = "The browser's origin is not allowed by the creator", body = ErrorBody),
        (status = 404, description = "No coach has this slug", body = ErrorBody),
    ))]
pub(crate) async fn public_coach(
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<Json<PublicCoach>, ApiError> {
    let (tenant_id, coach) = state.db.call(move |c| coach::by_slug(c, &slug)).await?;
    state.auth.limiters.check_public(&tenant_id)?;
    let online = state.chat.hub().is_staff_online(&tenant_id);
    Ok(Json(PublicCoach::new(coach, online)))
}

/// What the widget tells about the browser.
#[derive(Deserialize, utoipa::IntoParams)]
pub(crate) struct VisitorOptions {
    /// The browser's IANA time zone, e.g. `Europe/Madrid`: program steps and check-ins reach
    /// the end user at their local times.
    time_zone: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/public/coaches/{slug}/visitors", tag = "chat",
    params(("slug" = String, Path, description = "The coach's public slug"), VisitorOptions),
    responses(
        (status = 201, description = "A visitor token for this coach", body = NewVisitor),
        (status = 403, description = "The browser's origin is not allowed by the creator", body = ErrorBody),
        (status = 404, description = "No coach has this slug", body = ErrorBody),
        (status = 429, description = "Too many new visitors from this address", body = ErrorBody),
    ))]
pub(crate) async fn create_visitor(
    State(state): State<AppState>,
    Client(context): Client,
    Path(slug): Path<String>,
    Query(options): Query<VisitorOptions>,
    headers: axum::http::HeaderMap,
) -> Result<(StatusCode, Json<NewVisitor>), ApiError> {
    // A zone the browser got wrong is ignored rather than refused: the chat must open.
    let time_zone = options
        .time_zone
        .filter(|z| crate::coaching::schedule::parse_time_zone("time_zone", z).is_ok());
    state.auth.limiters.check_new_visitor(context.ip)?;
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (tenant_id, coach) = state.db.call(move |c| coach::by_slug(c, &slug)).await?;
    state.auth.limiters.check_public(&tenant_id)?;
    let tenant = tenant_id.clone();
    let (visitor_id, token) = state
        .db
        .call(move |c| {
            conversations::create_visitor(c, &tenant, origin.as_deref(), time_zone.as_deref())
                .map_err(ChatError::from)
        })
        .await?;
    let visitor = NewVisitor {
        visitor_id,
        token,
        coach: PublicCoach::new(coach, state.chat.hub().is_staff_online(&tenant_id)),
    };
    Ok((StatusCode::CREATED, Json(visitor)))
}

#[utoipa::path(post, path = "/api/v1/conversations", tag = "chat",
    responses(
        (status = 201, description = "A new conversation (a test conversation for staff)", body = Conversation),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn create_conversation(
    State(state): State<AppState>,
    Caller(speaker, _): Caller,
) -> Result<(StatusCode, Json<Conversation>), ApiError> {
    let conversation = state.chat.start_conversation(&speaker).await?;
    Ok((StatusCode::CREATED, Json(conversation)))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct MessageList {
    messages: Vec<Message>,
}

#[utoipa::path(get, path = "/api/v1/conversations/{id}/messages", tag = "chat",
    params(("id" = String, Path, description = "Conversation id")),
    responses(
        (status = 200, description = "Oldest first", body = MessageList),
        (status = 404, description = "No such conversation for this caller", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn list_messages(
    State(state): State<AppState>,
    Caller(speaker, _): Caller,
    Path(id): Path<String>,
) -> Result<Json<MessageList>, ApiError> {
    let messages = state
        .db
        .call(move |c| {
            conversations::open(c, &speaker, &id, Access::Read)?;
            let messages = conversations::messages(c, speaker.scope(), &id)?;
            Ok::<_, ChatError>(messages.into_iter().map(|m| m.seen_by(&speaker)).collect())
        })
        .await?;
    Ok(Json(MessageList { messages }))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct SendMessage {
    content: String,
    /// Server-Sent Events (`delta` events, then `message` with the stored answer) [default:
    /// true]; false answers with the stored message as JSON.
    #[serde(default = "yes")]
    stream: bool,
    /// Chosen by the client, unique in the conversation: a message resent with the same id
    /// (after a network error) is stored and answered once.
    client_id: Option<String>,
    /// Answer with 202 and the stored question at once; the answer arrives on the
    /// conversation's event stream or live connection [default: false].
    #[serde(default)]
    background: bool,
}

/// One event of a streamed answer (`text/event-stream`).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documents the stream's events; they are written by `delta_event`/`final_event`
pub(crate) struct AnswerEvent {
    /// `delta` (a checked sentence), then `message` (the stored answer), or `error`.
    event: String,
    /// JSON: `{"text": ...}` for `delta`, the stored `Message` for `message`, the error body for
    /// `error`.
    data: String,
}

fn yes() -> bool {
    true
}

#[utoipa::path(post, path = "/api/v1/conversations/{id}/messages", tag = "chat",
    request_body = SendMessage,
    params(("id" = String, Path, description = "Conversation id")),
    responses(
        (status = 200, description = "The answer: JSON (`stream: false`) or an event stream of `delta` {text} events and a final `message` event with the stored answer, whose content and citations are authoritative (markers are aligned and a low-confidence answer is replaced by the fallback after generation). A resend of a known `client_id` gets the stored message it had, or the answer when a crash had cut it off.", content((Message = "application/json"), (AnswerEvent = "text/event-stream"))),
        (status = 201, description = "Stored, and nobody answers automatically: a person took the conversation over, the message is a staff reply, or it asked for a person", body = Message),
        (status = 202, description = "`background: true`: the stored question; the answer follows on the conversation's events", body = Message),
        (status = 404, description = "No such conversation for this caller", body = ErrorBody),
        (status = 422, description = "Empty or too long", body = ErrorBody),
        (status = 429, description = "The model's queue is full; retry after Retry-After", body = ErrorBody),
        (status = 503, description = "No chat model is installed; the message names the command", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn send_message(
    State(state): State<AppState>,
    Caller(speaker, _): Caller,
    Path(id): Path<String>,
    Json(input): Json<SendMessage>,
) -> Result<Response, ApiError> {
    let chat = state.chat.clone();
    let asked = chat
        .ask(&speaker, &id, &input.content, input.client_id.as_deref())
        .await?;
    // The coaching engine answered (a check-in recorded, an opt-out confirmed).
    if let Some(reply) = asked.reply {
        let reply = reply.seen_by(&speaker);
        if !input.stream {
            return Ok(Json(reply).into_response());
        }
        let events =
            futures_util::stream::iter([delta_event(&reply.content), final_event(Ok(reply))]);
        return Ok(sse_until_shutdown(events, state.shutdown.clone()).into_response());
    }
    let Some(pending) = asked.pending else {
        let status = if asked.duplicate {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        return Ok((status, Json(asked.message)).into_response());
    };
    if input.background {
        chat.answer_in_background(speaker, id, pending).await;
        return Ok((StatusCode::ACCEPTED, Json(asked.message)).into_response());
    }
    let prepared = chat.start_answer(speaker.clone(), &id, pending).await?;
    let delivery = chat.deliver(prepared);
    if !input.stream {
        let message = stored_message(delivery).await?;
        return Ok(Json(message.seen_by(&speaker)).into_response());
    }
    // Each delta is a checked sentence: what a client shows is never taken back.
    let events = delivery.map(move |item| match item {
        Delivered::Text(text) => delta_event(&text),
        Delivered::Done(stored) => final_event((*stored).map(|m| m.seen_by(&speaker))),
    });
    // A held sentence may write nothing for seconds: a comment every second finds a client
    // that left, so the model stops instead of generating for nobody.
    let keep_alive = KeepAlive::new().interval(Duration::from_secs(1));
    Ok(sse_until_shutdown(events, state.shutdown.clone())
        .keep_alive(keep_alive)
        .into_response())
}

/// Waits for the end of a delivery.
async fn stored_message(
    delivery: impl futures_util::Stream<Item = Delivered>,
) -> Result<Message, ChatError> {
    let mut delivery = std::pin::pin!(delivery);
    while let Some(item) = delivery.next().await {
        if let Delivered::Done(stored) = item {
            return *stored;
        }
    }
    Err(ChatError::Invalid(
        "the answer ended before it was stored".into(),
    ))
}

fn delta_event(text: &str) -> Event {
    Event::default()
        .event("delta")
        .data(serde_json::json!({ "text": text }).to_string())
}

fn final_event(result: Result<Message, ChatError>) -> Event {
    match result {
        Ok(message) => Event::default()
            .event("message")
            .data(serde_json::to_string(&message).expect("messages serialise")),
        Err(error) => {
            let error = ApiError::from(error);
            Event::default().event("error").data(
                serde_json::json!({"error": {"code": error.code.as_str(), "message": error.message}})
                    .to_string(),
            )
        }
    }
}

impl From<ChatError> for ApiError {
    fn from(error: ChatError) -> ApiError {
        match error {
            ChatError::NotFound(message) => ApiError::not_found(message),
            ChatError::Forbidden(message) => ApiError::new(ErrorCode::Forbidden, message),
            ChatError::Unauthorized => ApiError::new(ErrorCode::Unauthorized, error.to_string()),
            ChatError::Suspended => ApiError::new(ErrorCode::TenantSuspended, error.to_string()),
            ChatError::Invalid(message) => ApiError::new(ErrorCode::InvalidRequest, message),
            ChatError::Conflict(message) => ApiError::new(ErrorCode::Conflict, message),
            ChatError::RateLimited(after) => {
                ApiError::new(ErrorCode::RateLimited, error.to_string()).with_retry_after(after)
            }
            ChatError::Db(error) => error.into(),
            ChatError::Knowledge(error) => error.into(),
            ChatError::Inference(error) => error.into(),
        }
    }
}

#[utoipa::path(get, path = "/api/v1/conversations/{id}", tag = "chat",
    params(("id" = String, Path, description = "Conversation id")),
    responses(
        (status = 200, description = "Its state: who is answering, receipts, the newest sequence number", body = Conversation),
        (status = 404, description = "No such conversation for this caller", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn get_conversation(
    State(state): State<AppState>,
    Caller(speaker, _): Caller,
    Path(id): Path<String>,
) -> Result<Json<Conversation>, ApiError> {
    Ok(Json(state.chat.conversation(&speaker, &id).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct TypingInput {
    /// true while the person types; send false when they stop (or it lapses after 10 s).
    active: bool,
}

#[utoipa::path(post, path = "/api/v1/conversations/{id}/typing", tag = "chat",
    request_body = TypingInput,
    params(("id" = String, Path, description = "Conversation id")),
    responses(
        (status = 204, description = "The other side is told"),
        (status = 404, description = "No such conversation for this caller", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn typing(
    State(state): State<AppState>,
    Caller(speaker, _): Caller,
    Path(id): Path<String>,
    Json(input): Json<TypingInput>,
) -> Result<StatusCode, ApiError> {
    state.chat.typing(&speaker, &id, input.active, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct ReceiptInput {
    /// The newest message received or read.
    seq: i64,
    status: ReceiptStatus,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ReceiptOutput {
    /// The caller's side's receipt now (receipts never move back).
    seq: i64,
}

#[utoipa::path(post, path = "/api/v1/conversations/{id}/receipts", tag = "chat",
    request_body = ReceiptInput,
    params(("id" = String, Path, description = "Conversation id")),
    responses(
        (status = 200, description = "Recorded and passed on to the other side", body = ReceiptOutput),
        (status = 404, description = "No such conversation for this caller", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn receipt(
    State(state): State<AppState>,
    Caller(speaker, _): Caller,
    Path(id): Path<String>,
    Json(input): Json<ReceiptInput>,
) -> Result<Json<ReceiptOutput>, ApiError> {
    let seq = state
        .chat
        .receipt(&speaker, &id, input.seq, input.status, None)
        .await?;
    Ok(Json(ReceiptOutput { seq }))
}

#[utoipa::path(post, path = "/api/v1/conversations/{id}/handoff", tag = "chat",
    params(("id" = String, Path, description = "Conversation id")),
    responses(
        (status = 200, description = "The end user's request for a person is in the staff inbox", body = Conversation),
        (status = 404, description = "No such conversation for this caller", body = ErrorBody),
        (status = 422, description = "Not an end user's conversation", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn request_person(
    State(state): State<AppState>,
    Caller(speaker, _): Caller,
    Path(id): Path<String>,
) -> Result<Json<Conversation>, ApiError> {
    Ok(Json(state.chat.request_person(&speaker, &id).await?))
}

#[utoipa::path(post, path = "/api/v1/conversations/{id}/takeover", tag = "chat",
    params(("id" = String, Path, description = "Conversation id")),
    responses(
        (status = 200, description = "The caller answers the conversation now; the coach is silent and the end user sees who joined", body = Conversation),
        (status = 403, description = "Needs a signed-in member with the coach role or above", body = ErrorBody),
        (status = 404, description = "No such conversation in this tenant", body = ErrorBody),
        (status = 409, description = "Someone else is handling it", body = ErrorBody),
        (status = 422, description = "A test conversation (the team's own) does not change hands", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn take_over(
    State(state): State<AppState>,
    Caller(speaker, principal): Caller,
    Path(id): Path<String>,
) -> Result<Json<Conversation>, ApiError> {
    change_hands(state, speaker, principal, id, Hands::Person).await
}

async fn change_hands(
    state: AppState,
    speaker: Speaker,
    principal: Option<Principal>,
    id: String,
    hands: Hands,
) -> Result<Json<Conversation>, ApiError> {
    let (member, user) = answering_member(principal.as_ref())?;
    let conversation = state
        .chat
        .hand_to(
            speaker.scope(),
            user,
            member.role >= Role::Admin,
            &id,
            hands,
        )
        .await?;
    Ok(Json(conversation))
}

#[utoipa::path(post, path = "/api/v1/conversations/{id}/handback", tag = "chat",
    params(("id" = String, Path, description = "Conversation id")),
    responses(
        (status = 200, description = "The coach answers the conversation again", body = Conversation),
        (status = 403, description = "Needs a signed-in member with the coach role or above", body = ErrorBody),
        (status = 404, description = "No such conversation in this tenant", body = ErrorBody),
        (status = 409, description = "The coach is already answering it", body = ErrorBody),
        (status = 422, description = "A test conversation (the team's own) does not change hands", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn hand_back(
    State(state): State<AppState>,
    Caller(speaker, principal): Caller,
    Path(id): Path<String>,
) -> Result<Json<Conversation>, ApiError> {
    change_hands(state, speaker, principal, id, Hands::Coach).await
}

#[derive(Deserialize, utoipa::IntoParams)]
pub(crate) struct InboxParams {
    /// `all` (default), `needs_human` (asked for a person, nobody took over), `human`, `ai`,
    /// `low_confidence` (a fallback or an answer under 0.5).
    filter: Option<InboxFilter>,
    /// One end user's conversations (their `visitor_id`).
    visitor: Option<String>,
    /// Active on or after this day, `YYYY-MM-DD`.
    since: Option<String>,
    /// 1 to 200 [default: 50].
    limit: Option<u32>,
    offset: Option<u32>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Inbox {
    conversations: Vec<InboxItem>,
}

#[utoipa::path(get, path = "/api/v1/inbox", tag = "chat", params(InboxParams),
    responses(
        (status = 200, description = "End users' conversations: those waiting for a person first, then the most recently active", body = Inbox),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn inbox(
    State(state): State<AppState>,
    auth: Authenticated,
    Query(query): Query<InboxParams>,
) -> Result<Json<Inbox>, ApiError> {
    let conversations = state
        .chat
        .inbox(
            auth.scope(),
            InboxQuery {
                filter: query.filter.unwrap_or_default(),
                visitor_id: query.visitor,
                since: query.since,
                limit: query.limit.unwrap_or(50),
                offset: query.offset.unwrap_or(0),
            },
        )
        .await?;
    Ok(Json(Inbox { conversations }))
}
