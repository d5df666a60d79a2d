//! Fine-tuning jobs: a LoRA adapter trained on a sealed Datanet version the job's owner holds a
//! grant on, registered with its lineage when it succeeds. One concern per module:
//!
//! - [`spec`]: the request's checks and the hyper-parameters ("auto" resolved from the data);
//! - [`datanets`]: the access check and the records, from datanet-ingest;
//! - `store`: rows, events, checkpoints, and state changes with their bus events;
//! - [`executor`]: where jobs run: in this process, or ([`kubernetes`]) as `LoraJob`s whose
//!   pods run [`pod::run_job`];
//! - `validate` and `run`: reading the records of a new job, and training a queued one.
//!
//! Life of a job: `validating_files` (its records are read, checked against the version's
//! Merkle root and parsed) → `queued` → `running` (checkpoints as it goes) → `succeeded` (the
//! adapter is registered) | `failed` | `cancelled`; `paused` from `queued` or `running` (a
//! running job checkpoints first) until resumed. A job a dead process left `running` or
//! `validating_files` continues when the service starts again, from its last checkpoint. A
//! job of the Kubernetes executor stays `queued` until its pod starts training it; cancelling
//! or pausing it while it runs changes its state at once and its pod stops at its next step.

pub mod datanets;
pub mod executor;
pub mod kubernetes;
#[cfg(test)]
mod kubernetes_tests;
pub mod pod;
mod run;
pub mod spec;
mod store;
#[cfg(test)]
mod tests;
mod validate;

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use openledger_core::{ErrorCode, Id};
use openledger_proto::{common::v1::PageResponse, modelfactory::v1 as pb, u128_of};
use openledger_store::{db::retry_when_busy, now_ms};
use parking_lot::Mutex;
use prost::Message;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, Set, TransactionTrait,
};
use tokio::sync::Notify;

pub use store::{is_terminal, status_name};

use crate::{
    RegistryError,
    base::BaseModels,
    entities::{job, job_event},
    events::Subjects,
    limits,
    owners::Owners,
    registry::Registry,
};
use datanets::DatanetReads;

/// Job ids: `ftjob-` and the 32 hex digits of a UUIDv7 (so ids sort by creation).
pub const JOB_ID_PREFIX: &str = "ftjob-";
/// How long `CancelFineTuneJob` and `PauseFineTuneJob` wait for a running job to stop at its
/// next step before answering with the job as it is.
pub const STOP_WAIT: Duration = Duration::from_secs(30);

/// What a running job is asked to do at its next step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Cancel,
    Pause,
    /// The process is stopping: checkpoint and stay `running` (resumed at the next start).
    Shutdown,
}

/// The jobs of this service.
pub struct Jobs {
    db: DatabaseConnection,
    registry: Arc<Registry>,
    datanets: Arc<dyn DatanetReads>,
    owners: Arc<dyn Owners>,
    bases: Arc<BaseModels>,
    subjects: Subjects,
    /// `<data dir>/finetune`: one directory per job (records, checkpoints, the adapter).
    work_dir: PathBuf,
    executor: &'static str,
    /// Training threads of a local run.
    threads: usize,
    /// Bytes a run's estimated peak may take; 0: what is available when it starts.
    memory_limit: u64,
    signals: Mutex<HashMap<String, Signal>>,
    /// A job became runnable (queued or resumed).
    runnable: Notify,
    /// A job's log or state changed (live event streams wait on it).
    progress: tokio::sync::watch::Sender<u64>,
    outbox_wake: Option<Arc<Notify>>,
    validations: tokio::sync::Semaphore,
}

/// What [`Jobs`] is made of.
pub struct JobsParts {
    pub db: DatabaseConnection,
    pub registry: Arc<Registry>,
    pub datanets: Arc<dyn DatanetReads>,
    pub owners: Arc<dyn Owners>,
    pub bases: Arc<BaseModels>,
    pub subjects: Subjects,
    pub work_dir: PathBuf,
    pub executor: &'static str,
    pub threads: usize,
    /// `job_memory_limit_bytes`.
    pub memory_limit: u64,
    pub outbox_wake: Option<Arc<Notify>>,
}

/// Jobs reading their records at once (the rest wait in `validating_files`).
const MAX_CONCURRENT_VALIDATIONS: usize = 2;

impl Jobs {
    pub fn new(parts: JobsParts) -> Arc<Self> {
        Arc::new(Self {
            db: parts.db,
            registry: parts.registry,
            datanets: parts.datanets,
            owners: parts.owners,
            bases: parts.bases,
            subjects: parts.subjects,
            work_dir: parts.work_dir,
            executor: parts.executor,
            threads: parts.threads.max(1),
            memory_limit: parts.memory_limit,
            signals: Mutex::default(),
            runnable: Notify::new(),
            progress: tokio::sync::watch::Sender::new(0),
            outbox_wake: parts.outbox_wake,
            validations: tokio::sync::Semaphore::new(MAX_CONCURRENT_VALIDATIONS),
        })
    }

    fn changed(&self) {
        self.progress.send_modify(|n| *n = n.wrapping_add(1));
        if let Some(wake) = &self.outbox_wake {
            wake.notify_one();
        }
    }

    /// The sealed version a `validation_file` names, when the caller may read it and it is not
    /// the training version itself. A version of the training Datanet is read under the job's
    /// grant; another Datanet's under the caller's approved grant there.
    async fn held_out_version(
        &self,
        held: &spec::TrainingFile,
        training: &spec::TrainingFile,
        access: &openledger_proto::datanet::v1::ReadAccess,
        grantee: &openledger_signing::Key,
        grant_id: &str,
    ) -> Result<store::HeldOutVersion, RegistryError> {
        let grant = if held.datanet == training.datanet { grant_id } else { "" };
        let held_access = self
            .datanets
            .check(&held.datanet, &held.version, grantee, grant)
            .await
            .map_err(|error| RegistryError::new(error.code, format!("validation_file: {}", error.message)))?;
        let version = held_access.snapshot.ok_or_else(|| internal("datanet-ingest answered no version"))?;
        let training_snapshot = access.snapshot.as_ref().map(|s| s.id.as_str()).unwrap_or_default();
        if version.id == training_snapshot {
            return Err(invalid(
                "validation_file names the training version itself: leave it empty to hold out lora.eval_split of that version, or name another sealed version",
            ));
        }
        if version.record_count == 0 {
            return Err(RegistryError::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "validation_file: version {} of Datanet {:?} has no records",
                    version.version, held_access.slug
                ),
            ));
        }
        Ok(store::HeldOutVersion {
            datanet_id: held_access.datanet_id,
            snapshot_id: version.id,
            version: version.version,
            merkle_root: version.merkle_root.map(|h| hex::encode(h.value)).unwrap_or_default(),
            grant_id: held_access.grant_id,
            records: version.record_count,
        })
    }

    fn job_dir(&self, id: &str) -> PathBuf {
        self.work_dir.join(id)
    }

    /// The memory a job's pod asks its cluster for: the run's estimated peak with examples as
    /// long as the job allows, on as many threads as this process trains with
    /// (`Footprint::upper_bound`). `None` when the base model or the job's plan cannot be read:
    /// the pod then asks for nothing and still checks its own limit before training.
    pub(crate) async fn memory_request(&self, row: &job::Model) -> Option<u64> {
        let plan = store::StoredPlan::of(row).ok()?;
        let base = self.bases.require().await.ok()?;
        let threads = self.threads;
        let estimate = tokio::task::spawn_blocking(move || {
            openledger_ml::train::Footprint::upper_bound(&base.path, &plan.config, threads)
        })
        .await
        .ok()?;
        match estimate {
            Ok(footprint) => Some(footprint.peak()),
            Err(error) => {
                tracing::warn!(job = %row.id, %error, "the job's memory estimate: its pod requests no memory");
                None
            }
        }
    }

    /// Creates a job: checks the request, the base model and the caller's access to the
    /// version, resolves the hyper-parameters, stores the job as `validating_files` and starts
    /// reading its records. A repeated idempotency key answers the job it created.
    pub async fn create(
        self: &Arc<Self>,
        request: pb::CreateFineTuneJobRequest,
    ) -> Result<pb::FineTuneJob, RegistryError> {
        let owner = caller(request.caller_account_id.as_ref())?;
        let key = request.idempotency_key.trim();
        if key.chars().count() > limits::MAX_IDEMPOTENCY_KEY_CHARS {
            return Err(invalid(format!(
                "idempotency key longer than {} characters",
                limits::MAX_IDEMPOTENCY_KEY_CHARS
            )));
        }
        if !key.is_empty()
            && let Some(found) = self.by_idempotency_key(owner, key).await?
        {
            return store::view(&found);
        }
        spec::check_suffix(&request.suffix)?;
        let metadata: BTreeMap<String, String> = request.metadata.clone().into_iter().collect();
        spec::check_metadata(&metadata)?;
        let file = spec::TrainingFile::parse(&request.training_file, "training_file")?;
        let validation_file = request.validation_file.trim();
        let held_out_file = (!validation_file.is_empty())
            .then(|| spec::TrainingFile::parse(validation_file, "validation_file"))
            .transpose()?;
        let base = self.bases.require().await?;
        if request.model != base.id {
            return Err(RegistryError::new(
                ErrorCode::NotFound,
                format!("no base model {:?}: this platform fine-tunes {:?} (GET /v1/models)", request.model, base.id),
            ));
        }
        self.check_waiting(owner).await?;
        let grantee = self.owners.owner_key(owner).await?;
        let access = self.datanets.check(&file.datanet, &file.version, &grantee, &request.grant_id).await?;
        let version = access.snapshot.clone().ok_or_else(|| internal("datanet-ingest answered no version"))?;
        if version.record_count == 0 {
            return Err(RegistryError::new(
                ErrorCode::FailedPrecondition,
                format!("version {} of Datanet {:?} has no records: nothing to train on", version.version, access.slug),
            ));
        }
        let id = format!("{JOB_ID_PREFIX}{}", Id::new().as_uuid().simple());
        let seed = request
            .seed
            .unwrap_or_else(|| u64::from_le_bytes(id.as_bytes()[id.len() - 8..].try_into().unwrap_or_default()));
        let asked = request.hyperparameters.clone().unwrap_or_default();
        let held_out = match &held_out_file {
            Some(held) => Some(self.held_out_version(held, &file, &access, &grantee, &request.grant_id).await?),
            None => None,
        };
        let plan = spec::resolve(&asked, version.record_count, seed, held_out.is_some())?;
        spec::fine_tuned_name(&base.id, owner, &request.suffix, &id)?;
        let now = now_ms();
        let row = job::ActiveModel {
            id: Set(id.clone()),
            owner_account: Set(owner.to_string()),
            idempotency_key: Set((!key.is_empty()).then(|| key.to_owned())),
            state: Set(pb::JobState::ValidatingFiles as i16),
            base_model: Set(base.id.clone()),
            training_file: Set(request.training_file.clone()),
            validation_file: Set(validation_file.to_owned()),
            datanet_id: Set(access.datanet_id.clone()),
            snapshot_id: Set(version.id.clone()),
            datanet_version: Set(version.version as i64),
            snapshot_root: Set(version.merkle_root.as_ref().map(|h| h.value.clone()).unwrap_or_default()),
            grant_id: Set(access.grant_id.clone()),
            request: Set(asked.encode_to_vec()),
            config: Set(serde_json::to_string(&store::StoredPlan::new(&plan)).map_err(|e| internal(e.to_string()))?),
            suffix: Set(request.suffix.clone()),
            seed: Set(seed.to_string()),
            metadata: Set(serde_json::to_string(&metadata).map_err(|e| internal(e.to_string()))?),
            fine_tuned_model: Set(String::new()),
            trained_tokens: Set(0),
            step: Set(0),
            total_steps: Set(0),
            training_records: Set(version.record_count as i64),
            validation: Set(held_out
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .map_err(|e| internal(e.to_string()))?),
            estimated_finish_ms: Set(None),
            error_code: Set(String::new()),
            error_message: Set(String::new()),
            error_param: Set(String::new()),
            final_metrics: Set(Vec::new()),
            executor: Set(self.executor.to_owned()),
            created_at_ms: Set(now),
            started_at_ms: Set(None),
            finished_at_ms: Set(None),
            updated_at_ms: Set(now),
        };
        let message = format!(
            "created fine-tuning job {id} on datanet:{}@{} ({} records, root {})",
            access.slug,
            version.version,
            version.record_count,
            version.merkle_root.as_ref().map(|h| hex::encode(&h.value)).unwrap_or_default()
        );
        let inserted = retry_when_busy(|| async {
            let txn = self.db.begin().await?;
            let row = row.clone().insert(&txn).await?;
            store::append_event(&txn, &id, "info", message.clone(), None).await?;
            txn.commit().await?;
            Ok::<_, RegistryError>(row)
        })
        .await;
        let row = match inserted {
            Ok(row) => row,
            Err(error) if !key.is_empty() => {
                // A concurrent create with the same key won the unique index.
                match self.by_idempotency_key(owner, key).await? {
                    Some(found) => return store::view(&found),
                    None => return Err(error),
                }
            }
            Err(error) => return Err(error),
        };
        tracing::info!(job = %id, datanet = %access.slug, version = version.version, "fine-tuning job created");
        self.changed();
        self.start_validation(id);
        store::view(&row)
    }

    async fn by_idempotency_key(&self, owner: u128, key: &str) -> Result<Option<job::Model>, RegistryError> {
        Ok(job::Entity::find()
            .filter(job::Column::OwnerAccount.eq(owner.to_string()))
            .filter(job::Column::IdempotencyKey.eq(key))
            .one(&self.db)
            .await?)
    }

    async fn check_waiting(&self, owner: u128) -> Result<(), RegistryError> {
        let waiting = job::Entity::find()
            .filter(job::Column::OwnerAccount.eq(owner.to_string()))
            .filter(job::Column::State.is_in([
                pb::JobState::ValidatingFiles as i16,
                pb::JobState::Queued as i16,
                pb::JobState::Paused as i16,
            ]))
            .count(&self.db)
            .await?;
        if waiting >= limits::MAX_WAITING_JOBS_PER_ACCOUNT {
            return Err(RegistryError::new(
                ErrorCode::ResourceExhausted,
                format!(
                    "{waiting} of your jobs are waiting, the most one account may have: wait for some to run, or cancel some"
                ),
            ));
        }
        Ok(())
    }

    /// The caller's job (others' jobs are not found).
    async fn owned(
        &self,
        id: &str,
        caller_account: Option<&openledger_proto::common::v1::Uint128>,
    ) -> Result<job::Model, RegistryError> {
        let owner = caller(caller_account)?;
        job::Entity::find_by_id(id)
            .filter(job::Column::OwnerAccount.eq(owner.to_string()))
            .one(&self.db)
            .await?
            .ok_or_else(|| RegistryError::new(ErrorCode::NotFound, format!("no fine-tuning job {id:?}")))
    }

    pub async fn get(&self, request: &pb::GetFineTuneJobRequest) -> Result<pb::FineTuneJob, RegistryError> {
        store::view(&self.owned(&request.id, request.caller_account_id.as_ref()).await?)
    }

    /// The caller's jobs, newest first; `page_token` is the last job id of the previous page.
    pub async fn list(
        &self,
        request: &pb::ListFineTuneJobsRequest,
    ) -> Result<pb::ListFineTuneJobsResponse, RegistryError> {
        let owner = caller(request.caller_account_id.as_ref())?;
        let page = request.page.clone().unwrap_or_default();
        let size = page_size(page.page_size)?;
        let mut jobs = Vec::new();
        let mut before = (!page.page_token.is_empty()).then(|| page.page_token.clone());
        // The metadata filter runs on the rows read; read on until the page is full.
        loop {
            let mut query = job::Entity::find().filter(job::Column::OwnerAccount.eq(owner.to_string()));
            if let Some(before) = &before {
                query = query.filter(job::Column::Id.lt(before.clone()));
            }
            let rows = query.order_by_desc(job::Column::Id).limit(u64::from(size) + 1).all(&self.db).await?;
            let exhausted = rows.len() <= size as usize;
            for row in rows {
                before = Some(row.id.clone());
                let view = store::view(&row)?;
                if request.metadata.iter().all(|(k, v)| view.metadata.get(k) == Some(v)) {
                    if jobs.len() == size as usize {
                        let next = jobs.last().map(|job: &pb::FineTuneJob| job.id.clone()).unwrap_or_default();
                        return Ok(pb::ListFineTuneJobsResponse {
                            jobs,
                            page: Some(PageResponse { next_page_token: next }),
                        });
                    }
                    jobs.push(view);
                }
            }
            if exhausted {
                return Ok(pb::ListFineTuneJobsResponse { jobs, page: Some(PageResponse::default()) });
            }
        }
    }

    /// Cancels a job that has not ended: at once unless it runs, else at its next step.
    pub async fn cancel(&self, request: &pb::FineTuneJobActionRequest) -> Result<pb::FineTuneJob, RegistryError> {
        self.stop(request, Signal::Cancel).await
    }

    /// Pauses a queued job at once, a running one after a checkpoint at its next step.
    pub async fn pause(&self, request: &pb::FineTuneJobActionRequest) -> Result<pb::FineTuneJob, RegistryError> {
        self.stop(request, Signal::Pause).await
    }

    async fn stop(
        &self,
        request: &pb::FineTuneJobActionRequest,
        signal: Signal,
    ) -> Result<pb::FineTuneJob, RegistryError> {
        let row = self.owned(&request.id, request.caller_account_id.as_ref()).await?;
        let (mut waiting, to, verb) = match signal {
            Signal::Cancel => (
                vec![pb::JobState::ValidatingFiles, pb::JobState::Queued, pb::JobState::Paused],
                pb::JobState::Cancelled,
                "cancelled",
            ),
            _ => (vec![pb::JobState::Queued], pb::JobState::Paused, "paused"),
        };
        // A job running in another process (a pod) is stopped by its state: its pod sees it
        // at its next step and stops after a checkpoint; the executor removes the pod.
        if self.executor != executor::LocalExecutor::NAME {
            waiting.push(pb::JobState::Running);
        }
        let mut watch = self.progress.subscribe();
        if let Some(row) =
            store::transition(&self.db, &self.subjects, &row.id, &waiting, to, format!("{verb} by its owner"), |_| {})
                .await?
        {
            self.changed();
            self.runnable.notify_one();
            return store::view(&row);
        }
        // Moved on meanwhile (or running): read it again.
        let row = self.owned(&request.id, request.caller_account_id.as_ref()).await?;
        let state = store::state_of(&row)?;
        if state != pb::JobState::Running {
            let allowed = if signal == Signal::Cancel { "a job that has not ended" } else { "a queued or running job" };
            return Err(RegistryError::new(
                ErrorCode::FailedPrecondition,
                format!("job {} is {}: only {allowed} can be {verb}", row.id, status_name(state)),
            ));
        }
        self.signals.lock().insert(row.id.clone(), signal);
        tracing::info!(job = %row.id, ?signal, "asked a running job to stop");
        // Answer once the run has stopped, or with the job as it is after a while.
        let deadline = tokio::time::Instant::now() + STOP_WAIT;
        loop {
            let now =
                job::Entity::find_by_id(&row.id).one(&self.db).await?.ok_or_else(|| internal("a job vanished"))?;
            if store::state_of(&now)? != pb::JobState::Running {
                return store::view(&now);
            }
            if tokio::time::timeout_at(deadline, watch.changed()).await.is_err() {
                return store::view(&now);
            }
        }
    }

    /// Queues a paused job again; it continues from its last checkpoint.
    pub async fn resume(&self, request: &pb::FineTuneJobActionRequest) -> Result<pb::FineTuneJob, RegistryError> {
        let row = self.owned(&request.id, request.caller_account_id.as_ref()).await?;
        let resumed = store::transition(
            &self.db,
            &self.subjects,
            &row.id,
            &[pb::JobState::Paused],
            pb::JobState::Queued,
            "resumed by its owner: queued again".into(),
            |_| {},
        )
        .await?;
        match resumed {
            Some(row) => {
                self.changed();
                self.runnable.notify_one();
                store::view(&row)
            }
            None => Err(RegistryError::new(
                ErrorCode::FailedPrecondition,
                format!("job {} is {}: only a paused job can be resumed", row.id, status_name(store::state_of(&row)?)),
            )),
        }
    }

    /// A job's events, newest first; `page_token` is the previous page's last event id.
    pub async fn events(&self, request: &pb::ListJobEventsRequest) -> Result<pb::ListJobEventsResponse, RegistryError> {
        let row = self.owned(&request.job_id, request.caller_account_id.as_ref()).await?;
        let page = request.page.clone().unwrap_or_default();
        let size = page_size(page.page_size)?;
        let mut query = job_event::Entity::find().filter(job_event::Column::JobId.eq(&row.id));
        if !page.page_token.is_empty() {
            let sequence = event_sequence(&row.id, &page.page_token)?;
            query = query.filter(job_event::Column::Sequence.lt(sequence));
        }
        let rows = query.order_by_desc(job_event::Column::Sequence).limit(u64::from(size) + 1).all(&self.db).await?;
        let more = rows.len() > size as usize;
        let events: Vec<pb::JobEvent> =
            rows.iter().take(size as usize).map(store::event_of).collect::<Result<_, _>>()?;
        let next = match (more, events.last()) {
            (true, Some(last)) => event_id(&row.id, last.sequence),
            _ => String::new(),
        };
        Ok(pb::ListJobEventsResponse { events, page: Some(PageResponse { next_page_token: next }) })
    }

    /// A job's events oldest first after `after_sequence`; with `follow`, then each new one
    /// until the job ends (or is paused).
    pub async fn stream(
        self: &Arc<Self>,
        request: pb::StreamJobEventsRequest,
        sink: tokio::sync::mpsc::Sender<Result<pb::JobEvent, RegistryError>>,
    ) -> Result<(), RegistryError> {
        let row = self.owned(&request.job_id, request.caller_account_id.as_ref()).await?;
        let mut after = request.after_sequence as i64;
        let mut watch = self.progress.subscribe();
        loop {
            watch.borrow_and_update();
            let rows = job_event::Entity::find()
                .filter(job_event::Column::JobId.eq(&row.id))
                .filter(job_event::Column::Sequence.gt(after))
                .order_by_asc(job_event::Column::Sequence)
                .limit(500)
                .all(&self.db)
                .await?;
            for event in &rows {
                after = event.sequence;
                if sink.send(store::event_of(event)).await.is_err() {
                    return Ok(()); // the client went away
                }
            }
            if !rows.is_empty() {
                continue;
            }
            let now =
                job::Entity::find_by_id(&row.id).one(&self.db).await?.ok_or_else(|| internal("a job vanished"))?;
            let state = store::state_of(&now)?;
            if !request.follow || is_terminal(state) || state == pb::JobState::Paused {
                return Ok(());
            }
            // Woken by any job's progress; a poll bounds the wait if another replica writes.
            let _ = tokio::time::timeout(Duration::from_secs(2), watch.changed()).await;
        }
    }

    /// A job's checkpoints, newest first.
    pub async fn checkpoints(
        &self,
        request: &pb::ListJobCheckpointsRequest,
    ) -> Result<pb::ListJobCheckpointsResponse, RegistryError> {
        let row = self.owned(&request.job_id, request.caller_account_id.as_ref()).await?;
        let page = request.page.clone().unwrap_or_default();
        let size = page_size(page.page_size)?;
        let before = if page.page_token.is_empty() {
            None
        } else {
            let step = page.page_token.rsplit('-').next().and_then(|step| step.parse().ok());
            Some(
                step.ok_or_else(|| invalid(format!("after {:?} is not a checkpoint id of this job", page.page_token)))?,
            )
        };
        let rows = store::checkpoints(&self.db, &row.id, before, u64::from(size) + 1).await?;
        let name = match row.fine_tuned_model.as_str() {
            "" => spec::fine_tuned_name(
                &row.base_model,
                row.owner_account.parse().unwrap_or_default(),
                &row.suffix,
                &row.id,
            )?,
            name => name.to_owned(),
        };
        let checkpoints: Vec<pb::JobCheckpoint> =
            rows.iter().take(size as usize).map(|c| store::checkpoint_view(c, &name)).collect::<Result<_, _>>()?;
        let next = match (rows.len() > size as usize, checkpoints.last()) {
            (true, Some(last)) => last.id.clone(),
            _ => String::new(),
        };
        Ok(pb::ListJobCheckpointsResponse { checkpoints, page: Some(PageResponse { next_page_token: next }) })
    }

    /// Takes the stop request of a running job, if any.
    fn signal(&self, id: &str) -> Option<Signal> {
        self.signals.lock().get(id).copied()
    }

    fn clear_signal(&self, id: &str) {
        self.signals.lock().remove(id);
    }

    /// Asks every running job of this process to checkpoint and stop (the process is ending).
    pub fn shutdown_running(&self, running: &[String]) {
        let mut signals = self.signals.lock();
        for id in running {
            signals.entry(id.clone()).or_insert(Signal::Shutdown);
        }
    }
}

/// Training threads of a local job: every core but one (so the platform stays responsive),
/// at least one.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1)).max(1)
}

/// `ftevent-<job hex>-<sequence>`.
pub fn event_id(job_id: &str, sequence: u64) -> String {
    format!("ftevent-{}-{sequence}", job_id.strip_prefix(JOB_ID_PREFIX).unwrap_or(job_id))
}

fn event_sequence(job_id: &str, event_id: &str) -> Result<i64, RegistryError> {
    let hex = job_id.strip_prefix(JOB_ID_PREFIX).unwrap_or(job_id);
    event_id
        .strip_prefix("ftevent-")
        .and_then(|rest| rest.strip_prefix(hex))
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|sequence| sequence.parse().ok())
        .ok_or_else(|| invalid(format!("after {event_id:?} is not an event id of job {job_id}")))
}

fn page_size(asked: u32) -> Result<u32, RegistryError> {
    match asked {
        0 => Ok(limits::DEFAULT_JOB_PAGE_SIZE),
        n if n <= limits::MAX_JOB_PAGE_SIZE => Ok(n),
        n => Err(invalid(format!("page size {n} is more than {}", limits::MAX_JOB_PAGE_SIZE))),
    }
}

fn caller(account: Option<&openledger_proto::common::v1::Uint128>) -> Result<u128, RegistryError> {
    match u128_of(account) {
        0 => Err(RegistryError::new(
            ErrorCode::Unauthenticated,
            "fine-tuning jobs belong to an account: call with an API key (Authorization: Bearer)",
        )),
        account => Ok(account),
    }
}

fn invalid(message: impl Into<String>) -> RegistryError {
    RegistryError::new(ErrorCode::InvalidArgument, message)
}

fn internal(message: impl Into<String>) -> RegistryError {
    RegistryError::new(ErrorCode::Internal, message)
}
