//! The views of jobs, events and checkpoints (pure), then the routes against a scripted
//! model-factory: the Bearer check, the caller's account and idempotency key in the requests
//! model-factory receives, the list filter, and its refusals through the one gRPC→HTTP mapping.

use std::{collections::HashMap, sync::Arc};

use axum::body::Body;
use http_body_util::BodyExt;
use openledger_core::ServiceKind;
use openledger_proto::{
    common::v1::{Hash, PageResponse},
    modelfactory::v1::model_factory_service_server::{ModelFactoryService, ModelFactoryServiceServer},
};
use parking_lot::Mutex;
use prost_types::Timestamp;
use serde_json::json;
use tower::ServiceExt;

use super::*;
use crate::edge::upstream::testing::serve;

const ACCOUNT: u128 = 70_001;

fn at(seconds: i64) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos: 0 })
}

/// A job as model-factory answers one that succeeded, every field set.
fn succeeded_job() -> pb::FineTuneJob {
    pb::FineTuneJob {
        id: "ftjob-0192".into(),
        owner_account_id: Some(ACCOUNT.into()),
        base_model: "smollm2-135m".into(),
        training_file: "datanet:med-notes@3".into(),
        validation_file: String::new(),
        datanet_id: "0192-datanet".into(),
        snapshot_id: "0192-snapshot".into(),
        datanet_version: 3,
        snapshot_root: Some(Hash { value: vec![0xab; 32] }),
        hyperparameters: Some(pb::Hyperparameters {
            n_epochs: Some(3),
            batch_size: Some(8),
            learning_rate_multiplier: Some(1.0),
            rank: Some(16),
            alpha: Some(32.0),
            dropout: Some(0.05),
            target_modules: vec!["q_proj".into(), "v_proj".into()],
            batch_tokens: Some(2048),
            eval_split: Some(0.1),
            weight_decay: Some(0.01),
            warmup_steps: Some(10),
            max_steps: None,
            checkpoint_every: Some(100),
            eval_every: Some(50),
            max_seq_tokens: Some(1024),
        }),
        suffix: "triage".into(),
        seed: 42,
        metadata: HashMap::from([("team".into(), "triage".into())]),
        state: pb::JobState::Succeeded as i32,
        fine_tuned_model: "ft:smollm2-135m:70001:triage:0192".into(),
        trained_tokens: 123_456,
        estimated_finish: None,
        error: None,
        created_at: at(1_700_000_000),
        finished_at: at(1_700_000_600),
        grant_id: "grant-1".into(),
        step: 300,
        total_steps: 300,
        final_metrics: Some(pb::EvalMetrics {
            step: 300,
            loss: 1.25,
            perplexity: 3.5,
            accuracy: -1.0,
            base_loss: 2.5,
            base_perplexity: 12.25,
            base_accuracy: -1.0,
        }),
        executor: "local".into(),
        training_records: 1_000,
        validation_snapshot_id: String::new(),
        validation_records: 0,
    }
}

#[test]
fn a_succeeded_job_reads_as_openais_job_with_the_extensions() {
    let job = serde_json::to_value(FineTuningJob::from(&succeeded_job())).expect("json");
    assert_eq!(job["object"], "fine_tuning.job");
    assert_eq!((job["id"].as_str(), job["model"].as_str()), (Some("ftjob-0192"), Some("smollm2-135m")));
    assert_eq!((job["created_at"].as_i64(), job["finished_at"].as_i64()), (Some(1_700_000_000), Some(1_700_000_600)));
    assert_eq!((job["status"].as_str(), job["organization_id"].as_str()), (Some("succeeded"), Some("70001")));
    assert_eq!(job["fine_tuned_model"], "ft:smollm2-135m:70001:triage:0192");
    assert_eq!((job["trained_tokens"].as_u64(), job["seed"].as_u64()), (Some(123_456), Some(42)));
    let openai = json!({"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 1.0});
    assert_eq!(job["hyperparameters"], openai);
    assert_eq!(job["method"], json!({"type": "supervised", "supervised": {"hyperparameters": openai}}));
    assert_eq!((job["validation_file"].clone(), job["error"].clone()), (Value::Null, Value::Null));
    assert_eq!((job["result_files"].clone(), job["integrations"].clone()), (json!([]), json!([])));
    assert_eq!(job["user_provided_suffix"], "triage");
    assert_eq!(job["metadata"], json!({"team": "triage"}));
    assert_eq!(job["lora"]["rank"], 16);
    assert_eq!(job["lora"]["target_modules"], json!(["q_proj", "v_proj"]));
    assert_eq!(job["lora"]["max_steps"], "auto");
    assert_eq!(job["lora"]["dropout"].as_f64().map(|d| (d * 100.0).round()), Some(5.0));
    assert_eq!(
        job["datanet"],
        json!({"id": "0192-datanet", "version": 3, "snapshot_id": "0192-snapshot", "merkle_root": "ab".repeat(32)})
    );
    assert_eq!((job["grant_id"].as_str(), job["executor"].as_str()), (Some("grant-1"), Some("local")));
    assert_eq!(
        (job["step"].as_u64(), job["total_steps"].as_u64(), job["training_records"].as_u64()),
        (Some(300), Some(300), Some(1_000))
    );
    assert_eq!(job["validation_records"].as_u64(), Some(0));
    assert_eq!(
        job["final_metrics"],
        json!({"step": 300, "valid_loss": 1.25, "valid_perplexity": 3.5, "base_valid_loss": 2.5, "base_valid_perplexity": 12.25}),
        "accuracy is left out when it was not measured"
    );
}

#[test]
fn a_new_job_has_nulls_for_what_it_has_not_done_and_auto_for_what_it_has_not_chosen() {
    let job = pb::FineTuneJob {
        id: "ftjob-1".into(),
        state: pb::JobState::ValidatingFiles as i32,
        trained_tokens: 5,
        hyperparameters: Some(pb::Hyperparameters { n_epochs: Some(2), ..Default::default() }),
        error: Some(pb::JobError::default()),
        created_at: at(1),
        ..Default::default()
    };
    let job = serde_json::to_value(FineTuningJob::from(&job)).expect("json");
    assert_eq!(job["status"], "validating_files");
    for null in [
        "finished_at",
        "fine_tuned_model",
        "trained_tokens",
        "error",
        "user_provided_suffix",
        "estimated_finish",
        "metadata",
        "datanet",
        "grant_id",
        "final_metrics",
        "executor",
        "validation_file",
    ] {
        assert_eq!(job[null], Value::Null, "{null} in {job}");
    }
    assert_eq!(
        job["hyperparameters"],
        json!({"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": "auto"})
    );
    assert_eq!(job["lora"]["rank"], "auto");
    assert_eq!(job["lora"]["target_modules"], "auto");
    assert_eq!(job["organization_id"], "0");
}

#[test]
fn a_failed_job_carries_its_error_with_a_null_param_when_none_is_at_fault() {
    let mut job = pb::FineTuneJob {
        state: pb::JobState::Failed as i32,
        error: Some(pb::JobError {
            code: "diverged".into(),
            message: "loss is NaN at step 40".into(),
            param: String::new(),
        }),
        ..Default::default()
    };
    let view = serde_json::to_value(FineTuningJob::from(&job)).expect("json");
    assert_eq!(view["error"], json!({"code": "diverged", "message": "loss is NaN at step 40", "param": null}));
    job.error =
        Some(pb::JobError { code: "invalid_training_file".into(), message: "m".into(), param: "training_file".into() });
    assert_eq!(serde_json::to_value(FineTuningJob::from(&job)).expect("json")["error"]["param"], "training_file");
}

#[test]
fn every_job_state_has_openais_status_name() {
    let names: Vec<&str> = (1..=7).map(status_name_of).collect();
    assert_eq!(names, ["validating_files", "queued", "running", "succeeded", "failed", "cancelled", "paused"]);
    assert_eq!(status_name_of(0), "unspecified");
}

fn status_name_of(state: i32) -> &'static str {
    view::status_name(state)
}

fn event(sequence: u64, event: Option<pb::job_event::Event>) -> pb::JobEvent {
    pb::JobEvent {
        sequence,
        job_id: "ftjob-1".into(),
        at: at(1_700_000_000 + sequence as i64),
        level: "info".into(),
        message: format!("event {sequence}"),
        event,
    }
}

#[test]
fn steps_and_evaluations_are_metrics_events_and_the_rest_are_messages() {
    use pb::job_event::Event;
    let step = Event::Step(pb::TrainingStep {
        step: 10,
        total_steps: 100,
        loss: 1.5,
        learning_rate: 0.5,
        tokens_per_second: 250.0,
        eta_seconds: 90,
        epoch: 1,
        grad_norm: 0.75,
    });
    let view = serde_json::to_value(FineTuningEvent::from(&event(4, Some(step)))).expect("json");
    assert_eq!(view["object"], "fine_tuning.job.event");
    assert_eq!((view["id"].as_str(), view["created_at"].as_i64()), (Some("ftevent-ftjob-1-4"), Some(1_700_000_004)));
    assert_eq!(
        (view["type"].as_str(), view["level"].as_str(), view["message"].as_str()),
        (Some("metrics"), Some("info"), Some("event 4"))
    );
    assert_eq!(
        view["data"],
        json!({"step": 10, "total_steps": 100, "train_loss": 1.5, "learning_rate": 0.5, "tokens_per_second": 250.0,
               "eta_seconds": 90, "epoch": 1, "grad_norm": 0.75})
    );

    let eval = Event::Eval(pb::EvalMetrics {
        step: 50,
        loss: 1.0,
        perplexity: 2.5,
        accuracy: 0.75,
        base_loss: 2.0,
        base_perplexity: 7.5,
        base_accuracy: 0.5,
    });
    let view = serde_json::to_value(FineTuningEvent::from(&event(5, Some(eval)))).expect("json");
    assert_eq!(view["type"], "metrics");
    assert_eq!(
        view["data"],
        json!({"step": 50, "valid_loss": 1.0, "valid_perplexity": 2.5, "valid_mean_token_accuracy": 0.75,
               "base_valid_loss": 2.0, "base_valid_perplexity": 7.5, "base_valid_mean_token_accuracy": 0.5})
    );

    let change = Event::StateChange(pb::JobState::Running as i32);
    let view = serde_json::to_value(FineTuningEvent::from(&event(6, Some(change)))).expect("json");
    assert_eq!((view["type"].clone(), view["data"].clone()), (json!("message"), json!({"status": "running"})));
    let view = serde_json::to_value(FineTuningEvent::from(&event(7, None))).expect("json");
    assert_eq!((view["type"].clone(), view["data"].clone()), (json!("message"), json!({})));
}

#[test]
fn checkpoints_carry_their_step_and_the_newest_evaluation() {
    let mut checkpoint = pb::JobCheckpoint {
        id: "ftckpt-0192-100".into(),
        job_id: "ftjob-0192".into(),
        step: 100,
        created_at: at(1_700_000_100),
        fine_tuned_model_checkpoint: "ft:smollm2-135m:70001:triage:0192:ckpt-step-100".into(),
        train_loss: 1.5,
        eval: None,
    };
    let view = serde_json::to_value(FineTuningCheckpoint::from(&checkpoint)).expect("json");
    assert_eq!(
        view,
        json!({
            "object": "fine_tuning.job.checkpoint", "id": "ftckpt-0192-100", "created_at": 1_700_000_100,
            "fine_tuned_model_checkpoint": "ft:smollm2-135m:70001:triage:0192:ckpt-step-100", "step_number": 100,
            "metrics": {"step": 100, "train_loss": 1.5}, "fine_tuning_job_id": "ftjob-0192",
        })
    );
    checkpoint.eval = Some(pb::EvalMetrics { loss: 1.25, accuracy: 0.5, ..Default::default() });
    let view = serde_json::to_value(FineTuningCheckpoint::from(&checkpoint)).expect("json");
    assert_eq!(
        view["metrics"],
        json!({"step": 100, "train_loss": 1.5, "valid_loss": 1.25, "valid_mean_token_accuracy": 0.5})
    );
}

/// What the scripted model-factory received.
#[derive(Default)]
struct Received {
    create: Option<pb::CreateFineTuneJobRequest>,
    list: Option<pb::ListFineTuneJobsRequest>,
    events: Option<pb::ListJobEventsRequest>,
}

/// A model-factory that answers from the request (create), a fixed page (list, events), 404
/// for `ftjob-missing` and 412 for every cancel.
#[derive(Clone, Default)]
struct ScriptedFactory {
    received: Arc<Mutex<Received>>,
}

#[tonic::async_trait]
impl ModelFactoryService for ScriptedFactory {
    async fn create_fine_tune_job(
        &self,
        request: tonic::Request<pb::CreateFineTuneJobRequest>,
    ) -> Result<tonic::Response<pb::FineTuneJob>, tonic::Status> {
        let request = request.into_inner();
        let job = pb::FineTuneJob {
            id: "ftjob-new".into(),
            owner_account_id: request.caller_account_id,
            base_model: request.model.clone(),
            training_file: request.training_file.clone(),
            hyperparameters: request.hyperparameters.clone(),
            metadata: request.metadata.clone(),
            state: pb::JobState::ValidatingFiles as i32,
            created_at: at(1_700_000_000),
            ..Default::default()
        };
        self.received.lock().create = Some(request);
        Ok(tonic::Response::new(job))
    }

    async fn get_fine_tune_job(
        &self,
        request: tonic::Request<pb::GetFineTuneJobRequest>,
    ) -> Result<tonic::Response<pb::FineTuneJob>, tonic::Status> {
        let request = request.into_inner();
        if request.id == "ftjob-missing" {
            return Err(tonic::Status::not_found("no fine-tuning job \"ftjob-missing\""));
        }
        Ok(tonic::Response::new(pb::FineTuneJob {
            id: request.id,
            owner_account_id: request.caller_account_id,
            ..succeeded_job()
        }))
    }

    async fn list_fine_tune_jobs(
        &self,
        request: tonic::Request<pb::ListFineTuneJobsRequest>,
    ) -> Result<tonic::Response<pb::ListFineTuneJobsResponse>, tonic::Status> {
        self.received.lock().list = Some(request.into_inner());
        Ok(tonic::Response::new(pb::ListFineTuneJobsResponse {
            jobs: vec![succeeded_job()],
            page: Some(PageResponse { next_page_token: "ftjob-0192".into() }),
        }))
    }

    async fn cancel_fine_tune_job(
        &self,
        _request: tonic::Request<pb::FineTuneJobActionRequest>,
    ) -> Result<tonic::Response<pb::FineTuneJob>, tonic::Status> {
        Err(tonic::Status::failed_precondition("job ftjob-0192 has already succeeded"))
    }

    async fn list_job_events(
        &self,
        request: tonic::Request<pb::ListJobEventsRequest>,
    ) -> Result<tonic::Response<pb::ListJobEventsResponse>, tonic::Status> {
        self.received.lock().events = Some(request.into_inner());
        let change = pb::job_event::Event::StateChange(pb::JobState::Running as i32);
        Ok(tonic::Response::new(pb::ListJobEventsResponse {
            events: vec![event(2, Some(change)), event(1, None)],
            page: Some(PageResponse::default()),
        }))
    }
}

struct Edge {
    router: Router,
    secret: String,
    factory: ScriptedFactory,
    _dir: tempfile::TempDir,
}

async fn edge() -> Edge {
    let dir = tempfile::tempdir().expect("temp dir");
    let (keys, secret) = crate::openlora::keys::testing::keys_with_one_key(dir.path(), ACCOUNT).await;
    let factory = ScriptedFactory::default();
    let served = tonic::service::Routes::new(ModelFactoryServiceServer::new(factory.clone()));
    let channel = serve(ServiceKind::ModelFactory, served).await;
    Edge { router: routes(keys, channel), secret, factory, _dir: dir }
}

impl Edge {
    fn request(&self, method: &str, uri: &str, body: Option<Value>) -> http::request::Builder {
        let builder =
            http::Request::builder().method(method).uri(uri).header("authorization", format!("Bearer {}", self.secret));
        if body.is_some() { builder.header("content-type", "application/json") } else { builder }
    }

    async fn call(&self, request: http::Request<Body>) -> (http::StatusCode, Value) {
        let response = self.router.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let body = response.into_body().collect().await.expect("body").to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn send(&self, method: &str, uri: &str, body: Option<Value>) -> (http::StatusCode, Value) {
        let text = body.as_ref().map(Value::to_string).unwrap_or_default();
        self.call(self.request(method, uri, body).body(Body::from(text)).expect("request")).await
    }
}

#[tokio::test]
async fn every_route_needs_an_api_key_and_checks_it_before_the_body() {
    let edge = edge().await;
    for (method, uri) in [
        ("POST", "/v1/fine_tuning/jobs"),
        ("GET", "/v1/fine_tuning/jobs"),
        ("GET", "/v1/fine_tuning/jobs/ftjob-1"),
        ("POST", "/v1/fine_tuning/jobs/ftjob-1/cancel"),
        ("POST", "/v1/fine_tuning/jobs/ftjob-1/pause"),
        ("POST", "/v1/fine_tuning/jobs/ftjob-1/resume"),
        ("GET", "/v1/fine_tuning/jobs/ftjob-1/events"),
        ("GET", "/v1/fine_tuning/jobs/ftjob-1/checkpoints"),
    ] {
        let request = http::Request::builder().method(method).uri(uri).header("content-type", "application/json");
        let (status, body) = edge.call(request.body(Body::from("{not json")).expect("request")).await;
        assert_eq!(status, http::StatusCode::UNAUTHORIZED, "{method} {uri}: {body}");
        assert_eq!(body["error"]["code"], "invalid_api_key", "{method} {uri}");
    }
}

#[tokio::test]
async fn a_job_is_created_for_the_keys_account_with_its_idempotency_key() {
    let edge = edge().await;
    let body = json!({
        "model": "smollm2-135m", "training_file": "datanet:med-notes@3",
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
        "lora": {"rank": 8}, "metadata": {"team": "triage"}, "user": "ignored",
    });
    let request = edge.request("POST", "/v1/fine_tuning/jobs", Some(body.clone())).header("idempotency-key", "retry-1");
    let (status, job) = edge.call(request.body(Body::from(body.to_string())).expect("request")).await;
    assert_eq!(status, http::StatusCode::OK, "{job}");
    assert_eq!((job["id"].as_str(), job["status"].as_str()), (Some("ftjob-new"), Some("validating_files")));
    assert_eq!(job["organization_id"], ACCOUNT.to_string());
    assert_eq!(job["hyperparameters"]["n_epochs"], 2);
    let received = edge.factory.received.lock().create.take().expect("created");
    assert_eq!(received.caller_account_id, Some(ACCOUNT.into()));
    assert_eq!(received.idempotency_key, "retry-1");
    let settings = received.hyperparameters.expect("settings");
    assert_eq!((settings.n_epochs, settings.rank, settings.batch_size), (Some(2), Some(8), None));

    let (status, error) =
        edge.send("POST", "/v1/fine_tuning/jobs", Some(json!({"model": "m", "training_file": "file-abc"}))).await;
    assert_eq!((status, error["error"]["code"].as_str()), (http::StatusCode::BAD_REQUEST, Some("invalid_argument")));
    assert!(error["error"]["message"].as_str().is_some_and(|m| m.starts_with("training_file")), "{error}");
    assert!(edge.factory.received.lock().create.is_none(), "a refused body never reaches model-factory");
}

#[tokio::test]
async fn jobs_are_listed_for_the_caller_with_the_metadata_filter_in_openais_shape() {
    let edge = edge().await;
    let (status, list) = edge.send("GET", "/v1/fine_tuning/jobs?metadata%5Bteam%5D=triage&after=ftjob-9", None).await;
    assert_eq!(status, http::StatusCode::OK, "{list}");
    assert_eq!((list["object"].as_str(), list["has_more"].as_bool()), (Some("list"), Some(true)));
    assert_eq!(list["data"][0]["object"], "fine_tuning.job");
    let received = edge.factory.received.lock().list.take().expect("listed");
    assert_eq!(received.caller_account_id, Some(ACCOUNT.into()));
    assert_eq!(received.metadata, HashMap::from([("team".into(), "triage".into())]));
    let page = received.page.expect("page");
    assert_eq!((page.page_size, page.page_token.as_str()), (20, "ftjob-9"));
}

#[tokio::test]
async fn model_factorys_refusals_keep_their_status_and_message() {
    let edge = edge().await;
    let (status, error) = edge.send("GET", "/v1/fine_tuning/jobs/ftjob-missing", None).await;
    assert_eq!((status, error["error"]["code"].as_str()), (http::StatusCode::NOT_FOUND, Some("not_found")));
    assert_eq!(error["error"]["message"], "no fine-tuning job \"ftjob-missing\"");
    let (status, error) = edge.send("POST", "/v1/fine_tuning/jobs/ftjob-0192/cancel", None).await;
    assert_eq!(status, http::StatusCode::PRECONDITION_FAILED, "{error}");
    let (status, error) = edge.send("POST", "/v1/fine_tuning/jobs/ftjob-0192/pause", None).await;
    assert_eq!((status, error["error"]["code"].as_str()), (http::StatusCode::NOT_IMPLEMENTED, Some("unimplemented")));
    let (status, job) = edge.send("GET", "/v1/fine_tuning/jobs/ftjob-0192", None).await;
    assert_eq!((status, job["organization_id"].as_str()), (http::StatusCode::OK, Some("70001")));
}

#[tokio::test]
async fn events_are_listed_newest_first_with_after_as_the_page_token() {
    let edge = edge().await;
    let (status, list) =
        edge.send("GET", "/v1/fine_tuning/jobs/ftjob-1/events?after=ftevent-ftjob-1-3&limit=2", None).await;
    assert_eq!(status, http::StatusCode::OK, "{list}");
    assert_eq!(list["has_more"], false);
    let ids: Vec<&str> =
        list["data"].as_array().expect("data").iter().filter_map(|event| event["id"].as_str()).collect();
    assert_eq!(ids, ["ftevent-ftjob-1-2", "ftevent-ftjob-1-1"]);
    assert_eq!(list["data"][0]["data"], json!({"status": "running"}));
    let received = edge.factory.received.lock().events.take().expect("listed");
    assert_eq!((received.job_id.as_str(), received.caller_account_id), ("ftjob-1", Some(ACCOUNT.into())));
    let page = received.page.expect("page");
    assert_eq!((page.page_size, page.page_token.as_str()), (2, "ftevent-ftjob-1-3"));
}
