//! Attribution throughput: how many paid inferences one attribution-worker attributes per
//! second, span-only (on SQLite and on PostgreSQL) and with influence blended in, against how
//! many paid inferences the OpenLoRA engine serves per second on the same machine, in one run
//! with the packaged SmolLM2-135M-Instruct Q4_1. Results in bench/RESULTS.md.
//!
//! The run: a generated Datanet version of several contributors; an adapter trained two steps
//! on a slice of it; the engine serving that adapter to 16 concurrent requests of 24 tokens
//! (measured first, then left idle); the worker's own span index of the version, then paid
//! inferences (`InferenceCompleted`, half quoting a record verbatim, half the engine's own
//! outputs) handled one after another as its consumer does (`on_inference`); receipt batches
//! sealed; then the adapter registered with lineage, its gradient index built by the worker,
//! and paid inferences again, now blended with influence.
//!
//! `cargo bench -p openledger-attribution-worker --bench attribute`; scaled by environment:
//! `ATTRIBUTE_RECORDS` (2000), `ATTRIBUTE_CONTRIBUTORS` (10), `ATTRIBUTE_SPAN_N` (400 per
//! backend), `ATTRIBUTE_INFLUENCE_N` (16), `ATTRIBUTE_TRAIN_RECORDS` (32: the adapter's
//! records, a quarter held out; the gradient index covers the rest), `ATTRIBUTE_ENGINE_N` (64
//! timed requests after a warm-up wave), `ATTRIBUTE_CONCURRENCY` (16), `ATTRIBUTE_MAX_TOKENS`
//! (24), `ATTRIBUTE_THREADS` (engine compute threads, 2).

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use openledger_attribution_worker::{
    Parts,
    attribute::SUBJECT_COMPUTED,
    gradients::gradient_index_id,
    indexes::{FAILED, READY, VersionRef, span_index_id},
    on_adapter, on_inference,
    upstream::{AdapterLineage, Recorded, Upstream, VersionRecord},
};
use openledger_core::{ContentHash, MerkleTree};
use openledger_ml::{
    ChatMessage, Engine, EngineConfig, Event, GenerateRequest, Prompt, Target, Tokenizer,
    adapters::{ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterSource},
    testing::{peak_rss_mib, smollm2_path},
    train::{Control, TrainConfig, TrainJob, data::Tokenize, data::parse_records, train},
};
use openledger_model_factory::base::BaseModels;
use openledger_proto::{
    common::v1::Hash,
    events::v1::{AdapterChanged, AttributionComputed, Completion, InferenceAdapter, InferenceCompleted},
};
use openledger_runtime::consume::Handled;
use prost::Message;
use rand::{Rng, SeedableRng, rngs::StdRng};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};

const ADAPTER_ID: &str = "ft-bench";
const DATANET_ID: &str = "datanet-bench";
const SNAPSHOT_ID: &str = "version-1";
const OWNER_ACCOUNT: u128 = 90_001;
const BOND_ACCOUNT: u128 = 70_001;
const SYSTEM_PROMPT: &str = "You are a helpful assistant. Answer briefly.";

struct Settings {
    records: usize,
    contributors: usize,
    span_n: usize,
    influence_n: usize,
    train_records: usize,
    engine_n: usize,
    concurrency: usize,
    max_tokens: usize,
    threads: usize,
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

impl Settings {
    fn from_env() -> Self {
        Self {
            records: env_number("ATTRIBUTE_RECORDS", 2000),
            contributors: env_number("ATTRIBUTE_CONTRIBUTORS", 10).max(1),
            span_n: env_number("ATTRIBUTE_SPAN_N", 400).max(2),
            influence_n: env_number("ATTRIBUTE_INFLUENCE_N", 16).max(2),
            train_records: env_number("ATTRIBUTE_TRAIN_RECORDS", 32).max(8),
            engine_n: env_number("ATTRIBUTE_ENGINE_N", 64).max(1),
            concurrency: env_number("ATTRIBUTE_CONCURRENCY", 16).max(1),
            max_tokens: env_number("ATTRIBUTE_MAX_TOKENS", 24).max(1),
            threads: env_number("ATTRIBUTE_THREADS", 2).max(1),
        }
    }
}

/// The version's record texts: template sentences over small word lists, each numbered, so
/// every record is distinct and a quote of one is found in it alone.
fn record_texts(n: usize) -> Vec<String> {
    const WHO: [&str; 10] = [
        "The harbour master",
        "A field nurse",
        "The night baker",
        "An old surveyor",
        "The village teacher",
        "A river pilot",
        "The museum keeper",
        "A young welder",
        "The orchard owner",
        "A railway clerk",
    ];
    const DOES: [&str; 8] = ["checks", "repairs", "records", "measures", "paints", "carries", "sorts", "cleans"];
    const WHAT: [&str; 8] = [
        "the copper valves",
        "every ledger page",
        "the winter stores",
        "a broken lantern",
        "the signal flags",
        "the grain sacks",
        "a cracked window",
        "the water pumps",
    ];
    const WHERE: [&str; 6] = [
        "before the tide turns",
        "behind the old mill",
        "near the north gate",
        "under the station clock",
        "beside the stone bridge",
        "at the end of the pier",
    ];
    const WHY: [&str; 5] = [
        "because the inspector comes on",
        "so that nothing is lost by",
        "while the apprentices rest until",
        "as the town council asked for",
        "since the storm is expected on",
    ];
    const DAY: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    let mut rng = StdRng::seed_from_u64(20_261_206);
    (0..n)
        .map(|i| {
            let mut pick = |words: &[&'static str]| words[rng.random_range(0..words.len())];
            format!(
                "{} {} {} {}, {} {}, and writes entry {i} in the {} notebook.",
                pick(&WHO),
                pick(&DOES),
                pick(&WHAT),
                pick(&WHERE),
                pick(&WHY),
                pick(&DAY),
                pick(&["blue", "green", "red", "grey"]),
            )
        })
        .collect()
}

fn body_of(text: &str) -> Vec<u8> {
    openledger_core::record::canonical_json(&[("text", text)])
}

/// The neighbours the worker asks, scripted: the adapter's lineage, the version's records and
/// a journal that records every batch root.
struct Scripted {
    records: Vec<VersionRecord>,
    root: ContentHash,
}

impl Scripted {
    /// `texts` in `contributors` contiguous contributions, the first bonded.
    fn new(texts: &[String], contributors: usize) -> Self {
        let per_contribution = texts.len().div_ceil(contributors);
        let records: Vec<VersionRecord> = texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let contribution = i / per_contribution;
                let body = body_of(text);
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
        Self { records, root }
    }

    fn version(&self) -> VersionRef {
        VersionRef { datanet_id: DATANET_ID.into(), snapshot_id: SNAPSHOT_ID.into(), root: self.root, version: 1 }
    }
}

#[async_trait::async_trait]
impl Upstream for Scripted {
    async fn adapter(&self, id: &str) -> Result<Option<AdapterLineage>, openledger_attribution_worker::WorkerError> {
        Ok((id == ADAPTER_ID).then(|| AdapterLineage {
            id: id.into(),
            owner_account: OWNER_ACCOUNT,
            datanet_id: DATANET_ID.into(),
            snapshot_id: SNAPSHOT_ID.into(),
            snapshot_root: Some(self.root),
        }))
    }

    async fn records(
        &self,
        _datanet_id: &str,
        _snapshot_id: &str,
    ) -> Result<Vec<VersionRecord>, openledger_attribution_worker::WorkerError> {
        Ok(self.records.clone())
    }

    async fn record_batch(
        &self,
        sequence: u64,
        _root: &ContentHash,
        _size: u64,
    ) -> Result<Recorded, openledger_attribution_worker::WorkerError> {
        Ok(Recorded { journal_sequence: sequence, entry_hash: vec![7; 32] })
    }

    async fn slashing_threshold(&self) -> Result<f64, openledger_attribution_worker::WorkerError> {
        Ok(openledger_attribution::quality::DEFAULT_SLASHING_THRESHOLD)
    }
}

/// Trains a rank-8 q/v adapter on `texts` for two optimizer steps into `out` (a quarter held
/// out, as model-factory's jobs do); answers the seconds it took.
fn train_adapter(model_path: &Path, texts: &[String], out: &Path) -> f64 {
    let started = Instant::now();
    let (model, tokenizer) = openledger_ml::load_model(model_path, &candle_core::Device::Cpu).expect("load model");
    let jsonl = texts.iter().map(|t| String::from_utf8(body_of(t)).expect("utf-8")).collect::<Vec<_>>().join("\n");
    let (kind, records) = parse_records(&jsonl).expect("records");
    let dataset = Tokenize { tokenizer: &tokenizer, max_tokens: 64 }.dataset(kind, &records, None).expect("dataset");
    let config = TrainConfig {
        rank: 8,
        alpha: 16.0,
        dropout: 0.0,
        targets: vec![Target::Q, Target::V],
        learning_rate: 1e-3,
        warmup_steps: Some(1),
        epochs: 1,
        max_steps: Some(2),
        batch_tokens: 256,
        eval_split: 0.25,
        eval_every: 1000,
        checkpoint_every: 0,
        max_seq_tokens: Some(64),
        ..TrainConfig::default()
    };
    let job = TrainJob {
        model: &model,
        model_path,
        dataset: &dataset,
        dataset_name: &format!("datanet:{DATANET_ID}@1"),
        validation: None,
        out,
        resume: false,
    };
    train(&job, &config, &mut |_| Control::Continue).expect("train");
    started.elapsed().as_secs_f64()
}

struct EngineFigures {
    requests_per_s: f64,
    tokens_per_s: f64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    completion_tokens_mean: f64,
    /// The timed requests' prompts and outputs, the non-quoting half of the paid inferences.
    outputs: Vec<(String, String)>,
}

struct Served {
    prompt: String,
    text: String,
    tokens: usize,
    latency: Duration,
}

async fn serve_one(engine: &Engine, prompt: &str, max_tokens: usize) -> Served {
    let messages = vec![ChatMessage::new("system", SYSTEM_PROMPT), ChatMessage::new("user", prompt)];
    let request = GenerateRequest::new(Prompt::Chat(messages), max_tokens).with_adapter(ADAPTER_ID);
    let started = Instant::now();
    let mut generation = engine.submit(request).expect("submit");
    let (mut text, mut tokens) = (String::new(), 0);
    while let Some(event) = generation.events.recv().await {
        match event {
            Event::Token { text: piece, .. } => text.push_str(&piece),
            Event::Done { usage, .. } => {
                tokens = usage.completion_tokens;
                break;
            }
            Event::Error(error) => panic!("the engine failed a request: {error}"),
        }
    }
    Served { prompt: prompt.to_owned(), text, tokens, latency: started.elapsed() }
}

/// `count` requests, `settings.concurrency` in flight, the adapter on each.
async fn serve_wave(
    engine: &Arc<Engine>,
    prompts: &Arc<Vec<String>>,
    count: usize,
    settings: &Settings,
) -> Vec<Served> {
    let next = Arc::new(AtomicUsize::new(0));
    let max_tokens = settings.max_tokens;
    let clients: Vec<_> = (0..settings.concurrency)
        .map(|_| {
            let (engine, prompts, next) = (engine.clone(), prompts.clone(), next.clone());
            tokio::spawn(async move {
                let mut served = Vec::new();
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= count {
                        return served;
                    }
                    served.push(serve_one(&engine, &prompts[k % prompts.len()], max_tokens).await);
                }
            })
        })
        .collect();
    let mut all = Vec::with_capacity(count);
    for client in clients {
        all.extend(client.await.expect("client"));
    }
    all
}

/// The engine serving the trained adapter: a warm-up wave, then `engine_n` timed requests.
async fn measure_engine(settings: &Settings, model_path: &Path, adapters_root: &Path) -> EngineFigures {
    let (model, tokenizer) = openledger_ml::load_model(model_path, &candle_core::Device::Cpu).expect("load model");
    let config = EngineConfig { threads: Some(settings.threads), ..Default::default() };
    let engine =
        Arc::new(Engine::start(model, tokenizer, AdapterSource::Dir(adapters_root.into()), config).expect("engine"));
    let spec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/serving/prompts.json")).expect("prompts"),
    )
    .expect("prompts json");
    let prompts: Arc<Vec<String>> = Arc::new(
        spec["user"].as_array().expect("user prompts").iter().map(|p| p.as_str().expect("text").to_owned()).collect(),
    );
    serve_wave(&engine, &prompts, settings.concurrency, settings).await;
    let started = Instant::now();
    let served = serve_wave(&engine, &prompts, settings.engine_n, settings).await;
    let wall = started.elapsed().as_secs_f64();
    let tokens: usize = served.iter().map(|s| s.tokens).sum();
    let mut latencies: Vec<f64> = served.iter().map(|s| s.latency.as_secs_f64() * 1e3).collect();
    EngineFigures {
        requests_per_s: served.len() as f64 / wall,
        tokens_per_s: tokens as f64 / wall,
        latency_p50_ms: percentile(&mut latencies, 50.0),
        latency_p99_ms: percentile(&mut latencies, 99.0),
        completion_tokens_mean: tokens as f64 / served.len() as f64,
        outputs: served.into_iter().map(|s| (s.prompt, s.text)).collect(),
    }
}

/// Nearest rank.
fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// The paid inferences: even ones quote a record verbatim, odd ones are the engine's outputs.
struct Inferences {
    texts: Vec<String>,
    outputs: Vec<(String, String)>,
    tokenizer: Tokenizer,
    file_hashes: Vec<Hash>,
}

impl Inferences {
    fn event(&self, id: &str, i: usize) -> InferenceCompleted {
        let (prompt, text) = if i.is_multiple_of(2) {
            let record = &self.texts[(i * 7919) % self.texts.len()];
            ("What do the notes say?".to_owned(), format!("The notes say: {record}"))
        } else {
            self.outputs[(i / 2) % self.outputs.len()].clone()
        };
        let now = openledger_store::now_ms();
        InferenceCompleted {
            inference_id: id.into(),
            base_model: "SmolLM2-135M-Instruct.Q4_1".into(),
            base_model_hash: Some(Hash { value: vec![3; 32] }),
            adapters: vec![InferenceAdapter {
                adapter_id: ADAPTER_ID.into(),
                weight: 1.0,
                file_hashes: self.file_hashes.clone(),
                owner_account_id: Some(OWNER_ACCOUNT.into()),
            }],
            prompt_token_ids: self.tokenizer.encode(&prompt).expect("tokens"),
            prompt_text: prompt,
            completions: vec![Completion {
                token_ids: self.tokenizer.encode(&text).expect("tokens"),
                text,
                finish_reason: "length".into(),
            }],
            completed_at: Some(openledger_proto::timestamp(now)),
            ..Default::default()
        }
    }
}

fn worker(db: &DatabaseConnection, upstream: Arc<Scripted>, dir: &Path, model_path: &Path) -> Parts {
    let bases = Arc::new(BaseModels::at(model_path));
    let objects = openledger_store::open_object_store(&format!("file://{}", dir.join("objects").display()))
        .expect("object store");
    openledger_attribution_worker::parts(db.clone(), upstream, bases, objects, dir.join("attribution"), None)
}

/// Waits until index `id` is ready; answers how many records it holds.
async fn until_ready(parts: &Parts, id: &str, limit: Duration) -> i64 {
    let started = Instant::now();
    loop {
        if let Some(row) = parts.indexes.row(id).await.expect("index row") {
            assert_ne!(row.state, FAILED, "the build of {id} failed: {}", row.error);
            if row.state == READY {
                return row.records_indexed;
            }
        }
        assert!(started.elapsed() < limit, "index {id} not ready after {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Attributed {
    first_ms: f64,
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// One warm-up inference (timed apart: it opens what the rest reuse), then `n` handled one
/// after another as the consumer does.
async fn attribute_n(parts: &Parts, inferences: &Inferences, prefix: &str, n: usize) -> Attributed {
    let handle = |i: usize| {
        let payload = inferences.event(&format!("{prefix}-{i}"), i).encode_to_vec();
        async move {
            let started = Instant::now();
            let handled = on_inference(&parts.attributions, &payload).await;
            assert!(matches!(handled, Handled::Ack), "inference {prefix}-{i}: {handled:?}");
            started.elapsed().as_secs_f64() * 1e3
        }
    };
    let first_ms = handle(n).await;
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n {
        latencies.push(handle(i).await);
    }
    let per_s = n as f64 / started.elapsed().as_secs_f64();
    Attributed {
        first_ms,
        per_s,
        p50_ms: percentile(&mut latencies.clone(), 50.0),
        p99_ms: percentile(&mut latencies, 99.0),
    }
}

struct SpanFigures {
    backend: &'static str,
    index_build_s: f64,
    attributed: Attributed,
    sealed_receipts: usize,
    seal_per_s: f64,
}

/// Span-only on one database: the worker's own span index, `n` attributions, the batches sealed.
async fn span_only(
    backend: &'static str,
    db: &DatabaseConnection,
    upstream: &Arc<Scripted>,
    dir: &Path,
    model_path: &Path,
    inferences: &Inferences,
    n: usize,
) -> (SpanFigures, Parts) {
    let parts = worker(db, upstream.clone(), dir, model_path);
    let started = Instant::now();
    parts.indexes.request(&upstream.version()).await.expect("queue the span index");
    until_ready(&parts, &span_index_id(SNAPSHOT_ID), Duration::from_secs(600)).await;
    let index_build_s = started.elapsed().as_secs_f64();
    let attributed = attribute_n(&parts, inferences, "span", n).await;
    let started = Instant::now();
    let mut sealed_batches = 0;
    while parts.batches.seal().await.expect("seal").is_some() {
        sealed_batches += 1;
    }
    let seal_s = started.elapsed().as_secs_f64();
    assert!(sealed_batches > 0, "no batch sealed");
    let sealed_receipts = n + 1;
    let figures = SpanFigures {
        backend,
        index_build_s,
        attributed,
        sealed_receipts,
        seal_per_s: sealed_receipts as f64 / seal_s,
    };
    (figures, parts)
}

/// Puts the trained adapter where model-factory registers one (its files and the registry's
/// lineage wrapping the trainer's); answers the registration event.
async fn register(objects: &dyn object_store::ObjectStore, adapter: &Path, root: ContentHash) -> AdapterChanged {
    let location = format!("adapters/{ADAPTER_ID}");
    let mut file_hashes = Vec::new();
    for name in [ADAPTER_CONFIG, ADAPTER_WEIGHTS] {
        let bytes = std::fs::read(adapter.join(name)).expect("adapter file");
        file_hashes.push(Hash { value: ContentHash::of(&bytes).as_bytes().to_vec() });
        let key = object_store::path::Path::from(format!("{location}/{name}"));
        objects.put(&key, bytes.into()).await.expect("put");
    }
    let trainer: serde_json::Value =
        serde_json::from_slice(&std::fs::read(adapter.join(openledger_ml::train::LINEAGE_FILE)).expect("lineage"))
            .expect("lineage json");
    let lineage = serde_json::json!({ "format": "openledger.lineage/1", "adapter": ADAPTER_ID, "trainer": trainer });
    let lineage_location = format!("{location}/lineage.json");
    let key = object_store::path::Path::from(lineage_location.clone());
    objects.put(&key, serde_json::to_vec(&lineage).expect("json").into()).await.expect("put");
    AdapterChanged {
        adapter_id: ADAPTER_ID.into(),
        owner_account_id: Some(OWNER_ACCOUNT.into()),
        file_hashes,
        location,
        datanet_id: DATANET_ID.into(),
        snapshot_id: SNAPSHOT_ID.into(),
        snapshot_root: Some(Hash { value: root.as_bytes().to_vec() }),
        lineage_location,
        job_id: "job-bench".into(),
        ..Default::default()
    }
}

/// The methods of the attributions whose ids start with `prefix`, as their events name them.
async fn methods(db: &DatabaseConnection, prefix: &str) -> Vec<(String, usize)> {
    let sql = match db.get_database_backend() {
        sea_orm::DatabaseBackend::Postgres => "SELECT payload FROM outbox WHERE subject = $1",
        _ => "SELECT payload FROM outbox WHERE subject = ?",
    };
    let rows = db
        .query_all(Statement::from_sql_and_values(db.get_database_backend(), sql, [SUBJECT_COMPUTED.into()]))
        .await
        .expect("outbox");
    let mut counts: Vec<(String, usize)> = Vec::new();
    for row in rows {
        let payload: Vec<u8> = row.try_get("", "payload").expect("payload");
        let event = AttributionComputed::decode(payload.as_slice()).expect("event");
        if !event.inference_id.starts_with(prefix) {
            continue;
        }
        match counts.iter_mut().find(|(method, _)| *method == event.method) {
            Some((_, count)) => *count += 1,
            None => counts.push((event.method, 1)),
        }
    }
    counts
}

struct InfluenceFigures {
    gradient_build_s: f64,
    records_indexed: i64,
    quality_s: Option<f64>,
    attributed: Attributed,
    methods: Vec<(String, usize)>,
}

/// The adapter registered with lineage on the SQLite worker: its gradient index built, the
/// version's quality assessed (both in the background, waited for so they do not share the
/// cores with the timed attributions), then `n` attributions blended with influence.
async fn with_influence(
    parts: &Parts,
    db: &DatabaseConnection,
    dir: &Path,
    adapter: &Path,
    root: ContentHash,
    inferences: &Inferences,
    n: usize,
) -> InfluenceFigures {
    let objects = openledger_store::open_object_store(&format!("file://{}", dir.join("objects").display()))
        .expect("object store");
    let registered = register(objects.as_ref(), adapter, root).await;
    let started = Instant::now();
    assert!(matches!(on_adapter(&parts.indexes, &registered.encode_to_vec()).await, Handled::Ack));
    let records_indexed = until_ready(parts, &gradient_index_id(ADAPTER_ID), Duration::from_secs(1800)).await;
    let gradient_build_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut quality_s = None;
    while started.elapsed() < Duration::from_secs(600) {
        if openledger_attribution_worker::quality::assessed(db, SNAPSHOT_ID).await.expect("assessed") {
            quality_s = Some(started.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let attributed = attribute_n(parts, inferences, "influence", n).await;
    InfluenceFigures {
        gradient_build_s,
        records_indexed,
        quality_s,
        attributed,
        methods: methods(db, "influence").await,
    }
}

async fn sqlite(dir: &Path) -> DatabaseConnection {
    let db = openledger_store::connect(&format!("sqlite://{}/db.sqlite?mode=rwc", dir.display())).await.expect("db");
    openledger_store::migrate(&db).await.expect("migrate");
    db
}

fn print_table(settings: &Settings, engine: &EngineFigures, spans: &[SpanFigures], influence: &InfluenceFigures) {
    println!();
    println!(
        "engine: {} timed requests, {} in flight, {} tokens max (mean {:.1}), adapter {ADAPTER_ID}, {} threads",
        settings.engine_n, settings.concurrency, settings.max_tokens, engine.completion_tokens_mean, settings.threads
    );
    println!(
        "  {:.2} requests/s, {:.1} tokens/s, request latency p50 {:.0} ms, p99 {:.0} ms",
        engine.requests_per_s, engine.tokens_per_s, engine.latency_p50_ms, engine.latency_p99_ms
    );
    println!();
    println!("| worker | index build | first (ms) | attributions/s | p50 ms | p99 ms | engines followed |");
    println!("|---|---|---|---|---|---|---|");
    for span in spans {
        let a = &span.attributed;
        println!(
            "| span-only, {} ({} inferences) | span index {:.1} s | {:.1} | {:.1} | {:.2} | {:.2} | {:.1} |",
            span.backend,
            settings.span_n,
            span.index_build_s,
            a.first_ms,
            a.per_s,
            a.p50_ms,
            a.p99_ms,
            a.per_s / engine.requests_per_s
        );
    }
    let a = &influence.attributed;
    println!(
        "| with influence, SQLite ({} inferences) | gradient index {:.1} s ({} records) | {:.1} | {:.2} | {:.1} | {:.1} | {:.2} |",
        settings.influence_n,
        influence.gradient_build_s,
        influence.records_indexed,
        a.first_ms,
        a.per_s,
        a.p50_ms,
        a.p99_ms,
        a.per_s / engine.requests_per_s
    );
    println!();
    for span in spans {
        println!(
            "receipt batches sealed, {}: {} receipts, {:.0} receipts/s",
            span.backend, span.sealed_receipts, span.seal_per_s
        );
    }
    println!("influence attributions by method: {:?}", influence.methods);
    match influence.quality_s {
        Some(s) => println!("contributor quality assessed {s:.1} s after the gradient index was ready"),
        None => println!("contributor quality not assessed within 600 s (the influence run overlapped it)"),
    }
    println!("peak RSS {:.0} MiB", peak_rss_mib());
}

fn main() {
    let settings = Settings::from_env();
    let model_path = smollm2_path();
    assert!(model_path.exists(), "{} is missing: run scripts/fetch-models.sh smollm2", model_path.display());
    let work = tempfile::tempdir().expect("work dir");
    let texts = record_texts(settings.records);
    let stride = (texts.len() / settings.train_records).max(1);
    let training: Vec<String> = texts.iter().step_by(stride).take(settings.train_records).cloned().collect();
    let adapters_root = work.path().join("engine-adapters");
    let adapter = adapters_root.join(ADAPTER_ID);
    let train_s = train_adapter(&model_path, &training, &adapter);
    println!("adapter trained on {} records (2 steps) in {train_s:.1} s", training.len());

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let engine = runtime.block_on(measure_engine(&settings, &model_path, &adapters_root));
    println!("engine: {:.2} requests/s", engine.requests_per_s);

    let file_hashes = [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
        .into_iter()
        .map(|name| Hash {
            value: ContentHash::of(&std::fs::read(adapter.join(name)).expect("adapter file")).as_bytes().to_vec(),
        })
        .collect();
    let tokenizer = openledger_ml::source::load_tokenizer(&model_path).expect("tokenizer");
    let inferences = Inferences { texts: texts.clone(), outputs: engine.outputs.clone(), tokenizer, file_hashes };
    let upstream = Arc::new(Scripted::new(&texts, settings.contributors));
    let root = upstream.root;

    let (spans, influence) = runtime.block_on(async {
        let sqlite_dir = work.path().join("sqlite");
        std::fs::create_dir_all(&sqlite_dir).expect("dir");
        let sqlite_db = sqlite(&sqlite_dir).await;
        let (on_sqlite, sqlite_parts) =
            span_only("SQLite", &sqlite_db, &upstream, &sqlite_dir, &model_path, &inferences, settings.span_n).await;
        println!("span-only on SQLite: {:.1} attributions/s", on_sqlite.attributed.per_s);
        let postgres = openledger_testkit::Postgres::start();
        let postgres_db = openledger_store::connect(&postgres.create_database("attribution")).await.expect("db");
        openledger_store::migrate(&postgres_db).await.expect("migrate");
        let postgres_dir = work.path().join("postgres");
        let (on_postgres, _) =
            span_only("PostgreSQL", &postgres_db, &upstream, &postgres_dir, &model_path, &inferences, settings.span_n)
                .await;
        println!("span-only on PostgreSQL: {:.1} attributions/s", on_postgres.attributed.per_s);
        drop(postgres_db);
        drop(postgres);
        let influence =
            with_influence(&sqlite_parts, &sqlite_db, &sqlite_dir, &adapter, root, &inferences, settings.influence_n)
                .await;
        (vec![on_sqlite, on_postgres], influence)
    });
    print_table(&settings, &engine, &spans, &influence);
    println!("load average at the end: {}", std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());
}
