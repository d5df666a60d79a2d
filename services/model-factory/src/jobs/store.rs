//! A job's rows: the API view of a stored job, its events (appended with the next sequence),
//! its checkpoints, and state changes, each written with its `ol.modelfactory.job.<status>`
//! event to the outbox in one transaction.

use openledger_proto::{common::v1::Hash, events::v1::FineTuneJobChanged, modelfactory::v1 as pb, timestamp};
use openledger_store::{db::retry_when_busy, now_ms, outbox::NewEvent};
use prost::Message;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set, TransactionTrait, sea_query::Expr,
};

use crate::{
    RegistryError,
    entities::{job, job_checkpoint, job_event},
    events::PRODUCER,
    registry::corrupt,
};

pub(super) fn state_of(row: &job::Model) -> Result<pb::JobState, RegistryError> {
    pb::JobState::try_from(i32::from(row.state)).map_err(|_| corrupt("job state", row.state))
}

/// The lowercase name OpenAI gives a status (and the subject's last part).
pub fn status_name(state: pb::JobState) -> &'static str {
    match state {
        pb::JobState::Unspecified => "unspecified",
        pb::JobState::ValidatingFiles => "validating_files",
        pb::JobState::Queued => "queued",
        pb::JobState::Running => "running",
        pb::JobState::Succeeded => "succeeded",
        pb::JobState::Failed => "failed",
        pb::JobState::Cancelled => "cancelled",
        pb::JobState::Paused => "paused",
    }
}

pub fn is_terminal(state: pb::JobState) -> bool {
    matches!(state, pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled)
}

/// The API view of a stored job.
pub(super) fn view(row: &job::Model) -> Result<pb::FineTuneJob, RegistryError> {
    let owner: u128 = row.owner_account.parse().map_err(|e| corrupt("owner account", e))?;
    let hyperparameters = if row.config.is_empty() {
        pb::Hyperparameters::decode(row.request.as_slice()).map_err(|e| corrupt("job request", e))?
    } else {
        resolved(row)?
    };
    let metadata: std::collections::HashMap<String, String> =
        serde_json::from_str(&row.metadata).map_err(|e| corrupt("job metadata", e))?;
    let final_metrics = (!row.final_metrics.is_empty())
        .then(|| pb::EvalMetrics::decode(row.final_metrics.as_slice()))
        .transpose()
        .map_err(|e| corrupt("job metrics", e))?;
    let held_out = HeldOutVersion::of(row)?;
    Ok(pb::FineTuneJob {
        id: row.id.clone(),
        owner_account_id: Some(owner.into()),
        base_model: row.base_model.clone(),
        training_file: row.training_file.clone(),
        validation_file: row.validation_file.clone(),
        datanet_id: row.datanet_id.clone(),
        snapshot_id: row.snapshot_id.clone(),
        datanet_version: row.datanet_version as u64,
        snapshot_root: (!row.snapshot_root.is_empty()).then(|| Hash { value: row.snapshot_root.clone() }),
        hyperparameters: Some(hyperparameters),
        suffix: row.suffix.clone(),
        seed: row.seed.parse().map_err(|e| corrupt("job seed", e))?,
        metadata,
        state: i32::from(row.state),
        fine_tuned_model: row.fine_tuned_model.clone(),
        trained_tokens: row.trained_tokens as u64,
        estimated_finish: row.estimated_finish_ms.map(timestamp),
        error: (!row.error_code.is_empty()).then(|| pb::JobError {
            code: row.error_code.clone(),
            message: row.error_message.clone(),
            param: row.error_param.clone(),
        }),
        created_at: Some(timestamp(row.created_at_ms)),
        finished_at: row.finished_at_ms.map(timestamp),
        grant_id: row.grant_id.clone(),
        step: row.step as u64,
        total_steps: row.total_steps as u64,
        final_metrics,
        executor: row.executor.clone(),
        training_records: row.training_records as u64,
        validation_snapshot_id: held_out.as_ref().map(|v| v.snapshot_id.clone()).unwrap_or_default(),
        validation_records: held_out.map_or(0, |v| v.records),
    })
}

/// The sealed version a job's held-out records come from (its `validation_file`), resolved
/// when the job was created; kept as JSON in `job.validation`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct HeldOutVersion {
    pub datanet_id: String,
    pub snapshot_id: String,
    pub version: u64,
    /// The version's Merkle root, hex.
    pub merkle_root: String,
    /// The grant its records are read under.
    pub grant_id: String,
    pub records: u64,
}

impl HeldOutVersion {
    pub fn of(row: &job::Model) -> Result<Option<Self>, RegistryError> {
        row.validation
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| corrupt("job validation version", e))
    }
}

/// The resolved hyper-parameters kept beside the trainer's configuration.
fn resolved(row: &job::Model) -> Result<pb::Hyperparameters, RegistryError> {
    let stored: StoredPlan = serde_json::from_str(&row.config).map_err(|e| corrupt("job configuration", e))?;
    pb::Hyperparameters::decode(hex::decode(&stored.hyperparameters).map_err(|e| corrupt("job plan", e))?.as_slice())
        .map_err(|e| corrupt("job plan", e))
}

/// What `job.config` holds once the job is planned.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct StoredPlan {
    pub config: openledger_ml::train::TrainConfig,
    /// `pb::Hyperparameters` as resolved, protobuf bytes in hex.
    pub hyperparameters: String,
}

impl StoredPlan {
    pub fn new(plan: &super::spec::Plan) -> Self {
        Self { config: plan.config.clone(), hyperparameters: hex::encode(plan.hyperparameters.encode_to_vec()) }
    }

    pub fn of(row: &job::Model) -> Result<Self, RegistryError> {
        serde_json::from_str(&row.config).map_err(|e| corrupt("job configuration", e))
    }
}

/// The bus event of a job in `state`.
fn changed(row: &job::Model, state: pb::JobState) -> Result<FineTuneJobChanged, RegistryError> {
    let owner: u128 = row.owner_account.parse().map_err(|e| corrupt("owner account", e))?;
    Ok(FineTuneJobChanged {
        job_id: row.id.clone(),
        owner_account_id: Some(owner.into()),
        base_model: row.base_model.clone(),
        datanet_id: row.datanet_id.clone(),
        snapshot_id: row.snapshot_id.clone(),
        snapshot_root: (!row.snapshot_root.is_empty()).then(|| Hash { value: row.snapshot_root.clone() }),
        status: status_name(state).to_owned(),
        fine_tuned_model: row.fine_tuned_model.clone(),
        error_code: row.error_code.clone(),
        error_message: row.error_message.clone(),
        at: Some(timestamp(now_ms())),
    })
}

/// Appends an event to a job's log on `db` (the next sequence number).
pub(super) async fn append_event<C: ConnectionTrait>(
    db: &C,
    job_id: &str,
    level: &str,
    message: String,
    event: Option<pb::job_event::Event>,
) -> Result<(), RegistryError> {
    let last: Option<i64> = job_event::Entity::find()
        .select_only()
        .column_as(job_event::Column::Sequence.max(), "last")
        .filter(job_event::Column::JobId.eq(job_id))
        .into_tuple::<Option<i64>>()
        .one(db)
        .await?
        .flatten();
    let sequence = last.unwrap_or(0) + 1;
    let at_ms = now_ms();
    let data = pb::JobEvent {
        sequence: sequence as u64,
        job_id: job_id.to_owned(),
        at: Some(timestamp(at_ms)),
        level: level.to_owned(),
        message: message.clone(),
        event,
    };
    job_event::ActiveModel {
        job_id: Set(job_id.to_owned()),
        sequence: Set(sequence),
        at_ms: Set(at_ms),
        level: Set(level.to_owned()),
        message: Set(message),
        kind: Set(0),
        data: Set(data.encode_to_vec()),
    }
    .insert(db)
    .await?;
    Ok(())
}

pub(super) fn event_of(row: &job_event::Model) -> Result<pb::JobEvent, RegistryError> {
    pb::JobEvent::decode(row.data.as_slice()).map_err(|e| corrupt("job event", e))
}

/// A change of state: `from` (any of) to `to`, with `update` applied to the row, the event in
/// the job's log and the bus event, in one transaction. `Ok(None)` when the job was not in any
/// of `from` (someone else moved it first).
pub(super) async fn transition(
    db: &DatabaseConnection,
    subjects: &crate::events::Subjects,
    job_id: &str,
    from: &[pb::JobState],
    to: pb::JobState,
    message: String,
    update: impl Fn(&mut job::ActiveModel) + Send + Sync,
) -> Result<Option<job::Model>, RegistryError> {
    let from: Vec<i16> = from.iter().map(|state| *state as i16).collect();
    retry_when_busy(|| async {
        let txn = db.begin().await?;
        let Some(row) =
            job::Entity::find_by_id(job_id).filter(job::Column::State.is_in(from.clone())).one(&txn).await?
        else {
            return Ok(None);
        };
        let mut active: job::ActiveModel = row.into();
        active.state = Set(to as i16);
        active.updated_at_ms = Set(now_ms());
        if is_terminal(to) {
            active.finished_at_ms = Set(Some(now_ms()));
            active.estimated_finish_ms = Set(None);
        }
        update(&mut active);
        let row = active.update(&txn).await?;
        let level = if to == pb::JobState::Failed { "error" } else { "info" };
        append_event(&txn, job_id, level, message.clone(), Some(pb::job_event::Event::StateChange(to as i32))).await?;
        let subject = format!("{}.modelfactory.job.{}", subjects.prefix(), status_name(to));
        let event = changed(&row, to)?;
        openledger_store::outbox::enqueue(&txn, PRODUCER, NewEvent::new(subject, event.encode_to_vec())).await?;
        txn.commit().await?;
        Ok::<_, RegistryError>(Some(row))
    })
    .await
}

/// Progress of a running job: step counters and the estimated finish.
pub(super) async fn record_progress(
    db: &DatabaseConnection,
    job_id: &str,
    step: u64,
    total_steps: u64,
    eta_ms: Option<i64>,
) -> Result<(), RegistryError> {
    job::Entity::update_many()
        .col_expr(job::Column::Step, Expr::value(step as i64))
        .col_expr(job::Column::TotalSteps, Expr::value(total_steps as i64))
        .col_expr(job::Column::EstimatedFinishMs, Expr::value(eta_ms))
        .col_expr(job::Column::UpdatedAtMs, Expr::value(now_ms()))
        .filter(job::Column::Id.eq(job_id))
        .exec(db)
        .await?;
    Ok(())
}

pub(super) async fn record_checkpoint(
    db: &DatabaseConnection,
    job_id: &str,
    step: u64,
    train_loss: f64,
    eval: Option<&pb::EvalMetrics>,
) -> Result<(), RegistryError> {
    let row = job_checkpoint::ActiveModel {
        job_id: Set(job_id.to_owned()),
        step: Set(step as i64),
        at_ms: Set(now_ms()),
        train_loss: Set(train_loss),
        eval: Set(eval.map(Message::encode_to_vec).unwrap_or_default()),
    };
    // A resumed run writes the same step's checkpoint again: keep the newer.
    job_checkpoint::Entity::delete_many()
        .filter(job_checkpoint::Column::JobId.eq(job_id))
        .filter(job_checkpoint::Column::Step.eq(step as i64))
        .exec(db)
        .await?;
    row.insert(db).await?;
    Ok(())
}

pub(super) fn checkpoint_view(
    row: &job_checkpoint::Model,
    fine_tuned_model: &str,
) -> Result<pb::JobCheckpoint, RegistryError> {
    let hex = row.job_id.strip_prefix(super::JOB_ID_PREFIX).unwrap_or(&row.job_id);
    let eval = (!row.eval.is_empty())
        .then(|| pb::EvalMetrics::decode(row.eval.as_slice()))
        .transpose()
        .map_err(|e| corrupt("checkpoint metrics", e))?;
    Ok(pb::JobCheckpoint {
        id: format!("ftckpt-{hex}-{}", row.step),
        job_id: row.job_id.clone(),
        step: row.step as u64,
        created_at: Some(timestamp(row.at_ms)),
        fine_tuned_model_checkpoint: format!("{fine_tuned_model}:ckpt-step-{}", row.step),
        train_loss: row.train_loss as f32,
        eval,
    })
}

/// A job's checkpoints, newest first, after `after_step`.
pub(super) async fn checkpoints(
    db: &DatabaseConnection,
    job_id: &str,
    before_step: Option<i64>,
    limit: u64,
) -> Result<Vec<job_checkpoint::Model>, RegistryError> {
    let mut query = job_checkpoint::Entity::find().filter(job_checkpoint::Column::JobId.eq(job_id));
    if let Some(step) = before_step {
        query = query.filter(job_checkpoint::Column::Step.lt(step));
    }
    Ok(query.order_by_desc(job_checkpoint::Column::Step).limit(limit).all(db).await?)
}
