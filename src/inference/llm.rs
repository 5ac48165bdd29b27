//! Chat models from GGUF files: the architecture comes from the file's metadata, and tokenizer and
//! chat template come along. On x86-64 CPUs, llama and qwen2 models in Q4_0/Q4_1/Q8_0 run on
//! Compañero's own kernels ([`super::cpu_llama`]), which also keep attention state between
//! requests; everything else runs on candle's quantized models (the reference path).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_transformers::models::{
    quantized_gemma3, quantized_llama, quantized_phi3, quantized_qwen2, quantized_qwen3,
};

use super::InferenceError;
use super::chat_template::{self, ChatTemplate};
use super::cpu_llama::{self, CpuLlama};
use super::gguf::GgufFile;
use super::kernels::Isa;
use super::tokenizer::{self, ChatTokenizer};

/// candle's quantized llama precomputes rotary tables for this many positions.
const LLAMA_MAX_POSITIONS: usize = quantized_llama::MAX_SEQ_LEN;
/// The KV cache grows with the conversation; cap it so a 128k-context model cannot exhaust a small
/// machine's memory. Prompts are trimmed to fit (see `engine`).
pub const DEFAULT_MAX_CONTEXT: usize = 8192;
/// Attention state kept for reuse by follow-up prompts, by default.
pub const DEFAULT_PROMPT_CACHE_MB: usize = 256;

/// Which implementation runs the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Kernels {
    /// Compañero's own CPU kernels where the model and CPU allow, candle otherwise.
    #[default]
    Auto,
    /// candle's quantized models only (the reference the fast path is tested against).
    Candle,
}

#[derive(Debug, Clone)]
pub struct LlmOptions {
    pub max_context: usize,
    pub kernels: Kernels,
    /// Memory for attention state kept between requests (own kernels only).
    pub prompt_cache_mb: usize,
}

impl Default for LlmOptions {
    fn default() -> LlmOptions {
        LlmOptions {
            max_context: DEFAULT_MAX_CONTEXT,
            kernels: Kernels::Auto,
            prompt_cache_mb: DEFAULT_PROMPT_CACHE_MB,
        }
    }
}

enum Weights {
    Cpu(Box<CpuLlama>),
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
    /// `compañero` (own CPU kernels, with the instruction set), `candle` or `remote`.
    pub kernels: String,
    /// The OpenAI base URL of the server that runs it, for a remote backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
}

impl LlmInfo {
    /// The name the OpenAI-compatible API lists the model by: its catalog name when it was
    /// installed from the catalog (`models/<name>/`), else its file name without `.gguf`.
    pub fn id(&self) -> String {
        if self.remote.is_some() {
            return self.name.clone();
        }
        self.path
            .parent()
            .and_then(|dir| dir.file_name())
            .map(|dir| dir.to_string_lossy())
            .filter(|dir| super::catalog::find(dir).is_some())
            .map(|dir| dir.into_owned())
            .unwrap_or_else(|| file_stem(&self.path))
    }
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
        Llm::load_with(
            path,
            device,
            &LlmOptions {
                max_context,
                ..LlmOptions::default()
            },
        )
    }

    pub fn load_with(
        path: &Path,
        device: &Device,
        options: &LlmOptions,
    ) -> Result<Llm, InferenceError> {
        let max_context = options.max_context;
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

        let isa = Isa::detect();
        let own_kernels = options.kernels == Kernels::Auto
            && device.is_cpu()
            && isa.is_accelerated()
            && match cpu_llama::unsupported_reason(&gguf, &architecture) {
                None => true,
                Some(reason) => {
                    tracing::info!(%reason, "this model runs on candle's kernels");
                    false
                }
            };
        if own_kernels {
            let model = CpuLlama::load(
                &mut gguf,
                &architecture,
                options.prompt_cache_mb * 1024 * 1024,
            )?;
            let info = LlmInfo {
                name,
                path: path.to_path_buf(),
                context_length: trained_context.min(max_context),
                architecture,
                chat_template: template.source,
                load_seconds: started.elapsed().as_secs_f64(),
                kernels: format!("companero-{isa:?}").to_lowercase(),
                remote: None,
            };
            return Ok(Llm {
                weights: Weights::Cpu(Box::new(model)),
                tokenizer,
                template,
                stop_tokens,
                device: device.clone(),
                info,
            });
        }

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
            kernels: "candle".into(),
            remote: None,
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
        if let Weights::Cpu(model) = &mut self.weights {
            let logits = model.forward(tokens, position)?;
            let len = logits.len();
            return Ok(Tensor::from_vec(logits, len, &self.device)?);
        }
        if position == 0 {
            self.reset();
        }
        let input = Tensor::new(tokens, &self.device)
            .and_then(|t| t.unsqueeze(0))
            .map_err(InferenceError::from)?;
        let logits = match &mut self.weights {
            Weights::Cpu(_) => unreachable!("handled above"),
            Weights::Llama(m) => m.forward(&input, position),
            Weights::Qwen2(m) => m.forward(&input, position),
            Weights::Qwen3(m) => m.forward(&input, position),
            Weights::Gemma3(m) => m.forward(&input, position),
            Weights::Phi3(m) => m.forward(&input, position),
        }?;
        Ok(logits.flatten_all()?.to_dtype(candle_core::DType::F32)?)
    }

    /// Next-token logits after a whole prompt, reusing the attention state of an earlier prompt
    /// of the same `owner` that shares its beginning, where the model keeps one. Returns the logits and how many
    /// prompt tokens were reused.
    pub fn start(
        &mut self,
        owner: &str,
        prompt: &[u32],
    ) -> Result<(Tensor, usize), InferenceError> {
        if let Weights::Cpu(model) = &mut self.weights {
            let (logits, reused) = model.start(owner, prompt)?;
            let len = logits.len();
            return Ok((Tensor::from_vec(logits, len, &self.device)?, reused));
        }
        Ok((self.forward(prompt, 0)?, 0))
    }

    /// Forgets the attention state kept for `owner` (candle's models keep only the last
    /// request's, which is reset as well).
    pub fn forget(&mut self, owner: &str) {
        match &mut self.weights {
            Weights::Cpu(model) => model.forget(owner),
            _ => self.reset(),
        }
    }

    /// Forgets the cached attention state. gemma3 and phi3 reset themselves at position 0.
    fn reset(&mut self) {
        match &mut self.weights {
            Weights::Cpu(_) => {}
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
