use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_core::quantized::GgmlDType;
use openledger_ml::adapters::load_adapter_dir;
use openledger_ml::lora::AdapterMix;
use openledger_ml::testing::{TinyModel, TinySpec};
use openledger_ml::train::data::{Dataset, Tokenize, parse_records};
use openledger_ml::train::{
    Control, Finish, LINEAGE_FILE, Lineage, TrainConfig, TrainEvent, TrainJob, Validation, train,
};
use openledger_ml::{LlamaModel, MlError, Target, Tokenizer, load_model};

struct Setup {
    dir: tempfile::TempDir,
    path: PathBuf,
    model: LlamaModel,
    tokenizer: Tokenizer,
}

/// A tiny model quantized to Q8_0: training runs on its dequantized weights, serving on the
/// quantized ones.
fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = TinyModel::new(TinySpec::default())
        .unwrap()
        .write_gguf(&dir.path().join("tiny.gguf"), GgmlDType::Q8_0)
        .unwrap();
    let (model, tokenizer) = load_model(&path, &Device::Cpu).unwrap();
    Setup { dir, path, model, tokenizer }
}

/// A task the random model cannot do: the colour word decides one of four labels.
fn colour_records(n: usize) -> String {
    let fillers = ["the sky", "a pen", "this ball", "that car", "my hat", "an apple", "our door", "his cup"];
    let classes = [("red", "warm"), ("blue", "cold"), ("green", "fresh"), ("black", "dark")];
    (0..n)
        .map(|i| {
            let (colour, label) = classes[i % classes.len()];
            format!("{{\"text\":\"{} is {colour} {i}\",\"label\":\"{label}\"}}\n", fillers[i % fillers.len()])
        })
        .collect()
}

fn dataset(s: &Setup, jsonl: &str) -> Dataset {
    let (kind, records) = parse_records(jsonl).unwrap();
    Tokenize { tokenizer: &s.tokenizer, max_tokens: 64 }.dataset(kind, &records, None).unwrap()
}

fn run(
    s: &Setup,
    data: &Dataset,
    config: &TrainConfig,
    out: &Path,
    resume: bool,
    on_event: &mut dyn FnMut(&TrainEvent) -> Control,
) -> openledger_ml::Result<openledger_ml::train::TrainOutcome> {
    let job = TrainJob {
        model: &s.model,
        model_path: &s.path,
        dataset: data,
        dataset_name: "colours.jsonl",
        validation: None,
        out,
        resume,
    };
    train(&job, config, on_event)
}

fn quick() -> TrainConfig {
    TrainConfig {
        rank: 8,
        alpha: 16.0,
        dropout: 0.0,
        targets: Target::ALL.to_vec(),
        learning_rate: 1e-2,
        warmup_steps: Some(2),
        epochs: 12,
        batch_tokens: 256,
        eval_split: 0.25,
        eval_every: 10,
        checkpoint_every: 0,
        ..TrainConfig::default()
    }
}

#[test]
fn training_learns_a_labelled_task_that_then_serves_on_the_quantized_base() {
    let s = setup();
    let data = dataset(&s, &colour_records(64));
    assert_eq!(data.labels, ["cold", "dark", "fresh", "warm"]);
    let out = s.dir.path().join("adapter");
    let mut events = Vec::new();
    let outcome = run(&s, &data, &quick(), &out, false, &mut |e| {
        events.push(e.clone());
        Control::Continue
    })
    .unwrap();
    assert_eq!(outcome.finish, Finish::Completed);
    let report = outcome.last_eval.unwrap();
    let (accuracy, base) = (report.accuracy.unwrap(), report.base_accuracy.unwrap());
    eprintln!("held-out accuracy {accuracy} (base {base}), loss {} (base {})", report.loss, report.base_loss);
    assert!(base <= 0.5, "the task must be one the base cannot do (chance is 0.25): {base}");
    assert!(accuracy >= 0.9, "accuracy {accuracy} after {} steps", outcome.steps);
    assert!(report.loss < report.base_loss);
    // Progress: every step reported, in order, with a learning rate and an ETA.
    let steps: Vec<u64> =
        events.iter().filter_map(|e| if let TrainEvent::Step { step, .. } = e { Some(*step) } else { None }).collect();
    assert_eq!(steps, (1..=outcome.steps).collect::<Vec<_>>());
    assert!(events.iter().any(|e| matches!(e, TrainEvent::Eval(_))));

    // The adapter is a PEFT adapter the engine serves on the Q8_0 base: its first label token wins.
    let adapter = std::sync::Arc::new(load_adapter_dir("colours", &out, &s.model).unwrap());
    let mix = AdapterMix(vec![(adapter, 1.0)]);
    let tokenize = Tokenize { tokenizer: &s.tokenizer, max_tokens: 64 };
    let firsts: Vec<(u32, &String)> =
        data.labels.iter().map(|label| (tokenize.completion(label).unwrap()[0], label)).collect();
    let mut right = 0;
    let lineage: Lineage = serde_json::from_slice(&std::fs::read(out.join(LINEAGE_FILE)).unwrap()).unwrap();
    for example in data.examples.iter().filter(|e| lineage.eval_records.contains(&e.hash.to_string())) {
        let mut cache = s.model.new_cache(64).unwrap();
        let logits = s.model.logits_for(&example.tokens[..example.first_scored], &mut cache, &mix).unwrap();
        let predicted = firsts.iter().max_by(|a, b| logits[a.0 as usize].total_cmp(&logits[b.0 as usize])).unwrap().1;
        right += usize::from(Some(predicted) == example.label.as_ref());
    }
    assert!(right as f64 >= 0.9 * lineage.eval_records.len() as f64, "{right} of {}", lineage.eval_records.len());

    // Lineage: the base's hash, every record used, in order, and the metrics.
    assert_eq!(lineage.train_records.len() + lineage.eval_records.len(), 64);
    assert_eq!(lineage.base_model_blake3, openledger_ml::train::hash_path(&s.path).unwrap());
    assert_eq!(lineage.metrics.unwrap().accuracy, Some(accuracy));
    assert_eq!(lineage.config, quick());
}

#[test]
fn a_validation_set_is_the_held_out_set_and_every_training_record_trains() {
    let s = setup();
    let data = dataset(&s, &colour_records(24));
    // Records 24..32 of the same task: none of them is a training record.
    let held_jsonl: String = colour_records(32).lines().skip(24).map(|line| format!("{line}\n")).collect();
    let (kind, held_records) = parse_records(&held_jsonl).unwrap();
    let tokenize = Tokenize { tokenizer: &s.tokenizer, max_tokens: 64 };
    let held = tokenize.dataset(kind, &held_records, Some(&data.labels)).unwrap();
    let config = TrainConfig { max_steps: Some(4), eval_every: 2, ..quick() };
    let out = s.dir.path().join("validated");
    let job = TrainJob {
        model: &s.model,
        model_path: &s.path,
        dataset: &data,
        dataset_name: "colours.jsonl",
        validation: Some(Validation { dataset: &held, name: "held.jsonl" }),
        out: &out,
        resume: false,
    };
    let mut started = None;
    let outcome = train(&job, &config, &mut |event| {
        if let TrainEvent::Started { train_examples, eval_examples, .. } = event {
            started = Some((*train_examples, *eval_examples));
        }
        Control::Continue
    })
    .unwrap();
    assert_eq!(started, Some((24, 8)), "eval_split is not applied beside a validation set");
    assert!(outcome.last_eval.unwrap().accuracy.is_some(), "labelled validation reports accuracy");
    let lineage: Lineage = serde_json::from_slice(&std::fs::read(out.join(LINEAGE_FILE)).unwrap()).unwrap();
    let hashes = |d: &Dataset| -> Vec<String> { d.examples.iter().map(|e| e.hash.to_string()).collect() };
    assert_eq!(lineage.train_records, hashes(&data));
    assert_eq!(lineage.eval_records, hashes(&held));
    assert_eq!(lineage.validation_dataset.as_deref(), Some("held.jsonl"));

    // A validation set of another kind, or with other labels, is refused before any step.
    let texts = dataset(&s, "{\"text\":\"the sky is red\"}\n");
    let relabelled = tokenize
        .dataset(kind, &held_records, Some(&["cold".into(), "warm".into(), "dark".into(), "fresh".into(), "x".into()]))
        .unwrap();
    for (bad, why) in [(&texts, "one kind"), (&relabelled, "other labels")] {
        let job = TrainJob { validation: Some(Validation { dataset: bad, name: "bad.jsonl" }), ..job };
        let error = train(&job, &config, &mut |_| Control::Continue).expect_err(why);
        assert!(matches!(&error, MlError::InvalidRequest(m) if m.contains(why)), "{error}");
    }
}

fn adapter_bytes(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("adapter_model.safetensors")).unwrap()
}

#[test]
fn same_seed_is_bit_identical_and_a_resumed_run_equals_an_uninterrupted_one() {
    let s = setup();
    let data = dataset(&s, &colour_records(24));
    let config =
        TrainConfig { dropout: 0.1, grad_accum: 2, batch_tokens: 96, max_steps: Some(6), eval_every: 3, ..quick() };
    let (a, b, c) = (s.dir.path().join("a"), s.dir.path().join("b"), s.dir.path().join("c"));
    run(&s, &data, &config, &a, false, &mut |_| Control::Continue).unwrap();
    run(&s, &data, &config, &b, false, &mut |_| Control::Continue).unwrap();
    assert_eq!(adapter_bytes(&a), adapter_bytes(&b), "same seed, same bytes");
    let other = TrainConfig { seed: 1, ..config.clone() };
    run(&s, &data, &other, &s.dir.path().join("other"), false, &mut |_| Control::Continue).unwrap();
    assert_ne!(adapter_bytes(&a), adapter_bytes(&s.dir.path().join("other")));

    let stopped = run(&s, &data, &config, &c, false, &mut |e| match e {
        TrainEvent::Step { step: 4, .. } => Control::Stop,
        _ => Control::Continue,
    })
    .unwrap();
    assert_eq!((stopped.finish, stopped.steps), (Finish::Interrupted, 4));
    assert!(stopped.adapter_dir.ends_with("checkpoints/step-00000004"), "{}", stopped.adapter_dir.display());
    assert!(!c.join("adapter_model.safetensors").exists(), "no final adapter for an interrupted run");
    let mut resumed_from = None;
    let done = run(&s, &data, &config, &c, true, &mut |e| {
        if let TrainEvent::Started { start_step, .. } = e {
            resumed_from = Some(*start_step);
        }
        Control::Continue
    })
    .unwrap();
    assert_eq!((resumed_from, done.finish, done.steps), (Some(4), Finish::Completed, 6));
    assert_eq!(adapter_bytes(&a), adapter_bytes(&c), "resumed = uninterrupted");
    let lineage =
        |d: &Path| -> Lineage { serde_json::from_slice(&std::fs::read(d.join(LINEAGE_FILE)).unwrap()).unwrap() };
    assert_eq!(lineage(&a).history, lineage(&c).history);

    // A checkpoint from other hyper-parameters is refused rather than silently mixed in.
    let changed = TrainConfig { learning_rate: 5e-3, ..config };
    let err = run(&s, &data, &changed, &c, true, &mut |_| Control::Continue).unwrap_err();
    assert!(err.to_string().contains("other hyper-parameters"), "{err}");
}

/// A stop asked for at a checkpoint event (as at any other event) ends the run as
/// interrupted at that checkpoint, without a final adapter.
#[test]
fn a_stop_at_a_checkpoint_interrupts_the_run() {
    let s = setup();
    let data = dataset(&s, &colour_records(24));
    let config = TrainConfig { checkpoint_every: 2, eval_split: 0.0, max_steps: Some(6), ..quick() };
    let out = s.dir.path().join("stop-at-checkpoint");
    let outcome = run(&s, &data, &config, &out, false, &mut |e| match e {
        TrainEvent::Checkpoint { step: 2, .. } => Control::Stop,
        _ => Control::Continue,
    })
    .unwrap();
    assert_eq!((outcome.finish, outcome.steps), (Finish::Interrupted, 2));
    assert!(outcome.adapter_dir.ends_with("checkpoints/step-00000002"));
    assert!(!out.join("adapter_model.safetensors").exists());
}

#[test]
fn a_diverging_run_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint() {
    let scenario = fail::FailScenario::setup();
    let s = setup();
    let data = dataset(&s, &colour_records(16));
    let config = TrainConfig { checkpoint_every: 1, eval_split: 0.0, ..quick() };
    // The second step's loss comes out NaN (as a diverging run's would).
    fail::cfg("train-loss", "1*off->return").unwrap();
    let out = s.dir.path().join("diverged");
    let err = run(&s, &data, &config, &out, false, &mut |_| Control::Continue).unwrap_err();
    scenario.teardown();
    assert!(matches!(err, MlError::Diverged(_)), "{err}");
    let message = err.to_string();
    assert!(message.contains("step 2: loss NaN") && message.contains("step-00000001"), "{message}");
    assert!(out.join("checkpoints/step-00000001/trainer_state.json").is_file());
    assert!(!out.join("checkpoints/step-00000002").exists(), "nothing after the bad step is saved");
    assert!(!out.join("adapter_model.safetensors").exists());
}

#[test]
fn a_full_disk_at_checkpoint_fails_cleanly_and_keeps_the_last_good_one() {
    let scenario = fail::FailScenario::setup();
    let s = setup();
    let data = dataset(&s, &colour_records(16));
    let config = TrainConfig { checkpoint_every: 1, eval_split: 0.0, ..quick() };
    // A checkpoint writes four files; the fifth write (the next checkpoint's first) hits a full disk.
    fail::cfg("train-write-file", "4*off->return").unwrap();
    let out = s.dir.path().join("full");
    let err = run(&s, &data, &config, &out, false, &mut |_| Control::Continue).unwrap_err();
    scenario.teardown();
    assert!(matches!(err, MlError::Checkpoint(_)), "{err}");
    let message = err.to_string();
    assert!(message.contains("step 2") && message.contains("step-00000001"), "{message}");
    let entries: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, vec!["step-00000001".to_string()], "no partial checkpoint is left");
    // The kept checkpoint resumes once the disk has room again.
    let mut start = None;
    let done = run(&s, &data, &config, &out, true, &mut |e| {
        if let TrainEvent::Started { start_step, .. } = e {
            start = Some(*start_step);
        }
        Control::Continue
    })
    .unwrap();
    assert_eq!((start, done.finish), (Some(1), Finish::Completed));
}

#[test]
fn bad_datasets_and_settings_are_refused_with_clear_errors() {
    let s = setup();
    let tokenize = Tokenize { tokenizer: &s.tokenizer, max_tokens: 24 };
    // Empty files and unknown labels.
    assert!(parse_records("\n\n").unwrap_err().contains("no records"));
    let (kind, records) = parse_records(&colour_records(4)).unwrap();
    let labels = ["warm".to_string()];
    let err = tokenize.dataset(kind, &records, Some(&labels)).err().unwrap();
    assert!(err.to_string().contains("label \"cold\" is not in the label set"), "{err}");
    assert!(tokenize.dataset(kind, &[], None).is_err());
    // Long records: free text and prompts are truncated (and flagged); a response that cannot
    // fit is refused with its line.
    let long = "word ".repeat(40);
    let (kind, records) = parse_records(&format!("{{\"text\":\"{long}\"}}")).unwrap();
    let data = tokenize.dataset(kind, &records, None).unwrap();
    assert!(data.examples[0].truncated && data.examples[0].tokens.len() == 24);
    let (kind, records) = parse_records(&format!("{{\"instruction\":\"{long}\",\"response\":\"ok\"}}")).unwrap();
    let data = tokenize.dataset(kind, &records, None).unwrap();
    let e = &data.examples[0];
    assert!(e.truncated && e.tokens.len() == 24 && e.first_scored < 24);
    let (kind, records) = parse_records(&format!("\n{{\"instruction\":\"hi\",\"response\":\"{long}\"}}")).unwrap();
    let err = tokenize.dataset(kind, &records, None).err().unwrap();
    assert!(err.to_string().contains("line 2") && err.to_string().contains("must fit 24 tokens"), "{err}");
    // Settings.
    let out = s.dir.path().join("bad");
    for (config, expect) in [
        (TrainConfig { rank: 0, ..quick() }, "rank 0"),
        (TrainConfig { learning_rate: f64::NAN, ..quick() }, "learning rate"),
        (TrainConfig { dropout: 1.0, ..quick() }, "dropout"),
        (TrainConfig { targets: vec![], ..quick() }, "no target"),
        (TrainConfig { eval_split: 0.8, ..quick() }, "nothing to train on"),
    ] {
        let data = if expect == "nothing to train on" {
            dataset(&s, &colour_records(1))
        } else {
            dataset(&s, &colour_records(4))
        };
        let err = run(&s, &data, &config, &out, false, &mut |_| Control::Continue).unwrap_err();
        assert!(err.to_string().contains(expect), "{expect}: {err}");
    }
}
