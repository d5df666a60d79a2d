//! The kubernetes index executor against the scripted API server, on SQLite with the packaged
//! SmolLM2's tokenizer: the exact `AttributionJob` it creates, a concurrent create's 409, a
//! resource that succeeds after its pod (`index_job::build_shard`) wrote the files on the
//! shared directory (the index turns ready and inferences attribute with it), one that fails
//! (the row fails with its reason; a retry deletes and creates it anew), and a restarted
//! worker following the same resource with GETs only; a gradient index big enough for three
//! shards, whose pods write a shard each and which the worker merges into the files a whole
//! build writes.

use std::{sync::Arc, time::Duration};

use openledger_operator::{
    crd::IndexKind,
    testing::{self, Expect, Recorded},
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::{
    Outcome, Parts,
    entities::index,
    index_job::build_shard,
    indexes::{FAILED, READY, VersionRef, span_index_id},
    kubernetes::{JobSettings, KubernetesIndexExecutor, job_name},
    tests::{Scripted, TEXTS, computed_events, inference, parts_on, sqlite},
};

const NAMESPACE: &str = "openledger";
const COLLECTION: &str = "/apis/openledger.io/v1alpha1/namespaces/openledger/attributionjobs";

fn settings() -> JobSettings {
    JobSettings {
        namespace: NAMESPACE.into(),
        image: "ghcr.io/openledger/openledger:0.1.0".into(),
        env_from: openledger_operator::executor::env_from(
            "configmap:openledger-settings, secret:openledger-credentials",
        ),
        data_claim: "openledger-data".into(),
        queue: Some("attribution".into()),
        // Tests look when they say so (`poll_now`).
        poll: Duration::from_secs(3600),
    }
}

fn span_job_name() -> String {
    job_name(&span_index_id("version-1"))
}

fn job_path() -> String {
    format!("{COLLECTION}/{}", span_job_name())
}

/// The resource as the executor creates it for version-1's span index.
fn expected_span_job() -> Value {
    json!({
        "apiVersion": "openledger.io/v1alpha1",
        "kind": "AttributionJob",
        "metadata": {
            "name": span_job_name(),
            "namespace": NAMESPACE,
            "labels": {
                "app.kubernetes.io/managed-by": "openledger-attribution-worker",
                "openledger.io/index-id": span_job_name().trim_start_matches("ol-index-"),
            },
            "annotations": {"openledger.io/index-id": "span:version-1"},
        },
        "spec": {
            "index": "span",
            "target": "version-1",
            "shards": 1,
            "image": "ghcr.io/openledger/openledger:0.1.0",
            "envFrom": [
                {"configMapRef": {"name": "openledger-settings"}},
                {"secretRef": {"name": "openledger-credentials"}},
            ],
            "dataVolumeClaim": "openledger-data",
            "backoffLimitPerIndex": 2,
            "queueName": "attribution",
            "ttlSecondsAfterFinished": 86_400,
        },
    })
}

/// The resource as the API server has it, in `phase` with `conditions`.
fn span_job_in(phase: &str, conditions: Value) -> Value {
    let mut job = expected_span_job();
    job["metadata"]["uid"] = json!("5f0e6a52-0000-4000-8000-000000000001");
    job["metadata"]["creationTimestamp"] = json!("2026-12-06T07:00:00Z");
    job["status"] =
        json!({"phase": phase, "conditions": conditions, "succeededShards": i32::from(phase == "Succeeded")});
    job
}

fn condition(type_: &str, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": "True", "reason": reason, "message": message,
           "lastTransitionTime": "2026-12-06T07:01:00Z", "observedGeneration": 1})
}

/// Each request answered sends on the channel, so the test acts once the worker has seen it.
struct Seen {
    sender: mpsc::UnboundedSender<()>,
    receiver: mpsc::UnboundedReceiver<()>,
}

impl Seen {
    fn new() -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        Self { sender, receiver }
    }

    fn on(&self, expect: Expect) -> Expect {
        self.checking(expect, |_| {})
    }

    /// [`Self::on`], checking the request's body first.
    fn checking(&self, expect: Expect, check: impl Fn(&Value) + Send + 'static) -> Expect {
        let sender = self.sender.clone();
        expect.check(move |body| {
            check(body);
            let _ = sender.send(());
        })
    }

    /// Waits until `count` more requests came.
    async fn wait(&mut self, count: usize) {
        for _ in 0..count {
            tokio::time::timeout(Duration::from_secs(60), self.receiver.recv())
                .await
                .expect("the worker made the request")
                .expect("the script runs");
        }
    }
}

struct Setup {
    db: sea_orm::DatabaseConnection,
    _db_dir: tempfile::TempDir,
    dir: tempfile::TempDir,
    upstream: Arc<Scripted>,
}

impl Setup {
    async fn new() -> Self {
        let (db, db_dir) = sqlite().await;
        Self { db, _db_dir: db_dir, dir: tempfile::tempdir().expect("dir"), upstream: Arc::new(Scripted::new()) }
    }

    /// A worker building with the kubernetes executor on `client`.
    fn worker(&self, client: kube::Client) -> (Parts, Arc<KubernetesIndexExecutor>) {
        let executor = Arc::new(KubernetesIndexExecutor::new(client, settings()));
        let parts = parts_on(
            &self.db,
            self.upstream.clone(),
            self.dir.path(),
            &openledger_ml::testing::smollm2_path(),
            executor.clone(),
        );
        (parts, executor)
    }

    /// What a job pod does: builds the index files into the shared directory, as another
    /// process (its own parts) would.
    async fn run_pod(&self) {
        let pod = parts_on(
            &self.db,
            self.upstream.clone(),
            self.dir.path(),
            &openledger_ml::testing::smollm2_path(),
            Arc::new(crate::LocalIndexExecutor::new()),
        );
        let built = build_shard(&pod.indexes, IndexKind::Span, "version-1", 0, 1).await.expect("the pod builds");
        assert_eq!(built.records, TEXTS.len());
    }

    fn version(&self) -> VersionRef {
        VersionRef {
            datanet_id: "datanet-1".into(),
            snapshot_id: "version-1".into(),
            root: self.upstream.root,
            version: 1,
        }
    }
}

async fn until_state(parts: &Parts, state: &str) -> index::Model {
    for _ in 0..600 {
        let row = parts.indexes.row(&span_index_id("version-1")).await.expect("row").expect("queued");
        if row.state == state {
            return row;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the span index never became {state}");
}

fn writes(requests: &[Recorded]) -> Vec<String> {
    requests.iter().filter(|r| r.is_write()).map(|r| format!("{} {}", r.method, r.path)).collect()
}

#[tokio::test]
async fn an_index_is_built_by_an_attribution_job_and_inferences_attribute_with_it() {
    let setup = Setup::new().await;
    let (client, script) = testing::pair();
    let mut seen = Seen::new();
    let server = script.run(vec![
            seen.on(Expect::get(job_path()).not_found()),
            seen.checking(Expect::post(COLLECTION), |body| assert_eq!(body, &expected_span_job())),
            seen.on(
                Expect::get(job_path()).returns(span_job_in("Running", json!([condition("Admitted", "Admitted", "")])))
            ),
            seen.on(Expect::get(job_path())
                .returns(span_job_in("Succeeded", json!([condition("Complete", "Completed", "")])))),
        ]);
    let (parts, executor) = setup.worker(client);
    parts.indexes.request(&setup.version()).await.expect("request");
    seen.wait(2).await;
    assert_eq!(until_state(&parts, "building").await.files_hash, Vec::<u8>::new());

    // The pod runs while the worker looks once more (Running), then the resource succeeds.
    setup.run_pod().await;
    executor.poll_now();
    seen.wait(1).await;
    executor.poll_now();
    seen.wait(1).await;
    let row = until_state(&parts, READY).await;
    assert_eq!(row.records_indexed, TEXTS.len() as i64);
    assert_eq!(row.error, "");

    let now = openledger_store::now_ms();
    let quoting = format!("As the notes say: {} Stay safe.", TEXTS[1]);
    let outcome = parts.attributions.handle(&inference("inf-1", &quoting, now), now).await.expect("handle");
    assert_eq!(outcome, Outcome::Attributed);
    let events = computed_events(&setup.db).await;
    let paid: Vec<(&str, i64)> = events[0].weights.iter().map(|w| (w.contribution_id.as_str(), w.weight_ppb)).collect();
    assert_eq!(paid, [("contribution-1", 1_000_000_000)]);

    let requests = server.finish().await;
    assert_eq!(writes(&requests), [format!("POST {COLLECTION}")], "one create, nothing else written");
}

#[tokio::test]
async fn a_create_that_meets_an_existing_job_follows_it_without_creating_another() {
    let setup = Setup::new().await;
    let (client, script) = testing::pair();
    let mut seen = Seen::new();
    let server = script.run(vec![
        seen.on(Expect::get(job_path()).not_found()),
        seen.on(Expect::post(COLLECTION).conflict()),
        seen.on(Expect::get(job_path()).returns(span_job_in("Queued", json!([])))),
    ]);
    let (parts, executor) = setup.worker(client);
    parts.indexes.request(&setup.version()).await.expect("request");
    seen.wait(2).await;
    executor.poll_now();
    seen.wait(1).await;
    let requests = server.finish().await;
    assert_eq!(writes(&requests), [format!("POST {COLLECTION}")], "409: no second create");
    assert_eq!(until_state(&parts, "building").await.error, "");
}

#[tokio::test]
async fn a_failed_job_fails_the_index_with_its_reason_and_a_retry_creates_it_anew() {
    let setup = Setup::new().await;
    let (client, script) = testing::pair();
    let mut seen = Seen::new();
    let failed = condition("Failed", "BackoffLimitExceeded", "shard 0 failed 3 times: out of memory");
    let server = script.run(vec![
        seen.on(Expect::get(job_path()).not_found()),
        seen.on(Expect::post(COLLECTION)),
        seen.on(Expect::get(job_path()).returns(span_job_in("Failed", json!([failed])))),
        // The retry.
        seen.on(Expect::delete(job_path()).returns(testing::status_body(200, "", ""))),
        seen.on(Expect::get(job_path()).not_found()),
        seen.checking(Expect::post(COLLECTION), |body| assert_eq!(body, &expected_span_job())),
    ]);
    let (parts, executor) = setup.worker(client);
    parts.indexes.request(&setup.version()).await.expect("request");
    seen.wait(2).await;
    executor.poll_now();
    seen.wait(1).await;
    let row = until_state(&parts, FAILED).await;
    assert_eq!(
        row.error,
        format!(
            "AttributionJob {} failed: BackoffLimitExceeded: shard 0 failed 3 times: out of memory",
            span_job_name()
        )
    );

    parts.indexes.retry(&row.id).await.expect("retry");
    seen.wait(3).await;
    let requests = server.finish().await;
    assert_eq!(
        writes(&requests),
        [format!("POST {COLLECTION}"), format!("DELETE {}", job_path()), format!("POST {COLLECTION}")]
    );
}

#[tokio::test]
async fn a_restarted_worker_follows_the_same_job_with_one_get_per_poll_and_no_write() {
    let setup = Setup::new().await;
    let (client, script) = testing::pair();
    let mut seen = Seen::new();
    let before = script.run(vec![seen.on(Expect::get(job_path()).not_found()), seen.on(Expect::post(COLLECTION))]);
    let (parts, _) = setup.worker(client);
    parts.indexes.request(&setup.version()).await.expect("request");
    seen.wait(2).await;
    before.finish().await;
    // The process dies here; another starts on the same database and cluster.

    const POLLS: usize = 5;
    let (client, script) = testing::pair();
    let running = span_job_in("Running", json!([condition("Admitted", "Admitted", "")]));
    let mut expected: Vec<Expect> =
        (0..=POLLS).map(|_| seen.on(Expect::get(job_path()).returns(running.clone()))).collect();
    expected.push(seen.on(Expect::get(job_path()).returns(span_job_in("Succeeded", json!([])))));
    let server = script.run(expected);
    let (parts, executor) = setup.worker(client);
    assert_eq!(parts.indexes.resume().await.expect("resume"), 1);
    seen.wait(1).await;
    for _ in 0..POLLS {
        executor.poll_now();
        seen.wait(1).await;
    }
    setup.run_pod().await;
    executor.poll_now();
    seen.wait(1).await;
    until_state(&parts, READY).await;
    let requests = server.finish().await;
    assert_eq!(requests.len(), POLLS + 2, "one GET at start, one per poll, one that saw it succeed");
    assert!(writes(&requests).is_empty(), "following a resource in sync writes nothing");
}

/// The resource as the executor creates it for `ft:colours`'s gradient index in `shards`.
fn expected_gradient_job(shards: i32) -> Value {
    let id = crate::gradients::gradient_index_id("ft:colours");
    let mut job = expected_span_job();
    job["metadata"]["name"] = json!(job_name(&id));
    job["metadata"]["labels"]["openledger.io/index-id"] = json!(crate::kubernetes::index_label(&id));
    job["metadata"]["annotations"]["openledger.io/index-id"] = json!(id);
    job["spec"]["index"] = json!("gradient");
    job["spec"]["target"] = json!("ft:colours");
    job["spec"]["shards"] = json!(shards);
    job
}

#[tokio::test]
async fn a_big_gradient_index_is_built_in_shards_and_merged_into_the_whole_index() {
    use prost::Message;
    let (db, db_dir) = sqlite().await;
    let dir = tempfile::tempdir().expect("dir");
    let bodies = crate::tests::colour_bodies(64);
    let (base, trained) = crate::tests::train_adapter(dir.path(), &bodies);
    let setup = Setup { db, _db_dir: db_dir, dir, upstream: Arc::new(Scripted::with(bodies, 8)) };
    let pod = parts_on(
        &setup.db,
        setup.upstream.clone(),
        setup.dir.path(),
        &base,
        Arc::new(crate::LocalIndexExecutor::new()),
    );
    // The version's span index is ready (built here: its own resource is tested above).
    pod.indexes.request(&setup.version()).await.expect("request");
    let span = crate::tests::until_index(&pod, &span_index_id("version-1")).await;
    assert_eq!(span.state, READY);

    let id = crate::gradients::gradient_index_id("ft:colours");
    let path = format!("{COLLECTION}/{}", job_name(&id));
    let mut succeeded = expected_gradient_job(3);
    succeeded["metadata"]["uid"] = json!("5f0e6a52-0000-4000-8000-000000000002");
    succeeded["status"] = json!({"phase": "Succeeded", "conditions": [condition("Complete", "Completed", "")],
                                 "succeededShards": 3});
    let (client, script) = testing::pair();
    let mut seen = Seen::new();
    let server = script.run(vec![
        seen.on(Expect::get(path.clone()).not_found()),
        // 48 training records at 20 a shard: 3 shards.
        seen.checking(Expect::post(COLLECTION), |body| assert_eq!(body, &expected_gradient_job(3))),
        seen.on(Expect::get(path.clone()).returns(succeeded)),
    ]);
    let executor = Arc::new(KubernetesIndexExecutor::new(client, settings()).with_records_per_shard(20));
    let parts = parts_on(&setup.db, setup.upstream.clone(), setup.dir.path(), &base, executor.clone());
    let objects =
        openledger_store::open_object_store(&format!("file://{}", setup.dir.path().join("objects").display()))
            .expect("object store");
    let registered = crate::tests::register(objects.as_ref(), &trained, "ft:colours", setup.upstream.root).await;
    assert!(matches!(crate::on_adapter(&parts.indexes, &registered.encode_to_vec()).await, crate::Handled::Ack));
    seen.wait(2).await;

    // Each pod writes its shard, in its own directory.
    let mut held = 0;
    for shard in 0..3 {
        let built = build_shard(&pod.indexes, IndexKind::Gradient, "ft:colours", shard, 3).await.expect("a shard");
        held += built.records;
    }
    assert_eq!(held, 48);
    let worker_dir = setup.dir.path().join("attribution");
    let shards_dir = crate::gradients::gradient_shards_dir(&worker_dir, "ft:colours");
    assert!(shards_dir.join("2").join(crate::gradients::GRADIENT_INDEX_DIR).is_dir());
    executor.poll_now();
    seen.wait(1).await;
    let row = crate::tests::until_index(&parts, &id).await;
    assert_eq!(row.records_indexed, 48);
    assert!(!shards_dir.exists(), "the shards are deleted once merged");

    // The merged index is the one a whole build writes, file for file.
    let adapter = crate::gradients::adapter_dir(&worker_dir, "ft:colours");
    let (model, tokenizer) = openledger_ml::load_model(&base, &candle_core::Device::Cpu).expect("load");
    let whole = setup.dir.path().join("whole");
    let probing = crate::gradients::probing_for(&adapter, &model).expect("probing");
    let version = crate::indexes::version_dir(&worker_dir, "version-1");
    openledger_attribution::influence::GradientIndex::build(
        &model,
        &tokenizer,
        &adapter,
        &version,
        &whole,
        probing,
        &mut |_, _| {},
    )
    .expect("whole build");
    assert_eq!(row.files_hash, crate::indexes::files_hash(&whole).expect("hash").as_bytes().to_vec());
    let requests = server.finish().await;
    assert_eq!(writes(&requests), [format!("POST {COLLECTION}")]);
}

#[test]
fn job_names_are_dns_labels_with_room_for_the_operators_suffixes() {
    for id in [span_index_id("version-1"), crate::gradients::gradient_index_id(&"ft:".repeat(40))] {
        let name = job_name(&id);
        assert!(name.len() <= 34, "{name}");
        assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'), "{name}");
    }
    assert!(job_name("gradient:ft:care").starts_with("ol-index-gradient-"));
    assert_ne!(job_name("span:a"), job_name("span:b"));
}

#[tokio::test]
async fn a_gradient_index_is_built_for_its_adapter() {
    let (client, _script) = testing::pair();
    let executor = KubernetesIndexExecutor::new(client, JobSettings { queue: None, ..settings() });
    let row = index::Model {
        id: crate::gradients::gradient_index_id("ft:care"),
        kind: crate::indexes::GRADIENT.into(),
        datanet_id: "datanet-1".into(),
        snapshot_id: "version-1".into(),
        snapshot_root: vec![0; 32],
        version: 1,
        adapter_id: "ft:care".into(),
        state: crate::indexes::QUEUED.into(),
        records_indexed: 0,
        location: String::new(),
        files_hash: Vec::new(),
        error: String::new(),
        created_at_ms: 0,
        updated_at_ms: 0,
        source: String::new(),
    };
    let job = serde_json::to_value(executor.resource(&row, 1)).expect("json");
    assert_eq!(job["metadata"]["name"], json!(job_name("gradient:ft:care")));
    assert_eq!(job["metadata"]["annotations"]["openledger.io/index-id"], json!("gradient:ft:care"));
    assert_eq!(
        (&job["spec"]["index"], &job["spec"]["target"], &job["spec"]["shards"]),
        (&json!("gradient"), &json!("ft:care"), &json!(1))
    );
    assert!(job["spec"].get("queueName").is_none(), "no queue named, no queue");
    use crate::kubernetes::gradient_shards;
    let per_shard = crate::limits::GRADIENT_RECORDS_PER_SHARD;
    assert_eq!([gradient_shards(0, per_shard), gradient_shards(per_shard, per_shard)], [1, 1], "small: one shard");
    assert_eq!(gradient_shards(per_shard + 1, per_shard), 2);
    assert_eq!(gradient_shards(1 << 40, per_shard), crate::limits::MAX_GRADIENT_SHARDS, "capped");
}
