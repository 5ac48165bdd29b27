//! f32 matrix products for embedders: `C = A · Bᵀ (+ bias)`, with `B` (the weights) packed once
//! into panels of 32 columns. The AVX-512 micro-kernel keeps an 8 × 32 tile of C in 16 registers
//! and streams A and a panel of B through it (the classic GotoBLAS blocking); other CPUs run a
//! portable kernel with the same blocking that the compiler vectorises.
//!
//! Why not candle's matmul: it reaches AVX2 at most (its `gemm` crate needs a nightly compiler for
//! AVX-512), which is half of what these cores can do.

use super::Isa;
use super::pool::Pool;

/// Columns of C per panel (two 16-lane registers).
pub const NR: usize = 32;
/// Rows of C per micro-kernel call: 12 × 2 accumulators, 2 panel registers and a broadcast
/// use 27 of the 32 vector registers.
const MR: usize = 12;
/// Depth per pass, so a panel slice (32 × 256 floats) stays in L1.
const KC: usize = 256;
/// Rows of A per pass, so they stay in L2 while every panel goes by.
const MC: usize = 128;

/// `B` (`n` rows of `k`) packed as panels: for each group of 32 rows, `k` steps of 32 values.
pub struct PackedB {
    pub n: usize,
    pub k: usize,
    panels: Vec<f32>,
}

impl PackedB {
    /// Packs `b`, row-major `n × k` (a linear layer's weight: outputs × inputs).
    pub fn from_rows(b: &[f32], n: usize, k: usize) -> PackedB {
        let mut packed = PackedB::zeroed(n, k);
        packed.fill(|row, col| b[row * k + col]);
        packed
    }

    /// Packs the transpose of `b`, row-major `k × n` (attention's values: keys × dimensions),
    /// reading it with a row stride of `stride`.
    pub fn from_columns(b: &[f32], k: usize, n: usize, stride: usize) -> PackedB {
        let mut packed = PackedB::zeroed(n, k);
        packed.fill(|row, col| b[col * stride + row]);
        packed
    }

    /// Like `from_rows` for rows read with a stride (attention's keys inside a wider matrix).
    pub fn from_strided_rows(b: &[f32], n: usize, k: usize, stride: usize) -> PackedB {
        let mut packed = PackedB::zeroed(n, k);
        packed.fill(|row, col| b[row * stride + col]);
        packed
    }

    fn zeroed(n: usize, k: usize) -> PackedB {
        PackedB {
            n,
            k,
            panels: vec![0.0; n.div_ceil(NR) * NR * k],
        }
    }

    fn fill(&mut self, value: impl Fn(usize, usize) -> f32) {
        let k = self.k;
        for panel in 0..self.n.div_ceil(NR) {
            let base = panel * NR * k;
            for col in 0..k {
                for lane in 0..NR {
                    let row = panel * NR + lane;
                    if row < self.n {
                        self.panels[base + col * NR + lane] = value(row, col);
                    }
                }
            }
        }
    }
}

/// `c[i][j] = Σ_k a[i][k] · b[j][k] (+ bias[j])` for `m` rows of `a` (row stride `lda`);
/// `c` is row-major with row stride `ldc`. Rows of C are split across the pool's threads.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    pool: &Pool,
    isa: Isa,
    a: &[f32],
    lda: usize,
    m: usize,
    b: &PackedB,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
) {
    assert!(m == 0 || a.len() >= (m - 1) * lda + b.k);
    assert!(m == 0 || c.len() >= (m - 1) * ldc + b.n);
    if m * b.n * b.k < 64 * 64 * 64 {
        // Too small to be worth a fork.
        matmul_serial(isa, a, lda, m, b, bias, c, ldc);
        return;
    }
    split_rows(pool, c, m, ldc, b.n, MR, |first, rows, part| {
        matmul_serial(isa, &a[first * lda..], lda, rows, b, bias, part, ldc);
    });
}

/// Splits the `m` rows of C (stride `ldc`, `n` columns used) into one part per thread, each a
/// multiple of `align` rows, and runs `task(first_row, rows, part)` on every part in parallel.
pub(super) fn split_rows(
    pool: &Pool,
    c: &mut [f32],
    m: usize,
    ldc: usize,
    n: usize,
    align: usize,
    task: impl Fn(usize, usize, &mut [f32]) + Sync,
) {
    if m == 0 {
        return;
    }
    // The last row may be shorter than the stride.
    let c = &mut c[..(m - 1) * ldc + n];
    let rows_per_part = m.div_ceil(pool.threads()).next_multiple_of(align);
    let mut parts: Vec<&mut [f32]> = c.chunks_mut(rows_per_part * ldc).collect();
    pool.for_each(&mut parts, |index, part| {
        let first = index * rows_per_part;
        task(first, (m - first).min(rows_per_part), part);
    });
}

/// Lane masks of the two 16-lane halves of a 32-column panel with `cols` columns in use.
pub(super) fn panel_masks(cols: usize) -> (u16, u16) {
    let bits = |count: usize| {
        if count >= 16 {
            0xFFFF
        } else {
            (1u16 << count) - 1
        }
    };
    (bits(cols.min(16)), bits(cols.saturating_sub(16)))
}

/// [`matmul`] on the calling thread only (for callers that parallelise at a coarser grain).
#[allow(clippy::too_many_arguments)]
pub fn matmul_serial(
    isa: Isa,
    a: &[f32],
    lda: usize,
    m: usize,
    b: &PackedB,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
) {
    if m == 0 {
        return;
    }
    let (n, k) = (b.n, b.k);
    assert!(a.len() >= (m - 1) * lda + k && c.len() >= (m - 1) * ldc + n);
    for i in 0..m {
        let row = &mut c[i * ldc..i * ldc + n];
        match bias {
            Some(bias) => row.copy_from_slice(&bias[..n]),
            None => row.fill(0.0),
        }
    }
    // A block of A is packed once per (depth, rows) pass into MR-row tiles, depth-major, so the
    // micro-kernel broadcasts from one stream; it is then reused against every panel of B.
    let mut packed_a = vec![0f32; MC.min(m).next_multiple_of(MR) * KC.min(k)];
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        for m0 in (0..m).step_by(MC) {
            let mc = MC.min(m - m0);
            for (t, i0) in (m0..m0 + mc).step_by(MR).enumerate() {
                let rows = MR.min(m0 + mc - i0);
                let tile = &mut packed_a[t * MR * kc..(t + 1) * MR * kc];
                // Depth-outer so the tile is written in order (stores scattered across rows
                // cost more than the strided loads).
                for (p, column) in tile.chunks_exact_mut(MR).enumerate() {
                    for (r, value) in column.iter_mut().enumerate() {
                        *value = if r < rows {
                            a[(i0 + r) * lda + k0 + p]
                        } else {
                            0.0
                        };
                    }
                }
            }
            for panel in 0..n.div_ceil(NR) {
                let bp = &b.panels[panel * NR * k + k0 * NR..][..kc * NR];
                let cols = NR.min(n - panel * NR);
                for (t, i0) in (m0..m0 + mc).step_by(MR).enumerate() {
                    let rows = MR.min(m0 + mc - i0);
                    let ap = &packed_a[t * MR * kc..(t + 1) * MR * kc];
                    let c0 = &mut c[i0 * ldc + panel * NR..];
                    micro(isa, ap, rows, bp, kc, c0, ldc, cols);
                }
            }
        }
    }
}

/// `c[r][j] += Σ_{p < kc} ap[p·MR + r] · bp[p·32 + j]` for `rows` rows and `cols` columns
/// (`ap` is a packed tile of A).
#[allow(clippy::too_many_arguments)]
fn micro(
    isa: Isa,
    ap: &[f32],
    rows: usize,
    bp: &[f32],
    kc: usize,
    c: &mut [f32],
    ldc: usize,
    cols: usize,
) {
    assert!(ap.len() >= kc * MR && bp.len() >= kc * NR);
    assert!(c.len() >= (rows - 1) * ldc + cols && cols <= NR && rows <= MR);
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        let (ap, bp, c) = (ap.as_ptr(), bp.as_ptr(), c.as_mut_ptr());
        // SAFETY: the CPU has AVX-512 (detected); bounds were checked above. Rows past `rows`
        // are computed from the tile's zero padding and not stored.
        unsafe { x86::micro_avx512(ap, bp, kc, c, ldc, rows, cols) };
        return;
    }
    let _ = isa;
    for r in 0..rows {
        let mut acc = [0f32; NR];
        for p in 0..kc {
            let x = ap[p * MR + r];
            let bv = &bp[p * NR..p * NR + NR];
            for j in 0..NR {
                acc[j] += x * bv[j];
            }
        }
        for (out, v) in c[r * ldc..r * ldc + cols].iter_mut().zip(acc) {
            *out += v;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    #[target_feature(enable = "avx512f,fma")]
    pub unsafe fn micro_avx512(
        ap: *const f32,
        bp: *const f32,
        kc: usize,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
    ) {
        unsafe {
            let mut lo = [_mm512_setzero_ps(); MR];
            let mut hi = [_mm512_setzero_ps(); MR];
            for p in 0..kc {
                let b0 = _mm512_loadu_ps(bp.add(p * NR));
                let b1 = _mm512_loadu_ps(bp.add(p * NR + 16));
                let a = ap.add(p * MR);
                for r in 0..MR {
                    let x = _mm512_set1_ps(*a.add(r));
                    lo[r] = _mm512_fmadd_ps(x, b0, lo[r]);
                    hi[r] = _mm512_fmadd_ps(x, b1, hi[r]);
                }
            }
            // Partial panels (the last columns of C) are written through masks.
            let (mask_lo, mask_hi) = super::panel_masks(cols);
            for r in 0..rows {
                let row = c.add(r * ldc);
                let old = _mm512_maskz_loadu_ps(mask_lo, row);
                _mm512_mask_storeu_ps(row, mask_lo, _mm512_add_ps(old, lo[r]));
                let old = _mm512_maskz_loadu_ps(mask_hi, row.add(16));
                _mm512_mask_storeu_ps(row.add(16), mask_hi, _mm512_add_ps(old, hi[r]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_naive_product_on_ragged_shapes() {
        let pool = Pool::new(2);
        let mut seed = 3u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        for (m, n, k) in [(1, 5, 3), (13, 70, 300), (130, 33, 520), (9, 384, 384)] {
            let a: Vec<f32> = (0..m * k).map(|_| next()).collect();
            let b: Vec<f32> = (0..n * k).map(|_| next()).collect();
            let bias: Vec<f32> = (0..n).map(|_| next()).collect();
            let packed = PackedB::from_rows(&b, n, k);
            for isa in Isa::available() {
                let mut c = vec![0f32; m * n];
                matmul(&pool, isa, &a, k, m, &packed, Some(&bias), &mut c, n);
                for i in 0..m {
                    for j in 0..n {
                        let want: f32 =
                            bias[j] + (0..k).map(|p| a[i * k + p] * b[j * k + p]).sum::<f32>();
                        assert!((c[i * n + j] - want).abs() < 1e-4, "{isa:?} {m}x{n}x{k}");
                    }
                }
            }
            // The transposed packing reads the same matrix stored column-wise.
            let bt: Vec<f32> = (0..k * n).map(|i| b[(i % n) * k + i / n]).collect();
            assert_eq!(PackedB::from_columns(&bt, k, n, n).panels, packed.panels);
        }
    }
}

#[cfg(test)]
mod speed {
    use super::*;

    /// `cargo test --release --lib gemm_speed -- --ignored --nocapture`: GFLOP/s of the shapes
    /// an embedding batch runs (MiniLM, 32 inputs of 230 tokens).
    #[test]
    #[ignore]
    fn gemm_speed() {
        let threads = std::env::var("GEMM_THREADS").map_or(2, |v| v.parse().unwrap());
        let pool = Pool::new(threads);
        for (m, n, k) in [
            (7360, 1152, 384),
            (7360, 384, 384),
            (7360, 1536, 384),
            (7360, 384, 1536),
        ] {
            let a = vec![0.5f32; m * k];
            let b = PackedB::from_rows(&vec![0.25f32; n * k], n, k);
            let mut c = vec![0f32; m * n];
            let started = std::time::Instant::now();
            for _ in 0..3 {
                matmul(&pool, Isa::detect(), &a, k, m, &b, None, &mut c, n);
            }
            let seconds = started.elapsed().as_secs_f64() / 3.0;
            println!(
                "{m}x{n}x{k}: {:.1} GFLOP/s",
                2.0 * (m * n * k) as f64 / seconds / 1e9
            );
        }
    }
}
