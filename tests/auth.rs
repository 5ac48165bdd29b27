//! Accounts and isolation over HTTP: registration, sign-in, refresh rotation with reuse
//! detection, sign-out, roles, API keys, rate limits and lock-out, password change and reset, the
//! audit log, and the cross-tenant sweep.

mod common;

use common::{Options, PASSWORD, TestApp, expect_error};
use companero::auth::RequestContext;
use companero::auth::accounts::SignupPolicy;
use reqwest::Method;
use serde_json::{Value, json};

async fn open_app() -> TestApp {
    TestApp::start(Options {
        configure: Some(Box::new(|c| c.signup = SignupPolicy::Open)),
        ..Options::default()
    })
    .await
}

impl TestApp {
    async fn post(&self, path: &str, body: Value, token: Option<&str>) -> reqwest::Response {
        self.call(Method::POST, path, Some(body), token).await
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self.client.request(method, self.url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    /// Registers and returns (access token, refresh token).
    async fn register(&self, email: &str, name: &str) -> (String, String) {
        let response = self
            .post(
                "/api/v1/auth/register",
                json!({"email": email, "password": PASSWORD, "full_name": name, "setup_token": common::SETUP_TOKEN}),
                None,
            )
            .await;
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        let body: Value = response.json().await.unwrap();
        (
            body["access_token"].as_str().unwrap().to_string(),
            body["refresh_token"].as_str().unwrap().to_string(),
        )
    }

    async fn login(&self, email: &str, password: &str) -> reqwest::Response {
        self.post(
            "/api/v1/auth/login",
            json!({"email": email, "password": password}),
            None,
        )
        .await
    }

    async fn get_with(&self, path: &str, token: &str) -> reqwest::Response {
        self.call(Method::GET, path, None, Some(token)).await
    }
}

#[tokio::test]
async fn the_first_account_owns_the_instance_and_later_ones_need_an_invitation() {
    let app = TestApp::spawn().await; // default policy: invite
    let (owner, _) = app.register("Maria.Lopez@Example.com", "María López").await;
    let me: Value = app
        .get_with("/api/v1/auth/me", &owner)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["email"], "maria.lopez@example.com");
    assert_eq!(me["is_owner"], true);
    assert_eq!(me["role"], "admin");
    assert_eq!(me["tenant"]["coach_slug"], "maria-lopez");

    let refused = app
        .post(
            "/api/v1/auth/register",
            json!({"email": "ana@example.com", "password": PASSWORD, "full_name": "Ana"}),
            None,
        )
        .await;
    expect_error(refused, 403, "signup_closed").await;

    // An admin invites a coach, who registers into the same tenant.
    let invitation: Value = app
        .post(
            "/api/v1/team/invitations",
            json!({"email": "ana@example.com", "role": "coach"}),
            Some(&owner),
        )
        .await
        .json()
        .await
        .unwrap();
    let token = invitation["token"].as_str().unwrap();
    let joined = app
        .post(
            "/api/v1/auth/register",
            json!({"email": "ana@example.com", "password": PASSWORD, "full_name": "Ana", "invitation": token}),
            None,
        )
        .await;
    assert_eq!(joined.status(), 201);
    let coach_token = joined.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let coach: Value = app
        .get_with("/api/v1/auth/me", &coach_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(coach["role"], "coach");
    assert_eq!(coach["is_owner"], false);
    assert_eq!(coach["tenant"]["id"], me["tenant"]["id"]);
    // Roles are checked: a coach cannot manage API keys or read the audit log.
    expect_error(
        app.get_with("/api/v1/api-keys", &coach_token).await,
        403,
        "forbidden",
    )
    .await;
    expect_error(
        app.get_with("/api/v1/audit-log", &coach_token).await,
        403,
        "forbidden",
    )
    .await;
    expect_error(
        app.get_with("/api/v1/admin/audit-log", &coach_token).await,
        403,
        "forbidden",
    )
    .await;
}

#[tokio::test]
async fn registration_rejects_weak_passwords_taken_emails_and_bad_input_clearly() {
    let app = open_app().await;
    app.register("ana@example.com", "Ana Pérez").await;
    let weak = app
        .post(
            "/api/v1/auth/register",
            json!({"email": "bo@example.com", "password": "password123", "full_name": "Bo"}),
            None,
        )
        .await;
    let message = expect_error(weak, 422, "weak_password").await;
    assert!(message.contains("too easy to guess"), "{message}");
    let short = app
        .post(
            "/api/v1/auth/register",
            json!({"email": "bo@example.com", "password": "short", "full_name": "Bo"}),
            None,
        )
        .await;
    assert!(
        expect_error(short, 422, "weak_password")
            .await
            .contains("at least 10")
    );
    let taken = app
        .post(
            "/api/v1/auth/register",
            json!({"email": " ANA@example.com", "password": PASSWORD, "full_name": "Ana"}),
            None,
        )
        .await;
    expect_error(taken, 409, "email_taken").await;
    let missing = app
        .post(
            "/api/v1/auth/register",
            json!({"email": "x@example.com"}),
            None,
        )
        .await;
    assert!(missing.status().is_client_error());
    let body: Value = missing.json().await.unwrap();
    assert!(body["error"]["code"].is_string(), "{body}");
}

#[tokio::test]
async fn login_refresh_rotation_reuse_detection_and_logout() {
    let app = open_app().await;
    app.register("ana@example.com", "Ana").await;
    expect_error(
        app.login("ana@example.com", "wrong password here").await,
        401,
        "invalid_credentials",
    )
    .await;
    expect_error(
        app.login("nobody@example.com", PASSWORD).await,
        401,
        "invalid_credentials",
    )
    .await;

    let session: Value = app
        .login("ANA@example.com", PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(session["token_type"], "Bearer");
    assert_eq!(session["expires_in"], 900);
    let first = session["refresh_token"].as_str().unwrap().to_string();

    let rotated = app
        .post(
            "/api/v1/auth/refresh",
            json!({"refresh_token": first}),
            None,
        )
        .await;
    assert_eq!(rotated.status(), 200);
    let rotated: Value = rotated.json().await.unwrap();
    let second = rotated["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(second, first);
    let access = rotated["access_token"].as_str().unwrap();
    assert_eq!(app.get_with("/api/v1/auth/me", access).await.status(), 200);

    // A second tab that exchanged the first token at the same moment gets a pair of its own
    // (a grace period for the token just replaced, while its successor is unused).
    let other_tab = app
        .post(
            "/api/v1/auth/refresh",
            json!({"refresh_token": first}),
            None,
        )
        .await;
    assert_eq!(other_tab.status(), 200);
    // Once the successor was used, the first token again is theft: the family is revoked.
    let third: Value = app
        .post(
            "/api/v1/auth/refresh",
            json!({"refresh_token": second}),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    let second = third["refresh_token"].as_str().unwrap().to_string();

    let reused = app
        .post(
            "/api/v1/auth/refresh",
            json!({"refresh_token": first}),
            None,
        )
        .await;
    expect_error(reused, 401, "token_reused").await;
    let after = app
        .post(
            "/api/v1/auth/refresh",
            json!({"refresh_token": second}),
            None,
        )
        .await;
    expect_error(after, 401, "invalid_token").await;

    // Logout ends a sign-in.
    let session: Value = app
        .login("ana@example.com", PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    let refresh = session["refresh_token"].as_str().unwrap();
    let out = app
        .post(
            "/api/v1/auth/logout",
            json!({"refresh_token": refresh}),
            None,
        )
        .await;
    assert_eq!(out.status(), 204);
    let dead = app
        .post(
            "/api/v1/auth/refresh",
            json!({"refresh_token": refresh}),
            None,
        )
        .await;
    expect_error(dead, 401, "invalid_token").await;
}

#[tokio::test]
async fn requests_without_valid_credentials_get_401_with_a_challenge() {
    let app = open_app().await;
    let none = app.get("/api/v1/auth/me").await;
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    expect_error(none, 401, "unauthorized").await;
    expect_error(
        app.get_with("/api/v1/auth/me", "not.a.jwt").await,
        401,
        "unauthorized",
    )
    .await;
    expect_error(
        app.get_with("/api/v1/auth/me", "cmp_unknownkey").await,
        401,
        "unauthorized",
    )
    .await;
}

#[tokio::test]
async fn api_keys_are_shown_once_work_as_bearer_tokens_and_can_be_revoked() {
    let app = open_app().await;
    let (admin, _) = app.register("ana@example.com", "Ana").await;
    let created = app
        .post(
            "/api/v1/api-keys",
            json!({"name": "CRM sync", "role": "coach", "expires_in_days": 30}),
            Some(&admin),
        )
        .await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let key = created["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("cmp_"));
    assert!(key.starts_with(created["prefix"].as_str().unwrap()));
    assert!(created["expires_at"].is_string());

    let listed: Value = app
        .get_with("/api/v1/api-keys", &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["api_keys"].as_array().unwrap().len(), 1);
    assert!(
        !listed.to_string().contains(&key),
        "the key is never shown again"
    );

    let me: Value = app
        .get_with("/api/v1/auth/me", &key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["role"], "coach");
    // A coach key cannot manage keys.
    expect_error(
        app.get_with("/api/v1/api-keys", &key).await,
        403,
        "forbidden",
    )
    .await;
    let listed: Value = app
        .get_with("/api/v1/api-keys", &admin)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        listed["api_keys"][0]["last_used_at"].is_string(),
        "{listed}"
    );

    let id = created["id"].as_str().unwrap();
    let revoked = app
        .call(
            Method::DELETE,
            &format!("/api/v1/api-keys/{id}"),
            None,
            Some(&admin),
        )
        .await;
    assert_eq!(revoked.status(), 204);
    expect_error(
        app.get_with("/api/v1/auth/me", &key).await,
        401,
        "unauthorized",
    )
    .await;
}

#[tokio::test]
async fn sign_in_attempts_are_rate_limited_per_ip() {
    let app = TestApp::start(Options {
        configure: Some(Box::new(|c| {
            c.signup = SignupPolicy::Open;
            c.rate_limits.auth_per_ip = 4;
        })),
        ..Options::default()
    })
    .await;
    for _ in 0..4 {
        assert_eq!(
            app.login("x@example.com", "whatever password")
                .await
                .status(),
            401
        );
    }
    let limited = app.login("x@example.com", "whatever password").await;
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    expect_error(limited, 429, "rate_limited").await;
}

/// Wrong passwords slow down only the account from that network: nobody can lock a victim out
/// by guessing from their own address, and an unknown email is answered exactly like a known one.
#[tokio::test]
async fn failed_sign_ins_delay_the_guessers_network_but_never_lock_out_the_owner() {
    let app = TestApp::start(Options {
        configure: Some(Box::new(|c| {
            c.signup = SignupPolicy::Open;
            c.rate_limits.auth_per_ip = 1000;
            c.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
        })),
        ..Options::default()
    })
    .await;
    app.register("ana@example.com", "Ana").await;
    let login_from = |email: &'static str, password: &'static str, ip: &'static str| {
        app.client
            .post(app.url("/api/v1/auth/login"))
            .header("x-forwarded-for", ip)
            .json(&json!({"email": email, "password": password}))
            .send()
    };
    // Ten wrong passwords from the attacker's address, for a real and for an unknown account:
    // the same answers in the same order (401 five times, then 429 with Retry-After).
    for email in ["ana@example.com", "nobody@example.com"] {
        let mut statuses = Vec::new();
        for _ in 0..10 {
            let response = login_from(email, "not her password", "198.51.100.7")
                .await
                .unwrap();
            if response.status() == 429 {
                assert!(response.headers().contains_key("retry-after"));
            }
            statuses.push(response.status().as_u16());
        }
        assert_eq!(&statuses[..5], &[401; 5], "{email}: {statuses:?}");
        assert!(
            statuses[5..].iter().all(|s| *s == 429),
            "{email}: {statuses:?}"
        );
        // The right password from the attacker's address waits too (asked at once: the first
        // delay is a second, and the other account's guesses take longer than that to check).
        if email == "ana@example.com" {
            let delayed = login_from(email, PASSWORD, "198.51.100.7").await.unwrap();
            expect_error(delayed, 429, "rate_limited").await;
        }
    }
    // ...but Ana, from her own address, signs in at once.
    let own = login_from("ana@example.com", PASSWORD, "203.0.113.9")
        .await
        .unwrap();
    assert_eq!(own.status(), 200, "{}", own.text().await.unwrap());
    // Addresses of one IPv6 /64 count as one network.
    for _ in 0..5 {
        login_from("ana@example.com", "guess", "2001:db8:7:7::1")
            .await
            .unwrap();
    }
    let same_net = login_from("ana@example.com", "guess", "2001:db8:7:7::ffff")
        .await
        .unwrap();
    expect_error(same_net, 429, "rate_limited").await;
}

#[tokio::test]
async fn changing_the_password_ends_other_sessions() {
    let app = open_app().await;
    let (access, refresh) = app.register("ana@example.com", "Ana").await;
    let wrong = app
        .post(
            "/api/v1/auth/password",
            json!({"current_password": "not the password", "new_password": "quiet river under stone"}),
            Some(&access),
        )
        .await;
    expect_error(wrong, 401, "invalid_credentials").await;
    let changed = app
        .post(
            "/api/v1/auth/password",
            json!({"current_password": PASSWORD, "new_password": "quiet river under stone"}),
            Some(&access),
        )
        .await;
    assert_eq!(changed.status(), 200);
    // Every sign-in ended, the caller's access token too; the answer is a new session.
    expect_error(
        app.get_with("/api/v1/auth/me", &access).await,
        401,
        "unauthorized",
    )
    .await;
    let renewed: Value = changed.json().await.unwrap();
    let renewed = renewed["access_token"].as_str().unwrap();
    assert_eq!(app.get_with("/api/v1/auth/me", renewed).await.status(), 200);
    let old = app
        .post(
            "/api/v1/auth/refresh",
            json!({"refresh_token": refresh}),
            None,
        )
        .await;
    expect_error(old, 401, "invalid_token").await;
    assert_eq!(app.login("ana@example.com", PASSWORD).await.status(), 401);
    assert_eq!(
        app.login("ana@example.com", "quiet river under stone")
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn password_reset_tokens_are_single_use_and_emails_cannot_be_probed() {
    let app = open_app().await;
    app.register("ana@example.com", "Ana").await;
    for email in ["ana@example.com", "nobody@example.com"] {
        let response = app
            .post("/api/v1/auth/password-reset", json!({"email": email}), None)
            .await;
        assert_eq!(response.status(), 202, "same answer for {email}");
    }
    // The token normally travels by email or the log; take it from the domain directly.
    let accounts = {
        let db = companero::db::Db::open(&app.config.data_dir.join("companero.db"), 2).unwrap();
        let keys =
            companero::auth::tokens::TokenKeys::load_or_create(&app.config.data_dir.join("keys"))
                .unwrap();
        companero::auth::accounts::Accounts::new(
            db.clone(),
            std::sync::Arc::new(keys),
            SignupPolicy::Open,
            Default::default(),
            companero::auth::mfa::Mfa::load(db.clone(), &app.config.data_dir.join("keys")).unwrap(),
            None,
        )
    };
    let token = accounts
        .request_reset("ana@example.com", &RequestContext::default())
        .await
        .unwrap()
        .expect("account exists");
    let confirm = |token: String| {
        app.post(
            "/api/v1/auth/password-reset/confirm",
            json!({"token": token, "new_password": "maple lantern drifts east"}),
            None,
        )
    };
    assert_eq!(confirm(token.clone()).await.status(), 204);
    expect_error(confirm(token).await, 401, "invalid_token").await;
    assert_eq!(
        app.login("ana@example.com", "maple lantern drifts east")
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn the_audit_log_records_who_did_what_from_where_per_tenant() {
    let app = open_app().await;
    let (owner, _) = app.register("owner@example.com", "Owner").await;
    let (other, _) = app.register("bo@example.com", "Bo").await;
    app.login("bo@example.com", "a wrong password!").await;
    let tagged = app
        .client
        .post(app.url("/api/v1/api-keys"))
        .bearer_auth(&other)
        .header("x-request-id", "audit-trail-1")
        .json(&json!({"name": "export"}))
        .send()
        .await
        .unwrap();
    assert_eq!(tagged.status(), 201);

    let log: Value = app
        .get_with("/api/v1/audit-log", &other)
        .await
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for expected in ["auth.registered", "auth.login_failed", "api_key.created"] {
        assert!(actions.contains(&expected), "{actions:?}");
    }
    let created = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "api_key.created")
        .unwrap();
    assert_eq!(created["request_id"], "audit-trail-1");
    assert_eq!(created["actor"], "bo@example.com");
    assert_eq!(created["ip"], "127.0.0.1");
    assert!(
        !log.to_string().contains("owner@example.com"),
        "only this tenant's events"
    );

    let instance: Value = app
        .get_with("/api/v1/admin/audit-log", &owner)
        .await
        .json()
        .await
        .unwrap();
    assert!(instance.to_string().contains("owner@example.com"));
    assert!(instance.to_string().contains("bo@example.com"));
    expect_error(
        app.get_with("/api/v1/admin/audit-log", &other).await,
        403,
        "forbidden",
    )
    .await;
}

/// Every route that names a tenant-owned resource, called by another tenant's admin with the
/// first tenant's ids, must answer 404 and change nothing. Grow this list with every such route.
#[tokio::test]
async fn cross_tenant_sweep_every_route_answers_404_for_another_tenants_ids() {
    let app = open_app().await;
    let (alice, _) = app.register("alice@example.com", "Alice").await;
    let (bob, _) = app.register("bob@example.com", "Bob").await;
    let key: Value = app
        .post(
            "/api/v1/api-keys",
            json!({"name": "alice key", "role": "analyst"}),
            Some(&alice),
        )
        .await
        .json()
        .await
        .unwrap();
    let alice_key_id = key["id"].as_str().unwrap().to_string();
    let alice_key = key["key"].as_str().unwrap().to_string();

    let alice_me: Value = app
        .get_with("/api/v1/auth/me", &alice)
        .await
        .json()
        .await
        .unwrap();
    let alice_id = alice_me["id"].as_str().unwrap().to_string();

    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(b"Alice's notes on habits.".to_vec())
            .file_name("notes.txt"),
    );
    let document: Value = app
        .client
        .post(app.url("/api/v1/documents"))
        .bearer_auth(&alice)
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let document_id = document["id"].as_str().unwrap().to_string();
    let conversation: Value = app
        .post("/api/v1/conversations", json!({}), Some(&alice))
        .await
        .json()
        .await
        .unwrap();
    let conversation_id = conversation["id"].as_str().unwrap().to_string();

    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (
            Method::GET,
            format!("/api/v1/documents/{document_id}"),
            None,
        ),
        (
            Method::PATCH,
            format!("/api/v1/documents/{document_id}"),
            Some(json!({"title": "mine now"})),
        ),
        (
            Method::GET,
            format!("/api/v1/documents/{document_id}/original"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/documents/{document_id}/reingest"),
            None,
        ),
        (
            Method::DELETE,
            format!("/api/v1/documents/{document_id}"),
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/conversations/{conversation_id}/messages"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/conversations/{conversation_id}/messages"),
            Some(json!({"content": "hello", "stream": false})),
        ),
        (
            Method::GET,
            format!("/api/v1/conversations/{conversation_id}"),
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/conversations/{conversation_id}/events"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/conversations/{conversation_id}/typing"),
            Some(json!({"active": true})),
        ),
        (
            Method::POST,
            format!("/api/v1/conversations/{conversation_id}/receipts"),
            Some(json!({"seq": 1, "status": "read"})),
        ),
        (
            Method::POST,
            format!("/api/v1/conversations/{conversation_id}/handoff"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/conversations/{conversation_id}/takeover"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/conversations/{conversation_id}/handback"),
            None,
        ),
        (
            Method::DELETE,
            format!("/api/v1/api-keys/{alice_key_id}"),
            None,
        ),
        (
            Method::PATCH,
            format!("/api/v1/team/{alice_id}"),
            Some(json!({"role": "analyst"})),
        ),
        (Method::DELETE, format!("/api/v1/team/{alice_id}"), None),
    ];
    for (method, path, body) in routes {
        let response = app.call(method.clone(), &path, body, Some(&bob)).await;
        expect_error(response, 404, "not_found").await;
    }
    // Alice's key still works: nothing was changed by Bob's attempts.
    assert_eq!(
        app.get_with("/api/v1/auth/me", &alice_key).await.status(),
        200
    );

    let alice_after: Value = app
        .get_with("/api/v1/auth/me", &alice)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        alice_after["role"], "admin",
        "Alice's membership is untouched"
    );

    // Collections never show another tenant's items.
    let alice_document: Value = app
        .get_with(&format!("/api/v1/documents/{document_id}"), &alice)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        alice_document["title"], "notes.txt",
        "Alice's document is untouched"
    );
    for path in [
        "/api/v1/api-keys",
        "/api/v1/audit-log",
        "/api/v1/team",
        "/api/v1/documents",
        "/api/v1/collections",
        "/api/v1/knowledge-gaps",
        "/api/v1/inbox",
        "/api/v1/knowledge-gaps/groups",
        "/api/v1/analytics",
    ] {
        let body = app.get_with(path, &bob).await.text().await.unwrap();
        assert!(
            !body.contains(&alice_key_id)
                && !body.contains("alice")
                && !body.contains(&conversation_id),
            "{path}: {body}"
        );
    }
}

#[tokio::test]
async fn forwarded_for_is_ignored_unless_the_proxy_is_trusted() {
    /// Creates an API key with a forged `X-Forwarded-For` and returns the tenant's audit log.
    async fn audit_log_after_forwarded_request(app: &TestApp) -> String {
        let (token, _) = app.register("ana@example.com", "Ana").await;
        app.client
            .post(app.url("/api/v1/api-keys"))
            .bearer_auth(&token)
            .header("x-forwarded-for", "203.0.113.50")
            .json(&json!({"name": "k"}))
            .send()
            .await
            .unwrap();
        app.get_with("/api/v1/audit-log", &token)
            .await
            .text()
            .await
            .unwrap()
    }

    let untrusted = open_app().await;
    let log = audit_log_after_forwarded_request(&untrusted).await;
    assert!(!log.contains("203.0.113.50"), "{log}");

    let trusted = TestApp::start(Options {
        configure: Some(Box::new(|c| {
            c.signup = SignupPolicy::Open;
            c.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
        })),
        ..Options::default()
    })
    .await;
    let log = audit_log_after_forwarded_request(&trusted).await;
    assert!(log.contains("203.0.113.50"), "{log}");
}

#[tokio::test]
async fn admins_manage_roles_and_members_and_a_tenant_keeps_an_admin() {
    let app = TestApp::spawn().await;
    let (admin, _) = app.register("lead@example.com", "Lead").await;
    let invitation: Value = app
        .post(
            "/api/v1/team/invitations",
            json!({"email": "sam@example.com", "role": "analyst"}),
            Some(&admin),
        )
        .await
        .json()
        .await
        .unwrap();
    let joined: Value = app
        .post(
            "/api/v1/auth/register",
            json!({"email": "sam@example.com", "password": PASSWORD, "full_name": "Sam",
                   "invitation": invitation["token"]}),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    let sam_refresh = joined["refresh_token"].as_str().unwrap().to_string();
    let team: Value = app
        .get_with("/api/v1/team", &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(team["members"].as_array().unwrap().len(), 2, "{team}");
    let sam_id = team["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["email"] == "sam@example.com")
        .unwrap()["user_id"]
        .as_str()
        .unwrap()
        .to_string();
    let lead_id = team["members"][0]["user_id"].as_str().unwrap().to_string();

    let promoted = app
        .call(
            Method::PATCH,
            &format!("/api/v1/team/{sam_id}"),
            Some(json!({"role": "coach"})),
            Some(&admin),
        )
        .await;
    assert_eq!(promoted.status(), 200);
    assert_eq!(promoted.json::<Value>().await.unwrap()["role"], "coach");

    // The only admin cannot demote or remove themself.
    let demote = app
        .call(
            Method::PATCH,
            &format!("/api/v1/team/{lead_id}"),
            Some(json!({"role": "coach"})),
            Some(&admin),
        )
        .await;
    assert!(
        expect_error(demote, 422, "invalid_request")
            .await
            .contains("at least one admin")
    );

    let removed = app
        .call(
            Method::DELETE,
            &format!("/api/v1/team/{sam_id}"),
            None,
            Some(&admin),
        )
        .await;
    assert_eq!(removed.status(), 204);
    let dead = app
        .post(
            "/api/v1/auth/refresh",
            json!({"refresh_token": sam_refresh}),
            None,
        )
        .await;
    expect_error(dead, 401, "invalid_token").await;

    let log = app
        .get_with("/api/v1/audit-log", &admin)
        .await
        .text()
        .await
        .unwrap();
    for action in ["team.invited", "team.role_changed", "team.member_removed"] {
        assert!(log.contains(action), "{action}: {log}");
    }
}

#[tokio::test]
async fn creators_set_their_allowed_origins_and_the_owner_sees_every_tenant() {
    let app = open_app().await;
    let (owner, _) = app.register("owner@example.com", "Owner").await;
    let (creator, _) = app.register("ana@example.com", "Ana").await;

    let settings: Value = app
        .get_with("/api/v1/tenant", &creator)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(settings["coach_slug"], "ana");
    assert_eq!(settings["allowed_origins"], json!([]));

    let updated = app
        .call(
            Method::PATCH,
            "/api/v1/tenant",
            Some(json!({"name": "Ana Coaching", "allowed_origins": ["https://Ana.example.com:443/"]})),
            Some(&creator),
        )
        .await;
    assert_eq!(updated.status(), 200);
    let updated: Value = updated.json().await.unwrap();
    assert_eq!(
        updated["allowed_origins"],
        json!(["https://ana.example.com"])
    );
    assert_eq!(updated["name"], "Ana Coaching");

    let bad = app
        .call(
            Method::PATCH,
            "/api/v1/tenant",
            Some(json!({"allowed_origins": ["ana.example.com"]})),
            Some(&creator),
        )
        .await;
    assert!(
        expect_error(bad, 422, "invalid_request")
            .await
            .contains("https://www.example.com")
    );

    let tenants: Value = app
        .get_with("/api/v1/admin/tenants", &owner)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tenants["tenants"].as_array().unwrap().len(), 2, "{tenants}");
    expect_error(
        app.get_with("/api/v1/admin/tenants", &creator).await,
        403,
        "forbidden",
    )
    .await;
}

#[tokio::test]
async fn public_routes_accept_browsers_only_from_the_creators_allowed_origins() {
    use axum::routing::get;
    let ping = axum::Router::new().route(
        "/api/v1/public/coaches/{slug}/ping",
        get(|| async { "pong" }),
    );
    let app = TestApp::start(Options {
        extra_routes: Some(ping),
        configure: Some(Box::new(|c| c.signup = SignupPolicy::Open)),
        ..Options::default()
    })
    .await;
    let (creator, _) = app.register("ana@example.com", "Ana").await;
    app.call(
        Method::PATCH,
        "/api/v1/tenant",
        Some(json!({"allowed_origins": ["https://ana.example.com"]})),
        Some(&creator),
    )
    .await;
    let url = app.url("/api/v1/public/coaches/ana/ping");
    let from = |origin: Option<&str>, method: Method| {
        let mut request = app.client.request(method, &url);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };

    let server_side = from(None, Method::GET).await.unwrap();
    assert_eq!(
        server_side.status(),
        200,
        "no Origin: not a browser, no CORS"
    );

    let allowed = from(Some("https://ana.example.com"), Method::GET)
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://ana.example.com"
    );
    assert_eq!(allowed.headers()["vary"], "Origin");

    let preflight = from(Some("https://ana.example.com"), Method::OPTIONS)
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert!(
        preflight.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );

    // Refused, readably: the widget on that page can tell its creator why it stays hidden.
    let stranger = from(Some("https://evil.example.net"), Method::GET)
        .await
        .unwrap();
    assert_eq!(
        stranger.headers()["access-control-allow-origin"],
        "https://evil.example.net"
    );
    expect_error(stranger, 403, "origin_not_allowed").await;

    let same_origin = from(Some(&format!("http://{}", app.addr)), Method::GET)
        .await
        .unwrap();
    assert_eq!(
        same_origin.status(),
        200,
        "the served chat page is same-origin"
    );
}

#[tokio::test]
async fn reset_links_are_emailed_when_a_mail_server_is_configured() {
    let smtp = common::smtp::FakeSmtp::start().await;
    let smtp_url = smtp.url.clone();
    let app = TestApp::start(Options {
        configure: Some(Box::new(move |c| {
            c.signup = SignupPolicy::Open;
            c.smtp_url = Some(smtp_url);
            c.public_url = "https://coach.example.com".into();
        })),
        ..Options::default()
    })
    .await;
    app.register("ana@example.com", "Ana").await;
    let requested = app
        .post(
            "/api/v1/auth/password-reset",
            json!({"email": "Ana@example.com"}),
            None,
        )
        .await;
    assert_eq!(requested.status(), 202);
    let messages = smtp.wait_for(1).await;
    assert_eq!(messages.len(), 1, "one email");
    assert!(
        messages[0].contains("To: ana@example.com"),
        "{}",
        messages[0]
    );
    let text = common::smtp::text_of(&messages[0]);
    let link_start = text
        .find("https://coach.example.com/reset-password?token=")
        .expect("link in the email");
    let token: String = text[link_start..]
        .split("token=")
        .nth(1)
        .unwrap()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    let confirmed = app
        .post(
            "/api/v1/auth/password-reset/confirm",
            json!({"token": token, "new_password": "copper kettle hums twice"}),
            None,
        )
        .await;
    assert_eq!(confirmed.status(), 204);
    assert_eq!(
        app.login("ana@example.com", "copper kettle hums twice")
            .await
            .status(),
        200
    );

    // The page the link opens is served.
    let page = app.get("/reset-password?token=x").await;
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Choose a new password"));
}

#[tokio::test]
async fn an_invitation_mail_refused_by_the_mail_server_is_sent_again_with_the_same_link() {
    let smtp = common::smtp::FakeSmtp::refusing(1).await;
    let smtp_url = smtp.url.clone();
    let app = TestApp::start(Options {
        configure: Some(Box::new(move |c| {
            c.signup = SignupPolicy::Open;
            c.smtp_url = Some(smtp_url);
            c.public_url = "https://coach.example.com".into();
        })),
        ..Options::default()
    })
    .await;
    let (admin, _) = app.register("ana@example.com", "Ana").await;
    let invited: Value = app
        .post(
            "/api/v1/team/invitations",
            json!({"email": "ben@example.com", "role": "coach"}),
            Some(&admin),
        )
        .await
        .json()
        .await
        .unwrap();
    let link = invited["link"].as_str().expect("a link").to_string();
    // The server refused the first try; the job tries again after its backoff.
    let messages = smtp.wait_for(1).await;
    assert_eq!(messages.len(), 1, "the mail arrives after the refusal");
    assert!(
        messages[0].contains("To: ben@example.com"),
        "{}",
        messages[0]
    );
    let text = common::smtp::text_of(&messages[0]);
    assert!(
        text.contains(&link),
        "the mailed link is the one the admin was shown: {link} in {text}"
    );
    // The job held no secret: what rests in the database does not contain the token.
    let token = link.split("invitation=").nth(1).unwrap().to_string();
    let db = std::fs::read(app.config.data_dir.join("companero.db")).unwrap();
    let wal = std::fs::read(app.config.data_dir.join("companero.db-wal")).unwrap_or_default();
    for bytes in [db, wal] {
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "the invitation token is not stored"
        );
    }
}

#[tokio::test]
async fn the_instance_tells_sign_in_pages_its_policy_and_sign_out_can_end_every_session() {
    let app = TestApp::spawn().await;
    let info: Value = app.get("/api/v1/instance").await.json().await.unwrap();
    assert_eq!(
        info["needs_owner"], true,
        "a fresh server waits for its owner"
    );
    assert_eq!(info["signup"], "invite");
    let (_, laptop) = app.register("ana@example.com", "Ana").await;
    let info: Value = app.get("/api/v1/instance").await.json().await.unwrap();
    assert_eq!(info["needs_owner"], false);

    let phone: Value = app
        .login("ana@example.com", PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    let phone = phone["refresh_token"].as_str().unwrap().to_string();
    let response = app
        .post(
            "/api/v1/auth/logout",
            json!({"refresh_token": laptop, "everywhere": true}),
            None,
        )
        .await;
    assert_eq!(response.status(), 204);
    // The other device's sign-in ended too.
    let response = app
        .post(
            "/api/v1/auth/refresh",
            json!({"refresh_token": phone}),
            None,
        )
        .await;
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn the_owner_sets_the_sign_up_policy_and_suspends_resumes_and_deletes_creators() {
    let app = open_app().await;
    let (owner, _) = app.register("owner@example.com", "Olga").await;
    let (creator, refresh) = app.register("cleo@example.com", "Cleo").await;
    let tenants: Value = app
        .get_with("/api/v1/admin/tenants", &owner)
        .await
        .json()
        .await
        .unwrap();
    let cleo = tenants["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] != tenants["tenants"][0]["name"])
        .unwrap()
        .clone();
    let (id, slug) = (
        cleo["id"].as_str().unwrap().to_string(),
        cleo["coach_slug"].as_str().unwrap().to_string(),
    );
    let suspend = format!("/api/v1/admin/tenants/{id}/suspend");
    // Only the owner, and never their own tenant.
    expect_error(
        app.post(&suspend, json!({}), Some(&creator)).await,
        403,
        "forbidden",
    )
    .await;
    let me: Value = app
        .get_with("/api/v1/auth/me", &owner)
        .await
        .json()
        .await
        .unwrap();
    let own = format!(
        "/api/v1/admin/tenants/{}/suspend",
        me["tenant"]["id"].as_str().unwrap()
    );
    expect_error(
        app.post(&own, json!({}), Some(&owner)).await,
        409,
        "conflict",
    )
    .await;

    assert_eq!(
        app.post(&suspend, json!({}), Some(&owner)).await.status(),
        204
    );
    expect_error(
        app.login("cleo@example.com", PASSWORD).await,
        403,
        "tenant_suspended",
    )
    .await;
    // Access she already had ends at once too.
    expect_error(
        app.get_with("/api/v1/auth/me", &creator).await,
        403,
        "tenant_suspended",
    )
    .await;
    expect_error(
        app.post(
            "/api/v1/auth/refresh",
            json!({"refresh_token": refresh}),
            None,
        )
        .await,
        401,
        "invalid_token",
    )
    .await;
    assert_eq!(app.get(&format!("/c/{slug}")).await.status(), 404);
    let visitors = format!("/api/v1/public/coaches/{slug}/visitors");
    expect_error(app.post(&visitors, json!({}), None).await, 404, "not_found").await;
    let listed: Value = app
        .get_with("/api/v1/admin/tenants", &owner)
        .await
        .json()
        .await
        .unwrap();
    assert!(listed.to_string().contains("suspended_at\":\"20"));

    let resume = format!("/api/v1/admin/tenants/{id}/resume");
    assert_eq!(
        app.post(&resume, json!({}), Some(&owner)).await.status(),
        204
    );
    assert_eq!(app.login("cleo@example.com", PASSWORD).await.status(), 200);
    assert_eq!(app.get(&format!("/c/{slug}")).await.status(), 200);

    // The sign-up policy changes without a restart.
    let closed = app
        .call(
            Method::PATCH,
            "/api/v1/admin/instance",
            Some(json!({"signup": "closed"})),
            Some(&owner),
        )
        .await;
    assert_eq!(closed.status(), 200);
    let info: Value = app.get("/api/v1/instance").await.json().await.unwrap();
    assert_eq!(info["signup"], "closed");
    let refused = app
        .post(
            "/api/v1/auth/register",
            json!({"email": "new@example.com", "password": PASSWORD, "full_name": "New"}),
            None,
        )
        .await;
    expect_error(refused, 403, "signup_closed").await;

    let response = app
        .call(
            Method::DELETE,
            &format!("/api/v1/admin/tenants/{id}"),
            None,
            Some(&owner),
        )
        .await;
    assert_eq!(response.status(), 204);
    expect_error(
        app.login("cleo@example.com", PASSWORD).await,
        401,
        "invalid_credentials",
    )
    .await;
    let listed: Value = app
        .get_with("/api/v1/admin/tenants", &owner)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["tenants"].as_array().unwrap().len(), 1);
}
