//! The inference engine with real models: SmolLM2-135M (GGUF, tokenizer rebuilt from its
//! metadata) and all-MiniLM-L6-v2 (safetensors), plus tiny random-weight files for the code
//! paths no small real model covers.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use common::models::tiny_reranker;
use common::{minilm_dir, smollm_gguf};
use companero::inference::chat_engine::{ChatEngine, ChatEvent, ChatRequest};
use companero::inference::chat_template::{ChatMessage, Role};
use companero::inference::embed::{EmbedKind, Embedder, EmbedderOptions, cosine};
use companero::inference::generate::{FinishReason, GenerationSettings};
use companero::inference::gguf::GgufFile;
use companero::inference::llm::Llm;
use companero::inference::{InferenceError, tokenizer};
use futures_util::StreamExt;

fn load_smollm(max_context: usize) -> Llm {
    Llm::load(&smollm_gguf(), &Device::Cpu, max_context).expect("SmolLM2 loads")
}

fn question(text: &str) -> Vec<ChatMessage> {
    vec![
        ChatMessage::new(Role::System, "You are a helpful assistant."),
        ChatMessage::new(Role::User, text),
    ]
}

fn request(text: &str, settings: GenerationSettings) -> ChatRequest {
    ChatRequest {
        messages: question(text),
        settings,
        deadline: None,
    }
}

#[test]
fn the_tokenizer_rebuilt_from_gguf_round_trips_and_knows_special_tokens() {
    let gguf = GgufFile::open(&smollm_gguf()).unwrap();
    let tokenizer = tokenizer::from_gguf(gguf.metadata()).unwrap();
    let samples = [
        "Hello, world!",
        "  leading spaces and trailing  ",
        "¿Dónde está la biblioteca? Mañana, a las 9:30.",
        "Emoji 🙂🚀 and CJK 你好，世界",
        "fn main() {\n    println!(\"{}\", 42);\n}\n",
        "Numbers: 3.14159, 2024-11-26, 1,000,000",
        "tabs\tand\r\nwindows newlines",
    ];
    for sample in samples {
        let ids = tokenizer.encode(sample, false).unwrap().get_ids().to_vec();
        let decoded = tokenizer.decode(&ids, false).unwrap();
        assert_eq!(decoded, sample, "round trip of {sample:?} via {ids:?}");
    }
    // Special tokens written in a prompt become their single ids.
    let ids = tokenizer
        .encode("<|im_start|>user", false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(ids[0], 1, "{ids:?}");
    assert_eq!(tokenizer.id_to_token(ids[1]).as_deref(), Some("user"));
    // SmolLM's pre-tokenizer splits every digit.
    let digits = tokenizer.encode("2024", false).unwrap();
    assert_eq!(digits.get_ids().len(), 4, "{:?}", digits.get_tokens());
}

#[test]
fn an_unsupported_architecture_is_named_and_the_supported_ones_listed() {
    use candle_core::quantized::gguf_file::{self, Value};
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("mamba.gguf");
    let mut file = std::fs::File::create(&path).unwrap();
    let architecture = Value::String("mamba".into());
    gguf_file::write(&mut file, &[("general.architecture", &architecture)], &[]).unwrap();
    drop(file);
    let error = Llm::load(&path, &Device::Cpu, 1024)
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("'mamba'"), "{error}");
    for supported in ["llama", "qwen2", "qwen3", "gemma3", "phi3"] {
        assert!(error.contains(supported), "{error}");
    }
}

#[tokio::test]
async fn a_greedy_answer_streams_in_pieces_and_is_reproducible() {
    let engine = ChatEngine::start(load_smollm(2048), 8);
    let ask = || {
        request(
            "What is the capital of France?",
            GenerationSettings::greedy(24),
        )
    };

    let mut stream = engine.chat("tenant-a", ask()).unwrap();
    let mut deltas = Vec::new();
    let summary = loop {
        match stream.next().await.expect("stream ends with Done").unwrap() {
            ChatEvent::Delta(delta) => deltas.push(delta),
            ChatEvent::Done(summary) => break summary,
        }
    };
    let answer: String = deltas.concat();
    assert!(deltas.len() > 3, "streamed in pieces: {deltas:?}");
    assert!(answer.contains("Paris"), "{answer}");
    assert!(summary.stats.prompt_tokens > 10);
    assert!(summary.stats.completion_tokens > 0);
    assert!(summary.stats.ttft_s > 0.0 && summary.stats.gen_tok_s > 0.0);

    let (again, _) = engine
        .chat("tenant-b", ask())
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(again, answer, "greedy decoding is reproducible");
}

#[tokio::test]
async fn stop_strings_max_tokens_and_deadlines_end_generation() {
    let engine = ChatEngine::start(load_smollm(2048), 8);
    let list = "List five fruits, one per line.";

    let settings = GenerationSettings {
        stop: vec!["\n".into()],
        ..GenerationSettings::greedy(100)
    };
    let (text, summary) = engine
        .chat("t", request(list, settings))
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert!(!text.contains('\n'), "{text:?}");
    assert_eq!(summary.stats.finish_reason, FinishReason::Stop);

    let (_, summary) = engine
        .chat("t", request(list, GenerationSettings::greedy(5)))
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(summary.stats.completion_tokens, 5);
    assert_eq!(summary.stats.finish_reason, FinishReason::Length);

    let mut late = request(
        "Write a long story about a dragon.",
        GenerationSettings::greedy(2000),
    );
    late.deadline = Some(Instant::now() + Duration::from_millis(300));
    let (_, summary) = engine.chat("t", late).unwrap().collect().await.unwrap();
    assert_eq!(summary.stats.finish_reason, FinishReason::Deadline);
    // 2000 tokens would take 40 s or more; prefill itself cannot be interrupted.
    assert!(summary.stats.total_s < 10.0, "{}", summary.stats.total_s);
}

#[tokio::test]
async fn a_consumer_that_goes_away_stops_its_generation() {
    let engine = ChatEngine::start(load_smollm(2048), 8);
    let long = || {
        request(
            "Write a very long essay about the sea.",
            GenerationSettings::greedy(1500),
        )
    };
    let mut abandoned = engine.chat("t", long()).unwrap();
    // Wait for the first piece, then hang up.
    assert!(matches!(
        abandoned.next().await,
        Some(Ok(ChatEvent::Delta(_)))
    ));
    drop(abandoned);

    let started = Instant::now();
    let (_, summary) = engine
        .chat("t", request("Say hi.", GenerationSettings::greedy(4)))
        .unwrap()
        .collect()
        .await
        .unwrap();
    // 1500 tokens would take ~30 s (more on a busy machine); the worker was free long before.
    assert!(
        summary.queue_wait_s < 10.0,
        "waited {} s",
        summary.queue_wait_s
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test]
async fn a_full_queue_refuses_at_once_with_a_retry_estimate() {
    let engine = ChatEngine::start(load_smollm(2048), 1);
    let long = || request("Write a long poem.", GenerationSettings::greedy(200));
    let mut running = engine.chat("a", long()).unwrap();
    assert!(matches!(
        running.next().await,
        Some(Ok(ChatEvent::Delta(_)))
    ));
    let _queued = engine.chat("b", long()).unwrap();
    // B already waits: its second job is refused at once (a tenant holds only its share).
    // `chat` is not async, so "at once" holds by construction: no clock needed.
    match engine.chat("b", long()) {
        Err(InferenceError::Overloaded { retry_after }) => {
            assert!(retry_after >= Duration::from_secs(1));
        }
        Err(other) => panic!("expected overload, got {other}"),
        Ok(_) => panic!("expected overload, got a stream"),
    }
}

#[tokio::test]
async fn long_conversations_are_trimmed_to_the_context_and_huge_messages_refused() {
    let engine = ChatEngine::start(load_smollm(256), 4);
    let mut messages = vec![ChatMessage::new(Role::System, "Be brief.")];
    for turn in 0..12 {
        messages.push(ChatMessage::new(
            Role::User,
            format!("Tell me fact number {turn} about the ocean."),
        ));
        messages.push(ChatMessage::new(
            Role::Assistant,
            "The ocean covers most of the planet and holds most of its water.".to_string(),
        ));
    }
    messages.push(ChatMessage::new(
        Role::User,
        "Thanks! And one about rivers?",
    ));
    let chat = ChatRequest {
        messages,
        settings: GenerationSettings::greedy(16),
        deadline: None,
    };
    let (_, summary) = engine.chat("t", chat).unwrap().collect().await.unwrap();
    assert!(summary.dropped_messages >= 2, "{summary:?}");
    assert!(summary.stats.prompt_tokens + 16 <= 256, "{summary:?}");

    let huge = request(&"word ".repeat(600), GenerationSettings::greedy(16));
    let error = engine.chat("t", huge).unwrap().collect().await.unwrap_err();
    assert!(
        matches!(error, InferenceError::ContextOverflow { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("context"), "{error}");
}

#[test]
fn minilm_embeddings_rank_related_texts_higher_and_batching_changes_nothing() {
    let embedder =
        Embedder::load(&minilm_dir(), &Device::Cpu, &EmbedderOptions::default()).unwrap();
    assert_eq!(embedder.info.dimensions, 384);
    assert_eq!(embedder.info.max_tokens, 256);
    let texts: Vec<String> = [
        "cat",
        "kitten",
        "stock market",
        "The quick brown fox jumps over the lazy dog near the riverbank.",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let vectors = embedder.embed(&texts, EmbedKind::Document).unwrap();
    for vector in &vectors {
        let norm: f32 = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "unit length: {norm}");
    }
    let cat_kitten = cosine(&vectors[0], &vectors[1]);
    let cat_stocks = cosine(&vectors[0], &vectors[2]);
    assert!(cat_kitten > 0.5, "{cat_kitten}");
    assert!(
        cat_kitten > cat_stocks + 0.3,
        "cat~kitten {cat_kitten} vs cat~stocks {cat_stocks}"
    );

    // Padding inside a batch must not change any vector.
    for (i, text) in texts.iter().enumerate() {
        let alone = embedder
            .embed(std::slice::from_ref(text), EmbedKind::Document)
            .unwrap();
        let similarity = cosine(&alone[0], &vectors[i]);
        assert!(similarity > 0.9999, "{text}: {similarity}");
    }
}

/// Writes a 2-layer, 64-wide nomic-bert with random weights, MiniLM's WordPiece tokenizer, and
/// the sentence-transformers files that ask for query/document prompts.
fn tiny_nomic(dir: &std::path::Path) {
    let config = serde_json::json!({
        "model_type": "nomic_bert", "vocab_size": 30528, "n_embd": 64, "n_head": 4,
        "n_layer": 2, "n_inner": 128, "n_positions": 2048, "type_vocab_size": 2,
        "layer_norm_epsilon": 1e-12, "rotary_emb_fraction": 1.0, "rotary_emb_base": 1000.0,
        "rotary_emb_interleaved": false, "qkv_proj_bias": false, "mlp_fc1_bias": false,
        "mlp_fc2_bias": false, "activation_function": "swiglu", "prenorm": false
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let parsed: candle_transformers::models::nomic_bert::Config =
        serde_json::from_value(config).unwrap();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    candle_transformers::models::nomic_bert::NomicBertModel::load(vb, &parsed).unwrap();
    varmap.save(dir.join("model.safetensors")).unwrap();
    std::fs::copy(
        minilm_dir().join("tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
}

#[test]
fn nomic_bert_loads_uses_its_prefixes_and_truncates_matryoshka_style() {
    let tmp = tempfile::tempdir().unwrap();
    tiny_nomic(tmp.path());
    let embedder = Embedder::load(tmp.path(), &Device::Cpu, &EmbedderOptions::default()).unwrap();
    assert_eq!(embedder.info.architecture, "nomic_bert");
    assert_eq!(embedder.info.dimensions, 64);
    let text = vec!["how do I sleep better".to_string()];
    let as_query = embedder.embed(&text, EmbedKind::Query).unwrap();
    let as_document = embedder.embed(&text, EmbedKind::Document).unwrap();
    assert_eq!(as_query[0].len(), 64);
    assert!(
        cosine(&as_query[0], &as_document[0]) < 0.9999,
        "search_query: and search_document: prefixes give different vectors"
    );

    let short = Embedder::load(
        tmp.path(),
        &Device::Cpu,
        &EmbedderOptions {
            dimensions: Some(16),
            ..EmbedderOptions::default()
        },
    )
    .unwrap();
    let truncated = short.embed(&text, EmbedKind::Query).unwrap();
    assert_eq!(truncated[0].len(), 16);
    let norm: f32 = truncated[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    assert!(
        Embedder::load(
            tmp.path(),
            &Device::Cpu,
            &EmbedderOptions {
                dimensions: Some(65),
                ..EmbedderOptions::default()
            }
        )
        .is_err()
    );
}

#[test]
fn an_unknown_embedder_architecture_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    tiny_nomic(tmp.path());
    let mut config: HashMap<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("config.json")).unwrap())
            .unwrap();
    config.insert("model_type".into(), "xlm-roberta".into());
    std::fs::write(
        tmp.path().join("config.json"),
        serde_json::to_string(&config).unwrap(),
    )
    .unwrap();
    let error = Embedder::load(tmp.path(), &Device::Cpu, &EmbedderOptions::default())
        .err()
        .expect("refused")
        .to_string();
    assert!(
        error.contains("xlm-roberta") && error.contains("nomic_bert"),
        "{error}"
    );
}

/// Writes a 2-layer, 64-wide random-weight GGUF of `architecture`, with SmolLM2's vocabulary
/// (tokenizer metadata copied, pre-tokenizer as the architecture's own models name it).
fn tiny_gguf(dir: &std::path::Path, architecture: &str) -> std::path::PathBuf {
    use candle_core::Tensor;
    use candle_core::quantized::gguf_file::{self, Value};
    use candle_core::quantized::{GgmlDType, QTensor};

    let (hidden, heads, kv_heads, head_dim, ffn, layers) =
        (64usize, 4usize, 2usize, 16usize, 128usize, 2);
    let source = GgufFile::open(&smollm_gguf()).unwrap();
    let vocab = source
        .metadata()
        .strings("tokenizer.ggml.tokens")
        .unwrap()
        .len();
    let mut metadata: Vec<(String, Value)> = source
        .content
        .metadata
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer.") && *k != "tokenizer.chat_template")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if architecture.starts_with("qwen") {
        metadata.retain(|(k, _)| k != "tokenizer.ggml.pre");
        metadata.push(("tokenizer.ggml.pre".into(), Value::String("qwen2".into())));
    }
    let a = |key: &str| format!("{architecture}.{key}");
    let u = |n: usize| Value::U32(n as u32);
    metadata.extend([
        (
            "general.architecture".into(),
            Value::String(architecture.into()),
        ),
        (a("attention.head_count"), u(heads)),
        (a("attention.head_count_kv"), u(kv_heads)),
        (a("attention.layer_norm_rms_epsilon"), Value::F32(1e-6)),
        (a("attention.key_length"), u(head_dim)),
        (a("attention.value_length"), u(head_dim)),
        (a("attention.sliding_window"), u(512)),
        (a("block_count"), u(layers)),
        (a("context_length"), u(512)),
        (a("embedding_length"), u(hidden)),
        (a("feed_forward_length"), u(ffn)),
        (a("rope.freq_base"), Value::F32(10000.0)),
        (a("rope.dimension_count"), u(head_dim)),
    ]);

    let random = |shape: &[usize]| Tensor::randn(0f32, 0.05, shape, &Device::Cpu).unwrap();
    let ones = |n: usize| Tensor::ones(n, DType::F32, &Device::Cpu).unwrap();
    let mut tensors: Vec<(String, Tensor)> = vec![
        ("token_embd.weight".into(), random(&[vocab, hidden])),
        ("output_norm.weight".into(), ones(hidden)),
        ("output.weight".into(), random(&[vocab, hidden])),
    ];
    for layer in 0..layers {
        let p = |name: &str| format!("blk.{layer}.{name}");
        tensors.push((p("attn_norm.weight"), ones(hidden)));
        tensors.push((p("ffn_norm.weight"), ones(hidden)));
        tensors.push((p("attn_output.weight"), random(&[hidden, heads * head_dim])));
        tensors.push((p("ffn_down.weight"), random(&[hidden, ffn])));
        if architecture == "phi3" {
            tensors.push((
                p("attn_qkv.weight"),
                random(&[(heads + 2 * kv_heads) * head_dim, hidden]),
            ));
            tensors.push((p("ffn_up.weight"), random(&[2 * ffn, hidden])));
            continue;
        }
        tensors.push((p("attn_q.weight"), random(&[heads * head_dim, hidden])));
        tensors.push((p("attn_k.weight"), random(&[kv_heads * head_dim, hidden])));
        tensors.push((p("attn_v.weight"), random(&[kv_heads * head_dim, hidden])));
        tensors.push((p("ffn_gate.weight"), random(&[ffn, hidden])));
        tensors.push((p("ffn_up.weight"), random(&[ffn, hidden])));
        match architecture {
            "qwen2" => {
                tensors.push((p("attn_q.bias"), random(&[heads * head_dim])));
                tensors.push((p("attn_k.bias"), random(&[kv_heads * head_dim])));
                tensors.push((p("attn_v.bias"), random(&[kv_heads * head_dim])));
            }
            "qwen3" | "gemma3" => {
                tensors.push((p("attn_q_norm.weight"), ones(head_dim)));
                tensors.push((p("attn_k_norm.weight"), ones(head_dim)));
                if architecture == "gemma3" {
                    tensors.push((p("post_attention_norm.weight"), ones(hidden)));
                    tensors.push((p("post_ffw_norm.weight"), ones(hidden)));
                }
            }
            _ => {}
        }
    }
    let quantized: Vec<(String, QTensor)> = tensors
        .iter()
        .map(|(name, t)| (name.clone(), QTensor::quantize(t, GgmlDType::F32).unwrap()))
        .collect();
    let path = dir.join(format!("tiny-{architecture}.gguf"));
    let mut file = std::fs::File::create(&path).unwrap();
    let metadata_refs: Vec<(&str, &Value)> =
        metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> =
        quantized.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut file, &metadata_refs, &tensor_refs).unwrap();
    path
}

#[tokio::test]
async fn qwen2_qwen3_gemma3_and_phi3_files_load_and_generate() {
    let tmp = tempfile::tempdir().unwrap();
    for architecture in ["qwen2", "qwen3", "gemma3", "phi3"] {
        let path = tiny_gguf(tmp.path(), architecture);
        let llm =
            Llm::load(&path, &Device::Cpu, 4096).unwrap_or_else(|e| panic!("{architecture}: {e}"));
        assert_eq!(llm.info.architecture, architecture);
        assert_eq!(
            llm.info.context_length, 512,
            "{architecture}: the file's context length"
        );
        assert_eq!(llm.info.chat_template, "fallback");
        let engine = ChatEngine::start(llm, 2);
        let settings = GenerationSettings {
            repeat_penalty: 1.0,
            ..GenerationSettings::greedy(6)
        };
        let (_, summary) = engine
            .chat("t", request("Hello there", settings))
            .unwrap()
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{architecture}: {e}"));
        assert!(
            summary.stats.completion_tokens >= 1,
            "{architecture}: {summary:?}"
        );
        assert!(
            summary.stats.prompt_tokens > 5,
            "{architecture}: {summary:?}"
        );
    }
}

#[test]
fn rerankers_score_pairs_alike_on_our_kernels_and_candles_in_any_batch() {
    use companero::inference::llm::Kernels;
    use companero::inference::rerank::Reranker;
    let query = "how do I keep a morning routine";
    let passages: Vec<String> = [
        "Wake at the same time every day, even at weekends.",
        "Our refund policy covers the first thirty days.",
        "A routine sticks when it is small: start with two minutes of stretching after you wake \
         up, then add one habit a week.",
        "Invoices are sent on the first of the month.",
    ]
    .map(String::from)
    .to_vec();
    for architecture in ["bert", "xlm-roberta"] {
        let tmp = tempfile::tempdir().unwrap();
        tiny_reranker(tmp.path(), architecture);
        let ours = Reranker::load(tmp.path(), &Device::Cpu, Kernels::Auto).unwrap();
        let reference = Reranker::load(tmp.path(), &Device::Cpu, Kernels::Candle).unwrap();
        assert_eq!(ours.info.architecture, architecture);
        assert_eq!(reference.kernels(), "candle");
        let scores = ours.score(query, &passages).unwrap();
        let expected = reference.score(query, &passages).unwrap();
        assert_eq!(scores.len(), passages.len());
        for (a, b) in scores.iter().zip(&expected) {
            assert!(
                (a - b).abs() < 2e-3,
                "{architecture}: {scores:?} vs {expected:?}"
            );
        }
        // Different passages score differently, and a passage's score does not depend on its
        // batch (lengths differ, so candle pads and our kernels do not).
        assert!(
            scores.iter().any(|s| (s - scores[0]).abs() > 1e-4),
            "{scores:?}"
        );
        let alone = ours.score(query, &passages[2..3]).unwrap();
        assert!(
            (alone[0] - scores[2]).abs() < 1e-3,
            "{alone:?} vs {scores:?}"
        );
        // A passage longer than the model's positions is cut, not refused.
        let long = vec!["word ".repeat(2000)];
        assert_eq!(ours.score(query, &long).unwrap().len(), 1);
    }
    let tmp = tempfile::tempdir().unwrap();
    tiny_reranker(tmp.path(), "bert");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("config.json")).unwrap())
            .unwrap();
    config["model_type"] = "deberta-v2".into();
    std::fs::write(tmp.path().join("config.json"), config.to_string()).unwrap();
    let error = Reranker::load(tmp.path(), &Device::Cpu, Kernels::Auto)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        error.contains("deberta-v2") && error.contains("xlm-roberta"),
        "{error}"
    );
}
