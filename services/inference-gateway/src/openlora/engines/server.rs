//! What an engine replica serves (`openledger engine`): gRPC `EngineService` over one local
//! engine (`Generate` streams tokens; a client that drops the stream cancels the generation at
//! once), the gRPC health service, and `/healthz`, `/readyz`, `/metrics` on an ops port. The
//! replica binds first and loads the base model after, so probes answer while it loads.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::{Json, Router, extract::State, http::StatusCode, http::header, response::IntoResponse, routing::get};
use object_store::ObjectStore;
use openledger_core::Config;
use openledger_ml::{Event, FinishReason, GenerateRequest, MlError, Prompt, TokenLogprobs, sampling::SamplingParams};
use openledger_proto::common::v1::Hash;
use openledger_proto::inference::v1 as pb;
use openledger_proto::inference::v1::engine_service_server::{EngineService, EngineServiceServer};
use openledger_runtime::grpc;
use openledger_telemetry::Metrics;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codegen::BoxStream;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;

use super::host::{self, HostError};
use super::local::LocalEngine;
use super::{EngineHost, error_code};

/// The gRPC status of an engine error, through the platform's one mapping. The message is the
/// error's own text, without the variant's prefix where the client rebuilds the variant
/// (`remote::ml_error_of`).
pub fn status_of(error: &MlError) -> Status {
    let message = match error {
        MlError::InvalidRequest(message) | MlError::Overloaded(message) => message.clone(),
        MlError::NotFound { path, .. } => path.clone(),
        other => other.to_string(),
    };
    grpc::status(error_code(error), message)
}

/// The engine request of a `Generate` call.
fn request_from_proto(request: pb::GenerateRequest) -> GenerateRequest {
    let sampling = request.sampling.map_or_else(SamplingParams::default, |s| SamplingParams {
        temperature: s.temperature,
        top_p: s.top_p,
        top_k: s.top_k as usize,
        repetition_penalty: s.repetition_penalty,
        presence_penalty: s.presence_penalty,
        frequency_penalty: s.frequency_penalty,
        seed: s.seed,
    });
    GenerateRequest {
        prompt: Prompt::Tokens(request.prompt_token_ids),
        adapters: request.adapters.into_iter().map(|a| (a.adapter_id, a.weight)).collect(),
        sampling,
        max_tokens: request.max_tokens as usize,
        stop: request.stop,
        logprobs: request.top_logprobs.map(|top| top as usize),
    }
}

/// One engine event as a `Generate` message; `Err` for an engine error, `None` for none.
fn event_to_proto(event: Event) -> Result<pb::GenerateResponse, Status> {
    let event = match event {
        Event::Token { id, text, logprobs } => {
            let (logprob, top) = match logprobs {
                Some(TokenLogprobs { logprob, top }) => (Some(logprob), top),
                None => (None, Vec::new()),
            };
            pb::generate_response::Event::Token(pb::GeneratedToken {
                token_id: id,
                text,
                logprob,
                top_logprobs: top
                    .into_iter()
                    .map(|(token_id, logprob)| pb::TokenLogprob { token_id, logprob })
                    .collect(),
            })
        }
        Event::Done { finish_reason, usage } => pb::generate_response::Event::Finished(pb::Finished {
            finish_reason: match finish_reason {
                FinishReason::Stop => "stop",
                FinishReason::Length => "length",
            }
            .into(),
            prompt_tokens: usage.prompt_tokens as u32,
            completion_tokens: usage.completion_tokens as u32,
        }),
        Event::Error(error) => return Err(status_of(&error)),
    };
    Ok(pb::GenerateResponse { event: Some(event) })
}

/// The gRPC `EngineService` of one replica. Answers `UNAVAILABLE` until its engine has loaded.
#[derive(Clone, Default)]
pub struct EngineServer {
    engine: Arc<OnceLock<Arc<LocalEngine>>>,
}

impl EngineServer {
    pub fn new(engine: Arc<LocalEngine>) -> Self {
        let server = Self::default();
        let _ = server.engine.set(engine);
        server
    }

    fn engine(&self) -> Result<&Arc<LocalEngine>, Status> {
        self.engine.get().ok_or_else(|| status_of(&MlError::EngineStopped))
    }
}

#[tonic::async_trait]
impl EngineService for EngineServer {
    async fn generate(
        &self,
        request: Request<pb::GenerateRequest>,
    ) -> Result<Response<BoxStream<pb::GenerateResponse>>, Status> {
        let request = request_from_proto(request.into_inner());
        let generation = self.engine()?.engine().submit(request).map_err(|e| status_of(&e))?;
        // The stream owns the generation: when tonic drops the stream (the client went away),
        // the generation drops with it and the engine cancels the sequence at its next step.
        let stream = futures::stream::unfold(Some(generation), |state| async move {
            let mut generation = state?;
            let Some(event) = generation.events.recv().await else {
                return Some((Err(status_of(&MlError::EngineStopped)), None));
            };
            let last = matches!(event, Event::Done { .. } | Event::Error(_));
            let message = event_to_proto(event);
            Some((message, (!last).then_some(generation)))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_engine_info(
        &self,
        _request: Request<pb::GetEngineInfoRequest>,
    ) -> Result<Response<pb::EngineInfo>, Status> {
        let local = self.engine()?;
        let base = local.base();
        let stats = local.engine().stats();
        Ok(Response::new(pb::EngineInfo {
            base_model: base.id.clone(),
            base_model_hash: Some(Hash { value: base.hash.as_bytes().to_vec() }),
            context_length: base.context_length as u32,
            loaded_adapters: local.engine().adapter_cache().cached_ids(),
            running: stats.running as u32,
            waiting: stats.waiting as u32,
        }))
    }
}

/// Why a replica stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("cannot listen on {addr} for the engine's {role}: {reason}; choose another port with {hint}")]
    Bind { role: &'static str, addr: String, reason: String, hint: &'static str },
    #[error("invalid object store {url}: {reason}")]
    ObjectStore { url: String, reason: String },
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("the engine's {role} server failed: {reason}")]
    Server { role: &'static str, reason: String },
}

/// The replica's state for `/readyz`: loading, ready, or why loading failed.
#[derive(Clone, Default)]
struct Readiness(Arc<OnceLock<Result<(), String>>>);

#[derive(Clone)]
struct OpsState {
    metrics: Metrics,
    readiness: Readiness,
    objects: Arc<dyn ObjectStore>,
}

/// Longest a readiness probe of the object store may take.
const OBJECTS_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

fn ops_router(state: OpsState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(serde_json::json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<OpsState>) -> impl IntoResponse {
    let engine = match state.readiness.0.get() {
        None => "loading the base model".to_owned(),
        Some(Ok(())) => "ok".to_owned(),
        Some(Err(reason)) => reason.clone(),
    };
    let probe = openledger_store::check_object_store(state.objects.as_ref());
    let objects = match tokio::time::timeout(OBJECTS_CHECK_TIMEOUT, probe).await {
        Ok(Ok(())) => "ok".to_owned(),
        Ok(Err(error)) => error.to_string(),
        Err(_) => format!("no answer within {} ms", OBJECTS_CHECK_TIMEOUT.as_millis()),
    };
    let ready = engine == "ok" && objects == "ok";
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": {"engine": engine, "objects": objects},
    });
    (status, Json(body))
}

async fn metrics(State(state): State<OpsState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
}

async fn bind(role: &'static str, addr: SocketAddr, hint: &'static str) -> Result<TcpListener, ReplicaError> {
    let listener = TcpListener::bind(addr).await.map_err(|error| ReplicaError::Bind {
        role,
        addr: addr.to_string(),
        reason: error.to_string(),
        hint,
    })?;
    let bound = listener.local_addr().map_err(|error| ReplicaError::Server { role, reason: error.to_string() })?;
    tracing::info!(service = "engine", role, addr = %bound, "listening");
    Ok(listener)
}

/// Runs one engine replica until `shutdown`: gRPC `EngineService` and health on
/// `listen_host:engine_port`, ops HTTP on `listen_host:ops_base_port`, the base model of
/// `base_model` (or the packaged one), adapters from the configured object store, those of
/// `engine_preload_adapters` loaded before it reports ready (`host::preload_list`). Fails when
/// there is no base model, saying where it looked.
pub async fn run_replica(
    config: Arc<Config>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), ReplicaError> {
    let host: IpAddr = config.listen_host.parse().unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let grpc_listener =
        bind("grpc", SocketAddr::new(host, config.engine_port), "--engine-port / OPENLEDGER_ENGINE_PORT").await?;
    let ops_listener =
        bind("ops", SocketAddr::new(host, config.ops_base_port), "--ops-base-port / OPENLEDGER_OPS_BASE_PORT").await?;
    let objects_url = config.effective_object_store_url();
    let objects = openledger_store::open_object_store(&objects_url)
        .map_err(|error| ReplicaError::ObjectStore { url: objects_url.clone(), reason: error.to_string() })?;

    let server = EngineServer::default();
    let readiness = Readiness::default();
    let (health, health_service) = tonic_health::server::health_reporter();
    let service_name = <EngineServiceServer<EngineServer> as NamedService>::NAME;
    health.set_service_status(service_name, ServingStatus::NotServing).await;
    health.set_service_status("", ServingStatus::NotServing).await;

    let ops = ops_router(OpsState { metrics: metrics.clone(), readiness: readiness.clone(), objects: objects.clone() });
    let mut servers = tokio::task::JoinSet::new();
    servers.spawn({
        let shutdown = shutdown.clone();
        async move {
            axum::serve(ops_listener, ops)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
                .map_err(|error| ("ops", error.to_string()))
        }
    });
    let routes = tonic::service::Routes::new(EngineServiceServer::new(server.clone())).add_service(health_service);
    servers.spawn({
        let shutdown = shutdown.clone();
        let grace = Duration::from_millis(config.shutdown_timeout_ms) / 4;
        async move { grpc::serve(grpc_listener, routes, shutdown, grace).await.map_err(|error| ("grpc", error.to_string())) }
    });

    let load = async {
        let local = host::start_replica_engine(&config, objects, &metrics).await?;
        tracing::info!(
            base_model = %local.base().id,
            base_model_hash = %local.base().hash,
            context_length = local.base().context_length,
            "engine ready"
        );
        let _ = server.engine.set(Arc::new(local));
        let _ = readiness.0.set(Ok(()));
        health.set_service_status(service_name, ServingStatus::Serving).await;
        health.set_service_status("", ServingStatus::Serving).await;
        Ok::<(), ReplicaError>(())
    };
    let outcome = tokio::select! {
        loaded = load => match loaded {
            Ok(()) => tokio::select! {
                Some(ended) = servers.join_next() => Some(ended),
                () = shutdown.cancelled() => None,
            },
            Err(error) => {
                shutdown.cancel();
                while servers.join_next().await.is_some() {}
                return Err(error);
            }
        },
        Some(ended) = servers.join_next() => Some(ended),
        () = shutdown.cancelled() => None,
    };
    if let Some(ended) = outcome.filter(|_| !shutdown.is_cancelled()) {
        shutdown.cancel();
        let (role, reason) = match ended {
            Ok(Err((role, reason))) => (role, reason),
            Ok(Ok(())) => ("listener", "stopped unexpectedly".to_owned()),
            Err(error) => ("listener", error.to_string()),
        };
        return Err(ReplicaError::Server { role, reason });
    }
    health.set_service_status(service_name, ServingStatus::NotServing).await;
    let drained = tokio::time::timeout(Duration::from_millis(config.shutdown_timeout_ms), async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    match drained {
        Ok(()) => tracing::info!(service = "engine", "stopped"),
        Err(_) => tracing::warn!(timeout_ms = config.shutdown_timeout_ms, "engine drain timed out; stopping anyway"),
    }
    Ok(())
}
