//! Where queued jobs run, behind one interface:
//!
//! - [`LocalExecutor`] (embedded mode and single-replica clusters): one job at a time, trained
//!   on threads of its own (`threads`, by default all cores but one, so the platform stays
//!   responsive) in this process; it picks up, at start, the jobs a dead process left running.
//!   Memory: the base model is held as f32 for training (4 bytes per parameter, ~0.54 GB for
//!   SmolLM2-135M) plus activations bounded by `lora.batch_tokens`.
//! - The Kubernetes executor (the operator issue builds it) turns a queued job into a
//!   [`LoraJobSpec`] custom resource; the operator runs it as a `batch/v1` Job whose container
//!   runs the same training (its entrypoint comes with the operator) and reports back through
//!   this service's API. The contract is the resource's spec below.

use std::{sync::Arc, time::Duration};

use openledger_proto::modelfactory::v1 as pb;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use serde::{Deserialize, Serialize};
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

#[async_trait::async_trait]
impl Executor for LocalExecutor {
    fn name(&self) -> &'static str {
        "local"
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
    async fn recover_validations(self: &Arc<Self>) -> Result<(), crate::RegistryError> {
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

/// The spec of a `LoraJob` (`openledger.io/v1alpha1`): what the Kubernetes executor creates
/// for a queued job, and what the operator needs to run it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoraJobSpec {
    /// The model-factory job (`ftjob-…`).
    pub job_id: String,
    /// The base model id the adapter is trained for.
    pub base_model: String,
    /// The container image (the platform's, or its CUDA variant).
    pub image: String,
    /// `nvidia.com/gpu` requested (0: CPU).
    pub gpus: u32,
    /// A Kueue `LocalQueue` name: the Job starts suspended and Kueue admits it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_name: Option<String>,
    pub backoff_limit: u32,
    pub active_deadline_seconds: Option<u64>,
}

impl LoraJobSpec {
    /// The spec for `job` with the platform's `image`.
    pub fn for_job(job: &pb::FineTuneJob, image: &str) -> Self {
        Self {
            job_id: job.id.clone(),
            base_model: job.base_model.clone(),
            image: image.to_owned(),
            gpus: 0,
            queue_name: None,
            // A failed pod resumes from the job's last checkpoint; three tries in all.
            backoff_limit: 2,
            active_deadline_seconds: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lora_job_spec_is_the_operator_contract() {
        let job = pb::FineTuneJob { id: "ftjob-1".into(), base_model: "SmolLM2".into(), ..Default::default() };
        let spec = LoraJobSpec::for_job(&job, "ghcr.io/openledger/openledger:0.1");
        let json = serde_json::to_value(&spec).expect("serializes");
        assert_eq!(json["jobId"], "ftjob-1");
        assert_eq!(json["baseModel"], "SmolLM2");
        assert_eq!(json["backoffLimit"], 2);
        assert!(json.get("queueName").is_none());
        assert_eq!(serde_json::from_value::<LoraJobSpec>(json).expect("reads back"), spec);
    }
}
