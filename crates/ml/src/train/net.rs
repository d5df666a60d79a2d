//! The differentiable forward pass for LoRA training: the base weights as frozen f32 matrices
//! (dequantized from GGUF, Hugging Face row order), LoRA A/B as candle `Var`s, and the loss of
//! each labelled token. On the CPU each layer is one autograd node (`layer.rs`; the per-op graph of
//! `fused.rs` when per-example gradients probe the projections) and the loss a fused op.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng, rngs::StdRng};
use rayon::prelude::*;

use super::attention::{AttentionShape, attention};
use super::fused::{FrozenWeight, frozen, lora_linear, rms_norm, swiglu};
use super::layer::{LayerCall, LayerWeights, LoraSlot, decoder_layer};
use super::lm_head::lm_head_loss;
use crate::config::ModelConfig;
use crate::error::{MlError, Result};
use crate::lora::Target;
use crate::model::{DenseWeights, LlamaModel};

/// The frozen base model as f32 tensors.
pub(crate) struct TrainBase {
    pub(crate) config: ModelConfig,
    weights: DenseWeights,
    /// Per layer, the projections in `Target::ALL` order (see `FrozenWeight`).
    projections: Vec<Vec<FrozenWeight>>,
    cos: Tensor,
    sin: Tensor,
    device: Device,
}

impl TrainBase {
    /// The model's shared copy: the one a live holder (a gradient probe) has, or a new one.
    /// Building one takes the model's lock, so probes made at once wait and then share it.
    pub(crate) fn shared(model: &LlamaModel) -> Result<std::sync::Arc<Self>> {
        let mut slot = model.frozen_base().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(base) = slot.upgrade() {
            return Ok(base);
        }
        let base = std::sync::Arc::new(Self::new(model)?);
        *slot = std::sync::Arc::downgrade(&base);
        Ok(base)
    }

    pub(crate) fn new(model: &LlamaModel) -> Result<Self> {
        let (cos, sin) = model.rope_tables();
        let weights = model.dense_weights()?;
        let projections = weights
            .layers
            .iter()
            .map(|layer| layer.projections.iter().map(|w| FrozenWeight::new(w.clone())).collect())
            .collect::<Result<_>>()?;
        Ok(Self {
            weights,
            projections,
            cos: cos.clone(),
            sin: sin.clone(),
            config: model.config().clone(),
            device: model.device().clone(),
        })
    }

    pub(crate) fn device(&self) -> &Device {
        &self.device
    }

    /// Bytes of the f32 weights held for training.
    pub(crate) fn weight_bytes(&self) -> usize {
        let w = &self.weights;
        let mut n = w.embed.elem_count() + w.norm.elem_count();
        if !w.tied {
            n += w.output.elem_count();
        }
        for layer in &w.layers {
            n += layer.attn_norm.elem_count() + layer.ffn_norm.elem_count();
        }
        n += self.projections.iter().flatten().map(FrozenWeight::elem_count).sum::<usize>();
        n * 4
    }
}

/// Trainable LoRA matrices: `A` (rank × in) and `B` (out × rank) per (layer, target).
pub(crate) struct LoraVars {
    pub(crate) rank: usize,
    pub(crate) scale: f64,
    pub(crate) pairs: BTreeMap<(usize, Target), (Var, Var)>,
}

impl LoraVars {
    /// PEFT's initialisation: `A` uniform in ±1/√in (Kaiming with a = √5), `B` zero.
    pub(crate) fn init(base: &TrainBase, rank: usize, scale: f64, targets: &[Target], seed: u64) -> Result<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut pairs = BTreeMap::new();
        for layer in 0..base.config.num_layers {
            for &target in targets {
                let (in_f, out_f) = base.config.projection_shape(target);
                let bound = 1.0 / (in_f as f32).sqrt();
                let a: Vec<f32> = (0..rank * in_f).map(|_| rng.random_range(-bound..bound)).collect();
                let a = Var::from_tensor(&Tensor::from_vec(a, (rank, in_f), base.device())?)?;
                let b = Var::zeros((out_f, rank), DType::F32, base.device())?;
                pairs.insert((layer, target), (a, b));
            }
        }
        Ok(Self { rank, scale, pairs })
    }

    /// Every variable in a fixed order (layer, target, A then B): the optimizer's order.
    pub(crate) fn vars(&self) -> Vec<&Var> {
        self.pairs.values().flat_map(|(a, b)| [a, b]).collect()
    }
}

/// How a forward pass treats LoRA: dropout on its inputs (training), and whether to record
/// each LoRA input and add a zero "probe" variable to each LoRA output, whose gradient is
/// `∂L/∂(LoRA output)` for per-example gradients; and whether a backward pass will follow
/// (the loss then keeps its gradient, see `LmHeadLoss`).
pub(crate) struct Mode {
    pub(crate) dropout: Option<(f32, u64)>,
    pub(crate) probes: bool,
    pub(crate) backward: bool,
    /// With probes: the first layer probed. The layers before it run forward only (one node
    /// each on the CPU, nothing kept), and the backward pass stops at its input.
    pub(crate) first_probed: usize,
}

impl Mode {
    /// Scoring only: no dropout, no probes, no backward pass.
    pub(crate) fn eval() -> Self {
        Self { dropout: None, probes: false, backward: false, first_probed: 0 }
    }

    /// A training step: dropout `(p, seed)` if any, then a backward pass.
    pub(crate) fn train(dropout: Option<(f32, u64)>) -> Self {
        Self { dropout, probes: false, backward: true, first_probed: 0 }
    }

    /// Per-example gradients of layers `first_probed..`: probes, then a backward pass.
    pub(crate) fn probed(first_probed: usize) -> Self {
        Self { dropout: None, probes: true, backward: true, first_probed }
    }

    /// The dropout mask of the input (`n` values) of one LoRA projection, if dropout is on: its
    /// seed mixes the step's seed with the layer and target.
    fn dropout_mask(&self, layer: usize, target: Target, n: usize) -> Option<Vec<f32>> {
        match self.dropout {
            Some((p, seed)) if p > 0.0 => {
                Some(dropout_mask(n, p, super::mix(seed, layer as u64, target.index() as u64)))
            }
            _ => None,
        }
    }
}

/// Element-wise inverted dropout: `0` with probability `p`, else `1/(1 − p)`. Generated in
/// chunks on the thread pool, each from its own seed derived from `seed`, so the mask depends on
/// the seed alone, not on the number of threads.
fn dropout_mask(n: usize, p: f32, seed: u64) -> Vec<f32> {
    const CHUNK: usize = 1 << 14;
    let keep = 1.0 - p;
    let mut mask = vec![0f32; n];
    mask.par_chunks_mut(CHUNK).enumerate().for_each(|(i, chunk)| {
        let mut rng = StdRng::seed_from_u64(super::mix(seed, i as u64, u64::MAX));
        chunk.iter_mut().for_each(|m| *m = if rng.random::<f32>() < keep { 1.0 / keep } else { 0.0 });
    });
    mask
}

/// What a probed forward recorded for one (layer, target): the LoRA input after dropout
/// `(N, in)`, `u = x·Aᵀ` `(N, rank)`, and the zero variable added to the output `(N, out)`.
pub(crate) struct Probe {
    pub(crate) x: Tensor,
    pub(crate) u: Tensor,
    pub(crate) output: Var,
}

/// The probes of a forward pass, per (layer, target).
pub(crate) type Probes = BTreeMap<(usize, Target), Probe>;

/// A padded batch: `tokens` `(B, T)`, and the flattened positions `rows` whose next token
/// `targets` is scored (prompt and padding positions are left out).
pub(crate) struct Batch {
    pub(crate) tokens: Tensor,
    pub(crate) rows: Tensor,
    pub(crate) targets: Tensor,
    /// The example (0..B) each scored row belongs to.
    pub(crate) row_example: Vec<usize>,
}

impl Batch {
    /// `examples`: each one's tokens and the index of its first scored token.
    pub(crate) fn new(examples: &[(&[u32], usize)], device: &Device) -> Result<Self> {
        let width = examples.iter().map(|(t, _)| t.len()).max().unwrap_or(0);
        if width < 2 {
            return Err(MlError::InvalidRequest("a batch needs examples of at least two tokens".into()));
        }
        let mut tokens = Vec::with_capacity(examples.len() * width);
        let (mut rows, mut targets, mut row_example) = (Vec::new(), Vec::new(), Vec::new());
        for (e, &(ids, first_scored)) in examples.iter().enumerate() {
            tokens.extend_from_slice(ids);
            tokens.extend(std::iter::repeat_n(0u32, width - ids.len()));
            for (position, &target) in ids.iter().enumerate().skip(first_scored.max(1)) {
                rows.push((e * width + position - 1) as u32);
                targets.push(target);
                row_example.push(e);
            }
        }
        let n = rows.len();
        Ok(Self {
            tokens: Tensor::from_vec(tokens, (examples.len(), width), device)?,
            rows: Tensor::from_vec(rows, n, device)?,
            targets: Tensor::from_vec(targets, (n, 1), device)?,
            row_example,
        })
    }
}

impl TrainBase {
    /// The negative log-likelihood of every scored row `(R,)`, with the probes if asked.
    pub(crate) fn forward(&self, lora: Option<&LoraVars>, batch: &Batch, mode: &Mode) -> Result<(Tensor, Probes)> {
        // On the CPU a layer is one autograd node (see `layer.rs`); probes need the per-op graph.
        self.forward_with(lora, batch, mode, self.device.is_cpu() && !mode.probes)
    }

    /// [`Self::forward`], with each layer as one node (`layer_nodes`, CPU only) or as a graph of
    /// one node per op.
    fn forward_with(
        &self,
        lora: Option<&LoraVars>,
        batch: &Batch,
        mode: &Mode,
        layer_nodes: bool,
    ) -> Result<(Tensor, Probes)> {
        let c = &self.config;
        let (b, t) = batch.tokens.dims2()?;
        let eps = c.rms_norm_eps as f32;
        let mut probes = BTreeMap::new();
        let scale = lora.map_or(1.0, |l| l.scale);
        let mut project = |layer: usize, target: Target, x: &Tensor, weight: &FrozenWeight| -> Result<Tensor> {
            let Some((a, b_var)) = lora.and_then(|l| l.pairs.get(&(layer, target))) else {
                return frozen(x, weight);
            };
            let mask = mode.dropout_mask(layer, target, x.elem_count());
            if !mode.probes {
                return lora_linear(x, weight, (a.as_tensor(), b_var.as_tensor()), scale as f32, mask);
            }
            let dropped = match mask {
                Some(mask) => (x * Tensor::from_vec(mask, x.shape(), x.device())?)?,
                None => x.clone(),
            };
            let u = dropped.matmul(&a.as_tensor().t()?)?;
            let delta = (u.matmul(&b_var.as_tensor().t()?)? * scale)?;
            let output = Var::zeros(delta.shape(), DType::F32, delta.device())?;
            let probed = (delta + output.as_tensor())?;
            probes.insert((layer, target), Probe { x: dropped.detach(), u: u.detach(), output });
            Ok((frozen(x, weight)? + probed)?)
        };
        let w = &self.weights;
        let mut x = w.embed.index_select(&batch.tokens.flatten_all()?, 0)?; // (N, H)
        let shape =
            AttentionShape { batch: b, seq: t, heads: c.num_heads, kv_heads: c.num_kv_heads, head_dim: c.head_dim };
        let call = |backward| LayerCall { shape, cos: &self.cos, sin: &self.sin, eps, scale: scale as f32, backward };
        let (layer_call, forward_only) = (layer_nodes.then(|| call(mode.backward)), call(false));
        // The layers before the first probed one, when probing starts later: forward only.
        let skipped = if mode.probes { mode.first_probed.min(w.layers.len()) } else { 0 };
        if skipped > 0 && !self.device.is_cpu() {
            return Err(MlError::InvalidRequest("probing from a later layer runs on the CPU only".into()));
        }
        for (layer, (weights, p)) in w.layers.iter().zip(&self.projections).enumerate() {
            let layer_weights =
                LayerWeights { attn_norm: &weights.attn_norm, ffn_norm: &weights.ffn_norm, projections: p };
            if layer < skipped {
                let (flat, slots) = self.layer_lora(lora, layer, b * t, mode)?;
                x = decoder_layer(&x, &layer_weights, (flat.detach(), slots), &forward_only)?;
                if layer + 1 == skipped {
                    x = x.detach();
                }
                continue;
            }
            if let Some(call) = &layer_call {
                x = decoder_layer(&x, &layer_weights, self.layer_lora(lora, layer, b * t, mode)?, call)?;
                continue;
            }
            let h = rms_norm(&x, &weights.attn_norm, eps)?;
            let q = project(layer, Target::Q, &h, &p[0])?;
            let k = project(layer, Target::K, &h, &p[1])?;
            let v = project(layer, Target::V, &h, &p[2])?;
            let attn = attention(&q, &k, &v, shape, &self.cos, &self.sin)?;
            x = (x + project(layer, Target::O, &attn, &p[3])?)?;
            let h = rms_norm(&x, &weights.ffn_norm, eps)?;
            let gate = project(layer, Target::Gate, &h, &p[4])?;
            let up = project(layer, Target::Up, &h, &p[5])?;
            x = (&x + project(layer, Target::Down, &swiglu(&gate, &up)?, &p[6])?)?;
        }
        let scored = x.index_select(&batch.rows, 0)?;
        let scored = rms_norm(&scored, &w.norm, eps)?;
        let nll = lm_head_loss(&scored, &w.output, &batch.targets, mode.backward)?;
        Ok((nll, probes))
    }

    /// One layer's LoRA factors as one flat tensor (`A` then `B` per adapted target, in
    /// `Target::ALL` order; differentiable back to each `Var`), with where each target's sit.
    fn layer_lora(
        &self,
        lora: Option<&LoraVars>,
        layer: usize,
        rows: usize,
        mode: &Mode,
    ) -> Result<(Tensor, Vec<Option<LoraSlot>>)> {
        let (mut parts, mut slots, mut offset) = (Vec::new(), Vec::new(), 0);
        for target in Target::ALL {
            let Some((a, b)) = lora.and_then(|l| l.pairs.get(&(layer, target))) else {
                slots.push(None);
                continue;
            };
            let ((rank, in_features), out_features) = (a.dims2()?, b.dim(0)?);
            let mask = mode.dropout_mask(layer, target, rows * in_features);
            slots.push(Some(LoraSlot { offset, rank, in_features, out_features, mask }));
            offset += rank * (in_features + out_features);
            parts.extend([a.as_tensor().flatten_all()?, b.as_tensor().flatten_all()?]);
        }
        let flat = if parts.is_empty() { Tensor::zeros(0, DType::F32, &self.device)? } else { Tensor::cat(&parts, 0)? };
        Ok((flat, slots))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use candle_core::quantized::GgmlDType;

    use super::*;
    use crate::adapters::load_adapter_dir;
    use crate::lora::AdapterMix;
    use crate::testing::{TinyModel, TinySpec, write_peft_adapter};

    fn tiny(dir: &std::path::Path, gguf: bool) -> LlamaModel {
        let tiny = TinyModel::new(TinySpec::default()).unwrap();
        if gguf {
            LlamaModel::from_gguf(&tiny.write_gguf(&dir.join("tiny.gguf"), GgmlDType::F32).unwrap(), &Device::Cpu)
                .unwrap()
        } else {
            LlamaModel::from_safetensors_dir(&tiny.write_safetensors(&dir.join("st")).unwrap(), &Device::Cpu).unwrap()
        }
    }

    fn batch(device: &Device) -> Batch {
        let a: Vec<u32> = (1..=12).map(|i| i * 17 % 250).collect();
        let b: Vec<u32> = (1..=7).map(|i| i * 31 % 250).collect();
        Batch::new(&[(&a, 4), (&b, 1)], device).unwrap()
    }

    /// The training forward (dense f32, HF layout, tensor ops) scores a sequence the way the
    /// serving engine does, with and without an adapter, on GGUF (q/k permuted, interleaved
    /// RoPE) and safetensors bases: an adapter trained here serves there.
    #[test]
    fn training_forward_matches_the_engine() {
        let dir = tempfile::tempdir().unwrap();
        for gguf in [true, false] {
            let model = tiny(dir.path(), gguf);
            let path = dir.path().join(format!("adapter-{gguf}"));
            write_peft_adapter(&path, model.config(), 4, &Target::ALL, 3, false).unwrap();
            let adapter = Arc::new(load_adapter_dir("a", &path, &model).unwrap());
            let base = TrainBase::new(&model).unwrap();
            let vars = super::super::vars_from_adapter(&base, &adapter).unwrap();
            let tokens: Vec<u32> = (1..=10).map(|i| i * 23 % 250).collect();
            let b = Batch::new(&[(&tokens, 1)], &Device::Cpu).unwrap();
            let mode = Mode::eval();
            for (lora, mix) in [(None, AdapterMix::default()), (Some(&vars), AdapterMix(vec![(adapter.clone(), 1.0)]))]
            {
                let trained: Vec<f32> = base.forward(lora, &b, &mode).unwrap().0.to_vec1().unwrap();
                let mut cache = model.new_cache(16).unwrap();
                let mut served = Vec::new();
                for (i, &t) in tokens[..tokens.len() - 1].iter().enumerate() {
                    let logits = model.logits_for(&[t], &mut cache, &mix).unwrap();
                    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let log_sum = logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln() + max;
                    served.push(log_sum - logits[tokens[i + 1] as usize]);
                }
                let worst = trained.iter().zip(&served).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(worst < 1e-3, "gguf {gguf}, adapter {}: {trained:?} vs {served:?}", lora.is_some());
            }
        }
    }

    /// A layer as one autograd node gives the loss and LoRA gradients of the graph of one node
    /// per op, with dropout, for LoRA on every target, on some, and without LoRA.
    #[test]
    fn layer_nodes_match_the_per_op_graph() {
        let dir = tempfile::tempdir().unwrap();
        let model = tiny(dir.path(), true);
        let base = TrainBase::new(&model).unwrap();
        let b = batch(&Device::Cpu);
        let mut rng = StdRng::seed_from_u64(21);
        for targets in [&Target::ALL[..], &[Target::Q, Target::V], &[Target::K, Target::Down]] {
            let vars = LoraVars::init(&base, 4, 2.0, targets, 8).unwrap();
            for (_, bv) in vars.pairs.values() {
                let values: Vec<f32> = (0..bv.elem_count()).map(|_| rng.random_range(-0.3..0.3)).collect();
                bv.set(&Tensor::from_vec(values, bv.shape(), &Device::Cpu).unwrap()).unwrap();
            }
            let weights: Vec<f32> = (0..b.row_example.len()).map(|_| rng.random_range(0.5..1.5)).collect();
            let weights = Tensor::from_vec(weights, b.row_example.len(), &Device::Cpu).unwrap();
            let mode = Mode::train(Some((0.2, 77)));
            let run = |layer_nodes: bool| {
                let nll = base.forward_with(Some(&vars), &b, &mode, layer_nodes).unwrap().0;
                let grads = (&nll * &weights).unwrap().sum_all().unwrap().backward().unwrap();
                let grads: Vec<Vec<f32>> = vars
                    .vars()
                    .iter()
                    .map(|v| grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap())
                    .collect();
                (nll.to_vec1::<f32>().unwrap(), grads)
            };
            let ((nll, grads), (nll_ops, grads_ops)) = (run(true), run(false));
            let worst = nll.iter().zip(&nll_ops).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-4, "{targets:?}: losses differ by {worst}");
            for (g, g_ops) in grads.iter().zip(&grads_ops) {
                let scale = g_ops.iter().map(|v| v.abs()).fold(1e-3f32, f32::max);
                let worst = g.iter().zip(g_ops).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(worst / scale < 1e-4, "{targets:?}: gradients differ by {worst} (largest {scale})");
            }
        }
        let eval = Mode::eval();
        let plain = base.forward_with(None, &b, &eval, true).unwrap().0.to_vec1::<f32>().unwrap();
        let plain_ops = base.forward_with(None, &b, &eval, false).unwrap().0.to_vec1::<f32>().unwrap();
        let worst = plain.iter().zip(&plain_ops).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4, "without LoRA: losses differ by {worst}");
    }

    /// Autograd's LoRA gradients agree with central finite differences of the summed loss.
    #[test]
    fn lora_gradients_match_finite_differences() {
        let dir = tempfile::tempdir().unwrap();
        let model = tiny(dir.path(), true);
        let base = TrainBase::new(&model).unwrap();
        let vars = LoraVars::init(&base, 4, 2.0, &Target::ALL, 5).unwrap();
        // B starts at zero; give it values so A's gradient is not zero too.
        let mut rng = StdRng::seed_from_u64(9);
        for (_, b) in vars.pairs.values() {
            let values: Vec<f32> = (0..b.elem_count()).map(|_| rng.random_range(-0.3..0.3)).collect();
            b.set(&Tensor::from_vec(values, b.shape(), &Device::Cpu).unwrap()).unwrap();
        }
        let b = batch(&Device::Cpu);
        let mode = Mode::train(None);
        let loss = |vars: &LoraVars| -> f64 {
            base.forward(Some(vars), &b, &mode).unwrap().0.sum_all().unwrap().to_scalar::<f32>().unwrap() as f64
        };
        let grads = base.forward(Some(&vars), &b, &mode).unwrap().0.sum_all().unwrap().backward().unwrap();
        let mut worst = 0f64;
        let mut checked = 0;
        for ((layer, target), (a, bv)) in &vars.pairs {
            if (*layer + target.index()) % 3 != 0 {
                continue; // a spread of (layer, target) pairs keeps the test quick
            }
            for var in [a, bv] {
                let g: Vec<f32> = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                // The entry with the largest gradient: finite differences in f32 are meaningful there.
                let (at, &analytic) = g.iter().enumerate().max_by(|x, y| x.1.abs().total_cmp(&y.1.abs())).unwrap();
                let original: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
                let h = 1e-2f32;
                let nudged = |delta: f32| {
                    let mut values = original.clone();
                    values[at] += delta;
                    var.set(&Tensor::from_vec(values, var.shape(), &Device::Cpu).unwrap()).unwrap();
                    loss(&vars)
                };
                let numeric = (nudged(h) - nudged(-h)) / (2.0 * h as f64);
                var.set(&Tensor::from_vec(original, var.shape(), &Device::Cpu).unwrap()).unwrap();
                let relative = (numeric - analytic as f64).abs() / (analytic.abs() as f64).max(1e-3);
                worst = worst.max(relative);
                checked += 1;
            }
        }
        eprintln!("finite differences: {checked} entries, worst relative error {worst:.2e}");
        assert!(checked >= 8, "{checked}");
        assert!(worst < 1e-2, "worst relative error {worst}");
    }
}
