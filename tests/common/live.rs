//! A WebSocket client of the live chat protocol, as an app or the widget would use it.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::TestApp;

/// How long a test waits for an event it expects.
const PATIENCE: Duration = Duration::from_secs(60);

pub struct LiveClient {
    pub socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl LiveClient {
    /// Opens the socket without saying hello.
    pub async fn open(app: &TestApp, origin: Option<&str>) -> LiveClient {
        let mut request = format!("ws://{}/api/v1/live", app.addr)
            .into_client_request()
            .unwrap();
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("origin", origin.parse().unwrap());
        }
        let (socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        LiveClient { socket }
    }

    /// Connects and authenticates; returns the client and its `welcome` event.
    pub async fn connect(app: &TestApp, token: &str) -> (LiveClient, Value) {
        let mut client = LiveClient::open(app, None).await;
        client.send(json!({"type": "hello", "token": token})).await;
        let welcome = client.next().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        (client, welcome)
    }

    pub async fn send(&mut self, command: Value) {
        self.socket
            .send(Frame::Text(command.to_string().into()))
            .await
            .unwrap();
    }

    /// The next event, whatever its type.
    pub async fn next(&mut self) -> Value {
        tokio::time::timeout(PATIENCE, self.next_frame())
            .await
            .expect("an event in time")
            .expect("the connection is open")
    }

    async fn next_frame(&mut self) -> Option<Value> {
        loop {
            match self.socket.next().await? {
                Ok(Frame::Text(text)) => return Some(serde_json::from_str(&text).unwrap()),
                Ok(Frame::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// The next event of type `kind` that `matches`, skipping others.
    pub async fn next_where(&mut self, kind: &str, matches: impl Fn(&Value) -> bool) -> Value {
        loop {
            let event = self.next().await;
            if event["type"] == kind && matches(&event) {
                return event;
            }
        }
    }

    pub async fn next_of(&mut self, kind: &str) -> Value {
        self.next_where(kind, |_| true).await
    }

    /// Every event up to and including the next one of type `kind` that `matches`.
    pub async fn until(&mut self, kind: &str, matches: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut events = Vec::new();
        loop {
            let event = self.next().await;
            let found = event["type"] == kind && matches(&event);
            events.push(event);
            if found {
                return events;
            }
        }
    }

    /// Sends a ping and returns the events that arrive before its pong: a sentinel that says
    /// the server has passed on everything it queued for this connection before the ping.
    pub async fn until_pong(&mut self) -> Vec<Value> {
        self.send(json!({"type": "ping"})).await;
        let mut events = self.until("pong", |_| true).await;
        events.pop();
        events
    }

    /// Reads until the server closes the connection; its close frame (events before it are
    /// returned too).
    pub async fn until_closed(&mut self) -> (Vec<Value>, Option<CloseFrame>) {
        let mut events = Vec::new();
        let read = async {
            while let Some(frame) = self.socket.next().await {
                match frame {
                    Ok(Frame::Text(text)) => events.push(serde_json::from_str(&text).unwrap()),
                    Ok(Frame::Close(close)) => return close,
                    Ok(_) => continue,
                    Err(_) => return None,
                }
            }
            None
        };
        let close = tokio::time::timeout(PATIENCE, read)
            .await
            .expect("closed in time");
        (events, close)
    }
}

/// `seq` of every `message` event.
pub fn seqs(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| e["message"]["seq"].as_i64().unwrap())
        .collect()
}
