//! The plain Rust K-quant dot products: the reference the SIMD paths are tested against. They
//! compute what ggml's scalar `ggml_vec_dot_q{4,5,6}_K_q8_K` compute, with the integer parts
//! summed exactly per super-block and scaled in f32 once.

use super::{Q8KRow, f16_at, layout};
use crate::kernels::{BlockFormat, SUPER_BLOCK};

/// `R` weight rows against one activation row.
pub(super) fn dot_rows<const R: usize>(format: BlockFormat, rows: [&[u8]; R], x: Q8KRow<'_>) -> [f32; R] {
    let block_dot = match format {
        BlockFormat::Q4K => q4k,
        BlockFormat::Q5K => q5k,
        BlockFormat::Q6K => q6k,
        BlockFormat::Q4_0 | BlockFormat::Q4_1 | BlockFormat::Q5_0 | BlockFormat::Q5_1 | BlockFormat::Q8_0 => {
            unreachable!("not a K-quant")
        }
    };
    let bytes = format.block_bytes();
    rows.map(|row| {
        row.chunks_exact(bytes)
            .enumerate()
            .map(|(b, block)| {
                let quants = &x.quants[b * SUPER_BLOCK..(b + 1) * SUPER_BLOCK];
                block_dot(block, x.scale[b], quants, &x.bsums[b * 16..(b + 1) * 16])
            })
            .sum()
    })
}

/// Σ over the 8 32-value sub-blocks of `min_j · Σ x` (the part of Q4_K/Q5_K's `d·s·q − dmin·m`
/// that does not depend on the weights' quants), from the activations' 16-value sums.
fn min_term(mins: &[u8; 8], bsums: &[i16]) -> i32 {
    (0..8).map(|j| i32::from(mins[j]) * (i32::from(bsums[2 * j]) + i32::from(bsums[2 * j + 1]))).sum()
}

fn q4k(block: &[u8], x_scale: f32, x: &[i8], bsums: &[i16]) -> f32 {
    let (scales, mins) = layout::scales_and_mins(&block[4..16]);
    let qs = &block[16..144];
    let mut sum = 0i32;
    for (j, scale) in scales.iter().enumerate() {
        let (packed, shift) = (&qs[32 * (j / 2)..32 * (j / 2) + 32], 4 * (j % 2));
        let dot: i32 = (0..32).map(|l| i32::from((packed[l] >> shift) & 0x0F) * i32::from(x[32 * j + l])).sum();
        sum += i32::from(*scale) * dot;
    }
    f16_at(block, 0) * x_scale * sum as f32 - f16_at(block, 2) * x_scale * min_term(&mins, bsums) as f32
}

fn q5k(block: &[u8], x_scale: f32, x: &[i8], bsums: &[i16]) -> f32 {
    let (scales, mins) = layout::scales_and_mins(&block[4..16]);
    let (qh, qs) = (&block[16..48], &block[48..176]);
    let mut sum = 0i32;
    for (j, scale) in scales.iter().enumerate() {
        let (packed, shift) = (&qs[32 * (j / 2)..32 * (j / 2) + 32], 4 * (j % 2));
        let dot: i32 = (0..32)
            .map(|l| {
                let q = ((packed[l] >> shift) & 0x0F) | (((qh[l] >> j) & 1) << 4);
                i32::from(q) * i32::from(x[32 * j + l])
            })
            .sum();
        sum += i32::from(*scale) * dot;
    }
    f16_at(block, 0) * x_scale * sum as f32 - f16_at(block, 2) * x_scale * min_term(&mins, bsums) as f32
}

fn q6k(block: &[u8], x_scale: f32, x: &[i8], _bsums: &[i16]) -> f32 {
    let scales = &block[192..208];
    let sum: i32 = (0..SUPER_BLOCK)
        .map(|v| i32::from(scales[v / 16] as i8) * (i32::from(layout::q6k_quant(block, v)) - 32) * i32::from(x[v]))
        .sum();
    f16_at(block, 208) * x_scale * sum as f32
}
