//! Datanets over REST, forwarded to the datanet-ingest service's gRPC API. Writes carry the
//! signer's ed25519 key and signature (hex) over the messages `openledger_datanet_ingest`'s
//! `signing` module defines; reads of private Datanets carry the signed caller headers
//! (`x-openledger-key`, `x-openledger-timestamp`, `x-openledger-signature`), passed through.

use axum::{
    Json, Router,
    body::Bytes,
    extract::{FromRequest, Multipart, Path, Query, Request, State},
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
    routing::{get, post},
};
use openledger_core::ErrorCode;
use openledger_proto::{
    common::v1::{Hash, PageRequest, Signature},
    datanet::v1::{self as pb, datanet_service_client::DatanetServiceClient},
};
use openledger_runtime::clients::ServiceChannel;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::rest::{ApiError, ErrorBody};

/// Bytes of one gRPC message of an upload.
const UPLOAD_CHUNK: usize = 256 * 1024;
const CALLER_HEADERS: [&str; 3] = ["x-openledger-key", "x-openledger-timestamp", "x-openledger-signature"];

pub fn routes(datanet: ServiceChannel) -> Router {
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
        .with_state(datanet)
}

fn client(datanet: &ServiceChannel) -> Result<DatanetServiceClient<tonic::transport::Channel>, ApiError> {
    Ok(DatanetServiceClient::new(datanet.channel()?))
}

/// A request with the caller headers (if any) passed through.
fn with_caller<T>(message: T, headers: &HeaderMap) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for name in CALLER_HEADERS {
        if let Some(value) = headers.get(name).and_then(|value| value.to_str().ok()).and_then(|v| v.parse().ok()) {
            request.metadata_mut().insert(name, value);
        }
    }
    request
}

fn hex_field(value: &str, field: &str) -> Result<Vec<u8>, ApiError> {
    hex::decode(value).map_err(|_| ApiError::new(ErrorCode::InvalidArgument, format!("{field} must be hex")))
}

/// An ed25519 signature, hex.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignatureJson {
    pub public_key: String,
    pub signature: String,
}

impl SignatureJson {
    fn wire(&self) -> Result<Signature, ApiError> {
        wire_signature(&self.public_key, &self.signature)
    }
}

/// A signature from its hex key and hex signature.
fn wire_signature(public_key: &str, signature: &str) -> Result<Signature, ApiError> {
    Ok(Signature { public_key: hex_field(public_key, "public_key")?, signature: hex_field(signature, "signature")? })
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

    fn of(datanet: &pb::Datanet) -> Self {
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
    pub next_page_token: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    #[serde(default)]
    pub tag: String,
    #[serde(default)]
    pub page_size: u32,
    #[serde(default)]
    pub page_token: String,
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
    fn of(contribution: &pb::Contribution) -> Self {
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

/// Create a Datanet, signed by its owner.
#[utoipa::path(post, path = "/v1/datanets", tag = "datanets", request_body = NewDatanet, responses(
    (status = 201, description = "Created (200 when the same owner repeats it)", body = DatanetJson),
    (status = 400, description = "Invalid definition", body = ErrorBody),
    (status = 401, description = "The signature does not verify", body = ErrorBody),
    (status = 409, description = "The slug is taken", body = ErrorBody),
))]
pub async fn create(
    State(datanet): State<ServiceChannel>,
    Json(new): Json<NewDatanet>,
) -> Result<impl IntoResponse, ApiError> {
    let request =
        pb::CreateDatanetRequest { datanet: Some(new.datanet.wire()?), signature: Some(new.signature.wire()?) };
    let created = client(&datanet)?.create_datanet(request).await?.into_inner();
    Ok((StatusCode::CREATED, Json(DatanetJson::of(&created))))
}

/// Datanets the caller may see, newest first.
#[utoipa::path(get, path = "/v1/datanets", tag = "datanets", params(ListQuery), responses(
    (status = 200, description = "A page of Datanets", body = DatanetPage),
))]
pub async fn list(
    State(datanet): State<ServiceChannel>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Result<Json<DatanetPage>, ApiError> {
    let request = pb::ListDatanetsRequest {
        page: Some(PageRequest { page_size: query.page_size, page_token: query.page_token }),
        tag: query.tag,
    };
    let page = client(&datanet)?.list_datanets(with_caller(request, &headers)).await?.into_inner();
    Ok(Json(DatanetPage {
        datanets: page.datanets.iter().map(DatanetJson::of).collect(),
        next_page_token: page.page.unwrap_or_default().next_page_token,
    }))
}

/// A Datanet by id or slug (private ones only for the owner, validators and grantees).
#[utoipa::path(get, path = "/v1/datanets/{id}", tag = "datanets", params(("id" = String, Path, description = "Id or slug")), responses(
    (status = 200, description = "The Datanet", body = DatanetJson),
    (status = 404, description = "No such Datanet (or not visible to the caller)", body = ErrorBody),
))]
pub async fn show(
    State(datanet): State<ServiceChannel>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<DatanetJson>, ApiError> {
    let found = client(&datanet)?.get_datanet(with_caller(pb::GetDatanetRequest { id_or_slug: id }, &headers)).await?;
    Ok(Json(DatanetJson::of(found.get_ref())))
}

/// Contribute a file. Either `multipart/form-data` with a `file` part (its file name and
/// content type decide the parser) and `public_key`, `signature`, optional `account_id`
/// fields; or a JSON object / JSONL body with the headers `x-openledger-key`,
/// `x-openledger-signature`, optional `x-openledger-account` and `x-openledger-file-name`
/// (default `upload.jsonl`). The signature covers
/// `openledger/contribution/v1\n<datanet id>\n<file name>\n<file BLAKE3 hex>\n<account or ->`.
#[utoipa::path(post, path = "/v1/datanets/{id}/contributions", tag = "datanets", params(("id" = String, Path, description = "Datanet id")), responses(
    (status = 201, description = "Taken and decided (accepted, pending review, rejected or duplicate)", body = ContributionJson),
    (status = 400, description = "The file cannot be parsed or does not fit the schema", body = ErrorBody),
    (status = 401, description = "The signature does not verify", body = ErrorBody),
    (status = 413, description = "The file is larger than the Datanet takes", body = ErrorBody),
    (status = 429, description = "Over the daily limits", body = ErrorBody),
))]
pub async fn contribute(
    State(datanet): State<ServiceChannel>,
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
        signature: Some(Signature { public_key: upload.public_key, signature: upload.signature }),
        contributor_account_id: upload.account_id.map(Into::into),
    };
    let mut messages = vec![pb::ContributeRequest { part: Some(pb::contribute_request::Part::Header(header)) }];
    messages.extend(
        upload
            .bytes
            .chunks(UPLOAD_CHUNK)
            .map(|chunk| pb::ContributeRequest { part: Some(pb::contribute_request::Part::Chunk(chunk.to_vec())) }),
    );
    let taken = client(&datanet)?.contribute(futures::stream::iter(messages)).await?.into_inner();
    Ok((StatusCode::CREATED, Json(ContributionJson::of(&taken))))
}

struct RestUpload {
    file_name: String,
    media_type: String,
    bytes: Bytes,
    public_key: Vec<u8>,
    signature: Vec<u8>,
    account_id: Option<u128>,
}

fn parse_account(text: &str) -> Result<Option<u128>, ApiError> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| ApiError::new(ErrorCode::InvalidArgument, "the account id must be a decimal number"))
}

async fn body_upload(request: Request) -> Result<RestUpload, ApiError> {
    let (parts, body) = request.into_parts();
    let header = |name: &str| {
        parts.headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_owned).unwrap_or_default()
    };
    let (key, signature, account) =
        (header("x-openledger-key"), header("x-openledger-signature"), header("x-openledger-account"));
    let file_name =
        Some(header("x-openledger-file-name")).filter(|name| !name.is_empty()).unwrap_or("upload.jsonl".into());
    if key.is_empty() || signature.is_empty() {
        return Err(ApiError::new(
            ErrorCode::Unauthenticated,
            "a JSON or JSONL contribution needs the x-openledger-key and x-openledger-signature headers",
        ));
    }
    let upload = RestUpload {
        media_type: "application/jsonl".into(),
        file_name,
        bytes: Bytes::new(),
        public_key: hex_field(&key, "x-openledger-key")?,
        signature: hex_field(&signature, "x-openledger-signature")?,
        account_id: parse_account(&account)?,
    };
    // The edge's body limit layer bounds what is read here.
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|error| ApiError::new(ErrorCode::InvalidArgument, format!("reading the body: {error}")))?;
    Ok(RestUpload { bytes, ..upload })
}

async fn multipart_upload(request: Request) -> Result<RestUpload, ApiError> {
    let bad = |message: String| ApiError::new(ErrorCode::InvalidArgument, message);
    let mut form = Multipart::from_request(request, &()).await.map_err(|error| bad(format!("multipart: {error}")))?;
    let (mut file, mut key, mut signature, mut account) = (None, String::new(), String::new(), String::new());
    while let Some(field) = form.next_field().await.map_err(|error| bad(format!("multipart: {error}")))? {
        let name = field.name().unwrap_or_default().to_owned();
        match name.as_str() {
            "file" => {
                let file_name = field.file_name().unwrap_or("upload").to_owned();
                let media_type = field.content_type().unwrap_or_default().to_owned();
                let bytes = field.bytes().await.map_err(|error| bad(format!("multipart file: {error}")))?;
                file = Some((file_name, media_type, bytes));
            }
            "public_key" | "signature" | "account_id" => {
                let text = field.text().await.map_err(|error| bad(format!("multipart {name}: {error}")))?;
                match name.as_str() {
                    "public_key" => key = text,
                    "signature" => signature = text,
                    _ => account = text,
                }
            }
            other => {
                return Err(bad(format!(
                    "unknown multipart field {other:?}: expected file, public_key, signature, account_id"
                )));
            }
        }
    }
    let (file_name, media_type, bytes) = file.ok_or_else(|| bad("the multipart form needs a `file` part".into()))?;
    Ok(RestUpload {
        file_name,
        media_type,
        bytes,
        public_key: hex_field(&key, "public_key")?,
        signature: hex_field(&signature, "signature")?,
        account_id: parse_account(&account)?,
    })
}

/// A contribution and the fate of each record.
#[utoipa::path(get, path = "/v1/datanets/{id}/contributions/{contribution_id}", tag = "datanets", params(
    ("id" = String, Path, description = "Datanet id"), ("contribution_id" = String, Path, description = "Contribution id")), responses(
    (status = 200, description = "The contribution", body = ContributionJson),
    (status = 404, description = "Not found", body = ErrorBody),
))]
pub async fn contribution(
    State(datanet): State<ServiceChannel>,
    headers: HeaderMap,
    Path((id, contribution_id)): Path<(String, String)>,
) -> Result<Json<ContributionJson>, ApiError> {
    let request = pb::GetContributionRequest { datanet_id: id, contribution_id };
    let found = client(&datanet)?.get_contribution(with_caller(request, &headers)).await?;
    Ok(Json(ContributionJson::of(found.get_ref())))
}

/// The owner or a validator approves or rejects a contribution pending review.
#[utoipa::path(post, path = "/v1/datanets/{id}/contributions/{contribution_id}/review", tag = "datanets", request_body = ReviewJson, params(
    ("id" = String, Path, description = "Datanet id"), ("contribution_id" = String, Path, description = "Contribution id")), responses(
    (status = 200, description = "Decided", body = ContributionJson),
    (status = 403, description = "Not the owner or a validator", body = ErrorBody),
    (status = 412, description = "Not pending review", body = ErrorBody),
))]
pub async fn review(
    State(datanet): State<ServiceChannel>,
    Path((id, contribution_id)): Path<(String, String)>,
    Json(review): Json<ReviewJson>,
) -> Result<Json<ContributionJson>, ApiError> {
    let request = pb::ReviewContributionRequest {
        datanet_id: id,
        contribution_id,
        approve: review.approve,
        reason: review.reason,
        signature: Some(review.signature.wire()?),
    };
    let decided = client(&datanet)?.review_contribution(request).await?;
    Ok(Json(ContributionJson::of(decided.get_ref())))
}

/// Seal the accepted records as the next version; the owner signs
/// `openledger/publish/v1\n<datanet id>\n<signed_at>` (Unix seconds, within 300 s of the server).
#[utoipa::path(post, path = "/v1/datanets/{id}/snapshots", tag = "datanets", request_body = SignedActionJson, params(("id" = String, Path, description = "Datanet id")), responses(
    (status = 201, description = "The sealed version (the latest one when nothing changed)", body = SnapshotJson),
    (status = 403, description = "Not the owner", body = ErrorBody),
))]
pub async fn publish(
    State(datanet): State<ServiceChannel>,
    Path(id): Path<String>,
    Json(publish): Json<SignedActionJson>,
) -> Result<impl IntoResponse, ApiError> {
    let signature = wire_signature(&publish.public_key, &publish.signature)?;
    let request =
        pb::PublishSnapshotRequest { datanet_id: id, signature: Some(signature), signed_at: publish.signed_at };
    let sealed = client(&datanet)?.publish_snapshot(request).await?.into_inner();
    let snapshot = SnapshotJson {
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
    (status = 200, description = "The proofs", body = ProofJson),
    (status = 404, description = "No such version, or no records of the contribution in it", body = ErrorBody),
))]
pub async fn proof(
    State(datanet): State<ServiceChannel>,
    headers: HeaderMap,
    Path((id, sid, contribution_id)): Path<(String, String, String)>,
) -> Result<Json<ProofJson>, ApiError> {
    let request = pb::GetInclusionProofRequest { datanet_id: id, snapshot_id: sid, contribution_id };
    let proof = client(&datanet)?.get_inclusion_proof(with_caller(request, &headers)).await?.into_inner();
    let hex_of = |hash: Option<&Hash>| hex::encode(hash.map(|hash| hash.value.as_slice()).unwrap_or_default());
    let root = proof.records.first().and_then(|record| record.proof.as_ref()).and_then(|p| p.root.as_ref());
    Ok(Json(ProofJson {
        snapshot_id: proof.snapshot_id.clone(),
        merkle_root: hex_of(root),
        records: proof
            .records
            .iter()
            .map(|record| {
                let inclusion = record.proof.clone().unwrap_or_default();
                RecordProofJson {
                    record_hash: hex_of(record.record_hash.as_ref()),
                    leaf_index: inclusion.leaf_index,
                    tree_size: inclusion.tree_size,
                    path: inclusion.path.iter().map(|node| hex::encode(&node.value)).collect(),
                }
            })
            .collect(),
    }))
}

/// Contributors by accepted records.
#[utoipa::path(get, path = "/v1/datanets/{id}/leaderboard", tag = "datanets", params(("id" = String, Path, description = "Datanet id")), responses(
    (status = 200, description = "The leaderboard", body = [LeaderboardEntryJson]),
))]
pub async fn leaderboard(
    State(datanet): State<ServiceChannel>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Vec<LeaderboardEntryJson>>, ApiError> {
    let request = pb::GetLeaderboardRequest { datanet_id: id, limit: 100 };
    let board = client(&datanet)?.get_leaderboard(with_caller(request, &headers)).await?.into_inner();
    Ok(Json(
        board
            .entries
            .iter()
            .map(|entry| LeaderboardEntryJson {
                contributor: hex::encode(&entry.contributor),
                accepted_records: entry.accepted_records,
                acceptance_ratio_ppt: entry.acceptance_ratio_ppt,
                duplicates_rejected: entry.duplicates_rejected,
            })
            .collect(),
    ))
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
    fn of(grant: &pb::AccessGrant) -> Self {
        Self {
            id: grant.id.clone(),
            datanet_id: grant.datanet_id.clone(),
            grantee: hex::encode(&grant.grantee),
            state: grant.state.clone(),
            purpose: grant.purpose.clone(),
        }
    }
}

/// The owner takes a record out of the draft, signed over
/// `openledger/remove-record/v1\n<datanet id>\n<record hash hex>\n<signed_at>`.
#[utoipa::path(post, path = "/v1/datanets/{id}/records/{hash}/remove", tag = "datanets", request_body = SignedActionJson, params(
    ("id" = String, Path, description = "Datanet id"), ("hash" = String, Path, description = "Record BLAKE3, hex")), responses(
    (status = 204, description = "Removed from the draft"),
    (status = 403, description = "Not the owner", body = ErrorBody),
    (status = 404, description = "No such accepted or pending record", body = ErrorBody),
))]
pub async fn remove_record(
    State(datanet): State<ServiceChannel>,
    Path((id, hash)): Path<(String, String)>,
    Json(action): Json<SignedActionJson>,
) -> Result<StatusCode, ApiError> {
    let signature = wire_signature(&action.public_key, &action.signature)?;
    let request = pb::RemoveRecordRequest {
        datanet_id: id,
        record_hash: Some(Hash { value: hex_field(&hash, "the record hash")? }),
        signature: Some(signature),
        signed_at: action.signed_at,
    };
    client(&datanet)?.remove_record(request).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Ask to train on a Datanet (a repeated request returns the open grant).
#[utoipa::path(post, path = "/v1/datanets/{id}/access", tag = "datanets", request_body = AccessRequestJson, params(("id" = String, Path, description = "Datanet id")), responses(
    (status = 201, description = "The grant, requested (or the open one)", body = GrantJson),
))]
pub async fn request_access(
    State(datanet): State<ServiceChannel>,
    Path(id): Path<String>,
    Json(asked): Json<AccessRequestJson>,
) -> Result<impl IntoResponse, ApiError> {
    let signature = wire_signature(&asked.public_key, &asked.signature)?;
    let request = pb::RequestAccessRequest { datanet_id: id, purpose: asked.purpose, signature: Some(signature) };
    let grant = client(&datanet)?.request_access(request).await?.into_inner();
    Ok((StatusCode::CREATED, Json(GrantJson::of(&grant))))
}

/// The owner approves or denies an access request.
#[utoipa::path(post, path = "/v1/datanets/{id}/access/{grant_id}", tag = "datanets", request_body = AccessDecisionJson, params(
    ("id" = String, Path, description = "Datanet id"), ("grant_id" = String, Path, description = "Grant id")), responses(
    (status = 200, description = "The decided grant", body = GrantJson),
    (status = 403, description = "Not the owner", body = ErrorBody),
))]
pub async fn decide_access(
    State(datanet): State<ServiceChannel>,
    Path((id, grant_id)): Path<(String, String)>,
    Json(decision): Json<AccessDecisionJson>,
) -> Result<Json<GrantJson>, ApiError> {
    let signature = wire_signature(&decision.public_key, &decision.signature)?;
    let request = pb::DecideAccessRequest {
        datanet_id: id,
        grant_id,
        approve: decision.approve,
        signature: Some(signature),
        signed_at: decision.signed_at,
    };
    let grant = client(&datanet)?.decide_access(request).await?.into_inner();
    Ok(Json(GrantJson::of(&grant)))
}
