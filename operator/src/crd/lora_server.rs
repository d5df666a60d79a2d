//! `LoraServer`: OpenLoRA engine replicas for one base model.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{Condition, PodSettings};

/// Engine replicas (`openledger engine`) serving one base model with many adapters: a
/// Deployment, a Service whose EndpointSlices the REST edge follows for adapter-affinity
/// routing (`engine_urls: kubernetes://<name>:<port>`), a HorizontalPodAutoscaler when
/// `maxReplicas` is above `replicas`, and a PodDisruptionBudget when there is more than one.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "openledger.io",
    version = "v1alpha1",
    kind = "LoraServer",
    namespaced,
    status = "LoraServerStatus",
    shortname = "ls",
    category = "openledger",
    derive = "PartialEq",
    printcolumn(name = "Base", type_ = "string", json_path = ".spec.baseModel"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("!has(self.maxReplicas) || self.maxReplicas >= self.replicas")
    .message("maxReplicas cannot be below replicas"))]
#[serde(rename_all = "camelCase")]
pub struct LoraServerSpec {
    /// The base model every replica serves: a path in the image or on the data volume, or
    /// `hf://owner/name[@rev]/file`.
    #[schemars(length(min = 1, max = 512))]
    pub base_model: String,
    /// Replicas (the autoscaler's minimum when `maxReplicas` is set).
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 1000))]
    pub replicas: i32,
    /// Scale out up to this many replicas on CPU use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: Option<i32>,
    /// Average CPU use (percent of requests) the autoscaler aims at.
    #[serde(default = "default_cpu_target")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization: i32,
    /// Bytes of adapter weights each replica keeps in memory.
    #[serde(default = "default_cache_bytes")]
    #[schemars(range(min = 0))]
    pub adapter_cache_bytes: i64,
    /// Adapters each replica loads at start, before it reports ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub preload_adapters: Vec<String>,
    /// Compute threads per replica (0: every core of the pod).
    #[serde(default)]
    #[schemars(range(min = 0, max = 1024))]
    pub threads: i32,
    /// Sequences a replica decodes together.
    #[serde(default = "default_batch")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_batch_size: i32,
    /// gRPC port of the replicas and their Service.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    #[serde(flatten)]
    pub pod: PodSettings,
}

fn one() -> i32 {
    1
}
fn default_cpu_target() -> i32 {
    70
}
fn default_cache_bytes() -> i64 {
    2 << 30
}
fn default_batch() -> i32 {
    16
}
fn default_port() -> i32 {
    50060
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoraServerStatus {
    /// `Ready`: every wanted replica is available.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    /// The Service the REST edge discovers the replicas through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}
