//! Access control generated from the route table: the permission matrix of
//! docs/permissions.md (every role against every route), the cross-tenant sweep (every route
//! with another tenant's ids), routed ⇄ documented in OpenAPI, and access that ends when it
//! should (demotion, removal, keys, open sockets).

mod common;

use std::collections::{BTreeSet, HashMap};

use common::live::LiveClient;
use common::{Options, PASSWORD, TestApp, expect_error};
use companero::auth::accounts::SignupPolicy;
use reqwest::Method;
use serde_json::{Value, json};

const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];
const CALLERS: [&str; 6] = ["anonymous", "visitor", "analyst", "coach", "admin", "owner"];
const NO_SUCH_ID: &str = "00000000-0000-4000-8000-000000000000";

async fn start() -> TestApp {
    TestApp::start(Options {
        configure: Some(Box::new(|c| {
            c.signup = SignupPolicy::Open;
            c.rate_limits.auth_per_ip = 100_000;
            c.rate_limits.per_visitor = 100_000;
            c.rate_limits.public_per_tenant = 100_000;
        })),
        ..Options::default()
    })
    .await
}

async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> reqwest::Response {
    let mut request = app.client.request(method.clone(), app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    } else if method != Method::GET && method != Method::DELETE {
        request = request.json(&json!({}));
    }
    request.send().await.unwrap()
}

/// `call`, expecting success; its JSON body.
async fn call_json(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> Value {
    json_of(call(app, method, path, body, token).await).await
}

async fn json_of(response: reqwest::Response) -> Value {
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "{status}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// A tenant with a member of every role and an end user, plus what they own.
struct Tenant {
    tokens: HashMap<&'static str, String>,
    coach_user_id: String,
    slug: String,
}

async fn register(app: &TestApp, email: &str, invitation: Option<&str>) -> String {
    let mut body = json!({"email": email, "password": PASSWORD, "full_name": email.split('@').next().unwrap(),
                          "setup_token": common::SETUP_TOKEN});
    if let Some(invitation) = invitation {
        body["invitation"] = json!(invitation);
    }
    let session = call_json(app, Method::POST, "/api/v1/auth/register", Some(body), None).await;
    session["access_token"].as_str().unwrap().to_string()
}

async fn invite(app: &TestApp, admin: &str, email: &str, role: &str) -> String {
    let invitation = call_json(
        app,
        Method::POST,
        "/api/v1/team/invitations",
        Some(json!({"email": email, "role": role})),
        Some(admin),
    )
    .await;
    register(app, email, invitation["token"].as_str()).await
}

async fn tenant(app: &TestApp, name: &str) -> Tenant {
    let owner = register(app, &format!("{name}@example.com"), None).await;
    let mut tokens = HashMap::new();
    for role in ["admin", "coach", "analyst"] {
        let token = invite(app, &owner, &format!("{name}-{role}@example.com"), role).await;
        tokens.insert(role, token);
    }
    let me = call_json(app, Method::GET, "/api/v1/auth/me", None, Some(&owner)).await;
    let slug = me["tenant"]["coach_slug"].as_str().unwrap().to_string();
    let visitor = call_json(
        app,
        Method::POST,
        &format!("/api/v1/public/coaches/{slug}/visitors"),
        None,
        None,
    )
    .await;
    tokens.insert("visitor", visitor["token"].as_str().unwrap().to_string());
    tokens.insert("owner", owner);
    let coach_me = call_json(
        app,
        Method::GET,
        "/api/v1/auth/me",
        None,
        Some(&tokens["coach"]),
    )
    .await;
    Tenant {
        tokens,
        coach_user_id: coach_me["id"].as_str().unwrap().to_string(),
        slug,
    }
}

/// Every (method, path) the router serves: the route table's paths, each probed with every
/// method (405 means not routed).
async fn routed(app: &TestApp, token: &str) -> BTreeSet<(String, String)> {
    let mut routed = BTreeSet::new();
    for path in companero::http::route_table().paths() {
        let concrete = fill(path, &HashMap::new());
        for method in METHODS {
            let status = call(app, method.clone(), &concrete, None, Some(token))
                .await
                .status();
            if status != 405 {
                routed.insert((method.to_string(), path.to_string()));
            }
        }
    }
    routed
}

/// Replaces `{param}` with the value for it, or ids nobody has.
fn fill(path: &str, values: &HashMap<&str, String>) -> String {
    let mut out = String::new();
    for segment in path.split('/').skip(1) {
        out.push('/');
        match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(param) => out.push_str(values.get(param).map_or(NO_SUCH_ID, String::as_str)),
            None => out.push_str(segment),
        }
    }
    out
}

/// docs/permissions.md: (method, path) → allowed per caller.
fn documented_permissions() -> HashMap<(String, String), Vec<bool>> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/permissions.md"))
        .unwrap();
    let mut table = HashMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| method"))
    {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(cells.len(), 2 + CALLERS.len(), "{line}");
        let allowed = cells[2..].iter().map(|c| *c == "✓").collect();
        table.insert((cells[0].to_string(), cells[1].to_string()), allowed);
    }
    table
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_against_every_route_matches_the_permission_matrix() {
    let app = start().await;
    let a = tenant(&app, "ana").await;
    let table = documented_permissions();
    let routed = routed(&app, &a.tokens["owner"]).await;
    let documented: BTreeSet<_> = table.keys().cloned().collect();
    assert_eq!(
        routed.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "routes without a row in docs/permissions.md"
    );
    assert_eq!(
        documented.difference(&routed).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "rows in docs/permissions.md for routes that do not exist"
    );
    let mut wrong = Vec::new();
    for ((method, path), allowed) in &table {
        let values = HashMap::from([
            ("slug", "no-such-coach".to_string()),
            ("name", "no-such-model".to_string()),
        ]);
        let concrete = fill(path, &values);
        for (caller, allowed) in CALLERS.iter().zip(allowed) {
            let token = a.tokens.get(caller).map(String::as_str);
            let method: Method = method.parse().unwrap();
            // Bodies that parse, so that what answers is the permission check.
            let body = match path.as_str() {
                "/api/v1/conversations/{id}/typing" => Some(json!({"active": true})),
                "/api/v1/conversations/{id}/receipts" => Some(json!({"seq": 1, "status": "read"})),
                "/api/v1/goals/{id}/check-ins" => Some(json!({"value": 1})),
                "/api/v1/public/me/consent" => Some(json!({"consent": true})),
                "/api/v1/public/me/enrollments" => Some(json!({"program_id": "none"})),
                "/api/v1/public/me/push" if method == Method::PUT => Some(json!({
                    "endpoint": "https://push.example/x", "keys": {"p256dh": "x", "auth": "y"}
                })),
                "/api/v1/conversations/{id}/messages" if method == Method::POST => {
                    Some(json!({"content": "hello", "stream": false}))
                }
                _ => None,
            };
            let status = call(&app, method.clone(), &concrete, body, token)
                .await
                .status()
                .as_u16();
            let passed = status != 401 && status != 403;
            if passed != *allowed {
                wrong.push(format!("{method} {path} as {caller}: {status}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "answers that differ from docs/permissions.md:\n{}",
        wrong.join("\n")
    );
}

/// Routes the sweep does not call with another tenant's ids, and why.
const SWEEP_EXEMPT: &[(&str, &str)] = &[
    (
        "/api/v1/public/coaches/{slug}",
        "public by design: any coach is reachable by its slug",
    ),
    (
        "/api/v1/public/coaches/{slug}/visitors",
        "public by design: any coach is reachable by its slug",
    ),
    ("/c/{slug}", "public by design: the coach's chat page"),
    (
        "/c/{slug}/manifest.webmanifest",
        "public by design: the chat page's app manifest",
    ),
    (
        "/c/{slug}/icon.svg",
        "public by design: the chat page's app icon",
    ),
    (
        "/api/v1/live",
        "a WebSocket: the test below opens another tenant's conversation over it",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_tenant_sweep_generated_from_the_router() {
    let app = start().await;
    let a = tenant(&app, "ana").await;
    let b = tenant(&app, "bea").await;
    let owner = &a.tokens["owner"];
    // What tenant A owns, by the path parameter that names it.
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(b"Ana's secret notes on habits.".to_vec())
            .file_name("ana-notes.txt"),
    );
    let document = json_of(
        app.client
            .post(app.url("/api/v1/documents"))
            .bearer_auth(owner)
            .multipart(form)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let document_id = document["id"].as_str().unwrap().to_string();
    let conversation = call_json(
        &app,
        Method::POST,
        "/api/v1/conversations",
        None,
        Some(&a.tokens["visitor"]),
    )
    .await;
    let conversation_id = conversation["id"].as_str().unwrap().to_string();
    let key = call_json(
        &app,
        Method::POST,
        "/api/v1/api-keys",
        Some(json!({"name": "ana key"})),
        Some(owner),
    )
    .await;
    let key_id = key["id"].as_str().unwrap().to_string();
    let invitation = call_json(
        &app,
        Method::POST,
        "/api/v1/team/invitations",
        Some(json!({"email": "pending@example.com", "role": "coach"})),
        Some(owner),
    )
    .await;
    let invitation_id = invitation["id"].as_str().unwrap().to_string();
    let me = call_json(&app, Method::GET, "/api/v1/auth/me", None, Some(owner)).await;
    let tenant_id = me["tenant"]["id"].as_str().unwrap().to_string();
    // Coaching: a test clock, a test end user with a goal, a published program they are
    // enrolled in, a nudge rule.
    let clock = call_json(
        &app,
        Method::POST,
        "/api/v1/test-clocks",
        Some(json!({"now": "2026-03-02T08:00:00Z"})),
        Some(owner),
    )
    .await;
    let clock_id = clock["id"].as_str().unwrap().to_string();
    let end_user = call_json(&app, Method::POST, "/api/v1/end-users",
        Some(json!({"name": "Zoe Ana-client", "time_zone": "Europe/Madrid", "test_clock_id": clock_id, "consent": true})),
        Some(owner)).await;
    let end_user_id = end_user["id"].as_str().unwrap().to_string();
    // Data protection: an export of the end user and one of the whole tenant.
    let export = call_json(
        &app,
        Method::POST,
        &format!("/api/v1/end-users/{end_user_id}/export"),
        None,
        Some(owner),
    )
    .await;
    let export_id = export["id"].as_str().unwrap().to_string();
    let tenant_export = call_json(
        &app,
        Method::POST,
        "/api/v1/tenant/export",
        None,
        Some(owner),
    )
    .await;
    let tenant_export_id = tenant_export["id"].as_str().unwrap().to_string();
    let goal = call_json(&app, Method::POST, &format!("/api/v1/end-users/{end_user_id}/goals"),
        Some(json!({"title": "Ana-goal walking", "metric": "steps", "target": 8000, "direction": "increase"})),
        Some(owner)).await;
    let goal_id = goal["id"].as_str().unwrap().to_string();
    let program_body = json!({"name": "Ana-program", "steps": [
        {"key": "hello", "day": 0, "at": "09:00", "kind": "message", "text": "Welcome"}]});
    let program = call_json(
        &app,
        Method::POST,
        "/api/v1/programs",
        Some(program_body.clone()),
        Some(owner),
    )
    .await;
    let program_id = program["id"].as_str().unwrap().to_string();
    call_json(
        &app,
        Method::POST,
        &format!("/api/v1/programs/{program_id}/publish"),
        None,
        Some(owner),
    )
    .await;
    let enrollment = call_json(
        &app,
        Method::POST,
        &format!("/api/v1/programs/{program_id}/enrollments"),
        Some(json!({"end_user_id": end_user_id})),
        Some(owner),
    )
    .await;
    let enrollment_id = enrollment["id"].as_str().unwrap().to_string();
    let rule_body = json!({"name": "Ana-rule", "trigger": {"type": "inactivity", "days": 3},
        "instruction": "Ask how it is going"});
    let rule = call_json(
        &app,
        Method::POST,
        "/api/v1/nudge-rules",
        Some(rule_body.clone()),
        Some(owner),
    )
    .await;
    let rule_id = rule["id"].as_str().unwrap().to_string();
    let markers = [
        document_id.clone(),
        conversation_id.clone(),
        key_id.clone(),
        invitation_id.clone(),
        a.coach_user_id.clone(),
        "ana-notes".to_string(),
        "pending@example.com".to_string(),
        "ana-coach@example.com".to_string(),
        end_user_id.clone(),
        goal_id.clone(),
        program_id.clone(),
        rule_id.clone(),
        clock_id.clone(),
        "Zoe Ana-client".to_string(),
        "Ana-program".to_string(),
    ];

    let bob = &b.tokens["admin"];
    let mut checked = 0;
    for (method, path) in routed(&app, bob).await {
        if SWEEP_EXEMPT.iter().any(|(p, _)| *p == path) {
            continue;
        }
        let id = if path.starts_with("/api/v1/documents/") {
            &document_id
        } else if path.starts_with("/api/v1/conversations/") {
            &conversation_id
        } else if path.starts_with("/api/v1/api-keys/") {
            &key_id
        } else if path.starts_with("/api/v1/team/invitations/") {
            &invitation_id
        } else if path.starts_with("/api/v1/team/") {
            &a.coach_user_id
        } else if path.starts_with("/api/v1/end-users/") {
            &end_user_id
        } else if path.starts_with("/api/v1/goals/") {
            &goal_id
        } else if path.starts_with("/api/v1/programs/") {
            &program_id
        } else if path.starts_with("/api/v1/enrollments/") {
            &enrollment_id
        } else if path.starts_with("/api/v1/nudge-rules/") {
            &rule_id
        } else if path.starts_with("/api/v1/test-clocks/") {
            &clock_id
        } else if path.starts_with("/api/v1/tenant/export/") {
            &tenant_export_id
        } else {
            &tenant_id
        };
        let values = HashMap::from([
            ("id", id.clone()),
            ("user_id", id.clone()),
            ("export_id", export_id.clone()),
            ("token", id.clone()),
            ("tenant_id", tenant_id.clone()),
            ("name", "all-minilm-l6-v2".to_string()),
        ]);
        for param in path.split('/').filter_map(|s| s.strip_prefix('{')) {
            let param = param.trim_end_matches('}');
            assert!(
                values.contains_key(param),
                "{path}: a new path parameter; teach the sweep what it names"
            );
        }
        // Bodies that would change something if the scope were missing.
        let body = match (method.as_str(), path.as_str()) {
            ("PATCH", "/api/v1/documents/{id}") => json!({"title": "mine now"}),
            ("POST", "/api/v1/conversations/{id}/messages") => {
                json!({"content": "hello", "stream": false})
            }
            ("POST", "/api/v1/conversations/{id}/typing") => json!({"active": true}),
            ("POST", "/api/v1/conversations/{id}/receipts") => json!({"seq": 1, "status": "read"}),
            ("PATCH", "/api/v1/team/{user_id}") => json!({"role": "admin"}),
            ("PATCH", "/api/v1/admin/tenants/{id}") => json!({"storage_quota_mb": 1}),
            ("POST", "/api/v1/knowledge-gaps/resolve") => {
                json!({"gap_ids": [conversation_id], "document_id": document_id})
            }
            ("POST", "/api/v1/search") => json!({"query": "habits"}),
            ("PATCH", "/api/v1/end-users/{id}") => json!({"name": "mine now"}),
            ("POST", "/api/v1/end-users/{id}/goals") => {
                json!({"title": "t", "metric": "m", "target": 1, "direction": "increase"})
            }
            ("POST", "/api/v1/goals/{id}/check-ins") => json!({"value": 1}),
            ("PUT", "/api/v1/programs/{id}") => program_body.clone(),
            ("POST", "/api/v1/programs/{id}/enrollments") => json!({"end_user_id": end_user_id}),
            ("PATCH", "/api/v1/enrollments/{id}") => json!({"status": "unenrolled"}),
            ("PUT", "/api/v1/nudge-rules/{id}") => rule_body.clone(),
            ("POST", "/api/v1/test-clocks/{id}/advance") => json!({"to": "2030-01-01T00:00:00Z"}),
            _ => json!({}),
        };
        let concrete = fill(&path, &values);
        let method: Method = method.parse().unwrap();
        let response = call(&app, method.clone(), &concrete, Some(body), Some(bob)).await;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert!(
            status < 500 || path == "/readyz",
            "{method} {path}: {status} {text}"
        );
        if path.contains('{') {
            assert!(
                status == 404 || status == 403,
                "{method} {path} with tenant A's id: {status} {text}"
            );
        }
        for marker in &markers {
            assert!(
                !text.contains(marker.as_str()),
                "{method} {path} leaked {marker}: {text}"
            );
        }
        checked += 1;
    }
    assert!(checked > 40, "the sweep called {checked} routes");

    // Over the live socket too: B's staff cannot open A's conversation.
    let (mut live, _) = LiveClient::connect(&app, bob).await;
    live.send(json!({"type": "open", "conversation_id": conversation_id}))
        .await;
    let refused = live.next_of("error").await;
    assert_eq!(refused["code"], "not_found", "{refused}");

    // Nothing of A's changed.
    let document = call_json(
        &app,
        Method::GET,
        &format!("/api/v1/documents/{document_id}"),
        None,
        Some(owner),
    )
    .await;
    assert_eq!(document["title"], "ana-notes.txt");
    assert_eq!(
        call(
            &app,
            Method::GET,
            "/api/v1/auth/me",
            None,
            Some(key["key"].as_str().unwrap())
        )
        .await
        .status(),
        200
    );
    let profile = call_json(
        &app,
        Method::GET,
        &format!("/api/v1/end-users/{end_user_id}"),
        None,
        Some(owner),
    )
    .await;
    assert_eq!(profile["name"], "Zoe Ana-client");
    assert_eq!(profile["enrollments"][0]["status"], "active");
    assert_eq!(
        profile["goals"][0]["check_ins"].as_array().unwrap().len(),
        0
    );
    let clock = call_json(
        &app,
        Method::GET,
        &format!("/api/v1/test-clocks/{clock_id}"),
        None,
        Some(owner),
    )
    .await;
    assert_eq!(clock["now"], "2026-03-02T08:00:00Z");
    let team = call_json(&app, Method::GET, "/api/v1/team", None, Some(owner)).await;
    assert!(
        team.to_string().contains("pending@example.com"),
        "the invitation is still there"
    );
    let coach = team["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user_id"] == a.coach_user_id.as_str())
        .unwrap();
    assert_eq!(coach["role"], "coach");
    assert!(b.slug != a.slug);
}

#[tokio::test]
async fn every_routed_operation_is_documented_in_openapi() {
    let app = start().await;
    let owner = register(&app, "ana@example.com", None).await;
    let doc = json_of(app.get("/api/openapi.json").await).await;
    // The document itself, its page, an HTML page and its web app manifest.
    let exempt = [
        "/api/openapi.json",
        "/docs",
        "/c/{slug}",
        "/c/{slug}/manifest.webmanifest",
        "/c/{slug}/icon.svg",
    ];
    let mut missing = Vec::new();
    for (method, path) in routed(&app, &owner).await {
        if exempt.contains(&path.as_str()) {
            continue;
        }
        if doc["paths"][&path][method.to_lowercase()].is_null() {
            missing.push(format!("{method} {path}"));
        }
    }
    assert!(missing.is_empty(), "routed but not in OpenAPI: {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_ends_with_demotion_removal_and_suspension_even_on_open_sockets() {
    let app = start().await;
    let a = tenant(&app, "ana").await;
    let owner = &a.tokens["owner"];
    let admin = a.tokens["admin"].clone();
    let admin_id = call_json(&app, Method::GET, "/api/v1/auth/me", None, Some(&admin)).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The admin makes a key, then is demoted: their own token cannot promote them back, and the
    // key they made acts as a coach at most.
    let key = call_json(
        &app,
        Method::POST,
        "/api/v1/api-keys",
        Some(json!({"name": "sync", "role": "admin"})),
        Some(&admin),
    )
    .await;
    let key = key["key"].as_str().unwrap().to_string();
    let demoted = call(
        &app,
        Method::PATCH,
        &format!("/api/v1/team/{admin_id}"),
        Some(json!({"role": "coach"})),
        Some(owner),
    )
    .await;
    assert_eq!(demoted.status(), 200);
    let promote = call(
        &app,
        Method::PATCH,
        &format!("/api/v1/team/{admin_id}"),
        Some(json!({"role": "admin"})),
        Some(&admin),
    )
    .await;
    expect_error(promote, 403, "forbidden").await;
    let by_key = call(&app, Method::GET, "/api/v1/api-keys", None, Some(&key)).await;
    expect_error(by_key, 403, "forbidden").await;
    assert_eq!(
        call(&app, Method::GET, "/api/v1/documents", None, Some(&key))
            .await
            .status(),
        200
    );

    // A coach with an open socket is removed: the socket closes with 4401.
    let coach = a.tokens["coach"].clone();
    let (mut live, _) = LiveClient::connect(&app, &coach).await;
    let removed = call(
        &app,
        Method::DELETE,
        &format!("/api/v1/team/{}", a.coach_user_id),
        None,
        Some(owner),
    )
    .await;
    assert_eq!(removed.status(), 204);
    let (_, close) = live.until_closed().await;
    assert_eq!(u16::from(close.expect("a close frame").code), 4401);
    expect_error(
        call(&app, Method::GET, "/api/v1/auth/me", None, Some(&coach)).await,
        401,
        "unauthorized",
    )
    .await;

    // The demoted member is removed too: their key dies with their membership.
    assert_eq!(
        call(
            &app,
            Method::DELETE,
            &format!("/api/v1/team/{admin_id}"),
            None,
            Some(owner)
        )
        .await
        .status(),
        204
    );
    expect_error(
        call(&app, Method::GET, "/api/v1/documents", None, Some(&key)).await,
        401,
        "unauthorized",
    )
    .await;
    let log = call_json(
        &app,
        Method::GET,
        "/api/v1/audit-log?action=team.member_removed",
        None,
        Some(owner),
    )
    .await;
    assert!(log.to_string().contains("api_keys_revoked"), "{log}");

    // Another creator is suspended: an end user's open socket closes with 4403, and the
    // creator's own token answers tenant_suspended.
    let b = tenant(&app, "bea").await;
    let (mut visitor, _) = LiveClient::connect(&app, &b.tokens["visitor"]).await;
    let bea = call_json(
        &app,
        Method::GET,
        "/api/v1/auth/me",
        None,
        Some(&b.tokens["owner"]),
    )
    .await;
    let suspend = format!(
        "/api/v1/admin/tenants/{}/suspend",
        bea["tenant"]["id"].as_str().unwrap()
    );
    assert_eq!(
        call(&app, Method::POST, &suspend, None, Some(owner))
            .await
            .status(),
        204
    );
    let (_, close) = visitor.until_closed().await;
    let close = close.expect("a close frame");
    assert_eq!(u16::from(close.code), 4403);
    assert_eq!(close.reason.as_str(), "tenant_suspended");
    expect_error(
        call(
            &app,
            Method::GET,
            "/api/v1/coach",
            None,
            Some(&b.tokens["admin"]),
        )
        .await,
        403,
        "tenant_suspended",
    )
    .await;

    // Signing out everywhere ends access tokens already issued.
    let session = json_of(
        app.client
            .post(app.url("/api/v1/auth/login"))
            .json(&json!({"email": "ana-analyst@example.com", "password": PASSWORD}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let access = session["access_token"].as_str().unwrap();
    assert_eq!(
        call(&app, Method::GET, "/api/v1/auth/me", None, Some(access))
            .await
            .status(),
        200
    );
    let out = call(
        &app,
        Method::POST,
        "/api/v1/auth/logout",
        Some(json!({"refresh_token": session["refresh_token"], "everywhere": true})),
        None,
    )
    .await;
    assert_eq!(out.status(), 204);
    expect_error(
        call(&app, Method::GET, "/api/v1/auth/me", None, Some(access)).await,
        401,
        "unauthorized",
    )
    .await;
    expect_error(
        call(
            &app,
            Method::GET,
            "/api/v1/auth/me",
            None,
            Some(&a.tokens["analyst"]),
        )
        .await,
        401,
        "unauthorized",
    )
    .await;
}

#[tokio::test]
async fn end_users_never_use_up_the_teams_budget() {
    let app = TestApp::start(Options {
        configure: Some(Box::new(|c| {
            c.rate_limits.public_per_tenant = 40;
        })),
        ..Options::default()
    })
    .await;
    let owner = register(&app, "ana@example.com", None).await;
    let me = call_json(&app, Method::GET, "/api/v1/auth/me", None, Some(&owner)).await;
    let slug = me["tenant"]["coach_slug"].as_str().unwrap().to_string();
    // Thirty new end users from one address (a school, an office) are all welcome.
    let mut visitors = Vec::new();
    for _ in 0..30 {
        let visitor = call_json(
            &app,
            Method::POST,
            &format!("/api/v1/public/coaches/{slug}/visitors"),
            None,
            None,
        )
        .await;
        visitors.push(visitor["token"].as_str().unwrap().to_string());
    }
    // They spend the tenant's public budget...
    let mut refused = false;
    for token in visitors.iter().cycle().take(30) {
        let response = call(
            &app,
            Method::POST,
            "/api/v1/conversations",
            None,
            Some(token),
        )
        .await;
        if response.status() == 429 {
            refused = true;
            break;
        }
    }
    assert!(refused, "the public budget is finite");
    // ...and the team is still served.
    for _ in 0..20 {
        assert_eq!(
            call(&app, Method::GET, "/api/v1/coach", None, Some(&owner))
                .await
                .status(),
            200
        );
    }
}

#[tokio::test]
async fn the_first_account_needs_the_set_up_token_and_mail_off_logs_no_secret() {
    let app = start().await;
    let info = json_of(app.get("/api/v1/instance").await).await;
    assert_eq!(info["needs_owner"], true);
    assert_eq!(info["email"], false);
    for token in [None, Some("setup_wrong")] {
        let mut body =
            json!({"email": "eve@example.com", "password": PASSWORD, "full_name": "Eve"});
        if let Some(token) = token {
            body["setup_token"] = json!(token);
        }
        let response = call(
            &app,
            Method::POST,
            "/api/v1/auth/register",
            Some(body),
            None,
        )
        .await;
        expect_error(response, 403, "setup_token_required").await;
    }
    let owner = register(&app, "ana@example.com", None).await;
    // Without a mail server, an admin makes a member's reset link; it works once.
    let member = invite(&app, &owner, "sam@example.com", "coach").await;
    let sam = call_json(&app, Method::GET, "/api/v1/auth/me", None, Some(&member)).await;
    let made = call_json(
        &app,
        Method::POST,
        &format!("/api/v1/team/{}/reset-link", sam["id"].as_str().unwrap()),
        None,
        Some(&owner),
    )
    .await;
    let link = made["link"].as_str().unwrap();
    let token = link.split("token=").nth(1).unwrap();
    let confirm = json!({"token": token, "new_password": "quiet river under stone"});
    assert_eq!(
        call(
            &app,
            Method::POST,
            "/api/v1/auth/password-reset/confirm",
            Some(confirm.clone()),
            None
        )
        .await
        .status(),
        204
    );
    expect_error(
        call(
            &app,
            Method::POST,
            "/api/v1/auth/password-reset/confirm",
            Some(confirm),
            None,
        )
        .await,
        401,
        "invalid_token",
    )
    .await;
    // A pending invitation can be withdrawn; its code then fails.
    let invitation = call_json(
        &app,
        Method::POST,
        "/api/v1/team/invitations",
        Some(json!({"email": "kim@example.com", "role": "analyst"})),
        Some(&owner),
    )
    .await;
    assert_eq!(invitation["emailed"], false);
    let revoke = call(
        &app,
        Method::DELETE,
        &format!(
            "/api/v1/team/invitations/{}",
            invitation["id"].as_str().unwrap()
        ),
        None,
        Some(&owner),
    )
    .await;
    assert_eq!(revoke.status(), 204);
    let late = call(&app, Method::POST, "/api/v1/auth/register",
        Some(json!({"email": "kim@example.com", "password": PASSWORD, "full_name": "Kim", "invitation": invitation["token"]})), None).await;
    expect_error(late, 401, "invalid_token").await;
}
