//! Causal self-attention with RoPE as a candle custom op on CPU slices: the forward pass and a
//! hand-written backward pass, each parallel over (example, kv head) blocks, that never
//! materialise the `(B, heads, T, T)` scores as tensors. `Attention::forward_rows` and
//! `backward_rows` also serve the one-node decoder layer (`layer.rs`);
//! `fused::reference::attention` is the tensor-op version it is tested against (in `fused.rs`)
//! and the path on other devices.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::fused::{cpu, host, reference, slice};
use crate::error::Result;
use crate::host::{causal_softmax, rope};
use crate::kernels::{Dense, matmul_with};

/// Causal self-attention with RoPE (Hugging Face's half-split layout) over a padded batch of
/// `batch` sequences of `seq` positions. Queries `(N, heads·d)`, keys and values
/// `(N, kv_heads·d)` with rows `example·seq + position`, as the projections produce them; the
/// output is `(N, heads·d)`, ready for the output projection. The backward pass recomputes the
/// attention probabilities (`seq × seq` per head) instead of keeping them.
pub(super) struct Attention {
    batch: usize,
    seq: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    /// `seq × d/2` angles; `neg_sin` rotates back (RoPE's transpose).
    cos: Vec<f32>,
    sin: Vec<f32>,
    neg_sin: Vec<f32>,
}

/// One (example, kv head) of a backward pass: the query gradients of its group's heads, and
/// its key and value gradients, each `seq × d`.
struct BlockGrads {
    dq: Vec<Vec<f32>>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

impl Attention {
    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// One head of one example as `seq × d` rows, rotated by RoPE if `roped`.
    fn gather(&self, x: &[f32], heads: usize, example: usize, head: usize, roped: bool) -> Vec<f32> {
        let (d, half) = (self.head_dim, self.head_dim / 2);
        let mut out = Vec::with_capacity(self.seq * d);
        for p in 0..self.seq {
            out.extend_from_slice(&x[((example * self.seq + p) * heads + head) * d..][..d]);
            if roped {
                rope(&mut out[p * d..], &self.cos[p * half..][..half], &self.sin[p * half..][..half], false);
            }
        }
        out
    }

    /// Rotates `seq × d` rows back by their positions' angles (the gradient through RoPE).
    fn unrope(&self, rows: &mut [f32]) {
        let half = self.head_dim / 2;
        for (p, row) in rows.chunks_exact_mut(self.head_dim).enumerate() {
            rope(row, &self.cos[p * half..][..half], &self.neg_sin[p * half..][..half], false);
        }
    }

    /// The causal attention probabilities of roped queries over roped keys: row `i` holds
    /// `softmax(q_i·k_j / √d)` for `j ≤ i` and zeros after. The scores come from one small
    /// matmul (the masked half is computed and discarded: cheaper than row-by-row dots).
    fn probs(&self, q: &[f32], k: &[f32]) -> Vec<f32> {
        let (t, d) = (self.seq, self.head_dim);
        let scale = 1.0 / (d as f32).sqrt();
        let mut p = vec![0f32; t * t];
        matmul_with(Dense::new(q, t, d), Dense::new(k, t, d).t(), &mut p, false, false);
        causal_softmax(&mut p, t, 0, scale);
        p
    }

    /// Tasks `(example, kv head)`, run on the thread pool.
    fn blocks<R: Send>(&self, f: impl Fn(usize, usize) -> R + Sync) -> Vec<R> {
        (0..self.batch * self.kv_heads).into_par_iter().map(|i| f(i / self.kv_heads, i % self.kv_heads)).collect()
    }

    /// Writes one head's `seq × d` rows into an `(N, heads·d)` buffer.
    fn scatter(&self, out: &mut [f32], heads: usize, example: usize, head: usize, rows: &[f32]) {
        let d = self.head_dim;
        for (p, row) in rows.chunks_exact(d).enumerate() {
            out[((example * self.seq + p) * heads + head) * d..][..d].copy_from_slice(row);
        }
    }

    fn backward_block(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        grad: &[f32],
        example: usize,
        kv_head: usize,
    ) -> BlockGrads {
        let (t, d) = (self.seq, self.head_dim);
        let scale = 1.0 / (d as f32).sqrt();
        let key = self.gather(k, self.kv_heads, example, kv_head, true);
        let value = self.gather(v, self.kv_heads, example, kv_head, false);
        let (mut dk, mut dv) = (vec![0f32; t * d], vec![0f32; t * d]);
        let mut dq_heads = Vec::with_capacity(self.group());
        let mut ds = vec![0f32; t * t];
        for head in kv_head * self.group()..(kv_head + 1) * self.group() {
            let query = self.gather(q, self.heads, example, head, true);
            let dout = self.gather(grad, self.heads, example, head, false);
            let p = self.probs(&query, &key);
            // ∂p = ∂out·vᵀ; ∂s_ij = p_ij·(∂p_ij − Σ_j p_ij·∂p_ij), zero where p is masked.
            matmul_with(Dense::new(&dout, t, d), Dense::new(&value, t, d).t(), &mut ds, false, false);
            for (ds, p) in ds.chunks_exact_mut(t).zip(p.chunks_exact(t)) {
                let mean: f32 = p.iter().zip(ds.iter()).map(|(p, g)| p * g).sum();
                ds.iter_mut().zip(p).for_each(|(ds, p)| *ds = p * (*ds - mean) * scale);
            }
            let mut dq = vec![0f32; t * d];
            matmul_with(Dense::new(&ds, t, t), Dense::new(&key, t, d), &mut dq, false, false);
            matmul_with(Dense::new(&ds, t, t).t(), Dense::new(&query, t, d), &mut dk, true, false);
            matmul_with(Dense::new(&p, t, t).t(), Dense::new(&dout, t, d), &mut dv, true, false);
            self.unrope(&mut dq);
            dq_heads.push(dq);
        }
        self.unrope(&mut dk);
        BlockGrads { dq: dq_heads, dk, dv }
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (q, k, v) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?, slice(s3, l3, self.name())?);
        let out = self.forward_rows(q, k, v);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dq, dk, dv) = self.backward_rows(&host(q)?, &host(k)?, &host(v)?, &host(grad_res)?);
        Ok((Some(cpu(dq, q.shape())?), Some(cpu(dk, k.shape())?), Some(cpu(dv, v.shape())?)))
    }
}

impl Attention {
    pub(super) fn new(shape: AttentionShape, cos: &Tensor, sin: &Tensor) -> Result<Self> {
        let (cos, sin) = (cos.narrow(0, 0, shape.seq)?, sin.narrow(0, 0, shape.seq)?);
        let sin: Vec<f32> = sin.flatten_all()?.to_vec1()?;
        Ok(Self {
            batch: shape.batch,
            seq: shape.seq,
            heads: shape.heads,
            kv_heads: shape.kv_heads,
            head_dim: shape.head_dim,
            cos: cos.flatten_all()?.to_vec1()?,
            neg_sin: sin.iter().map(|s| -s).collect(),
            sin,
        })
    }

    /// The attention output `(N, heads·d)` for queries, keys and values as rows.
    pub(super) fn forward_rows(&self, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
        let blocks = self.blocks(|example, kv_head| {
            let key = self.gather(k, self.kv_heads, example, kv_head, true);
            let value = self.gather(v, self.kv_heads, example, kv_head, false);
            (kv_head * self.group()..(kv_head + 1) * self.group())
                .map(|head| {
                    let p = self.probs(&self.gather(q, self.heads, example, head, true), &key);
                    let mut out = vec![0f32; self.seq * self.head_dim];
                    matmul_with(
                        Dense::new(&p, self.seq, self.seq),
                        Dense::new(&value, self.seq, self.head_dim),
                        &mut out,
                        false,
                        false,
                    );
                    out
                })
                .collect::<Vec<_>>()
        });
        let mut out = vec![0f32; q.len()];
        for (i, heads) in blocks.iter().enumerate() {
            let (example, kv_head) = (i / self.kv_heads, i % self.kv_heads);
            for (g, rows) in heads.iter().enumerate() {
                self.scatter(&mut out, self.heads, example, kv_head * self.group() + g, rows);
            }
        }
        out
    }

    /// The gradients of queries, keys and values for the output gradient `grad`.
    pub(super) fn backward_rows(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        grad: &[f32],
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let blocks = self.blocks(|example, kv_head| self.backward_block(q, k, v, grad, example, kv_head));
        let (mut dq, mut dk, mut dv) = (vec![0f32; q.len()], vec![0f32; k.len()], vec![0f32; v.len()]);
        for (i, block) in blocks.iter().enumerate() {
            let (example, kv_head) = (i / self.kv_heads, i % self.kv_heads);
            for (g, rows) in block.dq.iter().enumerate() {
                self.scatter(&mut dq, self.heads, example, kv_head * self.group() + g, rows);
            }
            self.scatter(&mut dk, self.kv_heads, example, kv_head, &block.dk);
            self.scatter(&mut dv, self.kv_heads, example, kv_head, &block.dv);
        }
        (dq, dk, dv)
    }
}

/// Shapes of an attention call: `batch` sequences of `seq` positions, heads and kv heads of
/// `head_dim`.
#[derive(Clone, Copy)]
pub(crate) struct AttentionShape {
    pub(crate) batch: usize,
    pub(crate) seq: usize,
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
}

/// Causal attention with RoPE; `cos`, `sin`: `(≥ seq, d/2)` tables. See [`Attention`].
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    shape: AttentionShape,
    cos: &Tensor,
    sin: &Tensor,
) -> Result<Tensor> {
    if !q.device().is_cpu() {
        let (cos, sin) = (cos.narrow(0, 0, shape.seq)?, sin.narrow(0, 0, shape.seq)?);
        return reference::attention(q, k, v, shape, &cos, &sin);
    }
    let op = Attention::new(shape, cos, sin)?;
    Ok(q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)?)
}
