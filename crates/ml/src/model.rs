//! A Llama-family decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU) whose forward pass
//! runs a batch of sequences at different positions together: the projections run once over all
//! token rows, each sequence's LoRA mix adds its own delta, and attention reads each sequence's
//! own KV cache. Prefill (many tokens) and decode (one token) rows mix in the same pass.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor, gguf_file};
use candle_core::{DType, Device, Module, Tensor};

use crate::config::ModelConfig;
use crate::error::{MlError, Result};
use crate::host::{self, HostKv, with_f32};
use crate::kernels::{BlockFormat, BlockMatrix, Q8Activations};
use crate::lora::{AdapterMix, LoraPlan, Target, unpermute_for_interleaved_rope};

/// Weight types the loaders accept; others are refused with a clear error.
pub const SUPPORTED_GGML_TYPES: [GgmlDType; 13] = [
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

/// A projection `x·Wᵀ`: quantized blocks stay quantized. On CPU, Q4_0/Q4_1/Q8_0 run on this
/// crate's kernels; other types and devices use candle's `QMatMul`; dense safetensors weights
/// are plain f32 matrices.
#[derive(Debug)]
pub enum Linear {
    Blocks(Arc<BlockMatrix>),
    Candle(QMatMul),
}

impl Linear {
    fn from_qtensor(t: Arc<QTensor>, device: &Device) -> Result<Self> {
        match (device.is_cpu(), BlockFormat::from_ggml(t.dtype())) {
            (true, Some(format)) => {
                let (rows, cols) = t.shape().dims2()?;
                Ok(Self::Blocks(Arc::new(BlockMatrix::new(format, rows, cols, t.data()?.into_owned())?)))
            }
            _ => Ok(Self::Candle(QMatMul::from_arc(t)?)),
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Candle(weight) => Ok(weight.forward(x)?),
            Self::Blocks(matrix) => {
                let (m, _) = x.dims2()?;
                let xs = x.flatten_all()?.to_vec1::<f32>()?;
                Ok(Tensor::from_vec(matrix.matmul(&xs, m), (m, matrix.rows), x.device())?)
            }
        }
    }

    /// Whether this projection's kernels take rows quantized by [`Self::activations`].
    fn takes_activations(&self) -> bool {
        matches!(self, Self::Blocks(matrix) if matrix.takes_activations())
    }

    /// `m` rows of `xs` quantized as this projection's kernels take them, if they take 8-bit
    /// blocks (see `BlockMatrix::activations`).
    fn activations(&self, xs: &[f32], m: usize) -> Option<Q8Activations> {
        match self {
            Self::Blocks(matrix) => matrix.activations(xs, m),
            Self::Candle(_) => None,
        }
    }

    /// The weight as an f32 `(out, in)` matrix (for training, which needs gradients).
    fn dense(&self) -> Result<Tensor> {
        match self {
            Self::Blocks(matrix) => {
                let mut data = vec![0f32; matrix.rows * matrix.cols];
                for (r, row) in data.chunks_exact_mut(matrix.cols).enumerate() {
                    matrix.dequantize_row(r, row);
                }
                Ok(Tensor::from_vec(data, (matrix.rows, matrix.cols), &Device::Cpu)?)
            }
            Self::Candle(QMatMul::QTensor(t)) => Ok(t.dequantize(&t.device())?),
            Self::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => Ok(t.to_dtype(DType::F32)?),
        }
    }

    /// `m` rows of `xs` (each `in_features` wide) through the projection, on the CPU; from
    /// `quantized` (the same rows, [`Self::activations`]) where given.
    fn forward_host(&self, xs: &[f32], m: usize, quantized: Option<&Q8Activations>) -> Result<Vec<f32>> {
        match self {
            Self::Blocks(matrix) => Ok(match quantized {
                Some(activations) => matrix.matmul_quantized(activations, m),
                None => matrix.matmul(xs, m),
            }),
            Self::Candle(weight) => {
                let x = Tensor::from_slice(xs, (m, xs.len() / m), &Device::Cpu)?;
                Ok(weight.forward(&x)?.flatten_all()?.to_vec1()?)
            }
        }
    }
}

/// The token embedding table: GGUF keeps it quantized (rows are dequantized on lookup and the
/// same table serves as the tied output projection).
#[derive(Debug)]
enum Embedding {
    Blocks(Arc<BlockMatrix>),
    Quantized(Arc<QTensor>),
    Dense(Tensor),
}

#[derive(Debug)]
struct Block {
    attn_norm: Tensor,
    ffn_norm: Tensor,
    qkv: Group,
    o: Group,
    gate_up: Group,
    down: Group,
}

impl Block {
    fn new(attn_norm: Tensor, ffn_norm: Tensor, projections: Vec<Linear>) -> Result<Self> {
        let mut p = projections.into_iter().zip(Target::ALL);
        let mut take = |n: usize| -> Result<Group> { Group::new(p.by_ref().take(n).map(|(l, t)| (t, l)).collect()) };
        Ok(Self { attn_norm, ffn_norm, qkv: take(3)?, o: take(1)?, gate_up: take(2)?, down: take(1)? })
    }
}

/// Projections of the same input (q/k/v, gate/up). On the CPU kernels they run as one
/// stacked matrix: one quantization of the input and one dispatch to the thread pool.
#[derive(Debug)]
enum Group {
    Stacked { matrix: Linear, parts: Vec<(Target, usize)> },
    Separate(Vec<(Target, Linear)>),
}

impl Group {
    fn new(parts: Vec<(Target, Linear)>) -> Result<Self> {
        let matrices: Vec<&BlockMatrix> = parts
            .iter()
            .filter_map(|(_, l)| match l {
                Linear::Blocks(m) => Some(m.as_ref()),
                Linear::Candle(_) => None,
            })
            .collect();
        if parts.len() < 2 || matrices.len() != parts.len() {
            return Ok(Self::Separate(parts));
        }
        match BlockMatrix::stack(&matrices)? {
            Some(stacked) => {
                let widths = parts.iter().zip(&matrices).map(|((t, _), m)| (*t, m.rows)).collect();
                Ok(Self::Stacked { matrix: Linear::Blocks(Arc::new(stacked)), parts: widths })
            }
            None => Ok(Self::Separate(parts)),
        }
    }

    /// Each projection's output with its LoRA deltas, in the group's target order.
    fn forward(&self, layer: usize, x: &Tensor, lora: &LoraPlan) -> Result<Vec<Tensor>> {
        let with_lora =
            |target, base: Tensor| if lora.is_empty() { Ok(base) } else { lora.apply(layer, target, x, base) };
        match self {
            Self::Separate(parts) => parts.iter().map(|(t, l)| with_lora(*t, l.forward(x)?)).collect(),
            Self::Stacked { matrix, parts } => {
                let all = matrix.forward(x)?;
                let mut offset = 0;
                parts
                    .iter()
                    .map(|&(t, width)| {
                        let part = all.narrow(1, offset, width)?.contiguous()?;
                        offset += width;
                        with_lora(t, part)
                    })
                    .collect()
            }
        }
    }

    fn single(&self, layer: usize, x: &Tensor, lora: &LoraPlan) -> Result<Tensor> {
        self.forward(layer, x, lora)?.pop().ok_or_else(|| MlError::corrupt("model", "empty projection group"))
    }

    /// Each projection's weight as an f32 `(out, in)` matrix, in the group's target order.
    fn dense(&self) -> Result<Vec<Tensor>> {
        match self {
            Self::Separate(parts) => parts.iter().map(|(_, l)| l.dense()).collect(),
            Self::Stacked { matrix, parts } => {
                let all = matrix.dense()?;
                let mut offset = 0;
                parts
                    .iter()
                    .map(|&(_, rows)| {
                        offset += rows;
                        Ok(all.narrow(0, offset - rows, rows)?)
                    })
                    .collect()
            }
        }
    }

    /// The CPU version: the projections' outputs side by side in each of the `m` output rows
    /// (`[q | k | v]`, `[gate | up]`), LoRA deltas included.
    fn forward_host(&self, layer: usize, xs: &[f32], m: usize, lora: &LoraPlan) -> Result<Vec<f32>> {
        let in_features = xs.len() / m;
        // Rows the base's kernels quantize are quantized once, here, for every projection of
        // the group that takes them and for the adapters' 8-bit panels.
        let first = match self {
            Self::Stacked { matrix, .. } => matrix,
            Self::Separate(parts) => &parts[0].1,
        };
        let quantized = first.activations(xs, m);
        let q = quantized.as_ref();
        let (mut out, parts) = match self {
            Self::Stacked { matrix, parts } => (matrix.forward_host(xs, m, q)?, parts.clone()),
            Self::Separate(parts) if parts.len() == 1 => {
                let (target, linear) = &parts[0];
                let out = linear.forward_host(xs, m, q)?;
                let width = out.len() / m;
                (out, vec![(*target, width)])
            }
            Self::Separate(parts) => {
                // Each from the shared rows only if its kernels take them (formats may differ).
                let outputs = parts
                    .iter()
                    .map(|(_, l)| l.forward_host(xs, m, q.filter(|_| l.takes_activations())))
                    .collect::<Result<Vec<_>>>()?;
                let widths: Vec<(Target, usize)> =
                    parts.iter().zip(&outputs).map(|((t, _), o)| (*t, o.len() / m)).collect();
                let mut out = Vec::with_capacity(outputs.iter().map(Vec::len).sum());
                for row in 0..m {
                    for (output, (_, width)) in outputs.iter().zip(&widths) {
                        out.extend_from_slice(&output[row * width..(row + 1) * width]);
                    }
                }
                (out, widths)
            }
        };
        if !lora.is_empty() {
            let stride = out.len() / m;
            let input = crate::lora::HostRows { xs, quantized: q, width: in_features };
            lora.apply_host(layer, &crate::lora::side_by_side(&parts), &input, &mut out, stride);
        }
        Ok(out)
    }
}

/// Per-sequence key/value cache, allocated once for the sequence's whole budget so appends
/// never reallocate: host vectors on the CPU, `(1, kv_heads, capacity, head_dim)` tensors on
/// other devices.
#[derive(Debug)]
pub struct KvCache {
    layers: KvLayers,
    len: usize,
    capacity: usize,
}

#[derive(Debug)]
enum KvLayers {
    Host(Vec<HostKv>),
    Tensors(Vec<(Tensor, Tensor)>),
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Every weight as f32, in Hugging Face layout (GGUF's q/k row permutation undone), for the
/// trainer: candle's quantized matmul has no backward pass.
pub(crate) struct DenseWeights {
    pub(crate) embed: Tensor,
    pub(crate) layers: Vec<DenseLayer>,
    pub(crate) norm: Tensor,
    pub(crate) output: Tensor,
    /// The output projection is the embedding table.
    pub(crate) tied: bool,
}

pub(crate) struct DenseLayer {
    pub(crate) attn_norm: Tensor,
    pub(crate) ffn_norm: Tensor,
    /// `(out, in)` matrices in `Target::ALL` order.
    pub(crate) projections: Vec<Tensor>,
}

/// One sequence's part of a forward pass.
pub struct SeqStep<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
    pub adapters: &'a AdapterMix,
}

/// Where the weights came from, for `model info`.
#[derive(Clone, Debug)]
pub struct ModelFormat {
    pub kind: &'static str,
    /// Weight type of each tensor kind, e.g. `{"Q4_1": 210, "Q8_0": 1, "F32": 61}`.
    pub tensor_types: Vec<(String, usize)>,
    pub weight_bytes: usize,
}

#[derive(Debug)]
pub struct LlamaModel {
    config: ModelConfig,
    format: ModelFormat,
    device: Device,
    embedding: Embedding,
    blocks: Vec<Block>,
    norm: Tensor,
    output: Linear,
    cos: Tensor,
    sin: Tensor,
    /// Forward on the fused CPU slice path (`host.rs`); the tensor path otherwise.
    host: bool,
    /// The f32 copy of the weights gradient probes run on (`train::net::TrainBase`), kept while
    /// a probe holds it, so the probes of several adapters on this base share one copy.
    frozen: std::sync::Mutex<std::sync::Weak<crate::train::net::TrainBase>>,
}

impl LlamaModel {
    /// Loads a GGUF file; quantized weights stay quantized.
    pub fn from_gguf(path: &Path, device: &Device) -> Result<Self> {
        let mut file = std::fs::File::open(path).map_err(|e| MlError::io(path, e))?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| gguf_error(path, e))?;
        let config = ModelConfig::from_gguf(&content.metadata)?;
        let mut types: HashMap<String, usize> = HashMap::new();
        let mut weight_bytes = 0;
        for (name, info) in &content.tensor_infos {
            if !SUPPORTED_GGML_TYPES.contains(&info.ggml_dtype) {
                return Err(MlError::unsupported(
                    "quantization",
                    format!("tensor {name} is {:?}; supported: {SUPPORTED_GGML_TYPES:?}", info.ggml_dtype),
                ));
            }
            *types.entry(format!("{:?}", info.ggml_dtype)).or_default() += 1;
        }
        let mut tensor = |name: &str, shape: &[usize]| -> Result<Arc<QTensor>> {
            if !content.tensor_infos.contains_key(name) {
                return Err(MlError::corrupt("model", format!("GGUF lacks tensor {name}")));
            }
            let t = content.tensor(&mut file, name, device).map_err(|e| gguf_error(path, e))?;
            if t.shape().dims() != shape {
                return Err(MlError::corrupt(
                    "model",
                    format!("tensor {name} has shape {:?}, the config implies {shape:?}", t.shape().dims()),
                ));
            }
            weight_bytes += t.storage_size_in_bytes();
            Ok(Arc::new(t))
        };
        let vector = |t: Arc<QTensor>| -> Result<Tensor> { Ok(t.dequantize(device)?) };
        let linear = |t: Arc<QTensor>| Linear::from_qtensor(t, device);
        let c = &config;
        let embed = tensor("token_embd.weight", &[c.vocab_size, c.hidden_size])?;
        let mut blocks = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let mut projections = Vec::with_capacity(7);
            for target in Target::ALL {
                let (in_f, out_f) = c.projection_shape(target);
                let name = format!("blk.{i}.{}.weight", target.gguf_name());
                projections.push(linear(tensor(&name, &[out_f, in_f])?)?);
            }
            blocks.push(Block::new(
                vector(tensor(&format!("blk.{i}.attn_norm.weight"), &[c.hidden_size])?)?,
                vector(tensor(&format!("blk.{i}.ffn_norm.weight"), &[c.hidden_size])?)?,
                projections,
            )?);
        }
        let norm = vector(tensor("output_norm.weight", &[c.hidden_size])?)?;
        // The embedding table and a tied output projection share one copy of the blocks.
        let embed_linear = linear(embed.clone())?;
        let embedding = match &embed_linear {
            Linear::Blocks(matrix) => Embedding::Blocks(matrix.clone()),
            Linear::Candle(_) => Embedding::Quantized(embed),
        };
        let output = if content.tensor_infos.contains_key("output.weight") {
            linear(tensor("output.weight", &[c.vocab_size, c.hidden_size])?)?
        } else {
            embed_linear
        };
        let mut tensor_types: Vec<(String, usize)> = types.into_iter().collect();
        tensor_types.sort();
        let format = ModelFormat { kind: "gguf", tensor_types, weight_bytes };
        Self::assemble(config, format, device, embedding, blocks, norm, output)
    }

    /// Loads a Hugging Face checkpoint directory: `config.json` plus `model.safetensors` or the
    /// shards listed in `model.safetensors.index.json`. Weights are held as f32.
    pub fn from_safetensors_dir(dir: &Path, device: &Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        let json = std::fs::read_to_string(&config_path).map_err(|e| MlError::io(&config_path, e))?;
        let config = ModelConfig::from_hf_json(&json)?;
        let mut tensors = load_safetensors_dir(dir, device)?;
        let (mut weight_bytes, mut count) = (0, 0);
        let mut take = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let t =
                tensors.remove(name).ok_or_else(|| MlError::corrupt("model", format!("checkpoint lacks {name}")))?;
            if t.dims() != shape {
                return Err(MlError::corrupt(
                    "model",
                    format!("tensor {name} has shape {:?}, config.json implies {shape:?}", t.dims()),
                ));
            }
            weight_bytes += t.elem_count() * 4;
            count += 1;
            Ok(t.to_dtype(DType::F32)?)
        };
        let linear = |t: Tensor| -> Result<Linear> { Ok(Linear::Candle(QMatMul::Tensor(t))) };
        let c = &config;
        let embed = take("model.embed_tokens.weight", &[c.vocab_size, c.hidden_size])?;
        let mut blocks = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let mut projections = Vec::with_capacity(7);
            for target in Target::ALL {
                let (i_f, o_f) = c.projection_shape(target);
                let name = format!("model.layers.{i}.{}.{}.weight", target.block_name(), target.module_name());
                projections.push(linear(take(&name, &[o_f, i_f])?)?);
            }
            blocks.push(Block::new(
                take(&format!("model.layers.{i}.input_layernorm.weight"), &[c.hidden_size])?,
                take(&format!("model.layers.{i}.post_attention_layernorm.weight"), &[c.hidden_size])?,
                projections,
            )?);
        }
        let norm = take("model.norm.weight", &[c.hidden_size])?;
        let output = if c.tie_word_embeddings {
            linear(embed.clone())?
        } else {
            linear(take("lm_head.weight", &[c.vocab_size, c.hidden_size])?)?
        };
        let format = ModelFormat { kind: "safetensors", tensor_types: vec![("F32".into(), count)], weight_bytes };
        Self::assemble(config, format, device, Embedding::Dense(embed), blocks, norm, output)
    }

    fn assemble(
        config: ModelConfig,
        format: ModelFormat,
        device: &Device,
        embedding: Embedding,
        blocks: Vec<Block>,
        norm: Tensor,
        output: Linear,
    ) -> Result<Self> {
        let freqs = config.inverse_frequencies();
        let half = freqs.len();
        let positions = config.context_length;
        let mut angles = Vec::with_capacity(positions * half);
        for p in 0..positions {
            angles.extend(freqs.iter().map(|f| p as f32 * f));
        }
        let angles = Tensor::from_vec(angles, (positions, half), device)?;
        Ok(Self {
            cos: angles.cos()?,
            sin: angles.sin()?,
            config,
            format,
            device: device.clone(),
            embedding,
            blocks,
            norm,
            output,
            host: device.is_cpu(),
            frozen: Default::default(),
        })
    }

    pub(crate) fn frozen_base(&self) -> &std::sync::Mutex<std::sync::Weak<crate::train::net::TrainBase>> {
        &self.frozen
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn format(&self) -> &ModelFormat {
        &self.format
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A cache for a sequence of at most `capacity` tokens (prompt plus generated).
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        if capacity > self.config.context_length {
            return Err(MlError::ContextOverflow {
                prompt_tokens: capacity,
                max_tokens: 0,
                context: self.config.context_length,
            });
        }
        let c = &self.config;
        let layers = if self.host {
            let size = c.num_kv_heads * capacity * c.head_dim;
            KvLayers::Host(
                (0..c.num_layers).map(|_| HostKv { keys: vec![0.0; size], values: vec![0.0; size] }).collect(),
            )
        } else {
            let shape = (1, c.num_kv_heads, capacity, c.head_dim);
            let zeros = || Tensor::zeros(shape, DType::F32, &self.device);
            KvLayers::Tensors((0..c.num_layers).map(|_| Ok((zeros()?, zeros()?))).collect::<Result<_>>()?)
        };
        Ok(KvCache { layers, len: 0, capacity })
    }

    /// f32 copies of all weights (about 4 bytes per parameter) for training.
    pub(crate) fn dense_weights(&self) -> Result<DenseWeights> {
        let c = &self.config;
        let embed = match &self.embedding {
            Embedding::Dense(t) => t.clone(),
            Embedding::Blocks(m) => Linear::Blocks(m.clone()).dense()?,
            Embedding::Quantized(t) => t.dequantize(&self.device)?,
        };
        let tied =
            matches!((&self.output, &self.embedding), (Linear::Blocks(o), Embedding::Blocks(e)) if Arc::ptr_eq(o, e));
        let output = if tied { embed.clone() } else { self.output.dense()? };
        let layers = self
            .blocks
            .iter()
            .map(|block| {
                let mut projections = Vec::with_capacity(7);
                for group in [&block.qkv, &block.o, &block.gate_up, &block.down] {
                    projections.extend(group.dense()?);
                }
                for (weight, target) in projections.iter_mut().zip(Target::ALL) {
                    if let Some(heads) = c.interleaved_rope_heads(target) {
                        *weight = unpermute_for_interleaved_rope(weight, heads)?;
                    }
                }
                Ok(DenseLayer { attn_norm: block.attn_norm.clone(), ffn_norm: block.ffn_norm.clone(), projections })
            })
            .collect::<Result<_>>()?;
        Ok(DenseWeights { embed, layers, norm: self.norm.clone(), output, tied })
    }

    /// RoPE's cosine and sine tables, `(context, head_dim / 2)`.
    pub(crate) fn rope_tables(&self) -> (&Tensor, &Tensor) {
        (&self.cos, &self.sin)
    }

    /// Bytes one cached token costs (keys and values over all layers).
    pub fn kv_bytes_per_token(&self) -> usize {
        let c = &self.config;
        2 * c.num_layers * c.num_kv_heads * c.head_dim * 4
    }

    /// Runs the batch and returns the next-token logits of each sequence, `(sequences, vocab)`.
    pub fn forward(&self, steps: &mut [SeqStep<'_>]) -> Result<Tensor> {
        if steps.is_empty() {
            return Err(MlError::InvalidRequest("empty batch".into()));
        }
        let mut ids = Vec::new();
        let mut row_mixes = Vec::new();
        for step in steps.iter() {
            if step.tokens.is_empty() {
                return Err(MlError::InvalidRequest("a sequence step has no tokens".into()));
            }
            if step.cache.len + step.tokens.len() > step.cache.capacity {
                return Err(MlError::ContextOverflow {
                    prompt_tokens: step.cache.len + step.tokens.len(),
                    max_tokens: 0,
                    context: step.cache.capacity,
                });
            }
            if let Some(bad) = step.tokens.iter().find(|&&t| t as usize >= self.config.vocab_size) {
                return Err(MlError::InvalidRequest(format!("token id {bad} is outside the vocabulary")));
            }
            ids.extend_from_slice(step.tokens);
            row_mixes.extend(std::iter::repeat_n(step.adapters, step.tokens.len()));
        }
        let lora = LoraPlan::new(&row_mixes, &self.device)?;
        let logits =
            if self.host { self.forward_host(&ids, steps, &lora)? } else { self.forward_tensors(&ids, steps, &lora)? };
        for step in steps.iter_mut() {
            step.cache.len += step.tokens.len();
        }
        Ok(logits)
    }

    /// The last row of each sequence, as indices into the batch's token rows.
    fn last_rows(steps: &[SeqStep<'_>]) -> Vec<u32> {
        steps
            .iter()
            .scan(0u32, |offset, step| {
                *offset += step.tokens.len() as u32;
                Some(*offset - 1)
            })
            .collect()
    }

    /// The forward pass as tensor operations, for any device.
    fn forward_tensors(&self, ids: &[u32], steps: &mut [SeqStep<'_>], lora: &LoraPlan) -> Result<Tensor> {
        let mut x = match &self.embedding {
            Embedding::Dense(table) => table.index_select(&Tensor::new(ids, &self.device)?, 0)?,
            _ => Tensor::from_vec(self.embed_rows(ids)?, (ids.len(), self.config.hidden_size), &self.device)?,
        };
        for (layer, block) in self.blocks.iter().enumerate() {
            x = self.block_forward(layer, block, &x, steps, lora)?;
        }
        let last = x.index_select(&Tensor::new(Self::last_rows(steps), &self.device)?, 0)?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, self.config.rms_norm_eps as f32)?;
        self.output.forward(&last)
    }

    /// The same pass on CPU slices (`host.rs`).
    fn forward_host(&self, ids: &[u32], steps: &mut [SeqStep<'_>], lora: &LoraPlan) -> Result<Tensor> {
        let c = &self.config;
        let eps = c.rms_norm_eps as f32;
        let rows = ids.len();
        let shape = host::Heads { heads: c.num_heads, kv_heads: c.num_kv_heads, head_dim: c.head_dim };
        let mut x = self.embed_rows(ids)?;
        for (layer, block) in self.blocks.iter().enumerate() {
            let h = with_f32(&block.attn_norm, |w| Ok(host::rms_norm(&x, w, eps)))?;
            let mut qkv = block.qkv.forward_host(layer, &h, rows, lora)?;
            let row_width = qkv.len() / rows;
            let mut seqs = Vec::with_capacity(steps.len());
            let mut rest = qkv.as_mut_slice();
            for step in steps.iter_mut() {
                let (mine, tail) = rest.split_at_mut(step.tokens.len() * row_width);
                rest = tail;
                let KvLayers::Host(layers) = &mut step.cache.layers else {
                    return Err(MlError::InvalidRequest("a KV cache made for another device".into()));
                };
                seqs.push(host::SeqRows { qkv: mine, kv: &mut layers[layer], first: step.cache.len });
            }
            let attn = with_f32(&self.cos, |cos| {
                with_f32(&self.sin, |sin| Ok(host::attention(&shape, &mut seqs, cos, sin, c.rope_interleaved)))
            })?;
            host::add_assign(&mut x, &block.o.forward_host(layer, &attn, rows, lora)?);
            let h = with_f32(&block.ffn_norm, |w| Ok(host::rms_norm(&x, w, eps)))?;
            let gate_up = block.gate_up.forward_host(layer, &h, rows, lora)?;
            let act = host::swiglu(&gate_up, c.intermediate_size);
            host::add_assign(&mut x, &block.down.forward_host(layer, &act, rows, lora)?);
        }
        let hidden = c.hidden_size;
        let last: Vec<f32> =
            Self::last_rows(steps).iter().flat_map(|&r| x[r as usize * hidden..][..hidden].iter().copied()).collect();
        let last = with_f32(&self.norm, |w| Ok(host::rms_norm(&last, w, eps)))?;
        let logits = self.output.forward_host(&last, steps.len(), None)?;
        Ok(Tensor::from_vec(logits, (steps.len(), c.vocab_size), &self.device)?)
    }

    /// The embedding rows of `ids`, `(ids, hidden)` row-major.
    fn embed_rows(&self, ids: &[u32]) -> Result<Vec<f32>> {
        match &self.embedding {
            Embedding::Dense(table) => {
                Ok(table.index_select(&Tensor::new(ids, &self.device)?, 0)?.flatten_all()?.to_vec1()?)
            }
            Embedding::Blocks(table) => {
                let hidden = self.config.hidden_size;
                let mut rows = vec![0f32; ids.len() * hidden];
                for (&id, row) in ids.iter().zip(rows.chunks_exact_mut(hidden)) {
                    table.dequantize_row(id as usize, row);
                }
                Ok(rows)
            }
            Embedding::Quantized(table) => {
                let dtype = table.dtype();
                let hidden = self.config.hidden_size;
                let row_bytes = hidden / dtype.block_size() * dtype.type_size();
                let data = table.data()?;
                let rows = ids
                    .iter()
                    .map(|&id| {
                        let start = id as usize * row_bytes;
                        let bytes = Cow::Borrowed(&data[start..start + row_bytes]);
                        let row = QTensor::new(QStorage::from_data(bytes, &self.device, dtype)?, (1, hidden))?;
                        Ok(row.dequantize(&self.device)?)
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::cat(&rows, 0)?.flatten_all()?.to_vec1()?)
            }
        }
    }

    fn block_forward(
        &self,
        layer: usize,
        block: &Block,
        x: &Tensor,
        steps: &mut [SeqStep<'_>],
        lora: &LoraPlan,
    ) -> Result<Tensor> {
        let c = &self.config;
        let eps = c.rms_norm_eps as f32;
        let h = candle_nn::ops::rms_norm(x, &block.attn_norm, eps)?;
        let [q, k, v]: [Tensor; 3] =
            block.qkv.forward(layer, &h, lora)?.try_into().map_err(|_| MlError::corrupt("model", "q/k/v group"))?;
        let mut outputs = Vec::with_capacity(steps.len());
        let mut row = 0;
        for step in steps.iter_mut() {
            let t = step.tokens.len();
            let attn =
                self.attention(layer, &q.narrow(0, row, t)?, &k.narrow(0, row, t)?, &v.narrow(0, row, t)?, step.cache)?;
            outputs.push(attn);
            row += t;
        }
        let attn = Tensor::cat(&outputs, 0)?;
        let x = (x + block.o.single(layer, &attn, lora)?)?;
        let h = candle_nn::ops::rms_norm(&x, &block.ffn_norm, eps)?;
        let [gate, up]: [Tensor; 2] = block
            .gate_up
            .forward(layer, &h, lora)?
            .try_into()
            .map_err(|_| MlError::corrupt("model", "gate/up group"))?;
        let mlp = block.down.single(layer, &(candle_nn::ops::silu(&gate)? * up)?, lora)?;
        Ok((x + mlp)?)
    }

    /// Causal attention of `t` new rows of one sequence over its cache plus themselves.
    fn attention(&self, layer: usize, q: &Tensor, k: &Tensor, v: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let c = &self.config;
        let (t, d, past) = (q.dim(0)?, c.head_dim, cache.len);
        let heads_first = |x: &Tensor, heads: usize| -> Result<Tensor> {
            Ok(x.reshape((1, t, heads, d))?.transpose(1, 2)?.contiguous()?)
        };
        let cos = self.cos.narrow(0, past, t)?;
        let sin = self.sin.narrow(0, past, t)?;
        let rope = |x: Tensor| -> Result<Tensor> {
            Ok(if c.rope_interleaved {
                candle_nn::rotary_emb::rope_i(&x, &cos, &sin)?
            } else {
                candle_nn::rotary_emb::rope(&x, &cos, &sin)?
            })
        };
        let q = rope(heads_first(q, c.num_heads)?)?;
        let k = rope(heads_first(k, c.num_kv_heads)?)?;
        let v = heads_first(v, c.num_kv_heads)?;
        let KvLayers::Tensors(layers) = &cache.layers else {
            return Err(MlError::InvalidRequest("a KV cache made for another device".into()));
        };
        let (k_cache, v_cache) = &layers[layer];
        k_cache.slice_set(&k, 2, past)?;
        v_cache.slice_set(&v, 2, past)?;
        let total = past + t;
        let keys = k_cache.narrow(2, 0, total)?.squeeze(0)?.contiguous()?;
        let values = v_cache.narrow(2, 0, total)?.squeeze(0)?.contiguous()?;
        // Queries of one KV group side by side: (kv_heads, group * t, d), rows ordered (g, t).
        let group = c.group_size();
        let q = q.squeeze(0)?.reshape((c.num_kv_heads, group * t, d))?;
        let scores = (q.matmul(&keys.t()?)? * (1.0 / (d as f64).sqrt()))?;
        let scores = if t > 1 {
            let mask: Vec<f32> = (0..group * t)
                .flat_map(|r| {
                    let visible = past + r % t;
                    (0..total).map(move |j| if j <= visible { 0.0 } else { f32::NEG_INFINITY })
                })
                .collect();
            scores.broadcast_add(&Tensor::from_vec(mask, (group * t, total), &self.device)?)?
        } else {
            scores
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs.matmul(&values)?; // (kv_heads, group * t, d)
        Ok(out.reshape((c.num_heads, t, d))?.transpose(0, 1)?.reshape((t, c.num_heads * d))?)
    }

    /// Logits of the next token of one sequence run alone: a convenience for tests and benches.
    pub fn logits_for(&self, tokens: &[u32], cache: &mut KvCache, adapters: &AdapterMix) -> Result<Vec<f32>> {
        let logits = self.forward(&mut [SeqStep { tokens, cache, adapters }])?;
        Ok(logits.squeeze(0)?.to_vec1()?)
    }
}

fn gguf_error(path: &Path, e: candle_core::Error) -> MlError {
    let text = e.to_string();
    if text.contains("unknown dtype") || text.contains("unsupported") {
        MlError::unsupported("quantization", format!("{}: {text}", path.display()))
    } else {
        MlError::corrupt("model", format!("{}: {text}", path.display()))
    }
}

/// Reads `model.safetensors`, or every shard named by `model.safetensors.index.json`.
fn load_safetensors_dir(dir: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return read_safetensors(&single, device);
    }
    let index_path = dir.join("model.safetensors.index.json");
    let index = std::fs::read_to_string(&index_path).map_err(|e| MlError::io(&index_path, e))?;
    let index: serde_json::Value =
        serde_json::from_str(&index).map_err(|e| MlError::corrupt("safetensors index", e))?;
    let map = index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| MlError::corrupt("safetensors index", "no weight_map"))?;
    let mut shards: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
    shards.sort_unstable();
    shards.dedup();
    let mut all = HashMap::new();
    for shard in shards {
        if shard.contains('/') || shard.contains("..") {
            return Err(MlError::corrupt("safetensors index", format!("shard name {shard:?}")));
        }
        all.extend(read_safetensors(&dir.join(shard), device)?);
    }
    Ok(all)
}

pub(crate) fn read_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| MlError::io(path, e))?;
    candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| MlError::corrupt("safetensors", format!("{}: {e}", path.display())))
}

/// Last-dimension argmax of a logits row.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::adapters::load_adapter_dir;
    use crate::testing::{TinyModel, TinySpec, write_peft_adapter};

    /// The fused CPU path and the tensor path (used on other devices) give the same logits
    /// for a batch mixing prefill and decode rows, different adapters and models of every
    /// weight layout (stacked block kernels, candle's quantized and dense matmuls).
    #[test]
    fn host_path_matches_tensor_path() {
        let dir = tempfile::tempdir().unwrap();
        let tiny = TinyModel::new(TinySpec::default()).unwrap();
        let models = [
            LlamaModel::from_gguf(
                &tiny.write_gguf(&dir.path().join("q8.gguf"), GgmlDType::Q8_0).unwrap(),
                &Device::Cpu,
            ),
            LlamaModel::from_gguf(
                &tiny.write_gguf(&dir.path().join("q5.gguf"), GgmlDType::Q5_0).unwrap(),
                &Device::Cpu,
            ),
            LlamaModel::from_safetensors_dir(&tiny.write_safetensors(&dir.path().join("st")).unwrap(), &Device::Cpu),
        ];
        for (i, model) in models.into_iter().enumerate() {
            let mut model = model.unwrap();
            let adapter = |name: &str, targets: &[Target], seed| {
                let path = dir.path().join(format!("{i}-{name}"));
                write_peft_adapter(&path, model.config(), 4, targets, seed, false).unwrap();
                Arc::new(load_adapter_dir(name, &path, &model).unwrap())
            };
            let (a, b) = (adapter("a", &Target::ALL, 1), adapter("b", &[Target::Q, Target::Down], 2));
            let mixes = [
                AdapterMix(vec![(a.clone(), 1.0)]),
                AdapterMix::default(),
                AdapterMix(vec![(a.clone(), 0.5), (b, 1.0)]),
                AdapterMix(vec![(a, 1.0)]),
            ];
            // The fourth is long enough for the matrix attention path: two query blocks, then a
            // second chunk of prefill starting after its cached rows.
            let long: Vec<u32> = (0..70).map(|i| i % 40 + 1).collect();
            let prompts: [&[u32]; 4] = [&[1, 2, 3, 4, 5], &[9], &[40, 41, 42], &long];
            let mut run = |host: bool| {
                model.host = host;
                let mut caches: Vec<KvCache> = (0..4).map(|_| model.new_cache(128).unwrap()).collect();
                let mut outputs = Vec::new();
                // A prefill of all four, then a step where sequences decode and prefill.
                for round in [&prompts[..], &[&[7u32][..], &[8, 9][..], &[10][..], &long[..20]][..]] {
                    let mut steps: Vec<SeqStep<'_>> = caches
                        .iter_mut()
                        .zip(&mixes)
                        .zip(round)
                        .map(|((cache, adapters), tokens)| SeqStep { tokens, cache, adapters })
                        .collect();
                    outputs.extend(model.forward(&mut steps).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
                }
                outputs
            };
            let (fused, tensors) = (run(true), run(false));
            let worst = fused.iter().zip(&tensors).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            // Dense weights agree to rounding; quantized ones quantize their 8-bit activations
            // from inputs that differ in the last bits, which moves logits (of size ~2) by < 0.01.
            let tolerance = if i == 2 { 1e-4 } else { 1e-2 };
            assert!(worst < tolerance, "model {i}: the paths differ by {worst}");
        }
    }
}
