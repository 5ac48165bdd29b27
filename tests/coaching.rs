//! The coaching engine through its API, on test clocks: a three-day program delivered at local
//! 09:00 across a daylight-saving change, a check-in answered in the chat, the inactivity rule,
//! quiet hours, the daily cap, STOP, bad input, and a `kill -9` in the middle of a schedule.
//! No models: every message is the creator's text.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::process::{Served, TaughtCoach, call_ok, created_id, serve_with_models};
use common::{TestApp, expect_error};
use reqwest::Method;
use serde_json::{Value, json};

async fn call(app: &TestApp, method: Method, path: &str, token: &str, body: Value) -> Value {
    let response = app.send(method, path, token, Some(body)).await;
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "{path}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

async fn advance(app: &TestApp, staff: &str, clock: &str, to: &str) {
    call(
        app,
        Method::POST,
        &format!("/api/v1/test-clocks/{clock}/advance"),
        staff,
        json!({ "to": to }),
    )
    .await;
}

async fn nudges(app: &TestApp, staff: &str, user: &str) -> Vec<Value> {
    let list = call(
        app,
        Method::GET,
        &format!("/api/v1/nudges?end_user_id={user}"),
        staff,
        Value::Null,
    )
    .await;
    let mut nudges = list["nudges"].as_array().unwrap().clone();
    nudges.reverse(); // oldest first
    nudges
}

fn step<'a>(nudges: &'a [Value], key: &str) -> &'a Value {
    nudges
        .iter()
        .find(|n| n["step_key"] == key)
        .unwrap_or_else(|| panic!("no nudge for step {key}: {nudges:?}"))
}

/// A person on a new test clock (starting `now`, zone UTC) enrolled in a new published program:
/// (clock id, end user id, enrolment id, the end user's visitor token).
async fn enrolled_on_a_clock(
    app: &TestApp,
    staff: &str,
    now: &str,
    definition: Value,
) -> (String, String, String, String) {
    let id = |value: Value| value["id"].as_str().unwrap().to_string();
    let clock = id(call(
        app,
        Method::POST,
        "/api/v1/test-clocks",
        staff,
        json!({"now": now}),
    )
    .await);
    let program = id(call(app, Method::POST, "/api/v1/programs", staff, definition).await);
    let publish = format!("/api/v1/programs/{program}/publish");
    call(app, Method::POST, &publish, staff, json!({})).await;
    let person = json!({"name": "Ana", "time_zone": "UTC", "test_clock_id": clock});
    let user = id(call(app, Method::POST, "/api/v1/end-users", staff, person).await);
    let enrol = format!("/api/v1/programs/{program}/enrollments");
    let enrollment = id(call(
        app,
        Method::POST,
        &enrol,
        staff,
        json!({"end_user_id": user}),
    )
    .await);
    let session = format!("/api/v1/end-users/{user}/session");
    let token = call(app, Method::POST, &session, staff, json!({})).await["token"]
        .as_str()
        .unwrap()
        .to_string();
    (clock, user, enrollment, token)
}

/// The id of an end user's first conversation, as staff see it on their profile.
async fn first_conversation(app: &TestApp, staff: &str, user: &str) -> String {
    let path = format!("/api/v1/end-users/{user}");
    call(app, Method::GET, &path, staff, Value::Null).await["conversations"][0]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn program() -> Value {
    json!({
        "name": "Push-up starter",
        "goals": [{"key": "pushups", "title": "Push-ups", "metric": "push-ups", "unit": "reps",
                   "target": 50, "direction": "increase",
                   "check_in": {"every": "P1D", "at": "20:00"}}],
        "steps": [
            {"key": "hello", "day": 0, "at": "09:00", "kind": "message",
             "text": "Welcome to the push-up starter! Today, just try one set."},
            {"key": "ask", "day": 1, "at": "09:00", "kind": "check_in", "goal_key": "pushups",
             "text": "How many push-ups did you do yesterday?"},
            {"key": "done", "day": 2, "at": "09:00", "kind": "milestone", "goal_key": "pushups",
             "text": "Three days in, well done!"},
        ],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_runs_on_a_test_clock_with_check_ins_rules_and_guardrails() {
    let app = TestApp::spawn().await;
    let staff = app.sign_up("coach@example.com").await;
    // Friday 6 March 2026, 06:00 UTC: 01:00 in New York (EST, UTC-5); clocks go forward on
    // Sunday the 8th, when 09:00 becomes 13:00 UTC.
    let clock = call(
        &app,
        Method::POST,
        "/api/v1/test-clocks",
        &staff,
        json!({"now": "2026-03-06T06:00:00Z"}),
    )
    .await;
    let clock = clock["id"].as_str().unwrap().to_string();
    let program_id = call(&app, Method::POST, "/api/v1/programs", &staff, program()).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let published = call(
        &app,
        Method::POST,
        &format!("/api/v1/programs/{program_id}/publish"),
        &staff,
        json!({}),
    )
    .await;
    assert_eq!(published["version"], 1);
    assert_eq!(published["status"], "published");
    call(
        &app,
        Method::POST,
        "/api/v1/nudge-rules",
        &staff,
        json!({
        "name": "Quiet for three days", "trigger": {"type": "inactivity", "days": 3},
        "audience": {"program_id": program_id},
        "instruction": "We haven't heard from you in a few days. How are the push-ups going?"}),
    )
    .await;
    call(&app, Method::POST, "/api/v1/nudge-rules", &staff, json!({
        "name": "Evening reflection", "trigger": {"type": "schedule", "rrule": "FREQ=DAILY", "at": "22:00"},
        "audience": {"tag": "night"}, "instruction": "What went well today?"})).await;
    call(
        &app,
        Method::POST,
        "/api/v1/nudge-rules",
        &staff,
        json!({
        "name": "Midday", "trigger": {"type": "schedule", "rrule": "FREQ=DAILY", "at": "12:00"},
        "audience": {"tag": "night"}, "instruction": "Take a short walk after lunch."}),
    )
    .await;

    // Ana lives in New York and is enrolled; Bea (Madrid) only gets the rules tagged "night".
    let ana = call(
        &app,
        Method::POST,
        "/api/v1/end-users",
        &staff,
        json!({
        "name": "Ana", "time_zone": "America/New_York", "test_clock_id": clock, "consent": true}),
    )
    .await;
    let ana = ana["id"].as_str().unwrap().to_string();
    let bea = call(
        &app,
        Method::POST,
        "/api/v1/end-users",
        &staff,
        json!({
        "name": "Bea", "time_zone": "Europe/Madrid", "test_clock_id": clock, "consent": true,
        "tags": ["night"]}),
    )
    .await;
    let bea = bea["id"].as_str().unwrap().to_string();
    // The directory's search finds a person by part of their name, whatever the case.
    let found = call(
        &app,
        Method::GET,
        "/api/v1/end-users?q=bE",
        &staff,
        Value::Null,
    )
    .await;
    assert_eq!(found["total"], 1, "{found}");
    assert_eq!(found["end_users"][0]["id"], bea.as_str());
    let enrolled = call(
        &app,
        Method::POST,
        &format!("/api/v1/programs/{program_id}/enrollments"),
        &staff,
        json!({"end_user_id": ana}),
    )
    .await;
    assert_eq!(enrolled["status"], "active");
    let token = call(
        &app,
        Method::POST,
        &format!("/api/v1/end-users/{ana}/session"),
        &staff,
        json!({}),
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(token.starts_with("vis_"));

    // Day 0: the welcome at 09:00 New York time, and nothing before.
    advance(&app, &staff, &clock, "2026-03-06T13:59:00Z").await;
    let hello = step(&nudges(&app, &staff, &ana).await, "hello").clone();
    assert_eq!(hello["status"], "scheduled", "{hello}");
    advance(&app, &staff, &clock, "2026-03-06T14:30:00Z").await;
    let hello = step(&nudges(&app, &staff, &ana).await, "hello").clone();
    assert_eq!(hello["status"], "sent", "{hello}");
    assert_eq!(hello["sent_at"], "2026-03-06T14:00:00Z");
    assert_eq!(hello["channel"], "web");
    let profile = call(
        &app,
        Method::GET,
        &format!("/api/v1/end-users/{ana}"),
        &staff,
        Value::Null,
    )
    .await;
    let conversation = profile["conversations"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{profile}"))
        .to_string();
    let history = app.history(&token, &conversation).await;
    assert!(
        history
            .to_string()
            .contains("Welcome to the push-up starter"),
        "{history}"
    );
    let goal_id = profile["goals"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(profile["goals"][0]["title"], "Push-ups");

    // Day 1: the check-in at 09:00; "42" in the chat records it.
    advance(&app, &staff, &clock, "2026-03-07T14:30:00Z").await;
    let ask = step(&nudges(&app, &staff, &ana).await, "ask").clone();
    assert_eq!(ask["sent_at"], "2026-03-07T14:00:00Z", "{ask}");
    let unclear = app.ask(&token, &conversation, "maybe 40 or 45").await;
    assert!(
        unclear["content"].as_str().unwrap().contains("one number"),
        "{unclear}"
    );
    let reply = app.ask(&token, &conversation, "42").await;
    assert!(
        reply["content"]
            .as_str()
            .unwrap()
            .contains("42 reps recorded"),
        "{reply}"
    );
    let goal = call(
        &app,
        Method::GET,
        &format!("/api/v1/goals/{goal_id}"),
        &token,
        Value::Null,
    )
    .await;
    assert_eq!(goal["latest_value"], 42.0);
    assert_eq!(goal["check_ins"].as_array().unwrap().len(), 1);
    assert_eq!(goal["check_ins"][0]["source"], "chat");
    assert_eq!(goal["progress"], 0.84);
    let ask_nudge = step(&nudges(&app, &staff, &ana).await, "ask").clone();
    assert_eq!(ask_nudge["status"], "replied", "{ask_nudge}");

    // Day 2 is Sunday, after the change to daylight time: 09:00 is 13:00 UTC.
    advance(&app, &staff, &clock, "2026-03-08T13:30:00Z").await;
    let ana_nudges = nudges(&app, &staff, &ana).await;
    let done = step(&ana_nudges, "done");
    assert_eq!(done["sent_at"], "2026-03-08T13:00:00Z", "{done}");
    assert!(
        done["content"].as_str().unwrap().contains("42 of 50 reps"),
        "{done}"
    );
    let profile = call(
        &app,
        Method::GET,
        &format!("/api/v1/end-users/{ana}"),
        &staff,
        Value::Null,
    )
    .await;
    assert_eq!(profile["enrollments"][0]["status"], "completed");
    // The goal's own prompts came at 20:00 each evening (01:00 UTC while on standard time).
    let prompts: Vec<&Value> = ana_nudges
        .iter()
        .filter(|n| n["kind"] == "check_in")
        .collect();
    assert_eq!(prompts.len(), 2, "{prompts:?}");
    assert_eq!(prompts[0]["scheduled_for"], "2026-03-07T01:00:00Z");
    assert_eq!(prompts[1]["scheduled_for"], "2026-03-08T01:00:00Z");

    // Three silent days after "42" (Saturday 14:30 UTC): the inactivity rule on Tuesday.
    advance(&app, &staff, &clock, "2026-03-10T14:00:00Z").await;
    assert!(
        !nudges(&app, &staff, &ana)
            .await
            .iter()
            .any(|n| n["kind"] == "rule")
    );
    advance(&app, &staff, &clock, "2026-03-10T15:00:00Z").await;
    let ana_nudges = nudges(&app, &staff, &ana).await;
    let rule: Vec<&Value> = ana_nudges.iter().filter(|n| n["kind"] == "rule").collect();
    assert_eq!(rule.len(), 1, "{rule:?}");
    assert_eq!(rule[0]["status"], "sent");
    assert_eq!(rule[0]["sent_at"], "2026-03-10T14:30:00Z");

    // Bea: 22:00 is inside quiet hours, so each evening nudge waits for 08:00; then the cap of
    // one a day suppresses the midday one.
    let bea_nudges = nudges(&app, &staff, &bea).await;
    let evening = bea_nudges
        .iter()
        .find(|n| n["scheduled_for"] == "2026-03-07T07:00:00Z")
        .unwrap_or_else(|| panic!("{bea_nudges:?}"));
    assert_eq!(evening["status"], "sent");
    assert_eq!(evening["reason"], "quiet_hours");
    let midday = bea_nudges
        .iter()
        .find(|n| n["scheduled_for"] == "2026-03-07T11:00:00Z")
        .unwrap_or_else(|| panic!("{bea_nudges:?}"));
    assert_eq!(midday["status"], "suppressed");
    assert_eq!(midday["reason"], "daily_cap");
    advance(&app, &staff, &clock, "2026-03-10T21:30:00Z").await;
    let deferred = call(
        &app,
        Method::GET,
        &format!("/api/v1/nudges?end_user_id={bea}&status=deferred"),
        &staff,
        Value::Null,
    )
    .await;
    assert_eq!(
        deferred["nudges"].as_array().unwrap().len(),
        1,
        "tonight's: {deferred}"
    );

    // STOP stops everything, at once, and the coach says so.
    let stopped = app.ask(&token, &conversation, "STOP").await;
    assert!(
        stopped["content"]
            .as_str()
            .unwrap()
            .contains("won't send you any more"),
        "{stopped}"
    );
    let sent_before = nudges(&app, &staff, &ana)
        .await
        .iter()
        .filter(|n| n["sent_at"].is_string())
        .count();
    advance(&app, &staff, &clock, "2026-03-20T12:00:00Z").await;
    let sent_after = nudges(&app, &staff, &ana)
        .await
        .iter()
        .filter(|n| n["sent_at"].is_string())
        .count();
    assert_eq!(sent_before, sent_after, "nothing is sent after STOP");
    let again = app
        .send(
            Method::POST,
            &format!("/api/v1/programs/{program_id}/enrollments"),
            &staff,
            Some(json!({"end_user_id": ana})),
        )
        .await;
    expect_error(again, 409, "opted_out").await;

    // Test end users are left out of outcomes.
    let outcomes = call(
        &app,
        Method::GET,
        &format!("/api/v1/analytics/outcomes?program_id={program_id}"),
        &staff,
        Value::Null,
    )
    .await;
    assert_eq!(outcomes["enrolled"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_schedules_programs_and_enrolments_get_clear_errors_and_change_nothing() {
    let app = TestApp::spawn().await;
    let staff = app.sign_up("coach@example.com").await;
    let post = |path: &'static str, body: Value| app.send(Method::POST, path, &staff, Some(body));
    let message = expect_error(
        post(
            "/api/v1/nudge-rules",
            json!({"name": "x", "instruction": "y",
            "trigger": {"type": "schedule", "rrule": "FREQ=HOURLY", "at": "09:00"}}),
        )
        .await,
        400,
        "invalid_schedule",
    )
    .await;
    assert!(message.contains("rrule"), "{message}");
    let message = expect_error(
        post(
            "/api/v1/nudge-rules",
            json!({"name": "x", "instruction": "y",
            "trigger": {"type": "schedule", "rrule": "FREQ=DAILY", "at": "9am"}}),
        )
        .await,
        400,
        "invalid_schedule",
    )
    .await;
    assert!(message.contains("trigger.at"), "{message}");
    let message = expect_error(
        post(
            "/api/v1/end-users",
            json!({"name": "Zed", "time_zone": "Mars/Olympus"}),
        )
        .await,
        400,
        "invalid_schedule",
    )
    .await;
    assert!(message.contains("time_zone"), "{message}");
    let mut bad = program();
    bad["steps"][0]["choices"] = json!([{"label": "Ready", "next": "nowhere"}]);
    let message = expect_error(post("/api/v1/programs", bad).await, 400, "invalid_program").await;
    assert!(message.contains("steps[0].choices[0].next"), "{message}");
    let mut bad = program();
    bad["steps"][1]["key"] = json!("hello");
    expect_error(post("/api/v1/programs", bad).await, 400, "invalid_program").await;
    let mut bad = program();
    bad["steps"][2].as_object_mut().unwrap().remove("day");
    let message = expect_error(post("/api/v1/programs", bad).await, 400, "invalid_program").await;
    assert!(message.contains("steps[2].day"), "{message}");
    let mut bad = program();
    bad["steps"][0]["at"] = json!("25:00");
    expect_error(post("/api/v1/programs", bad).await, 400, "invalid_schedule").await;
    let listed = call(&app, Method::GET, "/api/v1/programs", &staff, Value::Null).await;
    assert_eq!(
        listed["programs"].as_array().unwrap().len(),
        0,
        "nothing was saved"
    );
    let rules = call(
        &app,
        Method::GET,
        "/api/v1/nudge-rules",
        &staff,
        Value::Null,
    )
    .await;
    assert_eq!(rules["nudge_rules"].as_array().unwrap().len(), 0);

    // Enrolling twice; a check-in that is not a number.
    let program_id = call(&app, Method::POST, "/api/v1/programs", &staff, program()).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let real = app
        .send(
            Method::POST,
            "/api/v1/end-users",
            &staff,
            Some(json!({"name": "Ana"})),
        )
        .await;
    let message = expect_error(real, 400, "invalid_field").await;
    assert!(message.contains("test_clock_id"), "{message}");
    let clock = call(&app, Method::POST, "/api/v1/test-clocks", &staff, json!({})).await;
    let user = call(
        &app,
        Method::POST,
        "/api/v1/end-users",
        &staff,
        json!({"name": "Ana", "test_clock_id": clock["id"]}),
    )
    .await;
    let user = user["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/programs/{program_id}/enrollments");
    let draft = app
        .send(
            Method::POST,
            &path,
            &staff,
            Some(json!({"end_user_id": user})),
        )
        .await;
    expect_error(draft, 409, "conflict").await;
    call(
        &app,
        Method::POST,
        &format!("/api/v1/programs/{program_id}/publish"),
        &staff,
        json!({}),
    )
    .await;
    call(
        &app,
        Method::POST,
        &path,
        &staff,
        json!({"end_user_id": user}),
    )
    .await;
    let twice = app
        .send(
            Method::POST,
            &path,
            &staff,
            Some(json!({"end_user_id": user})),
        )
        .await;
    expect_error(twice, 409, "already_enrolled").await;
    let profile = call(
        &app,
        Method::GET,
        &format!("/api/v1/end-users/{user}"),
        &staff,
        Value::Null,
    )
    .await;
    let goal = profile["goals"][0]["id"].as_str().unwrap().to_string();
    let not_a_number = app
        .send(
            Method::POST,
            &format!("/api/v1/goals/{goal}/check-ins"),
            &staff,
            Some(json!({"value": "lots"})),
        )
        .await;
    let message = expect_error(not_a_number, 400, "invalid_field").await;
    assert!(message.contains("value"), "{message}");
    let goal = call(
        &app,
        Method::GET,
        &format!("/api/v1/goals/{goal}"),
        &staff,
        Value::Null,
    )
    .await;
    assert_eq!(goal["check_ins"].as_array().unwrap().len(), 0);
    // A new version leaves the enrolled on theirs.
    let mut second = program();
    second["name"] = json!("Push-up starter, v2");
    let saved = call(
        &app,
        Method::PUT,
        &format!("/api/v1/programs/{program_id}"),
        &staff,
        second,
    )
    .await;
    assert_eq!(saved["version"], 2);
    assert_eq!(saved["status"], "draft");
    assert_eq!(profile["enrollments"][0]["version"], 1);
    // A real end user (a visitor who wrote) gets no session, and shows in the list.
    let slug = app.slug(&staff).await;
    let visitor = app.visitor(&slug).await;
    let conversation = app.conversation(&visitor).await;
    app.ask(&visitor, &conversation, "hello").await;
    let list = call(&app, Method::GET, "/api/v1/end-users", &staff, Value::Null).await;
    assert_eq!(list["total"], 2, "{list}");
    let real = list["end_users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["test_clock_id"].is_null())
        .unwrap_or_else(|| panic!("{list}"));
    assert!(real["last_active_at"].is_string(), "{real}");
    let session = app
        .send(
            Method::POST,
            &format!("/api/v1/end-users/{}/session", real["id"].as_str().unwrap()),
            &staff,
            Some(json!({})),
        )
        .await;
    expect_error(session, 400, "invalid_field").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_in_the_middle_of_a_schedule_loses_and_repeats_no_nudge() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let env = [("COMPANERO_SETUP_TOKEN", common::SETUP_TOKEN)];
    let served = Served::start_with_env(data, &["--offline"], &env);
    let base = served.wait_for_address();
    let client = reqwest::Client::new();
    let staff = common::process::register_owner(&base).await;
    // 40 people on a 30-step daily program: 1,200 steps to deliver.
    let steps: Vec<Value> = (0..30)
        .map(|day| {
            json!({"key": format!("day{day}"), "day": day, "at": "09:00", "kind": "message",
                          "text": format!("Day {day}: keep going.")})
        })
        .collect();
    let clock = created_id(
        &client,
        &base,
        "/api/v1/test-clocks",
        &staff,
        json!({"now": "2026-10-01T00:00:00Z"}),
    )
    .await;
    let program = created_id(
        &client,
        &base,
        "/api/v1/programs",
        &staff,
        json!({"name": "Thirty days", "steps": steps}),
    )
    .await;
    call_ok(
        &client,
        &base,
        Method::POST,
        &format!("/api/v1/programs/{program}/publish"),
        &staff,
        json!({}),
    )
    .await;
    let mut people = Vec::new();
    for i in 0..40 {
        let zone = ["Europe/Madrid", "America/New_York", "Asia/Tokyo", "UTC"][i % 4];
        let user = call_ok(
            &client,
            &base,
            Method::POST,
            "/api/v1/end-users",
            &staff,
            json!({"name": format!("P{i}"), "time_zone": zone, "test_clock_id": clock}),
        )
        .await;
        let user = user["id"].as_str().unwrap().to_string();
        call_ok(
            &client,
            &base,
            Method::POST,
            &format!("/api/v1/programs/{program}/enrollments"),
            &staff,
            json!({"end_user_id": user}),
        )
        .await;
        people.push(user);
    }
    let sent = |client: reqwest::Client, base: String, staff: String| async move {
        let list = call_ok(
            &client,
            &base,
            Method::GET,
            "/api/v1/nudges?status=sent&limit=10000",
            &staff,
            Value::Null,
        )
        .await;
        list["nudges"].as_array().unwrap().len()
    };
    // Advance 40 days in the background and kill the server while it delivers.
    let to = json!({"to": "2026-11-10T00:00:00Z"});
    let advance = {
        let (client, url, staff, to) = (
            client.clone(),
            format!("{base}/api/v1/test-clocks/{clock}/advance"),
            staff.clone(),
            to.clone(),
        );
        tokio::spawn(async move { client.post(url).bearer_auth(staff).json(&to).send().await })
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let count = sent(client.clone(), base.clone(), staff.clone()).await;
        if count >= 100 {
            break;
        }
        assert!(Instant::now() < deadline, "delivery did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    served.kill();
    assert!(advance.await.unwrap().is_err(), "the advance was cut off");

    // Restarted, the same advance finishes the schedule (jobs the dead process held are taken
    // up when their lease runs out).
    let served = Served::start_with_env(data, &["--offline"], &env);
    let base = served.wait_for_address();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut nudges;
    loop {
        call_ok(
            &client,
            &base,
            Method::POST,
            &format!("/api/v1/test-clocks/{clock}/advance"),
            &staff,
            to.clone(),
        )
        .await;
        nudges = call_ok(
            &client,
            &base,
            Method::GET,
            "/api/v1/nudges?limit=10000",
            &staff,
            Value::Null,
        )
        .await;
        let done = nudges["nudges"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["status"] == "sent")
            .count();
        if done == 1200 {
            break;
        }
        assert!(done < 1200, "more sent than planned: {done}");
        if Instant::now() > deadline {
            let waiting: Vec<&Value> = nudges["nudges"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["status"] != "sent")
                .collect();
            let log: Vec<String> = served
                .log()
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .map(str::to_string)
                .collect();
            panic!("only {done} of 1200 sent; waiting: {waiting:?}\nlog: {log:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let nudges = nudges["nudges"].as_array().unwrap();
    assert_eq!(nudges.len(), 1200, "one nudge per person and step");
    let keys: HashSet<(String, String)> = nudges
        .iter()
        .map(|n| {
            (
                n["end_user_id"].as_str().unwrap().to_string(),
                n["step_key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(keys.len(), 1200);
    // Each person's conversation holds each step's message exactly once.
    for person in people.iter().take(8) {
        let profile = call_ok(
            &client,
            &base,
            Method::GET,
            &format!("/api/v1/end-users/{person}"),
            &staff,
            Value::Null,
        )
        .await;
        let conversations = profile["conversations"].as_array().unwrap();
        assert_eq!(conversations.len(), 1, "{profile}");
        let id = conversations[0]["id"].as_str().unwrap();
        let history = call_ok(
            &client,
            &base,
            Method::GET,
            &format!("/api/v1/conversations/{id}/messages"),
            &staff,
            Value::Null,
        )
        .await;
        let texts: Vec<&str> = history["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["content"].as_str().unwrap())
            .collect();
        assert_eq!(texts.len(), 30, "{texts:?}");
        let distinct: HashSet<&&str> = texts.iter().collect();
        assert_eq!(distinct.len(), 30, "a message was repeated: {texts:?}");
    }
    served.terminate_and_wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_cut_off_by_a_crash_is_given_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let served = serve_with_models(data, &[]);
    let client = reqwest::Client::new();
    let TaughtCoach {
        staff,
        visitor,
        conversation,
        ..
    } = TaughtCoach::set_up(&served, &client).await;
    let base = served.wait_for_address();
    let messages = format!("/api/v1/conversations/{conversation}/messages");
    let asked = client
        .post(format!("{base}{messages}"))
        .bearer_auth(&visitor)
        .json(&json!({"content": "How long do refunds take?", "background": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(asked.status(), 202);
    let before = call_ok(
        &client,
        &base,
        Method::GET,
        &messages,
        &visitor,
        Value::Null,
    )
    .await;
    served.kill();
    let roles = |history: &Value| -> Vec<String> {
        history["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        roles(&before),
        ["user"],
        "the answer was still being written: {before}"
    );

    let served = serve_with_models(data, &[]);
    let base = served.wait_for_address();
    let deadline = Instant::now() + Duration::from_secs(90);
    // Polled as staff: end users' requests have a budget of their own.
    let after = loop {
        let history = call_ok(&client, &base, Method::GET, &messages, &staff, Value::Null).await;
        if roles(&history).len() > 1 {
            break history;
        }
        assert!(
            Instant::now() < deadline,
            "the question was never answered: {history}\n{}",
            served.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(roles(&after), ["user", "assistant"], "{after}");
    let seen = call_ok(
        &client,
        &base,
        Method::GET,
        &messages,
        &visitor,
        Value::Null,
    )
    .await;
    let answer = &seen["messages"][1];
    assert_eq!(answer["stats"], Value::Null, "end users see no stats");
    served.terminate_and_wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quick_reply_leads_to_its_step_and_a_pause_holds_steps_until_resumed() {
    let app = TestApp::spawn().await;
    let staff = app.sign_up("coach@example.com").await;
    let (clock, user, enrollment, token) = enrolled_on_a_clock(&app, &staff, "2026-05-04T06:00:00Z", json!({
        "name": "Choose your path",
        "steps": [
            {"key": "pick", "day": 0, "at": "09:00", "kind": "message", "text": "Morning or evening workouts?",
             "choices": [{"label": "Morning", "next": "am"}, {"label": "Evening", "next": "pm"}]},
            {"key": "am", "day": 0, "at": "09:00", "kind": "message", "text": "Great: set your alarm 20 minutes early."},
            {"key": "pm", "day": 0, "at": "09:00", "kind": "message", "text": "Great: block 18:00 in your calendar."},
            {"key": "later", "day": 3, "at": "09:00", "kind": "message", "text": "How is your new routine?"},
        ]})).await;
    advance(&app, &staff, &clock, "2026-05-04T09:10:00Z").await;
    let sent = nudges(&app, &staff, &user).await;
    assert_eq!(step(&sent, "pick")["status"], "sent");
    assert!(
        !sent
            .iter()
            .any(|n| n["step_key"] == "am" || n["step_key"] == "pm"),
        "branches wait for the choice"
    );
    let conversation = first_conversation(&app, &staff, &user).await;
    let history = app.history(&token, &conversation).await;
    assert!(
        history.to_string().contains("Morning or evening"),
        "{history}"
    );
    // The end user's copy carries the choices to tap (and no stats).
    let asked = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| {
            m["content"]
                .as_str()
                .unwrap_or("")
                .contains("Morning or evening")
        })
        .cloned()
        .unwrap();
    assert_eq!(
        asked["quick_replies"],
        json!(["Morning", "Evening"]),
        "{asked}"
    );
    assert!(asked.get("stats").is_none(), "{asked}");

    // The quick reply: the chosen step comes at once (it answers, it does not interrupt).
    let reply = app
        .post_message(
            &token,
            &conversation,
            json!({"content": "Evening", "stream": false}),
        )
        .await;
    assert_eq!(reply.status(), 201, "stored; the step answers it");
    advance(&app, &staff, &clock, "2026-05-04T09:11:00Z").await;
    let sent = nudges(&app, &staff, &user).await;
    assert_eq!(step(&sent, "pm")["status"], "sent", "{sent:?}");
    assert!(!sent.iter().any(|n| n["step_key"] == "am"));
    let history = app.history(&token, &conversation).await;
    assert!(history.to_string().contains("block 18:00"), "{history}");

    // Paused, day 3 passes without its step; resumed, it comes.
    let paused = call(
        &app,
        Method::PATCH,
        &format!("/api/v1/enrollments/{enrollment}"),
        &staff,
        json!({"status": "paused"}),
    )
    .await;
    assert_eq!(paused["status"], "paused");
    advance(&app, &staff, &clock, "2026-05-08T12:00:00Z").await;
    let later = step(&nudges(&app, &staff, &user).await, "later").clone();
    assert_eq!(later["status"], "scheduled", "{later}");
    assert_eq!(later["reason"], "paused");
    call(
        &app,
        Method::PATCH,
        &format!("/api/v1/enrollments/{enrollment}"),
        &staff,
        json!({"status": "active"}),
    )
    .await;
    advance(&app, &staff, &clock, "2026-05-08T12:10:00Z").await;
    let later = step(&nudges(&app, &staff, &user).await, "later").clone();
    assert_eq!(later["status"], "sent", "{later}");
    let profile = call(
        &app,
        Method::GET,
        &format!("/api/v1/end-users/{user}"),
        &staff,
        Value::Null,
    )
    .await;
    assert_eq!(profile["enrollments"][0]["status"], "completed");
    let ended = app
        .send(
            Method::PATCH,
            &format!("/api/v1/enrollments/{enrollment}"),
            &staff,
            Some(json!({"status": "paused"})),
        )
        .await;
    expect_error(ended, 409, "conflict").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_end_users_enrol_themselves_get_steps_on_real_time_and_count_in_outcomes() {
    let app = TestApp::spawn().await;
    let staff = app.sign_up("coach@example.com").await;
    // No quiet hours: the step goes out now, whatever the hour of the run.
    call(
        &app,
        Method::PATCH,
        "/api/v1/coach",
        &staff,
        json!({"quiet_hours": "00:00-00:00"}),
    )
    .await;
    let program = call(
        &app,
        Method::POST,
        "/api/v1/programs",
        &staff,
        json!({
        "name": "Two steps", "steps": [{"key": "hi", "day": 0, "at": "00:00", "kind": "message",
        "text": "Welcome aboard!"}, {"key": "later", "day": 5, "at": "00:00", "kind": "message",
        "text": "Five days in!"}]}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    call(
        &app,
        Method::POST,
        &format!("/api/v1/programs/{program}/publish"),
        &staff,
        json!({}),
    )
    .await;
    let slug = app.slug(&staff).await;
    let visitor = app.visitor(&slug).await;
    let conversation = app.conversation(&visitor).await;
    app.ask(&visitor, &conversation, "hello there").await;
    let consent = call(
        &app,
        Method::POST,
        "/api/v1/public/me/consent",
        &visitor,
        json!({"consent": true}),
    )
    .await;
    assert_eq!(consent["consent"], true);
    assert_eq!(consent["consent_channel"], "web");
    let enrolled = call(
        &app,
        Method::POST,
        "/api/v1/public/me/enrollments",
        &visitor,
        json!({"program_id": program}),
    )
    .await;
    assert_eq!(enrolled["status"], "active");
    let again = app
        .send(
            Method::POST,
            "/api/v1/public/me/enrollments",
            &visitor,
            Some(json!({"program_id": program})),
        )
        .await;
    expect_error(again, 409, "already_enrolled").await;
    // Staff cannot act as an end user on these routes.
    let staff_consent = app
        .send(
            Method::POST,
            "/api/v1/public/me/consent",
            &staff,
            Some(json!({"consent": true})),
        )
        .await;
    expect_error(staff_consent, 403, "forbidden").await;

    // The real-time runner sends the step into the conversation the person already has.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let history = app.history(&staff, &conversation).await;
        if history.to_string().contains("Welcome aboard!") {
            break;
        }
        assert!(Instant::now() < deadline, "the step never came: {history}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let outcomes = call(
        &app,
        Method::GET,
        &format!("/api/v1/analytics/outcomes?program_id={program}"),
        &staff,
        Value::Null,
    )
    .await;
    assert_eq!(outcomes["enrolled"], 1, "{outcomes}");
    assert_eq!(outcomes["active"], 1, "{outcomes}");
    assert_eq!(outcomes["completed"], 0, "{outcomes}");
    assert_eq!(outcomes["drop_off"][1]["step_key"], "later");
    assert_eq!(
        outcomes["drop_off"][1]["drop_off"], 1.0,
        "nobody reached day 5 yet"
    );
    assert_eq!(outcomes["drop_off"][0]["step_key"], "hi");
    assert_eq!(outcomes["drop_off"][0]["reached"], 1);
    assert_eq!(
        outcomes["retention"][0]["retained"], 1.0,
        "they wrote this week: {outcomes}"
    );
    // The heat-map's row: the first week has begun, and nobody checked in yet.
    assert_eq!(
        outcomes["retention"][0]["weeks"],
        json!([0.0]),
        "{outcomes}"
    );
    assert_eq!(
        outcomes["goal_progress_distribution"]
            .as_array()
            .map(Vec::len),
        Some(5),
        "{outcomes}"
    );
    let people = call(
        &app,
        Method::GET,
        &format!("/api/v1/end-users?program_id={program}"),
        &staff,
        Value::Null,
    )
    .await;
    assert_eq!(people["total"], 1);
    assert_eq!(people["end_users"][0]["consent"], true);
}

#[tokio::test]
async fn a_program_that_ends_on_a_choice_waits_for_it_before_it_completes() {
    let app = TestApp::spawn().await;
    let staff = app.sign_up("coach@example.com").await;
    let (clock, user, _, token) = enrolled_on_a_clock(&app, &staff, "2026-05-04T06:00:00Z", json!({
        "name": "One question",
        "steps": [
            {"key": "pick", "day": 0, "at": "09:00", "kind": "message", "text": "Morning or evening?",
             "choices": [{"label": "Morning", "next": "am"}, {"label": "Evening", "next": "pm"}]},
            {"key": "am", "day": 0, "at": "09:00", "kind": "message", "text": "Set your alarm early."},
            {"key": "pm", "day": 0, "at": "09:00", "kind": "message", "text": "Block 18:00."},
        ]})).await;
    let enrollment_status = || async {
        call(
            &app,
            Method::GET,
            &format!("/api/v1/end-users/{user}"),
            &staff,
            Value::Null,
        )
        .await["enrollments"][0]["status"]
            .clone()
    };
    advance(&app, &staff, &clock, "2026-05-04T09:10:00Z").await;
    assert_eq!(
        step(&nudges(&app, &staff, &user).await, "pick")["status"],
        "sent"
    );
    assert_eq!(
        enrollment_status().await,
        "active",
        "the choice is still to come"
    );

    let conversation = first_conversation(&app, &staff, &user).await;
    let reply = app
        .post_message(
            &token,
            &conversation,
            json!({"content": "morning", "stream": false}),
        )
        .await;
    assert_eq!(reply.status(), 201);
    advance(&app, &staff, &clock, "2026-05-04T09:11:00Z").await;
    assert_eq!(
        step(&nudges(&app, &staff, &user).await, "am")["status"],
        "sent"
    );
    assert_eq!(
        enrollment_status().await,
        "completed",
        "the branch was the last step"
    );
}
