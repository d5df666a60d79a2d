//! Test fixture: a tiny model, an exported Datanet version of a labelled task (one
//! contribution per eight records, contributors by record index) and an adapter trained on it.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_core::quantized::GgmlDType;
use openledger_core::record::record_hash;
use openledger_ml::testing::{TinyModel, TinySpec};
use openledger_ml::train::data::{Tokenize, parse_records};
use openledger_ml::train::{Control, TrainConfig, TrainJob, train};
use openledger_ml::{LlamaModel, Target, Tokenizer, load_model};

use crate::corpus::{EXPORT_FORMAT, MANIFEST_FILE, RECORDS_FILE};

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub model: LlamaModel,
    pub tokenizer: Tokenizer,
    pub corpus: PathBuf,
    pub adapter: PathBuf,
}

/// The colour decides the label; records `flipped` carry a wrong label.
fn colour_record(i: usize, flipped: bool) -> (String, String) {
    let fillers = ["the sky", "a pen", "this ball", "that car", "my hat", "an apple", "our door", "his cup"];
    let classes = [("red", "warm"), ("blue", "cold"), ("green", "fresh"), ("black", "dark")];
    let (colour, label) = classes[i % classes.len()];
    let label = if flipped { classes[(i + 1) % classes.len()].1 } else { label };
    (format!("{} is {colour} {i}", fillers[i % fillers.len()]), label.to_string())
}

/// `n` records; contribution `c{i/8}`, contributor `k{i/16}` (hex-like names); `flipped(i)`
/// plants wrong labels.
pub fn write_export(dir: &Path, n: usize, flipped: impl Fn(usize) -> bool) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut lines = String::new();
    let mut leaves = Vec::with_capacity(n);
    for i in 0..n {
        let (text, label) = colour_record(i, flipped(i));
        let hash = record_hash(&[("text", &text), ("label", &label)]);
        leaves.push(hash);
        let line = serde_json::json!({
            "text": text, "label": label,
            "_openledger": {"position": i, "record": hash.to_hex(), "contribution": format!("c{}", i / 8), "contributor": format!("k{}", i / 16)},
        });
        lines.push_str(&format!("{line}\n"));
    }
    std::fs::write(dir.join(RECORDS_FILE), &lines).unwrap();
    let manifest = serde_json::json!({
        "format": EXPORT_FORMAT, "datanet_id": "d", "slug": "colours", "version": 1,
        "snapshot_id": "s", "merkle_root": openledger_core::MerkleTree::new(&leaves).root().to_hex(), "records": n,
    });
    std::fs::write(dir.join(MANIFEST_FILE), manifest.to_string()).unwrap();
    dir.to_path_buf()
}

/// Trains a rank-4 adapter for `epochs` on the export (a quarter held out).
pub fn fixture(n: usize, epochs: usize, flipped: impl Fn(usize) -> bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path =
        TinyModel::new(TinySpec::default()).unwrap().write_gguf(&dir.path().join("tiny.gguf"), GgmlDType::F32).unwrap();
    let (model, tokenizer) = load_model(&path, &Device::Cpu).unwrap();
    let corpus = write_export(&dir.path().join("export"), n, flipped);
    let (kind, records) = parse_records(&std::fs::read_to_string(corpus.join(RECORDS_FILE)).unwrap()).unwrap();
    let dataset = Tokenize { tokenizer: &tokenizer, max_tokens: 64 }.dataset(kind, &records, None).unwrap();
    let adapter = dir.path().join("adapter");
    let config = TrainConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: vec![Target::Q, Target::V, Target::Down],
        learning_rate: 1e-2,
        warmup_steps: Some(2),
        epochs,
        batch_tokens: 256,
        eval_split: 0.25,
        eval_every: 1000,
        checkpoint_every: 0,
        max_seq_tokens: Some(64),
        ..TrainConfig::default()
    };
    let job = TrainJob {
        model: &model,
        model_path: &path,
        dataset: &dataset,
        dataset_name: "datanet:colours@1",
        validation: None,
        out: &adapter,
        resume: false,
    };
    train(&job, &config, &mut |_| Control::Continue).unwrap();
    Fixture { dir, model, tokenizer, corpus, adapter }
}
