//! AVX2 K-quant dot products, after llama.cpp's `ggml_vec_dot_q{4,5,6}_K_q8_K` (ggml-cpu
//! arch/x86/quants.c): 32 unsigned weight bytes × 32 activation bytes summed pairwise into i16
//! (`maddubs`), then multiplied by the sub-block scale and widened in one `madd`, summed in i32
//! per super-block and scaled in f32 with FMA. Q6_K's −32 offset comes from the activations'
//! 16-value sums rather than a second `maddubs`.
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::{Q8KRow, f16_at};
use crate::kernels::{BlockFormat, SUPER_BLOCK};

/// `R` weight rows against one activation row.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_rows<const R: usize>(format: BlockFormat, rows: [&[u8]; R], x: Q8KRow<'_>) -> [f32; R] {
    x.assert_fits(format, &rows);
    // SAFETY: the caller vouches for the CPU features; the assert above bounds every block and
    // activation access the kernels make (they read block `b` of each row within
    // `b*bytes..(b+1)*bytes`, and activation bytes `256b..256b+256`, sums `16b..16b+16`).
    unsafe {
        match format {
            BlockFormat::Q4K => q4k_or_q5k::<R, false>(rows, x),
            BlockFormat::Q5K => q4k_or_q5k::<R, true>(rows, x),
            BlockFormat::Q6K => q6k(rows, x),
            BlockFormat::Q4_0 | BlockFormat::Q4_1 | BlockFormat::Q5_0 | BlockFormat::Q5_1 | BlockFormat::Q8_0 => {
                unreachable!("not a K-quant")
            }
        }
    }
}

/// The eight 6-bit scales (bytes 0-7) and eight 6-bit mins (bytes 8-15) of a Q4_K/Q5_K block
/// from the 12 packed bytes at `packed` (ggml's `utmp` shuffle, on one vector).
///
/// # Safety
/// `packed` must be followed by at least 16 readable bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn scales_and_mins(packed: *const u8) -> __m128i {
    // Words w0 w1 w2 (w3 is not ours). Scales: w0 & 0x3f.., then the low nibbles of w2 with the
    // top two bits of w0's bytes on top; mins the same from w1 and the high nibbles of w2.
    // SAFETY: the caller guarantees 16 readable bytes.
    let words = unsafe { _mm_loadu_si128(packed.cast()) };
    let low = _mm_shuffle_epi32(words, 0b10_01_10_00); // w0 w2 w1 w2
    let low = _mm_and_si128(
        _mm_srlv_epi32(low, _mm_set_epi32(4, 0, 0, 0)),
        _mm_set_epi32(0x0f0f_0f0f, 0x3f3f_3f3f, 0x0f0f_0f0f, 0x3f3f_3f3f),
    );
    let top = _mm_shuffle_epi32(words, 0b01_00_00_00); // -- w0 -- w1
    let top = _mm_and_si128(_mm_srli_epi32(top, 2), _mm_set_epi32(0x3030_3030, 0, 0x3030_3030, 0));
    _mm_or_si128(low, top)
}

/// `scales` (eight i16 in each 128-bit lane) with scale `j` in every 16-bit element.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn broadcast_scale(scales: __m256i, j: i16) -> __m256i {
    _mm256_shuffle_epi8(scales, _mm256_set1_epi16(((2 * j + 1) << 8) | (2 * j)))
}

/// Q4_K, or Q5_K if `FIVE_BITS` (the same but for the fifth bit of every quant).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4k_or_q5k<const R: usize, const FIVE_BITS: bool>(rows: [&[u8]; R], x: Q8KRow<'_>) -> [f32; R] {
    let bytes = if FIVE_BITS { 176 } else { 144 };
    let quants_at = if FIVE_BITS { 48 } else { 16 };
    unsafe {
        let low_nibbles = _mm256_set1_epi8(0x0F);
        let low_bit = _mm256_set1_epi8(1);
        let mut acc = [_mm256_setzero_ps(); R];
        let mut acc_mins = [_mm_setzero_ps(); R];
        for b in 0..x.scale.len() {
            let q8 = x.quants.as_ptr().add(b * SUPER_BLOCK);
            let sums = _mm256_loadu_si256(x.bsums.as_ptr().add(b * 16).cast());
            // Σx per 32-value sub-block, pairs of the 16-value sums.
            let sums = _mm_hadd_epi16(_mm256_castsi256_si128(sums), _mm256_extracti128_si256(sums, 1));
            for r in 0..R {
                let block = rows[r].get_unchecked(b * bytes..(b + 1) * bytes);
                let d = f16_at(block, 0) * x.scale[b];
                let dmin = f16_at(block, 2) * x.scale[b];
                let scales_and_mins = _mm256_cvtepu8_epi16(scales_and_mins(block.as_ptr().add(4)));
                let mins = _mm_madd_epi16(_mm256_extracti128_si256(scales_and_mins, 1), sums);
                acc_mins[r] = _mm_fmadd_ps(_mm_set1_ps(-dmin), _mm_cvtepi32_ps(mins), acc_mins[r]);
                let scales = _mm256_castsi256_si128(scales_and_mins);
                let scales = _mm256_set_m128i(scales, scales);
                let mut high_bits = _mm256_loadu_si256(block.as_ptr().add(16).cast());
                let mut sum = _mm256_setzero_si256();
                for k in 0..4 {
                    let packed = _mm256_loadu_si256(block.as_ptr().add(quants_at + 32 * k).cast());
                    let mut low = _mm256_and_si256(packed, low_nibbles);
                    let mut high = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low_nibbles);
                    if FIVE_BITS {
                        low = _mm256_or_si256(low, _mm256_slli_epi16(_mm256_and_si256(high_bits, low_bit), 4));
                        high_bits = _mm256_srli_epi16(high_bits, 1);
                        high = _mm256_or_si256(high, _mm256_slli_epi16(_mm256_and_si256(high_bits, low_bit), 4));
                        high_bits = _mm256_srli_epi16(high_bits, 1);
                    }
                    let x_low = _mm256_loadu_si256(q8.add(64 * k).cast());
                    let x_high = _mm256_loadu_si256(q8.add(64 * k + 32).cast());
                    let low =
                        _mm256_madd_epi16(broadcast_scale(scales, 2 * k as i16), _mm256_maddubs_epi16(low, x_low));
                    let high = _mm256_madd_epi16(
                        broadcast_scale(scales, 2 * k as i16 + 1),
                        _mm256_maddubs_epi16(high, x_high),
                    );
                    sum = _mm256_add_epi32(sum, _mm256_add_epi32(low, high));
                }
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sum), acc[r]);
            }
        }
        std::array::from_fn(|r| horizontal_sum(acc[r]) + horizontal_sum_128(acc_mins[r]))
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k<const R: usize>(rows: [&[u8]; R], x: Q8KRow<'_>) -> [f32; R] {
    unsafe {
        let low_nibbles = _mm256_set1_epi8(0x0F);
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..x.scale.len() {
            let q8 = x.quants.as_ptr().add(b * SUPER_BLOCK);
            let sums = _mm256_loadu_si256(x.bsums.as_ptr().add(b * 16).cast());
            for r in 0..R {
                let block = rows[r].get_unchecked(b * 210..(b + 1) * 210);
                let d = f16_at(block, 208) * x.scale[b];
                let scales = _mm_loadu_si128(block.as_ptr().add(192).cast());
                // 32·Σ scale·Σx: the offset of the stored (q + 32).
                let offset = _mm256_slli_epi32(_mm256_madd_epi16(_mm256_cvtepi8_epi16(scales), sums), 5);
                let mut sum = _mm256_sub_epi32(_mm256_setzero_si256(), offset);
                for half in 0..2 {
                    let ql = block.as_ptr().add(64 * half);
                    let (low0, low1) = (_mm256_loadu_si256(ql.cast()), _mm256_loadu_si256(ql.add(32).cast()));
                    let high = _mm256_loadu_si256(block.as_ptr().add(128 + 32 * half).cast());
                    let quants = [
                        with_high::<0>(_mm256_and_si256(low0, low_nibbles), high),
                        with_high::<2>(_mm256_and_si256(low1, low_nibbles), high),
                        with_high::<4>(_mm256_and_si256(_mm256_srli_epi16(low0, 4), low_nibbles), high),
                        with_high::<6>(_mm256_and_si256(_mm256_srli_epi16(low1, 4), low_nibbles), high),
                    ];
                    for (k, quants) in quants.into_iter().enumerate() {
                        let t = 4 * half + k; // values 32t..32t+32: sub-blocks 2t and 2t+1
                        let pattern = _mm_set_epi64x(
                            i64::from_le_bytes([2 * t as u8 + 1; 8]),
                            i64::from_le_bytes([2 * t as u8; 8]),
                        );
                        let scale = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, pattern));
                        let products = _mm256_maddubs_epi16(quants, _mm256_loadu_si256(q8.add(32 * t).cast()));
                        sum = _mm256_add_epi32(sum, _mm256_madd_epi16(scale, products));
                    }
                }
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sum), acc[r]);
            }
        }
        std::array::from_fn(|r| horizontal_sum(acc[r]))
    }
}

/// `low` with bits `SHIFT..SHIFT+2` of each `high` byte as its bits 4-5 (a Q6_K quant).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn with_high<const SHIFT: i32>(low: __m256i, high: __m256i) -> __m256i {
    let high = _mm256_and_si256(_mm256_srli_epi16::<SHIFT>(high), _mm256_set1_epi8(3));
    _mm256_or_si256(low, _mm256_slli_epi16(high, 4))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn horizontal_sum(acc: __m256) -> f32 {
    horizontal_sum_128(_mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn horizontal_sum_128(quad: __m128) -> f32 {
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Isa;
    use crate::kernels::kquant::layout;

    #[test]
    fn the_vector_unpacking_of_scales_and_mins_matches_the_byte_unpacking() {
        if Isa::detected() < Isa::Avx2 {
            return;
        }
        for seed in 0..16u8 {
            let packed: Vec<u8> = (0..16u8).map(|i| i.wrapping_mul(97).wrapping_add(seed.wrapping_mul(61))).collect();
            let (scales, mins) = layout::scales_and_mins(&packed[..12]);
            let mut got = [0u8; 16];
            // SAFETY: AVX2 is present (checked above) and `packed` has 16 bytes.
            #[allow(unsafe_code)]
            unsafe {
                _mm_storeu_si128(got.as_mut_ptr().cast(), scales_and_mins(packed.as_ptr()));
            }
            assert_eq!(got[..8], scales, "scales, seed {seed}");
            assert_eq!(got[8..], mins, "mins, seed {seed}");
        }
    }
}
