//! Checks a PEFT adapter (`adapter_config.json` + `adapter_model.safetensors`, as bytes) against
//! a base model before anything stores or serves it: sizes, the config's options, rank and
//! targets, then every tensor's name, dtype and shape against the base's projection shapes,
//! and last the engine's own loader ([`LoraAdapter::from_safetensors`]), so an adapter that passes here
//! loads in every engine serving that base. Pure: no I/O, no network.

use std::collections::BTreeMap;

use candle_core::Device;
use safetensors::{Dtype, SafeTensors};

use crate::adapters::MAX_ADAPTER_BYTES;
use crate::config::ModelConfig;
use crate::error::{MlError, Result};
use crate::lora::{AdapterConfig, AdapterPrecision, LoraAdapter, Target, parse_peft_name};

/// Largest `adapter_config.json` accepted, in bytes (PEFT writes well under 2 KiB).
pub const MAX_ADAPTER_CONFIG_BYTES: u64 = 64 * 1024;
/// Largest rank the registry accepts (the engine's loader takes up to `MAX_LORA_RANK`).
pub const MAX_REGISTRY_RANK: usize = 256;

/// What an adapter may weigh and how large its rank may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdapterLimits {
    pub max_config_bytes: u64,
    pub max_weights_bytes: u64,
    pub max_rank: usize,
}

impl Default for AdapterLimits {
    fn default() -> Self {
        Self {
            max_config_bytes: MAX_ADAPTER_CONFIG_BYTES,
            max_weights_bytes: MAX_ADAPTER_BYTES,
            max_rank: MAX_REGISTRY_RANK,
        }
    }
}

/// An adapter that fits its base: what the registry records about it.
#[derive(Clone, Debug)]
pub struct CheckedAdapter {
    pub config: AdapterConfig,
    pub rank: usize,
    /// The targets the config names, in block order (q, k, v, o, gate, up, down).
    pub targets: Vec<Target>,
    /// LoRA pairs (layer × target) the weights hold.
    pub pairs: usize,
}

/// The tensor dtypes PEFT writes and the engine converts on load.
const ACCEPTED_DTYPES: [Dtype; 3] = [Dtype::F32, Dtype::F16, Dtype::BF16];

/// Checks an adapter's two files against `base` (named `base_id` in messages). Every refusal
/// names the file, tensor or setting at fault and what the base expects.
pub fn check_adapter(
    base_id: &str,
    base: &ModelConfig,
    config_json: &[u8],
    weights: &[u8],
    limits: &AdapterLimits,
) -> Result<CheckedAdapter> {
    check_size("adapter_config.json", config_json.len(), limits.max_config_bytes)?;
    check_size("adapter_model.safetensors", weights.len(), limits.max_weights_bytes)?;
    let text = std::str::from_utf8(config_json).map_err(|e| MlError::corrupt("adapter_config.json", e))?;
    let config = AdapterConfig::parse(text)?;
    if config.r > limits.max_rank {
        return Err(MlError::InvalidRequest(format!(
            "adapter_config.json has rank {}; the registry accepts ranks 1 to {}",
            config.r, limits.max_rank
        )));
    }
    let mut targets = config.targets()?;
    targets.sort();
    targets.dedup();
    let pairs = check_tensors(base_id, base, &config, &targets, weights)?;
    // The engine's loader has the last word: what it refuses, no engine could serve.
    let file = SafeTensors::deserialize(weights).map_err(|e| MlError::corrupt("adapter_model.safetensors", e))?;
    LoraAdapter::from_safetensors(base_id, &config, &file, base, &Device::Cpu, AdapterPrecision::Serving)?;
    Ok(CheckedAdapter { rank: config.r, targets, pairs, config })
}

fn check_size(file: &str, bytes: usize, max: u64) -> Result<()> {
    if bytes as u64 > max {
        return Err(MlError::InvalidRequest(format!("{file} is {bytes} bytes; the registry accepts at most {max}")));
    }
    if bytes == 0 {
        return Err(MlError::InvalidRequest(format!("{file} is empty")));
    }
    Ok(())
}

/// Every tensor's name, dtype and shape, in name order (so the first mismatch reported is
/// always the same one); returns the number of complete pairs.
fn check_tensors(
    base_id: &str,
    base: &ModelConfig,
    config: &AdapterConfig,
    targets: &[Target],
    weights: &[u8],
) -> Result<usize> {
    let mismatch = |detail: String| MlError::AdapterMismatch { adapter: base_id.to_string(), detail };
    let file = SafeTensors::deserialize(weights).map_err(|e| MlError::corrupt("adapter_model.safetensors", e))?;
    let mut halves: BTreeMap<(usize, Target), [bool; 2]> = BTreeMap::new();
    let mut names = file.names();
    names.sort();
    for name in names {
        let view = file.tensor(name).map_err(|e| MlError::corrupt("adapter_model.safetensors", e))?;
        let Some((layer, target, is_a)) = parse_peft_name(name) else {
            return Err(MlError::corrupt(
                "adapter_model.safetensors",
                format!(
                    "unexpected tensor {name:?}: PEFT names look like base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
                ),
            ));
        };
        let half = if is_a { "lora_A" } else { "lora_B" };
        let module = target.module_name();
        if !ACCEPTED_DTYPES.contains(&view.dtype()) {
            return Err(MlError::unsupported(
                "adapter dtype",
                format!("layer {layer} {module} {half} is {:?}; adapters must be F32, F16 or BF16", view.dtype()),
            ));
        }
        if layer >= base.num_layers {
            return Err(mismatch(format!(
                "layer {layer} {module} {half} is for layer {layer} but {base_id} has {} layers",
                base.num_layers
            )));
        }
        if !targets.contains(&target) {
            return Err(MlError::corrupt(
                "adapter_model.safetensors",
                format!("layer {layer} {module} {half} targets {module}, which adapter_config.json does not list"),
            ));
        }
        let (in_features, out_features) = base.projection_shape(target);
        let expected = if is_a { [config.r, in_features] } else { [out_features, config.r] };
        if view.shape() != expected {
            return Err(mismatch(format!(
                "layer {layer} {module} {half} is {:?} but {base_id} expects {expected:?}",
                view.shape()
            )));
        }
        halves.entry((layer, target)).or_default()[usize::from(!is_a)] = true;
    }
    if halves.is_empty() {
        return Err(MlError::corrupt("adapter_model.safetensors", "no LoRA tensors"));
    }
    if let Some(((layer, target), [a, _])) = halves.iter().find(|(_, [a, b])| !(a & b)) {
        let missing = if *a { "lora_B" } else { "lora_A" };
        return Err(MlError::corrupt(
            "adapter_model.safetensors",
            format!("layer {layer} {} has no {missing}", target.module_name()),
        ));
    }
    Ok(halves.len())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Tensor};

    use super::*;
    use crate::lora::peft_tensor_name;
    use crate::testing::{TinyModel, TinySpec, write_peft_adapter};

    fn tiny_config() -> ModelConfig {
        let dir = tempfile::tempdir().unwrap();
        let path = TinyModel::new(TinySpec::default())
            .unwrap()
            .write_gguf(&dir.path().join("tiny.gguf"), candle_core::quantized::GgmlDType::F32)
            .unwrap();
        crate::source::read_model_config(&path).unwrap()
    }

    fn adapter(config: &ModelConfig, rank: usize, targets: &[Target]) -> (Vec<u8>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        write_peft_adapter(dir.path(), config, rank, targets, 3, false).unwrap();
        (
            std::fs::read(dir.path().join("adapter_config.json")).unwrap(),
            std::fs::read(dir.path().join("adapter_model.safetensors")).unwrap(),
        )
    }

    fn check(config: &[u8], weights: &[u8]) -> Result<CheckedAdapter> {
        check_adapter("tiny", &tiny_config(), config, weights, &AdapterLimits::default())
    }

    #[test]
    fn a_fitting_adapter_passes_with_its_rank_and_targets() {
        let base = tiny_config();
        let (config, weights) = adapter(&base, 4, &[Target::V, Target::Q]);
        let checked = check(&config, &weights).unwrap();
        assert_eq!((checked.rank, checked.targets.as_slice(), checked.pairs), (4, &[Target::Q, Target::V][..], 4));
    }

    #[test]
    fn a_wider_base_is_named_with_the_tensor_and_both_shapes() {
        let wide = ModelConfig { hidden_size: 96, ..tiny_config() };
        let (config, weights) = adapter(&wide, 4, &[Target::Q]);
        let error = check(&config, &weights).unwrap_err().to_string();
        assert!(error.contains("layer 0 q_proj lora_A is [4, 96] but tiny expects [4, 64]"), "{error}");
    }

    #[test]
    fn a_config_rank_that_is_not_the_tensors_rank_is_refused() {
        let base = tiny_config();
        let (_, weights) = adapter(&base, 4, &[Target::Q]);
        let config = br#"{"peft_type":"LORA","r":8,"lora_alpha":16,"target_modules":["q_proj"]}"#;
        let error = check(config, &weights).unwrap_err().to_string();
        assert!(error.contains("lora_A is [4, 64] but tiny expects [8, 64]"), "{error}");
    }

    #[test]
    fn unknown_targets_corrupt_files_oversize_and_ranks_over_the_limit_are_named() {
        let base = tiny_config();
        let (config, weights) = adapter(&base, 4, &[Target::Q]);
        let unknown = br#"{"peft_type":"LORA","r":4,"lora_alpha":8,"target_modules":["q_proj","lm_head"]}"#;
        assert!(check(unknown, &weights).unwrap_err().to_string().contains("\"lm_head\""));
        let truncated = &weights[..weights.len() - 7];
        assert!(matches!(check(&config, truncated), Err(MlError::Corrupt { what: "adapter_model.safetensors", .. })));
        let small = AdapterLimits { max_weights_bytes: 100, ..AdapterLimits::default() };
        let error = check_adapter("tiny", &base, &config, &weights, &small).unwrap_err().to_string();
        assert!(error.contains("adapter_model.safetensors is") && error.contains("at most 100"), "{error}");
        let (config, weights) = adapter(&base, 300, &[Target::Q]);
        assert!(check(&config, &weights).unwrap_err().to_string().contains("rank 300"));
    }

    #[test]
    fn a_missing_half_and_a_foreign_dtype_are_refused() {
        let base = tiny_config();
        let (config, _) = adapter(&base, 4, &[Target::Q]);
        let a = Tensor::zeros((4, 64), DType::F32, &Device::Cpu).unwrap();
        let only_a = HashMap::from([(peft_tensor_name(0, Target::Q, true), a)]);
        let bytes = safetensors_bytes(&only_a);
        assert!(check(&config, &bytes).unwrap_err().to_string().contains("layer 0 q_proj has no lora_B"));
        let ints = HashMap::from([(
            peft_tensor_name(0, Target::Q, true),
            Tensor::zeros((4, 64), DType::U32, &Device::Cpu).unwrap(),
        )]);
        assert!(check(&config, &safetensors_bytes(&ints)).unwrap_err().to_string().contains("U32"));
    }

    fn safetensors_bytes(tensors: &HashMap<String, Tensor>) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        candle_core::safetensors::save(tensors, &path).unwrap();
        std::fs::read(path).unwrap()
    }
}
