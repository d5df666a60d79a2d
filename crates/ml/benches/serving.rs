//! The OpenLoRA engine driven directly (no HTTP) under the serving benchmark's load: C
//! concurrent generations kept in flight for a measurement window, on SmolLM2-135M-Instruct
//! Q4_1, with no adapter or spread uniformly over N PEFT adapters. The same prompts, token
//! counting and figures as `bench/serving/drive.py` (which drives the REST edge and
//! llama-server), so the edge's cost can be read off against it. Results in bench/RESULTS.md.
//!
//! `cargo bench -p openledger-ml --bench serving -- base|adapters [--threads 2]
//!  [--concurrency 16] [--duration 60] [--warmup 10] [--max-tokens 128] [--count 100]
//!  [--adapters-dir DIR] [--prompts FILE]`
//!
//! The adapters are the PEFT directories `bench/serving/make_adapters.py` writes
//! (`DIR/a0` … `DIR/a{N-1}`, default `/var/tmp/openledger-serving/adapters/peft`);
//! `bench/serving/run.sh direct` makes them first. Prints one JSON line.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use candle_core::Device;
use openledger_ml::adapters::AdapterSource;
use openledger_ml::testing::{peak_rss_mib, smollm2_path};
use openledger_ml::{ChatMessage, Engine, EngineConfig, Event, GenerateRequest, Prompt, load_model};

struct Args {
    what: String,
    threads: usize,
    concurrency: usize,
    duration: f64,
    warmup: f64,
    max_tokens: usize,
    count: usize,
    adapters_dir: PathBuf,
    prompts: PathBuf,
}

fn parse_args() -> Args {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let number = |name: &str, default: f64| value(name).and_then(|v| v.parse().ok()).unwrap_or(default);
    let what = args.first().filter(|a| !a.starts_with("--")).cloned().unwrap_or_else(|| "base".into());
    Args {
        what,
        threads: number("--threads", 2.0) as usize,
        concurrency: number("--concurrency", 16.0) as usize,
        duration: number("--duration", 60.0),
        warmup: number("--warmup", 10.0),
        max_tokens: number("--max-tokens", 128.0) as usize,
        count: number("--count", 100.0) as usize,
        adapters_dir: value("--adapters-dir")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp/openledger-serving/adapters/peft")),
        prompts: value("--prompts")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/serving/prompts.json"))),
    }
}

/// One finished (or failed) generation: when it started, when each token arrived, its usage.
struct Record {
    start: Instant,
    tokens: Vec<Instant>,
    completion_tokens: Option<usize>,
    prompt_tokens: usize,
    error: Option<String>,
}

/// The 1-minute load average (the machine may be shared with builds; the record says so).
fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

fn percentile(values: &mut [f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    // numpy's default (linear interpolation), as drive.py reports.
    let rank = (values.len() - 1) as f64 * p / 100.0;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    let v = values[lo] + (values[hi] - values[lo]) * (rank - lo as f64);
    Some((v * 100.0).round() / 100.0)
}

async fn client(
    engine: Arc<Engine>,
    next: Arc<AtomicUsize>,
    deadline: Instant,
    messages: Arc<Vec<Vec<ChatMessage>>>,
    adapters: usize,
    max_tokens: usize,
) -> Vec<Record> {
    let mut records = Vec::new();
    while Instant::now() < deadline {
        let k = next.fetch_add(1, Ordering::Relaxed);
        let mut request = GenerateRequest::new(Prompt::Chat(messages[k % messages.len()].clone()), max_tokens);
        if adapters > 0 {
            request = request.with_adapter(&format!("a{}", k % adapters));
        }
        let start = Instant::now();
        let mut record = Record { start, tokens: Vec::new(), completion_tokens: None, prompt_tokens: 0, error: None };
        match engine.submit(request) {
            Err(e) => record.error = Some(e.to_string()),
            Ok(mut generation) => {
                record.prompt_tokens = generation.prompt_tokens;
                while let Some(event) = generation.events.recv().await {
                    match event {
                        Event::Token { .. } => record.tokens.push(Instant::now()),
                        Event::Done { usage, .. } => {
                            record.completion_tokens = Some(usage.completion_tokens);
                            break;
                        }
                        Event::Error(e) => {
                            record.error = Some(e.to_string());
                            break;
                        }
                    }
                }
            }
        }
        records.push(record);
    }
    records
}

fn measure(engine: &Arc<Engine>, args: &Args, messages: &Arc<Vec<Vec<ChatMessage>>>, adapters: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let load_start = loadavg();
    let t0 = Instant::now();
    let w0 = t0 + Duration::from_secs_f64(args.warmup);
    let w1 = w0 + Duration::from_secs_f64(args.duration);
    let next = Arc::new(AtomicUsize::new(0));
    let records: Vec<Record> = runtime.block_on(async {
        let tasks: Vec<_> = (0..args.concurrency)
            .map(|_| {
                tokio::spawn(client(engine.clone(), next.clone(), w1, messages.clone(), adapters, args.max_tokens))
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.expect("client task"));
        }
        all
    });
    let t_end = Instant::now();
    let in_window = |t: Instant| t >= w0 && t <= w1;
    let ok: Vec<&Record> = records.iter().filter(|r| r.error.is_none() && r.completion_tokens.is_some()).collect();
    let errors: Vec<&Record> = records.iter().filter(|r| r.error.is_some() || r.completion_tokens.is_none()).collect();
    let (mut window_tokens, mut ttft, mut itl) = (0.0, Vec::new(), Vec::new());
    let (mut latency, mut longest_gap) = (Vec::new(), Vec::new());
    for r in &ok {
        let Some(first) = r.tokens.first() else { continue };
        let per_event = r.completion_tokens.unwrap_or(0) as f64 / r.tokens.len() as f64;
        window_tokens += per_event * r.tokens.iter().filter(|t| in_window(**t)).count() as f64;
        if in_window(r.start) {
            ttft.push((*first - r.start).as_secs_f64() * 1e3);
            latency.push((*r.tokens.last().unwrap_or(first) - r.start).as_secs_f64() * 1e3);
            let gap = r.tokens.windows(2).map(|w| (w[1] - w[0]).as_secs_f64() * 1e3).fold(0.0, f64::max);
            longest_gap.push(gap);
        }
        itl.extend(r.tokens.windows(2).filter(|w| in_window(w[1])).map(|w| (w[1] - w[0]).as_secs_f64() * 1e3));
    }
    // Over every request, warm-up included: a stream parked behind others shows here.
    let since = |r: &Record, t: &Instant| (*t - r.start).as_secs_f64() * 1e3;
    let all_latency = ok.iter().filter_map(|r| r.tokens.last().map(|t| since(r, t))).fold(0.0, f64::max);
    let all_gaps =
        ok.iter().flat_map(|r| r.tokens.windows(2).map(|w| (w[1] - w[0]).as_secs_f64() * 1e3)).fold(0.0, f64::max);
    let completion: Vec<usize> = ok.iter().filter_map(|r| r.completion_tokens).collect();
    let total: usize = completion.iter().sum();
    let mean = |v: &[f64]| {
        if v.is_empty() { None } else { Some((v.iter().sum::<f64>() / v.len() as f64 * 10.0).round() / 10.0) }
    };
    let result = serde_json::json!({
        "label": format!("openledger engine direct, {}", if adapters > 0 { format!("{adapters} adapters") } else { "base".into() }),
        "server": "in-process Engine (no HTTP)",
        "adapters": adapters,
        "threads": args.threads,
        "concurrency": args.concurrency,
        "warmup_s": args.warmup,
        "window_s": args.duration,
        "drain_s": ((t_end - w1).as_secs_f64() * 100.0).round() / 100.0,
        "max_tokens": args.max_tokens,
        "requests": records.len(),
        "requests_ok": ok.len(),
        "errors": errors.len(),
        "first_error": errors.first().and_then(|r| r.error.clone()),
        "output_tokens_per_s": (window_tokens / args.duration * 10.0).round() / 10.0,
        "output_tokens_per_s_whole_run": (total as f64 / (t_end - t0).as_secs_f64() * 10.0).round() / 10.0,
        "ttft_ms_p50": percentile(&mut ttft.clone(), 50.0),
        "ttft_ms_p99": percentile(&mut ttft, 99.0),
        "itl_ms_p50": percentile(&mut itl.clone(), 50.0),
        "itl_ms_p99": percentile(&mut itl, 99.0),
        "request_ms_p50": percentile(&mut latency.clone(), 50.0),
        "request_ms_p99": percentile(&mut latency, 99.0),
        "longest_gap_ms_p50": percentile(&mut longest_gap.clone(), 50.0),
        "longest_gap_ms_p99": percentile(&mut longest_gap, 99.0),
        "request_ms_max_all": (all_latency * 10.0).round() / 10.0,
        "longest_gap_ms_max_all": (all_gaps * 10.0).round() / 10.0,
        "completion_tokens_mean": mean(&completion.iter().map(|&c| c as f64).collect::<Vec<_>>()),
        "prompt_tokens_mean": mean(&ok.iter().map(|r| r.prompt_tokens as f64).collect::<Vec<_>>()),
        "distinct_adapters_used": if adapters > 0 { ok.len().min(adapters) } else { 0 },
        "adapters_in_memory": engine.adapter_cache().cached_ids().len(),
        "adapter_bytes_in_memory": engine.adapter_cache().cached_bytes(),
        "peak_rss_mib": (peak_rss_mib() * 10.0).round() / 10.0,
        "loadavg_1m_start_end": [load_start, loadavg()],
    });
    println!("{result}");
}

fn main() {
    let args = parse_args();
    let path = smollm2_path();
    assert!(path.exists(), "{} is missing: run scripts/fetch-models.sh smollm2", path.display());
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&args.prompts).expect("prompts file")).expect("prompts json");
    let system = spec["system"].as_str().expect("prompts.json: system").to_string();
    let messages: Vec<Vec<ChatMessage>> = spec["user"]
        .as_array()
        .expect("prompts.json: user")
        .iter()
        .map(|u| vec![ChatMessage::new("system", &system), ChatMessage::new("user", u.as_str().expect("a string"))])
        .collect();
    let messages = Arc::new(messages);
    // One variant per process, as a server restarted per variant would be: peak RSS is the
    // process's own.
    let adapters = match args.what.as_str() {
        "base" => 0,
        "adapters" => args.count,
        other => panic!("unknown variant {other:?}: base or adapters"),
    };
    if adapters > 0 {
        for i in 0..args.count {
            let dir = args.adapters_dir.join(format!("a{i}"));
            assert!(
                dir.join("adapter_config.json").exists(),
                "{} is missing: run bench/serving/make_adapters.py (bench/serving/run.sh direct does)",
                dir.display()
            );
        }
    }
    let (model, tokenizer) = load_model(&path, &Device::Cpu).expect("model");
    // The gateway's defaults (batch 16, queue 256, 2 GiB of adapters), with the run's threads.
    let config = EngineConfig { threads: Some(args.threads), ..Default::default() };
    let engine = Arc::new(
        Engine::start(model, tokenizer, AdapterSource::Dir(args.adapters_dir.clone()), config).expect("engine"),
    );
    measure(&engine, &args, &messages, adapters);
}
