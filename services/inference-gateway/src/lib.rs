//! The inference gateway: the platform's public REST edge, forwarding each route to the
//! service that owns it over gRPC, and the host of the OpenLoRA engines. This crate owns the
//! edge's contract: the error envelope `{"error":{"code","message"}}`, request ids, body-size
//! limits, timeouts, request metrics, pagination and the generated OpenAPI document.
//!
//! Where things live (one module per upstream service, so a route is found in one step):
//! - `edge`: the router, middleware and settings; `edge::error` (the envelope and the one
//!   gRPC→HTTP conversion), `edge::upstream` (how a route calls a service), `edge::body`
//!   (JSON bodies), `edge::signature` (signers; 401 when malformed), `edge::page`
//!   (`limit`/`after`/`next_cursor`), `edge::openapi` (the document, links, drift test).
//! - `ledger`: `/v1/accounts/**` and `/v1/governance/**`, forwarded to the ledger.
//! - `datanets`: `/v1/datanets/**`, forwarded to datanet-ingest.
//! - `openlora`: the OpenAI-compatible routes, API keys, the adapter registry's routes,
//!   metering, and the engines (in this process or replicas); see its module doc.

pub mod datanets;
pub mod edge;
pub mod ledger;
pub mod openlora;

use std::sync::Arc;

use openledger_proto::inference::v1::inference_service_server::InferenceServiceServer;
use openledger_runtime::{Config, Deps, RuntimeError, ServiceKind, ServiceSpec, clients::ServiceChannel, run_service};

/// Runs the gateway until the process shuts down.
pub async fn serve(config: Arc<Config>, deps: Deps) -> Result<(), RuntimeError> {
    let ledger = ServiceChannel::new(ServiceKind::Ledger, config.ledger_url.clone(), &config, deps.endpoints.clone());
    let keys = openlora::keys::Keys::new(&config, deps.backends.clone(), ledger.clone());
    let datanet =
        ServiceChannel::new(ServiceKind::DatanetIngest, config.datanet_url.clone(), &config, deps.endpoints.clone());
    let model_factory = ServiceChannel::new(
        ServiceKind::ModelFactory,
        config.model_factory_url.clone(),
        &config,
        deps.endpoints.clone(),
    );
    let spec = ServiceSpec::new(ServiceKind::InferenceGateway, InferenceServiceServer::new(openlora::Api::new(keys.clone())));
    let openlora = openlora::OpenLora {
        engine_slot: openlora::engines::EngineSlot::default(),
        keys: keys.clone(),
        catalog: openlora::catalog::Catalog::new(model_factory.clone()),
        metering: openlora::metering::Metering::new(ledger.clone()),
        metrics: openlora::metrics::ServingMetrics::register(&deps.metrics),
        events: openlora::events::Events::new(deps.backends.clone(), spec.outbox_waker()),
        model_factory,
    };
    let edge = edge::router(edge::EdgeSettings::from_config(&config), &deps, ledger, datanet, openlora);
    let mut spec = spec.rest(edge);
    if deps.embedded {
        let published = deps.dev_api_key.clone();
        spec = spec.worker(openlora::keys::dev::bootstrap_worker(keys, config.data_dir.clone(), published));
    }
    run_service(spec, &config, deps).await
}
