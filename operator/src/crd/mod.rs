//! The custom resources of `openledger.io/v1alpha1`, derived from these Rust types: their
//! OpenAPI schemas (with CEL rules where one field depends on another), status subresources,
//! printer columns and short names. `openledger operator crdgen` writes them into the chart.

// kube-derive's `printcolumn(...)` entries repeat one attribute name by design.
#![allow(clippy::duplicated_attributes)]

mod attribution_job;
mod datanet;
mod lora_job;
mod lora_server;
mod pod;

pub use attribution_job::{AttributionJob, AttributionJobSpec, AttributionJobStatus, IndexKind};
pub use datanet::{Datanet, DatanetPolicy, DatanetSpec, DatanetStatus, DeletionPolicy, SecretKeyRef};
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
pub use lora_job::{LoraJob, LoraJobProgress, LoraJobSpec, LoraJobStatus};
pub use lora_server::{LoraServer, LoraServerSpec, LoraServerStatus};
pub use pod::{JobPhase, JobRun, PodSettings};

/// The API group of every resource here.
pub const GROUP: &str = "openledger.io";
/// Their one version so far.
pub const VERSION: &str = "v1alpha1";

/// Every CRD, in the order `crdgen` writes them.
pub fn all() -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    use kube::CustomResourceExt;
    vec![LoraJob::crd(), AttributionJob::crd(), LoraServer::crd(), Datanet::crd()]
}
