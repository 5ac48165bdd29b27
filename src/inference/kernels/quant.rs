//! Quantised matrix products for GGUF weights (Q4_0, Q4_1, Q8_0): `out = x · Wᵀ` where the
//! activations `x` are quantised on the fly to 8 bits per block of 32, as llama.cpp and candle do,
//! and the products are summed in integers.
//!
//! Layout. Every weight row is stored as unsigned 8-bit or 4-bit codes plus, per block of 32, a
//! scale `d` and an offset `m`, so that `w = d·code + m` for all three formats (Q4_0: m = -8d;
//! Q8_0 codes are stored +128: m = -128d). A block's dot product with activation codes `a` (scale
//! `da`, sum `s = da·Σa`) is then `d·da·Σ code·a + m·s`: one integer dot of unsigned by signed
//! bytes, which is exactly AVX-512 VNNI's `vpdpbusd`. Two blocks (64 values) make one 512-bit step;
//! codes inside a step are kept in the order that unpacking 4-bit pairs gives for free
//! ([b0 0..16, b1 0..16, b0 16..32, b1 16..32]), and activations are quantised into that order.
//!
//! Kernels: AVX-512 VNNI, AVX2, and portable scalar code, chosen at run time (`Isa::detect`), so a
//! portable x86-64 build still uses AVX-512 where the CPU has it. All three give the same integer
//! sums; only the order of the float additions differs.

use half::f16;

use super::Isa;
use super::pool::Pool;

/// Values per quantisation block.
pub const BLOCK: usize = 32;
/// Values per kernel step: two blocks.
pub const STEP: usize = 64;
/// Activation rows one kernel call handles against one weight row.
const TILE: usize = 4;
/// Activation rows kept hot in cache while weight rows stream past.
const ROW_CHUNK: usize = 32;

/// The GGUF formats this module multiplies natively.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Q4_0,
    Q4_1,
    Q8_0,
}

impl Format {
    fn nibbles(self) -> bool {
        !matches!(self, Format::Q8_0)
    }

    /// Bytes of one GGUF block.
    pub fn block_bytes(self) -> usize {
        match self {
            Format::Q4_0 => 18,
            Format::Q4_1 => 20,
            Format::Q8_0 => 34,
        }
    }

    /// How activations are quantised against this format: candle and llama.cpp pair Q4_1 with
    /// Q8_1 (whose block sum is stored as f16) and the others with Q8_0.
    fn activation_sum_in_f16(self) -> bool {
        matches!(self, Format::Q4_1)
    }
}

/// Position inside a step of element `e` (0..64, in natural order: block 0 then block 1).
#[inline]
fn step_position(e: usize) -> usize {
    let (block, i) = (e / BLOCK, e % BLOCK);
    (i / 16) * 32 + block * 16 + i % 16
}

/// A weight matrix (`rows` outputs × `cols` inputs) in kernel layout.
pub struct QMatrix {
    pub rows: usize,
    pub cols: usize,
    /// `cols` rounded up to a whole step; the padding has zero scales.
    padded: usize,
    format: Format,
    /// Codes: per row `padded / 2` bytes (4-bit) or `padded` bytes (8-bit).
    codes: Vec<u8>,
    /// Per block, as half floats (GGUF's own precision: lossless, and generation reads 17% fewer
    /// bytes than with f32 scales).
    d: Vec<f16>,
    m: Vec<f16>,
}

impl QMatrix {
    /// Reads GGUF blocks (`rows × cols` values, row-major, `cols` a multiple of 32).
    pub fn from_gguf(format: Format, rows: usize, cols: usize, data: &[u8]) -> Option<QMatrix> {
        if !cols.is_multiple_of(BLOCK) || data.len() != rows * cols / BLOCK * format.block_bytes() {
            return None;
        }
        let padded = cols.div_ceil(STEP) * STEP;
        let blocks = padded / BLOCK;
        let row_codes = if format.nibbles() { padded / 2 } else { padded };
        let mut matrix = QMatrix {
            rows,
            cols,
            padded,
            format,
            codes: vec![0; rows * row_codes],
            d: vec![f16::ZERO; rows * blocks],
            m: vec![f16::ZERO; rows * blocks],
        };
        let read_f16 = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
        for (index, block) in data.chunks_exact(format.block_bytes()).enumerate() {
            let (row, b) = (index / (cols / BLOCK), index % (cols / BLOCK));
            let d = read_f16(block);
            let slot = row * blocks + b;
            matrix.d[slot] = f16::from_f32(d);
            let codes = &mut matrix.codes[row * row_codes..(row + 1) * row_codes];
            match format {
                Format::Q4_0 | Format::Q4_1 => {
                    let (m, qs) = if format == Format::Q4_1 {
                        (read_f16(&block[2..]), &block[4..20])
                    } else {
                        (-8.0 * d, &block[2..18])
                    };
                    matrix.m[slot] = f16::from_f32(m);
                    // 4-bit codes keep GGUF's own packing: 16 bytes per block, low nibbles are
                    // values 0..16, high nibbles 16..32.
                    codes[b * 16..b * 16 + 16].copy_from_slice(qs);
                }
                Format::Q8_0 => {
                    matrix.m[slot] = f16::from_f32(-128.0 * d);
                    for (i, &q) in block[2..34].iter().enumerate() {
                        let e = (b % 2) * BLOCK + i;
                        codes[(b / 2) * STEP + step_position(e)] = (q as i8 as i16 + 128) as u8;
                    }
                }
            }
        }
        Some(matrix)
    }

    /// Quantises f32 weights to Q8_0 (for matrices stored as F32/F16/BF16).
    pub fn quantize_q8_0(rows: usize, cols: usize, values: &[f32]) -> Option<QMatrix> {
        if !cols.is_multiple_of(BLOCK) || values.len() != rows * cols {
            return None;
        }
        let mut data = Vec::with_capacity(rows * cols / BLOCK * 34);
        for block in values.chunks_exact(BLOCK) {
            let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            data.extend_from_slice(&f16::from_f32(d).to_le_bytes());
            data.extend(block.iter().map(|v| (v * id).round() as i8 as u8));
        }
        QMatrix::from_gguf(Format::Q8_0, rows, cols, &data)
    }

    /// Adds `other`'s rows after this matrix's (same format and width).
    pub fn append_rows(&mut self, other: QMatrix) {
        assert_eq!((self.format, self.cols), (other.format, other.cols));
        self.rows += other.rows;
        self.codes.extend(other.codes);
        self.d.extend(other.d);
        self.m.extend(other.m);
    }

    /// The same values re-quantised to Q8_0.
    pub fn to_q8_0(&self) -> QMatrix {
        let mut values = vec![0f32; self.rows * self.cols];
        for (r, row) in values.chunks_exact_mut(self.cols).enumerate() {
            self.row(r, row);
        }
        QMatrix::quantize_q8_0(self.rows, self.cols, &values).expect("same block layout")
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Row `row` as floats, exactly as GGUF dequantises it (for embedding lookups).
    pub fn row(&self, row: usize, out: &mut [f32]) {
        let blocks = self.padded / BLOCK;
        for (e, value) in out.iter_mut().enumerate().take(self.cols) {
            let slot = row * blocks + e / BLOCK;
            let d = self.d[slot].to_f32();
            let code = self.code(row, e);
            *value = match self.format {
                Format::Q4_0 => (code as i32 - 8) as f32 * d,
                Format::Q4_1 => code as f32 * d + self.m[slot].to_f32(),
                Format::Q8_0 => (code as i32 - 128) as f32 * d,
            };
        }
    }

    /// The unsigned code of value `e` of row `row`.
    fn code(&self, row: usize, e: usize) -> u8 {
        if self.format.nibbles() {
            let (b, i) = (e / BLOCK, e % BLOCK);
            let byte = self.codes[row * self.padded / 2 + b * 16 + i % 16];
            if i < 16 { byte & 0x0F } else { byte >> 4 }
        } else {
            self.codes[row * self.padded + (e / STEP) * STEP + step_position(e % STEP)]
        }
    }

    /// Memory held, in bytes.
    pub fn bytes(&self) -> usize {
        self.codes.len() + 2 * (self.d.len() + self.m.len())
    }
}

/// Activations quantised for a product with matrices of one format.
pub struct QActs {
    pub rows: usize,
    padded: usize,
    /// Codes in step order, `padded` per row.
    codes: Vec<i8>,
    /// Per step, 16 lanes of scales matching the lanes of a 512-bit integer dot:
    /// [d0 ×4, d1 ×4, d0 ×4, d1 ×4]. The first 8 serve the 256-bit kernel.
    lane_scales: Vec<f32>,
    /// Per block, `d · Σ codes`.
    sums: Vec<f32>,
}

impl QActs {
    pub fn new() -> QActs {
        QActs {
            rows: 0,
            padded: 0,
            codes: Vec::new(),
            lane_scales: Vec::new(),
            sums: Vec::new(),
        }
    }

    /// Quantises `rows` rows of `x` (row length `cols`) for products with `matrix`'s format.
    pub fn quantize(&mut self, x: &[f32], cols: usize, format: Format) {
        let rows = x.len() / cols;
        let padded = cols.div_ceil(STEP) * STEP;
        let blocks = padded / BLOCK;
        self.rows = rows;
        self.padded = padded;
        self.codes.clear();
        self.codes.resize(rows * padded, 0);
        self.lane_scales.clear();
        self.lane_scales.resize(rows * padded / 4, 0.0);
        self.sums.clear();
        self.sums.resize(rows * blocks, 0.0);
        let f16_sum = format.activation_sum_in_f16();
        for r in 0..rows {
            let row = &x[r * cols..(r + 1) * cols];
            for b in 0..cols / BLOCK {
                let values = &row[b * BLOCK..(b + 1) * BLOCK];
                let amax = values.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let stored_d = f16::from_f32(d).to_f32();
                let step = &mut self.codes[r * padded + (b / 2) * STEP..][..STEP];
                let mut sum = 0i32;
                for (i, v) in values.iter().enumerate() {
                    let q = (v * id).round() as i8;
                    sum += q as i32;
                    step[step_position((b % 2) * BLOCK + i)] = q;
                }
                self.sums[r * blocks + b] = if f16_sum {
                    // Q8_1 computes the sum in half precision: f16(sum) × f16(d), rounded.
                    f16::from_f32(f16::from_f32(sum as f32).to_f32() * stored_d).to_f32()
                } else {
                    sum as f32 * stored_d
                };
                let lanes = &mut self.lane_scales[r * padded / 4 + (b / 2) * 16..][..16];
                let half = (b % 2) * 4;
                lanes[half..half + 4].fill(stored_d);
                lanes[8 + half..8 + half + 4].fill(stored_d);
            }
        }
    }
}

impl Default for QActs {
    fn default() -> Self {
        QActs::new()
    }
}

/// `out[r][n] = Σ_k x[r][k] · w[n][k]` for every activation row `r` and weight row `n`;
/// `out` is row-major `acts.rows × w.rows`. Weight rows are split across the pool's threads.
pub fn matmul(pool: &Pool, isa: Isa, w: &QMatrix, acts: &QActs, out: &mut [f32]) {
    assert_eq!(w.padded, acts.padded, "activation and weight widths differ");
    assert_eq!(out.len(), acts.rows * w.rows);
    let out = SharedOut(out.as_mut_ptr());
    let n = w.rows;
    pool.split(n, 16, |range| {
        for chunk_start in (0..acts.rows).step_by(ROW_CHUNK) {
            let chunk_end = (chunk_start + ROW_CHUNK).min(acts.rows);
            for row in range.clone() {
                let mut r = chunk_start;
                while r < chunk_end {
                    let tile = (chunk_end - r).min(TILE);
                    let mut sums = [0f32; TILE];
                    dot_tile(isa, w, row, acts, r, tile, &mut sums);
                    for (t, sum) in sums.iter().enumerate().take(tile) {
                        // SAFETY: each thread writes only the columns of its own weight rows.
                        unsafe { *out.get().add((r + t) * n + row) = *sum };
                    }
                    r += tile;
                }
            }
        }
    });
}

struct SharedOut(*mut f32);
// SAFETY: threads write disjoint elements (see `matmul`).
unsafe impl Sync for SharedOut {}
unsafe impl Send for SharedOut {}

impl SharedOut {
    /// A method, so closures capture the whole wrapper rather than its raw pointer field.
    fn get(&self) -> *mut f32 {
        self.0
    }
}

/// Dot products of weight row `row` with activation rows `first..first + tile`.
fn dot_tile(
    isa: Isa,
    w: &QMatrix,
    row: usize,
    acts: &QActs,
    first: usize,
    tile: usize,
    sums: &mut [f32; TILE],
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::detect` saw these features on this CPU.
        Isa::Avx512Vnni => unsafe {
            // This kernel adds the offsets' share itself.
            match tile {
                4 => x86::dot_avx512::<4>(w, row, acts, first, sums),
                3 => x86::dot_avx512::<3>(w, row, acts, first, sums),
                2 => x86::dot_avx512::<2>(w, row, acts, first, sums),
                _ => x86::dot_avx512::<1>(w, row, acts, first, sums),
            }
            return;
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe {
            for (t, sum) in sums.iter_mut().enumerate().take(tile) {
                *sum = x86::dot_avx2(w, row, acts, first + t);
            }
        },
        _ => {
            for (t, sum) in sums.iter_mut().enumerate().take(tile) {
                *sum = dot_scalar(w, row, acts, first + t);
            }
        }
    }
    let blocks = w.padded / BLOCK;
    let m = &w.m[row * blocks..(row + 1) * blocks];
    for (t, sum) in sums.iter_mut().enumerate().take(tile) {
        let s = &acts.sums[(first + t) * blocks..(first + t + 1) * blocks];
        *sum += m.iter().zip(s).map(|(m, s)| m.to_f32() * s).sum::<f32>();
    }
}

/// The reference: integer sums per block, then the scales.
fn dot_scalar(w: &QMatrix, row: usize, acts: &QActs, act_row: usize) -> f32 {
    let blocks = w.padded / BLOCK;
    let codes = &acts.codes[act_row * acts.padded..(act_row + 1) * acts.padded];
    let mut total = 0f32;
    for b in 0..blocks {
        let mut sum = 0i32;
        for i in 0..BLOCK {
            let e = (b % 2) * BLOCK + i;
            let a = codes[(b / 2) * STEP + step_position(e)];
            sum += w.code(row, b * BLOCK + i) as i32 * a as i32;
        }
        let da = acts.lane_scales[act_row * acts.padded / 4 + (b / 2) * 16 + (b % 2) * 4];
        total += sum as f32 * w.d[row * blocks + b].to_f32() * da;
    }
    total
}

/// A float dot product: AVX-512 with a masked tail where available, else code the compiler
/// vectorises (independent partial sums).
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if Isa::detect() == Isa::Avx512Vnni {
        // SAFETY: the CPU has AVX-512 (detected).
        return unsafe { x86::dot_f32_avx512(a, b) };
    }
    dot_f32_portable(a, b)
}

fn dot_f32_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut partial = [0f32; 16];
    let chunks = a.len() / 16 * 16;
    for (ca, cb) in a[..chunks]
        .chunks_exact(16)
        .zip(b[..chunks].chunks_exact(16))
    {
        for l in 0..16 {
            partial[l] += ca[l] * cb[l];
        }
    }
    let mut total: f32 = partial.iter().sum();
    for (x, y) in a[chunks..].iter().zip(&b[chunks..]) {
        total += x * y;
    }
    total
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    use super::{BLOCK, QActs, QMatrix, STEP, TILE};

    /// Unpacks one step of weight codes to 64 unsigned bytes in step order.
    #[inline(always)]
    unsafe fn weight_step_512(w: &QMatrix, row: usize, step: usize) -> __m512i {
        unsafe {
            if w.format.nibbles() {
                let packed = _mm256_loadu_si256(
                    w.codes.as_ptr().add(row * w.padded / 2 + step * 32) as *const __m256i,
                );
                let mask = _mm256_set1_epi8(0x0F);
                let low = _mm256_and_si256(packed, mask);
                let high = _mm256_and_si256(_mm256_srli_epi16(packed, 4), mask);
                _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1)
            } else {
                _mm512_loadu_si512(
                    w.codes.as_ptr().add(row * w.padded + step * STEP) as *const __m512i
                )
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn dot_avx512<const R: usize>(
        w: &QMatrix,
        row: usize,
        acts: &QActs,
        first: usize,
        sums: &mut [f32; TILE],
    ) {
        unsafe {
            let steps = w.padded / STEP;
            let blocks = w.padded / BLOCK;
            let pattern = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1);
            let d = w.d.as_ptr().add(row * blocks);
            let mut acc = [_mm512_setzero_ps(); R];
            for step in 0..steps {
                let codes = weight_step_512(w, row, step);
                let pair = _mm_cvtph_ps(_mm_cvtsi32_si128(
                    (d.add(step * 2) as *const i32).read_unaligned(),
                ));
                let wd = _mm512_permutexvar_ps(pattern, _mm512_castps128_ps512(pair));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let act_row = first + r;
                    let a = _mm512_loadu_si512(
                        acts.codes.as_ptr().add(act_row * acts.padded + step * STEP)
                            as *const __m512i,
                    );
                    let dots = _mm512_dpbusd_epi32(_mm512_setzero_si512(), codes, a);
                    let scale = _mm512_mul_ps(
                        wd,
                        _mm512_loadu_ps(
                            acts.lane_scales
                                .as_ptr()
                                .add(act_row * acts.padded / 4 + step * 16),
                        ),
                    );
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots), scale, *acc);
                }
            }
            // The offsets' share, Σ m·s over blocks, joins the same accumulators (one horizontal
            // sum per row instead of two).
            let m = w.m.as_ptr().add(row * blocks);
            for b in (0..blocks).step_by(16) {
                let mask: __mmask16 = if blocks - b >= 16 {
                    0xFFFF
                } else {
                    (1u16 << (blocks - b)) - 1
                };
                let offsets =
                    _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, m.add(b) as *const i16));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let s = acts.sums.as_ptr().add((first + r) * blocks + b);
                    *acc = _mm512_fmadd_ps(offsets, _mm512_maskz_loadu_ps(mask, s), *acc);
                }
            }
            for r in 0..R {
                sums[r] = _mm512_reduce_add_ps(acc[r]);
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_f32_avx512(a: &[f32], b: &[f32]) -> f32 {
        let len = a.len().min(b.len());
        unsafe {
            let mut acc = _mm512_setzero_ps();
            let mut i = 0;
            while i + 16 <= len {
                acc = _mm512_fmadd_ps(
                    _mm512_loadu_ps(a.as_ptr().add(i)),
                    _mm512_loadu_ps(b.as_ptr().add(i)),
                    acc,
                );
                i += 16;
            }
            if i < len {
                let mask: __mmask16 = (1u16 << (len - i)) - 1;
                acc = _mm512_fmadd_ps(
                    _mm512_maskz_loadu_ps(mask, a.as_ptr().add(i)),
                    _mm512_maskz_loadu_ps(mask, b.as_ptr().add(i)),
                    acc,
                );
            }
            _mm512_reduce_add_ps(acc)
        }
    }

    /// Sums of unsigned-by-signed byte products in groups of four, without VNNI. Codes above
    /// 127 (8-bit weights) are split into nibbles so `maddubs` cannot saturate.
    #[inline(always)]
    unsafe fn dot_u8_i8_256(codes: __m256i, a: __m256i, nibbles: bool) -> __m256i {
        unsafe {
            let ones = _mm256_set1_epi16(1);
            if nibbles {
                _mm256_madd_epi16(_mm256_maddubs_epi16(codes, a), ones)
            } else {
                let mask = _mm256_set1_epi8(0x0F);
                let low = _mm256_and_si256(codes, mask);
                let high = _mm256_and_si256(_mm256_srli_epi16(codes, 4), mask);
                let low = _mm256_madd_epi16(_mm256_maddubs_epi16(low, a), ones);
                let high = _mm256_madd_epi16(_mm256_maddubs_epi16(high, a), ones);
                _mm256_add_epi32(low, _mm256_slli_epi32(high, 4))
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_avx2(w: &QMatrix, row: usize, acts: &QActs, act_row: usize) -> f32 {
        unsafe {
            let steps = w.padded / STEP;
            let blocks = w.padded / BLOCK;
            let nibbles = w.format.nibbles();
            let d = w.d.as_ptr().add(row * blocks);
            let pattern = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
            let mut acc = _mm256_setzero_ps();
            for step in 0..steps {
                let (first, second) = if nibbles {
                    let packed = _mm256_loadu_si256(
                        w.codes.as_ptr().add(row * w.padded / 2 + step * 32) as *const __m256i,
                    );
                    let mask = _mm256_set1_epi8(0x0F);
                    (
                        _mm256_and_si256(packed, mask),
                        _mm256_and_si256(_mm256_srli_epi16(packed, 4), mask),
                    )
                } else {
                    let base = w.codes.as_ptr().add(row * w.padded + step * STEP);
                    (
                        _mm256_loadu_si256(base as *const __m256i),
                        _mm256_loadu_si256(base.add(32) as *const __m256i),
                    )
                };
                let a = acts.codes.as_ptr().add(act_row * acts.padded + step * STEP);
                let a0 = _mm256_loadu_si256(a as *const __m256i);
                let a1 = _mm256_loadu_si256(a.add(32) as *const __m256i);
                let dots = _mm256_add_epi32(
                    dot_u8_i8_256(first, a0, nibbles),
                    dot_u8_i8_256(second, a1, nibbles),
                );
                let pair = _mm_cvtph_ps(_mm_cvtsi32_si128(
                    (d.add(step * 2) as *const i32).read_unaligned(),
                ));
                let wd = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(pair), pattern);
                let scale = _mm256_mul_ps(
                    wd,
                    _mm256_loadu_ps(
                        acts.lane_scales
                            .as_ptr()
                            .add(act_row * acts.padded / 4 + step * 16),
                    ),
                );
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots), scale, acc);
            }
            let sum = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
            let sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
            let sum = _mm_add_ss(sum, _mm_shuffle_ps(sum, sum, 1));
            _mm_cvtss_f32(sum)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    }

    /// GGUF blocks of random weights in `format`.
    fn random_gguf(format: Format, rows: usize, cols: usize, seed: &mut u64) -> Vec<u8> {
        let mut data = Vec::new();
        for _ in 0..rows * cols / BLOCK {
            let d = f16::from_f32(0.01 + lcg(seed).abs() * 0.05);
            data.extend_from_slice(&d.to_le_bytes());
            match format {
                Format::Q4_1 => {
                    data.extend_from_slice(&f16::from_f32(lcg(seed) * 0.2).to_le_bytes());
                    data.extend((0..16).map(|_| (lcg(seed).abs() * 255.0) as u8));
                }
                Format::Q4_0 => data.extend((0..16).map(|_| (lcg(seed).abs() * 255.0) as u8)),
                Format::Q8_0 => data.extend((0..32).map(|_| (lcg(seed) * 127.0) as i8 as u8)),
            }
        }
        data
    }

    #[test]
    fn every_kernel_matches_float_math_on_every_format() {
        let mut seed = 7;
        // 96 columns: one whole step and a half-empty one (padding).
        for (rows, cols) in [(37, 96), (20, 576)] {
            for format in [Format::Q4_0, Format::Q4_1, Format::Q8_0] {
                let data = random_gguf(format, rows, cols, &mut seed);
                let w = QMatrix::from_gguf(format, rows, cols, &data).unwrap();
                let act_rows = 7;
                let x: Vec<f32> = (0..act_rows * cols).map(|_| lcg(&mut seed) * 3.0).collect();
                let mut acts = QActs::new();
                acts.quantize(&x, cols, format);
                // Float reference on the dequantised weights and unquantised activations.
                let mut wrow = vec![0f32; cols];
                let mut expected = vec![0f32; act_rows * rows];
                let mut magnitude = vec![0f32; act_rows * rows];
                for n in 0..rows {
                    w.row(n, &mut wrow);
                    for r in 0..act_rows {
                        let terms = wrow.iter().zip(&x[r * cols..]);
                        expected[r * rows + n] = terms.clone().map(|(a, b)| a * b).sum();
                        magnitude[r * rows + n] = terms.map(|(a, b)| (a * b).abs()).sum();
                    }
                }
                let pool = Pool::new(2);
                for isa in Isa::available() {
                    let mut out = vec![0f32; act_rows * rows];
                    matmul(&pool, isa, &w, &acts, &mut out);
                    for ((got, want), size) in out.iter().zip(&expected).zip(&magnitude) {
                        // 8-bit activations: the error stays within 1% of the terms' sizes.
                        let tolerance = 0.01 * size;
                        assert!(
                            (got - want).abs() < tolerance,
                            "{format:?} {isa:?}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn kernels_agree_with_the_scalar_reference_closely() {
        let mut seed = 11;
        let (rows, cols) = (33, 1536);
        for format in [Format::Q4_0, Format::Q4_1, Format::Q8_0] {
            let data = random_gguf(format, rows, cols, &mut seed);
            let w = QMatrix::from_gguf(format, rows, cols, &data).unwrap();
            let x: Vec<f32> = (0..5 * cols).map(|_| lcg(&mut seed)).collect();
            let mut acts = QActs::new();
            acts.quantize(&x, cols, format);
            let pool = Pool::new(1);
            let mut reference = vec![0f32; 5 * rows];
            matmul(&pool, Isa::Scalar, &w, &acts, &mut reference);
            for isa in Isa::available() {
                let mut out = vec![0f32; 5 * rows];
                matmul(&pool, isa, &w, &acts, &mut out);
                for (got, want) in out.iter().zip(&reference) {
                    assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "{isa:?}");
                }
            }
        }
    }

    #[test]
    fn dequantised_rows_match_gguf_definitions() {
        // One Q8_0 block: d = 0.5, codes -3 and 4.
        let mut data = f16::from_f32(0.5).to_le_bytes().to_vec();
        data.extend((0..32).map(|i| if i == 0 { -3i8 as u8 } else { 4 }));
        let w = QMatrix::from_gguf(Format::Q8_0, 1, 32, &data).unwrap();
        let mut row = vec![0f32; 32];
        w.row(0, &mut row);
        assert_eq!(row[0], -1.5);
        assert_eq!(row[31], 2.0);
        // One Q4_1 block: d = 1, m = -2, first byte 0x5A: value 0 is 10 - 2, value 16 is 5 - 2.
        let mut data = f16::from_f32(1.0).to_le_bytes().to_vec();
        data.extend_from_slice(&f16::from_f32(-2.0).to_le_bytes());
        data.extend((0..16).map(|i| if i == 0 { 0x5A } else { 0 }));
        let w = QMatrix::from_gguf(Format::Q4_1, 1, 32, &data).unwrap();
        w.row(0, &mut row);
        assert_eq!((row[0], row[16], row[1]), (8.0, 3.0, -2.0));
    }
}
