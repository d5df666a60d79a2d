//! model-factory's jobs, events and checkpoints in OpenAI's shapes (`fine_tuning.job`,
//! `fine_tuning.job.event`, `fine_tuning.job.checkpoint`), with the extensions after OpenAI's
//! fields: `lora`, `datanet`, `grant_id`, `step`, `total_steps`, `training_records`,
//! `validation_records`, `final_metrics`, `executor`. Absent values are `null`, as OpenAI writes them; unset
//! hyper-parameters are `"auto"`. Times are Unix seconds.

use std::collections::BTreeMap;

use openledger_proto::{modelfactory::v1 as pb, u128_of};
use serde::Serialize;
use utoipa::ToSchema;

use super::auto::{AutoInteger, AutoModules, AutoNumber};

/// OpenAI's three hyper-parameters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, ToSchema)]
pub struct Hyperparameters {
    /// Passes over the training records (a positive integer, or "auto").
    #[serde(default)]
    pub n_epochs: AutoInteger,
    /// Training examples per optimizer step (a positive integer, or "auto").
    #[serde(default)]
    pub batch_size: AutoInteger,
    /// Times the base learning rate, 2e-4 (a positive number, or "auto").
    #[serde(default)]
    pub learning_rate_multiplier: AutoNumber,
}

/// How a job trains: OpenAI's newer spelling of `hyperparameters`. Only `supervised`.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Method {
    /// `supervised`.
    #[serde(rename = "type")]
    #[schema(pattern = "^supervised$")]
    pub kind: String,
    #[serde(default)]
    pub supervised: Option<Supervised>,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Supervised {
    #[serde(default)]
    pub hyperparameters: Hyperparameters,
}

impl Method {
    pub const SUPERVISED: &str = "supervised";

    pub fn supervised(hyperparameters: Hyperparameters) -> Self {
        Self { kind: Self::SUPERVISED.to_owned(), supervised: Some(Supervised { hyperparameters }) }
    }
}

/// Extension: the LoRA settings; each an explicit value or "auto" (the service's choice).
#[derive(Clone, Debug, Default, PartialEq, Serialize, ToSchema)]
pub struct LoraSettings {
    /// The adapter's rank (a positive integer).
    #[serde(default)]
    pub rank: AutoInteger,
    /// The LoRA scale's numerator (scale = alpha / rank; a positive number).
    #[serde(default)]
    pub alpha: AutoNumber,
    /// Dropout on the adapter's input, in [0, 1).
    #[serde(default)]
    pub dropout: AutoNumber,
    #[serde(default)]
    pub target_modules: AutoModules,
    /// Padded tokens per micro-batch (bounds memory; a positive integer).
    #[serde(default)]
    pub batch_tokens: AutoInteger,
    /// Share of the records held out for evaluation, in [0, 1).
    #[serde(default)]
    pub eval_split: AutoNumber,
    /// AdamW weight decay (a non-negative number).
    #[serde(default)]
    pub weight_decay: AutoNumber,
    /// Steps of linear warm-up (a non-negative integer).
    #[serde(default)]
    pub warmup_steps: AutoInteger,
    /// Stop after this many optimizer steps (a positive integer).
    #[serde(default)]
    pub max_steps: AutoInteger,
    /// Steps between checkpoints (a positive integer).
    #[serde(default)]
    pub checkpoint_every: AutoInteger,
    /// Steps between held-out evaluations (a positive integer).
    #[serde(default)]
    pub eval_every: AutoInteger,
    /// Longest example in tokens; longer ones are truncated (a positive integer).
    #[serde(default)]
    pub max_seq_tokens: AutoInteger,
}

/// Why a job failed.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct JobError {
    /// A stable code: `invalid_training_file`, `training_failed`, `diverged`, `storage_full`, …
    pub code: String,
    pub message: String,
    /// The request field at fault, if one is.
    pub param: Option<String>,
}

/// Extension: the sealed Datanet version a job trains on.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct DatanetVersion {
    pub id: String,
    pub version: u64,
    pub snapshot_id: String,
    /// The version's Merkle root, hex.
    pub merkle_root: String,
}

/// A held-out evaluation of the adapter next to its base model.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct EvalData {
    pub step: u64,
    pub valid_loss: f32,
    pub valid_perplexity: f32,
    /// Labelled data only: absent when not measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_mean_token_accuracy: Option<f32>,
    pub base_valid_loss: f32,
    pub base_valid_perplexity: f32,
    /// Labelled data only: absent when not measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_valid_mean_token_accuracy: Option<f32>,
}

impl From<&pb::EvalMetrics> for EvalData {
    fn from(eval: &pb::EvalMetrics) -> Self {
        Self {
            step: eval.step,
            valid_loss: eval.loss,
            valid_perplexity: eval.perplexity,
            valid_mean_token_accuracy: measured(eval.accuracy),
            base_valid_loss: eval.base_loss,
            base_valid_perplexity: eval.base_perplexity,
            base_valid_mean_token_accuracy: measured(eval.base_accuracy),
        }
    }
}

/// An accuracy, which the service writes negative when it was not measured.
fn measured(accuracy: f32) -> Option<f32> {
    (accuracy >= 0.0).then_some(accuracy)
}

/// A fine-tuning job (OpenAI's `fine_tuning.job`, with extensions).
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct FineTuningJob {
    /// `fine_tuning.job`.
    pub object: String,
    /// `ftjob-<32 hex digits>`.
    pub id: String,
    /// The base model.
    pub model: String,
    pub created_at: i64,
    /// Null until the job succeeds, fails or is cancelled.
    pub finished_at: Option<i64>,
    /// `ft:<base>:<owner account>:<suffix>:<job id hex>`, null until the adapter is registered;
    /// what `model` names in an inference request.
    pub fine_tuned_model: Option<String>,
    /// The owner's ledger account, decimal.
    pub organization_id: String,
    /// Always empty: the adapter is in the registry, not in files.
    pub result_files: Vec<String>,
    /// `validating_files`, `queued`, `running`, `succeeded`, `failed`, `cancelled` or `paused`.
    #[schema(pattern = "^(validating_files|queued|running|succeeded|failed|cancelled|paused)$")]
    pub status: String,
    /// `datanet:<slug-or-id>@<version>`, or null.
    pub validation_file: Option<String>,
    /// `datanet:<slug-or-id>@<version>`, as asked.
    pub training_file: String,
    pub hyperparameters: Hyperparameters,
    pub method: Method,
    /// Null until the job succeeds.
    pub trained_tokens: Option<u64>,
    pub error: Option<JobError>,
    pub user_provided_suffix: Option<String>,
    pub seed: u64,
    pub estimated_finish: Option<i64>,
    /// Always empty.
    #[schema(value_type = Vec<Object>)]
    pub integrations: Vec<serde_json::Value>,
    pub metadata: Option<BTreeMap<String, String>>,
    /// Extension: the LoRA settings, as resolved once the job is validated.
    pub lora: LoraSettings,
    /// Extension: the sealed Datanet version trained on, once validated.
    pub datanet: Option<DatanetVersion>,
    /// Extension: the grant the records were read under.
    pub grant_id: Option<String>,
    /// Extension: optimizer steps done.
    pub step: u64,
    /// Extension: optimizer steps planned.
    pub total_steps: u64,
    /// Extension: records trained on.
    pub training_records: u64,
    /// Extension: records of the `validation_file` version (0 without one).
    pub validation_records: u64,
    /// Extension: the adapter on the held-out split next to its base, once it has one.
    pub final_metrics: Option<EvalData>,
    /// Extension: `local` or `kubernetes`.
    pub executor: Option<String>,
}

/// OpenAI's name of a job state.
pub fn status_name(state: i32) -> &'static str {
    match pb::JobState::try_from(state) {
        Ok(pb::JobState::ValidatingFiles) => "validating_files",
        Ok(pb::JobState::Queued) => "queued",
        Ok(pb::JobState::Running) => "running",
        Ok(pb::JobState::Succeeded) => "succeeded",
        Ok(pb::JobState::Failed) => "failed",
        Ok(pb::JobState::Cancelled) => "cancelled",
        Ok(pb::JobState::Paused) => "paused",
        Ok(pb::JobState::Unspecified) | Err(_) => "unspecified",
    }
}

fn some(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

fn unix_seconds(at: Option<&prost_types::Timestamp>) -> Option<i64> {
    at.map(|at| at.seconds)
}

fn integer<T: Into<u64>>(value: Option<T>) -> AutoInteger {
    AutoInteger(value.map(Into::into))
}

impl From<Option<&pb::Hyperparameters>> for Hyperparameters {
    fn from(settings: Option<&pb::Hyperparameters>) -> Self {
        let Some(settings) = settings else { return Self::default() };
        Self {
            n_epochs: integer(settings.n_epochs),
            batch_size: integer(settings.batch_size),
            learning_rate_multiplier: AutoNumber(settings.learning_rate_multiplier),
        }
    }
}

impl From<Option<&pb::Hyperparameters>> for LoraSettings {
    fn from(settings: Option<&pb::Hyperparameters>) -> Self {
        let Some(settings) = settings else { return Self::default() };
        Self {
            rank: integer(settings.rank),
            alpha: AutoNumber(settings.alpha),
            dropout: AutoNumber(settings.dropout.map(f64::from)),
            target_modules: AutoModules((!settings.target_modules.is_empty()).then(|| settings.target_modules.clone())),
            batch_tokens: integer(settings.batch_tokens),
            eval_split: AutoNumber(settings.eval_split),
            weight_decay: AutoNumber(settings.weight_decay),
            warmup_steps: integer(settings.warmup_steps),
            max_steps: integer(settings.max_steps),
            checkpoint_every: integer(settings.checkpoint_every),
            eval_every: integer(settings.eval_every),
            max_seq_tokens: integer(settings.max_seq_tokens),
        }
    }
}

impl From<&pb::FineTuneJob> for FineTuningJob {
    fn from(job: &pb::FineTuneJob) -> Self {
        let hyperparameters = Hyperparameters::from(job.hyperparameters.as_ref());
        let succeeded = job.state == pb::JobState::Succeeded as i32;
        Self {
            object: "fine_tuning.job".to_owned(),
            id: job.id.clone(),
            model: job.base_model.clone(),
            created_at: unix_seconds(job.created_at.as_ref()).unwrap_or(0),
            finished_at: unix_seconds(job.finished_at.as_ref()),
            fine_tuned_model: some(&job.fine_tuned_model),
            organization_id: u128_of(job.owner_account_id.as_ref()).to_string(),
            result_files: Vec::new(),
            status: status_name(job.state).to_owned(),
            validation_file: some(&job.validation_file),
            training_file: job.training_file.clone(),
            hyperparameters,
            method: Method::supervised(hyperparameters),
            trained_tokens: succeeded.then_some(job.trained_tokens),
            error: job.error.as_ref().filter(|error| !error.code.is_empty() || !error.message.is_empty()).map(
                |error| JobError {
                    code: error.code.clone(),
                    message: error.message.clone(),
                    param: some(&error.param),
                },
            ),
            user_provided_suffix: some(&job.suffix),
            seed: job.seed,
            estimated_finish: unix_seconds(job.estimated_finish.as_ref()),
            integrations: Vec::new(),
            metadata: (!job.metadata.is_empty())
                .then(|| job.metadata.iter().map(|(key, value)| (key.clone(), value.clone())).collect()),
            lora: LoraSettings::from(job.hyperparameters.as_ref()),
            datanet: (!job.datanet_id.is_empty()).then(|| DatanetVersion {
                id: job.datanet_id.clone(),
                version: job.datanet_version,
                snapshot_id: job.snapshot_id.clone(),
                merkle_root: job.snapshot_root.as_ref().map(|root| hex::encode(&root.value)).unwrap_or_default(),
            }),
            grant_id: some(&job.grant_id),
            step: job.step,
            total_steps: job.total_steps,
            training_records: job.training_records,
            validation_records: job.validation_records,
            final_metrics: job.final_metrics.as_ref().map(EvalData::from),
            executor: some(&job.executor),
        }
    }
}

/// A training step's figures.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct StepData {
    pub step: u64,
    pub total_steps: u64,
    pub train_loss: f32,
    pub learning_rate: f32,
    pub tokens_per_second: f32,
    pub eta_seconds: u64,
    pub epoch: u64,
    pub grad_norm: f32,
}

/// A state change: the job's new status.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct StatusData {
    pub status: String,
}

/// Nothing beyond the message.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct NoData {}

/// What an event carries: a training step or an evaluation (`type` `metrics`), a state change
/// or nothing (`type` `message`).
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum EventData {
    Step(StepData),
    Eval(EvalData),
    Status(StatusData),
    None(NoData),
}

/// A job's event (OpenAI's `fine_tuning.job.event`).
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct FineTuningEvent {
    /// `fine_tuning.job.event`.
    pub object: String,
    /// `ftevent-<job id>-<sequence>`: pass as `after` to read older events.
    pub id: String,
    pub created_at: i64,
    /// `info`, `warn` or `error`.
    pub level: String,
    pub message: String,
    /// `metrics` for training steps and evaluations, `message` for everything else.
    #[serde(rename = "type")]
    #[schema(pattern = "^(message|metrics)$")]
    pub kind: String,
    pub data: EventData,
}

impl From<&pb::JobEvent> for FineTuningEvent {
    fn from(event: &pb::JobEvent) -> Self {
        use pb::job_event::Event;
        let data = match &event.event {
            Some(Event::Step(step)) => EventData::Step(StepData {
                step: step.step,
                total_steps: step.total_steps,
                train_loss: step.loss,
                learning_rate: step.learning_rate,
                tokens_per_second: step.tokens_per_second,
                eta_seconds: step.eta_seconds,
                epoch: step.epoch,
                grad_norm: step.grad_norm,
            }),
            Some(Event::Eval(eval)) => EventData::Eval(EvalData::from(eval)),
            Some(Event::StateChange(state)) => EventData::Status(StatusData { status: status_name(*state).to_owned() }),
            None => EventData::None(NoData {}),
        };
        let metrics = matches!(data, EventData::Step(_) | EventData::Eval(_));
        Self {
            object: "fine_tuning.job.event".to_owned(),
            id: format!("ftevent-{}-{}", event.job_id, event.sequence),
            created_at: unix_seconds(event.at.as_ref()).unwrap_or(0),
            level: event.level.clone(),
            message: event.message.clone(),
            kind: if metrics { "metrics" } else { "message" }.to_owned(),
            data,
        }
    }
}

/// A checkpoint's figures: its step's training loss and the newest held-out evaluation at or
/// before it (absent when there is none).
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct CheckpointMetrics {
    pub step: u64,
    pub train_loss: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_loss: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_mean_token_accuracy: Option<f32>,
}

/// A job's checkpoint (OpenAI's `fine_tuning.job.checkpoint`): resumable, not served.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct FineTuningCheckpoint {
    /// `fine_tuning.job.checkpoint`.
    pub object: String,
    /// `ftckpt-<job hex>-<step>`.
    pub id: String,
    pub created_at: i64,
    /// `<fine_tuned_model>:ckpt-step-<step>`.
    pub fine_tuned_model_checkpoint: String,
    pub step_number: u64,
    pub metrics: CheckpointMetrics,
    pub fine_tuning_job_id: String,
}

impl From<&pb::JobCheckpoint> for FineTuningCheckpoint {
    fn from(checkpoint: &pb::JobCheckpoint) -> Self {
        Self {
            object: "fine_tuning.job.checkpoint".to_owned(),
            id: checkpoint.id.clone(),
            created_at: unix_seconds(checkpoint.created_at.as_ref()).unwrap_or(0),
            fine_tuned_model_checkpoint: checkpoint.fine_tuned_model_checkpoint.clone(),
            step_number: checkpoint.step,
            metrics: CheckpointMetrics {
                step: checkpoint.step,
                train_loss: checkpoint.train_loss,
                valid_loss: checkpoint.eval.as_ref().map(|eval| eval.loss),
                valid_mean_token_accuracy: checkpoint.eval.as_ref().and_then(|eval| measured(eval.accuracy)),
            },
            fine_tuning_job_id: checkpoint.job_id.clone(),
        }
    }
}

/// A page of jobs, newest first.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct FineTuningJobList {
    /// `list`.
    pub object: String,
    pub data: Vec<FineTuningJob>,
    /// More follow: pass the last job's id as `after`.
    pub has_more: bool,
}

/// A page of a job's events, newest first.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct FineTuningEventList {
    /// `list`.
    pub object: String,
    pub data: Vec<FineTuningEvent>,
    /// More (older) follow: pass the last event's id as `after`.
    pub has_more: bool,
}

/// A page of a job's checkpoints.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct FineTuningCheckpointList {
    /// `list`.
    pub object: String,
    pub data: Vec<FineTuningCheckpoint>,
    /// More follow: pass the last checkpoint's id as `after`.
    pub has_more: bool,
}
