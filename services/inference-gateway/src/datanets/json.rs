//! The JSON types of the Datanet routes and their conversions from and to the wire types.

use openledger_core::ErrorCode;
use openledger_proto::{common::v1::Signature, datanet::v1 as pb};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{hex_field, wire_signature};
use crate::edge::ApiError;

/// An ed25519 signature, hex.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignatureJson {
    pub public_key: String,
    pub signature: String,
}

impl SignatureJson {
    pub(crate) fn wire(&self) -> Result<Signature, ApiError> {
        wire_signature(&self.public_key, &self.signature)
    }
}

/// A contribution policy; zeros (or missing fields) take the defaults (10 MB and 20 files
/// per contributor per day, 5 MB files, scores 600/300, Jaccard 0.8).
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyJson {
    pub allow_list_only: bool,
    /// Hex ed25519 keys.
    pub allowed_contributors: Vec<String>,
    /// Base units, decimal.
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
/// signs `openledger/datanet/create/v1\n<slug>\n<digest>` (see the gRPC API).
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(default)]
pub struct DatanetJson {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub summary: String,
    pub description_markdown: String,
    pub tags: Vec<String>,
    /// `free_text`, `instruction_response` or `labelled_text`.
    pub schema: String,
    pub label_set: Vec<String>,
    pub licence: String,
    /// `public` or `private`.
    pub visibility: String,
    pub policy: PolicyJson,
    pub owner: String,
    pub validators: Vec<String>,
    pub created_at_unix_ms: i64,
}

impl DatanetJson {
    /// The wire form (what the owner's signature covers).
    pub fn wire(&self) -> Result<pb::Datanet, ApiError> {
        let bad = |message: String| ApiError::new(ErrorCode::InvalidArgument, message);
        let schema = pb::RecordSchema::from_str_name(&format!("RECORD_SCHEMA_{}", self.schema.to_uppercase()))
            .ok_or_else(|| bad("schema must be free_text, instruction_response or labelled_text".into()))?;
        let visibility = pb::Visibility::from_str_name(&format!("VISIBILITY_{}", self.visibility.to_uppercase()))
            .ok_or_else(|| bad("visibility must be public or private".into()))?;
        let keys =
            |keys: &[String], field: &str| keys.iter().map(|key| hex_field(key, field)).collect::<Result<Vec<_>, _>>();
        let stake = if self.policy.stake_per_contribution.is_empty() {
            0
        } else {
            self.policy
                .stake_per_contribution
                .parse::<u128>()
                .map_err(|_| bad("policy.stake_per_contribution must be a decimal number of base units".into()))?
        };
        Ok(pb::Datanet {
            slug: self.slug.clone(),
            name: self.name.clone(),
            summary: self.summary.clone(),
            description_markdown: self.description_markdown.clone(),
            tags: self.tags.clone(),
            schema: schema as i32,
            label_set: self.label_set.clone(),
            licence: self.licence.clone(),
            visibility: visibility as i32,
            policy: Some(pb::ContributionPolicy {
                allow_list_only: self.policy.allow_list_only,
                allowed_contributors: keys(&self.policy.allowed_contributors, "policy.allowed_contributors")?,
                stake_per_contribution: Some(stake.into()),
                max_bytes_per_contributor_per_day: self.policy.max_bytes_per_contributor_per_day,
                max_files_per_contributor_per_day: self.policy.max_files_per_contributor_per_day,
                max_bytes_per_day: self.policy.max_bytes_per_day,
                max_files_per_day: self.policy.max_files_per_day,
                max_file_bytes: self.policy.max_file_bytes,
                auto_accept_score: self.policy.auto_accept_score,
                reject_below_score: self.policy.reject_below_score,
                near_duplicate_jaccard_ppt: self.policy.near_duplicate_jaccard_ppt,
                review_all: self.policy.review_all,
            }),
            validators: keys(&self.validators, "validators")?,
            ..Default::default()
        })
    }

    pub(crate) fn of(datanet: &pb::Datanet) -> Self {
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
            policy: PolicyJson {
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
            created_at_unix_ms: datanet.created_at.map_or(0, |at| at.seconds * 1000 + i64::from(at.nanos) / 1_000_000),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDatanet {
    pub datanet: DatanetJson,
    pub signature: SignatureJson,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DatanetPage {
    pub datanets: Vec<DatanetJson>,
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
    pub tag: String,
}

/// One record of a contribution.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RecordJson {
    pub hash: String,
    pub quality_score: u32,
    pub duplicate: bool,
    pub duplicate_of: String,
}

/// A contribution and what became of it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ContributionJson {
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
    pub records: Vec<RecordJson>,
}

impl ContributionJson {
    pub(crate) fn of(contribution: &pb::Contribution) -> Self {
        Self {
            id: contribution.id.clone(),
            datanet_id: contribution.datanet_id.clone(),
            contributor: hex::encode(&contribution.contributor),
            status: contribution.status().as_str_name().trim_start_matches("CONTRIBUTION_STATUS_").to_lowercase(),
            reason: contribution.reason.clone(),
            file_name: contribution.file_name.clone(),
            size_bytes: contribution.size_bytes,
            quality_score: contribution.quality_score,
            bond: contribution.bond.map(u128::from).unwrap_or(0).to_string(),
            bond_state: contribution.bond_state.clone(),
            records: contribution
                .records
                .iter()
                .map(|record| RecordJson {
                    hash: hex::encode(record.hash.clone().unwrap_or_default().value),
                    quality_score: record.quality_score,
                    duplicate: record.duplicate,
                    duplicate_of: record.duplicate_of.clone(),
                })
                .collect(),
        }
    }
}

/// A sealed version of a Datanet.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SnapshotJson {
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
pub struct ProofJson {
    pub snapshot_id: String,
    pub merkle_root: String,
    pub records: Vec<RecordProofJson>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RecordProofJson {
    pub record_hash: String,
    pub leaf_index: u64,
    pub tree_size: u64,
    /// Sibling hashes from the leaf level up, hex.
    pub path: Vec<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewJson {
    pub approve: bool,
    #[serde(default)]
    pub reason: String,
    /// Over `openledger/review/v1\n<datanet id>\n<contribution id>\n<approve|reject>\n<reason>`.
    pub signature: SignatureJson,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LeaderboardEntryJson {
    pub contributor: String,
    pub accepted_records: u64,
    pub acceptance_ratio_ppt: u32,
    pub duplicates_rejected: u64,
}

/// A signed owner action: `signed_at` is Unix seconds (within 300 s of the server).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignedActionJson {
    pub public_key: String,
    pub signature: String,
    pub signed_at: i64,
}

/// A request to train on a Datanet, signed over `openledger/access-request/v1\n<datanet id>\n<purpose>`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessRequestJson {
    pub purpose: String,
    pub public_key: String,
    pub signature: String,
}

/// The owner's decision, signed over
/// `openledger/access-decision/v1\n<datanet id>\n<grant id>\n<approve|deny>\n<signed_at>`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessDecisionJson {
    pub approve: bool,
    pub public_key: String,
    pub signature: String,
    pub signed_at: i64,
}

/// An access grant: `requested`, `approved` or `denied`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GrantJson {
    pub id: String,
    pub datanet_id: String,
    pub grantee: String,
    pub state: String,
    pub purpose: String,
}

impl GrantJson {
    pub(crate) fn of(grant: &pb::AccessGrant) -> Self {
        Self {
            id: grant.id.clone(),
            datanet_id: grant.datanet_id.clone(),
            grantee: hex::encode(&grant.grantee),
            state: grant.state.clone(),
            purpose: grant.purpose.clone(),
        }
    }
}
