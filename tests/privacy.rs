//! Data protection against the real server: an end user's export (ZIP contents), erasure that
//! leaves nothing readable in the database file or its log, the end user's own export link and
//! "delete my data", a tenant's export with its originals, and a tenant's deletion that leaves
//! nothing of it in the database or the data directory.

mod common;

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use common::TestApp;
use common::chat::{start, with_models};
use reqwest::Method;
use serde_json::{Value, json};

/// Polls an export's URL until it answers with the ZIP; returns its bytes.
async fn download(app: &TestApp, path: &str, token: Option<&str>) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut request = app.client.get(app.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        match response.status().as_u16() {
            200 => {
                assert_eq!(response.headers()["content-type"], "application/zip");
                return response.bytes().await.unwrap().to_vec();
            }
            202 => {
                let state: Value = response.json().await.unwrap();
                assert!(
                    ["queued", "running"].contains(&state["status"].as_str().unwrap()),
                    "{state}"
                );
            }
            other => panic!("{path}: {other} {}", response.text().await.unwrap()),
        }
        assert!(Instant::now() < deadline, "the export did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ZIP's entries: name → text.
fn unzip(bytes: &[u8]) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("a ZIP");
    let mut entries = std::collections::BTreeMap::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).unwrap();
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        entries.insert(entry.name().unwrap().to_string(), content);
    }
    entries
}

fn text(entries: &std::collections::BTreeMap<String, Vec<u8>>, name: &str) -> String {
    String::from_utf8(
        entries
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", entries.keys()))
            .clone(),
    )
    .unwrap()
}

/// Every folder and file under `root`.
fn entries_under(root: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path.clone());
            }
            found.push(path);
        }
    }
    found
}

/// Every file under `root` whose name or bytes contain `needle`.
fn files_containing(root: &Path, needle: &str) -> Vec<String> {
    assert!(root.is_dir(), "{} is not there to scan", root.display());
    let mut found = Vec::new();
    for path in entries_under(root) {
        if path.to_string_lossy().contains(needle) {
            found.push(format!("{} (name)", path.display()));
        }
        if !path.is_dir()
            && std::fs::read(&path)
                .map(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
                .unwrap_or(false)
        {
            found.push(path.display().to_string());
        }
    }
    found
}

/// The end user a visitor became, found by their conversation.
async fn end_user_of(app: &TestApp, staff: &str, conversation: &str) -> String {
    let list = app
        .json_ok(Method::GET, "/api/v1/end-users", staff, None)
        .await;
    for user in list["end_users"].as_array().unwrap() {
        let id = user["id"].as_str().unwrap();
        let profile = app
            .json_ok(Method::GET, &format!("/api/v1/end-users/{id}"), staff, None)
            .await;
        if profile.to_string().contains(conversation) {
            return id.to_string();
        }
    }
    panic!("no end user has conversation {conversation}: {list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_user_is_exported_then_erased_leaving_nothing_readable() {
    let app = start(with_models).await;
    let (staff, slug) = app.coach_taught_the_guide(json!({})).await;
    // Two people; only the first is erased.
    let zoe = app.visitor(&slug).await;
    let zoe_chat = app.conversation(&zoe).await;
    let asked = app
        .ask(
            &zoe,
            &zoe_chat,
            "I am zebra-quartz-7731. When are refunds paid?",
        )
        .await;
    assert_eq!(asked["role"], "assistant", "{asked}");
    let max = app.visitor(&slug).await;
    let max_chat = app.conversation(&max).await;
    app.ask(
        &max,
        &max_chat,
        "Max here, otter-pylon-3390: how cool should my bedroom be?",
    )
    .await;
    let zoe_id = end_user_of(&app, &staff, &zoe_chat).await;
    let goal = app
        .json_ok(
            Method::POST,
            &format!("/api/v1/end-users/{zoe_id}/goals"),
            &staff,
            Some(json!({"title": "Sleep 8 hours", "metric": "hours", "target": 8, "direction": "increase"})),
        )
        .await;
    let goal_id = goal["id"].as_str().unwrap();
    app.json_ok(
        Method::POST,
        &format!("/api/v1/goals/{goal_id}/check-ins"),
        &staff,
        Some(json!({"value": 6.5, "note": "kiwi-nebula-4410 slept badly"})),
    )
    .await;

    // Export: 202, then the ZIP with everything of hers and nothing of his.
    let started = app
        .send(
            Method::POST,
            &format!("/api/v1/end-users/{zoe_id}/export"),
            &staff,
            None,
        )
        .await;
    assert_eq!(started.status(), 202);
    let export: Value = started.json().await.unwrap();
    let export_path = format!(
        "/api/v1/end-users/{zoe_id}/export/{}",
        export["id"].as_str().unwrap()
    );
    let entries = unzip(&download(&app, &export_path, Some(&staff)).await);
    for name in [
        "README.txt",
        "profile.json",
        "consent.json",
        "identities.json",
        "conversations.json",
        "conversations.md",
        "goals.json",
        "enrollments.json",
        "nudges.json",
    ] {
        assert!(
            entries.contains_key(name),
            "{name} missing: {:?}",
            entries.keys()
        );
    }
    let profile: Value = serde_json::from_str(&text(&entries, "profile.json")).unwrap();
    assert_eq!(profile["id"], zoe_id.as_str());
    let conversations: Value = serde_json::from_str(&text(&entries, "conversations.json")).unwrap();
    let messages = conversations[0]["messages"].as_array().unwrap();
    assert!(
        messages[0]["content"]
            .as_str()
            .unwrap()
            .contains("zebra-quartz-7731")
    );
    assert_eq!(messages[1]["role"], "assistant");
    assert!(
        messages[1]["citations"].is_array(),
        "citations as JSON: {}",
        messages[1]
    );
    let markdown = text(&entries, "conversations.md");
    assert!(
        markdown.contains("**You**") && markdown.contains("zebra-quartz-7731"),
        "{markdown}"
    );
    let goals: Value = serde_json::from_str(&text(&entries, "goals.json")).unwrap();
    assert_eq!(
        goals[0]["check_ins"][0]["note"],
        "kiwi-nebula-4410 slept badly"
    );
    let all: String = entries
        .values()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert!(
        !all.contains("otter-pylon-3390"),
        "another person's words in her export"
    );
    assert!(!all.contains("token_hash"), "secrets in the export");

    // Erasure.
    let erased = app
        .json_ok(
            Method::DELETE,
            &format!("/api/v1/end-users/{zoe_id}"),
            &staff,
            None,
        )
        .await;
    assert!(
        erased["removed"]["messages"].as_i64().unwrap() >= 2,
        "{erased}"
    );
    assert_eq!(erased["removed"]["goals"], 1, "{erased}");
    assert_eq!(erased["removed"]["check_ins"], 1, "{erased}");
    assert_eq!(erased["removed"]["identities"], 1, "{erased}");
    assert_eq!(erased["removed"]["exports"], 1, "{erased}");
    let gone = app
        .send(
            Method::GET,
            &format!("/api/v1/end-users/{zoe_id}"),
            &staff,
            None,
        )
        .await;
    assert_eq!(gone.status(), 404);
    let again = app
        .send(
            Method::DELETE,
            &format!("/api/v1/end-users/{zoe_id}"),
            &staff,
            None,
        )
        .await;
    common::expect_error(again, 404, "not_found").await;
    assert_eq!(
        app.send(Method::GET, &export_path, &staff, None)
            .await
            .status(),
        404
    );
    let her_token = app
        .send(
            Method::GET,
            &format!("/api/v1/conversations/{zoe_chat}"),
            &zoe,
            None,
        )
        .await;
    assert_eq!(her_token.status(), 401, "her visitor token is gone");

    // Nothing of hers in the database file or its log; his words still are (the scan works).
    let data = app.config.data_dir.clone();
    for secret in ["zebra-quartz-7731", "kiwi-nebula-4410"] {
        let found = files_containing(&data, secret);
        assert!(found.is_empty(), "{secret} survives in {found:?}");
    }
    assert!(!files_containing(&data, "otter-pylon-3390").is_empty());
    let his = app.history(&max, &max_chat).await;
    assert!(his.to_string().contains("otter-pylon-3390"));

    // The audit keeps that it happened and how much, not what.
    let audit = app
        .json_ok(Method::GET, "/api/v1/audit-log", &staff, None)
        .await
        .to_string();
    assert!(audit.contains("end_user.erased"), "{audit}");
    assert!(audit.contains("\"check_ins\":1"), "{audit}");
    assert!(
        !audit.contains("zebra") && !audit.contains("kiwi"),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_user_downloads_their_data_by_link_and_deletes_it_themselves() {
    let app = TestApp::spawn().await;
    let staff = app.sign_up("coach@example.com").await;
    let slug = app.slug(&staff).await;
    let visitor = app.visitor(&slug).await;
    app.json_ok(
        Method::POST,
        "/api/v1/public/me/consent",
        &visitor,
        Some(json!({"consent": true})),
    )
    .await;
    let started = app
        .send(Method::POST, "/api/v1/public/me/export", &visitor, None)
        .await;
    assert_eq!(started.status(), 202);
    let own: Value = started.json().await.unwrap();
    let path = own["download_path"].as_str().unwrap().to_string();
    assert!(path.starts_with("/api/v1/public/exports/exp_"), "{own}");
    assert!(
        own["download_url"].as_str().unwrap().ends_with(&path),
        "{own}"
    );
    // The link is the credential: no token needed.
    let entries = unzip(&download(&app, &path, None).await);
    let consent: Value = serde_json::from_str(&text(&entries, "consent.json")).unwrap();
    assert_eq!(consent["consent"], true, "{consent}");
    assert_eq!(consent["channel"], "web", "{consent}");
    common::expect_error(
        app.get("/api/v1/public/exports/exp_nonsense").await,
        404,
        "not_found",
    )
    .await;
    // Staff cannot use the end user's routes.
    let refused = app
        .send(Method::POST, "/api/v1/public/me/export", &staff, None)
        .await;
    common::expect_error(refused, 403, "forbidden").await;

    // "Delete my data" needs the confirmation.
    let unconfirmed = app
        .send(
            Method::DELETE,
            "/api/v1/public/me/data",
            &visitor,
            Some(json!({"confirm": false})),
        )
        .await;
    common::expect_error(unconfirmed, 400, "confirmation_required").await;
    let bare = app
        .send(Method::DELETE, "/api/v1/public/me/data", &visitor, None)
        .await;
    common::expect_error(bare, 400, "confirmation_required").await;
    let erased = app
        .json_ok(
            Method::DELETE,
            "/api/v1/public/me/data",
            &visitor,
            Some(json!({"confirm": true})),
        )
        .await;
    assert_eq!(erased["removed"]["identities"], 1, "{erased}");
    assert_eq!(erased["removed"]["exports"], 1, "{erased}");
    assert_eq!(
        app.get(&path).await.status(),
        404,
        "the link went with the data"
    );
    let after = app
        .send(Method::GET, "/api/v1/public/me", &visitor, None)
        .await;
    assert_eq!(after.status(), 401);
    let list = app
        .json_ok(Method::GET, "/api/v1/end-users", &staff, None)
        .await;
    assert_eq!(list["total"], 0, "{list}");
    let audit = app
        .json_ok(Method::GET, "/api/v1/audit-log", &staff, None)
        .await
        .to_string();
    assert!(audit.contains("end user (chat page)"), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_exports_everything_and_its_deletion_leaves_nothing_behind() {
    let app = start(with_models).await;
    let owner = app.sign_up("owner@example.com").await;
    let creator = app.sign_up("bea@example.com").await;
    let me = app
        .json_ok(Method::GET, "/api/v1/auth/me", &creator, None)
        .await;
    let tenant_id = me["tenant"]["id"].as_str().unwrap().to_string();
    app.json_ok(
        Method::PATCH,
        "/api/v1/tenant",
        &creator,
        Some(json!({"name": "Studio Wombat-Ferrule"})),
    )
    .await;
    let document = app
        .teach(&creator, "# Habits\n\nThe quokka-lantern-5521 method, also called zorblaxian pacing: one habit at a time.\n")
        .await;
    let slug = app.slug(&creator).await;
    let visitor = app.visitor(&slug).await;
    let chat = app.conversation(&visitor).await;
    app.ask(
        &visitor,
        &chat,
        "Tell me about the method, I'm Xylophon-Quist.",
    )
    .await;
    let key = app
        .json_ok(
            Method::POST,
            "/api/v1/api-keys",
            &creator,
            Some(json!({"name": "zapier"})),
        )
        .await;
    let key_secret = key["key"].as_str().unwrap().to_string();

    // The tenant's export: settings, team, documents with their originals, people, audit.
    let started = app
        .send(Method::POST, "/api/v1/tenant/export", &creator, None)
        .await;
    assert_eq!(started.status(), 202);
    let export: Value = started.json().await.unwrap();
    let path = format!("/api/v1/tenant/export/{}", export["id"].as_str().unwrap());
    let entries = unzip(&download(&app, &path, Some(&creator)).await);
    let original = entries
        .iter()
        .find(|(name, _)| name.starts_with(&format!("originals/{document}-")))
        .map(|(_, bytes)| String::from_utf8_lossy(bytes).into_owned())
        .unwrap_or_else(|| panic!("no original in {:?}", entries.keys()));
    assert!(original.contains("quokka-lantern-5521"));
    let tenant: Value = serde_json::from_str(&text(&entries, "tenant.json")).unwrap();
    assert_eq!(tenant["tenant"]["name"], "Studio Wombat-Ferrule");
    assert!(text(&entries, "messages.jsonl").contains("Xylophon-Quist"));
    assert!(text(&entries, "members.jsonl").contains("bea@example.com"));
    assert!(text(&entries, "audit_log.jsonl").contains("api_key.created"));
    let every: String = entries
        .values()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert!(!every.contains(&key_secret), "an API key in the export");
    assert!(!every.contains("$argon2"), "a password hash in the export");
    // Another tenant's admin sees no such export.
    assert_eq!(
        app.send(Method::GET, &path, &owner, None).await.status(),
        404
    );

    // Deleted by the owner: nothing of it anywhere in the data directory.
    let deleted = app
        .send(
            Method::DELETE,
            &format!("/api/v1/admin/tenants/{tenant_id}"),
            &owner,
            None,
        )
        .await;
    assert_eq!(deleted.status(), 204);
    let data = app.config.data_dir.clone();
    for unique in [
        tenant_id.as_str(),
        "quokka-lantern-5521",
        "zorblaxian",
        "Xylophon-Quist",
        "Wombat-Ferrule",
        "bea@example.com",
        &slug,
    ] {
        let found = files_containing(&data, unique);
        assert!(found.is_empty(), "{unique} survives in {found:?}");
    }
    // The owner's own data is still there (the scan can see what is present).
    assert!(!files_containing(&data, "owner@example.com").is_empty());
    let audit = app
        .json_ok(Method::GET, "/api/v1/audit-log", &owner, None)
        .await
        .to_string();
    assert!(
        audit.contains("tenant.deleted") && audit.contains("sha256:"),
        "{audit}"
    );
}

/// Polls a served process's export until it answers with the ZIP.
async fn download_from(base: &str, path: &str, token: &str) -> Vec<u8> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let response = client
            .get(format!("{base}{path}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            200 => return response.bytes().await.unwrap().to_vec(),
            202 => {}
            other => panic!("{path}: {other} {}", response.text().await.unwrap()),
        }
        assert!(Instant::now() < deadline, "the export did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Files under `root` whose name ends with `suffix`.
fn files_ending(root: &Path, suffix: &str) -> Vec<String> {
    entries_under(root)
        .into_iter()
        .filter(|path| !path.is_dir() && path.to_string_lossy().ends_with(suffix))
        .map(|path| path.display().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_and_an_erasure_killed_halfway_finish_after_a_restart() {
    use common::process::{Served, call_ok, created_id};
    let dir = tempfile::tempdir().unwrap();
    let data_path = dir.path().join("data");
    let data = data_path.to_str().unwrap();
    let serve = |crash_at: &'static str| {
        let env = [
            ("COMPANERO_SETUP_TOKEN", common::SETUP_TOKEN),
            ("COMPANERO_CRASH_AT", crash_at),
        ];
        Served::start_with_env(data, &["--offline"], &env)
    };
    let client = reqwest::Client::new();

    // The process dies while the ZIP is half written.
    let served = serve("export.before_finish");
    let base = served.wait_for_address();
    let staff = common::process::register_owner(&base).await;
    let clock = created_id(
        &client,
        &base,
        "/api/v1/test-clocks",
        &staff,
        json!({"now": "2026-10-01T00:00:00Z"}),
    )
    .await;
    let person = created_id(
        &client,
        &base,
        "/api/v1/end-users",
        &staff,
        json!({"name": "Pelican-Ember-3301", "test_clock_id": clock}),
    )
    .await;
    call_ok(
        &client,
        &base,
        Method::POST,
        &format!("/api/v1/end-users/{person}/goals"),
        &staff,
        json!({"title": "Swim marigold-viaduct-8812 laps", "metric": "laps", "target": 20,
               "direction": "increase"}),
    )
    .await;
    let export = created_id(
        &client,
        &base,
        &format!("/api/v1/end-users/{person}/export"),
        &staff,
        Value::Null,
    )
    .await;
    let log = served.wait_for_exit();
    assert!(
        log.contains("crash point reached: export.before_finish"),
        "{log}"
    );
    let exports = data_path.join("exports");
    assert_eq!(
        files_ending(&exports, ".zip.part").len(),
        1,
        "a half-written ZIP"
    );
    assert!(files_ending(&exports, ".zip").is_empty());

    // Restarted, the export starts over and ends whole; this time the erasure is cut off
    // before its transaction commits.
    let served = serve("erasure.before_commit");
    let base = served.wait_for_address();
    let bytes = download_from(
        &base,
        &format!("/api/v1/end-users/{person}/export/{export}"),
        &staff,
    )
    .await;
    let entries = unzip(&bytes);
    assert!(text(&entries, "profile.json").contains("Pelican-Ember-3301"));
    assert!(text(&entries, "goals.json").contains("marigold-viaduct-8812"));
    assert!(files_ending(&exports, ".zip.part").is_empty());
    let cut_off = client
        .delete(format!("{base}/api/v1/end-users/{person}"))
        .bearer_auth(&staff)
        .send()
        .await;
    assert!(cut_off.is_err(), "the erasure was not answered");
    let log = served.wait_for_exit();
    assert!(
        log.contains("crash point reached: erasure.before_commit"),
        "{log}"
    );

    // Restarted once more, the erasure finishes on its own: nothing of the person is left, and
    // the audit log says who asked.
    let served = serve("");
    let base = served.wait_for_address();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let status = client
            .get(format!("{base}/api/v1/end-users/{person}"))
            .bearer_auth(&staff)
            .send()
            .await
            .unwrap()
            .status();
        if status == 404 {
            break;
        }
        assert_eq!(status, 200);
        assert!(Instant::now() < deadline, "the erasure was not finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let audit = call_ok(
        &client,
        &base,
        Method::GET,
        "/api/v1/audit-log",
        &staff,
        Value::Null,
    )
    .await;
    let erased: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "end_user.erased")
        .collect();
    assert_eq!(erased.len(), 1, "{audit}");
    assert_eq!(erased[0]["actor"], "coach@example.com", "{audit}");
    served.terminate_and_wait();
    for unique in ["Pelican-Ember-3301", "marigold-viaduct-8812"] {
        let found = files_containing(&data_path, unique);
        assert!(found.is_empty(), "{unique} survives in {found:?}");
    }
}
