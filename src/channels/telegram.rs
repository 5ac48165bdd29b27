//! The Telegram Bot API: calls go to `{api_url}/bot{token}/{method}` and answer
//! `{ok, result}` or `{ok: false, error_code, description, parameters: {retry_after}}`.
//! Updates are read into [`Inbound`], whatever way they came (webhook or long polling).

use std::time::Duration;

use serde_json::{Value, json};

/// What a platform call came to, told apart by what may have happened on the other side.
#[derive(Debug, Clone)]
pub enum CallError {
    /// The platform answered and did nothing (`error_code`, its description).
    Refused {
        code: i64,
        description: String,
        retry_after: Option<u64>,
    },
    /// The request never reached the platform (no connection): nothing happened there.
    NotSent(String),
    /// The request may have reached it (a timeout, a broken connection): it may have acted.
    Unknown(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Refused {
                code, description, ..
            } => write!(f, "{description} ({code})"),
            CallError::NotSent(error) => write!(f, "could not reach the platform: {error}"),
            CallError::Unknown(error) => write!(f, "no answer from the platform: {error}"),
        }
    }
}

impl CallError {
    /// Telegram's 403 for a chat whose person blocked the bot (or deleted their account).
    pub fn is_blocked(&self) -> bool {
        matches!(self, CallError::Refused { code: 403, .. })
    }
}

/// An HTTP client error, told apart by whether the request went out. The URL (which holds the
/// bot token) is removed, so the error can be logged and stored.
pub fn transport_error(error: platform_http::Error) -> CallError {
    let sent = !error.is_connect() && !error.is_builder();
    let text = error.without_url().to_string();
    if sent {
        CallError::Unknown(text)
    } else {
        CallError::NotSent(text)
    }
}

/// The Bot API at one base URL. Cheap to clone.
#[derive(Clone)]
pub struct TelegramApi {
    http: platform_http::Client,
    base: String,
}

/// How long a long poll waits for updates at Telegram.
pub const POLL_SECONDS: u64 = 25;

impl TelegramApi {
    pub fn new(base: &str) -> TelegramApi {
        TelegramApi {
            http: platform_http::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .build()
                .expect("the HTTP client builds"),
            base: base.trim_end_matches('/').to_string(),
        }
    }

    async fn call(
        &self,
        token: &str,
        method: &str,
        body: Value,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        let response = self
            .http
            .post(format!("{}/bot{token}/{method}", self.base))
            .timeout(timeout)
            .json(&body)
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status();
        let envelope: Value = match response.json().await {
            Ok(value) => value,
            // Not Telegram's envelope (a proxy's error page): Telegram did not take it.
            Err(_) => {
                return Err(CallError::Refused {
                    code: i64::from(status.as_u16()),
                    description: format!("the Bot API answered {status}"),
                    retry_after: None,
                });
            }
        };
        if envelope["ok"].as_bool() == Some(true) {
            return Ok(envelope["result"].clone());
        }
        Err(CallError::Refused {
            code: envelope["error_code"]
                .as_i64()
                .unwrap_or(i64::from(status.as_u16())),
            description: envelope["description"]
                .as_str()
                .unwrap_or("refused")
                .to_string(),
            retry_after: envelope["parameters"]["retry_after"].as_u64(),
        })
    }

    /// The bot's @username: proves the token works.
    pub async fn get_me(&self, token: &str) -> Result<String, CallError> {
        let me = self
            .call(token, "getMe", json!({}), Duration::from_secs(20))
            .await?;
        Ok(me["username"].as_str().unwrap_or_default().to_string())
    }

    pub async fn set_webhook(&self, token: &str, url: &str, secret: &str) -> Result<(), CallError> {
        let body = json!({
            "url": url,
            "secret_token": secret,
            "allowed_updates": ["message", "callback_query", "my_chat_member"],
        });
        self.call(token, "setWebhook", body, Duration::from_secs(20))
            .await
            .map(drop)
    }

    /// Stops webhook delivery (polling needs it off; so does disconnecting).
    pub async fn delete_webhook(&self, token: &str) -> Result<(), CallError> {
        self.call(token, "deleteWebhook", json!({}), Duration::from_secs(20))
            .await
            .map(drop)
    }

    /// Updates from `offset` on, waiting up to [`POLL_SECONDS`] for one.
    pub async fn get_updates(&self, token: &str, offset: i64) -> Result<Vec<Value>, CallError> {
        let body = json!({
            "offset": offset,
            "timeout": POLL_SECONDS,
            "allowed_updates": ["message", "callback_query", "my_chat_member"],
        });
        let updates = self
            .call(
                token,
                "getUpdates",
                body,
                Duration::from_secs(POLL_SECONDS + 15),
            )
            .await?;
        Ok(updates.as_array().cloned().unwrap_or_default())
    }

    /// Sends one text (plain, no markup to escape); `buttons` become an inline keyboard, one
    /// button a row. The id Telegram gave the message.
    pub async fn send_message(
        &self,
        token: &str,
        chat_id: &str,
        text: &str,
        buttons: &[String],
    ) -> Result<String, CallError> {
        let mut body = json!({ "chat_id": chat_id, "text": text });
        if !buttons.is_empty() {
            let rows: Vec<Value> = buttons
                .iter()
                .enumerate()
                .map(
                    |(i, label)| json!([{ "text": label, "callback_data": format!("choice:{i}") }]),
                )
                .collect();
            body["reply_markup"] = json!({ "inline_keyboard": rows });
        }
        let sent = self
            .call(token, "sendMessage", body, Duration::from_secs(30))
            .await?;
        Ok(sent["message_id"]
            .as_i64()
            .map(|id| id.to_string())
            .unwrap_or_default())
    }

    /// "typing…" under the bot's name for a few seconds.
    pub async fn send_typing(&self, token: &str, chat_id: &str) -> Result<(), CallError> {
        let body = json!({ "chat_id": chat_id, "action": "typing" });
        self.call(token, "sendChatAction", body, Duration::from_secs(10))
            .await
            .map(drop)
    }

    /// Stops the spinner on a pressed inline button.
    pub async fn answer_callback(&self, token: &str, id: &str) -> Result<(), CallError> {
        let body = json!({ "callback_query_id": id });
        self.call(token, "answerCallbackQuery", body, Duration::from_secs(10))
            .await
            .map(drop)
    }
}

/// What an update asks of the coach.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// A text message in a private chat.
    Text {
        chat_id: String,
        text: String,
        first_name: String,
    },
    /// A pressed inline button under one of the coach's messages (`choice:{i}`).
    Choice {
        chat_id: String,
        callback_id: String,
        /// Which of the latest quick replies (buttons are numbered, labels can be too long
        /// for Telegram's 64-byte callback data).
        index: usize,
    },
    /// A photo, voice note, sticker...: the coach can read only text.
    Unreadable { chat_id: String },
    /// The person blocked the bot.
    Blocked { chat_id: String },
    /// Nothing for the coach (groups, edits, other bots' business).
    Ignored,
}

/// The update's id, by which it is taken in once.
pub fn update_id(update: &Value) -> Option<i64> {
    update["update_id"].as_i64()
}

/// The chat an update is about (a message, a button press, the bot blocked or unblocked).
pub fn chat_of(update: &Value) -> Option<String> {
    [
        "/message/chat/id",
        "/edited_message/chat/id",
        "/callback_query/message/chat/id",
        "/my_chat_member/chat/id",
    ]
    .iter()
    .find_map(|pointer| update.pointer(pointer))
    .map(|id| match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

pub fn read_update(update: &Value) -> Inbound {
    let chat_id = |chat: &Value| match &chat["id"] {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    };
    if let Some(message) = update.get("message") {
        let chat = &message["chat"];
        if chat["type"].as_str() != Some("private") {
            return Inbound::Ignored;
        }
        let Some(chat_id) = chat_id(chat) else {
            return Inbound::Ignored;
        };
        return match message["text"].as_str() {
            Some(text) => Inbound::Text {
                chat_id,
                text: text.to_string(),
                first_name: message["from"]["first_name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            },
            None => Inbound::Unreadable { chat_id },
        };
    }
    if let Some(query) = update.get("callback_query") {
        let message = &query["message"];
        let index = query["data"]
            .as_str()
            .and_then(|d| d.strip_prefix("choice:"))
            .and_then(|i| i.parse().ok());
        return match (chat_id(&message["chat"]), index, query["id"].as_str()) {
            (Some(chat_id), Some(index), Some(id)) => Inbound::Choice {
                chat_id,
                callback_id: id.to_string(),
                index,
            },
            _ => Inbound::Ignored,
        };
    }
    if let Some(member) = update.get("my_chat_member")
        && member["new_chat_member"]["status"].as_str() == Some("kicked")
        && let Some(chat_id) = chat_id(&member["chat"])
    {
        return Inbound::Blocked { chat_id };
    }
    Inbound::Ignored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_are_read_for_what_they_ask() {
        let text = json!({"update_id": 5, "message": {"message_id": 1, "chat": {"id": 42, "type": "private"},
            "from": {"id": 42, "first_name": "Ana"}, "text": "How long do I rest?"}});
        assert_eq!(update_id(&text), Some(5));
        assert_eq!(
            read_update(&text),
            Inbound::Text {
                chat_id: "42".into(),
                text: "How long do I rest?".into(),
                first_name: "Ana".into()
            }
        );
        let photo = json!({"update_id": 6, "message": {"chat": {"id": 42, "type": "private"}, "photo": []}});
        assert_eq!(
            read_update(&photo),
            Inbound::Unreadable {
                chat_id: "42".into()
            }
        );
        let group =
            json!({"update_id": 7, "message": {"chat": {"id": -3, "type": "group"}, "text": "hi"}});
        assert_eq!(read_update(&group), Inbound::Ignored);
        let button = json!({"update_id": 8, "callback_query": {"id": "cb1", "data": "choice:1",
            "message": {"message_id": 77, "chat": {"id": 42, "type": "private"}}}});
        assert_eq!(
            read_update(&button),
            Inbound::Choice {
                chat_id: "42".into(),
                callback_id: "cb1".into(),
                index: 1
            }
        );
        let blocked = json!({"update_id": 9, "my_chat_member": {"chat": {"id": 42, "type": "private"},
            "new_chat_member": {"status": "kicked"}}});
        assert_eq!(
            read_update(&blocked),
            Inbound::Blocked {
                chat_id: "42".into()
            }
        );
    }
}
