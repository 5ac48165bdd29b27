//! Cross-encoder rerankers: a BERT-family model that reads a query and a passage together and
//! scores how well the passage answers the query (ms-marco-MiniLM, bge-reranker). Retrieval
//! reorders its best candidates by this score (see `knowledge::search`).
//!
//! The folder holds `model.safetensors`, `config.json` and `tokenizer.json`, as Hugging Face
//! ships a `…ForSequenceClassification` model. BERT and XLM-RoBERTa run on our own kernels
//! ([`CpuBert`]); without an accelerated CPU, BERT runs on candle and XLM-RoBERTa on candle's
//! own model.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{bert, xlm_roberta};
use serde::Serialize;
use tokenizers::{Tokenizer, TruncationParams, TruncationStrategy};

use super::InferenceError;
use super::cpu_bert::{self, CpuBert};
use super::embed::padded;
use super::kernels::Isa;
use super::llm::Kernels;

/// Pairs scored in one forward pass.
pub const BATCH_SIZE: usize = 16;
/// Pairs are cut to this many tokens (passages are ~200 tokens, queries short): attention cost
/// grows with the square of the length.
const MAX_PAIR_TOKENS: usize = 512;

/// Facts about a loaded reranker.
#[derive(Debug, Clone, Serialize)]
pub struct RerankerInfo {
    pub name: String,
    pub path: PathBuf,
    pub architecture: String,
    pub max_tokens: usize,
    pub load_seconds: f64,
}

/// The classification head over the first token: `out(tanh(dense(cls)))`. BERT calls `dense`
/// its pooler; RoBERTa keeps both inside `classifier`. The last label is "relevant".
struct Head {
    dense: (Vec<f32>, Vec<f32>),
    out: (Vec<f32>, Vec<f32>),
    hidden: usize,
}

enum PairEncoder {
    Cpu(Box<CpuBert>),
    Bert(bert::BertModel),
    XlmRoberta(xlm_roberta::XLMRobertaModel),
}

pub struct Reranker {
    encoder: PairEncoder,
    head: Head,
    tokenizer: Tokenizer,
    device: Device,
    pad_id: u32,
    /// RoBERTa has one token type: every token is type 0.
    single_type: bool,
    pub info: RerankerInfo,
}

impl Reranker {
    pub fn load(dir: &Path, device: &Device, kernels: Kernels) -> Result<Reranker, InferenceError> {
        let started = Instant::now();
        let config_path = dir.join("config.json");
        let config_text = std::fs::read_to_string(&config_path).map_err(|e| {
            InferenceError::Load(format!("cannot read {}: {e}", config_path.display()))
        })?;
        let parse_error =
            |e: serde_json::Error| InferenceError::Load(format!("invalid config.json: {e}"));
        let raw: serde_json::Value = serde_json::from_str(&config_text).map_err(parse_error)?;
        let architecture = raw["model_type"].as_str().unwrap_or("bert").to_string();
        let roberta = matches!(architecture.as_str(), "xlm-roberta" | "roberta");
        if architecture != "bert" && !roberta {
            return Err(InferenceError::Unsupported(format!(
                "reranker architecture '{architecture}' is not supported; supported: bert, \
                 xlm-roberta"
            )));
        }
        let weights = dir.join("model.safetensors");
        // SAFETY: the weights file is memory-mapped read-only; the model folder is ours and is
        // not modified while the server runs.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, device) }
            .map_err(|e| InferenceError::Load(format!("cannot read {}: {e}", weights.display())))?;
        let load_error = |e: candle_core::Error| {
            InferenceError::Load(format!("cannot load {}: {e}", dir.display()))
        };
        let config: bert::Config = serde_json::from_str(&config_text).map_err(parse_error)?;
        let head = Head::load(&vb, config.hidden_size, roberta).map_err(load_error)?;
        let own_kernels = kernels == Kernels::Auto
            && device.is_cpu()
            && Isa::detect().is_accelerated()
            && cpu_bert::unsupported_reason(&raw).is_none();
        let encoder = if own_kernels {
            let act = raw["hidden_act"].as_str().unwrap_or("gelu");
            PairEncoder::Cpu(Box::new(CpuBert::load(vb, &config, act)?))
        } else if roberta {
            let config: xlm_roberta::Config =
                serde_json::from_str(&config_text).map_err(parse_error)?;
            PairEncoder::XlmRoberta(
                xlm_roberta::XLMRobertaModel::new(&config, vb.pp("roberta")).map_err(load_error)?,
            )
        } else {
            PairEncoder::Bert(bert::BertModel::load(vb.pp("bert"), &config).map_err(load_error)?)
        };

        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| InferenceError::Tokenizer(format!("cannot read tokenizer.json: {e}")))?;
        let max_tokens = config
            .max_position_embeddings
            .saturating_sub(if roberta { config.pad_token_id + 1 } else { 0 })
            .min(MAX_PAIR_TOKENS);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                // The passage gives way first; a query longer than the limit is cut too.
                strategy: TruncationStrategy::LongestFirst,
                ..TruncationParams::default()
            }))
            .map_err(|e| InferenceError::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(None);
        let pad_id = tokenizer
            .token_to_id("[PAD]")
            .or_else(|| tokenizer.token_to_id("<pad>"))
            .unwrap_or(config.pad_token_id as u32);
        let name = dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "reranker".into());
        Ok(Reranker {
            encoder,
            head,
            tokenizer,
            device: device.clone(),
            pad_id,
            single_type: roberta || config.type_vocab_size < 2,
            info: RerankerInfo {
                name,
                path: dir.to_path_buf(),
                architecture,
                max_tokens,
                load_seconds: started.elapsed().as_secs_f64(),
            },
        })
    }

    /// The relevance logit of each passage to `query`, in order (higher is more relevant).
    pub fn score(&self, query: &str, passages: &[String]) -> Result<Vec<f32>, InferenceError> {
        let pairs: Vec<(String, String)> = passages
            .iter()
            .map(|p| (query.to_string(), p.clone()))
            .collect();
        let encodings = self
            .tokenizer
            .encode_batch(pairs, true)
            .map_err(|e| InferenceError::Tokenizer(e.to_string()))?;
        // Similar lengths share a batch, so little compute goes to padding (candle pads).
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| encodings[i].get_ids().len());
        let mut scores = vec![0f32; encodings.len()];
        for batch in order.chunks(BATCH_SIZE) {
            let ids: Vec<&[u32]> = batch.iter().map(|&i| encodings[i].get_ids()).collect();
            let zeros: Vec<Vec<u32>> = ids.iter().map(|ids| vec![0; ids.len()]).collect();
            let types: Vec<&[u32]> = if self.single_type {
                zeros.iter().map(Vec::as_slice).collect()
            } else {
                batch.iter().map(|&i| encodings[i].get_type_ids()).collect()
            };
            for (&index, cls) in batch.iter().zip(self.first_tokens(&ids, &types)?) {
                scores[index] = self.head.score(&cls);
            }
        }
        Ok(scores)
    }

    /// The last hidden state of each input's first token.
    fn first_tokens(
        &self,
        ids: &[&[u32]],
        types: &[&[u32]],
    ) -> Result<Vec<Vec<f32>>, InferenceError> {
        let h = self.head.hidden;
        if let PairEncoder::Cpu(model) = &self.encoder {
            return Ok(model
                .forward_typed(ids, Some(types))?
                .into_iter()
                .map(|hidden| hidden[..h].to_vec())
                .collect());
        }
        // Token types are padded with 0, like the ids' padding, which the mask hides.
        let (ids, mask) = padded(ids, self.pad_id, &self.device)?;
        let (types, _) = padded(types, 0, &self.device)?;
        let hidden = match &self.encoder {
            PairEncoder::Cpu(_) => unreachable!("handled above"),
            PairEncoder::Bert(model) => model.forward(&ids, &types, Some(&mask))?,
            PairEncoder::XlmRoberta(model) => {
                model.forward(&ids, &mask, &types, None, None, None)?
            }
        };
        Ok(hidden.narrow(1, 0, 1)?.squeeze(1)?.to_vec2::<f32>()?)
    }

    /// `compañero-…` (own CPU kernels) or `candle`.
    pub fn kernels(&self) -> String {
        match self.encoder {
            PairEncoder::Cpu(_) => format!("companero-{:?}", Isa::detect()).to_lowercase(),
            _ => "candle".into(),
        }
    }
}

impl Head {
    fn load(vb: &VarBuilder, hidden: usize, roberta: bool) -> candle_core::Result<Head> {
        let (dense, out) = if roberta {
            (vb.pp("classifier.dense"), vb.pp("classifier.out_proj"))
        } else {
            (vb.pp("bert.pooler.dense"), vb.pp("classifier"))
        };
        let values = |t: Tensor| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>();
        let out_bias = values(out.get_unchecked("bias")?)?;
        let labels = out_bias.len();
        Ok(Head {
            dense: (
                values(dense.get((hidden, hidden), "weight")?)?,
                values(dense.get(hidden, "bias")?)?,
            ),
            out: (values(out.get((labels, hidden), "weight")?)?, out_bias),
            hidden,
        })
    }

    /// The "relevant" logit; with two labels, how much more relevant than not.
    fn score(&self, cls: &[f32]) -> f32 {
        let pooled: Vec<f32> = affine(&self.dense, cls)
            .into_iter()
            .map(f32::tanh)
            .collect();
        let logits = affine(&self.out, &pooled);
        match logits.as_slice() {
            [only] => *only,
            [.., not, relevant] => relevant - not,
            [] => 0.0,
        }
    }
}

/// `weight · x + bias` for a row-major `outputs × inputs` weight.
fn affine((weight, bias): &(Vec<f32>, Vec<f32>), x: &[f32]) -> Vec<f32> {
    weight
        .chunks_exact(x.len())
        .zip(bias)
        .map(|(row, b)| row.iter().zip(x).map(|(w, v)| w * v).sum::<f32>() + b)
        .collect()
}
