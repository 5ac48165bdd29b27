//! Grounded answers over HTTP with the real models (SmolLM2-135M and MiniLM): the coach's
//! settings, visitor tokens, streamed answers with aligned citations, the fallback and knowledge
//! gaps, isolation between visitors and tenants, personal data, and overload and absence.

mod common;

use std::time::{Duration, Instant};

use common::chat::{GUIDE, Sse, parse_sse, start, with_models};
use common::process::{TaughtCoach, call_ok, serve_with_models, wait_until_ready};
use common::{TestApp, expect_error, minilm_dir};
use companero::auth::accounts::SignupPolicy;
use futures_util::StreamExt;
use serde_json::{Value, json};

/// Every marker in the text has a citation and every citation is used in the text.
fn assert_markers_match_citations(message: &Value) {
    let content = message["content"].as_str().unwrap();
    let citations = message["citations"].as_array().unwrap();
    for citation in citations {
        let marker = format!("[{}]", citation["marker"]);
        assert!(content.contains(&marker), "{marker} unused in {content}");
        assert!(!citation["snippet"].as_str().unwrap().is_empty());
    }
    for (i, _) in content.match_indices('[') {
        let number: String = content[i + 1..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(n) = number.parse::<u64>() {
            assert!(
                citations.iter().any(|c| c["marker"] == n),
                "[{n}] has no citation in {message}"
            );
        }
    }
}

#[tokio::test]
async fn a_visitor_question_streams_back_a_grounded_answer_with_citations() {
    let app = start(with_models).await;
    let creator = app.sign_up("creator@example.com").await;
    let document = app.teach(&creator, GUIDE).await;
    let slug = app.slug(&creator).await;
    let visitor = app.visitor(&slug).await;
    let conversation = app.conversation(&visitor).await;

    let response = app
        .post_message(
            &visitor,
            &conversation,
            json!({"content": "How many days does it take to get a refund?"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = parse_sse(&response.text().await.unwrap());
    // An end user sees checked sentences as they come, never anything taken back: what was
    // streamed is what was stored. Nothing of how it was made (retrieved passages, the raw
    // answer) reaches them.
    let deltas: Vec<&Sse> = events.iter().filter(|e| e.event == "delta").collect();
    let last = events.last().unwrap();
    assert_eq!(last.event, "message", "{events:?}");
    let message = &last.data;
    let streamed: String = deltas
        .iter()
        .map(|d| d.data["text"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, message["content"].as_str().unwrap(), "{events:?}");
    assert!(message.get("stats").is_none(), "{message}");
    assert_eq!(message["role"], "assistant");
    let confidence = message["confidence"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&confidence));
    assert_markers_match_citations(message);
    let citations = message["citations"].as_array().unwrap();
    if message["fallback"] == false {
        assert!(
            !citations.is_empty(),
            "an answer from the guide cites it: {message}"
        );
        assert!(
            citations
                .iter()
                .all(|c| c["document_id"] == document.as_str())
        );
    } else {
        assert!(citations.is_empty(), "{message}");
    }

    // The conversation keeps both turns, in order; a follow-up uses the history.
    let follow_up = app
        .ask(
            &visitor,
            &conversation,
            "And where do I write to ask for it?",
        )
        .await;
    assert_markers_match_citations(&follow_up);
    let history = app.history(&visitor, &conversation).await;
    let roles: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant"]);
    assert_eq!(history["messages"][1]["id"], message["id"]);
}

#[tokio::test]
async fn an_out_of_scope_question_gets_the_fallback_and_becomes_a_knowledge_gap() {
    let app = start(with_models).await;
    let creator = app.sign_up("creator@example.com").await;
    app.teach(&creator, GUIDE).await;
    let response = app
        .send(
            reqwest::Method::PATCH,
            "/api/v1/coach",
            &creator,
            Some(json!({"fallback_message": "Good question! That is outside what I cover."})),
        )
        .await;
    assert_eq!(response.status(), 200);
    // The team's own test questions are not gaps; end users' are.
    let test = app.conversation(&creator).await;
    let answer = app
        .ask(&creator, &test, "Which volcano erupted in Iceland in 2010?")
        .await;
    assert_eq!(answer["fallback"], true, "{answer}");
    let slug = app.slug(&creator).await;
    let visitor = app.visitor(&slug).await;
    let conversation = app.conversation(&visitor).await;
    let answer = app
        .ask(
            &visitor,
            &conversation,
            "Which volcano erupted in Iceland in 2010? Reply to volcano.fan@example.com",
        )
        .await;
    assert_eq!(answer["fallback"], true, "{answer}");
    let content = answer["content"].as_str().unwrap();
    assert!(content.starts_with("Good question! That is outside what I cover."));
    assert!(content.contains("a person"), "offers a human: {content}");
    assert_eq!(answer["citations"], json!([]));
    assert!(answer["confidence"].as_f64().unwrap() < 0.35);

    let gaps = app
        .json_ok(
            reqwest::Method::GET,
            "/api/v1/knowledge-gaps",
            &creator,
            None,
        )
        .await;
    assert_eq!(gaps["gaps"].as_array().unwrap().len(), 1, "{gaps}");
    let question = gaps["gaps"][0]["question"].as_str().unwrap();
    assert!(question.contains("volcano erupted"), "{gaps}");
    assert!(
        question.contains("[email]") && !question.contains("volcano.fan@"),
        "personal data is masked in gaps: {question}"
    );
}

#[tokio::test]
async fn visitors_see_only_their_own_conversations_and_tenants_stay_apart() {
    let app = start(|c| c.signup = SignupPolicy::Open).await;
    let alice = app.sign_up("alice@example.com").await;
    let bob = app.sign_up("bob@example.com").await;
    let slug = app.slug(&alice).await;
    let first = app.visitor(&slug).await;
    let second = app.visitor(&slug).await;
    let conversation = app.conversation(&first).await;
    let path = format!("/api/v1/conversations/{conversation}/messages");

    for token in [&second, &bob] {
        let read = app.send(reqwest::Method::GET, &path, token, None).await;
        expect_error(read, 404, "not_found").await;
        let write = app
            .send(
                reqwest::Method::POST,
                &path,
                token,
                Some(json!({"content": "hi"})),
            )
            .await;
        expect_error(write, 404, "not_found").await;
    }
    // Alice's staff may read the visitor's conversation but not speak in it.
    assert_eq!(
        app.send(reqwest::Method::GET, &path, &alice, None)
            .await
            .status(),
        200
    );
    let write = app
        .send(
            reqwest::Method::POST,
            &path,
            &alice,
            Some(json!({"content": "hi"})),
        )
        .await;
    expect_error(write, 403, "forbidden").await;
    // Visitor tokens are not staff credentials.
    let staff_route = app
        .send(reqwest::Method::GET, "/api/v1/documents", &first, None)
        .await;
    expect_error(staff_route, 401, "unauthorized").await;
    let bogus = app
        .send(
            reqwest::Method::POST,
            "/api/v1/conversations",
            "vis_made_up",
            None,
        )
        .await;
    expect_error(bogus, 401, "unauthorized").await;
    let unknown = app
        .client
        .post(app.url("/api/v1/public/coaches/no-such-coach/visitors"))
        .send()
        .await
        .unwrap();
    expect_error(unknown, 404, "not_found").await;
}

#[tokio::test]
async fn creators_configure_their_coach_and_origins_gate_visitors() {
    let app = start(|c| c.signup = SignupPolicy::Open).await;
    let alice = app.sign_up("alice@example.com").await;
    let bob = app.sign_up("bob@example.com").await;
    let coach = app
        .json_ok(reqwest::Method::GET, "/api/v1/coach", &alice, None)
        .await;
    assert_eq!(coach["answer_length"], "medium");
    assert_eq!(coach["redact_pii"], false);
    assert_eq!(
        coach["strictness"], "strict",
        "new coaches keep to their sources"
    );
    let updated = app
        .json_ok(
            reqwest::Method::PATCH,
            "/api/v1/coach",
            &alice,
            Some(
                json!({"slug": "sleep-coach", "name": "Luna", "persona": "Calm and kind.",
                        "greeting": "Hello, I'm Luna.", "confidence_threshold": 0.5,
                        "answer_length": "short", "temperature": 0.0, "redact_pii": true,
                        "strictness": "balanced"}),
            ),
        )
        .await;
    assert_eq!(updated["slug"], "sleep-coach");
    assert_eq!(updated["strictness"], "balanced");
    assert_eq!(updated["confidence_threshold"], 0.5);
    for (body, status, code) in [
        (json!({"confidence_threshold": 2.0}), 422, "invalid_request"),
        (json!({"slug": "Not A Slug!"}), 422, "invalid_request"),
        (json!({"name": ""}), 422, "invalid_request"),
        (json!({"strictness": "lenient"}), 422, "invalid_request"),
        (json!({"slug": "sleep-coach"}), 409, "conflict"),
    ] {
        let response = app
            .send(reqwest::Method::PATCH, "/api/v1/coach", &bob, Some(body))
            .await;
        expect_error(response, status, code).await;
    }

    let response = app
        .send(
            reqwest::Method::PATCH,
            "/api/v1/tenant",
            &alice,
            Some(json!({"allowed_origins": ["https://luna.example"]})),
        )
        .await;
    assert_eq!(response.status(), 200);
    let from = |origin: &'static str| {
        app.client
            .post(app.url("/api/v1/public/coaches/sleep-coach/visitors"))
            .header("origin", origin)
            .send()
    };
    let allowed = from("https://luna.example").await.unwrap();
    assert_eq!(allowed.status(), 201);
    let body: Value = allowed.json().await.unwrap();
    assert_eq!(body["coach"]["greeting"], "Hello, I'm Luna.");
    expect_error(
        from("https://evil.example").await.unwrap(),
        403,
        "origin_not_allowed",
    )
    .await;

    // With redaction on, personal data never reaches the model or the stored message.
    let visitor = body["token"].as_str().unwrap().to_string();
    let conversation = app.conversation(&visitor).await;
    let answer = app
        .ask(
            &visitor,
            &conversation,
            "My card is 4111 1111 1111 1111, call me on +34 612 345 678",
        )
        .await;
    assert_eq!(
        answer["fallback"], true,
        "no knowledge, no model: the fallback"
    );
    let history = app.history(&visitor, &conversation).await;
    assert_eq!(
        history["messages"][0]["content"],
        "My card is [card], call me on [phone]"
    );
}

#[tokio::test]
async fn without_a_model_in_scope_questions_get_503_naming_the_fix() {
    let app = start(|c| {
        c.signup = SignupPolicy::Open;
        c.embedder = Some(minilm_dir().display().to_string());
    })
    .await;
    let creator = app.sign_up("creator@example.com").await;
    app.teach(&creator, GUIDE).await;
    let conversation = app.conversation(&creator).await;
    let response = app
        .post_message(
            &creator,
            &conversation,
            json!({"content": "How long do refunds take to be paid?"}),
        )
        .await;
    let message = expect_error(response, 503, "model_unavailable").await;
    assert!(message.contains("companero models"), "{message}");
}

#[tokio::test]
async fn a_full_queue_answers_429_and_a_disconnect_stops_generation() {
    let app = start(|c| {
        with_models(c);
        c.inference_queue = 1;
        // A loaded test machine can take a while per answer; the queue is under test here.
        c.request_timeout = Duration::from_secs(600);
    })
    .await;
    let creator = app.sign_up("creator@example.com").await;
    app.teach(&creator, GUIDE).await;
    let response = app
        .send(
            reqwest::Method::PATCH,
            "/api/v1/coach",
            &creator,
            Some(json!({"answer_length": "short", "confidence_threshold": 0.05})),
        )
        .await;
    assert_eq!(response.status(), 200);

    // Several questions at once: one is answered, one waits, the rest are turned away.
    let mut requests = Vec::new();
    for _ in 0..5 {
        let conversation = app.conversation(&creator).await;
        let request = app
            .client
            .post(app.url(&format!("/api/v1/conversations/{conversation}/messages")))
            .bearer_auth(&creator)
            .json(&json!({"content": "How are refunds paid and how long does it take?", "stream": false}))
            .send();
        requests.push(request);
    }
    let responses = futures_util::future::join_all(requests).await;
    let responses: Vec<_> = responses.into_iter().map(Result::unwrap).collect();
    let statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    let refused: Vec<_> = responses
        .into_iter()
        .filter(|r| r.status() == 429)
        .collect();
    assert!(!refused.is_empty(), "a full queue refuses: {statuses:?}");
    for response in refused {
        assert!(response.headers().contains_key("retry-after"));
        expect_error(response, 429, "overloaded").await;
    }

    // A client that leaves mid-answer stops the model.
    let response = app
        .send(
            reqwest::Method::PATCH,
            "/api/v1/coach",
            &creator,
            Some(json!({"answer_length": "long"})),
        )
        .await;
    assert_eq!(response.status(), 200);
    let cancelled_before = cancelled_generations(&app).await;
    let conversation = app.conversation(&creator).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let response = loop {
        let response = app
            .post_message(
                &creator,
                &conversation,
                json!({"content": "Tell me everything about how refunds are paid."}),
            )
            .await;
        if response.status() == 200 {
            break response;
        }
        assert!(Instant::now() < deadline, "the queue never freed up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut body = response.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(body);
    let deadline = Instant::now() + Duration::from_secs(30);
    while cancelled_generations(&app).await <= cancelled_before {
        assert!(
            Instant::now() < deadline,
            "generation went on after the client left"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn cancelled_generations(app: &TestApp) -> f64 {
    let text = app.get("/metrics").await.text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("inference_requests_total") && l.contains("cancelled"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The numbers a text states, as digits.
fn numbers_in(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn a_strict_coach_says_only_what_its_guide_says_and_shows_how_it_checked() {
    let app = start(with_models).await;
    let (staff, _) = app.coach_taught_the_guide(json!({})).await;
    let coach = app
        .json_ok(reqwest::Method::GET, "/api/v1/coach", &staff, None)
        .await;
    assert_eq!(coach["strictness"], "strict");

    for question in [
        "How many days does it take to get a refund?",
        "How cool should my bedroom be for sleep?",
        "What should I do with screens before bed?",
    ] {
        let conversation = app.conversation(&staff).await;
        let answer = app.ask(&staff, &conversation, question).await;
        let content = answer["content"].as_str().unwrap();
        assert_markers_match_citations(&answer);
        let checks = answer["stats"]["checks"].as_array().unwrap_or_else(|| {
            panic!("the test chat gets the sentence checks: {answer}");
        });
        assert!(!checks.is_empty(), "{answer}");
        // No number reaches the reader that the guide does not state (markers aside).
        let without_markers = content
            .split('[')
            .map(|part| part.split_once(']').map_or(part, |(_, rest)| rest))
            .collect::<String>();
        for number in numbers_in(&without_markers) {
            assert!(GUIDE.contains(&number), "{number} is invented: {answer}");
        }
        for check in checks {
            let sentence = check["sentence"].as_str().unwrap();
            match check["verdict"].as_str().unwrap() {
                "supported" => {
                    for fact in check["facts"].as_array().unwrap() {
                        assert_eq!(fact["found"], true, "{check}");
                        assert!(fact["evidence"].is_string(), "{check}");
                    }
                    assert!(check["marker"].is_u64(), "{check}");
                }
                "repaired" | "quoted" => {
                    let shown = check["delivered"].as_str().unwrap();
                    assert!(shown.starts_with('“'), "a quotation: {check}");
                    assert!(
                        answer["fallback"] == true || content.contains(shown),
                        "{check} / {content}"
                    );
                }
                "dropped" => assert!(
                    !content.contains(sentence),
                    "a dropped sentence is not shown: {check}"
                ),
                _ => {}
            }
        }
    }

    // A question that shares words with the guide but that it does not answer gets the
    // fallback, whatever the model wrote.
    let conversation = app.conversation(&staff).await;
    let answer = app
        .ask(&staff, &conversation, "Can I get a refund for a gift card?")
        .await;
    assert_eq!(answer["fallback"], true, "{answer}");
    assert!(answer["citations"].as_array().unwrap().is_empty());

    // An open coach shows what the model wrote, citing what it can.
    app.json_ok(
        reqwest::Method::PATCH,
        "/api/v1/coach",
        &staff,
        Some(json!({"strictness": "open"})),
    )
    .await;
    let conversation = app.conversation(&staff).await;
    let answer = app
        .ask(
            &staff,
            &conversation,
            "How many days does it take to get a refund?",
        )
        .await;
    assert_eq!(answer["stats"]["strictness"], "open", "{answer}");
    let checks = answer["stats"]["checks"].as_array().unwrap();
    assert!(
        checks.iter().all(|c| !matches!(
            c["verdict"].as_str(),
            Some("repaired" | "dropped" | "quoted")
        )),
        "open changes no sentence: {answer}"
    );

    // The test chat shows what was searched: a longer follow-up both alone and joined with
    // the question before it, a short one joined only; cited passages are among those shown.
    let first = "How many days does it take to get a refund?";
    let longer = "Where do I write to ask for one?";
    let answer = app.ask(&staff, &conversation, longer).await;
    assert_eq!(
        answer["stats"]["queries"],
        json!([longer, format!("{first} {longer}")]),
        "{answer}"
    );
    let retrieved: Vec<&Value> = answer["stats"]["retrieved"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["chunk_id"])
        .collect();
    for citation in answer["citations"].as_array().unwrap() {
        assert!(retrieved.contains(&&citation["chunk_id"]), "{answer}");
    }
    let answer = app.ask(&staff, &conversation, "And for gift cards?").await;
    assert_eq!(
        answer["stats"]["queries"],
        json!([format!("{longer} And for gift cards?")]),
        "{answer}"
    );
}

/// A passage holding several facts ("How a week works", what a membership includes) is given to
/// the model first when one of its sentences answers the question, ahead of passages on a
/// neighbouring topic that are closer on average (the app's reminders, booking a call).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_passage_whose_sentence_answers_the_question_is_given_first() {
    let app = start(with_models).await;
    let staff = app.sign_up("coach@example.com").await;
    let answers = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/answers");
    for name in ["programme.md", "faq.md", "membership-policy.md"] {
        let text = std::fs::read_to_string(format!("{answers}/{name}")).unwrap();
        app.teach_file(&staff, name, &text).await;
    }
    for (question, heading) in [
        ("When do I have to send my check-in?", "How a week works"),
        (
            "Can I move a one-to-one session if something comes up?",
            "How a week works",
        ),
        (
            "How long is a coaching call?",
            "What every membership includes",
        ),
        ("What are your support opening hours?", "Contact"),
    ] {
        let conversation = app.conversation(&staff).await;
        let answer = app.ask(&staff, &conversation, question).await;
        let first = &answer["stats"]["retrieved"][0];
        assert!(
            first["heading_path"].as_str().unwrap().contains(heading),
            "{question}: {first}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_question_resent_after_a_crash_cut_its_answer_off_is_answered_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let client = reqwest::Client::new();
    // The process dies with the answer written but not stored.
    let served = serve_with_models(data, &[("COMPANERO_CRASH_AT", "answer.before_store")]);
    let coach = TaughtCoach::set_up(&served, &client).await;
    let question =
        json!({"content": "How long do refunds take?", "client_id": "q-1", "stream": false});
    let path = format!("/api/v1/conversations/{}/messages", coach.conversation);
    let cut_off = client
        .post(format!("{}{path}", coach.base))
        .bearer_auth(&coach.visitor)
        .json(&question)
        .send()
        .await;
    assert!(cut_off.is_err(), "the server answered: {cut_off:?}");
    let log = served.wait_for_exit();
    assert!(
        log.contains("crash point reached: answer.before_store"),
        "{log}"
    );

    // The client resends, as it does after a network error, with the same client_id.
    let served = serve_with_models(data, &[]);
    let base = served.wait_for_address();
    wait_until_ready(&client, &base).await;
    let resend = || async {
        client
            .post(format!("{base}{path}"))
            .bearer_auth(&coach.visitor)
            .json(&question)
            .send()
            .await
            .unwrap()
    };
    let answered = resend().await;
    assert_eq!(answered.status(), 200);
    let answer: Value = answered.json().await.unwrap();
    assert_eq!(answer["role"], "assistant", "{answer}");
    assert!(!answer["content"].as_str().unwrap().is_empty());
    // Once answered, a resend gets its question back, and no second answer.
    let again = resend().await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap()["client_id"], "q-1");
    let history = call_ok(
        &client,
        &base,
        reqwest::Method::GET,
        &path,
        &coach.staff,
        Value::Null,
    )
    .await;
    let messages = history["messages"].as_array().unwrap();
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant"], "{history}");
    assert_eq!(messages[1]["stats"]["reply_to"], messages[0]["seq"]);
    assert_eq!(messages[1]["id"], answer["id"]);
    served.terminate_and_wait();
}
