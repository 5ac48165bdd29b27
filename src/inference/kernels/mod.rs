//! CPU kernels of Compañero's own inference path (see `docs/architecture.md`, "CPU inference"):
//! quantised matrix products for GGUF chat models ([`quant`]), f32 and 16-bit integer matrix
//! products for embedders ([`gemm`], [`gemm_i16`]), vectorised element-wise functions
//! ([`math`]), and the fork-join [`pool`] they run on.
//!
//! The instruction set is chosen at run time, not compile time, so one x86-64 binary uses
//! AVX-512 where the CPU has it and AVX2 elsewhere; other architectures use portable code.

pub mod gemm;
pub mod gemm_i16;
pub mod math;
pub mod pool;
pub mod quant;

use std::sync::OnceLock;

/// The best kernels this CPU can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 with VNNI (integer dot products): Intel Ice Lake/Sapphire Rapids, AMD Zen 4 and
    /// later. (BF16 is not required: `vdpbf16ps` measured at a fifth of FMA's rate, unused.)
    Avx512Vnni,
    /// AVX2 with FMA (x86-64-v3: Haswell and later, Zen).
    Avx2,
    /// Portable code, also the reference the others are tested against.
    Scalar,
}

impl Isa {
    /// What this CPU supports, detected once. `COMPANERO_ISA=avx2|scalar` caps it (for
    /// comparisons and for tests of the fallbacks).
    pub fn detect() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            let best = Isa::available()[0];
            match std::env::var("COMPANERO_ISA").as_deref() {
                Ok("scalar") => Isa::Scalar,
                Ok("avx2") if best != Isa::Scalar => Isa::Avx2,
                _ => best,
            }
        })
    }

    /// Every kernel family this CPU can run, best first.
    pub fn available() -> Vec<Isa> {
        let mut isas = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                isas.push(Isa::Avx512Vnni);
            }
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                isas.push(Isa::Avx2);
            }
        }
        isas.push(Isa::Scalar);
        isas
    }

    /// True where the fast path beats candle's own kernels; elsewhere (aarch64 has candle's NEON
    /// kernels) the reference path runs.
    pub fn is_accelerated(self) -> bool {
        self != Isa::Scalar
    }
}
