//! The OpenAPI document of the edge: [`ApiDoc`] lists every route and JSON type; [`openapi`]
//! completes it with the answers every route shares (400, 408, 413, 503; 401 on signed routes)
//! and the links from creating calls to the operations that use their ids; `/openapi.json`
//! serves it, and the committed `openapi.json` is checked against it (a drift test below).

use axum::Json;
use utoipa::{
    OpenApi,
    openapi::{
        Content, Ref, RefOr, Response, ResponseBuilder,
        path::{Operation, PathItem},
    },
};

use super::error::{ErrorBody, ErrorDetail};
use crate::{
    datanets, ledger,
    openlora::{adapters, attributions, fine_tuning, keys, openai},
};

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
        datanets::decide_access,
        openai::chat_completions,
        openai::completions,
        openai::list_models,
        keys::create_api_key,
        keys::list_api_keys,
        keys::revoke_api_key,
        adapters::import_adapter,
        adapters::list_adapters,
        adapters::get_adapter,
        adapters::update_adapter,
        adapters::unlist_adapter,
        fine_tuning::create_fine_tuning_job,
        fine_tuning::list_fine_tuning_jobs,
        fine_tuning::get_fine_tuning_job,
        fine_tuning::cancel_fine_tuning_job,
        fine_tuning::pause_fine_tuning_job,
        fine_tuning::resume_fine_tuning_job,
        fine_tuning::list_fine_tuning_events,
        fine_tuning::list_fine_tuning_checkpoints,
        attributions::get_attribution,
        attributions::list_attribution_indexes,
        attributions::get_attribution_index
    ),
    components(schemas(
        ErrorBody,
        ErrorDetail,
        ledger::accounts::CreateAccountRequest,
        ledger::accounts::AccountFlag,
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
        datanets::Key,
        datanets::Tag,
        datanets::RecordSchemaName,
        datanets::VisibilityName,
        datanets::ContributionPolicy,
        datanets::Datanet,
        datanets::CreateDatanetRequest,
        datanets::DatanetPage,
        datanets::Record,
        datanets::Contribution,
        datanets::BondSlash,
        datanets::Snapshot,
        datanets::InclusionProof,
        datanets::RecordProof,
        datanets::ReviewContributionRequest,
        datanets::LeaderboardEntry,
        datanets::PublishSnapshotRequest,
        datanets::RemoveRecordRequest,
        datanets::RequestAccessRequest,
        datanets::DecideAccessRequest,
        datanets::Grant,
        openai::types::ChatCompletionRequest,
        openai::types::CompletionRequest,
        openai::types::ChatCompletion,
        openai::types::ChatCompletionChunk,
        openai::types::Completion,
        openai::types::ModelList,
        openai::types::ModelCard,
        keys::ApiKeyLimits,
        keys::CreateApiKeyRequest,
        keys::ApiKey,
        keys::CreatedApiKey,
        keys::ApiKeyPage,
        keys::RevokeApiKeyRequest,
        adapters::Adapter,
        adapters::AdapterFile,
        adapters::Lineage,
        adapters::AdapterPage,
        adapters::ImportAdapterRequest,
        adapters::ImportAdapterUpload,
        adapters::AccountIdText,
        adapters::UpdateAdapterRequest,
        adapters::UnlistAdapterRequest,
        fine_tuning::auto::AutoInteger,
        fine_tuning::auto::AutoNumber,
        fine_tuning::auto::AutoModules,
        fine_tuning::request::CreateFineTuningJobRequest,
        fine_tuning::view::Hyperparameters,
        fine_tuning::view::Method,
        fine_tuning::view::Supervised,
        fine_tuning::view::LoraSettings,
        fine_tuning::view::JobError,
        fine_tuning::view::DatanetVersion,
        fine_tuning::view::EvalData,
        fine_tuning::view::FineTuningJob,
        fine_tuning::view::FineTuningJobList,
        fine_tuning::view::StepData,
        fine_tuning::view::StatusData,
        fine_tuning::view::NoData,
        fine_tuning::view::EventData,
        fine_tuning::view::FineTuningEvent,
        fine_tuning::view::FineTuningEventList,
        fine_tuning::view::CheckpointMetrics,
        fine_tuning::view::FineTuningCheckpoint,
        fine_tuning::view::FineTuningCheckpointList,
        attributions::view::Attribution,
        attributions::view::AttributionWeight,
        attributions::view::AttributionSpan,
        attributions::view::AttributionBatch,
        attributions::view::ReceiptInclusionProof,
        attributions::view::AttributionIndex,
        attributions::view::AttributionIndexList
    ))
)]
pub struct ApiDoc;

/// The OpenAPI document of the edge, as served.
pub fn openapi() -> serde_json::Value {
    let mut doc = ApiDoc::openapi();
    for (path, item) in doc.paths.paths.iter_mut().filter(|(path, _)| path.starts_with("/v1/")) {
        shared_answers(path, item);
    }
    let mut doc = serde_json::to_value(doc).expect("the document serializes");
    add_links(&mut doc);
    doc
}

/// Operations whose requests carry a signer or the signed caller headers.
const SIGNED: [&str; 24] = [
    "stake",
    "unstake",
    "propose",
    "vote",
    "create",
    "list",
    "show",
    "contribute",
    "contribution",
    "review",
    "publish",
    "proof",
    "leaderboard",
    "remove_record",
    "request_access",
    "decide_access",
    "create_api_key",
    "list_api_keys",
    "revoke_api_key",
    "import_adapter",
    "list_adapters",
    "get_adapter",
    "update_adapter",
    "unlist_adapter",
];

/// Operations that take an API key (`Authorization: Bearer`), and those of them that generate
/// (metered, rate limited, naming a model).
const API_KEY: [&str; 14] = [
    "chat_completions",
    "completions",
    "list_models",
    "create_fine_tuning_job",
    "list_fine_tuning_jobs",
    "get_fine_tuning_job",
    "cancel_fine_tuning_job",
    "pause_fine_tuning_job",
    "resume_fine_tuning_job",
    "list_fine_tuning_events",
    "list_fine_tuning_checkpoints",
    "get_attribution",
    "list_attribution_indexes",
    "get_attribution_index",
];
const GENERATING: [&str; 2] = ["chat_completions", "completions"];

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [item.get.as_mut(), item.post.as_mut(), item.patch.as_mut(), item.delete.as_mut()].into_iter().flatten()
}

fn error_answer(description: &str) -> RefOr<Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content("application/json", Content::new(Some(RefOr::Ref(Ref::from_schema_name("ErrorBody")))))
            .build(),
    )
}

/// The answers the edge itself can give on any route: a request its extractors refuse (400,
/// including bodies of the wrong content type or shape), a body over the limit (413), a
/// request over the timeout (408), an upstream service not started (503); and 401 where a
/// signer or caller headers are read.
fn shared_answers(_path: &str, item: &mut PathItem) {
    for operation in operations(item) {
        let id = operation.operation_id.clone().unwrap_or_default();
        let mut shared = vec![
            ("400", "The request is malformed: a path, query or body field is missing or invalid"),
            ("408", "The request took longer than the edge's timeout"),
            ("503", "The service behind this route is not available yet; retry shortly"),
        ];
        if operation.request_body.is_some() || id == "contribute" {
            shared.push(("413", "The body is larger than the edge's limit"));
        }
        if SIGNED.contains(&id.as_str()) {
            shared.push((
                "401",
                "The signer or the caller headers are missing, malformed or do not verify \
                 (keys are 64 hex characters, signatures 128)",
            ));
        }
        if API_KEY.contains(&id.as_str()) {
            shared.push(("401", "The API key (Authorization: Bearer) is missing, unknown or revoked"));
        }
        if GENERATING.contains(&id.as_str()) {
            shared.extend([
                ("402", "insufficient_funds: the key's account cannot cover the request's largest fee"),
                ("403", "The key's account may not use this adapter"),
                ("404", "model_not_found: no such model, or it is unlisted"),
                ("429", "rate_limited: the key's requests or tokens per minute are spent; see Retry-After"),
            ]);
            shared.retain(|(status, _)| *status != "503");
            shared.push((
                "503",
                "overloaded (see Retry-After), no base model loaded, or a service behind this route is not up yet",
            ));
        }
        for (status, description) in shared {
            operation.responses.responses.entry(status.to_owned()).or_insert_with(|| error_answer(description));
        }
    }
}

/// A link from a creating call's answer to an operation that takes the id it made:
/// (operation, status, link name, target operation, [(parameter, runtime expression)]).
type Link = (&'static str, &'static str, &'static str, &'static str, &'static [(&'static str, &'static str)]);

const LINKS: &[Link] = &[
    ("create_account", "201", "GetAccount", "get_account", &[("id", "$response.body#/id")]),
    ("create_account", "201", "AccountTransfers", "account_transfers", &[("id", "$response.body#/id")]),
    ("create_account", "201", "Stake", "stake", &[("id", "$response.body#/id")]),
    ("create_account", "201", "Unstake", "unstake", &[("id", "$response.body#/id")]),
    ("propose", "201", "GetProposal", "proposal", &[("id", "$response.body#/id")]),
    ("propose", "201", "Vote", "vote", &[("id", "$response.body#/id")]),
    ("create", "201", "GetDatanet", "show", &[("id", "$response.body#/id")]),
    ("create", "201", "Contribute", "contribute", &[("id", "$response.body#/id")]),
    ("create", "201", "Publish", "publish", &[("id", "$response.body#/id")]),
    ("create", "201", "Leaderboard", "leaderboard", &[("id", "$response.body#/id")]),
    ("create", "201", "RequestAccess", "request_access", &[("id", "$response.body#/id")]),
    (
        "contribute",
        "201",
        "GetContribution",
        "contribution",
        &[("id", "$response.body#/datanet_id"), ("contribution_id", "$response.body#/id")],
    ),
    (
        "contribute",
        "201",
        "Review",
        "review",
        &[("id", "$response.body#/datanet_id"), ("contribution_id", "$response.body#/id")],
    ),
    ("import_adapter", "201", "GetAdapter", "get_adapter", &[("id", "$response.body#/id")]),
    ("import_adapter", "201", "UpdateAdapter", "update_adapter", &[("id", "$response.body#/id")]),
    ("import_adapter", "201", "UnlistAdapter", "unlist_adapter", &[("id", "$response.body#/id")]),
    (
        "request_access",
        "201",
        "DecideAccess",
        "decide_access",
        &[("id", "$response.body#/datanet_id"), ("grant_id", "$response.body#/id")],
    ),
    ("create_fine_tuning_job", "200", "GetFineTuningJob", "get_fine_tuning_job", &[("id", "$response.body#/id")]),
    ("create_fine_tuning_job", "200", "CancelFineTuningJob", "cancel_fine_tuning_job", &[("id", "$response.body#/id")]),
    ("create_fine_tuning_job", "200", "PauseFineTuningJob", "pause_fine_tuning_job", &[("id", "$response.body#/id")]),
    (
        "create_fine_tuning_job",
        "200",
        "ListFineTuningEvents",
        "list_fine_tuning_events",
        &[("id", "$response.body#/id")],
    ),
    (
        "create_fine_tuning_job",
        "200",
        "ListFineTuningCheckpoints",
        "list_fine_tuning_checkpoints",
        &[("id", "$response.body#/id")],
    ),
    ("create_api_key", "201", "RevokeApiKey", "revoke_api_key", &[("id", "$response.body#/key/id")]),
    ("create_api_key", "201", "ListApiKeys", "list_api_keys", &[("account_id", "$response.body#/key/account_id")]),
];

/// Links go in as JSON: utoipa 5.5 writes its `Link` fields in snake_case (`operation_id`),
/// which no OpenAPI tool reads.
fn add_links(doc: &mut serde_json::Value) {
    let Some(paths) = doc["paths"].as_object_mut() else { return };
    for operation in paths.values_mut().filter_map(|item| item.as_object_mut()).flat_map(|item| item.values_mut()) {
        let id = operation["operationId"].as_str().unwrap_or_default().to_owned();
        for (from, status, name, to, parameters) in LINKS.iter().filter(|link| link.0 == id) {
            let response = &mut operation["responses"][*status];
            assert!(response.is_object(), "{from} has no {status} answer to link from");
            let parameters: serde_json::Map<_, _> =
                parameters.iter().map(|(name, value)| ((*name).to_owned(), serde_json::json!(value))).collect();
            response["links"][*name] = serde_json::json!({"operationId": to, "parameters": parameters});
        }
    }
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
pub async fn openapi_json() -> Json<serde_json::Value> {
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

    #[test]
    fn every_link_names_an_operation_that_exists_and_takes_its_parameters() {
        let doc = openapi();
        let mut operations = std::collections::BTreeMap::new();
        for item in doc["paths"].as_object().expect("paths").values() {
            for operation in item.as_object().expect("item").values() {
                operations.insert(operation["operationId"].as_str().expect("operation id").to_owned(), operation);
            }
        }
        for (from, status, name, to, parameters) in LINKS {
            let link = &operations[*from]["responses"][*status]["links"][*name];
            assert_eq!(link["operationId"], *to, "{from} {status} {name}");
            let target = operations.get(*to).unwrap_or_else(|| panic!("{name}: no operation {to}"));
            let names: Vec<&str> = target["parameters"]
                .as_array()
                .map(|list| list.iter().filter_map(|parameter| parameter["name"].as_str()).collect())
                .unwrap_or_default();
            for (parameter, _) in *parameters {
                assert!(names.contains(parameter), "{name}: {to} takes no {parameter} (it takes {names:?})");
            }
        }
    }

    #[test]
    fn every_signed_route_documents_401() {
        let doc = ApiDoc::openapi();
        let doc = {
            let mut doc = doc;
            for (path, item) in doc.paths.paths.iter_mut() {
                shared_answers(path, item);
            }
            doc
        };
        let mut documented = Vec::new();
        for item in doc.paths.paths.values() {
            for operation in
                [item.get.as_ref(), item.post.as_ref(), item.patch.as_ref(), item.delete.as_ref()].into_iter().flatten()
            {
                let id = operation.operation_id.clone().expect("operation id");
                if SIGNED.contains(&id.as_str()) {
                    assert!(operation.responses.responses.contains_key("401"), "{id} does not document 401");
                    documented.push(id);
                }
            }
        }
        assert_eq!(documented.len(), SIGNED.len(), "every SIGNED name is an operation: {documented:?}");
    }
}
