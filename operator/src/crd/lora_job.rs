//! `LoraJob`: one model-factory fine-tuning job, run as a `batch/v1` Job.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{JobRun, PodSettings};

/// A fine-tuning job of the model-factory (`ftjob-…`) to run on the cluster. The model-factory's
/// Kubernetes executor creates one per queued job; the operator runs it as a Job whose pod runs
/// `openledger train-job <jobId>`, which trains, checkpoints and reports back like the local
/// executor does. The spec is fixed once created.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "openledger.io",
    version = "v1alpha1",
    kind = "LoraJob",
    namespaced,
    status = "LoraJobStatus",
    shortname = "lj",
    category = "openledger",
    derive = "PartialEq",
    printcolumn(name = "Job", type_ = "string", json_path = ".spec.jobId"),
    printcolumn(name = "Base", type_ = "string", json_path = ".spec.baseModel"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Step", type_ = "integer", json_path = ".status.progress.step"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("a LoraJob's spec cannot change: create another"))]
#[serde(rename_all = "camelCase")]
pub struct LoraJobSpec {
    /// The model-factory job (`ftjob-…`).
    #[schemars(length(min = 1, max = 63))]
    pub job_id: String,
    /// The base model the adapter is trained for.
    #[schemars(length(min = 1, max = 256))]
    pub base_model: String,
    #[serde(flatten)]
    pub pod: PodSettings,
    /// `nvidia.com/gpu` requested (0: CPU).
    #[serde(default)]
    #[schemars(range(min = 0, max = 16))]
    pub gpus: u32,
    /// A Kueue `LocalQueue`: the Job is created suspended with the label
    /// `kueue.x-k8s.io/queue-name` and starts when Kueue admits it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub queue_name: Option<String>,
    /// Pod failures retried before the Job fails; a retried pod resumes from the job's last
    /// checkpoint.
    #[serde(default = "default_backoff_limit")]
    #[schemars(range(min = 0, max = 20))]
    pub backoff_limit: i32,
    /// Seconds the Job may run in all before it fails with `DeadlineExceeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,
    /// Seconds a finished Job (and its pods' logs) is kept; absent: kept until the LoraJob goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,
}

fn default_backoff_limit() -> i32 {
    2
}

/// What the operator observes of the Job, and the training progress the model-factory mirrors.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoraJobStatus {
    #[serde(flatten)]
    pub run: JobRun,
    /// Pods that failed so far (each retry resumes from the last checkpoint).
    #[serde(default)]
    pub failed_pods: i32,
    /// Written by the model-factory, which follows its own job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<LoraJobProgress>,
}

/// Training progress and result, mirrored from the model-factory job.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoraJobProgress {
    /// The model-factory job's status (`running`, `succeeded`, …).
    pub status: String,
    #[serde(default)]
    pub step: u64,
    #[serde(default)]
    pub total_steps: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(default)]
    pub trained_tokens: u64,
    /// The registered adapter, once the job succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fine_tuned_model: Option<String>,
}
