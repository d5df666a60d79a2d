//! A run's hyper-parameters (`TrainConfig`), their defaults, and the limits `validate` holds
//! them to.

use serde::{Deserialize, Serialize};

use crate::error::{MlError, Result};
use crate::lora::Target;

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
    /// Most examples in one micro-batch (`None`: as many as `batch_tokens` holds).
    #[serde(default)]
    pub max_batch_examples: Option<usize>,
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
            max_batch_examples: None,
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
        if self.max_batch_examples == Some(0) {
            return bad("max batch examples must be at least 1".into());
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

    pub(super) fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}
