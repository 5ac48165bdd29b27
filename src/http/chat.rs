//! Chat routes: the coach's settings, visitor tokens, conversations and answers (JSON or
//! Server-Sent Events), knowledge gaps.

use axum::Json;
use axum::Router;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::{StreamExt, stream};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::{AdminRole, Authenticated, Client, Member};
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::streams::sse_until_shutdown;
use crate::chat::answer::{Prepared, Reply};
use crate::chat::coach::{self, Coach, CoachUpdate};
use crate::chat::conversations::{
    self, Access, Conversation, KnowledgeGap, Message, Speaker, VISITOR_TOKEN_PREFIX,
};
use crate::chat::{Chat, ChatError};
use crate::inference::chat_engine::{ChatEvent, ChatStream};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/coach", get(get_coach).patch(update_coach))
        .route(
            "/api/v1/public/coaches/{slug}/visitors",
            post(create_visitor),
        )
        .route("/api/v1/conversations", post(create_conversation))
        .route(
            "/api/v1/conversations/{id}/messages",
            get(list_messages).post(send_message),
        )
        .route("/api/v1/knowledge-gaps", get(knowledge_gaps))
}

/// Whoever calls a conversation route: a visitor (token `vis_...`) or a member of the tenant
/// (access token or API key).
pub struct Caller(pub Speaker);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or_default()
            .to_string();
        if token.starts_with(VISITOR_TOKEN_PREFIX) {
            let speaker = state
                .db
                .call(move |c| conversations::authenticate_visitor(c, &token))
                .await?;
            state
                .auth
                .limiters
                .check_tenant(speaker.scope().tenant_id())?;
            return Ok(Caller(speaker));
        }
        let member = Authenticated::<Member>::from_request_parts(parts, state).await?;
        Ok(Caller(Speaker::Staff {
            scope: member.scope().clone(),
            user_id: member.principal.user_id.clone(),
        }))
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

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct PublicCoach {
    slug: String,
    name: String,
    greeting: String,
}

#[utoipa::path(post, path = "/api/v1/public/coaches/{slug}/visitors", tag = "chat",
    params(("slug" = String, Path, description = "The coach's public slug")),
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
    headers: axum::http::HeaderMap,
) -> Result<(StatusCode, Json<NewVisitor>), ApiError> {
    state.auth.limiters.check_auth(context.ip, None)?;
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let visitor = state
        .db
        .call(move |c| {
            let (tenant_id, coach) = coach::by_slug(c, &slug)?;
            let (visitor_id, token) =
                conversations::create_visitor(c, &tenant_id, origin.as_deref())?;
            Ok::<_, ChatError>(NewVisitor {
                visitor_id,
                token,
                coach: PublicCoach {
                    slug: coach.slug,
                    name: coach.name,
                    greeting: coach.greeting,
                },
            })
        })
        .await?;
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
    Caller(speaker): Caller,
) -> Result<(StatusCode, Json<Conversation>), ApiError> {
    let conversation = state
        .db
        .call(move |c| conversations::create(c, &speaker).map_err(ChatError::from))
        .await?;
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
    Caller(speaker): Caller,
    Path(id): Path<String>,
) -> Result<Json<MessageList>, ApiError> {
    let messages = state
        .db
        .call(move |c| {
            conversations::open(c, &speaker, &id, Access::Read)?;
            Ok::<_, ChatError>(conversations::messages(c, speaker.scope(), &id)?)
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
}

fn yes() -> bool {
    true
}

#[utoipa::path(post, path = "/api/v1/conversations/{id}/messages", tag = "chat",
    request_body = SendMessage,
    params(("id" = String, Path, description = "Conversation id")),
    responses(
        (status = 200, description = "The answer: JSON (`stream: false`) or an event stream of `delta` {text} events and a final `message` event with the stored answer, whose content and citations are authoritative (markers are aligned and a low-confidence answer is replaced by the fallback after generation)", body = Message),
        (status = 404, description = "No such conversation for this caller", body = ErrorBody),
        (status = 422, description = "Empty or too long", body = ErrorBody),
        (status = 429, description = "The model's queue is full; retry after Retry-After", body = ErrorBody),
        (status = 503, description = "No chat model is installed; the message names the command", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn send_message(
    State(state): State<AppState>,
    Caller(speaker): Caller,
    Path(id): Path<String>,
    Json(input): Json<SendMessage>,
) -> Result<Response, ApiError> {
    let chat = state.chat.clone();
    let mut prepared = chat.prepare(speaker, &id, &input.content).await?;
    let reply = std::mem::replace(&mut prepared.reply, Reply::Fallback);
    if !input.stream {
        let generated = match reply {
            Reply::Fallback => None,
            Reply::Generate(stream) => Some(stream.collect().await?),
        };
        let message = chat.finish(prepared, generated).await?;
        return Ok(Json(message).into_response());
    }
    let events = answer_events(chat, prepared, reply);
    Ok(sse_until_shutdown(events, state.shutdown.clone()).into_response())
}

/// Where a streamed answer is.
enum Phase {
    Fallback(Box<Prepared>),
    Generating {
        prepared: Box<Prepared>,
        stream: ChatStream,
        text: String,
    },
    Finished,
}

/// The answer as events. Generation is driven by this stream, so a client that disconnects
/// (dropping it) stops the model at its next token.
fn answer_events(
    chat: Chat,
    prepared: Prepared,
    reply: Reply,
) -> impl futures_util::Stream<Item = Event> + Send + 'static {
    let start = match reply {
        Reply::Fallback => Phase::Fallback(Box::new(prepared)),
        Reply::Generate(stream) => Phase::Generating {
            prepared: Box::new(prepared),
            stream,
            text: String::new(),
        },
    };
    stream::unfold((start, chat), |(phase, chat)| async move {
        match phase {
            Phase::Finished => None,
            Phase::Fallback(prepared) => {
                let text = Chat::fallback_text(&prepared.coach);
                let last = final_event(chat.finish(*prepared, None).await);
                Some((vec![delta_event(&text), last], (Phase::Finished, chat)))
            }
            Phase::Generating {
                prepared,
                mut stream,
                mut text,
            } => match stream.next().await {
                Some(Ok(ChatEvent::Delta(delta))) => {
                    text.push_str(&delta);
                    let event = delta_event(&delta);
                    let phase = Phase::Generating {
                        prepared,
                        stream,
                        text,
                    };
                    Some((vec![event], (phase, chat)))
                }
                Some(Ok(ChatEvent::Done(summary))) => {
                    let last = final_event(chat.finish(*prepared, Some((text, summary))).await);
                    Some((vec![last], (Phase::Finished, chat)))
                }
                Some(Err(error)) => {
                    let last = final_event(Err(ChatError::from(error)));
                    Some((vec![last], (Phase::Finished, chat)))
                }
                None => None,
            },
        }
    })
    .flat_map(stream::iter)
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

#[derive(Deserialize, utoipa::IntoParams)]
pub(crate) struct GapQuery {
    /// Most recent first, 1 to 500 [default: 100].
    limit: Option<u32>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct GapList {
    gaps: Vec<KnowledgeGap>,
}

#[utoipa::path(get, path = "/api/v1/knowledge-gaps", tag = "chat", params(GapQuery),
    responses(
        (status = 200, description = "Questions the coach could not answer from the knowledge base", body = GapList),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn knowledge_gaps(
    State(state): State<AppState>,
    auth: Authenticated,
    Query(query): Query<GapQuery>,
) -> Result<Json<GapList>, ApiError> {
    let scope = auth.scope().clone();
    let limit = query.limit.unwrap_or(100);
    let gaps = state
        .db
        .call(move |c| conversations::gaps(c, &scope, limit).map_err(ChatError::from))
        .await?;
    Ok(Json(GapList { gaps }))
}

impl From<ChatError> for ApiError {
    fn from(error: ChatError) -> ApiError {
        match error {
            ChatError::NotFound(message) => ApiError::not_found(message),
            ChatError::Forbidden(message) => ApiError::new(ErrorCode::Forbidden, message),
            ChatError::Unauthorized => ApiError::new(ErrorCode::Unauthorized, error.to_string()),
            ChatError::Invalid(message) => ApiError::new(ErrorCode::InvalidRequest, message),
            ChatError::Conflict(message) => ApiError::new(ErrorCode::Conflict, message),
            ChatError::Db(error) => error.into(),
            ChatError::Knowledge(error) => error.into(),
            ChatError::Inference(error) => error.into(),
        }
    }
}
