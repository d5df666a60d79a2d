//! `/v1/attributions/{inference_id}` and `/v1/attribution/indexes/**`: Proof of Attribution's
//! reads, forwarded to the attribution-worker. Every route takes an API key
//! (`Authorization: Bearer`); any valid key reads any attribution and index, and only a key of
//! the account that paid for an inference reads its inputs (the worker decides, given the key's
//! account).
//!
//! - `GET /v1/attributions/{inference_id}`: an inference's attribution, receipt and (once
//!   batched) inclusion proof; 404 until the worker has attributed it (attribution follows the
//!   inference by moments). `?include=inputs` adds the inputs the receipt hashes.
//! - `GET /v1/attribution/indexes` (optionally `?snapshot_id=`) and
//!   `GET /v1/attribution/indexes/{id}`: the indexes attribution runs against and their state.
//!
//! Ids are checked here as the worker stores them (1 to [`MAX_ID_BYTES`] printable ASCII
//! characters without spaces), so a malformed one is a 400 naming it, not a 404.

pub mod view;

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::HeaderMap,
    routing::get,
};
use openledger_proto::attribution::v1::{self as pb, attribution_service_client::AttributionServiceClient};
use openledger_runtime::clients::ServiceChannel;
use serde::Deserialize;
use tonic::transport::Channel;
use utoipa::IntoParams;

use self::view::{Attribution, AttributionIndex, AttributionIndexList};
use super::keys::Keys;
use crate::edge::{
    ApiError, ErrorBody, Upstream,
    page::{PageQuery, next_cursor},
};

/// The attribution-worker as the state of these routes.
pub type AttributionWorker = Upstream<AttributionServiceClient<Channel>>;

/// Longest inference, index or snapshot id, in bytes (all ASCII).
pub const MAX_ID_BYTES: usize = 128;

/// The one value `include` takes.
const INCLUDE_INPUTS: &str = "inputs";

/// What these routes share: the key check and the attribution-worker.
#[derive(Clone)]
pub struct Attributions {
    keys: Keys,
    worker: AttributionWorker,
}

/// Routes under `/v1/attributions` and `/v1/attribution`.
pub fn routes(keys: Keys, attribution: ServiceChannel) -> Router {
    Router::new()
        .route("/v1/attributions/{inference_id}", get(get_attribution))
        .route("/v1/attribution/indexes", get(list_attribution_indexes))
        .route("/v1/attribution/indexes/{id}", get(get_attribution_index))
        .with_state(Attributions { keys, worker: Upstream::new(attribution, AttributionServiceClient::new) })
}

impl Attributions {
    /// The authenticated caller's account and a client of the attribution-worker.
    async fn caller(&self, headers: &HeaderMap) -> Result<(u128, AttributionServiceClient<Channel>), ApiError> {
        let caller = self.keys.authenticate(headers).await?;
        Ok((caller.account_id, self.worker.client()?))
    }
}

/// `id` as the worker stores ids, or 400 naming `field`.
fn checked_id(field: &str, id: String) -> Result<String, ApiError> {
    if !(1..=MAX_ID_BYTES).contains(&id.len()) {
        return Err(ApiError::invalid(format!("{field} must be 1 to {MAX_ID_BYTES} bytes, got {}", id.len())));
    }
    if !id.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(ApiError::invalid(format!(
            "{field} must be printable ASCII without spaces: no {field} holds other characters"
        )));
    }
    Ok(id)
}

/// What an attribution read may add.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AttributionQuery {
    /// `inputs`: also answer the inputs the receipt hashes (prompt and completion), which only a
    /// key of the account that paid for the inference receives; other keys get the attribution
    /// without them.
    #[param(pattern = "^inputs$")]
    pub include: Option<String>,
}

impl AttributionQuery {
    /// Whether the inputs are asked for, or 400 naming `include`.
    fn include_inputs(&self) -> Result<bool, ApiError> {
        match self.include.as_deref() {
            None => Ok(false),
            Some(INCLUDE_INPUTS) => Ok(true),
            Some(other) => Err(ApiError::invalid(format!("include accepts only \"inputs\", got {other:?}"))),
        }
    }
}

/// An inference's attribution: the contributions that shaped its output with their weights and
/// matched spans, the method, the canonical receipt (`receipt` parsed, `receipt_canonical` its
/// exact text to rehash), and once batched the Merkle inclusion proof of the receipt.
#[utoipa::path(get, path = "/v1/attributions/{inference_id}", tag = "attribution",
    params(
        ("inference_id" = String, Path, description = "The inference id (`attribution.inference_id` of a completion)",
            min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$"),
        AttributionQuery,
    ),
    responses(
        (status = 200, description = "The attribution", body = Attribution),
        (status = 404, description = "Not attributed (yet): attribution follows the inference; retry shortly", body = ErrorBody),
        (status = 500, description = "The worker answered a receipt or inputs that do not decode", body = ErrorBody),
    ))]
pub async fn get_attribution(
    State(state): State<Attributions>,
    headers: HeaderMap,
    Path(inference_id): Path<String>,
    Query(query): Query<AttributionQuery>,
) -> Result<Json<Attribution>, ApiError> {
    let (account_id, mut client) = state.caller(&headers).await?;
    let request = pb::GetAttributionRequest {
        inference_id: checked_id("inference_id", inference_id)?,
        include_inputs: query.include_inputs()?,
        caller_account_id: Some(account_id.into()),
    };
    Ok(Json(Attribution::try_from(client.get_attribution(request).await?.into_inner())?))
}

/// Which indexes to list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct IndexListQuery {
    /// Only the indexes of this sealed Datanet version; absent for every index.
    #[param(min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$")]
    pub snapshot_id: Option<String>,
    /// Only the gradient index of this adapter; absent for every index.
    #[param(min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$")]
    pub adapter_id: Option<String>,
}

/// The attribution indexes and their state, a page at a time in id order: a span index per
/// sealed Datanet version (built when the version is sealed) and a gradient index per adapter
/// trained with lineage.
#[utoipa::path(get, path = "/v1/attribution/indexes", tag = "attribution", params(IndexListQuery, PageQuery), responses(
    (status = 200, description = "A page of indexes", body = AttributionIndexList),
))]
pub async fn list_attribution_indexes(
    State(state): State<Attributions>,
    headers: HeaderMap,
    Query(query): Query<IndexListQuery>,
    Query(page): Query<PageQuery>,
) -> Result<Json<AttributionIndexList>, ApiError> {
    let (_, mut client) = state.caller(&headers).await?;
    let snapshot_id = query.snapshot_id.map(|id| checked_id("snapshot_id", id)).transpose()?.unwrap_or_default();
    let adapter_id = query.adapter_id.map(|id| checked_id("adapter_id", id)).transpose()?.unwrap_or_default();
    let request = pb::ListIndexesRequest { snapshot_id, adapter_id, page: Some(page.request()?) };
    let answer = client.list_indexes(request).await?.into_inner();
    Ok(Json(AttributionIndexList {
        indexes: answer.indexes.into_iter().map(AttributionIndex::from).collect(),
        next_cursor: next_cursor(answer.page),
    }))
}

/// One attribution index and how far it is built.
#[utoipa::path(get, path = "/v1/attribution/indexes/{id}", tag = "attribution",
    params(("id" = String, Path, description = "Index id (`span:<snapshot id>`)",
        min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$")),
    responses(
        (status = 200, description = "The index", body = AttributionIndex),
        (status = 404, description = "No such index", body = ErrorBody),
    ))]
pub async fn get_attribution_index(
    State(state): State<Attributions>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<AttributionIndex>, ApiError> {
    let (_, mut client) = state.caller(&headers).await?;
    let request = pb::GetIndexRequest { id: checked_id("id", id)? };
    Ok(Json(AttributionIndex::from(client.get_index(request).await?.into_inner())))
}

#[cfg(test)]
mod tests;
