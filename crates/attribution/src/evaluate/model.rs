//! The model side of the evaluation: the base model, adapters trained by crates/ml's trainer on
//! any subset of the corpus, per-example projected gradients, and per-example losses.

use std::path::{Path, PathBuf};

use crate::influence::Probing;
use candle_core::Device;
use openledger_ml::AdapterPrecision;
use openledger_ml::adapters::load_adapter_dir_as;
use openledger_ml::lora::LoraAdapter;
use openledger_ml::testing::{TinyModel, TinySpec};
use openledger_ml::train::data::{Dataset, Example, RecordKind, Tokenize, micro_batches, parse_records};
use openledger_ml::train::{Control, TrainConfig, TrainJob, example_losses, train};
use openledger_ml::{LlamaModel, Tokenizer};

use super::corpus::LabelledText;
use crate::{AttributionError, Result};

/// Written beside a finished adapter: the key of the run that made it (see `train_on`).
const RUN_KEY_FILE: &str = "run-key";

/// The base model adapters are trained on.
#[derive(Clone, Debug)]
pub enum BaseModel {
    /// A tiny seeded random model written to the work directory: fast, for tests.
    Tiny(TinySpec),
    /// A GGUF file or safetensors directory (e.g. SmolLM2-135M-Instruct).
    Path(PathBuf),
}

/// A loaded base model, the data tokenized for it, and where its adapters go.
pub(super) struct Trainer {
    pub model: LlamaModel,
    pub model_path: PathBuf,
    pub train: Dataset,
    pub validation: Dataset,
    pub test: Dataset,
    config: TrainConfig,
    work_dir: PathBuf,
    pub batch_tokens: usize,
    pub tokenizer: Tokenizer,
    labels: Vec<String>,
    max_tokens: usize,
}

impl Trainer {
    pub fn new(
        base: &BaseModel,
        work_dir: &Path,
        config: &TrainConfig,
        (records, validation, test): (&[LabelledText], &[LabelledText], &[LabelledText]),
        labels: &[String],
    ) -> Result<Self> {
        std::fs::create_dir_all(work_dir).map_err(|e| AttributionError::io(work_dir, e))?;
        let model_path = match base {
            BaseModel::Tiny(spec) => TinyModel::new(spec.clone())?
                .write_gguf(&work_dir.join("tiny.gguf"), candle_core::quantized::GgmlDType::F32)?,
            BaseModel::Path(path) => path.clone(),
        };
        let (model, tokenizer) = openledger_ml::load_model(&model_path, &Device::Cpu)?;
        let max_tokens = config.max_seq_tokens.unwrap_or(model.config().context_length);
        let (train, validation, test) = (
            tokenized(&tokenizer, max_tokens, labels, records)?,
            tokenized(&tokenizer, max_tokens, labels, validation)?,
            tokenized(&tokenizer, max_tokens, labels, test)?,
        );
        let config = TrainConfig { eval_split: 0.0, checkpoint_every: 0, keep_checkpoints: 1, ..config.clone() };
        let batch_tokens = config.batch_tokens;
        Ok(Self {
            model,
            model_path,
            train,
            validation,
            test,
            config,
            work_dir: work_dir.to_path_buf(),
            batch_tokens,
            tokenizer,
            labels: labels.to_vec(),
            max_tokens,
        })
    }

    /// `texts` tokenized as the corpus was (for records made after the corpus, such as copies).
    pub fn dataset(&self, texts: &[LabelledText]) -> Result<Dataset> {
        tokenized(&self.tokenizer, self.max_tokens, &self.labels, texts)
    }

    /// Trains a fresh adapter on the training records at `indices` into `work_dir/name`, or
    /// loads the one a previous run left there for the same model, settings and records (a
    /// re-run of a bench then costs no training).
    pub fn train_on(&self, indices: &[usize], name: &str) -> Result<LoraAdapter> {
        let subset = Dataset {
            kind: self.train.kind,
            examples: indices.iter().map(|&i| self.train.examples[i].clone()).collect(),
            labels: self.train.labels.clone(),
            label_tokens: self.train.label_tokens.clone(),
        };
        let out = self.work_dir.join(name);
        let key = self.run_key(&subset)?;
        let key_path = out.join(RUN_KEY_FILE);
        if std::fs::read_to_string(&key_path).is_ok_and(|k| k == key) {
            return Ok(load_adapter_dir_as(name, &out, &self.model, AdapterPrecision::Exact)?);
        }
        if out.exists() {
            std::fs::remove_dir_all(&out).map_err(|e| AttributionError::io(&out, e))?;
        }
        let job = TrainJob {
            model: &self.model,
            model_path: &self.model_path,
            dataset: &subset,
            dataset_name: name,
            validation: None,
            out: &out,
            resume: false,
        };
        train(&job, &self.config, &mut |_| Control::Continue)?;
        std::fs::write(&key_path, key).map_err(|e| AttributionError::io(&key_path, e))?;
        Ok(load_adapter_dir_as(name, &out, &self.model, AdapterPrecision::Exact)?)
    }

    /// What an adapter depends on: the model file, the settings and the records in order.
    fn run_key(&self, subset: &Dataset) -> Result<String> {
        let mut hasher = blake3::Hasher::new();
        hasher.update(self.model_path.display().to_string().as_bytes());
        hasher.update(&serde_json::to_vec(&self.config).map_err(|e| AttributionError::invalid(e.to_string()))?);
        for example in &subset.examples {
            hasher.update(example.hash.as_bytes());
        }
        Ok(hasher.finalize().to_hex().to_string())
    }

    /// Each example's LoRA gradient under `adapter` as `probing` takes it, one vector per
    /// layer it holds.
    pub fn gradients(
        &self,
        adapter: &LoraAdapter,
        probing: Probing,
        examples: &[Example],
    ) -> Result<Vec<Vec<Vec<f32>>>> {
        let probe = probing.probe(&self.model, adapter)?;
        let order: Vec<usize> = (0..examples.len()).collect();
        let mut rows = Vec::with_capacity(examples.len());
        for batch in micro_batches(&order, |i| examples[i].tokens.len(), self.batch_tokens) {
            rows.extend(probe.gradients(&parts(examples, &batch))?);
        }
        Ok(rows)
    }

    /// Each example's mean loss per scored token under `adapter`.
    pub fn losses(&self, adapter: &LoraAdapter, examples: &[Example]) -> Result<Vec<f64>> {
        let all: Vec<usize> = (0..examples.len()).collect();
        Ok(example_losses(&self.model, Some(adapter), &parts(examples, &all), self.batch_tokens)?)
    }
}

fn tokenized(tokenizer: &Tokenizer, max_tokens: usize, labels: &[String], texts: &[LabelledText]) -> Result<Dataset> {
    let lines: Vec<String> =
        texts.iter().map(|t| serde_json::json!({"text": t.text, "label": t.label}).to_string()).collect();
    let (kind, parsed) = parse_records(&lines.join("\n")).map_err(AttributionError::invalid)?;
    debug_assert_eq!(kind, RecordKind::Labelled);
    Ok(Tokenize { tokenizer, max_tokens }.dataset(kind, &parsed, Some(labels))?)
}

fn parts<'a>(examples: &'a [Example], indices: &[usize]) -> Vec<(&'a [u32], usize)> {
    indices.iter().map(|&i| (examples[i].tokens.as_slice(), examples[i].first_scored)).collect()
}
