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
//!   fine-tuning (model-factory), attributions (the attribution-worker), metering, and the
//!   engines (in this process or replicas); see its module doc.

pub mod datanets;
pub mod edge;
pub mod ledger;
pub mod openlora;

use std::sync::Arc;

use openledger_proto::inference::v1::inference_service_server::InferenceServiceServer;
use openledger_runtime::{
    Config, Deps, RuntimeError, ServiceKind, ServiceSpec, Worker, clients::ServiceChannel, run_service,
};
use openledger_telemetry::Metrics;

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
    let attribution = ServiceChannel::new(
        ServiceKind::AttributionWorker,
        config.attribution_url.clone(),
        &config,
        deps.endpoints.clone(),
    );
    let spec =
        ServiceSpec::new(ServiceKind::InferenceGateway, InferenceServiceServer::new(openlora::Api::new(keys.clone())));
    let engines = openlora::engines::EngineSlot::default();
    let openlora = openlora::OpenLora {
        engines: engines.clone(),
        keys: keys.clone(),
        catalog: openlora::catalog::Catalog::new(model_factory.clone()),
        metering: openlora::metering::Metering::new(ledger.clone()),
        metrics: openlora::metrics::ServingMetrics::register(&deps.metrics),
        events: openlora::events::Events::new(deps.backends.clone(), spec.outbox_waker()),
        model_factory,
        attribution,
    };
    let edge = edge::router(edge::EdgeSettings::from_config(&config), &deps, ledger, datanet, openlora);
    let mut spec = spec.rest(edge).worker(start_engines(config.clone(), deps.metrics.clone(), engines));
    if deps.embedded {
        let published = deps.dev_api_key.clone();
        spec = spec.worker(openlora::keys::dev::bootstrap_worker(keys, &config, published));
    }
    run_service(spec, &config, deps).await
}

/// Starts the engine host once the object store is connected (loading the base model takes a
/// while; the edge serves meanwhile, its inference routes answering 503 until then).
fn start_engines(config: Arc<Config>, metrics: Metrics, slot: openlora::engines::EngineSlot) -> Worker {
    Box::new(move |backends, shutdown| {
        Box::pin(async move {
            let started = tokio::select! {
                started = openlora::engines::from_config(&config, backends.objects, &metrics) => started,
                () = shutdown.cancelled() => return,
            };
            match started {
                Ok(Some(host)) => slot.fill(Ok(host)),
                Ok(None) => slot.fill(Err(openlora::engines::missing_model_message(&config))),
                Err(error) => {
                    tracing::error!(%error, "no engine: inference routes answer 503");
                    slot.fill(Err(error.to_string()));
                }
            }
            // Held for the service's life (not only by the routes), let go at shutdown.
            shutdown.cancelled().await;
        })
    })
}
