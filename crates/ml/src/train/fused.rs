//! The training forward's layers on CPU slices, each a candle custom op with a hand-written
//! backward: frozen and LoRA projections (gemm straight on slices), RMSNorm and SwiGLU here;
//! causal attention with RoPE in `attention.rs` and the output projection fused with the loss in
//! `lm_head.rs`, which build on this file's slice helpers. Composed from candle tensor ops
//! (`reference`, still the path on other devices), these are three dozen ops per layer, each
//! allocating its output and recording a node whose backward allocates again; fused, a layer
//! records thirteen nodes, and its attention never materialises the `(B, heads, T, T)` scores as
//! tensors. The slice-level functions behind the ops (`rms_norm_forward`, `LowRank`,
//! `Attention::forward_rows`, ...) also make up `layer.rs`, where a whole layer is one node; the
//! per-op graph remains for per-example gradients, which probe each projection's output. The
//! tests hold every op (those of `attention.rs` and `lm_head.rs` too) to its reference in value
//! and gradient.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::error::Result;
use crate::host::{dot, exp_in_place, rms_norm as rms_norm_rows};
use crate::kernels::{Dense, matmul};

/// The elements of a contiguous f32 CPU storage.
pub(super) fn slice<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    let (start, end) =
        layout.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg(format!("{op} needs contiguous input")))?;
    Ok(&storage.as_slice::<f32>()?[start..end])
}

/// A CPU tensor's elements: borrowed from its storage when it is contiguous (the usual case for
/// the inputs and gradients a backward pass receives), copied otherwise.
pub(super) enum HostData<'a> {
    Borrowed(std::sync::RwLockReadGuard<'a, candle_core::Storage>, std::ops::Range<usize>),
    Owned(Vec<f32>),
}

impl std::ops::Deref for HostData<'_> {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match self {
            Self::Borrowed(storage, range) => match &**storage {
                candle_core::Storage::Cpu(CpuStorage::F32(values)) => &values[range.clone()],
                _ => &[], // `host` only borrows CPU f32 storage
            },
            Self::Owned(values) => values,
        }
    }
}

pub(super) fn host(t: &Tensor) -> candle_core::Result<HostData<'_>> {
    let (storage, layout) = t.storage_and_layout();
    if let (candle_core::Storage::Cpu(CpuStorage::F32(_)), Some((start, end))) =
        (&*storage, layout.contiguous_offsets())
    {
        return Ok(HostData::Borrowed(storage, start..end));
    }
    drop(storage);
    Ok(HostData::Owned(t.flatten_all()?.to_vec1()?))
}

/// Element-wise work is split into chunks of this many values across the thread pool.
const PAR_CHUNK: usize = 1 << 14;

/// `x += y`, in parallel chunks.
pub(super) fn add_in_place(x: &mut [f32], y: &[f32]) {
    x.par_chunks_mut(PAR_CHUNK)
        .zip(y.par_chunks(PAR_CHUNK))
        .for_each(|(x, y)| x.iter_mut().zip(y).for_each(|(x, y)| *x += y));
}

/// The state an op keeps between its forward and backward passes, locked; `op` names it in the
/// error if a panicking thread poisoned the lock.
pub(super) fn lock<'a, T>(
    state: &'a std::sync::Mutex<T>,
    op: &str,
) -> candle_core::Result<std::sync::MutexGuard<'a, T>> {
    state.lock().map_err(|_| candle_core::Error::Msg(format!("{op}: poisoned lock")))
}

pub(super) fn cpu(values: Vec<f32>, shape: &Shape) -> candle_core::Result<Tensor> {
    Tensor::from_vec(values, shape, &Device::Cpu)
}

/// RMSNorm of each row with a frozen weight.
struct RmsNorm {
    weight: Vec<f32>,
    eps: f32,
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(storage, layout, self.name())?;
        Ok((CpuStorage::F32(rms_norm_forward(x, &self.weight, self.eps)), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let mut dx = vec![0f32; arg.elem_count()];
        rms_norm_backward(&host(arg)?, &host(grad_res)?, &self.weight, self.eps, &mut dx);
        Ok(Some(cpu(dx, arg.shape())?))
    }
}

/// RMSNorm of each `weight.len()`-wide row of `x`, rows in parallel.
pub(super) fn rms_norm_forward(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let rows = (PAR_CHUNK / weight.len()).max(1) * weight.len();
    x.par_chunks(rows).flat_map_iter(|x| rms_norm_rows(x, weight, eps)).collect()
}

/// Adds RMSNorm's input gradient to `dx`. With `s = 1/√(mean(x²) + ε)` and `y = s·x∘w`:
/// `∂x = s·(g∘w) − x·s³·⟨g∘w, x⟩ / width`.
pub(super) fn rms_norm_backward(x: &[f32], g: &[f32], weight: &[f32], eps: f32, dx: &mut [f32]) {
    let width = weight.len();
    dx.par_chunks_mut(width).zip(x.par_chunks(width).zip(g.par_chunks(width))).for_each(|(dx, (x, g))| {
        let s = 1.0 / (dot(x, x) / width as f32 + eps).sqrt();
        let gw_x: f32 = g.iter().zip(weight).zip(x).map(|((g, w), x)| g * w * x).sum();
        let c = s * s * s * gw_x / width as f32;
        for (((dx, g), w), x) in dx.iter_mut().zip(g).zip(weight).zip(x) {
            *dx += s * g * w - c * x;
        }
    });
}

/// RMSNorm of each row of `x` `(N, H)` by `weight` `(H,)`.
pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return reference::rms_norm(x, weight, eps);
    }
    Ok(x.contiguous()?.apply_op1(RmsNorm { weight: weight.to_vec1()?, eps })?)
}

/// `σ(x)` of each value, written to `out`.
fn sigmoid(x: &[f32], out: &mut [f32]) {
    out.iter_mut().zip(x).for_each(|(o, x)| *o = -x);
    exp_in_place(out);
    out.iter_mut().for_each(|o| *o = 1.0 / (1.0 + *o));
}

/// `silu(gate) · up`, element by element.
struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (gate, up) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?);
        Ok((CpuStorage::F32(swiglu_forward(gate, up)), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (d_gate, d_up) = swiglu_backward(&host(gate)?, &host(up)?, &host(grad_res)?);
        Ok((Some(cpu(d_gate, gate.shape())?), Some(cpu(d_up, up.shape())?)))
    }
}

/// `silu(gate) · up`, element by element, in parallel chunks.
pub(super) fn swiglu_forward(gate: &[f32], up: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; gate.len()];
    out.par_chunks_mut(PAR_CHUNK).zip(gate.par_chunks(PAR_CHUNK).zip(up.par_chunks(PAR_CHUNK))).for_each(
        |(out, (gate, up))| {
            sigmoid(gate, out);
            for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
                *o *= g * u;
            }
        },
    );
    out
}

/// The gradients of `gate` and `up` for output gradient `g`:
/// `∂gate = g·u·σ(gate)·(1 + gate·(1 − σ(gate)))`, `∂up = g·silu(gate)`.
pub(super) fn swiglu_backward(gate: &[f32], up: &[f32], g: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (mut d_gate, mut d_up) = (vec![0f32; gate.len()], vec![0f32; gate.len()]);
    let inputs = gate.par_chunks(PAR_CHUNK).zip(up.par_chunks(PAR_CHUNK)).zip(g.par_chunks(PAR_CHUNK));
    d_gate.par_chunks_mut(PAR_CHUNK).zip(d_up.par_chunks_mut(PAR_CHUNK)).zip(inputs).for_each(
        |((d_gate, d_up), ((x, u), g))| {
            sigmoid(x, d_up);
            for ((((dg, du), x), u), g) in d_gate.iter_mut().zip(d_up.iter_mut()).zip(x).zip(u).zip(g) {
                let s = *du;
                *dg = g * u * s * (1.0 + x * (1.0 - s));
                *du = g * x * s;
            }
        },
    );
    (d_gate, d_up)
}

/// `silu(gate) · up` for two tensors of one shape.
pub(crate) fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if !gate.device().is_cpu() {
        return Ok((gate.silu()? * up)?);
    }
    Ok(gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)?)
}

/// A frozen projection weight `W` `(out, in)`, with its transpose kept alongside on the CPU:
/// the forward `x·Wᵀ` then reads `Wᵀ` and the backward `g·W` reads `W`, both in the order
/// gemm's kernels consume without repacking the weight on every call (packing was a tenth of the
/// step). The cost is a second f32 copy of the projections (about 430 MB for SmolLM2-135M).
#[derive(Clone)]
pub(crate) struct FrozenWeight {
    pub(crate) w: Tensor,
    wt: Option<Tensor>,
}

impl FrozenWeight {
    pub(crate) fn new(w: Tensor) -> Result<Self> {
        let wt = if w.device().is_cpu() { Some(w.t()?.contiguous()?) } else { None };
        Ok(Self { w, wt })
    }

    pub(crate) fn elem_count(&self) -> usize {
        self.w.elem_count() + self.wt.as_ref().map_or(0, Tensor::elem_count)
    }

    fn out_features(&self) -> candle_core::Result<usize> {
        self.w.dim(0)
    }

    /// `x·Wᵀ` for rows of `x`.
    pub(super) fn forward_rows(&self, x: &[f32]) -> candle_core::Result<Vec<f32>> {
        let (out_f, in_f) = self.w.dims2()?;
        let n = x.len() / in_f;
        let mut y = vec![0f32; n * out_f];
        match &self.wt {
            Some(wt) => matmul(Dense::new(x, n, in_f), Dense::new(&host(wt)?, in_f, out_f), &mut y, false),
            None => matmul(Dense::new(x, n, in_f), Dense::new(&host(&self.w)?, out_f, in_f).t(), &mut y, false),
        }
        Ok(y)
    }

    /// `g·W`: the input gradient of `x·Wᵀ`.
    fn grad_rows(&self, g: &[f32]) -> candle_core::Result<Vec<f32>> {
        let (out_f, in_f) = self.w.dims2()?;
        let mut dx = vec![0f32; g.len() / out_f * in_f];
        self.grad_rows_into(g, &mut dx, false)?;
        Ok(dx)
    }

    /// `dx (+)= g·W`.
    pub(super) fn grad_rows_into(&self, g: &[f32], dx: &mut [f32], accumulate: bool) -> candle_core::Result<()> {
        let (out_f, in_f) = self.w.dims2()?;
        matmul(Dense::new(g, g.len() / out_f, out_f), Dense::new(&host(&self.w)?, out_f, in_f), dx, accumulate);
        Ok(())
    }
}

/// `x · Wᵀ` with `W` frozen: the backward pass returns only `∂L/∂x = g · W` (candle's matmul
/// backward would also compute the discarded gradient of every frozen weight).
struct Frozen {
    weight: FrozenWeight,
}

impl CustomOp1 for Frozen {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(storage, layout, self.name())?;
        let (rows, out_f) = (layout.shape().dims2()?.0, self.weight.out_features()?);
        Ok((CpuStorage::F32(self.weight.forward_rows(x)?), Shape::from((rows, out_f))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dx = self.weight.grad_rows(&host(grad_res)?)?;
        Ok(Some(cpu(dx, arg.shape())?))
    }
}

/// `x · Wᵀ` for a frozen `W` `(out, in)` (rows of `x` are inputs).
pub(crate) fn frozen(x: &Tensor, weight: &FrozenWeight) -> Result<Tensor> {
    if !x.device().is_cpu() {
        // Other devices: the plain matmul (its weight gradient is computed and dropped).
        return Ok(x.matmul(&weight.w.t()?)?);
    }
    Ok(x.contiguous()?.apply_op1(Frozen { weight: weight.clone() })?)
}

/// A LoRA projection as one op: `y = x·Wᵀ + scale·((x∘mask)·Aᵀ)·Bᵀ` with `W` frozen and `A`
/// `(rank, in)`, `B` `(out, rank)` trainable; `mask` is the dropout mask (`0` or `1/keep` per
/// element of `x`). One node in the autograd graph instead of six, and no tensor copies.
struct LoraLinear {
    weight: FrozenWeight,
    scale: f32,
    mask: Option<Vec<f32>>,
}

/// The trainable part of a LoRA projection on slices: `scale·((x∘mask)·Aᵀ)·Bᵀ`, with `A`
/// `(rank, in)` and `B` `(out, rank)` row-major.
pub(super) struct LowRank<'a> {
    pub(super) a: &'a [f32],
    pub(super) b: &'a [f32],
    pub(super) rank: usize,
    pub(super) scale: f32,
    pub(super) mask: Option<&'a [f32]>,
}

impl LowRank<'_> {
    fn in_features(&self) -> usize {
        self.a.len() / self.rank
    }

    fn out_features(&self) -> usize {
        self.b.len() / self.rank
    }

    /// `x∘mask`.
    fn dropped<'x>(&self, x: &'x [f32]) -> std::borrow::Cow<'x, [f32]> {
        match self.mask {
            Some(mask) => {
                let mut out = vec![0f32; x.len()];
                out.par_chunks_mut(PAR_CHUNK).zip(x.par_chunks(PAR_CHUNK).zip(mask.par_chunks(PAR_CHUNK))).for_each(
                    |(out, (x, mask))| out.iter_mut().zip(x.iter().zip(mask)).for_each(|(o, (x, m))| *o = x * m),
                );
                out.into()
            }
            None => x.into(),
        }
    }

    /// `scale·(x_dropped·Aᵀ)`, `(n, rank)`.
    fn low_rank(&self, dropped: &[f32]) -> Vec<f32> {
        let (rank, in_f) = (self.rank, self.in_features());
        let n = dropped.len() / in_f;
        let mut u = vec![0f32; n * rank];
        matmul(Dense::new(dropped, n, in_f), Dense::new(self.a, rank, in_f).t(), &mut u, false);
        u.iter_mut().for_each(|u| *u *= self.scale);
        u
    }

    /// `y += scale·((x∘mask)·Aᵀ)·Bᵀ`.
    pub(super) fn add_forward(&self, x: &[f32], y: &mut [f32]) {
        let u = self.low_rank(&self.dropped(x));
        let (rank, out_f) = (self.rank, self.out_features());
        matmul(Dense::new(&u, u.len() / rank, rank), Dense::new(self.b, out_f, rank).t(), y, true);
    }

    /// For output gradient `g`, with `u = scale·(x∘mask)·Aᵀ` and `gb = scale·g·B`: adds
    /// `(gb·A)∘mask` to `dx` (when given) and writes `∂A = gbᵀ·(x∘mask)`, `∂B = gᵀ·u`.
    pub(super) fn backward(&self, x: &[f32], g: &[f32], dx: Option<&mut [f32]>, da: &mut [f32], db: &mut [f32]) {
        let (rank, in_f, out_f) = (self.rank, self.in_features(), self.out_features());
        let rows = x.len() / in_f;
        let mut gb = vec![0f32; rows * rank];
        matmul(Dense::new(g, rows, out_f), Dense::new(self.b, out_f, rank), &mut gb, false);
        gb.iter_mut().for_each(|v| *v *= self.scale);
        match (dx, self.mask) {
            (None, _) => {}
            (Some(dx), None) => matmul(Dense::new(&gb, rows, rank), Dense::new(self.a, rank, in_f), dx, true),
            (Some(dx), Some(mask)) => {
                let mut through = vec![0f32; rows * in_f];
                matmul(Dense::new(&gb, rows, rank), Dense::new(self.a, rank, in_f), &mut through, false);
                dx.par_chunks_mut(PAR_CHUNK)
                    .zip(through.par_chunks(PAR_CHUNK).zip(mask.par_chunks(PAR_CHUNK)))
                    .for_each(|(dx, (t, m))| dx.iter_mut().zip(t.iter().zip(m)).for_each(|(d, (t, m))| *d += t * m));
            }
        }
        let dropped = self.dropped(x);
        matmul(Dense::new(&gb, rows, rank).t(), Dense::new(&dropped, rows, in_f), da, false);
        let u = self.low_rank(&dropped);
        matmul(Dense::new(g, rows, out_f).t(), Dense::new(&u, rows, rank), db, false);
    }
}

impl LoraLinear {
    fn low_rank<'a>(&'a self, a: &'a [f32], b: &'a [f32], rank: usize) -> LowRank<'a> {
        LowRank { a, b, rank, scale: self.scale, mask: self.mask.as_deref() }
    }
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
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
        let (x, a, b) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?, slice(s3, l3, self.name())?);
        let (rows, (out_f, rank)) = (l1.shape().dims2()?.0, l3.shape().dims2()?);
        let mut y = self.weight.forward_rows(x)?;
        self.low_rank(a, b, rank).add_forward(x, &mut y);
        Ok((CpuStorage::F32(y), Shape::from((rows, out_f))))
    }

    /// `∂x = g·W + (scale·g·B·A)∘mask` (when `x` carries a gradient), and `∂A`, `∂B` as in
    /// [`LowRank::backward`].
    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let rank = b.dim(1)?;
        let (xv, av, bv, g) = (host(x)?, host(a)?, host(b)?, host(grad_res)?);
        // The first layer's input is the (frozen) embedding: no gradient to compute there.
        let mut dx = if x.track_op() { Some(self.weight.grad_rows(&g)?) } else { None };
        let (mut da, mut db) = (vec![0f32; a.elem_count()], vec![0f32; b.elem_count()]);
        self.low_rank(&av, &bv, rank).backward(&xv, &g, dx.as_deref_mut(), &mut da, &mut db);
        let dx = dx.map(|dx| cpu(dx, x.shape())).transpose()?;
        Ok((dx, Some(cpu(da, a.shape())?), Some(cpu(db, b.shape())?)))
    }
}

/// `x·Wᵀ + scale·((x∘mask)·Aᵀ)·Bᵀ` (see [`LoraLinear`]); `mask` has one value per element of `x`.
pub(crate) fn lora_linear(
    x: &Tensor,
    weight: &FrozenWeight,
    (a, b): (&Tensor, &Tensor),
    scale: f32,
    mask: Option<Vec<f32>>,
) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return reference::lora_linear(x, &weight.w, (a, b), scale, mask);
    }
    let op = LoraLinear { weight: weight.clone(), scale, mask };
    Ok(x.contiguous()?.apply_op3(&a.contiguous()?, &b.contiguous()?, op)?)
}

/// The same layers composed from candle tensor ops: the path on devices other than the CPU,
/// and the reference the fused ops are tested against.
pub(crate) mod reference {
    use candle_core::{D, Tensor};

    use crate::error::Result;
    use crate::train::attention::AttentionShape;

    /// `x·Wᵀ + scale·((x∘mask)·Aᵀ)·Bᵀ` from tensor ops.
    pub(crate) fn lora_linear(
        x: &Tensor,
        weight: &Tensor,
        (a, b): (&Tensor, &Tensor),
        scale: f32,
        mask: Option<Vec<f32>>,
    ) -> Result<Tensor> {
        let dropped = match mask {
            Some(mask) => (x * Tensor::from_vec(mask, x.shape(), x.device())?)?,
            None => x.clone(),
        };
        let delta = (dropped.matmul(&a.t()?)?.matmul(&b.t()?)? * f64::from(scale))?;
        Ok((x.matmul(&weight.t()?)? + delta)?)
    }

    /// The negative log-likelihood of `targets` `(rows, 1)` under `hidden·Wᵀ`, via log-softmax.
    pub(crate) fn lm_head_loss(hidden: &Tensor, weight: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let log_probs = candle_nn::ops::log_softmax(&hidden.matmul(&weight.t()?)?, D::Minus1)?;
        Ok(log_probs.gather(targets, 1)?.squeeze(1)?.neg()?)
    }

    pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm_slow(x, weight, eps)?)
    }

    pub(crate) fn attention(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        shape: AttentionShape,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<Tensor> {
        let AttentionShape { batch: b, seq: t, heads, kv_heads, head_dim: d } = shape;
        let split = |x: &Tensor, heads: usize| -> Result<Tensor> {
            Ok(x.reshape((b, t, heads, d))?.transpose(1, 2)?.contiguous()?)
        };
        let q = candle_nn::rotary_emb::rope_slow(&split(q, heads)?, cos, sin)?;
        let k = candle_nn::rotary_emb::rope_slow(&split(k, kv_heads)?, cos, sin)?;
        let v = split(v, kv_heads)?;
        let group = heads / kv_heads;
        let repeat = |x: Tensor| -> Result<Tensor> {
            if group == 1 {
                return Ok(x);
            }
            Ok(x.unsqueeze(2)?.expand((b, kv_heads, group, t, d))?.reshape((b, heads, t, d))?)
        };
        let (k, v) = (repeat(k)?, repeat(v)?);
        let mask: Vec<f32> = (0..t * t).map(|i| if i % t > i / t { f32::NEG_INFINITY } else { 0.0 }).collect();
        let mask = Tensor::from_vec(mask, (t, t), q.device())?;
        let scores = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?.broadcast_add(&mask)?;
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
        Ok(probs.matmul(&v)?.transpose(1, 2)?.reshape((b * t, heads * d))?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use candle_core::Var;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;
    use crate::train::attention::{AttentionShape, attention};
    use crate::train::lm_head::{VOCAB_CHUNK, lm_head_loss};

    fn random(rng: &mut StdRng, shape: (usize, usize)) -> Var {
        let values: Vec<f32> = (0..shape.0 * shape.1).map(|_| rng.random_range(-1.5..1.5)).collect();
        Var::from_tensor(&Tensor::from_vec(values, shape, &Device::Cpu).unwrap()).unwrap()
    }

    fn worst(a: &Tensor, b: &Tensor) -> f32 {
        let (a, b) = (host(a).unwrap(), host(b).unwrap());
        assert_eq!(a.len(), b.len());
        a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
    }

    /// Value and input gradients of a fused op and its reference agree, for a random weighting
    /// of the outputs as the loss.
    fn assert_matches(inputs: &[&Var], fused: &Tensor, reference: &Tensor, rng: &mut StdRng) {
        assert!(worst(fused, reference) < 1e-5, "values differ by {}", worst(fused, reference));
        let weights = random(rng, fused.dims2().unwrap());
        let g1 = (fused * weights.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (reference * weights.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        for (i, var) in inputs.iter().enumerate() {
            let (a, b) = (g1.get(var.as_tensor()).unwrap(), g2.get(var.as_tensor()).unwrap());
            assert!(worst(a, b) < 1e-4, "input {i}: gradients differ by {}", worst(a, b));
        }
    }

    #[test]
    fn fused_rms_norm_and_swiglu_match_their_references() {
        let mut rng = StdRng::seed_from_u64(3);
        let x = random(&mut rng, (7, 24));
        let weight = random(&mut rng, (1, 24)).as_tensor().squeeze(0).unwrap();
        let fused = rms_norm(x.as_tensor(), &weight, 1e-5).unwrap();
        let plain = reference::rms_norm(x.as_tensor(), &weight, 1e-5).unwrap();
        assert_matches(&[&x], &fused, &plain, &mut rng);
        let (gate, up) = (random(&mut rng, (5, 33)), random(&mut rng, (5, 33)));
        let fused = swiglu(gate.as_tensor(), up.as_tensor()).unwrap();
        let plain = (gate.as_tensor().silu().unwrap() * up.as_tensor()).unwrap();
        assert_matches(&[&gate, &up], &fused, &plain, &mut rng);
    }

    /// The fused LoRA projection, with and without a dropout mask, against tensor ops, in value
    /// and in the gradients of the input, A and B; and the frozen projection against a matmul.
    #[test]
    fn fused_projections_match_their_references() {
        let mut rng = StdRng::seed_from_u64(5);
        let (rows, in_f, out_f, rank) = (11, 24, 20, 4);
        let x = random(&mut rng, (rows, in_f));
        let weight = random(&mut rng, (out_f, in_f)).as_tensor().clone();
        let frozen_weight = FrozenWeight::new(weight.clone()).unwrap();
        let (a, b) = (random(&mut rng, (rank, in_f)), random(&mut rng, (out_f, rank)));
        let mask: Vec<f32> = (0..rows * in_f).map(|i| if i % 3 == 0 { 0.0 } else { 1.5 }).collect();
        for mask in [None, Some(mask)] {
            let factors = (a.as_tensor(), b.as_tensor());
            let fused = lora_linear(x.as_tensor(), &frozen_weight, factors, 0.5, mask.clone()).unwrap();
            let plain = reference::lora_linear(x.as_tensor(), &weight, factors, 0.5, mask).unwrap();
            assert_matches(&[&x, &a, &b], &fused, &plain, &mut rng);
        }
        let fused = frozen(x.as_tensor(), &frozen_weight).unwrap();
        let plain = x.as_tensor().matmul(&weight.t().unwrap()).unwrap();
        assert_matches(&[&x], &fused, &plain, &mut rng);
    }

    /// The fused chunked loss equals log-softmax + gather, in value and in gradient, across
    /// several chunks.
    #[test]
    fn fused_loss_matches_log_softmax() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut random = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-2.0..2.0)).collect() };
        // More rows than the chunking and a vocabulary of several chunks.
        let (rows, hidden, vocab) = (150, 8, 2 * VOCAB_CHUNK + 37);
        let h =
            Var::from_tensor(&Tensor::from_vec(random(rows * hidden), (rows, hidden), &Device::Cpu).unwrap()).unwrap();
        let w = Tensor::from_vec(random(vocab * hidden), (vocab, hidden), &Device::Cpu).unwrap();
        let targets: Vec<u32> = (0..rows as u32).map(|r| r * 7 % vocab as u32).collect();
        let targets = Tensor::from_vec(targets, (rows, 1), &Device::Cpu).unwrap();
        let weights = Tensor::from_vec(random(rows), rows, &Device::Cpu).unwrap();
        let fused = lm_head_loss(h.as_tensor(), &w, &targets, true).unwrap();
        let plain = reference::lm_head_loss(h.as_tensor(), &w, &targets).unwrap();
        let close = |a: &Tensor, b: &Tensor| {
            let (a, b): (Vec<f32>, Vec<f32>) =
                (a.flatten_all().unwrap().to_vec1().unwrap(), b.flatten_all().unwrap().to_vec1().unwrap());
            a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
        };
        assert!(close(&fused, &plain) < 1e-4);
        let g1 = (fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (plain * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(close(g1.get(h.as_tensor()).unwrap(), g2.get(h.as_tensor()).unwrap()) < 1e-4);
    }

    /// Grouped-query attention (3 query heads per kv head) over two sequences, with RoPE
    /// angles that differ per position, against candle's ops.
    #[test]
    fn fused_attention_matches_its_reference() {
        let mut rng = StdRng::seed_from_u64(4);
        let shape = AttentionShape { batch: 2, seq: 9, heads: 6, kv_heads: 2, head_dim: 8 };
        let n = shape.batch * shape.seq;
        let q = random(&mut rng, (n, shape.heads * shape.head_dim));
        let k = random(&mut rng, (n, shape.kv_heads * shape.head_dim));
        let v = random(&mut rng, (n, shape.kv_heads * shape.head_dim));
        let half = shape.head_dim / 2;
        let angles: Vec<f32> = (0..12 * half).map(|i| (i / half) as f32 * 0.3 / (1 + i % half) as f32).collect();
        let cos = Tensor::from_vec(angles.iter().map(|a| a.cos()).collect(), (12, half), &Device::Cpu).unwrap();
        let sin = Tensor::from_vec(angles.iter().map(|a| a.sin()).collect(), (12, half), &Device::Cpu).unwrap();
        let (qt, kt, vt) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
        let fused = attention(qt, kt, vt, shape, &cos, &sin).unwrap();
        let (cos, sin) = (cos.narrow(0, 0, shape.seq).unwrap(), sin.narrow(0, 0, shape.seq).unwrap());
        let plain = reference::attention(qt, kt, vt, shape, &cos, &sin).unwrap();
        assert_matches(&[&q, &k, &v], &fused, &plain, &mut rng);
    }
}
