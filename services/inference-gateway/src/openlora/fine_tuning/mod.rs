//! `/v1/fine_tuning/jobs/**`: OpenAI's fine-tuning API, forwarded to model-factory's jobs.
//! Every route takes an API key (`Authorization: Bearer`); the key's account is the caller
//! model-factory acts for, and a caller sees only its own jobs.
//!
//! - `POST /v1/fine_tuning/jobs` creates a job (`Idempotency-Key` makes a retry safe);
//!   `GET /v1/fine_tuning/jobs` lists the caller's jobs, newest first (`metadata[key]=value`
//!   filters); `GET /v1/fine_tuning/jobs/{id}` reads one; `POST …/{id}/cancel|pause|resume`
//!   act on one.
//! - `GET …/{id}/events` and `GET …/{id}/checkpoints` list what a job reported.
//!
//! `request` reads bodies and queries (each refusal names its field), `view` writes OpenAI's
//! shapes with our extensions, `auto` is the number-or-"auto" type both use. Lists answer
//! OpenAI's `{"object":"list","data","has_more"}` (see `edge::page`).

pub mod auto;
pub mod request;
pub mod view;

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::HeaderMap,
    routing::{get, post},
};
use openledger_proto::modelfactory::v1::{self as pb, model_factory_service_client::ModelFactoryServiceClient};
use openledger_runtime::clients::ServiceChannel;
use serde_json::Value;

use self::{
    request::{CreateFineTuningJobRequest, ListJobsQuery, idempotency_key, list_jobs_query},
    view::{
        FineTuningCheckpoint, FineTuningCheckpointList, FineTuningEvent, FineTuningEventList, FineTuningJob,
        FineTuningJobList,
    },
};
use super::{adapters::ModelFactory, keys::Keys};
use crate::edge::{
    ApiError, ErrorBody,
    body::JsonBody,
    page::{OpenAiPageQuery, next_cursor},
};

/// What these routes share: the key check and model-factory.
#[derive(Clone)]
pub struct FineTuning {
    keys: Keys,
    model_factory: ModelFactory,
}

/// Routes under `/v1/fine_tuning`.
pub fn routes(keys: Keys, model_factory: ServiceChannel) -> Router {
    Router::new()
        .route("/v1/fine_tuning/jobs", post(create_fine_tuning_job).get(list_fine_tuning_jobs))
        .route("/v1/fine_tuning/jobs/{id}", get(get_fine_tuning_job))
        .route("/v1/fine_tuning/jobs/{id}/cancel", post(cancel_fine_tuning_job))
        .route("/v1/fine_tuning/jobs/{id}/pause", post(pause_fine_tuning_job))
        .route("/v1/fine_tuning/jobs/{id}/resume", post(resume_fine_tuning_job))
        .route("/v1/fine_tuning/jobs/{id}/events", get(list_fine_tuning_events))
        .route("/v1/fine_tuning/jobs/{id}/checkpoints", get(list_fine_tuning_checkpoints))
        .with_state(FineTuning {
            keys,
            model_factory: ModelFactory::new(model_factory, ModelFactoryServiceClient::new),
        })
}

impl FineTuning {
    /// The authenticated caller's account and a client of model-factory.
    async fn caller(
        &self,
        headers: &HeaderMap,
    ) -> Result<(u128, ModelFactoryServiceClient<tonic::transport::Channel>), ApiError> {
        let caller = self.keys.authenticate(headers).await?;
        Ok((caller.account_id, self.model_factory.client()?))
    }
}

/// Create a fine-tuning job: a LoRA adapter trained on a sealed Datanet version the caller
/// holds a grant on, registered (with its lineage) as `fine_tuned_model` when it succeeds.
#[utoipa::path(post, path = "/v1/fine_tuning/jobs", tag = "fine_tuning",
    params(("Idempotency-Key" = Option<String>, Header, description = "A key (up to 256 visible ASCII characters): the same key from the same account answers the job it created")),
    request_body = CreateFineTuningJobRequest,
    responses(
        (status = 200, description = "The job, validating its files", body = FineTuningJob),
        (status = 403, description = "The caller holds no approved grant on the Datanet", body = ErrorBody),
        (status = 404, description = "No such base model, Datanet, version or grant", body = ErrorBody),
        (status = 429, description = "Too many jobs of the caller are queued or running", body = ErrorBody),
    ))]
pub async fn create_fine_tuning_job(
    State(state): State<FineTuning>,
    headers: HeaderMap,
    body: Result<JsonBody<Value>, ApiError>,
) -> Result<Json<FineTuningJob>, ApiError> {
    // The key first: an unauthenticated caller learns nothing about its body.
    let (account_id, mut client) = state.caller(&headers).await?;
    let JsonBody(body) = body?;
    let request = CreateFineTuningJobRequest::parse(&body)?.wire(account_id, idempotency_key(&headers)?)?;
    let job = client.create_fine_tune_job(request).await?.into_inner();
    Ok(Json(FineTuningJob::from(&job)))
}

/// The caller's jobs, newest first.
#[utoipa::path(get, path = "/v1/fine_tuning/jobs", tag = "fine_tuning", params(ListJobsQuery), responses(
    (status = 200, description = "A page of jobs", body = FineTuningJobList),
))]
pub async fn list_fine_tuning_jobs(
    State(state): State<FineTuning>,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<FineTuningJobList>, ApiError> {
    let (account_id, mut client) = state.caller(&headers).await?;
    let (page, metadata) = list_jobs_query(pairs)?;
    let request =
        pb::ListFineTuneJobsRequest { page: Some(page), caller_account_id: Some(account_id.into()), metadata };
    let answer = client.list_fine_tune_jobs(request).await?.into_inner();
    Ok(Json(FineTuningJobList {
        object: "list".to_owned(),
        data: answer.jobs.iter().map(FineTuningJob::from).collect(),
        has_more: next_cursor(answer.page).is_some(),
    }))
}

/// One of the caller's jobs.
#[utoipa::path(get, path = "/v1/fine_tuning/jobs/{id}", tag = "fine_tuning",
    params(("id" = String, Path, description = "Job id (`ftjob-…`)")), responses(
    (status = 200, description = "The job", body = FineTuningJob),
    (status = 404, description = "No such job of the caller's", body = ErrorBody),
))]
pub async fn get_fine_tuning_job(
    State(state): State<FineTuning>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<FineTuningJob>, ApiError> {
    let (account_id, mut client) = state.caller(&headers).await?;
    let request = pb::GetFineTuneJobRequest { id, caller_account_id: Some(account_id.into()) };
    Ok(Json(FineTuningJob::from(&client.get_fine_tune_job(request).await?.into_inner())))
}

/// What `cancel`, `pause` and `resume` do.
#[derive(Clone, Copy)]
enum Action {
    Cancel,
    Pause,
    Resume,
}

async fn act(
    state: FineTuning,
    headers: HeaderMap,
    id: String,
    action: Action,
) -> Result<Json<FineTuningJob>, ApiError> {
    let (account_id, mut client) = state.caller(&headers).await?;
    let request = pb::FineTuneJobActionRequest { id, caller_account_id: Some(account_id.into()) };
    let job = match action {
        Action::Cancel => client.cancel_fine_tune_job(request).await?,
        Action::Pause => client.pause_fine_tune_job(request).await?,
        Action::Resume => client.resume_fine_tune_job(request).await?,
    };
    Ok(Json(FineTuningJob::from(&job.into_inner())))
}

/// Cancel a job that has not finished.
#[utoipa::path(post, path = "/v1/fine_tuning/jobs/{id}/cancel", tag = "fine_tuning",
    params(("id" = String, Path, description = "Job id (`ftjob-…`)")), responses(
    (status = 200, description = "The job, cancelled", body = FineTuningJob),
    (status = 404, description = "No such job of the caller's", body = ErrorBody),
    (status = 412, description = "The job has already finished", body = ErrorBody),
))]
pub async fn cancel_fine_tuning_job(
    State(state): State<FineTuning>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<FineTuningJob>, ApiError> {
    act(state, headers, id, Action::Cancel).await
}

/// Pause a job: it checkpoints and stops; `resume` queues it again from that checkpoint.
#[utoipa::path(post, path = "/v1/fine_tuning/jobs/{id}/pause", tag = "fine_tuning",
    params(("id" = String, Path, description = "Job id (`ftjob-…`)")), responses(
    (status = 200, description = "The job, paused", body = FineTuningJob),
    (status = 404, description = "No such job of the caller's", body = ErrorBody),
    (status = 412, description = "The job is not queued or running", body = ErrorBody),
))]
pub async fn pause_fine_tuning_job(
    State(state): State<FineTuning>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<FineTuningJob>, ApiError> {
    act(state, headers, id, Action::Pause).await
}

/// Resume a paused job from its newest checkpoint.
#[utoipa::path(post, path = "/v1/fine_tuning/jobs/{id}/resume", tag = "fine_tuning",
    params(("id" = String, Path, description = "Job id (`ftjob-…`)")), responses(
    (status = 200, description = "The job, queued again", body = FineTuningJob),
    (status = 404, description = "No such job of the caller's", body = ErrorBody),
    (status = 412, description = "The job is not paused", body = ErrorBody),
))]
pub async fn resume_fine_tuning_job(
    State(state): State<FineTuning>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<FineTuningJob>, ApiError> {
    act(state, headers, id, Action::Resume).await
}

/// A job's events, newest first: state changes and messages (`type` `message`), training steps
/// and evaluations (`type` `metrics`, their figures in `data`).
#[utoipa::path(get, path = "/v1/fine_tuning/jobs/{id}/events", tag = "fine_tuning",
    params(("id" = String, Path, description = "Job id (`ftjob-…`)"), OpenAiPageQuery), responses(
    (status = 200, description = "A page of events", body = FineTuningEventList),
    (status = 404, description = "No such job of the caller's", body = ErrorBody),
))]
pub async fn list_fine_tuning_events(
    State(state): State<FineTuning>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(page): Query<OpenAiPageQuery>,
) -> Result<Json<FineTuningEventList>, ApiError> {
    let (account_id, mut client) = state.caller(&headers).await?;
    let request = pb::ListJobEventsRequest {
        job_id: id,
        caller_account_id: Some(account_id.into()),
        page: Some(page.request()?),
    };
    let answer = client.list_job_events(request).await?.into_inner();
    Ok(Json(FineTuningEventList {
        object: "list".to_owned(),
        data: answer.events.iter().map(FineTuningEvent::from).collect(),
        has_more: next_cursor(answer.page).is_some(),
    }))
}

/// A job's checkpoints (resumable, not served).
#[utoipa::path(get, path = "/v1/fine_tuning/jobs/{id}/checkpoints", tag = "fine_tuning",
    params(("id" = String, Path, description = "Job id (`ftjob-…`)"), OpenAiPageQuery), responses(
    (status = 200, description = "A page of checkpoints", body = FineTuningCheckpointList),
    (status = 404, description = "No such job of the caller's", body = ErrorBody),
))]
pub async fn list_fine_tuning_checkpoints(
    State(state): State<FineTuning>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(page): Query<OpenAiPageQuery>,
) -> Result<Json<FineTuningCheckpointList>, ApiError> {
    let (account_id, mut client) = state.caller(&headers).await?;
    let request = pb::ListJobCheckpointsRequest {
        job_id: id,
        caller_account_id: Some(account_id.into()),
        page: Some(page.request()?),
    };
    let answer = client.list_job_checkpoints(request).await?.into_inner();
    Ok(Json(FineTuningCheckpointList {
        object: "list".to_owned(),
        data: answer.checkpoints.iter().map(FineTuningCheckpoint::from).collect(),
        has_more: next_cursor(answer.page).is_some(),
    }))
}

#[cfg(test)]
mod tests;
