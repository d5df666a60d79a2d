//! CPU kernels for quantized weights: `x · Wᵀ` with `W` in the GGML block formats Llama GGUFs
//! use (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 here; Q4_K, Q5_K, Q6_K in `kquant`), on the widest instruction set
//! the CPU has ([`Isa`], chosen at run time), plus the dense f32 products training uses
//! (`dense`).
//!
//! Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 weights are repacked at load into panels of [`PANEL`] rows whose 4-byte
//! groups interleave (the idea of llama.cpp's `Q4_0_8x8` repacking): one 512-bit load holds
//! the same 4 quants of 16 rows, so an 8-bit dot-product instruction (`vpdpbusd`, or AVX2's
//! `maddubs`) against 4 activation bytes broadcast to every lane advances 16 row dot products
//! at once, with no horizontal sums. Activations are quantized to 8-bit blocks once per call.
//! A panel is decoded once per block for up to [`TILE`] activation rows, so a batch or a
//! prefill reads and unpacks each weight block once per tile, not once per row.

use candle_core::quantized::GgmlDType;

use crate::error::{MlError, Result};

pub(crate) mod adapter;
mod dense;
mod isa;
mod kquant;
mod panel;
mod q8;

pub(crate) use dense::{Dense, matmul, matmul_with};
pub use isa::{Isa, KERNELS_ENV};

/// Elements per GGML block (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0).
pub const BLOCK: usize = 32;

/// Elements per K-quant super-block (Q4_K, Q5_K, Q6_K).
pub const SUPER_BLOCK: usize = 256;

/// Weight rows per repacked panel: one 32-bit lane of a 512-bit vector per row.
pub const PANEL: usize = 16;

/// Activation rows a panel is decoded for at once (a batch's rows, a prefill's tokens).
pub const TILE: usize = 4;

/// The block formats these kernels implement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockFormat {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl BlockFormat {
    pub fn from_ggml(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4_0 => Some(Self::Q4_0),
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            GgmlDType::Q5_0 => Some(Self::Q5_0),
            GgmlDType::Q5_1 => Some(Self::Q5_1),
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            GgmlDType::Q4K => Some(Self::Q4K),
            GgmlDType::Q5K => Some(Self::Q5K),
            GgmlDType::Q6K => Some(Self::Q6K),
            _ => None,
        }
    }

    /// Elements per block.
    pub fn block_len(self) -> usize {
        if self.is_k_quant() { SUPER_BLOCK } else { BLOCK }
    }

    pub fn is_k_quant(self) -> bool {
        matches!(self, Self::Q4K | Self::Q5K | Self::Q6K)
    }

    /// Bytes of one GGML block: f16 scale (and f16 min for Q4_1 and Q5_1), then the quants
    /// (for Q5, 4 bytes of fifth bits and then 16 of nibbles).
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
        }
    }
}

/// A weight matrix (out × in) of GGML blocks. Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 are held as panels
/// (see [`panel::Layout`]); K-quants as the file's blocks, row-major.
#[derive(Debug)]
pub struct BlockMatrix {
    pub format: BlockFormat,
    pub rows: usize,
    pub cols: usize,
    /// Panels (rows rounded up to [`PANEL`], padding rows zero) or, for K-quants, raw blocks.
    pub data: Vec<u8>,
}

impl BlockMatrix {
    /// `rows × cols` weights from the file's row-major blocks (`data`).
    pub fn new(format: BlockFormat, rows: usize, cols: usize, data: Vec<u8>) -> Result<Self> {
        let block = format.block_len();
        if !cols.is_multiple_of(block) || data.len() != rows * cols / block * format.block_bytes() {
            return Err(MlError::corrupt(
                "model",
                format!("{format:?} matrix {rows}x{cols} cannot hold {} bytes", data.len()),
            ));
        }
        let data = match panel::Layout::of(format) {
            Some(layout) => layout.pack(&data, rows, cols)?,
            None => data,
        };
        Ok(Self { format, rows, cols, data })
    }

    /// The rows of `parts` one under the other, when they share format and width (and, for
    /// panels, every part fills whole panels).
    pub fn stack(parts: &[&BlockMatrix]) -> Result<Option<Self>> {
        let Some(first) = parts.first() else { return Ok(None) };
        if parts.iter().any(|p| p.format != first.format || p.cols != first.cols) {
            return Ok(None);
        }
        let panels = panel::Layout::of(first.format).is_some();
        if panels && parts.iter().any(|p| !p.rows.is_multiple_of(PANEL)) {
            return Ok(None);
        }
        let data = parts.iter().flat_map(|p| p.data.iter().copied()).collect();
        let rows = parts.iter().map(|p| p.rows).sum();
        Ok(Some(Self { format: first.format, rows, cols: first.cols, data }))
    }

    /// Row `r` as f32 (the embedding lookup), exactly as GGML dequantizes it.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        match panel::Layout::of(self.format) {
            Some(layout) => layout.dequantize_row(&self.data, self.cols, r, out),
            None => kquant::dequantize_row(self, r, out),
        }
    }

    /// `x · Wᵀ` for `x` of `m` rows × `cols`: returns `m` rows × `self.rows`.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        self.matmul_on(Isa::active(), x, m)
    }

    /// The activations [`Self::matmul_quantized`] takes for `m` rows `x`, if this matrix's
    /// kernels take 8-bit blocks of [`BLOCK`] (panels; K-quants quantize their own way).
    pub(crate) fn activations(&self, x: &[f32], m: usize) -> Option<Q8Activations> {
        self.takes_activations().then(|| Q8Activations::quantize(x, m, self.cols))
    }

    /// Whether [`Self::matmul_quantized`] applies (panels, not K-quants).
    pub(crate) fn takes_activations(&self) -> bool {
        panel::Layout::of(self.format).is_some()
    }

    /// [`Self::matmul`] of rows already quantized by [`Self::activations`] (so that other
    /// products of the same rows, adapters' 8-bit panels, quantize them once).
    pub(crate) fn matmul_quantized(&self, activations: &Q8Activations, m: usize) -> Vec<f32> {
        let layout = panel::Layout::of(self.format).expect("activations are only made for panels");
        layout.matmul_quantized(Isa::active(), &self.data, self.rows, self.cols, activations, m)
    }

    /// [`Self::matmul`] on the kernels of `isa` (which the CPU must run: see
    /// [`Isa::available`]).
    pub fn matmul_on(&self, isa: Isa, x: &[f32], m: usize) -> Vec<f32> {
        assert_eq!(x.len(), m * self.cols, "matmul: input is not m × cols");
        assert!(isa <= Isa::detected(), "matmul: this CPU cannot run {isa:?}");
        match panel::Layout::of(self.format) {
            Some(layout) => layout.matmul(isa, &self.data, self.rows, self.cols, x, m),
            None => kquant::matmul(self, x, m, isa),
        }
    }
}

/// Input rows quantized to 8-bit blocks of [`BLOCK`] (or 16, for adapter panels): per block a
/// scale `d`, the quants' sum `s` and `d·s` (for Q4_1's min), and the quants (|q| ≤ 127).
pub(crate) struct Q8Activations {
    /// Elements a block covers.
    pub(crate) block: usize,
    blocks_per_row: usize,
    scale: Vec<f32>,
    sum: Vec<i32>,
    scaled_sum: Vec<f32>,
    quants: Vec<i8>,
}

/// One quantized activation row.
#[derive(Clone, Copy)]
pub(crate) struct Q8Row<'a> {
    pub(crate) scale: &'a [f32],
    pub(crate) sum: &'a [i32],
    pub(crate) scaled_sum: &'a [f32],
    pub(crate) quants: &'a [i8],
}

impl Q8Activations {
    /// `m` rows of `cols` (a multiple of [`BLOCK`]) in blocks of [`BLOCK`].
    pub(crate) fn quantize(x: &[f32], m: usize, cols: usize) -> Self {
        Self::quantize_in(BLOCK, x, m, cols)
    }

    /// `m` rows of `cols` (a multiple of `block`, 16 or 32) in blocks of `block`.
    pub(crate) fn quantize_in(block: usize, x: &[f32], m: usize, cols: usize) -> Self {
        assert_eq!(x.len(), m * cols, "quantize: {m} rows of {cols} from {} values", x.len());
        let mut quantized = Self::empty();
        quantized.set_rows(block, x.chunks_exact(cols.max(1)), cols);
        quantized
    }

    /// No rows yet: buffers for [`Self::set_rows`] to fill and refill.
    pub(crate) fn empty() -> Self {
        Self {
            block: BLOCK,
            blocks_per_row: 0,
            scale: Vec::new(),
            sum: Vec::new(),
            scaled_sum: Vec::new(),
            quants: Vec::new(),
        }
    }

    /// Replaces the rows held with `rows`, each `cols` (a multiple of `block`, 16 or 32) long,
    /// in blocks of `block`, reusing the buffers.
    pub(crate) fn set_rows<'a>(&mut self, block: usize, rows: impl Iterator<Item = &'a [f32]>, cols: usize) {
        assert!(
            (block == BLOCK || block == BLOCK / 2) && cols.is_multiple_of(block),
            "quantize: rows of {cols} in blocks of {block}"
        );
        self.clear(block, cols / block);
        let hint = rows.size_hint().0 * self.blocks_per_row;
        self.scale.reserve(hint);
        self.sum.reserve(hint);
        self.scaled_sum.reserve(hint);
        self.quants.reserve(hint * block);
        for row in rows {
            assert_eq!(row.len(), cols, "quantize: a row is not {cols} long");
            for values in row.chunks_exact(block) {
                let at = self.quants.len();
                self.quants.resize(at + block, 0);
                let (d, s) = q8::quantize_block(values, &mut self.quants[at..]);
                self.scale.push(d);
                self.sum.push(s);
                self.scaled_sum.push(d * s as f32);
            }
        }
    }

    /// Replaces the rows held with rows `rows` of `from`, copied (already quantized).
    pub(crate) fn copy_rows(&mut self, from: &Q8Activations, rows: impl Iterator<Item = usize>) {
        self.clear(from.block, from.blocks_per_row);
        for r in rows {
            let row = from.row(r);
            self.scale.extend_from_slice(row.scale);
            self.sum.extend_from_slice(row.sum);
            self.scaled_sum.extend_from_slice(row.scaled_sum);
            self.quants.extend_from_slice(row.quants);
        }
    }

    /// No rows, in blocks of `block`, `blocks_per_row` a row (the buffers kept).
    fn clear(&mut self, block: usize, blocks_per_row: usize) {
        self.block = block;
        self.blocks_per_row = blocks_per_row;
        self.scale.clear();
        self.sum.clear();
        self.scaled_sum.clear();
        self.quants.clear();
    }

    /// Rows held.
    pub(crate) fn rows(&self) -> usize {
        self.scale.len() / self.blocks_per_row.max(1)
    }

    pub(crate) fn row(&self, i: usize) -> Q8Row<'_> {
        let blocks = i * self.blocks_per_row..(i + 1) * self.blocks_per_row;
        Q8Row {
            scale: &self.scale[blocks.clone()],
            sum: &self.sum[blocks.clone()],
            scaled_sum: &self.scaled_sum[blocks.clone()],
            quants: &self.quants[blocks.start * self.block..blocks.end * self.block],
        }
    }
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use candle_core::quantized::{QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};

    use super::*;

    /// Every kernel level against candle's own quantized matmul on the same blocks, and
    /// against the portable level, for single rows, whole tiles and ragged tiles, with a
    /// matrix whose rows do not fill the last panel; dequantized rows equal candle's.
    #[test]
    fn kernels_match_candle_on_every_level() {
        let untested: Vec<Isa> =
            [Isa::Avx2, Isa::Avx512Vnni].into_iter().filter(|i| !Isa::available().contains(i)).collect();
        if !untested.is_empty() {
            eprintln!("this CPU cannot run the {untested:?} kernels: they are not tested on this machine");
        }
        let device = Device::Cpu;
        let (n, k) = (88, 256);
        let w = Tensor::randn(0f32, 1.0, (n, k), &device).unwrap();
        for m in [1, 3, 9] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &device).unwrap();
            let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1, GgmlDType::Q8_0] {
                let q = QTensor::quantize(&w, dtype).unwrap();
                let expected: Vec<f32> = QMatMul::from_qtensor(QTensor::quantize(&w, dtype).unwrap())
                    .unwrap()
                    .forward(&x)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let matrix =
                    BlockMatrix::new(BlockFormat::from_ggml(dtype).unwrap(), n, k, q.data().unwrap().to_vec()).unwrap();
                let scale = expected.iter().fold(0f32, |a, v| a.max(v.abs())).max(1.0);
                let portable = matrix.matmul_on(Isa::Portable, &xs, m);
                for isa in Isa::available() {
                    let got = matrix.matmul_on(isa, &xs, m);
                    assert_eq!(got.len(), m * n);
                    for (i, ((g, e), p)) in got.iter().zip(&expected).zip(&portable).enumerate() {
                        assert!((g - e).abs() <= 1e-3 * scale, "{dtype:?} {isa:?} m={m} [{i}]: {g} vs candle {e}");
                        assert!((g - p).abs() <= 1e-5 * scale, "{dtype:?} {isa:?} m={m} [{i}]: {g} vs portable {p}");
                    }
                }
                let reference = q.dequantize(&device).unwrap();
                for r in [0, 5, 17, n - 1] {
                    let mut row = vec![0f32; k];
                    matrix.dequantize_row(r, &mut row);
                    let expected: Vec<f32> = reference.get(r).unwrap().to_vec1().unwrap();
                    assert_eq!(row, expected, "{dtype:?} dequantize row {r}");
                }
            }
        }
    }

    /// Stacking keeps every part's rows; parts that leave a panel partly empty do not stack.
    #[test]
    fn stacked_panels_keep_their_rows() {
        let device = Device::Cpu;
        let parts: Vec<BlockMatrix> = [32, 16]
            .iter()
            .map(|&rows| {
                let w = Tensor::randn(0f32, 1.0, (rows, 64), &device).unwrap();
                let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
                BlockMatrix::new(BlockFormat::Q4_1, rows, 64, q.data().unwrap().to_vec()).unwrap()
            })
            .collect();
        let stacked = BlockMatrix::stack(&[&parts[0], &parts[1]]).unwrap().unwrap();
        let (mut a, mut b) = (vec![0f32; 64], vec![0f32; 64]);
        stacked.dequantize_row(40, &mut a);
        parts[1].dequantize_row(8, &mut b);
        assert_eq!(a, b);
        let ragged = BlockMatrix::new(BlockFormat::Q4_1, 1, 64, parts[1].data[..0].to_vec());
        assert!(ragged.is_err(), "a matrix with no bytes for its row is refused");
        let odd = {
            let w = Tensor::randn(0f32, 1.0, (5, 64), &device).unwrap();
            let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
            BlockMatrix::new(BlockFormat::Q4_1, 5, 64, q.data().unwrap().to_vec()).unwrap()
        };
        assert!(BlockMatrix::stack(&[&odd, &parts[0]]).unwrap().is_none());
    }
}
