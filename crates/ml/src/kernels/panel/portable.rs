//! The reference panel kernel: exact integer dot products per row and block, in plain Rust.

use super::super::{PANEL, Q8Row, f16_at};
use super::Layout;

/// Blocks of `L` elements (for Q4, always 32).
pub(super) fn tile<const C: usize, const L: usize>(
    layout: Layout,
    panel: &[u8],
    blocks: usize,
    x: &[Q8Row<'_>; C],
    out: &mut [f32],
) {
    let block_bytes = layout.block_bytes();
    let header = layout.header_bytes();
    let mut acc = [[0f32; PANEL]; C];
    for b in 0..blocks {
        let block = &panel[b * block_bytes..(b + 1) * block_bytes];
        for (row, acc) in x.iter().zip(acc.iter_mut()) {
            let xq = &row.quants[b * L..(b + 1) * L];
            for (lane, acc) in acc.iter_mut().enumerate() {
                let mut dot = 0i32;
                for g in 0..layout.groups() {
                    for i in 0..4 {
                        let u = block[header + 64 * g + 4 * lane + i];
                        if layout.nibbles {
                            dot += i32::from(u & 0x0F) * i32::from(xq[4 * g + i]);
                            dot += i32::from(u >> 4) * i32::from(xq[16 + 4 * g + i]);
                        } else {
                            dot += i32::from(u) * i32::from(xq[4 * g + i]);
                        }
                    }
                }
                dot -= layout.offset * row.sum[b];
                *acc += f16_at(block, 2 * lane) * row.scale[b] * dot as f32;
                if layout.has_min {
                    *acc += f16_at(block, 2 * PANEL + 2 * lane) * row.scaled_sum[b];
                }
            }
        }
    }
    for (out, acc) in out.chunks_exact_mut(PANEL).zip(&acc) {
        out.copy_from_slice(acc);
    }
}
