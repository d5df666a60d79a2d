//! Datanet ingest: community datasets with signed contributions, validation, dedup, review, sealed versions with Merkle proofs and access grants. This issue ships its gRPC surface; the handlers land with the Datanet issue.
//!
//! Every RPC of `DatanetService` answers `UNIMPLEMENTED` until its handler lands: the generated
//! trait's default methods do that, so the API can be listed, called and health-checked now.

pub mod dedup;

use std::sync::Arc;

use openledger_proto::datanet::v1::datanet_service_server::{DatanetService, DatanetServiceServer};
use openledger_runtime::{BackendsHandle, Deps, RuntimeError, ServiceSpec, run_service};

/// The gRPC API of this service.
#[derive(Clone)]
pub struct Api {
    #[allow(dead_code)]
    backends: BackendsHandle,
}

impl DatanetService for Api {}

/// Runs the service until the process shuts down.
pub async fn serve(config: Arc<openledger_runtime::Config>, deps: Deps) -> Result<(), RuntimeError> {
    let api = Api { backends: deps.backends.clone() };
    let spec = ServiceSpec::new(openledger_runtime::ServiceKind::DatanetIngest, DatanetServiceServer::new(api));
    run_service(spec, &config, deps).await
}
