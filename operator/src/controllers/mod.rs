//! The controllers: level-triggered, idempotent reconciles of each custom resource into the
//! objects it stands for, with finalizers, owner references, events on the object and
//! exponential back-off after errors. A resource already in sync costs reads only, no write.

pub mod attribution_job;
pub mod children;
pub mod datanet;
pub mod job;
pub mod lora_job;
pub mod lora_server;
mod metrics;
mod pod;

use std::{collections::HashMap, sync::Arc, time::Duration};

use kube::{
    Client, Resource, ResourceExt,
    runtime::{
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
    },
};
use parking_lot::Mutex;

pub use metrics::Metrics;

/// The field manager and event reporter of everything the operator writes.
pub const MANAGER: &str = "openledger-operator";
/// The label on every object the operator creates.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", MANAGER);

/// First retry after a failed reconcile; doubled each further failure up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(2);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How often a resource in sync is looked at again without any change (a safety net: changes
/// to it and to the objects it owns trigger a reconcile at once).
pub const RESYNC: Duration = Duration::from_secs(300);

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    recorder: Recorder,
    /// Consecutive failures per object (`kind/namespace/name`), for the back-off.
    failures: Mutex<HashMap<String, u32>>,
    pub metrics: Metrics,
    /// datanet-ingest's gRPC API, for the `Datanet` controller.
    pub datanet_url: Option<String>,
}

impl Context {
    pub fn new(client: Client, datanet_url: Option<String>) -> Arc<Self> {
        let reporter = Reporter { controller: MANAGER.to_owned(), instance: std::env::var("POD_NAME").ok() };
        Arc::new(Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            failures: Mutex::default(),
            metrics: Metrics::default(),
            datanet_url,
        })
    }

    /// Publishes an event on `object` (shown by `kubectl describe`); a failure to publish is
    /// logged, never fails the reconcile.
    pub async fn event<K: Resource<DynamicType = ()>>(&self, object: &K, warning: bool, reason: &str, note: String) {
        let event = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.to_owned(),
            note: Some(note),
            action: reason.to_owned(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(%error, reason, "publishing an event failed");
        }
    }

    /// Records a successful reconcile of `key`: its back-off starts over.
    pub fn succeeded(&self, key: &str) {
        self.failures.lock().remove(key);
    }

    /// The wait before `key` is tried again after another failure.
    pub fn failed(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock();
        let count = failures.entry(key.to_owned()).or_insert(0);
        *count = count.saturating_add(1);
        backoff(*count)
    }
}

/// The back-off after `failures` consecutive failures: 2 s, 4 s, 8 s, … up to 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (FIRST_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF)
}

/// The controller owner reference to `object` for what the operator makes of it; it blocks
/// the owner's foreground deletion until the child is gone.
pub fn owner<K: Resource<DynamicType = ()>>(
    object: &K,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    let mut owner = object.controller_owner_ref(&())?;
    owner.block_owner_deletion = Some(true);
    Some(owner)
}

/// The key of `object` for back-off and metrics.
pub fn key<K: Resource<DynamicType = ()>>(object: &K) -> String {
    format!("{}/{}/{}", K::kind(&()), object.namespace().unwrap_or_default(), object.name_any())
}

/// Why a reconcile failed (it is tried again after a back-off).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error("datanet-ingest: {0}")]
    Datanet(String),
    #[error("{0}")]
    Other(String),
}

impl Error {
    fn from_finalizer(error: kube::runtime::finalizer::Error<Error>) -> Self {
        match error {
            kube::runtime::finalizer::Error::ApplyFailed(error)
            | kube::runtime::finalizer::Error::CleanupFailed(error) => error,
            other => Self::Finalizer(other.to_string()),
        }
    }
}

/// The error policy of every controller: log, count, back off exponentially per object.
pub fn error_policy<K: Resource<DynamicType = ()>>(object: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = key(object.as_ref());
    let wait = ctx.failed(&key);
    ctx.metrics.failure(K::kind(&()).as_ref());
    tracing::warn!(object = %key, %error, retry_in_s = wait.as_secs(), "reconcile failed");
    Action::requeue(wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_up_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(2), Duration::from_secs(4));
        assert_eq!(backoff(5), Duration::from_secs(32));
        assert_eq!(backoff(9), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}

#[cfg(test)]
mod job_tests;
#[cfg(test)]
mod lora_server_tests;
