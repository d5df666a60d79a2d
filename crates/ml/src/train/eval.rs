//! Held-out evaluation: loss, perplexity and, for labelled data, label accuracy of the adapter
//! next to the base model alone, during a run (`Evaluator`) and for a finished adapter
//! (`evaluate`).

use serde::{Deserialize, Serialize};

use super::batch_of;
use super::data::{Dataset, RecordKind, micro_batches};
use super::net::{Batch, LoraVars, Mode, TrainBase};
use super::vars_from_adapter;
use crate::error::{MlError, Result};
use crate::model::LlamaModel;

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

/// A held-out loss (mean per scored token) and, for labelled data, the label accuracy.
type Metrics = (f64, Option<f64>);

impl EvalReport {
    fn new(step: u64, (loss, accuracy): Metrics, (base_loss, base_accuracy): Metrics) -> Self {
        Self {
            step,
            loss,
            perplexity: loss.exp(),
            accuracy,
            base_loss,
            base_perplexity: base_loss.exp(),
            base_accuracy,
        }
    }
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
    let base_metrics = evaluator.metrics(None)?;
    let metrics = match adapter {
        Some(adapter) => evaluator.metrics(Some(&vars_from_adapter(&base, adapter)?))?,
        None => base_metrics,
    };
    Ok(EvalReport::new(0, metrics, base_metrics))
}

/// Each example's loss (mean negative log-likelihood of its scored tokens) under `adapter`, or
/// the base model alone: what a datamodel compares across retrained adapters. `examples`:
/// tokens and the index of the first scored token, as for `GradientProbe::gradients`.
pub fn example_losses(
    model: &LlamaModel,
    adapter: Option<&crate::lora::LoraAdapter>,
    examples: &[(&[u32], usize)],
    batch_tokens: usize,
) -> Result<Vec<f64>> {
    let base = TrainBase::new(model)?;
    let lora = adapter.map(|a| vars_from_adapter(&base, a)).transpose()?;
    let (mut sums, mut counts) = (vec![0f64; examples.len()], vec![0usize; examples.len()]);
    let order: Vec<usize> = (0..examples.len()).collect();
    for chunk in micro_batches(&order, |i| examples[i].0.len(), batch_tokens) {
        let parts: Vec<(&[u32], usize)> = chunk.iter().map(|&i| examples[i]).collect();
        let batch = Batch::new(&parts, base.device())?;
        let nll: Vec<f32> = base.forward(lora.as_ref(), &batch, &Mode::eval())?.0.to_vec1()?;
        for (row, value) in batch.row_example.iter().zip(nll) {
            sums[chunk[*row]] += value as f64;
            counts[chunk[*row]] += 1;
        }
    }
    if let Some(i) = counts.iter().position(|&c| c == 0) {
        return Err(MlError::InvalidRequest(format!("example {i} has no scored token")));
    }
    Ok(sums.iter().zip(&counts).map(|(s, &c)| s / c as f64).collect())
}

/// Held-out loss, perplexity and label accuracy, for the adapter and the base model.
pub(super) struct Evaluator<'a> {
    base: &'a TrainBase,
    dataset: &'a Dataset,
    batches: Vec<Vec<usize>>,
    /// Labelled data: per held-out example, its prompt followed by each label's tokens.
    candidates: Vec<(usize, Vec<Vec<u32>>)>,
    batch_tokens: usize,
    /// The base model's metrics, computed at the first report (they do not change).
    base_metrics: Option<Metrics>,
}

impl<'a> Evaluator<'a> {
    pub(super) fn new(
        base: &'a TrainBase,
        dataset: &'a Dataset,
        eval: &[usize],
        batch_tokens: usize,
    ) -> Result<Option<Self>> {
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
        Ok(Some(Self { base, dataset, batches, candidates, batch_tokens, base_metrics: None }))
    }

    /// The adapter's metrics after `step`, next to the base model's.
    pub(super) fn report(&mut self, step: u64, lora: &LoraVars) -> Result<EvalReport> {
        let metrics = self.metrics(Some(lora))?;
        let base_metrics = match self.base_metrics {
            Some(m) => m,
            None => *self.base_metrics.insert(self.metrics(None)?),
        };
        Ok(EvalReport::new(step, metrics, base_metrics))
    }

    fn metrics(&self, lora: Option<&LoraVars>) -> Result<Metrics> {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use candle_core::Device;
    use candle_core::quantized::GgmlDType;

    use super::*;
    use crate::adapters::load_adapter_dir;
    use crate::lora::Target;
    use crate::testing::{TinyModel, TinySpec, write_peft_adapter};

    #[test]
    fn per_example_losses_of_a_batch_equal_each_example_alone_and_follow_the_adapter() {
        let dir = tempfile::tempdir().unwrap();
        let tiny = TinyModel::new(TinySpec::default()).unwrap();
        let path = tiny.write_gguf(&dir.path().join("t.gguf"), GgmlDType::F32).unwrap();
        let model = LlamaModel::from_gguf(&path, &Device::Cpu).unwrap();
        let adapter_dir = dir.path().join("adapter");
        write_peft_adapter(&adapter_dir, model.config(), 4, &[Target::Q, Target::V], 3, false).unwrap();
        let adapter = load_adapter_dir("a", &adapter_dir, &model).unwrap();
        let tokens: Vec<Vec<u32>> = vec![(1..=9).map(|i| i * 7 % 250).collect(), (1..=4).collect()];
        let examples: Vec<(&[u32], usize)> = tokens.iter().map(|t| (t.as_slice(), 2)).collect();
        let batched = example_losses(&model, Some(&adapter), &examples, 64).unwrap();
        for (i, example) in examples.iter().enumerate() {
            let alone = example_losses(&model, Some(&adapter), std::slice::from_ref(example), 64).unwrap();
            assert!((alone[0] - batched[i]).abs() < 1e-4, "{} vs {}", alone[0], batched[i]);
            assert!(batched[i].is_finite() && batched[i] > 0.0);
        }
        let base = example_losses(&model, None, &examples, 64).unwrap();
        assert!(base.iter().zip(&batched).any(|(a, b)| (a - b).abs() > 1e-4), "the adapter changes the losses");
        let empty: Vec<(&[u32], usize)> = vec![(&tokens[1], 4)];
        assert!(example_losses(&model, None, &empty, 64).is_err(), "an example with nothing scored is refused");
    }
}
