//! The engine hosts end to end in one process: replicas serving gRPC `EngineService` on
//! localhost over a tiny model, an edge's [`RemoteEngines`] routing to them, and the same
//! requests on an in-process engine for comparison.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::quantized::GgmlDType;
use object_store::ObjectStore;
use object_store::memory::InMemory;
use openledger_core::Config;
use openledger_ml::testing::{TinyModel, TinySpec, write_peft_adapter};
use openledger_ml::{Event, FinishReason, GenerateRequest, Prompt, Target, Usage};
use openledger_proto::inference::v1::engine_service_server::EngineServiceServer;
use openledger_telemetry::Metrics;
use tokio_util::sync::CancellationToken;

use super::local::LocalEngine;
use super::remote::RemoteEngines;
use super::server::EngineServer;
use super::{EngineHost, EngineStream, host};

const ADAPTERS: [&str; 4] = ["style", "facts", "legal", "poems"];

/// A tiny base model on disk and its adapters in an object store under `adapters/<id>/`.
struct Fixture {
    dir: tempfile::TempDir,
    model: PathBuf,
    objects: Arc<dyn ObjectStore>,
}

impl Fixture {
    async fn new(spec: TinySpec) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let tiny = TinyModel::new(spec).expect("tiny model");
        let model = tiny.write_gguf(&dir.path().join("tiny.gguf"), GgmlDType::Q8_0).expect("gguf");
        let shape = openledger_ml::source::read_model_config(&model).expect("model config");
        let objects: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        for (seed, id) in ADAPTERS.iter().enumerate() {
            let local = dir.path().join("written").join(id);
            write_peft_adapter(&local, &shape, 4, &[Target::Q, Target::V], seed as u64 + 1, false).expect("adapter");
            for file in ["adapter_config.json", "adapter_model.safetensors"] {
                let bytes = std::fs::read(local.join(file)).expect("read adapter file");
                let path = object_store::path::Path::from(format!("adapters/{id}/{file}"));
                objects.put(&path, bytes.into()).await.expect("upload adapter");
            }
        }
        Self { dir, model, objects }
    }

    /// The settings of one engine: its own data dir (adapter cache), one compute thread.
    fn config(&self, name: &str) -> Config {
        Config {
            data_dir: self.dir.path().join(name),
            base_model: Some(self.model.display().to_string()),
            engine_threads: 1,
            ..Config::default()
        }
    }

    async fn local(&self, name: &str) -> Arc<LocalEngine> {
        let (config, metrics) = (self.config(name), Metrics::new());
        let engine = host::start_local(&config, self.model.clone(), self.objects.clone(), &metrics).await;
        Arc::new(engine.expect("engine"))
    }
}

/// One replica serving gRPC on a kernel-chosen localhost port until stopped.
struct TestReplica {
    url: String,
    engine: Arc<LocalEngine>,
    shutdown: CancellationToken,
    served: tokio::task::JoinHandle<()>,
}

impl TestReplica {
    async fn start(engine: Arc<LocalEngine>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let routes = tonic::service::Routes::new(EngineServiceServer::new(EngineServer::new(engine.clone())));
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let served = tokio::spawn(async move {
            openledger_runtime::grpc::serve(listener, routes, token, Duration::from_millis(200)).await.expect("serve");
        });
        Self { url, engine, shutdown, served }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.served.await.expect("server task");
    }

    fn holds(&self, adapter: &str) -> bool {
        self.engine.engine().adapter_cache().cached_ids().iter().any(|id| id == adapter)
    }
}

/// Polls `probe` until it holds; fails with `what` after a generous bound (a hang, not a
/// timing assertion).
async fn eventually(what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !probe() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn edge(replicas: &[&TestReplica]) -> RemoteEngines {
    let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
    let base = replicas[0].engine.base().clone();
    let remote = RemoteEngines::start(base, &urls, Some(&Metrics::new())).expect("remote engines");
    eventually("every replica passes its check", || remote.describe().iter().all(|s| s.healthy)).await;
    remote
}

fn request(host: &dyn EngineHost, adapter: Option<&str>, max_tokens: usize) -> GenerateRequest {
    prompted(host, "the tin man", adapter, max_tokens)
}

fn prompted(host: &dyn EngineHost, text: &str, adapter: Option<&str>, max_tokens: usize) -> GenerateRequest {
    let prompt = host.base().tokenizer.encode(text).expect("encode");
    let request = GenerateRequest::new(Prompt::Tokens(prompt), max_tokens);
    match adapter {
        Some(id) => request.with_adapter(id),
        None => request,
    }
}

/// Token ids, text, finish reason and usage of a whole generation.
async fn collect(mut stream: EngineStream) -> (Vec<u32>, String, FinishReason, Usage) {
    let (mut ids, mut text) = (Vec::new(), String::new());
    while let Some(event) = stream.events.recv().await {
        match event {
            Event::Token { id, text: piece, .. } => {
                ids.push(id);
                text.push_str(&piece);
            }
            Event::Done { finish_reason, usage } => return (ids, text, finish_reason, usage),
            Event::Error(error) => panic!("generation failed: {error}"),
        }
    }
    panic!("the stream ended without Done");
}

async fn generate(
    host: &dyn EngineHost,
    adapter: Option<&str>,
    max_tokens: usize,
) -> (Vec<u32>, String, FinishReason, Usage) {
    collect(host.generate("inference-test", request(host, adapter, max_tokens)).await.expect("generate")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_streams_the_same_tokens_as_the_engine_in_process() {
    let fixture = Fixture::new(TinySpec::default()).await;
    let local = fixture.local("local").await;
    let replica = TestReplica::start(fixture.local("replica").await).await;
    let remote = edge(&[&replica]).await;
    assert_eq!(remote.base().hash, local.base().hash, "both load the same file");
    assert_eq!(remote.base().id, "tiny");
    for adapter in [None, Some("style"), Some("facts")] {
        let here = generate(local.as_ref(), adapter, 24).await;
        let there = generate(&remote, adapter, 24).await;
        assert_eq!(there, here, "greedy output with {adapter:?}");
        assert_eq!(there.3.completion_tokens, there.0.len());
    }
    let with_style = generate(&remote, Some("style"), 24).await;
    let base = generate(&remote, None, 24).await;
    assert_ne!(with_style.0, base.0, "the adapter crossed the hop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_errors_cross_the_hop_with_their_kind() {
    let fixture = Fixture::new(TinySpec::default()).await;
    let replica = TestReplica::start(fixture.local("replica").await).await;
    let remote = edge(&[&replica]).await;
    let too_long = request(&remote, None, remote.base().context_length);
    let error = remote.generate("x", too_long).await.expect_err("over the context");
    assert!(matches!(error, openledger_ml::MlError::ContextOverflow { .. }), "{error}");
    let mut bad = request(&remote, None, 4);
    bad.sampling.top_p = 0.0;
    let error = remote.generate("x", bad).await.expect_err("bad top_p");
    assert!(matches!(&error, openledger_ml::MlError::InvalidRequest(m) if m.contains("top_p")), "{error}");
    // An adapter the object store lacks fails its stream (the engine loads adapters lazily).
    let mut stream = remote.generate("x", request(&remote, Some("missing"), 4)).await.expect("queued");
    match stream.events.recv().await {
        Some(Event::Error(error)) => assert!(error.to_string().contains("missing"), "{error}"),
        other => panic!("expected an error event, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_stream_at_the_edge_cancels_the_sequence_on_the_replica() {
    // A context long enough that a full generation takes many steps (and a prompt whose greedy
    // continuation meets no stop token: checked at the end).
    let fixture = Fixture::new(TinySpec { context: 2048, ..TinySpec::default() }).await;
    let replica = TestReplica::start(fixture.local("replica").await).await;
    let remote = edge(&[&replica]).await;
    let max_tokens = 2000;
    let stats = || replica.engine.engine().stats();
    let before = stats().tokens_generated;
    let long = || prompted(&remote, "a", None, max_tokens);
    let mut stream = remote.generate("x", long()).await.expect("generate");
    assert!(matches!(stream.events.recv().await, Some(Event::Token { .. })), "a first token");
    drop(stream);
    eventually("the replica drops the cancelled sequence", || stats().running == 0 && stats().waiting == 0).await;
    let generated = stats().tokens_generated - before;
    assert!(generated < max_tokens as u64, "cancelled after {generated} of {max_tokens} tokens");
    // It stopped for the cancel, not for a stop token: run to its end, the same request goes on.
    let (ids, _, reason, _) = collect(remote.generate("x", long()).await.expect("generate")).await;
    assert_eq!((ids.len(), reason), (max_tokens, FinishReason::Length));
    assert!(generated < ids.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_stays_on_one_replica_and_moves_when_that_replica_stops() {
    let fixture = Fixture::new(TinySpec::default()).await;
    let a = TestReplica::start(fixture.local("a").await).await;
    let b = TestReplica::start(fixture.local("b").await).await;
    let remote = edge(&[&a, &b]).await;
    let expected: Vec<_> = {
        let mut outputs = Vec::new();
        for adapter in ADAPTERS {
            outputs.push(generate(&remote, Some(adapter), 8).await);
        }
        outputs
    };
    for _ in 0..3 {
        for (adapter, output) in ADAPTERS.iter().zip(&expected) {
            assert_eq!(&generate(&remote, Some(adapter), 8).await, output);
        }
    }
    for adapter in ADAPTERS {
        assert!(a.holds(adapter) != b.holds(adapter), "{adapter} is loaded on exactly one replica");
    }

    // The replica holding "style" goes away: its adapters move to the other, requests succeed.
    let (gone, stays) = if a.holds("style") { (a, b) } else { (b, a) };
    let moved: Vec<&str> = ADAPTERS.iter().copied().filter(|id| gone.holds(id)).collect();
    let gone_url = gone.url.clone();
    gone.stop().await;
    for (adapter, output) in ADAPTERS.iter().zip(&expected) {
        assert_eq!(&generate(&remote, Some(adapter), 8).await, output, "{adapter} after the stop");
    }
    for adapter in moved {
        assert!(stays.holds(adapter), "{adapter} moved to the remaining replica");
    }
    let status = remote.describe();
    let down = status.iter().find(|s| s.name == gone_url).expect("listed");
    assert!(!down.healthy, "{status:?}");
    assert!(status.iter().any(|s| s.name == stays.url && s.healthy), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_serving_another_base_model_is_refused() {
    let fixture = Fixture::new(TinySpec::default()).await;
    let other = Fixture::new(TinySpec { seed: 8, ..TinySpec::default() }).await;
    let good = TestReplica::start(fixture.local("good").await).await;
    let stranger = TestReplica::start(other.local("stranger").await).await;
    let base = good.engine.base().clone();
    let urls = [stranger.url.clone(), good.url.clone()];
    let metrics = Metrics::new();
    let remote = RemoteEngines::start(base, &urls, Some(&metrics)).expect("remote engines");
    eventually("the matching replica passes", || remote.describe()[1].healthy).await;
    let text = metrics.encode();
    let gauge = |url: &str, value: u8| format!("openledger_engine_replica_healthy{{replica=\"{url}\"}} {value}");
    assert!(text.lines().any(|l| l == gauge(&good.url, 1)), "{text}");
    assert!(text.lines().any(|l| l == gauge(&stranger.url, 0)), "{text}");
    // The stranger was checked (it answers) and stays out.
    for _ in 0..4 {
        generate(&remote, Some("style"), 4).await;
        generate(&remote, None, 4).await;
    }
    assert!(!remote.describe()[0].healthy);
    assert!(stranger.engine.engine().adapter_cache().cached_ids().is_empty());
    assert_eq!(stranger.engine.engine().stats().tokens_generated, 0, "no request reached the stranger");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_runs_the_engine_in_process_and_exports_its_metrics() {
    let fixture = Fixture::new(TinySpec::default()).await;
    let metrics = Metrics::new();
    let host = super::from_config(&fixture.config("embedded"), fixture.objects.clone(), &metrics)
        .await
        .expect("start")
        .expect("a base model is configured");
    let idle = host.describe();
    assert_eq!(idle.len(), 1);
    assert_eq!((idle[0].name.as_str(), idle[0].healthy, idle[0].running), ("in-process", true, 0));
    let (ids, ..) = generate(host.as_ref(), Some("style"), 8).await;
    assert_eq!(ids.len(), 8);
    // The engine publishes its counts after the step that finished the request.
    let idle = |text: &str| text.lines().any(|l| l == "openledger_engine_running_batch_size 0");
    eventually("the engine reads idle once the request is done", || idle(&metrics.encode())).await;
    let text = metrics.encode();
    for line in [
        "openledger_engine_adapter_cache_misses_total 1",
        "openledger_engine_adapter_cache_adapters 1",
        "openledger_engine_queue_depth 0",
        "openledger_engine_tokens_generated_total 8",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
    let adapter_dir = fixture.dir.path().join("embedded/adapter-cache/style");
    assert!(adapter_dir.join("adapter_model.safetensors").is_file(), "adapters are cached under the data dir");
}

#[test]
fn without_a_model_the_message_says_where_it_looked_and_how_to_get_one() {
    let config = Config { data_dir: PathBuf::from("/srv/ol"), ..Config::default() };
    let message = super::missing_model_message(&config);
    for part in [
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "/srv/ol/models/SmolLM2-135M-Instruct.Q4_1.gguf",
        "/var/tmp/openledger-models",
        "scripts/fetch-models.sh smollm2",
        "--base-model PATH",
    ] {
        assert!(message.contains(part), "{part:?} in {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_has_its_preload_adapters_in_cache_before_the_first_request() {
    let fixture = Fixture::new(TinySpec::default()).await;
    let config = Config {
        engine_preload_adapters: " style, not-registered,facts,style ".into(),
        ..fixture.config("preloading")
    };
    let engine = host::start_replica_engine(&config, fixture.objects.clone(), &Metrics::new()).await.expect("engine");
    let cache = engine.engine().adapter_cache();
    assert_eq!(cache.cached_ids(), vec!["facts", "style"], "registered adapters loaded, the unknown one left out");
    assert_eq!(engine.engine().stats().tokens_generated, 0, "before any request");
    let misses = cache.metrics.misses.get();
    let replica = TestReplica::start(Arc::new(engine)).await;
    let remote = edge(&[&replica]).await;
    generate(&remote, Some("style"), 4).await;
    assert_eq!(
        replica.engine.engine().adapter_cache().metrics.misses.get(),
        misses,
        "the first request found it loaded"
    );

    let malformed = Config { engine_preload_adapters: "style,../etc".into(), ..fixture.config("malformed") };
    let Err(error) = host::start_replica_engine(&malformed, fixture.objects.clone(), &Metrics::new()).await else {
        panic!("a malformed adapter id stops the start");
    };
    assert!(matches!(error, super::HostError::Preload(_)), "{error}");
    assert!(error.to_string().contains("engine_preload_adapters"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_joining_and_leaving_move_only_their_own_adapters() {
    let fixture = Fixture::new(TinySpec::default()).await;
    let replicas = [
        TestReplica::start(fixture.local("a").await).await,
        TestReplica::start(fixture.local("b").await).await,
        TestReplica::start(fixture.local("c").await).await,
    ];
    let remote = edge(&[&replicas[0], &replicas[1], &replicas[2]]).await;
    let holder = |adapter: &str| {
        let holders: Vec<usize> = (0..3).filter(|&i| replicas[i].holds(adapter)).collect();
        assert_eq!(holders.len(), 1, "{adapter} is loaded on exactly one replica: {holders:?}");
        holders[0]
    };
    let mut expected = Vec::new();
    for adapter in ADAPTERS {
        expected.push(generate(&remote, Some(adapter), 6).await);
    }
    let homes: Vec<usize> = ADAPTERS.iter().map(|a| holder(a)).collect();

    // The last replica with adapters leaves the set (as discovery says when its pod goes).
    let leaving = *homes.iter().max().expect("homes");
    let staying: Vec<String> = (0..3).filter(|&i| i != leaving).map(|i| replicas[i].url.clone()).collect();
    remote.set_replicas(&staying);
    assert_eq!(remote.describe().len(), 2);
    for ((adapter, output), home) in ADAPTERS.iter().zip(&expected).zip(&homes) {
        assert_eq!(&generate(&remote, Some(adapter), 6).await, output, "{adapter} after the change");
        if *home != leaving {
            assert_eq!(holder(adapter), *home, "{adapter} stayed where it was");
        }
    }
    let served = replicas[leaving].engine.engine().stats().tokens_generated;

    // It comes back: its adapters return to it, the others stay.
    let all: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
    remote.set_replicas(&all);
    eventually("the returning replica passes its check", || remote.describe().iter().all(|s| s.healthy)).await;
    for ((adapter, output), home) in ADAPTERS.iter().zip(&expected).zip(&homes) {
        assert_eq!(&generate(&remote, Some(adapter), 6).await, output, "{adapter} after the return");
        assert!(replicas[*home].holds(adapter), "{adapter} is served by its home replica again");
    }
    let again = replicas[leaving].engine.engine().stats().tokens_generated;
    assert!(again > served, "the returning replica takes its adapters' requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_routes_to_the_replicas_behind_a_services_endpoint_slices() {
    use openledger_operator::testing::{self, Expect, status_body};
    use serde_json::json;

    let fixture = Fixture::new(TinySpec::default()).await;
    let a = TestReplica::start(fixture.local("a").await).await;
    let b = TestReplica::start(fixture.local("b").await).await;
    let slice = |name: &str, replica: &TestReplica| {
        let port: u16 = replica.url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port");
        json!({
            "metadata": {"name": name, "namespace": "serving", "resourceVersion": "5"},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}],
            "ports": [{"name": "grpc", "port": port}],
        })
    };
    let path = "/apis/discovery.k8s.io/v1/namespaces/serving/endpointslices";
    let (client, script) = testing::pair();
    let server = script.run(vec![
        Expect::get(path)
            .returns(json!({"metadata": {"resourceVersion": "5"}, "items": [slice("e-a", &a), slice("e-b", &b)]})),
        Expect::get(path).query("watch=true").respond(503, status_body(503, "ServiceUnavailable", "try later")),
    ]);
    let remote = Arc::new(RemoteEngines::start(a.engine.base().clone(), &[], None).expect("remote engines"));
    let none = remote.generate("x", request(remote.as_ref(), Some("style"), 4)).await.expect_err("no replica yet");
    assert!(matches!(none, openledger_ml::MlError::Overloaded(_)), "{none}");
    let target =
        super::discovery::ServiceTarget::parse("kubernetes://engines.serving:50060").expect("scheme").expect("valid");
    let retry = super::discovery::Retry { first: Duration::from_secs(3600), longest: Duration::from_secs(3600) };
    host::follow_services(&remote, Vec::new(), vec![target], client, retry);
    eventually("both discovered replicas pass their checks", || {
        let status = remote.describe();
        status.len() == 2 && status.iter().all(|s| s.healthy)
    })
    .await;
    let mut names: Vec<String> = remote.describe().into_iter().map(|s| s.name).collect();
    names.sort();
    let mut urls = vec![a.url.clone(), b.url.clone()];
    urls.sort();
    assert_eq!(names, urls);
    for adapter in ADAPTERS {
        generate(remote.as_ref(), Some(adapter), 4).await;
    }
    for adapter in ADAPTERS {
        assert!(a.holds(adapter) != b.holds(adapter), "{adapter} is loaded on exactly one replica");
    }
    server.finish().await;
}
