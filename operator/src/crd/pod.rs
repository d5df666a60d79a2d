//! What every pod the operator creates shares: image, environment, resources, placement.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvFromSource, EnvVar, ResourceRequirements, Toleration};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The pod settings of a `LoraJob`, an `AttributionJob` or a `LoraServer`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSettings {
    /// The container image: the platform's, or its CUDA variant for GPU nodes.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// `Always`, `IfNotPresent` or `Never` (Kubernetes' default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(Always|IfNotPresent|Never)$"))]
    pub image_pull_policy: Option<String>,
    /// Extra environment of the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// ConfigMaps and Secrets whose entries become environment: the platform's settings and
    /// credentials (`DATABASE_URL`, `NATS_URL`, `OBJECT_STORE_URL`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFromSource>,
    /// CPU and memory requests and limits (GPUs have their own field where they apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// A PersistentVolumeClaim mounted at the data directory (`/var/lib/openledger`): where a
    /// job keeps checkpoints or writes index shards that the services read. Without one the pod
    /// gets a scratch volume that dies with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_volume_claim: Option<String>,
}

/// Where a job-like resource is: `Pending` (its Job not created yet or no pod started),
/// `Queued` (suspended until Kueue admits it), `Running`, `Succeeded`, `Failed`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum JobPhase {
    #[default]
    Pending,
    Queued,
    Running,
    Succeeded,
    Failed,
}

/// What the operator observes of the Job running a job-like resource: the part of its status
/// a `LoraJob` and an `AttributionJob` share.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobRun {
    #[serde(default)]
    pub phase: JobPhase,
    /// `Admitted`, `Complete`, `Failed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<super::Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The `batch/v1` Job running it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
}

impl JobPhase {
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}
