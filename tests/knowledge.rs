//! The knowledge base over HTTP, with the real embedder (MiniLM) and the real sandboxed reader:
//! every supported type becomes searchable, bad files fail with a reason while the server stays
//! healthy, documents are managed, restarts lose nothing, the index repairs itself and tenants
//! never see each other's passages.

mod common;

use std::time::{Duration, Instant};

use common::{Options, TestApp, documents, expect_error, minilm_dir};
use companero::auth::accounts::SignupPolicy;
use companero::config::Config;
use serde_json::{Value, json};

fn with_embedder(config: &mut Config) {
    config.signup = SignupPolicy::Open;
    config.embedder = Some(minilm_dir().display().to_string());
}

async fn start(configure: impl FnOnce(&mut Config) + 'static) -> TestApp {
    let app = TestApp::start(Options {
        configure: Some(Box::new(configure)),
        ..Options::default()
    })
    .await;
    app.wait_for_models().await;
    app
}

/// Restarts on `dir` with the embedder.
async fn restart(dir: tempfile::TempDir) -> TestApp {
    let app = TestApp::start(Options {
        configure: Some(Box::new(with_embedder)),
        dir: Some(dir),
        ..Options::default()
    })
    .await;
    app.wait_for_models().await;
    app
}

impl TestApp {
    /// Uploads and returns the accepted document's id.
    async fn upload(&self, token: &str, filename: &str, bytes: Vec<u8>) -> String {
        let response = self.upload_with(token, filename, bytes, &[]).await;
        assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "queued");
        body["id"].as_str().unwrap().to_string()
    }

    async fn get_json(&self, path: &str, token: &str) -> Value {
        let response = self
            .client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        response.json().await.unwrap()
    }

    /// Polls the document until it is ready or failed.
    async fn settled(&self, token: &str, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let document = self
                .get_json(&format!("/api/v1/documents/{id}"), token)
                .await;
            if document["status"] == "ready" || document["status"] == "failed" {
                return document;
            }
            assert!(Instant::now() < deadline, "still {document}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn search(&self, token: &str, query: &str, mode: &str) -> Vec<Value> {
        let response = self
            .client
            .post(self.url("/api/v1/search"))
            .bearer_auth(token)
            .json(&json!({"query": query, "limit": 5, "mode": mode}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        body["results"].as_array().unwrap().clone()
    }
}

const HTML_PAGE: &str = r#"<!DOCTYPE html><html><head><title>Refund policy</title>
<script>window.tracking = "refund refund refund";</script></head>
<body><nav><a href="/">Home</a> <a href="/shop">Shop</a></nav>
<main><h1>Refund policy</h1>
<p>If the program is not right for you, write to us within 14 days of purchase and we return the full price, no questions asked.</p>
<p>Coaching sessions that already took place are not refunded.</p></main>
<footer>Copyright 2026</footer></body></html>"#;

const MARKDOWN: &str = "# Morning routine\n\nStart slowly; the first hour sets the tone.\n\n\
    ## Journaling\n\nWrite down three things you are **grateful** for, in full sentences, \
    before you look at your phone.\n\n## Movement\n\nTen minutes of stretching wakes the body \
    up. See [the video](https://example.com).\n";

const TEXT: &str = "Box breathing for busy days\n\nInhale for four counts, hold for four, \
    exhale for four and hold again. Repeat it five times to calm your nerves right before a \
    stressful meeting or a difficult conversation.\n\nPractise it daily, not only when anxious.";

#[tokio::test]
async fn every_supported_type_becomes_ready_and_search_finds_its_passage() {
    let app = start(with_embedder).await;
    let token = app.sign_up("creator@example.com").await;
    let pdf = documents::pdf(&[
        vec![
            "Hydration basics.",
            "Drink a glass of water as soon as you wake up, before coffee.",
        ],
        vec![
            "On long runs you lose salt through sweat. Add a pinch of salt or an electrolyte tablet to your bottle when you run for more than an hour.",
        ],
    ]);
    let docx = documents::docx(&[
        (Some("Heading1"), "Sleep routine"),
        (
            None,
            "Keep the bedroom cool, around 18 degrees Celsius, and dark.",
        ),
        (None, "Put screens away one hour before going to bed."),
    ]);
    // File names lie: the type comes from the bytes.
    let uploads = [
        ("hydration.pdf", pdf, "pdf"),
        ("sleep.docx", docx, "docx"),
        ("refunds.txt", HTML_PAGE.as_bytes().to_vec(), "html"),
        ("morning.md", MARKDOWN.as_bytes().to_vec(), "markdown"),
        ("breathing", TEXT.as_bytes().to_vec(), "text"),
    ];
    let mut ids = Vec::new();
    for (filename, bytes, kind) in uploads {
        let id = app.upload(&token, filename, bytes).await;
        let document = app.settled(&token, &id).await;
        assert_eq!(document["status"], "ready", "{document}");
        assert_eq!(document["kind"], kind, "{document}");
        assert_eq!(document["progress"], 1.0);
        assert!(document["chunk_count"].as_i64().unwrap() >= 1);
        ids.push(id);
    }
    let pdf_doc = app
        .get_json(&format!("/api/v1/documents/{}", ids[0]), &token)
        .await;
    assert_eq!(pdf_doc["page_count"], 2);
    let html_doc = app
        .get_json(&format!("/api/v1/documents/{}", ids[2]), &token)
        .await;
    assert_eq!(
        html_doc["title"], "Refund policy",
        "the title inside the page replaces the file name"
    );

    let expectations = [
        ("what should I put in my water bottle on a long run", 0),
        ("what temperature should my bedroom be for sleeping", 1),
        ("can I get my money back if I change my mind", 2),
        ("gratitude writing exercise", 3),
        ("how do I calm down before a stressful meeting", 4),
    ];
    for mode in ["hybrid", "vector", "lexical"] {
        for (query, expected) in expectations {
            let results = app.search(&token, query, mode).await;
            if mode == "lexical" && results.is_empty() {
                continue; // BM25 needs shared words; the dense modes must not miss.
            }
            assert_eq!(
                results[0]["document_id"], ids[expected],
                "{mode}: {query}: {results:?}"
            );
        }
    }
    let hits = app
        .search(&token, "electrolyte tablet salt long run", "hybrid")
        .await;
    assert_eq!(hits[0]["page"], 2, "PDF passages know their page");
    assert_eq!(hits[0]["filename"], "hydration.pdf");
    let hits = app
        .search(&token, "three things you are grateful for", "hybrid")
        .await;
    assert_eq!(hits[0]["heading_path"], "Morning routine > Journaling");
    assert!(hits[0]["text"].as_str().unwrap().contains("grateful"));
    let score = hits[0]["score"].as_f64().unwrap();
    assert!(score > 0.0 && score <= 1.0);
    let hits = app.search(&token, "refund", "lexical").await;
    assert!(
        hits.iter()
            .all(|h| !h["text"].as_str().unwrap().contains("tracking")),
        "scripts and navigation are not indexed"
    );
}

#[tokio::test]
async fn bad_files_fail_with_a_reason_and_the_server_stays_healthy() {
    let app = start(|c| {
        with_embedder(c);
        c.knowledge.max_pdf_pages = 3;
        c.knowledge.max_docx_part_bytes = 1024 * 1024;
        c.knowledge.max_upload_bytes = 2 * 1024 * 1024;
    })
    .await;
    let token = app.sign_up("creator@example.com").await;
    let page = vec!["Some perfectly ordinary text about habits."];
    let good_pdf = documents::pdf(std::slice::from_ref(&page));
    let bomb = format!(
        "<w:p><w:r><w:t>{}</w:t></w:r></w:p>",
        "all work and no play ".repeat(200_000)
    );
    let deep = "<w:tbl>".repeat(400) + &"</w:tbl>".repeat(400);
    let mut legacy_doc = vec![0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1];
    legacy_doc.extend(std::iter::repeat_n(7u8, 4096));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "locked.pdf",
            documents::encrypted_pdf(std::slice::from_ref(&page)),
            "password",
        ),
        ("scan.pdf", documents::scanned_pdf(2), "no text layer"),
        (
            "broken.pdf",
            b"%PDF-1.7\n1 0 obj << /Type /Catalog >>\ngarbage".to_vec(),
            "damaged",
        ),
        (
            "truncated.pdf",
            good_pdf[..good_pdf.len() / 3].to_vec(),
            "damaged",
        ),
        (
            "long.pdf",
            documents::pdf(&vec![page.clone(); 5]),
            "at most 3",
        ),
        ("bomb.docx", documents::docx_with_body(&bomb), "zip bomb"),
        ("deep.docx", documents::docx_with_body(&deep), "nested"),
        ("old.doc", legacy_doc, "old Word"),
        (
            "broken.docx",
            b"PK\x03\x04 this is no archive".to_vec(),
            "damaged",
        ),
    ];
    let mut ids = Vec::new();
    for (filename, bytes, _) in &cases {
        ids.push(app.upload(&token, filename, bytes.clone()).await);
    }
    // A good file uploaded after the bad ones is not blocked by them.
    let good = app.upload(&token, "fine.pdf", good_pdf.clone()).await;
    for ((filename, _, expected), id) in cases.iter().zip(&ids) {
        let document = app.settled(&token, id).await;
        assert_eq!(document["status"], "failed", "{filename}: {document}");
        let error = document["error"].as_str().unwrap();
        assert!(error.contains(expected), "{filename}: {error}");
    }
    assert_eq!(app.settled(&token, &good).await["status"], "ready");

    // Refused at the door, with nothing stored.
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    let message = expect_error(
        app.upload_with(&token, "photo.pdf", png, &[]).await,
        415,
        "unsupported_media_type",
    )
    .await;
    assert!(message.contains("PNG image"), "{message}");
    expect_error(
        app.upload_with(&token, "empty.txt", Vec::new(), &[]).await,
        415,
        "unsupported_media_type",
    )
    .await;
    let huge = "word ".repeat(600_000).into_bytes();
    expect_error(
        app.upload_with(&token, "huge.txt", huge, &[]).await,
        413,
        "payload_too_large",
    )
    .await;
    let no_file = app
        .client
        .post(app.url("/api/v1/documents"))
        .bearer_auth(&token)
        .multipart(reqwest::multipart::Form::new().text("title", "x"))
        .send()
        .await
        .unwrap();
    expect_error(no_file, 400, "bad_request").await;
    let listed = app.get_json("/api/v1/documents?limit=100", &token).await;
    assert_eq!(listed["total"], cases.len() + 1);
    let incoming = app.config.data_dir.join("originals/.incoming");
    assert_eq!(
        std::fs::read_dir(&incoming).map(|d| d.count()).unwrap_or(0),
        0,
        "refused uploads leave no files behind"
    );
    assert_eq!(app.get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn creators_list_rename_organise_download_reingest_and_delete_documents() {
    let app = start(with_embedder).await;
    let token = app.sign_up("creator@example.com").await;
    let mut ids = Vec::new();
    for (name, collection, tags) in [
        ("one.md", "Course A", "intro,week1"),
        ("two.md", "Course A", "week2"),
        ("three.md", "Course B", "intro"),
    ] {
        let body = format!(
            "# {name}\n\nNotes about {name} with a **unique** marker zebra{name}.\n\nMore [text](x)."
        );
        let response = app
            .upload_with(
                &token,
                name,
                body.into_bytes(),
                &[("collection", collection), ("tags", tags)],
            )
            .await;
        assert_eq!(response.status(), 202);
        let id = response.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(app.settled(&token, &id).await["status"], "ready");
        ids.push(id);
    }
    let page = app.get_json("/api/v1/documents?limit=2", &token).await;
    assert_eq!(page["total"], 3);
    assert_eq!(page["documents"].as_array().unwrap().len(), 2);
    let rest = app
        .get_json("/api/v1/documents?limit=2&offset=2", &token)
        .await;
    assert_eq!(rest["documents"].as_array().unwrap().len(), 1);
    let course_a = app
        .get_json("/api/v1/documents?collection=Course%20A", &token)
        .await;
    assert_eq!(course_a["total"], 2);
    let intro = app.get_json("/api/v1/documents?tag=intro", &token).await;
    assert_eq!(intro["total"], 2);
    let collections = app.get_json("/api/v1/collections", &token).await;
    assert_eq!(
        collections,
        json!([{"name": "Course A", "documents": 2}, {"name": "Course B", "documents": 1}])
    );

    // Rename and reorganise.
    let response = app
        .client
        .patch(app.url(&format!("/api/v1/documents/{}", ids[0])))
        .bearer_auth(&token)
        .json(
            &json!({"title": "Welcome notes", "collection": null, "tags": ["start", "start", " "]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let renamed: Value = response.json().await.unwrap();
    assert_eq!(renamed["title"], "Welcome notes");
    assert_eq!(renamed["collection"], Value::Null);
    assert_eq!(renamed["tags"], json!(["start"]));
    let bad = app
        .client
        .patch(app.url(&format!("/api/v1/documents/{}", ids[0])))
        .bearer_auth(&token)
        .json(&json!({"title": "  "}))
        .send()
        .await
        .unwrap();
    expect_error(bad, 422, "invalid_request").await;
    let hits = app.search(&token, "zebraone.md", "hybrid").await;
    assert_eq!(hits[0]["document_title"], "Welcome notes");

    // The original comes back byte for byte.
    let original = app
        .client
        .get(app.url(&format!("/api/v1/documents/{}/original", ids[1])))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(original.status(), 200);
    assert!(
        original.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("two.md")
    );
    assert!(original.text().await.unwrap().starts_with("# two.md"));

    // Re-ingest.
    let response = app
        .client
        .post(app.url(&format!("/api/v1/documents/{}/reingest", ids[1])))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(app.settled(&token, &ids[1]).await["status"], "ready");
    assert_eq!(
        app.search(&token, "zebratwo.md", "hybrid").await[0]["document_id"],
        ids[1]
    );

    // Delete: gone from the list, from search and from disk.
    let response = app
        .client
        .delete(app.url(&format!("/api/v1/documents/{}", ids[2])))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let response = app
        .client
        .get(app.url(&format!("/api/v1/documents/{}", ids[2])))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    expect_error(response, 404, "not_found").await;
    for mode in ["hybrid", "vector", "lexical"] {
        let hits = app.search(&token, "zebrathree.md", mode).await;
        assert!(
            hits.iter().all(|h| h["document_id"] != ids[2].as_str()),
            "{mode}: {hits:?}"
        );
    }
    let tenant_originals = std::fs::read_dir(app.config.data_dir.join("originals"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name() != ".incoming")
        .unwrap()
        .path();
    assert!(!tenant_originals.join(&ids[2]).exists());
    assert!(tenant_originals.join(&ids[1]).exists());
}

#[tokio::test]
async fn a_restart_during_ingestion_loses_nothing() {
    // Without an embedder, documents are stored and wait; a restart with one finishes them.
    let first = start(|c| c.signup = SignupPolicy::Open).await;
    let token = first.sign_up("creator@example.com").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let text = format!("Lesson {i}: the secret ingredient number {i} is patience{i}.");
        ids.push(
            first
                .upload(&token, &format!("lesson{i}.txt"), text.into_bytes())
                .await,
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in &ids {
        let document = first
            .get_json(&format!("/api/v1/documents/{id}"), &token)
            .await;
        assert!(
            document["status"] == "queued" || document["status"] == "processing",
            "{document}"
        );
    }
    let (result, dir) = first.stop().await;
    result.unwrap();

    let second = restart(dir).await;
    for id in &ids {
        let document = second.settled(&token, id).await;
        assert_eq!(document["status"], "ready", "{document}");
    }
    let hits = second.search(&token, "patience2", "hybrid").await;
    assert_eq!(hits[0]["document_id"], ids[2]);
}

#[tokio::test]
async fn the_vector_index_is_rebuilt_from_the_database_and_never_returns_deleted_text() {
    let first = start(with_embedder).await;
    let token = first.sign_up("creator@example.com").await;
    let keep = first
        .upload(
            &token,
            "keep.txt",
            b"Walking after dinner helps digestion and sleep.".to_vec(),
        )
        .await;
    let doomed = first
        .upload(
            &token,
            "doomed.txt",
            b"Cold showers after a workout reduce muscle soreness.".to_vec(),
        )
        .await;
    for id in [&keep, &doomed] {
        assert_eq!(first.settled(&token, id).await["status"], "ready");
    }
    let data = first.config.data_dir.clone();
    let (result, dir) = first.stop().await;
    result.unwrap();

    // A crash after the database lost a document but before the index was saved.
    let connection = rusqlite::Connection::open(data.join("companero.db")).unwrap();
    connection.execute("PRAGMA foreign_keys = ON", []).unwrap();
    connection
        .execute("DELETE FROM documents WHERE id = ?1", [&doomed])
        .unwrap();
    drop(connection);
    let index_files: Vec<_> = walk(&data.join("index"));
    assert!(!index_files.is_empty(), "the index was persisted");

    let second = restart(dir).await;
    let hits = second
        .search(&token, "muscle soreness after a workout", "vector")
        .await;
    assert!(
        hits.iter().all(|h| h["document_id"] != doomed.as_str()),
        "{hits:?}"
    );
    let (result, dir) = second.stop().await;
    result.unwrap();

    // A lost index is rebuilt from the vectors in the database.
    for file in walk(&data.join("index")) {
        std::fs::remove_file(file).unwrap();
    }
    let third = restart(dir).await;
    let hits = third
        .search(&token, "stroll after the evening meal", "vector")
        .await;
    assert_eq!(hits[0]["document_id"], keep);
    assert!(!walk(&data.join("index")).is_empty(), "and saved again");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test]
async fn tenants_never_see_each_others_passages_and_analysts_cannot_upload() {
    let app = start(with_embedder).await;
    let alice = app.sign_up("alice@example.com").await;
    let bob = app.sign_up("bob@example.com").await;
    let id = app
        .upload(
            &alice,
            "secret.txt",
            b"Alice's private method: the flamingo protocol for focus.".to_vec(),
        )
        .await;
    assert_eq!(app.settled(&alice, &id).await["status"], "ready");
    for mode in ["hybrid", "vector", "lexical"] {
        assert!(
            app.search(&bob, "flamingo protocol for focus", mode)
                .await
                .is_empty(),
            "{mode}"
        );
        assert_eq!(
            app.search(&alice, "flamingo protocol for focus", mode)
                .await[0]["document_id"],
            id
        );
    }
    assert_eq!(app.get_json("/api/v1/documents", &bob).await["total"], 0);

    // An analyst key reads but does not write.
    let key: Value = app
        .client
        .post(app.url("/api/v1/api-keys"))
        .bearer_auth(&alice)
        .json(&json!({"name": "reader", "role": "analyst"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let analyst = key["key"].as_str().unwrap();
    assert_eq!(app.get_json("/api/v1/documents", analyst).await["total"], 1);
    expect_error(
        app.upload_with(analyst, "x.txt", b"hello there".to_vec(), &[])
            .await,
        403,
        "forbidden",
    )
    .await;
}

#[tokio::test]
async fn search_rejects_bad_requests_clearly() {
    let app = start(with_embedder).await;
    let token = app.sign_up("creator@example.com").await;
    for body in [
        json!({"query": "   "}),
        json!({"query": "x", "limit": 0}),
        json!({"query": "x", "limit": 500}),
    ] {
        let response = app
            .client
            .post(app.url("/api/v1/search"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        expect_error(response, 422, "invalid_request").await;
    }
    let response = app
        .client
        .post(app.url("/api/v1/search"))
        .bearer_auth(&token)
        .json(&json!({"query": "x", "mode": "telepathy"}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_client_error());
    assert!(
        app.search(&token, "anything at all", "hybrid")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn the_sandbox_survives_readers_that_hang_or_crash() {
    use companero::knowledge::extract::{ExtractError, ExtractLimits};
    use companero::knowledge::sandbox::Sandbox;
    use companero::knowledge::sniff::DocumentKind;
    let dir = tempfile::tempdir().unwrap();
    let script = |name: &str, body: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    };
    let sandbox = |executable| Sandbox {
        executable,
        limits: ExtractLimits::default(),
        timeout: Duration::from_secs(1),
        memory_bytes: 512 * 1024 * 1024,
        max_output_bytes: 1024 * 1024,
    };
    let started = Instant::now();
    let hung = sandbox(script("hang", "sleep 30"))
        .extract(DocumentKind::Text, b"hello".to_vec())
        .await;
    assert!(
        matches!(hung, Err(ExtractError::TimedOut { .. })),
        "{hung:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let crashed = sandbox(script("crash", "kill -SEGV $$"))
        .extract(DocumentKind::Text, b"hello".to_vec())
        .await;
    assert!(
        matches!(&crashed, Err(ExtractError::ReaderFailed(m)) if m.contains("signal 11")),
        "{crashed:?}"
    );
    // A child that floods its output is stopped at the bound, not at the deadline.
    for (name, body) in [
        ("flood", "exec /usr/bin/yes"),
        ("flood-err", "exec /usr/bin/yes >&2"),
    ] {
        let flooded = sandbox(script(name, body))
            .extract(DocumentKind::Text, b"hello".to_vec())
            .await;
        assert!(
            matches!(&flooded, Err(ExtractError::ReaderFailed(m)) if m.contains("more than")),
            "{name}: {flooded:?}"
        );
    }
    // The real reader, for comparison.
    let real = sandbox(env!("CARGO_BIN_EXE_companero").into())
        .extract(DocumentKind::Text, b"One.\n\nTwo.".to_vec())
        .await
        .unwrap();
    assert_eq!(real.blocks.len(), 2);
}

#[tokio::test]
async fn changing_the_embedder_re_embeds_every_chunk_in_the_background() {
    let first = start(with_embedder).await;
    let token = first.sign_up("creator@example.com").await;
    let id = first
        .upload(
            &token,
            "tea.txt",
            b"Green tea in the afternoon gives calm focus without jitters.".to_vec(),
        )
        .await;
    assert_eq!(first.settled(&token, &id).await["status"], "ready");
    let data = first.config.data_dir.clone();
    let (result, dir) = first.stop().await;
    result.unwrap();

    // The "new" embedder: the same files under another name, so its vectors get another key.
    let models = tempfile::tempdir().unwrap();
    let renamed = models.path().join("minilm-renamed");
    std::fs::create_dir(&renamed).unwrap();
    for entry in std::fs::read_dir(minilm_dir()).unwrap().flatten() {
        std::os::unix::fs::symlink(entry.path(), renamed.join(entry.file_name())).unwrap();
    }
    let path = renamed.display().to_string();
    let second = TestApp::start(Options {
        configure: Some(Box::new(move |c| {
            with_embedder(c);
            c.embedder = Some(path);
        })),
        dir: Some(dir),
        ..Options::default()
    })
    .await;
    second.wait_for_models().await;
    let keys = || {
        let connection = rusqlite::Connection::open(data.join("companero.db")).unwrap();
        let mut statement = connection
            .prepare("SELECT DISTINCT embedder FROM chunk_vectors ORDER BY 1")
            .unwrap();
        statement
            .query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while keys() != ["minilm-renamed:384"] {
        assert!(Instant::now() < deadline, "vectors: {:?}", keys());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let hits = second
        .search(&token, "afternoon drink for calm focus", "vector")
        .await;
    assert_eq!(hits[0]["document_id"], id);
    let files: Vec<String> = walk(&data.join("index"))
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        files,
        ["minilm-renamed_384.usearch"],
        "the old index is gone"
    );
}

/// Starts a multipart upload by hand on a raw connection: the headers announce
/// `declared` body bytes, and the file field is opened; the caller sends (part of) the rest.
async fn start_raw_upload(app: &TestApp, token: &str, declared: usize) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/documents HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: {declared}\r\n\r\n\
         --XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.txt\"\r\n\
         Content-Type: text/plain\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

fn incoming_files(app: &TestApp) -> usize {
    std::fs::read_dir(app.config.data_dir.join("originals/.incoming"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Polls `condition` for up to 15 s.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn unfinished_uploads_leave_nothing_behind_and_form_fields_are_bounded() {
    use tokio::io::AsyncWriteExt;
    // A leftover of a previous run (a crash mid-upload) is swept at start.
    let dir = tempfile::tempdir().unwrap();
    let incoming = dir.path().join("data/originals/.incoming");
    std::fs::create_dir_all(&incoming).unwrap();
    std::fs::write(incoming.join("leftover"), b"half a file").unwrap();
    let app = TestApp::start(Options {
        configure: Some(Box::new(|c| {
            c.signup = SignupPolicy::Open;
            c.request_timeout = Duration::from_secs(2);
        })),
        dir: Some(dir),
        ..Options::default()
    })
    .await;
    eventually("the leftover is swept", || {
        !incoming.join("leftover").exists()
    })
    .await;
    let token = app.sign_up("creator@example.com").await;

    // A client that goes away mid-body: its temporary file goes too.
    let mut stream = start_raw_upload(&app, &token, 10_000_000).await;
    stream.write_all(&vec![b'a'; 256 * 1024]).await.unwrap();
    eventually("the upload reaches the disk", || incoming_files(&app) == 1).await;
    drop(stream);
    eventually("the aborted upload is removed", || {
        incoming_files(&app) == 0
    })
    .await;

    // A client that stalls until the request timeout: the handler is dropped, and the file.
    let mut stream = start_raw_upload(&app, &token, 10_000_000).await;
    stream.write_all(&vec![b'a'; 256 * 1024]).await.unwrap();
    eventually("the upload reaches the disk", || incoming_files(&app) == 1).await;
    eventually("the timed-out upload is removed", || {
        incoming_files(&app) == 0
    })
    .await;
    drop(stream);

    // Text fields are read up to a small bound; unknown fields are drained and ignored.
    let note = b"A short note about breathing.".to_vec();
    for (field, length) in [("title", 2000), ("collection", 2000), ("tags", 5000)] {
        let long = "x".repeat(length);
        let message = expect_error(
            app.upload_with(&token, "note.txt", note.clone(), &[(field, &long)])
                .await,
            422,
            "invalid_request",
        )
        .await;
        assert!(message.contains(field), "{message}");
    }
    let junk = "j".repeat(3 * 1024 * 1024);
    let response = app
        .upload_with(
            &token,
            "note.txt",
            note.clone(),
            &[("unknown", &junk), ("title", "Note")],
        )
        .await;
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());

    // A zip that is not a Word file is refused at the door, as before, but the archive is
    // read by the sandboxed reader, not the server.
    let workbook = documents::zip_with(&[
        ("[Content_Types].xml", "<Types/>"),
        ("xl/workbook.xml", "<workbook/>"),
    ]);
    let message = expect_error(
        app.upload_with(&token, "sheet.docx", workbook, &[]).await,
        415,
        "unsupported_media_type",
    )
    .await;
    assert!(
        message.contains("an Excel workbook; upload a PDF"),
        "{message}"
    );
    assert_eq!(
        incoming_files(&app),
        0,
        "refused uploads leave no files behind"
    );
}

#[tokio::test]
async fn uploads_stop_at_the_storage_quota_which_the_owner_sets_per_tenant() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const MB: u64 = 1024 * 1024;
    let app = TestApp::start(Options {
        configure: Some(Box::new(|c| {
            c.signup = SignupPolicy::Open;
            c.knowledge.storage_quota_bytes = Some(MB);
        })),
        ..Options::default()
    })
    .await;
    let owner = app.sign_up("owner@example.com").await;
    let creator = app.sign_up("creator@example.com").await;
    let text = |n: usize| "Breathe in, breathe out. ".repeat(n / 25).into_bytes();
    let tenant = app.get_json("/api/v1/tenant", &creator).await;
    assert_eq!(tenant["storage_used_bytes"], 0);
    assert_eq!(tenant["storage_quota_bytes"], MB);
    let tenant_id = tenant["id"].as_str().unwrap().to_string();

    app.upload(&creator, "one.txt", text(600_000)).await;
    let message = expect_error(
        app.upload_with(&creator, "two.txt", text(600_000), &[])
            .await,
        413,
        "quota_exceeded",
    )
    .await;
    assert!(message.contains("0.6 MB of 1.0 MB used"), "{message}");
    let tenant = app.get_json("/api/v1/tenant", &creator).await;
    assert_eq!(tenant["storage_used_bytes"], 600_000);

    // A huge upload is cut off at the quota while it streams, long before its end.
    let declared = 40 * MB as usize;
    let stream = start_raw_upload(&app, &creator, declared).await;
    let (mut reader, mut writer) = stream.into_split();
    let response = tokio::spawn(async move {
        let mut response = Vec::new();
        let _ = reader.read_to_end(&mut response).await;
        String::from_utf8_lossy(&response).into_owned()
    });
    let mut sent = 0;
    let chunk = vec![b'a'; 64 * 1024];
    while sent < declared && !response.is_finished() {
        if writer.write_all(&chunk).await.is_err() {
            break;
        }
        sent += chunk.len();
    }
    let response = response.await.unwrap();
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("quota_exceeded"), "{response}");
    assert!(sent < declared / 2, "sent {sent} of {declared} bytes");
    eventually("no temporary file is left", || incoming_files(&app) == 0).await;

    // The owner gives this tenant more room; only the owner may.
    let change = |token: &str, body: Value| {
        app.client
            .patch(app.url(&format!("/api/v1/admin/tenants/{tenant_id}")))
            .bearer_auth(token.to_string())
            .json(&body)
            .send()
    };
    expect_error(
        change(&creator, json!({"storage_quota_mb": 100}))
            .await
            .unwrap(),
        403,
        "forbidden",
    )
    .await;
    let missing = app
        .client
        .patch(app.url("/api/v1/admin/tenants/nope"))
        .bearer_auth(&owner)
        .json(&json!({"storage_quota_mb": 1}))
        .send()
        .await
        .unwrap();
    expect_error(missing, 404, "not_found").await;
    let response = change(&owner, json!({"storage_quota_mb": 2}))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let storage: Value = response.json().await.unwrap();
    assert_eq!(storage["storage_quota_mb"], 2);
    assert_eq!(storage["storage_quota_bytes"], 2 * MB);
    assert_eq!(storage["storage_used_bytes"], 600_000);
    app.upload(&creator, "two.txt", text(600_000)).await;

    // Back to the server's default: over it now, so new uploads are refused; 0 is unlimited.
    let storage: Value = change(&owner, json!({"storage_quota_mb": null}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(storage["storage_quota_mb"], Value::Null);
    assert_eq!(storage["storage_quota_bytes"], MB);
    expect_error(
        app.upload_with(&creator, "three.txt", text(1000), &[])
            .await,
        413,
        "quota_exceeded",
    )
    .await;
    let storage: Value = change(&owner, json!({"storage_quota_mb": 0}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(storage["storage_quota_bytes"], Value::Null);
    app.upload(&creator, "three.txt", text(1000)).await;
    let tenant = app.get_json("/api/v1/tenant", &creator).await;
    assert_eq!(tenant["storage_quota_bytes"], Value::Null);
    assert_eq!(tenant["storage_used_bytes"], 1_201_000);
    // The owner's own tenant is untouched by the change.
    let own = app.get_json("/api/v1/tenant", &owner).await;
    assert_eq!(own["storage_quota_bytes"], MB);
}

/// A large document ingesting for one creator never turns into errors for another creator's
/// end users: SQLite's writer is shared, so writes stay short and a busy database answers 503
/// with `Retry-After`, never 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_ingest_never_fails_another_tenants_visitors() {
    let app = start(|c| {
        with_embedder(c);
        c.rate_limits.new_visitors_per_ip = 100_000;
        c.rate_limits.public_per_tenant = 100_000;
        c.live.visitor_messages_per_minute = 100_000;
    })
    .await;
    let ana = app.sign_up("ana@example.com").await;
    let bea = app.sign_up("bea@example.com").await;
    let slug = app.slug(&bea).await;
    // ~150 KB of varied prose: a few hundred passages, thousands of rows with the index.
    let text: String = (0..1500)
        .map(|i| {
            format!(
                "Lesson {i} explains habit number {} with example {}. ",
                i * 7 % 113,
                i * 13 % 97
            )
        })
        .collect();
    let document = app.upload(&ana, "big.txt", text.into_bytes()).await;

    let mut rounds = 0;
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let state = app
            .get_json(&format!("/api/v1/documents/{document}"), &ana)
            .await;
        if state["status"] != "queued" && state["status"] != "processing" {
            assert_eq!(state["status"], "ready", "{state}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ingestion took too long: {state}"
        );
        // One end user of the other creator: arrives, opens a conversation, asks (the coach has
        // nothing, so it falls back, storing the answer and a knowledge gap), reads it back.
        let visitor = app.visitor(&slug).await;
        let conversation = app.conversation(&visitor).await;
        let asked = app
            .post_message(
                &visitor,
                &conversation,
                json!({"content": "Do you have a plan for me?", "stream": false}),
            )
            .await;
        let read = app
            .send(
                reqwest::Method::GET,
                &format!("/api/v1/conversations/{conversation}/messages"),
                &visitor,
                None,
            )
            .await;
        for response in [asked, read] {
            let status = response.status().as_u16();
            if status == 503 {
                assert!(response.headers().contains_key("retry-after"));
            }
            *statuses.entry(status).or_default() += 1;
        }
        rounds += 1;
    }
    assert!(
        rounds >= 3,
        "the visitors ran while the document ingested ({rounds} rounds)"
    );
    assert!(
        statuses.keys().all(|s| *s == 200 || *s == 503),
        "end users got only answers or 'busy, retry': {statuses:?}"
    );
    assert!(
        statuses.get(&200).copied().unwrap_or(0) >= 2 * rounds * 9 / 10,
        "{statuses:?}"
    );
}

#[tokio::test]
async fn a_reranker_reorders_hybrid_results_and_is_skipped_past_its_budget() {
    let models = tempfile::tempdir().unwrap();
    common::models::tiny_reranker(models.path(), "bert");
    let reranker = models.path().display().to_string();
    let configured = reranker.clone();
    let app = start(move |config| {
        with_embedder(config);
        config.reranker = Some(configured);
        config.knowledge.rerank_candidates = 5;
        config.knowledge.rerank_budget = Duration::from_secs(5);
    })
    .await;
    let ready: Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["components"]["reranker"]["state"], "ready", "{ready}");
    assert_eq!(ready["components"]["reranker"]["architecture"], "bert");
    let token = app.sign_up("creator@example.com").await;
    let id = app
        .upload(&token, "morning.md", MARKDOWN.as_bytes().to_vec())
        .await;
    app.settled(&token, &id).await;
    let id = app
        .upload(&token, "breathing", TEXT.as_bytes().to_vec())
        .await;
    app.settled(&token, &id).await;

    let hits = app.search(&token, "morning routine habits", "hybrid").await;
    assert!(hits.len() >= 2, "{hits:?}");
    let reranked: Vec<f64> = hits
        .iter()
        .map_while(|h| h["rerank_score"].as_f64())
        .collect();
    assert_eq!(reranked.len(), hits.len().min(5), "{hits:?}");
    assert!(
        reranked.windows(2).all(|w| w[0] >= w[1]),
        "reranked results come in the reranker's order: {reranked:?}"
    );
    // The single methods stay pure, for comparison.
    let vector = app.search(&token, "morning routine habits", "vector").await;
    assert!(vector.iter().all(|h| h.get("rerank_score").is_none()));

    // A budget that holds nothing keeps the retrieval order and still answers.
    let (result, dir) = app.stop().await;
    result.unwrap();
    let app = TestApp::start(Options {
        configure: Some(Box::new(move |config| {
            with_embedder(config);
            config.reranker = Some(reranker);
            config.knowledge.rerank_budget = Duration::ZERO;
        })),
        dir: Some(dir),
        ..Options::default()
    })
    .await;
    app.wait_for_models().await;
    let hits = app.search(&token, "morning routine habits", "hybrid").await;
    assert!(!hits.is_empty());
    assert!(
        hits.iter().all(|h| h.get("rerank_score").is_none()),
        "{hits:?}"
    );
}
