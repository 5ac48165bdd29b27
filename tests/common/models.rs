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
    // Random biases start at zero; give every tensor a spread so outputs differ by input.
    for (name, var) in varmap.data().lock().unwrap().iter() {
        if name.ends_with("bias") {
            let noise = candle_core::Tensor::randn(0f32, 0.5, var.shape(), &Device::Cpu).unwrap();
            var.set(&noise).unwrap();
        }
    }
    varmap.save(dir.join("model.safetensors")).unwrap();
    std::fs::copy(
        minilm_dir().join("tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
}
