//! One decoder layer of the training forward as a single autograd node on the CPU: RMSNorm,
//! the q/k/v projections, causal attention with RoPE, the output projection and its residual,
//! RMSNorm, SwiGLU, the down projection and its residual, each projection with its LoRA pair if
//! it has one. Built from the slice-level pieces of `fused.rs`, and held to the composition of
//! those ops (one node per op) by the tests.
//!
//! Why one node: candle's backward pass starts every input gradient of every node as a zero
//! tensor and adds the op's gradient into it, each a fresh allocation and a serial pass. Composed
//! from fused ops, a SmolLM2 layer has about twenty such gradients, 5.8 M values at 512 rows,
//! about 3 GB of single-threaded memory traffic and page faults per training step. As one node,
//! the layer accumulates its gradients in place and in parallel, and candle sees two: the layer
//! input's and one flat vector of the layer's LoRA gradients.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};

use super::attention::{Attention, AttentionShape};
use super::fused::{
    FrozenWeight, LowRank, add_in_place, host, lock, rms_norm_backward, rms_norm_forward, slice, swiglu_backward,
    swiglu_forward,
};
use crate::error::Result;
use crate::lora::Target;

/// Where one projection's LoRA factors sit in the layer's flat parameter vector: `A`
/// `(rank, in)` at `offset`, then `B` `(out, rank)` right after it.
pub(crate) struct LoraSlot {
    pub(crate) offset: usize,
    pub(crate) rank: usize,
    pub(crate) in_features: usize,
    pub(crate) out_features: usize,
    /// The dropout mask of the projection's input, if dropout is on.
    pub(crate) mask: Option<Vec<f32>>,
}

impl LoraSlot {
    fn a_len(&self) -> usize {
        self.rank * self.in_features
    }

    fn len(&self) -> usize {
        self.rank * (self.in_features + self.out_features)
    }

    fn low_rank<'a>(&'a self, flat: &'a [f32], scale: f32) -> LowRank<'a> {
        let (a, b) = flat[self.offset..][..self.len()].split_at(self.a_len());
        LowRank { a, b, rank: self.rank, scale, mask: self.mask.as_deref() }
    }
}

/// A layer's frozen weights, borrowed from the training base.
pub(crate) struct LayerWeights<'a> {
    pub(crate) attn_norm: &'a Tensor,
    pub(crate) ffn_norm: &'a Tensor,
    /// In `Target::ALL` order.
    pub(crate) projections: &'a [FrozenWeight],
}

/// What the forward pass keeps for the backward pass (the layer input is the node's argument).
struct Saved {
    h1: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    x2: Vec<f32>,
    h2: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    act: Vec<f32>,
}

struct DecoderLayer {
    attn_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    eps: f32,
    projections: Vec<FrozenWeight>,
    /// Per target, in `Target::ALL` order.
    lora: Vec<Option<LoraSlot>>,
    scale: f32,
    attention: Attention,
    /// A backward pass will follow: keep the activations.
    keep: bool,
    saved: Mutex<Option<Saved>>,
}

impl DecoderLayer {
    fn project(&self, target: Target, input: &[f32], flat: &[f32]) -> candle_core::Result<Vec<f32>> {
        let mut y = self.projections[target.index()].forward_rows(input)?;
        if let Some(slot) = &self.lora[target.index()] {
            slot.low_rank(flat, self.scale).add_forward(input, &mut y);
        }
        Ok(y)
    }

    /// The backward pass of one projection for its output gradient `g`: writes (or, with
    /// `accumulate`, adds) the input gradient to `dx` when given, and the LoRA gradients to
    /// their place in `d_flat`.
    fn project_back(
        &self,
        target: Target,
        (input, g): (&[f32], &[f32]),
        mut dx: Option<&mut [f32]>,
        accumulate: bool,
        (flat, d_flat): (&[f32], &mut [f32]),
    ) -> candle_core::Result<()> {
        if let Some(dx) = dx.as_deref_mut() {
            self.projections[target.index()].grad_rows_into(g, dx, accumulate)?;
        }
        if let Some(slot) = &self.lora[target.index()] {
            let (da, db) = d_flat[slot.offset..][..slot.len()].split_at_mut(slot.a_len());
            slot.low_rank(flat, self.scale).backward(input, g, dx, da, db);
        }
        Ok(())
    }
}

impl CustomOp2 for DecoderLayer {
    fn name(&self) -> &'static str {
        "decoder-layer"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, flat) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?);
        let h1 = rms_norm_forward(x, &self.attn_norm, self.eps);
        let q = self.project(Target::Q, &h1, flat)?;
        let k = self.project(Target::K, &h1, flat)?;
        let v = self.project(Target::V, &h1, flat)?;
        let attn = self.attention.forward_rows(&q, &k, &v);
        let mut x2 = self.project(Target::O, &attn, flat)?;
        add_in_place(&mut x2, x);
        let h2 = rms_norm_forward(&x2, &self.ffn_norm, self.eps);
        let gate = self.project(Target::Gate, &h2, flat)?;
        let up = self.project(Target::Up, &h2, flat)?;
        let act = swiglu_forward(&gate, &up);
        let mut out = self.project(Target::Down, &act, flat)?;
        add_in_place(&mut out, &x2);
        if self.keep {
            let saved = Saved { h1, q, k, v, attn, x2, h2, gate, up, act };
            *lock(&self.saved, self.name())? = Some(saved);
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        flat: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let saved = lock(&self.saved, self.name())?
            .take()
            .ok_or_else(|| candle_core::Error::Msg("decoder-layer: the forward pass kept no activations".into()))?;
        let Saved { h1, q, k, v, attn, x2, h2, gate, up, act } = saved;
        let (xv, fv, g) = (host(x)?, host(flat)?, host(grad_res)?);
        let (flat_values, mut d_flat) = (&*fv, vec![0f32; fv.len()]);
        let mut d_act = vec![0f32; act.len()];
        self.project_back(Target::Down, (&act, &g), Some(&mut d_act), false, (flat_values, &mut d_flat))?;
        let (d_gate, d_up) = swiglu_backward(&gate, &up, &d_act);
        drop((d_act, act));
        let mut dh2 = vec![0f32; h2.len()];
        self.project_back(Target::Gate, (&h2, &d_gate), Some(&mut dh2), false, (flat_values, &mut d_flat))?;
        self.project_back(Target::Up, (&h2, &d_up), Some(&mut dh2), true, (flat_values, &mut d_flat))?;
        // The residual passes the output gradient through; RMSNorm adds its own.
        let mut dx2 = g.to_vec();
        rms_norm_backward(&x2, &dh2, &self.ffn_norm, self.eps, &mut dx2);
        let mut d_attn = vec![0f32; attn.len()];
        self.project_back(Target::O, (&attn, &dx2), Some(&mut d_attn), false, (flat_values, &mut d_flat))?;
        let (dq, dk, dv) = self.attention.backward_rows(&q, &k, &v, &d_attn);
        // The first layer's input is the frozen embedding: no gradient to compute there.
        let dx = if x.track_op() {
            let mut dh1 = vec![0f32; h1.len()];
            self.project_back(Target::Q, (&h1, &dq), Some(&mut dh1), false, (flat_values, &mut d_flat))?;
            self.project_back(Target::K, (&h1, &dk), Some(&mut dh1), true, (flat_values, &mut d_flat))?;
            self.project_back(Target::V, (&h1, &dv), Some(&mut dh1), true, (flat_values, &mut d_flat))?;
            let mut dx = dx2;
            rms_norm_backward(&xv, &dh1, &self.attn_norm, self.eps, &mut dx);
            Some(Tensor::from_vec(dx, x.shape(), x.device())?)
        } else {
            for (target, grad) in [(Target::Q, &dq), (Target::K, &dk), (Target::V, &dv)] {
                self.project_back(target, (&h1, grad), None, false, (flat_values, &mut d_flat))?;
            }
            None
        };
        let d_flat = if flat.track_op() { Some(Tensor::from_vec(d_flat, flat.shape(), flat.device())?) } else { None };
        Ok((dx, d_flat))
    }
}

/// Settings of a layer call shared by every layer of a forward pass.
pub(crate) struct LayerCall<'a> {
    pub(crate) shape: AttentionShape,
    pub(crate) cos: &'a Tensor,
    pub(crate) sin: &'a Tensor,
    pub(crate) eps: f32,
    pub(crate) scale: f32,
    pub(crate) backward: bool,
}

/// One decoder layer on rows `x` `(N, H)`. `flat` holds the layer's LoRA factors as laid out by
/// `lora` (one slot per target, `Target::ALL` order; an empty tensor when there are none).
pub(crate) fn decoder_layer(
    x: &Tensor,
    weights: &LayerWeights<'_>,
    (flat, lora): (Tensor, Vec<Option<LoraSlot>>),
    call: &LayerCall<'_>,
) -> Result<Tensor> {
    let op = DecoderLayer {
        attn_norm: weights.attn_norm.to_dtype(DType::F32)?.to_vec1()?,
        ffn_norm: weights.ffn_norm.to_dtype(DType::F32)?.to_vec1()?,
        eps: call.eps,
        projections: weights.projections.to_vec(),
        lora,
        scale: call.scale,
        attention: Attention::new(call.shape, call.cos, call.sin)?,
        keep: call.backward,
        saved: Mutex::new(None),
    };
    Ok(x.contiguous()?.apply_op2(&flat.contiguous()?, op)?)
}
