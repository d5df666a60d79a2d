//! The `LoraServer` controller against the scripted API server: create, update after a spec
//! change, no write when in sync, scaling children appearing and going, an impossible spec.

use std::sync::Arc;

use kube::{Resource, runtime::controller::Action};
use serde_json::{Value, json};

use super::{Context, children::SPEC_HASH, lora_server::reconcile};
use crate::{
    crd::{LoraServer, LoraServerSpec, PodSettings},
    testing::{self, Expect, Recorded},
};

const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/serve/deployments";
const SERVICES: &str = "/api/v1/namespaces/serve/services";
const HPAS: &str = "/apis/autoscaling/v2/namespaces/serve/horizontalpodautoscalers";
const PDBS: &str = "/apis/policy/v1/namespaces/serve/poddisruptionbudgets";
const STATUS: &str = "/apis/openledger.io/v1alpha1/namespaces/serve/loraservers/smol/status";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/serve/events";

fn server(replicas: i32, max_replicas: Option<i32>) -> LoraServer {
    let mut object = LoraServer::new(
        "smol",
        LoraServerSpec {
            base_model: "/models/smollm2-135m-instruct-q4_1.gguf".into(),
            replicas,
            max_replicas,
            target_cpu_utilization: 70,
            adapter_cache_bytes: 1 << 30,
            preload_adapters: vec!["ft:smol:alice:med:ftjob-1".into(), "ft:smol:bob:law:ftjob-2".into()],
            threads: 2,
            max_batch_size: 16,
            port: 50060,
            pod: PodSettings { image: "ghcr.io/openledger/openledger:0.1".into(), ..Default::default() },
        },
    );
    let meta = object.meta_mut();
    meta.namespace = Some("serve".into());
    meta.uid = Some("uid-s".into());
    meta.generation = Some(1);
    object
}

fn json_of<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("serializes")
}

async fn run(object: &LoraServer, script: Vec<Expect>) -> (Action, Vec<Recorded>) {
    let (client, mock) = testing::pair();
    let server = mock.run(script);
    let action = reconcile(Arc::new(object.clone()), Context::new(client, None)).await.expect("reconciles");
    (action, server.finish().await)
}

/// A created object as the API server keeps it, ready replicas in its status.
fn existing(request: &Recorded, status: Value) -> Value {
    let mut object = request.body.clone();
    object["status"] = status;
    object
}

#[tokio::test]
async fn a_lora_server_becomes_a_deployment_a_service_and_a_status() {
    let object = server(1, None);
    let (action, requests) = run(
        &object,
        vec![
            Expect::get(format!("{DEPLOYMENTS}/smol")).not_found(),
            Expect::patch(format!("{DEPLOYMENTS}/smol")).query("fieldManager=openledger-operator").query("force=true").check(|deployment| {
                assert_eq!(deployment["spec"]["replicas"], 1);
                assert_eq!(deployment["metadata"]["ownerReferences"][0]["kind"], "LoraServer");
                assert!(deployment["metadata"]["annotations"][SPEC_HASH].is_string());
                assert_eq!(deployment["spec"]["selector"]["matchLabels"], json!({"openledger.io/lora-server": "smol"}));
                let container = &deployment["spec"]["template"]["spec"]["containers"][0];
                assert_eq!(container["args"], json!(["engine"]));
                let env = container["env"].as_array().expect("env");
                assert!(env.contains(&json!({"name": "OPENLEDGER_ENGINE_PRELOAD_ADAPTERS", "value": "ft:smol:alice:med:ftjob-1,ft:smol:bob:law:ftjob-2"})));
                assert!(env.contains(&json!({"name": "OPENLEDGER_ADAPTER_CACHE_BYTES", "value": "1073741824"})));
                assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
                assert_eq!(container["readinessProbe"]["httpGet"]["port"], 9091);
                assert!(env.contains(&json!({"name": "OPENLEDGER_OPS_BASE_PORT", "value": "9091"})));
                assert_eq!(container["ports"][0]["containerPort"], 50060);
            }),
            Expect::get(format!("{SERVICES}/smol")).not_found(),
            Expect::patch(format!("{SERVICES}/smol")).query("fieldManager=openledger-operator").query("force=true").check(|service| {
                assert_eq!(service["spec"]["ports"][0]["port"], 50060);
                assert_eq!(service["spec"]["selector"], json!({"openledger.io/lora-server": "smol"}));
            }),
            // One replica, no maximum: neither autoscaler nor disruption budget.
            Expect::get(format!("{HPAS}/smol")).not_found(),
            Expect::get(format!("{PDBS}/smol")).not_found(),
            Expect::post(EVENTS).check(|event| assert_eq!(event["note"], "smol: created Deployment, created Service")),
            Expect::patch(STATUS).merged_into(json_of(&object)).check(|patch| {
                let status = &patch["status"];
                assert_eq!(status["service"], "smol");
                assert_eq!(status["readyReplicas"], 0);
                assert_eq!(status["conditions"][0]["type"], "Ready");
                assert_eq!(status["conditions"][0]["status"], "False");
                assert_eq!(status["conditions"][0]["message"], "0 of 1 replicas ready");
            }),
        ],
    )
    .await;
    assert_eq!(action, Action::requeue(super::RESYNC));
    assert_eq!(requests.iter().filter(|request| request.is_write()).count(), 4);
}

#[tokio::test]
async fn a_lora_server_in_sync_costs_reads_only_and_a_spec_change_one_apply() {
    // Create, then take the created children back as the API server would hold them.
    let object = server(1, None);
    let (_, created) = run(
        &object,
        vec![
            Expect::get(format!("{DEPLOYMENTS}/smol")).not_found(),
            Expect::patch(format!("{DEPLOYMENTS}/smol")),
            Expect::get(format!("{SERVICES}/smol")).not_found(),
            Expect::patch(format!("{SERVICES}/smol")),
            Expect::get(format!("{HPAS}/smol")).not_found(),
            Expect::get(format!("{PDBS}/smol")).not_found(),
            Expect::post(EVENTS),
            Expect::patch(STATUS).merged_into(json_of(&object)),
        ],
    )
    .await;
    let deployment = existing(&created[1], json!({"replicas": 1, "readyReplicas": 1}));
    let service = created[3].body.clone();

    // The replica became ready: the status says so (one write), then nothing changes.
    let mut ready = object.clone();
    let (_, requests) = run(
        &object,
        vec![
            Expect::get(format!("{DEPLOYMENTS}/smol")).returns(deployment.clone()),
            Expect::get(format!("{SERVICES}/smol")).returns(service.clone()),
            Expect::get(format!("{HPAS}/smol")).not_found(),
            Expect::get(format!("{PDBS}/smol")).not_found(),
            Expect::patch(STATUS).merged_into(json_of(&object)).check(|patch| {
                assert_eq!(patch["status"]["conditions"][0]["status"], "True");
                assert_eq!(patch["status"]["conditions"][0]["reason"], "Available");
            }),
        ],
    )
    .await;
    let mut value = json_of(&ready);
    testing::merge(&mut value, &requests[4].body);
    ready = serde_json::from_value(value).expect("a LoraServer");

    let in_sync = vec![
        Expect::get(format!("{DEPLOYMENTS}/smol")).returns(deployment.clone()),
        Expect::get(format!("{SERVICES}/smol")).returns(service.clone()),
        Expect::get(format!("{HPAS}/smol")).not_found(),
        Expect::get(format!("{PDBS}/smol")).not_found(),
    ];
    let (_, requests) = run(&ready, in_sync).await;
    assert_eq!(requests.len(), 4);
    assert!(requests.iter().all(|request| !request.is_write()), "in sync: reads only");

    // A bigger adapter cache: the Deployment is applied again (server-side), nothing else.
    let mut changed = ready.clone();
    changed.spec.adapter_cache_bytes = 4 << 30;
    changed.meta_mut().generation = Some(2);
    let (_, requests) = run(
        &changed,
        vec![
            Expect::get(format!("{DEPLOYMENTS}/smol")).returns(deployment.clone()),
            Expect::patch(format!("{DEPLOYMENTS}/smol"))
                .query("fieldManager=openledger-operator")
                .query("force=true")
                .merged_into(deployment.clone())
                .check(|applied| {
                    assert_eq!(applied["kind"], "Deployment");
                    let env = applied["spec"]["template"]["spec"]["containers"][0]["env"].as_array().expect("env");
                    assert!(env.contains(&json!({"name": "OPENLEDGER_ADAPTER_CACHE_BYTES", "value": "4294967296"})));
                }),
            Expect::get(format!("{SERVICES}/smol")).returns(service),
            Expect::get(format!("{HPAS}/smol")).not_found(),
            Expect::get(format!("{PDBS}/smol")).not_found(),
            Expect::post(EVENTS).check(|event| assert_eq!(event["note"], "smol: updated Deployment")),
            // The generation moved on: the status says which one it describes.
            Expect::patch(STATUS).merged_into(json_of(&changed)).check(|patch| {
                assert_eq!(patch["status"]["observedGeneration"], 2);
            }),
        ],
    )
    .await;
    assert_eq!(requests.iter().filter(|request| request.is_write()).count(), 3);
}

#[tokio::test]
async fn scaling_out_adds_an_autoscaler_and_a_disruption_budget_and_scaling_back_removes_them() {
    let object = server(2, Some(6));
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "smol", "annotations": {SPEC_HASH: "old"}}, "spec": {"selector": {}, "template": {}}});
    let service =
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "smol", "annotations": {SPEC_HASH: "old"}}});
    let (_, requests) = run(
        &object,
        vec![
            Expect::get(format!("{DEPLOYMENTS}/smol")).returns(deployment.clone()),
            Expect::patch(format!("{DEPLOYMENTS}/smol")).merged_into(deployment.clone()).check(|applied| {
                assert!(applied["spec"].get("replicas").is_none(), "the autoscaler owns the replica count");
            }),
            Expect::get(format!("{SERVICES}/smol")).returns(service.clone()),
            Expect::patch(format!("{SERVICES}/smol")).merged_into(service.clone()),
            Expect::get(format!("{HPAS}/smol")).not_found(),
            Expect::patch(format!("{HPAS}/smol")).query("fieldManager=openledger-operator").query("force=true").check(
                |hpa| {
                    assert_eq!(hpa["spec"]["minReplicas"], 2);
                    assert_eq!(hpa["spec"]["maxReplicas"], 6);
                    assert_eq!(hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 70);
                    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "smol");
                },
            ),
            Expect::get(format!("{PDBS}/smol")).not_found(),
            Expect::patch(format!("{PDBS}/smol"))
                .query("fieldManager=openledger-operator")
                .query("force=true")
                .check(|pdb| assert_eq!(pdb["spec"]["maxUnavailable"], 1)),
            Expect::post(EVENTS),
            Expect::patch(STATUS).merged_into(json_of(&object)),
        ],
    )
    .await;
    let hpa = requests[5].body.clone();
    let pdb = requests[7].body.clone();
    assert_eq!(
        requests[8].body["note"],
        "smol: updated Deployment, updated Service, created HorizontalPodAutoscaler, created PodDisruptionBudget"
    );

    let back = server(1, None);
    run(
        &back,
        vec![
            Expect::get(format!("{DEPLOYMENTS}/smol")).returns(deployment.clone()),
            Expect::patch(format!("{DEPLOYMENTS}/smol")).merged_into(deployment),
            Expect::get(format!("{SERVICES}/smol")).returns(service.clone()),
            Expect::patch(format!("{SERVICES}/smol")).merged_into(service),
            Expect::get(format!("{HPAS}/smol")).returns(hpa),
            Expect::delete(format!("{HPAS}/smol"))
                .returns(json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}})),
            Expect::get(format!("{PDBS}/smol")).returns(pdb),
            Expect::delete(format!("{PDBS}/smol"))
                .returns(json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}})),
            Expect::post(EVENTS),
            Expect::patch(STATUS).merged_into(json_of(&back)),
        ],
    )
    .await;
}

#[tokio::test]
async fn an_impossible_lora_server_is_reported_and_nothing_is_created() {
    let mut object = server(3, Some(2));
    object.spec.max_replicas = Some(2);
    let (action, requests) = run(
        &object,
        vec![
            Expect::patch(STATUS).merged_into(json_of(&object)).check(|patch| {
                let ready = &patch["status"]["conditions"][0];
                assert_eq!(ready["reason"], "InvalidSpec");
                assert_eq!(ready["message"], "spec.maxReplicas 2 is below spec.replicas 3");
            }),
            Expect::post(EVENTS).check(|event| assert_eq!(event["type"], "Warning")),
        ],
    )
    .await;
    assert_eq!(action, Action::await_change());
    assert_eq!(requests.len(), 2);
}
