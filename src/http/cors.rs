//! Cross-origin rules for the chat API. The chat widget runs on the creator's website, so a
//! browser may call the public coach routes (`/api/v1/public/coaches/{slug}/...`) and, with a
//! token, the conversation routes and the end user's own (`/api/v1/public/me...`) from the
//! origins the creator allowed, and from no other.
//! Requests without an `Origin` (servers, curl) and same-origin requests (the served chat page,
//! the dashboard) pass.
//!
//! Public routes are checked here, by slug. Token routes cannot be: the tenant is known
//! only from the token, which a preflight does not carry. Their preflights are answered for
//! any origin, and the `Caller` extractor refuses the real request from an origin the token's
//! tenant did not allow ([`check_caller_origin`]).

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::{ApiError, ErrorCode};
use crate::auth::{TenantScope, tenant};
use crate::db::DbError;

const PUBLIC_PREFIX: &str = "/api/v1/public/coaches/";
/// Routes a widget calls with its visitor token, whose tenant the token names.
const TOKEN_PREFIXES: [&str; 2] = ["/api/v1/conversations", "/api/v1/public/me"];

/// The `Origin` of a cross-origin browser request; `None` for same-origin and non-browser ones.
pub fn foreign_origin(headers: &HeaderMap) -> Option<String> {
    let origin = headers.get(header::ORIGIN)?.to_str().ok()?;
    (!is_same_origin(origin, headers.get(header::HOST))).then(|| origin.to_string())
}

/// Refuses a cross-origin browser request (`origin`, from [`foreign_origin`]) whose origin the
/// tenant has not allowed.
pub async fn check_caller_origin(
    state: &AppState,
    tenant_id: &str,
    origin: Option<&str>,
) -> Result<(), ApiError> {
    let Some(origin) = origin else {
        return Ok(());
    };
    let scope = TenantScope::new(tenant_id.to_string());
    let settings = state.db.call(move |c| tenant::get(c, &scope)).await?;
    let normalized = tenant::normalize_origin(origin).unwrap_or_default();
    if settings.allowed_origins.contains(&normalized) {
        Ok(())
    } else {
        Err(origin_not_allowed(origin))
    }
}

fn origin_not_allowed(origin: &str) -> ApiError {
    ApiError::new(
        ErrorCode::OriginNotAllowed,
        format!("{origin} may not use this coach; its creator can allow it under allowed_origins"),
    )
}

/// Middleware for every request; acts on the chat routes only.
pub async fn check_origin(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let public = path.starts_with(PUBLIC_PREFIX);
    if !public && !TOKEN_PREFIXES.iter().any(|prefix| path.starts_with(prefix)) {
        return next.run(request).await;
    }
    let Some(origin) = foreign_origin(request.headers()) else {
        return next.run(request).await;
    };
    if !public {
        // The extractor checks the origin against the token's tenant.
        return with_cors_headers(&origin, request, next).await;
    }
    let Some(slug) = request
        .uri()
        .path()
        .strip_prefix(PUBLIC_PREFIX)
        .and_then(|rest| rest.split('/').next())
        .map(str::to_string)
    else {
        return next.run(request).await;
    };
    let lookup = slug.clone();
    let allowed = state
        .db
        .call(move |c| tenant::allowed_origins_for_slug(c, &lookup).map_err(DbError::from))
        .await;
    let allowed = match allowed {
        Ok(Some(allowed)) => allowed,
        // No such coach: the route answers its own 404.
        Ok(None) => return next.run(request).await,
        Err(error) => return ApiError::from(error).into_response(),
    };
    let normalized = tenant::normalize_origin(&origin).unwrap_or_default();
    if !allowed.contains(&normalized) {
        // Readable by the refused page, so the widget can say why it stays hidden.
        let mut refusal = origin_not_allowed(&origin).into_response();
        refusal.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_str(&origin).expect("came from a header"),
        );
        refusal
            .headers_mut()
            .insert(header::VARY, HeaderValue::from_static("Origin"));
        return refusal;
    }
    with_cors_headers(&origin, request, next).await
}

/// Answers a preflight, or runs the request; either way adds the CORS headers for `origin`.
async fn with_cors_headers(origin: &str, request: Request, next: Next) -> Response {
    let allow_origin = HeaderValue::from_str(origin).expect("came from a header");
    let mut response = if request.method() == Method::OPTIONS {
        // A preflight: answer it here; the routes themselves do not handle OPTIONS.
        let mut preflight = StatusCode::NO_CONTENT.into_response();
        let headers = preflight.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PATCH, DELETE, OPTIONS"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, x-request-id"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        preflight
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("x-request-id, retry-after"),
    );
    response
}

fn is_same_origin(origin: &str, host: Option<&HeaderValue>) -> bool {
    let Some(host) = host.and_then(|h| h.to_str().ok()) else {
        return false;
    };
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host))
}
