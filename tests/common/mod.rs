//! Test harness: starts the real application on 127.0.0.1:0 with a fresh data directory and
//! talks HTTP to it, as a client would.
#![allow(dead_code)] // each test file uses a different part of the harness

pub mod chat;
pub mod documents;
pub mod hub;
pub mod live;
pub mod models;
pub mod process;
pub mod push;
pub mod smtp;
pub mod telegram;
pub mod whatsapp;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use companero::config::Config;
use companero::http::{self, AppState};
use companero::server::Server;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The password `sign_up` gives every account.
pub const PASSWORD: &str = "violet tractor sings at noon";
/// The set-up token test servers are started with (the first account needs it).
pub const SETUP_TOKEN: &str = "setup_test-token-for-the-first-account";

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub shutdown: CancellationToken,
    pub server: JoinHandle<anyhow::Result<()>>,
    pub config: Config,
    /// Kept alive so the data directory outlives the server.
    pub dir: TempDir,
}

/// Adjusts the configuration before the server starts.
pub type Configure = Box<dyn FnOnce(&mut Config)>;

/// Options for [`TestApp::start`].
#[derive(Default)]
pub struct Options {
    /// Routes added to the application's own (behind the same middleware), for exercising the
    /// middleware with handlers that the product does not have.
    pub extra_routes: Option<Router<AppState>>,
    pub configure: Option<Configure>,
    /// Reuse a data directory (restart tests).
    pub dir: Option<TempDir>,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        TestApp::start(Options::default()).await
    }

    pub async fn start(options: Options) -> TestApp {
        let dir = options
            .dir
            .unwrap_or_else(|| tempfile::tempdir().expect("temp dir"));
        let mut config = Config::with_data_dir(dir.path().join("data"));
        config.bind = "127.0.0.1:0".parse().unwrap();
        // Tests never reach for the Hub; those that need models load them from the test cache.
        config.offline = true;
        // Documents are read by the real binary in a child process, as in production.
        config.knowledge.extractor = Some(env!("CARGO_BIN_EXE_companero").into());
        config.setup_token = Some(SETUP_TOKEN.into());
        if let Some(configure) = options.configure {
            configure(&mut config);
        }
        let server = Server::bind(&config).await.expect("server starts");
        let addr = server.local_addr();
        let shutdown = server.shutdown_token();
        let routes = match options.extra_routes {
            Some(extra) => http::routes().merge(extra),
            None => http::routes(),
        };
        let app = http::with_middleware(routes, server.state().clone(), server.limits());
        let server = tokio::spawn(server.run_with(app));
        TestApp {
            addr,
            client: reqwest::Client::new(),
            shutdown,
            server,
            config,
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }

    /// Waits until every model the configuration names has loaded.
    pub async fn wait_for_models(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            let body: serde_json::Value = self.get("/readyz").await.json().await.unwrap();
            let ready = |name: &str, configured: bool| {
                !configured || body["components"][name]["ready"] == true
            };
            if ready("llm", self.config.llm.is_some())
                && ready("embedder", self.config.embedder.is_some())
                && ready("reranker", self.config.reranker.is_some())
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "models not ready: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Registers an account (sign-up must be open, or this the first account) and returns its
    /// access token.
    pub async fn sign_up(&self, email: &str) -> String {
        let response = self
            .client
            .post(self.url("/api/v1/auth/register"))
            .json(&serde_json::json!({
                "email": email,
                "password": PASSWORD,
                "full_name": "Creator",
                "setup_token": SETUP_TOKEN,
            }))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        let body: serde_json::Value = response.json().await.expect("JSON");
        body["access_token"].as_str().expect("token").to_string()
    }

    /// Uploads one document (`POST /api/v1/documents`) with extra form fields; the raw response.
    pub async fn upload_with(
        &self,
        token: &str,
        filename: &str,
        bytes: Vec<u8>,
        fields: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name(filename.to_string()),
        );
        for (name, value) in fields {
            form = form.text(name.to_string(), value.to_string());
        }
        self.client
            .post(self.url("/api/v1/documents"))
            .bearer_auth(token)
            .multipart(form)
            .send()
            .await
            .expect("request")
    }

    /// Shuts the server down and waits for it, returning its result; keeps the data directory.
    pub async fn stop(self) -> (anyhow::Result<()>, TempDir) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(15), self.server)
            .await
            .expect("server stops within its drain deadline")
            .expect("server task");
        (result, self.dir)
    }
}

/// Asserts the `{"error": {"code", "message"}}` envelope and returns the message.
/// Waits until `check` gives a value, looking again every 20 ms for up to a minute: a busy
/// machine makes a test slower, never wrong. Panics naming `what` when the minute is up.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn expect_error(response: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(response.status().as_u16(), status, "status");
    assert!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json")),
        "error responses are JSON: {:?}",
        response.headers()
    );
    let body: serde_json::Value = response.json().await.expect("JSON body");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"]
        .as_str()
        .expect("message")
        .to_string();
    assert!(!message.is_empty(), "{body}");
    message
}

/// The folder of test models that `scripts/fetch-test-models` fills (the test command exports
/// `COMPANERO_TEST_MODELS`). Fails loudly rather than skipping when they are missing.
pub fn test_models() -> std::path::PathBuf {
    let dir = std::env::var_os("COMPANERO_TEST_MODELS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/companero/test-models")
        });
    assert!(
        dir.join("smollm2-135m-instruct").is_dir() && dir.join("all-minilm-l6-v2").is_dir(),
        "test models missing in {}: run scripts/fetch-test-models (scripts/test does)",
        dir.display()
    );
    dir
}

pub fn smollm_gguf() -> std::path::PathBuf {
    test_models().join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
}

pub fn minilm_dir() -> std::path::PathBuf {
    test_models().join("all-minilm-l6-v2")
}
