//! Browser tests: headless Chromium (Debian's `chromium`) driven by `playwright-core` from npm,
//! against a real server with the real test models. The scenario lives in
//! `tests/browser/*.mjs`; `scripts/test` installs their dependencies.

mod common;

use std::path::Path;

use common::TestApp;
use common::chat::{start, with_models};
use serde_json::json;

/// Runs `tests/browser/<scenario>` with node against `app`, with `env`, and asserts it passed.
/// Screenshots go to a folder the test prints.
async fn run_scenario(app: &TestApp, scenario: &str, env: &[(&str, &str)]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        root.join("tests/browser/node_modules/playwright-core")
            .is_dir(),
        "browser tests need playwright-core: run `npm ci --prefix tests/browser` \
         (scripts/test does it, and installs Debian's chromium)"
    );
    let screenshots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&screenshots).unwrap();
    let output = tokio::process::Command::new("node")
        .arg(root.join("tests/browser").join(scenario))
        .env("COMPANERO_URL", app.url(""))
        .env("SETUP_TOKEN", common::SETUP_TOKEN)
        .env("COMPANERO_SCREENSHOTS", &screenshots)
        .envs(env.iter().copied())
        .output()
        .await
        .expect("node runs");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{log}");
    println!("screenshots: {}", screenshots.display());
    assert!(output.status.success(), "{scenario} failed:\n{log}");
}

#[tokio::test]
async fn the_chat_page_and_the_widget_work_in_a_real_browser() {
    let app = start(with_models).await;
    let (staff, slug) = app
        .coach_taught_the_guide(json!({
            "greeting": "Hi! Ask me about refunds or sleep.",
            "brand_color": "#5b21b6",
            "opening_message": "Questions about your order?",
        }))
        .await;
    run_scenario(
        &app,
        "chat.mjs",
        &[("COMPANERO_SLUG", &slug), ("COMPANERO_TOKEN", &staff)],
    )
    .await;
}

#[tokio::test]
async fn the_dashboard_takes_a_new_creator_from_sign_up_to_a_working_coach() {
    // A fresh server: its first visitor sets it up.
    let app = start(with_models).await;
    run_scenario(&app, "dashboard.mjs", &[]).await;
}

#[tokio::test]
async fn the_team_runs_a_live_coach_from_the_dashboard() {
    let app = start(with_models).await;
    let (_, slug) = app.coach_taught_the_guide(json!({})).await;
    run_scenario(
        &app,
        "operations.mjs",
        &[
            ("COMPANERO_SLUG", &slug),
            ("COMPANERO_EMAIL", "coach@example.com"),
            ("COMPANERO_PASSWORD", common::PASSWORD),
        ],
    )
    .await;
}

#[tokio::test]
async fn the_team_secures_sign_in_and_decides_how_long_data_is_kept() {
    // No models: nothing here answers; one person wrote to the coach.
    let app = start(|config| config.signup = companero::auth::accounts::SignupPolicy::Open).await;
    let staff = app.sign_up("coach@example.com").await;
    let slug = app.slug(&staff).await;
    let visitor = app.visitor(&slug).await;
    let conversation = app.conversation(&visitor).await;
    let response = app
        .post_message(&visitor, &conversation, json!({"content": "hello coach"}))
        .await;
    assert!(response.status().is_success(), "{}", response.status());
    drop(response);
    let people = app
        .json_ok(reqwest::Method::GET, "/api/v1/end-users", &staff, None)
        .await;
    let person = people["end_users"][0]["id"]
        .as_str()
        .expect("one person")
        .to_string();
    run_scenario(
        &app,
        "security.mjs",
        &[
            ("COMPANERO_EMAIL", "coach@example.com"),
            ("COMPANERO_PASSWORD", common::PASSWORD),
            ("COMPANERO_PERSON", &person),
        ],
    )
    .await;
}
