//! Request ids: accept the client's `X-Request-Id` when it is sane, otherwise make one; echo it
//! on the response and put it on the request's log span (see `http::with_middleware`).

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the request being handled, available to handlers as an extension.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

pub async fn assign(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| is_acceptable(id))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let value = HeaderValue::from_str(&id).expect("request ids are visible ASCII");
    request.headers_mut().insert(X_REQUEST_ID, value.clone());
    request.extensions_mut().insert(RequestId(id));
    let mut response = next.run(request).await;
    response.headers_mut().insert(X_REQUEST_ID, value);
    response
}

/// Client-supplied ids end up in logs, so only short, plain ones are trusted.
fn is_acceptable(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(&b))
}

/// The request id, from request parts (extractors).
pub fn of_parts(parts: &axum::http::request::Parts) -> &str {
    parts
        .headers
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
}

/// The request id of a request that has passed through [`assign`].
pub fn of(request: &Request) -> &str {
    request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_plain_ids_are_accepted() {
        assert!(super::is_acceptable("abc-123_DEF.4:5"));
        assert!(!super::is_acceptable(""));
        assert!(!super::is_acceptable("has space"));
        assert!(!super::is_acceptable("line\nbreak"));
        assert!(!super::is_acceptable(&"x".repeat(129)));
    }
}
