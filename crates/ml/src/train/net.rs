//! The differentiable forward pass for LoRA training: the base weights as frozen f32 matrices
//! (dequantized from GGUF, Hugging Face row order), LoRA A/B as candle `Var`s, and the loss of
//! each labelled token. Frozen projections run through a custom op whose backward computes only
//! the input gradient: candle's matmul backward would also compute the (discarded) gradient of
//! every frozen weight, a third of the step's work.

use std::collections::BTreeMap;

use candle_core::{CpuStorage, CustomOp1, D, DType, Device, Layout, Shape, Tensor, Var};
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::config::ModelConfig;
use crate::error::{MlError, Result};
use crate::lora::Target;
use crate::model::{DenseWeights, LlamaModel};

/// `x · Wᵀ` with `W` frozen: the backward pass returns only `∂L/∂x = g · W`.
struct Frozen {
    weight: Tensor,
}

impl CustomOp1 for Frozen {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("frozen-linear needs a contiguous input".into()))?;
        let x = Tensor::from_slice(&storage.as_slice::<f32>()?[start..end], layout.shape(), &Device::Cpu)?;
        let y = x.matmul(&self.weight.t()?)?;
        let (y_storage, y_layout) = y.storage_and_layout();
        match (&*y_storage, y_layout.contiguous_offsets()) {
            (candle_core::Storage::Cpu(cpu), Some((0, _))) => Ok((cpu.clone(), y.shape().clone())),
            _ => Err(candle_core::Error::Msg("frozen-linear produced a strided output".into())),
        }
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad_res.matmul(&self.weight)?))
    }
}

/// `x · Wᵀ` for a frozen `W` (rows of `x` are inputs).
fn frozen(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        Ok(x.contiguous()?.apply_op1(Frozen { weight: weight.clone() })?)
    } else {
        // Other devices: the plain matmul (its weight gradient is computed and dropped).
        Ok(x.matmul(&weight.t()?)?)
    }
}

/// The output projection and the loss fused: `nll_r = logsumexp(h_r·Wᵀ) − (h_r·Wᵀ)[target_r]`,
/// computed 64 rows at a time so the `(rows, vocab)` logits (100 MB for 512 rows of a 49k
/// vocabulary) never exist whole; the backward pass recomputes each chunk's logits and returns
/// `∂L/∂h = (softmax − onehot)·g · W` (the cut-cross-entropy / Liger approach).
struct LmHeadLoss {
    weight: Tensor,
    targets: Vec<u32>,
}

const LOSS_CHUNK_ROWS: usize = 64;

impl LmHeadLoss {
    /// Per chunk of rows: the chunk's first row and its logits as a `(rows, vocab)` row-major vec.
    fn chunks<'a>(&'a self, hidden: &'a Tensor) -> impl Iterator<Item = candle_core::Result<(usize, Vec<f32>)>> + 'a {
        let rows = hidden.dim(0).unwrap_or(0);
        (0..rows).step_by(LOSS_CHUNK_ROWS).map(move |start| {
            let n = LOSS_CHUNK_ROWS.min(rows - start);
            let logits = hidden.narrow(0, start, n)?.matmul(&self.weight.t()?)?;
            Ok((start, logits.flatten_all()?.to_vec1::<f32>()?))
        })
    }
}

/// `(max, log Σ exp(x − max))` of one row of logits.
fn log_sum_exp(row: &[f32]) -> (f32, f32) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    (max, row.iter().map(|v| (v - max).exp()).sum::<f32>().ln())
}

impl CustomOp1 for LmHeadLoss {
    fn name(&self) -> &'static str {
        "lm-head-loss"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("lm-head-loss needs a contiguous input".into()))?;
        let hidden = Tensor::from_slice(&storage.as_slice::<f32>()?[start..end], layout.shape(), &Device::Cpu)?;
        let vocab = self.weight.dim(0)?;
        let mut nll = vec![0f32; self.targets.len()];
        for chunk in self.chunks(&hidden) {
            let (first, logits) = chunk?;
            for (i, row) in logits.chunks_exact(vocab).enumerate() {
                let (max, lse) = log_sum_exp(row);
                nll[first + i] = max + lse - row[self.targets[first + i] as usize];
            }
        }
        let n = nll.len();
        Ok((CpuStorage::F32(nll), Shape::from(n)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let vocab = self.weight.dim(0)?;
        let g: Vec<f32> = grad_res.to_vec1()?;
        let mut grads = Vec::new();
        for chunk in self.chunks(arg) {
            let (first, mut logits) = chunk?;
            for (i, row) in logits.chunks_exact_mut(vocab).enumerate() {
                let (max, lse) = log_sum_exp(row);
                let scale = g[first + i];
                for v in row.iter_mut() {
                    *v = (*v - max - lse).exp() * scale;
                }
                row[self.targets[first + i] as usize] -= scale;
            }
            let n = logits.len() / vocab;
            grads.push(Tensor::from_vec(logits, (n, vocab), arg.device())?.matmul(&self.weight)?);
        }
        Ok(Some(Tensor::cat(&grads, 0)?))
    }
}

/// The negative log-likelihood of `targets` under `hidden · Wᵀ`, one value per row.
fn lm_head_loss(hidden: &Tensor, weight: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if hidden.device().is_cpu() {
        let targets: Vec<u32> = targets.flatten_all()?.to_vec1()?;
        return Ok(hidden.contiguous()?.apply_op1(LmHeadLoss { weight: weight.clone(), targets })?);
    }
    let logits = hidden.matmul(&weight.t()?)?;
    let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    Ok(log_probs.gather(targets, 1)?.squeeze(1)?.neg()?)
}

/// The frozen base model as f32 tensors.
pub(crate) struct TrainBase {
    pub(crate) config: ModelConfig,
    weights: DenseWeights,
    cos: Tensor,
    sin: Tensor,
    device: Device,
}

impl TrainBase {
    pub(crate) fn new(model: &LlamaModel) -> Result<Self> {
        let (cos, sin) = model.rope_tables();
        Ok(Self {
            weights: model.dense_weights()?,
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
            n += layer.projections.iter().map(Tensor::elem_count).sum::<usize>();
        }
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
/// `∂L/∂(LoRA output)` for per-example gradients.
pub(crate) struct Mode {
    pub(crate) dropout: Option<(f32, u64)>,
    pub(crate) probes: bool,
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
        let c = &self.config;
        let (b, t) = batch.tokens.dims2()?;
        let n = b * t;
        let eps = c.rms_norm_eps as f32;
        let mut probes = BTreeMap::new();
        let mut dropout_rng = mode.dropout.map(|(p, seed)| (p, StdRng::seed_from_u64(seed)));
        let mut project = |layer: usize, target: Target, x: &Tensor, weight: &Tensor| -> Result<Tensor> {
            let base = frozen(x, weight)?;
            let Some((a, b_var)) = lora.and_then(|l| l.pairs.get(&(layer, target))) else { return Ok(base) };
            let scale = lora.map_or(1.0, |l| l.scale);
            let x = match &mut dropout_rng {
                Some((p, rng)) if *p > 0.0 => {
                    let keep = 1.0 - *p;
                    let mask: Vec<f32> = (0..x.elem_count())
                        .map(|_| if rng.random::<f32>() < keep { 1.0 / keep } else { 0.0 })
                        .collect();
                    (x * Tensor::from_vec(mask, x.shape(), x.device())?)?
                }
                _ => x.clone(),
            };
            let u = x.matmul(&a.as_tensor().t()?)?;
            let delta = (u.matmul(&b_var.as_tensor().t()?)? * scale)?;
            let delta = if mode.probes {
                let output = Var::zeros(delta.shape(), DType::F32, delta.device())?;
                let probed = (delta + output.as_tensor())?;
                probes.insert((layer, target), Probe { x: x.detach(), u: u.detach(), output });
                probed
            } else {
                delta
            };
            Ok((base + delta)?)
        };
        let w = &self.weights;
        let mut x = w.embed.index_select(&batch.tokens.flatten_all()?, 0)?; // (N, H)
        let (cos, sin) = (self.cos.narrow(0, 0, t)?, self.sin.narrow(0, 0, t)?);
        let mask = causal_mask(t, &self.device)?;
        let (heads, kv_heads, d) = (c.num_heads, c.num_kv_heads, c.head_dim);
        for (layer, weights) in w.layers.iter().enumerate() {
            let p = &weights.projections;
            let h = candle_nn::ops::rms_norm_slow(&x, &weights.attn_norm, eps)?;
            let q = project(layer, Target::Q, &h, &p[0])?;
            let k = project(layer, Target::K, &h, &p[1])?;
            let v = project(layer, Target::V, &h, &p[2])?;
            let split = |x: Tensor, heads: usize| -> Result<Tensor> {
                Ok(x.reshape((b, t, heads, d))?.transpose(1, 2)?.contiguous()?)
            };
            let q = candle_nn::rotary_emb::rope_slow(&split(q, heads)?, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope_slow(&split(k, kv_heads)?, &cos, &sin)?;
            let v = split(v, kv_heads)?;
            let group = heads / kv_heads;
            let repeat = |x: Tensor| -> Result<Tensor> {
                if group == 1 {
                    return Ok(x);
                }
                Ok(x.unsqueeze(2)?.expand((b, kv_heads, group, t, d))?.reshape((b, heads, t, d))?)
            };
            let (k, v) = (repeat(k)?, repeat(v)?);
            let scores = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?.broadcast_add(&mask)?;
            let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
            let attn = probs.matmul(&v)?.transpose(1, 2)?.reshape((n, heads * d))?;
            x = (x + project(layer, Target::O, &attn, &p[3])?)?;
            let h = candle_nn::ops::rms_norm_slow(&x, &weights.ffn_norm, eps)?;
            let gate = project(layer, Target::Gate, &h, &p[4])?;
            let up = project(layer, Target::Up, &h, &p[5])?;
            x = (&x + project(layer, Target::Down, &(gate.silu()? * up)?, &p[6])?)?;
        }
        let scored = x.index_select(&batch.rows, 0)?;
        let scored = candle_nn::ops::rms_norm_slow(&scored, &w.norm, eps)?;
        let nll = lm_head_loss(&scored, &w.output, &batch.targets)?;
        Ok((nll, probes))
    }
}

fn causal_mask(t: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..t * t).map(|i| if i % t > i / t { f32::NEG_INFINITY } else { 0.0 }).collect();
    Ok(Tensor::from_vec(mask, (t, t), device)?)
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
            let mode = Mode { dropout: None, probes: false };
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

    /// The fused chunked loss equals log-softmax + gather, in value and in gradient, across
    /// several chunks.
    #[test]
    fn fused_loss_matches_log_softmax() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut random = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-2.0..2.0)).collect() };
        let (rows, hidden, vocab) = (150, 8, 20);
        let h =
            Var::from_tensor(&Tensor::from_vec(random(rows * hidden), (rows, hidden), &Device::Cpu).unwrap()).unwrap();
        let w = Tensor::from_vec(random(vocab * hidden), (vocab, hidden), &Device::Cpu).unwrap();
        let targets: Vec<u32> = (0..rows as u32).map(|r| r * 7 % vocab as u32).collect();
        let targets = Tensor::from_vec(targets, (rows, 1), &Device::Cpu).unwrap();
        let weights = Tensor::from_vec(random(rows), rows, &Device::Cpu).unwrap();
        let fused = lm_head_loss(h.as_tensor(), &w, &targets).unwrap();
        let log_probs =
            candle_nn::ops::log_softmax(&h.as_tensor().matmul(&w.t().unwrap()).unwrap(), D::Minus1).unwrap();
        let plain = log_probs.gather(&targets, 1).unwrap().squeeze(1).unwrap().neg().unwrap();
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
        let mode = Mode { dropout: None, probes: false };
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
