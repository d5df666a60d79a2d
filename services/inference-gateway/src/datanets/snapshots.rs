//! Snapshots: seal the draft as a version, inclusion proofs, and removing a record from the draft.

use axum::{
    Json,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
};
use openledger_proto::{common::v1::Hash, datanet::v1 as pb};

use super::{Datanets, hex_field, json::*};
use crate::edge::{ApiError, ErrorBody, body::JsonBody, signature::signature, upstream::with_caller};

/// Seal the accepted records as the next version; the owner signs
/// `openledger/publish/v1\n<datanet id>\n<signed_at>` (Unix seconds, within 300 s of the server).
#[utoipa::path(post, path = "/v1/datanets/{id}/snapshots", tag = "datanets", request_body = PublishSnapshotRequest, params(("id" = String, Path, description = "Datanet id")), responses(
    (status = 201, description = "The sealed version (the latest one when nothing changed)", body = Snapshot),
    (status = 403, description = "Not the owner", body = ErrorBody),
    (status = 400, description = "Invalid request", body = ErrorBody),
    (status = 404, description = "No such Datanet", body = ErrorBody),
    (status = 412, description = "The signature's time is too far from the server's", body = ErrorBody),
))]
pub async fn publish(
    State(datanets): State<Datanets>,
    Path(id): Path<String>,
    JsonBody(publish): JsonBody<PublishSnapshotRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let signature = signature(&publish.public_key, &publish.signature)?;
    let request =
        pb::PublishSnapshotRequest { datanet_id: id, signature: Some(signature), signed_at: publish.signed_at };
    let sealed = datanets.client()?.publish_snapshot(request).await?.into_inner();
    let snapshot = Snapshot {
        id: sealed.id,
        datanet_id: sealed.datanet_id,
        version: sealed.version,
        merkle_root: hex::encode(sealed.merkle_root.unwrap_or_default().value),
        record_count: sealed.record_count,
        contributor_counts: sealed
            .contributor_counts
            .iter()
            .map(|count| (hex::encode(&count.contributor), count.records))
            .collect(),
        records_added: sealed.records_added,
        records_removed: sealed.records_removed,
    };
    Ok((StatusCode::CREATED, Json(snapshot)))
}

/// Inclusion proofs of a contribution's records in a sealed version (`latest` for the newest).
#[utoipa::path(get, path = "/v1/datanets/{id}/snapshots/{sid}/proofs/{contribution_id}", tag = "datanets", params(
    ("id" = String, Path, description = "Datanet id"), ("sid" = String, Path, description = "Snapshot id or `latest`"),
    ("contribution_id" = String, Path, description = "Contribution id")), responses(
    (status = 200, description = "The proofs", body = InclusionProof),
    (status = 404, description = "No such version, or no records of the contribution in it", body = ErrorBody),
))]
pub async fn proof(
    State(datanets): State<Datanets>,
    headers: HeaderMap,
    Path((id, sid, contribution_id)): Path<(String, String, String)>,
) -> Result<Json<InclusionProof>, ApiError> {
    let request = pb::GetInclusionProofRequest { datanet_id: id, snapshot_id: sid, contribution_id };
    let proof = datanets.client()?.get_inclusion_proof(with_caller(request, &headers)).await?.into_inner();
    let hex_of = |hash: Option<&Hash>| hex::encode(hash.map(|hash| hash.value.as_slice()).unwrap_or_default());
    let root = proof.records.first().and_then(|record| record.proof.as_ref()).and_then(|p| p.root.as_ref());
    Ok(Json(InclusionProof {
        snapshot_id: proof.snapshot_id.clone(),
        merkle_root: hex_of(root),
        records: proof
            .records
            .iter()
            .map(|record| {
                let inclusion = record.proof.clone().unwrap_or_default();
                RecordProof {
                    record_hash: hex_of(record.record_hash.as_ref()),
                    leaf_index: inclusion.leaf_index,
                    tree_size: inclusion.tree_size,
                    path: inclusion.path.iter().map(|node| hex::encode(&node.value)).collect(),
                }
            })
            .collect(),
    }))
}

/// The owner takes a record out of the draft, signed over
/// `openledger/remove-record/v1\n<datanet id>\n<record hash hex>\n<signed_at>`.
#[utoipa::path(post, path = "/v1/datanets/{id}/records/{hash}/remove", tag = "datanets", request_body = RemoveRecordRequest, params(
    ("id" = String, Path, description = "Datanet id"), ("hash" = String, Path, description = "Record BLAKE3, hex", pattern = "^[0-9a-fA-F]{64}$")), responses(
    (status = 204, description = "Removed from the draft"),
    (status = 403, description = "Not the owner", body = ErrorBody),
    (status = 404, description = "No such accepted or pending record", body = ErrorBody),
    (status = 400, description = "Invalid record hash", body = ErrorBody),
))]
pub async fn remove_record(
    State(datanets): State<Datanets>,
    Path((id, hash)): Path<(String, String)>,
    JsonBody(action): JsonBody<RemoveRecordRequest>,
) -> Result<StatusCode, ApiError> {
    let signature = signature(&action.public_key, &action.signature)?;
    let request = pb::RemoveRecordRequest {
        datanet_id: id,
        record_hash: Some(Hash { value: hex_field(&hash, "the record hash")? }),
        signature: Some(signature),
        signed_at: action.signed_at,
    };
    datanets.client()?.remove_record(request).await?;
    Ok(StatusCode::NO_CONTENT)
}
