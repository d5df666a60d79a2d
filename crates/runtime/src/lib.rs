//! The runtime every service's `serve(config, deps)` shares: connecting to the database,
//! event bus and object store with backoff (staying not-ready meanwhile), applying
//! migrations, the ops HTTP endpoints (`/healthz`, `/readyz`, `/metrics`), a gRPC server with
//! the standard health service, reflection and trace propagation, the outbox relay, and
//! graceful shutdown on SIGTERM/SIGINT. Services add only their own APIs and workers.

mod backends;
pub mod clients;
pub mod consume;
pub mod grpc;
pub mod ops;
mod service;
pub mod shutdown;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, OnceLock},
};

use parking_lot::Mutex;

pub use openledger_core::{Config, ServiceKind};
use openledger_telemetry::Metrics;
use tokio_util::sync::CancellationToken;

pub use backends::{Backends, BackendsHandle};
pub use service::{ServiceSpec, Worker, run_service};

/// Errors that stop a service.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot listen on {addr} for {service} {role}: {reason}; choose another port with {hint}")]
    Bind { service: ServiceKind, role: &'static str, addr: String, reason: String, hint: &'static str },
    #[error("{service} {role} failed: {reason}")]
    Server { service: ServiceKind, role: &'static str, reason: String },
}

/// What a process's services share: one connection to each backend, one metric registry,
/// one readiness view, one shutdown signal, and the list of bound endpoints.
#[derive(Clone)]
pub struct Deps {
    pub backends: BackendsHandle,
    pub metrics: Metrics,
    pub readiness: Readiness,
    pub shutdown: CancellationToken,
    pub endpoints: Endpoints,
    /// Every service runs in this one process (`openledger dev`): the inference gateway then
    /// makes a funded development account and API key. Never set in cluster mode.
    pub embedded: bool,
    /// The development API key, once the gateway of an embedded process has it (for the
    /// ready banner).
    pub dev_api_key: DevApiKey,
}

impl Deps {
    /// Starts connecting to the configured backends in the background (with backoff, until
    /// `shutdown`) and returns at once.
    pub fn start(config: Arc<Config>, shutdown: CancellationToken) -> Self {
        let metrics = Metrics::new();
        let backends = BackendsHandle::connect_in_background(config, shutdown.clone(), &metrics);
        Self {
            backends,
            metrics,
            readiness: Readiness::default(),
            shutdown,
            endpoints: Endpoints::default(),
            embedded: false,
            dev_api_key: DevApiKey::default(),
        }
    }
}

/// The development API key of an embedded process: its secret, or why there is none, set once.
#[derive(Clone, Default)]
pub struct DevApiKey(Arc<OnceLock<Result<String, String>>>);

impl DevApiKey {
    /// Records the outcome; later calls change nothing.
    pub fn set(&self, outcome: Result<String, String>) {
        let _ = self.0.set(outcome);
    }

    /// The secret, or why there is none; `None` while the gateway is still making it.
    pub fn get(&self) -> Option<Result<String, String>> {
        self.0.get().cloned()
    }
}

/// Which services of this process have finished starting.
#[derive(Clone, Default)]
pub struct Readiness {
    services: Arc<Mutex<BTreeMap<ServiceKind, bool>>>,
}

impl Readiness {
    pub fn register(&self, service: ServiceKind) {
        self.services.lock().entry(service).or_insert(false);
    }

    pub fn set(&self, service: ServiceKind, ready: bool) {
        self.services.lock().insert(service, ready);
    }

    /// Each registered service and whether it is ready.
    pub fn services(&self) -> BTreeMap<ServiceKind, bool> {
        self.services.lock().clone()
    }
}

/// An address a service listens on.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Endpoint {
    pub service: ServiceKind,
    /// `grpc`, `ops` (health and metrics) or `rest` (the public edge).
    pub role: &'static str,
    pub addr: SocketAddr,
}

/// Every endpoint bound by this process, in bind order.
#[derive(Clone, Default)]
pub struct Endpoints {
    list: Arc<Mutex<Vec<Endpoint>>>,
}

impl Endpoints {
    pub fn add(&self, endpoint: Endpoint) {
        self.list.lock().push(endpoint);
    }

    pub fn all(&self) -> Vec<Endpoint> {
        self.list.lock().clone()
    }
}
