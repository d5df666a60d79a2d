//! The inference gateway: the platform's public REST edge (OpenAI-compatible routes and the
//! platform routes arrive with later issues, forwarding to the services over gRPC) and the
//! host of the OpenLoRA engines. This crate owns the edge's contract: the error envelope
//! `{"error":{"code","message"}}`, request ids, body-size limits, timeouts, request metrics
//! and the generated OpenAPI document.

pub mod accounts;
pub mod datanets;
pub mod governance;
pub mod rest;

use std::sync::Arc;

use openledger_proto::inference::v1::inference_service_server::{InferenceService, InferenceServiceServer};
use openledger_runtime::{
    BackendsHandle, Config, Deps, RuntimeError, ServiceKind, ServiceSpec, clients::ServiceChannel, run_service,
};

/// The gRPC API of the gateway; RPCs answer `UNIMPLEMENTED` until the engine lands.
#[derive(Clone)]
pub struct Api {
    #[allow(dead_code)]
    backends: BackendsHandle,
}

impl InferenceService for Api {}

/// Runs the gateway until the process shuts down.
pub async fn serve(config: Arc<Config>, deps: Deps) -> Result<(), RuntimeError> {
    let api = Api { backends: deps.backends.clone() };
    let ledger = ServiceChannel::new(ServiceKind::Ledger, config.ledger_url.clone(), &config, deps.endpoints.clone());
    let datanet =
        ServiceChannel::new(ServiceKind::DatanetIngest, config.datanet_url.clone(), &config, deps.endpoints.clone());
    let edge = rest::router(rest::EdgeSettings::from_config(&config), &deps, ledger, datanet);
    let spec = ServiceSpec::new(ServiceKind::InferenceGateway, InferenceServiceServer::new(api)).rest(edge);
    run_service(spec, &config, deps).await
}
