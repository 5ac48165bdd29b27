//! Sentence embedders from a folder holding `model.safetensors`, `config.json` and
//! `tokenizer.json` (the Hugging Face / sentence-transformers layout): BERT (all-MiniLM, bge) and
//! nomic-bert (nomic-embed-text). Output vectors are pooled as the model's sentence-transformers
//! config says and L2-normalised, so a dot product is the cosine similarity.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{bert, nomic_bert};
use serde::{Deserialize, Serialize};
use tokenizers::{Tokenizer, TruncationParams};

use super::InferenceError;
use super::cpu_bert::{self, CpuBert};
use super::kernels::Isa;
use super::llm::Kernels;

/// Inputs embedded in one forward pass.
pub const BATCH_SIZE: usize = 32;
/// Long-context embedders are capped here: a chunk is never longer, and attention memory grows
/// with the square of the length.
const MAX_TOKENS_CAP: usize = 8192;

/// What a text is, for models that embed queries and documents differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbedKind {
    Query,
    Document,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    Mean,
    Cls,
}

/// Facts about a loaded embedder.
#[derive(Debug, Clone, Serialize)]
pub struct EmbedderInfo {
    pub name: String,
    pub path: PathBuf,
    pub architecture: String,
    /// Length of the vectors it returns.
    pub dimensions: usize,
    /// Longer inputs are truncated to this many tokens.
    pub max_tokens: usize,
    pub pooling: Pooling,
    pub load_seconds: f64,
    /// The OpenAI base URL of the server that runs it, for a remote backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct EmbedderOptions {
    /// Matryoshka truncation (nomic-embed-text v1.5 supports 768, 512, 256, 128, 64).
    pub dimensions: Option<usize>,
    /// Truncate inputs to fewer tokens than the model allows.
    pub max_tokens: Option<usize>,
    pub kernels: Kernels,
}

enum Encoder {
    /// Compañero's own kernels (x86-64 CPUs, BERT with absolute positions).
    Cpu(Box<CpuBert>),
    Bert(bert::BertModel),
    NomicBert(nomic_bert::NomicBertModel),
}

pub struct Embedder {
    encoder: Encoder,
    tokenizer: Tokenizer,
    device: Device,
    pad_id: u32,
    query_prefix: String,
    document_prefix: String,
    full_dimensions: usize,
    pub info: EmbedderInfo,
}

#[derive(Deserialize)]
struct ModelType {
    model_type: Option<String>,
}

impl Embedder {
    pub fn load(
        dir: &Path,
        device: &Device,
        options: &EmbedderOptions,
    ) -> Result<Embedder, InferenceError> {
        let started = Instant::now();
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name)).map_err(|e| {
                InferenceError::Load(format!("cannot read {}: {e}", dir.join(name).display()))
            })
        };
        let config_text = read("config.json")?;
        let parse_error =
            |e: serde_json::Error| InferenceError::Load(format!("invalid config.json: {e}"));
        let model_type: ModelType = serde_json::from_str(&config_text).map_err(parse_error)?;
        let weights = dir.join("model.safetensors");
        // SAFETY: the weights file is memory-mapped read-only; the model folder is ours and is
        // not modified while the server runs.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, device) }
            .map_err(|e| InferenceError::Load(format!("cannot read {}: {e}", weights.display())))?;
        let load_error = |e: candle_core::Error| {
            InferenceError::Load(format!("cannot load {}: {e}", dir.display()))
        };
        let architecture = model_type.model_type.unwrap_or_else(|| "bert".into());
        let (encoder, full_dimensions, positions) = match architecture.as_str() {
            "bert" => {
                let config: bert::Config =
                    serde_json::from_str(&config_text).map_err(parse_error)?;
                let raw: serde_json::Value =
                    serde_json::from_str(&config_text).map_err(parse_error)?;
                let own_kernels = options.kernels == Kernels::Auto
                    && device.is_cpu()
                    && Isa::detect().is_accelerated()
                    && match cpu_bert::unsupported_reason(&raw) {
                        None => true,
                        Some(reason) => {
                            tracing::info!(%reason, "this embedder runs on candle's kernels");
                            false
                        }
                    };
                let encoder = if own_kernels {
                    let act = raw["hidden_act"].as_str().unwrap_or("gelu");
                    Encoder::Cpu(Box::new(CpuBert::load(vb, &config, act)?))
                } else {
                    Encoder::Bert(bert::BertModel::load(vb, &config).map_err(load_error)?)
                };
                (encoder, config.hidden_size, config.max_position_embeddings)
            }
            "nomic_bert" => {
                let config: nomic_bert::Config =
                    serde_json::from_str(&config_text).map_err(parse_error)?;
                let model = nomic_bert::NomicBertModel::load(vb, &config).map_err(load_error)?;
                (Encoder::NomicBert(model), config.n_embd, config.n_positions)
            }
            other => {
                return Err(InferenceError::Unsupported(format!(
                    "embedder architecture '{other}' is not supported; supported: bert, nomic_bert"
                )));
            }
        };

        let sentence_config = read_json(&dir.join("sentence_bert_config.json"));
        let max_tokens = sentence_config["max_seq_length"]
            .as_u64()
            .map(|n| n as usize)
            .unwrap_or(positions)
            .min(positions)
            .min(MAX_TOKENS_CAP)
            .min(options.max_tokens.unwrap_or(usize::MAX));
        let pooling_config = read_json(&dir.join("1_Pooling/config.json"));
        let pooling = if pooling_config["pooling_mode_cls_token"] == true {
            Pooling::Cls
        } else {
            Pooling::Mean
        };
        let name = dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "embedder".into());
        let raw_config: serde_json::Value =
            serde_json::from_str(&config_text).map_err(parse_error)?;
        let known_as = [
            name.as_str(),
            raw_config["_name_or_path"].as_str().unwrap_or_default(),
        ];
        let (query_prefix, document_prefix) = prompts(
            &read_json(&dir.join("config_sentence_transformers.json"))["prompts"],
            &architecture,
            &known_as,
        );

        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| InferenceError::Tokenizer(format!("cannot read tokenizer.json: {e}")))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..TruncationParams::default()
            }))
            .map_err(|e| InferenceError::Tokenizer(e.to_string()))?;
        // Batches are padded here, to their own longest input, not to a fixed length.
        tokenizer.with_padding(None);
        let pad_id = tokenizer
            .token_to_id("[PAD]")
            .or_else(|| tokenizer.token_to_id("<pad>"))
            .unwrap_or(0);

        let dimensions = match options.dimensions {
            Some(d) if d == 0 || d > full_dimensions => {
                return Err(InferenceError::InvalidRequest(format!(
                    "cannot truncate {full_dimensions}-dimensional embeddings to {d}"
                )));
            }
            Some(d) => d,
            None => full_dimensions,
        };
        Ok(Embedder {
            encoder,
            tokenizer,
            device: device.clone(),
            pad_id,
            query_prefix,
            document_prefix,
            full_dimensions,
            info: EmbedderInfo {
                name,
                path: dir.to_path_buf(),
                architecture,
                dimensions,
                max_tokens,
                pooling,
                load_seconds: started.elapsed().as_secs_f64(),
                remote: None,
            },
        })
    }

    /// Embeds `texts`, returning one unit-length vector per text, in order.
    pub fn embed(
        &self,
        texts: &[String],
        kind: EmbedKind,
    ) -> Result<Vec<Vec<f32>>, InferenceError> {
        self.embed_batched(texts, kind, BATCH_SIZE)
    }

    /// Like [`Embedder::embed`] with a chosen batch size (benchmarks compare batch 1 and 32).
    pub fn embed_batched(
        &self,
        texts: &[String],
        kind: EmbedKind,
        batch_size: usize,
    ) -> Result<Vec<Vec<f32>>, InferenceError> {
        let prefix = match kind {
            EmbedKind::Query => &self.query_prefix,
            EmbedKind::Document => &self.document_prefix,
        };
        let inputs: Vec<String> = texts.iter().map(|t| format!("{prefix}{t}")).collect();
        let encodings = self
            .tokenizer
            .encode_batch(inputs, true)
            .map_err(|e| InferenceError::Tokenizer(e.to_string()))?;
        // Similar lengths share a batch, so little compute goes to padding.
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| encodings[i].get_ids().len());
        let mut vectors = vec![Vec::new(); encodings.len()];
        for batch in order.chunks(batch_size.max(1)) {
            let ids: Vec<&[u32]> = batch.iter().map(|&i| encodings[i].get_ids()).collect();
            let pooled = self.forward(&ids)?;
            for (&index, vector) in batch.iter().zip(pooled) {
                vectors[index] = vector;
            }
        }
        Ok(vectors)
    }

    /// A tokenizer handle for chunking: counts and splits text in this embedder's tokens.
    pub fn token_counter(&self) -> Result<TokenCounter, InferenceError> {
        let mut tokenizer = self.tokenizer.clone();
        tokenizer
            .with_truncation(None)
            .map_err(|e| InferenceError::Tokenizer(e.to_string()))?;
        let count = |text: &str, special: bool| {
            tokenizer
                .encode(text, special)
                .map(|e| e.len())
                .map_err(|e| InferenceError::Tokenizer(e.to_string()))
        };
        // What every input costs besides its text: special tokens and the document prefix.
        let overhead = count("", true)? + count(&self.document_prefix, false)?;
        Ok(TokenCounter {
            max_input: self.info.max_tokens.saturating_sub(overhead).max(8),
            tokenizer: Some(Arc::new(tokenizer)),
        })
    }

    /// Token counts of `text` as this embedder sees it (before truncation), for chunking.
    pub fn count_tokens(&self, text: &str) -> Result<usize, InferenceError> {
        let mut tokenizer = self.tokenizer.clone();
        tokenizer
            .with_truncation(None)
            .map_err(|e| InferenceError::Tokenizer(e.to_string()))?;
        Ok(tokenizer
            .encode(text, true)
            .map_err(|e| InferenceError::Tokenizer(e.to_string()))?
            .len())
    }

    fn forward(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, InferenceError> {
        if let Encoder::Cpu(model) = &self.encoder {
            return Ok(model
                .forward(batch)?
                .into_iter()
                .map(|hidden| self.pool_and_normalize(&hidden))
                .collect());
        }
        let (ids, mask) = padded(batch, self.pad_id, &self.device)?;
        let token_types = ids.zeros_like()?;
        let hidden = match &self.encoder {
            Encoder::Cpu(_) => unreachable!("handled above"),
            Encoder::Bert(model) => model.forward(&ids, &token_types, Some(&mask))?,
            Encoder::NomicBert(model) => model.forward(&ids, Some(&token_types), Some(&mask))?,
        };
        let pooled = match self.info.pooling {
            Pooling::Mean => nomic_bert::mean_pooling(&hidden, &mask)?,
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
        };
        let pooled = if self.info.dimensions < self.full_dimensions {
            // Matryoshka models are trained so that a prefix of the vector is an embedding too;
            // nomic normalises with layer norm before truncating.
            let normed = candle_nn::ops::layer_norm_slow(
                &pooled,
                &Tensor::ones(self.full_dimensions, DType::F32, &self.device)?,
                &Tensor::zeros(self.full_dimensions, DType::F32, &self.device)?,
                1e-5,
            )?;
            normed.narrow(1, 0, self.info.dimensions)?
        } else {
            pooled
        };
        Ok(nomic_bert::l2_normalize(&pooled)?.to_vec2::<f32>()?)
    }
}

impl Embedder {
    /// One input's sentence vector from its hidden states (`tokens × full_dimensions`): pooled,
    /// cut to the chosen dimensions (after a plain layer norm, as candle's path does) and
    /// L2-normalised.
    fn pool_and_normalize(&self, hidden: &[f32]) -> Vec<f32> {
        let width = self.full_dimensions;
        let tokens = hidden.len() / width;
        let mut pooled = match self.info.pooling {
            Pooling::Cls => hidden[..width].to_vec(),
            Pooling::Mean => {
                let mut sum = vec![0f32; width];
                for row in hidden.chunks_exact(width) {
                    sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
                }
                sum.iter().map(|s| s / tokens.max(1) as f32).collect()
            }
        };
        if self.info.dimensions < width {
            let mean = pooled.iter().sum::<f32>() / width as f32;
            let variance =
                pooled.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / width as f32;
            let inv = 1.0 / (variance + 1e-5).sqrt();
            pooled.iter_mut().for_each(|v| *v = (*v - mean) * inv);
            pooled.truncate(self.info.dimensions);
        }
        let norm = pooled.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        pooled.iter_mut().for_each(|v| *v /= norm);
        pooled
    }

    /// `compañero-…` (own CPU kernels) or `candle`.
    pub fn kernels(&self) -> String {
        match self.encoder {
            Encoder::Cpu(_) => format!("companero-{:?}", Isa::detect()).to_lowercase(),
            _ => "candle".into(),
        }
    }
}

/// The (query, document) prefixes: what the sentence-transformers config asks for, else what the
/// model family was trained with (nomic: task prefixes; e5: "query: "/"passage: "; bge English:
/// an instruction before queries only), else none.
pub(super) fn prompts(
    configured: &serde_json::Value,
    architecture: &str,
    known_as: &[&str],
) -> (String, String) {
    let family = |needle: &str| {
        known_as
            .iter()
            .any(|name| name.to_lowercase().contains(needle))
    };
    let (query, document) = if architecture == "nomic_bert" || family("nomic-embed") {
        ("search_query: ", "search_document: ")
    } else if family("e5-") {
        ("query: ", "passage: ")
    } else if family("bge-") && family("-en") {
        (
            "Represent this sentence for searching relevant passages: ",
            "",
        )
    } else {
        ("", "")
    };
    let pick = |keys: &[&str], fallback: &str| {
        keys.iter()
            .find_map(|key| configured[*key].as_str())
            .unwrap_or(fallback)
            .to_string()
    };
    (
        pick(&["query"], query),
        pick(&["document", "passage", "corpus"], document),
    )
}

/// A batch for candle, which needs equal lengths: `(ids, attention mask)`, each
/// `inputs × longest`, padded with `pad` (mask 0).
pub(super) fn padded(
    batch: &[&[u32]],
    pad: u32,
    device: &Device,
) -> Result<(Tensor, Tensor), InferenceError> {
    let longest = batch.iter().map(|ids| ids.len()).max().unwrap_or(0).max(1);
    let mut ids = Vec::with_capacity(batch.len() * longest);
    let mut mask = Vec::with_capacity(batch.len() * longest);
    for row in batch {
        ids.extend_from_slice(row);
        ids.extend(std::iter::repeat_n(pad, longest - row.len()));
        mask.extend(std::iter::repeat_n(1u32, row.len()));
        mask.extend(std::iter::repeat_n(0u32, longest - row.len()));
    }
    let shape = (batch.len(), longest);
    Ok((
        Tensor::from_vec(ids, shape, device)?,
        Tensor::from_vec(mask, shape, device)?,
    ))
}

fn read_json(path: &Path) -> serde_json::Value {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// Counts and splits text in an embedder's tokens (no special tokens, no truncation).
#[derive(Clone)]
pub struct TokenCounter {
    /// `None` for a remote embedder, whose tokenizer is on its server: counts are estimated.
    tokenizer: Option<Arc<Tokenizer>>,
    /// The most text tokens one embedder input can hold.
    pub max_input: usize,
}

impl TokenCounter {
    /// Estimated counts ([`remote::estimate_tokens`]) for an embedder that holds `max_input`.
    pub fn estimated(max_input: usize) -> TokenCounter {
        TokenCounter {
            tokenizer: None,
            max_input,
        }
    }

    pub fn count(&self, text: &str) -> usize {
        let Some(tokenizer) = &self.tokenizer else {
            return super::remote::estimate_tokens(text);
        };
        tokenizer
            .encode(text, false)
            .map(|e| e.len())
            .unwrap_or_else(|_| text.split_whitespace().count() * 2)
    }

    /// Byte ranges of `text` that each hold at most `max` tokens, in order, covering it.
    pub fn split(&self, text: &str, max: usize) -> Vec<std::ops::Range<usize>> {
        let Some(tokenizer) = &self.tokenizer else {
            return split_estimated(text, max);
        };
        let Ok(encoding) = tokenizer.encode(text, false) else {
            return std::iter::once(0..text.len()).collect();
        };
        let offsets = encoding.get_offsets();
        let mut ranges = Vec::new();
        let mut start = 0;
        for window in offsets.chunks(max.max(1)).skip(1) {
            let cut = window[0].0.clamp(start, text.len());
            if cut > start && text.is_char_boundary(cut) {
                ranges.push(start..cut);
                start = cut;
            }
        }
        ranges.push(start..text.len());
        ranges
    }
}

/// Cuts `text` into ranges of at most `max` estimated tokens, at the last whitespace before
/// each limit when there is one.
fn split_estimated(text: &str, max: usize) -> Vec<std::ops::Range<usize>> {
    let chars_per_range = max.max(1) * 3;
    let mut ranges = Vec::new();
    let mut start = 0;
    while super::remote::estimate_tokens(&text[start..]) > max.max(1) {
        let limit = text[start..]
            .char_indices()
            .nth(chars_per_range)
            .map_or(text.len(), |(i, _)| start + i);
        let cut = text[start..limit]
            .rfind(char::is_whitespace)
            .map(|i| start + i)
            .filter(|&i| i > start)
            .unwrap_or(limit);
        ranges.push(start..cut);
        start = cut;
    }
    ranges.push(start..text.len());
    ranges
}

/// Cosine similarity of two unit vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::prompts;
    use serde_json::json;

    #[test]
    fn prefixes_come_from_the_config_else_from_the_model_family() {
        let none = serde_json::Value::Null;
        let empty = (String::new(), String::new());
        assert_eq!(prompts(&none, "bert", &["all-minilm-l6-v2"]), empty);
        assert_eq!(
            prompts(&none, "bert", &["e5-small-v2", ""]),
            ("query: ".into(), "passage: ".into())
        );
        assert_eq!(
            prompts(&none, "bert", &["models", "BAAI/bge-small-en-v1.5"]).0,
            "Represent this sentence for searching relevant passages: "
        );
        assert_eq!(prompts(&none, "bert", &["bge-m3"]), empty);
        assert_eq!(
            prompts(&none, "nomic_bert", &["x"]),
            ("search_query: ".into(), "search_document: ".into())
        );
        let configured = json!({"query": "Q: ", "passage": "P: "});
        assert_eq!(
            prompts(&configured, "bert", &["e5-base"]),
            ("Q: ".into(), "P: ".into())
        );
    }
}
