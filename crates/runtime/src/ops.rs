//! Ops HTTP endpoints every service exposes: `/healthz` (the process is alive), `/readyz`
//! (its backends answer, migrations are applied and its services have started) and
//! `/metrics` (Prometheus text).

use std::{collections::BTreeMap, future::Future, time::Duration};

use axum::{Json, Router, extract::State, http::StatusCode, http::header, response::IntoResponse, routing::get};
use serde::Serialize;

use crate::Deps;

/// Longest a single readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The ops routes, for a service's own port or merged into the public REST edge.
pub fn router(deps: Deps) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(deps)
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
}

async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// The readiness report: `status` is `ready` only when every check says `ok`.
#[derive(Debug, Serialize)]
pub struct ReadinessReport {
    pub status: &'static str,
    pub checks: BTreeMap<String, String>,
}

/// Checks the backends and services of this process.
pub async fn readiness_report(deps: &Deps) -> ReadinessReport {
    let mut checks = BTreeMap::new();
    for (service, ready) in deps.readiness.services() {
        checks.insert(format!("service:{service}"), if ready { "ok" } else { "starting" }.to_owned());
    }
    match deps.backends.current() {
        None => {
            for (backend, state) in deps.backends.progress() {
                // Connected backends still wait for the others before the service starts.
                checks.insert(backend.to_owned(), if state == "ok" { "connected".to_owned() } else { state });
            }
        }
        Some(backends) => {
            let database = check(async {
                openledger_store::ping(&backends.db).await.map_err(|error| error.to_string())?;
                match openledger_store::pending_migrations(&backends.db).await.map_err(|error| error.to_string())? {
                    0 => Ok(()),
                    pending => Err(format!("{pending} migrations pending")),
                }
            });
            let bus = check(async { backends.bus.check().await.map_err(|error| error.to_string()) });
            let objects = check(async {
                openledger_store::check_object_store(backends.objects.as_ref()).await.map_err(|error| error.to_string())
            });
            let (database, bus, objects) = tokio::join!(database, bus, objects);
            checks.insert("database".to_owned(), database);
            checks.insert("bus".to_owned(), bus);
            checks.insert("objects".to_owned(), objects);
        }
    }
    let ready = checks.values().all(|outcome| outcome == "ok");
    ReadinessReport { status: if ready { "ready" } else { "not_ready" }, checks }
}

async fn check<E: ToString>(probe: impl Future<Output = Result<(), E>>) -> String {
    match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
        Ok(Ok(())) => "ok".to_owned(),
        Ok(Err(error)) => error.to_string(),
        Err(_) => format!("no answer within {} ms", CHECK_TIMEOUT.as_millis()),
    }
}

async fn readyz(State(deps): State<Deps>) -> impl IntoResponse {
    let report = readiness_report(&deps).await;
    let status = if report.status == "ready" { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(report))
}

async fn metrics(State(deps): State<Deps>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], deps.metrics.encode())
}
