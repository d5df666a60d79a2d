//! The shape of a Llama-family decoder, read from GGUF metadata or a Hugging Face `config.json`,
//! and checked before any weight is loaded.

use std::collections::HashMap;

use candle_core::quantized::gguf_file;
use serde::Deserialize;

use crate::error::{MlError, Result};

/// Hyper-parameters of a Llama-family decoder (Llama 2/3, Mistral, TinyLlama, SmolLM2).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub architecture: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f32,
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// GGUF files store q/k rows permuted for interleaved (GPT-J style) rotary embeddings;
    /// Hugging Face checkpoints rotate the two halves of each head instead.
    pub rope_interleaved: bool,
    pub tie_word_embeddings: bool,
}

/// Llama 3.1's frequency-dependent RoPE scaling (`rope_scaling.rope_type = "llama3"`).
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
pub struct Llama3RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: usize,
}

/// Context windows above this are capped: the KV budget, not the model, limits them here.
pub const MAX_CONTEXT_TOKENS: usize = 32_768;

impl ModelConfig {
    /// Reads the `llama.*` keys of a GGUF file (Mistral and TinyLlama GGUFs use them too).
    pub fn from_gguf(metadata: &HashMap<String, gguf_file::Value>) -> Result<Self> {
        let architecture = metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .ok_or_else(|| MlError::corrupt("model", "GGUF has no general.architecture"))?;
        if architecture != "llama" {
            return Err(MlError::unsupported(
                "architecture",
                format!("{architecture:?} (this engine runs Llama-family decoders: llama, mistral)"),
            ));
        }
        let int = |key: &str| -> Result<usize> {
            let value = metadata
                .get(&format!("llama.{key}"))
                .ok_or_else(|| MlError::corrupt("model", format!("GGUF metadata lacks llama.{key}")))?;
            let n = value
                .to_u32()
                .map(u64::from)
                .or_else(|_| value.to_u64())
                .map_err(|_| MlError::corrupt("model", format!("llama.{key} is not an unsigned integer")))?;
            usize::try_from(n).map_err(|_| MlError::corrupt("model", format!("llama.{key} is too large")))
        };
        let float = |key: &str, default: f32| -> Result<f32> {
            match metadata.get(&format!("llama.{key}")) {
                None => Ok(default),
                Some(v) => v.to_f32().map_err(|_| MlError::corrupt("model", format!("llama.{key} is not a float"))),
            }
        };
        let hidden_size = int("embedding_length")?;
        let num_heads = int("attention.head_count")?;
        let num_kv_heads = int("attention.head_count_kv").unwrap_or(num_heads);
        let head_dim = match int("rope.dimension_count") {
            Ok(d) => d,
            Err(_) if num_heads > 0 => hidden_size / num_heads,
            Err(e) => return Err(e),
        };
        let vocab_size = match int("vocab_size") {
            Ok(v) => v,
            Err(_) => metadata
                .get("tokenizer.ggml.tokens")
                .and_then(|t| t.to_vec().ok())
                .map(Vec::len)
                .ok_or_else(|| MlError::corrupt("model", "GGUF has neither llama.vocab_size nor a token list"))?,
        };
        if metadata.contains_key("llama.rope.scaling.type") {
            let kind = metadata.get("llama.rope.scaling.type").and_then(|v| v.to_string().ok());
            if kind.is_some_and(|k| k != "none") {
                return Err(MlError::unsupported("rope scaling", format!("{kind:?} in GGUF")));
            }
        }
        let config = Self {
            architecture,
            hidden_size,
            intermediate_size: int("feed_forward_length")?,
            num_layers: int("block_count")?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size,
            context_length: int("context_length")?.min(MAX_CONTEXT_TOKENS),
            rms_norm_eps: f64::from(float("attention.layer_norm_rms_epsilon", 1e-5)?),
            rope_theta: float("rope.freq_base", 10_000.0)?,
            rope_scaling: None,
            rope_interleaved: true,
            tie_word_embeddings: false,
        };
        config.validate()?;
        Ok(config)
    }

    /// Reads a Hugging Face `config.json` of a `LlamaForCausalLM` or `MistralForCausalLM`.
    pub fn from_hf_json(json: &str) -> Result<Self> {
        let raw: HfConfig = serde_json::from_str(json).map_err(|e| MlError::corrupt("config.json", e))?;
        if !matches!(raw.model_type.as_str(), "llama" | "mistral") {
            return Err(MlError::unsupported(
                "architecture",
                format!("model_type {:?} (this engine runs llama and mistral)", raw.model_type),
            ));
        }
        let rope_scaling = match raw.rope_scaling {
            None => None,
            Some(value) => {
                let kind = value.get("rope_type").or_else(|| value.get("type")).and_then(|v| v.as_str());
                match kind {
                    Some("llama3") => {
                        Some(serde_json::from_value(value.clone()).map_err(|e| MlError::corrupt("config.json", e))?)
                    }
                    Some("default") | None if value.is_null() => None,
                    other => return Err(MlError::unsupported("rope scaling", format!("{other:?}"))),
                }
            }
        };
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        let config = Self {
            architecture: raw.model_type,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            num_kv_heads,
            head_dim: raw.head_dim.unwrap_or(raw.hidden_size / raw.num_attention_heads.max(1)),
            vocab_size: raw.vocab_size,
            context_length: raw.max_position_embeddings.min(MAX_CONTEXT_TOKENS),
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta: raw.rope_theta,
            rope_scaling,
            rope_interleaved: false,
            tie_word_embeddings: raw.tie_word_embeddings,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        let fail = |detail: String| Err(MlError::corrupt("model config", detail));
        if self.hidden_size == 0 || self.num_layers == 0 || self.num_heads == 0 || self.vocab_size == 0 {
            return fail(format!("zero-sized model: {self:?}"));
        }
        if self.num_kv_heads == 0 || !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return fail(format!("{} heads do not divide into {} KV heads", self.num_heads, self.num_kv_heads));
        }
        if !self.head_dim.is_multiple_of(2) || self.head_dim == 0 {
            return fail(format!("head dimension {} must be even", self.head_dim));
        }
        if self.context_length == 0 {
            return fail("context length is zero".into());
        }
        Ok(())
    }

    /// Queries per KV head (grouped-query attention).
    pub fn group_size(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }

    /// Input and output width of one of the seven projections.
    pub fn projection_shape(&self, target: crate::lora::Target) -> (usize, usize) {
        use crate::lora::Target;
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        match target {
            Target::Q => (self.hidden_size, q),
            Target::K | Target::V => (self.hidden_size, kv),
            Target::O => (q, self.hidden_size),
            Target::Gate | Target::Up => (self.hidden_size, self.intermediate_size),
            Target::Down => (self.intermediate_size, self.hidden_size),
        }
    }

    /// For GGUF bases (interleaved RoPE), the head count whose rows llama.cpp's converter
    /// reordered in this projection's weight (q and k); `None` for other projections and bases.
    pub fn interleaved_rope_heads(&self, target: crate::lora::Target) -> Option<usize> {
        use crate::lora::Target;
        match target {
            Target::Q if self.rope_interleaved => Some(self.num_heads),
            Target::K if self.rope_interleaved => Some(self.num_kv_heads),
            _ => None,
        }
    }

    /// RoPE inverse frequencies, with Llama 3 scaling when configured.
    pub fn inverse_frequencies(&self) -> Vec<f32> {
        let d = self.head_dim;
        let mut freqs: Vec<f32> = (0..d / 2).map(|i| 1.0 / self.rope_theta.powf((2 * i) as f32 / d as f32)).collect();
        if let Some(s) = self.rope_scaling {
            let low_wavelen = s.original_max_position_embeddings as f32 / s.low_freq_factor;
            let high_wavelen = s.original_max_position_embeddings as f32 / s.high_freq_factor;
            for f in &mut freqs {
                let wavelen = 2.0 * std::f32::consts::PI / *f;
                if wavelen > low_wavelen {
                    *f /= s.factor;
                } else if wavelen >= high_wavelen {
                    let smooth = (s.original_max_position_embeddings as f32 / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    *f = (1.0 - smooth) * *f / s.factor + smooth * *f;
                }
            }
        }
        freqs
    }
}

#[derive(Deserialize)]
struct HfConfig {
    model_type: String,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    #[serde(default = "default_context")]
    max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    rope_theta: f32,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    tie_word_embeddings: bool,
}

fn default_context() -> usize {
    2048
}
fn default_eps() -> f64 {
    1e-5
}
fn default_theta() -> f32 {
    10_000.0
}
