//! The HTTP layer: the route table, the middleware every request passes through, and the
//! translation between HTTP and the domain. Domain modules never see axum types.

pub mod admin;
pub mod assets;
pub mod auth;
pub mod channels;
pub mod chat;
pub mod coaching;
pub mod cors;
pub mod error;
pub mod health;
pub mod insights;
pub mod knowledge;
pub mod metrics;
pub mod mfa;
pub mod openai;
pub mod openapi;
pub mod pages;
pub mod privacy;
pub mod push;
pub mod realtime;
pub mod request_id;
pub mod route_table;
pub mod streams;
pub mod tls;
pub mod uploads;

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::db::Db;
use crate::inference::runtime::Inference;
use error::{ApiError, ErrorCode};

/// What handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    /// The chat model and the embedder, ready or on their way.
    pub inference: Inference,
    pub auth: auth::AuthState,
    /// Documents, ingestion and search.
    pub knowledge: crate::knowledge::Knowledge,
    /// Conversations and answers.
    pub chat: crate::chat::Chat,
    /// Programs, goals, nudges and test clocks.
    pub coaching: crate::coaching::Coaching,
    /// Telegram (and later WhatsApp): connections, webhooks, delivery.
    pub channels: crate::channels::Channels,
    /// Durable background work.
    pub jobs: crate::jobs::Jobs,
    /// Exports and erasure.
    pub privacy: crate::privacy::Privacy,
    pub metrics: PrometheusHandle,
    /// Cancelled when the server starts shutting down; long-lived streams watch it.
    pub shutdown: CancellationToken,
    /// Keep-alive and idle limits of live connections.
    pub live: crate::config::LiveConfig,
    /// Catalog models the owner pulls from the dashboard.
    pub downloads: crate::inference::downloads::Downloads,
    pub started_at: Instant,
}

/// Limits that the middleware enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
}

/// The route table, top to bottom.
pub fn routes() -> Router<AppState> {
    route_table()
        .into_router()
        // Unknown API paths get a JSON 404, never the HTML fallback page.
        .route("/api", any(api_not_found))
        .route("/api/{*rest}", any(api_not_found))
        .route("/v1/{*rest}", any(api_not_found))
        .fallback(assets::serve)
}

/// Every route of the product, as data (tests enumerate it) and as a router.
pub fn route_table() -> route_table::Routes {
    route_table::Routes::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::render))
        .route("/api/openapi.json", get(openapi::document))
        .route("/docs", get(openapi::docs_page))
        .merge(auth::routes())
        .merge(knowledge::routes())
        .merge(chat::routes())
        .merge(realtime::routes())
        .merge(insights::routes())
        .merge(coaching::routes())
        .merge(channels::routes())
        .merge(push::routes())
        .merge(admin::routes())
        .merge(pages::routes())
        .merge(openai::routes())
        .merge(privacy::routes())
        .merge(mfa::routes())
}

/// The complete application: [`routes`] behind the standard middleware.
pub fn app(state: AppState, limits: Limits) -> Router {
    with_middleware(routes(), state, limits)
}

/// Wraps `routes` in the middleware every request passes through, outermost first:
/// request id → log span → metrics → OpenAI's error envelope on `/v1` → JSON error bodies →
/// panic guard → timeout → body limit.
pub fn with_middleware(routes: Router<AppState>, state: AppState, limits: Limits) -> Router {
    let trace = TraceLayer::new_for_http()
        .make_span_with(|request: &Request| {
            tracing::info_span!(
                "request",
                method = %request.method(),
                path = %request.uri().path(),
                request_id = %request_id::of(request),
            )
        })
        .on_response(DefaultOnResponse::new().level(Level::INFO));
    routes
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(middleware::from_fn(move |request, next| {
            deadline(limits, request, next)
        }))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn(error::ensure_json_errors))
        .layer(middleware::from_fn(openai::openai_errors))
        .layer(middleware::from_fn(metrics::record))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            cors::check_origin,
        ))
        .layer(middleware::from_fn(security_headers))
        .layer(trace)
        .layer(middleware::from_fn(request_id::assign))
        .with_state(state)
}

/// Browser protections on every response, unless a route set its own (the chat page and widget
/// will allow framing by the creator's origins).
async fn security_headers(request: Request, next: middleware::Next) -> Response {
    use axum::http::{HeaderValue, header};
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let defaults = [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "strict-origin-when-cross-origin"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data: https:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
             form-action 'self'",
        ),
    ];
    for (name, value) in defaults {
        headers
            .entry(name)
            .or_insert_with(|| HeaderValue::from_static(value));
    }
    response
}

/// Time to the response head: the request timeout, except for answers given as one JSON
/// document, which may take as long as the model's own deadline for an answer (and a margin
/// for retrieval and storing it), so they are never cut before the model gives up.
async fn deadline(limits: Limits, request: Request, next: middleware::Next) -> Response {
    // Routing has run (this is a router layer), so the route's pattern is known.
    let pattern = (request.method() == axum::http::Method::POST)
        .then(|| request.extensions().get::<axum::extract::MatchedPath>())
        .flatten()
        .map(|path| path.as_str().to_string())
        .unwrap_or_default();
    // Advancing a test clock runs every job due by then, however many: it has no deadline.
    if pattern == "/api/v1/test-clocks/{id}/advance" {
        return next.run(request).await;
    }
    let answers =
        pattern == "/api/v1/conversations/{id}/messages" || pattern == "/v1/chat/completions";
    let limit = if answers {
        limits
            .request_timeout
            .max(crate::chat::answer::ANSWER_DEADLINE + Duration::from_secs(30))
    } else {
        limits.request_timeout
    };
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            ErrorCode::Timeout,
            format!("the request did not finish within {} s", limit.as_secs()),
        )
        .into_response(),
    }
}

async fn api_not_found(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "no API route {} {}",
        request.method(),
        request.uri().path()
    ))
}

fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %message, "handler panicked");
    ApiError::internal().into_response()
}
