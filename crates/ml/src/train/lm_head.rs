//! The output projection fused with the loss, as a candle custom op: each row's negative
//! log-likelihood of its target over the vocabulary, computed in chunks with an online softmax so
//! the `(rows, vocab)` logits never exist whole, and (when a backward pass follows) its gradient
//! accumulated in the same pass. `fused::reference::lm_head_loss` is the tensor-op version it is
//! tested against (in `fused.rs`) and the path on other devices.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::fused::{cpu, host, lock, reference, slice};
use crate::error::Result;
use crate::host::exp_in_place;
use crate::kernels::{Dense, matmul};

/// The output projection and the loss fused: `nll_r = logsumexp(h_r·Wᵀ) − (h_r·Wᵀ)[target_r]`,
/// computed over the vocabulary in chunks of `VOCAB_CHUNK` columns with a running max and sum
/// per row (online softmax), so the `(rows, vocab)` logits (100 MB for 512 rows of a 49k
/// vocabulary) never exist whole and the output matrix is read once per pass.
///
/// When a backward pass will follow (`keep_grad`), the same pass also accumulates each row's
/// `Σ_v exp(l_v − max)·W_v`, rescaled whenever the row's max grows (as flash attention does),
/// so `∂nll_r/∂h_r = softmax_r·W − W[target_r]` is known at the end of the forward pass and the
/// backward pass only scales it by the incoming gradient. The logits are computed once, not
/// again in the backward pass: two vocabulary-sized matmuls per step instead of three.
struct LmHeadLoss {
    weight: Tensor,
    targets: Vec<u32>,
    keep_grad: bool,
    /// `(rows, hidden)`: `∂nll_r/∂h_r`, set by the forward pass when `keep_grad`.
    grad: std::sync::Mutex<Option<Tensor>>,
}

pub(super) const VOCAB_CHUNK: usize = 4096;

/// One row's running softmax state over the vocabulary chunks seen so far.
#[derive(Clone, Copy)]
struct RowSoftmax {
    max: f32,
    sum: f32,
    target_logit: f32,
    /// The factor the row's accumulated gradient is rescaled by in the current chunk.
    rescale: f32,
}

impl LmHeadLoss {
    /// Each row's loss, and (if `keep_grad`) its gradient, for `h` `(rows, width)`.
    fn nll_and_grad(&self, h: &[f32], rows: usize) -> candle_core::Result<(Vec<f32>, Option<Tensor>)> {
        let (vocab, width) = self.weight.dims2()?;
        if h.len() != rows * width {
            candle_core::bail!("lm-head-loss: hidden states of {} values are not {rows} rows of {width}", h.len());
        }
        let weight = host(&self.weight)?;
        let start = RowSoftmax { max: f32::NEG_INFINITY, sum: 0.0, target_logit: 0.0, rescale: 1.0 };
        let mut state = vec![start; rows];
        // With a backward pass to follow: the running `Σ exp(l − max)·W` per row, and the
        // chunk's `probs·W_chunk` that is folded into it.
        let mut acc = self.keep_grad.then(|| (vec![0f32; rows * width], vec![0f32; rows * width]));
        let mut probs = vec![0f32; rows * VOCAB_CHUNK.min(vocab)];
        for first in (0..vocab).step_by(VOCAB_CHUNK) {
            let n = VOCAB_CHUNK.min(vocab - first);
            let w = &weight[first * width..(first + n) * width];
            let probs = &mut probs[..rows * n];
            matmul(Dense::new(h, rows, width), Dense::new(w, n, width).t(), probs, false);
            // `probs` holds the chunk's logits until each row turns its own into probabilities.
            probs.par_chunks_mut(n).zip(state.par_iter_mut()).enumerate().for_each(|(r, (p, s))| {
                let max = p.iter().copied().fold(s.max, f32::max);
                if let Some(t) = (self.targets[r] as usize).checked_sub(first).filter(|t| *t < n) {
                    s.target_logit = p[t];
                }
                s.rescale = (s.max - max).exp();
                p.iter_mut().for_each(|p| *p -= max);
                exp_in_place(p);
                (s.max, s.sum) = (max, s.sum * s.rescale + p.iter().sum::<f32>());
            });
            if let Some((acc, pw)) = &mut acc {
                matmul(Dense::new(probs, rows, n), Dense::new(w, n, width), pw, false);
                acc.par_chunks_mut(width).zip(pw.par_chunks(width)).zip(&state).for_each(|((a, pw), s)| {
                    a.iter_mut().zip(pw).for_each(|(a, pw)| *a = *a * s.rescale + pw);
                });
            }
        }
        let nll = state.iter().map(|s| s.max + s.sum.ln() - s.target_logit).collect();
        let grad = match acc {
            Some((mut acc, _)) => {
                for ((a, s), &t) in acc.chunks_exact_mut(width).zip(&state).zip(&self.targets) {
                    let target_row = &weight[t as usize * width..][..width];
                    a.iter_mut().zip(target_row).for_each(|(a, w)| *a = *a / s.sum - w);
                }
                Some(cpu(acc, &Shape::from((rows, width)))?)
            }
            None => None,
        };
        Ok((nll, grad))
    }
}

impl CustomOp1 for LmHeadLoss {
    fn name(&self) -> &'static str {
        "lm-head-loss"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let rows = layout.shape().dims2()?.0;
        let (nll, grad) = self.nll_and_grad(slice(storage, layout, self.name())?, rows)?;
        *lock(&self.grad, self.name())? = grad;
        let n = nll.len();
        Ok((CpuStorage::F32(nll), Shape::from(n)))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let grad = lock(&self.grad, self.name())?;
        let grad = grad.as_ref().ok_or_else(|| {
            candle_core::Error::Msg("lm-head-loss: the forward pass ran without keeping its gradient".into())
        })?;
        Ok(Some(grad.broadcast_mul(&grad_res.unsqueeze(1)?)?))
    }
}

/// The negative log-likelihood of `targets` under `hidden · Wᵀ`, one value per row.
/// `keep_grad`: a backward pass will follow (see [`LmHeadLoss`]).
pub(crate) fn lm_head_loss(hidden: &Tensor, weight: &Tensor, targets: &Tensor, keep_grad: bool) -> Result<Tensor> {
    if !hidden.device().is_cpu() {
        return reference::lm_head_loss(hidden, weight, targets);
    }
    let targets: Vec<u32> = targets.flatten_all()?.to_vec1()?;
    let op = LmHeadLoss { weight: weight.clone(), targets, keep_grad, grad: Default::default() };
    Ok(hidden.contiguous()?.apply_op1(op)?)
}
