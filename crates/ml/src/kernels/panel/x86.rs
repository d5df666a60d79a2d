//! The panel kernels for x86-64: AVX-512 with VNNI (one `vpdpbusd` advances the 16 rows of a
//! panel by 4 quants) and AVX2 (two halves of 8 rows; `maddubs` then `madd`, as llama.cpp's
//! AVX2 dot products do). Activation quants are read 4 at a time and broadcast to every lane.

#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::super::{Isa, PANEL, Q8Row};
use super::Layout;

/// Checks what the unsafe kernels rely on: the CPU runs `isa`, `panels` holds whole panels of
/// `blocks` blocks, each activation row at least `blocks` blocks, and `out` is `C × PANEL` a
/// panel.
fn check<const C: usize, const L: usize>(
    isa: Isa,
    layout: Layout,
    panels: &[u8],
    blocks: usize,
    x: &[Q8Row<'_>; C],
    out: &[f32],
) {
    assert!(Isa::detected() >= isa, "this CPU cannot run {isa:?}");
    assert!(layout.block == L && (L == 32 || (L == 16 && !layout.nibbles && layout.offset != 0)));
    let panel_bytes = blocks * layout.block_bytes();
    assert!(blocks > 0 && panels.len().is_multiple_of(panel_bytes));
    assert_eq!(out.len(), panels.len() / panel_bytes * C * PANEL);
    for row in x {
        assert!(row.quants.len() >= blocks * L);
        assert!(row.scale.len() >= blocks && row.sum.len() >= blocks && row.scaled_sum.len() >= blocks);
    }
}

pub(super) fn tile_avx512<const C: usize, const L: usize>(
    layout: Layout,
    panel: &[u8],
    blocks: usize,
    x: &[Q8Row<'_>; C],
    out: &mut [f32],
) {
    check::<C, L>(Isa::Avx512Vnni, layout, panel, blocks, x, out);
    // SAFETY: `check` established the CPU features and every bound the kernel reads and writes
    // within (see `avx512`).
    unsafe { avx512_panels::<C, L>(layout, panel, blocks, x, out) }
}

pub(super) fn tile_avx2<const C: usize, const L: usize>(
    layout: Layout,
    panel: &[u8],
    blocks: usize,
    x: &[Q8Row<'_>; C],
    out: &mut [f32],
) {
    check::<C, L>(Isa::Avx2, layout, panel, blocks, x, out);
    // SAFETY: as for `tile_avx512`.
    unsafe { avx2_panels::<C, L>(layout, panel, blocks, x, out) }
}

/// Activation quants `4j..4j + 4` of block `b` (blocks of `L`) as one i32.
///
/// Safety: `quants` holds at least `L(b + 1)` bytes and `j < L / 4`.
#[inline(always)]
unsafe fn four<const L: usize>(quants: &[i8], b: usize, j: usize) -> i32 {
    // SAFETY: the caller keeps `Lb + 4j + 4 ≤ quants.len()`; the read is unaligned.
    unsafe { std::ptr::read_unaligned(quants.as_ptr().add(b * L + 4 * j).cast::<i32>()) }
}

/// [`avx512`] for each of several panels one after another (an adapter's matrix), in one call.
///
/// Safety: as for [`avx512`], with `panels` whole panels and `out` `C × PANEL` floats a panel.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn avx512_panels<const C: usize, const L: usize>(
    layout: Layout,
    panels: &[u8],
    blocks: usize,
    x: &[Q8Row<'_>; C],
    out: &mut [f32],
) {
    let panel_bytes = blocks * layout.block_bytes();
    for (panel, out) in panels.chunks_exact(panel_bytes).zip(out.chunks_exact_mut(C * PANEL)) {
        // SAFETY: the caller's contract, one panel at a time.
        unsafe { avx512::<C, L>(layout, panel, blocks, x, out) }
    }
}

/// [`avx2`] for each of several panels, as [`avx512_panels`].
///
/// Safety: as for [`avx2`], with `panels` whole panels and `out` `C × PANEL` floats a panel.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_panels<const C: usize, const L: usize>(
    layout: Layout,
    panels: &[u8],
    blocks: usize,
    x: &[Q8Row<'_>; C],
    out: &mut [f32],
) {
    let panel_bytes = blocks * layout.block_bytes();
    for (panel, out) in panels.chunks_exact(panel_bytes).zip(out.chunks_exact_mut(C * PANEL)) {
        // SAFETY: the caller's contract, one panel at a time.
        unsafe { avx2::<C, L>(layout, panel, blocks, x, out) }
    }
}

/// Blocks of `L` elements: 32, or 16 for 8-bit quants with an offset (adapter panels).
///
/// Safety: the CPU has AVX-512 F/BW/VL/VNNI and F16C; `panel` holds `blocks` panel blocks of
/// `layout`; every row of `x` holds `blocks` blocks; `out` is `C × PANEL` floats.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn avx512<const C: usize, const L: usize>(
    layout: Layout,
    panel: &[u8],
    blocks: usize,
    x: &[Q8Row<'_>; C],
    out: &mut [f32],
) {
    let header = layout.header_bytes();
    let block_bytes = layout.block_bytes();
    let low = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); C];
    for b in 0..blocks {
        // SAFETY: block `b` spans `block_bytes` bytes inside `panel`: its 32-byte scales, 32-byte
        // mins (Q4_1) and `groups` 64-byte quant groups all lie within it. Activation reads stay
        // in block `b` of each row (`four`). Loads are unaligned.
        unsafe {
            let block = panel.as_ptr().add(b * block_bytes);
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(block.cast()));
            let quants = block.add(header);
            // w[j] pairs with activation quants 4j..4j+4: Q4 low nibbles are elements 0..16,
            // high nibbles 16..32; Q8 groups are elements 4j..4j+4.
            let mut w = [_mm512_setzero_si512(); 8];
            if layout.nibbles {
                for g in 0..4 {
                    let v = _mm512_loadu_si512(quants.add(64 * g).cast());
                    w[g] = _mm512_and_si512(v, low);
                    w[4 + g] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
                }
            } else {
                for (g, w) in w.iter_mut().enumerate().take(L / 4) {
                    *w = _mm512_loadu_si512(quants.add(64 * g).cast());
                }
            }
            let m = if layout.has_min {
                _mm512_cvtph_ps(_mm256_loadu_si256(block.add(2 * PANEL).cast()))
            } else {
                _mm512_setzero_ps()
            };
            for (row, acc) in x.iter().zip(acc.iter_mut()) {
                // Two independent chains halve the dependency on `vpdpbusd`'s latency.
                let (mut even, mut odd) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                for j in (0..L / 4).step_by(2) {
                    even = _mm512_dpbusd_epi32(even, w[j], _mm512_set1_epi32(four::<L>(row.quants, b, j)));
                    odd = _mm512_dpbusd_epi32(odd, w[j + 1], _mm512_set1_epi32(four::<L>(row.quants, b, j + 1)));
                }
                let mut dot = _mm512_add_epi32(even, odd);
                if layout.offset != 0 {
                    dot = _mm512_sub_epi32(dot, _mm512_set1_epi32(layout.offset * *row.sum.get_unchecked(b)));
                }
                let scale = _mm512_mul_ps(d, _mm512_set1_ps(*row.scale.get_unchecked(b)));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, *acc);
                if layout.has_min {
                    *acc = _mm512_fmadd_ps(m, _mm512_set1_ps(*row.scaled_sum.get_unchecked(b)), *acc);
                }
            }
        }
    }
    for (out, acc) in out.chunks_exact_mut(PANEL).zip(acc) {
        // SAFETY: `out` chunks are PANEL = 16 floats; the store is unaligned.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), acc) };
    }
}

/// Safety: the CPU has AVX2, FMA and F16C; blocks and bounds as for [`avx512`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2<const C: usize, const L: usize>(
    layout: Layout,
    panel: &[u8],
    blocks: usize,
    x: &[Q8Row<'_>; C],
    out: &mut [f32],
) {
    let header = layout.header_bytes();
    let block_bytes = layout.block_bytes();
    let low = _mm256_set1_epi8(0x0F);
    let flip = _mm256_set1_epi8(-128);
    let ones = _mm256_set1_epi16(1);
    const HALF: usize = PANEL / 2;
    for half in 0..2 {
        let mut acc = [_mm256_setzero_ps(); C];
        for b in 0..blocks {
            // SAFETY: as in `avx512`; half `h` of a group is its bytes 32h..32h+32, of the scales
            // bytes 16h..16h+16.
            unsafe {
                let block = panel.as_ptr().add(b * block_bytes);
                let d = _mm256_cvtph_ps(_mm_loadu_si128(block.add(2 * HALF * half).cast()));
                let quants = block.add(header + 32 * half);
                let m = if layout.has_min {
                    _mm256_cvtph_ps(_mm_loadu_si128(block.add(2 * PANEL + 2 * HALF * half).cast()))
                } else {
                    _mm256_setzero_ps()
                };
                let mut dots = [_mm256_setzero_si256(); C];
                if layout.nibbles {
                    let mut w = [_mm256_setzero_si256(); 8];
                    for g in 0..4 {
                        let v = _mm256_loadu_si256(quants.add(64 * g).cast());
                        w[g] = _mm256_and_si256(v, low);
                        w[4 + g] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
                    }
                    for (row, dot) in x.iter().zip(dots.iter_mut()) {
                        // Sixteen nibble×quant products per i16 lane: at most 16·15·127 < 2¹⁵.
                        let mut pairs = _mm256_setzero_si256();
                        for (j, w) in w.iter().enumerate() {
                            let xq = _mm256_set1_epi32(four::<L>(row.quants, b, j));
                            pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(*w, xq));
                        }
                        *dot = _mm256_sub_epi32(
                            _mm256_madd_epi16(pairs, ones),
                            _mm256_set1_epi32(layout.offset * *row.sum.get_unchecked(b)),
                        );
                    }
                } else if layout.offset == 0 {
                    // Q5_1: quants of 0..=31, so `maddubs` pairs stay below 2·31·127 and four
                    // of them fit an i16 lane; no offset (the min term instead).
                    for (row, dot) in x.iter().zip(dots.iter_mut()) {
                        for half_block in 0..2 {
                            let mut pairs = _mm256_setzero_si256();
                            for j in 4 * half_block..4 * half_block + 4 {
                                let w = _mm256_loadu_si256(quants.add(64 * j).cast());
                                let xq = _mm256_set1_epi32(four::<L>(row.quants, b, j));
                                pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(w, xq));
                            }
                            *dot = _mm256_add_epi32(*dot, _mm256_madd_epi16(pairs, ones));
                        }
                    }
                } else {
                    // Q8_0 and Q5_0 (stored plus 128): unsigned×signed `maddubs` would saturate
                    // at 255·127·2, so multiply |s| by x with s's sign (llama.cpp's trick) for
                    // s = stored − 128; the dot is signed, the offset already taken.
                    for (row, dot) in x.iter().zip(dots.iter_mut()) {
                        for j in 0..L / 4 {
                            let s = _mm256_xor_si256(_mm256_loadu_si256(quants.add(64 * j).cast()), flip);
                            let xq = _mm256_set1_epi32(four::<L>(row.quants, b, j));
                            let pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(s), _mm256_sign_epi8(xq, s));
                            *dot = _mm256_add_epi32(*dot, _mm256_madd_epi16(pairs, ones));
                        }
                    }
                }
                for ((row, acc), dot) in x.iter().zip(acc.iter_mut()).zip(dots) {
                    let scale = _mm256_mul_ps(d, _mm256_set1_ps(*row.scale.get_unchecked(b)));
                    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, *acc);
                    if layout.has_min {
                        *acc = _mm256_fmadd_ps(m, _mm256_set1_ps(*row.scaled_sum.get_unchecked(b)), *acc);
                    }
                }
            }
        }
        for (out, acc) in out.chunks_exact_mut(PANEL).zip(acc) {
            // SAFETY: each chunk is 16 floats; this half writes 8 of them at 8·half.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(HALF * half), acc) };
        }
    }
}
