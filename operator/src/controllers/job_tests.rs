//! The job controllers against the scripted API server: the exact requests for create, no
//! change when in sync, Kueue's suspended-then-admitted path, a failed Job turned into the
//! right condition, an impossible spec reported, and deletion with the finalizer.

use std::sync::Arc;

use kube::{Resource, runtime::controller::Action};
use serde_json::{Value, json};

use super::Context;
use crate::{
    crd::{AttributionJob, AttributionJobSpec, IndexKind, JobPhase, LoraJob, LoraJobSpec, PodSettings},
    testing::{self, Expect, Recorded},
};

const NS: &str = "ml";
const LORA_JOBS: &str = "/apis/openledger.io/v1alpha1/namespaces/ml/lorajobs";
const JOBS: &str = "/apis/batch/v1/namespaces/ml/jobs";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ml/events";

fn pod() -> PodSettings {
    PodSettings {
        image: "ghcr.io/openledger/openledger:0.1".into(),
        data_volume_claim: Some("ol-data".into()),
        ..Default::default()
    }
}

fn lora_job(queue: Option<&str>) -> LoraJob {
    let mut job = LoraJob::new(
        "ftjob-7",
        LoraJobSpec {
            job_id: "ftjob-7".into(),
            base_model: "smollm2-135m".into(),
            pod: pod(),
            gpus: 1,
            queue_name: queue.map(str::to_owned),
            backoff_limit: 2,
            active_deadline_seconds: Some(3600),
            ttl_seconds_after_finished: None,
        },
    );
    let meta = job.meta_mut();
    meta.namespace = Some(NS.into());
    meta.uid = Some("uid-7".into());
    meta.generation = Some(1);
    job
}

fn json_of<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("serializes")
}

/// The object after the status patch the script answered.
fn with_status(object: &LoraJob, recorded: &Recorded) -> LoraJob {
    let mut value = json_of(object);
    testing::merge(&mut value, &recorded.body);
    serde_json::from_value(value).expect("a LoraJob")
}

/// A Job of the resource `owner_uid` (its controller).
fn job_with(name: &str, suspend: bool, status: Value) -> Value {
    let owner_uid = if name == "ftjob-7" { "uid-7" } else { "uid-3" };
    json!({"apiVersion": "batch/v1", "kind": "Job",
           "metadata": {"name": name, "namespace": NS, "ownerReferences": [{"apiVersion": "openledger.io/v1alpha1", "kind": "LoraJob", "name": name, "uid": owner_uid, "controller": true}]},
           "spec": {"suspend": suspend, "template": {}}, "status": status})
}

async fn reconcile<K: super::job::JobResource>(object: K, client: kube::Client) -> Action {
    super::job::reconcile(Arc::new(object), Context::new(client, None)).await.expect("reconciles")
}

#[tokio::test]
async fn a_new_lora_job_gets_its_job_and_a_status() {
    let object = lora_job(None);
    let (client, script) = testing::pair();
    let server = script.run(vec![
        Expect::get(format!("{JOBS}/ftjob-7")).not_found(),
        Expect::post(JOBS).check(|job| {
            assert_eq!(job["metadata"]["name"], "ftjob-7");
            assert_eq!(job["metadata"]["ownerReferences"][0]["uid"], "uid-7");
            assert_eq!(job["metadata"]["ownerReferences"][0]["controller"], true);
            assert_eq!(job["metadata"]["ownerReferences"][0]["blockOwnerDeletion"], true);
            assert_eq!(job["metadata"]["labels"]["openledger.io/lora-job"], "ftjob-7");
            assert!(job["metadata"]["labels"].get("kueue.x-k8s.io/queue-name").is_none());
            let spec = &job["spec"];
            assert!(spec.get("suspend").is_none(), "no queue: not suspended");
            assert_eq!(spec["backoffLimit"], 2);
            assert_eq!(spec["activeDeadlineSeconds"], 3600);
            // A training that failed is not tried again; an evicted pod does not use up a retry.
            let rules = &spec["podFailurePolicy"]["rules"];
            assert_eq!(rules[0]["action"], "Ignore");
            assert_eq!(rules[0]["onPodConditions"][0]["type"], "DisruptionTarget");
            assert_eq!(rules[1]["action"], "FailJob");
            assert_eq!(
                rules[1]["onExitCodes"],
                json!({"containerName": "trainer", "operator": "In", "values": [1, 2]})
            );
            let pod = &spec["template"]["spec"];
            assert_eq!(pod["restartPolicy"], "Never");
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
            assert_eq!(pod["volumes"][0]["persistentVolumeClaim"]["claimName"], "ol-data");
            let container = &pod["containers"][0];
            assert_eq!(container["args"], json!(["train-job", "ftjob-7"]));
            assert_eq!(container["resources"]["limits"]["nvidia.com/gpu"], "1");
            assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
            assert!(
                container["env"]
                    .as_array()
                    .expect("env")
                    .contains(&json!({"name": "OPENLEDGER_BASE_MODEL", "value": "smollm2-135m"}))
            );
        }),
        Expect::post(EVENTS).check(|event| assert_eq!(event["reason"], "Created")),
        Expect::patch(format!("{LORA_JOBS}/ftjob-7/status")).merged_into(json_of(&object)).check(|patch| {
            let status = &patch["status"];
            assert_eq!(status["phase"], "Pending");
            assert_eq!(status["jobName"], "ftjob-7");
            assert_eq!(status["observedGeneration"], 1);
            assert_eq!(status["conditions"][0]["type"], "Admitted");
            assert_eq!(status["conditions"][0]["status"], "True");
            assert!(status.get("progress").is_none(), "progress is the model-factory's");
        }),
    ]);
    assert_eq!(reconcile(object, client).await, Action::requeue(super::RESYNC));
    let requests = server.finish().await;
    assert_eq!(requests.iter().filter(|request| request.is_write()).count(), 3);
}

#[tokio::test]
async fn a_lora_job_in_sync_costs_one_read_and_no_write() {
    // First pass: the Job exists and runs; the status is written once.
    let object = lora_job(None);
    let running = job_with("ftjob-7", false, json!({"active": 1}));
    let (client, script) = testing::pair();
    let server = script.run(vec![
        Expect::get(format!("{JOBS}/ftjob-7")).returns(running.clone()),
        Expect::patch(format!("{LORA_JOBS}/ftjob-7/status"))
            .merged_into(json_of(&object))
            .check(|patch| assert_eq!(patch["status"]["phase"], "Running")),
    ]);
    reconcile(object.clone(), client).await;
    let requests = server.finish().await;
    let synced = with_status(&object, &requests[1]);
    // The model-factory's progress does not count as a difference.
    let mut synced_with_progress = synced.clone();
    synced_with_progress.status.as_mut().expect("status").progress =
        Some(crate::crd::LoraJobProgress { status: "running".into(), step: 40, ..Default::default() });

    for object in [synced, synced_with_progress] {
        let (client, script) = testing::pair();
        let server = script.run(vec![Expect::get(format!("{JOBS}/ftjob-7")).returns(running.clone())]);
        reconcile(object, client).await;
        let requests = server.finish().await;
        assert_eq!(requests.len(), 1);
        assert!(!requests[0].is_write());
    }
}

#[tokio::test]
async fn a_queued_lora_job_waits_suspended_until_kueue_admits_it() {
    let object = lora_job(Some("gpu-queue"));
    let (client, script) = testing::pair();
    let server = script.run(vec![
        Expect::get(format!("{JOBS}/ftjob-7")).not_found(),
        Expect::post(JOBS).check(|job| {
            assert_eq!(job["spec"]["suspend"], true);
            assert_eq!(job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"], "gpu-queue");
            assert_eq!(job["spec"]["template"]["metadata"]["labels"]["kueue.x-k8s.io/queue-name"], Value::Null);
        }),
        Expect::post(EVENTS),
        Expect::patch(format!("{LORA_JOBS}/ftjob-7/status")).merged_into(json_of(&object)).check(|patch| {
            assert_eq!(patch["status"]["phase"], "Queued");
            let admitted = &patch["status"]["conditions"][0];
            assert_eq!((admitted["type"].as_str(), admitted["status"].as_str()), (Some("Admitted"), Some("False")));
            assert_eq!(admitted["reason"], "Suspended");
            assert!(admitted["message"].as_str().expect("message").contains("gpu-queue"));
        }),
    ]);
    reconcile(object.clone(), client).await;
    let requests = server.finish().await;
    let queued = with_status(&object, &requests[3]);
    assert_eq!(queued.status.as_ref().map(|status| status.run.phase), Some(JobPhase::Queued));

    // Kueue resumes the Job; a pod starts.
    let (client, script) = testing::pair();
    let server = script.run(vec![
        Expect::get(format!("{JOBS}/ftjob-7")).returns(job_with("ftjob-7", false, json!({"active": 1}))),
        Expect::patch(format!("{LORA_JOBS}/ftjob-7/status")).merged_into(json_of(&queued)).check(|patch| {
            assert_eq!(patch["status"]["phase"], "Running");
            assert_eq!(patch["status"]["conditions"][0]["status"], "True");
            assert_eq!(patch["status"]["conditions"][0]["reason"], "Admitted");
        }),
        Expect::post(EVENTS).check(|event| assert_eq!(event["reason"], "Admitted")),
    ]);
    reconcile(queued, client).await;
    server.finish().await;
}

#[tokio::test]
async fn a_failed_job_turns_into_the_failed_condition_with_its_reason() {
    let object = lora_job(None);
    let failed = job_with(
        "ftjob-7",
        false,
        json!({"failed": 3, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}),
    );
    let (client, script) = testing::pair();
    let server = script.run(vec![
        Expect::get(format!("{JOBS}/ftjob-7")).returns(failed),
        Expect::patch(format!("{LORA_JOBS}/ftjob-7/status")).merged_into(json_of(&object)).check(|patch| {
            let status = &patch["status"];
            assert_eq!(status["phase"], "Failed");
            assert_eq!(status["failedPods"], 3);
            let failed = status["conditions"]
                .as_array()
                .expect("conditions")
                .iter()
                .find(|c| c["type"] == "Failed")
                .expect("Failed");
            assert_eq!(failed["status"], "True");
            assert_eq!(failed["reason"], "BackoffLimitExceeded");
            assert_eq!(failed["message"], "Job has reached the specified backoff limit");
        }),
        Expect::post(EVENTS).check(|event| {
            assert_eq!(event["type"], "Warning");
            assert_eq!(event["reason"], "Failed");
        }),
    ]);
    // Finished: nothing more to do until the resource changes.
    assert_eq!(reconcile(object, client).await, Action::await_change());
    server.finish().await;
}

#[tokio::test]
async fn a_finished_job_removed_by_its_ttl_is_not_run_again() {
    let mut object = lora_job(None);
    object.status = Some(crate::crd::LoraJobStatus {
        run: crate::crd::JobRun { phase: JobPhase::Succeeded, job_name: Some("ftjob-7".into()), ..Default::default() },
        ..Default::default()
    });
    let (client, script) = testing::pair();
    let server = script.run(vec![Expect::get(format!("{JOBS}/ftjob-7")).not_found()]);
    assert_eq!(reconcile(object, client).await, Action::await_change());
    assert_eq!(server.finish().await.len(), 1);
}

#[tokio::test]
async fn an_impossible_spec_is_reported_in_a_condition_without_a_job() {
    // The schema refuses this; a resource created before the schema was installed is not.
    let mut object = lora_job(None);
    object.spec.backoff_limit = 50;
    let (client, script) = testing::pair();
    let server = script.run(vec![
        Expect::patch(format!("{LORA_JOBS}/ftjob-7/status")).merged_into(json_of(&object)).check(|patch| {
            let status = &patch["status"];
            assert_eq!(status["phase"], "Failed");
            assert_eq!(status["conditions"][0]["reason"], "InvalidSpec");
            assert!(status["conditions"][0]["message"].as_str().expect("message").contains("backoffLimit 50"));
        }),
        Expect::post(EVENTS).check(|event| assert_eq!(event["type"], "Warning")),
    ]);
    assert_eq!(reconcile(object.clone(), client).await, Action::await_change());
    let requests = server.finish().await;
    // Reported once: the next reconcile writes nothing.
    let reported = with_status(&object, &requests[0]);
    let (client, script) = testing::pair();
    let server = script.run(vec![]);
    reconcile(reported, client).await;
    assert!(server.finish().await.is_empty());
}

#[tokio::test]
async fn a_lora_job_being_deleted_is_left_to_the_garbage_collector() {
    // No finalizer: the owner reference takes the Job (and its pods, first, when the service
    // deletes in the foreground); the operator writes nothing.
    let mut object = lora_job(None);
    object.meta_mut().deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()));
    let (client, script) = testing::pair();
    let server = script.run(vec![]);
    assert_eq!(reconcile(object, client).await, Action::await_change());
    assert!(server.finish().await.is_empty());
}

#[tokio::test]
async fn a_job_of_the_same_name_that_is_not_ours_is_not_adopted() {
    // A leftover of an earlier LoraJob of this name (orphaned), complete: not this one's result.
    let object = lora_job(None);
    let mut leftover =
        job_with("ftjob-7", false, json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}));
    leftover["metadata"]["ownerReferences"][0]["uid"] = json!("uid-of-another");
    let (client, script) = testing::pair();
    let server = script.run(vec![
        Expect::get(format!("{JOBS}/ftjob-7")).returns(leftover),
        Expect::patch(format!("{LORA_JOBS}/ftjob-7/status")).merged_into(json_of(&object)).check(|patch| {
            assert_eq!(patch["status"]["phase"], "Failed");
            assert_eq!(patch["status"]["conditions"][0]["reason"], "Conflict");
        }),
        Expect::post(EVENTS).check(|event| assert_eq!(event["type"], "Warning")),
    ]);
    assert_eq!(reconcile(object, client).await, Action::await_change());
    server.finish().await;
}

fn attribution_job() -> AttributionJob {
    let mut job = AttributionJob::new(
        "span-snap-3",
        AttributionJobSpec {
            index: IndexKind::Gradient,
            target: "ft:smollm2:alice:medical:ftjob-7".into(),
            shards: 4,
            parallelism: Some(2),
            pod: pod(),
            backoff_limit_per_index: 1,
            queue_name: None,
            active_deadline_seconds: None,
            ttl_seconds_after_finished: Some(600),
        },
    );
    let meta = job.meta_mut();
    meta.namespace = Some(NS.into());
    meta.uid = Some("uid-3".into());
    meta.generation = Some(1);
    job
}

#[tokio::test]
async fn an_attribution_job_runs_as_an_indexed_job_one_completion_per_shard() {
    let object = attribution_job();
    let path = "/apis/openledger.io/v1alpha1/namespaces/ml/attributionjobs/span-snap-3/status";
    let (client, script) = testing::pair();
    let server = script.run(vec![
        Expect::get(format!("{JOBS}/span-snap-3")).not_found(),
        Expect::post(JOBS).check(|job| {
            let spec = &job["spec"];
            assert_eq!(spec["completionMode"], "Indexed");
            assert_eq!(spec["completions"], 4);
            assert_eq!(spec["parallelism"], 2);
            assert_eq!(spec["backoffLimitPerIndex"], 1);
            assert_eq!(spec["podFailurePolicy"]["rules"][0]["action"], "Ignore");
            assert_eq!(spec["ttlSecondsAfterFinished"], 600);
            let container = &spec["template"]["spec"]["containers"][0];
            assert_eq!(
                container["args"],
                json!(["index-job", "gradient", "ft:smollm2:alice:medical:ftjob-7", "--shards", "4"])
            );
            assert!(container["resources"].is_null(), "no GPUs, no resources asked");
        }),
        Expect::post(EVENTS),
        Expect::patch(path).merged_into(json_of(&object)),
    ]);
    reconcile(object.clone(), client).await;
    server.finish().await;

    // Two shards done, one failed for good: the counts and the failure reach the status.
    let job = job_with(
        "span-snap-3",
        false,
        json!({"active": 1, "succeeded": 2, "completedIndexes": "0,2", "failedIndexes": "1",
               "conditions": [{"type": "FailureTarget", "status": "True"}]}),
    );
    let (client, script) = testing::pair();
    let server = script.run(vec![
        Expect::get(format!("{JOBS}/span-snap-3")).returns(job),
        Expect::patch(path).merged_into(json_of(&object)).check(|patch| {
            let status = &patch["status"];
            assert_eq!(status["phase"], "Running");
            assert_eq!(status["succeededShards"], 2);
            assert_eq!(status["completedShards"], "0,2");
            assert_eq!(status["failedShards"], "1");
        }),
    ]);
    reconcile(object, client).await;
    server.finish().await;
}
