//! Influence attribution cost on SmolLM2-135M-Instruct Q4_1 (`scripts/fetch-models.sh smollm2`):
//! attributing one 64-token completion (its probe gradient, then every estimator's scan of a
//! 100,000-record gradient index of the real projected width, random rows) as a fraction of
//! generating that completion with the engine, in the same run. `datainf` exports a smaller
//! set of gradients and our DataInf scores as .npy for the authors' reference code
//! (`bench/datainf/run.sh`). Results in bench/RESULTS.md.
//!
//! `cargo bench -p openledger-attribution --bench influence -- [cost|datainf] [--records N]
//! [--dim D] [--rank R] [--out DIR]`

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use openledger_attribution::influence::{Estimator, GradientSet, probe_gradient, scores};
use openledger_core::ContentHash;
use openledger_ml::adapters::{AdapterSource, load_adapter_dir};
use openledger_ml::testing::{peak_rss_mib, smollm2_path, write_peft_adapter};
use openledger_ml::train::grads::{GradDType, GradientProbe, Projection, ProjectionKind};
use openledger_ml::{ChatMessage, Engine, EngineConfig, Event, GenerateRequest, Prompt, Target, load_model};
use rand::{Rng, SeedableRng, rngs::StdRng};

const PROMPT: &str = "Write a detailed paragraph about how rivers shape the land around them over time.";
const COMPLETION_TOKENS: usize = 64;
const RUNS: usize = 3;

struct Args {
    what: String,
    records: usize,
    dim: usize,
    rank: usize,
    out: PathBuf,
}

fn args() -> Args {
    let raw: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let value = |name: &str, default: usize| -> usize {
        raw.iter().position(|a| a == name).and_then(|i| raw.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
    };
    let out = raw.iter().position(|a| a == "--out").and_then(|i| raw.get(i + 1)).cloned();
    Args {
        what: raw.first().filter(|a| !a.starts_with("--")).cloned().unwrap_or_else(|| "cost".into()),
        records: value("--records", 100_000),
        dim: value("--dim", 64),
        rank: value("--rank", 8),
        out: PathBuf::from(out.unwrap_or_else(|| "/var/tmp/openledger-tools/datainf-data".into())),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Random rows of a real gradient's shape: per-row magnitudes spread over two orders (as
/// real per-example gradients are), values uniform within a row; stored as bf16 like an index.
fn random_index_bytes(records: usize, width: usize, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut bytes = Vec::with_capacity(records * width * 2);
    for _ in 0..records {
        let magnitude: f32 = 10f32.powf(rng.random_range(-1.0..1.0));
        for _ in 0..width {
            let v = magnitude * rng.random_range(-1.0f32..1.0);
            bytes.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes());
        }
    }
    bytes
}

fn hashes(n: usize) -> Vec<ContentHash> {
    (0..n as u64).map(|i| ContentHash::of(&i.to_le_bytes())).collect()
}

/// Generates the completion with the engine; returns (text, tokens, seconds), median run.
fn generate(adapters: &Path) -> (String, usize, f64) {
    let (model, tokenizer) = load_model(&smollm2_path(), &Device::Cpu).expect("model");
    let config = EngineConfig { max_batch_size: 1, ..Default::default() };
    let engine = Engine::start(model, tokenizer, AdapterSource::Dir(adapters.to_path_buf()), config).expect("engine");
    let mut runs = Vec::new();
    let mut last = (String::new(), 0);
    for run in 0..=RUNS {
        let mut request = GenerateRequest::new(Prompt::Chat(vec![ChatMessage::new("user", PROMPT)]), COMPLETION_TOKENS)
            .with_adapter("bench");
        request.stop.clear();
        let started = Instant::now();
        let mut generation = engine.submit(request).expect("submit");
        let mut text = String::new();
        loop {
            match generation.events.blocking_recv().expect("engine stopped") {
                Event::Token { text: piece, .. } => text.push_str(&piece),
                Event::Done { usage, .. } => {
                    last = (text, usage.completion_tokens);
                    break;
                }
                Event::Error(e) => panic!("{e}"),
            }
        }
        // Run 0 warms the adapter cache and the allocator; it is not counted.
        if run > 0 {
            runs.push(started.elapsed().as_secs_f64());
        }
    }
    (last.0, last.1, median(runs))
}

fn cost(a: &Args) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (model, tokenizer) = load_model(&smollm2_path(), &Device::Cpu).expect("model");
    let targets = [Target::Q, Target::V];
    write_peft_adapter(&dir.path().join("bench"), model.config(), a.rank, &targets, 5, false).expect("adapter");
    let (completion, tokens, generate_s) = generate(dir.path());
    println!("generation: {tokens} tokens in {:.0} ms (engine, batch 1, median of {RUNS})", generate_s * 1e3);

    let adapter = load_adapter_dir("bench", &dir.path().join("bench"), &model).expect("adapter");
    let projection = Projection { kind: ProjectionKind::Rademacher, dim: a.dim, seed: 1 };
    let started = Instant::now();
    let probe = GradientProbe::new(&model, &adapter, Some(projection)).expect("probe");
    println!("gradient probe setup (once per adapter): {:.0} ms", started.elapsed().as_secs_f64() * 1e3);
    let mut gradient = Vec::new();
    let probe_s = median(
        (0..RUNS)
            .map(|_| {
                let started = Instant::now();
                gradient = probe_gradient(&probe, &tokenizer, Some(PROMPT), &completion).expect("probe gradient");
                started.elapsed().as_secs_f64()
            })
            .collect(),
    );
    let layer_dims: Vec<usize> = gradient.iter().map(Vec::len).collect();
    let width: usize = layer_dims.iter().sum();
    println!("probe gradient: {:.0} ms ({} layers × {} values)", probe_s * 1e3, layer_dims.len(), layer_dims[0]);
    // The same probe from later layers: the earlier ones forward only, the backward shorter.
    let layers = model.config().num_layers;
    println!("| probed layers | probe gradient ms | vs all layers |");
    println!("|---|---|---|");
    for first in [layers / 2, 2 * layers / 3, layers - 6, layers - 4, layers - 2, layers - 1] {
        let later =
            GradientProbe::new(&model, &adapter, Some(projection)).expect("probe").from_layer(first).expect("layer");
        let later_s = median(
            (0..RUNS)
                .map(|_| {
                    let started = Instant::now();
                    std::hint::black_box(probe_gradient(&later, &tokenizer, Some(PROMPT), &completion).expect("probe"));
                    started.elapsed().as_secs_f64()
                })
                .collect(),
        );
        println!("| {first}..{layers} | {:.0} | {:.2}× faster |", later_s * 1e3, probe_s / later_s);
    }

    let bytes = random_index_bytes(a.records, width, 7);
    let path = dir.path().join("grads.bin");
    std::fs::write(&path, &bytes).expect("write");
    drop(bytes);
    let started = Instant::now();
    let read = std::fs::read(&path).expect("read");
    let set = GradientSet::from_le_bytes(hashes(a.records), layer_dims.clone(), GradDType::Bf16, &read).expect("set");
    drop(read);
    let load_s = started.elapsed().as_secs_f64();
    println!(
        "index: {} records × {width} values, {} bytes per record (bf16), {:.0} MB; bulk read + widen {:.0} ms (once per adapter)",
        a.records,
        width * 2,
        (a.records * width * 2) as f64 / 1e6,
        load_s * 1e3
    );
    println!(
        "| estimator | first call ms (builds what is cached per index) | scan ms | probe + scan ms | share of generation |"
    );
    println!("|---|---|---|---|---|");
    for estimator in Estimator::ALL {
        let started = Instant::now();
        std::hint::black_box(scores(&set, &gradient, estimator).expect("scores"));
        let first_s = started.elapsed().as_secs_f64();
        let scan_s = median(
            (0..RUNS)
                .map(|_| {
                    let started = Instant::now();
                    std::hint::black_box(scores(&set, &gradient, estimator).expect("scores"));
                    started.elapsed().as_secs_f64()
                })
                .collect(),
        );
        let total = probe_s + scan_s;
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.1}% |",
            estimator.name(),
            first_s * 1e3,
            scan_s * 1e3,
            total * 1e3,
            100.0 * total / generate_s
        );
    }
    println!("threads {}, peak RSS {:.0} MiB", rayon::current_num_threads(), peak_rss_mib());
}

/// An .npy file (version 1.0) of little-endian f32 or f64 values.
fn write_npy(path: &Path, shape: &[usize], descr: &str, data: &[u8]) {
    let shape: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if shape.len() == 1 { format!("({},)", shape[0]) } else { format!("({})", shape.join(", ")) };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut file = std::fs::File::create(path).expect("npy");
    file.write_all(b"\x93NUMPY\x01\x00").expect("npy");
    file.write_all(&(header.len() as u16).to_le_bytes()).expect("npy");
    file.write_all(header.as_bytes()).expect("npy");
    file.write_all(data).expect("npy");
}

/// Gradients for the authors' code: `train.npy` (n, layers, dim) f32, `probe.npy` (layers,
/// dim), and ours: `ours_datainf.npy` (n) f64 with our time in `ours.json`.
fn datainf(a: &Args) {
    let layers = 30; // SmolLM2-135M's
    let records = a.records.min(20_000);
    let bytes = random_index_bytes(records, layers * a.dim, 11);
    let set = GradientSet::from_le_bytes(hashes(records), vec![a.dim; layers], GradDType::Bf16, &bytes).expect("set");
    let mut rng = StdRng::seed_from_u64(12);
    let probe: Vec<Vec<f32>> =
        (0..layers).map(|_| (0..a.dim).map(|_| rng.random_range(-1.0f32..1.0)).collect()).collect();
    let mut times = Vec::new();
    let mut ours = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        ours = scores(&set, &probe, Estimator::DataInf).expect("scores");
        times.push(started.elapsed().as_secs_f64());
    }
    std::fs::create_dir_all(&a.out).expect("out dir");
    let train: Vec<u8> = (0..records).flat_map(|i| set.row(i).iter().flat_map(|v| v.to_le_bytes())).collect();
    write_npy(&a.out.join("train.npy"), &[records, layers, a.dim], "<f4", &train);
    let probe_bytes: Vec<u8> = probe.iter().flatten().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(&a.out.join("probe.npy"), &[layers, a.dim], "<f4", &probe_bytes);
    let ours_bytes: Vec<u8> = ours.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(&a.out.join("ours_datainf.npy"), &[records], "<f8", &ours_bytes);
    let seconds = median(times);
    let meta = serde_json::json!({"records": records, "layers": layers, "dim": a.dim, "ours_seconds": seconds, "threads": rayon::current_num_threads()});
    std::fs::write(a.out.join("ours.json"), meta.to_string()).expect("meta");
    println!(
        "datainf: {records} records × {layers} layers × {}: ours {:.1} ms; files in {}",
        a.dim,
        seconds * 1e3,
        a.out.display()
    );
}

fn main() {
    let a = args();
    match a.what.as_str() {
        "cost" => cost(&a),
        "datainf" => datainf(&a),
        other => panic!("unknown bench {other:?}: cost or datainf"),
    }
}
