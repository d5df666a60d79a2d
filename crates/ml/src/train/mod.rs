//! LoRA fine-tuning (the ModelFactory trainer): AdamW with warmup + cosine decay, gradient
//! accumulation and clipping, padding-aware micro-batches under a token budget, held-out
//! evaluation next to the base model, early stopping, checkpoints that resume bit-exactly,
//! and a PEFT adapter with its lineage at the end.
//!
//! The base model is held as f32 (candle's quantized matmul has no backward pass): about
//! 4 bytes per parameter, plus activations. The adapter it produces is a plain PEFT adapter
//! and serves on the quantized base in the engine.
//!
//! This file holds the run itself (its loop, events, schedule, outcome and lineage); the
//! hyper-parameters are in `config.rs`, held-out evaluation in `eval.rs`, checkpoints, resume
//! and the adapter files in `checkpoint.rs`, and the forward pass in `net.rs` and below.

mod attention;
mod checkpoint;
mod config;
pub mod data;
mod eval;
mod footprint;
mod fused;
pub mod grads;
mod layer;
mod lm_head;
pub(crate) mod net;
mod optim;

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use openledger_core::ContentHash;
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use crate::error::{MlError, Result};
use crate::model::LlamaModel;
use checkpoint::{
    CHECKPOINTS, TrainerState, last_good_checkpoint, latest_checkpoint, start_state, write_adapter, write_checkpoint,
    write_json,
};
pub use config::{MAX_BATCH_TOKENS, MAX_EPOCHS, MAX_RANK, TrainConfig};
use data::{Dataset, Example, RecordKind, micro_batches};
use eval::Evaluator;
pub use eval::{EvalReport, evaluate, example_losses};
pub use footprint::{Footprint, RUNTIME_BYTES, available_bytes};
use net::{Batch, LoraVars, Mode, TrainBase};
use optim::{AdamW, AdamWParams, clip_grad_norm, learning_rate};

/// Progress of a run, for a progress bar or a service to forward.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TrainEvent {
    Started {
        total_steps: u64,
        start_step: u64,
        train_examples: usize,
        eval_examples: usize,
        truncated_examples: usize,
        base_f32_bytes: usize,
    },
    Step {
        step: u64,
        total_steps: u64,
        epoch: usize,
        loss: f64,
        learning_rate: f64,
        grad_norm: f64,
        tokens_per_s: f64,
        eta_s: f64,
    },
    Eval(EvalReport),
    Checkpoint {
        step: u64,
        dir: PathBuf,
    },
    EarlyStopped {
        step: u64,
    },
}

/// Whether the run goes on after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Continue,
    /// Checkpoint now and return (a later `resume` continues from here).
    Stop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    Completed,
    EarlyStopped,
    Interrupted,
}

/// What a run produced.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainOutcome {
    pub finish: Finish,
    pub steps: u64,
    /// Tokens of the training examples fed in the steps run so far (padding excluded), counted
    /// from the schedule so that a resumed run counts the same as an uninterrupted one.
    pub trained_tokens: u64,
    pub last_eval: Option<EvalReport>,
    /// The adapter directory (`out`), or the checkpoint when interrupted.
    pub adapter_dir: PathBuf,
}

/// Where the data came from and what the run is built on, written beside the adapter.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Lineage {
    pub base_model: String,
    pub base_model_blake3: String,
    pub dataset: String,
    pub dataset_kind: RecordKind,
    /// Content hashes of the training records, in file order.
    pub train_records: Vec<String>,
    /// Content hashes of the held-out records: a share of `dataset`, or every record of
    /// `validation_dataset` when the run had one.
    pub eval_records: Vec<String>,
    /// The held-out records' own dataset, when they were not a share of `dataset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_dataset: Option<String>,
    /// BLAKE3 over the training record hashes in order: the dataset's identity.
    pub dataset_blake3: String,
    pub labels: Vec<String>,
    pub config: TrainConfig,
    pub steps: u64,
    pub finish: Finish,
    pub metrics: Option<EvalReport>,
    pub history: Vec<EvalReport>,
}

/// Inputs of a run besides the hyper-parameters.
pub struct TrainJob<'a> {
    pub model: &'a LlamaModel,
    /// The model file or directory (hashed into the lineage).
    pub model_path: &'a Path,
    pub dataset: &'a Dataset,
    /// A name for the dataset in the lineage (its path or Datanet snapshot id).
    pub dataset_name: &'a str,
    /// Held-out records of their own (a validation file): every record of `dataset` trains and
    /// these are evaluated, instead of holding out `config.eval_split` of `dataset`.
    pub validation: Option<Validation<'a>>,
    pub out: &'a Path,
    /// Continue from the newest checkpoint in `out/checkpoints` if there is one.
    pub resume: bool,
}

impl<'a> TrainJob<'a> {
    /// The dataset the held-out records are drawn from: the validation set, or `dataset`.
    fn held_out_set(&self) -> &'a Dataset {
        self.validation.map_or(self.dataset, |validation| validation.dataset)
    }
}

/// A run's held-out records when they come from a file of their own.
#[derive(Clone, Copy)]
pub struct Validation<'a> {
    /// Tokenized like the training dataset, with its labels (`Tokenize::dataset(.., Some(labels))`).
    pub dataset: &'a Dataset,
    /// A name for it in the lineage (its path or Datanet snapshot id).
    pub name: &'a str,
}

pub const LINEAGE_FILE: &str = "lineage.json";

/// Runs (or resumes) a fine-tuning job. `on_event` sees every event and may stop the run.
pub fn train(
    job: &TrainJob<'_>,
    config: &TrainConfig,
    on_event: &mut dyn FnMut(&TrainEvent) -> Control,
) -> Result<TrainOutcome> {
    config.validate()?;
    let dataset = job.dataset;
    let (train_idx, eval_idx) = match job.validation {
        Some(validation) => {
            check_validation(dataset, validation.dataset)?;
            ((0..dataset.examples.len()).collect(), (0..validation.dataset.examples.len()).collect())
        }
        None => split(dataset.examples.len(), config.eval_split, config.seed)?,
    };
    let dataset_blake3 = dataset_identity(dataset, &train_idx);
    let base = TrainBase::new(job.model)?;
    let lora = LoraVars::init(&base, config.rank, config.scale(), &config.targets, config.seed)?;
    let params = AdamWParams { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: config.weight_decay };
    let mut optimizer = AdamW::new(params, &lora.vars())?;
    let schedule = schedule(dataset, &train_idx, config);
    let total = schedule.len() as u64;
    let warmup = config.warmup_steps.unwrap_or(total / 10);
    let checkpoints = job.out.join(CHECKPOINTS);
    std::fs::create_dir_all(&checkpoints).map_err(|e| MlError::io(&checkpoints, e))?;
    let state = start_state(job, config, &checkpoints, &lora, &mut optimizer, dataset_blake3)?;
    let eval = Evaluator::new(&base, job.held_out_set(), &eval_idx, config.batch_tokens)?;
    let started = TrainEvent::Started {
        total_steps: total,
        start_step: state.step,
        train_examples: train_idx.len(),
        eval_examples: eval_idx.len(),
        truncated_examples: dataset.examples.iter().filter(|e| e.truncated).count(),
        base_f32_bytes: base.weight_bytes(),
    };
    let mut run = Run { config, lora, optimizer, state, eval, checkpoints };
    let mut finish = Finish::Completed;
    // Stopped before the first step of this run: nothing new to checkpoint.
    if on_event(&started) == Control::Stop && run.state.step < total {
        finish = Finish::Interrupted;
    }
    let clock = Instant::now();
    let (mut tokens_done, first_step) = (0usize, run.state.step);
    while finish == Finish::Completed && run.state.step < total {
        let step = run.state.step;
        let (epoch, micro) = &schedule[step as usize];
        let lr = learning_rate(step, warmup, total, config.learning_rate);
        let vars = run.lora.vars();
        let StepGradients { mut grads, loss, tokens } =
            step_gradients(&base, &run.lora, &vars, &dataset.examples, micro, step, config)?;
        tokens_done += tokens;
        let grad_norm = clip_grad_norm(&mut grads, config.max_grad_norm)?;
        if !loss.is_finite() || !grad_norm.is_finite() {
            let last = last_good_checkpoint(&run.checkpoints)?;
            let step = step + 1;
            return Err(MlError::Diverged(format!(
                "step {step}: loss {loss}, gradient norm {grad_norm}; no update was applied; {last}"
            )));
        }
        run.optimizer.step(&vars, &grads, lr)?;
        run.state.step += 1;
        let elapsed = clock.elapsed().as_secs_f64().max(1e-9);
        let per_step = elapsed / (run.state.step - first_step) as f64;
        let event = TrainEvent::Step {
            step: run.state.step,
            total_steps: total,
            epoch: *epoch,
            loss,
            learning_rate: lr,
            grad_norm,
            tokens_per_s: tokens_done as f64 / elapsed,
            eta_s: per_step * (total - run.state.step) as f64,
        };
        let stop = on_event(&event) == Control::Stop;
        if let Some(end) = run.after_step(stop, run.state.step == total, on_event)? {
            finish = end;
        }
    }
    let trained_tokens = schedule[..run.state.step as usize]
        .iter()
        .flat_map(|(_, micro)| micro.iter().flatten())
        .map(|&i| dataset.examples[i].tokens.len() as u64)
        .sum();
    conclude(job, config, &run.lora, &run.state, finish, (&train_idx, &eval_idx), trained_tokens)
}

/// What the steps of a run share: the adapter being trained, its optimizer, the state saved with
/// each checkpoint, and the held-out evaluator.
struct Run<'a> {
    config: &'a TrainConfig,
    lora: LoraVars,
    optimizer: AdamW,
    state: TrainerState,
    eval: Option<Evaluator<'a>>,
    checkpoints: PathBuf,
}

impl Run<'_> {
    /// After a step: evaluates and checkpoints where `config` asks to, and ends the run (`Some`)
    /// when early stopping triggers or when `stop` or any of these events asked for a stop; a
    /// stop before the last step checkpoints first (once).
    fn after_step(
        &mut self,
        mut stop: bool,
        last_step: bool,
        on_event: &mut dyn FnMut(&TrainEvent) -> Control,
    ) -> Result<Option<Finish>> {
        let (config, step) = (self.config, self.state.step);
        if let Some(eval) = &mut self.eval
            && (last_step || (config.eval_every > 0 && step.is_multiple_of(config.eval_every)))
        {
            let report = eval.report(step, &self.lora)?;
            self.state.record_eval(&report);
            stop |= on_event(&TrainEvent::Eval(report)) == Control::Stop;
            if config.early_stopping_patience.is_some_and(|p| self.state.evals_without_improvement >= p) && !last_step {
                on_event(&TrainEvent::EarlyStopped { step });
                return Ok(Some(Finish::EarlyStopped));
            }
        }
        let mut checkpointed = false;
        if config.checkpoint_every > 0 && step.is_multiple_of(config.checkpoint_every) {
            stop |= self.checkpoint(on_event)? == Control::Stop;
            checkpointed = true;
        }
        if !stop || last_step {
            return Ok(None);
        }
        if !checkpointed {
            self.checkpoint(on_event)?;
        }
        Ok(Some(Finish::Interrupted))
    }

    /// Writes a checkpoint of the current step and tells `on_event` where it is.
    fn checkpoint(&self, on_event: &mut dyn FnMut(&TrainEvent) -> Control) -> Result<Control> {
        let dir = write_checkpoint(&self.checkpoints, &self.lora, &self.optimizer, &self.state, self.config)?;
        Ok(on_event(&TrainEvent::Checkpoint { step: self.state.step, dir }))
    }
}

/// The outcome of a run that ended with `finish`: the newest checkpoint when interrupted,
/// otherwise the adapter and its lineage written to `job.out`.
fn conclude(
    job: &TrainJob<'_>,
    config: &TrainConfig,
    lora: &LoraVars,
    state: &TrainerState,
    finish: Finish,
    (train_idx, eval_idx): (&[usize], &[usize]),
    trained_tokens: u64,
) -> Result<TrainOutcome> {
    let dataset = job.dataset;
    if finish == Finish::Interrupted {
        let checkpoints = job.out.join(CHECKPOINTS);
        let dir = latest_checkpoint(&checkpoints)?.unwrap_or(checkpoints);
        return Ok(TrainOutcome {
            finish,
            steps: state.step,
            trained_tokens,
            last_eval: state.history.last().cloned(),
            adapter_dir: dir,
        });
    }
    write_adapter(job.out, lora, config, job.model_path)?;
    let lineage = Lineage {
        base_model: job.model_path.display().to_string(),
        base_model_blake3: hash_path(job.model_path)?,
        dataset: job.dataset_name.to_string(),
        dataset_kind: dataset.kind,
        train_records: record_hashes(dataset, train_idx),
        eval_records: record_hashes(job.held_out_set(), eval_idx),
        validation_dataset: job.validation.map(|validation| validation.name.to_string()),
        dataset_blake3: state.dataset_blake3.clone(),
        labels: dataset.labels.clone(),
        config: config.clone(),
        steps: state.step,
        finish,
        metrics: state.history.last().cloned(),
        history: state.history.clone(),
    };
    write_json(&job.out.join(LINEAGE_FILE), &lineage)?;
    Ok(TrainOutcome {
        finish,
        steps: state.step,
        trained_tokens,
        last_eval: state.history.last().cloned(),
        adapter_dir: job.out.to_path_buf(),
    })
}

/// One optimizer step's worth of forward and backward passes.
struct StepGradients {
    /// One per trainable variable, summed over the micro-batches.
    grads: Vec<Tensor>,
    /// Mean loss per scored token over the step.
    loss: f64,
    /// Tokens fed, padding included (for the throughput figure).
    tokens: usize,
}

/// Runs the micro-batches of `step`, accumulating gradients of the step's mean loss (each
/// micro-batch's summed loss divided by the scored tokens of the whole step).
fn step_gradients(
    base: &TrainBase,
    lora: &LoraVars,
    vars: &[&Var],
    examples: &[Example],
    micro: &[Vec<usize>],
    step: u64,
    config: &TrainConfig,
) -> Result<StepGradients> {
    let step_tokens: usize = micro.iter().flatten().map(|&i| examples[i].scored_tokens()).sum();
    let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
    let (mut loss_sum, mut tokens) = (0f64, 0usize);
    for (m, indices) in micro.iter().enumerate() {
        let batch = batch_of(examples, indices, base.device())?;
        let mode = Mode::train(Some((config.dropout, mix(config.seed, step, m as u64))));
        let (nll, _) = base.forward(Some(lora), &batch, &mode)?;
        let sum = nll.sum_all()?;
        loss_sum += sum.to_scalar::<f32>()? as f64;
        let store = (sum / step_tokens as f64)?.backward()?;
        for (slot, var) in grads.iter_mut().zip(vars) {
            let g = store.get(var.as_tensor()).cloned().unwrap_or(var.zeros_like()?);
            *slot = Some(match slot.take() {
                Some(acc) => (acc + g)?,
                None => g,
            });
        }
        tokens += batch.tokens.elem_count();
    }
    let loss = (|| {
        // Tests inject a non-finite loss here; a real divergence takes many steps to show.
        fail::fail_point!("train-loss", |_| f64::NAN);
        loss_sum / step_tokens.max(1) as f64
    })();
    Ok(StepGradients { grads: grads.into_iter().flatten().collect(), loss, tokens })
}

fn record_hashes(dataset: &Dataset, indices: &[usize]) -> Vec<String> {
    indices.iter().map(|&i| dataset.examples[i].hash.to_string()).collect()
}

/// A seed for one micro-batch's dropout, from the run seed and its position in the run.
fn mix(seed: u64, step: u64, micro: u64) -> u64 {
    let mut x = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ micro.wrapping_mul(0xD1B5_4A32_D192_ED03);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
}

/// A validation dataset must be of the training dataset's kind and labels, and not empty.
fn check_validation(train: &Dataset, validation: &Dataset) -> Result<()> {
    if validation.kind != train.kind {
        return Err(MlError::InvalidRequest(format!(
            "the validation records are {:?} but the training records are {:?}: both must be of one kind",
            validation.kind, train.kind
        )));
    }
    if validation.labels != train.labels {
        return Err(MlError::InvalidRequest(
            "the validation records were tokenized with other labels than the training records".into(),
        ));
    }
    if validation.examples.is_empty() {
        return Err(MlError::InvalidRequest("the validation dataset has no records".into()));
    }
    Ok(())
}

/// Held-out and training example indices: a seeded shuffle, the first `split` share held out.
fn split(n: usize, share: f64, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed ^ 0x5EED));
    let held = if share > 0.0 { ((n as f64 * share).round() as usize).max(1) } else { 0 };
    if held >= n {
        return Err(MlError::InvalidRequest(format!(
            "{n} records leave nothing to train on after holding out {share} for evaluation"
        )));
    }
    let mut eval: Vec<usize> = order[..held].to_vec();
    let mut train: Vec<usize> = order[held..].to_vec();
    eval.sort_unstable();
    train.sort_unstable();
    Ok((train, eval))
}

fn dataset_identity(dataset: &Dataset, train: &[usize]) -> String {
    let hashes: Vec<&[u8]> = train.iter().map(|&i| dataset.examples[i].hash.as_bytes().as_slice()).collect();
    ContentHash::of_parts(&hashes).to_string()
}

/// Every optimizer step of the run: its epoch and its micro-batches (example indices). Each
/// epoch visits the training examples in a seeded order.
fn schedule(dataset: &Dataset, train: &[usize], config: &TrainConfig) -> Vec<(usize, Vec<Vec<usize>>)> {
    let mut steps = Vec::new();
    for epoch in 0..config.epochs {
        let mut order = train.to_vec();
        order.shuffle(&mut StdRng::seed_from_u64(mix(config.seed, epoch as u64, u64::MAX)));
        let mut micro = micro_batches(&order, |i| dataset.examples[i].tokens.len(), config.batch_tokens);
        if let Some(cap) = config.max_batch_examples {
            micro = micro.iter().flat_map(|batch| batch.chunks(cap).map(<[usize]>::to_vec)).collect();
        }
        for chunk in micro.chunks(config.grad_accum) {
            steps.push((epoch, chunk.to_vec()));
        }
    }
    if let Some(max) = config.max_steps {
        steps.truncate(max as usize);
    }
    steps
}

fn batch_of(examples: &[Example], indices: &[usize], device: &Device) -> Result<Batch> {
    let parts: Vec<(&[u32], usize)> =
        indices.iter().map(|&i| (examples[i].tokens.as_slice(), examples[i].first_scored)).collect();
    Batch::new(&parts, device)
}

/// BLAKE3 of a model file, or of a directory's files in name order.
pub fn hash_path(path: &Path) -> Result<String> {
    let mut hasher = blake3::Hasher::new();
    let mut files = Vec::new();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).map_err(|e| MlError::io(path, e))?.flatten() {
            if entry.path().is_file() {
                files.push(entry.path());
            }
        }
        files.sort();
    } else {
        files.push(path.to_path_buf());
    }
    for file in files {
        let mut f = std::fs::File::open(&file).map_err(|e| MlError::io(&file, e))?;
        hasher.update_reader(&mut f).map_err(|e| MlError::io(&file, e))?;
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// Reads a trained adapter's `Var`s back, e.g. for per-example gradients (`grads.rs`).
pub(crate) fn vars_from_adapter(base: &TrainBase, adapter: &crate::lora::LoraAdapter) -> Result<LoraVars> {
    let mut pairs = std::collections::BTreeMap::new();
    for ((layer, target), pair) in adapter.pairs() {
        // Adapters loaded for serving hold f16 on the CPU (`LoraPair`); training wants f32.
        let f32 = |t: &candle_core::Tensor| t.to_dtype(candle_core::DType::F32);
        let (a, b) = (f32(&pair.a()?)?, f32(&pair.b()?)?);
        let b = match base.config.interleaved_rope_heads(target) {
            Some(heads) => crate::lora::unpermute_for_interleaved_rope(&b, heads)?,
            None => b,
        };
        pairs.insert((layer, target), (Var::from_tensor(&a)?, Var::from_tensor(&b)?));
    }
    Ok(LoraVars { rank: adapter.rank, scale: adapter.scale as f64, pairs })
}
