//! `openledger operator`: the Kubernetes operator (`run`) and its CRDs (`crdgen`).

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use clap::Subcommand;
use openledger_core::Config;
use openledger_operator::{controllers::Context, run::Scope};

#[derive(Subcommand)]
pub enum OperatorCommand {
    /// Run the controllers of LoraJob, AttributionJob, LoraServer and Datanet (in a pod: its
    /// service account; elsewhere KUBECONFIG). Datanets are ensured through --datanet-url.
    Run {
        /// Watch only this namespace [env: OPENLEDGER_KUBERNETES_NAMESPACE] [default: every namespace]
        #[arg(long, value_name = "NAME")]
        namespace: Option<String>,
        /// Port of /healthz, /readyz and /metrics [default: 9096]
        #[arg(long, value_name = "PORT", default_value_t = 9096)]
        ops_port: u16,
        #[command(flatten)]
        settings: Box<crate::flags::AllFlags>,
    },
    /// Write the CRDs derived from the operator's types as YAML (into the Helm chart by default)
    Crdgen {
        /// Directory of the CRD files
        #[arg(long, default_value = "charts/openledger/crds")]
        dir: PathBuf,
        /// Write nothing: fail when the files differ from what the types derive (CI's drift check)
        #[arg(long)]
        check: bool,
    },
}

pub fn crdgen(dir: PathBuf, check: bool) -> ExitCode {
    if check {
        let drifted = openledger_operator::crdgen::drift(&dir);
        if drifted.is_empty() {
            println!("the CRDs in {} match operator/src/crd", dir.display());
            return ExitCode::SUCCESS;
        }
        for path in drifted {
            eprintln!("error: {} differs from what operator/src/crd derives", path.display());
        }
        eprintln!("run `openledger operator crdgen` and commit the result");
        return ExitCode::FAILURE;
    }
    match openledger_operator::crdgen::write(&dir) {
        Ok(paths) => {
            for path in paths {
                println!("wrote {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: cannot write the CRDs into {}: {error}", dir.display());
            ExitCode::FAILURE
        }
    }
}

/// Runs the operator until SIGTERM/SIGINT: the controllers, and `/healthz`, `/readyz` (the
/// CRDs answer) and `/metrics` on `listen_host:ops_port`.
pub fn run(config: Config, namespace: Option<String>, ops_port: u16) -> ExitCode {
    crate::run::with_runtime(&config.clone(), "openledger-operator", |shutdown| async move {
        // In a pod: the service account; elsewhere: KUBECONFIG or ~/.kube/config.
        let client = match kube::Client::try_default().await {
            Ok(client) => client,
            Err(error) => {
                eprintln!("error: cannot reach the Kubernetes API (in-cluster service account or KUBECONFIG): {error}");
                return ExitCode::FAILURE;
            }
        };
        let namespace = namespace.filter(|namespace| !namespace.is_empty());
        let ctx = Context::new(client, config.datanet_url.clone());
        let metrics = openledger_telemetry::Metrics::new();
        metrics.register("operator", |registry| ctx.metrics.register(registry));
        let ready = Arc::new(AtomicBool::new(false));
        let address = format!("{}:{ops_port}", config.listen_host);
        let listener = match tokio::net::TcpListener::bind(&address).await {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!("error: cannot listen on {address} (--ops-port): {error}");
                return ExitCode::FAILURE;
            }
        };
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(service = "operator", role = "ops", %addr, "listening");
        }
        let ops = ops_router(ready.clone(), metrics);
        let ops = axum::serve(listener, ops).with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let scope = Scope { namespace };
        let (served, ()) = tokio::join!(ops, openledger_operator::run::run(ctx, scope, ready, shutdown));
        match served {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: the ops endpoints failed: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

fn ops_router(ready: Arc<AtomicBool>, metrics: openledger_telemetry::Metrics) -> axum::Router {
    use axum::{http::StatusCode, routing::get};
    axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.load(Ordering::Relaxed);
                async move {
                    if ready {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "the custom resources do not answer yet")
                    }
                }
            }),
        )
        .route("/metrics", get(move || async move { metrics.encode() }))
}
