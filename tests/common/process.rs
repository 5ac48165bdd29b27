//! Running the `companero` binary from tests.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_companero");

/// A command for the binary with a clean `COMPANERO_*` and Hugging Face environment.
pub fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("COMPANERO_") || key.starts_with("HF_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    command
}

/// Runs the binary to completion.
pub fn companero(args: &[&str], env: &[(&str, &str)]) -> Output {
    command(args, env).output().expect("run companero")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A `companero serve` child process whose log lines are collected as they arrive.
pub struct Served {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Served {
    pub fn start(data_dir: &str, extra: &[&str]) -> Served {
        Served::start_with_env(data_dir, extra, &[])
    }

    pub fn start_with_env(data_dir: &str, extra: &[&str], env: &[(&str, &str)]) -> Served {
        let mut args = vec!["serve", "--data-dir", data_dir, "--bind", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut command = command(&args, env);
        command.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn serve");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Served { child, log }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits for the "listening" line and returns the base URL it names.
    pub fn wait_for_address(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let log = self.log();
            if let Some(at) = log.find("http://127.0.0.1:") {
                let url: String = log[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || ":/.".contains(*c))
                    .collect();
                return url;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("server did not report its address:\n{}", self.log());
    }

    /// `kill -9`: the process gets no chance to finish anything.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    /// Waits for the process to end on its own (an armed crash point); its log.
    pub fn wait_for_exit(mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                self.child.kill().ok();
                panic!("the server did not stop:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(50)); // let the reader thread drain
        self.log()
    }

    pub fn terminate_and_wait(mut self) -> (std::process::ExitStatus, Duration, String) {
        let started = Instant::now();
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(50)); // let the reader thread drain
                return (status, started.elapsed(), self.log());
            }
            if Instant::now() > deadline {
                self.child.kill().ok();
                panic!("server did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Registers the first account (the owner) of a served process; its access token.
pub async fn register_owner(base: &str) -> String {
    let registered = reqwest::Client::new()
        .post(format!("{base}/api/v1/auth/register"))
        .json(
            &serde_json::json!({"email": "coach@example.com", "password": super::PASSWORD,
                                  "full_name": "Coach", "setup_token": super::SETUP_TOKEN}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201);
    registered.json::<serde_json::Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A JSON request to a served process that must succeed; its body (`Null` when empty).
pub async fn call_ok(
    client: &reqwest::Client,
    base: &str,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    let response = client
        .request(method, format!("{base}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "{path}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

/// Creates something through a served process (POST, must succeed); the new thing's id.
pub async fn created_id(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    token: &str,
    body: serde_json::Value,
) -> String {
    let created = call_ok(client, base, reqwest::Method::POST, path, token, body).await;
    created["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{path}: no id in {created}"))
        .to_string()
}

/// `companero serve` with the test models, offline, taking the tests' setup token.
pub fn serve_with_models(data_dir: &str, env: &[(&str, &str)]) -> Served {
    let (llm, embedder) = (super::smollm_gguf(), super::minilm_dir());
    let args = [
        "--offline",
        "--llm",
        llm.to_str().unwrap(),
        "--embedder",
        embedder.to_str().unwrap(),
    ];
    let mut env = env.to_vec();
    env.push(("COMPANERO_SETUP_TOKEN", super::SETUP_TOKEN));
    Served::start_with_env(data_dir, &args, &env)
}

/// Waits until `/readyz` says every component (the models too) is ready.
pub async fn wait_until_ready(client: &reqwest::Client, base: &str) {
    super::eventually("the server is ready", || async {
        let ready = client.get(format!("{base}/readyz")).send().await.ok()?;
        (ready.status() == 200).then_some(())
    })
    .await;
}

/// A served coach that was taught [`super::chat::GUIDE`], and a visitor in a new conversation.
pub struct TaughtCoach {
    pub base: String,
    pub staff: String,
    pub visitor: String,
    pub conversation: String,
}

impl TaughtCoach {
    /// Registers the owner of `served`, teaches the guide (waiting until it is ready) and opens
    /// a visitor's conversation.
    pub async fn set_up(served: &Served, client: &reqwest::Client) -> TaughtCoach {
        let base = served.wait_for_address();
        wait_until_ready(client, &base).await;
        let staff = register_owner(&base).await;
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(super::chat::GUIDE.as_bytes().to_vec())
                .file_name("guide.md"),
        );
        let uploaded = client
            .post(format!("{base}/api/v1/documents"))
            .bearer_auth(&staff)
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(uploaded.status(), 202);
        let document = uploaded.json::<serde_json::Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let path = format!("/api/v1/documents/{document}");
        super::eventually("the guide is ingested", || async {
            let view = call_ok(
                client,
                &base,
                reqwest::Method::GET,
                &path,
                &staff,
                Value::Null,
            )
            .await;
            (view["status"] == "ready").then_some(())
        })
        .await;
        let slug = call_ok(
            client,
            &base,
            reqwest::Method::GET,
            "/api/v1/coach",
            &staff,
            Value::Null,
        )
        .await["slug"]
            .as_str()
            .unwrap()
            .to_string();
        let visitor = client
            .post(format!("{base}/api/v1/public/coaches/{slug}/visitors"))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()["token"]
            .as_str()
            .unwrap()
            .to_string();
        let conversation = created_id(
            client,
            &base,
            "/api/v1/conversations",
            &visitor,
            serde_json::json!({}),
        )
        .await;
        TaughtCoach {
            base,
            staff,
            visitor,
            conversation,
        }
    }
}
