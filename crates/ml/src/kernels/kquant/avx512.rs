//! AVX-512 VNNI K-quant dot products: the AVX2 scheme on 512-bit vectors (64 weight bytes,
//! two Q4_K/Q5_K sub-blocks or four Q6_K ones, per step), with `vpdpwssd` applying the
//! sub-block scales, widening and accumulating in one instruction where AVX2 needs `madd` and
//! `add`. The activation vectors of a super-block are loaded once for all `R` rows.
//!
//! (`vpdpbusd` would replace `maddubs` but then the 16-bit scale step has nothing to act on:
//! its four-product sums would each need a 32-bit multiply by the scale.)
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::{Q8KRow, avx2, f16_at};
use crate::kernels::{BlockFormat, SUPER_BLOCK};

/// `R` weight rows against one activation row.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
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

/// The super-block's 256 activation bytes as four 512-bit vectors.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn load_activations(q8: *const i8) -> [__m512i; 4] {
    // SAFETY: the caller passes the start of a 256-byte activation block.
    unsafe { std::array::from_fn(|k| _mm512_loadu_si512(q8.add(64 * k).cast())) }
}

/// Element `l` of 32 16-bit elements is `l / 16` (halves) or `l / 8` (quarters): added to a
/// broadcast index, `vpermw` then spreads two or four sub-block scales over a vector.
const HALVES: [i16; 32] =
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1];
const QUARTERS: [i16; 32] =
    [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3];

/// Q4_K, or Q5_K if `FIVE_BITS` (the same but for the fifth bit of every quant).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q4k_or_q5k<const R: usize, const FIVE_BITS: bool>(rows: [&[u8]; R], x: Q8KRow<'_>) -> [f32; R] {
    let bytes = if FIVE_BITS { 176 } else { 144 };
    let quants_at = if FIVE_BITS { 48 } else { 16 };
    // SAFETY: see `dot_rows`; block `b` is `bytes` long and every load ends inside it.
    unsafe {
        let low_nibbles = _mm512_set1_epi8(0x0F);
        let low_bit = _mm512_set1_epi8(1);
        let halves = _mm512_loadu_si512(HALVES.as_ptr().cast());
        let mut acc = [_mm512_setzero_ps(); R];
        let mut acc_mins = [_mm_setzero_ps(); R];
        for b in 0..x.scale.len() {
            let activations = load_activations(x.quants.as_ptr().add(b * SUPER_BLOCK));
            let sums = _mm256_loadu_si256(x.bsums.as_ptr().add(b * 16).cast());
            let sums = _mm_hadd_epi16(_mm256_castsi256_si128(sums), _mm256_extracti128_si256(sums, 1));
            for r in 0..R {
                let block = rows[r].get_unchecked(b * bytes..(b + 1) * bytes);
                let d = f16_at(block, 0) * x.scale[b];
                let dmin = f16_at(block, 2) * x.scale[b];
                let scales_and_mins = _mm256_cvtepu8_epi16(avx2::scales_and_mins(block.as_ptr().add(4)));
                let mins = _mm256_extracti128_si256(scales_and_mins, 1);
                acc_mins[r] =
                    _mm_fmadd_ps(_mm_set1_ps(-dmin), _mm_cvtepi32_ps(_mm_madd_epi16(mins, sums)), acc_mins[r]);
                let scales = _mm512_castsi256_si512(scales_and_mins);
                // Fifth bits: the low half of this vector serves even sub-blocks, the high half odd.
                let high_bits = _mm256_loadu_si256(block.as_ptr().add(16).cast());
                let mut high_bits =
                    _mm512_inserti64x4(_mm512_castsi256_si512(high_bits), _mm256_srli_epi16(high_bits, 1), 1);
                let mut sum = _mm512_setzero_si512();
                for (k, &activations) in activations.iter().enumerate() {
                    let packed = _mm256_loadu_si256(block.as_ptr().add(quants_at + 32 * k).cast());
                    let both = _mm512_inserti64x4(_mm512_castsi256_si512(packed), _mm256_srli_epi16(packed, 4), 1);
                    let mut quants = _mm512_and_si512(both, low_nibbles);
                    if FIVE_BITS {
                        let fifth = _mm512_slli_epi16(_mm512_and_si512(high_bits, low_bit), 4);
                        quants = _mm512_or_si512(quants, fifth);
                        high_bits = _mm512_srli_epi16(high_bits, 2);
                    }
                    let scale =
                        _mm512_permutexvar_epi16(_mm512_add_epi16(halves, _mm512_set1_epi16(2 * k as i16)), scales);
                    sum = _mm512_dpwssd_epi32(sum, _mm512_maddubs_epi16(quants, activations), scale);
                }
                acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sum), acc[r]);
            }
        }
        std::array::from_fn(|r| _mm512_reduce_add_ps(acc[r]) + horizontal_sum_128(acc_mins[r]))
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q6k<const R: usize>(rows: [&[u8]; R], x: Q8KRow<'_>) -> [f32; R] {
    // SAFETY: see `dot_rows`; block `b` is 210 bytes long and every load ends inside it.
    unsafe {
        let low_nibbles = _mm512_set1_epi8(0x0F);
        let low_two = _mm512_set1_epi8(3);
        let quarters = _mm512_loadu_si512(QUARTERS.as_ptr().cast());
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..x.scale.len() {
            let activations = load_activations(x.quants.as_ptr().add(b * SUPER_BLOCK));
            let sums = _mm256_loadu_si256(x.bsums.as_ptr().add(b * 16).cast());
            for r in 0..R {
                let block = rows[r].get_unchecked(b * 210..(b + 1) * 210);
                let d = f16_at(block, 208) * x.scale[b];
                let scales = _mm256_cvtepi8_epi16(_mm_loadu_si128(block.as_ptr().add(192).cast()));
                // 32·Σ scale·Σx: the offset of the stored (q + 32).
                let offset = _mm256_slli_epi32(_mm256_madd_epi16(scales, sums), 5);
                let mut sum = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_zextsi256_si512(offset));
                let scales = _mm512_castsi256_si512(scales);
                for half in 0..2 {
                    // Low nibbles of 64 bytes: values 0..64 of this half; high nibbles: 64..128.
                    let low = _mm512_loadu_si512(block.as_ptr().add(64 * half).cast());
                    let high = _mm256_loadu_si256(block.as_ptr().add(128 + 32 * half).cast());
                    let high = _mm512_inserti64x4(_mm512_castsi256_si512(high), _mm256_srli_epi16(high, 2), 1);
                    let quants = [
                        _mm512_or_si512(
                            _mm512_and_si512(low, low_nibbles),
                            _mm512_slli_epi16(_mm512_and_si512(high, low_two), 4),
                        ),
                        _mm512_or_si512(
                            _mm512_and_si512(_mm512_srli_epi16(low, 4), low_nibbles),
                            _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(high, 4), low_two), 4),
                        ),
                    ];
                    for (k, quants) in quants.into_iter().enumerate() {
                        let t = 2 * half + k; // values 64t..64t+64: sub-blocks 4t..4t+4
                        let index = _mm512_add_epi16(quarters, _mm512_set1_epi16(4 * t as i16));
                        let scale = _mm512_permutexvar_epi16(index, scales);
                        sum = _mm512_dpwssd_epi32(sum, _mm512_maddubs_epi16(quants, activations[t]), scale);
                    }
                }
                acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sum), acc[r]);
            }
        }
        std::array::from_fn(|r| _mm512_reduce_add_ps(acc[r]))
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn horizontal_sum_128(quad: __m128) -> f32 {
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)))
}
