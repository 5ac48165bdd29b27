//! 16-bit integer matrix products for embedder linear layers: `C = A · Bᵀ + bias` with the
//! weights `B` quantised once per output column and the activations `A` per row, both to 12 bits
//! (±2047), multiplied with AVX-512 VNNI's `vpdpwssd` (32 products per instruction, twice f32
//! FMA's rate) and summed exactly in 32-bit integers.
//!
//! Why 16-bit and not 8: int8 weights move MiniLM's sentence vectors to a cosine of 0.9993 from
//! the f32 reference (int8 with a scale per 32 values: 0.9994); 12 bits keep it above 0.99998.
//! A depth pass of at most 256 keeps every integer sum below 256 · 2047² < 2³¹.

use super::gemm;
use super::pool::Pool;

/// Columns of C per panel.
pub const NR: usize = 32;
/// Rows of C per micro-kernel call (2 × 12 accumulators).
const MR: usize = 12;
/// Depth per pass (even; see the overflow bound above).
const KC: usize = 256;
const MC: usize = 128;
/// Largest quantised magnitude.
const LEVELS: f32 = 2047.0;

/// Weights (`n` outputs × `k` inputs) quantised per output and packed in panels of 32 columns:
/// for each pair of depths, 32 columns × 2 values.
pub struct PackedI16 {
    pub n: usize,
    pub k: usize,
    /// `k` rounded up to even.
    depth: usize,
    panels: Vec<i16>,
    scales: Vec<f32>,
}

impl PackedI16 {
    pub fn from_rows(b: &[f32], n: usize, k: usize) -> PackedI16 {
        let depth = k.next_multiple_of(2);
        let panel_count = n.div_ceil(NR);
        let mut packed = PackedI16 {
            n,
            k,
            depth,
            panels: vec![0; panel_count * NR * depth],
            scales: vec![0.0; panel_count * NR],
        };
        for row in 0..n {
            let values = &b[row * k..(row + 1) * k];
            let (scale, inverse) = scale_of(values);
            packed.scales[row] = scale;
            let (panel, lane) = (row / NR, row % NR);
            let base = panel * NR * depth;
            for (col, &v) in values.iter().enumerate() {
                let slot = base + (col / 2) * NR * 2 + lane * 2 + col % 2;
                packed.panels[slot] = (v * inverse).round_ties_even() as i16;
            }
        }
        packed
    }
}

/// The scale that maps the largest magnitude to `LEVELS`, and its inverse.
fn scale_of(values: &[f32]) -> (f32, f32) {
    let amax = values.iter().fold(0f32, |a, v| a.max(v.abs()));
    if amax == 0.0 {
        (0.0, 0.0)
    } else {
        (amax / LEVELS, LEVELS / amax)
    }
}

/// Quantises `row` to ±2047 into `out`; returns the scale.
fn quantize_row(row: &[f32], out: &mut [i16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: this module runs only on CPUs with AVX-512 (see `matmul`).
    unsafe {
        x86::quantize_row(row, out)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let (scale, inverse) = scale_of(row);
        for (q, v) in out.iter_mut().zip(row) {
            *q = (v * inverse).round_ties_even() as i16;
        }
        scale
    }
}

/// `c[i][j] = Σ_k a[i][k] · b[j][k] + bias[j]` for `m` rows of `a` (row stride `lda`); rows
/// split across the pool's threads. Needs AVX-512 VNNI (callers check `Isa`).
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    pool: &Pool,
    a: &[f32],
    lda: usize,
    m: usize,
    b: &PackedI16,
    bias: &[f32],
    c: &mut [f32],
    ldc: usize,
) {
    gemm::split_rows(pool, c, m, ldc, b.n, MR, |first, rows, part| {
        serial(&a[first * lda..], lda, rows, b, bias, part, ldc);
    });
}

fn serial(a: &[f32], lda: usize, m: usize, b: &PackedI16, bias: &[f32], c: &mut [f32], ldc: usize) {
    let (n, k) = (b.n, b.k);
    assert!(a.len() >= (m - 1) * lda + k && c.len() >= (m - 1) * ldc + n && bias.len() >= n);
    // A quantised once, row by row, as pairs of 16-bit values in one 32-bit word (the unit the
    // micro-kernel broadcasts).
    let half = b.depth / 2;
    let mut row_scales = vec![0f32; m];
    let mut quantized = vec![0i16; m * b.depth];
    for i in 0..m {
        let row = &a[i * lda..i * lda + k];
        row_scales[i] = quantize_row(row, &mut quantized[i * b.depth..i * b.depth + k]);
        c[i * ldc..i * ldc + n].copy_from_slice(&bias[..n]);
    }
    // Viewed as pairs: one 32-bit word per two depths (little-endian: low half first).
    let quantized: Vec<u32> = quantized
        .chunks_exact(2)
        .map(|pair| pair[0] as u16 as u32 | (pair[1] as u16 as u32) << 16)
        .collect();
    let mut packed_a = vec![0u32; MC.min(m).next_multiple_of(MR) * KC / 2];
    for k0 in (0..b.depth).step_by(KC) {
        let kc = KC.min(b.depth - k0);
        for m0 in (0..m).step_by(MC) {
            let mc = MC.min(m - m0);
            // Tiles of MR rows, pair-major: [pair][row].
            for (t, i0) in (m0..m0 + mc).step_by(MR).enumerate() {
                let tile = &mut packed_a[t * MR * kc / 2..(t + 1) * MR * kc / 2];
                let rows = MR.min(m0 + mc - i0);
                for (pair, words) in tile.chunks_exact_mut(MR).enumerate() {
                    for (r, word) in words.iter_mut().enumerate() {
                        *word = if r < rows {
                            quantized[(i0 + r) * half + k0 / 2 + pair]
                        } else {
                            0
                        };
                    }
                }
            }
            for panel in 0..n.div_ceil(NR) {
                let bp = &b.panels[panel * NR * b.depth + k0 * NR..][..kc * NR];
                let column_scales = &b.scales[panel * NR..(panel + 1) * NR];
                let cols = NR.min(n - panel * NR);
                for (t, i0) in (m0..m0 + mc).step_by(MR).enumerate() {
                    let rows = MR.min(m0 + mc - i0);
                    let ap = &packed_a[t * MR * kc / 2..(t + 1) * MR * kc / 2];
                    let c0 = &mut c[i0 * ldc + panel * NR..];
                    micro(
                        ap,
                        bp,
                        kc,
                        &row_scales[i0..i0 + rows],
                        column_scales,
                        c0,
                        ldc,
                        cols,
                    );
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn micro(
    ap: &[u32],
    bp: &[i16],
    kc: usize,
    row_scales: &[f32],
    column_scales: &[f32],
    c: &mut [f32],
    ldc: usize,
    cols: usize,
) {
    let rows = row_scales.len();
    assert!(ap.len() >= kc / 2 * MR && bp.len() >= kc * NR && column_scales.len() == NR);
    assert!(c.len() >= (rows - 1) * ldc + cols && cols <= NR && rows <= MR && kc.is_multiple_of(2));
    #[cfg(target_arch = "x86_64")]
    // SAFETY: bounds checked above; callers only come here on CPUs with AVX-512 VNNI.
    unsafe {
        x86::micro_vnni(
            ap.as_ptr(),
            bp.as_ptr(),
            kc,
            row_scales,
            column_scales.as_ptr(),
            c.as_mut_ptr(),
            ldc,
            cols,
        )
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (ap, bp, kc, row_scales, column_scales, c, ldc, cols);
        unreachable!("16-bit products run only on x86-64 with AVX-512 VNNI");
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn quantize_row(row: &[f32], out: &mut [i16]) -> f32 {
        let len = row.len().min(out.len());
        let tail = len % 16;
        let full = len - tail;
        let mask: __mmask16 = if tail == 0 { 0 } else { (1u16 << tail) - 1 };
        unsafe {
            let src = row.as_ptr();
            let mut amax = _mm512_setzero_ps();
            for i in (0..full).step_by(16) {
                amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_loadu_ps(src.add(i))));
            }
            if tail > 0 {
                let v = _mm512_maskz_loadu_ps(mask, src.add(full));
                amax = _mm512_max_ps(amax, _mm512_abs_ps(v));
            }
            let amax = _mm512_reduce_max_ps(amax);
            if amax == 0.0 {
                out[..len].fill(0);
                return 0.0;
            }
            let inverse = _mm512_set1_ps(super::LEVELS / amax);
            let dst = out.as_mut_ptr();
            // Conversion rounds to nearest even (the default rounding mode).
            for i in (0..full).step_by(16) {
                let q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(src.add(i)), inverse));
                _mm256_storeu_si256(dst.add(i) as *mut __m256i, _mm512_cvtsepi32_epi16(q));
            }
            if tail > 0 {
                let v = _mm512_maskz_loadu_ps(mask, src.add(full));
                let q = _mm512_cvtps_epi32(_mm512_mul_ps(v, inverse));
                _mm512_mask_cvtsepi32_storeu_epi16(dst.add(full), mask, q);
            }
            amax / super::LEVELS
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn micro_vnni(
        ap: *const u32,
        bp: *const i16,
        kc: usize,
        row_scales: &[f32],
        column_scales: *const f32,
        c: *mut f32,
        ldc: usize,
        cols: usize,
    ) {
        unsafe {
            let mut lo = [_mm512_setzero_si512(); MR];
            let mut hi = [_mm512_setzero_si512(); MR];
            for pair in 0..kc / 2 {
                let b0 = _mm512_loadu_si512(bp.add(pair * NR * 2) as *const __m512i);
                let b1 = _mm512_loadu_si512(bp.add(pair * NR * 2 + 32) as *const __m512i);
                let a = ap.add(pair * MR);
                for r in 0..MR {
                    let x = _mm512_set1_epi32(*a.add(r) as i32);
                    lo[r] = _mm512_dpwssd_epi32(lo[r], x, b0);
                    hi[r] = _mm512_dpwssd_epi32(hi[r], x, b1);
                }
            }
            let (mask_lo, mask_hi) = crate::inference::kernels::gemm::panel_masks(cols);
            let scale_lo = _mm512_loadu_ps(column_scales);
            let scale_hi = _mm512_loadu_ps(column_scales.add(16));
            for (r, &row_scale) in row_scales.iter().enumerate() {
                let row = c.add(r * ldc);
                let s = _mm512_set1_ps(row_scale);
                let add = _mm512_mul_ps(_mm512_cvtepi32_ps(lo[r]), _mm512_mul_ps(scale_lo, s));
                let old = _mm512_maskz_loadu_ps(mask_lo, row);
                _mm512_mask_storeu_ps(row, mask_lo, _mm512_add_ps(old, add));
                let add = _mm512_mul_ps(_mm512_cvtepi32_ps(hi[r]), _mm512_mul_ps(scale_hi, s));
                let old = _mm512_maskz_loadu_ps(mask_hi, row.add(16));
                _mm512_mask_storeu_ps(row.add(16), mask_hi, _mm512_add_ps(old, add));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::kernels::Isa;

    #[test]
    fn matches_float_products_to_twelve_bits() {
        if !Isa::available().contains(&Isa::Avx512Vnni) {
            return; // nothing to test: this CPU runs the f32 kernel
        }
        let pool = Pool::new(2);
        let mut seed = 5u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        for (m, n, k) in [(1, 5, 3), (13, 70, 301), (130, 33, 520), (40, 384, 1536)] {
            let a: Vec<f32> = (0..m * k).map(|_| next() * 4.0).collect();
            let b: Vec<f32> = (0..n * k).map(|_| next()).collect();
            let bias: Vec<f32> = (0..n).map(|_| next()).collect();
            let packed = PackedI16::from_rows(&b, n, k);
            let mut c = vec![0f32; m * n];
            matmul(&pool, &a, k, m, &packed, &bias, &mut c, n);
            for i in 0..m {
                for j in 0..n {
                    let terms = (0..k).map(|p| a[i * k + p] * b[j * k + p]);
                    let want: f32 = bias[j] + terms.clone().sum::<f32>();
                    let size: f32 = terms.map(f32::abs).sum();
                    // Two 12-bit roundings per product: well under 0.1% of the terms' sizes.
                    assert!(
                        (c[i * n + j] - want).abs() < 1e-3 * size + 1e-5,
                        "{m}x{n}x{k}"
                    );
                }
            }
        }
    }
}
