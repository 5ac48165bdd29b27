//! Start-up and shutdown: migrations on fresh and existing data, the data-directory lock,
//! refusing a newer database, and graceful shutdown with its drain deadline.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use common::{Options, TestApp};
use companero::config::Config;
use companero::http::{AppState, streams};
use companero::server::Server;
use futures_util::StreamExt;
use serde_json::Value;

fn instance_id(config: &Config) -> String {
    let db = companero::db::connect(&config.data_dir.join("companero.db")).unwrap();
    db.query_row(
        "SELECT value FROM instance_settings WHERE key = 'instance_id'",
        [],
        |row| row.get(0),
    )
    .unwrap()
}

#[tokio::test]
async fn a_restart_reuses_the_database_without_reapplying_migrations() {
    let app = TestApp::spawn().await;
    let config = app.config.clone();
    let first_id = instance_id(&config);
    assert_eq!(first_id.len(), 32);
    let (result, dir) = app.stop().await;
    result.unwrap();

    let again = TestApp::start(Options {
        dir: Some(dir),
        ..Options::default()
    })
    .await;
    assert_eq!(
        instance_id(&again.config),
        first_id,
        "same database, not a new one"
    );
    let body: Value = again.get("/readyz").await.json().await.unwrap();
    let latest = companero::db::migrations::latest_version();
    assert_eq!(body["components"]["database"]["schema_version"], latest);
    let db = companero::db::connect(&again.config.data_dir.join("companero.db")).unwrap();
    let rows: i64 = db
        .query_row("SELECT count(*) FROM schema_migrations", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, latest, "each migration is recorded once");
}

#[tokio::test]
async fn a_second_server_on_the_same_data_directory_is_refused() {
    let app = TestApp::spawn().await;
    let mut config = app.config.clone();
    config.bind = "127.0.0.1:0".parse().unwrap();
    let error = format!("{:#}", Server::bind(&config).await.err().expect("refused"));
    assert!(error.contains("already in use"), "{error}");
    // The first server is unharmed.
    assert_eq!(app.get("/healthz").await.status(), 200);

    let (result, dir) = app.stop().await;
    result.unwrap();
    // Once the first has stopped, the directory can be opened again.
    let mut config = Config::with_data_dir(dir.path().join("data"));
    config.bind = "127.0.0.1:0".parse().unwrap();
    Server::bind(&config)
        .await
        .expect("lock released at shutdown");
}

#[tokio::test]
async fn a_database_from_a_newer_version_is_refused_with_a_clear_message() {
    let app = TestApp::spawn().await;
    let config = app.config.clone();
    let (result, _dir) = app.stop().await;
    result.unwrap();
    let db = companero::db::connect(&config.data_dir.join("companero.db")).unwrap();
    db.execute(
        "INSERT INTO schema_migrations (version, name) VALUES (42, 'from_the_future')",
        [],
    )
    .unwrap();
    drop(db);

    let error = format!("{:#}", Server::bind(&config).await.err().expect("refused"));
    assert!(error.contains("newer Compañero"), "{error}");
    assert!(error.contains("42"), "{error}");
}

#[tokio::test]
async fn an_occupied_port_is_reported() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(dir.path().join("data"));
    config.bind = taken.local_addr().unwrap();
    config.offline = true;
    let error = format!("{:#}", Server::bind(&config).await.err().expect("refused"));
    assert!(error.contains("cannot listen on"), "{error}");
}

/// A test-only SSE endpoint built with the product's shutdown-aware stream helper, a slow
/// request that is still in flight when shutdown starts, and one that never ends. `entered`
/// counts the requests that reached a handler, so a test starts shutdown only once they are in
/// flight.
fn streaming_routes(entered: Arc<AtomicUsize>) -> Router<AppState> {
    let (on_events, on_slow, on_stuck) = (entered.clone(), entered.clone(), entered);
    Router::new()
        .route(
            "/api/test/events",
            get(move |State(state): State<AppState>| async move {
                on_events.fetch_add(1, Ordering::SeqCst);
                // The first tick at once, so the stream has data before shutdown ends it.
                let ticks = futures_util::stream::unfold(0u32, |n| async move {
                    if n > 0 {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Some((
                        axum::response::sse::Event::default().data(n.to_string()),
                        n + 1,
                    ))
                });
                streams::sse_until_shutdown(ticks, state.shutdown.clone()).into_response()
            }),
        )
        .route(
            "/api/test/slow",
            get(move || async move {
                on_slow.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1500)).await;
                "finished"
            }),
        )
        .route(
            "/api/test/stuck",
            get(move || async move {
                on_stuck.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(60)).await;
                "never"
            }),
        )
}

/// Waits until `n` requests reached the test routes' handlers.
async fn in_flight(entered: &AtomicUsize, n: usize) {
    common::eventually("the requests to reach their handlers", || async {
        (entered.load(Ordering::SeqCst) >= n).then_some(())
    })
    .await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_and_closes_streams_with_an_event() {
    let entered = Arc::new(AtomicUsize::new(0));
    let app = TestApp::start(Options {
        extra_routes: Some(streaming_routes(entered.clone())),
        // Far beyond the slow request, so stopping early shows shutdown did not wait for it.
        configure: Some(Box::new(|config| {
            config.drain_timeout = Duration::from_secs(60)
        })),
        ..Options::default()
    })
    .await;

    let events = app.get("/api/test/events").await;
    assert_eq!(events.status(), 200);
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let reader = tokio::spawn(async move {
        let mut body = String::new();
        let mut stream = events.bytes_stream();
        while let Some(Ok(chunk)) = stream.next().await {
            body.push_str(&String::from_utf8_lossy(&chunk));
        }
        body
    });
    let slow = tokio::spawn({
        let client = app.client.clone();
        let url = app.url("/api/test/slow");
        async move { client.get(url).send().await.unwrap().text().await.unwrap() }
    });
    in_flight(&entered, 2).await;

    let started = Instant::now();
    let (result, _dir) = app.stop().await;
    result.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "stopped when the last request finished, not at the drain deadline: {:?}",
        started.elapsed()
    );

    assert_eq!(
        slow.await.unwrap(),
        "finished",
        "in-flight request completed"
    );
    let stream = reader.await.unwrap();
    assert!(stream.contains("data: 0"), "{stream}");
    assert!(
        stream.contains("event: shutdown"),
        "the stream ends with a shutdown event: {stream}"
    );
}

#[tokio::test]
async fn shutdown_gives_up_on_stuck_requests_at_the_drain_deadline() {
    let entered = Arc::new(AtomicUsize::new(0));
    let app = TestApp::start(Options {
        extra_routes: Some(streaming_routes(entered.clone())),
        configure: Some(Box::new(|config| {
            config.drain_timeout = Duration::from_secs(1)
        })),
        ..Options::default()
    })
    .await;
    let stuck = tokio::spawn({
        let client = app.client.clone();
        let url = app.url("/api/test/stuck");
        async move { client.get(url).send().await }
    });
    in_flight(&entered, 1).await;

    let started = Instant::now();
    let (result, _dir) = app.stop().await;
    result.unwrap();
    let took = started.elapsed();
    // It waited for the 1 s deadline, and gave up long before the stuck request's 60 s.
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(30),
        "stopped after {took:?}"
    );
    assert!(
        stuck.await.unwrap().is_err(),
        "the stuck request was cut off"
    );
}
