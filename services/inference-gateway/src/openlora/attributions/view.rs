//! The attribution-worker's answers as the edge writes them: an attribution with its weights,
//! spans, receipt and (once batched) inclusion proof, and an index's state. Account ids are
//! decimal strings of u128, hashes and keys lowercase hex, times Unix seconds.
//!
//! The receipt comes twice: `receipt`, the canonical receipt parsed (to read), and
//! `receipt_canonical`, its exact UTF-8 text (to rehash: BLAKE3 of those bytes is
//! `receipt_hash`, the Merkle leaf the proof commits to).

use openledger_core::ErrorCode;
use openledger_proto::{
    attribution::v1 as pb,
    common::v1::{Hash, MerkleProof, Uint128},
};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::edge::ApiError;

/// The contributions that shaped one paid inference's output, and the receipt that pins them.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Attribution {
    pub inference_id: String,
    /// `span_match`, `gradient_influence` or `blended`.
    pub method: String,
    pub method_version: String,
    /// The adapter that generated (its Datanet version is what was attributed against).
    pub adapter_id: String,
    pub datanet_id: String,
    pub snapshot_id: String,
    /// `complete`, or `partial` when an index was not ready in time and the attribution used
    /// what existed (`notes` say what).
    pub completeness: String,
    pub notes: Vec<String>,
    /// Share of the completion covered by matched spans, in parts per million.
    pub span_coverage_ppm: u32,
    /// The adapter owner's ledger account, decimal; null if the worker names none.
    pub model_owner_account_id: Option<String>,
    /// The ledger account that paid for the inference, decimal; null if the worker names none.
    pub app_account_id: Option<String>,
    pub weights: Vec<AttributionWeight>,
    /// The canonical receipt, parsed: the hashes of the inference's inputs (tokens, adapter
    /// files, Datanet version root, index files), the method and its parameters, the weights.
    #[schema(value_type = Object)]
    pub receipt: Value,
    /// The receipt's exact canonical text: BLAKE3 of its UTF-8 bytes is `receipt_hash`.
    pub receipt_canonical: String,
    /// BLAKE3 of `receipt_canonical`, hex.
    pub receipt_hash: String,
    /// The Merkle batch holding the receipt; null until the receipt is batched.
    pub batch: Option<AttributionBatch>,
    pub created_at: i64,
    /// The inputs the receipt hashes (prompt and completion texts and token ids). Present only
    /// when asked for with `include=inputs` by a key of the account that paid for the inference.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub inputs: Option<Value>,
}

/// One contribution's share of an output.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct AttributionWeight {
    pub contribution_id: String,
    /// The contributor's ed25519 public key, hex.
    pub contributor: String,
    /// The ledger account its share is paid to, decimal; null if the worker names none.
    pub account_id: Option<String>,
    /// Parts per billion of the contributors' share; negative means harmful influence.
    pub weight_ppb: i64,
    /// The completion's byte ranges matched in this contribution's records.
    pub spans: Vec<AttributionSpan>,
}

/// A byte range `[start, end)` of the completion found in a record.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct AttributionSpan {
    pub start: u32,
    pub end: u32,
    /// BLAKE3 of the record credited, hex.
    pub record_hash: String,
}

/// Where a receipt sits: its batch, the ledger journal entry that recorded the batch root,
/// and the RFC 9162 inclusion proof of `receipt_hash` under that root.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct AttributionBatch {
    pub sequence: u64,
    /// The ledger journal entry that recorded the root; null until it is recorded.
    pub journal_sequence: Option<u64>,
    pub proof: ReceiptInclusionProof,
}

/// An RFC 9162 inclusion proof: the audit path from the leaf at `leaf_index` to `root`.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ReceiptInclusionProof {
    pub leaf_index: u64,
    pub tree_size: u64,
    /// Sibling hashes from the leaf up, hex.
    pub path: Vec<String>,
    /// The batch root, hex.
    pub root: String,
}

/// An attribution index and how far it is built.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct AttributionIndex {
    /// `span:<snapshot id>` for a Datanet version's span index.
    pub id: String,
    /// What the index serves: `span_match` (a Datanet version's suffix array) or
    /// `gradient_influence` (an adapter's projected gradients).
    pub method: String,
    pub datanet_id: String,
    pub snapshot_id: String,
    /// The adapter of a gradient index; null for span indexes.
    pub adapter_id: Option<String>,
    /// `queued`, `building`, `ready` or `failed`.
    pub state: String,
    pub records_indexed: u64,
    /// Why the build failed; null unless `state` is `failed`.
    pub error: Option<String>,
    /// BLAKE3 over the index's files (what receipts name), hex; null until built.
    pub files_hash: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A page of the indexes asked for, in id order.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct AttributionIndexList {
    pub indexes: Vec<AttributionIndex>,
    /// `after` for the next page; absent on the last one.
    pub next_cursor: Option<String>,
}

/// The REST name of a method.
pub fn method_name(method: i32) -> &'static str {
    match pb::Method::try_from(method) {
        Ok(pb::Method::SpanMatch) => "span_match",
        Ok(pb::Method::GradientInfluence) => "gradient_influence",
        Ok(pb::Method::Blended) => "blended",
        Ok(pb::Method::Unspecified) | Err(_) => "unspecified",
    }
}

fn hex_of(hash: Option<&Hash>) -> String {
    hash.map(|hash| hex::encode(&hash.value)).unwrap_or_default()
}

fn account(id: Option<Uint128>) -> Option<String> {
    id.map(|id| u128::from(id).to_string())
}

fn some(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

fn unix_seconds(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

/// A value the worker stored that does not decode: a 500 naming what and whose, never a guess.
fn undecodable(what: &str, inference_id: &str, error: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        ErrorCode::Internal,
        format!(
            "the attribution-worker answered {what} of inference {inference_id:?} that is not a JSON object: {error}"
        ),
    )
}

fn json_object(text: &str, what: &str, inference_id: &str) -> Result<Value, ApiError> {
    match serde_json::from_str(text) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(other) => Err(undecodable(what, inference_id, format!("found {other}"))),
        Err(error) => Err(undecodable(what, inference_id, error)),
    }
}

impl TryFrom<pb::Attribution> for Attribution {
    type Error = ApiError;

    fn try_from(attribution: pb::Attribution) -> Result<Self, ApiError> {
        let id = attribution.inference_id.as_str();
        let receipt_canonical =
            String::from_utf8(attribution.receipt).map_err(|error| undecodable("a receipt", id, error))?;
        let receipt = json_object(&receipt_canonical, "a receipt", id)?;
        let inputs = match attribution.inputs_json.as_str() {
            "" => None,
            text => Some(json_object(text, "inputs", id)?),
        };
        let batch = attribution.batch_proof.map(|proof| AttributionBatch {
            sequence: attribution.batch_sequence,
            journal_sequence: (attribution.journal_sequence != 0).then_some(attribution.journal_sequence),
            proof: ReceiptInclusionProof::from(proof),
        });
        Ok(Self {
            method: method_name(attribution.method).to_owned(),
            method_version: attribution.method_version,
            adapter_id: attribution.adapter_id,
            datanet_id: attribution.datanet_id,
            snapshot_id: attribution.snapshot_id,
            completeness: attribution.completeness,
            notes: attribution.notes,
            span_coverage_ppm: attribution.span_coverage_ppm,
            model_owner_account_id: account(attribution.model_owner_account_id),
            app_account_id: account(attribution.app_account_id),
            weights: attribution.weights.into_iter().map(AttributionWeight::from).collect(),
            receipt,
            receipt_canonical,
            receipt_hash: hex_of(attribution.receipt_hash.as_ref()),
            batch,
            created_at: unix_seconds(attribution.created_at_ms),
            inputs,
            inference_id: attribution.inference_id,
        })
    }
}

impl From<pb::ContributionWeight> for AttributionWeight {
    fn from(weight: pb::ContributionWeight) -> Self {
        Self {
            contribution_id: weight.contribution_id,
            contributor: hex::encode(&weight.contributor),
            account_id: account(weight.contributor_account_id),
            weight_ppb: weight.weight_ppb,
            spans: weight
                .spans
                .into_iter()
                .map(|span| AttributionSpan {
                    start: span.completion_start,
                    end: span.completion_end,
                    record_hash: hex_of(span.record_hash.as_ref()),
                })
                .collect(),
        }
    }
}

impl From<MerkleProof> for ReceiptInclusionProof {
    fn from(proof: MerkleProof) -> Self {
        Self {
            leaf_index: proof.leaf_index,
            tree_size: proof.tree_size,
            path: proof.path.iter().map(|hash| hex::encode(&hash.value)).collect(),
            root: hex_of(proof.root.as_ref()),
        }
    }
}

impl From<pb::AttributionIndex> for AttributionIndex {
    fn from(index: pb::AttributionIndex) -> Self {
        Self {
            id: index.id,
            method: method_name(index.method).to_owned(),
            datanet_id: index.datanet_id,
            snapshot_id: index.snapshot_id,
            adapter_id: some(index.adapter_id),
            state: index.state,
            records_indexed: index.records_indexed,
            error: some(index.error),
            files_hash: index.files_hash.filter(|hash| !hash.value.is_empty()).map(|hash| hex::encode(hash.value)),
            created_at: unix_seconds(index.created_at_ms),
            updated_at: unix_seconds(index.updated_at_ms),
        }
    }
}
