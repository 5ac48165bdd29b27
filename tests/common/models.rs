//! Model files the tests write themselves: tiny random-weight models for the code paths no small
//! real model covers.

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};

use super::minilm_dir;

/// Writes a 2-layer, 64-wide cross-encoder with random weights in Hugging Face's layout:
/// `BertForSequenceClassification` (`bert.*`, `bert.pooler.dense`, `classifier`) or
/// `XLMRobertaForSequenceClassification` (`roberta.*`, `classifier.dense`, `classifier.out_proj`),
/// with MiniLM's WordPiece tokenizer (its pair template gives BERT's token types).
pub fn tiny_reranker(dir: &std::path::Path, architecture: &str) {
    let roberta = architecture == "xlm-roberta";
    let config = serde_json::json!({
        "architectures": [if roberta { "XLMRobertaForSequenceClassification" }
                          else { "BertForSequenceClassification" }],
        "model_type": architecture, "vocab_size": 30522, "hidden_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": if roberta { 514 } else { 512 },
        "type_vocab_size": if roberta { 1 } else { 2 }, "initializer_range": 0.02,
        "layer_norm_eps": 1e-12, "pad_token_id": if roberta { 1 } else { 0 },
        "position_embedding_type": "absolute", "num_labels": 1
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    if roberta {
        let parsed: candle_transformers::models::xlm_roberta::Config =
            serde_json::from_value(config).unwrap();
        candle_transformers::models::xlm_roberta::XLMRobertaForSequenceClassification::new(
            1, &parsed, vb,
        )
        .unwrap();
    } else {
        let parsed: candle_transformers::models::bert::Config =
            serde_json::from_value(config).unwrap();
        candle_transformers::models::bert::BertModel::load(vb.pp("bert"), &parsed).unwrap();
        candle_nn::linear(64, 64, vb.pp("bert.pooler.dense")).unwrap();
        candle_nn::linear(64, 1, vb.pp("classifier")).unwrap();
    }
    // Seeded weights, so every run compares the same model (candle's own initialisation is not
    // seeded, and some random draws put our kernels and candle's further apart than others).
    // Matrices are uniform in ±1/√fan-in, as candle initialises linear layers; biases, which
    // candle starts at zero, get a spread (σ = 0.5) so outputs differ by input; layer norms
    // keep their ones.
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let dims = var.shape().dims().to_vec();
        let bound = if name.ends_with("bias") {
            0.5 * 3f32.sqrt()
        } else if dims.len() >= 2 {
            1.0 / (*dims.last().unwrap() as f32).sqrt()
        } else {
            continue;
        };
        let values: Vec<f32> = (0..var.elem_count())
            .map(|_| rng.gen_range(-bound..bound))
            .collect();
        var.set(&candle_core::Tensor::from_vec(values, dims, &Device::Cpu).unwrap())
            .unwrap();
    }
    drop(data);
    varmap.save(dir.join("model.safetensors")).unwrap();
    std::fs::copy(
        minilm_dir().join("tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
}
