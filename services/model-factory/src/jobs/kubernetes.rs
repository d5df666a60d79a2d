//! The Kubernetes executor: a queued job becomes a `LoraJob` custom resource, which the
//! operator runs as a `batch/v1` Job whose pod runs `openledger train-job <jobId>` (see
//! [`super::pod`]). The pod claims the job (`queued` → `running`), trains and ends it in the
//! database as the local executor does; this executor follows what it created, level-triggered,
//! every few seconds (all state is in the database and in the cluster, none in memory):
//!
//! - a `queued` or `running` job without its `LoraJob` gets one (again, if it vanished);
//! - a job `paused` or `cancelled` loses its `LoraJob` (the pod is stopped; checkpoints stay);
//! - a `LoraJob` that `Failed` (pods out of retries, deadline, invalid spec) fails its job with
//!   the condition's reason and message;
//! - the job's progress is mirrored into the `LoraJob`'s `status.progress` (a merge patch of
//!   that field alone), only when it changed: a pass in sync costs reads only.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{
    api::core::v1::{EnvFromSource, ResourceRequirements},
    apimachinery::pkg::api::resource::Quantity,
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams},
};
use openledger_core::Config;
use openledger_operator::{
    conditions,
    crd::{JobPhase, LoraJob, LoraJobProgress, LoraJobSpec, PodSettings},
    executor::ExecutorSettings,
};
use openledger_proto::modelfactory::v1 as pb;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use tokio_util::sync::CancellationToken;

use super::{
    Jobs,
    executor::Executor,
    store::{self, status_name},
    validate::Failure,
};
use crate::{RegistryError, entities::job};

/// The executor's name, recorded on its jobs.
pub const NAME: &str = "kubernetes";
/// `app.kubernetes.io/managed-by` of every `LoraJob` this service creates.
pub const MANAGED_BY: &str = "openledger-model-factory";
/// The label naming the model-factory job of a `LoraJob`.
pub const JOB_ID_LABEL: &str = "openledger.io/job-id";
/// Pod failures retried before the Job fails; each retry resumes from the last checkpoint.
pub const BACKOFF_LIMIT: i32 = 2;
/// How often the executor looks at its jobs and resources when nothing woke it.
const POLL: Duration = Duration::from_secs(3);
/// How long the `LoraJob` of an ended job is kept once it shows the end (for `kubectl get`);
/// the job, its events and checkpoints stay in the database.
pub const ENDED_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// `LoraJob`s read per list request.
const LIST_PAGE: u32 = 500;
/// What the job pods get, from the configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct KubernetesSettings {
    pub namespace: String,
    pub image: String,
    pub env_from: Vec<EnvFromSource>,
    pub data_claim: Option<String>,
    pub gpus: u32,
    pub queue: Option<String>,
}

impl KubernetesSettings {
    /// The `kubernetes_*` settings; an empty namespace is the pod's own, else `default`.
    pub fn from_config(config: &Config) -> Self {
        let common = ExecutorSettings::from_config(config);
        Self {
            namespace: common.namespace,
            image: common.image,
            env_from: common.env_from,
            data_claim: common.data_claim,
            gpus: u32::try_from(config.kubernetes_training_gpus).unwrap_or(u32::MAX),
            queue: common.queue,
        }
    }
}

/// The `LoraJob` of a job id: a DNS-1123 label (`ftjob-<hex>` already is one).
pub fn lora_job_name(job_id: &str) -> String {
    let mapped: String = job_id
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' })
        .take(63)
        .collect();
    let trimmed = mapped.trim_matches('-');
    if trimmed.is_empty() { "job".to_owned() } else { trimmed.to_owned() }
}

/// Runs queued jobs as `LoraJob`s and follows them.
pub struct KubernetesExecutor {
    api: Api<LoraJob>,
    settings: KubernetesSettings,
}

/// What one pass did: requests to the API server by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    pub reads: usize,
    pub created: usize,
    pub deleted: usize,
    pub patched: usize,
    /// Jobs failed because their `LoraJob` failed.
    pub failed: usize,
}

impl Pass {
    pub fn writes(&self) -> usize {
        self.created + self.deleted + self.patched
    }
}

/// A request to the API server failed.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error("kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error(transparent)]
    Jobs(#[from] RegistryError),
}

impl KubernetesExecutor {
    pub fn new(client: Client, settings: KubernetesSettings) -> Self {
        Self { api: Api::namespaced(client, &settings.namespace), settings }
    }

    /// A client from the pod's service account (or the local kubeconfig) and the settings.
    pub async fn from_config(config: &Config) -> Result<Self, KubernetesError> {
        let client = Client::try_default().await?;
        Ok(Self::new(client, KubernetesSettings::from_config(config)))
    }

    /// The `LoraJob` for `row`, its pod requesting `memory` bytes when known (the job's
    /// estimated peak: the scheduler then places it on a node with room for it).
    pub fn lora_job(&self, row: &job::Model, memory: Option<u64>) -> LoraJob {
        let settings = &self.settings;
        let resources = memory.map(|bytes| ResourceRequirements {
            requests: Some(BTreeMap::from([("memory".to_owned(), Quantity(bytes.to_string()))])),
            ..Default::default()
        });
        let spec = LoraJobSpec {
            job_id: row.id.clone(),
            base_model: row.base_model.clone(),
            pod: PodSettings {
                image: settings.image.clone(),
                env_from: settings.env_from.clone(),
                data_volume_claim: settings.data_claim.clone(),
                resources,
                ..Default::default()
            },
            gpus: settings.gpus,
            queue_name: settings.queue.clone(),
            backoff_limit: BACKOFF_LIMIT,
            active_deadline_seconds: None,
            ttl_seconds_after_finished: Some(openledger_operator::executor::FINISHED_JOB_TTL_SECONDS),
        };
        let labels = BTreeMap::from([
            ("app.kubernetes.io/managed-by".to_owned(), MANAGED_BY.to_owned()),
            (JOB_ID_LABEL.to_owned(), row.id.clone()),
        ]);
        let mut resource = LoraJob::new(&lora_job_name(&row.id), spec);
        resource.metadata = ObjectMeta {
            name: Some(lora_job_name(&row.id)),
            namespace: Some(settings.namespace.clone()),
            labels: Some(labels),
            ..Default::default()
        };
        resource
    }

    /// One look at every job of this executor and every `LoraJob` it made, in job id order.
    pub async fn pass(&self, jobs: &Jobs) -> Result<Pass, KubernetesError> {
        let mut pass = Pass::default();
        let resources = self.list(&mut pass).await?;
        let waiting = [pb::JobState::Queued, pb::JobState::Running, pb::JobState::Paused].map(|s| s as i16);
        let mut rows: BTreeMap<String, job::Model> = job::Entity::find()
            .filter(job::Column::Executor.eq(NAME))
            .filter(job::Column::State.is_in(waiting))
            .order_by_asc(job::Column::Id)
            .all(&jobs.db)
            .await
            .map_err(RegistryError::from)?
            .into_iter()
            .map(|row| (row.id.clone(), row))
            .collect();
        // Ended jobs whose resource does not show their end yet (a final status never changes).
        let unsettled: Vec<String> = resources
            .iter()
            .filter(|(id, resource)| !rows.contains_key(*id) && !settled(resource))
            .map(|(id, _)| id.clone())
            .collect();
        if !unsettled.is_empty() {
            let ended = job::Entity::find()
                .filter(job::Column::Id.is_in(unsettled))
                .all(&jobs.db)
                .await
                .map_err(RegistryError::from)?;
            rows.extend(ended.into_iter().map(|row| (row.id.clone(), row)));
        }
        for (id, row) in &rows {
            if let Err(error) = self.reconcile(jobs, row, resources.get(id), &mut pass).await {
                tracing::warn!(job = %id, %error, "following a job on the cluster failed; trying again at the next pass");
            }
        }
        // Ended and shown as ended for longer than the retention: the resource goes, so the
        // list each pass makes does not grow with every job ever run.
        let now = k8s_openapi::jiff::Timestamp::now();
        for (id, resource) in &resources {
            let age = resource.metadata.creation_timestamp.as_ref().map(|created| now.duration_since(created.0));
            let expired = age.is_some_and(|age| age.unsigned_abs() > ENDED_RETENTION);
            if rows.contains_key(id) || !settled(resource) || !expired || resource.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            let name = resource.metadata.name.clone().unwrap_or_else(|| lora_job_name(id));
            pass.deleted += 1;
            match self.api.delete(&name, &DeleteParams::foreground()).await {
                Ok(_) => {
                    tracing::info!(job = %id, lora_job = %name, "the LoraJob of an ended job removed after its retention")
                }
                Err(kube::Error::Api(status)) if status.is_not_found() => {}
                Err(error) => {
                    tracing::warn!(job = %id, %error, "removing an ended job's LoraJob failed; trying again at the next pass")
                }
            }
        }
        Ok(pass)
    }

    /// This service's `LoraJob`s by job id.
    async fn list(&self, pass: &mut Pass) -> Result<BTreeMap<String, LoraJob>, KubernetesError> {
        let mut found = BTreeMap::new();
        let mut params =
            ListParams::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}")).limit(LIST_PAGE);
        loop {
            let page = self.api.list(&params).await?;
            pass.reads += 1;
            for resource in page.items {
                if let Some(id) = resource.metadata.labels.as_ref().and_then(|labels| labels.get(JOB_ID_LABEL)) {
                    found.insert(id.clone(), resource);
                }
            }
            match page.metadata.continue_.filter(|token| !token.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => return Ok(found),
            }
        }
    }

    async fn reconcile(
        &self,
        jobs: &Jobs,
        row: &job::Model,
        resource: Option<&LoraJob>,
        pass: &mut Pass,
    ) -> Result<(), KubernetesError> {
        let state = store::state_of(row)?;
        let Some(resource) = resource else {
            if matches!(state, pb::JobState::Queued | pb::JobState::Running) {
                self.create(jobs, row, pass).await?;
            }
            return Ok(());
        };
        if resource.metadata.deletion_timestamp.is_some() {
            return Ok(()); // going: created again once gone, if the job still waits
        }
        let phase = resource.status.as_ref().map(|status| status.run.phase).unwrap_or_default();
        match state {
            pb::JobState::Paused | pb::JobState::Cancelled => return self.delete(row, resource, pass).await,
            pb::JobState::Queued | pb::JobState::Running if phase == JobPhase::Failed => {
                return self.fail(jobs, row, resource, pass).await;
            }
            // Its pod ended without ending the job (paused and resumed meanwhile): run it anew.
            pb::JobState::Queued | pb::JobState::Running if phase == JobPhase::Succeeded => {
                return self.delete(row, resource, pass).await;
            }
            pb::JobState::Running | pb::JobState::Succeeded | pb::JobState::Failed => {}
            _ => return Ok(()),
        }
        self.mirror(jobs, row, state, resource, pass).await
    }

    async fn create(&self, jobs: &Jobs, row: &job::Model, pass: &mut Pass) -> Result<(), KubernetesError> {
        let resource = self.lora_job(row, jobs.memory_request(row).await);
        let name = lora_job_name(&row.id);
        let params = PostParams { field_manager: Some(MANAGED_BY.to_owned()), ..Default::default() };
        match self.api.create(&params, &resource).await {
            Ok(_) => {
                pass.created += 1;
                let message = format!(
                    "handed to the cluster: LoraJob {name} in namespace {}; the job runs when its pod starts",
                    self.settings.namespace
                );
                store::append_event(&jobs.db, &row.id, "info", message, None).await?;
                jobs.changed();
                tracing::info!(job = %row.id, lora_job = %name, "LoraJob created");
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.is_already_exists() => {
                // Made by an earlier pass whose list did not show it yet, or by another replica.
                pass.created += 1;
                tracing::debug!(job = %row.id, lora_job = %name, "LoraJob already exists");
                Ok(())
            }
            Err(error) => {
                pass.created += 1;
                Err(error.into())
            }
        }
    }

    async fn delete(&self, row: &job::Model, resource: &LoraJob, pass: &mut Pass) -> Result<(), KubernetesError> {
        let name = resource.metadata.name.clone().unwrap_or_else(|| lora_job_name(&row.id));
        pass.deleted += 1;
        match self.api.delete(&name, &DeleteParams::foreground()).await {
            Ok(_) => {
                tracing::info!(job = %row.id, lora_job = %name, state = status_name(store::state_of(row)?), "LoraJob deleted");
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// The `LoraJob` failed while its job had not ended: the job fails with the reason.
    async fn fail(
        &self,
        jobs: &Jobs,
        row: &job::Model,
        resource: &LoraJob,
        pass: &mut Pass,
    ) -> Result<(), KubernetesError> {
        let condition = resource.status.as_ref().and_then(|status| conditions::get(&status.run.conditions, "Failed"));
        let reason = condition.map(|c| c.reason.as_str()).filter(|r| !r.is_empty()).unwrap_or("Failed");
        let detail = condition.map(|c| c.message.as_str()).filter(|m| !m.is_empty()).unwrap_or("no message");
        let name = resource.metadata.name.as_deref().unwrap_or_default();
        let message =
            format!("the cluster job failed ({reason}): {detail}; LoraJob {name} is kept, and so are the checkpoints");
        jobs.fail(&row.id, &[pb::JobState::Queued, pb::JobState::Running], Failure::new(failure_code(reason), message))
            .await?;
        pass.failed += 1;
        Ok(())
    }

    /// Writes the job's progress into the resource's `status.progress` when it differs.
    async fn mirror(
        &self,
        jobs: &Jobs,
        row: &job::Model,
        state: pb::JobState,
        resource: &LoraJob,
        pass: &mut Pass,
    ) -> Result<(), KubernetesError> {
        let loss = store::checkpoints(&jobs.db, &row.id, None, 1)
            .await?
            .first()
            .map(|checkpoint| checkpoint.train_loss)
            .filter(|loss| loss.is_finite());
        let wanted = LoraJobProgress {
            status: status_name(state).to_owned(),
            step: row.step.max(0) as u64,
            total_steps: row.total_steps.max(0) as u64,
            loss,
            trained_tokens: row.trained_tokens.max(0) as u64,
            fine_tuned_model: Some(row.fine_tuned_model.clone()).filter(|name| !name.is_empty()),
        };
        if resource.status.as_ref().and_then(|status| status.progress.as_ref()) == Some(&wanted) {
            return Ok(());
        }
        let name = resource.metadata.name.clone().unwrap_or_else(|| lora_job_name(&row.id));
        let params = PatchParams { field_manager: Some(MANAGED_BY.to_owned()), ..Default::default() };
        pass.patched += 1;
        self.api.patch_status(&name, &params, &Patch::Merge(progress_patch(&wanted))).await?;
        Ok(())
    }
}

/// A merge patch of `status.progress` alone; absent fields are written as `null` so that they
/// are removed rather than left as they were.
pub fn progress_patch(progress: &LoraJobProgress) -> serde_json::Value {
    let mut value = serde_json::to_value(progress).unwrap_or_default();
    if let Some(fields) = value.as_object_mut() {
        for field in ["loss", "fineTunedModel"] {
            fields.entry(field).or_insert(serde_json::Value::Null);
        }
    }
    serde_json::json!({ "status": { "progress": value } })
}

/// Whether the resource already shows its job's end (nothing of it changes any more).
fn settled(resource: &LoraJob) -> bool {
    let progress = resource.status.as_ref().and_then(|status| status.progress.as_ref());
    progress.is_some_and(|progress| matches!(progress.status.as_str(), "succeeded" | "failed" | "cancelled"))
}

/// The job's error code for the reason of a `Failed` condition.
fn failure_code(reason: &str) -> &'static str {
    match reason {
        "BackoffLimitExceeded" => "backoff_limit_exceeded",
        "DeadlineExceeded" => "deadline_exceeded",
        "InvalidSpec" => "invalid_spec",
        _ => "cluster_job_failed",
    }
}

#[async_trait::async_trait]
impl Executor for KubernetesExecutor {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn run(&self, jobs: Arc<Jobs>, shutdown: CancellationToken) {
        if let Err(error) = jobs.recover_validations().await {
            tracing::error!(%error, "finding jobs left validating failed");
        }
        tracing::info!(namespace = %self.settings.namespace, image = %self.settings.image, "running fine-tuning jobs as LoraJobs");
        loop {
            let woken = jobs.runnable.notified();
            match self.pass(&jobs).await {
                Ok(pass) if pass.writes() + pass.failed > 0 => tracing::debug!(?pass, "LoraJobs reconciled"),
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "looking at the LoraJobs failed; trying again"),
            }
            tokio::select! {
                () = woken => {}
                () = tokio::time::sleep(POLL) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        assert_eq!(lora_job_name("ftjob-0193abcd"), "ftjob-0193abcd");
        assert_eq!(lora_job_name("FTJob_1.x-"), "ftjob-1-x");
        assert_eq!(lora_job_name(&"a".repeat(100)).len(), 63);
    }

    #[test]
    fn settings_come_from_the_configuration() {
        let config = Config {
            kubernetes_namespace: "ml".into(),
            kubernetes_job_image: "ghcr.io/openledger/openledger:cuda".into(),
            kubernetes_job_env_from: "configmap:openledger, secret:openledger-db".into(),
            kubernetes_data_claim: "openledger-data".into(),
            kubernetes_training_gpus: 1,
            ..Config::default()
        };
        let settings = KubernetesSettings::from_config(&config);
        assert_eq!(settings.namespace, "ml");
        assert_eq!(settings.env_from.len(), 2);
        assert_eq!(settings.env_from[0].config_map_ref.as_ref().map(|r| r.name.as_str()), Some("openledger"));
        assert_eq!(settings.env_from[1].secret_ref.as_ref().map(|r| r.name.as_str()), Some("openledger-db"));
        assert_eq!(
            (settings.data_claim.as_deref(), settings.gpus, settings.queue.as_deref()),
            (Some("openledger-data"), 1, None)
        );
    }

    #[test]
    fn a_progress_patch_touches_status_progress_alone_and_clears_what_is_unknown() {
        let patch = progress_patch(&LoraJobProgress {
            status: "running".into(),
            step: 3,
            total_steps: 10,
            ..Default::default()
        });
        assert_eq!(
            patch,
            serde_json::json!({"status": {"progress": {
                "status": "running", "step": 3, "totalSteps": 10, "trainedTokens": 0, "loss": null, "fineTunedModel": null
            }}})
        );
    }
}
