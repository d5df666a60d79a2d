//! Where queued jobs run, behind one interface, chosen by `job_executor`:
//!
//! - [`LocalExecutor`] (`local`: embedded mode and single-replica clusters): one job at a time,
//!   trained on threads of its own (`threads`, by default all cores but one, so the platform
//!   stays responsive) in this process; it picks up, at start, the jobs a dead process left
//!   running. Memory: the base model is held as f32 for training (4 bytes per parameter,
//!   ~0.54 GB for SmolLM2-135M) plus activations bounded by `lora.batch_tokens`.
//! - [`KubernetesExecutor`](super::kubernetes::KubernetesExecutor) (`kubernetes`): each queued
//!   job becomes a `LoraJob` custom resource that the operator runs as a `batch/v1` Job; its pod
//!   runs `openledger train-job <jobId>` ([`super::pod::run_job`]), the same training as the
//!   local executor's, writing to the same database; the executor follows the resources it made.

use std::{sync::Arc, time::Duration};

use openledger_proto::modelfactory::v1 as pb;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use tokio_util::sync::CancellationToken;

use super::Jobs;
use crate::entities::job;

/// Runs queued jobs until the process shuts down.
#[async_trait::async_trait]
pub trait Executor: Send + Sync {
    /// Recorded on each job (`local`, `kubernetes`).
    fn name(&self) -> &'static str;

    async fn run(&self, jobs: Arc<Jobs>, shutdown: CancellationToken);
}

/// How often an idle executor looks for work it was not woken for (jobs queued by another
/// replica).
const IDLE_POLL: Duration = Duration::from_secs(2);

/// Jobs in this process, one at a time.
pub struct LocalExecutor;

impl LocalExecutor {
    pub const NAME: &'static str = "local";
}

#[async_trait::async_trait]
impl Executor for LocalExecutor {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    async fn run(&self, jobs: Arc<Jobs>, shutdown: CancellationToken) {
        if let Err(error) = jobs.recover_validations().await {
            tracing::error!(%error, "finding jobs left validating failed");
        }
        loop {
            let woken = jobs.runnable.notified();
            match jobs.next_runnable().await {
                Ok(Some(row)) => jobs.run_one(row, &shutdown).await,
                Ok(None) => {}
                Err(error) => tracing::error!(%error, "finding the next job failed"),
            }
            if shutdown.is_cancelled() {
                return;
            }
            tokio::select! {
                () = woken => {}
                () = tokio::time::sleep(IDLE_POLL) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }
}

impl Jobs {
    /// Jobs left in `validating_files` by a previous process read their records again.
    pub(super) async fn recover_validations(self: &Arc<Self>) -> Result<(), crate::RegistryError> {
        let left = job::Entity::find()
            .filter(job::Column::State.eq(pb::JobState::ValidatingFiles as i16))
            .filter(job::Column::Executor.eq(self.executor))
            .all(&self.db)
            .await?;
        for row in left {
            tracing::info!(job = %row.id, "reading the records of a job left validating");
            self.start_validation(row.id);
        }
        Ok(())
    }

    /// A job left `running` by a dead process first, then the oldest queued job.
    async fn next_runnable(&self) -> Result<Option<job::Model>, crate::RegistryError> {
        for state in [pb::JobState::Running, pb::JobState::Queued] {
            let found = job::Entity::find()
                .filter(job::Column::State.eq(state as i16))
                .filter(job::Column::Executor.eq(self.executor))
                .order_by_asc(job::Column::Id)
                .one(&self.db)
                .await?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }
}
