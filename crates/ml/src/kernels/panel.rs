//! Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 weights repacked into panels of [`PANEL`] rows, and the
//! product of a panel with activation rows on each [`Isa`] level.
//!
//! A matrix is its panels one after another; a panel is its blocks (32 columns each) one after
//! another; a panel block is a header of 16 f16 scales `d` (and, for Q4_1 and Q5_1, 16 f16
//! mins `m`),
//! then the quants in 64-byte groups: group `g` holds bytes `4g..4g+4` of each row's block,
//! row `l` at `64g + 4l`. Q4 bytes hold elements `j` (low nibble) and `j + 16` (high nibble);
//! the other formats hold one element a byte, in order: Q8_0's quants plus 128, Q5_0's 5-bit
//! quants `q` as `q + 112` (that is `(q − 16) + 128`, so it is Q8_0 from there on) and Q5_1's as
//! they are (0..=31); every weight quant is an unsigned byte, as `vpdpbusd` wants. Q5 thus
//! takes 8 bits a weight in memory instead of 5 (34 or 36 bytes a block instead of 22 or 24),
//! for one kernel with Q8_0. The row dot product of a block is then
//! `d·dx·(Σ u·x − offset·Σx) + m·dx·Σx`, with `offset` 8 for Q4_0, 128 for Q8_0 and Q5_0, and 0
//! for Q4_1 and Q5_1 (which have the `m` term instead): the integer part is exact on every
//! level.

use super::{BLOCK, BlockFormat, Isa, PANEL, Q8Activations, Q8Row, TILE, f16_at};
use crate::error::{MlError, Result};

mod portable;
#[cfg(target_arch = "x86_64")]
mod x86;

/// Where things are in a panel block of one format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) format: BlockFormat,
    /// 4-bit quants (two elements a byte) or 8-bit ones.
    pub(crate) nibbles: bool,
    /// Subtracted from every unsigned quant: 8 (Q4_0), 128 (Q8_0, Q5_0) or 0 (Q4_1, Q5_1,
    /// which have mins).
    pub(crate) offset: i32,
    pub(crate) has_min: bool,
    /// Elements a block covers: [`BLOCK`] for the GGML formats; 16 or 32 for the 8-bit panels of
    /// LoRA adapters ([`Self::adapter`]), whose `B` matrices are as wide as the rank.
    pub(crate) block: usize,
}

impl Layout {
    pub(crate) fn of(format: BlockFormat) -> Option<Self> {
        match format {
            BlockFormat::Q4_0 => Some(Self { format, nibbles: true, offset: 8, has_min: false, block: BLOCK }),
            BlockFormat::Q4_1 => Some(Self { format, nibbles: true, offset: 0, has_min: true, block: BLOCK }),
            BlockFormat::Q5_0 => Some(Self { format, nibbles: false, offset: 128, has_min: false, block: BLOCK }),
            BlockFormat::Q5_1 => Some(Self { format, nibbles: false, offset: 0, has_min: true, block: BLOCK }),
            BlockFormat::Q8_0 => Some(Self { format, nibbles: false, offset: 128, has_min: false, block: BLOCK }),
            BlockFormat::Q4K | BlockFormat::Q5K | BlockFormat::Q6K => None,
        }
    }

    /// Q8_0 with blocks of `block` elements (32, or 16 for a matrix only 16 wide): the 8-bit
    /// panels LoRA adapters are held in for serving (`kernels::adapter`).
    pub(crate) fn adapter(block: usize) -> Self {
        assert!(block == BLOCK || block == BLOCK / 2, "adapter panels have blocks of 16 or 32, not {block}");
        Self { format: BlockFormat::Q8_0, nibbles: false, offset: 128, has_min: false, block }
    }

    /// Bytes of the scales (and mins) before a panel block's quants.
    pub(crate) fn header_bytes(self) -> usize {
        if self.has_min { 4 * PANEL } else { 2 * PANEL }
    }

    /// 64-byte quant groups per panel block: 4 for Q4, `block / 4` for 8-bit quants.
    pub(crate) fn groups(self) -> usize {
        if self.nibbles { 4 } else { self.block / 4 }
    }

    pub(crate) fn block_bytes(self) -> usize {
        self.header_bytes() + 64 * self.groups()
    }

    /// A row's GGML block's 32 quants as this layout stores them, in its byte order (see the
    /// module's comment): Q4 bytes as they are (16), the others one element a byte (32).
    fn stored_quants(self, source: &[u8], out: &mut [u8; BLOCK]) -> usize {
        match self.format {
            BlockFormat::Q4_0 => out[..16].copy_from_slice(&source[2..18]),
            BlockFormat::Q4_1 => out[..16].copy_from_slice(&source[4..20]),
            BlockFormat::Q8_0 => out.iter_mut().zip(&source[2..34]).for_each(|(o, q)| *o = q ^ 0x80),
            BlockFormat::Q5_0 | BlockFormat::Q5_1 => {
                let at = if self.format == BlockFormat::Q5_0 { 2 } else { 4 };
                let high = u32::from_le_bytes([source[at], source[at + 1], source[at + 2], source[at + 3]]);
                let nibbles = &source[at + 4..at + 20];
                let bias: u8 = if self.format == BlockFormat::Q5_0 { 112 } else { 0 };
                for (j, &q) in nibbles.iter().enumerate() {
                    let fifth = |bit: usize| (((high >> bit) & 1) as u8) << 4;
                    out[j] = ((q & 0x0F) | fifth(j)) + bias;
                    out[j + 16] = ((q >> 4) | fifth(j + 16)) + bias;
                }
            }
            BlockFormat::Q4K | BlockFormat::Q5K | BlockFormat::Q6K => unreachable!("K-quants are not panels"),
        }
        if self.nibbles { 16 } else { 32 }
    }

    /// Repacks `rows × cols` row-major GGML blocks into panels.
    pub(crate) fn pack(self, data: &[u8], rows: usize, cols: usize) -> Result<Vec<u8>> {
        let (blocks, source_block) = (cols / BLOCK, self.format.block_bytes());
        let panels = rows.div_ceil(PANEL);
        let block_bytes = self.block_bytes();
        if data.len() != rows * blocks * source_block {
            return Err(MlError::corrupt("model", format!("{:?} blocks of the wrong size", self.format)));
        }
        let mut quants = [0u8; BLOCK];
        let mut packed = vec![0u8; panels * blocks * block_bytes];
        for (p, panel) in packed.chunks_exact_mut(blocks * block_bytes).enumerate() {
            for (b, out) in panel.chunks_exact_mut(block_bytes).enumerate() {
                for lane in 0..PANEL.min(rows - p * PANEL) {
                    let row = p * PANEL + lane;
                    let source = &data[(row * blocks + b) * source_block..][..source_block];
                    out[2 * lane..2 * lane + 2].copy_from_slice(&source[..2]);
                    if self.has_min {
                        out[2 * PANEL + 2 * lane..][..2].copy_from_slice(&source[2..4]);
                    }
                    let stored = self.stored_quants(source, &mut quants);
                    for (g, four) in quants[..stored].chunks_exact(4).enumerate() {
                        let at = self.header_bytes() + 64 * g + 4 * lane;
                        out[at..at + 4].copy_from_slice(four);
                    }
                }
            }
        }
        Ok(packed)
    }

    /// Row `r` as f32, exactly as GGML dequantizes the original block.
    pub(crate) fn dequantize_row(self, data: &[u8], cols: usize, r: usize, out: &mut [f32]) {
        let blocks = cols / self.block;
        let (panel, lane) = (r / PANEL, r % PANEL);
        let block_bytes = self.block_bytes();
        for (b, out) in out.chunks_exact_mut(self.block).enumerate().take(blocks) {
            let block = &data[(panel * blocks + b) * block_bytes..][..block_bytes];
            let d = f16_at(block, 2 * lane);
            let m = if self.has_min { f16_at(block, 2 * PANEL + 2 * lane) } else { 0.0 };
            let quant = |g: usize, i: usize| block[self.header_bytes() + 64 * g + 4 * lane + i];
            for g in 0..self.groups() {
                for i in 0..4 {
                    let q = quant(g, i);
                    match self.format {
                        BlockFormat::Q4_0 => {
                            out[4 * g + i] = d * (f32::from(q & 0x0F) - 8.0);
                            out[16 + 4 * g + i] = d * (f32::from(q >> 4) - 8.0);
                        }
                        BlockFormat::Q4_1 => {
                            out[4 * g + i] = d * f32::from(q & 0x0F) + m;
                            out[16 + 4 * g + i] = d * f32::from(q >> 4) + m;
                        }
                        BlockFormat::Q5_1 => out[4 * g + i] = d * f32::from(q) + m,
                        _ => out[4 * g + i] = d * f32::from((q ^ 0x80) as i8),
                    }
                }
            }
        }
    }

    /// `x · Wᵀ` for panels `data` of a `rows × cols` matrix and `m` rows of `x`.
    pub(crate) fn matmul(self, isa: Isa, data: &[u8], rows: usize, cols: usize, x: &[f32], m: usize) -> Vec<f32> {
        self.matmul_quantized(isa, data, rows, cols, &Q8Activations::quantize(x, m, cols), m)
    }

    /// [`Self::matmul`] with the `m` rows already quantized ([`Q8Activations::quantize`]).
    pub(crate) fn matmul_quantized(
        self,
        isa: Isa,
        data: &[u8],
        rows: usize,
        cols: usize,
        activations: &Q8Activations,
        m: usize,
    ) -> Vec<f32> {
        assert!(
            activations.block == BLOCK && activations.rows() == m && activations.row(0).quants.len() == cols,
            "matmul: activations are not {m} rows of {cols} in blocks of {BLOCK}"
        );
        let blocks = cols / BLOCK;
        let panel_bytes = blocks * self.block_bytes();
        let panels = rows.div_ceil(PANEL);
        // Several tasks a thread so a slow thread's share moves to a fast one; at least one
        // panel each. One thread: one task, no hand-off at all.
        let threads = crate::pool::threads();
        let per_task = if threads == 1 { panels } else { panels.div_ceil(threads * 4).max(1) };
        // Output panel-major, (panel, row of x, lane): each task writes one contiguous part.
        let mut out = vec![0f32; panels * m * PANEL];
        crate::pool::for_each_chunk(&mut out, per_task * m * PANEL, |task, out| {
            for (p, out) in out.chunks_exact_mut(m * PANEL).enumerate() {
                let panel = &data[(task * per_task + p) * panel_bytes..][..panel_bytes];
                self.panel_rows(isa, panel, blocks, activations, out);
            }
        });
        if m == 1 {
            out.truncate(rows);
            return out;
        }
        let mut result = vec![0f32; m * rows];
        for (p, panel) in out.chunks_exact(m * PANEL).enumerate() {
            let lanes = PANEL.min(rows - p * PANEL);
            for (i, lanes_out) in panel.chunks_exact(PANEL).enumerate() {
                result[i * rows + p * PANEL..][..lanes].copy_from_slice(&lanes_out[..lanes]);
            }
        }
        result
    }

    /// One panel (`blocks` blocks) against every row of `x`, into `out` (rows × [`PANEL`]), a
    /// tile of up to [`TILE`] rows at a time.
    fn panel_rows(self, isa: Isa, panel: &[u8], blocks: usize, x: &Q8Activations, out: &mut [f32]) {
        let m = out.len() / PANEL;
        let mut i = 0;
        while i < m {
            let c = (m - i).min(TILE);
            let out = &mut out[i * PANEL..(i + c) * PANEL];
            match c {
                4 => self.tile::<4>(isa, panel, blocks, x, i, out),
                3 => self.tile::<3>(isa, panel, blocks, x, i, out),
                2 => self.tile::<2>(isa, panel, blocks, x, i, out),
                _ => self.tile::<1>(isa, panel, blocks, x, i, out),
            }
            i += c;
        }
    }

    /// Panels (one, or several one after another) against activation rows `first..first + C`,
    /// into `out` (`C × PANEL` a panel, panel after panel).
    pub(crate) fn tile<const C: usize>(
        self,
        isa: Isa,
        panel: &[u8],
        blocks: usize,
        x: &Q8Activations,
        first: usize,
        out: &mut [f32],
    ) {
        assert_eq!(x.block, self.block, "activations quantized in blocks of another length");
        match self.block {
            BLOCK => self.tile_of::<C, BLOCK>(isa, panel, blocks, x, first, out),
            _ => self.tile_of::<C, { BLOCK / 2 }>(isa, panel, blocks, x, first, out),
        }
    }

    /// [`Self::tile`] for blocks of `L` elements.
    fn tile_of<const C: usize, const L: usize>(
        self,
        isa: Isa,
        panel: &[u8],
        blocks: usize,
        x: &Q8Activations,
        first: usize,
        out: &mut [f32],
    ) {
        let rows: [Q8Row<'_>; C] = std::array::from_fn(|c| x.row(first + c));
        match isa {
            Isa::Portable => {
                let panel_bytes = blocks * self.block_bytes();
                assert_eq!(out.len(), panel.len() / panel_bytes * C * PANEL, "tile: outputs for every panel");
                for (panel, out) in panel.chunks_exact(panel_bytes).zip(out.chunks_exact_mut(C * PANEL)) {
                    portable::tile::<C, L>(self, panel, blocks, &rows, out);
                }
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => x86::tile_avx2::<C, L>(self, panel, blocks, &rows, out),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => x86::tile_avx512::<C, L>(self, panel, blocks, &rows, out),
            #[cfg(not(target_arch = "x86_64"))]
            _ => self.tile_of::<C, L>(Isa::Portable, panel, blocks, x, first, out),
        }
    }
}
