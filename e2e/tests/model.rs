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
