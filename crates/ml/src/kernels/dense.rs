//! Dense f32 matrix products on slices (the `gemm` crate's kernels), for training.

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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
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
}
