//! Two-step sign-in against the real server, with codes computed as an authenticator app
//! would (RFC 6238): enrolment with a QR code and recovery codes, the `mfa_required`
//! challenge at sign-in, a code that works once, recovery codes that work once, lock-out
//! after five wrong codes, turning it off only with a code, an admin requiring it of the team
//! (members without it are signed out and enrol at their next sign-in), the owner requiring
//! it of the instance, and the audit trail (which never holds a secret or a code).

mod common;

use common::{PASSWORD, TestApp, expect_error};
use reqwest::Method;
use serde_json::{Value, json};

async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> reqwest::Response {
    let mut request = app.client.request(method, app.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

async fn ok(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> Value {
    let response = call(app, method.clone(), path, body, token).await;
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "{method} {path}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// What an authenticator app set up from `otpauth_url` shows `steps_ahead` steps from now.
fn code(otpauth_url: &str, steps_ahead: i64) -> String {
    let totp = totp_rs::TOTP::from_url(otpauth_url).expect("an otpauth URL");
    let now = chrono::Utc::now().timestamp() + steps_ahead * 30;
    totp.generate(now as u64)
}

async fn register(app: &TestApp, email: &str, invitation: Option<&str>) -> Value {
    let mut body = json!({"email": email, "password": PASSWORD, "full_name": "Person",
                          "setup_token": common::SETUP_TOKEN});
    if let Some(invitation) = invitation {
        body["invitation"] = json!(invitation);
    }
    ok(app, Method::POST, "/api/v1/auth/register", Some(body), None).await
}

async fn login(app: &TestApp, email: &str) -> reqwest::Response {
    call(
        app,
        Method::POST,
        "/api/v1/auth/login",
        Some(json!({"email": email, "password": PASSWORD})),
        None,
    )
    .await
}

/// Signs in up to the second step; returns the challenge.
async fn challenge(app: &TestApp, email: &str, expected: &str) -> String {
    let response = login(app, email).await;
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], expected, "{body}");
    assert_eq!(body["error"]["expires_in"], 300, "{body}");
    body["error"]["challenge"].as_str().unwrap().to_string()
}

/// Enrols the signed-in caller; returns (otpauth URL, recovery codes, the code it spent).
async fn enrol(app: &TestApp, token: &str) -> (String, Vec<String>, String) {
    let enrollment = ok(
        app,
        Method::POST,
        "/api/v1/auth/mfa/enrollment",
        None,
        Some(token),
    )
    .await;
    let url = enrollment["otpauth_url"].as_str().unwrap().to_string();
    assert!(url.starts_with("otpauth://totp/"), "{url}");
    assert!(enrollment["qr_svg"].as_str().unwrap().contains("<svg"));
    assert!(enrollment["secret"].as_str().unwrap().len() >= 26);
    let first = code(&url, 0);
    let confirmed = ok(
        app,
        Method::POST,
        "/api/v1/auth/mfa/enrollment/confirm",
        Some(json!({"code": first})),
        Some(token),
    )
    .await;
    let codes: Vec<String> = confirmed["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    (url, codes, first)
}

async fn second_step(app: &TestApp, challenge: &str, factor: Value) -> reqwest::Response {
    let mut body = factor;
    body["challenge"] = json!(challenge);
    call(
        app,
        Method::POST,
        "/api/v1/auth/login/mfa",
        Some(body),
        None,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_step_sign_in_from_enrolment_to_requirement() {
    let app = TestApp::start(common::Options {
        configure: Some(Box::new(|config| {
            config.signup = companero::auth::accounts::SignupPolicy::Open;
            // This test signs in many times from one address; the per-address limit has its
            // own test (auth.rs).
            config.rate_limits.auth_per_ip = 10_000;
        })),
        ..Default::default()
    })
    .await;
    let owner_email = "owner@example.com";
    let owner = register(&app, owner_email, None).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let status = ok(&app, Method::GET, "/api/v1/auth/mfa", None, Some(&owner)).await;
    assert_eq!(status["enabled"], false);

    // Nobody can require it before having it themselves.
    let response = call(
        &app,
        Method::PUT,
        "/api/v1/tenant/mfa-requirement",
        Some(json!({"required": true})),
        Some(&owner),
    )
    .await;
    expect_error(response, 403, "mfa_policy").await;

    // Enrolment: a wrong first code is refused, then the right one turns it on.
    let enrollment = ok(
        &app,
        Method::POST,
        "/api/v1/auth/mfa/enrollment",
        None,
        Some(&owner),
    )
    .await;
    let response = call(
        &app,
        Method::POST,
        "/api/v1/auth/mfa/enrollment/confirm",
        Some(json!({"code": wrong(enrollment["otpauth_url"].as_str().unwrap())})),
        Some(&owner),
    )
    .await;
    expect_error(response, 401, "invalid_mfa_code").await;
    let (url, recovery, spent) = enrol(&app, &owner).await;
    assert_eq!(recovery.len(), 10);
    let status = ok(&app, Method::GET, "/api/v1/auth/mfa", None, Some(&owner)).await;
    assert_eq!(status["enabled"], true);
    assert_eq!(status["recovery_codes_left"], 10);
    // Enrolling again while it is on is refused (it would replace the authenticator).
    let response = call(
        &app,
        Method::POST,
        "/api/v1/auth/mfa/enrollment",
        None,
        Some(&owner),
    )
    .await;
    expect_error(response, 409, "conflict").await;

    // Sign-in now takes a second step.
    let first = challenge(&app, owner_email, "mfa_required").await;
    let response = second_step(&app, &first, json!({"code": wrong(&url)})).await;
    expect_error(response, 401, "invalid_mfa_code").await;
    // The code that confirmed the enrolment was spent; the next step's code works.
    let response = second_step(&app, &first, json!({"code": spent})).await;
    expect_error(response, 401, "invalid_mfa_code").await;
    let next = code(&url, 1);
    let session = second_step(&app, &first, json!({"code": next})).await;
    assert_eq!(session.status(), 200);
    let session: Value = session.json().await.unwrap();
    let signed_in = session["access_token"].as_str().unwrap().to_string();
    ok(&app, Method::GET, "/api/v1/auth/me", None, Some(&signed_in)).await;
    // The challenge is spent, and so is the code, on a new challenge too.
    let response = second_step(&app, &first, json!({"code": next})).await;
    expect_error(response, 401, "mfa_challenge_expired").await;
    let again = challenge(&app, owner_email, "mfa_required").await;
    let response = second_step(&app, &again, json!({"code": next})).await;
    expect_error(response, 401, "invalid_mfa_code").await;

    // A recovery code works once, however it is typed.
    let typed = recovery[0].to_uppercase().replace('-', " ");
    let response = second_step(&app, &again, json!({"recovery_code": typed})).await;
    assert_eq!(response.status(), 200);
    let again = challenge(&app, owner_email, "mfa_required").await;
    let response = second_step(&app, &again, json!({"recovery_code": recovery[0]})).await;
    expect_error(response, 401, "invalid_mfa_code").await;
    let status = ok(&app, Method::GET, "/api/v1/auth/mfa", None, Some(&owner)).await;
    assert_eq!(status["recovery_codes_left"], 9);

    // Turning it off needs a code.
    let response = call(
        &app,
        Method::DELETE,
        "/api/v1/auth/mfa",
        Some(json!({})),
        Some(&owner),
    )
    .await;
    expect_error(response, 422, "invalid_request").await;
    let response = call(
        &app,
        Method::DELETE,
        "/api/v1/auth/mfa",
        Some(json!({"recovery_code": recovery[0]})),
        Some(&owner),
    )
    .await;
    expect_error(response, 401, "invalid_mfa_code").await;

    // The admin requires it of the team: a coach without it is signed out, and sets it up at
    // the next sign-in.
    let invitation = ok(
        &app,
        Method::POST,
        "/api/v1/team/invitations",
        Some(json!({"email": "coach@example.com", "role": "coach"})),
        Some(&owner),
    )
    .await;
    let coach = register(&app, "coach@example.com", invitation["token"].as_str()).await;
    let coach_token = coach["access_token"].as_str().unwrap().to_string();
    let changed = ok(
        &app,
        Method::PUT,
        "/api/v1/tenant/mfa-requirement",
        Some(json!({"required": true})),
        Some(&owner),
    )
    .await;
    assert_eq!(changed["signed_out"], 1, "{changed}");
    let tenant = ok(&app, Method::GET, "/api/v1/tenant", None, Some(&owner)).await;
    assert_eq!(tenant["require_mfa"], true);
    let response = call(
        &app,
        Method::GET,
        "/api/v1/auth/me",
        None,
        Some(&coach_token),
    )
    .await;
    assert_eq!(response.status(), 401, "the coach's session ended");
    let response = call(
        &app,
        Method::POST,
        "/api/v1/auth/refresh",
        Some(json!({"refresh_token": coach["refresh_token"]})),
        None,
    )
    .await;
    assert_eq!(response.status(), 401, "and so did their refresh token");
    let enrolling = challenge(&app, "coach@example.com", "mfa_enrollment_required").await;
    let enrollment = ok(
        &app,
        Method::POST,
        "/api/v1/auth/login/mfa/enrollment",
        Some(json!({"challenge": enrolling})),
        None,
    )
    .await;
    let coach_url = enrollment["otpauth_url"].as_str().unwrap().to_string();
    let response = second_step(&app, &enrolling, json!({"code": code(&coach_url, 0)})).await;
    assert_eq!(response.status(), 200);
    let coach_session: Value = response.json().await.unwrap();
    assert_eq!(
        coach_session["recovery_codes"].as_array().unwrap().len(),
        10
    );
    let coach_token = coach_session["access_token"].as_str().unwrap().to_string();
    // Required, it cannot be turned off.
    let response = call(
        &app,
        Method::DELETE,
        "/api/v1/auth/mfa",
        Some(json!({"code": code(&coach_url, 1)})),
        Some(&coach_token),
    )
    .await;
    expect_error(response, 403, "mfa_policy").await;
    // Only admins require it.
    let response = call(
        &app,
        Method::PUT,
        "/api/v1/tenant/mfa-requirement",
        Some(json!({"required": false})),
        Some(&coach_token),
    )
    .await;
    expect_error(response, 403, "forbidden").await;
    ok(
        &app,
        Method::PUT,
        "/api/v1/tenant/mfa-requirement",
        Some(json!({"required": false})),
        Some(&owner),
    )
    .await;
    // Not required any more: off with a recovery code (the authenticator's codes up to the
    // next step are spent); sign-in is one step again.
    let response = call(
        &app,
        Method::DELETE,
        "/api/v1/auth/mfa",
        Some(json!({"recovery_code": recovery[2]})),
        Some(&owner),
    )
    .await;
    assert_eq!(response.status(), 204);
    assert_eq!(login(&app, owner_email).await.status(), 200);

    // Five wrong codes in a row lock the account's codes, even the right one, for a while.
    let other = register(&app, "other@example.com", None).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let (other_url, ..) = enrol(&app, &other).await;
    let locking = challenge(&app, "other@example.com", "mfa_required").await;
    for _ in 0..5 {
        let response = second_step(&app, &locking, json!({"code": wrong(&other_url)})).await;
        expect_error(response, 401, "invalid_mfa_code").await;
    }
    let response = call(
        &app,
        Method::POST,
        "/api/v1/auth/mfa/recovery-codes",
        Some(json!({"code": code(&other_url, 1)})),
        Some(&other),
    )
    .await;
    assert!(response.headers().contains_key("retry-after"));
    expect_error(response, 429, "rate_limited").await;

    // The owner requires it of the whole instance; another creator cannot.
    let response = call(
        &app,
        Method::PUT,
        "/api/v1/admin/mfa-requirement",
        Some(json!({"required": true})),
        Some(&other),
    )
    .await;
    expect_error(response, 403, "forbidden").await;
    let response = call(
        &app,
        Method::PUT,
        "/api/v1/admin/mfa-requirement",
        Some(json!({"required": true})),
        Some(&signed_in),
    )
    .await;
    expect_error(response, 403, "mfa_policy").await;

    // The audit trail: every step, and never a secret or a code.
    let log = ok(
        &app,
        Method::GET,
        "/api/v1/audit-log?limit=200",
        None,
        Some(&signed_in_again(&app, owner_email).await),
    )
    .await;
    let actions: Vec<&str> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for expected in [
        "auth.mfa_enabled",
        "auth.mfa_failed",
        "auth.mfa_recovery_code_used",
        "auth.mfa_disabled",
        "auth.login_second_step",
        "tenant.mfa_requirement_changed",
    ] {
        assert!(
            actions.contains(&expected),
            "{expected} missing: {actions:?}"
        );
    }
    let text = log.to_string();
    assert!(!text.contains(enrollment["secret"].as_str().unwrap()));
    assert!(!text.contains(&recovery[1]));
    let other_log = ok(
        &app,
        Method::GET,
        "/api/v1/audit-log?limit=200",
        None,
        Some(&other),
    )
    .await;
    assert!(
        other_log.to_string().contains("auth.mfa_locked"),
        "{other_log}"
    );
}

/// A 6-digit code the authenticator does not show now (nor one step either side).
fn wrong(otpauth_url: &str) -> String {
    let near: Vec<String> = (-1..=1).map(|s| code(otpauth_url, s)).collect();
    (0..1_000_000)
        .map(|n| format!("{n:06}"))
        .find(|c| !near.contains(c))
        .unwrap()
}

async fn signed_in_again(app: &TestApp, email: &str) -> String {
    let response = login(app, email).await;
    assert_eq!(response.status(), 200);
    response.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string()
}
