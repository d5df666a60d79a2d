//! What a run keeps on disk: checkpoints (the adapter's tensors, the optimizer's moments and the
//! trainer's state, staged and renamed into place, the newest few kept), resuming from the
//! newest one, and the PEFT adapter files, each written through a temporary file and a rename.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::net::LoraVars;
use super::optim::AdamW;
use super::{EvalReport, TrainConfig, TrainJob};
use crate::error::{MlError, Result};
use crate::lora::peft_tensor_name;

/// Saved alongside each checkpoint's tensors.
#[derive(Serialize, Deserialize)]
pub(super) struct TrainerState {
    pub(super) step: u64,
    pub(super) config: TrainConfig,
    pub(super) dataset_blake3: String,
    pub(super) best_eval_loss: Option<f64>,
    pub(super) evals_without_improvement: usize,
    pub(super) history: Vec<EvalReport>,
}

impl TrainerState {
    /// Keeps an evaluation in the history and counts evaluations without a new best loss (what
    /// early stopping reads).
    pub(super) fn record_eval(&mut self, report: &EvalReport) {
        if self.best_eval_loss.is_none_or(|best| report.loss < best) {
            self.best_eval_loss = Some(report.loss);
            self.evals_without_improvement = 0;
        } else {
            self.evals_without_improvement += 1;
        }
        self.history.push(report.clone());
    }
}

pub(super) const CHECKPOINTS: &str = "checkpoints";
const STATE_FILE: &str = "trainer_state.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// A fresh state, or with `job.resume` the newest checkpoint's (its tensors loaded into `lora`
/// and `optimizer`, after checking it was made from the same data).
pub(super) fn start_state(
    job: &TrainJob<'_>,
    config: &TrainConfig,
    checkpoints: &Path,
    lora: &LoraVars,
    optimizer: &mut AdamW,
    dataset_blake3: String,
) -> Result<TrainerState> {
    if job.resume
        && let Some(dir) = latest_checkpoint(checkpoints)?
    {
        return restore(&dir, lora, optimizer, config, &dataset_blake3);
    }
    Ok(TrainerState {
        step: 0,
        config: config.clone(),
        dataset_blake3,
        best_eval_loss: None,
        evals_without_improvement: 0,
        history: Vec::new(),
    })
}

pub(super) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| MlError::corrupt("json", e))?;
    write_file(path, text.as_bytes())
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
pub(super) fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("partial");
    let result = (|| -> std::io::Result<()> {
        fail::fail_point!("train-write-file", |_| Err(std::io::Error::from(std::io::ErrorKind::StorageFull)));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        MlError::io(path, e)
    })
}

fn adapter_config_json(config: &TrainConfig, model_path: &Path) -> serde_json::Value {
    let modules: Vec<&str> = config.targets.iter().map(|t| t.module_name()).collect();
    serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": modules,
        "bias": "none",
        "use_rslora": false,
        "fan_in_fan_out": false,
        "inference_mode": true,
        "base_model_name_or_path": model_path.file_name().map(|n| n.to_string_lossy().into_owned()),
    })
}

/// PEFT `adapter_config.json` and `adapter_model.safetensors` in `dir`.
pub(super) fn write_adapter(dir: &Path, lora: &LoraVars, config: &TrainConfig, model_path: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| MlError::io(dir, e))?;
    let mut tensors = HashMap::new();
    for ((layer, target), (a, b)) in &lora.pairs {
        tensors.insert(peft_tensor_name(*layer, *target, true), a.as_tensor().clone());
        tensors.insert(peft_tensor_name(*layer, *target, false), b.as_tensor().clone());
    }
    let bytes = safetensors_bytes(&tensors)?;
    write_file(&dir.join(crate::adapters::ADAPTER_WEIGHTS), &bytes)?;
    write_json(&dir.join(crate::adapters::ADAPTER_CONFIG), &adapter_config_json(config, model_path))
}

fn safetensors_bytes(tensors: &HashMap<String, Tensor>) -> Result<Vec<u8>> {
    let views: Vec<(&String, &Tensor)> = tensors.iter().collect();
    safetensors::serialize(views, None).map_err(|e| MlError::corrupt("safetensors", e))
}

fn checkpoint_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// The step directories in `dir` (`step-N`), oldest first.
fn checkpoint_dirs(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(MlError::io(dir, e)),
    };
    let mut steps: Vec<(u64, PathBuf)> = entries
        .flatten()
        .filter_map(|e| Some((e.file_name().to_string_lossy().strip_prefix("step-")?.parse().ok()?, e.path())))
        .collect();
    steps.sort_unstable();
    Ok(steps)
}

/// The newest complete checkpoint (one whose state file was written last, after its tensors).
pub(super) fn latest_checkpoint(dir: &Path) -> Result<Option<PathBuf>> {
    Ok(checkpoint_dirs(dir)?.into_iter().rev().map(|(_, p)| p).find(|p| p.join(STATE_FILE).is_file()))
}

/// Where a failed run can go back to, for its error message.
pub(super) fn last_good_checkpoint(dir: &Path) -> Result<String> {
    Ok(latest_checkpoint(dir)?
        .map_or("no checkpoint was written yet".into(), |d| format!("the last good checkpoint is {}", d.display())))
}

/// Writes a checkpoint into a staging directory, then renames it into place; on any error the
/// staging directory is removed and earlier checkpoints stay as they were.
pub(super) fn write_checkpoint(
    dir: &Path,
    lora: &LoraVars,
    optimizer: &AdamW,
    state: &TrainerState,
    config: &TrainConfig,
) -> Result<PathBuf> {
    let name = checkpoint_name(state.step);
    let staging = dir.join(format!(".{name}.partial"));
    let target = dir.join(&name);
    let write = || -> Result<()> {
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(|e| MlError::io(&staging, e))?;
        write_adapter(&staging, lora, config, Path::new("checkpoint"))?;
        let mut moments = HashMap::new();
        for (i, (m, v)) in optimizer.moments.iter().enumerate() {
            moments.insert(format!("m.{i}"), m.clone());
            moments.insert(format!("v.{i}"), v.clone());
        }
        write_file(&staging.join(OPTIMIZER_FILE), &safetensors_bytes(&moments)?)?;
        write_json(&staging.join(STATE_FILE), state)?;
        let _ = std::fs::remove_dir_all(&target);
        std::fs::rename(&staging, &target).map_err(|e| MlError::io(&target, e))
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(MlError::Checkpoint(format!("step {}: {e}; {}", state.step, last_good_checkpoint(dir)?)));
    }
    // Keep the newest few.
    for (_, old) in checkpoint_dirs(dir)?.iter().rev().skip(config.keep_checkpoints) {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(target)
}

/// Loads a checkpoint's weights and optimizer state; refuses one from another run.
fn restore(
    dir: &Path,
    lora: &LoraVars,
    optimizer: &mut AdamW,
    config: &TrainConfig,
    dataset: &str,
) -> Result<TrainerState> {
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(|e| MlError::io(&state_path, e))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| MlError::corrupt("checkpoint", e))?;
    if &state.config != config {
        return Err(MlError::InvalidRequest(format!(
            "checkpoint {} was made with other hyper-parameters; resume with the same ones or start a new output directory",
            dir.display()
        )));
    }
    if state.dataset_blake3 != dataset {
        return Err(MlError::InvalidRequest(format!(
            "checkpoint {} was made on another dataset ({}); this one is {dataset}",
            dir.display(),
            state.dataset_blake3
        )));
    }
    let weights = crate::model::read_safetensors(&dir.join(crate::adapters::ADAPTER_WEIGHTS), &Device::Cpu)?;
    for ((layer, target), (a, b)) in &lora.pairs {
        for (var, is_a) in [(a, true), (b, false)] {
            let name = peft_tensor_name(*layer, *target, is_a);
            let t = weights.get(&name).ok_or_else(|| MlError::corrupt("checkpoint", format!("lacks {name}")))?;
            var.set(&t.to_device(var.device())?)?;
        }
    }
    let moments = crate::model::read_safetensors(&dir.join(OPTIMIZER_FILE), &Device::Cpu)?;
    for (i, (m, v)) in optimizer.moments.iter_mut().enumerate() {
        let get = |k: String| {
            moments.get(&k).cloned().ok_or_else(|| MlError::corrupt("checkpoint", format!("optimizer state lacks {k}")))
        };
        *m = get(format!("m.{i}"))?.to_device(m.device())?;
        *v = get(format!("v.{i}"))?.to_device(v.device())?;
    }
    optimizer.step = state.step;
    Ok(state)
}
