//! API keys: `POST/GET /v1/api_keys` (created and revoked by the account owner's signature; the
//! secret shown once, stored as a hash), the `Authorization: Bearer` check of the inference
//! routes (401), and per-key limits on requests and tokens per minute (429 with
//! `Retry-After`). Also the gateway's gRPC `InferenceService`.
//!
//! SKELETON: the issue-17 keys work fills this module; the signatures below are the contract
//! the OpenAI routes use.

use axum::{Router, http::HeaderMap};
use openledger_proto::inference::v1::inference_service_server::InferenceService;

use crate::edge::ApiError;

/// Who is calling: the key and the ledger account that pays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub key_id: String,
    pub account_id: u128,
}

/// The key store and the limiters.
#[derive(Clone, Default)]
pub struct Keys {}

impl Keys {
    /// The caller of a request from its `Authorization: Bearer <secret>` header: 401
    /// (`unauthenticated`) without one or with an unknown or revoked key.
    pub async fn authenticate(&self, _headers: &HeaderMap) -> Result<Caller, ApiError> {
        Err(ApiError::new(openledger_core::ErrorCode::Unimplemented, "API keys are not built yet"))
    }

    /// Admits one request of up to `tokens` (prompt + maximum output) under the key's limits,
    /// or 429 (`rate_limited`) with `Retry-After` in whole seconds.
    pub fn admit(&self, _caller: &Caller, _tokens: u64) -> Result<(), ApiError> {
        Ok(())
    }
}

/// Routes under `/v1/api_keys`.
pub fn routes(_keys: Keys) -> Router {
    Router::new()
}

/// The gateway's gRPC API.
#[derive(Clone)]
pub struct Api {}

impl InferenceService for Api {}
