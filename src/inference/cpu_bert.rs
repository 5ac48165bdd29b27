//! Compañero's own CPU implementation of BERT sentence encoders (all-MiniLM, bge): what candle's
//! `bert` model computes, on the AVX-512 matrix kernel of [`super::kernels::gemm`], with Q/K/V
//! fused into one product and no padding: the inputs of a batch are laid end to end, so no work
//! goes to pad tokens and no attention mask is needed. Cross-encoder rerankers (BERT and
//! XLM-RoBERTa) run on it too, with token types for the query/passage pair.

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert;

use super::InferenceError;
use super::kernels::Isa;
use super::kernels::gemm::{self, PackedB};
use super::kernels::gemm_i16::{self, PackedI16};
use super::kernels::math;
use super::kernels::pool::Pool;

/// A linear layer's weights, packed for the kernel this CPU runs.
enum Weight {
    /// 12-bit integers (AVX-512 VNNI).
    I16(PackedI16),
    F32(PackedB),
}

struct Linear {
    weight: Weight,
    /// Inputs and outputs.
    k: usize,
    n: usize,
    bias: Vec<f32>,
}

struct LayerNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

struct Layer {
    /// Query, key and value as one product (outputs q | k | v).
    qkv: Linear,
    attention_output: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// Tokens per pass through the network (see `CpuBert::forward`).
const GROUP_ROWS: usize = 512;

pub struct CpuBert {
    word_embeddings: Vec<f32>,
    position_embeddings: Vec<f32>,
    /// One row per token type (0 = first segment, 1 = second, for BERT pairs).
    token_types: Vec<f32>,
    /// Position of the first token: 0 for BERT; RoBERTa counts from its pad id + 1.
    position_offset: usize,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    hidden: usize,
    heads: usize,
    eps: f32,
    /// tanh approximation of GELU instead of the exact (erf) one.
    gelu_tanh: bool,
    isa: Isa,
}

/// Why a BERT config cannot run here (it then runs on candle).
pub fn unsupported_reason(config: &serde_json::Value) -> Option<String> {
    let embedding = config["position_embedding_type"]
        .as_str()
        .unwrap_or("absolute");
    if embedding != "absolute" {
        return Some(format!("position embeddings '{embedding}'"));
    }
    match config["hidden_act"].as_str().unwrap_or("gelu") {
        "gelu" | "gelu_new" | "gelu_pytorch_tanh" | "gelu_approximate" => None,
        other => Some(format!("activation '{other}'")),
    }
}

impl CpuBert {
    pub fn load(
        vb: VarBuilder,
        config: &bert::Config,
        hidden_act: &str,
    ) -> Result<CpuBert, InferenceError> {
        // Sentence-transformers files have no prefix; classification models keep the encoder
        // under `bert.` or `roberta.`.
        let prefix = ["bert", "roberta"]
            .into_iter()
            .chain(config.model_type.as_deref())
            .find(|p| vb.contains_tensor(&format!("{p}.embeddings.word_embeddings.weight")));
        let root = match prefix {
            Some(prefix) => vb.pp(prefix),
            None => vb,
        };
        let roberta = matches!(
            config.model_type.as_deref(),
            Some("roberta" | "xlm-roberta" | "xlm_roberta")
        );
        let (hidden, inner) = (config.hidden_size, config.intermediate_size);
        let values = |t: Tensor| -> Result<Vec<f32>, InferenceError> {
            Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
        };
        let linear = |vb: VarBuilder,
                      outputs: usize,
                      inputs: usize|
         -> Result<(Vec<f32>, Vec<f32>), InferenceError> {
            Ok((
                values(vb.get((outputs, inputs), "weight")?)?,
                values(vb.get(outputs, "bias")?)?,
            ))
        };
        let isa = Isa::detect();
        let pack = |(weight, bias): (Vec<f32>, Vec<f32>)| {
            let (n, k) = (bias.len(), weight.len() / bias.len());
            let weight = if isa == Isa::Avx512Vnni {
                Weight::I16(PackedI16::from_rows(&weight, n, k))
            } else {
                Weight::F32(PackedB::from_rows(&weight, n, k))
            };
            Linear { weight, k, n, bias }
        };
        let norm = |vb: VarBuilder| -> Result<LayerNorm, InferenceError> {
            Ok(LayerNorm {
                weight: values(vb.get(hidden, "weight")?)?,
                bias: values(vb.get(hidden, "bias")?)?,
            })
        };
        let embeddings = root.pp("embeddings");
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for index in 0..config.num_hidden_layers {
            let vb = root.pp(format!("encoder.layer.{index}"));
            let attention = vb.pp("attention");
            let mut qkv = (Vec::new(), Vec::new());
            for part in ["query", "key", "value"] {
                let (weight, bias) = linear(attention.pp("self").pp(part), hidden, hidden)?;
                qkv.0.extend(weight);
                qkv.1.extend(bias);
            }
            layers.push(Layer {
                qkv: pack(qkv),
                attention_output: pack(linear(attention.pp("output.dense"), hidden, hidden)?),
                attention_norm: norm(attention.pp("output.LayerNorm"))?,
                intermediate: pack(linear(vb.pp("intermediate.dense"), inner, hidden)?),
                output: pack(linear(vb.pp("output.dense"), hidden, inner)?),
                output_norm: norm(vb.pp("output.LayerNorm"))?,
            });
        }
        let token_types = values(embeddings.get(
            (config.type_vocab_size, hidden),
            "token_type_embeddings.weight",
        )?)?;
        Ok(CpuBert {
            word_embeddings: values(
                embeddings.get((config.vocab_size, hidden), "word_embeddings.weight")?,
            )?,
            position_embeddings: values(embeddings.get(
                (config.max_position_embeddings, hidden),
                "position_embeddings.weight",
            )?)?,
            token_types,
            position_offset: if roberta { config.pad_token_id + 1 } else { 0 },
            embedding_norm: norm(embeddings.pp("LayerNorm"))?,
            layers,
            hidden,
            heads: config.num_attention_heads,
            eps: config.layer_norm_eps as f32,
            gelu_tanh: hidden_act != "gelu",
            isa,
        })
    }

    /// The last hidden states of each input, `tokens × hidden` floats per input.
    pub fn forward(&self, inputs: &[&[u32]]) -> Result<Vec<Vec<f32>>, InferenceError> {
        self.forward_typed(inputs, None)
    }

    /// Like [`CpuBert::forward`], with each token's type (segment) id; `None` means all 0.
    pub fn forward_typed(
        &self,
        inputs: &[&[u32]],
        types: Option<&[&[u32]]>,
    ) -> Result<Vec<Vec<f32>>, InferenceError> {
        // Inputs go through the network in groups of about GROUP_ROWS tokens: enough rows for
        // efficient products, few enough that a layer's activations stay in cache (a batch of
        // 32 × 256 tokens at once spends its time waiting for memory).
        let mut outputs = Vec::with_capacity(inputs.len());
        let mut start = 0;
        while start < inputs.len() {
            let mut end = start + 1;
            let mut rows = inputs[start].len();
            while end < inputs.len() && rows + inputs[end].len() <= GROUP_ROWS {
                rows += inputs[end].len();
                end += 1;
            }
            let group_types = types.map(|t| &t[start..end]);
            outputs.extend(self.forward_group(&inputs[start..end], group_types)?);
            start = end;
        }
        Ok(outputs)
    }

    fn forward_group(
        &self,
        inputs: &[&[u32]],
        types: Option<&[&[u32]]>,
    ) -> Result<Vec<Vec<f32>>, InferenceError> {
        let pool = Pool::global();
        let h = self.hidden;
        let vocab = self.word_embeddings.len() / h;
        let positions = (self.position_embeddings.len() / h).saturating_sub(self.position_offset);
        let type_count = self.token_types.len() / h;
        let rows: usize = inputs.iter().map(|ids| ids.len()).sum();
        let mut x = Vec::with_capacity(rows * h);
        for (index, ids) in inputs.iter().enumerate() {
            if ids.len() > positions {
                return Err(InferenceError::InvalidRequest(format!(
                    "an input of {} tokens is longer than the model's {positions}",
                    ids.len()
                )));
            }
            for (position, &id) in ids.iter().enumerate() {
                let id = id as usize;
                if id >= vocab {
                    return Err(InferenceError::InvalidRequest(format!(
                        "token {id} is outside the vocabulary"
                    )));
                }
                let kind = types.map_or(0, |t| t[index].get(position).copied().unwrap_or(0));
                let kind = (kind as usize).min(type_count - 1);
                let word = &self.word_embeddings[id * h..(id + 1) * h];
                let place = position + self.position_offset;
                let place = &self.position_embeddings[place * h..(place + 1) * h];
                let token_type = &self.token_types[kind * h..(kind + 1) * h];
                x.extend(
                    word.iter()
                        .zip(place)
                        .zip(token_type)
                        .map(|((w, p), t)| w + p + t),
                );
            }
        }
        let eps = self.eps;
        pool.split_mut(&mut x, h, |_, rows| {
            layer_norm(rows, &self.embedding_norm, eps)
        });

        let inner = self.layers.first().map_or(0, |l| l.intermediate.n);
        let mut qkv = vec![0f32; rows * 3 * h];
        let mut context = vec![0f32; rows * h];
        let mut projected = vec![0f32; rows * h];
        let mut intermediate = vec![0f32; rows * inner];
        for layer in &self.layers {
            self.linear(pool, &x, &layer.qkv, &mut qkv);
            self.attention(pool, inputs, &qkv, &mut context);
            self.linear(pool, &context, &layer.attention_output, &mut projected);
            add_and_norm(pool, &mut x, &projected, &layer.attention_norm, eps);

            self.linear(pool, &x, &layer.intermediate, &mut intermediate);
            let tanh_form = self.gelu_tanh;
            pool.split_mut(&mut intermediate, 1024, |_, values| {
                math::gelu_in_place(values, tanh_form);
            });
            self.linear(pool, &intermediate, &layer.output, &mut projected);
            add_and_norm(pool, &mut x, &projected, &layer.output_norm, eps);
        }
        let mut outputs = Vec::with_capacity(inputs.len());
        let mut start = 0;
        for ids in inputs {
            outputs.push(x[start * h..(start + ids.len()) * h].to_vec());
            start += ids.len();
        }
        Ok(outputs)
    }

    fn linear(&self, pool: &Pool, x: &[f32], linear: &Linear, out: &mut [f32]) {
        let (n, k) = (linear.n, linear.k);
        let m = x.len() / k;
        match &linear.weight {
            Weight::I16(weight) => gemm_i16::matmul(pool, x, k, m, weight, &linear.bias, out, n),
            Weight::F32(weight) => {
                gemm::matmul(pool, self.isa, x, k, m, weight, Some(&linear.bias), out, n)
            }
        }
    }

    /// Self-attention of each input over itself, one (input, head) pair per unit of work:
    /// scores = Q·Kᵀ/√d, softmax, then scores · V.
    fn attention(&self, pool: &Pool, inputs: &[&[u32]], qkv: &[f32], out: &mut [f32]) {
        let h = self.hidden;
        let hd = h / self.heads;
        let scale = 1.0 / (hd as f32).sqrt();
        // Each unit writes its head's output (len × hd) into its own part of `mixed`, laid out
        // input by input, head by head; it is moved into place in `out` afterwards.
        let mut mixed = vec![0f32; out.len()];
        let mut units: Vec<(usize, usize, usize, &mut [f32])> = Vec::new();
        let mut rest = mixed.as_mut_slice();
        let mut start = 0;
        for ids in inputs {
            for head in 0..self.heads {
                let (part, tail) = rest.split_at_mut(ids.len() * hd);
                units.push((start, ids.len(), head, part));
                rest = tail;
            }
            start += ids.len();
        }
        pool.for_each(&mut units, |_, (start, len, head, part)| {
            let (start, len, head) = (*start, *len, *head);
            let rows = &qkv[start * 3 * h..(start + len) * 3 * h];
            let queries: Vec<f32> = rows
                .chunks_exact(3 * h)
                .flat_map(|row| row[head * hd..(head + 1) * hd].iter().map(|q| q * scale))
                .collect();
            let keys = PackedB::from_strided_rows(&rows[h + head * hd..], len, hd, 3 * h);
            let mut scores = vec![0f32; len * len];
            gemm::matmul_serial(self.isa, &queries, hd, len, &keys, None, &mut scores, len);
            scores.chunks_exact_mut(len).for_each(math::softmax);
            let values = PackedB::from_columns(&rows[2 * h + head * hd..], len, hd, 3 * h);
            gemm::matmul_serial(self.isa, &scores, len, len, &values, None, part, hd);
        });
        let mut offset = 0;
        for ids in inputs {
            let len = ids.len();
            let block = &mixed[offset * h..(offset + len) * h];
            for (head, head_rows) in block.chunks_exact(len * hd).enumerate() {
                for (r, values) in head_rows.chunks_exact(hd).enumerate() {
                    out[(offset + r) * h + head * hd..][..hd].copy_from_slice(values);
                }
            }
            offset += len;
        }
    }
}

/// `x = LayerNorm(x + residual)`, rows split across threads.
fn add_and_norm(pool: &Pool, x: &mut [f32], residual: &[f32], norm: &LayerNorm, eps: f32) {
    let dim = norm.weight.len();
    pool.split_mut(x, dim, |offset, rows| {
        rows.iter_mut()
            .zip(&residual[offset..])
            .for_each(|(x, r)| *x += r);
        layer_norm(rows, norm, eps);
    });
}

fn layer_norm(x: &mut [f32], norm: &LayerNorm, eps: f32) {
    let dim = norm.weight.len();
    for row in x.chunks_exact_mut(dim) {
        let mean = row.iter().sum::<f32>() / dim as f32;
        let variance = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / dim as f32;
        let inv = 1.0 / (variance + eps).sqrt();
        for ((v, w), b) in row.iter_mut().zip(&norm.weight).zip(&norm.bias) {
            *v = (*v - mean) * inv * w + b;
        }
    }
}

impl std::fmt::Debug for CpuBert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CpuBert({} layers, {:?})", self.layers.len(), self.isa)
    }
}
