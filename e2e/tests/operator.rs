//! The operator as a process: `openledger operator run` against a stand-in Kubernetes API
//! server in the test (lists answered, watches held open, every other request recorded and
//! answered as the API server would). It covers what the controllers' tests cannot: the
//! kube-runtime wiring. The operator becomes ready once its CRDs answer, reconciles the
//! `LoraJob` it lists into its Job and status, counts it in `/metrics`, and drains on SIGTERM.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Request, State},
    http::{Method, StatusCode},
    response::Response,
};
use serde_json::{Value, json};

use crate::support::{Platform, eventually, get};

const NS: &str = "ml";
const PLURALS: [&str; 6] = ["lorajobs", "attributionjobs", "loraservers", "datanets", "jobs", "deployments"];

#[derive(Default)]
struct ApiServer {
    /// Method, path and body of every request that is not a list or a watch.
    seen: Mutex<Vec<(Method, String, Value)>>,
}

fn lora_job() -> Value {
    json!({
        "apiVersion": "openledger.io/v1alpha1", "kind": "LoraJob",
        "metadata": {"name": "ftjob-e2e", "namespace": NS, "uid": "uid-e2e", "generation": 1, "resourceVersion": "7"},
        "spec": {"jobId": "ftjob-e2e", "baseModel": "smollm2", "image": "registry.example/openledger:0.1", "backoffLimit": 2},
    })
}

fn answer(status: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("a response")
}

async fn serve(State(api): State<Arc<ApiServer>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or_default();
    let last = path.rsplit('/').next().unwrap_or_default();
    if parts.method == Method::GET && query.contains("watch=true") {
        // Nothing changes: the watch stays open until the operator goes.
        let pending = futures::stream::pending::<Result<Bytes, Infallible>>();
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(pending))
            .expect("a response");
    }
    if parts.method == Method::GET && PLURALS.contains(&last) {
        let items = if path == format!("/apis/openledger.io/v1alpha1/namespaces/{NS}/lorajobs") {
            vec![lora_job()]
        } else {
            vec![]
        };
        return answer(
            StatusCode::OK,
            &json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "10"}, "items": items}),
        );
    }
    api.seen.lock().expect("lock").push((parts.method.clone(), path.clone(), body.clone()));
    match parts.method {
        Method::GET => answer(
            StatusCode::NOT_FOUND,
            &json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 404, "reason": "NotFound", "metadata": {}}),
        ),
        Method::POST => {
            let mut created = body;
            created["metadata"]["uid"] = json!("uid-child");
            created["metadata"]["resourceVersion"] = json!("11");
            answer(StatusCode::CREATED, &created)
        }
        _ if path.ends_with("/status") => {
            let mut patched = lora_job();
            patched["status"] = body["status"].clone();
            answer(StatusCode::OK, &patched)
        }
        _ => answer(StatusCode::OK, &body),
    }
}

/// The operator's ops address, from its log.
fn ops_address(operator: &Platform) -> Option<SocketAddr> {
    operator.stderr().lines().find_map(|line| {
        let entry: Value = serde_json::from_str(line).ok()?;
        (entry["message"] == "listening" && entry["service"] == "operator")
            .then(|| entry["addr"].as_str()?.parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_process_reconciles_what_it_watches_and_drains_on_sigterm() {
    let api = Arc::new(ApiServer::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let server = listener.local_addr().expect("address");
    tokio::spawn(axum::serve(listener, Router::new().fallback(serve).with_state(api.clone())).into_future());
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\nclusters:\n- name: test\n  cluster:\n    server: http://{server}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: {NS}\nusers:\n- name: test\n  user:\n    token: test\n"
        ),
    )
    .expect("kubeconfig");

    let mut operator = Platform::spawn(
        &["operator", "run", "--namespace", NS, "--ops-port", "0"],
        &[("KUBECONFIG", kubeconfig.display().to_string())],
    );
    let ops =
        eventually("the operator's ops port", async || ops_address(&operator).ok_or_else(|| operator.stderr())).await;
    operator.wait_ready(ops).await;

    // The listed LoraJob becomes its Job (the trainer's entrypoint) and a status.
    let job = eventually("the Job of the LoraJob", async || {
        let seen = api.seen.lock().expect("lock");
        seen.iter()
            .find(|(method, path, _)| {
                *method == Method::POST && path == &format!("/apis/batch/v1/namespaces/{NS}/jobs")
            })
            .map(|(_, _, body)| body.clone())
            .ok_or_else(|| {
                format!("requests so far: {:?}", seen.iter().map(|(m, p, _)| format!("{m} {p}")).collect::<Vec<_>>())
            })
    })
    .await;
    assert_eq!(job["metadata"]["ownerReferences"][0]["uid"], "uid-e2e");
    assert_eq!(job["spec"]["template"]["spec"]["containers"][0]["args"], json!(["train-job", "ftjob-e2e"]));
    let status = eventually("the LoraJob's status", async || {
        let seen = api.seen.lock().expect("lock");
        seen.iter()
            .find(|(method, path, _)| *method == Method::PATCH && path.ends_with("/lorajobs/ftjob-e2e/status"))
            .map(|(_, _, body)| body.clone())
            .ok_or_else(|| "no status patch yet".to_owned())
    })
    .await;
    assert_eq!(status["status"]["jobName"], "ftjob-e2e");
    let metrics = get(ops, "/metrics").await.1;
    assert!(metrics.contains("openledger_operator_reconciles_total{kind=\"LoraJob\"}"), "{metrics}");

    let exit = operator.terminate();
    assert!(exit.success(), "exit {exit:?}; stderr:\n{}", operator.stderr());
}
