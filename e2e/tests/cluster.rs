//! Cluster mode as processes: two `openledger engine` replicas reading adapters from S3
//! (moto), an edge (`serve inference-gateway --engine-urls …` on PostgreSQL and NATS) routing
//! to them. Requests for one adapter land on one engine; SIGKILL of that engine moves its
//! adapters to the other and requests keep succeeding.

use std::{net::SocketAddr, sync::Arc};

use candle_core::quantized::GgmlDType;
use object_store::ObjectStore;
use openledger_core::{Config, ServiceKind};
use openledger_inference_gateway::openlora::engines::{self, EngineHost};
use openledger_ml::testing::{TinyModel, TinySpec, write_peft_adapter};
use openledger_ml::{Event, GenerateRequest, Prompt, Target};
use openledger_proto::inference::v1::{GetEngineInfoRequest, engine_service_client::EngineServiceClient};
use openledger_testkit::{Nats, Postgres, S3};

use crate::support::{Platform, eventually, get};

const ADAPTERS: [&str; 4] = ["style", "facts", "legal", "poems"];

/// The address a replica logged for `role` (`grpc` or `ops`).
fn engine_endpoint(engine: &mut Platform, role: &str) -> SocketAddr {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let found = engine.stderr().lines().find_map(|line| {
            let entry: serde_json::Value = serde_json::from_str(line).ok()?;
            (entry["message"] == "listening" && entry["service"] == "engine" && entry["role"] == role)
                .then(|| entry["addr"].as_str()?.parse().ok())?
        });
        if let Some(addr) = found {
            return addr;
        }
        assert!(engine.is_running(), "the engine exited early; stderr:\n{}", engine.stderr());
        assert!(std::time::Instant::now() < deadline, "the engine never bound {role}:\n{}", engine.stderr());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The adapters a replica holds in memory, by its `GetEngineInfo`.
async fn loaded_adapters(grpc: SocketAddr) -> Vec<String> {
    let mut client = EngineServiceClient::connect(format!("http://{grpc}")).await.expect("connect to the engine");
    client.get_engine_info(GetEngineInfoRequest {}).await.expect("engine info").into_inner().loaded_adapters
}

async fn complete(edge: &dyn EngineHost, adapter: &str) -> Vec<u32> {
    let prompt = edge.base().tokenizer.encode("the tin man").expect("encode");
    let request = GenerateRequest::new(Prompt::Tokens(prompt), 6).with_adapter(adapter);
    let mut stream = edge.generate("e2e", request).await.expect("generate");
    let mut ids = Vec::new();
    while let Some(event) = stream.events.recv().await {
        match event {
            Event::Token { id, .. } => ids.push(id),
            Event::Done { .. } => return ids,
            Event::Error(error) => panic!("{adapter}: {error}"),
        }
    }
    panic!("{adapter}: the stream ended without Done");
}

/// The edge's `openledger_engine_replica_healthy` gauge for `replica`, from its `/metrics`.
async fn edge_sees_healthy(rest: SocketAddr, replica: &str) -> Option<bool> {
    let (_, metrics) = get(rest, "/metrics").await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("openledger_engine_replica_healthy{") && l.contains(&format!("\"{replica}\"")))?;
    Some(line.ends_with(" 1"))
}

#[tokio::test]
async fn an_edge_and_two_engine_processes_keep_adapters_on_one_engine_and_survive_a_killed_one() {
    let (postgres, nats, s3) = (Postgres::start(), Nats::start(), S3::start("openledger-objects"));
    let dir = tempfile::tempdir().expect("temp dir");
    let tiny = TinyModel::new(TinySpec::default()).expect("tiny model");
    let model = tiny.write_gguf(&dir.path().join("tiny.gguf"), GgmlDType::Q8_0).expect("gguf");
    let model = model.display().to_string();
    let shape = openledger_ml::source::read_model_config(std::path::Path::new(&model)).expect("shape");
    let s3_options: Vec<(&str, String)> = s3.options();
    let options: Vec<(&str, &str)> = s3_options.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let objects = openledger_store::open_object_store_with(&s3.url(), &options).expect("s3 store");
    for (seed, id) in ADAPTERS.iter().enumerate() {
        let local = dir.path().join("adapters").join(id);
        write_peft_adapter(&local, &shape, 4, &[Target::Q, Target::V], seed as u64 + 1, false).expect("adapter");
        for file in ["adapter_config.json", "adapter_model.safetensors"] {
            let bytes = std::fs::read(local.join(file)).expect("adapter file");
            let path = object_store::path::Path::from(format!("adapters/{id}/{file}"));
            objects.put(&path, bytes.into()).await.expect("upload the adapter");
        }
    }

    let mut env: Vec<(String, String)> = s3.env();
    env.push(("OBJECT_STORE_URL".into(), s3.url()));
    let mut engines: Vec<(Platform, SocketAddr)> = (0..2)
        .map(|i| {
            let data_dir = dir.path().join(format!("engine-{i}")).display().to_string();
            let args = [
                "engine",
                "--base-model",
                &model,
                "--engine-port",
                "0",
                "--engine-threads",
                "1",
                "--data-dir",
                &data_dir,
            ];
            let mut engine = Platform::spawn(&args, &env);
            let grpc = engine_endpoint(&mut engine, "grpc");
            (engine, grpc)
        })
        .collect();
    for (engine, _) in &mut engines {
        let ops = engine_endpoint(engine, "ops");
        engine.wait_ready(ops).await;
    }
    let urls: Vec<String> = engines.iter().map(|(_, grpc)| format!("http://{grpc}")).collect();

    // The edge process: PostgreSQL, NATS, and the engines by URL.
    let mut edge_env = env.clone();
    edge_env.push(("DATABASE_URL".into(), postgres.create_database("gateway")));
    edge_env.push(("NATS_URL".into(), nats.url()));
    let engine_urls = urls.join(",");
    let edge_args = ["serve", "inference-gateway", "--base-model", &model, "--engine-urls", &engine_urls];
    let mut edge_process = Platform::spawn(&edge_args, &edge_env);
    let rest = edge_process.wait_endpoint(ServiceKind::InferenceGateway, "rest");
    edge_process.wait_ready(rest).await;
    for url in &urls {
        eventually("the edge process checks every engine", async || match edge_sees_healthy(rest, url).await {
            Some(true) => Ok(()),
            other => Err(format!("{url}: {other:?}")),
        })
        .await;
    }

    // Requests routed the way the edge routes them (the same code, here in the test process).
    let config = Config { base_model: Some(model.clone()), engine_urls: engine_urls.clone(), ..Config::default() };
    let metrics = openledger_telemetry::Metrics::new();
    let objects: Arc<dyn ObjectStore> = objects;
    let edge = engines::from_config(&config, objects, &metrics).await.expect("edge").expect("a base model");
    eventually("both engines pass their checks", async || {
        let status = edge.describe();
        if status.iter().all(|s| s.healthy) { Ok(()) } else { Err(format!("{status:?}")) }
    })
    .await;
    let mut first = Vec::new();
    for adapter in ADAPTERS {
        first.push(complete(edge.as_ref(), adapter).await);
    }
    for _ in 0..2 {
        for (adapter, ids) in ADAPTERS.iter().zip(&first) {
            assert_eq!(&complete(edge.as_ref(), adapter).await, ids, "{adapter} answers alike on every call");
        }
    }
    let held = [loaded_adapters(engines[0].1).await, loaded_adapters(engines[1].1).await];
    for adapter in ADAPTERS {
        let holders = held.iter().filter(|h| h.iter().any(|id| id == adapter)).count();
        assert_eq!(holders, 1, "{adapter} is loaded on exactly one engine: {held:?}");
    }

    // SIGKILL the engine holding "style": its adapters move to the other engine.
    let victim = usize::from(!held[0].iter().any(|id| id == "style"));
    let survivor = 1 - victim;
    engines[victim].0.kill_hard();
    for (adapter, ids) in ADAPTERS.iter().zip(&first) {
        assert_eq!(&complete(edge.as_ref(), adapter).await, ids, "{adapter} after the kill");
    }
    let now = loaded_adapters(engines[survivor].1).await;
    for adapter in ADAPTERS {
        assert!(now.iter().any(|id| id == adapter), "{adapter} moved to the surviving engine: {now:?}");
    }
    let status = edge.describe();
    assert!(!status[victim].healthy && status[survivor].healthy, "{status:?}");
    eventually("the edge process marks the killed engine down", async || {
        match edge_sees_healthy(rest, &urls[victim]).await {
            Some(false) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    let exit = edge_process.terminate();
    assert_eq!(exit.code(), Some(0), "the edge drains and exits 0; stderr:\n{}", edge_process.stderr());
    let exit = engines[survivor].0.terminate();
    assert_eq!(exit.code(), Some(0), "the engine drains and exits 0; stderr:\n{}", engines[survivor].0.stderr());
}
