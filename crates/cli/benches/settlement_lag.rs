//! The paid-inference pipeline end to end, on the release `openledger dev` (SQLite, in-process
//! bus) with the packaged SmolLM2: 16 concurrent clients for a fixed time, then for every
//! answered inference the lag from its answer to its attribution (the worker's `created_at`)
//! and to its settlement (the ledger's settlement timestamp). Two phases: base-model calls
//! (nothing to attribute to: the pipeline's own overhead, span path) and calls to an adapter
//! fine-tuned on a Datanet version (spans and, once its gradient index is ready, influence).
//!
//! `cargo bench -p openledger-cli --bench settlement_lag` (`LAG_SECONDS`, default 30 per phase;
//! `LAG_INFLUENCE_MAX_LAG_MS` sets the worker's `attribution_influence_max_lag_ms`, 0 for no
//! bound; default the platform's).
//! It reuses the e2e tests' helpers (the same files, compiled into this bench).

// The e2e files carry tests this bench does not compile: their helpers and imports go unused here.
#![allow(dead_code, unused_imports)]

#[path = "../../../e2e/tests/finetune.rs"]
mod finetune;
#[path = "../../../e2e/tests/openai.rs"]
mod openai;
#[path = "../../../e2e/tests/support.rs"]
mod support;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use ed25519_dalek::SigningKey;
use openledger_core::ServiceKind;
use openledger_proto::{
    attribution::v1::{GetAttributionRequest, attribution_service_client::AttributionServiceClient},
    ledger::v1::{GetSettlementRequest, ledger_service_client::LedgerServiceClient},
};
use serde_json::json;

const CLIENTS: usize = 16;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as i64
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Runs `CLIENTS` clients against `model` for `seconds`; the answered inference ids with the
/// time each answer arrived (ms since the epoch).
async fn load(rest: &str, key: &str, model: &str, seconds: u64) -> Vec<(String, i64)> {
    let answered = Arc::new(Mutex::new(Vec::new()));
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut lanes = Vec::new();
    for lane in 0..CLIENTS {
        let (rest, key, model, answered) = (rest.to_owned(), key.to_owned(), model.to_owned(), answered.clone());
        lanes.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut n = lane;
            while Instant::now() < end {
                let body = json!({
                    "model": model,
                    "messages": [{"role": "user", "content": format!("Repeat exactly: Falls at home are less likely with good lighting ({n}).")}],
                    "temperature": 0,
                    "max_tokens": 16,
                });
                let response = client.post(format!("{rest}/v1/chat/completions")).bearer_auth(&key).json(&body).send().await;
                if let Ok(response) = response
                    && response.status() == 200
                    && let Ok(answer) = response.json::<serde_json::Value>().await
                    && let Some(id) = answer["attribution"]["inference_id"].as_str()
                {
                    answered.lock().expect("lock").push((id.to_owned(), now_ms()));
                }
                n += CLIENTS;
            }
        }));
    }
    for lane in lanes {
        lane.await.expect("client");
    }
    answered.lock().expect("lock").clone()
}

/// Waits for every inference's attribution and settlement; prints the lags.
async fn report(phase: &str, seconds: u64, answered: &[(String, i64)], worker: &str, ledger: &str) {
    let mut worker = AttributionServiceClient::connect(worker.to_owned()).await.expect("worker");
    let mut ledger = LedgerServiceClient::connect(ledger.to_owned()).await.expect("ledger");
    let (mut to_attribution, mut to_settlement, mut methods) =
        (Vec::new(), Vec::new(), std::collections::BTreeMap::new());
    let deadline = Instant::now() + Duration::from_secs(1800);
    for (id, answered_at) in answered {
        let attribution = loop {
            let request = GetAttributionRequest { inference_id: id.clone(), ..Default::default() };
            if let Ok(found) = worker.get_attribution(request).await {
                break found.into_inner();
            }
            assert!(Instant::now() < deadline, "{id} never attributed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        *methods.entry(attribution.method).or_insert(0usize) += 1;
        to_attribution.push(attribution.created_at_ms - answered_at);
        let settled_ns = loop {
            let record =
                ledger.get_settlement(GetSettlementRequest { inference_id: id.clone() }).await.expect("settlement");
            if let Some(first) = record.into_inner().transfers.first() {
                break first.timestamp;
            }
            assert!(Instant::now() < deadline, "{id} never settled");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        to_settlement.push((settled_ns / 1_000_000) as i64 - answered_at);
    }
    to_attribution.sort_unstable();
    to_settlement.sort_unstable();
    println!(
        "{phase:<8} {:>5} inferences in {seconds} s ({:.1}/s answered) | answer→attribution p50 {} ms p99 {} ms max {} ms | answer→settlement p50 {} ms p99 {} ms max {} ms | methods {methods:?} (1 span, 2 influence, 3 blended)",
        answered.len(),
        answered.len() as f64 / seconds as f64,
        percentile(&to_attribution, 0.5),
        percentile(&to_attribution, 0.99),
        to_attribution.last().copied().unwrap_or(0),
        percentile(&to_settlement, 0.5),
        percentile(&to_settlement, 0.99),
        to_settlement.last().copied().unwrap_or(0),
    );
}

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::var("LAG_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let data_dir = tempfile::tempdir().expect("temp dir");
    let env: Vec<(&str, String)> = std::env::var("LAG_INFLUENCE_MAX_LAG_MS")
        .map(|lag| vec![("OPENLEDGER_ATTRIBUTION_INFLUENCE_MAX_LAG_MS", lag)])
        .unwrap_or_default();
    let mut platform = finetune::dev(data_dir.path(), &env);
    let eve = SigningKey::from_bytes(&[53; 32]);
    let builder = finetune::builder_with_a_grant_on(&mut platform, &[(&eve, finetune::EVE_RECORDS)], 0).await;
    let adapter = builder.small_adapter().await;
    let worker = format!("http://{}", platform.wait_endpoint(ServiceKind::AttributionWorker, "grpc"));
    let ledger = format!("http://{}", platform.wait_endpoint(ServiceKind::Ledger, "grpc"));
    // Let the adapter's gradient index build before the adapter phase (it is built unasked).
    tokio::time::sleep(Duration::from_secs(20)).await;
    println!(
        "cpu: {} × {}; worker influence lag bound: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_name(),
        env.first().map_or("the default".to_owned(), |(_, lag)| format!("{lag} ms"))
    );
    for (phase, model) in [("base", builder.base_model.clone()), ("adapter", adapter)] {
        let answered = load(&builder.rest, &builder.key, &model, seconds).await;
        report(phase, seconds, &answered, &worker, &ledger).await;
    }
    platform.terminate();
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default()
}
