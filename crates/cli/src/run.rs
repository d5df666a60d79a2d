//! Running services in this process: telemetry, the shared runtime, one task per service,
//! signals, and (for `dev`) a summary of where everything is once it is ready.

use std::{
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use openledger_core::{Config, LogFormat, ServiceKind};
use openledger_runtime::{Deps, RuntimeError};
use tokio_util::sync::CancellationToken;

fn service_future(kind: ServiceKind, config: Arc<Config>, deps: Deps) -> BoxFuture<'static, Result<(), RuntimeError>> {
    match kind {
        ServiceKind::Ledger => Box::pin(openledger_ledger::serve(config, deps)),
        ServiceKind::DatanetIngest => Box::pin(openledger_datanet_ingest::serve(config, deps)),
        ServiceKind::AttributionWorker => Box::pin(openledger_attribution_worker::serve(config, deps)),
        ServiceKind::ModelFactory => Box::pin(openledger_model_factory::serve(config, deps)),
        ServiceKind::InferenceGateway => Box::pin(openledger_inference_gateway::serve(config, deps)),
    }
}

/// Runs `services` until SIGTERM/SIGINT; exit code 0 after a clean drain.
pub fn run(config: Config, services: Vec<ServiceKind>, embedded: bool) -> ExitCode {
    let started = Instant::now();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let name = if embedded {
            "openledger-dev".to_owned()
        } else {
            format!("openledger-{}", services.iter().map(|s| s.name()).collect::<Vec<_>>().join("+"))
        };
        let _telemetry = match start_telemetry(&config, name) {
            Ok(guard) => guard,
            Err(code) => return code,
        };
        if !embedded && config.nats_url.is_none() {
            tracing::warn!("NATS_URL is not set: events stay inside this process (in-process bus)");
        }
        let config = Arc::new(config);
        let shutdown = CancellationToken::new();
        openledger_runtime::shutdown::cancel_on_signals(shutdown.clone());
        let mut deps = Deps::start(config.clone(), shutdown.clone());
        deps.embedded = embedded;
        let mut tasks = tokio::task::JoinSet::new();
        for &kind in &services {
            let future = service_future(kind, config.clone(), deps.clone());
            tasks.spawn(async move { (kind, future.await) });
        }
        if embedded {
            let (deps, config, shutdown) = (deps.clone(), config.clone(), shutdown.clone());
            tokio::spawn(async move { announce_when_ready(&deps, &config, &shutdown, services.len(), started).await });
        }
        let mut code = ExitCode::SUCCESS;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((_, Ok(()))) => {}
                Ok((kind, Err(error))) => {
                    tracing::error!(service = %kind, %error, "service failed");
                    eprintln!("error: {error}");
                    code = ExitCode::FAILURE;
                    shutdown.cancel();
                }
                Err(error) => {
                    tracing::error!(%error, "service task panicked");
                    code = ExitCode::FAILURE;
                    shutdown.cancel();
                }
            }
        }
        tracing::info!("all services stopped");
        code
    })
}

/// Runs `work` on a multi-threaded runtime with telemetry as `service_name` and a shutdown
/// token cancelled by SIGTERM/SIGINT: the frame of the one-purpose commands (`engine`,
/// `train-job`, `index-job`, `operator run`). Exit code 2 when the runtime or telemetry cannot start.
pub fn with_runtime<F, W>(config: &Config, service_name: &str, work: W) -> ExitCode
where
    W: FnOnce(CancellationToken) -> F,
    F: Future<Output = ExitCode>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(async move {
        let _telemetry = match start_telemetry(config, service_name.to_owned()) {
            Ok(guard) => guard,
            Err(code) => return code,
        };
        let shutdown = CancellationToken::new();
        openledger_runtime::shutdown::cancel_on_signals(shutdown.clone());
        work(shutdown).await
    })
}

/// Logs and traces as `service_name`, as the settings ask; exit code 2 (said on stderr) when
/// they cannot start.
fn start_telemetry(config: &Config, service_name: String) -> Result<openledger_telemetry::TelemetryGuard, ExitCode> {
    openledger_telemetry::init(&openledger_telemetry::TelemetryConfig {
        service_name,
        json_logs: config.log_format == LogFormat::Json,
        log_filter: config.log_level.clone(),
    })
    .map_err(|error| {
        eprintln!("error: {error}");
        ExitCode::from(2)
    })
}

/// Prints where everything is, once every service is ready.
async fn announce_when_ready(
    deps: &Deps,
    config: &Config,
    shutdown: &CancellationToken,
    services: usize,
    started: Instant,
) {
    // Ready, and the gateway has made the development API key (or said why it could not).
    let dev_api_key = loop {
        let states = deps.readiness.services();
        let dev_api_key = deps.dev_api_key.get();
        if states.len() == services && states.values().all(|ready| *ready) && dev_api_key.is_some() {
            break dev_api_key;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(10)) => {}
            () = shutdown.cancelled() => return,
        }
    };
    let endpoints = deps.endpoints.all();
    let find =
        |kind: ServiceKind, role: &str| endpoints.iter().find(|e| e.service == kind && e.role == role).map(|e| e.addr);
    let rest = find(ServiceKind::InferenceGateway, "rest");
    let mut summary = format!("\nOpenLedger is ready in {:.2} s\n\n", started.elapsed().as_secs_f64());
    if let Some(rest) = rest {
        summary += &format!("  REST API     http://{rest}   (OpenAPI: http://{rest}/openapi.json)\n");
        match dev_api_key {
            Some(Ok(secret)) => summary += &format!("  API key      {secret}   (OpenAI base URL http://{rest}/v1)\n"),
            Some(Err(reason)) => summary += &format!("  API key      none: {reason}\n"),
            None => {}
        }
    }
    let data_dir = std::fs::canonicalize(&config.data_dir).unwrap_or_else(|_| config.data_dir.clone());
    summary += &format!("  data dir     {}\n", data_dir.display());
    summary += &format!("  database     {}\n", openledger_core::redact_url(&config.effective_database_url()));
    summary += &format!("  objects      {}\n", config.effective_object_store_url());
    summary += &format!("  event bus    {}\n\n", config.nats_url.as_deref().unwrap_or("in-process"));
    summary += &format!("  {:<20} {:<22} {}\n", "service", "gRPC", "health");
    for kind in ServiceKind::ALL {
        let grpc = find(kind, "grpc").map(|addr| addr.to_string()).unwrap_or_default();
        let health =
            find(kind, "ops").or(find(kind, "rest")).map(|addr| format!("http://{addr}/readyz")).unwrap_or_default();
        summary += &format!("  {:<20} {:<22} {}\n", kind.name(), grpc, health);
    }
    summary += "\nPress Ctrl-C to stop.\n";
    println!("{summary}");
}
