//! Reconcile latency and API calls per reconcile, against the scripted API server (the
//! controllers' test fixture: an in-process mock, so the figures are the operator's own cost
//! plus a channel round trip per request, not a real API server's latency). For each kind: a
//! resource already in sync (what every resync and every watch event on an unchanged object
//! costs) and a new resource (its children created, its status written).
//! Run: `cargo bench -p openledger-operator --bench reconcile [-- ITERATIONS]`.

use std::{sync::Arc, time::Instant};

use kube::Resource;
use openledger_operator::{
    controllers::{Context, children::SPEC_HASH, job, lora_server},
    crd::{
        AttributionJob, AttributionJobSpec, IndexKind, LoraJob, LoraJobSpec, LoraServer, LoraServerSpec, PodSettings,
    },
    testing::{self, Expect, Recorded},
};
use serde_json::{Value, json};

fn pod() -> PodSettings {
    PodSettings { image: "ghcr.io/openledger/openledger:0.1".into(), ..Default::default() }
}

fn namespaced<K: Resource>(mut object: K) -> K {
    let meta = object.meta_mut();
    meta.namespace = Some("bench".into());
    meta.uid = Some("uid".into());
    meta.generation = Some(1);
    object
}

fn lora_job() -> LoraJob {
    namespaced(LoraJob::new(
        "ftjob-1",
        LoraJobSpec {
            job_id: "ftjob-1".into(),
            base_model: "smollm2".into(),
            pod: pod(),
            gpus: 1,
            queue_name: None,
            backoff_limit: 2,
            active_deadline_seconds: None,
            ttl_seconds_after_finished: None,
        },
    ))
}

fn attribution_job() -> AttributionJob {
    namespaced(AttributionJob::new(
        "span-1",
        AttributionJobSpec {
            index: IndexKind::Span,
            target: "snap-1".into(),
            shards: 1,
            parallelism: None,
            pod: pod(),
            backoff_limit_per_index: 2,
            queue_name: None,
            active_deadline_seconds: None,
            ttl_seconds_after_finished: None,
        },
    ))
}

fn lora_server() -> LoraServer {
    namespaced(LoraServer::new(
        "smol",
        LoraServerSpec {
            base_model: "/models/smol.gguf".into(),
            replicas: 2,
            max_replicas: Some(4),
            target_cpu_utilization: 70,
            adapter_cache_bytes: 1 << 30,
            preload_adapters: Vec::new(),
            threads: 0,
            max_batch_size: 16,
            port: 50060,
            pod: pod(),
        },
    ))
}

/// Per-kind figures: reconciles timed, and the requests of the last one.
struct Figures {
    nanos: Vec<u128>,
    requests: Vec<Recorded>,
}

impl Figures {
    fn print(mut self, name: &str) {
        self.nanos.sort_unstable();
        let at = |q: f64| self.nanos[((self.nanos.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
        let writes = self.requests.iter().filter(|request| request.is_write()).count();
        println!(
            "{name:<34} p50 {:>7.1} µs  p99 {:>7.1} µs  API calls {:>2} (writes {writes})",
            at(0.5),
            at(0.99),
            self.requests.len()
        );
    }
}

async fn measure<F, Fut>(iterations: usize, script: impl Fn() -> Vec<Expect>, reconcile: F) -> Figures
where
    F: Fn(kube::Client) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut figures = Figures { nanos: Vec::with_capacity(iterations), requests: Vec::new() };
    for _ in 0..iterations {
        let (client, mock) = testing::pair();
        let server = mock.run(script());
        let started = Instant::now();
        reconcile(client).await;
        figures.nanos.push(started.elapsed().as_nanos());
        figures.requests = server.finish().await;
    }
    figures
}

/// The object after the status patch of a first reconcile.
fn synced<K: serde::Serialize + serde::de::DeserializeOwned>(object: &K, patch: &Value) -> K {
    let mut value = serde_json::to_value(object).expect("serializes");
    testing::merge(&mut value, patch);
    serde_json::from_value(value).expect("deserializes")
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let iterations: usize = std::env::args().nth(1).and_then(|arg| arg.parse().ok()).unwrap_or(2_000);
    println!("{iterations} reconciles per case, scripted API server in-process");
    let jobs = "/apis/batch/v1/namespaces/bench/jobs";
    let events = "/apis/events.k8s.io/v1/namespaces/bench/events";
    let running = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "ftjob-1", "ownerReferences": [{"apiVersion": "openledger.io/v1alpha1", "kind": "LoraJob", "name": "ftjob-1", "uid": "uid", "controller": true}]}, "spec": {"template": {}}, "status": {"active": 1}});

    // LoraJob: new, then in sync.
    let object = lora_job();
    let lora_jobs = "/apis/openledger.io/v1alpha1/namespaces/bench/lorajobs/ftjob-1/status";
    let run_lora_job = |object: LoraJob| {
        move |client| {
            let object = object.clone();
            async move {
                job::reconcile(Arc::new(object), Context::new(client, None)).await.expect("reconciles");
            }
        }
    };
    let created = measure(
        iterations,
        || {
            vec![
                Expect::get(format!("{jobs}/ftjob-1")).not_found(),
                Expect::post(jobs),
                Expect::post(events),
                Expect::patch(lora_jobs).merged_into(serde_json::to_value(lora_job()).expect("json")),
            ]
        },
        run_lora_job(object.clone()),
    )
    .await;
    let first = measure(
        1,
        || {
            vec![
                Expect::get(format!("{jobs}/ftjob-1")).returns(running.clone()),
                Expect::patch(lora_jobs).merged_into(serde_json::to_value(lora_job()).expect("json")),
            ]
        },
        run_lora_job(object.clone()),
    )
    .await;
    let in_sync = synced(&object, &first.requests[1].body);
    created.print("LoraJob, new");
    measure(
        iterations,
        || vec![Expect::get(format!("{jobs}/ftjob-1")).returns(running.clone())],
        run_lora_job(in_sync),
    )
    .await
    .print("LoraJob, in sync");

    // AttributionJob in sync.
    let object = attribution_job();
    let status = "/apis/openledger.io/v1alpha1/namespaces/bench/attributionjobs/span-1/status";
    let run_attribution_job = |object: AttributionJob| {
        move |client| {
            let object = object.clone();
            async move {
                job::reconcile(Arc::new(object), Context::new(client, None)).await.expect("reconciles");
            }
        }
    };
    let indexing = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "span-1", "ownerReferences": [{"apiVersion": "openledger.io/v1alpha1", "kind": "AttributionJob", "name": "span-1", "uid": "uid", "controller": true}]}, "spec": {"template": {}}, "status": {"active": 1}});
    let first = measure(
        1,
        || {
            vec![
                Expect::get(format!("{jobs}/span-1")).returns(indexing.clone()),
                Expect::patch(status).merged_into(serde_json::to_value(attribution_job()).expect("json")),
            ]
        },
        run_attribution_job(object.clone()),
    )
    .await;
    let in_sync = synced(&object, &first.requests[1].body);
    measure(
        iterations,
        || vec![Expect::get(format!("{jobs}/span-1")).returns(indexing.clone())],
        run_attribution_job(in_sync),
    )
    .await
    .print("AttributionJob, in sync");

    // LoraServer: new (Deployment, Service, autoscaler, disruption budget), then in sync.
    let object = lora_server();
    let paths = [
        "/apis/apps/v1/namespaces/bench/deployments",
        "/api/v1/namespaces/bench/services",
        "/apis/autoscaling/v2/namespaces/bench/horizontalpodautoscalers",
        "/apis/policy/v1/namespaces/bench/poddisruptionbudgets",
    ];
    let status = "/apis/openledger.io/v1alpha1/namespaces/bench/loraservers/smol/status";
    let run_server = |object: LoraServer| {
        move |client| {
            let object = object.clone();
            async move {
                lora_server::reconcile(Arc::new(object), Context::new(client, None)).await.expect("reconciles");
            }
        }
    };
    let create_script = || {
        let mut script = Vec::new();
        for path in paths {
            script.push(Expect::get(format!("{path}/smol")).not_found());
            script.push(Expect::patch(format!("{path}/smol")));
        }
        script.push(Expect::post(events));
        script.push(Expect::patch(status).merged_into(serde_json::to_value(lora_server()).expect("json")));
        script
    };
    let created = measure(iterations, create_script, run_server(object.clone())).await;
    // The children as the API server holds them (hash annotations included), replicas ready.
    let children: Vec<Value> = created
        .requests
        .iter()
        .filter(|request| request.method == http::Method::PATCH && !request.path.ends_with("status"))
        .map(|request| {
            let mut child = request.body.clone();
            assert!(child["metadata"]["annotations"][SPEC_HASH].is_string());
            child["status"] = json!({"replicas": 2, "readyReplicas": 2});
            child
        })
        .collect();
    let synced_script = || -> Vec<Expect> {
        paths
            .iter()
            .zip(&children)
            .map(|(path, child)| Expect::get(format!("{path}/smol")).returns(child.clone()))
            .collect()
    };
    let mut first_script: Vec<Expect> = synced_script();
    first_script.push(Expect::patch(status).merged_into(serde_json::to_value(lora_server()).expect("json")));
    let first_script = std::cell::RefCell::new(Some(first_script));
    let first = measure(1, || first_script.borrow_mut().take().unwrap_or_default(), run_server(object.clone())).await;
    let in_sync = synced(&object, &first.requests[4].body);
    created.print("LoraServer, new");
    measure(iterations, synced_script, run_server(in_sync)).await.print("LoraServer, in sync");
}
