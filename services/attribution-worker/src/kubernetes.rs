//! The `kubernetes` index executor: an index to build becomes an `AttributionJob` (created once,
//! idempotently: an existing one is followed, a concurrent create's 409 is fine), which the
//! operator runs as an Indexed Job whose pods run `openledger index-job` (`index_job`) and write
//! the files on a ReadWriteMany claim the worker mounts at its own data directory. The worker
//! follows the resource with one GET per poll (no write while nothing changes); once it has
//! `Succeeded` it opens and checks the files and the row turns ready as a local build does;
//! `Failed` fails the row with the resource's `Failed` condition. The row's state is in the
//! database and the resource in the cluster, so a restarted worker follows the same resource.
//!
//! A gradient index's rows are independent per record, so one of more than
//! [`GRADIENT_RECORDS_PER_SHARD`] records is built in shards ([`gradient_shards`]), one pod
//! each in a working directory of its own, and merged by the worker once the resource has
//! succeeded, before it opens the files. A span index stays one shard: its suffix arrays are one
//! structure over the whole version (already cut at `SHARD_TOKENS` whole records inside one
//! pass), with no merge of separately built parts.

use std::time::Duration;

use k8s_openapi::api::core::v1::EnvFromSource;
use kube::{
    Api,
    api::{DeleteParams, ObjectMeta, PostParams},
};
use openledger_core::{Config, ContentHash, ErrorCode};
use openledger_operator::{
    crd::{AttributionJob, AttributionJobSpec, IndexKind, JobPhase, PodSettings},
    executor::ExecutorSettings,
};
use tokio::sync::watch;

use crate::{
    WorkerError,
    entities::index,
    executor::{Built, IndexExecutor},
    indexes::{GRADIENT, Indexes},
    limits::{GRADIENT_RECORDS_PER_SHARD, MAX_GRADIENT_SHARDS},
};

/// The label every resource the worker creates carries, with [`MANAGED_BY`].
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "openledger-attribution-worker";
/// The label naming the index (`<kind>-<hash>`, as label values cannot hold the id's `:`); the
/// annotation of the same key holds the id itself.
pub const INDEX_ID_LABEL: &str = "openledger.io/index-id";
/// Failures of a shard's pod the Job retries before the index fails.
pub const BACKOFF_LIMIT_PER_SHARD: i32 = 2;

/// What every `AttributionJob` the executor creates shares, from the configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct JobSettings {
    pub namespace: String,
    pub image: String,
    pub env_from: Vec<EnvFromSource>,
    /// The ReadWriteMany claim the pods write the index files on.
    pub data_claim: String,
    /// A Kueue `LocalQueue`.
    pub queue: Option<String>,
    /// Time between two looks at a resource being built.
    pub poll: Duration,
}

impl JobSettings {
    /// The settings of `config` (`kubernetes_*`); the data claim is required, since the worker
    /// reads what the pods write.
    pub fn from_config(config: &Config, poll: Duration) -> Result<Self, WorkerError> {
        if config.kubernetes_data_claim.is_empty() {
            return Err(WorkerError::new(
                ErrorCode::FailedPrecondition,
                "the kubernetes index executor needs kubernetes_data_claim: a ReadWriteMany claim mounted at the \
                 worker's data directory, where the job pods write the indexes",
            ));
        }
        let common = ExecutorSettings::from_config(config);
        Ok(Self {
            namespace: common.namespace,
            image: common.image,
            env_from: common.env_from,
            data_claim: config.kubernetes_data_claim.clone(),
            queue: common.queue,
            poll,
        })
    }
}

/// An index id (`span:<snapshot>`, `gradient:<adapter>`) as a label value: its kind and 16 hex
/// of its BLAKE3 (`span-0123456789abcdef`).
pub fn index_label(index_id: &str) -> String {
    let kind = if index_id.starts_with("gradient:") { IndexKind::Gradient } else { IndexKind::Span };
    format!("{}-{}", kind.as_str(), &ContentHash::of(index_id.as_bytes()).to_hex()[..16])
}

/// The `AttributionJob` of an index: `ol-index-<label>`, a DNS-1123 name of at most 34 bytes
/// (room for the operator's Job and pod suffixes).
pub fn job_name(index_id: &str) -> String {
    format!("ol-index-{}", index_label(index_id))
}

/// Shards of a gradient index of `records` training records: one per `records_per_shard`
/// begun, at most [`MAX_GRADIENT_SHARDS`], at least 1.
pub fn gradient_shards(records: usize, records_per_shard: usize) -> usize {
    records.div_ceil(records_per_shard.max(1)).clamp(1, MAX_GRADIENT_SHARDS)
}

/// Builds indexes as `AttributionJob`s.
pub struct KubernetesIndexExecutor {
    api: Api<AttributionJob>,
    settings: JobSettings,
    /// [`GRADIENT_RECORDS_PER_SHARD`] unless a test says otherwise.
    records_per_shard: usize,
    /// Bumped to make every follower look now.
    polls: watch::Sender<u64>,
}

impl KubernetesIndexExecutor {
    pub fn new(client: kube::Client, settings: JobSettings) -> Self {
        let api = Api::namespaced(client, &settings.namespace);
        Self { api, settings, records_per_shard: GRADIENT_RECORDS_PER_SHARD, polls: watch::Sender::new(0) }
    }

    /// Cuts gradient indexes at `records` training records a shard instead.
    pub fn with_records_per_shard(mut self, records: usize) -> Self {
        self.records_per_shard = records;
        self
    }

    /// Makes every build being followed look at its resource now, not at its next poll.
    pub fn poll_now(&self) {
        self.polls.send_modify(|polls| *polls += 1);
    }

    /// The resource the row's index is built by, in `shards` shards.
    pub fn resource(&self, row: &index::Model, shards: usize) -> AttributionJob {
        let (index, target) = if row.kind == GRADIENT {
            (IndexKind::Gradient, row.adapter_id.clone())
        } else {
            (IndexKind::Span, row.snapshot_id.clone())
        };
        let settings = &self.settings;
        let spec = AttributionJobSpec {
            index,
            target,
            shards: i32::try_from(shards).unwrap_or(i32::MAX),
            parallelism: None,
            pod: PodSettings {
                image: settings.image.clone(),
                env_from: settings.env_from.clone(),
                data_volume_claim: Some(settings.data_claim.clone()),
                ..PodSettings::default()
            },
            backoff_limit_per_index: BACKOFF_LIMIT_PER_SHARD,
            queue_name: settings.queue.clone(),
            active_deadline_seconds: None,
            ttl_seconds_after_finished: Some(openledger_operator::executor::FINISHED_JOB_TTL_SECONDS),
        };
        let mut job = AttributionJob::new(&job_name(&row.id), spec);
        job.metadata = ObjectMeta {
            name: Some(job_name(&row.id)),
            namespace: Some(settings.namespace.clone()),
            labels: Some(
                [
                    (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
                    (INDEX_ID_LABEL.to_owned(), index_label(&row.id)),
                ]
                .into(),
            ),
            annotations: Some([(INDEX_ID_LABEL.to_owned(), row.id.clone())].into()),
            ..ObjectMeta::default()
        };
        job
    }

    /// Creates the row's resource unless it exists (in `shards` shards), and follows it until it
    /// has succeeded; returns the shards it was built in (an existing resource's).
    async fn follow(&self, row: &index::Model, shards: usize) -> Result<usize, WorkerError> {
        let name = job_name(&row.id);
        let mut polls = self.polls.subscribe();
        let mut seen = None;
        loop {
            match self.api.get_opt(&name).await.map_err(|e| api_error(&name, e))? {
                None => match self.api.create(&PostParams::default(), &self.resource(row, shards)).await {
                    Ok(_) => tracing::info!(index = %row.id, job = %name, "AttributionJob created"),
                    Err(kube::Error::Api(status)) if status.is_already_exists() => {}
                    Err(error) => return Err(api_error(&name, error)),
                },
                Some(job) => {
                    check_owned(&job, row)?;
                    let status = job.status.unwrap_or_default();
                    if job.metadata.deletion_timestamp.is_none() {
                        match status.run.phase {
                            JobPhase::Succeeded => return Ok(usize::try_from(job.spec.shards).unwrap_or(1)),
                            JobPhase::Failed => return Err(failure(&name, &status)),
                            phase if seen != Some(phase) => {
                                tracing::info!(index = %row.id, job = %name, ?phase, "AttributionJob");
                                seen = Some(phase);
                            }
                            _ => {}
                        }
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.settings.poll) => {}
                _ = polls.changed() => {}
            }
        }
    }
}

/// A resource of this name that is not this index's (another index hashed the same, or
/// someone else made it) is not followed.
fn check_owned(job: &AttributionJob, row: &index::Model) -> Result<(), WorkerError> {
    let annotation = job.metadata.annotations.as_ref().and_then(|a| a.get(INDEX_ID_LABEL));
    if annotation != Some(&row.id) {
        return Err(WorkerError::new(
            ErrorCode::FailedPrecondition,
            format!(
                "AttributionJob {} exists but is not index {}'s (annotation {INDEX_ID_LABEL} is {annotation:?}): \
                 delete it",
                job.metadata.name.as_deref().unwrap_or_default(),
                row.id
            ),
        ));
    }
    Ok(())
}

/// A failed resource's `Failed` condition as the row's error.
fn failure(name: &str, status: &openledger_operator::crd::AttributionJobStatus) -> WorkerError {
    let condition =
        openledger_operator::conditions::get(&status.run.conditions, "Failed").filter(|c| c.status == "True");
    let why = match condition {
        Some(c) if c.message.is_empty() => c.reason.clone(),
        Some(c) => format!("{}: {}", c.reason, c.message),
        None => "no reason given".to_owned(),
    };
    let shards = status.failed_shards.as_deref().map(|s| format!(" (shards {s})")).unwrap_or_default();
    WorkerError::new(ErrorCode::FailedPrecondition, format!("AttributionJob {name} failed{shards}: {why}"))
}

/// The API's refusals (bad spec, no permission) fail the row; the rest is tried again.
fn api_error(name: &str, error: kube::Error) -> WorkerError {
    let code = match &error {
        kube::Error::Api(status) if status.code == 429 || status.code >= 500 => ErrorCode::Unavailable,
        kube::Error::Api(status) if status.is_forbidden() => ErrorCode::PermissionDenied,
        kube::Error::Api(_) => ErrorCode::FailedPrecondition,
        _ => ErrorCode::Unavailable,
    };
    WorkerError::new(code, format!("kubernetes: AttributionJob {name}: {error}"))
}

#[async_trait::async_trait]
impl IndexExecutor for KubernetesIndexExecutor {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    /// A gradient index's shard count comes from its lineage (read once per build, also when
    /// the resource already exists, whose own count is then used).
    async fn build(&self, indexes: &Indexes, row: &index::Model) -> Result<Built, WorkerError> {
        let shards = if row.kind == GRADIENT {
            gradient_shards(indexes.gradient_records(row).await?, self.records_per_shard)
        } else {
            1
        };
        let shards = self.follow(row, shards).await?;
        if row.kind == GRADIENT && shards > 1 {
            indexes.merge_gradient_shards(row, shards).await?;
        }
        indexes.open_files(row).await
    }

    /// Deletes the finished resource, whose spec cannot change, so that building again creates
    /// it anew (a follower waits while it is being deleted).
    async fn forget(&self, row: &index::Model) -> Result<(), WorkerError> {
        let name = job_name(&row.id);
        match self.api.delete(&name, &DeleteParams::foreground()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
            Err(error) => Err(api_error(&name, error)),
        }
    }
}
