//! The ModelFactory: LoRA fine-tuning jobs on Datanet snapshots and the adapters they produce, with lineage. This issue ships its gRPC surface; training lands with the ML engine issues.
//!
//! Every RPC of `ModelFactoryService` answers `UNIMPLEMENTED` until its handler lands: the generated
//! trait's default methods do that, so the API can be listed, called and health-checked now.

use std::sync::Arc;

use openledger_proto::modelfactory::v1::model_factory_service_server::{
    ModelFactoryService, ModelFactoryServiceServer,
};
use openledger_runtime::{BackendsHandle, Deps, RuntimeError, ServiceSpec, run_service};

/// The gRPC API of this service.
#[derive(Clone)]
pub struct Api {
    #[allow(dead_code)]
    backends: BackendsHandle,
}

impl ModelFactoryService for Api {}

/// Runs the service until the process shuts down.
pub async fn serve(config: Arc<openledger_runtime::Config>, deps: Deps) -> Result<(), RuntimeError> {
    let api = Api { backends: deps.backends.clone() };
    let spec = ServiceSpec::new(openledger_runtime::ServiceKind::ModelFactory, ModelFactoryServiceServer::new(api));
    run_service(spec, &config, deps).await
}
