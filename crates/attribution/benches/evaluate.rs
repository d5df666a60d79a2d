//! The bench-size attribution evaluation on SmolLM2-135M-Instruct: detection AUC and LDS of every
//! influence estimator next to KNN-Shapley (MiniLM embeddings, TF-IDF) and random, in one run.
//!
//!   cargo bench -p openledger-attribution --bench evaluate
//!
//! Environment: `OPENLEDGER_EVAL_SUBSETS` (retrained subsets for the LDS, default 8),
//! `OPENLEDGER_EVAL_SEED` (default 1), `OPENLEDGER_EVAL_JSON` (write the report there too),
//! `OPENLEDGER_EVAL_WORK_DIR` (keep the adapters there: a re-run with the same settings loads
//! them instead of training again; default a temporary directory), `OPENLEDGER_EVAL_FIRST_LAYER`
//! (gradients of the layers from this one on; 0 for all; default the platform's indexes', the
//! upper half).
//! Needs `scripts/fetch-models.sh` (SmolLM2 and all-MiniLM-L6-v2).

use std::time::Instant;

use openledger_attribution::evaluate::{EvaluationSpec, evaluate};
use openledger_ml::embed::minilm_path;
use openledger_ml::testing::smollm2_path;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model = smollm2_path();
    if !model.exists() {
        return Err(format!("no model at {}: run scripts/fetch-models.sh", model.display()).into());
    }
    let minilm = Some(minilm_path()).filter(|p| p.join("model.safetensors").exists());
    if minilm.is_none() {
        eprintln!("no all-MiniLM-L6-v2 (scripts/fetch-models.sh minilm): KNN-Shapley on embeddings is left out");
    }
    let temporary = tempfile::tempdir()?;
    let work = std::env::var("OPENLEDGER_EVAL_WORK_DIR").map_or_else(|_| temporary.path().to_path_buf(), Into::into);
    let subsets = env_or("OPENLEDGER_EVAL_SUBSETS", 8) as usize;
    let seed = env_or("OPENLEDGER_EVAL_SEED", 1);
    let spec = EvaluationSpec {
        first_layer: std::env::var("OPENLEDGER_EVAL_FIRST_LAYER").ok().and_then(|v| v.parse().ok()),
        ..EvaluationSpec::bench(work, model, minilm, subsets, seed)
    };
    let started = Instant::now();
    let mut last = String::new();
    let report = evaluate(&spec, &mut |stage, done, total| {
        if stage != last || done == total {
            eprintln!("[{:>7.1}s] {stage} {done}/{total}", started.elapsed().as_secs_f64());
            last = stage.to_string();
        }
    })?;
    println!("{report}");
    println!("wall time {:.1} s", started.elapsed().as_secs_f64());
    if let Ok(path) = std::env::var("OPENLEDGER_EVAL_JSON") {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}
