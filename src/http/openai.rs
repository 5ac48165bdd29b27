//! The OpenAI-compatible API (`/v1`), for the tools and scripts creators already use:
//! - `model: "coach"` answers as the tenant's coach, exactly as on the chat page (retrieval,
//!   sentences checked as they are delivered, citations, the fallback), with the citations in a
//!   `companero` extension field that OpenAI clients ignore;
//! - the chat model by its id answers the messages as given, without the knowledge base;
//! - `/v1/embeddings` runs the server's embedder.
//!
//! Callers authenticate as on the rest of the API (an API key, or a member's access token), and
//! the tenant's rate limit and share of the model's queue apply. Errors on these routes use
//! OpenAI's envelope `{"error": {"message", "type", "code", "param"}}` with the same statuses,
//! so SDK retries behave (`Retry-After` on 429 and 503).

use std::convert::Infallible;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use futures_util::{Stream, StreamExt, stream};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::AppState;
use super::auth::Authenticated;
use super::error::{ApiError, ErrorCode};
use super::route_table::Routes;
use crate::auth::Principal;
use crate::auth::api_usage::{self, Endpoint};
use crate::chat::ChatError;
use crate::chat::answer::ANSWER_DEADLINE;
use crate::chat::completions::{Side, Turn};
use crate::chat::conversations::{Message, Speaker};
use crate::chat::delivery::Delivered;
use crate::inference::InferenceError;
use crate::inference::chat_engine::{ChatEvent, ChatRequest};
use crate::inference::chat_template::{ChatMessage, Role};
use crate::inference::embed::EmbedKind;
use crate::inference::generate::{FinishReason, GenerationSettings, SamplingOverrides};

/// The model name that answers as the tenant's coach, grounded in its knowledge base.
pub const COACH_MODEL: &str = "coach";
/// Texts one embeddings request may carry.
const MAX_EMBEDDING_INPUTS: usize = 256;
/// OpenAI's limit on stop sequences.
const MAX_STOP: usize = 4;

pub fn routes() -> Routes {
    Routes::new()
        .route("/v1/models", get(list_models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(embeddings))
}

// ---------------------------------------------------------------------------------------------
// Errors in OpenAI's shape

/// An error as OpenAI's API gives it: the status and code of our catalogue, and the request
/// field at fault.
#[derive(Debug)]
pub struct OpenAiError {
    error: ApiError,
    param: Option<String>,
    /// OpenAI's own code where one exists for the situation (`model_not_found`).
    code: Option<&'static str>,
}

impl OpenAiError {
    /// 400: the field `param` is wrong; `message` says how.
    fn invalid(param: impl Into<String>, message: impl Into<String>) -> OpenAiError {
        OpenAiError {
            error: ApiError::new(ErrorCode::InvalidField, message),
            param: Some(param.into()),
            code: None,
        }
    }

    fn model_not_found(model: &str, hint: String) -> OpenAiError {
        OpenAiError {
            error: ApiError::not_found(format!("the model `{model}` does not exist here; {hint}")),
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }
}

impl From<ApiError> for OpenAiError {
    fn from(error: ApiError) -> OpenAiError {
        OpenAiError {
            error,
            param: None,
            code: None,
        }
    }
}

impl From<ChatError> for OpenAiError {
    fn from(error: ChatError) -> OpenAiError {
        ApiError::from(error).into()
    }
}

impl From<InferenceError> for OpenAiError {
    fn from(error: InferenceError) -> OpenAiError {
        ApiError::from(error).into()
    }
}

/// OpenAI's `type` for a status.
fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        s if s >= 500 => "server_error",
        _ => "invalid_request_error",
    }
}

fn error_body(status: StatusCode, message: &str, code: &str, param: Option<&str>) -> Value {
    json!({"error": {
        "message": message,
        "type": error_type(status),
        "code": code,
        "param": param,
    }})
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let status = self.error.code.status();
        let body = error_body(
            status,
            &self.error.message,
            self.code.unwrap_or(self.error.code.as_str()),
            self.param.as_deref(),
        );
        // Our own response first, for its status and headers (`Retry-After`, `WWW-Authenticate`).
        let (parts, _) = self.error.into_response().into_parts();
        with_json_body(parts, &body)
    }
}

fn with_json_body(mut parts: axum::http::response::Parts, body: &Value) -> Response {
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body.to_string()))
}

/// Middleware: an error answered on `/v1/...` by anything but these handlers (authentication,
/// rate limits, the request deadline, body limits, unknown paths) gets OpenAI's envelope too.
pub async fn openai_errors(request: Request, next: Next) -> Response {
    let openai = request.uri().path().starts_with("/v1/");
    let response = next.run(request).await;
    let status = response.status();
    if !openai || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let ours: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if ours["error"]["type"].is_string() {
        return Response::from_parts(parts, Body::from(bytes));
    }
    let message = ours["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
    let code = ours["error"]["code"]
        .as_str()
        .unwrap_or(ErrorCode::for_status(status).as_str())
        .to_string();
    with_json_body(parts, &error_body(status, &message, &code, None))
}

/// Parses a JSON body, naming the field at fault (`messages[0].role`) when it does not fit.
fn parse_body<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, OpenAiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let message = error.into_inner().to_string();
        if path == "." {
            // serde names a missing top-level field only in its message; OpenAI's clients
            // expect it in `param`.
            match missing_field(&message) {
                Some(field) => OpenAiError::invalid(field.to_owned(), message.clone()),
                None => OpenAiError::from(ApiError::new(
                    ErrorCode::BadRequest,
                    format!("the body must be a JSON object: {message}"),
                )),
            }
        } else {
            OpenAiError::invalid(path.clone(), format!("{path}: {message}"))
        }
    })
}

/// The field serde's "missing field `name`" message names.
fn missing_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next()
}

// ---------------------------------------------------------------------------------------------
// Models

#[utoipa::path(get, path = "/v1/models", tag = "openai",
    responses(
        (status = 200, description = "OpenAI's model list: `coach` (this tenant's coach, grounded in its knowledge base), the chat model and the embedder by their ids, when they are loaded", body = Object),
        (status = 401, description = "No valid API key or access token (OpenAI's error envelope)", body = Object),
    ),
    security(("bearer" = [])))]
pub(crate) async fn list_models(
    State(state): State<AppState>,
    _caller: Authenticated,
) -> Json<Value> {
    let created = unix_time(SystemTime::now() - state.started_at.elapsed());
    let model = |id: String, owned_by: &str| json!({"id": id, "object": "model", "created": created, "owned_by": owned_by});
    let mut data = vec![model(COACH_MODEL.into(), "companero")];
    if let Ok(chat) = state.inference.chat() {
        data.push(model(chat.info().id(), "companero"));
    }
    if let Ok(embedder) = state.inference.embedder() {
        data.push(model(embedder.info().name.clone(), "companero"));
    }
    Json(json!({"object": "list", "data": data}))
}

fn unix_time(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

// ---------------------------------------------------------------------------------------------
// Chat completions

/// OpenAI's chat completion request. Fields it has and this server does not use (`user`,
/// `metadata`, penalties...) are accepted and ignored; tools, several choices and structured
/// output are refused with the field named.
#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct CompletionRequest {
    /// `coach` (grounded in the knowledge base, with citations) or the chat model's id from
    /// `/v1/models` (the messages as given, no knowledge base).
    model: String,
    /// The conversation. For `coach`, system messages are left out (the coach speaks with the
    /// persona its creator set) and the last message must be the user's.
    messages: Vec<InputMessage>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    /// A string or up to four strings.
    #[schema(value_type = Option<Object>)]
    stop: Option<Stop>,
    seed: Option<i64>,
    /// Must be 1.
    n: Option<u32>,
    /// Not supported: a request that sets it is refused.
    #[schema(value_type = Option<Object>)]
    tools: Option<Value>,
    #[schema(value_type = Option<Object>)]
    tool_choice: Option<Value>,
    #[schema(value_type = Option<Object>)]
    functions: Option<Value>,
    #[schema(value_type = Option<Object>)]
    function_call: Option<Value>,
    /// Only `{"type": "text"}`.
    #[schema(value_type = Option<Object>)]
    response_format: Option<Value>,
    logprobs: Option<bool>,
}

#[derive(Deserialize, utoipa::ToSchema)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize, utoipa::ToSchema)]
struct InputMessage {
    /// `system`, `developer`, `user` or `assistant`.
    role: String,
    /// A string, or an array of `{"type": "text", "text"}` parts.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    content: Option<Content>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

/// A completion request after its checks.
struct Completion {
    model: String,
    messages: Vec<ChatMessage>,
    stream: bool,
    include_usage: bool,
    sampling: SamplingOverrides,
}

impl CompletionRequest {
    fn check(self) -> Result<Completion, OpenAiError> {
        let unsupported = [
            ("tools", &self.tools),
            ("tool_choice", &self.tool_choice),
            ("functions", &self.functions),
            ("function_call", &self.function_call),
        ];
        for (field, value) in unsupported {
            let harmless = match value {
                None | Some(Value::Null) => true,
                Some(Value::Array(items)) => items.is_empty(),
                Some(Value::String(choice)) => choice == "none",
                Some(_) => false,
            };
            if !harmless {
                return Err(OpenAiError::invalid(
                    field,
                    format!(
                        "tools and function calling are not supported here; leave out `{field}`"
                    ),
                ));
            }
        }
        if self.n.is_some_and(|n| n != 1) {
            return Err(OpenAiError::invalid(
                "n",
                "only one choice is generated: n must be 1",
            ));
        }
        if let Some(format) = &self.response_format
            && format["type"] != "text"
        {
            return Err(OpenAiError::invalid(
                "response_format",
                "only {\"type\": \"text\"} is supported",
            ));
        }
        if self.logprobs == Some(true) {
            return Err(OpenAiError::invalid(
                "logprobs",
                "log probabilities are not available",
            ));
        }
        if self.messages.is_empty() {
            return Err(OpenAiError::invalid(
                "messages",
                "messages must not be empty",
            ));
        }
        let mut messages = Vec::with_capacity(self.messages.len());
        for (i, message) in self.messages.into_iter().enumerate() {
            let role = match message.role.as_str() {
                "system" | "developer" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                other => {
                    return Err(OpenAiError::invalid(
                        format!("messages[{i}].role"),
                        format!(
                            "the role `{other}` is not supported; use system, developer, user or assistant"
                        ),
                    ));
                }
            };
            let content = match message.content {
                None => String::new(),
                Some(Content::Text(text)) => text,
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for (j, part) in parts.into_iter().enumerate() {
                        match (part.kind.as_str(), part.text) {
                            ("text", Some(piece)) => text.push_str(&piece),
                            _ => {
                                return Err(OpenAiError::invalid(
                                    format!("messages[{i}].content[{j}]"),
                                    "only text parts (`{\"type\": \"text\", \"text\": ...}`) are supported",
                                ));
                            }
                        }
                    }
                    text
                }
            };
            messages.push(ChatMessage::new(role, content));
        }
        let max_tokens = self.max_completion_tokens.or(self.max_tokens);
        let max_field = if self.max_completion_tokens.is_some() {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        if max_tokens == Some(0) {
            return Err(OpenAiError::invalid(
                max_field,
                format!("{max_field} must be at least 1"),
            ));
        }
        if let Some(t) = self.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(OpenAiError::invalid(
                "temperature",
                "temperature must be between 0 and 2",
            ));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(OpenAiError::invalid(
                "top_p",
                "top_p must be above 0 and at most 1",
            ));
        }
        let stop = match self.stop {
            None => Vec::new(),
            Some(Stop::One(text)) => vec![text],
            Some(Stop::Many(texts)) => texts,
        };
        if stop.len() > MAX_STOP || stop.iter().any(String::is_empty) {
            return Err(OpenAiError::invalid(
                "stop",
                format!("stop takes 1 to {MAX_STOP} non-empty strings"),
            ));
        }
        Ok(Completion {
            model: self.model,
            messages,
            stream: self.stream,
            include_usage: self.stream_options.is_some_and(|o| o.include_usage),
            sampling: SamplingOverrides {
                max_tokens: max_tokens.map(|n| n as usize),
                temperature: self.temperature,
                top_p: self.top_p,
                // Any 64-bit seed: OpenAI's are signed, the sampler's unsigned.
                seed: self.seed.map(|s| s as u64),
                stop,
            },
        })
    }
}

#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai",
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "OpenAI's `chat.completion` object, or with `stream: true` an event stream of `chat.completion.chunk` objects ending with `data: [DONE]`. For `coach`, a top-level `companero: {citations, confidence, fallback}` comes with the completion and on the last chunk.", body = Object),
        (status = 400, description = "A field OpenAI has and this server does not support (tools, n > 1), or a bad value; `param` names it", body = Object),
        (status = 401, description = "No valid API key or access token", body = Object),
        (status = 404, description = "No such model (`model_not_found`)", body = Object),
        (status = 429, description = "Rate limit or a full model queue; retry after Retry-After", body = Object),
        (status = 503, description = "The chat model is not loaded (`model_unavailable`)", body = Object),
    ),
    security(("bearer" = [])))]
pub(crate) async fn chat_completions(
    State(state): State<AppState>,
    caller: Authenticated,
    body: Bytes,
) -> Result<Response, OpenAiError> {
    let completion = parse_body::<CompletionRequest>(&body)?.check()?;
    let principal = caller.principal;
    if completion.model == COACH_MODEL {
        coach_completion(state, principal, completion).await
    } else {
        model_completion(state, principal, completion).await
    }
}

/// The identity and wording shared by a completion's object and its chunks.
#[derive(Clone)]
struct Reply {
    id: String,
    created: u64,
    model: String,
}

impl Reply {
    fn new(model: &str) -> Reply {
        Reply {
            id: format!("chatcmpl-{}", crate::auth::new_id().replace('-', "")),
            created: unix_time(SystemTime::now()),
            model: model.to_string(),
        }
    }

    fn whole(&self, content: &str, finish_reason: &str, usage: Value) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": null},
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
            "usage": usage,
        })
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        })
    }

    /// The chunk that opens a stream: the assistant's role, no text yet.
    fn opening(&self) -> Event {
        data(&self.chunk(json!({"role": "assistant", "content": ""}), None))
    }

    fn text(&self, text: &str) -> Event {
        data(&self.chunk(json!({"content": text}), None))
    }

    /// The chunks that end a stream: the finish reason, then (when asked for) the usage in a
    /// chunk without choices, as OpenAI sends it; `extension` goes on the last one.
    fn closing(
        &self,
        finish_reason: &str,
        usage: Option<Value>,
        extension: Option<Value>,
    ) -> Vec<Event> {
        let mut finish = self.chunk(json!({}), Some(finish_reason));
        let mut last = usage.map(|usage| {
            let mut chunk = self.chunk(json!({}), None);
            chunk["choices"] = json!([]);
            chunk["usage"] = usage;
            chunk
        });
        if let Some(extension) = extension {
            last.as_mut().unwrap_or(&mut finish)["companero"] = extension;
        }
        let mut events = vec![data(&finish)];
        events.extend(last.as_ref().map(data));
        events.push(Event::default().data("[DONE]"));
        events
    }
}

fn data(value: &Value) -> Event {
    Event::default().data(value.to_string())
}

fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

/// An error after the stream began, as OpenAI streams one (the SDKs raise it).
fn error_event(error: OpenAiError) -> Event {
    let status = error.error.code.status();
    data(&error_body(
        status,
        &error.error.message,
        error.code.unwrap_or(error.error.code.as_str()),
        error.param.as_deref(),
    ))
}

/// `events` as an event stream that ends with an error chunk when the server shuts down, and
/// writes a comment every second, so that a client that left is noticed while sentences are
/// held and the model stops.
fn event_stream(
    events: impl Stream<Item = Event> + Send + 'static,
    shutdown: CancellationToken,
) -> Response {
    let body = events.take_until(shutdown.clone().cancelled_owned());
    let farewell = stream::once(async move {
        shutdown.is_cancelled().then(|| {
            error_event(
                ApiError::new(
                    ErrorCode::ServiceUnavailable,
                    "the server is shutting down; retry in a moment",
                )
                .into(),
            )
        })
    })
    .filter_map(|event| async move { event });
    Sse::new(body.chain(farewell).map(Ok::<_, Infallible>))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(1)))
        .into_response()
}

/// What the coach's answer says about itself, in the `companero` extension field.
fn grounding(message: &Message) -> Value {
    json!({
        "citations": message.citations,
        "confidence": message.confidence,
        "fallback": message.fallback,
    })
}

/// Token counts and finish reason of the coach's answer (the fallback uses no model).
fn coach_figures(message: &Message) -> (usize, usize, &'static str) {
    let stats = message.stats.as_ref();
    let count = |field: &str| stats.and_then(|s| s[field].as_u64()).unwrap_or_default() as usize;
    let reason = match stats.and_then(|s| s["finish_reason"].as_str()) {
        Some("length") => "length",
        _ => "stop",
    };
    (count("prompt_tokens"), count("completion_tokens"), reason)
}

async fn coach_completion(
    state: AppState,
    principal: Principal,
    completion: Completion,
) -> Result<Response, OpenAiError> {
    let turns = completion
        .messages
        .into_iter()
        .filter_map(|m| {
            let side = match m.role {
                Role::System => return None,
                Role::User => Side::User,
                Role::Assistant => Side::Assistant,
            };
            Some(Turn {
                side,
                text: m.content,
            })
        })
        .collect();
    let speaker = Speaker::Staff {
        scope: principal.scope.clone(),
        user_id: principal.user_id.clone(),
        role: principal.role,
    };
    let prepared = state
        .chat
        .complete(speaker, turns, completion.sampling)
        .await
        .map_err(|error| match error {
            ChatError::Invalid(message) => OpenAiError::invalid("messages", message),
            other => other.into(),
        })?;
    let delivery = state.chat.deliver(prepared);
    let reply = Reply::new(COACH_MODEL);
    let db = state.db.clone();
    if !completion.stream {
        let mut delivery = std::pin::pin!(delivery);
        while let Some(item) = delivery.next().await {
            if let Delivered::Done(answer) = item {
                let message = (*answer)?;
                let (prompt, generated, reason) = coach_figures(&message);
                api_usage::count(
                    &db,
                    &principal,
                    Endpoint::ChatCompletions,
                    prompt,
                    generated,
                )
                .await;
                let mut body = reply.whole(&message.content, reason, usage(prompt, generated));
                body["companero"] = grounding(&message);
                return Ok(Json(body).into_response());
            }
        }
        return Err(ApiError::internal().into());
    }
    let include_usage = completion.include_usage;
    let opening = reply.opening();
    let pieces = delivery.then(move |item| {
        let (reply, db, principal) = (reply.clone(), db.clone(), principal.clone());
        async move {
            match item {
                Delivered::Text(text) => vec![reply.text(&text)],
                Delivered::Done(answer) => match *answer {
                    Ok(message) => {
                        let (prompt, generated, reason) = coach_figures(&message);
                        api_usage::count(
                            &db,
                            &principal,
                            Endpoint::ChatCompletions,
                            prompt,
                            generated,
                        )
                        .await;
                        reply.closing(
                            reason,
                            include_usage.then(|| usage(prompt, generated)),
                            Some(grounding(&message)),
                        )
                    }
                    Err(error) => vec![error_event(error.into())],
                },
            }
        }
    });
    let events = stream::once(async move { vec![opening] })
        .chain(pieces)
        .flat_map(stream::iter);
    Ok(event_stream(events, state.shutdown.clone()))
}

fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop | FinishReason::Cancelled => "stop",
        // A deadline cuts the answer short, as the length limit does.
        FinishReason::Length | FinishReason::Deadline => "length",
    }
}

async fn model_completion(
    state: AppState,
    principal: Principal,
    completion: Completion,
) -> Result<Response, OpenAiError> {
    let engine = state.inference.chat()?;
    let info = engine.info();
    let id = info.id();
    if !completion.model.eq_ignore_ascii_case(&id)
        && !completion.model.eq_ignore_ascii_case(&info.name)
    {
        return Err(OpenAiError::model_not_found(
            &completion.model,
            format!("use `{COACH_MODEL}` or `{id}` (GET /v1/models lists them)"),
        ));
    }
    let mut settings = GenerationSettings::default();
    completion.sampling.apply(&mut settings);
    let generation = engine.chat(
        principal.tenant_id(),
        ChatRequest {
            messages: completion.messages,
            settings,
            deadline: Some(Instant::now() + ANSWER_DEADLINE),
        },
    )?;
    let reply = Reply::new(&completion.model);
    let db = state.db.clone();
    if !completion.stream {
        let (text, summary) = generation.collect().await?;
        let stats = &summary.stats;
        api_usage::count(
            &db,
            &principal,
            Endpoint::ChatCompletions,
            stats.prompt_tokens,
            stats.completion_tokens,
        )
        .await;
        let body = reply.whole(
            &text,
            finish_reason(stats.finish_reason),
            usage(stats.prompt_tokens, stats.completion_tokens),
        );
        return Ok(Json(body).into_response());
    }
    let include_usage = completion.include_usage;
    let opening = reply.opening();
    let pieces = generation.then(move |event| {
        let (reply, db, principal) = (reply.clone(), db.clone(), principal.clone());
        async move {
            match event {
                Ok(ChatEvent::Delta(text)) => vec![reply.text(&text)],
                Ok(ChatEvent::Done(summary)) => {
                    let stats = &summary.stats;
                    api_usage::count(
                        &db,
                        &principal,
                        Endpoint::ChatCompletions,
                        stats.prompt_tokens,
                        stats.completion_tokens,
                    )
                    .await;
                    reply.closing(
                        finish_reason(stats.finish_reason),
                        include_usage.then(|| usage(stats.prompt_tokens, stats.completion_tokens)),
                        None,
                    )
                }
                Err(error) => vec![error_event(error.into())],
            }
        }
    });
    let events = stream::once(async move { vec![opening] })
        .chain(pieces)
        .flat_map(stream::iter);
    Ok(event_stream(events, state.shutdown.clone()))
}

// ---------------------------------------------------------------------------------------------
// Embeddings

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct EmbeddingRequest {
    /// Any name: one embedder serves (GET /v1/models lists it).
    #[allow(dead_code)] // required by OpenAI's protocol, whatever it names
    model: String,
    /// A string or an array of strings (texts longer than the embedder's window are cut).
    #[schema(value_type = Object)]
    input: Input,
    /// `float` (the default) or `base64` (little-endian 32-bit floats).
    encoding_format: Option<String>,
    /// Must equal the embedder's when given.
    dimensions: Option<usize>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    One(String),
    Many(Vec<String>),
}

#[utoipa::path(post, path = "/v1/embeddings", tag = "openai",
    request_body = EmbeddingRequest,
    responses(
        (status = 200, description = "OpenAI's embedding list with `usage`", body = Object),
        (status = 400, description = "Empty input, too many inputs, token arrays, an unknown encoding or other dimensions; `param` names the field", body = Object),
        (status = 401, description = "No valid API key or access token", body = Object),
        (status = 429, description = "Rate limit or a full embedder queue; retry after Retry-After", body = Object),
        (status = 503, description = "The embedder is not loaded (`model_unavailable`)", body = Object),
    ),
    security(("bearer" = [])))]
pub(crate) async fn embeddings(
    State(state): State<AppState>,
    caller: Authenticated,
    body: Bytes,
) -> Result<Json<Value>, OpenAiError> {
    let request: EmbeddingRequest = parse_body(&body).map_err(|error| match error.param {
        // An array of token ids matches neither form of `input`.
        Some(ref param) if param.starts_with("input") => OpenAiError::invalid(
            "input",
            "input must be a string or an array of strings (token arrays are not supported)",
        ),
        _ => error,
    })?;
    let texts = match request.input {
        Input::One(text) => vec![text],
        Input::Many(texts) => texts,
    };
    if texts.is_empty() || texts.len() > MAX_EMBEDDING_INPUTS || texts.iter().any(|t| t.is_empty())
    {
        return Err(OpenAiError::invalid(
            "input",
            format!("input takes 1 to {MAX_EMBEDDING_INPUTS} non-empty texts"),
        ));
    }
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(OpenAiError::invalid(
                "encoding_format",
                format!("encoding_format `{other}` is not known; use float or base64"),
            ));
        }
    };
    let engine = state.inference.embedder()?;
    let info = engine.info();
    if let Some(dimensions) = request.dimensions
        && dimensions != info.dimensions
    {
        return Err(OpenAiError::invalid(
            "dimensions",
            format!(
                "the embedder makes vectors of {} dimensions",
                info.dimensions
            ),
        ));
    }
    let tokens: usize = texts
        .iter()
        .map(|t| engine.tokens().count(t).min(info.max_tokens))
        .sum();
    let vectors = engine
        .embed(caller.principal.tenant_id(), texts, EmbedKind::Document)
        .await?;
    api_usage::count(
        &state.db,
        &caller.principal,
        Endpoint::Embeddings,
        tokens,
        0,
    )
    .await;
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": info.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })))
}
