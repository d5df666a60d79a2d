//! Access to train on a Datanet: request a grant, and the owner's decision.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
    response::IntoResponse,
};
use openledger_proto::datanet::v1 as pb;

use super::{Datanets, json::*};
use crate::edge::{ApiError, ErrorBody, body::JsonBody, signature::signature};

/// Ask to train on a Datanet (a repeated request returns the open grant).
#[utoipa::path(post, path = "/v1/datanets/{id}/access", tag = "datanets", request_body = RequestAccessRequest, params(("id" = String, Path, description = "Datanet id")), responses(
    (status = 201, description = "The grant, requested (or the open one)", body = Grant),
    (status = 400, description = "Invalid purpose", body = ErrorBody),
    (status = 404, description = "No such Datanet", body = ErrorBody),
))]
pub async fn request_access(
    State(datanets): State<Datanets>,
    Path(id): Path<String>,
    JsonBody(asked): JsonBody<RequestAccessRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let signature = signature(&asked.public_key, &asked.signature)?;
    let request = pb::RequestAccessRequest { datanet_id: id, purpose: asked.purpose, signature: Some(signature) };
    let grant = datanets.client()?.request_access(request).await?.into_inner();
    Ok((StatusCode::CREATED, Json(Grant::from(&grant))))
}

/// The owner approves or denies an access request.
#[utoipa::path(post, path = "/v1/datanets/{id}/access/{grant_id}", tag = "datanets", request_body = DecideAccessRequest, params(
    ("id" = String, Path, description = "Datanet id"), ("grant_id" = String, Path, description = "Grant id")), responses(
    (status = 200, description = "The decided grant", body = Grant),
    (status = 403, description = "Not the owner", body = ErrorBody),
    (status = 400, description = "Invalid decision", body = ErrorBody),
    (status = 404, description = "No such Datanet or grant", body = ErrorBody),
    (status = 412, description = "The grant is decided already", body = ErrorBody),
))]
pub async fn decide_access(
    State(datanets): State<Datanets>,
    Path((id, grant_id)): Path<(String, String)>,
    JsonBody(decision): JsonBody<DecideAccessRequest>,
) -> Result<Json<Grant>, ApiError> {
    let signature = signature(&decision.public_key, &decision.signature)?;
    let request = pb::DecideAccessRequest {
        datanet_id: id,
        grant_id,
        approve: decision.approve,
        signature: Some(signature),
        signed_at: decision.signed_at,
    };
    let grant = datanets.client()?.decide_access(request).await?.into_inner();
    Ok(Json(Grant::from(&grant)))
}
