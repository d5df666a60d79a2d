//! Tiny Llama models and LoRA adapters with seeded random weights, written to GGUF and to
//! safetensors by the tests and benches themselves, so they run fast and without downloads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::error::{MlError, Result};
use crate::lora::{Target, peft_tensor_name, permute_for_interleaved_rope};

/// The tiny model's shape: GQA (4 query heads over 2 KV heads), widths that are multiples of
/// the 32-element quantization blocks.
#[derive(Clone, Debug)]
pub struct TinySpec {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub context: usize,
    pub seed: u64,
}

impl Default for TinySpec {
    fn default() -> Self {
        Self { hidden: 64, intermediate: 128, layers: 2, heads: 4, kv_heads: 2, context: 256, seed: 7 }
    }
}

/// The tiny vocabulary: the 256 byte-level symbols, a few merges, and ChatML's two specials.
const MERGES: [(&str, &str); 6] = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r")];
pub const IM_START: &str = "<|im_start|>";
pub const IM_END: &str = "<|im_end|>";

fn tiny_vocab() -> Vec<String> {
    let mut tokens: Vec<String> = byte_level_alphabet();
    for (a, b) in MERGES {
        tokens.push(format!("{a}{b}"));
    }
    tokens.push(IM_START.into());
    tokens.push(IM_END.into());
    tokens
}

/// GPT-2's byte → printable-character table, in byte order.
fn byte_level_alphabet() -> Vec<String> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut extra = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    let mut table: Vec<(u32, u32)> = printable.into_iter().zip(chars).collect();
    table.sort_unstable();
    table.into_iter().map(|(_, c)| char::from_u32(c).map(String::from).unwrap_or_default()).collect()
}

/// Hugging Face-layout weights of a tiny model (q/k rows in "two halves" RoPE order).
pub struct TinyModel {
    pub spec: TinySpec,
    pub vocab: Vec<String>,
    pub tensors: HashMap<String, Tensor>,
}

impl TinyModel {
    pub fn new(spec: TinySpec) -> Result<Self> {
        let vocab = tiny_vocab();
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let device = Device::Cpu;
        let mut random = |rows: usize, cols: usize, scale: f32| -> Result<Tensor> {
            let data: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-scale..scale)).collect();
            Ok(Tensor::from_vec(data, (rows, cols), &device)?)
        };
        let s = &spec;
        // The shapes come from the same config.json the loader reads.
        let config = crate::ModelConfig::from_hf_json(&config_json(s, vocab.len()).to_string())?;
        let mut tensors = HashMap::new();
        tensors.insert("model.embed_tokens.weight".to_string(), random(vocab.len(), s.hidden, 1.0)?);
        for i in 0..s.layers {
            for target in Target::ALL {
                let (in_f, out_f) = config.projection_shape(target);
                let name = format!("model.layers.{i}.{}.{}.weight", target.block_name(), target.module_name());
                tensors.insert(name, random(out_f, in_f, 1.0 / (in_f as f32).sqrt())?);
            }
            for norm in ["input_layernorm", "post_attention_layernorm"] {
                let w = (random(1, s.hidden, 0.2)? + 1.0)?.squeeze(0)?;
                tensors.insert(format!("model.layers.{i}.{norm}.weight"), w);
            }
        }
        tensors.insert("model.norm.weight".into(), (random(1, s.hidden, 0.2)? + 1.0)?.squeeze(0)?);
        tensors.insert("lm_head.weight".into(), random(vocab.len(), s.hidden, 1.0 / (s.hidden as f32).sqrt())?);
        Ok(Self { spec, vocab, tensors })
    }

    /// Writes `config.json`, `model.safetensors` and `tokenizer.json` into `dir`.
    pub fn write_safetensors(&self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).map_err(|e| MlError::io(dir, e))?;
        let config = dir.join("config.json");
        std::fs::write(&config, config_json(&self.spec, self.vocab.len()).to_string())
            .map_err(|e| MlError::io(&config, e))?;
        candle_core::safetensors::save(&self.tensors, dir.join("model.safetensors"))?;
        let metadata = self.gguf_metadata();
        crate::tokenizer::Tokenizer::from_gguf(&metadata)?.save(&dir.join("tokenizer.json"))?;
        let tokenizer_config = dir.join("tokenizer_config.json");
        let tc = serde_json::json!({"eos_token": IM_END, "bos_token": IM_START, "add_bos_token": false});
        std::fs::write(&tokenizer_config, tc.to_string()).map_err(|e| MlError::io(&tokenizer_config, e))?;
        Ok(dir.to_path_buf())
    }

    fn gguf_metadata(&self) -> HashMap<String, gguf_file::Value> {
        use gguf_file::Value as V;
        let s = &self.spec;
        let u = |n: usize| V::U32(n as u32);
        let strings = |v: Vec<String>| V::Array(v.into_iter().map(V::String).collect());
        let types: Vec<V> =
            (0..self.vocab.len()).map(|i| V::I32(if i >= self.vocab.len() - 2 { 3 } else { 1 })).collect();
        HashMap::from([
            ("general.architecture".into(), V::String("llama".into())),
            ("llama.context_length".into(), u(s.context)),
            ("llama.embedding_length".into(), u(s.hidden)),
            ("llama.block_count".into(), u(s.layers)),
            ("llama.feed_forward_length".into(), u(s.intermediate)),
            ("llama.attention.head_count".into(), u(s.heads)),
            ("llama.attention.head_count_kv".into(), u(s.kv_heads)),
            ("llama.rope.dimension_count".into(), u(s.hidden / s.heads)),
            ("llama.attention.layer_norm_rms_epsilon".into(), V::F32(1e-5)),
            ("llama.rope.freq_base".into(), V::F32(10000.0)),
            ("tokenizer.ggml.model".into(), V::String("gpt2".into())),
            ("tokenizer.ggml.pre".into(), V::String("smollm".into())),
            ("tokenizer.ggml.tokens".into(), strings(self.vocab.clone())),
            ("tokenizer.ggml.merges".into(), strings(MERGES.iter().map(|(a, b)| format!("{a} {b}")).collect())),
            ("tokenizer.ggml.token_type".into(), V::Array(types)),
            ("tokenizer.ggml.bos_token_id".into(), u(self.vocab.len() - 2)),
            ("tokenizer.ggml.eos_token_id".into(), u(self.vocab.len() - 1)),
            ("tokenizer.ggml.add_bos_token".into(), V::Bool(false)),
        ])
    }

    /// Writes the model as one GGUF file with `matrices` as the type of every projection
    /// (norms stay F32), q/k rows permuted for interleaved RoPE as llama.cpp's converter does.
    pub fn write_gguf(&self, path: &Path, matrices: GgmlDType) -> Result<PathBuf> {
        let s = &self.spec;
        let get = |name: &str| self.tensors.get(name).ok_or_else(|| MlError::corrupt("tiny model", name.to_string()));
        let mut out: Vec<(String, QTensor)> = Vec::new();
        let quant = |t: &Tensor, dtype: GgmlDType| QTensor::quantize(t, dtype);
        out.push(("token_embd.weight".into(), quant(get("model.embed_tokens.weight")?, matrices)?));
        out.push(("output.weight".into(), quant(get("lm_head.weight")?, matrices)?));
        out.push(("output_norm.weight".into(), quant(get("model.norm.weight")?, GgmlDType::F32)?));
        for i in 0..s.layers {
            for target in Target::ALL {
                let hf = get(&format!("model.layers.{i}.{}.{}.weight", target.block_name(), target.module_name()))?;
                let w = match target {
                    Target::Q => permute_for_interleaved_rope(hf, s.heads)?,
                    Target::K => permute_for_interleaved_rope(hf, s.kv_heads)?,
                    _ => hf.clone(),
                };
                out.push((format!("blk.{i}.{}.weight", target.gguf_name()), quant(&w, matrices)?));
            }
            out.push((
                format!("blk.{i}.attn_norm.weight"),
                quant(get(&format!("model.layers.{i}.input_layernorm.weight"))?, GgmlDType::F32)?,
            ));
            out.push((
                format!("blk.{i}.ffn_norm.weight"),
                quant(get(&format!("model.layers.{i}.post_attention_layernorm.weight"))?, GgmlDType::F32)?,
            ));
        }
        let metadata = self.gguf_metadata();
        let metadata: Vec<(&str, &gguf_file::Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(&str, &QTensor)> = out.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut file = std::fs::File::create(path).map_err(|e| MlError::io(path, e))?;
        gguf_file::write(&mut file, &metadata, &tensors)?;
        Ok(path.to_path_buf())
    }
}

/// The Hugging Face `config.json` of a tiny model.
fn config_json(s: &TinySpec, vocab_size: usize) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": s.hidden, "intermediate_size": s.intermediate,
        "num_hidden_layers": s.layers, "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads, "vocab_size": vocab_size,
        "max_position_embeddings": s.context, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": false,
    })
}

/// Writes a PEFT adapter for a tiny (or any) model shape: random A and B (or zero B) for
/// `targets` on every layer.
pub fn write_peft_adapter(
    dir: &Path,
    config: &crate::ModelConfig,
    rank: usize,
    targets: &[Target],
    seed: u64,
    zero_b: bool,
) -> Result<PathBuf> {
    let magnitudes = if zero_b { (0.5, 0.0) } else { (0.5, 0.5) };
    write_peft_adapter_of(dir, config, rank, targets, seed, magnitudes)
}

/// [`write_peft_adapter`] with `A`'s and `B`'s values uniform within ± the given magnitudes
/// (a trained adapter's are small: `A` about ±1/√in, as PEFT initializes it, `B` ~1e-2).
pub fn write_peft_adapter_of(
    dir: &Path,
    config: &crate::ModelConfig,
    rank: usize,
    targets: &[Target],
    seed: u64,
    (a_magnitude, b_magnitude): (f32, f32),
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| MlError::io(dir, e))?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tensors = HashMap::new();
    let mut uniform = |magnitude: f32| if magnitude == 0.0 { 0.0 } else { rng.random_range(-magnitude..magnitude) };
    for layer in 0..config.num_layers {
        for &target in targets {
            let (in_f, out_f) = config.projection_shape(target);
            let a: Vec<f32> = (0..rank * in_f).map(|_| uniform(a_magnitude)).collect();
            let b: Vec<f32> = (0..out_f * rank).map(|_| uniform(b_magnitude)).collect();
            tensors.insert(peft_tensor_name(layer, target, true), Tensor::from_vec(a, (rank, in_f), &Device::Cpu)?);
            tensors.insert(peft_tensor_name(layer, target, false), Tensor::from_vec(b, (out_f, rank), &Device::Cpu)?);
        }
    }
    candle_core::safetensors::save(&tensors, dir.join("adapter_model.safetensors"))?;
    let modules: Vec<&str> = targets.iter().map(|t| t.module_name()).collect();
    let config_json = serde_json::json!({
        "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": modules,
        "base_model_name_or_path": "tiny", "bias": "none", "task_type": "CAUSAL_LM",
    });
    let path = dir.join("adapter_config.json");
    std::fs::write(&path, config_json.to_string()).map_err(|e| MlError::io(&path, e))?;
    Ok(dir.to_path_buf())
}

/// The reference model `scripts/fetch-models.sh smollm2` fetches (into
/// `$OPENLEDGER_MODELS_DIR`, default `/var/tmp/openledger-models`), for tests and benches.
pub fn smollm2_path() -> PathBuf {
    let dir = std::env::var("OPENLEDGER_MODELS_DIR").unwrap_or_else(|_| "/var/tmp/openledger-models".into());
    PathBuf::from(dir).join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// This process's peak resident memory (`VmHWM`) in MiB, for benches.
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// Minor page faults taken so far by the calling thread (`minflt` of `/proc/thread-self/stat`),
/// for benches; 0 where that file does not exist.
pub fn thread_minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces: minflt is
    // the 10th field of the line, the 8th after the closing parenthesis.
    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(7)?.parse().ok()).unwrap_or(0)
}

/// For benches: the time the LoRA deltas of one forward step of `mixes.len()` rows take on the
/// CPU, alone: every layer's projection groups (`[q | k | v]`, `o`, `[gate | up]`, `down`)
/// through `LoraPlan::apply_host` as the model applies them, on fixed inputs, without the base
/// products around them (whose time, and its drift, would hide the deltas' own). The rows are
/// given quantized as a base of panels (Q4_0, Q4_1, Q5, Q8_0) quantizes them for its own
/// products, before the clock starts: the model shares them with the adapters' 8-bit panels.
pub fn lora_delta_step(model: &crate::LlamaModel, mixes: &[crate::AdapterMix]) -> Result<std::time::Duration> {
    let c = model.config();
    let rows = mixes.len();
    let plan = crate::lora::LoraPlan::new(&mixes.iter().collect::<Vec<_>>(), &Device::Cpu)?;
    let width = |t: Target| c.projection_shape(t).1;
    let groups =
        [vec![Target::Q, Target::K, Target::V], vec![Target::O], vec![Target::Gate, Target::Up], vec![Target::Down]];
    /// One projection group's fixed input rows, its parts' offsets, and its output rows.
    struct Group {
        xs: Vec<f32>,
        quantized: Option<crate::kernels::Q8Activations>,
        in_features: usize,
        parts: Vec<(Target, usize)>,
        ys: Vec<f32>,
        stride: usize,
    }
    let mut groups: Vec<Group> = groups
        .iter()
        .map(|group| {
            let in_features = c.projection_shape(group[0]).0;
            let widths: Vec<(Target, usize)> = group.iter().map(|&t| (t, width(t))).collect();
            let stride = widths.iter().map(|(_, w)| w).sum();
            let xs: Vec<f32> = (0..rows * in_features).map(|i| (i as f32 * 0.37).sin()).collect();
            let quantized = in_features
                .is_multiple_of(crate::kernels::BLOCK)
                .then(|| crate::kernels::Q8Activations::quantize(&xs, rows, in_features));
            Group {
                xs,
                quantized,
                in_features,
                parts: crate::lora::side_by_side(&widths),
                ys: vec![0f32; rows * stride],
                stride,
            }
        })
        .collect();
    let started = std::time::Instant::now();
    for layer in 0..c.num_layers {
        for g in &mut groups {
            let input = crate::lora::HostRows { xs: &g.xs, quantized: g.quantized.as_ref(), width: g.in_features };
            plan.apply_host(layer, &g.parts, &input, &mut g.ys, g.stride);
        }
    }
    Ok(started.elapsed())
}
