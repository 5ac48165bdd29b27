//! Telegram as a channel of the same conversations, against a stand-in Bot API that speaks the
//! real wire format: connecting a bot (token checked, never shown, sealed at rest), the
//! webhook's secret, duplicates, long polling, staff takeover with a long reply split in two,
//! 429 with `retry_after`, a blocked bot, linking web and Telegram into one person who gets a
//! program step on Telegram from a test clock, a grounded answer with its sources (on both
//! platforms), and a
//! `kill -9` between the platform call and recording it. WhatsApp against a stand-in Graph
//! API: the handshake, signatures over the raw body, batched events, `wamid` duplicates,
//! receipts in any order, and the 24-hour window (a template, or the nudge suppressed).

mod common;

use std::time::{Duration, Instant};

use common::process::Served;
use common::telegram::{BOT, TOKEN, TelegramStandIn, text_update};
use common::whatsapp::{self as wa, GraphStandIn};
use common::{Options, TestApp, expect_error};
use reqwest::Method;
use serde_json::{Value, json};

async fn call(app: &TestApp, method: Method, path: &str, token: &str, body: Value) -> Value {
    let response = app.send(method, path, token, Some(body)).await;
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "{path}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// A server that talks to the stand-in, reachable at `public_url`.
async fn start(tg: &TelegramStandIn, public_url: Option<&str>) -> TestApp {
    let (api, public) = (tg.url.clone(), public_url.map(str::to_string));
    TestApp::start(Options {
        configure: Some(Box::new(move |config| {
            config.channels.telegram_url = api;
            if let Some(public) = public {
                config.public_url = public;
            }
        })),
        ..Options::default()
    })
    .await
}

async fn connect(app: &TestApp, staff: &str) -> Value {
    call(
        app,
        Method::PUT,
        "/api/v1/channels/telegram",
        staff,
        json!({"bot_token": TOKEN}),
    )
    .await
}

async fn telegram_figures(app: &TestApp, staff: &str) -> Value {
    let list = call(app, Method::GET, "/api/v1/channels", staff, Value::Null).await;
    list["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == "telegram")
        .cloned()
        .unwrap()
}

/// Waits until the Telegram outbox has nothing queued and `sent` messages went out.
async fn wait_until_delivered(app: &TestApp, staff: &str, sent: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let figures = telegram_figures(app, staff).await;
        if figures["queued"] == 0
            && figures["sent"].as_i64().unwrap() + figures["failed"].as_i64().unwrap() >= sent
        {
            return figures;
        }
        assert!(Instant::now() < deadline, "{figures}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn tenant_id(app: &TestApp, staff: &str) -> String {
    call(app, Method::GET, "/api/v1/auth/me", staff, Value::Null).await["tenant"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn hook(
    app: &TestApp,
    tenant: &str,
    secret: Option<&str>,
    update: &Value,
) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url(&format!("/hooks/telegram/{tenant}")))
        .json(update);
    if let Some(secret) = secret {
        request = request.header("X-Telegram-Bot-Api-Secret-Token", secret);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_is_connected_with_a_checked_token_and_its_webhook_takes_each_update_once() {
    let tg = TelegramStandIn::start().await;
    let app = start(&tg, Some("https://coach.example.com")).await;
    let staff = app.sign_up("owner@example.com").await;
    let tenant = tenant_id(&app, &staff).await;

    // A token Telegram refuses is a clear 400, and nothing is connected.
    let refused = app
        .send(
            Method::PUT,
            "/api/v1/channels/telegram",
            &staff,
            Some(json!({"bot_token": "987:not-a-real-token"})),
        )
        .await;
    let message = expect_error(refused, 400, "invalid_credentials").await;
    assert!(message.contains("BotFather"), "{message}");
    let status = call(
        &app,
        Method::GET,
        "/api/v1/channels/telegram",
        &staff,
        Value::Null,
    )
    .await;
    assert_eq!(status["connected"], false);

    // With an https public URL the bot gets a webhook with a fresh secret.
    let connected = connect(&app, &staff).await;
    assert_eq!(connected["mode"], "webhook", "{connected}");
    assert_eq!(connected["bot_username"], BOT);
    assert_eq!(connected["token_hint"], "…wxyz");
    let expected_url = format!("https://coach.example.com/hooks/telegram/{tenant}");
    assert_eq!(connected["webhook_url"], expected_url.as_str());
    assert!(!connected.to_string().contains(TOKEN));
    let set = tg.calls("setWebhook");
    assert_eq!(set.len(), 1);
    assert_eq!(set[0].body["url"], expected_url.as_str());
    let secret = set[0].body["secret_token"].as_str().unwrap().to_string();
    assert!(secret.len() >= 32);

    // A call without the secret, or with another one, is refused and nothing is stored.
    let hello = text_update(1, 4242, "/start");
    for wrong in [None, Some("not-the-secret")] {
        let response = hook(&app, &tenant, wrong, &hello).await;
        expect_error(response, 403, "forbidden").await;
    }
    let figures = telegram_figures(&app, &staff).await;
    assert_eq!(
        (figures["people"].as_i64(), figures["sent"].as_i64()),
        (Some(0), Some(0)),
        "{figures}"
    );

    // With it, `/start` gets the coach's greeting; the same update again is answered once.
    let greeting = call(&app, Method::GET, "/api/v1/coach", &staff, Value::Null).await["greeting"]
        .as_str()
        .unwrap()
        .to_string();
    for _ in 0..2 {
        let response = hook(&app, &tenant, Some(&secret), &hello).await;
        assert_eq!(response.status(), 200);
    }
    // A photo gets a polite word on what the coach can read.
    let photo = json!({"update_id": 2, "message": {"message_id": 2, "chat": {"id": 4242, "type": "private"},
        "photo": [{"file_id": "x", "width": 90, "height": 90}]}});
    assert_eq!(
        hook(&app, &tenant, Some(&secret), &photo).await.status(),
        200
    );
    let texts = tg.wait_for_texts(4242, 2).await;
    assert_eq!(texts[0], greeting);
    assert!(texts[1].contains("only read text"), "{texts:?}");
    wait_until_delivered(&app, &staff, 2).await;
    assert_eq!(
        tg.texts_to(4242).len(),
        2,
        "the duplicate was answered again"
    );

    // The token is nowhere in clear: not in the database, not in the audit log.
    let database = app.config.data_dir.join("companero.db");
    for path in [database.clone(), database.with_extension("db-wal")] {
        if let Ok(bytes) = std::fs::read(&path) {
            assert!(
                !bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
                "{} holds the bot token",
                path.display()
            );
        }
    }
    let audit = call(&app, Method::GET, "/api/v1/audit-log", &staff, Value::Null).await;
    assert!(audit.to_string().contains("channel.connected"), "{audit}");
    assert!(!audit.to_string().contains(TOKEN));

    // Disconnected, the webhook takes nothing more.
    let response = app
        .send(Method::DELETE, "/api/v1/channels/telegram", &staff, None)
        .await;
    assert_eq!(response.status(), 204);
    let late = hook(
        &app,
        &tenant,
        Some(&secret),
        &text_update(3, 4242, "/start"),
    )
    .await;
    expect_error(late, 404, "not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_take_over_on_a_polled_bot_with_long_replies_split_429_waits_and_blocked_chats() {
    let tg = TelegramStandIn::start().await;
    let app = start(&tg, None).await;
    let staff = app.sign_up("owner@example.com").await;
    let tenant = tenant_id(&app, &staff).await;
    let connected = connect(&app, &staff).await;
    // No https address: the server polls, and a webhook call is refused.
    assert_eq!(connected["mode"], "polling", "{connected}");
    assert_eq!(tg.calls("deleteWebhook").len(), 1);
    let refused = hook(
        &app,
        &tenant,
        Some("anything"),
        &text_update(1, 5, "/start"),
    )
    .await;
    expect_error(refused, 403, "forbidden").await;

    // Ana asks for a person: she is told, and the team sees her conversation.
    tg.push(text_update(10, 5151, "Can I talk to a human please?"));
    let told = tg.wait_for_texts(5151, 1).await;
    assert!(told[0].contains("talk to a person"), "{told:?}");
    let inbox = call(&app, Method::GET, "/api/v1/inbox", &staff, Value::Null).await;
    let item = &inbox["conversations"][0];
    assert_eq!(item["conversation"]["channel"], "telegram", "{inbox}");
    let conversation = item["conversation"]["id"].as_str().unwrap().to_string();

    // A coach takes over and answers at length; Telegram first says "too many requests".
    let takeover = format!("/api/v1/conversations/{conversation}/takeover");
    call(&app, Method::POST, &takeover, &staff, json!({})).await;
    let joined = tg.wait_for_texts(5151, 2).await;
    assert!(!joined[1].is_empty());
    tg.refuse_next_send(json!({"ok": false, "error_code": 429,
        "description": "Too Many Requests: retry after 1", "parameters": {"retry_after": 1}}));
    // 3,450 characters, but 5,100 of the UTF-16 units Telegram counts: two parts.
    let paragraph = "Rest well 💪💪💪💪💪💪💪💪💪💪. ".repeat(50);
    let long = format!(
        "{}\n\n{}\n\n{}",
        paragraph.trim(),
        paragraph.trim(),
        paragraph.trim()
    );
    let path = format!("/api/v1/conversations/{conversation}/messages");
    call(
        &app,
        Method::POST,
        &path,
        &staff,
        json!({"content": long, "stream": false}),
    )
    .await;
    let texts = tg.wait_for_texts(5151, 4).await;
    let parts = &texts[2..];
    assert!(
        parts.iter().all(|p| p.encode_utf16().count() <= 4096),
        "{:?}",
        parts.iter().map(|p| p.len()).collect::<Vec<_>>()
    );
    assert!(
        parts[0].ends_with('.') && parts[1].ends_with('.'),
        "split inside a sentence"
    );
    assert_eq!(parts.concat().matches("Rest well").count(), 150);
    // The refused part waited the second Telegram asked for.
    let sends = tg.calls("sendMessage");
    let refused_at = sends.iter().find(|c| !c.delivered).unwrap().at;
    let first_part_at = sends.iter().filter(|c| c.delivered).nth(2).unwrap().at;
    assert!(first_part_at - refused_at >= Duration::from_millis(900));

    // Bea blocked the bot: the message fails with Telegram's words and she is opted out.
    tg.block(6262);
    tg.push(text_update(11, 6262, "Can I talk to a human please?"));
    let figures = wait_until_delivered(&app, &staff, 4).await;
    assert_eq!(figures["failed"], 1, "{figures}");
    assert_eq!(figures["people"], 2);
    let people = call(&app, Method::GET, "/api/v1/end-users", &staff, Value::Null).await;
    let opted_out: Vec<_> = people["end_users"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| !u["opted_out_at"].is_null())
        .collect();
    assert_eq!(opted_out.len(), 1, "{people}");
}

/// Enrols `user` in `program` and plays their test clock forward to `to`.
async fn enrol_and_advance(
    app: &TestApp,
    staff: &str,
    program: &str,
    user: &str,
    clock: &str,
    to: &str,
) {
    let enrol = format!("/api/v1/programs/{program}/enrollments");
    call(
        app,
        Method::POST,
        &enrol,
        staff,
        json!({"end_user_id": user}),
    )
    .await;
    let advance = format!("/api/v1/test-clocks/{clock}/advance");
    call(app, Method::POST, &advance, staff, json!({"to": to})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_linked_from_the_web_gets_their_program_step_on_telegram() {
    let tg = TelegramStandIn::start().await;
    let app = start(&tg, None).await;
    let staff = app.sign_up("owner@example.com").await;
    connect(&app, &staff).await;
    let id = |value: Value| value["id"].as_str().unwrap().to_string();
    let clock = id(call(
        &app,
        Method::POST,
        "/api/v1/test-clocks",
        &staff,
        json!({"now": "2026-03-02T07:00:00Z"}),
    )
    .await);
    let program = id(call(
        &app,
        Method::POST,
        "/api/v1/programs",
        &staff,
        json!({
        "name": "Morning walks",
        "steps": [{"key": "walk", "day": 0, "at": "09:00", "kind": "message",
                   "text": "Good morning! Today, a ten-minute walk."}]}),
    )
    .await);
    call(
        &app,
        Method::POST,
        &format!("/api/v1/programs/{program}/publish"),
        &staff,
        json!({}),
    )
    .await;
    let person =
        json!({"name": "Ana", "time_zone": "UTC", "test_clock_id": clock, "consent": true});
    let user = id(call(&app, Method::POST, "/api/v1/end-users", &staff, person).await);
    let web = call(
        &app,
        Method::POST,
        &format!("/api/v1/end-users/{user}/session"),
        &staff,
        json!({}),
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_string();

    // On the web, Ana asks for a link code and types it on Telegram.
    let conversation = app.conversation(&web).await;
    let asked = app.ask(&web, &conversation, "link my account").await;
    let reply = asked["reply"]["content"]
        .as_str()
        .or(asked["content"].as_str())
        .unwrap_or_default()
        .to_string();
    let history = app.history(&web, &conversation).await;
    let said = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find_map(|m| m["content"].as_str().filter(|c| c.contains("link code is")))
        .map(str::to_string)
        .unwrap_or(reply);
    let code = said
        .split_whitespace()
        .map(|w| w.trim_end_matches('.'))
        .find(|w| w.len() == 9 && w.as_bytes()[4] == b'-')
        .unwrap_or_else(|| panic!("no code in {said:?}"))
        .to_string();
    tg.push(text_update(20, 7373, &code));
    let linked = tg.wait_for_texts(7373, 1).await;
    assert!(linked[0].starts_with("Linked"), "{linked:?}");
    // A used code works once.
    tg.push(text_update(21, 8484, &code));
    let stale = tg.wait_for_texts(8484, 1).await;
    assert!(stale[0].contains("not valid"), "{stale:?}");

    // Enrolled, the step at 09:00 on her clock reaches her on Telegram, the channel she used last.
    enrol_and_advance(
        &app,
        &staff,
        &program,
        &user,
        &clock,
        "2026-03-02T09:30:00Z",
    )
    .await;
    let texts = tg.wait_for_texts(7373, 2).await;
    assert_eq!(texts[1], "Good morning! Today, a ten-minute walk.");

    // Back on the web she asks the coach to write to her there: the next step comes on the web.
    let chosen = app.ask(&web, &conversation, "Send my messages here").await;
    assert!(chosen.to_string().contains("it will be here"), "{chosen}");
    let evening = id(call(
        &app,
        Method::POST,
        "/api/v1/programs",
        &staff,
        json!({
        "name": "Evening walks",
        "steps": [{"key": "walk", "day": 0, "at": "18:00", "kind": "message",
                   "text": "Evening: a slow walk after dinner."}]}),
    )
    .await);
    call(
        &app,
        Method::POST,
        &format!("/api/v1/programs/{evening}/publish"),
        &staff,
        json!({}),
    )
    .await;
    enrol_and_advance(
        &app,
        &staff,
        &evening,
        &user,
        &clock,
        "2026-03-02T18:30:00Z",
    )
    .await;
    let history = app.history(&web, &conversation).await;
    assert!(
        history.to_string().contains("Evening: a slow walk"),
        "{history}"
    );
    assert_eq!(
        tg.texts_to(7373).len(),
        2,
        "the evening step went to Telegram"
    );
    // A program link enrols whoever opens it; the step follows at its time (real time here).
    let link = call(
        &app,
        Method::POST,
        "/api/v1/programs",
        &staff,
        json!({
        "name": "Now", "steps": [{"key": "now", "day": 0, "at": "00:00", "kind": "message",
                   "text": "Welcome aboard: your first tip."}]}),
    )
    .await;
    let now_program = id(link);
    call(
        &app,
        Method::POST,
        &format!("/api/v1/programs/{now_program}/publish"),
        &staff,
        json!({}),
    )
    .await;
    tg.push(text_update(22, 9393, &format!("/start p-{now_program}")));
    let welcomed = tg.wait_for_texts(9393, 1).await;
    assert!(welcomed[0].contains("You're enrolled"), "{welcomed:?}");
    let people = call(
        &app,
        Method::GET,
        &format!("/api/v1/end-users?program_id={now_program}"),
        &staff,
        Value::Null,
    )
    .await;
    assert_eq!(people["end_users"].as_array().unwrap().len(), 1, "{people}");

    // One person: in the inbox both conversations are Ana's, and her filter lists both.
    let inbox = call(&app, Method::GET, "/api/v1/inbox", &staff, Value::Null).await;
    let hers: Vec<_> = inbox["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["end_user_id"] == user.as_str())
        .collect();
    assert_eq!(hers.len(), 2, "{inbox}");
    assert!(hers.iter().all(|i| i["end_user_name"] == "Ana"), "{inbox}");
    let telegram_visitor = hers
        .iter()
        .find(|i| i["conversation"]["channel"] == "telegram")
        .unwrap()["visitor_id"]
        .as_str()
        .unwrap()
        .to_string();
    let filtered = call(
        &app,
        Method::GET,
        &format!("/api/v1/inbox?visitor={telegram_visitor}"),
        &staff,
        Value::Null,
    )
    .await;
    assert_eq!(
        filtered["conversations"].as_array().unwrap().len(),
        2,
        "{filtered}"
    );

    // Both conversations are on Ana's profile.
    let profile = call(
        &app,
        Method::GET,
        &format!("/api/v1/end-users/{user}"),
        &staff,
        Value::Null,
    )
    .await;
    let channels: Vec<_> = profile["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["channel"].as_str().unwrap().to_string())
        .collect();
    assert!(
        channels.contains(&"telegram".to_string()) && channels.contains(&"web".to_string()),
        "{profile}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grounded_answer_reaches_telegram_and_whatsapp_with_its_sources() {
    let (tg, graph) = (TelegramStandIn::start().await, GraphStandIn::start().await);
    let (telegram_api, graph_api) = (tg.url.clone(), graph.url.clone());
    let app = common::chat::start(move |config| {
        common::chat::with_models(config);
        config.channels.telegram_url = telegram_api;
        config.channels.whatsapp_url = graph_api;
    })
    .await;
    let (staff, _slug) = app.coach_taught_the_guide(json!({})).await;
    connect(&app, &staff).await;
    connect_whatsapp(&app, &staff, Value::Null).await;
    let tenant = tenant_id(&app, &staff).await;
    tg.push(text_update(30, 9191, "How long do refunds take?"));
    let question = wa::event(vec![wa::text(
        "wamid.q1",
        "34633333333",
        "How long do refunds take?",
    )]);
    assert_eq!(
        signed(&app, &tenant, &question, wa::APP_SECRET)
            .await
            .status(),
        200
    );
    let texts = tg.wait_for_texts(9191, 1).await;
    assert!(texts[0].contains("14 days"), "{texts:?}");
    assert!(texts[0].contains("\n\nSources:\n[1] "), "{texts:?}");
    // The coach was "typing…" while it wrote.
    let typing = tg.calls("sendChatAction");
    assert!(
        typing
            .iter()
            .any(|c| c.body["chat_id"] == "9191" && c.body["action"] == "typing"),
        "{typing:?}"
    );
    let answered = graph.wait_for("34633333333", 1).await;
    let body = answered[0]["text"]["body"].as_str().unwrap();
    assert!(
        body.contains("14 days") && body.contains("\n\nSources:\n[1] "),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_between_the_platform_call_and_recording_it_sends_nothing_twice() {
    let tg = TelegramStandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let env = [("COMPANERO_SETUP_TOKEN", common::SETUP_TOKEN)];
    let args = ["--offline", "--telegram-api-url", tg.url.as_str()];
    let served = Served::start_with_env(data, &args, &env);
    let base = served.wait_for_address();
    let client = reqwest::Client::new();
    let staff = common::process::register_owner(&base).await;
    let connected = client
        .put(format!("{base}/api/v1/channels/telegram"))
        .bearer_auth(&staff)
        .json(&json!({"bot_token": TOKEN}))
        .send()
        .await
        .unwrap();
    assert_eq!(connected.status(), 200);

    // The greeting reaches Telegram, and the server dies before Telegram's answer is recorded.
    tg.hold_sends();
    tg.push(text_update(1, 3131, "/start"));
    tg.wait_for_sends(1).await;
    served.kill();
    tg.release_sends();

    // After the restart the delivery is claimed again (its lease ran out); the part that may
    // have gone out is not sent again, and the next message goes out as usual.
    let served = Served::start_with_env(data, &args, &env);
    let base = served.wait_for_address();
    let figures = || async {
        let list: Value = client
            .get(format!("{base}/api/v1/channels"))
            .bearer_auth(&staff)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        list["channels"][1].clone()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let telegram = figures().await;
        assert_eq!(telegram["channel"], "telegram");
        if telegram["queued"] == 0 && telegram["sent"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{telegram}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tg.push(text_update(2, 3131, "/start"));
    tg.wait_for_texts(3131, 2).await;
    let sends = tg.calls("sendMessage");
    assert_eq!(sends.len(), 2, "the greeting was sent again: {sends:?}");
    served.kill();
}

async fn signed(app: &TestApp, tenant: &str, body: &Value, secret: &str) -> reqwest::Response {
    let raw = serde_json::to_vec(body).unwrap();
    app.client
        .post(app.url(&format!("/hooks/whatsapp/{tenant}")))
        .header("Content-Type", "application/json")
        .header("X-Hub-Signature-256", wa::signature(secret, &raw))
        .body(raw)
        .send()
        .await
        .unwrap()
}

async fn connect_whatsapp(app: &TestApp, staff: &str, template: Value) -> Value {
    call(
        app,
        Method::PUT,
        "/api/v1/channels/whatsapp",
        staff,
        json!({
        "phone_number_id": wa::PHONE_NUMBER_ID, "access_token": wa::ACCESS_TOKEN,
        "app_secret": wa::APP_SECRET, "template": template}),
    )
    .await
}

/// Makes everything `from` wrote look `hours` old (the 24-hour window is real time).
fn written_hours_ago(app: &TestApp, hours: i64) {
    let db = rusqlite::Connection::open(app.config.data_dir.join("companero.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    let at = (chrono::Utc::now() - chrono::Duration::hours(hours))
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    db.execute(
        "UPDATE messages SET created_at = ?1 WHERE channel = 'whatsapp' AND role = 'user'",
        [at],
    )
    .unwrap();
}

/// Polls the end user's nudges until one matches `wanted`.
async fn nudge_where(
    app: &TestApp,
    staff: &str,
    user: &str,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let path = format!("/api/v1/nudges?end_user_id={user}");
        let list = call(app, Method::GET, &path, staff, Value::Null).await;
        if let Some(nudge) = list["nudges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| wanted(n))
        {
            return nudge.clone();
        }
        assert!(Instant::now() < deadline, "{list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The end user's newest nudge once it was decided.
async fn nudge_of(app: &TestApp, staff: &str, user: &str) -> Value {
    nudge_where(app, staff, user, |n| {
        !["scheduled", "sending"].contains(&n["status"].as_str().unwrap())
    })
    .await
}

/// Enrols the first end user of the list in a new one-step program due at once.
async fn enrol_whatsapp_person(app: &TestApp, staff: &str, name: &str) -> String {
    let id = |value: Value| value["id"].as_str().unwrap().to_string();
    let program = id(call(
        app,
        Method::POST,
        "/api/v1/programs",
        staff,
        json!({
        "name": name, "steps": [{"key": "tip", "day": 0, "at": "00:00", "kind": "message",
                   "text": format!("{name}: drink a glass of water first thing.")}]}),
    )
    .await);
    call(
        app,
        Method::POST,
        &format!("/api/v1/programs/{program}/publish"),
        staff,
        json!({}),
    )
    .await;
    let people = call(app, Method::GET, "/api/v1/end-users", staff, Value::Null).await;
    let user = people["end_users"][0]["id"].as_str().unwrap().to_string();
    call(
        app,
        Method::POST,
        &format!("/api/v1/programs/{program}/enrollments"),
        staff,
        json!({"end_user_id": user}),
    )
    .await;
    user
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whatsapp_number_takes_signed_events_once_and_keeps_to_the_24_hour_window() {
    let graph = GraphStandIn::start().await;
    let api = graph.url.clone();
    let app = TestApp::start(Options {
        configure: Some(Box::new(move |config| {
            config.channels.whatsapp_url = api;
            config.public_url = "https://coach.example.com".into();
        })),
        ..Options::default()
    })
    .await;
    let staff = app.sign_up("owner@example.com").await;
    let tenant = tenant_id(&app, &staff).await;
    // Steps go out whatever the hour this test runs at.
    call(
        &app,
        Method::PATCH,
        "/api/v1/coach",
        &staff,
        json!({"quiet_hours": "00:00-00:00"}),
    )
    .await;

    // A token the Graph API refuses is a clear 400; a good one answers what Meta's console needs.
    let refused = app
        .send(
            Method::PUT,
            "/api/v1/channels/whatsapp",
            &staff,
            Some(json!({
        "phone_number_id": wa::PHONE_NUMBER_ID, "access_token": "EAAG-wrong", "app_secret": "s"})),
        )
        .await;
    expect_error(refused, 400, "invalid_credentials").await;
    let connected = connect_whatsapp(&app, &staff, Value::Null).await;
    assert_eq!(connected["display_phone_number"], "+34 600 000 111");
    assert_eq!(
        connected["callback_url"],
        format!("https://coach.example.com/hooks/whatsapp/{tenant}").as_str()
    );
    assert_eq!(connected["token_hint"], "…9f3a");
    let verify = connected["verify_token"].as_str().unwrap().to_string();
    assert!(
        verify
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{verify}"
    );
    assert!(
        !connected.to_string().contains(wa::ACCESS_TOKEN)
            && !connected.to_string().contains(wa::APP_SECRET)
    );

    // Meta's handshake: the challenge as plain text, or 403 on a wrong token.
    let handshake = |token: String| {
        let url = app.url(&format!("/hooks/whatsapp/{tenant}?hub.mode=subscribe&hub.verify_token={token}&hub.challenge=1158201444"));
        let client = app.client.clone();
        async move { client.get(url).send().await.unwrap() }
    };
    let ok = handshake(verify.clone()).await;
    assert_eq!(ok.status(), 200);
    assert!(
        ok.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(ok.text().await.unwrap(), "1158201444");
    expect_error(handshake("wrong".into()).await, 403, "forbidden").await;

    // Unsigned or wrongly signed: 403, and nothing is stored.
    let hello = wa::event(vec![wa::text(
        "wamid.in1",
        "34611111111",
        "Can I talk to a human please?",
    )]);
    expect_error(
        signed(&app, &tenant, &hello, "not-the-app-secret").await,
        403,
        "forbidden",
    )
    .await;
    let unsigned = app
        .client
        .post(app.url(&format!("/hooks/whatsapp/{tenant}")))
        .json(&hello)
        .send()
        .await
        .unwrap();
    expect_error(unsigned, 403, "forbidden").await;
    let figures = call(&app, Method::GET, "/api/v1/channels", &staff, Value::Null).await;
    assert_eq!(figures["channels"][2]["people"], 0, "{figures}");

    // Signed, in a batch with another person's message, and sent twice: each answered once.
    let batch = wa::event(vec![
        wa::text("wamid.in1", "34611111111", "Can I talk to a human please?"),
        wa::text("wamid.in2", "34622222222", "Can I talk to a human please?"),
    ]);
    for _ in 0..2 {
        assert_eq!(
            signed(&app, &tenant, &batch, wa::APP_SECRET).await.status(),
            200
        );
    }
    let told = graph.wait_for("34611111111", 1).await;
    assert!(
        told[0]["text"]["body"]
            .as_str()
            .unwrap()
            .contains("talk to a person"),
        "{told:?}"
    );
    graph.wait_for("34622222222", 1).await;
    let figures = call(&app, Method::GET, "/api/v1/channels", &staff, Value::Null).await;
    let whatsapp = &figures["channels"][2];
    assert_eq!(
        (whatsapp["channel"].as_str(), whatsapp["people"].as_i64()),
        (Some("whatsapp"), Some(2)),
        "{figures}"
    );
    assert_eq!(graph.sent_to("34611111111").len(), 1);

    // Within the window, a program step goes out as text; receipts arrive out of order.
    let ana = enrol_whatsapp_person(&app, &staff, "Hydrate").await;
    let nudge = nudge_of(&app, &staff, &ana).await;
    assert_eq!(nudge["status"], "sent", "{nudge}");
    assert_eq!(nudge["channel"], "whatsapp");
    let deadline = Instant::now() + Duration::from_secs(30);
    let step = loop {
        let found = graph
            .sent_to("34611111111")
            .into_iter()
            .chain(graph.sent_to("34622222222"))
            .find(|m| {
                m["text"]["body"]
                    .as_str()
                    .is_some_and(|b| b.starts_with("Hydrate"))
            });
        if let Some(step) = found {
            break step;
        }
        assert!(Instant::now() < deadline, "the step did not go out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (wamid, to) = (
        step["wamid"].as_str().unwrap().to_string(),
        step["to"].as_str().unwrap().to_string(),
    );
    let read_first = wa::event(vec![
        wa::status(&wamid, &to, "read"),
        wa::status(&wamid, &to, "delivered"),
    ]);
    assert_eq!(
        signed(&app, &tenant, &read_first, wa::APP_SECRET)
            .await
            .status(),
        200
    );
    assert_eq!(nudge_of(&app, &staff, &ana).await["status"], "read");

    // Two days later, with no template, the next step is suppressed and nothing is sent.
    written_hours_ago(&app, 48);
    let before = graph.sent_to(&to).len();
    enrol_whatsapp_person(&app, &staff, "Stretch").await;
    let stretch = nudge_where(&app, &staff, &ana, |n| n["status"] == "suppressed").await;
    assert_eq!(stretch["reason"], "whatsapp_window_closed", "{stretch}");
    assert_eq!(graph.sent_to(&to).len(), before);

    // With an approved template, it goes out as that template.
    connect_whatsapp(
        &app,
        &staff,
        json!({"name": "coach_checkin", "language": "en_US"}),
    )
    .await;
    enrol_whatsapp_person(&app, &staff, "Walk").await;
    let sent = graph.wait_for(&to, before + 1).await;
    let template = &sent.last().unwrap()["template"];
    assert_eq!(template["name"], "coach_checkin", "{sent:?}");
    assert!(
        template["components"][0]["parameters"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("Walk")
    );
}
