//! A remote inference backend: Compañero started with `--llm-url` and `--embed-url` pointing at
//! llama.cpp's OpenAI-compatible server (`python -m llama_cpp.server` from llama-cpp-python,
//! built by `scripts/llama-server-env`), one for SmolLM2 and one for MiniLM converted to GGUF.
//! Documents are embedded there, grounded answers stream from there, and a server killed in the
//! middle of an answer ends it cleanly.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::chat::parse_sse;
use common::{Options, TestApp, minilm_dir, smollm_gguf};
use companero::auth::accounts::SignupPolicy;
use companero::inference::remote::RemoteEndpoint;
use reqwest::Method;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The python of the environment `scripts/llama-server-env` builds (`scripts/test` exports it).
fn llama_python() -> PathBuf {
    let python = std::env::var_os("COMPANERO_LLAMA_SERVER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME");
            Path::new(&home).join(".cache/companero/llama-server/bin/python")
        });
    assert!(
        python.exists(),
        "{} is missing: run scripts/llama-server-env (scripts/test does)",
        python.display()
    );
    python
}

/// MiniLM as GGUF, written by `tests/python/bert_to_gguf.py` into `dir`.
fn minilm_gguf(dir: &Path) -> PathBuf {
    let out = dir.join("all-minilm-l6-v2.gguf");
    let status = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/bert_to_gguf.py"
        ))
        .arg(minilm_dir())
        .arg(&out)
        .status()
        .expect("run bert_to_gguf.py");
    assert!(status.success());
    out
}

/// One `llama_cpp.server` process, killed when dropped. Its log counts the calls it served.
struct LlamaServer {
    child: Arc<Mutex<Child>>,
    log: PathBuf,
    port: u16,
}

impl LlamaServer {
    fn start(model: &Path, log: PathBuf, extra: &[&str]) -> LlamaServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let output = std::fs::File::create(&log).unwrap();
        let child = Command::new(llama_python())
            .args([
                "-m",
                "llama_cpp.server",
                "--host",
                "127.0.0.1",
                "--verbose",
                "false",
            ])
            .arg("--port")
            .arg(port.to_string())
            .arg("--model")
            .arg(model)
            .args(extra)
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .stdin(Stdio::null())
            .spawn()
            .expect("start llama_cpp.server");
        LlamaServer {
            child: Arc::new(Mutex::new(child)),
            log,
            port,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// Waits until the server lists its model.
    async fn wait_until_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let client = reqwest::Client::new();
        loop {
            let listed = client.get(format!("{}/models", self.url())).send().await;
            if listed.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            let exited = self.child.lock().unwrap().try_wait().unwrap();
            assert!(
                exited.is_none(),
                "llama_cpp.server exited: {}",
                self.log_text()
            );
            assert!(Instant::now() < deadline, "llama_cpp.server never served");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Requests it answered on `path`.
    fn calls(&self, path: &str) -> usize {
        self.log_text()
            .matches(&format!("\"POST {path} HTTP"))
            .count()
    }

    fn kill(&self) {
        let mut child = self.child.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Relays TCP to `server` and kills it once `cut_after` event-stream `data:` lines have passed
/// back: the server dies in the middle of an answer, whatever its speed.
async fn killing_proxy(server: &LlamaServer, cut_after: usize) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let upstream = format!("127.0.0.1:{}", server.port);
    let child = Arc::clone(&server.child);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let Ok(mut backend) = tokio::net::TcpStream::connect(&upstream).await else {
                continue; // the server is gone: the caller sees the connection close
            };
            let child = Arc::clone(&child);
            tokio::spawn(async move {
                let (mut client_read, mut client_write) = client.split();
                let (mut backend_read, mut backend_write) = backend.split();
                let up = tokio::io::copy(&mut client_read, &mut backend_write);
                let down = async {
                    let mut seen = 0;
                    let mut buffer = [0u8; 4096];
                    loop {
                        let n = backend_read.read(&mut buffer).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        seen += count(&buffer[..n], b"data: ");
                        if client_write.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                        if seen >= cut_after {
                            let mut child = child.lock().unwrap();
                            let _ = child.kill();
                            let _ = child.wait();
                            break;
                        }
                    }
                };
                tokio::select! { _ = up => {}, _ = down => {} }
            });
        }
    });
    format!("http://{address}/v1")
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| w == &needle)
        .count()
}

/// Compañero with chat at `llm_url` and embeddings at `embed_url`, both remote.
async fn start_with_remotes(llm_url: String, embed_url: String) -> TestApp {
    let app = TestApp::start(Options {
        configure: Some(Box::new(move |config| {
            config.signup = SignupPolicy::Open;
            config.remote_llm = Some(RemoteEndpoint {
                url: llm_url,
                api_key: Some("sk-test-never-logged".into()),
                model: None,
            });
            config.remote_embedder = Some(RemoteEndpoint {
                url: embed_url,
                api_key: None,
                model: None,
            });
        })),
        ..Options::default()
    })
    .await;
    wait_for_readiness(&app, |body| {
        body["components"]["llm"]["ready"] == true
            && body["components"]["embedder"]["ready"] == true
    })
    .await;
    app
}

/// Waits until `/readyz` satisfies `condition`; returns its body.
async fn wait_for_readiness(app: &TestApp, condition: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body: Value = app.get("/readyz").await.json().await.unwrap();
        if condition(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "readiness never came: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Servers {
    llm: LlamaServer,
    embedder: LlamaServer,
    _dir: TempDir,
}

async fn llama_servers() -> Servers {
    let dir = tempfile::tempdir().unwrap();
    let llm = LlamaServer::start(
        &smollm_gguf(),
        dir.path().join("llm.log"),
        &["--n_ctx", "4096"],
    );
    let embedder = LlamaServer::start(
        &minilm_gguf(dir.path()),
        dir.path().join("embedder.log"),
        &["--embedding", "true", "--n_ctx", "512"],
    );
    llm.wait_until_serving().await;
    embedder.wait_until_serving().await;
    Servers {
        llm,
        embedder,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_are_embedded_and_answers_streamed_by_a_remote_server() {
    let servers = llama_servers().await;
    let app = start_with_remotes(servers.llm.url(), servers.embedder.url()).await;

    // Readiness names the servers, the models they listed, the embedder's dimensions, and that
    // the prompt cache does not apply.
    let ready: Value = app.get("/readyz").await.json().await.unwrap();
    let llm = &ready["components"]["llm"];
    assert_eq!(llm["remote"]["url"], servers.llm.url(), "{ready}");
    assert_eq!(llm["remote"]["reachable"], true);
    assert!(
        llm["remote"]["model"].as_str().unwrap().ends_with(".gguf"),
        "{ready}"
    );
    assert!(
        llm["prompt_cache"].as_str().unwrap().contains("not used"),
        "{ready}"
    );
    let embedder = &ready["components"]["embedder"];
    assert_eq!(embedder["remote"]["dimensions"], 384, "{ready}");
    assert_eq!(embedder["dimensions"], 384, "{ready}");

    // The guide is embedded by the remote embedder.
    let before = servers.embedder.calls("/v1/embeddings");
    let (staff, slug) = app.coach_taught_the_guide(json!({})).await;
    assert!(
        servers.embedder.calls("/v1/embeddings") > before,
        "{}",
        servers.embedder.log_text()
    );

    // An end user's question is answered by the remote model, streamed, grounded and cited.
    let visitor = app.visitor(&slug).await;
    let conversation = app.conversation(&visitor).await;
    let response = app
        .post_message(
            &visitor,
            &conversation,
            json!({"content": "How many days does it take to get a refund?"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let events = parse_sse(&response.text().await.unwrap());
    let message = &events.last().unwrap().data;
    assert_eq!(events.last().unwrap().event, "message", "{events:?}");
    let streamed: String = events
        .iter()
        .filter(|e| e.event == "delta")
        .map(|e| e.data["text"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, message["content"].as_str().unwrap());
    assert_eq!(message["fallback"], false, "{message}");
    assert_eq!(
        message["citations"][0]["document_title"], "Refund policy",
        "{message}"
    );
    assert_eq!(servers.llm.calls("/v1/chat/completions"), 1);

    // The staff view of the stored answer shows the remote model's figures.
    let history = app.history(&staff, &conversation).await;
    let stats = &history["messages"][1]["stats"];
    assert!(
        stats["completion_tokens"].as_u64().unwrap() > 0,
        "{history}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_server_killed_mid_answer_ends_it_cleanly() {
    let servers = llama_servers().await;
    // Chat goes through a relay that kills the server after a few streamed pieces.
    let relay = killing_proxy(&servers.llm, 4).await;
    let app = start_with_remotes(relay, servers.embedder.url()).await;
    let (staff, slug) = app.coach_taught_the_guide(json!({})).await;
    let visitor = app.visitor(&slug).await;
    let conversation = app.conversation(&visitor).await;

    let response = app
        .post_message(
            &visitor,
            &conversation,
            json!({"content": "How many days does it take to get a refund?"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let events = parse_sse(&response.text().await.unwrap());
    let last = events.last().unwrap();
    // The answer ends as a message (what the passages support, or the fallback), not an error.
    assert_eq!(last.event, "message", "{events:?}");
    assert!(
        !last.data["content"].as_str().unwrap().is_empty(),
        "{events:?}"
    );
    assert!(
        servers
            .llm
            .child
            .lock()
            .unwrap()
            .try_wait()
            .unwrap()
            .is_some()
    );

    // With the server gone, the raw model answers 503 model_unavailable with the server's
    // failure in OpenAI's envelope, and readiness says it is unreachable.
    let key = app
        .json_ok(
            Method::POST,
            "/api/v1/api-keys",
            &staff,
            Some(json!({"name": "automation", "role": "coach"})),
        )
        .await["key"]
        .as_str()
        .unwrap()
        .to_string();
    let model =
        app.get("/readyz").await.json::<Value>().await.unwrap()["components"]["llm"]["name"]
            .as_str()
            .unwrap()
            .to_string();
    let response = app
        .send(
            Method::POST,
            "/v1/chat/completions",
            &key,
            Some(json!({"model": model, "messages": [{"role": "user", "content": "Hi"}]})),
        )
        .await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_unavailable", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("inference server"),
        "{body}"
    );
    let ready = wait_for_readiness(&app, |body| body["components"]["llm"]["ready"] == false).await;
    assert_eq!(
        ready["components"]["llm"]["state"], "unreachable",
        "{ready}"
    );
    // Embeddings still work: the other server is up.
    assert_eq!(ready["components"]["embedder"]["ready"], true, "{ready}");
}
