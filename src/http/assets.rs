//! The files under `web/`, embedded in the binary.
//!
//! build.rs copies `web/` into the build directory and writes a `.br` and a `.gz` beside each
//! compressible file, so the server picks the best variant the client accepts without
//! compressing anything at run time.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "$OUT_DIR/web/"]
struct WebAssets;

/// Encodings that build.rs may have precompressed, best first.
const ENCODINGS: [(&str, &str); 2] = [("br", ".br"), ("gzip", ".gz")];

/// Serves an embedded file, `index.html` for a folder, or a 404 page.
pub async fn serve(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET, HEAD")],
        )
            .into_response();
    }
    let path = uri.path().trim_start_matches('/');
    let candidates = if path.is_empty() || path.ends_with('/') {
        vec![format!("{path}index.html")]
    } else {
        vec![path.to_string(), format!("{path}/index.html")]
    };
    match candidates.iter().find_map(|p| file_response(p, &headers)) {
        Some(response) => response,
        None => not_found(),
    }
}

fn file_response(path: &str, request_headers: &HeaderMap) -> Option<Response> {
    // Precompressed variants are served only through content negotiation.
    if ENCODINGS.iter().any(|(_, suffix)| path.ends_with(suffix)) {
        return None;
    }
    let original = WebAssets::get(path)?;
    let accepted = accepted_encodings(request_headers);
    let (encoding, file) = ENCODINGS
        .iter()
        .filter(|(name, _)| accepted.contains(name))
        .find_map(|(name, suffix)| Some((Some(*name), WebAssets::get(&format!("{path}{suffix}"))?)))
        .unwrap_or((None, original.clone()));

    let hash: String = original.metadata.sha256_hash()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // Each representation (identity, br, gzip) needs its own strong ETag.
    let etag = format!(
        "\"{hash}{}\"",
        encoding.map_or(String::new(), |e| format!("-{e}"))
    );

    let mut headers = HeaderMap::new();
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let content_type = match mime.type_() {
        mime_guess::mime::TEXT => format!("{mime}; charset=utf-8"),
        _ if mime.subtype() == mime_guess::mime::JAVASCRIPT => format!("{mime}; charset=utf-8"),
        _ => mime.to_string(),
    };
    headers.insert(header::CONTENT_TYPE, header_value(&content_type));
    headers.insert(header::ETAG, header_value(&etag));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_policy(path)),
    );
    headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Some(encoding) = encoding {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
    }

    if etag_matches(request_headers, &etag) {
        return Some((StatusCode::NOT_MODIFIED, headers).into_response());
    }
    Some((headers, Body::from(file.data.into_owned())).into_response())
}

/// Files under `assets/` carry a content hash in their name (a bundler's output) and never change;
/// everything else is revalidated with its ETag on every use, which costs a 304 at most.
fn cache_policy(path: &str) -> &'static str {
    if path.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    }
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).expect("asset header values are ASCII")
}

fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == etag || tag == "*")
}

/// Content codings the client accepts (`q=0` excluded).
fn accepted_encodings(headers: &HeaderMap) -> Vec<&'static str> {
    let accept = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','));
    let mut accepted = Vec::new();
    for item in accept {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let refused = parts.any(|p| {
            p.trim()
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        if refused {
            continue;
        }
        for (encoding, _) in ENCODINGS {
            if name == encoding {
                accepted.push(encoding);
            }
        }
    }
    accepted
}

fn not_found() -> Response {
    let page = "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\">\
        <title>Not found · Compañero</title>\
        <body style=\"font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem\">\
        <h1>Page not found</h1><p>There is nothing at this address. \
        <a href=\"/\">Back to the start page</a>.</p></body></html>";
    (StatusCode::NOT_FOUND, Html(page)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(value).unwrap(),
        );
        headers
    }

    #[test]
    fn accept_encoding_respects_q_zero() {
        assert_eq!(accepted_encodings(&with_accept("gzip, br")), ["gzip", "br"]);
        assert_eq!(
            accepted_encodings(&with_accept("br;q=0, gzip;q=0.5")),
            ["gzip"]
        );
        assert!(accepted_encodings(&with_accept("identity")).is_empty());
    }

    #[test]
    fn the_landing_page_is_embedded_with_compressed_variants() {
        assert!(WebAssets::get("index.html").is_some());
        assert!(WebAssets::get("index.html.br").is_some());
        assert!(WebAssets::get("index.html.gz").is_some());
    }
}
