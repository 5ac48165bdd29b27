//! Cross-origin rules for the public chat API (`/api/v1/public/coaches/{slug}/...`): the chat
//! widget runs on the creator's website, so a browser may call these routes from the origins the
//! creator allowed, and from no other. Requests without an `Origin` (servers, curl) and
//! same-origin requests (the served chat page) pass.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::{ApiError, ErrorCode};
use crate::auth::tenant;
use crate::db::DbError;

const PUBLIC_PREFIX: &str = "/api/v1/public/coaches/";

/// Middleware for every request; acts on the public chat routes only.
pub async fn check_origin(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if !request.uri().path().starts_with(PUBLIC_PREFIX) {
        return next.run(request).await;
    }
    let Some(origin) = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
    else {
        return next.run(request).await;
    };
    if is_same_origin(&origin, request.headers().get(header::HOST)) {
        return next.run(request).await;
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
        return ApiError::new(
            ErrorCode::OriginNotAllowed,
            format!(
                "{origin} may not use this coach; its creator can allow it under allowed_origins"
            ),
        )
        .into_response();
    }
    let allow_origin = HeaderValue::from_str(&origin).expect("came from a header");
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
