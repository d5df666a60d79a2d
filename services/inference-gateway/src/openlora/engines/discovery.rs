//! Engine replicas behind a Kubernetes Service (`engine_urls:
//! kubernetes://SERVICE[.NAMESPACE]:PORT`, the Service a `LoraServer` creates): the Service's
//! EndpointSlices (`discovery.k8s.io/v1`, label `kubernetes.io/service-name`) followed by list
//! then watch, turned into the set of ready replica URLs ([`replica_urls`], pure) and published
//! on a `tokio::sync::watch` channel. `host` feeds each change to
//! [`RemoteEngines::set_replicas`](super::remote::RemoteEngines::set_replicas), whose
//! consistent-hash ring moves only the adapters of a replica that came or went.
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::{Api, Client};
use tokio::sync::watch;

use super::host::HostError;

/// The URL scheme of a Service whose replicas are discovered.
pub const SCHEME: &str = "kubernetes://";

/// The label EndpointSlices carry naming their Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Longest one watch request stays open (the API server's own limit is about as long); the
/// loop watches again from the last resource version when it ends.
const WATCH_TIMEOUT_SECS: u32 = 290;

/// One `kubernetes://SERVICE[.NAMESPACE]:PORT` entry of `engine_urls`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceTarget {
    pub service: String,
    /// `None`: the client's default (the pod's own namespace in a cluster, else `default`).
    pub namespace: Option<String>,
    /// The replicas' gRPC port (a `LoraServer`'s Service port is its pods' port, 50060 by default).
    pub port: u16,
}

impl ServiceTarget {
    /// Parses `kubernetes://SERVICE[.NAMESPACE]:PORT`; `None` for another scheme.
    pub fn parse(url: &str) -> Option<Result<Self, HostError>> {
        let rest = url.strip_prefix(SCHEME)?;
        let bad = |reason: &str| HostError::ReplicaUrl { url: url.to_owned(), reason: reason.to_owned() };
        let parsed = (|| {
            let (name, port) = rest.trim_end_matches('/').rsplit_once(':').ok_or_else(|| {
                bad("a Service needs its port: kubernetes://SERVICE[.NAMESPACE]:PORT (a LoraServer's is 50060)")
            })?;
            let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(|| bad("the port must be 1..=65535"))?;
            let (service, namespace) = match name.split_once('.') {
                Some((service, namespace)) => (service, Some(namespace)),
                None => (name, None),
            };
            let names_ok =
                openledger_core::config::dns_label(service) && namespace.is_none_or(openledger_core::config::dns_label);
            if !names_ok {
                return Err(bad("the Service and namespace must be Kubernetes names: 1-63 of a-z, 0-9 and '-'"));
            }
            Ok(Self { service: service.to_owned(), namespace: namespace.map(str::to_owned), port })
        })();
        Some(parsed)
    }

    /// The label selector of the Service's EndpointSlices.
    pub fn label_selector(&self) -> String {
        format!("{SERVICE_NAME_LABEL}={}", self.service)
    }

    /// The EndpointSlices API in the target's namespace, else the client's default one.
    pub fn api(&self, client: Client) -> Api<EndpointSlice> {
        match &self.namespace {
            Some(namespace) => Api::namespaced(client, namespace),
            None => Api::default_namespaced(client),
        }
    }
}

impl std::fmt::Display for ServiceTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(namespace) => write!(f, "{SCHEME}{}.{namespace}:{}", self.service, self.port),
            None => write!(f, "{SCHEME}{}:{}", self.service, self.port),
        }
    }
}

/// The replica URLs (`http://ADDRESS:PORT`) of a Service's EndpointSlices: every address of
/// every endpoint not marked unready (`conditions.ready` absent counts as ready, as in
/// Kubernetes), each once, sorted. The port is the slice's port numbered `port` if it lists
/// one, else its only port, else `port`. IPv6 addresses are bracketed.
pub fn replica_urls<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>, port: u16) -> BTreeSet<String> {
    let mut urls = BTreeSet::new();
    for slice in slices {
        let ports: Vec<u16> =
            slice.ports.iter().flatten().filter_map(|p| p.port.and_then(|n| u16::try_from(n).ok())).collect();
        let slice_port = match ports.as_slice() {
            [only] if *only != port => *only,
            _ => port,
        };
        let ipv6 = slice.address_type == "IPv6";
        let ready = slice.endpoints.iter().filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false));
        for address in ready.flat_map(|e| &e.addresses) {
            urls.insert(if ipv6 {
                format!("http://[{address}]:{slice_port}")
            } else {
                format!("http://{address}:{slice_port}")
            });
        }
    }
    urls
}

/// What discovery knows of one Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Discovered {
    /// The ready replicas as last seen (kept through API errors).
    pub replicas: BTreeSet<String>,
    /// The last API error, until the next successful list or watch event.
    pub error: Option<String>,
}

/// Pauses between attempts after an API error: the first, doubling up to the longest.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    pub first: Duration,
    pub longest: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self { first: Duration::from_millis(500), longest: Duration::from_secs(30) }
    }
}

/// Why a watch ended other than by the API server closing it.
enum WatchEnd {
    /// `410 Gone`: the resource version is too old; list again at once.
    Expired,
    /// An API error, and whether the list before it had succeeded.
    Failed { listed: bool, error: String },
}

/// Follows the EndpointSlices of `target` through `api` until the task is dropped: lists them,
/// publishes the ready replicas on `publish`, watches from the list's resource version
/// (watching again when a watch ends, listing again when the version expired), and after an
/// API error keeps the last replicas, publishes the error and retries after `retry`'s pauses.
pub async fn follow(api: Api<EndpointSlice>, target: ServiceTarget, publish: watch::Sender<Discovered>, retry: Retry) {
    let mut pause = retry.first;
    loop {
        let failure = match follow_once(&api, &target, &publish).await {
            WatchEnd::Expired => continue,
            WatchEnd::Failed { listed, error } => {
                if listed {
                    pause = retry.first;
                }
                error
            }
        };
        tracing::warn!(
            service = %target,
            error = %failure,
            pause_ms = pause.as_millis() as u64,
            "engine replica discovery failed; keeping the replicas known so far"
        );
        publish.send_modify(|state| state.error = Some(failure));
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(retry.longest);
    }
}

/// One list, then watches until one fails or the resource version expires.
async fn follow_once(
    api: &Api<EndpointSlice>,
    target: &ServiceTarget,
    publish: &watch::Sender<Discovered>,
) -> WatchEnd {
    let selector = target.label_selector();
    let list = match api.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => list,
        Err(error) => return WatchEnd::Failed { listed: false, error: format!("listing EndpointSlices: {error}") },
    };
    let mut version = list.metadata.resource_version.clone().unwrap_or_default();
    let mut slices: BTreeMap<String, EndpointSlice> =
        list.items.into_iter().map(|slice| (slice.metadata.name.clone().unwrap_or_default(), slice)).collect();
    update(publish, target, &slices);
    let params = WatchParams::default().labels(&selector).timeout(WATCH_TIMEOUT_SECS);
    loop {
        let events = match api.watch(&params, &version).await {
            Ok(events) => events,
            Err(kube::Error::Api(status)) if status.code == 410 => return WatchEnd::Expired,
            Err(error) => return failed(error),
        };
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            let (slice, deleted) = match event {
                Ok(WatchEvent::Added(slice) | WatchEvent::Modified(slice)) => (slice, false),
                Ok(WatchEvent::Deleted(slice)) => (slice, true),
                Ok(WatchEvent::Bookmark(bookmark)) => {
                    version = bookmark.metadata.resource_version;
                    continue;
                }
                Ok(WatchEvent::Error(status)) if status.code == 410 => return WatchEnd::Expired,
                Ok(WatchEvent::Error(status)) => return failed(status.message),
                Err(error) => return failed(error),
            };
            if let Some(seen) = &slice.metadata.resource_version {
                version.clone_from(seen);
            }
            let name = slice.metadata.name.clone().unwrap_or_default();
            if deleted {
                slices.remove(&name);
            } else {
                slices.insert(name, slice);
            }
            update(publish, target, &slices);
        }
    }
}

fn failed(error: impl std::fmt::Display) -> WatchEnd {
    WatchEnd::Failed { listed: true, error: format!("watching EndpointSlices: {error}") }
}

/// Publishes the replicas of `slices` (and clears the last error) when either changed.
fn update(publish: &watch::Sender<Discovered>, target: &ServiceTarget, slices: &BTreeMap<String, EndpointSlice>) {
    let replicas = replica_urls(slices.values(), target.port);
    publish.send_if_modified(|state| {
        if state.replicas == replicas && state.error.is_none() {
            return false;
        }
        if state.replicas != replicas {
            tracing::info!(
                service = %target,
                replicas = replicas.len(),
                urls = ?replicas,
                "engine replicas discovered"
            );
        }
        *state = Discovered { replicas, error: None };
        true
    });
}

#[cfg(test)]
mod tests;
