//! `AttributionJob` → an Indexed `batch/v1` Job, one completion per index shard; pod `i` runs
//! `openledger index-job <index> <target> --shards <shards>` with `JOB_COMPLETION_INDEX=i`.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use serde_json::Value;

use super::{
    job::{JobResource, owned_fields},
    pod::{self, Workload},
};
use crate::crd::{AttributionJob, AttributionJobStatus, JobRun};

impl JobResource for AttributionJob {
    const COMPONENT: &'static str = "openledger-indexer";
    const LABEL: &'static str = "attribution-job";

    fn problem(&self) -> Option<String> {
        let spec = &self.spec;
        if spec.pod.image.trim().is_empty() {
            return Some("spec.image is empty".into());
        }
        if !(1..=1024).contains(&spec.shards) {
            return Some(format!("spec.shards {} is outside 1..=1024", spec.shards));
        }
        if let Some(parallelism) = spec.parallelism
            && !(1..=spec.shards).contains(&parallelism)
        {
            return Some(format!("spec.parallelism {parallelism} is outside 1..=shards ({})", spec.shards));
        }
        if !(0..=20).contains(&spec.backoff_limit_per_index) {
            return Some(format!("spec.backoffLimitPerIndex {} is outside 0..=20", spec.backoff_limit_per_index));
        }
        None
    }

    fn queue_name(&self) -> Option<&str> {
        self.spec.queue_name.as_deref()
    }

    fn job_spec(&self, labels: BTreeMap<String, String>) -> JobSpec {
        let spec = &self.spec;
        let workload = Workload {
            container: "indexer",
            args: vec![
                "index-job".to_owned(),
                spec.index.as_str().to_owned(),
                spec.target.clone(),
                "--shards".to_owned(),
                spec.shards.to_string(),
            ],
            env: Vec::new(),
            ports: Vec::new(),
            gpus: 0,
            restart_policy: Some("Never"),
        };
        JobSpec {
            completion_mode: Some("Indexed".to_owned()),
            completions: Some(spec.shards),
            parallelism: Some(spec.parallelism.unwrap_or(spec.shards)),
            backoff_limit_per_index: Some(spec.backoff_limit_per_index),
            pod_failure_policy: Some(k8s_openapi::api::batch::v1::PodFailurePolicy {
                rules: vec![super::job::ignore_disruptions()],
            }),
            active_deadline_seconds: spec.active_deadline_seconds,
            ttl_seconds_after_finished: spec.ttl_seconds_after_finished,
            template: pod::template(&spec.pod, workload, labels),
            ..JobSpec::default()
        }
    }

    fn owned_status(&self) -> Option<Value> {
        self.status.as_ref().map(|status| owned_fields(status, &[]))
    }

    fn status_for(observation: &JobRun, job: Option<&Job>) -> Value {
        let job_status = job.and_then(|job| job.status.clone()).unwrap_or_default();
        let status = AttributionJobStatus {
            run: observation.clone(),
            succeeded_shards: job_status.succeeded.unwrap_or(0),
            completed_shards: job_status.completed_indexes.filter(|indexes| !indexes.is_empty()),
            failed_shards: job_status.failed_indexes.filter(|indexes| !indexes.is_empty()),
        };
        owned_fields(&status, &[])
    }

    fn run(&self) -> Option<&JobRun> {
        self.status.as_ref().map(|status| &status.run)
    }
}
