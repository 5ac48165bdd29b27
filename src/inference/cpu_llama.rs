//! Compañero's own CPU implementation of llama-family chat models (llama, qwen2) on GGUF weights
//! in Q4_0, Q4_1 or Q8_0 (F16/F32 matrices are converted to Q8_0). It computes what candle's
//! `quantized_llama`/`quantized_qwen2` compute, with the kernels of [`super::kernels`]: tiled
//! integer matrix products with run-time AVX-512 VNNI, fused projections (Q/K/V, gate/up), a
//! position-major KV cache appended in place, and no tensor allocations per operation.
//!
//! Files in other formats (k-quants) or architectures run on candle's models instead (see
//! [`super::llm`]).

use candle_core::Device;
use candle_core::quantized::{GgmlDType, gguf_file};

use super::InferenceError;
use super::gguf::GgufFile;
use super::kernels::Isa;
use super::kernels::gemm::{self, PackedB};
use super::kernels::math;
use super::kernels::pool::Pool;
use super::kernels::quant::{self, Format, QActs, QMatrix};
use super::kv_cache::{PrefixStore, Sequence, shared_prefix};

struct Config {
    layers: usize,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    ffn: usize,
    eps: f32,
    rope_base: f32,
    /// Rotary pairs are (i, i + d/2) (GPT-NeoX, Qwen) rather than (2i, 2i + 1) (llama).
    rope_neox: bool,
}

struct Layer {
    attn_norm: Vec<f32>,
    /// Q, K and V projections as one matrix (rows q | k | v).
    qkv: QMatrix,
    qkv_bias: Option<Vec<f32>>,
    output: QMatrix,
    ffn_norm: Vec<f32>,
    /// Gate and up projections as one matrix (rows gate | up).
    gate_up: QMatrix,
    down: QMatrix,
}

pub struct CpuLlama {
    config: Config,
    token_embd: QMatrix,
    /// `None`: the output projection is the embedding matrix (tied weights).
    output: Option<QMatrix>,
    output_norm: Vec<f32>,
    layers: Vec<Layer>,
    isa: Isa,
    /// Rotary angles' cosines and sines, `head_dim / 2` per position, grown on demand.
    rope: Vec<(f32, f32)>,
    /// The sequence whose attention state is loaded.
    current: Sequence,
    store: PrefixStore,
    acts: QActs,
}

/// Why a file cannot run here (it then runs on candle).
pub fn unsupported_reason(gguf: &GgufFile, architecture: &str) -> Option<String> {
    if !matches!(architecture, "llama" | "qwen2") {
        return Some(format!("architecture {architecture}"));
    }
    let metadata = gguf.metadata();
    if metadata
        .u32(&format!("{architecture}.expert_count"))
        .unwrap_or(0)
        > 0
    {
        return Some("mixture of experts".into());
    }
    let embedding = metadata.u32(&format!("{architecture}.embedding_length"))? as usize;
    let heads = metadata.u32(&format!("{architecture}.attention.head_count"))? as usize;
    if let Some(rope) = metadata.u32(&format!("{architecture}.rope.dimension_count"))
        && rope as usize != embedding / heads.max(1)
    {
        return Some("partial rotary embeddings".into());
    }
    for (name, info) in &gguf.content.tensor_infos {
        let matrix = name.ends_with(".weight") && info.shape.dims().len() == 2;
        let supported = matches!(
            info.ggml_dtype,
            GgmlDType::Q4_0
                | GgmlDType::Q4_1
                | GgmlDType::Q8_0
                | GgmlDType::F16
                | GgmlDType::F32
                | GgmlDType::BF16
        );
        if matrix && !supported {
            return Some(format!("{name} is {:?}", info.ggml_dtype));
        }
        if matrix && !info.shape.dims()[1].is_multiple_of(quant::BLOCK) {
            return Some(format!(
                "{name} rows are not whole blocks of {}",
                quant::BLOCK
            ));
        }
    }
    None
}

impl CpuLlama {
    /// Loads the weights. `cache_bytes` bounds the attention state kept for reuse.
    pub fn load(
        gguf: &mut GgufFile,
        architecture: &str,
        cache_bytes: usize,
    ) -> Result<CpuLlama, InferenceError> {
        let metadata = gguf.metadata();
        let key = |name: &str| format!("{architecture}.{name}");
        let need = |name: &str| {
            metadata
                .u32(&key(name))
                .map(|v| v as usize)
                .ok_or_else(|| InferenceError::Load(format!("GGUF metadata lacks {}", key(name))))
        };
        let hidden = need("embedding_length")?;
        let heads = need("attention.head_count")?;
        let f32_value = |name: &str| metadata.0.get(&key(name)).and_then(|v| v.to_f32().ok());
        let config = Config {
            layers: need("block_count")?,
            hidden,
            heads,
            kv_heads: metadata
                .u32(&key("attention.head_count_kv"))
                .map_or(heads, |v| v as usize),
            head_dim: hidden / heads,
            ffn: need("feed_forward_length")?,
            eps: f32_value("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
            rope_base: f32_value("rope.freq_base").unwrap_or(10_000.0),
            rope_neox: architecture != "llama",
        };

        let content = &gguf.content;
        let reader = &mut gguf.reader;
        let has = |name: &str| content.tensor_infos.contains_key(name);
        let vector = |reader: &mut Reader, name: &str| load_vector(content, reader, name);
        let matrices = |reader: &mut Reader, names: &[String]| -> Result<QMatrix, InferenceError> {
            let parts = names
                .iter()
                .map(|n| load_matrix(content, reader, n))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(concat_rows(parts))
        };

        let mut layers = Vec::with_capacity(config.layers);
        for l in 0..config.layers {
            let name = |suffix: &str| format!("blk.{l}.{suffix}");
            let qkv_bias = if has(&name("attn_q.bias")) {
                let mut bias = vector(reader, &name("attn_q.bias"))?;
                bias.extend(vector(reader, &name("attn_k.bias"))?);
                bias.extend(vector(reader, &name("attn_v.bias"))?);
                Some(bias)
            } else {
                None
            };
            layers.push(Layer {
                attn_norm: vector(reader, &name("attn_norm.weight"))?,
                qkv: matrices(
                    reader,
                    &[
                        name("attn_q.weight"),
                        name("attn_k.weight"),
                        name("attn_v.weight"),
                    ],
                )?,
                qkv_bias,
                output: matrices(reader, &[name("attn_output.weight")])?,
                ffn_norm: vector(reader, &name("ffn_norm.weight"))?,
                gate_up: matrices(reader, &[name("ffn_gate.weight"), name("ffn_up.weight")])?,
                down: matrices(reader, &[name("ffn_down.weight")])?,
            });
        }
        let token_embd = matrices(reader, &["token_embd.weight".to_string()])?;
        let output = if has("output.weight") {
            Some(matrices(reader, &["output.weight".to_string()])?)
        } else {
            None
        };
        let output_norm = vector(reader, "output_norm.weight")?;
        let width = config.kv_heads * config.head_dim;
        let layer_count = config.layers;
        Ok(CpuLlama {
            config,
            token_embd,
            output,
            output_norm,
            layers,
            isa: Isa::detect(),
            rope: Vec::new(),
            current: Sequence::empty("", layer_count, width),
            store: PrefixStore::new(cache_bytes),
            acts: QActs::new(),
        })
    }

    /// Forgets every attention state computed for `owner`, the loaded one too.
    pub fn forget(&mut self, owner: &str) {
        self.store.forget(owner);
        if self.current.owner == owner {
            self.current = Sequence::empty("", self.config.layers, self.current.cache.width);
        }
    }

    /// Next-token logits after `prompt`, starting from the longest prefix of it whose attention
    /// state is cached. Returns the logits and how many prompt tokens were reused.
    pub fn start(
        &mut self,
        owner: &str,
        prompt: &[u32],
    ) -> Result<(Vec<f32>, usize), InferenceError> {
        let limit = prompt.len().saturating_sub(1);
        let in_place = if self.current.owner == owner && self.store.enabled() {
            shared_prefix(&self.current.tokens, prompt).min(limit)
        } else {
            0
        };
        let better = self.store.take_longer_prefix(owner, prompt, in_place);
        match better {
            Some(sequence) => {
                let previous = std::mem::replace(&mut self.current, sequence);
                self.store.put(previous);
            }
            None if in_place < self.current.tokens.len() || self.current.owner != owner => {
                // Keep the whole current sequence for its own follow-ups, continue on a copy.
                let shared = Sequence {
                    owner: owner.to_string(),
                    tokens: prompt[..in_place].to_vec(),
                    cache: self.current.cache.prefix(in_place),
                };
                let previous = std::mem::replace(&mut self.current, shared);
                self.store.put(previous);
            }
            None => {}
        }
        let reused = self.current.tokens.len();
        let logits = self.forward(&prompt[reused..], reused)?;
        Ok((logits, reused))
    }

    /// Runs `tokens` at positions `position..` and returns the last one's next-token logits. The
    /// attention state after `position` is forgotten first.
    pub fn forward(&mut self, tokens: &[u32], position: usize) -> Result<Vec<f32>, InferenceError> {
        if tokens.is_empty() {
            return Err(InferenceError::InvalidRequest("no tokens to run".into()));
        }
        if position > self.current.cache.len {
            return Err(InferenceError::Model(format!(
                "position {position} is past the cached {}",
                self.current.cache.len
            )));
        }
        self.current.cache.truncate(position);
        self.current.tokens.truncate(position);
        let vocab = self.token_embd.rows;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(InferenceError::InvalidRequest(format!(
                "token {bad} is outside the vocabulary"
            )));
        }
        self.grow_rope(position + tokens.len());
        let logits = self.run(tokens, position);
        self.current.tokens.extend_from_slice(tokens);
        Ok(logits)
    }

    fn grow_rope(&mut self, positions: usize) {
        let half = self.config.head_dim / 2;
        let have = self.rope.len() / half;
        if positions <= have {
            return;
        }
        // The same arithmetic as candle's table: f32 inverse frequencies times the position.
        let theta: Vec<f32> = (0..half)
            .map(|i| {
                1.0 / self
                    .config
                    .rope_base
                    .powf((2 * i) as f32 / self.config.head_dim as f32)
            })
            .collect();
        let target = positions.next_power_of_two().max(256);
        for p in have..target {
            for &t in &theta {
                let angle = p as f32 * t;
                self.rope.push((angle.cos(), angle.sin()));
            }
        }
    }

    fn run(&mut self, tokens: &[u32], position: usize) -> Vec<f32> {
        let c = &self.config;
        let pool = Pool::global();
        let (m, hidden) = (tokens.len(), c.hidden);
        let q_width = c.heads * c.head_dim;
        let kv_width = c.kv_heads * c.head_dim;
        let qkv_width = q_width + 2 * kv_width;

        let mut x = vec![0f32; m * hidden];
        for (row, &token) in x.chunks_exact_mut(hidden).zip(tokens) {
            self.token_embd.row(token as usize, row);
        }
        let mut normed = vec![0f32; m * hidden];
        let mut qkv = vec![0f32; m * qkv_width];
        let mut attention = vec![0f32; m * q_width];
        let mut projected = vec![0f32; m * hidden];
        let mut gate_up = vec![0f32; m * 2 * c.ffn];
        let mut activated = vec![0f32; m * c.ffn];

        for (l, layer) in self.layers.iter().enumerate() {
            rms_norm(&x, &layer.attn_norm, c.eps, &mut normed);
            self.acts.quantize(&normed, hidden, layer.qkv.format());
            quant::matmul(pool, self.isa, &layer.qkv, &self.acts, &mut qkv);
            if let Some(bias) = &layer.qkv_bias {
                for row in qkv.chunks_exact_mut(qkv_width) {
                    row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
                }
            }
            for (i, row) in qkv.chunks_exact_mut(qkv_width).enumerate() {
                let angles = &self.rope[(position + i) * c.head_dim / 2..][..c.head_dim / 2];
                for head in row[..q_width + kv_width].chunks_exact_mut(c.head_dim) {
                    rotate(head, angles, c.rope_neox);
                }
            }
            let cache = &mut self.current.cache;
            for row in qkv.chunks_exact(qkv_width) {
                cache.keys[l].extend_from_slice(&row[q_width..q_width + kv_width]);
                cache.values[l].extend_from_slice(&row[q_width + kv_width..]);
            }
            attend(
                pool,
                self.isa,
                c,
                &qkv,
                &cache.keys[l],
                &cache.values[l],
                position,
                &mut attention,
            );

            self.acts
                .quantize(&attention, q_width, layer.output.format());
            quant::matmul(pool, self.isa, &layer.output, &self.acts, &mut projected);
            x.iter_mut().zip(&projected).for_each(|(x, p)| *x += p);

            rms_norm(&x, &layer.ffn_norm, c.eps, &mut normed);
            self.acts.quantize(&normed, hidden, layer.gate_up.format());
            quant::matmul(pool, self.isa, &layer.gate_up, &self.acts, &mut gate_up);
            for (row, out) in gate_up
                .chunks_exact(2 * c.ffn)
                .zip(activated.chunks_exact_mut(c.ffn))
            {
                let (gate, up) = row.split_at(c.ffn);
                for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
                    *o = g / (1.0 + (-g).exp()) * u;
                }
            }
            self.acts.quantize(&activated, c.ffn, layer.down.format());
            quant::matmul(pool, self.isa, &layer.down, &self.acts, &mut projected);
            x.iter_mut().zip(&projected).for_each(|(x, p)| *x += p);
        }
        self.current.cache.len = position + m;

        let last = &x[(m - 1) * hidden..];
        let mut normed = vec![0f32; hidden];
        rms_norm(last, &self.output_norm, c.eps, &mut normed);
        let output = self.output.as_ref().unwrap_or(&self.token_embd);
        self.acts.quantize(&normed, hidden, output.format());
        let mut logits = vec![0f32; output.rows];
        quant::matmul(pool, self.isa, output, &self.acts, &mut logits);
        logits
    }

    /// Memory held by the attention states kept for reuse, and how many sequences.
    pub fn cached(&self) -> (usize, usize) {
        (
            self.store.bytes() + self.current.cache.bytes(),
            self.store.len() + 1,
        )
    }
}

type Reader = std::io::BufReader<std::fs::File>;

fn load_vector(
    content: &gguf_file::Content,
    reader: &mut Reader,
    name: &str,
) -> Result<Vec<f32>, InferenceError> {
    let tensor = content
        .tensor(reader, name, &Device::Cpu)
        .map_err(|e| InferenceError::Load(format!("cannot read {name}: {e}")))?;
    Ok(tensor
        .dequantize(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

fn load_matrix(
    content: &gguf_file::Content,
    reader: &mut Reader,
    name: &str,
) -> Result<QMatrix, InferenceError> {
    let tensor = content
        .tensor(reader, name, &Device::Cpu)
        .map_err(|e| InferenceError::Load(format!("cannot read {name}: {e}")))?;
    let (rows, cols) = tensor.shape().dims2()?;
    let format = match tensor.dtype() {
        GgmlDType::Q4_0 => Some(Format::Q4_0),
        GgmlDType::Q4_1 => Some(Format::Q4_1),
        GgmlDType::Q8_0 => Some(Format::Q8_0),
        _ => None,
    };
    let matrix = match format {
        Some(format) => QMatrix::from_gguf(format, rows, cols, &tensor.data()?),
        None => {
            let values = tensor
                .dequantize(&Device::Cpu)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            QMatrix::quantize_q8_0(rows, cols, &values)
        }
    };
    matrix.ok_or_else(|| {
        InferenceError::Load(format!(
            "{name}: {rows}x{cols} cannot be laid out in blocks of 32"
        ))
    })
}

/// Stacks matrices (their rows one after another). Parts of mixed formats are all converted to
/// Q8_0, which holds any of them.
fn concat_rows(mut parts: Vec<QMatrix>) -> QMatrix {
    let format = parts[0].format();
    if parts.iter().any(|p| p.format() != format) {
        parts = parts.iter().map(QMatrix::to_q8_0).collect();
    }
    let mut first = parts.remove(0);
    for part in parts {
        first.append_rows(part);
    }
    first
}

/// `out = x / sqrt(mean(x²) + eps) · weight`, row by row (candle's arithmetic).
fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let dim = weight.len();
    for (row, out) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let sum2: f32 = row.iter().map(|v| v * v).sum();
        let scale = (sum2 / dim as f32 + eps).sqrt();
        for ((o, v), w) in out.iter_mut().zip(row).zip(weight) {
            *o = v / scale * w;
        }
    }
}

/// Rotary position embedding of one head.
fn rotate(head: &mut [f32], angles: &[(f32, f32)], neox: bool) {
    let half = head.len() / 2;
    for (i, &(cos, sin)) in angles.iter().enumerate() {
        let (a, b) = if neox {
            (i, i + half)
        } else {
            (2 * i, 2 * i + 1)
        };
        let (x0, x1) = (head[a], head[b]);
        head[a] = x0 * cos - x1 * sin;
        head[b] = x0 * sin + x1 * cos;
    }
}

/// Causal attention of the new rows (positions `position..`) over the cache; query heads share
/// key heads in groups (GQA). Many rows (a prompt) go through matrix products, a few (generation)
/// through dot products.
#[allow(clippy::too_many_arguments)]
fn attend(
    pool: &Pool,
    isa: Isa,
    c: &Config,
    qkv: &[f32],
    keys: &[f32],
    values: &[f32],
    position: usize,
    out: &mut [f32],
) {
    let qkv_width = (c.heads + 2 * c.kv_heads) * c.head_dim;
    let rows = qkv.len() / qkv_width;
    if rows * c.heads / c.kv_heads >= 16 {
        attend_blocked(pool, isa, c, qkv, keys, values, position, out);
    } else {
        attend_rows(pool, c, qkv, keys, values, position, out);
    }
}

/// Query rows per block of the blocked attention: later blocks see more keys, and a block only
/// computes scores for the keys it can see.
const ATTENTION_ROWS: usize = 64;

/// Attention as two matrix products per key head and block of rows: scores = Q·Kᵀ for the
/// block's queries of every head in the group, a masked softmax, then scores · V.
#[allow(clippy::too_many_arguments)]
fn attend_blocked(
    pool: &Pool,
    isa: Isa,
    c: &Config,
    qkv: &[f32],
    keys: &[f32],
    values: &[f32],
    position: usize,
    out: &mut [f32],
) {
    let hd = c.head_dim;
    let q_width = c.heads * hd;
    let kv_width = c.kv_heads * hd;
    let qkv_width = q_width + 2 * kv_width;
    let group = c.heads / c.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let rows = qkv.len() / qkv_width;
    let mut queries = Vec::new();
    let mut scores = Vec::new();
    let mut mixed = Vec::new();
    for g in 0..c.kv_heads {
        for r0 in (0..rows).step_by(ATTENTION_ROWS) {
            let r1 = (r0 + ATTENTION_ROWS).min(rows);
            let count = (r1 - r0) * group;
            let visible = position + r1;
            queries.clear();
            for r in r0..r1 {
                queries.extend_from_slice(&qkv[r * qkv_width + g * group * hd..][..group * hd]);
            }
            let packed_keys = PackedB::from_strided_rows(&keys[g * hd..], visible, hd, kv_width);
            scores.clear();
            scores.resize(count * visible, 0.0);
            gemm::matmul(
                pool,
                isa,
                &queries,
                hd,
                count,
                &packed_keys,
                None,
                &mut scores,
                visible,
            );
            pool.split_mut(&mut scores, visible, |offset, rows| {
                for (i, row) in rows.chunks_exact_mut(visible).enumerate() {
                    let q = offset / visible + i;
                    softmax_prefix(row, position + r0 + q / group + 1, scale);
                }
            });
            let packed_values = PackedB::from_columns(&values[g * hd..], visible, hd, kv_width);
            mixed.clear();
            mixed.resize(count * hd, 0.0);
            gemm::matmul(
                pool,
                isa,
                &scores,
                visible,
                count,
                &packed_values,
                None,
                &mut mixed,
                hd,
            );
            for (i, head) in mixed.chunks_exact(hd).enumerate() {
                let (r, j) = (r0 + i / group, i % group);
                out[r * q_width + (g * group + j) * hd..][..hd].copy_from_slice(head);
            }
        }
    }
}

/// Softmax of `row[..seen] · scale`; the positions after `seen` (the future) get weight 0.
fn softmax_prefix(row: &mut [f32], seen: usize, scale: f32) {
    let (visible, future) = row.split_at_mut(seen);
    visible.iter_mut().for_each(|s| *s *= scale);
    math::softmax(visible);
    future.fill(0.0);
}

/// Attention row by row with dot products, one (row, key head) pair per unit of work: the
/// query heads that share a key head are served together, so each cached key and value is read
/// once per group rather than once per head (at 500 positions that traffic rivals the weights').
fn attend_rows(
    pool: &Pool,
    c: &Config,
    qkv: &[f32],
    keys: &[f32],
    values: &[f32],
    position: usize,
    out: &mut [f32],
) {
    let hd = c.head_dim;
    let qkv_width = (c.heads + 2 * c.kv_heads) * hd;
    let group = c.heads / c.kv_heads;
    // `out` is rows × heads × head_dim; unit u = row · kv_heads + g owns the group's heads.
    pool.split_mut(out, group * hd, |offset, part| {
        let mut scores: Vec<Vec<f32>> = vec![Vec::new(); group];
        for (i, group_out) in part.chunks_exact_mut(group * hd).enumerate() {
            let unit = offset / (group * hd) + i;
            let (row, g) = (unit / c.kv_heads, unit % c.kv_heads);
            let unit = GroupUnit {
                queries: &qkv[row * qkv_width + g * group * hd..][..group * hd],
                keys,
                values,
                kv_width: c.kv_heads * hd,
                kv_offset: g * hd,
                head_dim: hd,
                seen: position + row + 1,
            };
            #[cfg(target_arch = "x86_64")]
            if Isa::detect() == Isa::Avx512Vnni {
                // SAFETY: the CPU has AVX-512 (detected).
                unsafe { attend_group_avx512(&unit, &mut scores, group_out) };
                continue;
            }
            attend_group(&unit, &mut scores, group_out);
        }
    });
}

/// One row's attention for the query heads of one key head.
struct GroupUnit<'a> {
    queries: &'a [f32],
    keys: &'a [f32],
    values: &'a [f32],
    kv_width: usize,
    kv_offset: usize,
    head_dim: usize,
    seen: usize,
}

/// [`attend_group`] compiled for AVX-512, so its dot products and loops inline at 512 bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn attend_group_avx512(unit: &GroupUnit, scores: &mut [Vec<f32>], out: &mut [f32]) {
    attend_group(unit, scores, out)
}

// `p` indexes the cache (strided) and every head's scores at once.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn attend_group(unit: &GroupUnit, scores: &mut [Vec<f32>], out: &mut [f32]) {
    let hd = unit.head_dim;
    let scale = 1.0 / (hd as f32).sqrt();
    scores.iter_mut().for_each(Vec::clear);
    for p in 0..unit.seen {
        let k = &unit.keys[p * unit.kv_width + unit.kv_offset..][..hd];
        for (h, q) in unit.queries.chunks_exact(hd).enumerate() {
            scores[h].push(quant::dot_f32(q, k));
        }
    }
    for head_scores in scores.iter_mut() {
        softmax_prefix(head_scores, unit.seen, scale);
    }
    out.fill(0.0);
    for p in 0..unit.seen {
        let v = &unit.values[p * unit.kv_width + unit.kv_offset..][..hd];
        for (h, head_out) in out.chunks_exact_mut(hd).enumerate() {
            let weight = scores[h][p];
            head_out
                .iter_mut()
                .zip(v)
                .for_each(|(o, v)| *o += weight * v);
        }
    }
}
