//! The worker against a real database (SQLite and PostgreSQL), the packaged SmolLM2's
//! tokenizer, and scripted neighbours: a paid inference is attributed once, with a receipt
//! that lands in a batch whose root the (scripted) journal records; an inference that comes
//! before its index waits, then is attributed with what exists; poison is reported. With a
//! tiny model and an adapter trained on a version for two epochs: the adapter's gradient index
//! is built from the object store, inferences blend influence in with receipts that recompute,
//! and the version's contributor quality is emitted once.

use std::sync::Arc;

use openledger_attribution::{influence::GradientIndex, quality};
use openledger_core::{ContentHash, MerkleTree, fee::earnings_account_id};
use openledger_model_factory::base::BaseModels;
use openledger_proto::{
    common::v1::Hash,
    events::v1::{
        AdapterChanged, AttributionComputed, Completion, InferenceAdapter, InferenceCompleted, QualityAssessed,
    },
};
use openledger_runtime::consume::Handled;
use parking_lot::Mutex;
use prost::Message;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};

use crate::{
    Outcome, Parts, WorkerError,
    attribute::Inputs,
    gradients::gradient_index_id,
    indexes::{READY, VersionRef, span_index_id},
    limits::INDEX_WAIT,
    on_adapter, on_inference,
    receipt::Receipt,
    upstream::{AdapterLineage, Recorded, Upstream, VersionRecord},
    verify,
};

pub(crate) const TEXTS: [&str; 3] = [
    "Dehydration in older adults often presents with confusion rather than thirst, so carers offer fluids regularly.",
    "Hand washing with soap for at least twenty seconds removes most germs that cause diarrhoea in children.",
    "A fever in a baby younger than three months needs prompt medical assessment by a doctor the same day.",
];
const BOND_ACCOUNT: u128 = 70_001;
const OWNER_ACCOUNT: u128 = 90_001;

pub(crate) struct Scripted {
    records: Vec<VersionRecord>,
    pub(crate) root: ContentHash,
    recorded: Mutex<Vec<(u64, ContentHash, u64)>>,
    /// The slashing threshold the scripted ledger's parameters set, and how many times it
    /// answers `unavailable` first.
    threshold: f64,
    threshold_unavailable: std::sync::atomic::AtomicUsize,
}

impl Scripted {
    pub(crate) fn new() -> Self {
        let bodies =
            TEXTS.iter().map(|text| serde_json::to_vec(&serde_json::json!({ "text": text })).expect("json")).collect();
        Self::with(bodies, 1)
    }

    /// A version of `bodies`, `per_contribution` records to each contribution (the first one
    /// bonded to [`BOND_ACCOUNT`]), one contributor per contribution.
    pub(crate) fn with(bodies: Vec<Vec<u8>>, per_contribution: usize) -> Self {
        let records: Vec<VersionRecord> = bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| {
                let contribution = i / per_contribution;
                VersionRecord {
                    hash: ContentHash::of(&body),
                    contribution_id: format!("contribution-{contribution}"),
                    contributor: vec![contribution as u8 + 1; 32],
                    account: if contribution == 0 { BOND_ACCOUNT } else { 0 },
                    body,
                }
            })
            .collect();
        let root = MerkleTree::new(&records.iter().map(|r| r.hash).collect::<Vec<_>>()).root();
        Self {
            records,
            root,
            recorded: Mutex::new(Vec::new()),
            threshold: quality::DEFAULT_SLASHING_THRESHOLD,
            threshold_unavailable: 0.into(),
        }
    }
}

#[async_trait::async_trait]
impl Upstream for Scripted {
    async fn adapter(&self, id: &str) -> Result<Option<AdapterLineage>, WorkerError> {
        Ok((id == "ft:care" || id.starts_with("ft:colours")).then(|| AdapterLineage {
            id: id.into(),
            owner_account: OWNER_ACCOUNT,
            datanet_id: "datanet-1".into(),
            snapshot_id: "version-1".into(),
            snapshot_root: Some(self.root),
        }))
    }

    async fn records(&self, _datanet_id: &str, _snapshot_id: &str) -> Result<Vec<VersionRecord>, WorkerError> {
        Ok(self.records.clone())
    }

    async fn record_batch(&self, sequence: u64, root: &ContentHash, size: u64) -> Result<Recorded, WorkerError> {
        self.recorded.lock().push((sequence, *root, size));
        Ok(Recorded { journal_sequence: 40 + sequence, entry_hash: vec![7; 32] })
    }

    async fn slashing_threshold(&self) -> Result<f64, WorkerError> {
        use std::sync::atomic::Ordering;
        let unavailable =
            self.threshold_unavailable.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if unavailable.is_ok() {
            return Err(WorkerError::new(openledger_core::ErrorCode::Unavailable, "ledger: connection refused"));
        }
        Ok(self.threshold)
    }
}

pub(crate) async fn sqlite() -> (DatabaseConnection, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = openledger_store::connect(&format!("sqlite://{}/db.sqlite?mode=rwc", dir.path().display()))
        .await
        .expect("database");
    openledger_store::migrate(&db).await.expect("migrate");
    (db, dir)
}

pub(crate) fn inference(id: &str, text: &str, completed_at_ms: i64) -> InferenceCompleted {
    InferenceCompleted {
        inference_id: id.into(),
        base_model: "SmolLM2-135M-Instruct.Q4_1".into(),
        base_model_hash: Some(Hash { value: vec![3; 32] }),
        adapters: vec![InferenceAdapter {
            adapter_id: "ft:care".into(),
            weight: 1.0,
            file_hashes: vec![Hash { value: vec![4; 32] }, Hash { value: vec![5; 32] }],
            owner_account_id: Some(OWNER_ACCOUNT.into()),
        }],
        prompt_token_ids: vec![1, 2, 3],
        prompt_text: "What should carers know?".into(),
        completions: vec![Completion { token_ids: vec![9, 8, 7], text: text.into(), finish_reason: "stop".into() }],
        completed_at: Some(openledger_proto::timestamp(completed_at_ms)),
        ..Default::default()
    }
}

/// The events of `subject` in the outbox, in order.
async fn outbox_events<M: Message + Default>(db: &DatabaseConnection, subject: &str) -> Vec<M> {
    let statement = Statement::from_sql_and_values(
        db.get_database_backend(),
        match db.get_database_backend() {
            sea_orm::DatabaseBackend::Postgres => "SELECT payload FROM outbox WHERE subject = $1 ORDER BY id",
            _ => "SELECT payload FROM outbox WHERE subject = ? ORDER BY id",
        },
        [subject.into()],
    );
    let rows = db.query_all(statement).await.expect("outbox");
    rows.iter()
        .map(|row| {
            let payload: Vec<u8> = row.try_get("", "payload").expect("payload");
            M::decode(payload.as_slice()).expect("event")
        })
        .collect()
}

pub(crate) async fn computed_events(db: &DatabaseConnection) -> Vec<AttributionComputed> {
    outbox_events(db, crate::attribute::SUBJECT_COMPUTED).await
}

fn worker(db: &DatabaseConnection, upstream: Arc<Scripted>, dir: &std::path::Path) -> Parts {
    worker_on(db, upstream, dir, &openledger_ml::testing::smollm2_path())
}

fn worker_on(db: &DatabaseConnection, upstream: Arc<Scripted>, dir: &std::path::Path, base: &std::path::Path) -> Parts {
    parts_on(db, upstream, dir, base, Arc::new(crate::LocalIndexExecutor::new()))
}

/// The worker's parts under `dir` (its `attribution` directory and `objects`), building with
/// `executor`.
pub(crate) fn parts_on(
    db: &DatabaseConnection,
    upstream: Arc<Scripted>,
    dir: &std::path::Path,
    base: &std::path::Path,
    executor: Arc<dyn crate::IndexExecutor>,
) -> Parts {
    let bases = Arc::new(BaseModels::at(base));
    let objects = openledger_store::open_object_store(&format!("file://{}", dir.join("objects").display()))
        .expect("object store");
    let lag = crate::limits::INFLUENCE_MAX_LAG;
    crate::parts_with(db.clone(), upstream, bases, objects, dir.join("attribution"), None, executor, lag)
}

async fn until_ready(parts: &Parts, snapshot_id: &str) {
    for _ in 0..600 {
        let row = parts.indexes.row(&span_index_id(snapshot_id)).await.expect("row").expect("queued");
        assert_ne!(row.state, crate::indexes::FAILED, "the build failed: {}", row.error);
        if row.state == READY {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the span index of {snapshot_id} never became ready");
}

async fn a_paid_inference_is_attributed_once_and_its_receipt_is_batched_and_recorded(db: DatabaseConnection) {
    let dir = tempfile::tempdir().expect("dir");
    let upstream = Arc::new(Scripted::new());
    let parts = worker(&db, upstream.clone(), dir.path());
    let now = openledger_store::now_ms();

    // Before the version is indexed, the inference waits (its index is queued for it).
    let quoting = format!("As the notes say: {} Stay safe.", TEXTS[1]);
    let first = inference("inf-1", &quoting, now);
    assert!(matches!(parts.attributions.handle(&first, now).await.expect("handle"), Outcome::Wait(_)));
    until_ready(&parts, "version-1").await;

    assert_eq!(parts.attributions.handle(&first, now).await.expect("handle"), Outcome::Attributed);
    assert_eq!(parts.attributions.handle(&first, now).await.expect("again"), Outcome::AlreadyAttributed);
    let events = computed_events(&db).await;
    assert_eq!(events.len(), 1, "one event per inference, however often it is delivered");
    let event = &events[0];
    assert_eq!(event.inference_id, "inf-1");
    assert_eq!(event.method, "span_match");
    let paid: Vec<(&str, i64)> = event.weights.iter().map(|w| (w.contribution_id.as_str(), w.weight_ppb)).collect();
    assert_eq!(paid, [("contribution-1", 1_000_000_000)], "the quoted record's contribution takes the whole share");
    assert_eq!(event.weights[0].contributor, vec![2u8; 32]);
    assert!(event.weights[0].contributor_account_id.is_none(), "no bond account: the ledger pays the earnings account");
    assert_eq!(openledger_proto::u128_of(event.model_owner_account_id.as_ref()), OWNER_ACCOUNT);

    // A quote of the bonded contribution names its bond account.
    let bonded = inference("inf-2", TEXTS[0], now);
    assert_eq!(parts.attributions.handle(&bonded, now).await.expect("handle"), Outcome::Attributed);
    let events = computed_events(&db).await;
    assert_eq!(openledger_proto::u128_of(events[1].weights[0].contributor_account_id.as_ref()), BOND_ACCOUNT);

    // The receipt: canonical, hashed into the event, naming the version, index and weights.
    let stored =
        crate::entities::attribution::Entity::find_by_id("inf-1").one(&db).await.expect("read").expect("stored");
    let receipt = Receipt::parse(&stored.receipt).expect("canonical receipt");
    assert_eq!(receipt.hash().as_bytes().as_slice(), event.receipt_hash.as_ref().expect("hash").value.as_slice());
    assert_eq!(receipt.snapshot_root, upstream.root.to_hex());
    assert_eq!(receipt.weights[0].account, earnings_account_id(&[2; 32]).to_string());
    assert!(!receipt.span_index.is_empty());
    assert_eq!(receipt.completeness, "complete");
    assert!(receipt.gradient_index.is_empty() && receipt.estimator.is_empty(), "no gradient index: span-only");
    assert!(stored.notes.contains("no gradient index") && stored.notes.contains("span-only"), "{}", stored.notes);

    // Batched: one tree over both receipts, its root recorded once, each proof verifying.
    assert_eq!(parts.batches.seal().await.expect("seal"), Some(1));
    assert_eq!(parts.batches.seal().await.expect("nothing left"), None);
    assert_eq!(parts.batches.record().await.expect("record"), 1);
    assert_eq!(parts.batches.record().await.expect("nothing left"), 0);
    let recorded = upstream.recorded.lock().clone();
    assert_eq!(recorded.len(), 1);
    let stored = crate::entities::attribution::Entity::find_by_id("inf-1").one(&db).await.expect("read").expect("row");
    let (proof, batch) = parts.batches.proof(&stored).await.expect("proof").expect("batched");
    assert_eq!((batch.sequence, batch.size, batch.journal_sequence), (1, 2, Some(41)));
    assert_eq!(recorded[0], (1, ContentHash::try_from(batch.root.as_slice()).expect("root"), 2));
    assert!(proof.verify(&receipt.hash(), &recorded[0].1), "the receipt is in the recorded batch");
    let mut tampered = receipt.clone();
    tampered.weights[0].weight_ppb -= 1;
    assert!(!proof.verify(&tampered.hash(), &recorded[0].1), "a changed weight is not in the batch");

    // What `verify` checks, first as published, then each tampered.
    let version = parts.indexes.version("version-1").await.expect("open").expect("ready");
    let inputs: Inputs = serde_json::from_str(&stored.inputs).expect("inputs");
    let published = receipt.hash();
    verify::check_receipt(&stored.receipt, &published).expect("the receipt as published");
    verify::check_inputs(&receipt, &inputs).expect("the inputs hashed");
    verify::check_recomputed(&receipt, &inputs, &version).expect("the same weights recomputed");
    verify::check_inclusion(&published, &proof, &recorded[0].1).expect("in the recorded batch");
    let error = verify::check_receipt(&tampered.canonical_bytes(), &published).expect_err("a tampered receipt");
    assert!(error.contains("hashes to"), "{error}");
    let error = verify::check_recomputed(&tampered, &inputs, &version).expect_err("a tampered weight");
    assert!(error.contains("recomputing gives other weights"), "{error}");
    let error = verify::check_inclusion(&published, &proof, &ContentHash::of(b"another root")).expect_err("root");
    assert!(error.contains("journal recorded"), "{error}");
    let mut other_text = inputs.clone();
    other_text.completions[0].text.push('!');
    assert!(verify::check_inputs(&receipt, &other_text).is_err(), "a changed completion is caught");
}

async fn an_inference_waits_for_its_index_then_is_attributed_with_what_exists(db: DatabaseConnection) {
    let dir = tempfile::tempdir().expect("dir");
    let upstream = Arc::new(Scripted::new());
    let parts = worker(&db, upstream, dir.path());
    // Marked failed before it is built: the inference does not wait for what will not come.
    parts
        .indexes
        .request(&VersionRef {
            datanet_id: "datanet-1".into(),
            snapshot_id: "version-1".into(),
            root: ContentHash::of(b"not the root"),
            version: 1,
        })
        .await
        .expect("queued");
    for _ in 0..600 {
        let row = parts.indexes.row(&span_index_id("version-1")).await.expect("row").expect("row");
        if row.state == crate::indexes::FAILED {
            assert!(row.error.contains("root"), "{}", row.error);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let now = openledger_store::now_ms();
    let late = inference("inf-late", TEXTS[2], now - INDEX_WAIT.as_millis() as i64 - 1);
    assert_eq!(parts.attributions.handle(&late, now).await.expect("handle"), Outcome::Attributed);
    let events = computed_events(&db).await;
    assert!(events[0].weights.is_empty(), "attributed without an index: nobody is paid");
    let stored = crate::entities::attribution::Entity::find_by_id("inf-late").one(&db).await.expect("r").expect("row");
    assert_eq!(stored.completeness, "partial");
    assert!(stored.notes.contains("attributed without it"), "{}", stored.notes);

    // A message that is not an inference is poison, reported, never attributed.
    assert!(matches!(on_inference(&parts.attributions, b"\xff\xff not protobuf").await, Handled::Poison(_)));
    let timeless = InferenceCompleted { completed_at: None, ..inference("inf-timeless", "text", now) };
    assert!(
        matches!(on_inference(&parts.attributions, &timeless.encode_to_vec()).await, Handled::Poison(reason) if reason.contains("completion time"))
    );
    let unknown_adapter = InferenceCompleted {
        adapters: vec![InferenceAdapter { adapter_id: "nobody".into(), ..Default::default() }],
        ..inference("inf-unknown", "text", now)
    };
    assert_eq!(parts.attributions.handle(&unknown_adapter, now).await.expect("handle"), Outcome::Attributed);
    let events = computed_events(&db).await;
    assert!(events[1].weights.is_empty() && events[1].model_owner_account_id.is_none());
}

/// The colour decides the label; records 24..32 (contribution 3 at eight records each) carry
/// wrong labels.
pub(crate) fn colour_bodies(n: usize) -> Vec<Vec<u8>> {
    let fillers = ["the sky", "a pen", "this ball", "that car", "my hat", "an apple", "our door", "his cup"];
    let classes = [("red", "warm"), ("blue", "cold"), ("green", "fresh"), ("black", "dark")];
    (0..n)
        .map(|i| {
            let (colour, label) = classes[i % classes.len()];
            let label = if (24..32).contains(&i) { classes[(i + 1) % classes.len()].1 } else { label };
            let text = format!("{} is {colour} {i}", fillers[i % fillers.len()]);
            openledger_core::record::canonical_json(&[("text", &text), ("label", label)])
        })
        .collect()
}

/// A tiny base model and a rank-4 adapter trained four epochs on `bodies` (a quarter held
/// out), as model-factory trains one; answers the model's path and the adapter's directory.
/// Four epochs, as the attribution crate's quality test: the task is learnt, the flipped
/// records not yet memorised.
pub(crate) fn train_adapter(dir: &std::path::Path, bodies: &[Vec<u8>]) -> (std::path::PathBuf, std::path::PathBuf) {
    use openledger_ml::{
        Target,
        testing::{TinyModel, TinySpec},
        train::{Control, TrainConfig, TrainJob, data::Tokenize, data::parse_records, train},
    };
    let base = TinyModel::new(TinySpec::default())
        .expect("tiny model")
        .write_gguf(&dir.join("tiny.gguf"), candle_core::quantized::GgmlDType::F32)
        .expect("gguf");
    let (model, tokenizer) = openledger_ml::load_model(&base, &candle_core::Device::Cpu).expect("load");
    let text = bodies.iter().map(|b| String::from_utf8(b.clone()).expect("utf-8")).collect::<Vec<_>>().join("\n");
    let (kind, records) = parse_records(&text).expect("records");
    let dataset = Tokenize { tokenizer: &tokenizer, max_tokens: 64 }.dataset(kind, &records, None).expect("dataset");
    let adapter = dir.join("trained");
    let config = TrainConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: vec![Target::Q, Target::V, Target::Down],
        learning_rate: 1e-2,
        warmup_steps: Some(2),
        epochs: 4,
        batch_tokens: 256,
        eval_split: 0.25,
        eval_every: 1000,
        checkpoint_every: 0,
        max_seq_tokens: Some(64),
        ..TrainConfig::default()
    };
    let job = TrainJob {
        model: &model,
        model_path: &base,
        dataset: &dataset,
        dataset_name: "datanet:colours@1",
        validation: None,
        out: &adapter,
        resume: false,
    };
    train(&job, &config, &mut |_| Control::Continue).expect("train");
    (base, adapter)
}

/// Registers the trained adapter as model-factory does: its files and the registry's lineage
/// (wrapping the trainer's) in the object store; answers the event.
pub(crate) async fn register(
    objects: &dyn object_store::ObjectStore,
    adapter: &std::path::Path,
    id: &str,
    root: ContentHash,
) -> AdapterChanged {
    use openledger_ml::adapters::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};
    let location = format!("adapters/{id}");
    let mut file_hashes = Vec::new();
    for name in [ADAPTER_CONFIG, ADAPTER_WEIGHTS] {
        let bytes = std::fs::read(adapter.join(name)).expect("adapter file");
        file_hashes.push(Hash { value: ContentHash::of(&bytes).as_bytes().to_vec() });
        let key = object_store::path::Path::from(format!("{location}/{name}"));
        objects.put(&key, bytes.into()).await.expect("put");
    }
    let trainer: serde_json::Value =
        serde_json::from_slice(&std::fs::read(adapter.join(openledger_ml::train::LINEAGE_FILE)).expect("lineage"))
            .expect("json");
    let lineage = serde_json::json!({ "format": "openledger.lineage/1", "adapter": id, "trainer": trainer });
    let lineage_location = format!("{location}/lineage.json");
    let key = object_store::path::Path::from(lineage_location.clone());
    objects.put(&key, serde_json::to_vec(&lineage).expect("json").into()).await.expect("put");
    AdapterChanged {
        adapter_id: id.into(),
        owner_account_id: Some(OWNER_ACCOUNT.into()),
        file_hashes,
        location,
        datanet_id: "datanet-1".into(),
        snapshot_id: "version-1".into(),
        snapshot_root: Some(Hash { value: root.as_bytes().to_vec() }),
        lineage_location,
        job_id: "job-1".into(),
        ..Default::default()
    }
}

pub(crate) async fn until_index(parts: &Parts, id: &str) -> crate::entities::index::Model {
    for _ in 0..2400 {
        let row = parts.indexes.row(id).await.expect("row").expect("queued");
        assert_ne!(row.state, crate::indexes::FAILED, "the build of {id} failed: {}", row.error);
        if row.state == READY {
            return row;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("index {id} never became ready");
}

async fn quality_events(db: &DatabaseConnection) -> Vec<QualityAssessed> {
    outbox_events(db, crate::quality::SUBJECT_QUALITY_ASSESSED).await
}

async fn until_assessed(db: &DatabaseConnection) {
    for _ in 0..2400 {
        if crate::quality::assessed(db, "version-1").await.expect("read") {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("version-1 was never assessed");
}

async fn a_trained_adapter_gets_a_gradient_index_inferences_blend_influence_and_quality_is_assessed_once(
    db: DatabaseConnection,
) {
    let dir = tempfile::tempdir().expect("dir");
    let bodies = colour_bodies(64);
    let (base, trained) = train_adapter(dir.path(), &bodies);
    // Governance set the threshold at the typical record (0), and the ledger is away at first.
    let mut scripted = Scripted::with(bodies, 8);
    scripted.threshold = 0.0;
    scripted.threshold_unavailable = 1.into();
    let upstream = Arc::new(scripted);
    let parts = worker_on(&db, upstream.clone(), dir.path(), &base);
    let objects = openledger_store::open_object_store(&format!("file://{}", dir.path().join("objects").display()))
        .expect("object store");
    let registered = register(objects.as_ref(), &trained, "ft:colours", upstream.root).await;

    // The registration queues the version's span index and the adapter's gradient index.
    assert!(matches!(on_adapter(&parts.indexes, &registered.encode_to_vec()).await, Handled::Ack));
    until_ready(&parts, "version-1").await;
    let gradient = until_index(&parts, &gradient_index_id("ft:colours")).await;
    assert_eq!((gradient.kind.as_str(), gradient.records_indexed), ("gradient", 48), "the training split is indexed");

    // Contributor quality of the version, on its first adapter: what `quality::assess` says.
    until_assessed(&db).await;
    let (model, tokenizer) = openledger_ml::load_model(&base, &candle_core::Device::Cpu).expect("load");
    let adapter_dir = crate::gradients::adapter_dir(&dir.path().join("attribution"), "ft:colours");
    let version_dir = crate::indexes::version_dir(&dir.path().join("attribution"), "version-1");
    let index = GradientIndex::open(&adapter_dir.join(crate::gradients::GRADIENT_INDEX_DIR)).expect("index");
    let report = quality::assess(
        &model,
        &tokenizer,
        &adapter_dir,
        &version_dir,
        &index,
        None,
        quality::DEFAULT_QUALITY_ESTIMATOR,
        0.0,
    )
    .expect("assess");
    let events = quality_events(&db).await;
    assert_eq!(events.len(), 1, "one assessment per version");
    let event = &events[0];
    assert_eq!((event.datanet_id.as_str(), event.snapshot_id.as_str()), ("datanet-1", "version-1"));
    assert_eq!((event.adapter_id.as_str(), event.estimator.as_str()), ("ft:colours", "datainf_normalized"));
    assert_eq!(event.threshold, 0.0, "the governed threshold, read again after the ledger came back");
    assert_eq!(upstream.threshold_unavailable.load(std::sync::atomic::Ordering::SeqCst), 0);
    let mut assessed: Vec<String> = report.contributions.iter().map(|c| c.contribution.clone()).collect();
    assessed.sort();
    assert_eq!(event.contribution_ids, assessed);
    assert_eq!(assessed.len(), 8, "the training split holds records of every contribution: {assessed:?}");
    let candidates: Vec<&str> = event.candidates.iter().map(|c| c.contribution_id.as_str()).collect();
    assert_eq!(candidates, report.slashing_candidates.iter().map(String::as_str).collect::<Vec<_>>());
    // The label-flipped contribution is the most harmful; on this tiny run only a threshold as
    // strict as the typical record makes it a candidate (the default's separation is tested on
    // a larger run in `quality`).
    assert_eq!(report.contributions[0].contribution, "contribution-3");
    assert!(candidates.contains(&"contribution-3"), "{candidates:?}");
    assert!(candidates.len() < assessed.len(), "those above the typical record are not candidates: {candidates:?}");
    for candidate in &event.candidates {
        let quality = report.contributions.iter().find(|c| c.contribution == candidate.contribution_id).expect("c");
        assert_eq!(candidate.score, quality.score);
        assert_eq!(hex::encode(&candidate.contributor), quality.contributor);
        assert!(candidate.evidence.contains("datainf_normalized") && candidate.evidence.contains("threshold"));
    }

    // Redelivered, a second adapter on the same version, a restart: still one assessment.
    assert!(matches!(on_adapter(&parts.indexes, &registered.encode_to_vec()).await, Handled::Ack));
    let second = register(objects.as_ref(), &trained, "ft:colours-2", upstream.root).await;
    assert!(matches!(on_adapter(&parts.indexes, &second.encode_to_vec()).await, Handled::Ack));
    let second_row = until_index(&parts, &gradient_index_id("ft:colours-2")).await;
    parts.indexes.assess(&second_row).await.expect("assessing again is a no-op");
    let restarted = worker_on(&db, upstream.clone(), dir.path(), &base);
    restarted.indexes.resume().await.expect("resume");
    restarted.indexes.assess(&second_row).await.expect("assessing after a restart is a no-op");
    // Two assessments racing past that check: the version's row lets one event out.
    let racing = crate::quality::Assessed {
        datanet_id: "datanet-1".into(),
        snapshot_id: "version-1".into(),
        adapter_id: "ft:colours-2".into(),
    };
    assert!(!crate::quality::record(&db, &racing, &report).await.expect("record"), "recorded before");
    assert_eq!(quality_events(&db).await.len(), 1, "the version was assessed on its first adapter only");

    // A paid inference of the adapter blends influence in; its receipt names the index.
    let now = openledger_store::now_ms();
    let paid = InferenceCompleted {
        adapters: vec![InferenceAdapter {
            adapter_id: "ft:colours".into(),
            weight: 1.0,
            file_hashes: registered.file_hashes.clone(),
            owner_account_id: Some(OWNER_ACCOUNT.into()),
        }],
        prompt_text: "the sky is red 0".into(),
        ..inference("inf-influence", "warm", now)
    };
    assert_eq!(parts.attributions.handle(&paid, now).await.expect("handle"), Outcome::Attributed);
    let stored =
        crate::entities::attribution::Entity::find_by_id("inf-influence").one(&db).await.expect("r").expect("row");
    let receipt = Receipt::parse(&stored.receipt).expect("canonical receipt");
    assert!(["blended", "gradient_influence"].contains(&receipt.method.as_str()), "{}", receipt.method);
    assert_eq!(receipt.gradient_index, hex::encode(&gradient.files_hash));
    assert_eq!(receipt.estimator, "datainf_normalized");
    assert!(!receipt.weights.is_empty(), "influence pays the records that shaped the output");
    let total: u64 = receipt.weights.iter().map(|w| w.weight_ppb).sum();
    assert_eq!(total, 1_000_000_000);
    assert!(!stored.notes.contains("span-only"), "{}", stored.notes);

    // Its twin handled just past the lag bound after completing: the worker is behind, so it
    // attributes span-only to catch up, and says so.
    let late = InferenceCompleted { inference_id: "inf-late".into(), ..paid.clone() };
    let behind = now + crate::limits::INFLUENCE_MAX_LAG.as_millis() as i64 + 1;
    assert_eq!(parts.attributions.handle(&late, behind).await.expect("handle"), Outcome::Attributed);
    let late = crate::entities::attribution::Entity::find_by_id("inf-late").one(&db).await.expect("r").expect("row");
    let late_receipt = Receipt::parse(&late.receipt).expect("canonical receipt");
    assert_eq!((late_receipt.gradient_index.as_str(), late_receipt.estimator.as_str()), ("", ""));
    assert!(late.notes.contains("behind") && late.notes.contains("span-only"), "{}", late.notes);

    // Recomputed from outside with the index opened afresh: the same weights; without it, a
    // clear refusal; a changed weight is caught.
    let version = parts.indexes.version("version-1").await.expect("open").expect("ready");
    let inputs: Inputs = serde_json::from_str(&stored.inputs).expect("inputs");
    let opened = crate::gradients::open_adapter_gradients(&dir.path().join("attribution"), "ft:colours", &base)
        .expect("the gradient index as verify opens it");
    verify::check_recomputed_with(&receipt, &inputs, &version, Some(&opened)).expect("the same weights recomputed");
    let error = verify::check_recomputed(&receipt, &inputs, &version).expect_err("needs the gradient index");
    assert!(error.contains("give that index"), "{error}");
    let mut tampered = receipt.clone();
    tampered.weights[0].weight_ppb -= 1;
    let error = verify::check_recomputed_with(&tampered, &inputs, &version, Some(&opened)).expect_err("tampered");
    assert!(error.contains("recomputing gives other weights"), "{error}");

    // Inference files other than the indexed adapter's: span-only, and the notes say so.
    let other = InferenceCompleted {
        adapters: vec![InferenceAdapter { file_hashes: vec![Hash { value: vec![4; 32] }], ..paid.adapters[0].clone() }],
        ..inference("inf-other-files", "warm", now)
    };
    assert_eq!(parts.attributions.handle(&other, now).await.expect("handle"), Outcome::Attributed);
    let stored =
        crate::entities::attribution::Entity::find_by_id("inf-other-files").one(&db).await.expect("r").expect("row");
    assert!(stored.notes.contains("other files") && stored.notes.contains("span-only"), "{}", stored.notes);
    assert!(Receipt::parse(&stored.receipt).expect("receipt").gradient_index.is_empty());

    // An output longer than the probe takes: attributed by its spans, and the notes say why.
    let long =
        InferenceCompleted { adapters: paid.adapters.clone(), ..inference("inf-long", &"warm ".repeat(300), now) };
    assert_eq!(parts.attributions.handle(&long, now).await.expect("handle"), Outcome::Attributed);
    let stored = crate::entities::attribution::Entity::find_by_id("inf-long").one(&db).await.expect("r").expect("row");
    assert!(stored.notes.contains("influence cannot be computed"), "{}", stored.notes);
    let receipt = Receipt::parse(&stored.receipt).expect("receipt");
    assert_eq!((receipt.method.as_str(), receipt.gradient_index.as_str()), ("span_match", ""));
    let inputs: Inputs = serde_json::from_str(&stored.inputs).expect("inputs");
    verify::check_recomputed(&receipt, &inputs, &version).expect("span-only recomputes without the gradient index");
}

use sea_orm::EntityTrait;

/// Indexes are listed in id order a page at a time, by version, by adapter, or both.
async fn indexes_are_listed_a_page_at_a_time_by_version_and_adapter(db: DatabaseConnection) {
    use sea_orm::{ActiveModelTrait, Set};

    use crate::entities::index;
    let dir = tempfile::tempdir().expect("dir");
    let parts = worker(&db, Arc::new(Scripted::new()), dir.path());
    let rows = [("gradient:a1", "s1", "a1"), ("gradient:a2", "s1", "a2"), ("span:s1", "s1", ""), ("span:s2", "s2", "")];
    for (id, snapshot, adapter) in rows {
        let kind = if adapter.is_empty() { "span" } else { "gradient" };
        index::ActiveModel {
            id: Set(id.into()),
            kind: Set(kind.into()),
            datanet_id: Set("d".into()),
            snapshot_id: Set(snapshot.into()),
            snapshot_root: Set(Vec::new()),
            version: Set(1),
            adapter_id: Set(adapter.into()),
            state: Set("ready".into()),
            records_indexed: Set(0),
            location: Set(String::new()),
            files_hash: Set(Vec::new()),
            error: Set(String::new()),
            created_at_ms: Set(0),
            updated_at_ms: Set(0),
            source: Set(String::new()),
        }
        .insert(&db)
        .await
        .expect("index row");
    }
    let page = |snapshot: &'static str, adapter: &'static str, size: u32, after: String| {
        let indexes = parts.indexes.clone();
        async move {
            let (rows, next) = indexes.page(snapshot, adapter, size, &after).await.expect("page");
            (rows.into_iter().map(|row| row.id).collect::<Vec<_>>(), next)
        }
    };
    let (first, next) = page("", "", 3, String::new()).await;
    assert_eq!((first, next.as_str()), (vec!["gradient:a1".into(), "gradient:a2".into(), "span:s1".into()], "span:s1"));
    assert_eq!(page("", "", 3, next).await, (vec!["span:s2".into()], String::new()), "the last page has no next");
    assert_eq!(page("s1", "", 0, String::new()).await.0.len(), 3, "size 0 is the default");
    assert_eq!(page("", "a2", 0, String::new()).await.0, ["gradient:a2"]);
    assert_eq!(page("s2", "a2", 0, String::new()).await.0, Vec::<String>::new());
    assert_eq!(page("", "", 5000, String::new()).await.0.len(), 4, "a size above the maximum is the maximum");
}

macro_rules! on_both {
    ($($scenario:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let (db, _dir) = super::sqlite().await;
                    super::$scenario(db).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let postgres = openledger_testkit::Postgres::start();
                    let db = openledger_store::connect(&postgres.create_database("attribution")).await.expect("database");
                    openledger_store::migrate(&db).await.expect("migrate");
                    super::$scenario(db).await;
                }
            )*
        }
    };
}

on_both!(
    indexes_are_listed_a_page_at_a_time_by_version_and_adapter,
    a_paid_inference_is_attributed_once_and_its_receipt_is_batched_and_recorded,
    an_inference_waits_for_its_index_then_is_attributed_with_what_exists,
    a_trained_adapter_gets_a_gradient_index_inferences_blend_influence_and_quality_is_assessed_once,
);
