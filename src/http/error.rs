//! The error catalogue: every error a client can see, its HTTP status and its stable code.
//!
//! Every error body is `{"error": {"code": "snake_case_code", "message": "..."}}`. Clients match
//! on `code`; `message` is for people and may change.

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident => ($status:ident, $code:literal),)*) => {
        /// Stable error codes. Add new ones here, never rename one.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
        }

        impl ErrorCode {
            pub const ALL: &[ErrorCode] = &[$(ErrorCode::$variant,)*];

            pub fn status(self) -> StatusCode {
                match self {
                    $(ErrorCode::$variant => StatusCode::$status,)*
                }
            }

            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)*
                }
            }
        }
    };
}

error_codes! {
    /// The request is malformed (bad JSON, missing field, bad query string).
    BadRequest => (BAD_REQUEST, "bad_request"),
    /// No valid credentials were presented.
    Unauthorized => (UNAUTHORIZED, "unauthorized"),
    /// The credentials are valid but do not allow this.
    Forbidden => (FORBIDDEN, "forbidden"),
    /// No such route, or no such resource visible to the caller.
    NotFound => (NOT_FOUND, "not_found"),
    MethodNotAllowed => (METHOD_NOT_ALLOWED, "method_not_allowed"),
    Conflict => (CONFLICT, "conflict"),
    PayloadTooLarge => (PAYLOAD_TOO_LARGE, "payload_too_large"),
    UnsupportedMediaType => (UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
    /// The request is well-formed but its content is not acceptable.
    InvalidRequest => (UNPROCESSABLE_ENTITY, "invalid_request"),
    RateLimited => (TOO_MANY_REQUESTS, "rate_limited"),
    /// The request took longer than the configured request timeout.
    Timeout => (SERVICE_UNAVAILABLE, "timeout"),
    /// A component the request needs (database, model) is not available right now.
    ServiceUnavailable => (SERVICE_UNAVAILABLE, "service_unavailable"),
    Internal => (INTERNAL_SERVER_ERROR, "internal"),
    /// The model's queue is full; retry after `Retry-After` seconds.
    Overloaded => (TOO_MANY_REQUESTS, "overloaded"),
    /// No model is loaded for this; the message names the command that installs one.
    ModelUnavailable => (SERVICE_UNAVAILABLE, "model_unavailable"),
    /// The input does not fit the model's context window.
    ContextTooLong => (UNPROCESSABLE_ENTITY, "context_too_long"),
    InvalidCredentials => (UNAUTHORIZED, "invalid_credentials"),
    /// The password is too short or too easy to guess; the message says why.
    WeakPassword => (UNPROCESSABLE_ENTITY, "weak_password"),
    EmailTaken => (CONFLICT, "email_taken"),
    /// Registration needs an invitation (or is closed) on this instance.
    SignupClosed => (FORBIDDEN, "signup_closed"),
    /// A refresh token was used twice; its whole sign-in was revoked.
    TokenReused => (UNAUTHORIZED, "token_reused"),
    /// A refresh, reset or invitation token that is unknown, used, revoked or expired.
    InvalidToken => (UNAUTHORIZED, "invalid_token"),
    /// A public request from an origin the creator has not allowed.
    OriginNotAllowed => (FORBIDDEN, "origin_not_allowed"),
    /// The owner of the server suspended this creator: members, keys and end users are refused.
    TenantSuspended => (FORBIDDEN, "tenant_suspended"),
    /// The first account (the server's owner) needs the set-up token `serve` printed.
    SetupTokenRequired => (FORBIDDEN, "setup_token_required"),
    /// The database is busy with other writes; retry after `Retry-After` seconds.
    Busy => (SERVICE_UNAVAILABLE, "busy"),
    /// The upload would take the tenant over its storage quota; the message says how much is
    /// used and allowed.
    QuotaExceeded => (PAYLOAD_TOO_LARGE, "quota_exceeded"),
    /// A field has a value that is not allowed; the message names the field.
    InvalidField => (BAD_REQUEST, "invalid_field"),
    /// A bad time zone, time of day (`HH:MM`), period or recurrence rule; the message names it.
    InvalidSchedule => (BAD_REQUEST, "invalid_schedule"),
    /// A program whose steps do not hold together (a missing day, a duplicate key, a `next`
    /// to no step); the message names the field.
    InvalidProgram => (BAD_REQUEST, "invalid_program"),
    /// The end user opted out of messages from the coach.
    OptedOut => (CONFLICT, "opted_out"),
    AlreadyEnrolled => (CONFLICT, "already_enrolled"),
    /// A messaging platform refused the credentials given for it (a bot token).
    PlatformRefusedCredentials => (BAD_REQUEST, "invalid_credentials"),
    /// A messaging platform could not be reached or failed; the message says what it said.
    PlatformUnavailable => (BAD_GATEWAY, "platform_unavailable"),
    /// An export's file is gone (it expired, or its link did); ask for a new one.
    ExportExpired => (GONE, "export_expired"),
    /// The password was right; finish signing in with `POST /api/v1/auth/login/mfa` and the
    /// `challenge` in this error.
    MfaRequired => (UNAUTHORIZED, "mfa_required"),
    /// Two-step sign-in is required of this account and not set up: enrol with the
    /// `challenge` in this error (`POST /api/v1/auth/login/mfa/enrollment`).
    MfaEnrollmentRequired => (UNAUTHORIZED, "mfa_enrollment_required"),
    /// The authenticator or recovery code is wrong, or was used already.
    InvalidMfaCode => (UNAUTHORIZED, "invalid_mfa_code"),
    /// The sign-in's challenge expired or had too many wrong codes.
    MfaChallengeExpired => (UNAUTHORIZED, "mfa_challenge_expired"),
    /// Two-step sign-in is not on for this account.
    MfaNotEnabled => (CONFLICT, "mfa_not_enabled"),
    /// The tenant or the instance requires two-step sign-in (it cannot be turned off), or
    /// the person requiring it has not turned it on for themselves.
    MfaPolicy => (FORBIDDEN, "mfa_policy"),
    /// The export could not be written; the message says why. Ask for a new one.
    ExportFailed => (CONFLICT, "export_failed"),
    /// A destructive request (erasing one's data) needs `{"confirm": true}`.
    ConfirmationRequired => (BAD_REQUEST, "confirmation_required"),
}

impl ErrorCode {
    /// The code for an error response produced outside our handlers (axum's extractor
    /// rejections, method mismatches), so that those too get the JSON envelope.
    pub fn for_status(status: StatusCode) -> ErrorCode {
        ErrorCode::ALL
            .iter()
            .copied()
            // Codes of specific situations are never guessed from a bare status.
            .find(|code| {
                code.status() == status
                    && !matches!(code, ErrorCode::Timeout | ErrorCode::PlatformUnavailable)
            })
            .unwrap_or(if status.is_server_error() {
                ErrorCode::Internal
            } else {
                ErrorCode::BadRequest
            })
    }
}

/// The body of every error response.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case code to match on, e.g. `not_found`, `weak_password`.
    pub code: String,
    /// For people; may change.
    pub message: String,
}

/// An error as the API returns it.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Sent as `Retry-After` (seconds) on overload and rate-limit errors.
    pub retry_after: Option<Duration>,
    /// More fields of the error object, for errors a client acts on (a sign-in's challenge).
    pub fields: Option<serde_json::Map<String, serde_json::Value>>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            retry_after: None,
            fields: None,
        }
    }

    pub fn with_retry_after(mut self, after: Duration) -> ApiError {
        self.retry_after = Some(after);
        self
    }

    pub fn with_field(mut self, name: &str, value: impl Into<serde_json::Value>) -> ApiError {
        self.fields
            .get_or_insert_with(Default::default)
            .insert(name.to_string(), value.into());
        self
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::NotFound, message)
    }

    pub fn internal() -> ApiError {
        ApiError::new(
            ErrorCode::Internal,
            "something went wrong on our side; the error was logged with this request's id",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = serde_json::Map::new();
        error.insert("code".into(), self.code.as_str().into());
        error.insert("message".into(), self.message.into());
        error.extend(self.fields.unwrap_or_default());
        let body = json!({ "error": error });
        let mut response = (self.code.status(), Json(body)).into_response();
        if self.code.status() == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(after) = self.retry_after {
            let seconds = after.as_secs().max(1);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(error: crate::db::DbError) -> ApiError {
        // Another writer held the database past the busy timeout: a moment's wait fixes it, so
        // the client is told to retry rather than that something broke.
        if error.is_busy() {
            tracing::warn!(%error, "database busy");
            return ApiError::new(
                ErrorCode::Busy,
                "the server is busy with other changes; try again in a moment",
            )
            .with_retry_after(Duration::from_secs(1));
        }
        tracing::error!(%error, "database error");
        ApiError::internal()
    }
}

impl From<crate::inference::InferenceError> for ApiError {
    fn from(error: crate::inference::InferenceError) -> ApiError {
        use crate::inference::InferenceError as E;
        match error {
            E::Overloaded { retry_after } => {
                ApiError::new(ErrorCode::Overloaded, error.to_string())
                    .with_retry_after(retry_after)
            }
            E::NotReady(message) => ApiError::new(ErrorCode::ModelUnavailable, message)
                .with_retry_after(std::time::Duration::from_secs(30)),
            E::Unavailable(message) => {
                tracing::warn!(%message, "remote inference failed");
                ApiError::new(ErrorCode::ModelUnavailable, message)
                    .with_retry_after(std::time::Duration::from_secs(5))
            }
            E::ShuttingDown => ApiError::new(ErrorCode::ServiceUnavailable, error.to_string()),
            E::ContextOverflow { .. } => {
                ApiError::new(ErrorCode::ContextTooLong, error.to_string())
            }
            E::InvalidRequest(message) => ApiError::new(ErrorCode::InvalidRequest, message),
            E::Load(_) | E::Unsupported(_) | E::Tokenizer(_) | E::Template(_) | E::Model(_) => {
                tracing::error!(%error, "inference error");
                ApiError::internal()
            }
        }
    }
}

impl From<crate::knowledge::KnowledgeError> for ApiError {
    fn from(error: crate::knowledge::KnowledgeError) -> ApiError {
        use crate::knowledge::KnowledgeError as E;
        match error {
            E::NotFound => ApiError::not_found("no such document in this tenant"),
            E::Invalid(message) => ApiError::new(ErrorCode::InvalidRequest, message),
            E::Conflict(message) => ApiError::new(ErrorCode::Conflict, message),
            E::Unsupported(message) => ApiError::new(ErrorCode::UnsupportedMediaType, message),
            E::TooLarge { .. } => ApiError::new(ErrorCode::PayloadTooLarge, error.to_string()),
            E::QuotaExceeded { .. } => ApiError::new(ErrorCode::QuotaExceeded, error.to_string()),
            E::Db(error) => error.into(),
            E::Inference(error) => error.into(),
            E::Index(_) | E::Io(_) => {
                tracing::error!(%error, "knowledge base error");
                ApiError::internal()
            }
        }
    }
}

/// Middleware that rewrites any error response whose body is not JSON (axum's rejections and
/// method mismatches are plain text or empty) into the `{"error": ...}` envelope, keeping its
/// status and headers such as `Allow` and `Retry-After`. HTML pages (the asset 404) stay as
/// they are, for browsers.
pub async fn ensure_json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("application/json") || content_type.starts_with("text/html") {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    let code = ErrorCode::for_status(status);
    let body = json!({"error": {"code": code.as_str(), "message": message}}).to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let name = code.as_str();
            // One exception: `invalid_credentials` is 401 for signing in and 400 for credentials
            // a messaging platform refused (the channels API's published contract).
            assert!(
                seen.insert(name) || name == "invalid_credentials",
                "duplicate code {name}"
            );
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name} is not snake_case"
            );
        }
    }

    #[test]
    fn overload_and_missing_models_tell_the_client_when_to_retry() {
        use crate::inference::InferenceError;
        let response = ApiError::from(InferenceError::Overloaded {
            retry_after: std::time::Duration::from_secs(7),
        })
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
        let missing = ApiError::from(InferenceError::NotReady(
            "run `companero models pull x`".into(),
        ));
        assert_eq!(missing.code, ErrorCode::ModelUnavailable);
        assert!(missing.message.contains("companero models pull"));
        assert_eq!(
            missing.into_response().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn statuses_map_back_to_codes() {
        assert_eq!(
            ErrorCode::for_status(StatusCode::NOT_FOUND),
            ErrorCode::NotFound
        );
        assert_eq!(
            ErrorCode::for_status(StatusCode::SERVICE_UNAVAILABLE),
            ErrorCode::ServiceUnavailable
        );
        assert_eq!(
            ErrorCode::for_status(StatusCode::IM_A_TEAPOT),
            ErrorCode::BadRequest
        );
        assert_eq!(
            ErrorCode::for_status(StatusCode::BAD_GATEWAY),
            ErrorCode::Internal
        );
    }
}
