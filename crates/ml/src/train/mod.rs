//! LoRA fine-tuning (the ModelFactory trainer): AdamW with warmup + cosine decay, gradient
//! accumulation and clipping, padding-aware micro-batches under a token budget, held-out
//! evaluation next to the base model, early stopping, checkpoints that resume bit-exactly,
//! and a PEFT adapter with its lineage at the end.
//!
//! The base model is held as f32 (candle's quantized matmul has no backward pass): about
//! 4 bytes per parameter, plus activations. The adapter it produces is a plain PEFT adapter
//! and serves on the quantized base in the engine.

pub mod data;
mod fused;
pub mod grads;
mod layer;
mod net;
mod optim;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use openledger_core::ContentHash;
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use crate::error::{MlError, Result};
use crate::lora::{Target, peft_tensor_name};
use crate::model::LlamaModel;
use data::{Dataset, Example, RecordKind, micro_batches};
use net::{Batch, LoraVars, Mode, TrainBase};
use optim::{AdamW, AdamWParams, clip_grad_norm, learning_rate};

/// Hyper-parameters of a run. Every field is checked by `validate`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f32,
    pub targets: Vec<Target>,
    pub learning_rate: f64,
    pub weight_decay: f64,
    /// Linear warmup steps; `None`: a tenth of the run.
    pub warmup_steps: Option<u64>,
    pub epochs: usize,
    /// Stop after this many optimizer steps even if epochs remain.
    pub max_steps: Option<u64>,
    /// Padded tokens per micro-batch (examples × longest example).
    pub batch_tokens: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Global gradient-norm clip (0 turns it off).
    pub max_grad_norm: f64,
    pub seed: u64,
    /// Share of records held out for evaluation (0 turns evaluation off).
    pub eval_split: f64,
    /// Evaluate every this many steps (and at the end).
    pub eval_every: u64,
    /// Stop when the held-out loss has not improved for this many evaluations.
    pub early_stopping_patience: Option<usize>,
    /// Checkpoint every this many steps (0: only when stopped early or interrupted).
    pub checkpoint_every: u64,
    /// Complete checkpoints kept (older ones are removed).
    pub keep_checkpoints: usize,
    /// Longest example in tokens (`None`: the model's context).
    pub max_seq_tokens: Option<usize>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            rank: 16,
            alpha: 32.0,
            dropout: 0.05,
            targets: vec![Target::Q, Target::V],
            learning_rate: 2e-4,
            weight_decay: 0.01,
            warmup_steps: None,
            epochs: 1,
            max_steps: None,
            batch_tokens: 2048,
            grad_accum: 1,
            max_grad_norm: 1.0,
            seed: 0,
            eval_split: 0.1,
            eval_every: 50,
            early_stopping_patience: None,
            checkpoint_every: 100,
            keep_checkpoints: 2,
            max_seq_tokens: None,
        }
    }
}

/// Limits on hyper-parameters, documented in the README.
pub const MAX_RANK: usize = 1024;
pub const MAX_EPOCHS: usize = 1000;
pub const MAX_BATCH_TOKENS: usize = 1 << 20;

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(MlError::InvalidRequest(m));
        if self.rank == 0 || self.rank > MAX_RANK {
            return bad(format!("rank {} must be in 1..={MAX_RANK}", self.rank));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return bad(format!("alpha {} must be positive", self.alpha));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} must be in [0, 1)", self.dropout));
        }
        if self.targets.is_empty() {
            return bad("no target modules".into());
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0 && self.learning_rate < 1.0) {
            return bad(format!("learning rate {} must be in (0, 1)", self.learning_rate));
        }
        if !(self.weight_decay.is_finite() && (0.0..1.0).contains(&self.weight_decay)) {
            return bad(format!("weight decay {} must be in [0, 1)", self.weight_decay));
        }
        if self.epochs == 0 || self.epochs > MAX_EPOCHS {
            return bad(format!("epochs {} must be in 1..={MAX_EPOCHS}", self.epochs));
        }
        if self.batch_tokens < 2 || self.batch_tokens > MAX_BATCH_TOKENS {
            return bad(format!("batch tokens {} must be in 2..={MAX_BATCH_TOKENS}", self.batch_tokens));
        }
        if self.grad_accum == 0 || self.grad_accum > 1024 {
            return bad(format!("gradient accumulation {} must be in 1..=1024", self.grad_accum));
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0) {
            return bad(format!("max grad norm {} must be ≥ 0", self.max_grad_norm));
        }
        if !(0.0..0.9).contains(&self.eval_split) {
            return bad(format!("eval split {} must be in [0, 0.9)", self.eval_split));
        }
        if self.keep_checkpoints == 0 {
            return bad("keep at least one checkpoint".into());
        }
        if self.max_steps == Some(0) {
            return bad("max steps must be at least 1".into());
        }
        Ok(())
    }

    fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// Held-out metrics of the adapter and, side by side, of the base model alone.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EvalReport {
    pub step: u64,
    pub loss: f64,
    pub perplexity: f64,
    pub accuracy: Option<f64>,
    pub base_loss: f64,
    pub base_perplexity: f64,
    pub base_accuracy: Option<f64>,
}

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
    pub eval_records: Vec<String>,
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
    pub out: &'a Path,
    /// Continue from the newest checkpoint in `out/checkpoints` if there is one.
    pub resume: bool,
}

/// Saved alongside each checkpoint's tensors.
#[derive(Serialize, Deserialize)]
struct TrainerState {
    step: u64,
    config: TrainConfig,
    dataset_blake3: String,
    best_eval_loss: Option<f64>,
    evals_without_improvement: usize,
    history: Vec<EvalReport>,
}

const CHECKPOINTS: &str = "checkpoints";
const STATE_FILE: &str = "trainer_state.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const LINEAGE_FILE: &str = "lineage.json";

/// Runs (or resumes) a fine-tuning job. `on_event` sees every event and may stop the run.
pub fn train(
    job: &TrainJob<'_>,
    config: &TrainConfig,
    on_event: &mut dyn FnMut(&TrainEvent) -> Control,
) -> Result<TrainOutcome> {
    config.validate()?;
    let dataset = job.dataset;
    let (train_idx, eval_idx) = split(dataset.examples.len(), config.eval_split, config.seed)?;
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
    let mut state = start_state(job, config, &checkpoints, &lora, &mut optimizer, dataset_blake3)?;
    let eval = Evaluator::new(&base, dataset, &eval_idx, config.batch_tokens)?;
    let mut base_metrics = None;
    let started = TrainEvent::Started {
        total_steps: total,
        start_step: state.step,
        train_examples: train_idx.len(),
        eval_examples: eval_idx.len(),
        truncated_examples: dataset.examples.iter().filter(|e| e.truncated).count(),
        base_f32_bytes: base.weight_bytes(),
    };
    let mut finish = Finish::Completed;
    let mut stop = on_event(&started) == Control::Stop;
    let clock = Instant::now();
    let (mut tokens_done, first_step) = (0usize, state.step);
    let vars = lora.vars();
    while state.step < total {
        if stop {
            // Stopped before the first step of this run: nothing new to checkpoint.
            finish = Finish::Interrupted;
            break;
        }
        let step = state.step;
        let (epoch, micro) = &schedule[step as usize];
        let lr = learning_rate(step, warmup, total, config.learning_rate);
        let StepGradients { mut grads, loss, tokens } =
            step_gradients(&base, &lora, &vars, &dataset.examples, micro, step, config)?;
        tokens_done += tokens;
        let grad_norm = clip_grad_norm(&mut grads, config.max_grad_norm)?;
        if !loss.is_finite() || !grad_norm.is_finite() {
            let last = last_good_checkpoint(&checkpoints)?;
            let step = step + 1;
            return Err(MlError::Diverged(format!(
                "step {step}: loss {loss}, gradient norm {grad_norm}; no update was applied; {last}"
            )));
        }
        optimizer.step(&vars, &grads, lr)?;
        state.step += 1;
        let elapsed = clock.elapsed().as_secs_f64().max(1e-9);
        let per_step = elapsed / (state.step - first_step) as f64;
        let event = TrainEvent::Step {
            step: state.step,
            total_steps: total,
            epoch: *epoch,
            loss,
            learning_rate: lr,
            grad_norm,
            tokens_per_s: tokens_done as f64 / elapsed,
            eta_s: per_step * (total - state.step) as f64,
        };
        stop |= on_event(&event) == Control::Stop;
        let last_step = state.step == total;
        if let Some(eval) = &eval
            && (last_step || (config.eval_every > 0 && state.step.is_multiple_of(config.eval_every)))
        {
            let report = eval.report(state.step, &lora, &mut base_metrics)?;
            state.record_eval(&report);
            stop |= on_event(&TrainEvent::Eval(report)) == Control::Stop;
            if config.early_stopping_patience.is_some_and(|p| state.evals_without_improvement >= p) && !last_step {
                finish = Finish::EarlyStopped;
                on_event(&TrainEvent::EarlyStopped { step: state.step });
                break;
            }
        }
        let mut checkpointed = false;
        if config.checkpoint_every > 0 && state.step.is_multiple_of(config.checkpoint_every) {
            let dir = write_checkpoint(&checkpoints, &lora, &optimizer, &state, config)?;
            stop |= on_event(&TrainEvent::Checkpoint { step: state.step, dir }) == Control::Stop;
            checkpointed = true;
        }
        if stop && !last_step {
            // A stop asked for at any event of this step: checkpoint here (once) and return.
            if !checkpointed {
                let dir = write_checkpoint(&checkpoints, &lora, &optimizer, &state, config)?;
                on_event(&TrainEvent::Checkpoint { step: state.step, dir });
            }
            finish = Finish::Interrupted;
            break;
        }
    }
    conclude(job, config, &lora, &state, finish, (&train_idx, &eval_idx))
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
) -> Result<TrainOutcome> {
    let dataset = job.dataset;
    if finish == Finish::Interrupted {
        let checkpoints = job.out.join(CHECKPOINTS);
        let dir = latest_checkpoint(&checkpoints)?.unwrap_or(checkpoints);
        return Ok(TrainOutcome {
            finish,
            steps: state.step,
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
        eval_records: record_hashes(dataset, eval_idx),
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
        last_eval: state.history.last().cloned(),
        adapter_dir: job.out.to_path_buf(),
    })
}

/// A fresh state, or with `job.resume` the newest checkpoint's (its tensors loaded into `lora`
/// and `optimizer`, after checking it was made from the same data).
fn start_state(
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

impl TrainerState {
    /// Keeps an evaluation in the history and counts evaluations without a new best loss (what
    /// early stopping reads).
    fn record_eval(&mut self, report: &EvalReport) {
        if self.best_eval_loss.is_none_or(|best| report.loss < best) {
            self.best_eval_loss = Some(report.loss);
            self.evals_without_improvement = 0;
        } else {
            self.evals_without_improvement += 1;
        }
        self.history.push(report.clone());
    }
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

/// Held-out style metrics of `adapter` (and the base model alone) over every example of
/// `dataset`: loss, perplexity and, for labelled data, accuracy.
pub fn evaluate(
    model: &LlamaModel,
    adapter: Option<&crate::lora::LoraAdapter>,
    dataset: &Dataset,
    batch_tokens: usize,
) -> Result<EvalReport> {
    let base = TrainBase::new(model)?;
    let all: Vec<usize> = (0..dataset.examples.len()).collect();
    let evaluator = Evaluator::new(&base, dataset, &all, batch_tokens)?
        .ok_or_else(|| MlError::InvalidRequest("the dataset has no records".into()))?;
    let (base_loss, base_accuracy) = evaluator.metrics(None)?;
    let (loss, accuracy) = match adapter {
        Some(adapter) => evaluator.metrics(Some(&vars_from_adapter(&base, adapter)?))?,
        None => (base_loss, base_accuracy),
    };
    Ok(EvalReport {
        step: 0,
        loss,
        perplexity: loss.exp(),
        accuracy,
        base_loss,
        base_perplexity: base_loss.exp(),
        base_accuracy,
    })
}

/// A seed for one micro-batch's dropout, from the run seed and its position in the run.
fn mix(seed: u64, step: u64, micro: u64) -> u64 {
    let mut x = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ micro.wrapping_mul(0xD1B5_4A32_D192_ED03);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
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
        let micro = micro_batches(&order, |i| dataset.examples[i].tokens.len(), config.batch_tokens);
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

/// Held-out loss, perplexity and label accuracy, for the adapter and the base model.
struct Evaluator<'a> {
    base: &'a TrainBase,
    dataset: &'a Dataset,
    batches: Vec<Vec<usize>>,
    /// Labelled data: per held-out example, its prompt followed by each label's tokens.
    candidates: Vec<(usize, Vec<Vec<u32>>)>,
    batch_tokens: usize,
}

impl<'a> Evaluator<'a> {
    fn new(base: &'a TrainBase, dataset: &'a Dataset, eval: &[usize], batch_tokens: usize) -> Result<Option<Self>> {
        if eval.is_empty() {
            return Ok(None);
        }
        let batches = micro_batches(eval, |i| dataset.examples[i].tokens.len(), batch_tokens);
        let mut candidates = Vec::new();
        if dataset.kind == RecordKind::Labelled {
            for &i in eval {
                let e = &dataset.examples[i];
                let prompt = &e.tokens[..e.first_scored];
                candidates.push((i, dataset.label_tokens.iter().map(|label| [prompt, label].concat()).collect()));
            }
        }
        Ok(Some(Self { base, dataset, batches, candidates, batch_tokens }))
    }

    fn report(&self, step: u64, lora: &LoraVars, base_metrics: &mut Option<(f64, Option<f64>)>) -> Result<EvalReport> {
        let (loss, accuracy) = self.metrics(Some(lora))?;
        let (base_loss, base_accuracy) = match base_metrics {
            Some(m) => *m,
            None => *base_metrics.insert(self.metrics(None)?),
        };
        Ok(EvalReport {
            step,
            loss,
            perplexity: loss.exp(),
            accuracy,
            base_loss,
            base_perplexity: base_loss.exp(),
            base_accuracy,
        })
    }

    fn metrics(&self, lora: Option<&LoraVars>) -> Result<(f64, Option<f64>)> {
        let mode = Mode::eval();
        let (mut sum, mut count) = (0f64, 0usize);
        for batch in &self.batches {
            let b = batch_of(&self.dataset.examples, batch, self.base.device())?;
            let (nll, _) = self.base.forward(lora, &b, &mode)?;
            sum += nll.sum_all()?.to_scalar::<f32>()? as f64;
            count += b.row_example.len();
        }
        let loss = sum / count.max(1) as f64;
        if self.candidates.is_empty() {
            return Ok((loss, None));
        }
        let mut correct = 0;
        for (i, options) in &self.candidates {
            let example = &self.dataset.examples[*i];
            let mut scores = vec![0f64; options.len()];
            let all: Vec<usize> = (0..options.len()).collect();
            for chunk in micro_batches(&all, |k| options[k].len(), self.batch_tokens) {
                let parts: Vec<(&[u32], usize)> =
                    chunk.iter().map(|&k| (options[k].as_slice(), example.first_scored)).collect();
                let b = Batch::new(&parts, self.base.device())?;
                let nll: Vec<f32> = self.base.forward(lora, &b, &mode)?.0.to_vec1()?;
                for (row, value) in b.row_example.iter().zip(nll) {
                    scores[chunk[*row]] += value as f64;
                }
            }
            let best =
                scores.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1)).map(|(k, _)| &self.dataset.labels[k]);
            if best == example.label.as_ref() {
                correct += 1;
            }
        }
        Ok((loss, Some(correct as f64 / self.candidates.len() as f64)))
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| MlError::corrupt("json", e))?;
    write_file(path, text.as_bytes())
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
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
fn write_adapter(dir: &Path, lora: &LoraVars, config: &TrainConfig, model_path: &Path) -> Result<()> {
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
fn latest_checkpoint(dir: &Path) -> Result<Option<PathBuf>> {
    Ok(checkpoint_dirs(dir)?.into_iter().rev().map(|(_, p)| p).find(|p| p.join(STATE_FILE).is_file()))
}

/// Where a failed run can go back to, for its error message.
fn last_good_checkpoint(dir: &Path) -> Result<String> {
    Ok(latest_checkpoint(dir)?
        .map_or("no checkpoint was written yet".into(), |d| format!("the last good checkpoint is {}", d.display())))
}

/// Writes a checkpoint into a staging directory, then renames it into place; on any error the
/// staging directory is removed and earlier checkpoints stay as they were.
fn write_checkpoint(
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
        let b = match base.config.interleaved_rope_heads(target) {
            Some(heads) => crate::lora::unpermute_for_interleaved_rope(&pair.b, heads)?,
            None => pair.b.clone(),
        };
        pairs.insert((layer, target), (Var::from_tensor(&pair.a)?, Var::from_tensor(&b)?));
    }
    Ok(LoraVars { rank: adapter.rank, scale: adapter.scale as f64, pairs })
}
