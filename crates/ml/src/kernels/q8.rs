//! Activations quantized to 8 bits a block of [`BLOCK`] at a time, as the panel kernels read
//! them: scale `d = amax / 127`, quants `round(v / d)` (halves away from zero, as GGML's
//! reference rounds) and their sum. The x86 kernel gives the portable one's results bit for bit:
//! the same f32 operations in the same order, and the rounding done exactly (truncate, then
//! step away from zero when the fraction is at least a half).

use super::{BLOCK, Isa};

/// Quantizes one block into `quants`; returns its scale and the quants' sum. A block is
/// [`BLOCK`] values, or 16 (an adapter's `B·u`, quantized by the reference on every level).
pub(crate) fn quantize_block(values: &[f32], quants: &mut [i8]) -> (f32, i32) {
    assert!(
        (values.len() == BLOCK || values.len() == BLOCK / 2) && quants.len() == values.len(),
        "a block is {BLOCK} or {} values",
        BLOCK / 2
    );
    if values.len() != BLOCK {
        return portable(values, quants);
    }
    match Isa::active() {
        Isa::Portable => portable(values, quants),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => x86::block(values, quants),
        #[cfg(not(target_arch = "x86_64"))]
        _ => portable(values, quants),
    }
}

/// The largest `|v|` of `values` (NaN ignored, as `f32::max` ignores it), in eight lanes:
/// `f32::max`'s NaN rule keeps a plain fold from vectorizing.
pub(crate) fn largest_magnitude(values: &[f32]) -> f32 {
    let larger = |m: f32, v: f32| if v > m { v } else { m };
    let mut lanes = [0f32; 8];
    let mut chunks = values.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane = larger(*lane, v.abs());
        }
    }
    let rest = chunks.remainder().iter().fold(0f32, |m, v| larger(m, v.abs()));
    lanes.into_iter().fold(rest, larger)
}

/// The plain Rust reference.
fn portable(values: &[f32], quants: &mut [i8]) -> (f32, i32) {
    let amax = largest_magnitude(values);
    let d = amax / 127.0;
    let inverse = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0i32;
    for (q, v) in quants.iter_mut().zip(values) {
        *q = (v * inverse).round() as i8;
        sum += i32::from(*q);
    }
    (d, sum)
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::{BLOCK, Isa};

    pub(super) fn block(values: &[f32], quants: &mut [i8]) -> (f32, i32) {
        assert!(Isa::detected() >= Isa::Avx2, "this CPU cannot run AVX2");
        assert!(values.len() == BLOCK && quants.len() == BLOCK);
        // SAFETY: the CPU has AVX2 (checked above); both slices hold a block of 32, which is
        // all `block_avx2` reads and writes.
        unsafe { block_avx2(values, quants) }
    }

    /// `round(s)` with halves away from zero, exactly: `trunc(s)` plus `sign(s)` where
    /// `|s − trunc(s)| ≥ 0.5` (adding 0.5 first would round 0.49999997 up).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn round_away(s: __m256) -> __m256 {
        let sign = _mm256_set1_ps(-0.0);
        let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(s);
        let fraction = _mm256_andnot_ps(sign, _mm256_sub_ps(s, t));
        let up = _mm256_cmp_ps::<_CMP_GE_OQ>(fraction, _mm256_set1_ps(0.5));
        let step = _mm256_or_ps(_mm256_and_ps(s, sign), _mm256_set1_ps(1.0));
        _mm256_add_ps(t, _mm256_and_ps(up, step))
    }

    /// Safety: the CPU has AVX2; `values` and `quants` hold 32 elements.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn block_avx2(values: &[f32], quants: &mut [i8]) -> (f32, i32) {
        let sign = _mm256_set1_ps(-0.0);
        let mut v = [_mm256_setzero_ps(); 4];
        for (k, v) in v.iter_mut().enumerate() {
            // SAFETY: the four loads read values 0..32.
            *v = unsafe { _mm256_loadu_ps(values.as_ptr().add(8 * k)) };
        }
        let abs = |v: __m256| _mm256_andnot_ps(sign, v);
        let m = _mm256_max_ps(_mm256_max_ps(abs(v[0]), abs(v[1])), _mm256_max_ps(abs(v[2]), abs(v[3])));
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        let d = amax / 127.0;
        let inverse = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
        // Integral values of at most 127 in magnitude: the conversion is exact.
        let mut q = [_mm256_setzero_si256(); 4];
        for (q, v) in q.iter_mut().zip(v) {
            *q = _mm256_cvttps_epi32(round_away(_mm256_mul_ps(v, inverse)));
        }
        let sums = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        let sums = _mm_add_epi32(_mm256_castsi256_si128(sums), _mm256_extracti128_si256(sums, 1));
        let sums = _mm_hadd_epi32(sums, sums);
        let sum = _mm_cvtsi128_si32(_mm_hadd_epi32(sums, sums));
        // The packs work within 128-bit lanes: the bytes come out as 4-value groups of
        // q0 q1 q2 q3 (low halves) then the same of the high halves; the permute puts each
        // 32-bit group back in order.
        let bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        let bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        // SAFETY: `quants` holds 32 bytes; the store is unaligned.
        unsafe { _mm256_storeu_si256(quants.as_mut_ptr().cast(), bytes) };
        (d, sum)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;

    /// Every level gives the portable block's scale, quants and sum bit for bit: random blocks
    /// of many magnitudes, an all-zero block, and blocks whose scaled values fall exactly on
    /// halves (amax 127, so d = 1) or just below them.
    #[test]
    fn every_level_quantizes_like_the_portable_reference() {
        let mut rng = StdRng::seed_from_u64(9);
        let mut blocks: Vec<Vec<f32>> = (0..200)
            .map(|_| {
                let scale = 10f32.powi(rng.random_range(-6..4));
                (0..BLOCK).map(|_| rng.random_range(-1.0f32..1.0) * scale).collect()
            })
            .collect();
        blocks.push(vec![0.0; BLOCK]);
        let mut halves: Vec<f32> = (0..BLOCK).map(|i| i as f32 - 15.5).collect();
        halves[0] = 127.0;
        blocks.push(halves.clone());
        blocks.push(halves.iter().map(|v| -v).collect());
        blocks.push(halves.iter().map(|v| if v.fract() != 0.0 { v - v.signum() * 1e-5 } else { *v }).collect());
        type Quantize = fn(&[f32], &mut [i8]) -> (f32, i32);
        #[allow(unused_mut)]
        let mut levels: Vec<(&str, Quantize)> = vec![("active", quantize_block)];
        #[cfg(target_arch = "x86_64")]
        if Isa::detected() >= Isa::Avx2 {
            levels.push(("avx2", x86::block));
        }
        for (b, values) in blocks.iter().enumerate() {
            let mut expected = [0i8; BLOCK];
            let (d, sum) = portable(values, &mut expected);
            assert_eq!(sum, expected.iter().map(|q| i32::from(*q)).sum::<i32>());
            for (name, quantize) in &levels {
                let mut got = [0i8; BLOCK];
                let (got_d, got_sum) = quantize(values, &mut got);
                assert_eq!((got_d.to_bits(), got_sum, got), (d.to_bits(), sum, expected), "{name} block {b}");
            }
        }
        // Halves round away from zero: 15.5 → 16, −0.5 → −1.
        let mut q = [0i8; BLOCK];
        portable(&halves, &mut q);
        assert_eq!((q[31], q[15], q[16]), (16, -1, 1));
    }
}
