//! Knowledge gaps (grouped, answered) and analytics over real conversations, through the API.
//! No models: with an empty knowledge base every question gets the fallback at once.

mod common;

use common::{Options, TestApp, expect_error};
use companero::auth::accounts::SignupPolicy;
use reqwest::Method;
use serde_json::{Value, json};

async fn app() -> TestApp {
    TestApp::start(Options {
        configure: Some(Box::new(|c| c.signup = SignupPolicy::Open)),
        ..Options::default()
    })
    .await
}

/// A new end user asks `question` in a conversation of their own; returns the conversation id.
async fn ask(app: &TestApp, slug: &str, question: &str) -> String {
    let visitor = app.visitor(slug).await;
    let conversation = app.conversation(&visitor).await;
    let response = app
        .post_message(
            &visitor,
            &conversation,
            json!({"content": question, "stream": false}),
        )
        .await;
    assert_eq!(response.status(), 200);
    conversation
}

#[tokio::test]
async fn gaps_group_by_meaning_and_analytics_count_what_end_users_did() {
    let app = app().await;
    let staff = app.sign_up("coach@example.com").await;
    let slug = app.slug(&staff).await;
    let first = ask(&app, &slug, "Do you ship to Canada?").await;
    ask(&app, &slug, "Can you ship to Canada").await;
    ask(&app, &slug, "What is the price of coaching?").await;
    // The team's own test conversation counts for nothing.
    let test = app.conversation(&staff).await;
    app.post_message(&staff, &test, json!({"content": "test", "stream": false}))
        .await;

    let groups = app
        .json_ok(Method::GET, "/api/v1/knowledge-gaps/groups", &staff, None)
        .await;
    let groups = groups["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{groups:?}");
    assert_eq!(groups[0]["count"], 2);
    assert!(
        groups[0]["question"]
            .as_str()
            .unwrap()
            .contains("ship to Canada")
    );

    let today = app
        .json_ok(Method::GET, "/api/v1/analytics", &staff, None)
        .await;
    let totals = &today["totals"];
    assert_eq!(totals["conversations"], 3);
    assert_eq!(totals["active_visitors"], 3);
    assert_eq!(totals["questions"], 3);
    assert_eq!(totals["answered"], 0);
    assert_eq!(totals["fallbacks"], 3);
    assert_eq!(totals["answered_rate"], 0.0);
    assert_eq!(today["days"].as_array().unwrap().len(), 30);
    let hours: i64 = today["busiest_hours"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_i64().unwrap())
        .sum();
    assert_eq!(hours, 3);
    assert_eq!(today["top_questions"].as_array().unwrap().len(), 3);

    let csv = app
        .send(Method::GET, "/api/v1/analytics?format=csv", &staff, None)
        .await;
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let csv = csv.text().await.unwrap();
    assert!(csv.starts_with("date,conversations,"));
    assert_eq!(csv.lines().count(), 31);
    // A bad first day, or a bad last day (from which the default first day is counted back).
    for bad in ["from=2026-02-30", "to=null"] {
        expect_error(
            app.send(
                Method::GET,
                &format!("/api/v1/analytics?{bad}"),
                &staff,
                None,
            )
            .await,
            422,
            "invalid_request",
        )
        .await;
    }

    // Inbox filters: low confidence (all three fell back) and one end user's profile.
    let low = app
        .json_ok(
            Method::GET,
            "/api/v1/inbox?filter=low_confidence",
            &staff,
            None,
        )
        .await;
    assert_eq!(low["conversations"].as_array().unwrap().len(), 3);
    let conversation = app
        .json_ok(
            Method::GET,
            &format!("/api/v1/conversations/{first}"),
            &staff,
            None,
        )
        .await;
    let visitor_id = conversation["visitor_id"].as_str().unwrap();
    let profile = app
        .json_ok(
            Method::GET,
            &format!("/api/v1/inbox?visitor={visitor_id}"),
            &staff,
            None,
        )
        .await;
    assert_eq!(profile["conversations"].as_array().unwrap().len(), 1);

    // Answering a group resolves all its gaps; other tenants' ids are ignored.
    let ids = groups[0]["gap_ids"].clone();
    let resolved = app
        .json_ok(
            Method::POST,
            "/api/v1/knowledge-gaps/resolve",
            &staff,
            Some(json!({"gap_ids": ids, "document_id": null})),
        )
        .await;
    assert_eq!(resolved["resolved"], 2);
    let other = app.sign_up("other@example.com").await;
    let stolen = app
        .json_ok(
            Method::POST,
            "/api/v1/knowledge-gaps/resolve",
            &other,
            Some(json!({"gap_ids": groups[1]["gap_ids"].clone()})),
        )
        .await;
    assert_eq!(stolen["resolved"], 0);
    let open: Value = app
        .json_ok(Method::GET, "/api/v1/knowledge-gaps", &staff, None)
        .await;
    assert_eq!(open["gaps"].as_array().unwrap().len(), 1);
    let all: Value = app
        .json_ok(
            Method::GET,
            "/api/v1/knowledge-gaps?include_resolved=true",
            &staff,
            None,
        )
        .await;
    assert_eq!(all["gaps"].as_array().unwrap().len(), 3);
    assert_eq!(
        all["gaps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["resolved_at"].is_string())
            .count(),
        2
    );
    // Another tenant sees none of it.
    let theirs = app
        .json_ok(Method::GET, "/api/v1/analytics", &other, None)
        .await;
    assert_eq!(theirs["totals"]["questions"], 0);
}
