//! The ledger: double-entry OPEN accounting (accounts, transfers, holds, settlements, staking, epochs, governance, a verifiable journal). This issue ships its gRPC surface; the accounting core lands with the ledger issue.
//!
//! Every RPC of `LedgerService` answers `UNIMPLEMENTED` until its handler lands: the generated
//! trait's default methods do that, so the API can be listed, called and health-checked now.

use std::sync::Arc;

use openledger_proto::ledger::v1::ledger_service_server::{LedgerService, LedgerServiceServer};
use openledger_runtime::{BackendsHandle, Deps, RuntimeError, ServiceSpec, run_service};

/// The gRPC API of this service.
#[derive(Clone)]
pub struct Api {
    #[allow(dead_code)]
    backends: BackendsHandle,
}

impl LedgerService for Api {}

/// Runs the service until the process shuts down.
pub async fn serve(config: Arc<openledger_runtime::Config>, deps: Deps) -> Result<(), RuntimeError> {
    let api = Api { backends: deps.backends.clone() };
    let spec = ServiceSpec::new(openledger_runtime::ServiceKind::Ledger, LedgerServiceServer::new(api));
    run_service(spec, &config, deps).await
}
