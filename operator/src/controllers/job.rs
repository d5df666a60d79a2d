//! What `LoraJob` and `AttributionJob` share: each runs as one `batch/v1` Job the resource
//! owns, created once (suspended for Kueue when a queue is named), never changed, observed
//! into the resource's status, and deleted with the resource by the garbage collector: no
//! finalizer, so a resource is never stuck when the operator is away. The services delete
//! their resources in the foreground (the Job and its pods go first, each owner reference
//! blocks its owner's deletion), so a resource of the same name is made again only once the
//! old pods are gone: two pods never train one job.

use std::{collections::BTreeMap, fmt::Debug, sync::Arc};

use k8s_openapi::{
    api::batch::v1::{Job, JobSpec},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::controller::Action,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

use super::{Context, Error, MANAGER, RESYNC};
use crate::{
    conditions::{self, Observed},
    crd::{JobPhase, JobRun},
};

/// Kueue's label naming the `LocalQueue` of a Job.
pub const KUEUE_QUEUE_LABEL: &str = "kueue.x-k8s.io/queue-name";

/// A resource the operator runs as one Job.
pub trait JobResource:
    Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// `app.kubernetes.io/name` of its Job and pods.
    const COMPONENT: &'static str;
    /// The label `openledger.io/<LABEL>: <name>` on its Job and pods.
    const LABEL: &'static str;

    /// What is wrong with the spec that the schema could not say, if anything.
    fn problem(&self) -> Option<String>;
    fn queue_name(&self) -> Option<&str>;
    /// The Job's spec (without suspension, which comes from the queue).
    fn job_spec(&self, labels: BTreeMap<String, String>) -> JobSpec;
    /// The status fields the operator owns, as they are on the resource now.
    fn owned_status(&self) -> Option<Value>;
    /// Those fields for `observation` (and the Job, for kind-specific counts).
    fn status_for(observation: &JobRun, job: Option<&Job>) -> Value;
    /// What its status says of its Job now.
    fn run(&self) -> Option<&JobRun>;
}

/// Reconciles one job-like resource.
pub async fn reconcile<K: JobResource>(object: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = object.namespace().ok_or_else(|| Error::Other("the resource has no namespace".into()))?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
    let key = super::key(object.as_ref());
    ctx.metrics.reconciled(K::kind(&()).as_ref());
    // Going: the garbage collector removes its Job through the owner reference.
    if object.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    // Boxed: the apply future is large (kube request builders), and every caller awaits this one.
    let action = Box::pin(apply(object.as_ref(), &ctx, &api, &namespace)).await?;
    ctx.succeeded(&key);
    Ok(action)
}

async fn apply<K: JobResource>(object: &K, ctx: &Context, api: &Api<K>, namespace: &str) -> Result<Action, Error> {
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let name = object.name_any();
    let phase = object.run().map(|run| run.phase).unwrap_or_default();
    let generation = object.meta().generation;
    let conditions = object.run().map(|run| run.conditions.clone()).unwrap_or_default();
    let mut observation = JobRun { phase, conditions, observed_generation: generation, job_name: None };
    let now = Timestamp::now();
    let job = if let Some(problem) = object.problem() {
        observation.phase = JobPhase::Failed;
        let failed = Observed { type_: "Failed", status: true, reason: "InvalidSpec", message: problem };
        conditions::set(&mut observation.conditions, failed, generation, now);
        None
    } else {
        match jobs.get_opt(&name).await? {
            Some(job) if !controlled_by(&job, object) => {
                observation.phase = JobPhase::Failed;
                let message =
                    format!("a Job named {name} exists and is not this resource's: delete it or rename this one");
                let conflict = Observed { type_: "Failed", status: true, reason: "Conflict", message };
                conditions::set(&mut observation.conditions, conflict, generation, now);
                None
            }
            Some(job) => Some(job),
            // A finished Job removed by its time-to-live is not run again; its status stays.
            None if phase.is_finished() => return Ok(Action::await_change()),
            None => {
                let job = create_job(object, &jobs).await?;
                ctx.metrics.wrote(K::kind(&()).as_ref());
                ctx.event(object, false, "Created", format!("created Job {name}")).await;
                Some(job)
            }
        }
    };
    if let Some(job) = &job {
        observe(object, job, &mut observation, now);
    }
    let status = K::status_for(&observation, job.as_ref());
    if object.owned_status().as_ref() != Some(&status) {
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({ "status": status }))).await?;
        ctx.metrics.wrote(K::kind(&()).as_ref());
        announce(object, ctx, phase, &observation).await;
    }
    Ok(if observation.phase.is_finished() { Action::await_change() } else { Action::requeue(RESYNC) })
}

async fn create_job<K: JobResource>(object: &K, jobs: &Api<Job>) -> Result<Job, Error> {
    let name = object.name_any();
    let mut labels = super::pod::labels(K::COMPONENT, K::LABEL, &name);
    let mut spec = object.job_spec(labels.clone());
    if let Some(queue) = object.queue_name() {
        labels.insert(KUEUE_QUEUE_LABEL.to_owned(), queue.to_owned());
        // Kueue admits a suspended Job by resuming it.
        spec.suspend = Some(true);
    }
    let job = Job {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: object.namespace(),
            labels: Some(labels),
            owner_references: super::owner(object).map(|owner| vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    };
    let params = PostParams { field_manager: Some(MANAGER.to_owned()), ..PostParams::default() };
    match jobs.create(&params, &job).await {
        Ok(job) => Ok(job),
        // Made since the read: ours if it is controlled by this resource, checked by the caller's
        // next reconcile like any other.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(jobs.get(&name).await?),
        Err(error) => Err(error.into()),
    }
}

/// Whether `job` is controlled by `object` (same uid), not a leftover of another resource.
fn controlled_by<K: Resource<DynamicType = ()>>(job: &Job, object: &K) -> bool {
    let uid = object.meta().uid.as_deref();
    job.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|owner| owner.controller == Some(true) && Some(owner.uid.as_str()) == uid)
}

/// The phase and conditions the Job shows.
fn observe<K: JobResource>(object: &K, job: &Job, observation: &mut JobRun, now: Timestamp) {
    let generation = observation.observed_generation;
    observation.job_name = job.metadata.name.clone();
    let status = job.status.clone().unwrap_or_default();
    let job_condition = |type_: &str| {
        status.conditions.iter().flatten().find(|condition| condition.type_ == type_ && condition.status == "True")
    };
    let suspended = job.spec.as_ref().and_then(|spec| spec.suspend).unwrap_or(false);
    let admitted = if suspended {
        let message = match object.queue_name() {
            Some(queue) => format!("waiting for Kueue to admit the Job from queue {queue}"),
            None => "the Job is suspended".to_owned(),
        };
        Observed { type_: "Admitted", status: false, reason: "Suspended", message }
    } else {
        Observed { type_: "Admitted", status: true, reason: "Admitted", message: "the Job may run".to_owned() }
    };
    conditions::set(&mut observation.conditions, admitted, generation, now);
    observation.phase = if let Some(failed) = job_condition("Failed") {
        let reason = failed.reason.clone().unwrap_or_else(|| "JobFailed".to_owned());
        let message = failed.message.clone().unwrap_or_default();
        conditions::set(
            &mut observation.conditions,
            Observed { type_: "Failed", status: true, reason: &reason, message },
            generation,
            now,
        );
        JobPhase::Failed
    } else if job_condition("Complete").is_some() {
        let complete =
            Observed { type_: "Complete", status: true, reason: "Succeeded", message: "the Job completed".to_owned() };
        conditions::set(&mut observation.conditions, complete, generation, now);
        JobPhase::Succeeded
    } else if suspended {
        JobPhase::Queued
    } else if status.active.unwrap_or(0) > 0 {
        JobPhase::Running
    } else {
        JobPhase::Pending
    };
}

/// Events for what changed: admission, success, failure.
async fn announce<K: JobResource>(object: &K, ctx: &Context, before: JobPhase, now: &JobRun) {
    if before == now.phase {
        return;
    }
    let note = |type_: &str| conditions::get(&now.conditions, type_).map(|c| c.message.clone()).unwrap_or_default();
    match now.phase {
        JobPhase::Failed => ctx.event(object, true, "Failed", note("Failed")).await,
        JobPhase::Succeeded => ctx.event(object, false, "Succeeded", note("Complete")).await,
        JobPhase::Running if before == JobPhase::Queued => ctx.event(object, false, "Admitted", note("Admitted")).await,
        _ => {}
    }
}

/// The JSON object of a status struct's operator-owned fields (`drop` removes the others).
pub fn owned_fields<S: Serialize>(status: &S, drop: &[&str]) -> Value {
    let mut value = serde_json::to_value(status).expect("a status serializes");
    if let Value::Object(map) = &mut value {
        for key in drop {
            map.remove(*key);
        }
    }
    value
}

/// The pod failure rule every job-like resource has: a pod evicted, preempted or drained
/// (`DisruptionTarget`) is replaced without using up a retry.
pub fn ignore_disruptions() -> k8s_openapi::api::batch::v1::PodFailurePolicyRule {
    use k8s_openapi::api::batch::v1::{PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule};
    PodFailurePolicyRule {
        action: "Ignore".to_owned(),
        on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
            type_: "DisruptionTarget".to_owned(),
            status: "True".to_owned(),
        }]),
        ..PodFailurePolicyRule::default()
    }
}
