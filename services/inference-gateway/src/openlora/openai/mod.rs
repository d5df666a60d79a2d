//! The OpenAI-compatible routes: `POST /v1/chat/completions` and `POST /v1/completions` (one
//! JSON answer, or SSE chunks ending with `data: [DONE]` when `stream` is set) and
//! `GET /v1/models`. `plan` checks a request, `run` admits, meters and drives it, `respond`
//! shapes what the driver produces into OpenAI's answers.

pub mod plan;
mod respond;
pub mod run;
pub mod types;

use std::time::Instant;

use axum::{
    Json, Router,
    extract::State,
    http::HeaderMap,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use openledger_proto::u128_of;

use self::types::{ChatCompletionRequest, CompletionRequest, ModelCard, ModelList};
use super::OpenLora;
use crate::edge::{ApiError, body::JsonBody};

/// The OpenAI-compatible routes.
pub fn routes(state: OpenLora) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(list_models))
        .with_state(state)
}

/// Creates a chat completion.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "openai",
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "The completion (or, with `stream`, `text/event-stream` chunks of `ChatCompletionChunk` ending with `data: [DONE]`)", body = types::ChatCompletion),
    ),
)]
pub async fn chat_completions(
    State(state): State<OpenLora>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let caller = state.keys.authenticate(&headers).await?;
    let plan = plan::chat(request)?;
    let (stream, include_usage, top) = (plan.stream, plan.include_usage, plan.logprobs);
    let started = run::start(&state, caller, plan, arrived).await?;
    let tokenizer = state.engines()?.base().tokenizer.clone();
    if stream {
        Ok(respond::chat_stream(started, include_usage, top.is_some(), tokenizer).into_response())
    } else {
        Ok(Json(respond::chat(started, top.is_some(), &tokenizer).await?).into_response())
    }
}

/// Creates a text completion.
#[utoipa::path(
    post,
    path = "/v1/completions",
    tag = "openai",
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "The completion (or, with `stream`, `text/event-stream` chunks of `Completion` ending with `data: [DONE]`)", body = types::Completion),
    ),
)]
pub async fn completions(
    State(state): State<OpenLora>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<CompletionRequest>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let caller = state.keys.authenticate(&headers).await?;
    let plan = plan::completion(request)?;
    let (stream, include_usage, top) = (plan.stream, plan.include_usage, plan.logprobs);
    let started = run::start(&state, caller, plan, arrived).await?;
    let tokenizer = state.engines()?.base().tokenizer.clone();
    if stream {
        Ok(respond::completion_stream(started, include_usage, top.is_some(), tokenizer).into_response())
    } else {
        Ok(Json(respond::completion(started, top.is_some(), &tokenizer).await?).into_response())
    }
}

/// Lists the base model and every adapter the caller's key may use.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "openai",
    responses((status = 200, description = "The models", body = ModelList)),
)]
pub async fn list_models(State(state): State<OpenLora>, headers: HeaderMap) -> Result<Json<ModelList>, ApiError> {
    let caller = state.keys.authenticate(&headers).await?;
    let engines = state.engines()?;
    let base = engines.base();
    let platform_fee = state.metering.platform_fee().await?.to_string();
    let mut data = vec![ModelCard {
        id: base.id.clone(),
        object: "model".into(),
        created: 0,
        owned_by: "openledger".into(),
        parent: None,
        price_in: "0".into(),
        price_out: "0".into(),
        platform_fee: platform_fee.clone(),
        lineage: None,
        description: Some(format!("base model, BLAKE3 {}", base.hash)),
    }];
    for adapter in state.catalog.adapters_for(&caller).await? {
        if adapter.base_model_hash.as_ref().map(|h| h.value.as_slice()) != Some(base.hash.as_bytes().as_slice()) {
            continue;
        }
        data.push(ModelCard {
            lineage: Some(format!("/v1/adapters/{}", adapter.id)),
            id: adapter.id,
            object: "model".into(),
            created: u64::try_from(adapter.created_at_ms / 1000).unwrap_or(0),
            owned_by: u128_of(adapter.owner_account_id.as_ref()).to_string(),
            parent: Some(base.id.clone()),
            price_in: u128_of(adapter.price_in.as_ref()).to_string(),
            price_out: u128_of(adapter.price_out.as_ref()).to_string(),
            platform_fee: platform_fee.clone(),
            description: (!adapter.description.is_empty()).then_some(adapter.description),
        });
    }
    Ok(Json(ModelList { object: "list".into(), data }))
}
