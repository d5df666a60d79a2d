//! Which instruction set the CPU kernels run on, chosen once at run time. The build targets
//! x86-64-v3 (AVX2, FMA, F16C) so one binary runs on every current x86 server; the AVX-512
//! kernels are compiled with `#[target_feature]` and only called when the CPU has them, the way
//! llama.cpp ships one CPU variant per feature level.
//!
//! `OPENLEDGER_CPU_KERNELS=portable|avx2|avx512` picks a lower level (to compare paths, or to
//! work around a kernel bug); asking for one the CPU lacks falls back to the best it has, with a
//! warning.

use std::sync::OnceLock;

/// The environment variable that overrides the detected level.
pub const KERNELS_ENV: &str = "OPENLEDGER_CPU_KERNELS";

/// A kernel family, from the plain Rust reference up to AVX-512 with VNNI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Plain Rust: the reference every other path is tested against.
    Portable,
    /// AVX2 + FMA + F16C (x86-64-v3).
    Avx2,
    /// AVX-512 F/BW/VL with VNNI (`vpdpbusd`) on top of AVX2; 512-bit vectors.
    Avx512Vnni,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Self::Portable => "portable",
            Self::Avx2 => "avx2",
            Self::Avx512Vnni => "avx512-vnni",
        }
    }

    /// The best level this CPU runs.
    pub fn detected() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c");
            let avx512 = avx2
                && std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512vnni");
            if avx512 {
                return Self::Avx512Vnni;
            }
            if avx2 {
                return Self::Avx2;
            }
        }
        Self::Portable
    }

    /// Every level this CPU runs, lowest first (what the tests loop over).
    pub fn available() -> Vec<Self> {
        let best = Self::detected();
        [Self::Portable, Self::Avx2, Self::Avx512Vnni].into_iter().filter(|isa| *isa <= best).collect()
    }

    /// The level the kernels use: the detected one, or a lower one named in [`KERNELS_ENV`].
    pub fn active() -> Self {
        static ACTIVE: OnceLock<Isa> = OnceLock::new();
        *ACTIVE.get_or_init(|| {
            let best = Self::detected();
            let Ok(asked) = std::env::var(KERNELS_ENV) else { return best };
            let wanted = match asked.trim() {
                "portable" => Self::Portable,
                "avx2" => Self::Avx2,
                "avx512" | "avx512-vnni" => Self::Avx512Vnni,
                other => {
                    tracing::warn!(
                        value = other,
                        "{KERNELS_ENV} is not portable, avx2 or avx512; using {}",
                        best.name()
                    );
                    return best;
                }
            };
            if wanted > best {
                tracing::warn!("{KERNELS_ENV}={asked}: this CPU lacks it; using {}", best.name());
                return best;
            }
            wanted
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_ordered_and_the_portable_one_always_runs() {
        let available = Isa::available();
        assert_eq!(available[0], Isa::Portable);
        assert_eq!(*available.last().unwrap_or(&Isa::Portable), Isa::detected());
        assert!(Isa::active() <= Isa::detected());
    }
}
