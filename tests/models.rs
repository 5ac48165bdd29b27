//! Models on disk and on the command line: `companero models pull | list | import | rm` against a
//! stand-in Hub, and `serve` finding, downloading and loading its models without blocking.

mod common;

use std::time::{Duration, Instant};

use common::hub::StandInHub;
use common::process::{Served, companero, stderr, stdout};
use common::{minilm_dir, smollm_gguf};
use serde_json::Value;

const MINILM_FILES: [&str; 5] = [
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
];

fn minilm_files_as(repo: &'static str) -> Vec<(&'static str, &'static str, Vec<u8>)> {
    MINILM_FILES
        .iter()
        .map(|file| (repo, *file, std::fs::read(minilm_dir().join(file)).unwrap()))
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_downloads_through_hf_endpoint_with_the_token_then_list_and_rm() {
    let hub = StandInHub::start(minilm_files_as("sentence-transformers/all-MiniLM-L6-v2")).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let env = [
        ("HF_ENDPOINT", hub.url.as_str()),
        ("HF_TOKEN", "hf_test_token"),
    ];

    let pulled = companero(
        &["models", "pull", "all-minilm-l6-v2", "--data-dir", data],
        &env,
    );
    assert!(pulled.status.success(), "{}", stderr(&pulled));
    assert!(
        stdout(&pulled).contains("installed all-minilm-l6-v2"),
        "{}",
        stdout(&pulled)
    );
    assert!(
        hub.authorizations()
            .iter()
            .all(|a| a == "Bearer hf_test_token")
            && !hub.authorizations().is_empty(),
        "{:?}",
        hub.authorizations()
    );

    let installed = dir.path().join("models/all-minilm-l6-v2");
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(installed.join("companero-model.json")).unwrap(),
    )
    .unwrap();
    let weights = std::fs::read(minilm_dir().join("model.safetensors")).unwrap();
    let record = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "model.safetensors")
        .unwrap();
    assert_eq!(
        record["sha256"],
        sha256_hex(&weights),
        "the hash is recorded"
    );
    assert_eq!(
        std::fs::read(installed.join("model.safetensors")).unwrap(),
        weights
    );
    assert!(
        installed.join("1_Pooling/config.json").is_file(),
        "optional files come along"
    );
    assert_eq!(
        manifest["source"],
        "hf:sentence-transformers/all-MiniLM-L6-v2"
    );

    let list = stdout(&companero(&["models", "list", "--data-dir", data], &[]));
    let line = list
        .lines()
        .find(|l| l.starts_with("all-minilm-l6-v2 "))
        .unwrap();
    assert!(line.contains("installed"), "{list}");

    let again = companero(
        &["models", "pull", "all-minilm-l6-v2", "--data-dir", data],
        &env,
    );
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already installed"),
        "{}",
        stderr(&again)
    );

    let removed = companero(
        &["models", "rm", "all-minilm-l6-v2", "--data-dir", data],
        &[],
    );
    assert!(removed.status.success(), "{}", stderr(&removed));
    assert!(!installed.exists());
}

/// The offset an interrupted hf-hub download had committed: its partial file holds the data
/// followed by that offset as 8 little-endian bytes.
fn committed_offset(downloads: &std::path::Path) -> Option<u64> {
    let mut stack = vec![downloads.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(".sync.part") {
                let bytes = std::fs::read(&path).ok()?;
                let trailer: [u8; 8] = bytes[bytes.len() - 8..].try_into().ok()?;
                return Some(u64::from_le_bytes(trailer));
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_pull_resumes_where_it_stopped() {
    // Chunks are 10 MB and fetched in no fixed order; the first request past 50 MB fails.
    const FAILS_AT: usize = 50_000_000;
    let hub = StandInHub::start_failing_once(
        minilm_files_as("sentence-transformers/all-MiniLM-L6-v2"),
        Some(FAILS_AT),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let env = [("HF_ENDPOINT", hub.url.as_str())];

    let interrupted = companero(
        &["models", "pull", "all-minilm-l6-v2", "--data-dir", data],
        &env,
    );
    assert!(!interrupted.status.success(), "the first pull breaks off");
    assert!(!dir.path().join("models/all-minilm-l6-v2").exists());
    let committed = committed_offset(&dir.path().join("models/.downloads"))
        .expect("the partial download is kept for the next pull");
    // Requests the killed first process had already sent are handled before the slate is wiped.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    hub.take_ranges();

    let resumed = companero(
        &["models", "pull", "all-minilm-l6-v2", "--data-dir", data],
        &env,
    );
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    // Apart from one-byte metadata probes, nothing below the committed offset is fetched again.
    let data_requests: Vec<usize> = hub
        .take_ranges()
        .into_iter()
        .filter(|(file, start, end)| file == "model.safetensors" && end > start)
        .map(|(_, start, _)| start)
        .collect();
    assert!(!data_requests.is_empty());
    assert!(
        data_requests.iter().all(|&start| start as u64 >= committed),
        "committed {committed}, requested again from {data_requests:?}"
    );
    let installed =
        std::fs::read(dir.path().join("models/all-minilm-l6-v2/model.safetensors")).unwrap();
    assert_eq!(
        installed,
        std::fs::read(minilm_dir().join("model.safetensors")).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pull_says_what_failed_and_installs_nothing() {
    let hub = StandInHub::start(Vec::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let env = [("HF_ENDPOINT", hub.url.as_str())];

    let failed = companero(
        &["models", "pull", "all-minilm-l6-v2", "--data-dir", data],
        &env,
    );
    assert!(!failed.status.success());
    let message = stderr(&failed);
    assert!(
        message.contains("model.safetensors") && message.contains(&hub.url),
        "{message}"
    );
    assert!(!dir.path().join("models/all-minilm-l6-v2").exists());

    let unknown = companero(
        &["models", "pull", "no-such-model", "--data-dir", data],
        &env,
    );
    assert!(
        stderr(&unknown).contains("not in the catalog"),
        "{}",
        stderr(&unknown)
    );
}

#[test]
fn import_installs_local_models_and_checks_known_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    // Bytes that are not the published file are refused under a name with a verified hash.
    let fake = dir.path().join("fake.gguf");
    std::fs::write(&fake, b"GGUF but not really").unwrap();
    let import_as = |path: &std::path::Path, name: &str| {
        companero(
            &[
                "models",
                "import",
                path.to_str().unwrap(),
                "--name",
                name,
                "--data-dir",
                data,
            ],
            &[],
        )
    };
    let refused = import_as(&fake, "smollm2-135m-instruct-q4_1");
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("sha256"), "{}", stderr(&refused));
    let wrong_kind = import_as(&fake, "all-minilm-l6-v2-test");
    assert!(
        stderr(&wrong_kind).contains("embedder model in the catalog"),
        "{}",
        stderr(&wrong_kind)
    );

    let imported = import_as(&smollm_gguf(), "smollm2-135m-instruct-q4_1");
    assert!(imported.status.success(), "{}", stderr(&imported));
    assert!(stdout(&imported).contains("chat"), "{}", stdout(&imported));

    let folder = companero(
        &[
            "models",
            "import",
            minilm_dir().to_str().unwrap(),
            "--data-dir",
            data,
        ],
        &[],
    );
    assert!(folder.status.success(), "{}", stderr(&folder));
    assert!(stdout(&folder).contains("embedder"), "{}", stdout(&folder));

    let not_a_model = companero(
        &["models", "import", "/etc/hostname", "--data-dir", data],
        &[],
    );
    assert!(
        stderr(&not_a_model).contains("not a .gguf file"),
        "{}",
        stderr(&not_a_model)
    );
}

async fn readiness(client: &reqwest::Client, base: &str) -> (u16, Value) {
    let response = client.get(format!("{base}/readyz")).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn wait_until_ready(client: &reqwest::Client, base: &str, served: &Served) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (status, body) = readiness(client, base).await;
        if status == 200 {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "not ready in time: {body}\n{}",
            served.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_loads_the_models_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(
        dir.path().to_str().unwrap(),
        &[
            "--offline",
            "--llm",
            smollm_gguf().to_str().unwrap(),
            "--embedder",
            minilm_dir().to_str().unwrap(),
        ],
    );
    let base = served.wait_for_address();
    let client = reqwest::Client::new();
    let body = wait_until_ready(&client, &base, &served).await;
    assert_eq!(body["components"]["llm"]["architecture"], "llama", "{body}");
    assert_eq!(
        body["components"]["llm"]["chat_template"], "model",
        "{body}"
    );
    assert_eq!(body["components"]["embedder"]["dimensions"], 384, "{body}");
    let (status, _, log) = served.terminate_and_wait();
    assert!(status.success(), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_answers_at_once_and_fetches_the_default_models_in_the_background() {
    // The stand-in Hub serves the test models under the catalog defaults' names.
    let mut files = vec![(
        "Qwen/Qwen2.5-1.5B-Instruct-GGUF",
        "qwen2.5-1.5b-instruct-q4_k_m.gguf",
        std::fs::read(smollm_gguf()).unwrap(),
    )];
    files.extend(minilm_files_as("nomic-ai/nomic-embed-text-v1.5"));
    let hub = StandInHub::start(files).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();

    let started = Instant::now();
    let served = Served::start_with_env(data, &[], &[("HF_ENDPOINT", hub.url.as_str())]);
    let base = served.wait_for_address();
    let client = reqwest::Client::new();
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    let body = wait_until_ready(&client, &base, &served).await;
    assert_eq!(body["components"]["llm"]["ready"], true, "{body}");
    assert_eq!(body["components"]["embedder"]["ready"], true, "{body}");
    let (status, _, log) = served.terminate_and_wait();
    assert!(status.success(), "{log}");
    assert!(log.contains("downloading"), "{log}");

    // The next start finds them installed, with no Hub at all.
    let offline = Served::start(data, &["--offline"]);
    let base = offline.wait_for_address();
    wait_until_ready(&client, &base, &offline).await;
    offline.terminate_and_wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_fails_to_load_is_reported_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.gguf");
    std::fs::write(&broken, b"this is not a model").unwrap();
    let served = Served::start(
        dir.path().join("data").to_str().unwrap(),
        &["--offline", "--llm", broken.to_str().unwrap()],
    );
    let base = served.wait_for_address();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let (status, body) = readiness(&client, &base).await;
        assert_eq!(status, 503);
        if body["components"]["llm"]["state"] == "failed" || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let message = body["components"]["llm"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("broken.gguf") && message.contains("not a GGUF"),
        "{body}"
    );
    assert_eq!(
        client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    served.terminate_and_wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_pulls_a_catalog_model_from_the_api_and_follows_its_progress() {
    let hub = StandInHub::start(minilm_files_as("sentence-transformers/all-MiniLM-L6-v2")).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let served = Served::start_with_env(data, &["--offline"], &[("HF_ENDPOINT", hub.url.as_str())]);
    let base = served.wait_for_address();
    let client = reqwest::Client::new();
    let registered: Value = client
        .post(format!("{base}/api/v1/auth/register"))
        .json(&serde_json::json!({"email": "owner@example.com",
            "password": "violet tractor sings at noon", "full_name": "Owner",
            "setup_token": std::fs::read_to_string(dir.path().join("setup-token")).unwrap().trim()}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = registered["access_token"].as_str().unwrap();
    let models = format!("{base}/api/v1/admin/models");
    // The catalog entry of the model, as the owner's screen lists it now.
    let minilm = async || {
        let body: Value = client
            .get(&models)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "all-minilm-l6-v2")
            .unwrap()
            .clone()
    };
    assert_eq!(minilm().await["installed"], false);

    let pull = format!("{base}/api/v1/admin/models/all-minilm-l6-v2/pull");
    let started = client.post(&pull).bearer_auth(token).send().await.unwrap();
    assert_eq!(started.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(60);
    let installed = loop {
        let model = minilm().await;
        assert_ne!(model["download"]["state"], "failed", "{model}");
        if model["installed"] == true {
            break model;
        }
        assert!(Instant::now() < deadline, "{model}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(installed["download"]["state"], "installed");
    assert!(installed["download"]["done_bytes"].as_u64().unwrap() > 1_000_000);
    let again = client.post(&pull).bearer_auth(token).send().await.unwrap();
    assert_eq!(again.status(), 409);
    let unknown = client
        .post(format!("{base}/api/v1/admin/models/no-such-model/pull"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 422);
    let (status, _, log) = served.terminate_and_wait();
    assert!(status.success(), "{log}");
}
