//! `openledger engine`: one OpenLoRA engine replica in this process (cluster mode). It serves
//! gRPC `EngineService` and health on `listen_host:engine_port` and `/healthz`, `/readyz`,
//! `/metrics` on `listen_host:ops_base_port`, generates with the configured base model and
//! reads adapters from the configured object store. The edge (`serve inference-gateway` with
//! `--engine-urls`) routes to it; it needs no database or event bus.

use std::{process::ExitCode, sync::Arc};

use openledger_core::Config;

/// Runs the replica until SIGTERM/SIGINT; exit code 0 after a clean drain.
pub fn run(config: Config) -> ExitCode {
    let config = Arc::new(config);
    crate::run::with_runtime(&config.clone(), "openledger-engine", |shutdown| async move {
        let metrics = openledger_telemetry::Metrics::new();
        let replica = openledger_inference_gateway::openlora::engines::server::run_replica(config, metrics, shutdown);
        match replica.await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(%error, "engine replica failed");
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        }
    })
}
