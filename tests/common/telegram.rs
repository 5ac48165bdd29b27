//! A stand-in for the Telegram Bot API that speaks its wire format: `POST /bot{token}/{method}`
//! answering `{ok, result}` or `{ok: false, error_code, description, parameters}`. It keeps
//! what it was sent, serves `getUpdates` long polls from updates a test pushes, and can be told
//! to refuse (429 with `retry_after`, 403 for a chat that blocked the bot) or to hold a send.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::Notify;

/// The token the stand-in accepts.
pub const TOKEN: &str = "123456789:AAStandInTokenForTestsOnly-wxyz";
pub const BOT: &str = "CoachStandInBot";

/// One call the stand-in received.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub body: Value,
    pub at: Instant,
    /// For sendMessage: whether it was delivered (not refused).
    pub delivered: bool,
}

#[derive(Default)]
struct World {
    calls: Vec<Call>,
    updates: Vec<Value>,
    /// Answers the next sendMessage calls get instead of success.
    refusals: VecDeque<Value>,
    blocked: HashSet<String>,
    /// sendMessage calls are recorded, then never answered.
    hold_sends: bool,
    next_message_id: i64,
}

#[derive(Clone)]
pub struct TelegramStandIn {
    pub url: String,
    world: Arc<Mutex<World>>,
    pushed: Arc<Notify>,
}

impl TelegramStandIn {
    pub async fn start() -> TelegramStandIn {
        let world = Arc::new(Mutex::new(World {
            next_message_id: 100,
            ..World::default()
        }));
        let pushed = Arc::new(Notify::new());
        let stand_in = TelegramStandIn {
            url: String::new(),
            world,
            pushed,
        };
        let app = axum::Router::new()
            .route("/{bot}/{method}", post(answer))
            .with_state(stand_in.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        TelegramStandIn { url, ..stand_in }
    }

    /// An update as Telegram would send it; returns it (for a webhook call).
    pub fn push(&self, update: Value) -> Value {
        self.world.lock().unwrap().updates.push(update.clone());
        self.pushed.notify_waiters();
        update
    }

    pub fn refuse_next_send(&self, answer: Value) {
        self.world.lock().unwrap().refusals.push_back(answer);
    }

    pub fn block(&self, chat_id: i64) {
        self.world
            .lock()
            .unwrap()
            .blocked
            .insert(chat_id.to_string());
    }

    pub fn hold_sends(&self) {
        self.world.lock().unwrap().hold_sends = true;
    }

    /// Later sends are answered again (a held one stays unanswered).
    pub fn release_sends(&self) {
        self.world.lock().unwrap().hold_sends = false;
    }

    /// Waits until `count` sendMessage calls arrived, delivered or not.
    pub async fn wait_for_sends(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.calls("sendMessage").len() < count {
            assert!(Instant::now() < deadline, "{:?}", self.calls("sendMessage"));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn calls(&self, method: &str) -> Vec<Call> {
        let world = self.world.lock().unwrap();
        world
            .calls
            .iter()
            .filter(|c| c.method == method)
            .cloned()
            .collect()
    }

    /// Texts sent to `chat_id`, in order.
    pub fn texts_to(&self, chat_id: i64) -> Vec<String> {
        self.calls("sendMessage")
            .iter()
            .filter(|c| c.delivered)
            .filter(|c| c.body["chat_id"].to_string().trim_matches('"') == chat_id.to_string())
            .map(|c| c.body["text"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Waits until `chat_id` was sent `count` texts (or fails after 60 s), and returns them.
    pub async fn wait_for_texts(&self, chat_id: i64, count: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let texts = self.texts_to(chat_id);
            if texts.len() >= count {
                return texts;
            }
            assert!(
                Instant::now() < deadline,
                "{chat_id} got {} of {count} texts: {texts:?}",
                texts.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn answer(
    State(stand_in): State<TelegramStandIn>,
    Path((bot, method)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> Json<Value> {
    if bot != format!("bot{TOKEN}") {
        return Json(json!({"ok": false, "error_code": 401, "description": "Unauthorized"}));
    }
    if method != "sendMessage" {
        stand_in.world.lock().unwrap().calls.push(Call {
            method: method.clone(),
            body: body.clone(),
            at: Instant::now(),
            delivered: true,
        });
    }
    match method.as_str() {
        "getMe" => Json(
            json!({"ok": true, "result": {"id": 123456789, "is_bot": true,
            "first_name": "Coach", "username": BOT}}),
        ),
        "getUpdates" => Json(json!({"ok": true, "result": stand_in.updates_from(&body).await})),
        "sendMessage" => stand_in.send(&body).await,
        _ => Json(json!({"ok": true, "result": true})),
    }
}

impl TelegramStandIn {
    /// A long poll: updates from `offset` on, waiting a little while there are none.
    async fn updates_from(&self, body: &Value) -> Vec<Value> {
        let offset = body["offset"].as_i64().unwrap_or(0);
        let pending = || {
            let world = self.world.lock().unwrap();
            world
                .updates
                .iter()
                .filter(|u| u["update_id"].as_i64().unwrap_or(0) >= offset)
                .cloned()
                .collect::<Vec<_>>()
        };
        let waiting = self.pushed.notified();
        let now = pending();
        if !now.is_empty() {
            return now;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), waiting).await;
        pending()
    }

    async fn send(&self, body: &Value) -> Json<Value> {
        let chat = body["chat_id"].to_string().trim_matches('"').to_string();
        let (hold, answer) = {
            let mut world = self.world.lock().unwrap();
            let (hold, answer) = if world.blocked.contains(&chat) {
                (
                    false,
                    json!({"ok": false, "error_code": 403,
                    "description": "Forbidden: bot was blocked by the user"}),
                )
            } else if let Some(refusal) = world.refusals.pop_front() {
                (false, refusal)
            } else {
                world.next_message_id += 1;
                (
                    world.hold_sends,
                    json!({"ok": true, "result": {"message_id": world.next_message_id,
                    "chat": {"id": chat}, "text": body["text"]}}),
                )
            };
            world.calls.push(Call {
                method: "sendMessage".into(),
                body: body.clone(),
                at: Instant::now(),
                delivered: answer["ok"] == true,
            });
            (hold, answer)
        };
        if hold {
            std::future::pending::<()>().await;
        }
        Json(answer)
    }
}

/// A private chat's text message as an update.
pub fn text_update(update_id: i64, chat_id: i64, text: &str) -> Value {
    json!({"update_id": update_id, "message": {"message_id": update_id, "date": 1_700_000_000,
        "chat": {"id": chat_id, "type": "private", "first_name": "Ana"},
        "from": {"id": chat_id, "is_bot": false, "first_name": "Ana", "language_code": "en"},
        "text": text}})
}
