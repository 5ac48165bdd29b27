//! The WhatsApp Cloud API (Meta's Graph API): messages go to
//! `{api_url}/{version}/{phone_number_id}/messages` with the access token; events come to our
//! webhook signed with the app secret (`X-Hub-Signature-256`, an HMAC-SHA256 of the raw body).

use std::time::Duration;

use serde_json::{Value, json};

use super::telegram::{CallError, transport_error};

/// Interactive messages take at most three reply buttons of up to 20 characters.
const MAX_BUTTONS: usize = 3;
const MAX_BUTTON_TITLE: usize = 20;

/// The Graph API at one base URL and version. Cheap to clone.
#[derive(Clone)]
pub struct GraphApi {
    http: platform_http::Client,
    base: String,
    version: String,
}

/// An approved message template, for messages outside the 24-hour window: the message's text
/// fills its first body parameter.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema, PartialEq)]
pub struct Template {
    pub name: String,
    /// Its language code, like `en_US`.
    pub language: String,
}

impl GraphApi {
    pub fn new(base: &str, version: &str) -> GraphApi {
        GraphApi {
            http: platform_http::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .build()
                .expect("the HTTP client builds"),
            base: base.trim_end_matches('/').to_string(),
            version: version.trim_matches('/').to_string(),
        }
    }

    async fn envelope(response: platform_http::Response) -> Result<Value, CallError> {
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let error = &body["error"];
        Err(CallError::Refused {
            code: error["code"].as_i64().unwrap_or(i64::from(status.as_u16())),
            description: error["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("the Graph API answered {status}")),
            retry_after: None,
        })
    }

    /// The number's display form: proves the id and token go together.
    pub async fn phone_number(
        &self,
        phone_number_id: &str,
        token: &str,
    ) -> Result<String, CallError> {
        let response = self
            .http
            .get(format!("{}/{}/{phone_number_id}", self.base, self.version))
            .query(&[("fields", "display_phone_number")])
            .bearer_auth(token)
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .map_err(transport_error)?;
        let number = Self::envelope(response).await?;
        Ok(number["display_phone_number"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// Sends one message; its `wamid`.
    pub async fn send(
        &self,
        phone_number_id: &str,
        token: &str,
        to: &str,
        content: &Outgoing<'_>,
    ) -> Result<String, CallError> {
        let mut body =
            json!({ "messaging_product": "whatsapp", "recipient_type": "individual", "to": to });
        match content {
            Outgoing::Text(text) => {
                body["type"] = json!("text");
                body["text"] = json!({ "body": text, "preview_url": false });
            }
            Outgoing::Buttons(text, labels) => {
                let buttons: Vec<Value> = labels
                    .iter()
                    .enumerate()
                    .map(|(i, label)| json!({"type": "reply", "reply": {"id": format!("choice:{i}"), "title": label}}))
                    .collect();
                body["type"] = json!("interactive");
                body["interactive"] = json!({"type": "button", "body": {"text": text}, "action": {"buttons": buttons}});
            }
            Outgoing::Template(template, text) => {
                body["type"] = json!("template");
                body["template"] = json!({
                    "name": template.name,
                    "language": {"code": template.language},
                    "components": [{"type": "body", "parameters": [{"type": "text", "text": text}]}],
                });
            }
        }
        let response = self
            .http
            .post(format!(
                "{}/{}/{phone_number_id}/messages",
                self.base, self.version
            ))
            .bearer_auth(token)
            .timeout(Duration::from_secs(30))
            .json(&body)
            .send()
            .await
            .map_err(transport_error)?;
        let sent = Self::envelope(response).await?;
        Ok(sent["messages"][0]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }
}

/// What one message to WhatsApp is.
pub enum Outgoing<'a> {
    Text(&'a str),
    /// A question with reply buttons.
    Buttons(&'a str, &'a [String]),
    /// Outside the 24-hour window: an approved template carrying the text.
    Template(&'a Template, &'a str),
}

/// Whether quick replies fit WhatsApp's reply buttons (else they are listed in the text).
pub fn fits_buttons(labels: &[String]) -> bool {
    !labels.is_empty()
        && labels.len() <= MAX_BUTTONS
        && labels.iter().all(|l| l.chars().count() <= MAX_BUTTON_TITLE)
}

/// Rate limits: Cloud API throughput (130429) and pair rate (131056) errors, and HTTP 429.
pub fn is_rate_limit(error: &CallError) -> bool {
    matches!(
        error,
        CallError::Refused {
            code: 429 | 130429 | 131056 | 80007,
            ..
        }
    )
}

/// Whether `signature` (`sha256=<hex>`) is the HMAC-SHA256 of `body` with `app_secret`,
/// compared in constant time.
pub fn signature_matches(app_secret: &str, body: &[u8], signature: Option<&str>) -> bool {
    use hmac::{KeyInit, Mac};
    let Some(hex) = signature.and_then(|s| s.strip_prefix("sha256=")) else {
        return false;
    };
    let Some(expected) = decode_hex(hex) else {
        return false;
    };
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(app_secret.as_bytes())
        .expect("any key length works");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// One event of a webhook call.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A person's message (the raw message object; `wamid` is its id).
    Message { wamid: String, message: Value },
    /// What became of one of ours: `sent`, `delivered`, `read` or `failed`.
    Status {
        wamid: String,
        status: String,
        error: Option<String>,
    },
}

/// The messages and statuses of a (batched) webhook call:
/// `entry[].changes[].value.messages[]` and `.statuses[]`.
pub fn events(body: &Value) -> Vec<Event> {
    let mut events = Vec::new();
    let values = body["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|entry| entry["changes"].as_array().into_iter().flatten())
        .map(|change| &change["value"]);
    for value in values {
        for message in value["messages"].as_array().into_iter().flatten() {
            if let Some(wamid) = message["id"].as_str() {
                events.push(Event::Message {
                    wamid: wamid.to_string(),
                    message: message.clone(),
                });
            }
        }
        for status in value["statuses"].as_array().into_iter().flatten() {
            if let (Some(wamid), Some(state)) = (status["id"].as_str(), status["status"].as_str()) {
                let error = status["errors"][0]
                    .get("title")
                    .or_else(|| status["errors"][0].get("message"))
                    .and_then(Value::as_str)
                    .map(str::to_string);
                events.push(Event::Status {
                    wamid: wamid.to_string(),
                    status: state.to_string(),
                    error,
                });
            }
        }
    }
    events
}

/// What a person's message says: its text, a pressed reply button's index, or `None` when it
/// is not text (a photo, a voice note).
pub enum Said {
    Text(String),
    Choice(usize),
    Unreadable,
}

pub fn read_message(message: &Value) -> Said {
    match message["type"].as_str() {
        Some("text") => Said::Text(
            message["text"]["body"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ),
        Some("interactive") => {
            let reply = &message["interactive"]["button_reply"];
            match reply["id"]
                .as_str()
                .and_then(|id| id.strip_prefix("choice:"))
                .and_then(|i| i.parse().ok())
            {
                Some(index) => Said::Choice(index),
                None => Said::Text(reply["title"].as_str().unwrap_or_default().to_string()),
            }
        }
        // A template's quick-reply button.
        Some("button") => Said::Text(
            message["button"]["text"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ),
        _ => Said::Unreadable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked_over_the_raw_body() {
        use hmac::{KeyInit, Mac};
        let body = br#"{"object":"whatsapp_business_account"}"#;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"app-secret").unwrap();
        mac.update(body);
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let good = format!("sha256={hex}");
        assert!(signature_matches("app-secret", body, Some(&good)));
        assert!(!signature_matches("other-secret", body, Some(&good)));
        assert!(!signature_matches("app-secret", b"{}", Some(&good)));
        assert!(!signature_matches("app-secret", body, Some(&hex)));
        assert!(!signature_matches("app-secret", body, None));
    }

    #[test]
    fn batched_events_are_all_read() {
        let body = json!({"object": "whatsapp_business_account", "entry": [
            {"changes": [{"value": {"messages": [{"id": "wamid.1", "from": "34600", "type": "text", "text": {"body": "hi"}}]}}]},
            {"changes": [{"value": {"statuses": [{"id": "wamid.9", "status": "read"},
                {"id": "wamid.8", "status": "failed", "errors": [{"code": 131047, "title": "Re-engagement message"}]}]}}]}]});
        let events = events(&body);
        assert_eq!(events.len(), 3);
        assert!(matches!(&events[0], Event::Message { wamid, .. } if wamid == "wamid.1"));
        assert_eq!(
            events[2],
            Event::Status {
                wamid: "wamid.8".into(),
                status: "failed".into(),
                error: Some("Re-engagement message".into())
            }
        );
        assert!(fits_buttons(&["Yes".into(), "No".into()]));
        assert!(!fits_buttons(&["A very long answer to choose".into()]));
    }
}
