//! `/v1/api_keys` over REST: create (signed by the account's owner; the secret answered once),
//! list an account's keys (a page at a time, never a secret or hash), revoke (signed).

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing::{delete, post},
};
use openledger_proto::{common::v1 as common, inference::v1 as pb, u128_of};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{Keys, Limits, NewKey};
use crate::{
    datanets::json::Signature,
    edge::{ApiError, ErrorBody, body::JsonBody, page::PageQuery},
    ledger::parse_u128,
};

/// Routes under `/v1/api_keys`.
pub fn routes(keys: Keys) -> Router {
    Router::new()
        .route("/v1/api_keys", post(create_api_key).get(list_api_keys))
        .route("/v1/api_keys/{id}", delete(revoke_api_key))
        .with_state(keys)
}

/// Per-minute limits; 0 (or absent) is the gateway's default, more than the default is capped
/// to it.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyLimits {
    #[serde(default)]
    #[schema(maximum = 4294967295_u64)]
    pub requests_per_minute: u32,
    /// Prompt tokens plus the most output each request may produce.
    #[serde(default)]
    #[schema(maximum = 4294967295_u64)]
    pub tokens_per_minute: u32,
}

/// A new key for an account, signed by the account owner over
/// `openledger/api-key/create/v2\n<account_id>\n<signed_at>\n<requests_per_minute>\n<tokens_per_minute>\n<name>`
/// (limits as sent, 0 when absent).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    /// The ledger account the key acts for (and that pays), decimal.
    #[schema(pattern = "^[0-9]{1,38}$")]
    pub account_id: String,
    /// What the key is for (1 to 200 characters, no control characters).
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\u0000-\u001f\u007f-\u009f]*$")]
    pub name: String,
    #[serde(default)]
    pub limits: Option<ApiKeyLimits>,
    /// Unix seconds; refused more than 300 s from the server's clock.
    pub signed_at: i64,
    pub signature: Signature,
}

/// A key as listed: never its secret or the secret's hash.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiKey {
    pub id: String,
    pub account_id: String,
    pub name: String,
    /// The limits in force.
    pub limits: ApiKeyLimits,
    pub created_at_ms: i64,
    /// Absent while the key is valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at_ms: Option<i64>,
}

/// A created key and its secret, shown this once: send it as `Authorization: Bearer <secret>`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedApiKey {
    pub key: ApiKey,
    pub secret: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyPage {
    pub keys: Vec<ApiKey>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A revocation, signed by the key's account owner over
/// `openledger/api-key/revoke/v1\n<key id>\n<signed_at>`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeApiKeyRequest {
    pub signed_at: i64,
    pub signature: Signature,
}

/// Whose keys to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ApiKeysQuery {
    /// The ledger account, decimal.
    #[param(pattern = "^[0-9]{1,38}$")]
    pub account_id: String,
}

impl From<&pb::ApiKey> for ApiKey {
    fn from(key: &pb::ApiKey) -> Self {
        let limits = key.limits.unwrap_or_default();
        Self {
            id: key.id.clone(),
            account_id: u128_of(key.account_id.as_ref()).to_string(),
            name: key.name.clone(),
            limits: ApiKeyLimits {
                requests_per_minute: limits.requests_per_minute,
                tokens_per_minute: limits.tokens_per_minute,
            },
            created_at_ms: key.created_at_ms,
            revoked_at_ms: (key.revoked_at_ms != 0).then_some(key.revoked_at_ms),
        }
    }
}

fn wire_signature(signature: &Signature) -> Result<common::Signature, ApiError> {
    common::Signature::try_from(signature)
}

/// Create an API key for an account.
#[utoipa::path(post, path = "/v1/api_keys", tag = "api_keys", request_body = CreateApiKeyRequest, responses(
    (status = 201, description = "Created; the secret is shown this once", body = CreatedApiKey),
    (status = 403, description = "The signer does not own the account", body = ErrorBody),
    (status = 404, description = "No such account", body = ErrorBody),
    (status = 409, description = "This signed request already made a key", body = ErrorBody),
    (status = 412, description = "The account holds the most active keys allowed", body = ErrorBody),
))]
pub async fn create_api_key(
    State(keys): State<Keys>,
    JsonBody(request): JsonBody<CreateApiKeyRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let limits = request.limits.unwrap_or_default();
    let new = NewKey {
        account_id: parse_u128(&request.account_id, "account_id")?,
        name: request.name,
        limits: Limits {
            requests_per_minute: u64::from(limits.requests_per_minute),
            tokens_per_minute: u64::from(limits.tokens_per_minute),
        },
        signed_at: request.signed_at,
        signature: wire_signature(&request.signature)?,
    };
    let (key, secret) = keys.create(new).await?;
    Ok((StatusCode::CREATED, Json(CreatedApiKey { key: ApiKey::from(&key), secret })))
}

/// An account's API keys, oldest first, a page at a time; for a holder of one of them
/// (`Authorization: Bearer`) or the account's owner (signed caller headers).
#[utoipa::path(get, path = "/v1/api_keys", tag = "api_keys", params(ApiKeysQuery, PageQuery), responses(
    (status = 200, description = "A page of keys", body = ApiKeyPage),
    (status = 403, description = "The caller may not read this account's keys", body = ErrorBody),
))]
pub async fn list_api_keys(
    State(keys): State<Keys>,
    headers: HeaderMap,
    Query(whose): Query<ApiKeysQuery>,
    Query(page): Query<PageQuery>,
) -> Result<Json<ApiKeyPage>, ApiError> {
    let account_id = parse_u128(&whose.account_id, "account_id")?;
    let page = page.request()?;
    let (found, next_cursor) = keys.list(&headers, account_id, page).await?;
    Ok(Json(ApiKeyPage { keys: found.iter().map(ApiKey::from).collect(), next_cursor }))
}

/// Revoke an API key: it stops authenticating at once on this gateway, within 5 s on others.
#[utoipa::path(delete, path = "/v1/api_keys/{id}", tag = "api_keys", request_body = RevokeApiKeyRequest,
    params(("id" = String, Path, description = "The key's id")), responses(
    (status = 200, description = "Revoked (revoking again changes nothing)", body = ApiKey),
    (status = 403, description = "The signer does not own the key's account", body = ErrorBody),
    (status = 404, description = "No such key", body = ErrorBody),
))]
pub async fn revoke_api_key(
    State(keys): State<Keys>,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<RevokeApiKeyRequest>,
) -> Result<Json<ApiKey>, ApiError> {
    let signature = wire_signature(&request.signature)?;
    let key = keys.revoke(&id, request.signed_at, &signature).await?;
    Ok(Json(ApiKey::from(&key)))
}
