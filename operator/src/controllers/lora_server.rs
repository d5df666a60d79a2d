//! `LoraServer` → engine replicas: a Deployment, a Service (whose EndpointSlices the REST edge
//! follows), a HorizontalPodAutoscaler when `maxReplicas` is above `replicas`, and a
//! PodDisruptionBudget when more than one replica may run. The children carry owner
//! references, so the garbage collector removes them with the resource: no finalizer (an
//! uninstall that removes the operator first cannot leave the resource stuck).

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec},
        autoscaling::v2::{
            CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
            MetricTarget, ResourceMetricSource,
        },
        core::v1::{ContainerPort, Service, ServicePort, ServiceSpec},
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use serde_json::json;

use super::{
    Context, Error, RESYNC,
    children::{Change, ensure, ensure_absent},
    pod::{self, Workload},
};
use crate::{
    conditions::{self, Observed},
    crd::{LoraServer, LoraServerStatus},
};

const COMPONENT: &str = "openledger-engine";
const LABEL: &str = "lora-server";

/// Reconciles one `LoraServer`.
pub async fn reconcile(object: Arc<LoraServer>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = object.namespace().ok_or_else(|| Error::Other("the resource has no namespace".into()))?;
    let name = object.name_any();
    let key = super::key(object.as_ref());
    ctx.metrics.reconciled("LoraServer");
    let client = ctx.client.clone();
    let mut status = object.status.clone().unwrap_or_default();
    let generation = object.meta().generation;
    let now = Timestamp::now();
    if let Some(problem) = problem(&object) {
        let invalid = Observed { type_: "Ready", status: false, reason: "InvalidSpec", message: problem.clone() };
        conditions::set(&mut status.conditions, invalid, generation, now);
        status.observed_generation = generation;
        if write_status(&object, &ctx, &namespace, status).await? {
            ctx.event(object.as_ref(), true, "InvalidSpec", problem).await;
        }
        ctx.succeeded(&key);
        return Ok(Action::await_change());
    }

    let mut changes = Vec::new();
    let (deployment, change) = ensure(&Api::namespaced(client.clone(), &namespace), deployment(&object)).await?;
    changes.push(("Deployment", change));
    let (_, change) = ensure(&Api::<Service>::namespaced(client.clone(), &namespace), service(&object)).await?;
    changes.push(("Service", change));
    let autoscalers: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &namespace);
    match autoscaler(&object) {
        Some(wanted) => changes.push(("HorizontalPodAutoscaler", ensure(&autoscalers, wanted).await?.1)),
        None => {
            if ensure_absent(&autoscalers, &name).await? {
                changes.push(("HorizontalPodAutoscaler", Change::Updated));
            }
        }
    }
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client, &namespace);
    match disruption_budget(&object) {
        Some(wanted) => changes.push(("PodDisruptionBudget", ensure(&budgets, wanted).await?.1)),
        None => {
            if ensure_absent(&budgets, &name).await? {
                changes.push(("PodDisruptionBudget", Change::Updated));
            }
        }
    }
    // One event per reconcile that changed something (the recorder folds repeats of a reason).
    let done: Vec<String> = changes
        .iter()
        .filter(|(_, change)| *change != Change::InSync)
        .map(|(kind, change)| format!("{} {kind}", if *change == Change::Created { "created" } else { "updated" }))
        .collect();
    if !done.is_empty() {
        for _ in &done {
            ctx.metrics.wrote("LoraServer");
        }
        ctx.event(object.as_ref(), false, "Reconciled", format!("{name}: {}", done.join(", "))).await;
    }

    let wanted = object.spec.replicas;
    let deployment_status = deployment.status.unwrap_or_default();
    status.replicas = deployment_status.replicas.unwrap_or(0);
    status.ready_replicas = deployment_status.ready_replicas.unwrap_or(0);
    status.service = Some(name.clone());
    status.observed_generation = generation;
    let ready = if status.ready_replicas >= wanted {
        Observed {
            type_: "Ready",
            status: true,
            reason: "Available",
            message: format!("{} replicas ready", status.ready_replicas),
        }
    } else {
        let message = format!("{} of {wanted} replicas ready", status.ready_replicas);
        Observed { type_: "Ready", status: false, reason: "Progressing", message }
    };
    conditions::set(&mut status.conditions, ready, generation, now);
    write_status(&object, &ctx, &namespace, status).await?;
    ctx.succeeded(&key);
    Ok(Action::requeue(RESYNC))
}

/// Patches the status when it differs from the resource's; whether it did.
async fn write_status(
    object: &LoraServer,
    ctx: &Context,
    namespace: &str,
    status: LoraServerStatus,
) -> Result<bool, Error> {
    if object.status.as_ref() == Some(&status) {
        return Ok(false);
    }
    let api: Api<LoraServer> = Api::namespaced(ctx.client.clone(), namespace);
    api.patch_status(&object.name_any(), &PatchParams::default(), &Patch::Merge(json!({ "status": status }))).await?;
    ctx.metrics.wrote("LoraServer");
    Ok(true)
}

/// What the schema cannot say (or a resource from before the schema).
fn problem(object: &LoraServer) -> Option<String> {
    let spec = &object.spec;
    if spec.pod.image.trim().is_empty() {
        return Some("spec.image is empty".into());
    }
    if !(1..=1000).contains(&spec.replicas) {
        return Some(format!("spec.replicas {} is outside 1..=1000", spec.replicas));
    }
    if let Some(max) = spec.max_replicas
        && max < spec.replicas
    {
        return Some(format!("spec.maxReplicas {max} is below spec.replicas {}", spec.replicas));
    }
    if !(1..=65535).contains(&spec.port) {
        return Some(format!("spec.port {} is not a port", spec.port));
    }
    if spec.adapter_cache_bytes < 0 {
        return Some("spec.adapterCacheBytes is negative".into());
    }
    None
}

fn meta(object: &LoraServer, labels: &BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(object.name_any()),
        namespace: object.namespace(),
        labels: Some(labels.clone()),
        owner_references: super::owner(object).map(|owner| vec![owner]),
        ..ObjectMeta::default()
    }
}

fn selector(object: &LoraServer) -> BTreeMap<String, String> {
    BTreeMap::from([(format!("openledger.io/{LABEL}"), object.name_any())])
}

fn scales(object: &LoraServer) -> bool {
    object.spec.max_replicas.is_some_and(|max| max > object.spec.replicas)
}

fn deployment(object: &LoraServer) -> Deployment {
    let spec = &object.spec;
    let labels = pod::labels(COMPONENT, LABEL, &object.name_any());
    let workload = Workload {
        container: "engine",
        args: vec!["engine".to_owned()],
        env: vec![
            ("OPENLEDGER_BASE_MODEL", spec.base_model.clone()),
            ("OPENLEDGER_LISTEN_HOST", "0.0.0.0".to_owned()),
            ("OPENLEDGER_ENGINE_PORT", spec.port.to_string()),
            ("OPENLEDGER_ADAPTER_CACHE_BYTES", spec.adapter_cache_bytes.to_string()),
            ("OPENLEDGER_ENGINE_PRELOAD_ADAPTERS", spec.preload_adapters.join(",")),
            ("OPENLEDGER_ENGINE_THREADS", spec.threads.to_string()),
            ("OPENLEDGER_ENGINE_MAX_BATCH_SIZE", spec.max_batch_size.to_string()),
            // The probes' port, whatever the settings the pod also reads (envFrom) say.
            ("OPENLEDGER_OPS_BASE_PORT", OPS_PORT.to_string()),
        ],
        ports: vec![ContainerPort {
            name: Some("grpc".to_owned()),
            container_port: spec.port,
            ..ContainerPort::default()
        }],
        gpus: 0,
        restart_policy: None,
    };
    let mut template = pod::template(&spec.pod, workload, labels.clone());
    if let Some(container) = template.spec.as_mut().and_then(|pod| pod.containers.first_mut()) {
        // The replica's ops port (`ops_base_port`) answers /healthz and /readyz (the base model
        // loaded, preloaded adapters in the cache).
        let probe = |path: &str| k8s_openapi::api::core::v1::Probe {
            http_get: Some(k8s_openapi::api::core::v1::HTTPGetAction {
                path: Some(path.to_owned()),
                port: IntOrString::Int(OPS_PORT),
                ..Default::default()
            }),
            period_seconds: Some(10),
            ..Default::default()
        };
        container.liveness_probe = Some(probe("/healthz"));
        container.readiness_probe = Some(probe("/readyz"));
    }
    Deployment {
        metadata: meta(object, &labels),
        spec: Some(DeploymentSpec {
            // With an autoscaler the replica count is its to set.
            replicas: (!scales(object)).then_some(spec.replicas),
            selector: LabelSelector { match_labels: Some(selector(object)), match_expressions: None },
            template,
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// The engine replica's ops port (`ops_base_port`'s default).
const OPS_PORT: i32 = 9091;

fn service(object: &LoraServer) -> Service {
    let labels = pod::labels(COMPONENT, LABEL, &object.name_any());
    Service {
        metadata: meta(object, &labels),
        spec: Some(ServiceSpec {
            selector: Some(selector(object)),
            ports: Some(vec![ServicePort {
                name: Some("grpc".to_owned()),
                port: object.spec.port,
                target_port: Some(IntOrString::String("grpc".to_owned())),
                app_protocol: Some("grpc".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn autoscaler(object: &LoraServer) -> Option<HorizontalPodAutoscaler> {
    let max = object.spec.max_replicas.filter(|_| scales(object))?;
    let labels = pod::labels(COMPONENT, LABEL, &object.name_any());
    Some(HorizontalPodAutoscaler {
        metadata: meta(object, &labels),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".to_owned()),
                kind: "Deployment".to_owned(),
                name: object.name_any(),
            },
            min_replicas: Some(object.spec.replicas),
            max_replicas: max,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".to_owned(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".to_owned(),
                    target: MetricTarget {
                        type_: "Utilization".to_owned(),
                        average_utilization: Some(object.spec.target_cpu_utilization),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            behavior: None,
        }),
        status: None,
    })
}

fn disruption_budget(object: &LoraServer) -> Option<PodDisruptionBudget> {
    let most = object.spec.max_replicas.unwrap_or(object.spec.replicas).max(object.spec.replicas);
    if most < 2 {
        return None;
    }
    let labels = pod::labels(COMPONENT, LABEL, &object.name_any());
    Some(PodDisruptionBudget {
        metadata: meta(object, &labels),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector { match_labels: Some(selector(object)), match_expressions: None }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })
}
