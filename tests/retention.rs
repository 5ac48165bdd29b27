//! Retention against the real server: a tenant's policy is checked, its first run starts by
//! itself through the job system, and it deletes exactly what is older than each period: stale
//! conversations (not their recent neighbours), inactive end users with everything of theirs,
//! exports and their files, audit entries. The run is audited with counts and shown as the
//! last run, with the next one a day later.

mod common;

use std::time::{Duration, Instant};

use common::chat::start;
use common::{TestApp, expect_error};
use reqwest::Method;
use serde_json::{Value, json};

/// The data directory's database, opened beside the running server to age rows (a test
/// cannot wait 90 days).
fn age(app: &TestApp, sql: &str, id: &str) {
    let connection =
        rusqlite::Connection::open(app.dir.path().join("data").join("companero.db")).unwrap();
    connection
        .busy_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    let changed = connection.execute(sql, [id]).unwrap();
    assert!(changed > 0, "{sql} changed nothing for {id}");
}

const LONG_AGO: &str = "2020-01-01T00:00:00.000Z";

/// A visitor who wrote one message; returns (visitor token, conversation, end user id).
async fn person(app: &TestApp, staff: &str, slug: &str, text: &str) -> (String, String, String) {
    let visitor = app.visitor(slug).await;
    let conversation = app.conversation(&visitor).await;
    let response = app
        .post_message(&visitor, &conversation, json!({"content": text}))
        .await;
    assert!(response.status().is_success(), "{}", response.status());
    drop(response);
    let list = app
        .json_ok(Method::GET, "/api/v1/end-users", staff, None)
        .await;
    let known: Vec<String> = list["end_users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_string())
        .collect();
    for id in known {
        let profile = app
            .json_ok(Method::GET, &format!("/api/v1/end-users/{id}"), staff, None)
            .await;
        if profile.to_string().contains(&conversation) {
            return (visitor, conversation, id);
        }
    }
    panic!("no end user has conversation {conversation}");
}

async fn status_of(app: &TestApp, token: &str, path: &str) -> u16 {
    app.send(Method::GET, path, token, None)
        .await
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retention_policy_deletes_what_is_older_and_keeps_the_rest() {
    let app = start(|config| config.signup = companero::auth::accounts::SignupPolicy::Open).await;
    let staff = app.sign_up("coach@example.com").await;
    let slug = app.slug(&staff).await;

    // Out of bounds: a zero period, and less audit log than the instance keeps.
    for bad in [
        json!({"conversation_days": 0}),
        json!({"audit_days": 10}),
        json!({"export_hours": 0}),
    ] {
        let response = app
            .send(Method::PUT, "/api/v1/retention", &staff, Some(bad))
            .await;
        expect_error(response, 422, "invalid_request").await;
    }
    let untouched = app
        .json_ok(Method::GET, "/api/v1/retention", &staff, None)
        .await;
    assert_eq!(untouched["conversation_days"], Value::Null);
    assert_eq!(untouched["audit_minimum_days"], 30);
    assert_eq!(untouched["next_run_at"], Value::Null, "{untouched}");

    // Gone: an end user idle for years; a conversation idle for years of someone active.
    // Kept: someone active today.
    let (_, gone_chat, gone_user) = person(&app, &staff, &slug, "old question").await;
    let (_, stale_chat, active_user) = person(&app, &staff, &slug, "stale chat").await;
    let (fresh_visitor, fresh_chat, fresh_user) =
        person(&app, &staff, &slug, "fresh question").await;
    for chat in [&gone_chat, &stale_chat] {
        age(
            &app,
            &format!("UPDATE conversations SET updated_at = '{LONG_AGO}' WHERE id = ?1"),
            chat,
        );
    }
    age(
        &app,
        &format!(
            "UPDATE end_users SET created_at = '{LONG_AGO}', last_active_at = '{LONG_AGO}' WHERE id = ?1"
        ),
        &gone_user,
    );
    // An export written long ago, with its file on disk.
    let export = app
        .json_ok(Method::POST, "/api/v1/tenant/export", &staff, None)
        .await;
    let export_id = export["id"].as_str().unwrap().to_string();
    let export_path = format!("/api/v1/tenant/export/{export_id}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while status_of(&app, &staff, &export_path).await != 200 {
        assert!(Instant::now() < deadline, "the export did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    age(
        &app,
        &format!("UPDATE exports SET finished_at = '{LONG_AGO}' WHERE id = ?1"),
        &export_id,
    );
    // Audit entries from long ago, and today's.
    age(
        &app,
        &format!(
            "UPDATE audit_log SET created_at = '{LONG_AGO}' WHERE action = ?1 AND tenant_id IS NOT NULL"
        ),
        "auth.registered",
    );
    let zips = || {
        walk(&app.dir.path().join("data/exports"))
            .into_iter()
            .filter(|p| p.contains(&export_id))
            .count()
    };
    assert_eq!(zips(), 1, "the export's file is on disk");

    // The policy; its first run starts by itself.
    let set = app
        .json_ok(
            Method::PUT,
            "/api/v1/retention",
            &staff,
            Some(json!({"conversation_days": 30, "end_user_days": 90, "export_hours": 48, "audit_days": 365})),
        )
        .await;
    assert_eq!(set["end_user_days"], 90);
    let deadline = Instant::now() + Duration::from_secs(30);
    let view = loop {
        let view = app
            .json_ok(Method::GET, "/api/v1/retention", &staff, None)
            .await;
        if !view["last_run"].is_null() {
            break view;
        }
        assert!(
            Instant::now() < deadline,
            "the first run did not happen: {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let removed = &view["last_run"]["removed"];
    assert_eq!(removed["conversations"], 2, "{view}");
    assert_eq!(removed["end_users"], 1, "{view}");
    assert_eq!(removed["exports"], 1, "{view}");
    assert!(removed["audit_entries"].as_i64().unwrap() >= 1, "{view}");
    assert!(removed["messages"].as_i64().unwrap() >= 2, "{view}");
    // The next run, a day after this one.
    let last =
        chrono::DateTime::parse_from_rfc3339(view["last_run"]["at"].as_str().unwrap()).unwrap();
    let next = chrono::DateTime::parse_from_rfc3339(view["next_run_at"].as_str().unwrap()).unwrap();
    assert_eq!((next - last).num_hours(), 24, "{view}");

    // What was older is gone; the rest is all there.
    assert_eq!(
        status_of(&app, &staff, &format!("/api/v1/end-users/{gone_user}")).await,
        404
    );
    let active = app
        .json_ok(
            Method::GET,
            &format!("/api/v1/end-users/{active_user}"),
            &staff,
            None,
        )
        .await;
    assert!(!active.to_string().contains(&stale_chat), "{active}");
    let fresh = app
        .json_ok(
            Method::GET,
            &format!("/api/v1/end-users/{fresh_user}"),
            &staff,
            None,
        )
        .await;
    assert!(fresh.to_string().contains(&fresh_chat), "{fresh}");
    let history = app.history(&fresh_visitor, &fresh_chat).await;
    assert!(history.to_string().contains("fresh question"), "{history}");
    assert_eq!(status_of(&app, &staff, &export_path).await, 404);
    assert_eq!(zips(), 0, "the export's file was deleted");

    // The audit log: the old entry is gone, the run is recorded with its counts.
    let log = app
        .json_ok(Method::GET, "/api/v1/audit-log?limit=200", &staff, None)
        .await;
    let entries = log["entries"].as_array().expect("entries");
    assert!(
        !entries.iter().any(|e| e["action"] == "auth.registered"),
        "{log}"
    );
    let run = entries
        .iter()
        .find(|e| e["action"] == "retention.applied")
        .expect("the run is audited");
    assert_eq!(run["detail"]["removed"]["end_users"], 1, "{run}");
    assert!(
        entries.iter().any(|e| e["action"] == "retention.updated"),
        "{log}"
    );

    // Applied again now: nothing more is older.
    let again = app
        .json_ok(Method::POST, "/api/v1/retention/run", &staff, None)
        .await;
    assert_eq!(again["removed"], json!({}), "{again}");
}

fn walk(root: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else {
                found.push(path.display().to_string());
            }
        }
    }
    found
}
