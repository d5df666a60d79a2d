//! The OpenAPI document of the edge: [`ApiDoc`] lists every route and JSON type, `/openapi.json`
//! serves it, and the committed `openapi.json` is checked against it (a drift test below).

use axum::Json;
use utoipa::OpenApi;

use super::error::{ErrorBody, ErrorDetail};
use crate::{datanets, ledger};

#[derive(OpenApi)]
#[openapi(
    info(title = "OpenLedger REST API", description = "The public edge of the OpenLedger platform."),
    paths(
        healthz,
        readyz,
        metrics,
        openapi_json,
        ledger::accounts::create_account,
        ledger::accounts::get_account,
        ledger::accounts::account_transfers,
        ledger::governance::stake,
        ledger::governance::unstake,
        ledger::governance::parameters,
        ledger::governance::propose,
        ledger::governance::proposal,
        ledger::governance::vote,
        datanets::create,
        datanets::list,
        datanets::show,
        datanets::contribute,
        datanets::contribution,
        datanets::review,
        datanets::publish,
        datanets::proof,
        datanets::leaderboard,
        datanets::remove_record,
        datanets::request_access,
        datanets::decide_access
    ),
    components(schemas(
        ErrorBody,
        ErrorDetail,
        ledger::accounts::CreateAccountRequest,
        ledger::accounts::Account,
        ledger::accounts::Transfer,
        ledger::accounts::TransferPage,
        ledger::governance::StakeRequest,
        ledger::governance::Stake,
        ledger::governance::Parameters,
        ledger::governance::CreateProposalRequest,
        ledger::governance::CastVoteRequest,
        ledger::governance::Proposal,
        datanets::Signature,
        datanets::ContributionPolicy,
        datanets::Datanet,
        datanets::CreateDatanetRequest,
        datanets::DatanetPage,
        datanets::Record,
        datanets::Contribution,
        datanets::Snapshot,
        datanets::InclusionProof,
        datanets::RecordProof,
        datanets::ReviewContributionRequest,
        datanets::LeaderboardEntry,
        datanets::PublishSnapshotRequest,
        datanets::RemoveRecordRequest,
        datanets::RequestAccessRequest,
        datanets::DecideAccessRequest,
        datanets::Grant
    ))
)]
pub struct ApiDoc;

/// The OpenAPI document of the edge.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "The process is alive")))]
#[allow(dead_code)]
fn healthz() {}

/// Backends reachable, migrations applied, services started.
#[utoipa::path(get, path = "/readyz", tag = "ops", responses(
    (status = 200, description = "Ready; every check is ok"),
    (status = 503, description = "Not ready; the failing checks say why"),
))]
#[allow(dead_code)]
fn readyz() {}

/// Prometheus metrics in the OpenMetrics text format.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Metrics", content_type = "application/openmetrics-text")))]
#[allow(dead_code)]
fn metrics() {}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "ops", responses((status = 200, description = "The OpenAPI document")))]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed `openapi.json` is the generated one (regenerate with
    /// `UPDATE_OPENAPI=1 cargo nextest run -p openledger-inference-gateway`).
    #[test]
    fn committed_openapi_document_matches_the_code() {
        let generated = serde_json::to_string_pretty(&openapi()).expect("json") + "\n";
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &generated).expect("write openapi.json");
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "openapi.json is stale: run UPDATE_OPENAPI=1 cargo nextest run -p openledger-inference-gateway"
        );
        for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
            assert!(generated.contains(&format!("\"{path}\"")), "{path} missing");
        }
    }
}
