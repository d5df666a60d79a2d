//! Datanets over REST, forwarded to the datanet-ingest service's gRPC API. Writes carry the
//! signer's ed25519 key and signature (hex) over the messages `openledger_datanet_ingest`'s
//! `signing` module defines; reads of private Datanets carry the signed caller headers
//! (`x-openledger-key`, `x-openledger-timestamp`, `x-openledger-signature`), passed through.

//!
//! Where each route lives: `create`, `list` and `show` here; `contributions` (upload, read,
//! review, leaderboard; the upload's parsing in `upload`); `snapshots` (publish, proofs,
//! record removal); `access` (grants). JSON types and their conversions are in `json`.

mod access;
mod contributions;
pub mod json;
mod snapshots;
mod upload;

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing::{get, post},
};
use openledger_core::ErrorCode;
use openledger_proto::datanet::v1::{self as pb, datanet_service_client::DatanetServiceClient};
use openledger_runtime::clients::ServiceChannel;
use tonic::transport::Channel;

pub use self::{access::*, contributions::*, json::*, snapshots::*};
use crate::edge::{
    ApiError, ErrorBody, Upstream,
    body::JsonBody,
    page::{PageQuery, next_cursor},
    upstream::with_caller,
};

/// datanet-ingest as the state of its routes.
pub type Datanets = Upstream<DatanetServiceClient<Channel>>;

/// Every Datanet route.
pub fn routes(channel: ServiceChannel) -> Router {
    Router::new()
        .route("/v1/datanets", post(create).get(list))
        .route("/v1/datanets/{id}", get(show))
        .route("/v1/datanets/{id}/contributions", post(contribute))
        .route("/v1/datanets/{id}/contributions/{contribution_id}", get(contribution))
        .route("/v1/datanets/{id}/contributions/{contribution_id}/review", post(review))
        .route("/v1/datanets/{id}/snapshots", post(publish))
        .route("/v1/datanets/{id}/snapshots/{sid}/proofs/{contribution_id}", get(proof))
        .route("/v1/datanets/{id}/leaderboard", get(leaderboard))
        .route("/v1/datanets/{id}/records/{hash}/remove", post(remove_record))
        .route("/v1/datanets/{id}/access", post(request_access))
        .route("/v1/datanets/{id}/access/{grant_id}", post(decide_access))
        .with_state(Datanets::new(channel, DatanetServiceClient::new))
}

pub(crate) fn hex_field(value: &str, field: &str) -> Result<Vec<u8>, ApiError> {
    hex::decode(value).map_err(|_| ApiError::new(ErrorCode::InvalidArgument, format!("{field} must be hex")))
}

/// Create a Datanet, signed by its owner.
#[utoipa::path(post, path = "/v1/datanets", tag = "datanets", request_body = CreateDatanetRequest, responses(
    (status = 201, description = "Created; a repeat of the slug by the same owner answers 201 with the Datanet as it exists", body = Datanet),
    (status = 400, description = "Invalid definition", body = ErrorBody),
    (status = 401, description = "The signature does not verify", body = ErrorBody),
    (status = 409, description = "The slug is taken", body = ErrorBody),
))]
pub async fn create(
    State(datanets): State<Datanets>,
    JsonBody(new): JsonBody<CreateDatanetRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let request = pb::CreateDatanetRequest {
        datanet: Some((&new.datanet).try_into()?),
        signature: Some((&new.signature).try_into()?),
    };
    let created = datanets.client()?.create_datanet(request).await?.into_inner();
    Ok((StatusCode::CREATED, Json(Datanet::from(&created))))
}

/// Datanets the caller may see, newest first.
#[utoipa::path(get, path = "/v1/datanets", tag = "datanets", params(DatanetFilter, PageQuery), responses(
    (status = 200, description = "A page of Datanets", body = DatanetPage),
))]
pub async fn list(
    State(datanets): State<Datanets>,
    headers: HeaderMap,
    Query(filter): Query<DatanetFilter>,
    Query(page): Query<PageQuery>,
) -> Result<Json<DatanetPage>, ApiError> {
    let request = pb::ListDatanetsRequest { page: Some(page.request()?), tag: filter.tag };
    let page = datanets.client()?.list_datanets(with_caller(request, &headers)).await?.into_inner();
    Ok(Json(DatanetPage {
        datanets: page.datanets.iter().map(Datanet::from).collect(),
        next_cursor: next_cursor(page.page),
    }))
}

/// A Datanet by id or slug (private ones only for the owner, validators and grantees).
#[utoipa::path(get, path = "/v1/datanets/{id}", tag = "datanets", params(("id" = String, Path, description = "Id or slug")), responses(
    (status = 200, description = "The Datanet", body = Datanet),
    (status = 404, description = "No such Datanet (or not visible to the caller)", body = ErrorBody),
))]
pub async fn show(
    State(datanets): State<Datanets>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Datanet>, ApiError> {
    let found = datanets.client()?.get_datanet(with_caller(pb::GetDatanetRequest { id_or_slug: id }, &headers)).await?;
    Ok(Json(Datanet::from(found.get_ref())))
}
