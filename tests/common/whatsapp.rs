//! A stand-in for the WhatsApp Cloud API (Graph API) that speaks its wire format:
//! `GET /{version}/{phone_number_id}` and `POST /{version}/{phone_number_id}/messages` with a
//! bearer token, answering a `wamid` or `{error: {code, message}}`; and helpers that post
//! signed webhook events (messages, status callbacks) to our server, as Meta does.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use serde_json::{Value, json};

pub const PHONE_NUMBER_ID: &str = "106540352242922";
pub const ACCESS_TOKEN: &str = "EAAGstandinwhatsapptokenforteststoo-9f3a";
pub const APP_SECRET: &str = "app-secret-of-the-stand-in-app";

#[derive(Default)]
struct World {
    sent: Vec<Value>,
    refusals: VecDeque<(u16, Value)>,
    next: u64,
}

#[derive(Clone)]
pub struct GraphStandIn {
    pub url: String,
    world: Arc<Mutex<World>>,
}

impl GraphStandIn {
    pub async fn start() -> GraphStandIn {
        let world = Arc::new(Mutex::new(World::default()));
        let stand_in = GraphStandIn {
            url: String::new(),
            world,
        };
        let app = axum::Router::new()
            .route("/{version}/{phone}", get(number))
            .route("/{version}/{phone}/messages", post(message))
            .with_state(stand_in.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        GraphStandIn { url, ..stand_in }
    }

    pub fn refuse_next_send(&self, status: u16, error: Value) {
        self.world
            .lock()
            .unwrap()
            .refusals
            .push_back((status, error));
    }

    /// Messages the stand-in accepted for `to`, as their request bodies.
    pub fn sent_to(&self, to: &str) -> Vec<Value> {
        self.world
            .lock()
            .unwrap()
            .sent
            .iter()
            .filter(|m| m["to"] == to)
            .cloned()
            .collect()
    }

    pub async fn wait_for(&self, to: &str, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let sent = self.sent_to(to);
            if sent.len() >= count {
                return sent;
            }
            assert!(Instant::now() < deadline, "{to} got {sent:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn authorised(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {ACCESS_TOKEN}"))
}

fn invalid_token() -> (StatusCode, Json<Value>) {
    (
        StatusCode::UNAUTHORIZED,
        Json(
            json!({"error": {"message": "Invalid OAuth access token - Cannot parse access token",
            "type": "OAuthException", "code": 190, "fbtrace_id": "A1"}}),
        ),
    )
}

async fn number(
    Path((_version, phone)): Path<(String, String)>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    if !authorised(&headers) || phone != PHONE_NUMBER_ID {
        return invalid_token();
    }
    (
        StatusCode::OK,
        Json(json!({"display_phone_number": "+34 600 000 111", "id": PHONE_NUMBER_ID})),
    )
}

async fn message(
    State(stand_in): State<GraphStandIn>,
    Path((_version, phone)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if !authorised(&headers) || phone != PHONE_NUMBER_ID {
        return invalid_token();
    }
    let mut world = stand_in.world.lock().unwrap();
    if let Some((status, error)) = world.refusals.pop_front() {
        return (
            StatusCode::from_u16(status).unwrap(),
            Json(json!({ "error": error })),
        );
    }
    world.next += 1;
    let wamid = format!("wamid.HBgLstandin{}", world.next);
    let mut sent = body.clone();
    sent["wamid"] = json!(wamid);
    world.sent.push(sent);
    (
        StatusCode::OK,
        Json(json!({"messaging_product": "whatsapp",
            "contacts": [{"input": body["to"], "wa_id": body["to"]}],
            "messages": [{"id": wamid}]})),
    )
}

/// `sha256=<hex HMAC-SHA256 of body with secret>`, as Meta signs webhook calls.
pub fn signature(secret: &str, body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// A webhook call's body carrying `values` (each a `changes[].value`), one entry each.
pub fn event(values: Vec<Value>) -> Value {
    let entries: Vec<Value> = values
        .into_iter()
        .map(|value| {
            let mut value = value;
            value["messaging_product"] = json!("whatsapp");
            value["metadata"] =
                json!({"display_phone_number": "34600000111", "phone_number_id": PHONE_NUMBER_ID});
            json!({"id": "WABA_ID", "changes": [{"field": "messages", "value": value}]})
        })
        .collect();
    json!({"object": "whatsapp_business_account", "entry": entries})
}

/// A person's text message as a `value`.
pub fn text(wamid: &str, from: &str, body: &str) -> Value {
    json!({"contacts": [{"profile": {"name": "Ana"}, "wa_id": from}],
        "messages": [{"from": from, "id": wamid, "timestamp": "1700000000", "type": "text",
                      "text": {"body": body}}]})
}

/// A status callback for one of our messages as a `value`.
pub fn status(wamid: &str, to: &str, state: &str) -> Value {
    json!({"statuses": [{"id": wamid, "status": state, "timestamp": "1700000100", "recipient_id": to}]})
}
