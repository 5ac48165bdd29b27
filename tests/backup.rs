//! `companero backup` while the server takes writes, `companero restore` into a fresh data
//! directory, and a server started there that has every write acknowledged before the backup
//! began; damaged archives and a data directory in use are refused.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};

use common::{Options, TestApp};
use reqwest::Method;
use serde_json::{Value, json};

fn companero(args: &[&str]) -> std::process::Output {
    common::process::companero(args, &[])
}

fn text(output: &std::process::Output) -> String {
    common::process::stdout(output) + &common::process::stderr(output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_writes_restores_every_acknowledged_write() {
    let app = TestApp::spawn().await;
    let staff = app.sign_up("owner@example.com").await;
    let original = b"# Plan\n\nWalk 20 minutes after lunch, every day.\n".to_vec();
    let uploaded: Value = app
        .upload_with(&staff, "plan.md", original.clone(), &[])
        .await
        .json()
        .await
        .unwrap();
    let document = uploaded["id"].as_str().unwrap().to_string();

    let clock: Value = app
        .json_ok(
            Method::POST,
            "/api/v1/test-clocks",
            &staff,
            Some(json!({"now": "2026-03-02T08:00:00Z"})),
        )
        .await;
    let clock_id = clock["id"].as_str().unwrap().to_string();
    // A writer that keeps creating (test) end users; each name is recorded once acknowledged.
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = {
        let (client, url, staff) = (
            app.client.clone(),
            app.url("/api/v1/end-users"),
            staff.clone(),
        );
        let clock_id = clock_id.clone();
        let (acknowledged, stop) = (Arc::clone(&acknowledged), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.is_cancelled() {
                n += 1;
                let name = format!("person-{n}");
                let response = client
                    .post(&url)
                    .bearer_auth(&staff)
                    .json(&json!({"name": name, "test_clock_id": clock_id}))
                    .send()
                    .await
                    .unwrap();
                match response.status().as_u16() {
                    201 => acknowledged.lock().unwrap().push(name),
                    // The team's rate limit: not acknowledged, so not expected back.
                    429 => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                    other => panic!("creating {name}: {other}"),
                }
            }
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while acknowledged.lock().unwrap().len() < 20 {
        assert!(!writer.is_finished(), "the writer stopped");
        assert!(
            std::time::Instant::now() < deadline,
            "20 writes took over 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let before_backup: Vec<String> = acknowledged.lock().unwrap().clone();
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("nightly.zip");
    let data = app.config.data_dir.display().to_string();
    let output = tokio::task::spawn_blocking({
        let archive = archive.display().to_string();
        move || companero(&["backup", "--data-dir", &data, &archive])
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("backed up"), "{}", text(&output));
    let during = acknowledged.lock().unwrap().len();
    stop.cancel();
    writer.await.unwrap();
    assert!(
        during > before_backup.len(),
        "writes went on during the backup ({} → {during})",
        before_backup.len()
    );

    // Restoring into the running server's directory is refused.
    let refused = companero(&[
        "restore",
        &archive.display().to_string(),
        "--data-dir",
        &app.config.data_dir.display().to_string(),
        "--force",
    ]);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("in use"), "{}", text(&refused));

    // A damaged copy is refused, and leaves nothing behind.
    let bytes = std::fs::read(&archive).unwrap();
    let mut damaged = bytes.clone();
    let middle = damaged.len() / 3;
    for byte in &mut damaged[middle..middle + 64] {
        *byte ^= 0x5a;
    }
    let damaged_path = work.path().join("damaged.zip");
    std::fs::write(&damaged_path, &damaged).unwrap();
    let target = work.path().join("restored-damaged");
    let output = companero(&[
        "restore",
        &damaged_path.display().to_string(),
        "--data-dir",
        &target.display().to_string(),
    ]);
    assert!(!output.status.success());
    assert!(text(&output).contains("damaged"), "{}", text(&output));
    assert!(
        !target.exists(),
        "a refused restore created {}",
        target.display()
    );
    let not_a_backup = work.path().join("notes.zip");
    std::fs::write(&not_a_backup, b"not a zip at all").unwrap();
    let output = companero(&[
        "restore",
        &not_a_backup.display().to_string(),
        "--data-dir",
        &target.display().to_string(),
    ]);
    assert!(text(&output).contains("not a backup"), "{}", text(&output));

    // Restored into a fresh directory, a server there has every acknowledged write.
    let fresh = tempfile::tempdir().unwrap();
    let restored_root = fresh.path().join("data");
    let output = companero(&[
        "restore",
        &archive.display().to_string(),
        "--data-dir",
        &restored_root.display().to_string(),
    ]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("restored"), "{}", text(&output));
    // Into a directory with data, only with --force (and the old one is moved aside).
    let again = companero(&[
        "restore",
        &archive.display().to_string(),
        "--data-dir",
        &restored_root.display().to_string(),
    ]);
    assert!(text(&again).contains("--force"), "{}", text(&again));
    let (result, _) = app.stop().await;
    result.unwrap();

    let restored = TestApp::start(Options {
        dir: Some(fresh),
        ..Options::default()
    })
    .await;
    // The signing keys came back too: the old access token still works.
    let list = restored
        .json_ok(Method::GET, "/api/v1/end-users?limit=500", &staff, None)
        .await;
    let names: Vec<&str> = list["end_users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    for name in &before_backup {
        assert!(
            names.contains(&name.as_str()),
            "{name} was acknowledged before the backup"
        );
    }
    let file = restored
        .send(
            Method::GET,
            &format!("/api/v1/documents/{document}/original"),
            &staff,
            None,
        )
        .await;
    assert_eq!(file.status(), 200);
    assert_eq!(file.bytes().await.unwrap().to_vec(), original);
    assert!(Path::new(&restored.config.data_dir).join("index").is_dir());
}
