//! Web Push, server side: a browser's subscription (the test's own P-256 key and auth secret)
//! points at a stand-in push service. A staff reply in that visitor's web conversation reaches
//! it encrypted as RFC 8291 says, with a VAPID JWT the stand-in verifies; a subscription the
//! service calls gone (410) is dropped. Bad subscriptions are refused with clear errors.

mod common;

use common::push::{Browser, PushStandIn, vapid_claims};
use common::{Options, TestApp, expect_error};
use reqwest::Method;
use serde_json::{Value, json};

async fn call(app: &TestApp, method: Method, path: &str, token: &str, body: Value) -> Value {
    app.json_ok(method, path, token, (!body.is_null()).then_some(body))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staff_reply_reaches_a_closed_page_encrypted_and_signed_and_a_gone_subscription_is_dropped()
 {
    let service = PushStandIn::start().await;
    let app = TestApp::start(Options {
        configure: Some(Box::new(|config| {
            config.channels.push_http_endpoints = true;
            config.mail_from = "Coach Ana <ana@example.com>".into();
        })),
        ..Options::default()
    })
    .await;
    let staff = app.sign_up("owner@example.com").await;
    let slug = app.slug(&staff).await;
    let visitor = app.visitor(&slug).await;
    let conversation = app.conversation(&visitor).await;

    // The page asks for the key to subscribe with; staff have no push of their own.
    let status = call(
        &app,
        Method::GET,
        "/api/v1/public/me/push",
        &visitor,
        Value::Null,
    )
    .await;
    assert_eq!(status["subscriptions"], 0);
    let server_key = status["public_key"].as_str().unwrap().to_string();
    let staff_try = app
        .send(Method::GET, "/api/v1/public/me/push", &staff, None)
        .await;
    expect_error(staff_try, 403, "forbidden").await;

    // Subscriptions that could never be encrypted for are refused, and say why.
    let browser = Browser::new(&service, "phone");
    let mut no_key = browser.subscription();
    no_key["keys"]["p256dh"] = json!("bm90LWEta2V5");
    let refused = app
        .send(
            Method::PUT,
            "/api/v1/public/me/push",
            &visitor,
            Some(no_key),
        )
        .await;
    let message = expect_error(refused, 400, "invalid_field").await;
    assert!(message.contains("p256dh"), "{message}");
    let mut not_a_url = browser.subscription();
    not_a_url["endpoint"] = json!("ftp://push.example/x");
    let refused = app
        .send(
            Method::PUT,
            "/api/v1/public/me/push",
            &visitor,
            Some(not_a_url),
        )
        .await;
    expect_error(refused, 400, "invalid_field").await;

    let subscribed = call(
        &app,
        Method::PUT,
        "/api/v1/public/me/push",
        &visitor,
        browser.subscription(),
    )
    .await;
    assert_eq!(subscribed["subscriptions"], 1);

    // The team answers while the page is closed: the push carries it.
    call(
        &app,
        Method::POST,
        &format!("/api/v1/conversations/{conversation}/takeover"),
        &staff,
        json!({}),
    )
    .await;
    let reply = "Your plan for this week is ready: three short runs.";
    call(
        &app,
        Method::POST,
        &format!("/api/v1/conversations/{conversation}/messages"),
        &staff,
        json!({"content": reply, "stream": false}),
    )
    .await;
    let pushes = service.wait_for(1).await;
    let push = &pushes[0];
    assert_eq!(push.subscription, "phone");
    assert!(push.headers.contains_key("ttl"), "{:?}", push.headers);
    // What travelled is ciphertext; the browser's keys open it.
    assert!(!String::from_utf8_lossy(&push.body).contains("three short runs"));
    let payload = browser.decrypt(push);
    assert_eq!(payload["body"], reply, "{payload}");
    let coach = call(&app, Method::GET, "/api/v1/coach", &staff, Value::Null).await;
    let coach_name = coach["name"].as_str().unwrap();
    assert!(
        payload["title"].as_str().unwrap().contains(coach_name),
        "{payload}"
    );
    assert_eq!(payload["url"], format!("/c/{slug}"));
    assert_eq!(payload["tag"], conversation);
    // The JWT is signed by the key the browser subscribed with, for this push service.
    let (claims, key) = vapid_claims(push);
    assert_eq!(key, server_key);
    assert_eq!(claims["aud"], service.url, "{claims}");
    assert_eq!(claims["sub"], "mailto:ana@example.com");
    let expires_in = claims["exp"].as_i64().unwrap() - chrono::Utc::now().timestamp();
    assert!((60..=24 * 3600).contains(&expires_in), "{claims}");

    // The browser unsubscribed behind our back: the service says 410, and the subscription
    // goes.
    service.answer_next(410);
    call(
        &app,
        Method::POST,
        &format!("/api/v1/conversations/{conversation}/messages"),
        &staff,
        json!({"content": "Did the first run go well?", "stream": false}),
    )
    .await;
    service.wait_for(2).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status = call(
            &app,
            Method::GET,
            "/api/v1/public/me/push",
            &visitor,
            Value::Null,
        )
        .await;
        if status["subscriptions"] == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // Subscribing again, then turning notifications off, leaves nothing to push to.
    call(
        &app,
        Method::PUT,
        "/api/v1/public/me/push",
        &visitor,
        browser.subscription(),
    )
    .await;
    let off = call(
        &app,
        Method::DELETE,
        "/api/v1/public/me/push",
        &visitor,
        Value::Null,
    )
    .await;
    assert_eq!(off["subscriptions"], 0);
}
