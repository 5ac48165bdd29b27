//! Start-up and shutdown: migrations on fresh and existing data, the data-directory lock,
//! refusing a newer database, and graceful shutdown with its drain deadline.

mod common;

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

/// A test-only SSE endpoint built with the product's shutdown-aware stream helper, and a slow
/// request that is still in flight when shutdown starts.
fn streaming_routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/test/events",
            get(|State(state): State<AppState>| async move {
                let ticks = futures_util::stream::unfold(0u32, |n| async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
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
            get(|| async {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                "finished"
            }),
        )
        .route(
            "/api/test/stuck",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                "never"
            }),
        )
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_and_closes_streams_with_an_event() {
    let app = TestApp::start(Options {
        extra_routes: Some(streaming_routes()),
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
    tokio::time::sleep(Duration::from_millis(400)).await;

    let started = Instant::now();
    let (result, _dir) = app.stop().await;
    result.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
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
    let app = TestApp::start(Options {
        extra_routes: Some(streaming_routes()),
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
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    let (result, _dir) = app.stop().await;
    result.unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "stopped after {took:?}"
    );
    assert!(
        stuck.await.unwrap().is_err(),
        "the stuck request was cut off"
    );
}
