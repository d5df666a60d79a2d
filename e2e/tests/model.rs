//! `openledger model info | generate` as a user runs them, on a tiny model and adapter the
//! test writes (GGUF with its own vocabulary, PEFT directory).

use std::process::Command;

use candle_core::quantized::GgmlDType;
use openledger_ml::testing::{TinyModel, TinySpec, write_peft_adapter};
use openledger_ml::{LlamaModel, Target};

use crate::support::BINARY;

fn openledger(args: &[&str]) -> std::process::Output {
    Command::new(BINARY).args(args).output().expect("run openledger")
}

#[test]
fn model_info_and_generate_with_adapters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tiny = TinyModel::new(TinySpec::default()).expect("tiny model");
    let gguf = tiny.write_gguf(&dir.path().join("tiny.gguf"), GgmlDType::Q4_1).expect("gguf");
    let gguf = gguf.to_str().expect("utf-8 path");
    let model = LlamaModel::from_gguf(std::path::Path::new(gguf), &candle_core::Device::Cpu).expect("load");
    let adapters = dir.path().join("adapters");
    for (name, seed) in [("style", 1), ("facts", 2)] {
        write_peft_adapter(&adapters.join(name), model.config(), 4, &[Target::Q, Target::V], seed, false)
            .expect("adapter");
    }

    let info = openledger(&["model", "info", gguf]);
    assert!(info.status.success(), "{}", String::from_utf8_lossy(&info.stderr));
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("llama (2 layers, hidden 64"), "{text}");
    assert!(text.contains("Q4_1"), "{text}");
    assert!(text.contains("ChatMl"), "{text}");

    let generate = |extra: &[&str]| {
        let mut args = vec!["model", "generate", "--model", gguf, "--prompt", "the tin", "--max-tokens", "12"];
        args.extend_from_slice(extra);
        let out = openledger(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (base, stats) = generate(&[]);
    assert!(stats.contains("tokens/s") && stats.contains("prompt + 12 generated"), "{stats}");
    let style = adapters.join("style");
    let facts = adapters.join("facts");
    let (with_style, _) = generate(&["--adapter", style.to_str().expect("path")]);
    assert_ne!(with_style, base, "the adapter changed nothing");
    // A mix with weights (1, 0) is the first adapter alone.
    let (mixed, _) =
        generate(&["--adapter", &format!("{}=1", style.display()), "--adapter", &format!("{}=0", facts.display())]);
    assert_eq!(mixed, with_style);

    let missing = openledger(&["model", "generate", "--model", "/nonexistent.gguf", "--prompt", "x"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("not found"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}

/// `openledger model finetune | eval | grads` on a tiny GGUF base, then the adapter it made
/// served by `model generate`.
#[test]
fn model_finetune_eval_and_grads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tiny = TinyModel::new(TinySpec::default()).expect("tiny model");
    let gguf = tiny.write_gguf(&dir.path().join("tiny.gguf"), GgmlDType::Q8_0).expect("gguf");
    let gguf = gguf.to_str().expect("utf-8 path");
    let data = dir.path().join("colours.jsonl");
    let records: String = (0..24)
        .map(|i| {
            let (colour, label) = [("red", "warm"), ("blue", "cold")][i % 2];
            format!("{{\"text\":\"item {i} is {colour}\",\"label\":\"{label}\"}}\n")
        })
        .collect();
    std::fs::write(&data, records).expect("data");
    let data = data.to_str().expect("path");
    let out = dir.path().join("adapter");
    let out_s = out.to_str().expect("path");
    let run = |args: &[&str]| {
        let out = openledger(args);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, stdout, stderr) = run(&[
        "model",
        "finetune",
        "--base",
        gguf,
        "--data",
        data,
        "--out",
        out_s,
        "--rank",
        "4",
        "--targets",
        "all-linear",
        "--lr",
        "1e-2",
        "--epochs",
        "3",
        "--batch-tokens",
        "256",
        "--eval-split",
        "0.25",
        "--eval-every",
        "2",
        "--threads",
        "2",
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("Completed after"), "{stdout}");
    assert!(stderr.contains("18 training and 6 held-out records") && stderr.contains("eval at step 2"), "{stderr}");
    for file in ["adapter_config.json", "adapter_model.safetensors", "lineage.json"] {
        assert!(out.join(file).is_file(), "{file}");
    }

    let (ok, stdout, stderr) = run(&["model", "eval", "--base", gguf, "--adapter", out_s, "--data", data]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json report");
    assert!(report["loss"].as_f64().expect("loss") < report["base_loss"].as_f64().expect("base loss"), "{report}");
    assert!(report["accuracy"].as_f64().is_some(), "{report}");

    let grads = dir.path().join("grads");
    let grads_s = grads.to_str().expect("path");
    let grads_with = |project: &str| {
        run(&[
            "model",
            "grads",
            "--base",
            gguf,
            "--adapter",
            out_s,
            "--data",
            data,
            "--out",
            grads_s,
            "--project",
            project,
        ])
    };
    let (ok, stdout, stderr) = grads_with("112");
    assert!(ok, "{stderr}");
    // 2 × rank 4 × 7 targets = 56: a projection to 112 values per layer, 2 layers, bf16.
    assert!(stdout.contains("24 records, 224 values per record (448 bytes)"), "{stdout}");
    let header: serde_json::Value =
        serde_json::from_slice(&std::fs::read(grads.join("header.json")).expect("header")).expect("json");
    assert_eq!(header["records"], 24);
    let (ok, _, stderr) = grads_with("100");
    assert!(!ok && stderr.contains("multiple of 56"), "{stderr}");

    let (ok, _, stderr) =
        run(&["model", "generate", "--model", gguf, "--adapter", out_s, "--prompt", "item 3 is", "--max-tokens", "4"]);
    assert!(ok, "{stderr}");

    // Bad input: a label outside the given set, and an empty dataset.
    let (ok, _, stderr) =
        run(&["model", "finetune", "--base", gguf, "--data", data, "--out", out_s, "--labels", "warm"]);
    assert!(!ok && stderr.contains("label \"cold\" is not in the label set"), "{stderr}");
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "\n").expect("empty");
    let (ok, _, stderr) =
        run(&["model", "finetune", "--base", gguf, "--data", empty.to_str().expect("path"), "--out", out_s]);
    assert!(!ok && stderr.contains("no records"), "{stderr}");
}

/// `openledger attribution evaluate` as a user first runs it: the CI-size evaluation on the
/// tiny model, as JSON, with every method, the copy measure and the verbatim check.
#[test]
fn attribution_evaluate_reports_every_method_and_the_credit_checks() {
    let work = tempfile::tempdir().expect("tempdir");
    let out = openledger(&[
        "attribution",
        "evaluate",
        "--subsets",
        "3",
        "--seed",
        "5",
        "--work-dir",
        work.path().to_str().expect("utf-8 path"),
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json report");
    let methods: Vec<&str> =
        report["methods"].as_array().expect("methods").iter().filter_map(|m| m["method"].as_str()).collect();
    assert!(methods.contains(&"datainf_normalized") && methods.contains(&"random"), "{methods:?}");
    assert!(report["replication"]["exact"]["with_rule"].as_f64().expect("R") <= 1.0 + 1e-9, "{report}");
    assert_eq!(report["verbatim"]["credited_share"], 1.0, "{report}");
    let bad = openledger(&["attribution", "evaluate", "--subsets", "2"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("subsets must be"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
