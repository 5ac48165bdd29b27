//! Compañero's own CPU kernels against the reference (candle's models) on the real test models:
//! the same greedy choices, the same embeddings, and a prompt cache that changes nothing but time.

mod common;

use candle_core::Device;
use common::smollm_gguf;
use companero::inference::chat_template::{ChatMessage, Role};
use companero::inference::chat_engine::fit_prompt;
use companero::inference::llm::{Kernels, Llm, LlmOptions};

fn load(kernels: Kernels) -> Llm {
    let options = LlmOptions {
        kernels,
        ..LlmOptions::default()
    };
    Llm::load_with(&smollm_gguf(), &Device::Cpu, &options).expect("SmolLM2 loads")
}

fn prompt(llm: &Llm, text: &str) -> Vec<u32> {
    let messages = [
        ChatMessage::new(Role::System, "You are a helpful assistant."),
        ChatMessage::new(Role::User, text),
    ];
    fit_prompt(llm, &messages, 64).unwrap().0
}

fn ranked(logits: &[f32]) -> (usize, f32) {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    (order[0], logits[order[0]] - logits[order[1]])
}

const PROMPTS: [&str; 3] = [
    "What should a runner do after missing a week of training?",
    "Give me three tips for sleeping better before an exam.",
    "Explain in two sentences why strength training helps older adults.",
];

#[test]
fn experiment() {
    let mut reference = load(Kernels::Candle);
    let mut own = load(Kernels::Auto);
    assert!(own.info.kernels.starts_with("companero"), "{}", own.info.kernels);
    for token in [1u32, 504, 30000] {
        let r = reference.forward(&[token], 0).unwrap().to_vec1::<f32>().unwrap();
        let o = own.forward(&[token], 0).unwrap().to_vec1::<f32>().unwrap();
        let diff = r.iter().zip(&o).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let range = r.iter().fold(0f32, |a, b| a.max(b.abs()));
        println!("single token {token}: worst diff {diff}, max |logit| {range}");
        let isa = std::env::var("COMPANERO_ISA").unwrap_or_default();
        std::fs::write(format!("/tmp/own-{isa}-{token}.txt"), format!("{o:?}")).unwrap();
        let r2 = reference.forward(&[token, 17], 0).unwrap().to_vec1::<f32>().unwrap();
        let o2 = own.forward(&[token, 17], 0).unwrap().to_vec1::<f32>().unwrap();
        let o3 = own.forward(&[17], 1).unwrap().to_vec1::<f32>().unwrap();
        let diff = r2.iter().zip(&o2).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let diff3 = o3.iter().zip(&o2).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        println!("two tokens: worst diff {diff}; own prefill vs own step {diff3}");
    }
    for text in PROMPTS {
        let tokens = prompt(&reference, text);
        let mut ref_logits = reference.forward(&tokens, 0).unwrap().to_vec1::<f32>().unwrap();
        let (mut own_logits, _) = own.start(&tokens).unwrap();
        let mut own_logits = own_logits.to_vec1::<f32>().unwrap();
        let mut position = tokens.len();
        let mut worst = 0f32;
        for step in 0..48 {
            let (r, margin) = ranked(&ref_logits);
            let (o, _) = ranked(&own_logits);
            let diff = ref_logits.iter().zip(&own_logits).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            worst = worst.max(diff);
            if r != o {
                println!("{text}: step {step}: ref {r} own {o} margin {margin}");
            }
            ref_logits = reference.forward(&[r as u32], position).unwrap().to_vec1().unwrap();
            own_logits = own.forward(&[r as u32], position).unwrap().to_vec1().unwrap();
            position += 1;
        }
        println!("{text}: worst logit diff {worst}");
    }
}

/// Texts of the kinds a knowledge base holds: short queries, long passages (truncated to 256
/// tokens), lists, numbers, other languages and code.
fn varied_texts() -> Vec<String> {
    let passage = companero::bench::DEFAULT_TEXT;
    let words: Vec<&str> = passage.split_whitespace().collect();
    let mut texts: Vec<String> = vec![
        "cat".into(),
        "How do I reset my password?".into(),
        "Refunds are issued within 14 days of the request, minus a 5% processing fee.".into(),
        "- warm up 10 min\n- 4 x 800 m at 10k pace\n- cool down".into(),
        "¿Cuántas veces por semana debo entrenar si empiezo a correr?".into(),
        "fn main() { println!(\"{}\", 40 + 2); }".into(),
        "ERROR 502 BAD GATEWAY upstream timed out (110: Connection timed out)".into(),
    ];
    for start in (0..words.len()).step_by(97).take(9) {
        texts.push(words[start..(start + 220).min(words.len())].join(" "));
    }
    texts
}

#[test]
fn own_embeddings_match_candles_within_a_cosine_of_0_999() {
    use companero::inference::embed::{EmbedKind, Embedder, EmbedderOptions, cosine};
    let load = |kernels| {
        let options = EmbedderOptions {
            kernels,
            ..EmbedderOptions::default()
        };
        Embedder::load(&common::minilm_dir(), &Device::Cpu, &options).unwrap()
    };
    let (reference, own) = (load(Kernels::Candle), load(Kernels::Auto));
    assert!(own.kernels().starts_with("companero"), "{}", own.kernels());
    let texts = varied_texts();
    let expected = reference.embed(&texts, EmbedKind::Document).unwrap();
    for batch in [1, 32] {
        let got = own.embed_batched(&texts, EmbedKind::Document, batch).unwrap();
        let mut worst = 1f32;
        for (text, (a, b)) in texts.iter().zip(expected.iter().zip(&got)) {
            let similarity = cosine(a, b);
            worst = worst.min(similarity);
            assert!(similarity >= 0.999, "batch {batch}: {similarity} for {text:.40}");
        }
        println!("batch {batch}: worst cosine {worst}");
    }
}
