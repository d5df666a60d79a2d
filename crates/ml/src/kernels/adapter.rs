//! LoRA adapter weights on the CPU: the dot products a delta is made of (`u = A·x`, `Δ = B·u`)
//! for weights held as f16 or f32 against f32 activations, and the rounding of a file's f32
//! values to f16 at load. f16 weights (what the CPU holds for serving: half the bytes to read
//! when every row of a batch reads its own adapter) are widened in registers (F16C's
//! `vcvtph2ps`, part of x86-64-v3) and multiplied in f32, so the only difference from f32
//! weights is the rounding of the stored values.

use half::f16;

use super::Isa;

/// An element type adapter weights are held in.
pub(crate) trait AdapterWeight: candle_core::WithDType {
    /// `Σ w[i]·x[i]`; the slices have equal length.
    fn dot(w: &[Self], x: &[f32]) -> f32;
}

impl AdapterWeight for f32 {
    fn dot(w: &[f32], x: &[f32]) -> f32 {
        crate::host::dot(w, x)
    }
}

impl AdapterWeight for f16 {
    fn dot(w: &[f16], x: &[f32]) -> f32 {
        assert_eq!(w.len(), x.len());
        match Isa::active() {
            Isa::Portable => portable::dot(w, x),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx512Vnni => x86::dot(w, x),
            #[cfg(not(target_arch = "x86_64"))]
            _ => portable::dot(w, x),
        }
    }
}

/// f32 values of this magnitude or more round to an infinite f16 (the largest finite one is
/// 65504, and 65520 is halfway to the next power of two).
pub(crate) const F16_OVERFLOW: f32 = 65520.0;

/// Appends the little-endian f32 values in `bytes` to `out`, rounded to the nearest f16 (ties
/// to even, as `half` and F16C round). Returns false if a value rounds to infinity (its
/// magnitude is [`F16_OVERFLOW`] or more) or is not finite; what it appended is then not to be
/// used.
pub(crate) fn narrow(bytes: &[u8], out: &mut Vec<f16>) -> bool {
    match Isa::active() {
        Isa::Portable => portable::narrow(bytes, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => x86::narrow(bytes, out),
        #[cfg(not(target_arch = "x86_64"))]
        _ => portable::narrow(bytes, out),
    }
}

/// The plain Rust reference.
mod portable {
    use half::f16;

    /// In eight lanes like `host::dot`.
    pub(super) fn dot(w: &[f16], x: &[f32]) -> f32 {
        let mut lanes = [0f32; 8];
        let (w_chunks, x_chunks) = (w.chunks_exact(8), x.chunks_exact(8));
        let tail: f32 = w_chunks.remainder().iter().zip(x_chunks.remainder()).map(|(w, x)| w.to_f32() * x).sum();
        for (cw, cx) in w_chunks.zip(x_chunks) {
            for i in 0..8 {
                lanes[i] += cw[i].to_f32() * cx[i];
            }
        }
        lanes.iter().sum::<f32>() + tail
    }

    pub(super) fn narrow(bytes: &[u8], out: &mut Vec<f16>) -> bool {
        let values = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let mut in_range = true;
        out.extend(values.map(|v| {
            in_range &= v.abs() < super::F16_OVERFLOW;
            f16::from_f32(v)
        }));
        in_range
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::super::Isa;

    /// Callers pass slices of equal length.
    pub(super) fn dot(w: &[f16], x: &[f32]) -> f32 {
        assert!(Isa::detected() >= Isa::Avx2, "this CPU cannot run AVX2");
        assert_eq!(w.len(), x.len());
        // SAFETY: the CPU has AVX2, FMA and F16C (checked above) and the slices are of equal
        // length, which is all `dot_avx2` reads within.
        unsafe { dot_avx2(w, x) }
    }

    pub(super) fn narrow(bytes: &[u8], out: &mut Vec<f16>) -> bool {
        assert!(Isa::detected() >= Isa::Avx2, "this CPU cannot run AVX2");
        let n = bytes.len() / 4;
        out.reserve(n);
        let spare = &mut out.spare_capacity_mut()[..n];
        // SAFETY: the CPU has AVX2 and F16C (checked above); `narrow_avx2` reads `4n` bytes of
        // `bytes` and writes `n` elements of `spare`, both that long.
        let in_range = unsafe { narrow_avx2(bytes.as_ptr(), spare.as_mut_ptr().cast::<u16>(), n) };
        // SAFETY: `narrow_avx2` initialised the `n` spare elements after the current length.
        unsafe { out.set_len(out.len() + n) };
        in_range
    }

    /// Eight f16 at `p` as eight f32.
    ///
    /// Safety: F16C; `p` points at 8 readable f16 (unaligned is fine).
    #[inline(always)]
    unsafe fn eight(p: *const f16) -> __m256 {
        // SAFETY: the caller's contract.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }

    /// Two accumulators of 8 lanes (16 weights an iteration), then the tail one at a time.
    ///
    /// Safety: the CPU has AVX2, FMA and F16C; `w.len() == x.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_avx2(w: &[f16], x: &[f32]) -> f32 {
        let n = w.len();
        let (pw, px) = (w.as_ptr(), x.as_ptr());
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        // SAFETY (all loads): `i + 16 ≤ n`, then `i + 8 ≤ n`; the loads are unaligned.
        while i + 16 <= n {
            unsafe {
                acc0 = _mm256_fmadd_ps(eight(pw.add(i)), _mm256_loadu_ps(px.add(i)), acc0);
                acc1 = _mm256_fmadd_ps(eight(pw.add(i + 8)), _mm256_loadu_ps(px.add(i + 8)), acc1);
            }
            i += 16;
        }
        if i + 8 <= n {
            unsafe { acc0 = _mm256_fmadd_ps(eight(pw.add(i)), _mm256_loadu_ps(px.add(i)), acc0) };
            i += 8;
        }
        let acc = _mm256_add_ps(acc0, acc1);
        let quad = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
        let mut sum = _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)));
        for j in i..n {
            sum += w[j].to_f32() * x[j];
        }
        sum
    }

    /// Eight values an iteration: rounded by `vcvtps2ph` (to nearest even), checked by
    /// comparing their magnitude with [`super::F16_OVERFLOW`] (false for NaN too).
    ///
    /// Safety: the CPU has AVX2 and F16C; `src` holds `4n` readable bytes, `dst` room for `n`
    /// writable u16 (neither need be aligned).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn narrow_avx2(src: *const u8, dst: *mut u16, n: usize) -> bool {
        let magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
        let overflow = _mm256_set1_ps(super::F16_OVERFLOW);
        let mut fits = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
        let mut i = 0;
        // SAFETY (all accesses): `i + 8 ≤ n` in the loop, `j < n` after it.
        while i + 8 <= n {
            unsafe {
                let v = _mm256_loadu_ps(src.add(4 * i).cast());
                fits = _mm256_and_ps(fits, _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_and_ps(v, magnitude), overflow));
                _mm_storeu_si128(dst.add(i).cast(), _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v));
            }
            i += 8;
        }
        let mut in_range = _mm256_movemask_ps(fits) == 0xFF;
        for j in i..n {
            let v = unsafe { f32::from_le_bytes(src.add(4 * j).cast::<[u8; 4]>().read()) };
            in_range &= v.abs() < super::F16_OVERFLOW;
            unsafe { dst.add(j).write(f16::from_f32(v).to_bits()) };
        }
        in_range
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;

    /// Every level this CPU runs agrees with f64 arithmetic on the same f16 values, on lengths
    /// around the vector widths (the tails) and the widths LoRA uses (rank 16, 576 features);
    /// f32 weights (the fallback) too.
    #[test]
    fn dot_matches_f64_arithmetic_on_every_level() {
        let mut rng = StdRng::seed_from_u64(5);
        for n in [0, 1, 7, 8, 9, 15, 16, 17, 31, 33, 576, 1000] {
            let w: Vec<f16> = (0..n).map(|_| f16::from_f32(rng.random_range(-1.0..1.0))).collect();
            let x: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
            let wide: Vec<f32> = w.iter().map(|w| w.to_f32()).collect();
            let exact: f64 = wide.iter().zip(&x).map(|(w, x)| f64::from(*w) * f64::from(*x)).sum();
            let scale: f64 = wide.iter().zip(&x).map(|(w, x)| f64::from((w * x).abs())).sum::<f64>().max(1.0);
            let check = |name: &str, dot: f32| assert!((f64::from(dot) - exact).abs() < 1e-5 * scale, "{name}, n {n}");
            check("portable", portable::dot(&w, &x));
            check("f32 weights", <f32 as AdapterWeight>::dot(&wide, &x));
            check("active", <f16 as AdapterWeight>::dot(&w, &x));
            #[cfg(target_arch = "x86_64")]
            if Isa::detected() >= Isa::Avx2 {
                check("avx2", x86::dot(&w, &x));
            }
        }
    }

    /// Rounding to f16 gives `half`'s result bit for bit on every level (ties, subnormals,
    /// the largest f16, signed zero, and values that round past it), appended after what `out`
    /// held, and says whether every value fits.
    #[test]
    fn narrow_rounds_like_half_on_every_level() {
        let mut rng = StdRng::seed_from_u64(6);
        let mut values: Vec<f32> =
            (0..1000).map(|_| rng.random_range(-3.0..3.0) * 10f32.powi(rng.random_range(-9..5))).collect();
        values.extend([0.0, -0.0, 1.0 + f32::EPSILON, 1.000_488_3, 6.0e-8, -6.1e-5, 65504.0, -65504.0, 65519.0]);
        let bytes = |v: &[f32]| v.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
        let expected: Vec<f16> = values.iter().map(|v| f16::from_f32(*v)).collect();
        type Narrow = fn(&[u8], &mut Vec<f16>) -> bool;
        let mut levels: Vec<(&str, Narrow)> = vec![("portable", portable::narrow), ("active", narrow)];
        #[cfg(target_arch = "x86_64")]
        if Isa::detected() >= Isa::Avx2 {
            levels.push(("avx2", x86::narrow));
        }
        for (name, narrow) in levels {
            for n in [0, 3, 8, 13, values.len()] {
                let mut out = vec![f16::ONE];
                assert!(narrow(&bytes(&values[..n]), &mut out), "{name}: {n} values in range");
                assert_eq!(out[0], f16::ONE, "{name}");
                let got: Vec<u16> = out[1..].iter().map(|h| h.to_bits()).collect();
                let want: Vec<u16> = expected[..n].iter().map(|h| h.to_bits()).collect();
                assert_eq!(got, want, "{name}, n {n}");
            }
            for bad in [65520.0, -1.0e6, f32::INFINITY, f32::NAN] {
                for at in [0, 5, 9] {
                    let mut v = vec![0.5f32; 11];
                    v[at] = bad;
                    assert!(!narrow(&bytes(&v), &mut Vec::new()), "{name}: {bad} at {at}");
                }
            }
        }
    }
}
