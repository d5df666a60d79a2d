//! K-quant weights (Q4_K, Q5_K, Q6_K: 256-value super-blocks with 6- or 8-bit sub-block
//! scales) against activations quantized once per call to GGML's Q8_K (per 256 values an f32
//! scale, 256 i8 quants and the sums of each 16), on every [`Isa`] level: `portable` (the
//! reference), `avx2` (after llama.cpp's AVX2 kernels) and `avx512` (VNNI, 512-bit).
//!
//! Every kernel turns a super-block into unsigned weight bytes in activation order and sums
//! `scale_j · Σ w·x` exactly in i32; the constant parts (Q4_K/Q5_K's mins, Q6_K's −32 offset)
//! come from the activations' 16-value sums instead of the 256 products.

use super::{BlockMatrix, Isa, SUPER_BLOCK};

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod layout;
mod portable;

/// Weight rows per tile when several activation rows share them: each activation block is
/// loaded once for this many rows, and the rows' accumulators form independent chains. A single
/// activation row walks its weight rows one at a time instead: from DRAM, four interleaved row
/// streams took twice as long as one sequential stream (576x1536 Q4_K, 64 matrices larger than
/// L3, m=1: 86 us against 48 us on AVX-512), while from cache the two run alike.
const TILE_ROWS: usize = 4;

/// Output rows per pool task: several tasks even on the smallest matrices (576 rows), few
/// enough hand-offs on the largest.
const CHUNK_ROWS: usize = 128;

/// `x · Wᵀ` for a K-quant `matrix` and `m` rows of `x`: `m` rows × `matrix.rows`, row-major.
///
/// Panics if `isa` is above what this CPU runs (the SIMD kernels would fault).
pub(super) fn matmul(matrix: &BlockMatrix, x: &[f32], m: usize, isa: Isa) -> Vec<f32> {
    assert!(isa <= Isa::detected(), "{} kernels asked for on a CPU without them", isa.name());
    assert!(matrix.format.is_k_quant() && matrix.cols.is_multiple_of(SUPER_BLOCK));
    assert_eq!(x.len(), m * matrix.cols);
    let activations = Q8K::quantize(x, m, matrix.cols);
    let n = matrix.rows;
    // (n, m): every chunk writes a contiguous slice, and reads its weight rows once for all m.
    let mut transposed = vec![0f32; n * m];
    crate::pool::for_each_chunk(&mut transposed, CHUNK_ROWS * m, |c, out| {
        let first = c * CHUNK_ROWS;
        if m == 1 {
            fill_chunk::<1>(matrix, isa, first, out, &activations);
        } else {
            fill_chunk::<TILE_ROWS>(matrix, isa, first, out, &activations);
        }
    });
    if m == 1 {
        return transposed;
    }
    let mut out = vec![0f32; m * n];
    for j in 0..n {
        for i in 0..m {
            out[i * n + j] = transposed[j * m + i];
        }
    }
    out
}

/// `out[j·m + i]` = weight row `first + j` · activation row `i`, `R` weight rows per tile.
fn fill_chunk<const R: usize>(matrix: &BlockMatrix, isa: Isa, first: usize, out: &mut [f32], activations: &Q8K) {
    let (m, format) = (activations.rows, matrix.format);
    let row_bytes = matrix.cols / SUPER_BLOCK * format.block_bytes();
    let row = |j: usize| &matrix.data[j * row_bytes..(j + 1) * row_bytes];
    let rows = out.len() / m;
    let mut j = 0;
    while j + R <= rows {
        let tile: [&[u8]; R] = std::array::from_fn(|r| row(first + j + r));
        for i in 0..m {
            for (r, dot) in dot_rows(format, isa, tile, activations.row(i)).into_iter().enumerate() {
                out[(j + r) * m + i] = dot;
            }
        }
        j += R;
    }
    for j in j..rows {
        for i in 0..m {
            out[j * m + i] = dot_rows(format, isa, [row(first + j)], activations.row(i))[0];
        }
    }
}

/// Row `r` of a K-quant matrix as f32, equal to candle's dequantization.
pub(super) fn dequantize_row(matrix: &BlockMatrix, r: usize, out: &mut [f32]) {
    assert_eq!(out.len(), matrix.cols);
    let bytes = matrix.format.block_bytes();
    let row_bytes = matrix.cols / SUPER_BLOCK * bytes;
    let row = &matrix.data[r * row_bytes..(r + 1) * row_bytes];
    for (block, out) in row.chunks_exact(bytes).zip(out.chunks_exact_mut(SUPER_BLOCK)) {
        layout::dequantize_block(matrix.format, block, out);
    }
}

/// `R` weight rows against activation row `x` on `isa`'s kernels.
#[inline]
#[allow(unsafe_code)]
fn dot_rows<const R: usize>(format: super::BlockFormat, isa: Isa, rows: [&[u8]; R], x: Q8KRow<'_>) -> [f32; R] {
    match isa {
        Isa::Portable => portable::dot_rows(format, rows, x),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `matmul` asserted that this CPU runs `isa` (AVX2, FMA, F16C).
        Isa::Avx2 => unsafe { avx2::dot_rows(format, rows, x) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `matmul` asserted that this CPU runs `isa` (AVX-512 F/BW/VL/VNNI and AVX2).
        Isa::Avx512Vnni => unsafe { avx512::dot_rows(format, rows, x) },
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 | Isa::Avx512Vnni => portable::dot_rows(format, rows, x),
    }
}

fn f16_at(block: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([block[at], block[at + 1]]).to_f32()
}

/// Input rows quantized to GGML's Q8_K, as candle's `BlockQ8K::from_float` does (so results
/// match candle's `QMatMul` up to summation order).
struct Q8K {
    rows: usize,
    blocks_per_row: usize,
    scale: Vec<f32>,
    quants: Vec<i8>,
    /// Σ of each 16 consecutive quants.
    bsums: Vec<i16>,
}

/// One activation row of [`Q8K`]: `scale.len()` super-blocks.
#[derive(Clone, Copy)]
struct Q8KRow<'a> {
    scale: &'a [f32],
    quants: &'a [i8],
    bsums: &'a [i16],
}

impl Q8KRow<'_> {
    /// Panics unless each of `rows` holds exactly this row's super-blocks of `format` and this
    /// row's quants and sums are whole: the bounds the SIMD kernels rely on for every read.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn assert_fits(&self, format: super::BlockFormat, rows: &[&[u8]]) {
        let blocks = self.scale.len();
        assert!(rows.iter().all(|r| r.len() == blocks * format.block_bytes()));
        assert!(self.quants.len() == blocks * SUPER_BLOCK && self.bsums.len() == blocks * 16);
    }
}

impl Q8K {
    fn quantize(x: &[f32], m: usize, cols: usize) -> Self {
        let blocks = m * cols / SUPER_BLOCK;
        let mut scale = Vec::with_capacity(blocks);
        let mut quants = vec![0i8; m * cols];
        let mut bsums = vec![0i16; blocks * 16];
        for ((values, q), sums) in
            x.chunks_exact(SUPER_BLOCK).zip(quants.chunks_exact_mut(SUPER_BLOCK)).zip(bsums.chunks_exact_mut(16))
        {
            // The value of largest magnitude maps to −128 (its sign kept), the rest in proportion.
            let max = values.iter().fold(0f32, |max, &v| if v.abs() > max.abs() { v } else { max });
            if max == 0.0 {
                scale.push(0.0);
                continue;
            }
            let inverse = -128.0 / max;
            for (q, v) in q.iter_mut().zip(values) {
                *q = (inverse * v).round().min(127.0) as i8;
            }
            for (sum, q) in sums.iter_mut().zip(q.chunks_exact(16)) {
                *sum = q.iter().map(|&q| i16::from(q)).sum();
            }
            scale.push(1.0 / inverse);
        }
        Self { rows: m, blocks_per_row: cols / SUPER_BLOCK, scale, quants, bsums }
    }

    fn row(&self, i: usize) -> Q8KRow<'_> {
        let blocks = i * self.blocks_per_row..(i + 1) * self.blocks_per_row;
        Q8KRow {
            scale: &self.scale[blocks.clone()],
            quants: &self.quants[blocks.start * SUPER_BLOCK..blocks.end * SUPER_BLOCK],
            bsums: &self.bsums[blocks.start * 16..blocks.end * 16],
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;
    use crate::LlamaModel;
    use crate::kernels::BlockFormat;
    use crate::lora::AdapterMix;
    use crate::testing::{TinyModel, TinySpec};

    const K_QUANTS: [GgmlDType; 3] = [GgmlDType::Q4K, GgmlDType::Q5K, GgmlDType::Q6K];

    fn k_format(dtype: GgmlDType) -> BlockFormat {
        match dtype {
            GgmlDType::Q4K => BlockFormat::Q4K,
            GgmlDType::Q5K => BlockFormat::Q5K,
            GgmlDType::Q6K => BlockFormat::Q6K,
            other => unreachable!("{other:?} is not a K-quant"),
        }
    }

    /// A random `rows × cols` weight quantized to `dtype` by candle, and the same blocks as a
    /// [`BlockMatrix`].
    fn weights(dtype: GgmlDType, rows: usize, cols: usize, seed: u64) -> (QTensor, BlockMatrix) {
        let w = random(rows, cols, seed);
        let q = QTensor::quantize(&w, dtype).unwrap();
        let matrix = BlockMatrix::new(k_format(dtype), rows, cols, q.data().unwrap().to_vec()).unwrap();
        (q, matrix)
    }

    fn random(rows: usize, cols: usize, seed: u64) -> Tensor {
        let mut rng = StdRng::seed_from_u64(seed);
        let values: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
        Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap()
    }

    fn largest(values: &[f32]) -> f32 {
        values.iter().fold(0f32, |a, v| a.max(v.abs()))
    }

    /// Every format on every level this CPU runs against candle's `QMatMul` on the same blocks
    /// (which quantizes its activations to Q8_K the same way), and against the portable level
    /// to within f32 summation order; rows not a multiple of the tile, m of 1, 3 and 17.
    #[test]
    fn every_level_matches_candle_and_the_portable_kernels() {
        let (n, k) = (70, 768);
        for dtype in K_QUANTS {
            let (q, matrix) = weights(dtype, n, k, 3);
            let candle = QMatMul::from_qtensor(q).unwrap();
            for m in [1, 3, 17] {
                let x = random(m, k, m as u64);
                let expected: Vec<f32> = candle.forward(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
                let scale = largest(&expected);
                let portable = matmul(&matrix, &xs, m, Isa::Portable);
                for isa in Isa::available() {
                    let got = matmul(&matrix, &xs, m, isa);
                    assert_eq!(got.len(), m * n);
                    let from_candle = got.iter().zip(&expected).map(|(g, e)| (g - e).abs()).fold(0f32, f32::max);
                    assert!(from_candle <= 1e-5 * scale, "{dtype:?} {} m={m}: {from_candle} from candle", isa.name());
                    let from_portable = got.iter().zip(&portable).map(|(g, p)| (g - p).abs()).fold(0f32, f32::max);
                    assert!(
                        from_portable <= 1e-5 * scale,
                        "{dtype:?} {} m={m}: {from_portable} from portable",
                        isa.name()
                    );
                }
            }
        }
    }

    /// Extreme blocks: all-max weights and activations at ±the quantization range, where a
    /// saturating 16-bit step would show; and an all-zero activation row.
    #[test]
    fn extreme_values_agree_across_levels() {
        let (n, k) = (8, 512);
        for dtype in K_QUANTS {
            let w: Vec<f32> = (0..n * k).map(|i| if i % 3 == 0 { -4.0 } else { 4.0 }).collect();
            let w = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&w, dtype).unwrap();
            let matrix = BlockMatrix::new(k_format(dtype), n, k, q.data().unwrap().to_vec()).unwrap();
            let mut xs: Vec<f32> = (0..2 * k).map(|i| if i % 2 == 0 { 1.0 } else { -1.0 }).collect();
            xs[k..].fill(0.0);
            let portable = matmul(&matrix, &xs, 2, Isa::Portable);
            assert!(portable[n..].iter().all(|&v| v == 0.0), "{dtype:?}: a zero row gives zeros");
            let scale = largest(&portable);
            for isa in Isa::available() {
                let got = matmul(&matrix, &xs, 2, isa);
                let worst = got.iter().zip(&portable).map(|(g, p)| (g - p).abs()).fold(0f32, f32::max);
                assert!(worst <= 1e-5 * scale.max(1.0), "{dtype:?} {}: {worst}", isa.name());
            }
        }
    }

    #[test]
    fn dequantized_rows_equal_candles() {
        for dtype in K_QUANTS {
            let (q, matrix) = weights(dtype, 5, 512, 4);
            let reference = q.dequantize(&Device::Cpu).unwrap();
            let mut row = vec![0f32; 512];
            for r in 0..5 {
                matrix.dequantize_row(r, &mut row);
                let expected: Vec<f32> = reference.get(r).unwrap().to_vec1().unwrap();
                assert_eq!(row, expected, "{dtype:?} row {r}");
            }
        }
    }

    /// A tiny model whose projections and embedding are K-quants (and Q5_0, Q5_1: the panel
    /// kernels, which small models' `Q4_K_M` files use for rows that are not a multiple of 256),
    /// loaded from GGUF onto these kernels, against candle running the same weights
    /// (dequantized, as f32): the logits differ only by the 8-bit activations, on a prefill and a
    /// decode step.
    #[test]
    fn a_k_quant_model_gives_candles_logits() {
        let dir = tempfile::tempdir().unwrap();
        let spec = TinySpec { hidden: 256, intermediate: 512, ..TinySpec::default() };
        let tiny = TinyModel::new(spec.clone()).unwrap();
        for dtype in K_QUANTS.into_iter().chain([GgmlDType::Q5_0, GgmlDType::Q5_1]) {
            assert!(BlockFormat::from_ggml(dtype).is_some(), "{dtype:?} loads onto these kernels");
            let mut reference = TinyModel::new(spec.clone()).unwrap();
            for tensor in reference.tensors.values_mut().filter(|t| t.rank() == 2) {
                *tensor = QTensor::quantize(tensor, dtype).unwrap().dequantize(&Device::Cpu).unwrap();
            }
            let ours = tiny.write_gguf(&dir.path().join(format!("{dtype:?}.gguf")), dtype).unwrap();
            let theirs = reference.write_gguf(&dir.path().join(format!("{dtype:?}-f32.gguf")), GgmlDType::F32).unwrap();
            let logits = |path: &std::path::Path| {
                let model = LlamaModel::from_gguf(path, &Device::Cpu).unwrap();
                let mut cache = model.new_cache(16).unwrap();
                let none = AdapterMix::default();
                let mut logits = model.logits_for(&[1, 2, 3, 4, 5], &mut cache, &none).unwrap();
                logits.extend(model.logits_for(&[9], &mut cache, &none).unwrap());
                logits
            };
            let (ours, theirs) = (logits(&ours), logits(&theirs));
            assert_eq!(ours.len(), theirs.len());
            let worst = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(
                worst < 0.02 * largest(&theirs),
                "{dtype:?}: logits differ by {worst} (largest {})",
                largest(&theirs)
            );
        }
    }

    #[test]
    fn activations_quantize_like_candles_q8k() {
        let x = random(2, 512, 5);
        let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let ours = Q8K::quantize(&xs, 2, 512);
        let theirs = QTensor::quantize(&x, GgmlDType::Q8K).unwrap();
        let bytes = theirs.data().unwrap();
        // candle's block_q8_K: f32 d, 256 i8, 16 i16 sums.
        for (b, block) in bytes.chunks_exact(4 + 256 + 32).enumerate() {
            assert_eq!(ours.scale[b].to_le_bytes(), block[..4], "block {b} scale");
            let quants: Vec<i8> = block[4..260].iter().map(|&q| q as i8).collect();
            assert_eq!(&ours.quants[b * 256..(b + 1) * 256], &quants[..], "block {b} quants");
            let sums: Vec<i16> = block[260..].chunks_exact(2).map(|s| i16::from_le_bytes([s[0], s[1]])).collect();
            assert_eq!(&ours.bsums[b * 16..(b + 1) * 16], &sums[..], "block {b} sums");
        }
    }
}
