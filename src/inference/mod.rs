//! In-process inference: the chat LLM (GGUF, candle's quantized models) and the sentence
//! embedder (safetensors BERT-family), each on its own thread behind a fair, bounded queue.
//!
//! - [`llm`], [`tokenizer`], [`chat_template`], [`generate`]: loading and running a chat model;
//! - [`embed`]: loading and running an embedder;
//! - [`chat_engine`], [`embed_engine`], [`queue`]: the threads and queues in front of them;
//! - [`remote`]: an OpenAI-compatible server that runs either model instead (`--llm-url`,
//!   `--embed-url`);
//! - [`runtime`]: which models the server has, and their state for `/readyz`;
//! - [`catalog`], [`store`]: named models, and the models folder of the data directory.

pub mod catalog;
pub mod chat_engine;
pub mod chat_template;
pub mod cpu_bert;
pub mod cpu_llama;
pub mod downloads;
pub mod embed;
pub mod embed_engine;
pub mod generate;
pub mod gguf;
pub mod kernels;
pub mod kv_cache;
pub mod llm;
pub mod queue;
pub mod remote;
pub mod rerank;
pub mod rerank_engine;
pub mod runtime;
pub mod store;
pub mod tokenizer;

use std::time::Duration;

use candle_core::Device;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error("{0}")]
    Load(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{0}")]
    Template(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error(
        "the conversation needs {prompt_tokens} tokens but the model's context holds \
         {context_length}; shorten the message"
    )]
    ContextOverflow {
        prompt_tokens: usize,
        context_length: usize,
    },
    #[error("the model is busy; retry in {} s", retry_after.as_secs().max(1))]
    Overloaded { retry_after: Duration },
    #[error("the inference engine is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Model(String),
    /// No model of this kind is loaded; the message says how to get one.
    #[error("{0}")]
    NotReady(String),
    /// The remote inference server failed or could not be reached; its message is kept.
    #[error("{0}")]
    Unavailable(String),
}

impl From<candle_core::Error> for InferenceError {
    fn from(error: candle_core::Error) -> InferenceError {
        InferenceError::Model(error.to_string())
    }
}

/// Where models run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Cpu,
    /// NVIDIA GPU (build with `--features cuda`).
    Cuda,
    /// Apple GPU (build with `--features metal`).
    Metal,
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
            DeviceKind::Metal => "metal",
        })
    }
}

impl DeviceKind {
    pub fn open(self) -> Result<Device, InferenceError> {
        let unavailable = |feature: &str, e: candle_core::Error| {
            InferenceError::Unsupported(format!(
                "cannot use the {feature} device: {e}. Build companero with `--features {feature}` \
                 on a machine that has one, or use --device cpu"
            ))
        };
        match self {
            DeviceKind::Cpu => Ok(Device::Cpu),
            DeviceKind::Cuda => Device::new_cuda(0).map_err(|e| unavailable("cuda", e)),
            DeviceKind::Metal => Device::new_metal(0).map_err(|e| unavailable("metal", e)),
        }
    }
}

/// Sets how many threads the CPU kernels use. Must run before any model work starts.
pub fn set_cpu_threads(threads: usize) {
    let threads = threads.max(1).to_string();
    // SAFETY: called from `main` before the async runtime or any other thread exists.
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", &threads);
        std::env::set_var("CANDLE_NUM_THREADS", &threads);
    }
}
