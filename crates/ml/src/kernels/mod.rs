//! CPU matrix-vector kernels for the GGML block formats small Llama GGUFs use most (Q4_0,
//! Q4_1, Q8_0): activations are quantized to 8-bit blocks once per call, each weight row is
//! read once for all batch rows, and output rows are split across the rayon pool. candle's
//! own Q4_1 dot product is scalar; this one uses AVX2 (x86-64-v3, see .cargo/config.toml)
//! and falls back to portable code elsewhere.

use candle_core::quantized::GgmlDType;
use crate::error::{MlError, Result};

mod isa;
mod kquant;

pub use isa::{Isa, KERNELS_ENV};

/// Elements per GGML block (Q4_0, Q4_1, Q8_0).
pub const BLOCK: usize = 32;

/// Elements per K-quant super-block (Q4_K, Q5_K, Q6_K).
pub const SUPER_BLOCK: usize = 256;

/// The block formats these kernels implement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockFormat {
    Q4_0,
    Q4_1,
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

    /// Bytes of one block: f16 scale (and f16 min for Q4_1), then the quants.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
        }
    }
}

/// A weight matrix (out × in) as raw GGML blocks, row-major.
#[derive(Debug)]
pub struct BlockMatrix {
    pub format: BlockFormat,
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<u8>,
}

impl BlockMatrix {
    pub fn new(format: BlockFormat, rows: usize, cols: usize, data: Vec<u8>) -> Result<Self> {
        let block = format.block_len();
        if !cols.is_multiple_of(block) || data.len() != rows * cols / block * format.block_bytes() {
            return Err(MlError::corrupt(
                "model",
                format!("{format:?} matrix {rows}x{cols} cannot hold {} bytes", data.len()),
            ));
        }
        Ok(Self { format, rows, cols, data })
    }

    /// The rows of `parts` one under the other, when they share format and width.
    pub fn stack(parts: &[&BlockMatrix]) -> Result<Option<Self>> {
        let Some(first) = parts.first() else { return Ok(None) };
        if parts.iter().any(|p| p.format != first.format || p.cols != first.cols) {
            return Ok(None);
        }
        let data = parts.iter().flat_map(|p| p.data.iter().copied()).collect();
        let rows = parts.iter().map(|p| p.rows).sum();
        Ok(Some(Self::new(first.format, rows, first.cols, data)?))
    }

    fn row_bytes(&self) -> usize {
        self.cols / self.format.block_len() * self.format.block_bytes()
    }

    /// Row `r` as f32 (the embedding lookup).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        if self.format.is_k_quant() {
            return kquant::dequantize_row(self, r, out);
        }
        let row = &self.data[r * self.row_bytes()..(r + 1) * self.row_bytes()];
        for (block, out) in row.chunks_exact(self.format.block_bytes()).zip(out.chunks_exact_mut(BLOCK)) {
            let d = f16_at(block, 0);
            match self.format {
                BlockFormat::Q4_0 => {
                    for j in 0..16 {
                        out[j] = d * (f32::from(block[2 + j] & 0x0F) - 8.0);
                        out[j + 16] = d * (f32::from(block[2 + j] >> 4) - 8.0);
                    }
                }
                BlockFormat::Q4_1 => {
                    let m = f16_at(block, 2);
                    for j in 0..16 {
                        out[j] = d * f32::from(block[4 + j] & 0x0F) + m;
                        out[j + 16] = d * f32::from(block[4 + j] >> 4) + m;
                    }
                }
                BlockFormat::Q8_0 => {
                    for j in 0..32 {
                        out[j] = d * f32::from(block[2 + j] as i8);
                    }
                }
                BlockFormat::Q4K | BlockFormat::Q5K | BlockFormat::Q6K => unreachable!("K-quants go to kquant"),
            }
        }
    }

    /// `x · Wᵀ` for `x` of `m` rows × `cols`: returns `m` rows × `self.rows`.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        debug_assert_eq!(x.len(), m * self.cols);
        if self.format.is_k_quant() {
            return kquant::matmul(self, x, m, Isa::active());
        }
        let activations = Q8Activations::quantize(x, m, self.cols);
        let n = self.rows;
        let row_bytes = self.row_bytes();
        // Work in column chunks so every chunk reads its weight rows once for all m inputs.
        // 128-row chunks: fewer pool hand-offs than 32-row ones (about 4% of two-thread decode,
        // measured), still several tasks for work stealing on the smallest matrices (576 rows).
        let chunk = 128;
        let mut transposed = vec![0f32; n * m]; // (n, m): each chunk writes a contiguous slice
        crate::pool::for_each_chunk(&mut transposed, chunk * m, |c, out| {
            let first = c * chunk;
            let rows = out.len() / m;
            let row = |j: usize| &self.data[(first + j) * row_bytes..(first + j + 1) * row_bytes];
            let mut j = 0;
            while j + 4 <= rows {
                for i in 0..m {
                    let dots = dot_rows(self.format, [row(j), row(j + 1), row(j + 2), row(j + 3)], &activations, i);
                    for (r, d) in dots.into_iter().enumerate() {
                        out[(j + r) * m + i] = d;
                    }
                }
                j += 4;
            }
            for j in j..rows {
                for i in 0..m {
                    out[j * m + i] = dot_rows(self.format, [row(j)], &activations, i)[0];
                }
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
}

fn f16_at(block: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([block[at], block[at + 1]]).to_f32()
}

/// Input rows quantized to 8-bit blocks: per block a scale `d`, `d·Σq` (for Q4_1's min) and
/// the 32 quants.
struct Q8Activations {
    blocks_per_row: usize,
    scale: Vec<f32>,
    scaled_sum: Vec<f32>,
    quants: Vec<i8>,
}

impl Q8Activations {
    fn quantize(x: &[f32], m: usize, cols: usize) -> Self {
        let blocks = m * cols / BLOCK;
        let mut scale = Vec::with_capacity(blocks);
        let mut scaled_sum = Vec::with_capacity(blocks);
        let mut quants = vec![0i8; m * cols];
        for (values, q) in x.chunks_exact(BLOCK).zip(quants.chunks_exact_mut(BLOCK)) {
            let amax = values.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let inverse = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (q, v) in q.iter_mut().zip(values) {
                *q = (v * inverse).round() as i8;
                sum += i32::from(*q);
            }
            scale.push(d);
            scaled_sum.push(d * sum as f32);
        }
        Self { blocks_per_row: cols / BLOCK, scale, scaled_sum, quants }
    }
}

/// `R` weight rows against activation row `i` (the AVX2 kernel, or the portable one).
#[inline]
fn dot_rows<const R: usize>(format: BlockFormat, w: [&[u8]; R], x: &Q8Activations, i: usize) -> [f32; R] {
    let b0 = i * x.blocks_per_row;
    let scales = &x.scale[b0..b0 + x.blocks_per_row];
    let sums = &x.scaled_sum[b0..b0 + x.blocks_per_row];
    let quants = &x.quants[b0 * BLOCK..(b0 + x.blocks_per_row) * BLOCK];
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
    {
        avx2::dot_rows::<R>(format, w, scales, sums, quants)
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c")))]
    {
        w.map(|w| portable_dot(format, w, scales, sums, quants))
    }
}

/// A dense f32 matrix operand of `rows × cols`: row-major in `data`, or, if `transposed`, the
/// transpose of the row-major `cols × rows` matrix in `data` (a weight `W` used as `Wᵀ`).
#[derive(Clone, Copy)]
pub(crate) struct Dense<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) transposed: bool,
}

impl<'a> Dense<'a> {
    pub(crate) fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self { data, rows, cols, transposed: false }
    }

    /// This matrix's transpose (no copy).
    pub(crate) fn t(self) -> Self {
        Self { data: self.data, rows: self.cols, cols: self.rows, transposed: !self.transposed }
    }

    /// (row stride, column stride) in elements.
    fn strides(&self) -> (isize, isize) {
        if self.transposed { (1, self.rows as isize) } else { (self.cols as isize, 1) }
    }
}

/// How many jobs [`matmul`] splits a parallel product into per thread of the pool. gemm hands
/// each job an equal share, so with one job per thread every product waits for the slowest
/// thread; on shared vCPUs one of them often runs much slower than the other for seconds at a
/// time. With four jobs a thread, rayon's work stealing moves the slow thread's jobs to the fast
/// one, for a little more packing. Measured in bench/RESULTS.md ("Four gemm jobs per thread").
const JOBS_PER_THREAD: usize = 4;

/// `out = a·b` (or `out += a·b` if `accumulate`) for `a` `m × k`, `b` `k × n` and a row-major
/// `out` `m × n`: the `gemm` crate's kernels (AVX-512 or AVX2, chosen at run time) straight on
/// slices, on the current rayon pool. The training ops use it instead of candle's matmul, which
/// would need their inputs copied into tensors and their outputs copied back out.
///
/// Panics if the shapes disagree or a slice is shorter than its shape.
pub(crate) fn matmul(a: Dense<'_>, b: Dense<'_>, out: &mut [f32], accumulate: bool) {
    matmul_with(a, b, out, accumulate, true);
}

/// [`matmul`], on the calling thread alone unless `parallel` (for small products inside tasks
/// that already run in parallel).
pub(crate) fn matmul_with(a: Dense<'_>, b: Dense<'_>, out: &mut [f32], accumulate: bool, parallel: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "matmul: inner dimensions differ");
    assert!(a.data.len() >= m * k && b.data.len() >= k * n, "matmul: operand shorter than its shape");
    assert_eq!(out.len(), m * n, "matmul: output size");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            out.fill(0.0);
        }
        return;
    }
    let threads = rayon::current_num_threads();
    let parallelism = if parallel && threads > 1 && m * n * k >= 1 << 18 {
        gemm::Parallelism::Rayon(threads * JOBS_PER_THREAD)
    } else {
        gemm::Parallelism::None
    };
    let ((a_rs, a_cs), (b_rs, b_cs)) = (a.strides(), b.strides());
    // SAFETY: with the asserts above, every element gemm reads is inside `a.data` (rows·cols
    // elements addressed by its strides, whichever way it is stored) or `b.data`, and every
    // element it writes is inside `out` (m·n contiguous, row stride n). `out` is borrowed
    // mutably, so it cannot alias the shared operands.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a_cs,
            a_rs,
            b.data.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Reference implementation: plain integer dot products per block.
#[cfg_attr(
    all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"),
    allow(dead_code)
)]
fn portable_dot(format: BlockFormat, w: &[u8], scales: &[f32], sums: &[f32], quants: &[i8]) -> f32 {
    let mut total = 0f32;
    for (b, block) in w.chunks_exact(format.block_bytes()).enumerate() {
        let q = &quants[b * BLOCK..(b + 1) * BLOCK];
        let d = f16_at(block, 0) * scales[b];
        total += match format {
            BlockFormat::Q4_0 => {
                let s: i32 = (0..16)
                    .map(|j| {
                        (i32::from(block[2 + j] & 0x0F) - 8) * i32::from(q[j])
                            + (i32::from(block[2 + j] >> 4) - 8) * i32::from(q[j + 16])
                    })
                    .sum();
                d * s as f32
            }
            BlockFormat::Q4_1 => {
                let s: i32 = (0..16)
                    .map(|j| {
                        i32::from(block[4 + j] & 0x0F) * i32::from(q[j])
                            + i32::from(block[4 + j] >> 4) * i32::from(q[j + 16])
                    })
                    .sum();
                d * s as f32 + f16_at(block, 2) * sums[b]
            }
            BlockFormat::Q8_0 => {
                let s: i32 = (0..32).map(|j| i32::from(block[2 + j] as i8) * i32::from(q[j])).sum();
                d * s as f32
            }
            BlockFormat::Q4K | BlockFormat::Q5K | BlockFormat::Q6K => unreachable!("K-quants go to kquant"),
        };
    }
    total
}

/// AVX2 dot products, after llama.cpp's `ggml_vec_dot_q4_{0,1}_q8_{0,1}`: unsigned×signed
/// byte products summed pairwise (`maddubs`), widened (`madd`), scaled in f32 with FMA.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
#[allow(unsafe_code)]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BLOCK, BlockFormat};

    /// `R` weight rows against one activation row: the activation block is loaded once for all
    /// rows, and the rows' accumulators form independent FMA chains.
    pub(super) fn dot_rows<const R: usize>(
        format: BlockFormat,
        rows: [&[u8]; R],
        scales: &[f32],
        sums: &[f32],
        quants: &[i8],
    ) -> [f32; R] {
        let bytes = format.block_bytes();
        let blocks = rows[0].len() / bytes;
        assert!(rows.iter().all(|r| r.len() == blocks * bytes));
        assert!(scales.len() >= blocks && sums.len() >= blocks && quants.len() >= blocks * BLOCK);
        // SAFETY: the target features are enabled at compile time (cfg above). Block `b` of a
        // row spans bytes `b*bytes..(b+1)*bytes`, inside the row (assert); the 16- or 32-byte
        // loads start 2 or 4 bytes into it and end inside it. Activation block `b` is 32 bytes
        // inside `quants` (assert). All loads are unaligned (`loadu`).
        unsafe {
            let mut acc = [_mm256_setzero_ps(); R];
            let mut mins = [0f32; R];
            let ones = _mm256_set1_epi16(1);
            let low_mask = _mm256_set1_epi8(0x0F);
            let eight = _mm256_set1_epi8(8);
            for b in 0..blocks {
                let y = _mm256_loadu_si256(quants.as_ptr().add(b * BLOCK).cast());
                let scale = *scales.get_unchecked(b);
                for r in 0..R {
                    let block = rows[r].as_ptr().add(b * bytes);
                    let d = half::f16::from_bits(u16::from_le_bytes([*block, *block.add(1)])).to_f32();
                    let pairs = match format {
                        BlockFormat::Q4_1 => {
                            let m = half::f16::from_bits(u16::from_le_bytes([*block.add(2), *block.add(3)])).to_f32();
                            mins[r] += m * *sums.get_unchecked(b);
                            _mm256_maddubs_epi16(nibbles(block.add(4), low_mask), y)
                        }
                        BlockFormat::Q4_0 => {
                            let x = _mm256_sub_epi8(nibbles(block.add(2), low_mask), eight);
                            _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
                        }
                        BlockFormat::Q8_0 => {
                            let x = _mm256_loadu_si256(block.add(2).cast());
                            _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
                        }
                        BlockFormat::Q4K | BlockFormat::Q5K | BlockFormat::Q6K => {
                            unreachable!("K-quants go to kquant")
                        }
                    };
                    let products = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
                    acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * scale), products, acc[r]);
                }
            }
            let mut out = [0f32; R];
            for r in 0..R {
                out[r] = horizontal_sum(acc[r]) + mins[r];
            }
            out
        }
    }

    #[inline(always)]
    unsafe fn nibbles(packed: *const u8, low_mask: __m256i) -> __m256i {
        unsafe {
            let packed = _mm_loadu_si128(packed.cast());
            let both = _mm256_insertf128_si256(_mm256_castsi128_si256(packed), _mm_srli_epi16(packed, 4), 1);
            _mm256_and_si256(both, low_mask)
        }
    }

    #[inline(always)]
    unsafe fn horizontal_sum(acc: __m256) -> f32 {
        unsafe {
            let quad = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
            let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
            _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use candle_core::quantized::{QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};

    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;

    /// The slice matmul against a naive triple loop, for both storage orders of both operands,
    /// overwriting and accumulating, on sizes below and above the threading threshold.
    #[test]
    fn dense_matmul_matches_a_naive_product() {
        let mut rng = StdRng::seed_from_u64(11);
        for (m, k, n) in [(3, 5, 2), (70, 90, 65)] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let naive: Vec<f32> =
                (0..m * n).map(|i| (0..k).map(|j| a[i / n * k + j] * b[j * n + i % n]).sum()).collect();
            let transpose = |x: &[f32], rows: usize, cols: usize| -> Vec<f32> {
                (0..rows * cols).map(|i| x[i % rows * cols + i / rows]).collect()
            };
            let (at, bt) = (transpose(&a, m, k), transpose(&b, k, n));
            for (a_op, b_op) in
                [(Dense::new(&a, m, k), Dense::new(&b, k, n)), (Dense::new(&at, k, m).t(), Dense::new(&bt, n, k).t())]
            {
                let mut out = vec![1.0; m * n];
                matmul(a_op, b_op, &mut out, true);
                let worst = out.iter().zip(&naive).map(|(o, r)| (o - 1.0 - r).abs()).fold(0f32, f32::max);
                assert!(worst < 1e-4, "accumulate {m}x{k}x{n}: {worst}");
                matmul(a_op, b_op, &mut out, false);
                let worst = out.iter().zip(&naive).map(|(o, r)| (o - r).abs()).fold(0f32, f32::max);
                assert!(worst < 1e-4, "overwrite {m}x{k}x{n}: {worst}");
            }
        }
    }

    /// The kernels against candle's own quantized matmul on the same blocks.
    #[test]
    fn kernels_match_candle() {
        let device = Device::Cpu;
        let (n, k, m) = (96, 256, 3);
        let w = Tensor::randn(0f32, 1.0, (n, k), &device).unwrap();
        let x = Tensor::randn(0f32, 1.0, (m, k), &device).unwrap();
        for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
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
            let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let got = matrix.matmul(&xs, m);
            let scale = expected.iter().fold(0f32, |a, v| a.max(v.abs()));
            for (g, e) in got.iter().zip(&expected) {
                assert!((g - e).abs() <= 1e-3 * scale.max(1.0), "{dtype:?}: {g} vs {e}");
            }
            let portable: Vec<f32> = {
                let a = Q8Activations::quantize(&xs, m, k);
                let row_bytes = k / BLOCK * matrix.format.block_bytes();
                (0..m)
                    .flat_map(|i| {
                        let a = &a;
                        let matrix = &matrix;
                        (0..n).map(move |j| {
                            let b0 = i * a.blocks_per_row;
                            portable_dot(
                                matrix.format,
                                &matrix.data[j * row_bytes..(j + 1) * row_bytes],
                                &a.scale[b0..],
                                &a.scaled_sum[b0..],
                                &a.quants[b0 * BLOCK..],
                            )
                        })
                    })
                    .collect()
            };
            for (g, p) in got.iter().zip(&portable) {
                assert!((g - p).abs() <= 1e-4 * scale.max(1.0), "{dtype:?} portable: {g} vs {p}");
            }
            let mut row = vec![0f32; k];
            matrix.dequantize_row(5, &mut row);
            let reference: Vec<f32> = q.dequantize(&device).unwrap().get(5).unwrap().to_vec1().unwrap();
            assert_eq!(row, reference, "{dtype:?} dequantize");
        }
    }
}
