//! K-quant weights (Q4_K, Q5_K, Q6_K: 256-value super-blocks with 6-bit sub-block scales)
//! against 8-bit activations in 256-value blocks (GGML's Q8_K), on every [`Isa`] level.
//!
//! Not wired yet: `BlockFormat::from_ggml` does not return the K variants until these kernels
//! are in, so K-quant tensors still run on candle's `QMatMul`.

use super::{BlockMatrix, Isa};

/// `x · Wᵀ` for a K-quant `matrix` and `m` rows of `x`: `m` rows × `matrix.rows`.
pub(super) fn matmul(_matrix: &BlockMatrix, _x: &[f32], _m: usize, _isa: Isa) -> Vec<f32> {
    unimplemented!("K-quant kernels")
}

/// Row `r` of a K-quant matrix as f32.
pub(super) fn dequantize_row(_matrix: &BlockMatrix, _r: usize, _out: &mut [f32]) {
    unimplemented!("K-quant kernels")
}
