//! `openledger engine`: one OpenLoRA engine replica in this process (cluster mode). It serves
//! gRPC `EngineService` and health on `listen_host:engine_port` and `/healthz`, `/readyz`,
//! `/metrics` on `listen_host:ops_base_port`, generates with the configured base model and
//! reads adapters from the configured object store. The edge (`serve inference-gateway` with
//! `--engine-urls`) routes to it; it needs no database or event bus.

use std::{process::ExitCode, sync::Arc};

use openledger_core::{Config, LogFormat};
use tokio_util::sync::CancellationToken;

/// Runs the replica until SIGTERM/SIGINT; exit code 0 after a clean drain.
pub fn run(config: Config) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let telemetry = openledger_telemetry::init(&openledger_telemetry::TelemetryConfig {
            service_name: "openledger-engine".to_owned(),
            json_logs: config.log_format == LogFormat::Json,
            log_filter: config.log_level.clone(),
        });
        let _telemetry = match telemetry {
            Ok(guard) => guard,
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::from(2);
            }
        };
        let shutdown = CancellationToken::new();
        openledger_runtime::shutdown::cancel_on_signals(shutdown.clone());
        let metrics = openledger_telemetry::Metrics::new();
        let replica =
            openledger_inference_gateway::openlora::engines::server::run_replica(Arc::new(config), metrics, shutdown);
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
