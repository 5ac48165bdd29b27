//! The live chat protocol over a real WebSocket client: resuming after a dropped connection
//! without loss or duplicates, receipts, typing, presence, human handoff, rate and size limits,
//! idle connections, origins, the event-stream fallback, and a streamed answer from the real model.

mod common;

use std::time::Duration;

use common::chat::{parse_sse, start, with_models};
use common::live::{LiveClient, seqs};
use common::{Options, TestApp};
use companero::auth::accounts::SignupPolicy;
use companero::config::Config;
use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// A server without models: in the coach's hands, questions get the fallback at once (nothing
/// is in the knowledge base), which keeps these tests fast.
async fn app_with(configure: impl FnOnce(&mut Config) + 'static) -> TestApp {
    TestApp::start(Options {
        configure: Some(Box::new(move |config: &mut Config| {
            config.signup = SignupPolicy::Open;
            configure(config);
        })),
        ..Options::default()
    })
    .await
}

/// A creator (access token) and one of their end users (visitor token).
async fn creator_and_visitor(app: &TestApp) -> (String, String) {
    let staff = app.sign_up("coach@example.com").await;
    let slug = app.slug(&staff).await;
    let visitor = app.visitor(&slug).await;
    (staff, visitor)
}

async fn open(client: &mut LiveClient, conversation: Option<&str>, after_seq: i64) -> Value {
    client
        .send(json!({"type": "open", "conversation_id": conversation, "after_seq": after_seq}))
        .await;
    client.next_of("opened").await["conversation"].clone()
}

impl TestApp {
    async fn staff_says(&self, staff: &str, conversation: &str, text: &str) -> Value {
        let response = self
            .post_message(
                staff,
                conversation,
                json!({"content": text, "stream": false}),
            )
            .await;
        assert_eq!(
            response.status(),
            201,
            "a staff reply is stored, not answered"
        );
        response.json().await.unwrap()
    }

    async fn take_over(&self, staff: &str, conversation: &str) -> Value {
        let path = format!("/api/v1/conversations/{conversation}/takeover");
        self.json_ok(Method::POST, &path, staff, None).await
    }
}

#[tokio::test]
async fn a_reconnecting_client_gets_exactly_the_messages_it_missed() {
    let app = app_with(|_| {}).await;
    let (staff, visitor) = creator_and_visitor(&app).await;
    let (mut client, welcome) = LiveClient::connect(&app, &visitor).await;
    assert_eq!(welcome["role"], "visitor");
    assert_eq!(welcome["protocol"], 1);
    let conversation = open(&mut client, None, 0).await;
    let id = conversation["id"].as_str().unwrap().to_string();
    assert_eq!(conversation["mode"], "ai");

    client
        .send(
            json!({"type": "send", "conversation_id": id, "client_id": "q-1", "content": "Hello?"}),
        )
        .await;
    let ack = client.next_of("ack").await;
    assert_eq!(ack["client_id"], "q-1");
    assert_eq!(ack["seq"], 1);
    assert_eq!(ack["duplicate"], false);
    let answer = client
        .next_where("message", |e| e["message"]["role"] == "assistant")
        .await;
    assert_eq!(
        answer["message"]["seq"], 2,
        "the coach answered (its fallback)"
    );
    assert_eq!(answer["message"]["fallback"], true);

    // A person takes over; the end user sees who joined and that the mode changed.
    let taken = app.take_over(&staff, &id).await;
    assert_eq!(taken["mode"], "human");
    let joined = client
        .next_where("message", |e| e["message"]["role"] == "event")
        .await;
    assert!(
        joined["message"]["content"]
            .as_str()
            .unwrap()
            .contains("joined"),
        "{joined}"
    );
    assert_eq!(joined["message"]["seq"], 3);
    let state = client.next_of("conversation").await;
    assert_eq!(state["conversation"]["mode"], "human");

    // The connection drops; the team keeps writing.
    drop(client);
    for n in 1..=3 {
        app.staff_says(&staff, &id, &format!("Reply {n}")).await;
    }

    // Back, resuming after the last message seen: exactly the three missed ones, in order.
    let (mut client, _) = LiveClient::connect(&app, &visitor).await;
    open(&mut client, Some(&id), 3).await;
    let mut events = Vec::new();
    while seqs(&events).len() < 3 {
        events.push(client.next().await);
    }
    assert_eq!(seqs(&events), [4, 5, 6]);
    let replies: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| e["message"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(replies, ["Reply 1", "Reply 2", "Reply 3"]);
    assert!(
        events
            .iter()
            .filter(|e| e["type"] == "message")
            .all(|e| e["message"]["role"] == "staff" && e["message"]["author_name"] == "Creator")
    );
    // Live again: the next one arrives once; nothing else is replayed (the pong comes after
    // everything queued for this connection).
    app.staff_says(&staff, &id, "Reply 4").await;
    let mut later = client.until("message", |e| e["message"]["seq"] == 7).await;
    later.extend(client.until_pong().await);
    assert_eq!(seqs(&later), [7]);

    // A message resent after a drop (same client id) is stored once and not answered again.
    client
        .send(
            json!({"type": "send", "conversation_id": id, "client_id": "q-1", "content": "Hello?"}),
        )
        .await;
    let ack = client.next_of("ack").await;
    assert_eq!(ack["duplicate"], true);
    assert_eq!(ack["seq"], 1);
    assert!(seqs(&client.until_pong().await).is_empty());

    // In a person's hands the coach stays silent. The sentinel: once the coach has the
    // conversation back, its answer to a later question arrives; an answer to this one would
    // have been queued first.
    client
        .send(json!({"type": "send", "conversation_id": id, "client_id": "q-2", "content": "Thanks!"}))
        .await;
    assert_eq!(client.next_of("ack").await["seq"], 8);
    let path = format!("/api/v1/conversations/{id}/handback");
    app.json_ok(Method::POST, &path, &staff, None).await;
    client
        .send(json!({"type": "send", "conversation_id": id, "client_id": "q-3", "content": "Still there?"}))
        .await;
    let asked = client.next_of("ack").await["seq"].as_i64().unwrap();
    let after = client
        .until("message", |e| e["message"]["role"] == "assistant")
        .await;
    let history = app.history(&staff, &id).await;
    let messages = history["messages"].as_array().unwrap();
    let answers: Vec<&Value> = messages
        .iter()
        .filter(|m| m["role"] == "assistant")
        .map(|m| &m["stats"]["reply_to"])
        .collect();
    assert_eq!(
        answers,
        [&json!(1), &json!(asked)],
        "only q-1 and q-3 answered: {after:?}"
    );
    let all: Vec<i64> = messages
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(
        all,
        (1..=all.len() as i64).collect::<Vec<_>>(),
        "no gaps, no duplicates"
    );
}

#[tokio::test]
async fn receipts_typing_presence_and_handoff_reach_the_other_side() {
    let app = app_with(|_| {}).await;
    let (staff, visitor) = creator_and_visitor(&app).await;
    let (mut end_user, _) = LiveClient::connect(&app, &visitor).await;
    let presence = end_user.next_of("presence").await;
    assert_eq!(presence["staff_online"], false);
    let id = open(&mut end_user, None, 0).await["id"]
        .as_str()
        .unwrap()
        .to_string();

    let (mut team, welcome) = LiveClient::connect(&app, &staff).await;
    assert_eq!(welcome["role"], "staff");
    let presence = end_user.next_of("presence").await;
    assert_eq!(presence["staff_online"], true, "a person came online");
    open(&mut team, Some(&id), 0).await;

    // The end user asks for a person: it shows in the inbox, first.
    end_user
        .send(json!({"type": "request_human", "conversation_id": id}))
        .await;
    let note = end_user
        .next_where("message", |e| e["message"]["role"] == "event")
        .await;
    assert!(
        note["message"]["content"]
            .as_str()
            .unwrap()
            .contains("person")
    );
    let inbox = app
        .json_ok(
            Method::GET,
            "/api/v1/inbox?filter=needs_human",
            &staff,
            None,
        )
        .await;
    let waiting = &inbox["conversations"][0];
    assert_eq!(waiting["conversation"]["id"], id.as_str());
    assert_eq!(waiting["visitor_online"], true);
    assert!(waiting["conversation"]["handoff_requested_at"].is_string());

    // Typing goes to the other side only.
    end_user
        .send(json!({"type": "typing", "conversation_id": id, "active": true}))
        .await;
    let typing = team.next_of("typing").await;
    assert_eq!(typing["from"], "visitor");
    assert_eq!(typing["active"], true);

    // Take over over the socket; reply as themselves.
    team.send(json!({"type": "takeover", "conversation_id": id}))
        .await;
    let state = end_user
        .next_where("conversation", |e| e["conversation"]["mode"] == "human")
        .await;
    assert_eq!(state["conversation"]["mode"], "human");
    assert_eq!(state["conversation"]["assigned_name"], "Creator");
    assert!(state["conversation"]["handoff_requested_at"].is_null());
    team.send(json!({"type": "typing", "conversation_id": id, "active": true}))
        .await;
    let typing = end_user.next_of("typing").await;
    assert_eq!(typing["from"], "staff");
    assert_eq!(typing["name"], "Creator");
    team.send(json!({"type": "send", "conversation_id": id, "client_id": "s-1", "content": "Hi, I'm here."}))
        .await;
    let ack = team.next_of("ack").await;
    let reply = end_user
        .next_where("message", |e| e["message"]["role"] == "staff")
        .await;
    assert_eq!(reply["message"]["seq"], ack["seq"]);
    assert_eq!(reply["message"]["content"], "Hi, I'm here.");

    // Receipts: the end user has read it; the team sees so, and it is stored.
    let seq = ack["seq"].as_i64().unwrap();
    end_user
        .send(json!({"type": "receipt", "conversation_id": id, "seq": seq, "status": "read"}))
        .await;
    let receipt = team.next_of("receipt").await;
    assert_eq!(receipt["by"], "visitor");
    assert_eq!(receipt["status"], "read");
    assert_eq!(receipt["seq"], seq);
    let stored = app
        .json_ok(
            Method::GET,
            &format!("/api/v1/conversations/{id}"),
            &staff,
            None,
        )
        .await;
    assert_eq!(stored["visitor_read_seq"], seq);
    assert_eq!(
        stored["visitor_delivered_seq"], seq,
        "reading implies delivery"
    );

    // Hand back: the coach answers again.
    team.send(json!({"type": "handback", "conversation_id": id}))
        .await;
    let state = end_user
        .next_where("conversation", |e| e["conversation"]["mode"] == "ai")
        .await;
    assert!(state["conversation"]["assigned_user_id"].is_null());
    end_user
        .send(json!({"type": "send", "conversation_id": id, "client_id": "q-9", "content": "One more question"}))
        .await;
    end_user
        .next_where("message", |e| e["message"]["role"] == "assistant")
        .await;

    // The person leaves: the end user sees nobody is online.
    drop(team);
    let presence = end_user.next_of("presence").await;
    assert_eq!(presence["staff_online"], false);
}

#[tokio::test]
async fn limits_disconnect_a_misbehaving_client_without_affecting_others() {
    let app = app_with(|config| {
        config.live.visitor_messages_per_minute = 3;
        config.live.heartbeat = Duration::from_millis(300);
        config.live.idle_timeout = Duration::from_secs(1);
    })
    .await;
    let (staff, visitor) = creator_and_visitor(&app).await;
    let slug = app.slug(&staff).await;
    let neighbour = app.visitor(&slug).await;

    // Rate limit: the burst is one message; the next is refused with a wait.
    let (mut client, welcome) = LiveClient::connect(&app, &visitor).await;
    assert_eq!(welcome["messages_per_minute"], 3);
    let id = open(&mut client, None, 0).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    for n in 0..2 {
        client
            .send(json!({"type": "send", "conversation_id": id, "client_id": format!("m{n}"), "content": "hi"}))
            .await;
    }
    client.next_of("ack").await;
    let refused = client.next_of("error").await;
    assert_eq!(refused["code"], "rate_limited");
    assert_eq!(refused["ref"], "m1");
    assert!(refused["retry_after_s"].as_u64().unwrap() >= 1);

    // Another end user is not affected.
    let (mut other, _) = LiveClient::connect(&app, &neighbour).await;
    let other_id = open(&mut other, None, 0).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    other
        .send(
            json!({"type": "send", "conversation_id": other_id, "client_id": "x", "content": "hi"}),
        )
        .await;
    assert_eq!(other.next_of("ack").await["seq"], 1);

    // A frame over the size limit closes only that connection.
    client
        .send(json!({"type": "send", "conversation_id": id, "client_id": "big", "content": "x".repeat(100_000)}))
        .await;
    let (_, close) = client.until_closed().await;
    assert_eq!(close.expect("a close frame").code, CloseCode::Size);
    other.send(json!({"type": "ping"})).await;
    assert_eq!(other.next_of("pong").await["type"], "pong");

    // Garbage, again and again: disconnected with a policy violation.
    let (mut noisy, _) = LiveClient::connect(&app, &neighbour).await;
    for _ in 0..10 {
        noisy
            .socket
            .send(tokio_tungstenite::tungstenite::Message::Text(
                "{not json".into(),
            ))
            .await
            .unwrap();
    }
    let (events, close) = noisy.until_closed().await;
    assert!(events.iter().any(|e| e["code"] == "bad_request"));
    assert_eq!(close.unwrap().code, CloseCode::Policy);

    // A client that never answers pings (it does not read) is closed as idle.
    let (mut silent, _) = LiveClient::connect(&app, &neighbour).await;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let started = std::time::Instant::now();
    let (_, close) = silent.until_closed().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed by the server, not by us"
    );
    // The server reads on after its close frame, so the pongs this client answers with on its
    // way to the close frame cannot reset the connection and hide it.
    assert_eq!(close.expect("a close frame").code, CloseCode::Away);

    // No hello, or a bad token: refused.
    let mut stranger = LiveClient::open(&app, None).await;
    stranger
        .send(json!({"type": "hello", "token": "vis_nope"}))
        .await;
    let (events, close) = stranger.until_closed().await;
    assert_eq!(events[0]["code"], "unauthorized");
    assert_eq!(close.unwrap().code, CloseCode::Policy);

    // A page on an origin the creator did not allow.
    let mut foreign = LiveClient::open(&app, Some("https://elsewhere.example")).await;
    foreign
        .send(json!({"type": "hello", "token": neighbour}))
        .await;
    let (events, _) = foreign.until_closed().await;
    assert_eq!(events[0]["code"], "origin_not_allowed");
    app.json_ok(
        Method::PATCH,
        "/api/v1/tenant",
        &staff,
        Some(json!({"allowed_origins": ["https://elsewhere.example"]})),
    )
    .await;
    let mut allowed = LiveClient::open(&app, Some("https://elsewhere.example")).await;
    allowed
        .send(json!({"type": "hello", "token": neighbour}))
        .await;
    assert_eq!(allowed.next().await["type"], "welcome");
}

#[tokio::test]
async fn the_event_stream_fallback_resumes_from_the_last_event_id() {
    let app = app_with(|_| {}).await;
    let (staff, visitor) = creator_and_visitor(&app).await;
    let id = app.conversation(&visitor).await;
    let events_path = format!("/api/v1/conversations/{id}/events");
    let response = app
        .client
        .get(app.url(&events_path))
        .bearer_auth(&visitor)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();

    // A question sent in the background comes back at once; its answer arrives as an event.
    let sent = app
        .post_message(
            &visitor,
            &id,
            json!({"content": "Hello?", "background": true, "client_id": "b-1"}),
        )
        .await;
    assert_eq!(sent.status(), 202);
    let mut text = String::new();
    let mut read_until = async |needle: &str, text: &mut String| {
        while !text.contains(needle) {
            let chunk = tokio::time::timeout(Duration::from_secs(30), body.next())
                .await
                .expect("events in time")
                .unwrap()
                .unwrap();
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    read_until(r#""role":"assistant""#, &mut text).await;
    app.take_over(&staff, &id).await;
    app.staff_says(&staff, &id, "Hello from the team").await;
    read_until("Hello from the team", &mut text).await;
    drop(body);
    let events = parse_sse(&text);
    let messages: Vec<&Value> = events
        .iter()
        .filter(|e| e.event == "message")
        .map(|e| &e.data["message"])
        .collect();
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "event", "staff"]);
    assert!(
        text.contains("\nid: 4\n") || text.contains("id: 4\n"),
        "{text}"
    );

    // Reconnecting with Last-Event-ID replays only what came after.
    app.staff_says(&staff, &id, "Are you still there?").await;
    let response = app
        .client
        .get(app.url(&events_path))
        .bearer_auth(&visitor)
        .header("last-event-id", "4")
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let mut text = String::new();
    while !text.contains("still there") {
        let chunk = tokio::time::timeout(Duration::from_secs(30), body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let replayed: Vec<i64> = parse_sse(&text)
        .iter()
        .filter(|e| e.event == "message")
        .map(|e| e.data["message"]["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(replayed, [5]);

    // Another visitor's token cannot follow this conversation.
    let slug = app.slug(&staff).await;
    let stranger = app.visitor(&slug).await;
    let response = app
        .client
        .get(app.url(&events_path))
        .bearer_auth(&stranger)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn a_question_over_the_websocket_streams_a_cited_answer_from_the_model() {
    let app = start(with_models).await;
    let (_, slug) = app.coach_taught_the_guide(json!({})).await;
    let visitor = app.visitor(&slug).await;
    let (mut client, _) = LiveClient::connect(&app, &visitor).await;
    let id = open(&mut client, None, 0).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    client
        .send(json!({"type": "send", "conversation_id": id, "client_id": "r", "content": "How many days does it take to get a refund?"}))
        .await;
    let ack = client.next_of("ack").await;
    let thinking = client.next_of("typing").await;
    assert_eq!(thinking["from"], "coach");
    let mut deltas = Vec::new();
    let answer = loop {
        let event = client.next().await;
        match event["type"].as_str().unwrap() {
            "delta" => {
                assert_eq!(event["reply_to"], ack["seq"]);
                assert_eq!(event["index"], deltas.len());
                deltas.push(event["text"].as_str().unwrap().to_string());
            }
            "message" if event["message"]["role"] == "assistant" => break event["message"].clone(),
            _ => {}
        }
    };
    // The end user sees "thinking", then checked sentences as they come: nothing streamed is
    // taken back (the deltas add up to the stored answer), and nothing of how it was made.
    assert_eq!(deltas.concat(), answer["content"].as_str().unwrap());
    assert!(answer.get("stats").is_none(), "{answer}");
    assert_eq!(answer["fallback"], false, "{answer}");
    assert!(!answer["citations"].as_array().unwrap().is_empty());
    let done = client.next_where("typing", |e| e["active"] == false).await;
    assert_eq!(done["from"], "coach");
}
