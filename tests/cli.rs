//! The `companero` executable as a user runs it: help and version, configuration precedence,
//! migrations, and `serve` from start to a clean stop on SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_companero");

/// Runs the binary to completion with a clean `COMPANERO_*` environment.
fn companero(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    command.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("COMPANERO_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    command.output().expect("run companero")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn version_and_help_explain_the_program() {
    let version = companero(&["--version"], &[]);
    assert!(version.status.success());
    assert!(
        stdout(&version).starts_with(&format!("companero {}", env!("CARGO_PKG_VERSION"))),
        "{}",
        stdout(&version)
    );

    let help = companero(&["--help"], &[]);
    assert!(help.status.success());
    let text = stdout(&help);
    for expected in ["serve", "config", "migrate", "COMPANERO_", "companero.toml"] {
        assert!(text.contains(expected), "help mentions {expected}: {text}");
    }

    let serve_help = stdout(&companero(&["serve", "--help"], &[]));
    for flag in ["--data-dir", "--bind", "--log-format", "COMPANERO_BIND"] {
        assert!(
            serve_help.contains(flag),
            "serve --help mentions {flag}: {serve_help}"
        );
    }
}

#[test]
fn configuration_precedence_is_flag_then_env_then_file_then_default() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    std::fs::write(
        dir.path().join("companero.toml"),
        "bind = \"0.0.0.0:7000\"\nlog_format = \"json\"\ndrain_timeout_secs = 3\n",
    )
    .unwrap();
    let output = companero(
        &["config", "--data-dir", data, "--log-format", "text"],
        &[
            ("COMPANERO_BIND", "127.0.0.1:7001"),
            ("COMPANERO_LOG_FORMAT", "json"),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    let line = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("{key} missing from {text}"))
            .to_string()
    };
    assert!(
        line("log_format").contains("\"text\"") && line("log_format").contains("command-line flag")
    );
    assert!(line("bind").contains("127.0.0.1:7001") && line("bind").contains("environment"));
    assert!(
        line("drain_timeout_secs").contains("3")
            && line("drain_timeout_secs").contains("companero.toml")
    );
    assert!(
        line("request_timeout_secs").contains("60")
            && line("request_timeout_secs").contains("default")
    );

    std::fs::write(dir.path().join("companero.toml"), "bind = 12\n").unwrap();
    let bad = companero(&["config", "--data-dir", data], &[]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("companero.toml"), "{}", stderr(&bad));

    let bad_flag = companero(
        &["config", "--data-dir", data, "--bind", "not-an-address"],
        &[],
    );
    assert!(!bad_flag.status.success());
    assert!(
        stderr(&bad_flag).contains("--bind"),
        "{}",
        stderr(&bad_flag)
    );
}

#[test]
fn migrate_applies_pending_migrations_and_reports_status() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();

    let before = stdout(&companero(
        &["migrate", "--status", "--data-dir", data],
        &[],
    ));
    assert!(
        before.contains("0001") && before.contains("pending"),
        "{before}"
    );
    assert!(!Path::new(data).exists(), "--status changes nothing");

    let applied = companero(&["migrate", "--data-dir", data], &[]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    assert!(
        stdout(&applied).contains("applied 0001_instance"),
        "{}",
        stdout(&applied)
    );

    let again = stdout(&companero(&["migrate", "--data-dir", data], &[]));
    assert!(again.contains("up to date"), "{again}");

    let after = stdout(&companero(
        &["migrate", "--status", "--data-dir", data],
        &[],
    ));
    assert!(after.contains("applied 20"), "{after}");
    assert!(after.contains("all 1 migrations applied"), "{after}");
}

/// A `companero serve` child process whose log lines are collected as they arrive.
struct Served {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Served {
    fn start(data_dir: &str, extra: &[&str]) -> Served {
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--data-dir", data_dir, "--bind", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, _) in std::env::vars() {
            if key.starts_with("COMPANERO_") {
                command.env_remove(key);
            }
        }
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

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits for the "listening" line and returns the base URL it names.
    fn wait_for_address(&self) -> String {
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

    fn terminate_and_wait(mut self) -> (std::process::ExitStatus, Duration, String) {
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

#[tokio::test]
async fn serve_starts_answers_logs_request_ids_as_json_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_str = data.to_str().unwrap();
    let served = Served::start(data_str, &["--log-format", "json"]);
    let base = served.wait_for_address();

    let client = reqwest::Client::new();
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let tagged = client
        .get(format!("{base}/api/v1/unknown"))
        .header("x-request-id", "trace-me-7")
        .send()
        .await
        .unwrap();
    assert_eq!(tagged.status(), 404);

    // The database lives in the data directory, which only its owner may enter.
    assert!(data.join("companero.db").is_file());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    // A second server on the same data directory fails fast with a clear message.
    let second = companero(
        &["serve", "--data-dir", data_str, "--bind", "127.0.0.1:0"],
        &[],
    );
    assert!(!second.status.success());
    assert!(
        stderr(&second).contains("already in use"),
        "{}",
        stderr(&second)
    );

    let (status, took, log) = served.terminate_and_wait();
    assert!(status.success(), "exit status {status:?}\n{log}");
    assert!(took < Duration::from_secs(5), "stopped in {took:?}");

    // Every line is JSON; the request's lines carry its id.
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let tagged_lines: Vec<_> = lines
        .iter()
        .filter(|l| l["span"]["request_id"] == "trace-me-7")
        .collect();
    assert!(
        !tagged_lines.is_empty(),
        "no line carries the request id:\n{log}"
    );
    assert!(
        tagged_lines.iter().any(|l| l["status"] == 404),
        "the response line has the status:\n{log}"
    );
    assert!(log.contains("stopped"), "{log}");
}
