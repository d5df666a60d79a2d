//! Running one job in this process: claim it (`queued` → `running`, or continue a job a dead
//! process left `running`), train on a blocking thread in a pool of the job's threads (the
//! trainer resumes bit-exactly from the newest checkpoint in the job's directory), forward
//! the trainer's progress as events, checkpoints and counters, and end the job: the adapter
//! registered and `succeeded`, or `failed` with the trainer's error (its checkpoints kept), or
//! `cancelled` / `paused` when asked, or left `running` when the process stops.

use std::sync::Arc;

use openledger_core::ErrorCode;
use openledger_ml::{
    MlError,
    train::{
        Control, EvalReport, Finish, Footprint, TrainEvent, TrainJob, TrainOutcome, Validation, available_bytes,
        data::{Dataset, Tokenize},
        train,
    },
};
use openledger_proto::modelfactory::v1 as pb;
use openledger_store::now_ms;
use sea_orm::Set;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    Jobs, Signal,
    store::{self, StoredPlan},
    validate::{Failure, Part, Trouble, training_records},
};
use crate::{RegistryError, entities::job, registry::TrainedAdapter};

/// The trainer's out directory inside a job's directory.
const OUT_DIR: &str = "out";
/// Progress messages buffered between the trainer thread and the writer.
const PROGRESS_BUFFER: usize = 256;

/// What the trainer thread tells the writer.
enum Progress {
    Started {
        total_steps: u64,
        start_step: u64,
        train: usize,
        eval: usize,
        truncated: usize,
    },
    Step {
        step: u64,
        total_steps: u64,
        epoch: usize,
        loss: f64,
        lr: f64,
        grad_norm: f64,
        tokens_per_s: f64,
        eta_s: f64,
    },
    Eval(EvalReport),
    Checkpoint {
        step: u64,
    },
    EarlyStopped {
        step: u64,
    },
    /// The run's estimated peak memory and what it may take, described.
    Memory(String),
}

impl Jobs {
    /// Runs `row` (queued, or left running) to its end or until the process stops.
    pub(super) async fn run_one(self: &Arc<Self>, row: job::Model, shutdown: &CancellationToken) {
        let id = row.id.clone();
        let claimed = match store::state_of(&row) {
            Ok(pb::JobState::Queued) => {
                let message = format!("training started on {} thread(s)", self.threads);
                store::transition(
                    &self.db,
                    &self.subjects,
                    &id,
                    &[pb::JobState::Queued],
                    pb::JobState::Running,
                    message,
                    |r| {
                        r.started_at_ms = Set(Some(now_ms()));
                    },
                )
                .await
            }
            Ok(_) => store::append_event(
                &self.db,
                &id,
                "info",
                "continuing after a restart from the last checkpoint".into(),
                None,
            )
            .await
            .map(|()| Some(row.clone())),
            Err(error) => Err(error),
        };
        match claimed {
            Ok(Some(_)) => self.changed(),
            Ok(None) => return, // cancelled or paused meanwhile
            Err(error) => {
                tracing::error!(job = %id, %error, "claiming a job failed");
                return;
            }
        }
        let stop_on_shutdown = {
            let (jobs, id, shutdown) = (self.clone(), id.clone(), shutdown.clone());
            tokio::spawn(async move {
                shutdown.cancelled().await;
                jobs.shutdown_running(&[id]);
            })
        };
        let result = self.train_job(&row).await;
        stop_on_shutdown.abort();
        let signal = self.signal(&id);
        self.clear_signal(&id);
        if let Err(error) = self.conclude(&row, result, signal).await {
            tracing::error!(job = %id, %error, "recording a job's end failed; it runs again at the next start");
        }
        self.changed();
    }

    async fn conclude(
        &self,
        row: &job::Model,
        result: Result<TrainOutcome, Trouble>,
        signal: Option<Signal>,
    ) -> Result<(), RegistryError> {
        let id = &row.id;
        let running = [pb::JobState::Running];
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(Trouble::Fail(failure)) => return self.fail(id, &running, failure).await,
            Err(Trouble::Transient(error)) => {
                tracing::warn!(job = %id, %error, "a job stopped on a transient error; it runs again later");
                return Ok(());
            }
        };
        if outcome.finish == Finish::Interrupted {
            let step = outcome.steps;
            let (to, message) = match signal {
                Some(Signal::Cancel) => (pb::JobState::Cancelled, format!("cancelled by its owner at step {step}")),
                Some(Signal::Pause) => (pb::JobState::Paused, format!("paused at step {step} (checkpoint written)")),
                _ => return Ok(()), // the process is stopping: the job continues at the next start
            };
            store::transition(&self.db, &self.subjects, id, &running, to, message, |_| {}).await?;
            return Ok(());
        }
        // With the kubernetes executor a cancel or pause moves the row itself while the pod
        // trains; a job stopped that way in the instant its training ended is not registered.
        let now = <job::Entity as sea_orm::EntityTrait>::find_by_id(id.clone()).one(&self.db).await?;
        if let Some(now) = now.filter(|now| store::state_of(now).ok() != Some(pb::JobState::Running)) {
            tracing::info!(job = %id, state = now.state, "the job was stopped as its training ended; nothing registered");
            return Ok(());
        }
        match self.register(row, &outcome).await {
            Ok(name) => {
                let metrics = outcome.last_eval.as_ref().map(eval_metrics);
                let message = format!("succeeded after {} steps: {name} is registered and callable", outcome.steps);
                store::transition(&self.db, &self.subjects, id, &running, pb::JobState::Succeeded, message, |r| {
                    r.fine_tuned_model = Set(name.clone());
                    r.trained_tokens = Set(outcome.trained_tokens as i64);
                    r.step = Set(outcome.steps as i64);
                    r.final_metrics = Set(metrics.as_ref().map(prost::Message::encode_to_vec).unwrap_or_default());
                })
                .await?;
                tracing::info!(job = %id, adapter = %name, "fine-tuning job succeeded");
                Ok(())
            }
            Err(error) if error.is_transient() => Err(error),
            Err(error) => self.fail(id, &running, Failure::new("registration_failed", error.message)).await,
        }
    }

    /// Trains the job; progress is written as it comes.
    async fn train_job(self: &Arc<Self>, row: &job::Model) -> Result<TrainOutcome, Trouble> {
        let plan = StoredPlan::of(row)?;
        let base = self.bases.require().await?;
        if base.id != row.base_model {
            return Err(Trouble::Fail(Failure::new(
                "base_model_changed",
                format!("the job trains {:?} but this platform now serves {:?}", row.base_model, base.id),
            )));
        }
        let records = self.fetch_records(row).await?;
        let (kind, records) =
            training_records(&records).map_err(|e| Trouble::Fail(Failure::file(Part::Training, e)))?;
        let held_out = self.held_out_records(row, kind).await?;
        let dir = self.job_dir(&row.id);
        let (tx, mut rx) = mpsc::channel(PROGRESS_BUFFER);
        let jobs = self.clone();
        let id = row.id.clone();
        let (dataset_name, held_out_name) = (row.training_file.clone(), row.validation_file.clone());
        let (threads, memory_limit) = (self.threads, self.memory_limit);
        let trainer = tokio::task::spawn_blocking(move || -> Result<TrainOutcome, MlError> {
            // What is free before this run loads anything (its model included).
            let limit = match memory_limit {
                0 => available_bytes().unwrap_or(u64::MAX),
                limit => limit,
            };
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| format!("finetune-{i}"))
                .build()
                .map_err(|e| MlError::InvalidRequest(format!("starting the training threads: {e}")))?;
            pool.install(|| {
                let (model, tokenizer) = openledger_ml::load_model(&base.path, &candle_core::Device::Cpu)?;
                let context = model.config().context_length;
                let max_tokens = plan.config.max_seq_tokens.unwrap_or(context).min(context);
                let tokenize = Tokenize { tokenizer: &tokenizer, max_tokens };
                let dataset = tokenize.dataset(kind, &records, None)?;
                let held_out = held_out.map(|held| tokenize.dataset(kind, &held, Some(&dataset.labels))).transpose()?;
                let datasets: Vec<&Dataset> = std::iter::once(&dataset).chain(held_out.as_ref()).collect();
                let footprint = Footprint::for_run(&model, &base.path, &datasets, &plan.config, threads);
                let _ = tx.blocking_send(Progress::Memory(footprint.describe((limit != u64::MAX).then_some(limit))));
                footprint.check(limit)?;
                let out = dir.join(OUT_DIR);
                let job = TrainJob {
                    model: &model,
                    model_path: &base.path,
                    dataset: &dataset,
                    dataset_name: &dataset_name,
                    validation: held_out.as_ref().map(|dataset| Validation { dataset, name: &held_out_name }),
                    out: &out,
                    resume: true,
                };
                train(&job, &plan.config, &mut |event| {
                    let _ = tx.blocking_send(progress_of(event));
                    if jobs.signal(&id).is_some() { Control::Stop } else { Control::Continue }
                })
            })
        });
        let mut last_loss = f64::NAN;
        let mut last_eval: Option<pb::EvalMetrics> = None;
        while let Some(progress) = rx.recv().await {
            if let Err(error) = self.record(&row.id, progress, &mut last_loss, &mut last_eval).await {
                tracing::warn!(job = %row.id, %error, "recording a job's progress failed");
            }
        }
        let outcome = trainer
            .await
            .map_err(|e| Trouble::Fail(Failure::new("internal_error", format!("the trainer thread failed: {e}"))))?;
        outcome.map_err(|error| Trouble::Fail(trainer_failure(error)))
    }

    /// Writes one progress message: the job's log, counters and checkpoints.
    async fn record(
        &self,
        id: &str,
        progress: Progress,
        last_loss: &mut f64,
        last_eval: &mut Option<pb::EvalMetrics>,
    ) -> Result<(), RegistryError> {
        use pb::job_event::Event;
        match progress {
            Progress::Started { total_steps, start_step, train, eval, truncated } => {
                store::record_progress(&self.db, id, start_step, total_steps, None).await?;
                let message = format!(
                    "{train} training and {eval} held-out records ({truncated} truncated); {total_steps} steps from step {start_step}"
                );
                store::append_event(&self.db, id, "info", message, None).await?;
            }
            Progress::Step { step, total_steps, epoch, loss, lr, grad_norm, tokens_per_s, eta_s } => {
                *last_loss = loss;
                let eta_ms = now_ms() + (eta_s * 1000.0) as i64;
                store::record_progress(&self.db, id, step, total_steps, Some(eta_ms)).await?;
                let metrics = pb::TrainingStep {
                    step,
                    total_steps,
                    loss: loss as f32,
                    learning_rate: lr as f32,
                    tokens_per_second: tokens_per_s as f32,
                    eta_seconds: eta_s.max(0.0).round() as u64,
                    epoch: epoch as u64,
                    grad_norm: grad_norm as f32,
                };
                let message = format!("step {step}/{total_steps}: training loss {loss:.4}");
                store::append_event(&self.db, id, "info", message, Some(Event::Step(metrics))).await?;
            }
            Progress::Eval(report) => {
                let metrics = eval_metrics(&report);
                let message = format!(
                    "step {}: held-out loss {:.4} (base {:.4}), perplexity {:.2} (base {:.2})",
                    report.step, report.loss, report.base_loss, report.perplexity, report.base_perplexity
                );
                *last_eval = Some(metrics);
                store::append_event(&self.db, id, "info", message, Some(Event::Eval(metrics))).await?;
            }
            Progress::Checkpoint { step } => {
                store::record_checkpoint(&self.db, id, step, *last_loss, last_eval.as_ref()).await?;
                store::append_event(&self.db, id, "info", format!("checkpoint at step {step}"), None).await?;
            }
            Progress::Memory(message) => store::append_event(&self.db, id, "info", message, None).await?,
            Progress::EarlyStopped { step } => {
                let message = format!("stopped early at step {step}: the held-out loss stopped improving");
                store::append_event(&self.db, id, "info", message, None).await?;
            }
        }
        self.changed();
        Ok(())
    }

    /// Registers the trained adapter with its lineage; answers its `ft:` name.
    async fn register(&self, row: &job::Model, outcome: &TrainOutcome) -> Result<String, RegistryError> {
        let owner: u128 = row
            .owner_account
            .parse()
            .map_err(|_| RegistryError::new(ErrorCode::Internal, "a job's owner is corrupt"))?;
        let name = super::spec::fine_tuned_name(&row.base_model, owner, &row.suffix, &row.id)?;
        let owner_key = self.owners.owner_key(owner).await?;
        let dir = outcome.adapter_dir.clone();
        let read = |file: &str| {
            std::fs::read(dir.join(file))
                .map_err(|e| RegistryError::new(ErrorCode::Internal, format!("reading the trained {file}: {e}")))
        };
        let held_out = store::HeldOutVersion::of(row)?;
        let trainer_lineage: serde_json::Value = serde_json::from_slice(&read(openledger_ml::train::LINEAGE_FILE)?)
            .map_err(|e| RegistryError::new(ErrorCode::Internal, format!("the trainer's lineage: {e}")))?;
        let lineage = serde_json::json!({
            "format": "openledger.lineage/1",
            "adapter": name,
            "job_id": row.id,
            "owner_account": row.owner_account,
            "datanet": {
                "id": row.datanet_id,
                "version": row.datanet_version,
                "snapshot_id": row.snapshot_id,
                "merkle_root": hex::encode(&row.snapshot_root),
                "grant_id": row.grant_id,
                "training_file": row.training_file,
            },
            "validation": held_out.map(|held| serde_json::json!({
                "id": held.datanet_id,
                "version": held.version,
                "snapshot_id": held.snapshot_id,
                "merkle_root": held.merkle_root,
                "grant_id": held.grant_id,
                "validation_file": row.validation_file,
            })),
            "trainer": trainer_lineage,
        });
        let adapter = TrainedAdapter {
            id: name.clone(),
            job_id: row.id.clone(),
            owner: owner_key,
            owner_account: owner,
            base_model: row.base_model.clone(),
            datanet_id: row.datanet_id.clone(),
            snapshot_id: row.snapshot_id.clone(),
            snapshot_root: row.snapshot_root.clone(),
            config: read(openledger_ml::adapters::ADAPTER_CONFIG)?.into(),
            weights: read(openledger_ml::adapters::ADAPTER_WEIGHTS)?.into(),
            lineage: serde_json::to_vec_pretty(&lineage)
                .map_err(|e| RegistryError::new(ErrorCode::Internal, e.to_string()))?
                .into(),
            description: format!("fine-tuned by {} on {}", row.id, row.training_file),
        };
        self.registry.register_trained(adapter).await?;
        Ok(name)
    }
}

fn progress_of(event: &TrainEvent) -> Progress {
    match event {
        TrainEvent::Started { total_steps, start_step, train_examples, eval_examples, truncated_examples, .. } => {
            Progress::Started {
                total_steps: *total_steps,
                start_step: *start_step,
                train: *train_examples,
                eval: *eval_examples,
                truncated: *truncated_examples,
            }
        }
        TrainEvent::Step { step, total_steps, epoch, loss, learning_rate, grad_norm, tokens_per_s, eta_s } => {
            Progress::Step {
                step: *step,
                total_steps: *total_steps,
                epoch: *epoch,
                loss: *loss,
                lr: *learning_rate,
                grad_norm: *grad_norm,
                tokens_per_s: *tokens_per_s,
                eta_s: *eta_s,
            }
        }
        TrainEvent::Eval(report) => Progress::Eval(report.clone()),
        TrainEvent::Checkpoint { step, .. } => Progress::Checkpoint { step: *step },
        TrainEvent::EarlyStopped { step } => Progress::EarlyStopped { step: *step },
    }
}

fn eval_metrics(report: &EvalReport) -> pb::EvalMetrics {
    pb::EvalMetrics {
        step: report.step,
        loss: report.loss as f32,
        perplexity: report.perplexity as f32,
        accuracy: report.accuracy.map_or(-1.0, |a| a as f32),
        base_loss: report.base_loss as f32,
        base_perplexity: report.base_perplexity as f32,
        base_accuracy: report.base_accuracy.map_or(-1.0, |a| a as f32),
    }
}

/// The trainer's error as the job's: a diverged run, a full disk, or anything else.
fn trainer_failure(error: MlError) -> Failure {
    let full = |source: &std::io::Error| {
        source.kind() == std::io::ErrorKind::StorageFull || source.raw_os_error() == Some(28) // ENOSPC
    };
    let full_text = |message: &str| {
        let message = message.to_lowercase();
        message.contains("no space left") || message.contains("no storage space")
    };
    let code = match &error {
        MlError::Diverged(_) => "diverged",
        MlError::Io { source, .. } if full(source) => "storage_full",
        MlError::Checkpoint(message) if full_text(message) => "storage_full",
        MlError::InvalidRequest(_) => "invalid_training_file",
        MlError::InsufficientMemory(_) => "insufficient_memory",
        _ => "training_failed",
    };
    Failure::new(code, error.to_string())
}
