//! The gRPC surface: stored attributions with their receipts and inclusion proofs, the
//! indexes and their state, and `Attribute`, which computes an attribution now without
//! storing or paying anything.

use openledger_core::ErrorCode;
use openledger_proto::{
    attribution::v1::{self as pb, attribution_service_server::AttributionService},
    common::v1::{Hash, MerkleProof, PageResponse},
};
use openledger_runtime::grpc::status;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use tonic::{Request, Response, Status};

use openledger_attribution::{credit::CreditParams, span::SpanParams};

use crate::{
    Parts, SharedParts, WorkerError,
    attribute::{InputCompletion, Inputs, attribute_text, method_name, receipt_weights, stored_explanation},
    entities::{attribution, index},
    indexes::span_index_id,
    limits::MAX_PAGE,
    receipt::{ReceiptParameters, ReceiptWeight},
};

/// The gRPC API of this service.
#[derive(Clone)]
pub struct Api {
    shared: SharedParts,
}

impl Api {
    pub fn new(shared: SharedParts) -> Self {
        Self { shared }
    }

    fn parts(&self) -> Result<&Parts, Status> {
        self.shared.get().ok_or_else(|| status(ErrorCode::Unavailable, "the attribution-worker is starting"))
    }
}

fn failed(error: WorkerError) -> Status {
    status(error.code, error.message)
}

fn method(name: &str) -> i32 {
    (match name {
        "span_match" => pb::Method::SpanMatch,
        "gradient_influence" => pb::Method::GradientInfluence,
        "blended" => pb::Method::Blended,
        _ => pb::Method::Unspecified,
    }) as i32
}

fn hash(bytes: &[u8]) -> Option<Hash> {
    (!bytes.is_empty()).then(|| Hash { value: bytes.to_vec() })
}

fn weights_to_proto(weights: &[ReceiptWeight], explained: &serde_json::Value) -> Vec<pb::ContributionWeight> {
    let spans = explained["spans"].as_array().cloned().unwrap_or_default();
    weights
        .iter()
        .map(|w| pb::ContributionWeight {
            contribution_id: w.contribution.clone(),
            contributor: hex::decode(&w.contributor).unwrap_or_default(),
            weight_ppb: w.weight_ppb as i64,
            spans: spans
                .iter()
                .filter(|span| span["contribution"].as_str() == Some(w.contribution.as_str()))
                .map(|span| pb::Span {
                    completion_start: span["start"].as_u64().unwrap_or(0) as u32,
                    completion_end: span["end"].as_u64().unwrap_or(0) as u32,
                    record_hash: span["record"].as_str().and_then(|h| hex::decode(h).ok()).map(|value| Hash { value }),
                })
                .collect(),
            contributor_account_id: w.account.parse::<u128>().ok().map(Into::into),
        })
        .collect()
}

impl Api {
    async fn to_proto(&self, row: attribution::Model, include_inputs: bool) -> Result<pb::Attribution, Status> {
        let parts = self.parts()?;
        let weights: Vec<ReceiptWeight> =
            serde_json::from_str(&row.weights).map_err(|e| status(ErrorCode::Internal, e.to_string()))?;
        let explained: serde_json::Value = serde_json::from_str(&row.explained).unwrap_or_default();
        let notes: Vec<String> = serde_json::from_str(&row.notes).unwrap_or_default();
        let proof = parts.batches.proof(&row).await.map_err(failed)?;
        let (batch_proof, journal_sequence) = match proof {
            Some((proof, sealed)) => (
                Some(MerkleProof {
                    leaf_index: proof.leaf_index,
                    tree_size: proof.tree_size,
                    path: proof.path.iter().map(|h| Hash { value: h.as_bytes().to_vec() }).collect(),
                    root: hash(&sealed.root),
                }),
                sealed.journal_sequence.unwrap_or(0) as u64,
            ),
            None => (None, 0),
        };
        Ok(pb::Attribution {
            inference_id: row.inference_id,
            method: method(&row.method),
            weights: weights_to_proto(&weights, &explained),
            batch_proof,
            method_version: row.method_version,
            adapter_id: row.adapter_id,
            datanet_id: row.datanet_id,
            snapshot_id: row.snapshot_id,
            receipt: row.receipt,
            receipt_hash: hash(&row.receipt_hash),
            batch_sequence: row.batch_sequence.unwrap_or(0) as u64,
            journal_sequence,
            notes,
            span_coverage_ppm: row.span_coverage_ppm as u32,
            model_owner_account_id: row.model_owner_account.parse::<u128>().ok().map(Into::into),
            created_at_ms: row.created_at_ms,
            inputs_json: if include_inputs { row.inputs } else { String::new() },
            completeness: row.completeness,
            app_account_id: row.app_account.parse::<u128>().ok().map(Into::into),
        })
    }
}

fn index_to_proto(row: index::Model) -> pb::AttributionIndex {
    pb::AttributionIndex {
        id: row.id,
        snapshot_id: row.snapshot_id,
        adapter_id: row.adapter_id,
        method: if row.kind == crate::indexes::GRADIENT { pb::Method::GradientInfluence } else { pb::Method::SpanMatch }
            as i32,
        state: row.state,
        records_indexed: row.records_indexed as u64,
        location: row.location,
        datanet_id: row.datanet_id,
        error: row.error,
        files_hash: hash(&row.files_hash),
        created_at_ms: row.created_at_ms,
        updated_at_ms: row.updated_at_ms,
    }
}

#[tonic::async_trait]
impl AttributionService for Api {
    async fn attribute(&self, request: Request<pb::AttributeRequest>) -> Result<Response<pb::Attribution>, Status> {
        let parts = self.parts()?;
        let request = request.into_inner();
        let version = parts.attributions.version_of(&request.adapter_id).await.map_err(failed)?;
        let inputs = Inputs {
            prompt_text: request.prompt,
            prompt_token_ids: Vec::new(),
            completions: vec![InputCompletion { text: request.completion, token_ids: Vec::new() }],
        };
        let parameters = ReceiptParameters::of(&SpanParams::default(), &CreditParams::default());
        // Influence when the adapter's gradient index is ready, as for a paid inference.
        let gradients = parts.indexes.gradients(&request.adapter_id).await.map_err(failed)?;
        let attributed = {
            let version = version.clone();
            tokio::task::spawn_blocking(move || {
                let influence = gradients.as_deref().map(|g| (g, crate::attribute::INFLUENCE_ESTIMATOR));
                attribute_text(&version, &inputs, &parameters, influence)
            })
            .await
            .map_err(|e| status(ErrorCode::Internal, e.to_string()))?
            .map_err(failed)?
        };
        let weights = receipt_weights(&version, &attributed);
        let explained = serde_json::to_value(stored_explanation(&version, &attributed)).unwrap_or_default();
        Ok(Response::new(pb::Attribution {
            inference_id: request.inference_id,
            method: method(method_name(attributed.attribution.method)),
            weights: weights_to_proto(&weights, &explained),
            method_version: attributed.attribution.method_version.clone(),
            adapter_id: request.adapter_id,
            notes: attributed.attribution.notes.clone(),
            span_coverage_ppm: attributed.attribution.span_coverage_ppm,
            ..Default::default()
        }))
    }

    async fn get_attribution(
        &self,
        request: Request<pb::GetAttributionRequest>,
    ) -> Result<Response<pb::Attribution>, Status> {
        let parts = self.parts()?;
        let request = request.into_inner();
        let row = attribution::Entity::find_by_id(request.inference_id.as_str())
            .one(&parts.attributions.db())
            .await
            .map_err(|e| failed(e.into()))?
            .ok_or_else(|| {
                status(
                    ErrorCode::NotFound,
                    format!(
                        "no attribution of inference {:?} (yet: attribution follows the inference)",
                        request.inference_id
                    ),
                )
            })?;
        // Inputs only for the account that paid (or an internal caller naming no account).
        let caller = request.caller_account_id.map(u128::from);
        let allowed = caller.is_none_or(|caller| caller.to_string() == row.app_account);
        Ok(Response::new(self.to_proto(row, request.include_inputs && allowed).await?))
    }

    async fn list_attributions(
        &self,
        request: Request<pb::ListAttributionsRequest>,
    ) -> Result<Response<pb::ListAttributionsResponse>, Status> {
        let parts = self.parts()?;
        let request = request.into_inner();
        let limit = if request.limit == 0 { 100 } else { request.limit.min(MAX_PAGE) };
        let rows = attribution::Entity::find()
            .filter(attribution::Column::InferenceId.gt(request.after))
            .order_by_asc(attribution::Column::InferenceId)
            .limit(u64::from(limit) + 1)
            .all(&parts.attributions.db())
            .await
            .map_err(|e| failed(e.into()))?;
        let has_more = rows.len() > limit as usize;
        let mut attributions = Vec::with_capacity(rows.len());
        for row in rows.into_iter().take(limit as usize) {
            attributions.push(self.to_proto(row, false).await?);
        }
        Ok(Response::new(pb::ListAttributionsResponse { attributions, has_more }))
    }

    async fn build_index(
        &self,
        request: Request<pb::BuildIndexRequest>,
    ) -> Result<Response<pb::AttributionIndex>, Status> {
        let parts = self.parts()?;
        let request = request.into_inner();
        if !request.adapter_id.is_empty() {
            return Err(status(
                ErrorCode::Unimplemented,
                "gradient indexes are not built by the worker yet: attribution is span-only (see the issue note)",
            ));
        }
        let id = span_index_id(&request.snapshot_id);
        let row = parts.indexes.row(&id).await.map_err(failed)?.ok_or_else(|| {
            status(
                ErrorCode::NotFound,
                format!("no index of version {:?}: versions are indexed when they are sealed", request.snapshot_id),
            )
        })?;
        Ok(Response::new(index_to_proto(parts.indexes.retry(&row.id).await.map_err(failed)?)))
    }

    async fn get_index(&self, request: Request<pb::GetIndexRequest>) -> Result<Response<pb::AttributionIndex>, Status> {
        let parts = self.parts()?;
        let id = request.into_inner().id;
        let row = parts
            .indexes
            .row(&id)
            .await
            .map_err(failed)?
            .ok_or_else(|| status(ErrorCode::NotFound, format!("no index {id:?}")))?;
        Ok(Response::new(index_to_proto(row)))
    }

    async fn list_indexes(
        &self,
        request: Request<pb::ListIndexesRequest>,
    ) -> Result<Response<pb::ListIndexesResponse>, Status> {
        let parts = self.parts()?;
        let request = request.into_inner();
        let page = request.page.unwrap_or_default();
        let (rows, next) = parts
            .indexes
            .page(&request.snapshot_id, &request.adapter_id, page.page_size, &page.page_token)
            .await
            .map_err(failed)?;
        Ok(Response::new(pb::ListIndexesResponse {
            indexes: rows.into_iter().map(index_to_proto).collect(),
            page: Some(PageResponse { next_page_token: next }),
        }))
    }
}
