//! The `Datanet` controller against the scripted API server and a real datanet-ingest (on
//! SQLite, in this process) behind a proxy that records the name of every call it forwards.

use std::{collections::BTreeMap, convert::Infallible, sync::Arc};

use k8s_openapi::{ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Time};
use kube::api::ObjectMeta;
use openledger_core::{Config, ServiceKind};
use openledger_runtime::Deps;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tonic::{
    body::Body,
    codegen::Service,
    server::NamedService,
    transport::{Server, server::TcpIncoming},
};

use super::*;
use crate::{
    crd::SecretKeyRef,
    testing::{self, Expect, Recorded},
};

const NAMESPACE: &str = "ledger";
const NAME: &str = "medical-qa";
const RESOURCE: &str = "/apis/openledger.io/v1alpha1/namespaces/ledger/datanets/medical-qa";
const STATUS: &str = "/apis/openledger.io/v1alpha1/namespaces/ledger/datanets/medical-qa/status";
const SECRET: &str = "/api/v1/namespaces/ledger/secrets/medical-qa-owner";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ledger/events";

fn owner() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn stranger() -> SigningKey {
    SigningKey::from_bytes(&[9; 32])
}

/// The owner-key Secret holding `key` (hex, with the newline `echo` leaves).
fn secret(key: &SigningKey) -> Value {
    let data =
        BTreeMap::from([("key".to_owned(), ByteString(format!("{}\n", hex::encode(key.to_bytes())).into_bytes()))]);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("medical-qa-owner".into()),
            namespace: Some(NAMESPACE.into()),
            ..ObjectMeta::default()
        },
        data: Some(data),
        ..Secret::default()
    };
    serde_json::to_value(secret).expect("a Secret serializes")
}

/// A `Datanet` resource as the API server holds it, with the finalizer already on.
fn resource() -> Datanet {
    let spec = DatanetSpec {
        slug: "medical-qa".into(),
        name: "Medical Q&A".into(),
        summary: "Questions and answers from clinicians".into(),
        description_markdown: "# Medical Q&A\nReviewed answers.".into(),
        tags: vec!["medicine".into(), "qa".into()],
        schema: "instruction-response".into(),
        label_set: Vec::new(),
        licence: "CC-BY-4.0".into(),
        visibility: "public".into(),
        policy: DatanetPolicy {
            stake_per_contribution: Some("0".into()),
            max_file_bytes: Some(1_000_000),
            auto_accept_score: Some(800),
            reject_below_score: Some(200),
            ..DatanetPolicy::default()
        },
        owner_key_secret: SecretKeyRef { name: "medical-qa-owner".into(), key: "key".into() },
        deletion_policy: DeletionPolicy::Retain,
    };
    let mut datanet = Datanet::new(NAME, spec);
    datanet.metadata.namespace = Some(NAMESPACE.into());
    datanet.metadata.uid = Some("5f0c6a8e-0000-4000-8000-000000000001".into());
    datanet.metadata.generation = Some(1);
    datanet.metadata.finalizers = Some(vec![FINALIZER.into()]);
    datanet
}

fn json_of(datanet: &Datanet) -> Value {
    serde_json::to_value(datanet).expect("a Datanet serializes")
}

/// The `Ready` condition of a status PATCH body: (status, reason, message).
fn ready_of(body: &Value) -> (String, String, String) {
    let conditions = body["status"]["conditions"].as_array().expect("conditions");
    let ready = conditions.iter().find(|condition| condition["type"] == "Ready").expect("a Ready condition");
    let text = |field: &str| ready[field].as_str().unwrap_or_default().to_owned();
    (text("status"), text("reason"), text("message"))
}

/// The status PATCH, answered with `object`; its body lands in `sent`.
fn status_patch(object: &Datanet, sent: &Arc<Mutex<Value>>) -> Expect {
    let sent = sent.clone();
    Expect::patch(STATUS).returns(json_of(object)).check(move |body| *sent.lock() = body.clone())
}

fn event(reason: &'static str) -> Expect {
    Expect::post(EVENTS).check(move |body| assert_eq!(body["reason"], reason, "event {body}"))
}

/// datanet-ingest on SQLite in this process, reached through a proxy that records calls.
struct Ingest {
    url: String,
    direct: DatanetServiceClient<Channel>,
    calls: Arc<Mutex<Vec<String>>>,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Ingest {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = Arc::new(Config {
            data_dir: dir.path().to_path_buf(),
            grpc_base_port: 0,
            ops_base_port: 0,
            http_port: 0,
            ..Config::default()
        });
        let shutdown = CancellationToken::new();
        let deps = Deps::start(config.clone(), shutdown.clone());
        let service = tokio::spawn({
            let (config, deps) = (config.clone(), deps.clone());
            async move { openledger_datanet_ingest::serve(config, deps).await.expect("datanet-ingest runs") }
        });
        let address = ready_address(&deps).await;
        let channel = Channel::from_shared(format!("http://{address}")).expect("url").connect().await.expect("connect");
        let calls = Arc::new(Mutex::new(Vec::new()));
        let incoming = TcpIncoming::bind("127.0.0.1:0".parse().expect("address")).expect("bind the proxy");
        let url = format!("http://{}", incoming.local_addr().expect("proxy address"));
        let proxy = Recording { channel: channel.clone(), calls: calls.clone() };
        let stop = shutdown.clone();
        let proxy = tokio::spawn(async move {
            let serving = Server::builder().add_service(proxy).serve_with_incoming_shutdown(incoming, stop.cancelled());
            serving.await.expect("the proxy serves");
        });
        Self {
            url,
            direct: DatanetServiceClient::new(channel),
            calls,
            shutdown,
            tasks: vec![service, proxy],
            _dir: dir,
        }
    }

    /// The calls made through the proxy since the last look.
    fn calls(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock())
    }

    /// The Datanet as datanet-ingest has it, if it does (asked directly, not through the proxy).
    async fn datanet(&self, slug: &str) -> Option<pb::Datanet> {
        let request = signed_caller(pb::GetDatanetRequest { id_or_slug: slug.into() }, &owner());
        match self.direct.clone().get_datanet(request).await {
            Ok(found) => Some(found.into_inner()),
            Err(status) if status.code() == Code::NotFound => None,
            Err(status) => panic!("GetDatanet: {status}"),
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            task.await.expect("task");
        }
    }
}

/// datanet-ingest's gRPC address once it is ready.
async fn ready_address(deps: &Deps) -> std::net::SocketAddr {
    for _ in 0..400 {
        let ready = deps.readiness.services().get(&ServiceKind::DatanetIngest).copied().unwrap_or(false);
        let endpoint = deps
            .endpoints
            .all()
            .into_iter()
            .find(|endpoint| endpoint.service == ServiceKind::DatanetIngest && endpoint.role == "grpc");
        if let (true, Some(endpoint)) = (ready, endpoint) {
            return endpoint.addr;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("datanet-ingest did not become ready in 10 s");
}

/// Forwards every gRPC call to datanet-ingest, recording its method name.
#[derive(Clone)]
struct Recording {
    channel: Channel,
    calls: Arc<Mutex<Vec<String>>>,
}

impl NamedService for Recording {
    const NAME: &'static str = "openledger.datanet.v1.DatanetService";
}

impl Service<http::Request<Body>> for Recording {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let method = request.uri().path().rsplit('/').next().unwrap_or_default().to_owned();
        self.calls.lock().push(method);
        let mut channel = self.channel.clone();
        Box::pin(async move {
            let answer = async {
                std::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
                channel.call(request).await
            };
            Ok(answer.await.unwrap_or_else(|error| tonic::Status::unavailable(error.to_string()).into_http()))
        })
    }
}

/// Runs one reconcile of `object` against `script`; returns its result and the requests.
async fn reconcile_with(object: &Datanet, url: &str, script: Vec<Expect>) -> (Result<Action, Error>, Vec<Recorded>) {
    let (client, server) = testing::pair();
    let server = server.run(script);
    let ctx = Context::new(client, Some(url.to_owned()));
    let result = reconcile(Arc::new(object.clone()), ctx).await;
    (result, server.finish().await)
}

/// `object` created in datanet-ingest by the controller, with the status it wrote.
async fn created(ingest: &Ingest, object: &Datanet) -> Datanet {
    let sent = Arc::new(Mutex::new(Value::Null));
    let script = vec![Expect::get(SECRET).returns(secret(&owner())), event("Created"), status_patch(object, &sent)];
    let (result, _) = reconcile_with(object, &ingest.url, script).await;
    assert_eq!(result.expect("the reconcile succeeds"), Action::requeue(RESYNC));
    ingest.calls();
    let mut object = object.clone();
    object.status = Some(serde_json::from_value(sent.lock()["status"].clone()).expect("a status"));
    object
}

#[tokio::test]
async fn a_new_resource_gets_the_finalizer_then_its_datanet_is_created_as_declared() {
    let ingest = Ingest::start().await;
    let mut fresh = resource();
    fresh.metadata.finalizers = None;
    let with_finalizer = resource();
    let sent = Arc::new(Mutex::new(Value::Null));
    let (client, script) = testing::pair();
    let server = script.run(vec![
        Expect::patch(RESOURCE).returns(json_of(&with_finalizer)).check(|body| {
            let operations = body.as_array().expect("a JSON patch");
            assert!(
                operations.iter().any(|op| op["op"] == "add" && op["value"] == json!([FINALIZER])),
                "adds the finalizer: {body}"
            );
        }),
        Expect::get(SECRET).returns(secret(&owner())),
        event("Created"),
        status_patch(&with_finalizer, &sent),
    ]);
    let ctx = Context::new(client, Some(ingest.url.clone()));
    let first = reconcile(Arc::new(fresh), ctx.clone()).await.expect("the finalizer goes on");
    assert_eq!(first, Action::await_change(), "the finalizer's patch triggers the next reconcile");
    assert!(ingest.calls().is_empty(), "nothing is created before the finalizer is on");
    let second = reconcile(Arc::new(with_finalizer), ctx).await.expect("the Datanet is created");
    assert_eq!(second, Action::requeue(RESYNC));
    let requests = server.finish().await;
    assert_eq!(requests.iter().filter(|request| request.is_write()).count(), 3, "finalizer, event, status");
    assert_eq!(ingest.calls(), ["GetDatanet", "CreateDatanet"]);

    let body = sent.lock().clone();
    assert_eq!(ready_of(&body).0, "True", "{body}");
    assert_eq!(ready_of(&body).1, "Ready");
    assert_eq!(body["status"]["observedGeneration"], 1);
    let datanet = ingest.datanet("medical-qa").await.expect("the Datanet exists");
    assert_eq!(body["status"]["datanetId"], datanet.id.as_str());
    assert_eq!(datanet.owner, owner().verifying_key().as_bytes());
    assert_eq!((datanet.name.as_str(), datanet.licence.as_str()), ("Medical Q&A", "CC-BY-4.0"));
    assert_eq!(datanet.schema, pb::RecordSchema::InstructionResponse as i32);
    assert_eq!(datanet.tags, ["medicine", "qa"]);
    let policy = datanet.policy.expect("a policy");
    assert_eq!((policy.max_file_bytes, policy.auto_accept_score, policy.reject_below_score), (1_000_000, 800, 200));
    assert!(!policy.review_all && !policy.allow_list_only);
    ingest.stop().await;
}

#[tokio::test]
async fn a_resource_in_sync_costs_one_secret_read_and_one_get_and_no_write() {
    let ingest = Ingest::start().await;
    // Private: only the owner's signed GetDatanet sees it.
    let mut declared = resource();
    declared.spec.visibility = "private".into();
    let object = created(&ingest, &declared).await;
    let (result, requests) =
        reconcile_with(&object, &ingest.url, vec![Expect::get(SECRET).returns(secret(&owner()))]).await;
    assert_eq!(result.expect("in sync"), Action::requeue(RESYNC));
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(requests.iter().all(|request| !request.is_write()), "{requests:?}");
    assert_eq!(ingest.calls(), ["GetDatanet"], "no UpdateDatanet");
    ingest.stop().await;
}

#[tokio::test]
async fn a_changed_policy_is_one_signed_update_of_the_policy_alone() {
    let ingest = Ingest::start().await;
    let mut object = created(&ingest, &resource()).await;
    object.spec.policy.review_all = true;
    object.spec.policy.stake_per_contribution = Some("5000".into());
    object.metadata.generation = Some(2);
    let sent = Arc::new(Mutex::new(Value::Null));
    let script = vec![
        Expect::get(SECRET).returns(secret(&owner())),
        Expect::post(EVENTS).check(|body| {
            assert_eq!(body["reason"], "Updated");
            assert!(body["note"].as_str().is_some_and(|note| note.contains("policy")), "{body}");
        }),
        status_patch(&object, &sent),
    ];
    let (result, _) = reconcile_with(&object, &ingest.url, script).await;
    assert_eq!(result.expect("updated"), Action::requeue(RESYNC));
    assert_eq!(ingest.calls(), ["GetDatanet", "UpdateDatanet"]);
    let body = sent.lock().clone();
    assert_eq!(body["status"]["observedGeneration"], 2, "{body}");
    assert_eq!(ready_of(&body).0, "True");
    let policy = ingest.datanet("medical-qa").await.expect("the Datanet").policy.expect("a policy");
    assert!(policy.review_all);
    assert_eq!(policy.stake_per_contribution.map(u128::from), Some(5000));
    assert_eq!((policy.max_file_bytes, policy.auto_accept_score), (1_000_000, 800), "the rest stays");

    // Once applied, the next reconcile is in sync again.
    object.status = Some(serde_json::from_value(body["status"].clone()).expect("a status"));
    let (result, requests) =
        reconcile_with(&object, &ingest.url, vec![Expect::get(SECRET).returns(secret(&owner()))]).await;
    assert_eq!(result.expect("in sync"), Action::requeue(RESYNC));
    assert!(requests.iter().all(|request| !request.is_write()));
    assert_eq!(ingest.calls(), ["GetDatanet"]);
    ingest.stop().await;
}

#[tokio::test]
async fn a_missing_secret_is_ready_false_secret_missing_and_nothing_is_called() {
    let ingest = Ingest::start().await;
    let object = resource();
    let sent = Arc::new(Mutex::new(Value::Null));
    let script = vec![Expect::get(SECRET).not_found(), status_patch(&object, &sent), event("SecretMissing")];
    let (result, _) = reconcile_with(&object, &ingest.url, script).await;
    assert_eq!(result.expect("a condition, not an error"), Action::requeue(SECRET_RETRY));
    let (status, reason, message) = ready_of(&sent.lock());
    assert_eq!((status.as_str(), reason.as_str()), ("False", "SecretMissing"));
    assert!(message.contains("medical-qa-owner"), "{message}");
    assert!(ingest.calls().is_empty());
    assert!(ingest.datanet("medical-qa").await.is_none());
    ingest.stop().await;
}

#[tokio::test]
async fn a_spec_datanet_ingest_refuses_is_ready_false_invalid_spec_with_its_message_and_no_retry() {
    let ingest = Ingest::start().await;
    let mut object = resource();
    object.spec.tags = vec!["Not A Tag".into()];
    let sent = Arc::new(Mutex::new(Value::Null));
    let script =
        vec![Expect::get(SECRET).returns(secret(&owner())), status_patch(&object, &sent), event("InvalidSpec")];
    let (result, _) = reconcile_with(&object, &ingest.url, script).await;
    assert_eq!(result.expect("a condition, not an error"), Action::await_change(), "no retry storm");
    let (status, reason, message) = ready_of(&sent.lock());
    assert_eq!((status.as_str(), reason.as_str()), ("False", "InvalidSpec"));
    assert!(message.contains("Not A Tag"), "datanet-ingest's message: {message}");
    assert_eq!(ingest.calls(), ["GetDatanet", "CreateDatanet"]);
    assert!(ingest.datanet("medical-qa").await.is_none());

    // The same refusal again writes nothing.
    object.status = Some(serde_json::from_value(sent.lock()["status"].clone()).expect("a status"));
    let (result, requests) =
        reconcile_with(&object, &ingest.url, vec![Expect::get(SECRET).returns(secret(&owner()))]).await;
    assert_eq!(result.expect("a condition"), Action::await_change());
    assert!(requests.iter().all(|request| !request.is_write()), "{requests:?}");
    ingest.stop().await;
}

#[tokio::test]
async fn a_datanet_owned_by_another_key_is_ready_false_owner_mismatch_and_unchanged() {
    let ingest = Ingest::start().await;
    let object = created(&ingest, &resource()).await;
    let mut changed = object.clone();
    changed.spec.summary = "Taken over".into();
    let sent = Arc::new(Mutex::new(Value::Null));
    let script =
        vec![Expect::get(SECRET).returns(secret(&stranger())), status_patch(&changed, &sent), event("OwnerMismatch")];
    let (result, _) = reconcile_with(&changed, &ingest.url, script).await;
    assert_eq!(result.expect("a condition"), Action::requeue(RESYNC));
    let (status, reason, message) = ready_of(&sent.lock());
    assert_eq!((status.as_str(), reason.as_str()), ("False", "OwnerMismatch"));
    assert!(message.contains(&hex::encode(owner().verifying_key().as_bytes())), "{message}");
    assert_eq!(ingest.calls(), ["GetDatanet"], "no write");
    let datanet = ingest.datanet("medical-qa").await.expect("the Datanet");
    assert_eq!(datanet.summary, resource().spec.summary);
    ingest.stop().await;
}

#[tokio::test]
async fn a_changed_immutable_field_is_ready_false_immutable_and_nothing_is_written() {
    let ingest = Ingest::start().await;
    let mut object = created(&ingest, &resource()).await;
    object.spec.licence = "MIT".into();
    object.spec.summary = "not applied either".into();
    let sent = Arc::new(Mutex::new(Value::Null));
    let script = vec![Expect::get(SECRET).returns(secret(&owner())), status_patch(&object, &sent), event("Immutable")];
    let (result, _) = reconcile_with(&object, &ingest.url, script).await;
    assert_eq!(result.expect("a condition"), Action::await_change());
    let (status, reason, message) = ready_of(&sent.lock());
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Immutable"));
    assert!(message.starts_with("licence of Datanet medical-qa"), "{message}");
    assert_eq!(ingest.calls(), ["GetDatanet"], "no write");
    let datanet = ingest.datanet("medical-qa").await.expect("the Datanet");
    assert_eq!((datanet.licence.as_str(), datanet.summary), ("CC-BY-4.0", resource().spec.summary));
    ingest.stop().await;
}

#[tokio::test]
async fn an_unreachable_datanet_ingest_is_an_error_for_the_back_off_and_ready_false_unavailable() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address")
    };
    let object = resource();
    let sent = Arc::new(Mutex::new(Value::Null));
    let script =
        vec![Expect::get(SECRET).returns(secret(&owner())), status_patch(&object, &sent), event("Unavailable")];
    let (result, _) = reconcile_with(&object, &format!("http://{closed}"), script).await;
    assert!(matches!(result, Err(Error::Datanet(_))), "{result:?}");
    let (status, reason, _) = ready_of(&sent.lock());
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Unavailable"));
}

#[tokio::test]
async fn deleting_with_retain_removes_the_finalizer_and_the_datanet_stays() {
    let ingest = Ingest::start().await;
    let mut object = created(&ingest, &resource()).await;
    object.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    let mut gone = object.clone();
    gone.metadata.finalizers = None;
    let script = vec![Expect::patch(RESOURCE).returns(json_of(&gone)).check(|body| {
        let operations = body.as_array().expect("a JSON patch");
        assert!(
            operations.iter().any(|op| op["op"] == "remove" && op["path"] == "/metadata/finalizers/0"),
            "removes the finalizer: {body}"
        );
    })];
    let (result, requests) = reconcile_with(&object, &ingest.url, script).await;
    assert_eq!(result.expect("the resource may go"), Action::await_change());
    assert_eq!(requests.len(), 1);
    assert!(ingest.calls().is_empty(), "nothing is asked of datanet-ingest");
    assert!(ingest.datanet("medical-qa").await.is_some(), "the Datanet stays");
    ingest.stop().await;
}

/// An update names only the differing fields and is signed as datanet-ingest checks it.
#[test]
fn an_update_is_masked_to_the_differing_fields_and_signed_by_the_owner() {
    let mut spec = resource().spec;
    let present = pb::Datanet { id: "dn_1".into(), ..wanted(&spec).expect("a valid spec") };
    assert_eq!(update(&spec, &present).expect("valid"), None, "in sync");
    spec.summary = "changed".into();
    spec.policy.review_all = true;
    let request = sign_update(update(&spec, &present).expect("valid").expect("a change"), &owner());
    assert_eq!(request.update_mask, ["summary", "policy"]);
    let signature = request.signature.clone().expect("signed");
    let message = datanet_update_message(&request);
    let signer =
        openledger_signing::verify(&signature.public_key, &signature.signature, &message).expect("it verifies");
    assert_eq!(signer, owner().verifying_key().to_bytes());
}

#[test]
fn a_policy_field_the_spec_leaves_out_keeps_datanet_ingests_value() {
    let declared = DatanetPolicy { review_all: true, ..DatanetPolicy::default() };
    let present = pb::ContributionPolicy { max_file_bytes: 42, auto_accept_score: 700, ..Default::default() };
    let merged = policy(&declared, present).expect("valid");
    assert_eq!((merged.max_file_bytes, merged.auto_accept_score, merged.review_all), (42, 700, true));
    let zeros = DatanetPolicy { auto_accept_score: Some(0), reject_below_score: Some(0), ..DatanetPolicy::default() };
    let present = pb::ContributionPolicy { auto_accept_score: 700, reject_below_score: 300, ..Default::default() };
    let kept = policy(&zeros, present.clone()).expect("valid");
    assert_eq!((kept.auto_accept_score, kept.reject_below_score), (700, 300), "both zero: the service's defaults");
    let absent_stake = pb::ContributionPolicy { stake_per_contribution: None, ..present.clone() };
    let zero_stake = pb::ContributionPolicy { stake_per_contribution: Some(0u128.into()), ..present };
    assert_eq!(comparable(absent_stake), comparable(zero_stake));
    let bad = DatanetPolicy { stake_per_contribution: Some("ten".into()), ..DatanetPolicy::default() };
    assert!(policy(&bad, Default::default()).is_err());
}
