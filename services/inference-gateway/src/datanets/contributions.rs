//! Contributions: upload a file, read a contribution, review it, and the leaderboard.

use axum::{
    Json,
    extract::{Path, Query, Request, State},
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
};
use openledger_proto::{common::v1::Hash, datanet::v1 as pb};

use super::{
    Datanets,
    json::*,
    upload::{body_upload, multipart_upload},
};
use crate::edge::{ApiError, ErrorBody, body::JsonBody, page::LimitQuery, upstream::with_caller};

/// Bytes of one gRPC message of an upload.
const UPLOAD_CHUNK: usize = 256 * 1024;

/// Contribute a file. Either `multipart/form-data` with a `file` part (its file name and
/// content type decide the parser) and `public_key`, `signature`, optional `account_id`
/// fields; or a JSON object / JSONL body with the headers `x-openledger-key`,
/// `x-openledger-signature`, optional `x-openledger-account` and `x-openledger-file-name`
/// (default `upload.jsonl`). The signature covers
/// `openledger/contribution/v1\n<datanet id>\n<file name>\n<file BLAKE3 hex>\n<account or ->`.
#[utoipa::path(post, path = "/v1/datanets/{id}/contributions", tag = "datanets", params(("id" = String, Path, description = "Datanet id")), responses(
    (status = 201, description = "Taken and decided (accepted, pending review, rejected or duplicate)", body = Contribution),
    (status = 400, description = "The file cannot be parsed or does not fit the schema", body = ErrorBody),
    (status = 401, description = "The signature does not verify", body = ErrorBody),
    (status = 413, description = "The file is larger than the Datanet takes", body = ErrorBody),
    (status = 429, description = "Over the daily limits", body = ErrorBody),
    (status = 403, description = "Not on the Datanet's allow list", body = ErrorBody),
    (status = 404, description = "No such Datanet", body = ErrorBody),
    (status = 412, description = "The contribution bond could not be held (e.g. insufficient funds)", body = ErrorBody),
))]
pub async fn contribute(
    State(datanets): State<Datanets>,
    Path(id): Path<String>,
    request: Request,
) -> Result<impl IntoResponse, ApiError> {
    let is_multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("multipart/form-data"));
    let upload = if is_multipart { multipart_upload(request).await? } else { body_upload(request).await? };
    let header = pb::ContributeHeader {
        datanet_id: id,
        file_name: upload.file_name,
        media_type: upload.media_type,
        size_bytes: upload.bytes.len() as u64,
        file_hash: Some(Hash { value: blake3::hash(&upload.bytes).as_bytes().to_vec() }),
        signature: Some(upload.signature),
        contributor_account_id: upload.account_id.map(Into::into),
    };
    let mut messages = vec![pb::ContributeRequest { part: Some(pb::contribute_request::Part::Header(header)) }];
    messages.extend(
        upload
            .bytes
            .chunks(UPLOAD_CHUNK)
            .map(|chunk| pb::ContributeRequest { part: Some(pb::contribute_request::Part::Chunk(chunk.to_vec())) }),
    );
    let taken = datanets.client()?.contribute(futures::stream::iter(messages)).await?.into_inner();
    Ok((StatusCode::CREATED, Json(Contribution::from(&taken))))
}

/// A contribution and the fate of each record.
#[utoipa::path(get, path = "/v1/datanets/{id}/contributions/{contribution_id}", tag = "datanets", params(
    ("id" = String, Path, description = "Datanet id"), ("contribution_id" = String, Path, description = "Contribution id")), responses(
    (status = 200, description = "The contribution", body = Contribution),
    (status = 404, description = "Not found", body = ErrorBody),
))]
pub async fn contribution(
    State(datanets): State<Datanets>,
    headers: HeaderMap,
    Path((id, contribution_id)): Path<(String, String)>,
) -> Result<Json<Contribution>, ApiError> {
    let request = pb::GetContributionRequest { datanet_id: id, contribution_id };
    let found = datanets.client()?.get_contribution(with_caller(request, &headers)).await?;
    Ok(Json(Contribution::from(found.get_ref())))
}

/// The owner or a validator approves or rejects a contribution pending review.
#[utoipa::path(post, path = "/v1/datanets/{id}/contributions/{contribution_id}/review", tag = "datanets", request_body = ReviewContributionRequest, params(
    ("id" = String, Path, description = "Datanet id"), ("contribution_id" = String, Path, description = "Contribution id")), responses(
    (status = 200, description = "Decided", body = Contribution),
    (status = 403, description = "Not the owner or a validator", body = ErrorBody),
    (status = 412, description = "Not pending review", body = ErrorBody),
    (status = 400, description = "Invalid review", body = ErrorBody),
    (status = 404, description = "No such Datanet or contribution", body = ErrorBody),
))]
pub async fn review(
    State(datanets): State<Datanets>,
    Path((id, contribution_id)): Path<(String, String)>,
    JsonBody(review): JsonBody<ReviewContributionRequest>,
) -> Result<Json<Contribution>, ApiError> {
    let request = pb::ReviewContributionRequest {
        datanet_id: id,
        contribution_id,
        approve: review.approve,
        reason: review.reason,
        signature: Some((&review.signature).try_into()?),
    };
    let decided = datanets.client()?.review_contribution(request).await?;
    Ok(Json(Contribution::from(decided.get_ref())))
}

/// Contributors by accepted records.
#[utoipa::path(get, path = "/v1/datanets/{id}/leaderboard", tag = "datanets", params(("id" = String, Path, description = "Datanet id"), LimitQuery), responses(
    (status = 200, description = "The leaderboard", body = [LeaderboardEntry]),
    (status = 404, description = "No such Datanet (or not visible to the caller)", body = ErrorBody),
))]
pub async fn leaderboard(
    State(datanets): State<Datanets>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(limit): Query<LimitQuery>,
) -> Result<Json<Vec<LeaderboardEntry>>, ApiError> {
    let request = pb::GetLeaderboardRequest { datanet_id: id, limit: limit.limit()? };
    let board = datanets.client()?.get_leaderboard(with_caller(request, &headers)).await?.into_inner();
    Ok(Json(
        board
            .entries
            .iter()
            .map(|entry| LeaderboardEntry {
                contributor: hex::encode(&entry.contributor),
                accepted_records: entry.accepted_records,
                acceptance_ratio_ppt: entry.acceptance_ratio_ppt,
                duplicates_rejected: entry.duplicates_rejected,
                earnings: entry.earnings.map(|earned| u128::from(earned).to_string()),
            })
            .collect(),
    ))
}
