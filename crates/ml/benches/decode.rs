//! OpenLoRA engine benchmarks on SmolLM2-135M-Instruct Q4_1 (`scripts/fetch-models.sh smollm2`):
//! single-stream decode, prefill of a 512-token prompt, batch-16 decode of the base model and
//! with 1, 16 and 100 distinct adapters, the LoRA deltas of a batch-16 step alone (`deltas`),
//! adapter cold load, the served adapters' logits against exact f32 ones (`accuracy`), and peak
//! RSS. Results and peers in
//! bench/RESULTS.md (`bench/llamacpp/engine.sh` runs this next to llama.cpp's own benches).
//!
//! `cargo bench -p openledger-ml --bench decode -- [single|prefill|batch|deltas|load|accuracy|all] [--threads N]`
//! (`OPENLEDGER_CPU_KERNELS` picks a lower kernel level, `OPENLEDGER_BENCH_MODEL` another GGUF,
//! `OPENLEDGER_ADAPTER_PANELS=f16` f16 adapter panels instead of 8-bit ones).

use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use openledger_ml::adapters::{load_adapter_dir, load_adapter_dir_as, load_adapter_dir_saving_panels};
use openledger_ml::lora::{AdapterMix, AdapterPanels, AdapterPrecision};
use openledger_ml::testing::{
    lora_delta_step, peak_rss_mib, smollm2_path, thread_minor_faults, write_peft_adapter, write_peft_adapter_of,
};
use openledger_ml::{ComputePool, LlamaModel, SeqStep, Target, load_model};

const PROMPT: [u32; 5] = [504, 3575, 282, 4649, 314];

/// The logits after PROMPT and after each of `tokens` but the last, fed in turn (teacher forcing).
fn forced_logits(model: &LlamaModel, mix: &AdapterMix, tokens: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache(PROMPT.len() + tokens.len()).expect("cache");
    let mut all = vec![model.logits_for(&PROMPT, &mut cache, mix).expect("prefill")];
    for &token in &tokens[..tokens.len() - 1] {
        all.push(model.logits_for(&[token], &mut cache, mix).expect("decode"));
    }
    all
}

/// Served adapters (the panels chosen: 8-bit by default) against the same adapters held exactly
/// (f32, the file's values): for 8 rank-16 q/k/v/o adapters of a trained adapter's magnitudes
/// (`A` within ±1/√in, as PEFT initializes it, `B` within ±0.02), then 8 of the benches' far
/// larger ones (±0.5 both: they overwhelm the model), 32 greedy tokens of the exact one fed to
/// both; per step the largest logit error over the vocabulary, as a share of the adapter's own
/// largest effect on the logits (exact against no adapter), and whether the greedy token agrees.
fn accuracy(model: &LlamaModel, dir: &std::path::Path, targets: &[Target]) {
    let trained = (1.0 / (model.config().hidden_size as f32).sqrt(), 0.02);
    for (name, magnitudes) in [("trained-like", trained), ("bench (±0.5)", (0.5, 0.5))] {
        accuracy_of(model, dir, targets, name, magnitudes);
    }
}

fn accuracy_of(model: &LlamaModel, dir: &std::path::Path, targets: &[Target], name: &str, magnitudes: (f32, f32)) {
    let none = AdapterMix::default();
    let largest_gap = |a: &[f32], b: &[f32]| {
        a.iter().zip(b).fold(0f32, |m, (x, y)| if (x - y).abs() > m { (x - y).abs() } else { m })
    };
    let (mut shares, mut effects, mut agree, mut steps) = (Vec::new(), Vec::new(), 0, 0);
    for i in 0..8 {
        let d = dir.join(format!("accuracy-{name}-{i}"));
        write_peft_adapter_of(&d, model.config(), 16, targets, 1000 + i, magnitudes).expect("adapter");
        let exact = Arc::new(load_adapter_dir_as("exact", &d, model, AdapterPrecision::Exact).expect("load"));
        let served = Arc::new(load_adapter_dir("served", &d, model).expect("load"));
        let exact = AdapterMix(vec![(exact, 1.0)]);
        let mut tokens = Vec::new();
        let mut cache = model.new_cache(PROMPT.len() + 33).expect("cache");
        let mut logits = model.logits_for(&PROMPT, &mut cache, &exact).expect("prefill");
        for _ in 0..32 {
            tokens.push(openledger_ml::model::argmax(&logits));
            logits = model.logits_for(&tokens[tokens.len() - 1..], &mut cache, &exact).expect("decode");
        }
        let reference = forced_logits(model, &exact, &tokens);
        let base = forced_logits(model, &none, &tokens);
        let got = forced_logits(model, &AdapterMix(vec![(served, 1.0)]), &tokens);
        for ((reference, base), got) in reference.iter().zip(&base).zip(&got) {
            effects.push(f64::from(largest_gap(reference, base)));
            shares.push(f64::from(largest_gap(got, reference) / largest_gap(reference, base).max(1e-6)));
            agree += usize::from(openledger_ml::model::argmax(got) == openledger_ml::model::argmax(reference));
            steps += 1;
        }
    }
    shares.sort_by(f64::total_cmp);
    effects.sort_by(f64::total_cmp);
    println!(
        "served {name} adapters ({:?} panels) against exact f32 ones, 8 adapters × 32 steps (the adapter's largest effect on a logit p50 {:.2}): largest logit error / that effect p50 {:.4}, p99 {:.4}, max {:.4}; greedy token agrees {agree} of {steps}",
        AdapterPanels::chosen(),
        percentile(&effects, 0.5),
        percentile(&shares, 0.5),
        percentile(&shares, 0.99),
        shares[shares.len() - 1]
    );
}

/// Greedy decode of `n` tokens after PROMPT; returns decode tokens/s (prefill excluded).
fn single_stream(model: &LlamaModel, n: usize) -> f64 {
    let none = AdapterMix::default();
    let mut cache = model.new_cache(PROMPT.len() + n + 1).expect("cache");
    let mut logits = model.logits_for(&PROMPT, &mut cache, &none).expect("prefill");
    let started = Instant::now();
    for _ in 0..n {
        let next = openledger_ml::model::argmax(&logits);
        logits = model.logits_for(&[next], &mut cache, &none).expect("decode");
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Tokens/s of one forward pass over a `n`-token prompt (median of 3 after a warm-up), as
/// `llama-bench`'s pp512 measures: the prompt's tokens are arbitrary ids.
fn prefill(model: &LlamaModel, n: usize) -> f64 {
    let none = AdapterMix::default();
    let prompt: Vec<u32> = (0..n as u32).map(|i| 100 + (i * 37) % 40_000).collect();
    let mut runs: Vec<f64> = (0..4)
        .map(|_| {
            let mut cache = model.new_cache(n + 1).expect("cache");
            let started = Instant::now();
            model.logits_for(&prompt, &mut cache, &none).expect("prefill");
            n as f64 / started.elapsed().as_secs_f64()
        })
        .skip(1)
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[1]
}

/// Tokens a second of a batch-16 decode: 16 sequences of `PROMPT` (the prefill untimed), then
/// `n` steps; with no adapter (`distinct == 0`) or rows taking `distinct` adapters in turn from
/// adapter `first`.
fn batch16(
    model: &LlamaModel,
    adapters: &[Arc<openledger_ml::LoraAdapter>],
    distinct: usize,
    first: usize,
    n: usize,
) -> f64 {
    let rows = 16;
    let mixes: Vec<AdapterMix> = (0..rows)
        .map(|i| match distinct {
            0 => AdapterMix::default(),
            _ => AdapterMix(vec![(adapters[(first + i % distinct) % adapters.len()].clone(), 1.0)]),
        })
        .collect();
    let mut caches: Vec<_> = (0..rows).map(|_| model.new_cache(PROMPT.len() + n + 1).expect("cache")).collect();
    let mut next: Vec<[u32; 1]> = vec![[0]; rows];
    {
        let mut steps: Vec<SeqStep<'_>> = caches
            .iter_mut()
            .zip(&mixes)
            .map(|(cache, adapters)| SeqStep { tokens: &PROMPT, cache, adapters })
            .collect();
        let logits = model.forward(&mut steps).expect("prefill").to_vec2::<f32>().expect("logits");
        for (n, row) in next.iter_mut().zip(&logits) {
            n[0] = openledger_ml::model::argmax(row);
        }
    }
    let started = Instant::now();
    for _ in 0..n {
        greedy_step(model, &mut caches, &mixes, &mut next);
    }
    (rows * n) as f64 / started.elapsed().as_secs_f64()
}

/// One batched decode step: every sequence feeds its last token and gets its greedy next one.
fn greedy_step(model: &LlamaModel, caches: &mut [openledger_ml::KvCache], mixes: &[AdapterMix], next: &mut [[u32; 1]]) {
    let mut steps: Vec<SeqStep<'_>> = caches
        .iter_mut()
        .zip(mixes)
        .zip(next.iter())
        .map(|((cache, adapters), tokens)| SeqStep { tokens, cache, adapters })
        .collect();
    let logits = model.forward(&mut steps).expect("decode").to_vec2::<f32>().expect("logits");
    drop(steps);
    for (n, row) in next.iter_mut().zip(&logits) {
        n[0] = openledger_ml::model::argmax(row);
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let what = args.first().map(String::as_str).unwrap_or("all").to_string();
    let threads: usize = args
        .iter()
        .position(|a| a == "--threads")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    // Like the engine: the whole run with the compute pool installed (the caller is one of its
    // threads), and rayon sized alike for what still runs on it.
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().expect("rayon pool");
    let pool = ComputePool::new(threads).expect("compute pool");
    pool.install(|| run(&what, threads));
}

fn run(what: &str, threads: usize) {
    // OPENLEDGER_BENCH_MODEL=<gguf> runs the same benches on another model (e.g. a Q4_K_M one).
    let model_env = std::env::var_os("OPENLEDGER_BENCH_MODEL");
    let path = model_env.map_or_else(smollm2_path, std::path::PathBuf::from);
    assert!(path.exists(), "{} is missing: run scripts/fetch-models.sh smollm2", path.display());
    let (model, _) = load_model(&path, &Device::Cpu).expect("model");
    let weight_bytes = model.format().weight_bytes as f64;
    println!(
        "model {} ({:.1} MB of weights), {threads} thread(s), CPU kernels {} (detected {})",
        path.display(),
        weight_bytes / 1e6,
        openledger_ml::kernels::Isa::active().name(),
        openledger_ml::kernels::Isa::detected().name()
    );

    if what == "single" || what == "all" {
        single_stream(&model, 16); // warm-up
        let mut runs: Vec<f64> = (0..5).map(|_| single_stream(&model, 128)).collect();
        runs.sort_by(f64::total_cmp);
        let median = runs[2];
        println!(
            "single-stream decode: median {median:.1} tok/s (min {:.1}, max {:.1}); weights read {:.2} GB/s",
            runs[0],
            runs[4],
            median * weight_bytes / 1e9
        );
    }
    if what == "prefill" || what == "all" {
        println!("prefill of a 512-token prompt: median {:.1} tok/s", prefill(&model, 512));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let qkvo = [Target::Q, Target::K, Target::V, Target::O];
    let needs_adapters = ["deltas", "batch", "load", "all"].contains(&what);
    let mut adapters = Vec::new();
    if needs_adapters {
        for i in 0..100 {
            let d = dir.path().join(format!("a{i}"));
            write_peft_adapter(&d, model.config(), 16, &qkvo, i as u64, false).expect("adapter");
        }
    }
    if what == "load" || what == "all" {
        // Round 0 builds each adapter from its PEFT files (and saves its panels beside them, on a
        // thread of its own, once the files have stood unchanged as long as the loader asks);
        // rounds 1-4 load the adapters again, as after an eviction, from the saved panels.
        // Reported apart: a first load and a load again are different work.
        std::thread::sleep(openledger_ml::adapters::ADAPTER_PANELS_SETTLE);
        let (mut first, mut again) = (Loads::default(), Loads::default());
        for round in 0..5 {
            for i in 0..100 {
                let (started, faults_before) = (Instant::now(), thread_minor_faults());
                let a = load_adapter_dir_saving_panels(&format!("a{i}"), &dir.path().join(format!("a{i}")), &model)
                    .expect("load");
                let loads = if round == 0 { &mut first } else { &mut again };
                loads.times.push(started.elapsed().as_secs_f64() * 1e3);
                loads.faults.push((thread_minor_faults() - faults_before) as f64);
                if round == 0 {
                    adapters.push(Arc::new(a));
                }
            }
        }
        let size = adapters[0].size_bytes() as f64 / 1e6;
        first.print(&format!("adapter first load (rank 16, q/k/v/o, {size:.1} MB in memory, from the PEFT files)"));
        again.print(&format!("adapter cold load (rank 16, q/k/v/o, {size:.1} MB in memory, from the saved panels)"));
    } else if needs_adapters {
        for i in 0..100 {
            let a = load_adapter_dir(&format!("a{i}"), &dir.path().join(format!("a{i}")), &model).expect("load");
            adapters.push(Arc::new(a));
        }
    }
    if what == "accuracy" {
        accuracy(&model, dir.path(), &qkvo);
    }
    if what == "deltas" {
        // The deltas alone (`testing::lora_delta_step`), one shared adapter against 16 distinct
        // ones (others each step, as the batch bench's 100-adapter row), alternating, 201 steps.
        let (mut one, mut distinct) = (Vec::new(), Vec::new());
        let mix = |a: &Arc<openledger_ml::LoraAdapter>| AdapterMix(vec![(a.clone(), 1.0)]);
        for step in 0..201 {
            let shared: Vec<AdapterMix> = (0..16).map(|_| mix(&adapters[0])).collect();
            let first = 16 * (step % 5 + 1);
            let others: Vec<AdapterMix> = (0..16).map(|i| mix(&adapters[(first + i) % adapters.len()])).collect();
            one.push(lora_delta_step(&model, &shared).expect("deltas").as_secs_f64() * 1e3);
            distinct.push(lora_delta_step(&model, &others).expect("deltas").as_secs_f64() * 1e3);
        }
        one.sort_by(f64::total_cmp);
        distinct.sort_by(f64::total_cmp);
        let (one, distinct) = (percentile(&one, 0.5), percentile(&distinct, 0.5));
        println!(
            "LoRA deltas of one batch-16 step (medians of 201): 1 adapter {one:.3} ms, 16 distinct adapters {distinct:.3} ms ({:.3} ms more)",
            distinct - one
        );
    }
    if what == "batch" || what == "all" {
        let n = 32;
        batch16(&model, &adapters, 1, 0, 4); // warm-up
        // Eleven interleaved rounds, medians: a shared machine's speed drifts within seconds, and
        // the ratios compare configurations measured side by side. The 100-adapter ratio is the
        // median of each round's own ratio (its two rows run back to back), which cancels drift
        // between rounds that medians of each row alone do not.
        const ROUNDS: usize = 11;
        let mut rounds: [Vec<f64>; 4] = Default::default();
        let mut ratios = Vec::with_capacity(ROUNDS);
        for round in 0..ROUNDS {
            rounds[0].push(batch16(&model, &adapters, 0, 0, n));
            rounds[1].push(batch16(&model, &adapters, 1, 0, n));
            rounds[2].push(batch16(&model, &adapters, 16, 0, n));
            // 100 adapters: 16 others each round (16 × (round % 5 + 1) on), none the 16-adapter
            // row's.
            rounds[3].push(batch16(&model, &adapters, 16, 16 * (round % 5 + 1), n));
            ratios.push(rounds[3][round] / rounds[1][round]);
        }
        let [base, one, sixteen, hundred] = rounds.map(|mut runs| {
            runs.sort_by(f64::total_cmp);
            runs[ROUNDS / 2]
        });
        ratios.sort_by(f64::total_cmp);
        println!(
            "batch 16 decode (medians of {ROUNDS} rounds): base model {base:.1} tok/s, 1 adapter {one:.1} tok/s, 16 adapters {sixteen:.1} tok/s, 100 adapters {hundred:.1} tok/s ({:.2}x of one: median of the rounds' ratios, {:.2}–{:.2} between their quartiles)",
            ratios[ROUNDS / 2],
            ratios[ROUNDS / 4],
            ratios[3 * ROUNDS / 4]
        );
    }
    println!("peak RSS {:.0} MiB (model + {} adapters in memory)", peak_rss_mib(), adapters.len());
}

/// Load times (ms) and each load's minor page faults.
#[derive(Default)]
struct Loads {
    times: Vec<f64>,
    faults: Vec<f64>,
}

impl Loads {
    /// Percentiles, and the slowest loads with their page faults (to tell a fault storm from a
    /// busy machine).
    fn print(mut self, what: &str) {
        let mut slowest: Vec<(f64, f64)> = self.times.iter().copied().zip(self.faults.iter().copied()).collect();
        slowest.sort_by(|a, b| b.0.total_cmp(&a.0));
        let slowest: Vec<String> = slowest[..5].iter().map(|(t, f)| format!("{t:.2} ms ({f:.0} faults)")).collect();
        self.times.sort_by(f64::total_cmp);
        self.faults.sort_by(f64::total_cmp);
        println!(
            "{what}: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms over {} loads; minor page faults per load p50 {:.0}, p99 {:.0}; slowest {}",
            percentile(&self.times, 0.5),
            percentile(&self.times, 0.9),
            percentile(&self.times, 0.99),
            self.times.len(),
            percentile(&self.faults, 0.5),
            percentile(&self.faults, 0.99),
            slowest.join(", ")
        );
    }
}
