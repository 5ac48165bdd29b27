//! The OpenAI-compatible API (`/v1`) with the real test models: the coach grounded with
//! citations (whole and streamed), the raw chat model, embeddings, OpenAI's error envelope,
//! usage in analytics, tenancy; and the official `openai` Python SDK against it.

mod common;

use base64::Engine as _;
use common::TestApp;
use common::chat::{parse_sse, start, with_models};
use reqwest::Method;
use serde_json::{Value, json};

/// An API key of the caller's tenant (role coach).
async fn api_key(app: &TestApp, staff: &str) -> String {
    let key = app
        .json_ok(
            Method::POST,
            "/api/v1/api-keys",
            staff,
            Some(json!({"name": "automation", "role": "coach"})),
        )
        .await;
    key["key"].as_str().unwrap().to_string()
}

async fn completion(app: &TestApp, key: &str, body: Value) -> Value {
    let response = app
        .send(Method::POST, "/v1/chat/completions", key, Some(body))
        .await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// The `data:` payloads of an OpenAI event stream, `[DONE]` included as a string.
async fn chunks(app: &TestApp, key: &str, body: Value) -> Vec<Value> {
    let response = app
        .send(Method::POST, "/v1/chat/completions", key, Some(body))
        .await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = response.text().await.unwrap();
    parse_sse(&text)
        .into_iter()
        .map(|event| event.data)
        .collect()
}

fn streamed_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

/// An error in OpenAI's envelope; returns its `error` object.
async fn openai_error(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status);
    let body: Value = response.json().await.unwrap();
    let error = body["error"].clone();
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(
        error["type"].is_string() && error["code"].is_string(),
        "{body}"
    );
    assert!(error.get("param").is_some(), "{body}");
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coach_answers_with_citations_whole_and_streamed() {
    let app = start(with_models).await;
    let (staff, _) = app.coach_taught_the_guide(json!({})).await;
    let key = api_key(&app, &staff).await;

    let models = app.json_ok(Method::GET, "/v1/models", &key, None).await;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids[0], "coach");
    assert!(ids.contains(&"all-minilm-l6-v2"), "{models}");
    assert_eq!(ids.len(), 3, "{models}");

    let question = json!([
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": [{"type": "text", "text": "How long do refunds take?"}]},
    ]);
    let whole = completion(&app, &key, json!({"model": "coach", "messages": question})).await;
    assert_eq!(whole["object"], "chat.completion");
    let answer = whole["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(answer.contains("14"), "{whole}");
    assert_eq!(whole["choices"][0]["finish_reason"], "stop");
    assert_eq!(whole["companero"]["fallback"], false);
    assert_eq!(
        whole["companero"]["citations"][0]["document_title"],
        "Refund policy"
    );
    let usage = &whole["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 100, "{usage}");
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );

    // The same answer streamed, with the usage and the citations at the end.
    let streamed = chunks(
        &app,
        &key,
        json!({"model": "coach", "messages": question, "stream": true,
               "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(streamed[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(streamed_text(&streamed), answer);
    assert_eq!(streamed.last().unwrap(), "[DONE]");
    let last = &streamed[streamed.len() - 2];
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], whole["usage"]);
    assert_eq!(
        last["companero"]["citations"],
        whole["companero"]["citations"]
    );
    let finish = &streamed[streamed.len() - 3];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert!(
        streamed
            .iter()
            .all(|c| c == "[DONE]" || c["id"] == streamed[0]["id"])
    );

    // Nothing in the knowledge base: the creator's fallback, no citations, no model.
    let off_topic = completion(
        &app,
        &key,
        json!({"model": "coach", "messages": [{"role": "user", "content": "Which planet has the most moons?"}]}),
    )
    .await;
    assert_eq!(off_topic["companero"]["fallback"], true, "{off_topic}");
    assert_eq!(off_topic["companero"]["citations"], json!([]));
    assert_eq!(off_topic["usage"]["completion_tokens"], 0);

    // A follow-up is understood from the caller's conversation, which is never stored.
    let follow_up = completion(
        &app,
        &key,
        json!({"model": "coach", "messages": [
            {"role": "user", "content": "How long do refunds take?"},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "Which card do they go to?"},
        ]}),
    )
    .await;
    assert_eq!(follow_up["companero"]["fallback"], false, "{follow_up}");
    let conversations = app
        .json_ok(Method::GET, "/api/v1/inbox", &staff, None)
        .await;
    assert!(
        !conversations.to_string().contains("refunds take"),
        "API completions are not conversations: {conversations}"
    );

    // Use is counted per key and shown in analytics.
    let report = app
        .json_ok(Method::GET, "/api/v1/analytics", &staff, None)
        .await;
    let row = &report["api_usage"][0];
    assert_eq!(row["endpoint"], "chat.completions", "{report}");
    assert_eq!(row["requests"], 4);
    assert!(row["credential"].as_str().unwrap().starts_with("cmp_"));
    assert!(row["prompt_tokens"].as_i64().unwrap() > 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_model_follows_openais_sampling_fields() {
    let app = start(with_models).await;
    let staff = app.sign_up("maker@example.com").await;
    let key = api_key(&app, &staff).await;
    let models = app.json_ok(Method::GET, "/v1/models", &key, None).await;
    let model = models["data"][1]["id"].as_str().unwrap().to_string();
    let messages = json!([{"role": "user", "content": "Write a short poem about the sea."}]);

    let cut = completion(
        &app,
        &key,
        json!({"model": model, "messages": messages, "max_tokens": 5}),
    )
    .await;
    assert_eq!(cut["choices"][0]["finish_reason"], "length", "{cut}");
    assert_eq!(cut["usage"]["completion_tokens"], 5);
    assert_eq!(cut["model"], model.as_str());

    // The same seed samples the same text; another seed (almost surely) another.
    let sampled = |seed: u64| {
        json!({"model": model, "messages": messages, "max_completion_tokens": 24,
               "temperature": 1.2, "top_p": 0.95, "seed": seed})
    };
    let first = completion(&app, &key, sampled(7)).await;
    let again = completion(&app, &key, sampled(7)).await;
    let other = completion(&app, &key, sampled(8)).await;
    let text = |v: &Value| {
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(text(&first), text(&again));
    assert_ne!(text(&first), text(&other));

    // A stop string ends the answer before it, streamed as well as whole.
    let greedy = completion(
        &app,
        &key,
        json!({"model": model, "messages": messages, "max_tokens": 30, "temperature": 0}),
    )
    .await;
    let full = text(&greedy);
    let word = full
        .split_whitespace()
        .nth(3)
        .expect("a few words")
        .to_string();
    let stopped = chunks(
        &app,
        &key,
        json!({"model": model, "messages": messages, "max_tokens": 30, "temperature": 0,
               "stop": [word], "stream": true}),
    )
    .await;
    let before = streamed_text(&stopped);
    assert!(
        full.starts_with(&before) && !before.contains(&word),
        "{before:?} / {full:?}"
    );
    assert_eq!(
        stopped[stopped.len() - 2]["choices"][0]["finish_reason"],
        "stop"
    );
    assert!(stopped.iter().all(|c| c.get("usage").is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_come_as_floats_or_base64() {
    let app = start(with_models).await;
    let staff = app.sign_up("maker@example.com").await;
    let key = api_key(&app, &staff).await;
    let texts = [
        "How long do refunds take?",
        "When is the money returned?",
        "Keep the bedroom cool.",
    ];
    let floats = app
        .json_ok(
            Method::POST,
            "/v1/embeddings",
            &key,
            Some(json!({"model": "text-embedding-3-small", "input": texts})),
        )
        .await;
    assert_eq!(floats["model"], "all-minilm-l6-v2");
    let vectors: Vec<Vec<f32>> = floats["data"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, item)| {
            assert_eq!(item["index"], i);
            serde_json::from_value(item["embedding"].clone()).unwrap()
        })
        .collect();
    assert_eq!(vectors.len(), 3);
    assert_eq!(vectors[0].len(), 384);
    let cosine = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    assert!(cosine(&vectors[0], &vectors[1]) > cosine(&vectors[0], &vectors[2]));
    assert!(floats["usage"]["prompt_tokens"].as_u64().unwrap() >= 15);

    let encoded = app
        .json_ok(
            Method::POST,
            "/v1/embeddings",
            &key,
            Some(json!({"model": "x", "input": texts[0], "encoding_format": "base64"})),
        )
        .await;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(decoded, vectors[0]);

    for (body, param) in [
        (json!({"model": "x", "input": []}), "input"),
        (json!({"model": "x", "input": [[1, 2, 3]]}), "input"),
        (
            json!({"model": "x", "input": "a", "encoding_format": "int8"}),
            "encoding_format",
        ),
        (
            json!({"model": "x", "input": "a", "dimensions": 128}),
            "dimensions",
        ),
    ] {
        let response = app
            .send(Method::POST, "/v1/embeddings", &key, Some(body))
            .await;
        let error = openai_error(response, 400).await;
        assert_eq!(error["param"], param, "{error}");
        assert_eq!(error["type"], "invalid_request_error");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_use_openais_envelope_and_tenants_stay_apart() {
    let app = start(|config| {
        with_models(config);
        config.rate_limits.api_per_tenant = 40;
    })
    .await;
    let (staff, _) = app.coach_taught_the_guide(json!({})).await;
    let key = api_key(&app, &staff).await;
    let ask = json!([{"role": "user", "content": "How long do refunds take?"}]);

    let anonymous = app.client.get(app.url("/v1/models")).send().await.unwrap();
    assert_eq!(
        openai_error(anonymous, 401).await["type"],
        "authentication_error"
    );
    let cases = [
        (
            json!({"model": "coach", "messages": ask, "tools": [{"type": "function"}]}),
            400,
            "tools",
        ),
        (json!({"model": "coach", "messages": ask, "n": 2}), 400, "n"),
        (
            json!({"model": "coach", "messages": [{"role": "tool", "content": "x"}]}),
            400,
            "messages[0].role",
        ),
        (
            json!({"model": "coach", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            400,
            "messages[0].content[0]",
        ),
        (
            json!({"model": "coach", "messages": ask, "temperature": 3}),
            400,
            "temperature",
        ),
        (
            json!({"model": "coach", "messages": ask, "stop": ["a", "b", "c", "d", "e"]}),
            400,
            "stop",
        ),
        (
            json!({"model": "coach", "messages": [{"role": "assistant", "content": "Hi"}]}),
            400,
            "messages",
        ),
        (json!({"model": "gpt-4o", "messages": ask}), 404, "model"),
        (json!({"messages": ask}), 400, "model"),
    ];
    for (body, status, param) in cases {
        let response = app
            .send(
                Method::POST,
                "/v1/chat/completions",
                &key,
                Some(body.clone()),
            )
            .await;
        let error = openai_error(response, status).await;
        assert_eq!(error["param"], param, "{body}: {error}");
    }
    let unknown = app.send(Method::GET, "/v1/assistants", &key, None).await;
    assert_eq!(openai_error(unknown, 404).await["type"], "not_found_error");
    let not_json = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .body("{")
        .send()
        .await
        .unwrap();
    openai_error(not_json, 400).await;

    // Another creator's key reaches only their own coach: A's guide is not theirs.
    let other = app.sign_up("other@example.com").await;
    let other_key = api_key(&app, &other).await;
    let theirs = completion(&app, &other_key, json!({"model": "coach", "messages": ask})).await;
    assert_eq!(theirs["companero"]["fallback"], true, "{theirs}");
    assert!(!theirs.to_string().contains("14 days"), "{theirs}");

    // The tenant's rate limit, in OpenAI's shape with Retry-After.
    let limited = loop {
        let response = app.send(Method::GET, "/v1/models", &key, None).await;
        if response.status() == 429 {
            break response;
        }
        assert_eq!(response.status(), 200);
    };
    assert!(
        limited.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(openai_error(limited, 429).await["type"], "rate_limit_error");
}

/// The official `openai` Python SDK (tests/python/requirements.txt, which scripts/test installs
/// into `COMPANERO_PYTHON_PACKAGES`) against two servers: one with the taught coach, one whose
/// API rate limit is three requests a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_works_against_the_server() {
    let packages = std::env::var("COMPANERO_PYTHON_PACKAGES").unwrap_or_else(|_| {
        format!(
            "{}/.cache/companero/python-packages",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let has_sdk = std::process::Command::new("python3")
        .args(["-c", "import openai"])
        .env("PYTHONPATH", &packages)
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_sdk,
        "openai is not installed in {packages}: run scripts/test (it installs tests/python/requirements.txt)"
    );
    let app = start(with_models).await;
    let (staff, _) = app.coach_taught_the_guide(json!({})).await;
    let key = api_key(&app, &staff).await;
    let limited = start(|config| {
        with_models(config);
        config.rate_limits.api_per_tenant = 3;
    })
    .await;
    let limited_staff = limited.sign_up("limited@example.com").await;
    let limited_key = api_key(&limited, &limited_staff).await;

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/openai_sdk_check.py"
    );
    let output = tokio::process::Command::new("python3")
        .arg(script)
        .env("PYTHONPATH", &packages)
        .env("COMPANERO_URL", format!("http://{}", app.addr))
        .env("COMPANERO_KEY", &key)
        .env("COMPANERO_LIMITED_URL", format!("http://{}", limited.addr))
        .env("COMPANERO_LIMITED_KEY", &limited_key)
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("ok: RateLimitError with Retry-After"),
        "{stdout}"
    );
}
