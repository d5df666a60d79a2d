//! `run_service`: the life of one service in a process, from binding its ports to draining
//! on shutdown.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use futures::future::BoxFuture;
use openledger_core::{Config, ServiceKind};
use openledger_store::OutboxRelay;
use tokio::{net::TcpListener, sync::Notify, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tonic::{server::NamedService, service::Routes};
use tonic_health::ServingStatus;

use crate::{Backends, Deps, Endpoint, RuntimeError, grpc, ops};

/// Background work a service runs once its backends are connected (e.g. a bus consumer).
/// It must return soon after the token is cancelled.
pub type Worker = Box<dyn FnOnce(Backends, CancellationToken) -> BoxFuture<'static, ()> + Send>;

/// What a service brings to the runtime: its gRPC API, optionally the public REST edge, and
/// its workers.
pub struct ServiceSpec {
    kind: ServiceKind,
    grpc_service_name: &'static str,
    routes: Routes,
    rest: Option<axum::Router>,
    workers: Vec<Worker>,
    outbox_wake: Arc<Notify>,
}

impl ServiceSpec {
    pub fn new<S>(kind: ServiceKind, api: S) -> Self
    where
        S: tower::Service<http::Request<tonic::body::Body>, Error = std::convert::Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        Self {
            kind,
            grpc_service_name: S::NAME,
            routes: Routes::new(api),
            rest: None,
            workers: Vec::new(),
            outbox_wake: Arc::new(Notify::new()),
        }
    }

    /// Serves `router` on the public HTTP port instead of an ops port. The router must include
    /// the ops routes (`ops::router`) so its middleware covers them too.
    pub fn rest(mut self, router: axum::Router) -> Self {
        self.rest = Some(router);
        self
    }

    pub fn worker(mut self, worker: Worker) -> Self {
        self.workers.push(worker);
        self
    }

    /// Notify this after committing outbox rows to relay them at once rather than at the
    /// next poll.
    pub fn outbox_waker(&self) -> Arc<Notify> {
        self.outbox_wake.clone()
    }
}

async fn bind(
    service: ServiceKind,
    role: &'static str,
    addr: SocketAddr,
    hint: &'static str,
) -> Result<TcpListener, RuntimeError> {
    TcpListener::bind(addr).await.map_err(|error| RuntimeError::Bind {
        service,
        role,
        addr: addr.to_string(),
        reason: error.to_string(),
        hint,
    })
}

/// Runs one service until the process's shutdown token is cancelled, then drains: servers
/// stop accepting and finish in-flight calls, workers finish their current item, and the
/// outbox relay flushes, all within `shutdown_timeout_ms`.
pub async fn run_service(spec: ServiceSpec, config: &Config, deps: Deps) -> Result<(), RuntimeError> {
    let kind = spec.kind;
    deps.readiness.register(kind);
    let host: IpAddr = config.listen_host.parse().unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let grpc_addr = SocketAddr::new(host, config.grpc_port(kind));
    let grpc_listener = bind(kind, "grpc", grpc_addr, "--grpc-base-port / OPENLEDGER_GRPC_BASE_PORT").await?;
    let (http_role, http_addr, hint) = match spec.rest {
        Some(_) => ("rest", SocketAddr::new(host, config.http_port), "--http-port / OPENLEDGER_HTTP_PORT"),
        None => ("ops", SocketAddr::new(host, config.ops_port(kind)), "--ops-base-port / OPENLEDGER_OPS_BASE_PORT"),
    };
    let http_listener = bind(kind, http_role, http_addr, hint).await?;
    for (role, listener) in [("grpc", &grpc_listener), (http_role, &http_listener)] {
        let addr = listener.local_addr().map_err(|error| RuntimeError::Server {
            service: kind,
            role,
            reason: error.to_string(),
        })?;
        tracing::debug!(service = %kind, role, %addr, "listening");
        deps.endpoints.add(Endpoint { service: kind, role, addr });
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status(spec.grpc_service_name, ServingStatus::NotServing).await;
    health.set_service_status("", ServingStatus::NotServing).await;

    let shutdown = deps.shutdown.clone();
    let http_router = spec.rest.unwrap_or_else(|| ops::router(deps.clone()));
    let mut servers = JoinSet::new();
    servers.spawn({
        let shutdown = shutdown.clone();
        async move {
            axum::serve(http_listener, http_router)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
                .map_err(|error| ("http", error.to_string()))
        }
    });
    let routes = spec.routes.add_service(health_service);
    servers.spawn({
        let shutdown = shutdown.clone();
        let grace = Duration::from_millis(config.shutdown_timeout_ms) / 4;
        async move { grpc::serve(grpc_listener, routes, shutdown, grace).await.map_err(|error| ("grpc", error.to_string())) }
    });

    let mut background = JoinSet::new();
    let started = async {
        let backends = deps.backends.wait(&shutdown).await?;
        let relay = OutboxRelay::new(backends.db.clone(), backends.bus.clone(), kind.name())
            .with_waker(spec.outbox_wake.clone());
        let flush_timeout = Duration::from_millis(config.shutdown_timeout_ms) / 2;
        let relay_shutdown = shutdown.clone();
        background.spawn(async move { relay.run(relay_shutdown, flush_timeout).await });
        for worker in spec.workers {
            background.spawn(worker(backends.clone(), shutdown.clone()));
        }
        health.set_service_status(spec.grpc_service_name, ServingStatus::Serving).await;
        health.set_service_status("", ServingStatus::Serving).await;
        deps.readiness.set(kind, true);
        tracing::debug!(service = %kind, "ready");
        Some(())
    };

    // A server that stops on its own (not by shutdown) takes the process down with it.
    let failure = tokio::select! {
        Some(ended) = servers.join_next() => Some(ended),
        () = async { started.await; shutdown.cancelled().await } => None,
    };
    let failure = failure.filter(|_| !shutdown.is_cancelled());
    if let Some(ended) = failure {
        shutdown.cancel();
        let (role, reason) = match ended {
            Ok(Err((role, reason))) => (role, reason),
            Ok(Ok(())) => ("listener", "stopped unexpectedly".to_owned()),
            Err(error) => ("listener", error.to_string()),
        };
        return Err(RuntimeError::Server { service: kind, role, reason });
    }

    deps.readiness.set(kind, false);
    health.set_service_status(spec.grpc_service_name, ServingStatus::NotServing).await;
    let drained = tokio::time::timeout(Duration::from_millis(config.shutdown_timeout_ms), async {
        while servers.join_next().await.is_some() {}
        while background.join_next().await.is_some() {}
    })
    .await;
    match drained {
        Ok(()) => tracing::info!(service = %kind, "stopped"),
        Err(_) => {
            tracing::warn!(service = %kind, timeout_ms = config.shutdown_timeout_ms, "drain timed out; stopping anyway")
        }
    }
    Ok(())
}
