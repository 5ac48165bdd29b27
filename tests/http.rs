//! The HTTP surface every later feature relies on: health, readiness, metrics, error bodies,
//! request ids, limits and the embedded web assets.

mod common;

use std::io::Read;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::routing::{get, post};
use common::{Options, TestApp, expect_error};
use companero::http::AppState;
use serde_json::{Value, json};

#[tokio::test]
async fn health_and_readiness_report_each_component() {
    let app = TestApp::spawn().await;

    let health = app.get("/healthz").await;
    assert_eq!(health.status(), 200);
    let body: Value = health.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));

    // Offline and without models: the database is ready, the models say how to get them.
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["components"]["database"]["ready"], true);
    assert_eq!(
        body["components"]["database"]["schema_version"],
        companero::db::migrations::latest_version()
    );
    for model in ["llm", "embedder"] {
        assert_eq!(body["components"][model]["ready"], false, "{body}");
        assert_eq!(body["components"][model]["state"], "missing", "{body}");
        let message = body["components"][model]["message"].as_str().unwrap();
        assert!(message.contains("companero models pull"), "{message}");
    }
}

#[tokio::test]
async fn readiness_fails_and_names_the_database_when_it_breaks() {
    let app = TestApp::spawn().await;
    // Simulate a broken database: the bookkeeping table disappears under the running server.
    let db = companero::db::connect(&app.config.data_dir.join("companero.db")).unwrap();
    db.execute_batch("DROP TABLE schema_migrations").unwrap();

    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["components"]["database"]["ready"], false);
    assert!(
        body["components"]["database"]["error"]
            .as_str()
            .unwrap()
            .contains("schema_migrations"),
        "{body}"
    );
    // Liveness is unaffected: the process still answers.
    assert_eq!(app.get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn metrics_count_requests_by_route_pattern_and_status() {
    let app = TestApp::spawn().await;
    for _ in 0..3 {
        app.get("/healthz").await;
    }
    app.get("/api/v1/no-such-thing/42").await;

    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    let healthz_count = counter(&text, r#"method="GET",route="/healthz",status="200""#);
    assert!(healthz_count >= 3.0, "{text}");
    // Unknown paths are labelled by their route pattern, never by the raw path.
    assert!(
        text.contains(r#"route="/api/{*rest}",status="404""#),
        "{text}"
    );
    assert!(!text.contains("no-such-thing"), "{text}");
    assert!(
        text.contains("http_request_duration_seconds_bucket"),
        "{text}"
    );
}

fn counter(text: &str, labels: &str) -> f64 {
    text.lines()
        .find(|line| line.starts_with("http_requests_total{") && line.contains(labels))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn unknown_api_paths_and_wrong_methods_get_json_errors() {
    let app = TestApp::spawn().await;
    let message = expect_error(app.get("/api/v1/nope").await, 404, "not_found").await;
    assert!(message.contains("/api/v1/nope"), "{message}");
    expect_error(app.get("/api").await, 404, "not_found").await;

    let response = app.client.delete(app.url("/healthz")).send().await.unwrap();
    assert!(response.headers().contains_key("allow"));
    expect_error(response, 405, "method_not_allowed").await;
}

fn echo_routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/test/echo",
            post(|Json(v): Json<Value>| async move { Json(v) }),
        )
        .route(
            "/api/test/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                "done"
            }),
        )
        .route(
            "/api/test/panic",
            get(|| async {
                if true {
                    panic!("boom");
                }
                "unreachable"
            }),
        )
}

#[tokio::test]
async fn request_bodies_are_limited_and_bad_json_gets_an_envelope() {
    let app = TestApp::start(Options {
        extra_routes: Some(echo_routes()),
        configure: Some(Box::new(|config| config.max_body_bytes = 1024)),
        ..Options::default()
    })
    .await;
    let url = app.url("/api/test/echo");

    let ok = app
        .client
        .post(&url)
        .json(&json!({"a": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.json::<Value>().await.unwrap(), json!({"a": 1}));

    let big = json!({"text": "x".repeat(2048)});
    expect_error(
        app.client.post(&url).json(&big).send().await.unwrap(),
        413,
        "payload_too_large",
    )
    .await;

    let broken = app
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    expect_error(broken, 400, "bad_request").await;

    let wrong_type = app.client.post(&url).body("plain").send().await.unwrap();
    expect_error(wrong_type, 415, "unsupported_media_type").await;
}

#[tokio::test]
async fn a_panicking_handler_answers_500_and_the_server_keeps_serving() {
    let app = TestApp::start(Options {
        extra_routes: Some(echo_routes()),
        ..Options::default()
    })
    .await;
    expect_error(app.get("/api/test/panic").await, 500, "internal").await;
    assert_eq!(app.get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn slow_requests_time_out_with_a_json_error() {
    let app = TestApp::start(Options {
        extra_routes: Some(echo_routes()),
        configure: Some(Box::new(|config| {
            config.request_timeout = Duration::from_secs(1)
        })),
        ..Options::default()
    })
    .await;
    let message = expect_error(app.get("/api/test/slow").await, 503, "timeout").await;
    assert!(message.contains("1 s"), "{message}");
}

#[tokio::test]
async fn request_ids_are_echoed_generated_or_replaced() {
    let app = TestApp::spawn().await;
    let given = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "client-id-42")
        .send()
        .await
        .unwrap();
    assert_eq!(given.headers()["x-request-id"], "client-id-42");

    let generated = app.get("/api/missing").await;
    let id = generated.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_ne!(id, app.get("/healthz").await.headers()["x-request-id"]);

    // An id that could forge log lines or bloat them is replaced.
    let hostile = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "a b\"c")
        .send()
        .await
        .unwrap();
    assert_ne!(hostile.headers()["x-request-id"], "a b\"c");
}

#[tokio::test]
async fn the_landing_page_is_served_compressed_with_validators() {
    let app = TestApp::spawn().await;

    let plain = app.get("/").await;
    assert_eq!(plain.status(), 200);
    assert_eq!(plain.headers()["content-type"], "text/html; charset=utf-8");
    assert!(plain.headers().get("content-encoding").is_none());
    let etag = plain.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(plain.headers()["cache-control"], "no-cache");
    let html = plain.text().await.unwrap();
    assert!(html.contains("<title>Compañero</title>"));

    let br = app
        .client
        .get(app.url("/"))
        .header("accept-encoding", "gzip, br")
        .send()
        .await
        .unwrap();
    assert_eq!(br.headers()["content-encoding"], "br");
    assert_eq!(br.headers()["vary"], "Accept-Encoding");
    let br_etag = br.headers()["etag"].to_str().unwrap().to_string();
    assert_ne!(br_etag, etag, "each encoding has its own ETag");
    let compressed = br.bytes().await.unwrap();
    assert!(compressed.len() < html.len());
    let mut decoded = String::new();
    brotli::Decompressor::new(&compressed[..], 4096)
        .read_to_string(&mut decoded)
        .unwrap();
    assert_eq!(decoded, html);

    let gz = app
        .client
        .get(app.url("/"))
        .header("accept-encoding", "br;q=0, gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gz.headers()["content-encoding"], "gzip");
    let mut decoded = String::new();
    flate2::read::GzDecoder::new(&gz.bytes().await.unwrap()[..])
        .read_to_string(&mut decoded)
        .unwrap();
    assert_eq!(decoded, html);

    let revalidated = app
        .client
        .get(app.url("/"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(revalidated.status(), 304);
    assert!(revalidated.bytes().await.unwrap().is_empty());

    let icon = app.get("/favicon.svg").await;
    assert_eq!(icon.status(), 200);
    assert_eq!(icon.headers()["content-type"], "image/svg+xml");
}

#[tokio::test]
async fn every_response_carries_browser_protections() {
    let app = TestApp::spawn().await;
    for path in ["/", "/healthz", "/api/nope"] {
        let response = app.get(path).await;
        let headers = response.headers();
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
    }
}

#[tokio::test]
async fn unknown_pages_get_an_html_404_for_browsers() {
    let app = TestApp::spawn().await;
    let missing = app.get("/no/such/page").await;
    assert_eq!(missing.status(), 404);
    assert!(
        missing.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(missing.text().await.unwrap().contains("Page not found"));
    let posted = app.client.post(app.url("/")).send().await.unwrap();
    expect_error(posted, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn the_openapi_document_lists_every_route_and_each_one_exists() {
    let app = TestApp::spawn().await;
    let response = app.get("/api/openapi.json").await;
    assert_eq!(response.status(), 200);
    let doc: Value = response.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    let paths = doc["paths"].as_object().unwrap();
    for expected in [
        "/api/v1/auth/register",
        "/api/v1/auth/login",
        "/api/v1/auth/refresh",
        "/api/v1/auth/logout",
        "/api/v1/auth/me",
        "/api/v1/api-keys",
        "/api/v1/api-keys/{id}",
        "/api/v1/team/{user_id}",
        "/api/v1/audit-log",
        "/healthz",
        "/readyz",
    ] {
        assert!(paths.contains_key(expected), "{expected} is documented");
    }
    // Every documented operation is routed: nothing answers "no API route".
    for (path, operations) in paths {
        let concrete = path.replace("{id}", "x").replace("{user_id}", "x");
        for method in operations.as_object().unwrap().keys() {
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let response = app
                .client
                .request(method.clone(), app.url(&concrete))
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body = response.text().await.unwrap();
            assert!(
                status != 405 && !body.contains("no API route"),
                "{method} {path} is documented but not routed: {status} {body}"
            );
        }
    }
    // Referenced schemas exist.
    let text = doc.to_string();
    for reference in text.split("#/components/schemas/").skip(1) {
        let name: String = reference.chars().take_while(|c| *c != '"').collect();
        assert!(
            doc["components"]["schemas"][&name].is_object(),
            "schema {name} is defined"
        );
    }
}

#[tokio::test]
async fn the_docs_page_loads_the_embedded_viewer() {
    let app = TestApp::spawn().await;
    let page = app.get("/docs").await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("spec-url=\"/api/openapi.json\""), "{html}");
    let script = app.get("/docs/rapidoc-min.js").await;
    assert_eq!(script.status(), 200);
    assert!(
        script.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("javascript")
    );
}
