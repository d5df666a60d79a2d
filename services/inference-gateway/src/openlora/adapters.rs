//! `/v1/adapters/**`: the adapter registry's REST routes, forwarded to model-factory.
//!
//! - `POST /v1/adapters` imports an adapter: `multipart/form-data` with the two files
//!   (`adapter_config`, `adapter_model`) and the fields as text parts, or JSON naming a `source`
//!   (an object-store key prefix or `hf://owner/name[@rev]`). Signed by the key owning the
//!   `owned_by` account over `openledger_signing::adapter_import_message`.
//! - `GET /v1/adapters` lists public adapters (plus the caller's own when the signed caller
//!   headers are sent), `GET /v1/adapters/{id}` one adapter: a private or allow-list adapter
//!   answers only its owner (caller headers), 404 to anyone else.
//! - `PATCH /v1/adapters/{id}` changes prices, visibility, allow-list or description;
//!   `DELETE /v1/adapters/{id}` unlists (in-flight requests finish). Both signed by the owner.
//!
//! Amounts (prices per 1000 tokens) and account ids are decimal strings of u128; hashes and
//! keys are lowercase hex.

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
    common::v1::Uint128,
    modelfactory::v1::{self as pb, model_factory_service_client::ModelFactoryServiceClient},
    u128_of,
};
use openledger_runtime::clients::ServiceChannel;
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;
use utoipa::{IntoParams, ToSchema};

use crate::{
    datanets::Signature,
    edge::{
        ApiError, ErrorBody, Upstream,
        body::JsonBody,
        page::{PageQuery, next_cursor},
        upstream::with_caller,
    },
};

/// model-factory as the state of these routes.
pub type ModelFactory = Upstream<ModelFactoryServiceClient<Channel>>;

/// Largest gRPC message the edge sends model-factory (an inline import); the edge's body limit
/// is usually lower.
const MAX_UPSTREAM_MESSAGE_BYTES: usize = 256 << 20;

fn client(channel: Channel) -> ModelFactoryServiceClient<Channel> {
    ModelFactoryServiceClient::new(channel).max_encoding_message_size(MAX_UPSTREAM_MESSAGE_BYTES)
}

/// Routes under `/v1/adapters`.
pub fn routes(model_factory: ServiceChannel) -> Router {
    Router::new()
        .route("/v1/adapters", post(import_adapter).get(list_adapters))
        .route("/v1/adapters/{id}", get(get_adapter).patch(update_adapter).delete(unlist_adapter))
        .with_state(ModelFactory::new(model_factory, client))
}

/// One of an adapter's files.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AdapterFile {
    /// `adapter_config.json` or `adapter_model.safetensors`.
    pub name: String,
    /// BLAKE3 of the file, hex.
    pub blake3: String,
    pub size_bytes: u64,
}

/// Where an adapter comes from: its base and, for trained adapters, the sealed Datanet
/// version it was trained on.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Lineage {
    /// Where this lineage is served.
    pub href: String,
    pub base_model: String,
    /// BLAKE3 of the base model file, hex.
    pub base_model_hash: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datanet_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Merkle root of the Datanet version, hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_root: Option<String>,
    /// Where the files came from: `upload`, an object-store prefix, `hf://…` or `job:<id>`.
    pub source: String,
}

/// A registry adapter: what `model` names in an inference request.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Adapter {
    pub id: String,
    /// Always `adapter`.
    pub object: String,
    /// The owner's ledger account (paid the owner's share of fees), decimal.
    pub owned_by: String,
    /// The owner's ed25519 public key (signs updates), hex.
    pub owner_key: String,
    /// The base model's id.
    pub parent: String,
    /// Base units per 1000 prompt tokens, decimal.
    pub price_in: String,
    /// Base units per 1000 completion tokens, decimal.
    pub price_out: String,
    /// `public`, `private` or `allow_list`.
    pub visibility: String,
    /// Accounts that may call an `allow_list` adapter besides its owner, decimal.
    pub allowed_accounts: Vec<String>,
    /// False once unlisted: no new requests; in-flight ones finish.
    pub listed: bool,
    /// `adapter_config.json`, then `adapter_model.safetensors`.
    pub files: Vec<AdapterFile>,
    pub rank: u32,
    pub target_modules: Vec<String>,
    pub description: String,
    /// Object-store key of the PEFT directory.
    pub location: String,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds of the last change.
    pub updated: i64,
    pub lineage: Lineage,
}

fn hex_of(hash: Option<&openledger_proto::common::v1::Hash>) -> String {
    hash.map(|hash| hex::encode(&hash.value)).unwrap_or_default()
}

fn visibility_name(visibility: i32) -> String {
    match pb::Visibility::try_from(visibility) {
        Ok(pb::Visibility::Public) => "public",
        Ok(pb::Visibility::Private) => "private",
        Ok(pb::Visibility::AllowList) => "allow_list",
        _ => "unspecified",
    }
    .to_owned()
}

fn visibility_of(name: &str) -> Result<pb::Visibility, ApiError> {
    match name {
        "public" => Ok(pb::Visibility::Public),
        "private" => Ok(pb::Visibility::Private),
        "allow_list" => Ok(pb::Visibility::AllowList),
        other => Err(ApiError::invalid(format!("visibility {other:?} must be public, private or allow_list"))),
    }
}

impl From<&pb::Adapter> for Adapter {
    fn from(adapter: &pb::Adapter) -> Self {
        let some = |text: &str| (!text.is_empty()).then(|| text.to_owned());
        Self {
            id: adapter.id.clone(),
            object: "adapter".to_owned(),
            owned_by: u128_of(adapter.owner_account_id.as_ref()).to_string(),
            owner_key: hex::encode(&adapter.owner),
            parent: adapter.base_model.clone(),
            price_in: u128_of(adapter.price_in.as_ref()).to_string(),
            price_out: u128_of(adapter.price_out.as_ref()).to_string(),
            visibility: visibility_name(adapter.visibility),
            allowed_accounts: adapter.allowed_accounts.iter().map(|id| u128::from(*id).to_string()).collect(),
            listed: adapter.listed,
            files: adapter
                .files
                .iter()
                .map(|file| AdapterFile {
                    name: file.name.clone(),
                    blake3: hex_of(file.hash.as_ref()),
                    size_bytes: file.size_bytes,
                })
                .collect(),
            rank: adapter.rank,
            target_modules: adapter.target_modules.clone(),
            description: adapter.description.clone(),
            location: adapter.location.clone(),
            created: adapter.created_at_ms.div_euclid(1000),
            updated: adapter.updated_at_ms.div_euclid(1000),
            lineage: Lineage {
                href: format!("/v1/adapters/{}", adapter.id),
                base_model: adapter.base_model.clone(),
                base_model_hash: hex_of(adapter.base_model_hash.as_ref()),
                datanet_id: some(&adapter.datanet_id),
                snapshot_id: some(&adapter.snapshot_id),
                snapshot_root: adapter.snapshot_root.as_ref().map(|root| hex::encode(&root.value)),
                source: adapter.source.clone(),
            },
        }
    }
}

/// A page of adapters.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AdapterPage {
    pub adapters: Vec<Adapter>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// An import naming its files' `source` (JSON). Uploads send the same fields as
/// `multipart/form-data` text parts (`allowed_accounts` comma-separated, `public_key` and
/// `signature` as two parts) with the files as `adapter_config` and `adapter_model`.
/// The owner signs `openledger/adapter/import/v1\n<id>\n<base_model>\n<owned_by>\n<files>\n<price_in>\n<price_out>\n<visibility>\n<allowed accounts or ->\n<signed_at>\n<description>`
/// where `<files>` is `source <source>` or `upload <config BLAKE3 hex> <weights BLAKE3 hex>`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportAdapterRequest {
    /// `[A-Za-z0-9._-]{1,128}`, not starting with `.`.
    #[schema(pattern = "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")]
    pub id: String,
    /// The base model's id; empty or absent for the platform's base.
    #[serde(default)]
    pub base_model: String,
    /// An object-store key prefix holding the two files, or `hf://owner/name[@revision]`
    /// (printable ASCII without spaces; the service refuses spaces and control characters).
    #[schema(min_length = 1, max_length = 1024, pattern = "^[!-~]+$")]
    pub source: String,
    /// The owner's ledger account, decimal.
    #[schema(pattern = "^[1-9][0-9]{0,38}$")]
    pub owned_by: String,
    /// Base units per 1000 prompt tokens, decimal (default 0).
    #[serde(default)]
    #[schema(pattern = "^[0-9]{0,39}$")]
    pub price_in: String,
    #[serde(default)]
    #[schema(pattern = "^[0-9]{0,39}$")]
    pub price_out: String,
    /// `public` (default), `private` or `allow_list`.
    #[serde(default)]
    #[schema(pattern = "^(public|private|allow_list)$")]
    pub visibility: Option<String>,
    #[serde(default)]
    #[schema(value_type = Vec<AccountIdText>, max_items = 1000)]
    pub allowed_accounts: Vec<String>,
    #[serde(default)]
    #[schema(max_length = 1000)]
    pub description: String,
    /// Unix seconds; within 300 s of the server's clock.
    pub signed_at: i64,
    pub signature: Signature,
}

/// A ledger account id, decimal.
#[derive(Debug, ToSchema)]
#[schema(pattern = "^[0-9]{1,39}$")]
#[allow(dead_code)]
pub struct AccountIdText(String);

/// The multipart form of an import (documentation only: the parts are read one by one): the
/// fields of [`ImportAdapterRequest`] but `source`, as text parts, and the two files.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ImportAdapterUpload {
    #[schema(pattern = "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")]
    id: String,
    #[serde(default)]
    base_model: String,
    #[schema(pattern = "^[1-9][0-9]{0,38}$")]
    owned_by: String,
    #[serde(default)]
    #[schema(pattern = "^[0-9]{0,39}$")]
    price_in: String,
    #[serde(default)]
    #[schema(pattern = "^[0-9]{0,39}$")]
    price_out: String,
    #[serde(default)]
    #[schema(pattern = "^(public|private|allow_list)$")]
    visibility: String,
    /// Comma-separated account ids.
    #[serde(default)]
    #[schema(pattern = "^[0-9]{1,39}(,[0-9]{1,39})*$")]
    allowed_accounts: String,
    #[serde(default)]
    #[schema(max_length = 1000)]
    description: String,
    signed_at: i64,
    /// 64 hex characters.
    #[schema(pattern = "^[0-9a-fA-F]{64}$")]
    public_key: String,
    /// 128 hex characters.
    #[schema(pattern = "^[0-9a-fA-F]{128}$")]
    signature: String,
    /// adapter_config.json
    #[schema(value_type = String, format = Binary, min_length = 1)]
    adapter_config: Vec<u8>,
    /// adapter_model.safetensors
    #[schema(value_type = String, format = Binary, min_length = 1)]
    adapter_model: Vec<u8>,
}

/// A signed change by the owner; absent fields stay as they are. Signs
/// `openledger/adapter/update/v1\n<id>\n<price_in or ->\n<price_out or ->\n<visibility or ->\n<[accounts] or ->\n<signed_at>\n<=description or ->`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAdapterRequest {
    #[serde(default)]
    #[schema(pattern = "^[0-9]{1,39}$")]
    pub price_in: Option<String>,
    #[serde(default)]
    #[schema(pattern = "^[0-9]{1,39}$")]
    pub price_out: Option<String>,
    #[serde(default)]
    #[schema(pattern = "^(public|private|allow_list)$")]
    pub visibility: Option<String>,
    /// Replaces the allow-list (an empty list empties it).
    #[serde(default)]
    #[schema(value_type = Option<Vec<AccountIdText>>, max_items = 1000)]
    pub allowed_accounts: Option<Vec<String>>,
    #[serde(default)]
    #[schema(max_length = 1000)]
    pub description: Option<String>,
    pub signed_at: i64,
    pub signature: Signature,
}

/// The owner's signature over `openledger/adapter/unlist/v1\n<id>\n<signed_at>`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnlistAdapterRequest {
    pub signed_at: i64,
    pub signature: Signature,
}

/// What an adapter list holds besides the page.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AdapterFilter {
    /// Also unlisted adapters (default false).
    pub include_unlisted: Option<bool>,
}

fn amount(text: &str, field: &str) -> Result<Option<Uint128>, ApiError> {
    if text.is_empty() {
        return Ok(Some(0u128.into()));
    }
    crate::ledger::parse_u128(text, field).map(|value| Some(value.into()))
}

fn account_ids(ids: &[String], field: &str) -> Result<Vec<Uint128>, ApiError> {
    ids.iter().map(|id| crate::ledger::parse_u128(id.trim(), field).map(Into::into)).collect()
}

impl ImportAdapterRequest {
    fn wire(&self, config: Vec<u8>, weights: Vec<u8>) -> Result<pb::ImportAdapterRequest, ApiError> {
        let visibility = visibility_of(self.visibility.as_deref().unwrap_or("public"))?;
        Ok(pb::ImportAdapterRequest {
            id: self.id.clone(),
            base_model: self.base_model.clone(),
            adapter_config_json: config,
            adapter_model_safetensors: weights,
            source: self.source.clone(),
            owner_account_id: Some(crate::ledger::parse_u128(&self.owned_by, "owned_by")?.into()),
            price_in: amount(&self.price_in, "price_in")?,
            price_out: amount(&self.price_out, "price_out")?,
            visibility: visibility as i32,
            allowed_accounts: account_ids(&self.allowed_accounts, "allowed_accounts")?,
            description: self.description.clone(),
            signed_at: self.signed_at,
            signature: Some((&self.signature).try_into()?),
        })
    }
}

/// Import an adapter (uploaded files or a source), validated against the base model.
#[utoipa::path(post, path = "/v1/adapters", tag = "adapters",
    request_body(content(
        (ImportAdapterRequest = "application/json"),
        (ImportAdapterUpload = "multipart/form-data"),
    )),
    responses(
        (status = 201, description = "Imported; the same import again answers 201 with the adapter as it is", body = Adapter),
        (status = 400, description = "The adapter does not fit the base model (the message names the tensor, shape or setting), or a field is invalid", body = ErrorBody),
        (status = 401, description = "The signature does not verify or is stale", body = ErrorBody),
        (status = 403, description = "The signing key does not own the owned_by account", body = ErrorBody),
        (status = 409, description = "The id is taken", body = ErrorBody),
        (status = 412, description = "No base model is configured, the account does not exist, or the source cannot be read", body = ErrorBody),
    ))]
pub async fn import_adapter(
    State(model_factory): State<ModelFactory>,
    request: Request,
) -> Result<impl IntoResponse, ApiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let wire = if content_type.starts_with("multipart/form-data") {
        multipart_import(request).await?
    } else {
        let JsonBody(import) = JsonBody::<ImportAdapterRequest>::from_request(request, &()).await?;
        if import.source.is_empty() {
            return Err(ApiError::invalid(
                "a JSON import names a source; upload the files as multipart/form-data (adapter_config, adapter_model)",
            ));
        }
        import.wire(Vec::new(), Vec::new())?
    };
    let adapter = model_factory.client()?.import_adapter(wire).await?.into_inner();
    Ok((StatusCode::CREATED, Json(Adapter::from(&adapter))))
}

async fn multipart_import(request: Request) -> Result<pb::ImportAdapterRequest, ApiError> {
    let bad = |message: String| ApiError::invalid(message);
    let mut form = Multipart::from_request(request, &()).await.map_err(|error| bad(format!("multipart: {error}")))?;
    let mut import = ImportAdapterRequest {
        id: String::new(),
        base_model: String::new(),
        source: String::new(),
        owned_by: String::new(),
        price_in: String::new(),
        price_out: String::new(),
        visibility: None,
        allowed_accounts: Vec::new(),
        description: String::new(),
        signed_at: 0,
        signature: Signature { public_key: String::new(), signature: String::new() },
    };
    let (mut config, mut weights) = (None::<Bytes>, None::<Bytes>);
    while let Some(field) = form.next_field().await.map_err(|error| bad(format!("multipart: {error}")))? {
        let name = field.name().unwrap_or_default().to_owned();
        if name == "adapter_config" || name == "adapter_model" {
            let bytes = field.bytes().await.map_err(|error| bad(format!("multipart {name}: {error}")))?;
            *(if name == "adapter_config" { &mut config } else { &mut weights }) = Some(bytes);
            continue;
        }
        let text = field.text().await.map_err(|error| bad(format!("multipart {name}: {error}")))?;
        match name.as_str() {
            "id" => import.id = text,
            "base_model" => import.base_model = text,
            "owned_by" => import.owned_by = text,
            "price_in" => import.price_in = text,
            "price_out" => import.price_out = text,
            "visibility" => import.visibility = Some(text),
            "allowed_accounts" => {
                import.allowed_accounts =
                    text.split(',').map(str::trim).filter(|id| !id.is_empty()).map(str::to_owned).collect();
            }
            "description" => import.description = text,
            "signed_at" => {
                import.signed_at = text.trim().parse().map_err(|_| bad("signed_at must be Unix seconds".to_owned()))?;
            }
            "public_key" => import.signature.public_key = text,
            "signature" => import.signature.signature = text,
            other => {
                return Err(bad(format!(
                    "unknown multipart field {other:?}: expected adapter_config, adapter_model, id, base_model, \
                     owned_by, price_in, price_out, visibility, allowed_accounts, description, signed_at, \
                     public_key, signature"
                )));
            }
        }
    }
    let (Some(config), Some(weights)) = (config, weights) else {
        return Err(bad("an upload needs both files: adapter_config (adapter_config.json) and adapter_model \
             (adapter_model.safetensors)"
            .to_owned()));
    };
    import.wire(config.to_vec(), weights.to_vec())
}

/// Adapters in id order: public ones, plus the caller's own (any visibility) when the signed
/// caller headers are sent.
#[utoipa::path(get, path = "/v1/adapters", tag = "adapters", params(AdapterFilter, PageQuery), responses(
    (status = 200, description = "A page of adapters", body = AdapterPage),
))]
pub async fn list_adapters(
    State(model_factory): State<ModelFactory>,
    headers: HeaderMap,
    Query(filter): Query<AdapterFilter>,
    Query(page): Query<PageQuery>,
) -> Result<Json<AdapterPage>, ApiError> {
    let request = pb::ListAdaptersRequest {
        page: Some(page.request()?),
        caller_account_id: None,
        include_unlisted: filter.include_unlisted.unwrap_or(false),
    };
    let page = model_factory.client()?.list_adapters(with_caller(request, &headers)).await?.into_inner();
    Ok(Json(AdapterPage {
        adapters: page.adapters.iter().map(Adapter::from).collect(),
        next_cursor: next_cursor(page.page),
    }))
}

/// The key of a request's verified caller headers, if it sends them (401 if they do not verify).
fn caller_key(headers: &HeaderMap) -> Result<Option<openledger_signing::Key>, ApiError> {
    let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_owned);
    let [Some(key), Some(at), Some(signed)] = openledger_signing::headers::CALLER.map(text) else {
        return Ok(None);
    };
    openledger_signing::verify_caller(&key, &at, &signed, openledger_signing::now_unix())
        .map(Some)
        .map_err(|error| ApiError::new(error.code(), error.to_string()))
}

/// One adapter, listed or not. Private and allow-list adapters answer only their owner
/// (signed caller headers); anyone else gets 404.
#[utoipa::path(get, path = "/v1/adapters/{id}", tag = "adapters", params(("id" = String, Path, description = "Adapter id")), responses(
    (status = 200, description = "The adapter", body = Adapter),
    (status = 404, description = "No such adapter (or not visible to the caller)", body = ErrorBody),
))]
pub async fn get_adapter(
    State(model_factory): State<ModelFactory>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Adapter>, ApiError> {
    let caller = caller_key(&headers)?;
    let adapter = model_factory.client()?.get_adapter(pb::GetAdapterRequest { id: id.clone() }).await?.into_inner();
    let public = adapter.visibility == pb::Visibility::Public as i32;
    if !public && caller.is_none_or(|key| key.as_slice() != adapter.owner.as_slice()) {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no adapter {id:?}: list adapters with GET /v1/adapters"),
        ));
    }
    Ok(Json(Adapter::from(&adapter)))
}

/// Change an adapter's prices, visibility, allow-list or description (its owner, signed).
#[utoipa::path(patch, path = "/v1/adapters/{id}", tag = "adapters", params(("id" = String, Path, description = "Adapter id")),
    request_body = UpdateAdapterRequest, responses(
    (status = 200, description = "The adapter as changed", body = Adapter),
    (status = 403, description = "The signer does not own the adapter", body = ErrorBody),
    (status = 404, description = "No such adapter", body = ErrorBody),
))]
pub async fn update_adapter(
    State(model_factory): State<ModelFactory>,
    Path(id): Path<String>,
    JsonBody(change): JsonBody<UpdateAdapterRequest>,
) -> Result<Json<Adapter>, ApiError> {
    let price = |text: &Option<String>, field: &str| -> Result<Option<Uint128>, ApiError> {
        text.as_deref().map(|text| crate::ledger::parse_u128(text, field).map(Into::into)).transpose()
    };
    let request = pb::UpdateAdapterRequest {
        id,
        price_in: price(&change.price_in, "price_in")?,
        price_out: price(&change.price_out, "price_out")?,
        visibility: change.visibility.as_deref().map(visibility_of).transpose()?.map(|visibility| visibility as i32),
        set_allowed_accounts: change.allowed_accounts.is_some(),
        allowed_accounts: account_ids(change.allowed_accounts.as_deref().unwrap_or_default(), "allowed_accounts")?,
        description: change.description,
        signed_at: change.signed_at,
        signature: Some((&change.signature).try_into()?),
    };
    let adapter = model_factory.client()?.update_adapter(request).await?.into_inner();
    Ok(Json(Adapter::from(&adapter)))
}

/// Unlist an adapter (its owner, signed): no new requests may name it; in-flight ones finish.
#[utoipa::path(delete, path = "/v1/adapters/{id}", tag = "adapters", params(("id" = String, Path, description = "Adapter id")),
    request_body = UnlistAdapterRequest, responses(
    (status = 200, description = "The adapter, unlisted (again: unchanged)", body = Adapter),
    (status = 403, description = "The signer does not own the adapter", body = ErrorBody),
    (status = 404, description = "No such adapter", body = ErrorBody),
))]
pub async fn unlist_adapter(
    State(model_factory): State<ModelFactory>,
    Path(id): Path<String>,
    JsonBody(unlist): JsonBody<UnlistAdapterRequest>,
) -> Result<Json<Adapter>, ApiError> {
    let request =
        pb::UnlistAdapterRequest { id, signed_at: unlist.signed_at, signature: Some((&unlist.signature).try_into()?) };
    let adapter = model_factory.client()?.unlist_adapter(request).await?.into_inner();
    Ok(Json(Adapter::from(&adapter)))
}

#[cfg(test)]
mod tests {
    //! The routes against the real registry (model-factory's gRPC API over SQLite, a file
    //! object store and a tiny GGUF base) with a scripted ledger: the REST shapes, the multipart
    //! upload, validation errors through the one gRPC→HTTP mapping, signed changes, and
    //! private adapters hidden from everyone but their owner.

    use std::sync::Arc;

    use axum::body::Body;
    use ed25519_dalek::SigningKey;
    use http_body_util::BodyExt;
    use openledger_core::{ContentHash, ServiceKind};
    use openledger_ml::{
        ModelConfig, Target,
        testing::{TinyModel, TinySpec, write_peft_adapter},
    };
    use openledger_model_factory::{
        Api, Registry, RegistryError, SharedRegistry, base::BaseModels, events::Subjects, owners::Owners,
    };
    use openledger_proto::modelfactory::v1::model_factory_service_server::ModelFactoryServiceServer;
    use tower::ServiceExt;

    use super::*;
    use crate::edge::upstream::testing::serve;

    const ACCOUNT: u128 = 70_001;

    fn alice() -> SigningKey {
        SigningKey::from_bytes(&[1; 32])
    }

    /// A ledger on which alice's key owns `ACCOUNT` and nothing else exists.
    struct AliceOwns;

    #[async_trait::async_trait]
    impl Owners for AliceOwns {
        async fn check_owner(&self, account: u128, key: &openledger_signing::Key) -> Result<(), RegistryError> {
            let owner = (account == ACCOUNT).then(|| {
                openledger_proto::ledger::v1::account::Owner::PublicKey(alice().verifying_key().to_bytes().to_vec())
            });
            openledger_model_factory::owners::owned_by(account, owner.as_ref(), key)
        }

        async fn owner_key(&self, _account: u128) -> Result<openledger_signing::Key, RegistryError> {
            Ok(alice().verifying_key().to_bytes())
        }
    }

    struct Edge {
        router: Router,
        base: ModelConfig,
        dir: tempfile::TempDir,
    }

    async fn edge() -> Edge {
        let dir = tempfile::tempdir().expect("temp dir");
        let base_path = TinyModel::new(TinySpec::default())
            .expect("tiny")
            .write_gguf(&dir.path().join("tiny-base.gguf"), candle_core::quantized::GgmlDType::F32)
            .expect("gguf");
        let db = openledger_store::connect(&format!("sqlite://{}/db.sqlite?mode=rwc", dir.path().display()))
            .await
            .expect("db");
        openledger_store::migrate(&db).await.expect("migrate");
        let objects =
            openledger_store::open_object_store(&format!("file://{}/objects", dir.path().display())).expect("objects");
        let registry =
            Registry::new(db, objects, Arc::new(AliceOwns), Arc::new(BaseModels::at(&base_path)), Subjects::default());
        let api =
            ModelFactoryServiceServer::new(Api::new(SharedRegistry::ready(Arc::new(registry)), Default::default()))
                .max_decoding_message_size(MAX_UPSTREAM_MESSAGE_BYTES);
        let channel = serve(ServiceKind::ModelFactory, tonic::service::Routes::new(api)).await;
        let base = openledger_ml::source::read_model_config(&base_path).expect("config");
        Edge { router: routes(channel), base, dir }
    }

    impl Edge {
        fn files(&self, config: &ModelConfig, seed: u64) -> (Vec<u8>, Vec<u8>) {
            let dir = self.dir.path().join(format!("adapter-{seed}"));
            write_peft_adapter(&dir, config, 4, &[Target::Q, Target::V], seed, false).expect("adapter");
            let read = |name: &str| std::fs::read(dir.join(name)).expect("file");
            (read("adapter_config.json"), read("adapter_model.safetensors"))
        }

        async fn call(&self, request: http::Request<Body>) -> (StatusCode, serde_json::Value) {
            let response = self.router.clone().oneshot(request).await.expect("infallible");
            let status = response.status();
            let body = response.into_body().collect().await.expect("body").to_bytes();
            (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
        }
    }

    /// A multipart upload of `files` as `id`, signed by alice.
    fn upload(id: &str, files: &(Vec<u8>, Vec<u8>)) -> http::Request<Body> {
        let signed_at = openledger_signing::now_unix();
        let (config_hash, weights_hash) = (ContentHash::of(&files.0), ContentHash::of(&files.1));
        let message = openledger_signing::adapter_import_message(&openledger_signing::AdapterImport {
            adapter_id: id,
            base_model: "",
            owner_account: ACCOUNT,
            files: openledger_signing::AdapterFiles::Upload { config: &config_hash, weights: &weights_hash },
            price_in: 1_000,
            price_out: 2_000,
            visibility: "public",
            allowed_accounts: &[],
            signed_at,
            description: "triage",
        });
        let signed = openledger_signing::sign(&alice(), &message);
        let boundary = "adapter-boundary";
        let mut body = Vec::new();
        let mut text = |name: &str, value: &str| {
            body.extend(
                format!("--{boundary}\r\ncontent-disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").bytes(),
            );
        };
        for (name, value) in [
            ("id", id.to_owned()),
            ("owned_by", ACCOUNT.to_string()),
            ("price_in", "1000".to_owned()),
            ("price_out", "2000".to_owned()),
            ("description", "triage".to_owned()),
            ("signed_at", signed_at.to_string()),
            ("public_key", signed.public_key_hex()),
            ("signature", signed.signature_hex()),
        ] {
            text(name, &value);
        }
        for (name, file, bytes) in [
            ("adapter_config", "adapter_config.json", &files.0),
            ("adapter_model", "adapter_model.safetensors", &files.1),
        ] {
            body.extend(
                format!(
                    "--{boundary}\r\ncontent-disposition: form-data; name=\"{name}\"; filename=\"{file}\"\r\n\
                     content-type: application/octet-stream\r\n\r\n"
                )
                .bytes(),
            );
            body.extend_from_slice(bytes);
            body.extend(b"\r\n");
        }
        body.extend(format!("--{boundary}--\r\n").bytes());
        http::Request::post("/v1/adapters")
            .header("content-type", format!("multipart/form-data; boundary={boundary}"))
            .body(Body::from(body))
            .expect("request")
    }

    fn json(method: &str, uri: &str, body: serde_json::Value) -> http::Request<Body> {
        http::Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .expect("request")
    }

    fn signature(message: &[u8]) -> serde_json::Value {
        let signed = openledger_signing::sign(&alice(), message);
        serde_json::json!({"public_key": signed.public_key_hex(), "signature": signed.signature_hex()})
    }

    fn get(uri: &str, caller: bool) -> http::Request<Body> {
        let mut request = http::Request::get(uri);
        if caller {
            for (name, value) in openledger_signing::caller_headers(&alice(), openledger_signing::now_unix()) {
                request = request.header(name, value);
            }
        }
        request.body(Body::empty()).expect("request")
    }

    #[tokio::test]
    async fn adapters_are_imported_listed_changed_and_unlisted_over_rest() {
        let edge = edge().await;
        let files = edge.files(&edge.base.clone(), 1);
        let (status, adapter) = edge.call(upload("triage-r4", &files)).await;
        assert_eq!(status, StatusCode::CREATED, "{adapter}");
        assert_eq!(adapter["object"], "adapter");
        assert_eq!((adapter["owned_by"].as_str(), adapter["parent"].as_str()), (Some("70001"), Some("tiny-base")));
        assert_eq!((adapter["price_in"].as_str(), adapter["price_out"].as_str()), (Some("1000"), Some("2000")));
        assert_eq!(adapter["files"][1]["blake3"], ContentHash::of(&files.1).to_hex());
        assert_eq!(adapter["files"][0]["name"], "adapter_config.json");
        assert_eq!(adapter["lineage"]["href"], "/v1/adapters/triage-r4");
        assert_eq!(adapter["target_modules"], serde_json::json!(["q_proj", "v_proj"]));

        let wider = edge.files(&ModelConfig { hidden_size: 96, ..edge.base.clone() }, 2);
        let (status, error) = edge.call(upload("wider", &wider)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
        assert_eq!(error["error"]["code"], "invalid_argument");
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("layer 0 q_proj lora_A is [4, 96] but tiny-base expects [4, 64]"), "{message}");

        let (status, page) = edge.call(get("/v1/adapters?limit=10", false)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(page["adapters"].as_array().map(Vec::len), Some(1));
        assert!(page.get("next_cursor").is_none(), "{page}");

        let signed_at = openledger_signing::now_unix();
        let change = openledger_signing::AdapterUpdate {
            adapter_id: "triage-r4",
            price_out: Some(3_000),
            visibility: Some("private"),
            signed_at,
            ..Default::default()
        };
        let body = serde_json::json!({
            "price_out": "3000", "visibility": "private", "signed_at": signed_at,
            "signature": signature(&openledger_signing::adapter_update_message(&change)),
        });
        let (status, changed) = edge.call(json("PATCH", "/v1/adapters/triage-r4", body.clone())).await;
        assert_eq!(status, StatusCode::OK, "{changed}");
        assert_eq!((changed["visibility"].as_str(), changed["price_out"].as_str()), (Some("private"), Some("3000")));
        let mut forged = body;
        forged["price_out"] = "1".into();
        let (status, _) = edge.call(json("PATCH", "/v1/adapters/triage-r4", forged)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        // Private now: only the owner's signed caller headers see it.
        assert_eq!(edge.call(get("/v1/adapters/triage-r4", false)).await.0, StatusCode::NOT_FOUND);
        assert_eq!(edge.call(get("/v1/adapters/triage-r4", true)).await.0, StatusCode::OK);
        assert_eq!(edge.call(get("/v1/adapters", false)).await.1["adapters"], serde_json::json!([]));
        assert_eq!(edge.call(get("/v1/adapters", true)).await.1["adapters"].as_array().map(Vec::len), Some(1));

        let signed_at = openledger_signing::now_unix();
        let unlist = serde_json::json!({
            "signed_at": signed_at,
            "signature": signature(&openledger_signing::adapter_unlist_message("triage-r4", signed_at)),
        });
        let (status, unlisted) = edge.call(json("DELETE", "/v1/adapters/triage-r4", unlist)).await;
        assert_eq!((status, unlisted["listed"].as_bool()), (StatusCode::OK, Some(false)), "{unlisted}");
        assert_eq!(edge.call(get("/v1/adapters", true)).await.1["adapters"], serde_json::json!([]));
        let listed = edge.call(get("/v1/adapters?include_unlisted=true", true)).await.1;
        assert_eq!(listed["adapters"][0]["id"], "triage-r4");

        let (status, missing) = edge
            .call(json(
                "POST",
                "/v1/adapters",
                serde_json::json!({
                    "id": "x", "owned_by": "70001", "signed_at": 0,
                    "signature": {"public_key": "00".repeat(32), "signature": "00".repeat(64)},
                }),
            ))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "a JSON import names a source: {missing}");
    }
}
