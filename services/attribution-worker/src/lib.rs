//! Proof of Attribution: which contributions shaped each paid output (span matching, projected-gradient influence). This issue ships its gRPC surface; the methods land with the attribution issue.
//!
//! Every RPC of `AttributionService` answers `UNIMPLEMENTED` until its handler lands: the generated
//! trait's default methods do that, so the API can be listed, called and health-checked now.

use std::sync::Arc;

use openledger_proto::attribution::v1::attribution_service_server::{AttributionService, AttributionServiceServer};
use openledger_runtime::{BackendsHandle, Deps, RuntimeError, ServiceSpec, run_service};

/// The gRPC API of this service.
#[derive(Clone)]
pub struct Api {
    #[allow(dead_code)]
    backends: BackendsHandle,
}

impl AttributionService for Api {}

/// Runs the service until the process shuts down.
pub async fn serve(config: Arc<openledger_runtime::Config>, deps: Deps) -> Result<(), RuntimeError> {
    let api = Api { backends: deps.backends.clone() };
    let spec = ServiceSpec::new(openledger_runtime::ServiceKind::AttributionWorker, AttributionServiceServer::new(api));
    run_service(spec, &config, deps).await
}
