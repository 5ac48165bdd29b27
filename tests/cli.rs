//! The `companero` executable as a user runs it: help and version, configuration precedence,
//! migrations, and `serve` from start to a clean stop on SIGTERM.

mod common;

use std::path::Path;
use std::time::Duration;

use common::process::{Served, companero, stderr, stdout};

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

    // Secrets are masked.
    std::fs::write(dir.path().join("companero.toml"), "").unwrap();
    let masked = stdout(&companero(
        &["config", "--data-dir", data],
        &[(
            "COMPANERO_SMTP_URL",
            "smtp://mailer:hunter2@mail.example.com:587",
        )],
    ));
    assert!(!masked.contains("hunter2"), "{masked}");
    assert!(masked.contains("smtp_url = \"********\""), "{masked}");

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
    let all = format!(
        "all {} migrations applied",
        companero::db::migrations::latest_version()
    );
    assert!(after.contains(&all), "{after}");
}

#[tokio::test]
async fn serve_starts_answers_logs_request_ids_as_json_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_str = data.to_str().unwrap();
    let served = Served::start(data_str, &["--log-format", "json", "--offline"]);
    let base = served.wait_for_address();

    let client = reqwest::Client::new();
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready: serde_json::Value = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["components"]["database"]["ready"], true, "{ready}");
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

#[test]
fn admin_create_owner_reads_the_password_from_stdin_and_refuses_weak_ones() {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    // Left readable by another tool: tightened, with a warning.
    let loose = dir.path().join("companero.toml");
    std::fs::write(&loose, "log_format = \"text\"\n").unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = |password: &str| {
        let mut child = common::process::command(
            &[
                "admin",
                "create-owner",
                "--email",
                "Owner@Example.com",
                "--data-dir",
                data,
            ],
            &[],
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        child.wait_with_output().unwrap()
    };
    let weak = run("owner123");
    assert!(!weak.status.success());
    assert!(stderr(&weak).contains("at least 10"), "{}", stderr(&weak));

    let created = run("granite meadow whistles softly");
    assert!(created.status.success(), "{}", stderr(&created));
    assert!(
        stdout(&created).contains("owner@example.com is the instance owner"),
        "{}",
        stdout(&created)
    );
    let db = companero::db::connect(&dir.path().join("companero.db")).unwrap();
    let owner: bool = db
        .query_row(
            "SELECT is_owner FROM users WHERE email = 'owner@example.com'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(owner);
    drop(db);

    // Everything the command created or found is the owner's alone: folders 0700, files 0600.
    assert!(
        stderr(&weak).contains("made them owner-only"),
        "{}",
        stderr(&weak)
    );
    let mut pending = vec![dir.path().to_path_buf()];
    let mut seen = 0;
    while let Some(path) = pending.pop() {
        let metadata = std::fs::metadata(&path).unwrap();
        let mode = metadata.permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
        if metadata.is_dir() {
            assert_eq!(mode, 0o700, "{}", path.display());
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
        seen += 1;
    }
    assert!(
        seen >= 4,
        "the database, keys and the configuration file were checked"
    );

    // Without a mail server, the operator makes a reset link at the console.
    let link = companero(
        &[
            "admin",
            "reset-link",
            "owner@example.com",
            "--data-dir",
            data,
            "--public-url",
            "https://coach.example.com",
        ],
        &[],
    );
    assert!(link.status.success(), "{}", stderr(&link));
    assert!(
        stdout(&link).starts_with("https://coach.example.com/reset-password?token=rs_"),
        "{}",
        stdout(&link)
    );
    assert!(
        !stderr(&link).contains("rs_"),
        "the token is never logged: {}",
        stderr(&link)
    );
}
