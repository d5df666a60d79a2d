//! The JSON types of the Datanet routes and their conversions from and to the wire types.

use openledger_core::ErrorCode;
use openledger_proto::{common::v1 as common, datanet::v1 as pb};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::hex_field;
use crate::edge::{ApiError, signature::signature};

/// An ed25519 signature and the signer's public key, hex.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    #[schema(pattern = "^[0-9a-fA-F]{64}$")]
    pub public_key: String,
    #[schema(pattern = "^[0-9a-fA-F]{128}$")]
    pub signature: String,
}

impl TryFrom<&Signature> for common::Signature {
    type Error = ApiError;

    /// 401 when malformed, like a signature that does not verify.
    fn try_from(signed: &Signature) -> Result<Self, ApiError> {
        signature(&signed.public_key, &signed.signature)
    }
}

/// A contribution policy; zeros (or missing fields) take the defaults (10 MB and 20 files
/// per contributor per day, 5 MB files, scores 600/300, Jaccard 0.8).
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ContributionPolicy {
    pub allow_list_only: bool,
    /// Hex ed25519 keys.
    #[schema(max_items = 10000, value_type = Vec<Key>)]
    pub allowed_contributors: Vec<String>,
    /// Base units, decimal.
    #[schema(pattern = "^[0-9]{0,38}$")]
    pub stake_per_contribution: String,
    pub max_bytes_per_contributor_per_day: u64,
    pub max_files_per_contributor_per_day: u32,
    pub max_bytes_per_day: u64,
    pub max_files_per_day: u32,
    pub max_file_bytes: u64,
    pub auto_accept_score: u32,
    pub reject_below_score: u32,
    pub near_duplicate_jaccard_ppt: u32,
    /// Every contribution that passes the spam and duplicate checks waits for review.
    pub review_all: bool,
}

/// A Datanet. On creation, `id`, `owner` and `created_at_unix_ms` are ignored, and the owner
/// signs `openledger/datanet/create/v2\n<slug>\n<BLAKE3 hex of the canonical JSON definition>`
/// (specified in `openledger_signing::datanet_create_message`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(default)]
pub struct Datanet {
    pub id: String,
    /// 2 to 64 characters of a-z, 0-9 and '-', not starting or ending with '-'.
    #[schema(required = true, pattern = "^[a-z0-9][a-z0-9-]{0,62}[a-z0-9]$")]
    pub slug: String,
    #[schema(
        required = true,
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u0008\\u000B-\\u001F\\u007F-\\u009F]*$"
    )]
    pub name: String,
    #[schema(max_length = 500, pattern = "^[^\\u0000-\\u0008\\u000B-\\u001F\\u007F-\\u009F]*$")]
    pub summary: String,
    pub description_markdown: String,
    #[schema(max_items = 20, value_type = Vec<Tag>)]
    pub tags: Vec<String>,
    /// `free_text`, `instruction_response` or `labelled_text`.
    #[schema(required = true, value_type = RecordSchemaName)]
    pub schema: String,
    pub label_set: Vec<String>,
    #[schema(
        required = true,
        min_length = 1,
        max_length = 100,
        pattern = "^[^\\u0000-\\u0008\\u000B-\\u001F\\u007F-\\u009F]*$"
    )]
    pub licence: String,
    /// `public` or `private`.
    #[schema(required = true, value_type = VisibilityName)]
    pub visibility: String,
    pub policy: ContributionPolicy,
    pub owner: String,
    #[schema(max_items = 100, value_type = Vec<Key>)]
    pub validators: Vec<String>,
    pub created_at_unix_ms: i64,
}

/// The wire form (what the owner's signature covers).
impl TryFrom<&Datanet> for pb::Datanet {
    type Error = ApiError;

    fn try_from(datanet: &Datanet) -> Result<Self, ApiError> {
        let bad = |message: String| ApiError::new(ErrorCode::InvalidArgument, message);
        let schema = pb::RecordSchema::from_str_name(&format!("RECORD_SCHEMA_{}", datanet.schema.to_uppercase()))
            .ok_or_else(|| bad("schema must be free_text, instruction_response or labelled_text".into()))?;
        let visibility = pb::Visibility::from_str_name(&format!("VISIBILITY_{}", datanet.visibility.to_uppercase()))
            .ok_or_else(|| bad("visibility must be public or private".into()))?;
        let keys =
            |keys: &[String], field: &str| keys.iter().map(|key| hex_field(key, field)).collect::<Result<Vec<_>, _>>();
        let stake = if datanet.policy.stake_per_contribution.is_empty() {
            0
        } else {
            datanet
                .policy
                .stake_per_contribution
                .parse::<u128>()
                .map_err(|_| bad("policy.stake_per_contribution must be a decimal number of base units".into()))?
        };
        Ok(pb::Datanet {
            slug: datanet.slug.clone(),
            name: datanet.name.clone(),
            summary: datanet.summary.clone(),
            description_markdown: datanet.description_markdown.clone(),
            tags: datanet.tags.clone(),
            schema: schema as i32,
            label_set: datanet.label_set.clone(),
            licence: datanet.licence.clone(),
            visibility: visibility as i32,
            policy: Some(pb::ContributionPolicy {
                allow_list_only: datanet.policy.allow_list_only,
                allowed_contributors: keys(&datanet.policy.allowed_contributors, "policy.allowed_contributors")?,
                stake_per_contribution: Some(stake.into()),
                max_bytes_per_contributor_per_day: datanet.policy.max_bytes_per_contributor_per_day,
                max_files_per_contributor_per_day: datanet.policy.max_files_per_contributor_per_day,
                max_bytes_per_day: datanet.policy.max_bytes_per_day,
                max_files_per_day: datanet.policy.max_files_per_day,
                max_file_bytes: datanet.policy.max_file_bytes,
                auto_accept_score: datanet.policy.auto_accept_score,
                reject_below_score: datanet.policy.reject_below_score,
                near_duplicate_jaccard_ppt: datanet.policy.near_duplicate_jaccard_ppt,
                review_all: datanet.policy.review_all,
            }),
            validators: keys(&datanet.validators, "validators")?,
            ..Default::default()
        })
    }
}

impl From<&pb::Datanet> for Datanet {
    fn from(datanet: &pb::Datanet) -> Self {
        let policy = datanet.policy.clone().unwrap_or_default();
        let lower = |name: &str, prefix: &str| name.trim_start_matches(prefix).to_lowercase();
        Self {
            id: datanet.id.clone(),
            slug: datanet.slug.clone(),
            name: datanet.name.clone(),
            summary: datanet.summary.clone(),
            description_markdown: datanet.description_markdown.clone(),
            tags: datanet.tags.clone(),
            schema: lower(datanet.schema().as_str_name(), "RECORD_SCHEMA_"),
            label_set: datanet.label_set.clone(),
            licence: datanet.licence.clone(),
            visibility: lower(datanet.visibility().as_str_name(), "VISIBILITY_"),
            policy: ContributionPolicy {
                allow_list_only: policy.allow_list_only,
                allowed_contributors: policy.allowed_contributors.iter().map(hex::encode).collect(),
                stake_per_contribution: policy.stake_per_contribution.map(u128::from).unwrap_or(0).to_string(),
                max_bytes_per_contributor_per_day: policy.max_bytes_per_contributor_per_day,
                max_files_per_contributor_per_day: policy.max_files_per_contributor_per_day,
                max_bytes_per_day: policy.max_bytes_per_day,
                max_files_per_day: policy.max_files_per_day,
                max_file_bytes: policy.max_file_bytes,
                auto_accept_score: policy.auto_accept_score,
                reject_below_score: policy.reject_below_score,
                near_duplicate_jaccard_ppt: policy.near_duplicate_jaccard_ppt,
                review_all: policy.review_all,
            },
            owner: hex::encode(&datanet.owner),
            validators: datanet.validators.iter().map(hex::encode).collect(),
            created_at_unix_ms: unix_ms(datanet.created_at),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDatanetRequest {
    pub datanet: Datanet,
    pub signature: Signature,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DatanetPage {
    pub datanets: Vec<Datanet>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// What a Datanet list is filtered by (its page is a `PageQuery`).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DatanetFilter {
    /// Only Datanets with this tag.
    #[serde(default)]
    #[param(pattern = "^[a-z0-9-]{0,40}$")]
    pub tag: String,
}

/// One record of a contribution.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Record {
    pub hash: String,
    pub quality_score: u32,
    pub duplicate: bool,
    pub duplicate_of: String,
}

/// A contribution and what became of it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Contribution {
    pub id: String,
    pub datanet_id: String,
    pub contributor: String,
    /// `pending_review`, `accepted`, `rejected` or `duplicate`.
    pub status: String,
    pub reason: String,
    pub file_name: String,
    pub size_bytes: u64,
    pub quality_score: u32,
    pub bond: String,
    /// `none`, `held`, `released` or `slashed`.
    pub bond_state: String,
    pub records: Vec<Record>,
    /// Why the bond was slashed for harmful data, when it was (on one contribution's view;
    /// null in lists and for a bond slashed because the owner rejected the contribution).
    pub slash: Option<BondSlash>,
}

/// A protobuf time as Unix milliseconds (0 when absent).
fn unix_ms(at: Option<prost_types::Timestamp>) -> i64 {
    at.as_ref().map_or(0, openledger_proto::unix_ms)
}

/// The evidence recorded with a bond slashed for harmful data.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BondSlash {
    /// The sealed version whose first evaluated adapter measured the contribution.
    pub snapshot_id: String,
    pub adapter_id: String,
    /// The quality estimator, its score for the contribution (a robust z-score of its influence
    /// on the validation loss) and the threshold the score fell below.
    pub estimator: String,
    pub score: f64,
    pub threshold: f64,
    /// What was measured, for people.
    pub evidence: String,
    /// The `ol.attribution.quality.assessed` event that decided the slash.
    pub event_id: String,
    pub at_unix_ms: i64,
}

impl From<&pb::BondSlash> for BondSlash {
    fn from(slash: &pb::BondSlash) -> Self {
        Self {
            snapshot_id: slash.snapshot_id.clone(),
            adapter_id: slash.adapter_id.clone(),
            estimator: slash.estimator.clone(),
            score: slash.score,
            threshold: slash.threshold,
            evidence: slash.evidence.clone(),
            event_id: slash.event_id.clone(),
            at_unix_ms: unix_ms(slash.at),
        }
    }
}

impl From<&pb::Contribution> for Contribution {
    fn from(contribution: &pb::Contribution) -> Self {
        Self {
            id: contribution.id.clone(),
            datanet_id: contribution.datanet_id.clone(),
            contributor: hex::encode(&contribution.contributor),
            status: contribution.status().api_name().to_owned(),
            reason: contribution.reason.clone(),
            file_name: contribution.file_name.clone(),
            size_bytes: contribution.size_bytes,
            quality_score: contribution.quality_score,
            bond: contribution.bond.map(u128::from).unwrap_or(0).to_string(),
            bond_state: contribution.bond_state.clone(),
            records: contribution
                .records
                .iter()
                .map(|record| Record {
                    hash: hex::encode(record.hash.clone().unwrap_or_default().value),
                    quality_score: record.quality_score,
                    duplicate: record.duplicate,
                    duplicate_of: record.duplicate_of.clone(),
                })
                .collect(),
            slash: contribution.slash.as_ref().map(BondSlash::from),
        }
    }
}

/// A sealed version of a Datanet.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    pub id: String,
    pub datanet_id: String,
    pub version: u64,
    pub merkle_root: String,
    pub record_count: u64,
    /// Contributor key (hex) → records in this version.
    pub contributor_counts: std::collections::BTreeMap<String, u64>,
    pub records_added: u64,
    pub records_removed: u64,
}

/// Inclusion proofs (RFC 9162 shape) of a contribution's records in a version.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InclusionProof {
    pub snapshot_id: String,
    pub merkle_root: String,
    pub records: Vec<RecordProof>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RecordProof {
    pub record_hash: String,
    pub leaf_index: u64,
    pub tree_size: u64,
    /// Sibling hashes from the leaf level up, hex.
    pub path: Vec<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewContributionRequest {
    pub approve: bool,
    #[serde(default)]
    #[schema(max_length = 1000, pattern = "^[^\\u0000-\\u0008\\u000B-\\u001F\\u007F-\\u009F]*$")]
    pub reason: String,
    /// Over `openledger/review/v1\n<datanet id>\n<contribution id>\n<approve|reject>\n<reason>`.
    pub signature: Signature,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LeaderboardEntry {
    pub contributor: String,
    pub accepted_records: u64,
    pub acceptance_ratio_ppt: u32,
    pub duplicates_rejected: u64,
    /// Base units the contributor was paid by settlements (decimal); absent when the ledger
    /// could not be asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[0-9]{1,39}$")]
    pub earnings: Option<String>,
}

/// Seal the draft, signed by the owner over `openledger/publish/v1\n<datanet id>\n<signed_at>`;
/// `signed_at` is Unix seconds (within 300 s of the server).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishSnapshotRequest {
    #[schema(pattern = "^[0-9a-fA-F]{64}$")]
    pub public_key: String,
    #[schema(pattern = "^[0-9a-fA-F]{128}$")]
    pub signature: String,
    pub signed_at: i64,
}

/// Take a record out of the draft, signed by the owner over
/// `openledger/remove-record/v1\n<datanet id>\n<record hash hex>\n<signed_at>`; `signed_at` is
/// Unix seconds (within 300 s of the server).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoveRecordRequest {
    #[schema(pattern = "^[0-9a-fA-F]{64}$")]
    pub public_key: String,
    #[schema(pattern = "^[0-9a-fA-F]{128}$")]
    pub signature: String,
    pub signed_at: i64,
}

/// A request to train on a Datanet, signed over `openledger/access-request/v1\n<datanet id>\n<purpose>`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestAccessRequest {
    #[schema(min_length = 1, max_length = 1000, pattern = "^[^\\u0000-\\u0008\\u000B-\\u001F\\u007F-\\u009F]*$")]
    pub purpose: String,
    #[schema(pattern = "^[0-9a-fA-F]{64}$")]
    pub public_key: String,
    #[schema(pattern = "^[0-9a-fA-F]{128}$")]
    pub signature: String,
}

/// The owner's decision, signed over
/// `openledger/access-decision/v1\n<datanet id>\n<grant id>\n<approve|deny>\n<signed_at>`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecideAccessRequest {
    pub approve: bool,
    #[schema(pattern = "^[0-9a-fA-F]{64}$")]
    pub public_key: String,
    #[schema(pattern = "^[0-9a-fA-F]{128}$")]
    pub signature: String,
    pub signed_at: i64,
}

/// An access grant: `requested`, `approved` or `denied`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Grant {
    pub id: String,
    pub datanet_id: String,
    pub grantee: String,
    pub state: String,
    pub purpose: String,
}

impl From<&pb::AccessGrant> for Grant {
    fn from(grant: &pb::AccessGrant) -> Self {
        Self {
            id: grant.id.clone(),
            datanet_id: grant.datanet_id.clone(),
            grantee: hex::encode(&grant.grantee),
            state: grant.state.clone(),
            purpose: grant.purpose.clone(),
        }
    }
}

/// An ed25519 public key, 64 hex characters.
#[derive(ToSchema)]
#[schema(pattern = "^[0-9a-fA-F]{64}$")]
#[allow(dead_code)]
pub struct Key(String);

/// A tag: 1 to 40 characters of a-z, 0-9 and '-'.
#[derive(ToSchema)]
#[schema(pattern = "^[a-z0-9-]{1,40}$")]
#[allow(dead_code)]
pub struct Tag(String);

/// What a record looks like.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum RecordSchemaName {
    FreeText,
    InstructionResponse,
    LabelledText,
}

/// Who may see a Datanet.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum VisibilityName {
    Public,
    Private,
}
