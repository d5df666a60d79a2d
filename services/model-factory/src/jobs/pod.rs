//! The job pods' entrypoint (`openledger train-job <jobId>`): the model-factory's job machinery
//! built from the same configuration as the service (database, object store, the bus for the
//! outbox, the ledger and datanet-ingest), running exactly one job with the local executor's
//! code (`run_one`: it claims a queued job or continues a running one from the newest
//! checkpoint in the data directory). While it trains it watches the job's state, so a job
//! cancelled or paused through the API stops at its next step (after a checkpoint).

use std::{sync::Arc, time::Duration};

use openledger_core::{Config, ErrorCode, ServiceKind};
use openledger_proto::modelfactory::v1 as pb;
use openledger_runtime::{Deps, Endpoints, clients::ServiceChannel};
use openledger_store::OutboxRelay;
use sea_orm::EntityTrait;
use tokio_util::sync::CancellationToken;

use super::{Jobs, JobsParts, datanets::DatanetService, kubernetes, store};
use crate::{
    RegistryError, base::BaseModels, entities::job, events::Subjects, owners::LedgerOwners, registry::Registry,
};

/// How often a training pod reads its job's state (to stop when it was cancelled or paused).
const STATE_POLL: Duration = Duration::from_secs(2);

/// Where the one job stands when the pod ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    Succeeded,
    Cancelled,
    Paused,
    Failed,
    /// Still `running` (the pod is stopping, or a service it needs was unreachable): the next
    /// pod continues from the last checkpoint.
    Interrupted,
}

impl JobOutcome {
    /// The pod's exit code: 0 when there is nothing left to do, 1 when the job failed, 75
    /// (`EX_TEMPFAIL`) when a new pod should continue it.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Succeeded | Self::Cancelled | Self::Paused => 0,
            Self::Failed => 1,
            Self::Interrupted => 75,
        }
    }

    fn of(state: pb::JobState) -> Self {
        match state {
            pb::JobState::Succeeded => Self::Succeeded,
            pb::JobState::Cancelled => Self::Cancelled,
            pb::JobState::Paused => Self::Paused,
            pb::JobState::Failed => Self::Failed,
            _ => Self::Interrupted,
        }
    }
}

/// Runs job `job_id` in this process until it ends or `shutdown` (then it checkpoints and stays
/// `running`). The job's events reach the bus through this process's outbox relay.
pub async fn run_job(
    config: Arc<Config>,
    job_id: &str,
    shutdown: CancellationToken,
) -> Result<JobOutcome, RegistryError> {
    let deps = Deps::start(config.clone(), shutdown.clone());
    let Some(backends) = deps.backends.wait(&shutdown).await else {
        return Ok(JobOutcome::Interrupted);
    };
    let relay_stop = CancellationToken::new();
    let relay = OutboxRelay::new(backends.db.clone(), backends.bus.clone(), crate::events::PRODUCER);
    let wake = relay.waker();
    let flush_timeout = Duration::from_millis(config.shutdown_timeout_ms);
    let relaying = tokio::spawn({
        let stop = relay_stop.clone();
        async move { relay.run(stop, flush_timeout).await }
    });
    let channel = |kind, url: &Option<String>| ServiceChannel::new(kind, url.clone(), &config, Endpoints::default());
    let owners = Arc::new(LedgerOwners::new(channel(ServiceKind::Ledger, &config.ledger_url)));
    let bases = Arc::new(BaseModels::from_config(&config));
    let subjects = Subjects::new(&config.bus_subject_prefix);
    let registry =
        Registry::new(backends.db.clone(), backends.objects, owners.clone(), bases.clone(), subjects.clone())
            .with_outbox_waker(wake.clone());
    let jobs = Jobs::new(JobsParts {
        db: backends.db,
        registry: Arc::new(registry),
        datanets: Arc::new(DatanetService::new(channel(ServiceKind::DatanetIngest, &config.datanet_url))),
        owners,
        bases,
        subjects,
        work_dir: config.data_dir.join("finetune"),
        executor: kubernetes::NAME,
        threads: super::default_threads(),
        memory_limit: config.job_memory_limit_bytes,
        outbox_wake: Some(wake),
    });
    let outcome = run_one_job(&jobs, job_id, &shutdown).await;
    relay_stop.cancel();
    let _ = relaying.await;
    outcome
}

/// Runs `job_id` with `jobs` to its end (the part of [`run_job`] after the wiring).
pub(crate) async fn run_one_job(
    jobs: &Arc<Jobs>,
    job_id: &str,
    shutdown: &CancellationToken,
) -> Result<JobOutcome, RegistryError> {
    let row = find(jobs, job_id).await?;
    if row.executor != kubernetes::NAME {
        return Err(RegistryError::new(
            ErrorCode::FailedPrecondition,
            format!("job {job_id} runs on the {:?} executor, not in a job pod", row.executor),
        ));
    }
    match store::state_of(&row)? {
        pb::JobState::Queued | pb::JobState::Running => {}
        pb::JobState::ValidatingFiles => {
            return Err(RegistryError::new(
                ErrorCode::FailedPrecondition,
                format!("job {job_id} is still validating its files: it is not queued yet"),
            ));
        }
        state => return Ok(JobOutcome::of(state)), // ended or paused before this pod started
    }
    // Stops the run (checkpointed, the state left as the API set it) when the job is no longer
    // queued or running, or when the process is stopping.
    let stop = shutdown.child_token();
    let watcher = tokio::spawn({
        let (jobs, id, stop) = (jobs.clone(), job_id.to_owned(), stop.clone());
        async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(STATE_POLL) => {}
                }
                let state = match job::Entity::find_by_id(&id).one(&jobs.db).await {
                    Ok(Some(row)) => store::state_of(&row).ok(),
                    Ok(None) => None,
                    Err(error) => {
                        tracing::warn!(job = %id, %error, "reading the job's state failed");
                        continue;
                    }
                };
                if !matches!(state, Some(pb::JobState::Queued | pb::JobState::Running)) {
                    tracing::info!(job = %id, ?state, "the job was stopped through the API: stopping at the next step");
                    stop.cancel();
                    return;
                }
            }
        }
    });
    jobs.run_one(row, &stop).await;
    watcher.abort();
    Ok(JobOutcome::of(store::state_of(&find(jobs, job_id).await?)?))
}

async fn find(jobs: &Jobs, job_id: &str) -> Result<job::Model, RegistryError> {
    job::Entity::find_by_id(job_id)
        .one(&jobs.db)
        .await?
        .ok_or_else(|| RegistryError::new(ErrorCode::NotFound, format!("no fine-tuning job {job_id:?}")))
}
