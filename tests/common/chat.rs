//! Conversation helpers shared by the chat, live-chat and browser tests: a coach taught a short
//! guide, visitors, conversations, messages and event streams.

use std::time::{Duration, Instant};

use companero::auth::accounts::SignupPolicy;
use companero::config::Config;
use serde_json::{Value, json};

use super::{Options, TestApp, minilm_dir, smollm_gguf};

pub const GUIDE: &str = "# Refund policy\n\n\
    Refunds are paid within 14 days of the request, to the card used for the purchase. \
    To ask for a refund, write to the support team from the email address of your account.\n\n\
    # Sleep\n\n\
    Keep the bedroom cool, around 18 degrees, and dark. Stop using screens one hour before bed.\n";

pub fn with_models(config: &mut Config) {
    config.signup = SignupPolicy::Open;
    config.embedder = Some(minilm_dir().display().to_string());
    config.llm = Some(smollm_gguf().display().to_string());
}

pub async fn start(configure: impl FnOnce(&mut Config) + 'static) -> TestApp {
    let app = TestApp::start(Options {
        configure: Some(Box::new(configure)),
        ..Options::default()
    })
    .await;
    app.wait_for_models().await;
    app
}

/// One SSE event.
#[derive(Debug)]
pub struct Sse {
    pub event: String,
    pub data: Value,
}

pub fn parse_sse(body: &str) -> Vec<Sse> {
    body.split("\n\n")
        .filter_map(|block| {
            let mut event = String::from("message");
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = e.trim().to_string();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            (!data.is_empty()).then(|| Sse {
                event,
                data: serde_json::from_str(&data).unwrap_or(Value::String(data)),
            })
        })
        .collect()
}

impl TestApp {
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .request(method, self.url(path))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap()
    }

    pub async fn json_ok(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Value {
        let response = self.send(method, path, token, body).await;
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    /// Uploads a Markdown guide and waits until it is searchable.
    pub async fn teach(&self, token: &str, text: &str) -> String {
        self.teach_file(token, "guide.md", text).await
    }

    /// Uploads `text` as `filename` and waits until it is ready; its id.
    pub async fn teach_file(&self, token: &str, filename: &str, text: &str) -> String {
        let response = self
            .upload_with(token, filename, text.as_bytes().to_vec(), &[])
            .await;
        assert_eq!(response.status(), 202);
        let id = response.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let document = self
                .json_ok(
                    reqwest::Method::GET,
                    &format!("/api/v1/documents/{id}"),
                    token,
                    None,
                )
                .await;
            if document["status"] == "ready" {
                return id;
            }
            assert_ne!(document["status"], "failed", "{document}");
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn visitor(&self, slug: &str) -> String {
        let response = self
            .client
            .post(self.url(&format!("/api/v1/public/coaches/{slug}/visitors")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        assert!(body["coach"]["greeting"].as_str().is_some());
        body["token"].as_str().unwrap().to_string()
    }

    pub async fn conversation(&self, token: &str) -> String {
        let response = self
            .send(reqwest::Method::POST, "/api/v1/conversations", token, None)
            .await;
        assert_eq!(response.status(), 201);
        response.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Posts a message; the raw response (an event stream unless the body says otherwise).
    pub async fn post_message(
        &self,
        token: &str,
        conversation: &str,
        body: Value,
    ) -> reqwest::Response {
        let path = format!("/api/v1/conversations/{conversation}/messages");
        self.send(reqwest::Method::POST, &path, token, Some(body))
            .await
    }

    /// Asks without streaming and returns the stored answer.
    pub async fn ask(&self, token: &str, conversation: &str, content: &str) -> Value {
        let response = self
            .post_message(
                token,
                conversation,
                json!({"content": content, "stream": false}),
            )
            .await;
        assert!(response.status().is_success(), "{}", response.status());
        response.json().await.unwrap()
    }

    pub async fn history(&self, token: &str, conversation: &str) -> Value {
        let path = format!("/api/v1/conversations/{conversation}/messages");
        self.json_ok(reqwest::Method::GET, &path, token, None).await
    }

    pub async fn slug(&self, token: &str) -> String {
        self.json_ok(reqwest::Method::GET, "/api/v1/coach", token, None)
            .await["slug"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// A creator whose coach knows [`GUIDE`] and decodes greedily (the test model then answers
    /// the same on every run), with `settings` applied too; returns (access token, slug).
    pub async fn coach_taught_the_guide(&self, settings: Value) -> (String, String) {
        let staff = self.sign_up("coach@example.com").await;
        self.teach(&staff, GUIDE).await;
        let mut change = json!({"temperature": 0.0});
        if let (Some(change), Some(extra)) = (change.as_object_mut(), settings.as_object()) {
            change.extend(extra.clone());
        }
        self.json_ok(
            reqwest::Method::PATCH,
            "/api/v1/coach",
            &staff,
            Some(change),
        )
        .await;
        let slug = self.slug(&staff).await;
        (staff, slug)
    }
}
