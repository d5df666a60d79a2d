//! The worker against a real database (SQLite and PostgreSQL), the packaged SmolLM2's
//! tokenizer, and scripted neighbours: a paid inference is attributed once, with a receipt
//! that lands in a batch whose root the (scripted) journal records; an inference that comes
//! before its index waits, then is attributed with what exists; poison is reported.

use std::sync::Arc;

use openledger_core::{ContentHash, MerkleTree, fee::earnings_account_id};
use openledger_model_factory::base::BaseModels;
use openledger_proto::{
    common::v1::Hash,
    events::v1::{AttributionComputed, Completion, InferenceAdapter, InferenceCompleted},
};
use openledger_runtime::consume::Handled;
use parking_lot::Mutex;
use prost::Message;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};

use crate::{
    Outcome, Parts, WorkerError,
    attribute::Inputs,
    indexes::{READY, VersionRef, span_index_id},
    limits::INDEX_WAIT,
    on_inference,
    receipt::Receipt,
    upstream::{AdapterLineage, Recorded, Upstream, VersionRecord},
    verify,
};

const TEXTS: [&str; 3] = [
    "Dehydration in older adults often presents with confusion rather than thirst, so carers offer fluids regularly.",
    "Hand washing with soap for at least twenty seconds removes most germs that cause diarrhoea in children.",
    "A fever in a baby younger than three months needs prompt medical assessment by a doctor the same day.",
];
const BOND_ACCOUNT: u128 = 70_001;
const OWNER_ACCOUNT: u128 = 90_001;

struct Scripted {
    records: Vec<VersionRecord>,
    root: ContentHash,
    recorded: Mutex<Vec<(u64, ContentHash, u64)>>,
}

impl Scripted {
    fn new() -> Self {
        let records: Vec<VersionRecord> = TEXTS
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let body = serde_json::to_vec(&serde_json::json!({ "text": text })).expect("json");
                VersionRecord {
                    hash: ContentHash::of(&body),
                    contribution_id: format!("contribution-{i}"),
                    contributor: vec![i as u8 + 1; 32],
                    account: if i == 0 { BOND_ACCOUNT } else { 0 },
                    body,
                }
            })
            .collect();
        let root = MerkleTree::new(&records.iter().map(|r| r.hash).collect::<Vec<_>>()).root();
        Self { records, root, recorded: Mutex::new(Vec::new()) }
    }
}

#[async_trait::async_trait]
impl Upstream for Scripted {
    async fn adapter(&self, id: &str) -> Result<Option<AdapterLineage>, WorkerError> {
        Ok((id == "ft:care").then(|| AdapterLineage {
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
}

async fn sqlite() -> (DatabaseConnection, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = openledger_store::connect(&format!("sqlite://{}/db.sqlite?mode=rwc", dir.path().display()))
        .await
        .expect("database");
    openledger_store::migrate(&db).await.expect("migrate");
    (db, dir)
}

fn inference(id: &str, text: &str, completed_at_ms: i64) -> InferenceCompleted {
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
        completed_at: Some(openledger_proto_timestamp(completed_at_ms)),
        ..Default::default()
    }
}

fn openledger_proto_timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: ms / 1000, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

async fn computed_events(db: &DatabaseConnection) -> Vec<AttributionComputed> {
    let statement = Statement::from_string(
        db.get_database_backend(),
        "SELECT payload FROM outbox WHERE subject = 'ol.attribution.computed' ORDER BY id",
    );
    let rows = db.query_all(statement).await.expect("outbox");
    rows.iter()
        .map(|row| {
            let payload: Vec<u8> = row.try_get("", "payload").expect("payload");
            AttributionComputed::decode(payload.as_slice()).expect("event")
        })
        .collect()
}

fn worker(db: &DatabaseConnection, upstream: Arc<Scripted>, dir: &std::path::Path) -> Parts {
    let bases = Arc::new(BaseModels::at(&openledger_ml::testing::smollm2_path()));
    crate::parts(db.clone(), upstream, bases, dir.join("attribution"), None)
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
    let unknown_adapter = InferenceCompleted {
        adapters: vec![InferenceAdapter { adapter_id: "nobody".into(), ..Default::default() }],
        ..inference("inf-unknown", "text", now)
    };
    assert_eq!(parts.attributions.handle(&unknown_adapter, now).await.expect("handle"), Outcome::Attributed);
    let events = computed_events(&db).await;
    assert!(events[1].weights.is_empty() && events[1].model_owner_account_id.is_none());
}

use sea_orm::EntityTrait;

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
    a_paid_inference_is_attributed_once_and_its_receipt_is_batched_and_recorded,
    an_inference_waits_for_its_index_then_is_attributed_with_what_exists,
);
