//! LoRA adapters in PEFT format (`adapter_config.json` + `adapter_model.safetensors`) and the
//! per-row application of their deltas inside a batched forward pass.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use crate::config::ModelConfig;
use crate::error::{MlError, Result};
use crate::host::add_assign;
use crate::kernels::adapter::{AdapterWeight, panel_len, q8};

/// One of the seven projections of a Llama block an adapter may target.
/// Serialized as the module name (`"q_proj"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Target {
    #[serde(rename = "q_proj")]
    Q,
    #[serde(rename = "k_proj")]
    K,
    #[serde(rename = "v_proj")]
    V,
    #[serde(rename = "o_proj")]
    O,
    #[serde(rename = "gate_proj")]
    Gate,
    #[serde(rename = "up_proj")]
    Up,
    #[serde(rename = "down_proj")]
    Down,
}

impl Target {
    pub const ALL: [Target; 7] = [Self::Q, Self::K, Self::V, Self::O, Self::Gate, Self::Up, Self::Down];

    /// The module name PEFT and Hugging Face use (`q_proj`, `gate_proj`, ...).
    pub fn module_name(self) -> &'static str {
        match self {
            Self::Q => "q_proj",
            Self::K => "k_proj",
            Self::V => "v_proj",
            Self::O => "o_proj",
            Self::Gate => "gate_proj",
            Self::Up => "up_proj",
            Self::Down => "down_proj",
        }
    }

    /// The Hugging Face parent module (`self_attn` or `mlp`).
    pub fn block_name(self) -> &'static str {
        match self {
            Self::Q | Self::K | Self::V | Self::O => "self_attn",
            Self::Gate | Self::Up | Self::Down => "mlp",
        }
    }

    /// The tensor name llama.cpp's GGUF files use (`blk.{i}.<name>.weight`).
    pub fn gguf_name(self) -> &'static str {
        match self {
            Self::Q => "attn_q",
            Self::K => "attn_k",
            Self::V => "attn_v",
            Self::O => "attn_output",
            Self::Gate => "ffn_gate",
            Self::Up => "ffn_up",
            Self::Down => "ffn_down",
        }
    }

    pub fn from_module_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.module_name() == name)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Largest rank accepted: PEFT adapters in practice use 4..256.
pub const MAX_LORA_RANK: usize = 1024;

/// `adapter_config.json`, the fields this engine reads.
#[derive(Clone, Debug, Deserialize)]
pub struct AdapterConfig {
    #[serde(default)]
    pub peft_type: Option<String>,
    pub r: usize,
    pub lora_alpha: f32,
    pub target_modules: TargetModules,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub rank_pattern: HashMap<String, serde_json::Value>,
    #[serde(default)]
    pub alpha_pattern: HashMap<String, serde_json::Value>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    List(Vec<String>),
    One(String),
}

impl AdapterConfig {
    pub fn parse(json: &str) -> Result<Self> {
        let config: Self = serde_json::from_str(json).map_err(|e| MlError::corrupt("adapter_config.json", e))?;
        if config.peft_type.as_deref().is_some_and(|t| t != "LORA") {
            return Err(MlError::unsupported("adapter type", format!("{:?} (only LORA)", config.peft_type)));
        }
        if config.r == 0 || config.r > MAX_LORA_RANK {
            return Err(MlError::corrupt(
                "adapter_config.json",
                format!("rank {} outside 1..={MAX_LORA_RANK}", config.r),
            ));
        }
        if !config.lora_alpha.is_finite() {
            return Err(MlError::corrupt("adapter_config.json", "lora_alpha is not finite"));
        }
        if config.use_dora
            || config.fan_in_fan_out
            || !config.rank_pattern.is_empty()
            || !config.alpha_pattern.is_empty()
        {
            return Err(MlError::unsupported(
                "adapter option",
                "DoRA, fan_in_fan_out, rank_pattern and alpha_pattern are not supported",
            ));
        }
        Ok(config)
    }

    /// The scale applied to `B·A·x`: `alpha / r`, or `alpha / sqrt(r)` for rsLoRA.
    pub fn scale(&self) -> f32 {
        if self.use_rslora { self.lora_alpha / (self.r as f32).sqrt() } else { self.lora_alpha / self.r as f32 }
    }

    /// Targets named in the config (`"all-linear"` means all seven).
    pub fn targets(&self) -> Result<Vec<Target>> {
        let names: Vec<&str> = match &self.target_modules {
            TargetModules::One(s) if s == "all-linear" => return Ok(Target::ALL.to_vec()),
            TargetModules::One(s) => vec![s.as_str()],
            TargetModules::List(list) => list.iter().map(String::as_str).collect(),
        };
        names
            .into_iter()
            .map(|n| {
                Target::from_module_name(n).ok_or_else(|| {
                    MlError::unsupported("LoRA target", format!("{n:?} (supported: q/k/v/o/gate/up/down_proj)"))
                })
            })
            .collect()
    }
}

/// `A` (rank × in) and `B` (out × rank) of one projection of one layer (the adapter's scale is
/// applied with the mixing weight, per row, when the batch is planned).
///
/// On the CPU both are held in panels (`kernels::adapter`), the order the delta products read
/// them in, in one buffer per adapter. When every row of a batch reads its own adapter these
/// reads cost as much as the base model's, so for serving ([`AdapterPrecision::Serving`]) they
/// are held in as few bytes as keep the deltas' accuracy:
/// - **8-bit panels** (the default, [`AdapterPanels::Q8`]) where the widths allow (`A`'s input
///   width a multiple of 32, the rank a multiple of 16: every Llama shape at ranks 16, 32,
///   64, ...): Q8_0 blocks (32 values, or 16 for a rank-16 `B`, an f16 scale each) after a
///   per-matrix power-of-two factor, multiplied by 8-bit integer dot products against the rows
///   quantized as the base model's projections quantize them (shared with them where the base
///   is in a panel format), each `u = A·x` quantized again for `B`. A quarter of f32's bytes,
///   and about half of f16's; the storage llama.cpp's `q8_0` LoRA files use.
/// - **f16 panels** otherwise (rank 4 or 8, say), or everywhere with
///   `OPENLEDGER_ADAPTER_PANELS=f16`: products in f32, each weight rounded to 11 significant
///   bits, as llama.cpp's f16 LoRA files and vLLM's f16 adapters hold them.
///
/// An adapter with a value neither can hold (beyond f16's range, for f16 panels) stays f32.
/// Other devices hold the PEFT tensors, f32.
#[derive(Clone, Debug)]
pub struct LoraPair {
    rank: usize,
    in_features: usize,
    out_features: usize,
    held: Held,
}

#[derive(Clone, Debug)]
enum Held {
    /// `A` and `B` in panels at these element offsets of the adapter's buffer.
    Panels {
        buffer: Arc<HostPanels>,
        a: usize,
        b: usize,
    },
    Tensors {
        a: Tensor,
        b: Tensor,
    },
}

/// An adapter's weights on the CPU, every pair's `A` then `B` in panels, pair after pair.
#[derive(Debug)]
pub(crate) enum HostPanels {
    /// 8-bit panels (`kernels::adapter::q8`), each matrix its bytes.
    Q8(Vec<u8>),
    F16(Vec<half::f16>),
    F32(Vec<f32>),
}

impl HostPanels {
    /// The `rows × cols` matrix whose panels start at element `at`, row-major, as a tensor of
    /// the held type.
    fn unpacked(&self, at: usize, (rows, cols): (usize, usize)) -> Result<Tensor> {
        fn unpack<W: AdapterWeight>(w: &[W], at: usize, (rows, cols): (usize, usize)) -> Result<Tensor> {
            let len = panel_len(rows, cols);
            let values = crate::kernels::adapter::unpack(&w[at..at + len], rows, cols);
            Ok(Tensor::from_vec(values, (rows, cols), &Device::Cpu)?)
        }
        match self {
            Self::Q8(w) => {
                let values = q8::unpack(&w[at..at + q8::q8_len(rows, cols)], rows, cols);
                Ok(Tensor::from_vec(values, (rows, cols), &Device::Cpu)?)
            }
            Self::F16(w) => unpack(w, at, (rows, cols)),
            Self::F32(w) => unpack(w, at, (rows, cols)),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Self::Q8(v) => v.len(),
            Self::F16(v) => v.len() * 2,
            Self::F32(v) => v.len() * 4,
        }
    }

    /// Elements held (bytes, for 8-bit panels): the unit of a pair's offsets.
    fn len(&self) -> usize {
        match self {
            Self::Q8(v) => v.len(),
            Self::F16(v) => v.len(),
            Self::F32(v) => v.len(),
        }
    }

    /// Elements (or bytes) a `rows × cols` matrix takes in these panels.
    pub(crate) fn matrix_len(&self, rows: usize, cols: usize) -> usize {
        match self {
            Self::Q8(_) => q8::q8_len(rows, cols),
            Self::F16(_) | Self::F32(_) => panel_len(rows, cols),
        }
    }
}

impl LoraPair {
    /// `A` as PEFT holds it (rank × in), in the type it is held in (f16 when loaded for serving
    /// on the CPU), on the adapter's device.
    pub fn a(&self) -> Result<Tensor> {
        match &self.held {
            Held::Tensors { a, .. } => Ok(a.clone()),
            Held::Panels { buffer, a, .. } => buffer.unpacked(*a, (self.rank, self.in_features)),
        }
    }

    /// `B` (out × rank), likewise; for GGUF bases with its q/k rows permuted like the base's.
    pub fn b(&self) -> Result<Tensor> {
        match &self.held {
            Held::Tensors { b, .. } => Ok(b.clone()),
            Held::Panels { buffer, b, .. } => buffer.unpacked(*b, (self.out_features, self.rank)),
        }
    }
}

/// The panels adapters are held in for serving on the CPU: 8-bit where the widths allow (the
/// default), or f16 (`OPENLEDGER_ADAPTER_PANELS=f16`: more exact deltas, twice the bytes to
/// read a step); see [`LoraPair`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdapterPanels {
    Q8,
    F16,
}

impl AdapterPanels {
    /// What `OPENLEDGER_ADAPTER_PANELS` names (`q8` or `f16`; unset or anything else: `q8`),
    /// read once.
    pub fn chosen() -> Self {
        static CHOSEN: std::sync::OnceLock<AdapterPanels> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| match std::env::var(ADAPTER_PANELS_ENV).as_deref() {
            Ok("f16") => Self::F16,
            Ok("q8") | Err(_) => Self::Q8,
            Ok(other) => {
                tracing::warn!("{ADAPTER_PANELS_ENV}={other:?} is not q8 or f16: adapters use 8-bit panels");
                Self::Q8
            }
        })
    }
}

/// The environment variable that picks [`AdapterPanels`].
pub const ADAPTER_PANELS_ENV: &str = "OPENLEDGER_ADAPTER_PANELS";

/// How a loaded adapter holds its weights on the CPU (other devices always hold f32).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AdapterPrecision {
    /// 8-bit or f16 panels (see [`LoraPair`]): for serving.
    #[default]
    Serving,
    /// f32, exactly the file's values: for training from an adapter and for its gradients.
    Exact,
}

/// A loaded adapter: per layer and target an optional pair, already fitted to the base model
/// (shape-checked, and for GGUF bases with q/k rows permuted like the base weights).
#[derive(Debug)]
pub struct LoraAdapter {
    pub id: String,
    pub rank: usize,
    pub scale: f32,
    pairs: Vec<[Option<LoraPair>; 7]>,
    bytes: usize,
}

impl LoraAdapter {
    /// Builds an adapter from PEFT tensors (`...layers.{i}.{block}.{module}.lora_{A,B}.weight`).
    pub fn from_peft(
        id: &str,
        config: &AdapterConfig,
        tensors: HashMap<String, Tensor>,
        base: &ModelConfig,
        device: &Device,
        precision: AdapterPrecision,
    ) -> Result<Self> {
        let tensors = tensors
            .into_iter()
            .map(|(name, tensor)| Ok((name, PeftTensor::from_tensor(&tensor)?)))
            .collect::<Result<Vec<_>>>()?;
        Self::build(id, config, tensors, base, device, precision)
    }

    /// Builds an adapter from a parsed `adapter_model.safetensors` (a mapped file, say),
    /// converting each tensor once, straight from the file's bytes into the adapter's buffer.
    pub fn from_safetensors(
        id: &str,
        config: &AdapterConfig,
        file: &SafeTensors<'_>,
        base: &ModelConfig,
        device: &Device,
        precision: AdapterPrecision,
    ) -> Result<Self> {
        let tensors =
            file.iter().map(|(name, view)| Ok((name, PeftTensor::from_view(&view)?))).collect::<Result<Vec<_>>>()?;
        Self::build(id, config, tensors, base, device, precision)
    }

    /// Checks the tensors' names, layers, targets, pairing and shapes against `config` and
    /// `base`, then converts them (q/k `B` rows permuted for bases with interleaved RoPE): on
    /// the CPU into one buffer of panels, on other devices into a tensor each.
    fn build<'a>(
        id: &str,
        config: &AdapterConfig,
        tensors: Vec<(impl AsRef<str>, PeftTensor<'a>)>,
        base: &ModelConfig,
        device: &Device,
        precision: AdapterPrecision,
    ) -> Result<Self> {
        let mismatch = |detail: String| MlError::AdapterMismatch { adapter: id.to_string(), detail };
        let targets = config.targets()?;
        let scale = config.scale();
        let mut halves: BTreeMap<(usize, Target), (Option<PeftTensor<'a>>, Option<PeftTensor<'a>>)> = BTreeMap::new();
        for (name, tensor) in tensors {
            let name = name.as_ref();
            let Some((layer, target, is_a)) = parse_peft_name(name) else {
                return Err(MlError::corrupt("adapter_model.safetensors", format!("unexpected tensor {name:?}")));
            };
            if layer >= base.num_layers {
                return Err(mismatch(format!("tensor {name} is for layer {layer}, the base has {}", base.num_layers)));
            }
            if !targets.contains(&target) {
                return Err(MlError::corrupt(
                    "adapter_model.safetensors",
                    format!("tensor {name} targets {} which adapter_config.json does not list", target.module_name()),
                ));
            }
            let slot = halves.entry((layer, target)).or_default();
            if is_a { slot.0 = Some(tensor) } else { slot.1 = Some(tensor) }
        }
        if halves.is_empty() {
            return Err(MlError::corrupt("adapter_model.safetensors", "no LoRA tensors"));
        }
        let mut pairs = Vec::with_capacity(halves.len());
        for ((layer, target), (a, b)) in halves {
            let (Some(a), Some(b)) = (a, b) else {
                return Err(MlError::corrupt(
                    "adapter_model.safetensors",
                    format!("layer {layer} {} has only one of lora_A / lora_B", target.module_name()),
                ));
            };
            let (in_features, out_features) = base.projection_shape(target);
            if a.shape != [config.r, in_features] || b.shape != [out_features, config.r] {
                return Err(mismatch(format!(
                    "layer {layer} {}: A {:?} and B {:?}, the base needs A [{}, {in_features}] and B [{out_features}, {}]",
                    target.module_name(),
                    a.shape,
                    b.shape,
                    config.r,
                    config.r
                )));
            }
            pairs.push(((layer, target), a, b));
        }
        let mut slots: Vec<[Option<LoraPair>; 7]> = (0..base.num_layers).map(|_| Default::default()).collect();
        let shape = |a: &PeftTensor<'_>, b: &PeftTensor<'_>| (a.shape[0], a.shape[1], b.shape[0]);
        // The source row of each row of `B`: permuted for bases with interleaved RoPE.
        let b_order = |target: Target, rows: usize| -> Option<Vec<usize>> {
            base.interleaved_rope_heads(target).map(|heads| interleaved_rope_order(rows, heads).collect())
        };
        let bytes = if device.is_cpu() {
            let eight_bits = precision == AdapterPrecision::Serving
                && AdapterPanels::chosen() == AdapterPanels::Q8
                && pairs
                    .iter()
                    .all(|(_, a, b)| q8::q8_block(a.shape[1]).is_some() && q8::q8_block(b.shape[1]).is_some());
            let packed = eight_bits
                .then(|| {
                    pack_pairs(&pairs, &b_order, q8::q8_len, |t, order, scratch, out| t.pack_q8(order, scratch, out))
                })
                .flatten()
                .map(|(w, offsets)| (HostPanels::Q8(w), offsets));
            let packed = match precision {
                AdapterPrecision::Serving => packed.or_else(|| {
                    pack_pairs(&pairs, &b_order, panel_len, |t, order, scratch, out| {
                        t.pack::<half::f16>(order, scratch, out)
                    })
                    .map(|(w, offsets)| (HostPanels::F16(w), offsets))
                }),
                AdapterPrecision::Exact => None,
            };
            let (weights, offsets) = match packed {
                Some(packed) => packed,
                None => {
                    let (w, o) = pack_pairs(&pairs, &b_order, panel_len, |t, order, scratch, out| {
                        t.pack::<f32>(order, scratch, out)
                    })
                    .expect("every value is held as f32");
                    (HostPanels::F32(w), o)
                }
            };
            let buffer = Arc::new(weights);
            for (((layer, target), a, b), (a_at, b_at)) in pairs.iter().zip(offsets) {
                let (rank, in_features, out_features) = shape(a, b);
                let held = Held::Panels { buffer: buffer.clone(), a: a_at, b: b_at };
                slots[*layer][target.index()] = Some(LoraPair { rank, in_features, out_features, held });
            }
            buffer.bytes()
        } else {
            let mut elements = 0;
            for ((layer, target), a, b) in &pairs {
                let (rank, in_features, out_features) = shape(a, b);
                let mut a_values: Vec<f32> = Vec::with_capacity(a.len());
                a.for_each_chunk(std::iter::once(0..a.len()), &mut a_values);
                let mut b_values: Vec<f32> = Vec::with_capacity(b.len());
                match b_order(*target, out_features) {
                    Some(order) => b.for_each_row_chunk(order.into_iter(), &mut b_values),
                    None => b.for_each_chunk(std::iter::once(0..b.len()), &mut b_values),
                }
                let held = Held::Tensors {
                    a: Tensor::from_vec(a_values, (rank, in_features), device)?,
                    b: Tensor::from_vec(b_values, (out_features, rank), device)?,
                };
                slots[*layer][target.index()] = Some(LoraPair { rank, in_features, out_features, held });
                elements += a.len() + b.len();
            }
            elements * 4
        };
        Ok(Self { id: id.to_string(), rank: config.r, scale, pairs: slots, bytes })
    }

    /// Every (layer, target) the adapter covers, with its pair.
    pub fn pairs(&self) -> impl Iterator<Item = ((usize, Target), &LoraPair)> {
        self.pairs.iter().enumerate().flat_map(|(layer, slots)| {
            Target::ALL.into_iter().zip(slots).filter_map(move |(t, p)| Some(((layer, t), p.as_ref()?)))
        })
    }

    pub fn pair(&self, layer: usize, target: Target) -> Option<&LoraPair> {
        self.pairs.get(layer).and_then(|p| p[target.index()].as_ref())
    }

    /// Bytes of adapter weights held in memory (what the adapter cache budgets).
    pub fn size_bytes(&self) -> usize {
        self.bytes
    }

    /// The adapter's buffer of panels and where each pair lies in it, if it is held on the CPU
    /// in panels (what `saved_panels` writes).
    pub(crate) fn panels(&self) -> Option<(Arc<HostPanels>, Vec<SavedPair>)> {
        let mut buffer = None;
        let mut pairs = Vec::new();
        for ((layer, target), pair) in self.pairs() {
            let Held::Panels { buffer: held, a, b } = &pair.held else { return None };
            buffer = Some(held);
            pairs.push(SavedPair {
                layer,
                target,
                rank: pair.rank,
                in_features: pair.in_features,
                out_features: pair.out_features,
                a: *a,
                b: *b,
            });
        }
        Some((buffer?.clone(), pairs))
    }

    /// An adapter from a buffer of panels and its pairs' places in it (read back by
    /// `saved_panels`), with the checks [`Self::from_safetensors`] makes of a file's tensors
    /// (every pair of a target `config` lists, of a layer `base` has, of the rank `config` names
    /// and the shapes `base` needs) and laid out exactly as the packing lays them: in (layer,
    /// target) order, each `A` then its `B`, one after the other from the start to the end of
    /// the buffer.
    pub(crate) fn from_panels(
        id: &str,
        config: &AdapterConfig,
        base: &ModelConfig,
        buffer: HostPanels,
        saved: &[SavedPair],
    ) -> Result<Self> {
        let corrupt = |detail: String| MlError::corrupt("saved adapter panels", detail);
        let targets = config.targets()?;
        let elements = buffer.len();
        let buffer = Arc::new(buffer);
        let mut slots: Vec<[Option<LoraPair>; 7]> = (0..base.num_layers).map(|_| Default::default()).collect();
        let (mut next, mut previous) = (0usize, None);
        for pair in saved {
            let (in_features, out_features) = base.projection_shape(pair.target);
            let a_len = buffer.matrix_len(config.r, in_features);
            let in_order = previous.is_none_or(|p| p < (pair.layer, pair.target));
            if pair.layer >= base.num_layers
                || !targets.contains(&pair.target)
                || (pair.rank, pair.in_features, pair.out_features) != (config.r, in_features, out_features)
                || !in_order
                || (pair.a, pair.b) != (next, next + a_len)
            {
                return Err(corrupt(format!("{pair:?} does not fit the adapter, the base or the pairs before it")));
            }
            let b_len = buffer.matrix_len(out_features, config.r);
            if let HostPanels::Q8(w) = buffer.as_ref()
                && !(w.get(pair.a..pair.b).is_some_and(|a| q8::sound(a, config.r, in_features))
                    && w.get(pair.b..pair.b + b_len).is_some_and(|b| q8::sound(b, out_features, config.r)))
            {
                return Err(corrupt(format!("{pair:?}: 8-bit panels with a scale that is not finite")));
            }
            next = pair.b + b_len;
            previous = Some((pair.layer, pair.target));
            let held = Held::Panels { buffer: buffer.clone(), a: pair.a, b: pair.b };
            slots[pair.layer][pair.target.index()] =
                Some(LoraPair { rank: pair.rank, in_features, out_features, held });
        }
        if saved.is_empty() || next != elements {
            return Err(corrupt(format!("{} pairs take {next} of {elements} values", saved.len())));
        }
        Ok(Self { id: id.to_string(), rank: config.r, scale: config.scale(), pairs: slots, bytes: buffer.bytes() })
    }
}

/// Where one pair of an adapter lies in its buffer of panels (element offsets of `A` and `B`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
pub(crate) struct SavedPair {
    pub layer: usize,
    pub target: Target,
    pub rank: usize,
    pub in_features: usize,
    pub out_features: usize,
    pub a: usize,
    pub b: usize,
}

/// One half of a PEFT pair as the file holds it: its shape, and its elements not yet converted.
struct PeftTensor<'a> {
    shape: Vec<usize>,
    elements: Elements<'a>,
}

enum Elements<'a> {
    /// Little-endian bytes of the dtypes PEFT writes, read in place (from a mapped file).
    F32(&'a [u8]),
    F16(&'a [u8]),
    Bf16(&'a [u8]),
    /// Any other dtype candle reads, or a tensor already in memory, converted to f32.
    Host(Vec<f32>),
}

impl<'a> PeftTensor<'a> {
    fn from_view(view: &TensorView<'a>) -> Result<Self> {
        let elements = match view.dtype() {
            Dtype::F32 => Elements::F32(view.data()),
            Dtype::F16 => Elements::F16(view.data()),
            Dtype::BF16 => Elements::Bf16(view.data()),
            _ => Elements::Host(view.load(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?),
        };
        Ok(Self { shape: view.shape().to_vec(), elements })
    }

    fn from_tensor(tensor: &Tensor) -> Result<Self> {
        let elements = tensor.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        Ok(Self { shape: tensor.dims().to_vec(), elements: Elements::Host(elements) })
    }

    fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Gives `sink` the elements of each of `ranges` in turn, in order: f32 bytes as the file
    /// holds them, other dtypes converted to f32 a few hundred at a time on the stack.
    fn for_each_chunk(&self, ranges: impl IntoIterator<Item = std::ops::Range<usize>>, sink: &mut dyn Sink) {
        const CHUNK: usize = 512;
        let mut chunk = [0f32; CHUNK];
        let mut halves = [half::f16::ZERO; CHUNK];
        for range in ranges {
            let mut each = |bytes: &[u8], decode: &mut dyn FnMut(&[u8], &mut [f32])| {
                for part in bytes[range.start * 2..range.end * 2].chunks(CHUNK * 2) {
                    let n = part.len() / 2;
                    decode(part, &mut chunk[..n]);
                    sink.push(&chunk[..n]);
                }
            };
            match &self.elements {
                Elements::F32(bytes) => sink.push_le(&bytes[range.start * 4..range.end * 4]),
                Elements::F16(bytes) => each(bytes, &mut |part, out| {
                    let halves = &mut halves[..out.len()];
                    for (h, b) in halves.iter_mut().zip(part.chunks_exact(2)) {
                        *h = half::f16::from_le_bytes([b[0], b[1]]);
                    }
                    half::slice::HalfFloatSliceExt::convert_to_f32_slice(&*halves, out);
                }),
                Elements::Bf16(bytes) => each(bytes, &mut |part, out| {
                    for (o, b) in out.iter_mut().zip(part.chunks_exact(2)) {
                        *o = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
                    }
                }),
                Elements::Host(values) => values[range].chunks(CHUNK).for_each(|c| sink.push(c)),
            }
        }
    }

    /// Appends this 2-D tensor to `out` in panels of `W`, its rows in `order` if given (else as
    /// they are): f32 bytes read in place, other dtypes converted into `scratch` first. False
    /// if a value does not fit a `W`.
    fn pack<W: AdapterWeight>(&self, order: Option<&[usize]>, scratch: &mut Vec<u8>, out: &mut Vec<W>) -> bool {
        let rows = self.shape[0];
        W::pack(rows, &self.rows(order, scratch), out)
    }

    /// [`Self::pack`] into 8-bit panels (`kernels::adapter::q8`); false if they cannot hold it.
    fn pack_q8(&self, order: Option<&[usize]>, scratch: &mut Vec<u8>, out: &mut Vec<u8>) -> bool {
        q8::pack(self.shape[0], &self.rows(order, scratch), out)
    }

    /// This 2-D tensor as f32 rows, in `order` if given: f32 bytes read in place, other dtypes
    /// converted into `scratch` first.
    fn rows<'s>(&'s self, order: Option<&'s [usize]>, scratch: &'s mut Vec<u8>) -> crate::kernels::adapter::Rows<'s> {
        let bytes: &[u8] = match &self.elements {
            Elements::F32(bytes) => bytes,
            _ => {
                scratch.clear();
                self.for_each_chunk(std::iter::once(0..self.len()), scratch);
                scratch
            }
        };
        crate::kernels::adapter::Rows { bytes, cols: self.shape[1], order }
    }

    /// [`Self::for_each_chunk`] over the given rows of this 2-D tensor, in that order.
    fn for_each_row_chunk(&self, rows: impl Iterator<Item = usize>, sink: &mut dyn Sink) {
        let cols = self.shape[1];
        self.for_each_chunk(rows.map(|row| row * cols..(row + 1) * cols), sink);
    }
}

/// Where a loader's values go, converted as they arrive.
trait Sink {
    fn push(&mut self, values: &[f32]);
    /// Little-endian f32 values, as a file holds them.
    fn push_le(&mut self, bytes: &[u8]);
}

impl Sink for Vec<f32> {
    fn push(&mut self, values: &[f32]) {
        self.extend_from_slice(values);
    }

    fn push_le(&mut self, bytes: &[u8]) {
        self.extend(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
    }
}

impl Sink for Vec<u8> {
    fn push(&mut self, values: &[f32]) {
        self.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    }

    fn push_le(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// One pair of an adapter being built: where it goes, and its `A` and `B` as the file holds them.
type SourcePair<'a> = ((usize, Target), PeftTensor<'a>, PeftTensor<'a>);

/// An adapter's buffer of panels, and the element offsets of each pair's `A` and `B` in it.
type Packed<W> = (Vec<W>, Vec<(usize, usize)>);

/// Every pair's `A` then `B` in panels of `W` (`len(rows, cols)` elements a matrix, appended by
/// `pack`), pair after pair, in one buffer (its pages present before it is written), with the
/// element offsets of each pair's `A` and `B`; `B`'s rows in `b_order(target, rows)` where that
/// gives an order. `None` if `pack` refuses a matrix (a value an f16 cannot hold, say: see
/// `AdapterWeight::fits`), so that no weight ever becomes infinite by being stored.
fn pack_pairs<W: bytemuck::Pod>(
    pairs: &[SourcePair<'_>],
    b_order: &dyn Fn(Target, usize) -> Option<Vec<usize>>,
    len: fn(usize, usize) -> usize,
    pack: impl Fn(&PeftTensor<'_>, Option<&[usize]>, &mut Vec<u8>, &mut Vec<W>) -> bool,
) -> Option<Packed<W>> {
    let elements = pairs.iter().map(|(_, a, b)| len(a.shape[0], a.shape[1]) + len(b.shape[0], b.shape[1])).sum();
    let mut out = crate::memory::prefaulted::<W>(elements);
    let mut offsets = Vec::with_capacity(pairs.len());
    let mut scratch = Vec::new();
    for ((_, target), a, b) in pairs {
        let a_at = out.len();
        if !pack(a, None, &mut scratch, &mut out) {
            return None;
        }
        let b_at = out.len();
        if !pack(b, b_order(*target, b.shape[0]).as_deref(), &mut scratch, &mut out) {
            return None;
        }
        offsets.push((a_at, b_at));
    }
    debug_assert_eq!(out.len(), elements);
    Some((out, offsets))
}

/// The source row of each row of `permute_for_interleaved_rope`'s output, in output order:
/// within each head, "two halves" rows `i` and `half + i` become the pair `2i`, `2i + 1`.
fn interleaved_rope_order(rows: usize, heads: usize) -> impl Iterator<Item = usize> {
    let head_dim = rows / heads;
    let half = head_dim / 2;
    (0..rows).map(move |row| {
        let (head, within) = (row / head_dim, row % head_dim);
        head * head_dim + (within % 2) * half + within / 2
    })
}

/// Parses `base_model.model.model.layers.{i}.{self_attn|mlp}.{module}.lora_{A|B}.weight`.
pub(crate) fn parse_peft_name(name: &str) -> Option<(usize, Target, bool)> {
    let rest = name.split_once("layers.")?.1;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let mut parts = rest.split('.');
    let block = parts.next()?;
    let target = Target::from_module_name(parts.next()?)?;
    if block != target.block_name() {
        return None;
    }
    let is_a = match parts.next()? {
        "lora_A" => true,
        "lora_B" => false,
        _ => return None,
    };
    (parts.next()? == "weight" && parts.next().is_none()).then_some((layer, target, is_a))
}

/// The PEFT tensor name of one half of a pair (used by writers of adapters and tests).
pub fn peft_tensor_name(layer: usize, target: Target, a: bool) -> String {
    format!(
        "base_model.model.model.layers.{layer}.{}.{}.lora_{}.weight",
        target.block_name(),
        target.module_name(),
        if a { "A" } else { "B" }
    )
}

/// llama.cpp's converter reorders the rows of each q/k head from "two halves" to "interleaved
/// pairs" so that GGUF models use interleaved RoPE; rows of a LoRA `B` must move the same way.
pub fn permute_for_interleaved_rope(rows: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, cols) = rows.dims2()?;
    let head_dim = out / heads;
    Ok(rows.reshape((heads, 2, head_dim / 2, cols))?.transpose(1, 2)?.reshape((out, cols))?)
}

/// The inverse of `permute_for_interleaved_rope`: GGUF's q/k rows back in Hugging Face order.
pub fn unpermute_for_interleaved_rope(rows: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, cols) = rows.dims2()?;
    let head_dim = out / heads;
    Ok(rows.reshape((heads, head_dim / 2, 2, cols))?.transpose(1, 2)?.reshape((out, cols))?)
}

/// The adapters a sequence runs with: one, or a weighted linear combination.
#[derive(Clone, Debug, Default)]
pub struct AdapterMix(pub Vec<(Arc<LoraAdapter>, f32)>);

/// Token rows of a batch grouped by adapter (Punica's SGMV layout). On the CPU each task takes
/// up to four rows of one adapter through every projection of a group (`apply_host`); on other
/// devices one gather, two small matmuls and one scatter-add per adapter and projection.
pub(crate) struct LoraPlan {
    groups: Vec<LoraGroup>,
}

struct LoraGroup {
    adapter: Arc<LoraAdapter>,
    rows: Vec<u32>,
    weights: Vec<f32>,
    /// The same rows and weights as tensors, for devices other than the CPU.
    row_tensor: Tensor,
    weight_tensor: Tensor,
}

impl LoraPlan {
    /// `row_mixes[i]` is the mix of token row `i`.
    pub(crate) fn new(row_mixes: &[&AdapterMix], device: &Device) -> Result<Self> {
        let mut by_adapter: Vec<(Arc<LoraAdapter>, Vec<u32>, Vec<f32>)> = Vec::new();
        for (row, mix) in row_mixes.iter().enumerate() {
            for (adapter, weight) in &mix.0 {
                if *weight == 0.0 {
                    continue;
                }
                let row = u32::try_from(row).map_err(|_| MlError::InvalidRequest("batch too large".into()))?;
                let weight = weight * adapter.scale;
                match by_adapter.iter_mut().find(|(a, _, _)| Arc::ptr_eq(a, adapter)) {
                    Some((_, rows, weights)) => {
                        rows.push(row);
                        weights.push(weight);
                    }
                    None => by_adapter.push((adapter.clone(), vec![row], vec![weight])),
                }
            }
        }
        let groups = by_adapter
            .into_iter()
            .map(|(adapter, rows, weights)| {
                let n = rows.len();
                Ok(LoraGroup {
                    adapter,
                    row_tensor: Tensor::from_vec(rows.clone(), n, device)?,
                    weight_tensor: Tensor::from_vec(weights.clone(), (n, 1), device)?,
                    rows,
                    weights,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { groups })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Adds every group's `w · scale · B·A·x` to `out` (rows × out_features).
    pub(crate) fn apply(&self, layer: usize, target: Target, x: &Tensor, out: Tensor) -> Result<Tensor> {
        if x.device().is_cpu() {
            self.apply_cpu(layer, target, x, out)
        } else {
            self.apply_tensors(layer, target, x, out)
        }
    }

    /// Tensor operations, for any device: gather the group's rows, two matmuls, scatter-add.
    fn apply_tensors(&self, layer: usize, target: Target, x: &Tensor, out: Tensor) -> Result<Tensor> {
        let mut out = out;
        for group in &self.groups {
            let Some(pair) = group.adapter.pair(layer, target) else { continue };
            let xs = x.index_select(&group.row_tensor, 0)?;
            let (a, b) = (pair.a()?.to_dtype(xs.dtype())?, pair.b()?.to_dtype(xs.dtype())?);
            let delta = xs.matmul(&a.t()?)?.matmul(&b.t()?)?.broadcast_mul(&group.weight_tensor)?;
            out = out.index_add(&group.row_tensor, &delta, 0)?;
        }
        Ok(out)
    }

    /// The same on CPU, through `apply_host`.
    fn apply_cpu(&self, layer: usize, target: Target, x: &Tensor, out: Tensor) -> Result<Tensor> {
        let (n, in_features) = x.dims2()?;
        let out_features = out.dim(1)?;
        let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let mut ys: Vec<f32> = out.flatten_all()?.to_vec1()?;
        self.apply_host(
            layer,
            &[(target, 0)],
            &HostRows { xs: &xs, quantized: None, width: in_features },
            &mut ys,
            out_features,
        );
        Ok(Tensor::from_vec(ys, (n, out_features), x.device())?)
    }

    /// Adds the deltas of the projections `parts` (each a target and the offset of its outputs
    /// within rows of `stride` in `ys`: a stacked q/k/v or gate/up output) that read the same
    /// input rows (`input`), on CPU slices. Each task takes up to
    /// [`MAX_ROWS`](crate::kernels::adapter::MAX_ROWS) rows of one adapter and every part, so it
    /// reads that adapter's pairs of this layer once, front to back (they lie one after another
    /// in its buffer), for all of its rows; tasks spread over the thread pool, and the deltas
    /// are added afterwards, in order.
    pub(crate) fn apply_host(
        &self,
        layer: usize,
        parts: &[(Target, usize)],
        input: &HostRows<'_>,
        ys: &mut [f32],
        stride: usize,
    ) {
        use crate::kernels::adapter::MAX_ROWS;
        let tasks: Vec<(&LoraAdapter, &[u32], &[f32])> = self
            .groups
            .iter()
            .filter(|g| parts.iter().any(|(t, _)| g.adapter.pair(layer, *t).is_some()))
            .flat_map(|g| {
                g.rows.chunks(MAX_ROWS).zip(g.weights.chunks(MAX_ROWS)).map(move |(r, w)| (g.adapter.as_ref(), r, w))
            })
            .collect();
        let mut deltas: Vec<Vec<f32>> = vec![Vec::new(); tasks.len()];
        crate::pool::for_each_chunk(&mut deltas, 1, |t, out| {
            let (adapter, rows, weights) = tasks[t];
            out[0] = task_delta(adapter, layer, parts, input, rows, weights);
        });
        for ((adapter, rows, _), delta) in tasks.iter().zip(&deltas) {
            let mut at = 0;
            for &(target, offset) in parts {
                let Some(pair) = adapter.pair(layer, target) else { continue };
                for &row in rows.iter() {
                    let width = pair.out_features;
                    add_assign(&mut ys[row as usize * stride + offset..][..width], &delta[at..at + width]);
                    at += width;
                }
            }
        }
    }
}

/// The input rows of a projection group on the CPU: `xs`, rows of `width`, and where the base's
/// kernels quantized them (8-bit blocks of 32), those too, for the adapters' 8-bit panels.
pub(crate) struct HostRows<'a> {
    pub(crate) xs: &'a [f32],
    pub(crate) quantized: Option<&'a crate::kernels::Q8Activations>,
    pub(crate) width: usize,
}

/// Projections' outputs side by side in a row (`[q | k | v]`): each target with its offset
/// there, from each target with its width.
pub(crate) fn side_by_side(widths: &[(Target, usize)]) -> Vec<(Target, usize)> {
    let mut offset = 0;
    widths
        .iter()
        .map(|&(target, width)| {
            offset += width;
            (target, offset - width)
        })
        .collect()
}

/// One task's deltas: for each of `parts` the adapter covers at `layer`, in order, and each of
/// its rows `xs[row]` (of `in_features`), `weight · B·A·x` (`out_features` values), by two
/// panel products for all the rows at once: `u = weight·A·x`, then `Δ = B·u`.
fn task_delta(
    adapter: &LoraAdapter,
    layer: usize,
    parts: &[(Target, usize)],
    input: &HostRows<'_>,
    rows: &[u32],
    weights: &[f32],
) -> Vec<f32> {
    let pairs: Vec<&LoraPair> = parts.iter().filter_map(|(t, _)| adapter.pair(layer, *t)).collect();
    let buffer = match pairs.first().map(|p| &p.held) {
        Some(Held::Panels { buffer, .. }) => buffer,
        Some(Held::Tensors { .. }) => unreachable!("adapters on the CPU are held in panels"),
        None => return Vec::new(),
    };
    match buffer.as_ref() {
        HostPanels::Q8(w) => task_delta_q8(w, &pairs, input, rows, weights),
        HostPanels::F16(w) => task_delta_in(w, &pairs, input.xs, input.width, rows, weights),
        HostPanels::F32(w) => task_delta_in(w, &pairs, input.xs, input.width, rows, weights),
    }
}

/// [`task_delta`] on 8-bit panels: the rows quantized once for every pair's `A` (copied from
/// `quantized` where the base's kernels quantized them the same way), each `u` (weighted)
/// quantized for its `B`, in buffers each thread keeps from task to task.
fn task_delta_q8(
    buffer: &[u8],
    pairs: &[&LoraPair],
    &HostRows { xs, quantized, width: in_features }: &HostRows<'_>,
    rows: &[u32],
    weights: &[f32],
) -> Vec<f32> {
    use crate::kernels::Q8Activations;
    struct Scratch {
        x: Q8Activations,
        u: Vec<f32>,
        uq: Q8Activations,
        lanes: Vec<f32>,
    }
    thread_local! {
        static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch {
            x: Q8Activations::empty(),
            u: Vec::new(),
            uq: Q8Activations::empty(),
            lanes: Vec::new(),
        });
    }
    let n = rows.len();
    let mut delta = vec![0f32; n * pairs.iter().map(|p| p.out_features).sum::<usize>()];
    SCRATCH.with_borrow_mut(|Scratch { x, u, uq, lanes }| {
        match quantized.filter(|q| Some(q.block) == q8::q8_block(in_features)) {
            Some(quantized) => x.copy_rows(quantized, rows.iter().map(|&r| r as usize)),
            None => q8::quantize(rows.iter().map(|&r| &xs[r as usize * in_features..][..in_features]), in_features, x),
        }
        let mut rest = delta.as_mut_slice();
        for pair in pairs {
            let Held::Panels { a, b, .. } = pair.held else { unreachable!("adapters on the CPU are held in panels") };
            let (rank, cols, width) = (pair.rank, pair.in_features, pair.out_features);
            u.clear();
            u.resize(n * rank, 0.0);
            q8::products(&buffer[a..a + q8::q8_len(rank, cols)], rank, cols, x, u, lanes);
            for (u, weight) in u.chunks_exact_mut(rank).zip(weights) {
                u.iter_mut().for_each(|u| *u *= weight);
            }
            q8::quantize(u.chunks_exact(rank), rank, uq);
            let (mine, tail) = std::mem::take(&mut rest).split_at_mut(n * width);
            rest = tail;
            q8::products(&buffer[b..b + q8::q8_len(width, rank)], width, rank, uq, mine, lanes);
        }
    });
    delta
}

fn task_delta_in<W: AdapterWeight>(
    buffer: &[W],
    pairs: &[&LoraPair],
    xs: &[f32],
    in_features: usize,
    rows: &[u32],
    weights: &[f32],
) -> Vec<f32> {
    use crate::kernels::adapter::{MAX_ROWS, panel_len};
    let n = rows.len();
    let mut x: [&[f32]; MAX_ROWS] = [&[]; MAX_ROWS];
    for (x, &row) in x.iter_mut().zip(rows) {
        *x = &xs[row as usize * in_features..][..in_features];
    }
    let mut delta = vec![0f32; n * pairs.iter().map(|p| p.out_features).sum::<usize>()];
    let mut rest = delta.as_mut_slice();
    let mut u = Vec::new();
    for pair in pairs {
        let Held::Panels { a, b, .. } = pair.held else { unreachable!("adapters on the CPU are held in panels") };
        // The pair's own width, so that a pair not fitted to these inputs fails `products`'
        // checks instead of reading the wrong part of the buffer.
        let (rank, cols, width) = (pair.rank, pair.in_features, pair.out_features);
        u.clear();
        u.resize(n * rank, 0.0);
        {
            let mut outs: Vec<&mut [f32]> = u.chunks_exact_mut(rank).collect();
            W::products(&buffer[a..a + panel_len(rank, cols)], rank, cols, &x[..n], &mut outs);
        }
        for (u, weight) in u.chunks_exact_mut(rank).zip(weights) {
            u.iter_mut().for_each(|u| *u *= weight);
        }
        let us: Vec<&[f32]> = u.chunks_exact(rank).collect();
        let (mine, tail) = std::mem::take(&mut rest).split_at_mut(n * width);
        rest = tail;
        let mut outs: Vec<&mut [f32]> = mine.chunks_exact_mut(width).collect();
        W::products(&buffer[b..b + panel_len(width, rank)], width, rank, &us, &mut outs);
    }
    delta
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn peft_names_round_trip() {
        for target in Target::ALL {
            for a in [true, false] {
                let name = peft_tensor_name(7, target, a);
                assert_eq!(parse_peft_name(&name), Some((7, target, a)), "{name}");
            }
        }
        assert_eq!(parse_peft_name("base_model.model.model.layers.0.mlp.q_proj.lora_A.weight"), None);
        assert_eq!(parse_peft_name("base_model.model.model.layers.x.self_attn.q_proj.lora_A.weight"), None);
        assert_eq!(parse_peft_name("base_model.model.lm_head.lora_A.weight"), None);
    }

    /// A two-head, 16-wide base shape for adapters to be checked against.
    fn tiny_base(num_layers: usize, rope_interleaved: bool) -> ModelConfig {
        ModelConfig {
            architecture: "llama".into(),
            hidden_size: 16,
            intermediate_size: 32,
            num_layers,
            num_heads: 2,
            num_kv_heads: 1,
            head_dim: 8,
            vocab_size: 10,
            context_length: 8,
            rms_norm_eps: 1e-5,
            rope_theta: 1e4,
            rope_scaling: None,
            rope_interleaved,
            tie_word_embeddings: false,
        }
    }

    /// The CPU slice path and the tensor path (used on GPUs) agree with an f64 reference, with
    /// the weights held exactly (f32) and for serving (f16), for rows alone and sharing a task.
    #[test]
    fn cpu_path_matches_tensor_path() {
        for precision in [AdapterPrecision::Exact, AdapterPrecision::Serving] {
            cpu_path_matches_tensor_path_at(precision);
        }
    }

    fn cpu_path_matches_tensor_path_at(precision: AdapterPrecision) {
        let device = Device::Cpu;
        let base = tiny_base(1, false);
        let config = AdapterConfig::parse(r#"{"r":4,"lora_alpha":8,"target_modules":["down_proj"]}"#).unwrap();
        let adapter = |seed: f64| {
            let a = (Tensor::arange(0f32, 128.0, &device).unwrap().reshape((4, 32)).unwrap() * (0.01 * seed)).unwrap();
            let b =
                (Tensor::arange(0f32, 64.0, &device).unwrap().reshape((16, 4)).unwrap().cos().unwrap() * seed).unwrap();
            let tensors = HashMap::from([
                (peft_tensor_name(0, Target::Down, true), a),
                (peft_tensor_name(0, Target::Down, false), b),
            ]);
            Arc::new(LoraAdapter::from_peft("t", &config, tensors, &base, &device, precision).unwrap())
        };
        let (first, second) =
            (AdapterMix(vec![(adapter(1.0), 1.0)]), AdapterMix(vec![(adapter(2.0), 0.5), (adapter(3.0), -1.0)]));
        let none = AdapterMix::default();
        let plan = LoraPlan::new(&[&first, &none, &second, &first], &device).unwrap();
        let x = Tensor::arange(0f32, 128.0, &device).unwrap().reshape((4, 32)).unwrap().sin().unwrap();
        let out = Tensor::ones((4, 16), DType::F32, &device).unwrap();
        let cpu: Vec<f32> =
            plan.apply_cpu(0, Target::Down, &x, out.clone()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let tensors: Vec<f32> =
            plan.apply_tensors(0, Target::Down, &x, out).unwrap().flatten_all().unwrap().to_vec1().unwrap();

        // The reference: 1 + Σ weight · alpha/r · B·A·x per row, in f64 from the same formulas,
        // each weight as the adapter holds it (its f32 value, rounded to f16 for serving).
        let held = |v: f64| match precision {
            AdapterPrecision::Exact => f64::from(v as f32),
            AdapterPrecision::Serving => half::f16::from_f32(v as f32).to_f64(),
        };
        let a = |seed: f64, r: usize, k: usize| held((r * 32 + k) as f64 * 0.01 * seed);
        let b = |seed: f64, o: usize, r: usize| held(((o * 4 + r) as f64).cos() * seed);
        let x_at = |row: usize, k: usize| ((row * 32 + k) as f64).sin();
        let delta = |seed: f64, row: usize, o: usize| {
            (0..4).map(|r| b(seed, o, r) * (0..32).map(|k| a(seed, r, k) * x_at(row, k)).sum::<f64>()).sum::<f64>()
        };
        let row_mixes: [&[(f64, f64)]; 4] = [&[(1.0, 1.0)], &[], &[(2.0, 0.5), (3.0, -1.0)], &[(1.0, 1.0)]];
        let scale = 8.0 / 4.0;
        for (row, mix) in row_mixes.iter().enumerate() {
            for o in 0..16 {
                let expected = 1.0 + mix.iter().map(|&(seed, w)| w * scale * delta(seed, row, o)).sum::<f64>();
                let tolerance = 1e-4 * expected.abs().max(1.0);
                for (path, got) in [("cpu", cpu[row * 16 + o]), ("tensors", tensors[row * 16 + o])] {
                    assert!(
                        (f64::from(got) - expected).abs() < tolerance,
                        "{precision:?} {path} row {row} output {o}: {got} vs reference {expected}"
                    );
                }
            }
        }
        assert!(cpu[16..32].iter().all(|v| *v == 1.0), "a row without adapters is untouched");
        // A projection the adapters do not cover leaves the output as it was, whatever its width.
        let untouched = plan
            .apply_cpu(0, Target::Q, &x.narrow(1, 0, 16).unwrap(), Tensor::ones((4, 18), DType::F32, &device).unwrap())
            .unwrap();
        assert_eq!(untouched.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![1.0; 4 * 18]);
    }

    /// Rank-16 adapters for serving are held in 8-bit panels (blocks of 32 for `A`, 16 for `B`),
    /// half the bytes of f16; the CPU path over them agrees with the tensor path over the same
    /// held weights within the activations' 8-bit rounding, for rows alone, sharing a task and
    /// mixing two adapters; rank 4 (no 8-bit width) stays f16, and `Exact` stays f32.
    #[test]
    fn rank_16_adapters_serve_from_eight_bit_panels() {
        let device = Device::Cpu;
        let base = tiny_base(1, false);
        let load = |rank: usize, seed: f32, precision: AdapterPrecision| {
            let config =
                AdapterConfig::parse(&format!(r#"{{"r":{rank},"lora_alpha":32,"target_modules":["down_proj"]}}"#))
                    .unwrap();
            let wave = |rows: usize, cols: usize, scale: f32| {
                let n = (rows * cols) as f32;
                ((Tensor::arange(0f32, n, &device).unwrap() * f64::from(seed)).unwrap().sin().unwrap()
                    * f64::from(scale))
                .unwrap()
                .reshape((rows, cols))
                .unwrap()
            };
            let tensors = HashMap::from([
                (peft_tensor_name(0, Target::Down, true), wave(rank, 32, 0.05)),
                (peft_tensor_name(0, Target::Down, false), wave(16, rank, 0.002)),
            ]);
            Arc::new(LoraAdapter::from_peft("t", &config, tensors, &base, &device, precision).unwrap())
        };
        let (first, second) = (load(16, 1.0, AdapterPrecision::Serving), load(16, 0.37, AdapterPrecision::Serving));
        let held = |a: &LoraAdapter| a.pair(0, Target::Down).unwrap().held.clone();
        let Held::Panels { buffer, .. } = held(&first) else { panic!("on the CPU adapters are held in panels") };
        assert!(matches!(buffer.as_ref(), HostPanels::Q8(_)), "rank 16 serves from 8-bit panels");
        let q8_bytes = q8::q8_len(16, 32) + q8::q8_len(16, 16);
        assert_eq!(first.size_bytes(), q8_bytes);
        assert!(q8_bytes < (panel_len(16, 32) + panel_len(16, 16)) * 2, "fewer bytes than f16");
        let Held::Panels { buffer, .. } = held(&load(4, 1.0, AdapterPrecision::Serving)) else { panic!() };
        assert!(matches!(buffer.as_ref(), HostPanels::F16(_)), "rank 4 has no 8-bit width: f16");
        let Held::Panels { buffer, .. } = held(&load(16, 1.0, AdapterPrecision::Exact)) else { panic!() };
        assert!(matches!(buffer.as_ref(), HostPanels::F32(_)), "exact stays f32");

        let one = AdapterMix(vec![(first.clone(), 1.0)]);
        let mixed = AdapterMix(vec![(first.clone(), 0.5), (second.clone(), -1.0)]);
        let rows: [&AdapterMix; 6] = [&one, &mixed, &one, &one, &one, &one];
        let plan = LoraPlan::new(&rows, &device).unwrap();
        let x = (Tensor::arange(0f32, 6.0 * 32.0, &device).unwrap().reshape((6, 32)).unwrap() * 0.7)
            .unwrap()
            .cos()
            .unwrap();
        let out = Tensor::zeros((6, 16), DType::F32, &device).unwrap();
        let cpu: Vec<f32> =
            plan.apply_cpu(0, Target::Down, &x, out.clone()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let tensors: Vec<f32> =
            plan.apply_tensors(0, Target::Down, &x, out).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        // The bound: each product's 8-bit activation rounding, relative to the sum of the
        // magnitudes of its terms (here |B|·|A|·|x|, with the weights' scale 32/16 and mix).
        let xs: Vec<Vec<f32>> = x.to_vec2().unwrap();
        let magnitude = |adapter: &LoraAdapter, row: usize, o: usize| {
            let pair = adapter.pair(0, Target::Down).unwrap();
            let (a, b): (Vec<Vec<f32>>, Vec<Vec<f32>>) =
                (pair.a().unwrap().to_vec2().unwrap(), pair.b().unwrap().to_vec2().unwrap());
            (0..16)
                .map(|r| {
                    f64::from(b[o][r].abs()) * (0..32).map(|k| f64::from((a[r][k] * xs[row][k]).abs())).sum::<f64>()
                })
                .sum::<f64>()
        };
        for row in 0..6 {
            for o in 0..16 {
                let bound = if row == 1 {
                    0.5 * magnitude(&first, row, o) + magnitude(&second, row, o)
                } else {
                    magnitude(&first, row, o)
                } * 2.0;
                let (got, want) = (cpu[row * 16 + o], tensors[row * 16 + o]);
                assert!(
                    f64::from((got - want).abs()) <= 2e-2 * bound,
                    "row {row} output {o}: {got} vs the tensor path's {want} (bound {bound})"
                );
            }
        }
        assert!(cpu.iter().any(|v| v.abs() > 1e-4), "the deltas are not all zero");
    }

    /// One `apply_host` over a stacked q/k/v output (adapters covering some of the three, a row
    /// mixing two, a row with none) adds what the tensor path adds projection by projection.
    #[test]
    fn stacked_projections_get_the_deltas_of_each() {
        let device = Device::Cpu;
        let base = tiny_base(1, false);
        let adapter = |seed: f32, targets: &[Target]| {
            let names: Vec<&str> = targets.iter().map(|t| t.module_name()).collect();
            let config =
                AdapterConfig::parse(&format!(r#"{{"r":4,"lora_alpha":8,"target_modules":{names:?}}}"#)).unwrap();
            let mut tensors = HashMap::new();
            for (i, &target) in targets.iter().enumerate() {
                let (in_features, out_features) = base.projection_shape(target);
                let ramp = |rows: usize, cols: usize, at: f32| {
                    let n = (rows * cols) as f32;
                    (Tensor::arange(0f32, n, &device).unwrap() * f64::from(0.1 * seed))
                        .unwrap()
                        .affine(1.0, f64::from(at))
                        .unwrap()
                        .sin()
                        .unwrap()
                        .reshape((rows, cols))
                        .unwrap()
                };
                tensors.insert(peft_tensor_name(0, target, true), ramp(4, in_features, i as f32));
                tensors.insert(peft_tensor_name(0, target, false), ramp(out_features, 4, 10.0 + i as f32));
            }
            Arc::new(LoraAdapter::from_peft("t", &config, tensors, &base, &device, AdapterPrecision::Serving).unwrap())
        };
        let (qv, qkv) = (adapter(1.0, &[Target::Q, Target::V]), adapter(2.0, &[Target::Q, Target::K, Target::V]));
        let mixes = [
            AdapterMix(vec![(qv.clone(), 1.0)]),
            AdapterMix::default(),
            AdapterMix(vec![(qkv.clone(), 0.5), (qv, -1.0)]),
            AdapterMix(vec![(qkv, 1.0)]),
        ];
        let plan = LoraPlan::new(&mixes.iter().collect::<Vec<_>>(), &device).unwrap();
        let x = Tensor::arange(0f32, 64.0, &device).unwrap().reshape((4, 16)).unwrap().cos().unwrap();
        let widths: Vec<(Target, usize)> =
            [Target::Q, Target::K, Target::V].into_iter().map(|t| (t, base.projection_shape(t).1)).collect();
        let stride: usize = widths.iter().map(|(_, w)| w).sum();
        let parts = side_by_side(&widths);
        let mut ys = vec![1f32; 4 * stride];
        let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        plan.apply_host(0, &parts, &HostRows { xs: &xs, quantized: None, width: 16 }, &mut ys, stride);
        for (&(target, at), &(_, width)) in parts.iter().zip(&widths) {
            let out = Tensor::ones((4, width), DType::F32, &device).unwrap();
            let want = plan.apply_tensors(0, target, &x, out).unwrap().to_vec2::<f32>().unwrap();
            for (row, want) in want.iter().enumerate() {
                let got = &ys[row * stride + at..][..width];
                for (o, (g, w)) in got.iter().zip(want).enumerate() {
                    assert!((g - w).abs() < 1e-4 * w.abs().max(1.0), "{target:?} row {row} output {o}: {g} vs {w}");
                }
            }
        }
        assert!(ys[stride..2 * stride].iter().all(|v| *v == 1.0), "a row without adapters is untouched");
        assert!(ys[16..24].iter().all(|v| *v == 1.0), "row 0's k: its adapter has none");
    }

    /// Tensors read in place from safetensors bytes (F32, F16 and BF16, and F64 through candle)
    /// load as the tensors they were saved from (exactly, or rounded to f16 for serving), with
    /// the q/k `B` rows of a base with interleaved RoPE permuted as
    /// `permute_for_interleaved_rope` does.
    #[test]
    fn safetensors_bytes_load_as_the_tensors_saved() {
        let device = Device::Cpu;
        let base = tiny_base(2, true);
        let config =
            AdapterConfig::parse(r#"{"r":4,"lora_alpha":8,"target_modules":["q_proj","k_proj","v_proj","o_proj"]}"#)
                .unwrap();
        let dtypes = [DType::F32, DType::F16, DType::BF16, DType::F64];
        let mut tensors = HashMap::new();
        for layer in 0..2 {
            for (i, target) in [Target::Q, Target::K, Target::V, Target::O].into_iter().enumerate() {
                let (in_features, out_features) = base.projection_shape(target);
                let values = |rows: usize, cols: usize, seed: usize| {
                    let n = (rows * cols) as f32;
                    let ramp = (Tensor::arange(0f32, n, &device).unwrap() * 0.37).unwrap();
                    (ramp + seed as f64).unwrap().sin().unwrap().reshape((rows, cols))
                };
                let dtype = dtypes[(2 * layer + i) % dtypes.len()];
                let a = values(4, in_features, 2 * i).unwrap().to_dtype(dtype).unwrap();
                let b = values(out_features, 4, 2 * i + 1).unwrap().to_dtype(dtype).unwrap();
                tensors.insert(peft_tensor_name(layer, target, true), a);
                tensors.insert(peft_tensor_name(layer, target, false), b);
            }
        }
        let bytes = safetensors::serialize(&tensors, None).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        for (precision, held, width) in
            [(AdapterPrecision::Exact, DType::F32, 4), (AdapterPrecision::Serving, DType::F16, 2)]
        {
            let adapter = LoraAdapter::from_safetensors("t", &config, &file, &base, &device, precision).unwrap();
            assert_eq!(adapter.pairs().count(), 8);
            let mut elements = 0;
            for ((layer, target), pair) in adapter.pairs() {
                let saved = |a: bool| {
                    let t = &tensors[&peft_tensor_name(layer, target, a)];
                    t.to_dtype(DType::F32).unwrap().to_dtype(held).unwrap().to_dtype(DType::F32).unwrap()
                };
                let b = match base.interleaved_rope_heads(target) {
                    Some(heads) => permute_for_interleaved_rope(&saved(false), heads).unwrap(),
                    None => saved(false),
                };
                let (a, b_held) = (pair.a().unwrap(), pair.b().unwrap());
                assert_eq!((a.dtype(), b_held.dtype()), (held, held));
                let rows = |t: &Tensor| t.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
                assert_eq!(rows(&a), rows(&saved(true)), "{precision:?} layer {layer} {target:?} A");
                assert_eq!(rows(&b_held), rows(&b), "{precision:?} layer {layer} {target:?} B");
                // Held in panels of eight rows: rank 4's A takes eight rows' room.
                let panels = |t: &Tensor| t.dim(0).unwrap().next_multiple_of(8) * t.dim(1).unwrap();
                elements += panels(&a) + panels(&b_held);
            }
            assert_eq!(adapter.size_bytes(), elements * width, "{precision:?}");
        }
    }

    /// An adapter with a weight f16 cannot hold is served from f32, exactly, not infinite.
    #[test]
    fn weights_beyond_f16_range_stay_f32() {
        let device = Device::Cpu;
        let base = tiny_base(1, false);
        let config = AdapterConfig::parse(r#"{"r":2,"lora_alpha":2,"target_modules":["v_proj"]}"#).unwrap();
        let (in_features, out_features) = base.projection_shape(Target::V);
        let mut a = vec![0.5f32; 2 * in_features];
        a[3] = 1.0e5;
        let tensors = HashMap::from([
            (peft_tensor_name(0, Target::V, true), Tensor::from_vec(a.clone(), (2, in_features), &device).unwrap()),
            (peft_tensor_name(0, Target::V, false), Tensor::ones((out_features, 2), DType::F32, &device).unwrap()),
        ]);
        let adapter =
            LoraAdapter::from_peft("big", &config, tensors, &base, &device, AdapterPrecision::Serving).unwrap();
        let pair = adapter.pair(0, Target::V).unwrap();
        assert_eq!(pair.a().unwrap().dtype(), DType::F32);
        assert_eq!(pair.a().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), a);
        // Rank 2 in panels of eight rows.
        assert_eq!(adapter.size_bytes(), (8 * in_features + 2 * out_features.next_multiple_of(8)) * 4);
    }

    #[test]
    fn config_scale_and_targets() {
        let c =
            AdapterConfig::parse(r#"{"peft_type":"LORA","r":16,"lora_alpha":32,"target_modules":["q_proj","v_proj"]}"#)
                .unwrap();
        assert_eq!(c.scale(), 2.0);
        assert_eq!(c.targets().unwrap(), vec![Target::Q, Target::V]);
        let rs = AdapterConfig::parse(r#"{"r":16,"lora_alpha":32,"use_rslora":true,"target_modules":"all-linear"}"#)
            .unwrap();
        assert_eq!(rs.scale(), 8.0);
        assert_eq!(rs.targets().unwrap().len(), 7);
        let err = AdapterConfig::parse(r#"{"r":0,"lora_alpha":1,"target_modules":["q_proj"]}"#).unwrap_err();
        assert!(err.to_string().contains("rank 0"), "{err}");
        let err = AdapterConfig::parse(r#"{"r":4,"lora_alpha":1,"target_modules":["lm_head"]}"#)
            .unwrap()
            .targets()
            .unwrap_err();
        assert!(err.to_string().contains("lm_head"), "{err}");
    }
}
