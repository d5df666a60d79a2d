//! Trainer benchmarks on SmolLM2-135M-Instruct Q4_1 (`scripts/fetch-models.sh smollm2`): LoRA
//! training step time (rank 16 on q/v, batch 4 × 128 tokens, the settings of
//! `bench/peft/train_step.py`), per-example gradient throughput with and without projection,
//! and peak RSS. Results and the PyTorch + PEFT peer in bench/RESULTS.md.
//!
//! `cargo bench -p openledger-ml --bench train -- [step|grads|all] [--threads N] [--steps N]`

use std::time::Instant;

use candle_core::Device;
use openledger_core::ContentHash;
use openledger_ml::AdapterPrecision;
use openledger_ml::adapters::load_adapter_dir_as;
use openledger_ml::testing::{peak_rss_mib, smollm2_path};
use openledger_ml::train::data::{Tokenize, parse_records};
use openledger_ml::train::grads::{GradDType, GradientProbe, Projection, ProjectionKind};
use openledger_ml::train::{Control, TrainConfig, TrainEvent, TrainJob, train};
use openledger_ml::{Target, load_model};
use rand::{Rng, SeedableRng, rngs::StdRng};

const SEQ: usize = 128;
const BATCH: usize = 4;

/// Free-text records of seeded random words, each longer than SEQ tokens (truncated to SEQ).
fn records(n: usize, seed: u64) -> String {
    let words = ["data", "model", "ledger", "token", "value", "owner", "record", "stake", "proof", "train"];
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let text: Vec<&str> = (0..200).map(|_| words[rng.random_range(0..words.len())]).collect();
            format!("{{\"text\":\"{}\"}}\n", text.join(" "))
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let what = args.first().map(String::as_str).unwrap_or("all").to_string();
    let flag = |name: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let threads = flag("--threads", 2);
    let steps = flag("--steps", 12);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
    pool.install(|| {
        let path = smollm2_path();
        let (model, tokenizer) = load_model(&path, &Device::Cpu).expect("run scripts/fetch-models.sh smollm2");
        let tokenize = Tokenize { tokenizer: &tokenizer, max_tokens: SEQ };
        println!("model {} , {threads} thread(s)", path.display());
        let dir = tempfile::tempdir().expect("tempdir");
        if what == "step" || what == "all" {
            let (kind, recs) = parse_records(&records(BATCH * steps, 1)).expect("records");
            let data = tokenize.dataset(kind, &recs, None).expect("dataset");
            assert!(data.examples.iter().all(|e| e.tokens.len() == SEQ));
            let config = TrainConfig {
                rank: 16,
                alpha: 32.0,
                dropout: 0.05,
                targets: vec![Target::Q, Target::V],
                learning_rate: 1e-4,
                weight_decay: 0.01,
                batch_tokens: BATCH * SEQ,
                eval_split: 0.0,
                checkpoint_every: 0,
                ..TrainConfig::default()
            };
            let job = TrainJob {
                model: &model,
                model_path: &path,
                dataset: &data,
                dataset_name: "bench",
                validation: None,
                out: &dir.path().join("adapter"),
                resume: false,
            };
            let mut last = Instant::now();
            let mut times = Vec::new();
            train(&job, &config, &mut |e| {
                if let TrainEvent::Step { .. } = e {
                    times.push(last.elapsed().as_secs_f64());
                    last = Instant::now();
                }
                Control::Continue
            })
            .expect("train");
            let timed: Vec<f64> = times[2..].to_vec(); // the first two warm up allocations and caches
            let (min, max) = timed.iter().fold((f64::MAX, 0f64), |(a, b), &t| (a.min(t), b.max(t)));
            let m = median(timed);
            println!(
                "train step (rank 16 q/v, batch {BATCH} x {SEQ}): median {m:.3} s (min {min:.3}, max {max:.3}) over {} steps, {:.0} tokens/s",
                times.len() - 2,
                (BATCH * SEQ) as f64 / m
            );
        }
        if what == "grads" || what == "all" {
            let (kind, recs) = parse_records(&records(64, 2)).expect("records");
            let data = tokenize.dataset(kind, &recs, None).expect("dataset");
            let adapter_dir = dir.path().join("probe-adapter");
            openledger_ml::testing::write_peft_adapter(&adapter_dir, model.config(), 16, &[Target::Q, Target::V], 3, false)
                .expect("adapter");
            let adapter = load_adapter_dir_as("bench", &adapter_dir, &model, AdapterPrecision::Exact).expect("adapter");
            let examples: Vec<(ContentHash, &[u32], usize)> =
                data.examples.iter().map(|e| (e.hash, e.tokens.as_slice(), 1)).collect();
            for projection in [None, Some(Projection { kind: ProjectionKind::Rademacher, dim: 512, seed: 0 })] {
                let probe = GradientProbe::new(&model, &adapter, projection).expect("probe");
                let out = dir.path().join(format!("grads-{}", projection.map_or(0, |p| p.dim)));
                let started = Instant::now();
                let header = probe.write(&out, &examples, BATCH * SEQ, GradDType::Bf16, "bench", &mut |_, _| {}).expect("grads");
                let secs = started.elapsed().as_secs_f64();
                let values: usize = header.layer_dims.iter().sum();
                println!(
                    "per-example gradients ({}): {:.1} records/s ({SEQ} tokens each), {values} values = {} bytes per record (bf16)",
                    projection.map_or("full".to_string(), |p| format!("projected to {} per layer", p.dim)),
                    header.records as f64 / secs,
                    values * 2
                );
            }
        }
        println!("peak RSS {:.0} MiB", peak_rss_mib());
    });
}
