//! A stand-in for the Hugging Face Hub: serves files at `/{repo}/resolve/{revision}/{file}` with
//! the headers and range requests that hf-hub uses, and records the credentials it was sent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

#[derive(Clone, Default)]
struct Files {
    by_path: Arc<HashMap<String, Vec<u8>>>,
    authorizations: Arc<Mutex<Vec<String>>>,
    /// (file, first byte, last byte) of each request, in order.
    ranges: Arc<Mutex<Vec<(String, usize, usize)>>>,
    /// The first request for bytes at or past this offset fails (a dropped download).
    fail_once_from: Arc<Mutex<Option<usize>>>,
}

pub struct StandInHub {
    pub url: String,
    authorizations: Arc<Mutex<Vec<String>>>,
    ranges: Arc<Mutex<Vec<(String, usize, usize)>>>,
}

impl StandInHub {
    /// `files`: (repository, file name, content).
    pub async fn start(files: Vec<(&str, &str, Vec<u8>)>) -> StandInHub {
        StandInHub::start_failing_once(files, None).await
    }

    /// Like `start`, but the first request for bytes at or past `offset` fails.
    pub async fn start_failing_once(
        files: Vec<(&str, &str, Vec<u8>)>,
        offset: Option<usize>,
    ) -> StandInHub {
        let by_path = files
            .into_iter()
            .map(|(repo, file, bytes)| (format!("{repo}/{file}"), bytes))
            .collect();
        let state = Files {
            by_path: Arc::new(by_path),
            authorizations: Arc::default(),
            ranges: Arc::default(),
            fail_once_from: Arc::new(Mutex::new(offset)),
        };
        let authorizations = Arc::clone(&state.authorizations);
        let ranges = Arc::clone(&state.ranges);
        let app = Router::new()
            .route("/{*path}", get(resolve))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        StandInHub {
            url,
            authorizations,
            ranges,
        }
    }

    /// (file, first byte, last byte) of the range requests seen so far, and forgets them.
    pub fn take_ranges(&self) -> Vec<(String, usize, usize)> {
        std::mem::take(&mut *self.ranges.lock().unwrap())
    }

    pub fn authorizations(&self) -> Vec<String> {
        self.authorizations.lock().unwrap().clone()
    }
}

async fn resolve(
    State(files): State<Files>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        files
            .authorizations
            .lock()
            .unwrap()
            .push(auth.to_str().unwrap_or("").to_string());
    }
    // {org}/{repo}/resolve/{revision}/{file...}
    let Some((repo, rest)) = path.split_once("/resolve/") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Some((_revision, file)) = rest.split_once('/') else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Some(bytes) = files.by_path.get(&format!("{repo}/{file}")) else {
        return (StatusCode::NOT_FOUND, "Entry not found").into_response();
    };
    let total = bytes.len();
    let etag: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let (start, end) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
        .map(|(a, b)| (a.min(total), b.min(total.saturating_sub(1))))
        .unwrap_or((0, total.saturating_sub(1)));
    files
        .ranges
        .lock()
        .unwrap()
        .push((file.to_string(), start, end));
    {
        let mut fail = files.fail_once_from.lock().unwrap();
        if fail.is_some_and(|offset| start >= offset) {
            *fail = None;
            return (StatusCode::SERVICE_UNAVAILABLE, "try again").into_response();
        }
    }
    let body = bytes[start..=end.max(start).min(total - 1)].to_vec();
    Response::builder()
        .status(StatusCode::PARTIAL_CONTENT)
        .header(header::ETAG, format!("\"{etag}\""))
        .header("x-repo-commit", "0123456789abcdef0123456789abcdef01234567")
        .header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{end}/{total}"),
        )
        .header(header::CONTENT_LENGTH, body.len())
        .body(Body::from(body))
        .unwrap()
}
