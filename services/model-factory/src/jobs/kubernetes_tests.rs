//! The Kubernetes executor against the scripted API server (the exact requests of each pass),
//! on the job tests' SQLite world; and the job pods' entrypoint training a job to its end.
//! Every pass uses a new executor (and client): all it knows is in the database and the
//! cluster, as after a restart of the service.

use openledger_operator::testing::{self, Expect, Recorded};
use openledger_proto::modelfactory::v1 as pb;
use sea_orm::{EntityTrait, Set};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{
    kubernetes::{self, KubernetesExecutor, KubernetesSettings, Pass},
    pod::{self, JobOutcome},
    store,
    tests::{ScriptedDatanet, Service, World, action, create, quick},
};
use crate::entities::job;

const LORA_JOBS: &str = "/apis/openledger.io/v1alpha1/namespaces/ml/lorajobs";

fn settings() -> KubernetesSettings {
    KubernetesSettings::from_config(&openledger_core::Config {
        kubernetes_namespace: "ml".into(),
        kubernetes_job_image: "ghcr.io/openledger/openledger:0.1-cuda".into(),
        kubernetes_job_env_from: "configmap:openledger,secret:openledger-credentials".into(),
        kubernetes_data_claim: "openledger-data".into(),
        kubernetes_training_gpus: 1,
        kubernetes_queue: "gpu".into(),
        ..Default::default()
    })
}

/// One pass of a new executor against `script`; the pass and every request it made.
async fn pass(service: &Service, script: Vec<Expect>) -> (Pass, Vec<Recorded>) {
    let (client, server) = testing::pair();
    let server = server.run(script);
    let executor = KubernetesExecutor::new(client, settings());
    let pass = executor.pass(&service.jobs).await.expect("a pass");
    let requests = server.finish().await;
    assert_eq!(requests.len(), pass.reads + pass.writes(), "every request is counted: {requests:?}");
    (pass, requests)
}

fn list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "openledger.io/v1alpha1", "kind": "LoraJobList", "metadata": {"resourceVersion": "1"}, "items": items})
}

fn list_request() -> Expect {
    Expect::get(LORA_JOBS).query("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dopenledger-model-factory")
}

/// The `LoraJob` the executor makes for `id`, with `status`.
async fn resource(service: &Service, id: &str, status: Value) -> Value {
    let row = job::Entity::find_by_id(id).one(&service.jobs.db).await.expect("read").expect("job");
    let (client, _) = testing::pair();
    let memory = service.jobs.memory_request(&row).await;
    let mut value =
        serde_json::to_value(KubernetesExecutor::new(client, settings()).lora_job(&row, memory)).expect("json");
    value["status"] = status;
    value
}

async fn queued_job(world: &World) -> (Service, String) {
    let service = world.start_idle(kubernetes::NAME);
    let job = service.jobs.create(create(quick())).await.expect("create");
    service.until_state(&job.id, pb::JobState::Queued).await;
    (service, job.id)
}

/// Moves `id` to running at `step` of 10 with a checkpoint, as its pod would.
async fn running_at(service: &Service, id: &str, step: u64) {
    let jobs = &service.jobs;
    let queued = [pb::JobState::Queued];
    store::transition(&jobs.db, &jobs.subjects, id, &queued, pb::JobState::Running, "started".into(), |r| {
        r.started_at_ms = Set(Some(1));
    })
    .await
    .expect("claim");
    store::record_progress(&jobs.db, id, step, 10, None).await.expect("progress");
    store::record_checkpoint(&jobs.db, id, step, 0.5, None).await.expect("checkpoint");
}

#[tokio::test]
async fn a_queued_job_becomes_one_lora_job_and_stays_queued_until_its_pod_trains() {
    let world = World::sqlite(ScriptedDatanet::instructions(12)).await;
    let (service, id) = queued_job(&world).await;
    // The pod asks for the job's estimated peak memory, more than the model's file alone.
    let row = job::Entity::find_by_id(&id).one(&service.jobs.db).await.expect("read").expect("job");
    let memory = service.jobs.memory_request(&row).await.expect("an estimate of the tiny model's run");
    let base = service.jobs.bases.require().await.expect("base");
    assert!(memory > std::fs::metadata(&base.path).expect("model file").len(), "{memory}");
    let create = Expect::post(LORA_JOBS).query("fieldManager=openledger-model-factory").check({
        let id = id.clone();
        move |body| {
            assert_eq!(body["apiVersion"], "openledger.io/v1alpha1");
            assert_eq!(body["kind"], "LoraJob");
            assert_eq!(body["metadata"]["name"], id.as_str(), "the job id is already a DNS-1123 label");
            assert_eq!(body["metadata"]["namespace"], "ml");
            assert_eq!(
                body["metadata"]["labels"],
                json!({"app.kubernetes.io/managed-by": "openledger-model-factory", "openledger.io/job-id": id})
            );
            assert_eq!(
                body["spec"],
                json!({
                    "jobId": id,
                    "baseModel": "tiny-base",
                    "image": "ghcr.io/openledger/openledger:0.1-cuda",
                    "envFrom": [{"configMapRef": {"name": "openledger"}}, {"secretRef": {"name": "openledger-credentials"}}],
                    "dataVolumeClaim": "openledger-data",
                    "resources": {"requests": {"memory": memory.to_string()}},
                    "gpus": 1,
                    "queueName": "gpu",
                    "backoffLimit": 2,
                    "ttlSecondsAfterFinished": 86_400,
                })
            );
            assert!(body.get("status").is_none_or(Value::is_null), "the status is the operator's: {body}");
        }
    });
    let (first, _) = pass(&service, vec![list_request().returns(list(vec![])), create]).await;
    assert_eq!(first, Pass { reads: 1, created: 1, ..Pass::default() });
    let job = service.get(&id).await;
    assert_eq!(job.state(), pb::JobState::Queued, "queued until its pod starts training");
    let events = service.events(&id).await;
    assert!(
        events[0].message.starts_with(&format!("handed to the cluster: LoraJob {id} in namespace ml")),
        "{events:?}"
    );

    // In sync (the operator has not started it yet): reads only.
    let made = resource(&service, &id, json!({"phase": "Queued"})).await;
    let (again, _) = pass(&service, vec![list_request().returns(list(vec![made]))]).await;
    assert_eq!(again, Pass { reads: 1, ..Pass::default() }, "a pass in sync writes nothing");
    assert_eq!(service.events(&id).await.len(), events.len());
}

#[tokio::test]
async fn a_lora_job_that_already_exists_is_not_created_twice() {
    let world = World::sqlite(ScriptedDatanet::instructions(12)).await;
    let (service, id) = queued_job(&world).await;
    // Another replica (or an earlier pass whose list missed it) made it: 409.
    let (first, _) =
        pass(&service, vec![list_request().returns(list(vec![])), Expect::post(LORA_JOBS).conflict()]).await;
    assert_eq!(first, Pass { reads: 1, created: 1, ..Pass::default() });
    assert_eq!(service.get(&id).await.state(), pb::JobState::Queued, "handed over all the same");
    let made = resource(&service, &id, Value::Null).await;
    let (again, _) = pass(&service, vec![list_request().returns(list(vec![made]))]).await;
    assert_eq!(again, Pass { reads: 1, ..Pass::default() }, "no second create");
}

#[tokio::test]
async fn a_failed_lora_job_fails_its_job_with_the_reason_and_keeps_the_checkpoints() {
    let world = World::sqlite(ScriptedDatanet::instructions(12)).await;
    let (service, id) = queued_job(&world).await;
    running_at(&service, &id, 4).await;
    let failed = json!({
        "phase": "Failed",
        "failedPods": 3,
        "conditions": [{
            "type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
            "message": "Job has reached the specified backoff limit", "lastTransitionTime": "2026-01-01T00:00:00Z"
        }],
    });
    let made = resource(&service, &id, failed.clone()).await;
    let (first, _) = pass(&service, vec![list_request().returns(list(vec![made.clone()]))]).await;
    assert_eq!(first, Pass { reads: 1, failed: 1, ..Pass::default() });
    let job = service.get(&id).await;
    assert_eq!(job.state(), pb::JobState::Failed);
    let error = job.error.expect("error");
    assert_eq!(error.code, "backoff_limit_exceeded");
    assert!(
        error.message.contains("(BackoffLimitExceeded): Job has reached the specified backoff limit"),
        "{}",
        error.message
    );
    let checkpoints = store::checkpoints(&service.jobs.db, &id, None, 10).await.expect("checkpoints");
    assert_eq!(checkpoints.len(), 1, "its checkpoints are kept");
    assert_eq!(world.outbox(".job.failed").await.len(), 1);

    // The end is mirrored once; then the resource is settled and costs nothing but the list.
    let patch = Expect::patch(format!("{LORA_JOBS}/{id}/status")).returns(made.clone()).check(|body| {
        assert_eq!(body["status"]["progress"]["status"], "failed");
        assert_eq!(body["status"]["progress"]["step"], 4);
    });
    let (second, _) = pass(&service, vec![list_request().returns(list(vec![made.clone()])), patch]).await;
    assert_eq!(second, Pass { reads: 1, patched: 1, ..Pass::default() });
    let mut settled = made;
    settled["status"]["progress"] =
        json!({"status": "failed", "step": 4, "totalSteps": 10, "loss": 0.5, "trainedTokens": 0});
    let (third, _) = pass(&service, vec![list_request().returns(list(vec![settled]))]).await;
    assert_eq!(third, Pass { reads: 1, ..Pass::default() });
}

#[tokio::test]
async fn progress_is_mirrored_into_status_only_when_it_changed() {
    let world = World::sqlite(ScriptedDatanet::instructions(12)).await;
    let (service, id) = queued_job(&world).await;
    running_at(&service, &id, 3).await;
    let running = resource(&service, &id, json!({"phase": "Running"})).await;
    let patch = Expect::patch(format!("{LORA_JOBS}/{id}/status"))
        .query("fieldManager=openledger-model-factory")
        .returns(running.clone())
        .check(|body| {
            assert_eq!(
                body,
                &json!({"status": {"progress": {
                    "status": "running", "step": 3, "totalSteps": 10, "loss": 0.5, "trainedTokens": 0,
                    "fineTunedModel": null,
                }}}),
                "a merge patch of status.progress alone"
            );
        });
    let (first, requests) = pass(&service, vec![list_request().returns(list(vec![running.clone()])), patch]).await;
    assert_eq!(first, Pass { reads: 1, patched: 1, ..Pass::default() });
    assert!(requests[1].path.ends_with("/status"), "the status subresource");

    let mut mirrored = running.clone();
    mirrored["status"]["progress"] =
        json!({"status": "running", "step": 3, "totalSteps": 10, "loss": 0.5, "trainedTokens": 0});
    let (in_sync, _) = pass(&service, vec![list_request().returns(list(vec![mirrored.clone()]))]).await;
    assert_eq!(in_sync, Pass { reads: 1, ..Pass::default() }, "in sync: no write");

    store::record_progress(&service.jobs.db, &id, 5, 10, None).await.expect("progress");
    let patch = Expect::patch(format!("{LORA_JOBS}/{id}/status"))
        .returns(mirrored.clone())
        .check(|body| assert_eq!(body["status"]["progress"]["step"], 5));
    let (moved, _) = pass(&service, vec![list_request().returns(list(vec![mirrored])), patch]).await;
    assert_eq!(moved, Pass { reads: 1, patched: 1, ..Pass::default() });
}

#[tokio::test]
async fn cancel_and_pause_remove_the_lora_job_and_a_vanished_one_is_made_again() {
    let world = World::sqlite(ScriptedDatanet::instructions(12)).await;
    let (service, first) = queued_job(&world).await;
    let second = service.jobs.create(create(quick())).await.expect("create").id;
    service.until_state(&second, pb::JobState::Queued).await;
    running_at(&service, &first, 2).await;
    running_at(&service, &second, 2).await;
    let mirrored = json!({"phase": "Running", "progress": {"status": "running", "step": 2, "totalSteps": 10, "loss": 0.5, "trainedTokens": 0}});
    let (a, b) = (resource(&service, &first, mirrored.clone()).await, resource(&service, &second, mirrored).await);

    // A running kubernetes job is cancelled or paused at once: its pod is not in this process.
    let cancelled = service.jobs.cancel(&action(&first)).await.expect("cancel");
    assert_eq!(cancelled.state(), pb::JobState::Cancelled);
    let paused = service.jobs.pause(&action(&second)).await.expect("pause");
    assert_eq!(paused.state(), pb::JobState::Paused);
    let deleted = |id: &str| {
        Expect::delete(format!("{LORA_JOBS}/{id}"))
            .returns(testing::status_body(200, "", "deleted"))
            .check(|body| assert_eq!(body["propagationPolicy"], "Foreground"))
    };
    let (stop, _) = pass(
        &service,
        vec![list_request().returns(list(vec![a.clone(), b.clone()])), deleted(&first), deleted(&second)],
    )
    .await;
    assert_eq!(stop, Pass { reads: 1, deleted: 2, ..Pass::default() });

    // Still being deleted (finalizers): nothing more; gone: nothing more.
    let going = |mut resource: Value| {
        resource["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        resource
    };
    let (waiting, _) = pass(&service, vec![list_request().returns(list(vec![going(a), going(b)]))]).await;
    assert_eq!(waiting, Pass { reads: 1, ..Pass::default() });

    // Resumed: queued again, so a LoraJob again (its pod continues from the checkpoint).
    service.jobs.resume(&action(&second)).await.expect("resume");
    let (resumed, requests) = pass(&service, vec![list_request().returns(list(vec![])), Expect::post(LORA_JOBS)]).await;
    assert_eq!(resumed, Pass { reads: 1, created: 1, ..Pass::default() });
    assert_eq!(requests[1].body["spec"]["jobId"], second.as_str());

    // A running job whose LoraJob vanished (deleted by hand) gets it back.
    let third = service.jobs.create(create(quick())).await.expect("create").id;
    service.until_state(&third, pb::JobState::Queued).await;
    running_at(&service, &third, 1).await;
    let back = resource(&service, &second, Value::Null).await;
    let (recreated, requests) =
        pass(&service, vec![list_request().returns(list(vec![back])), Expect::post(LORA_JOBS)]).await;
    assert_eq!(recreated, Pass { reads: 1, created: 1, ..Pass::default() });
    assert_eq!(requests[1].body["metadata"]["name"], third.as_str());
}

#[tokio::test]
async fn a_waiting_job_whose_lora_job_already_succeeded_gets_a_new_one_once_the_old_is_gone() {
    // Paused as its pod ended and resumed: the old resource says Succeeded, the job waits.
    let world = World::sqlite(ScriptedDatanet::instructions(12)).await;
    let (service, id) = queued_job(&world).await;
    let done = resource(&service, &id, json!({"phase": "Succeeded"})).await;
    let delete = Expect::delete(format!("{LORA_JOBS}/{id}"))
        .returns(testing::status_body(200, "", "deleted"))
        .check(|body| assert_eq!(body["propagationPolicy"], "Foreground"));
    let (first, _) = pass(&service, vec![list_request().returns(list(vec![done.clone()])), delete]).await;
    assert_eq!(first, Pass { reads: 1, deleted: 1, ..Pass::default() });
    // Its Job and pods still going: nothing is made meanwhile (one pod per job).
    let mut going = done;
    going["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    let (waiting, _) = pass(&service, vec![list_request().returns(list(vec![going]))]).await;
    assert_eq!(waiting, Pass { reads: 1, ..Pass::default() });
    // Gone: a new one.
    let (made, requests) = pass(&service, vec![list_request().returns(list(vec![])), Expect::post(LORA_JOBS)]).await;
    assert_eq!(made, Pass { reads: 1, created: 1, ..Pass::default() });
    assert_eq!(requests[1].body["spec"]["jobId"], id.as_str());
}

#[tokio::test]
async fn the_lora_job_of_a_long_ended_job_is_removed_and_a_recent_one_kept() {
    let world = World::sqlite(ScriptedDatanet::instructions(12)).await;
    let (service, id) = queued_job(&world).await;
    running_at(&service, &id, 10).await;
    let jobs = &service.jobs;
    store::transition(
        &jobs.db,
        &jobs.subjects,
        &id,
        &[pb::JobState::Running],
        pb::JobState::Succeeded,
        "done".into(),
        |_| {},
    )
    .await
    .expect("succeeded");
    let ended = json!({"phase": "Succeeded", "progress": {"status": "succeeded", "step": 10, "totalSteps": 10, "trainedTokens": 0}});
    let mut recent = resource(&service, &id, ended).await;
    recent["metadata"]["creationTimestamp"] = json!(k8s_openapi::jiff::Timestamp::now().to_string());
    let (kept, _) = pass(&service, vec![list_request().returns(list(vec![recent.clone()]))]).await;
    assert_eq!(kept, Pass { reads: 1, ..Pass::default() }, "within its retention: kept, no write");
    let mut old = recent;
    old["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
    let delete = Expect::delete(format!("{LORA_JOBS}/{id}"))
        .returns(testing::status_body(200, "", "deleted"))
        .check(|body| assert_eq!(body["propagationPolicy"], "Foreground"));
    let (removed, _) = pass(&service, vec![list_request().returns(list(vec![old])), delete]).await;
    assert_eq!(removed, Pass { reads: 1, deleted: 1, ..Pass::default() });
}

#[tokio::test]
async fn the_pod_entrypoint_trains_its_job_to_the_end() {
    let world = World::sqlite(ScriptedDatanet::instructions(12)).await;
    let (service, id) = queued_job(&world).await;
    // The pod: the same world (database, objects, data directory), jobs of its own.
    let pod = world.jobs(kubernetes::NAME);
    let outcome = pod::run_one_job(&pod, &id, &CancellationToken::new()).await.expect("runs");
    assert_eq!((outcome, outcome.exit_code()), (JobOutcome::Succeeded, 0));
    let done = service.get(&id).await;
    assert_eq!(done.state(), pb::JobState::Succeeded, "{done:?}");
    assert!(done.fine_tuned_model.starts_with("ft:tiny-base:") && done.step == done.total_steps, "{done:?}");
    service.jobs.registry.get(&done.fine_tuned_model).await.expect("registered");
    let states: Vec<String> = world.outbox(".job.").await.into_iter().map(|(subject, _)| subject).collect();
    assert_eq!(states, ["ol.modelfactory.job.queued", "ol.modelfactory.job.running", "ol.modelfactory.job.succeeded"]);
    // A retried pod finds nothing left to do.
    let again = pod::run_one_job(&pod, &id, &CancellationToken::new()).await.expect("runs");
    assert_eq!(again, JobOutcome::Succeeded);

    // A local job is not a pod's to run.
    let local = world.start_idle(super::executor::LocalExecutor::NAME);
    let other = local.jobs.create(create(quick())).await.expect("create").id;
    local.until_state(&other, pb::JobState::Queued).await;
    let refused = pod::run_one_job(&pod, &other, &CancellationToken::new()).await.expect_err("refused");
    assert!(refused.message.contains("\"local\" executor"), "{refused}");
}

#[tokio::test]
async fn a_pod_stops_when_its_job_is_cancelled_through_the_api() {
    // Thousands of steps: it does not end by itself before the cancel reaches it.
    let world = World::sqlite(ScriptedDatanet::instructions(36)).await;
    let service = world.start_idle(kubernetes::NAME);
    let long = pb::Hyperparameters { n_epochs: Some(100), batch_size: Some(1), ..quick() };
    let id = service.jobs.create(create(long)).await.expect("create").id;
    service.until_state(&id, pb::JobState::Queued).await;
    let pod = world.jobs(kubernetes::NAME);
    let running = tokio::spawn({
        let (pod, id) = (pod.clone(), id.clone());
        async move { pod::run_one_job(&pod, &id, &CancellationToken::new()).await }
    });
    service.until(&id, |job| job.step >= 2).await;
    let cancelled = service.jobs.cancel(&action(&id)).await.expect("cancel");
    assert_eq!(cancelled.state(), pb::JobState::Cancelled);
    let outcome = running.await.expect("pod task").expect("runs");
    assert_eq!((outcome, outcome.exit_code()), (JobOutcome::Cancelled, 0));
    let job = service.get(&id).await;
    assert!(job.step < job.total_steps && job.fine_tuned_model.is_empty(), "{job:?}");
}
