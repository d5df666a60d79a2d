//! `LoraJob` → a `batch/v1` Job whose pod runs `openledger train-job <jobId>`.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement, PodFailurePolicyRule,
};
use serde_json::Value;

use super::{
    job::{JobResource, owned_fields},
    pod::{self, Workload},
};
use crate::crd::{JobRun, LoraJob, LoraJobStatus};

/// The training container's name.
const CONTAINER: &str = "trainer";

/// Status fields the model-factory writes, not the operator.
const NOT_OURS: &[&str] = &["progress"];

impl JobResource for LoraJob {
    const COMPONENT: &'static str = "openledger-trainer";
    const LABEL: &'static str = "lora-job";

    fn problem(&self) -> Option<String> {
        let spec = &self.spec;
        if spec.pod.image.trim().is_empty() {
            return Some("spec.image is empty".into());
        }
        if !(0..=20).contains(&spec.backoff_limit) {
            return Some(format!("spec.backoffLimit {} is outside 0..=20", spec.backoff_limit));
        }
        if spec.gpus > 16 {
            return Some(format!("spec.gpus {} is above 16", spec.gpus));
        }
        if spec.active_deadline_seconds.is_some_and(|seconds| seconds < 1) {
            return Some("spec.activeDeadlineSeconds must be at least 1".into());
        }
        None
    }

    fn queue_name(&self) -> Option<&str> {
        self.spec.queue_name.as_deref()
    }

    fn job_spec(&self, labels: BTreeMap<String, String>) -> JobSpec {
        let spec = &self.spec;
        let workload = Workload {
            container: CONTAINER,
            args: vec!["train-job".to_owned(), spec.job_id.clone()],
            env: vec![("OPENLEDGER_BASE_MODEL", spec.base_model.clone())],
            ports: Vec::new(),
            gpus: spec.gpus,
            restart_policy: Some("Never"),
        };
        JobSpec {
            backoff_limit: Some(spec.backoff_limit),
            pod_failure_policy: Some(failure_policy()),
            active_deadline_seconds: spec.active_deadline_seconds,
            ttl_seconds_after_finished: spec.ttl_seconds_after_finished,
            template: pod::template(&spec.pod, workload, labels),
            ..JobSpec::default()
        }
    }

    fn owned_status(&self) -> Option<Value> {
        self.status.as_ref().map(|status| owned_fields(status, NOT_OURS))
    }

    fn status_for(observation: &JobRun, job: Option<&Job>) -> Value {
        let status = LoraJobStatus {
            run: observation.clone(),
            failed_pods: job.and_then(|job| job.status.as_ref()?.failed).unwrap_or(0),
            progress: None,
        };
        owned_fields(&status, NOT_OURS)
    }

    fn run(&self) -> Option<&JobRun> {
        self.status.as_ref().map(|status| &status.run)
    }
}

/// How `openledger train-job` ends, as the Job should read it: 1 (the training failed) and 2
/// (it cannot start) fail the Job at once, a retry would end the same way; a pod evicted or
/// preempted (`DisruptionTarget`) does not use up a retry; any other end (75: the job was left
/// running, e.g. a service was unreachable) is retried up to `backoffLimit`, resuming from the
/// last checkpoint.
fn failure_policy() -> PodFailurePolicy {
    PodFailurePolicy {
        rules: vec![
            super::job::ignore_disruptions(),
            PodFailurePolicyRule {
                action: "FailJob".to_owned(),
                on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                    container_name: Some(CONTAINER.to_owned()),
                    operator: "In".to_owned(),
                    values: vec![1, 2],
                }),
                ..PodFailurePolicyRule::default()
            },
        ],
    }
}
