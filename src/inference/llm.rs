//! Chat models from GGUF files: the architecture comes from the file's metadata, the weights load
//! into candle's quantized model for it, and tokenizer and chat template come along.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_transformers::models::{
    quantized_gemma3, quantized_llama, quantized_phi3, quantized_qwen2, quantized_qwen3,
};

use super::InferenceError;
use super::chat_template::{self, ChatTemplate};
use super::gguf::GgufFile;
use super::tokenizer::{self, ChatTokenizer};

/// candle's quantized llama precomputes rotary tables for this many positions.
const LLAMA_MAX_POSITIONS: usize = quantized_llama::MAX_SEQ_LEN;
/// The KV cache grows with the conversation; cap it so a 128k-context model cannot exhaust a small
/// machine's memory. Prompts are trimmed to fit (see `engine`).
pub const DEFAULT_MAX_CONTEXT: usize = 8192;

enum Weights {
    Llama(quantized_llama::ModelWeights),
    Qwen2(quantized_qwen2::ModelWeights),
    Qwen3(quantized_qwen3::ModelWeights),
    Gemma3(quantized_gemma3::ModelWeights),
    Phi3(quantized_phi3::ModelWeights),
}

/// Facts about a loaded chat model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LlmInfo {
    pub name: String,
    pub path: PathBuf,
    pub architecture: String,
    /// Tokens of prompt plus answer that one call may use.
    pub context_length: usize,
    pub chat_template: &'static str,
    pub load_seconds: f64,
}

/// A chat model ready to run: weights, tokenizer, chat template and stop tokens.
pub struct Llm {
    weights: Weights,
    pub tokenizer: ChatTokenizer,
    pub template: ChatTemplate,
    pub stop_tokens: HashSet<u32>,
    pub device: Device,
    pub info: LlmInfo,
}

impl Llm {
    pub fn load(path: &Path, device: &Device, max_context: usize) -> Result<Llm, InferenceError> {
        let started = Instant::now();
        let mut gguf = GgufFile::open(path)?;
        let metadata = gguf.metadata();
        let architecture = metadata.architecture()?.to_string();
        let tokenizer = tokenizer::load(path, metadata)?;
        let template_text = metadata
            .string("tokenizer.chat_template")
            .map(str::to_string)
            .or_else(|| chat_template::template_beside(path));
        let token_text = |id: Option<u32>| {
            id.and_then(|id| tokenizer.token_text(id))
                .unwrap_or_default()
        };
        let template = ChatTemplate::new(
            template_text,
            |token| tokenizer.token_id(token).is_some(),
            token_text(tokenizer.bos_id),
            token_text(tokenizer.eos_id),
        )?;
        let mut stop_tokens: HashSet<u32> = tokenizer.eos_id.into_iter().collect();
        stop_tokens.extend(
            chat_template::END_OF_TURN_TOKENS
                .iter()
                .filter_map(|token| tokenizer.token_id(token)),
        );
        let trained_context = metadata.context_length(&architecture).unwrap_or(2048);
        let name = metadata
            .name()
            .map(str::to_string)
            .unwrap_or_else(|| file_stem(path));

        let content = gguf.content;
        let reader = &mut gguf.reader;
        let load_error = |e: candle_core::Error| {
            InferenceError::Load(format!("cannot load {}: {e}", path.display()))
        };
        let (weights, architecture_limit) = match architecture.as_str() {
            "llama" => (
                Weights::Llama(
                    quantized_llama::ModelWeights::from_gguf(content, reader, device)
                        .map_err(load_error)?,
                ),
                LLAMA_MAX_POSITIONS,
            ),
            "qwen2" => (
                Weights::Qwen2(
                    quantized_qwen2::ModelWeights::from_gguf(content, reader, device)
                        .map_err(load_error)?,
                ),
                usize::MAX,
            ),
            "qwen3" => (
                Weights::Qwen3(
                    quantized_qwen3::ModelWeights::from_gguf(content, reader, device)
                        .map_err(load_error)?,
                ),
                usize::MAX,
            ),
            "gemma3" => (
                Weights::Gemma3(
                    quantized_gemma3::ModelWeights::from_gguf(content, reader, device)
                        .map_err(load_error)?,
                ),
                quantized_gemma3::MAX_SEQ_LEN,
            ),
            "phi3" => (
                Weights::Phi3(
                    quantized_phi3::ModelWeights::from_gguf(false, content, reader, device)
                        .map_err(load_error)?,
                ),
                usize::MAX,
            ),
            other => unreachable!("architecture() admitted {other}"),
        };
        let context_length = trained_context.min(architecture_limit).min(max_context);
        let info = LlmInfo {
            name,
            path: path.to_path_buf(),
            architecture,
            context_length,
            chat_template: template.source,
            load_seconds: started.elapsed().as_secs_f64(),
        };
        Ok(Llm {
            weights,
            tokenizer,
            template,
            stop_tokens,
            device: device.clone(),
            info,
        })
    }

    /// Runs `tokens` at positions `position..`, returning the next-token logits as a vector.
    /// Position 0 starts a new sequence (the KV cache is reset).
    pub fn forward(&mut self, tokens: &[u32], position: usize) -> Result<Tensor, InferenceError> {
        if position == 0 {
            self.reset();
        }
        let input = Tensor::new(tokens, &self.device)
            .and_then(|t| t.unsqueeze(0))
            .map_err(InferenceError::from)?;
        let logits = match &mut self.weights {
            Weights::Llama(m) => m.forward(&input, position),
            Weights::Qwen2(m) => m.forward(&input, position),
            Weights::Qwen3(m) => m.forward(&input, position),
            Weights::Gemma3(m) => m.forward(&input, position),
            Weights::Phi3(m) => m.forward(&input, position),
        }?;
        Ok(logits.flatten_all()?.to_dtype(candle_core::DType::F32)?)
    }

    /// Forgets the cached attention state. gemma3 and phi3 reset themselves at position 0.
    fn reset(&mut self) {
        match &mut self.weights {
            Weights::Llama(m) => m.clear_kv_cache(),
            Weights::Qwen2(m) => m.clear_kv_cache(),
            Weights::Qwen3(m) => m.clear_kv_cache(),
            Weights::Gemma3(_) | Weights::Phi3(_) => {}
        }
    }
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into())
}
