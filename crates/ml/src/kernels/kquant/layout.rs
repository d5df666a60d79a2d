//! Where the pieces of a K-quant super-block sit (ggml-common.h's `block_q4_K`, `block_q5_K`,
//! `block_q6_K`), and rows dequantized to f32 with the same float operations as candle's
//! `to_float`, so the values agree bit for bit.
//!
//! - Q4_K (144 bytes): f16 `d`, f16 `dmin`, 12 bytes of eight 6-bit scales and eight 6-bit
//!   mins, 128 bytes of nibbles: bytes `32k..32k+32` hold sub-block `2k` in their low nibbles
//!   and `2k+1` in their high ones. Value = `d·scale_j·q − dmin·min_j`.
//! - Q5_K (176 bytes): as Q4_K with 32 bytes of fifth bits after the scales: bit `j` of byte
//!   `l` is the high bit of value `l` of sub-block `j`.
//! - Q6_K (210 bytes): 128 bytes of low nibbles, 64 bytes of 2-bit high parts, sixteen i8
//!   scales (one per 16 values), f16 `d` last. Value = `d·scale·(q − 32)`.

use super::f16_at;
use crate::kernels::{BlockFormat, SUPER_BLOCK};

/// The eight 6-bit scales and eight 6-bit mins of a Q4_K/Q5_K block from their 12 packed
/// bytes (ggml's `get_scale_min_k4` for every `j`).
pub(super) fn scales_and_mins(packed: &[u8]) -> ([u8; 8], [u8; 8]) {
    let q = packed;
    let mut scales = [0u8; 8];
    let mut mins = [0u8; 8];
    for j in 0..4 {
        scales[j] = q[j] & 63;
        mins[j] = q[j + 4] & 63;
        scales[j + 4] = (q[j + 8] & 0x0F) | ((q[j] >> 6) << 4);
        mins[j + 4] = (q[j + 8] >> 4) | ((q[j + 4] >> 6) << 4);
    }
    (scales, mins)
}

/// The unsigned 6-bit quant (0..64, stored with +32) of value `v` of a Q6_K block.
pub(super) fn q6k_quant(block: &[u8], v: usize) -> u8 {
    let (half, within) = (v / 128, v % 128);
    let (part, l) = (within / 32, within % 32);
    let low = block[64 * half + 32 * (part % 2) + l];
    let low = if part < 2 { low & 0x0F } else { low >> 4 };
    let high = (block[128 + 32 * half + l] >> (2 * part)) & 3;
    low | (high << 4)
}

/// One super-block as 256 f32 values.
pub(super) fn dequantize_block(format: BlockFormat, block: &[u8], out: &mut [f32]) {
    debug_assert_eq!(out.len(), SUPER_BLOCK);
    match format {
        BlockFormat::Q4K | BlockFormat::Q5K => {
            let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
            let (scales, mins) = scales_and_mins(&block[4..16]);
            let five_bits = format == BlockFormat::Q5K;
            let qs = if five_bits { &block[48..176] } else { &block[16..144] };
            for (j, out) in out.chunks_exact_mut(32).enumerate() {
                let (packed, shift) = (&qs[32 * (j / 2)..32 * (j / 2) + 32], 4 * (j % 2));
                let (scale, min) = (d * f32::from(scales[j]), dmin * f32::from(mins[j]));
                for (l, out) in out.iter_mut().enumerate() {
                    let q = f32::from((packed[l] >> shift) & 0x0F);
                    *out = if five_bits {
                        let high = if block[16 + l] & (1 << j) != 0 { 16.0 } else { 0.0 };
                        scale * (q + high) - min
                    } else {
                        scale * q - min
                    };
                }
            }
        }
        BlockFormat::Q6K => {
            let d = f16_at(block, 208);
            for (v, out) in out.iter_mut().enumerate() {
                let scale = block[192 + v / 16] as i8;
                let q = q6k_quant(block, v) as i8 - 32;
                *out = d * f32::from(scale) * f32::from(q);
            }
        }
        BlockFormat::Q4_0 | BlockFormat::Q4_1 | BlockFormat::Q5_0 | BlockFormat::Q5_1 | BlockFormat::Q8_0 => {
            unreachable!("not a K-quant")
        }
    }
}
