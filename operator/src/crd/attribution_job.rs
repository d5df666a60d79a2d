//! `AttributionJob`: an attribution index built as an Indexed Job, one completion per shard.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{JobRun, PodSettings};

/// Which index an `AttributionJob` builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum IndexKind {
    /// The span index of a sealed Datanet version (`target` is the snapshot id).
    Span,
    /// The gradient index of an adapter trained with lineage (`target` is the adapter id).
    Gradient,
}

impl IndexKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Span => "span",
            Self::Gradient => "gradient",
        }
    }
}

/// An attribution index to build on the cluster. The attribution-worker's Kubernetes executor
/// creates one per index; the operator runs it as an Indexed Job whose pod `i` runs
/// `openledger index-job <index> <target> --shards <shards>` with `JOB_COMPLETION_INDEX=i`,
/// writing shard `i` where the worker reads it (the shared data volume).
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "openledger.io",
    version = "v1alpha1",
    kind = "AttributionJob",
    namespaced,
    status = "AttributionJobStatus",
    shortname = "aj",
    category = "openledger",
    derive = "PartialEq",
    printcolumn(name = "Index", type_ = "string", json_path = ".spec.index"),
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.target"),
    printcolumn(name = "Shards", type_ = "integer", json_path = ".spec.shards"),
    printcolumn(name = "Done", type_ = "integer", json_path = ".status.succeededShards"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("an AttributionJob's spec cannot change: create another"))]
#[x_kube(validation = Rule::new("!has(self.parallelism) || self.parallelism <= self.shards")
    .message("parallelism cannot exceed shards"))]
#[serde(rename_all = "camelCase")]
pub struct AttributionJobSpec {
    pub index: IndexKind,
    /// The snapshot id (span) or adapter id (gradient) the index is built for.
    #[schemars(length(min = 1, max = 128))]
    pub target: String,
    /// Shards of the index, one pod (completion) each.
    #[schemars(range(min = 1, max = 1024))]
    pub shards: i32,
    /// Shards built at once; absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub parallelism: Option<i32>,
    #[serde(flatten)]
    pub pod: PodSettings,
    /// Failures of one shard retried before the shard (and the Job) fails.
    #[serde(default = "default_backoff_limit_per_index")]
    #[schemars(range(min = 0, max = 20))]
    pub backoff_limit_per_index: i32,
    /// A Kueue `LocalQueue` (see `LoraJob`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub queue_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,
}

fn default_backoff_limit_per_index() -> i32 {
    2
}

/// What the operator observes of the Indexed Job and its shards.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttributionJobStatus {
    #[serde(flatten)]
    pub run: JobRun,
    #[serde(default)]
    pub succeeded_shards: i32,
    /// The shards done, as the Job lists them (`0-3,5`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_shards: Option<String>,
    /// Shards that failed for good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_shards: Option<String>,
}
