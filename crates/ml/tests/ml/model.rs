use std::sync::Arc;

use candle_core::Device;
use candle_core::quantized::GgmlDType;
use openledger_ml::adapters::load_adapter_dir;
use openledger_ml::lora::AdapterMix;
use openledger_ml::testing::{TinyModel, TinySpec, write_peft_adapter};
use openledger_ml::{LlamaModel, LoraAdapter, MlError, SeqStep, Target, load_model};

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub tiny: TinyModel,
}

impl Fixture {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap(), tiny: TinyModel::new(TinySpec::default()).unwrap() }
    }

    pub fn gguf(&self, dtype: GgmlDType) -> LlamaModel {
        let path = self.tiny.write_gguf(&self.dir.path().join(format!("tiny-{dtype:?}.gguf")), dtype).unwrap();
        LlamaModel::from_gguf(&path, &Device::Cpu).unwrap()
    }

    pub fn safetensors(&self) -> LlamaModel {
        let dir = self.tiny.write_safetensors(&self.dir.path().join("hf")).unwrap();
        LlamaModel::from_safetensors_dir(&dir, &Device::Cpu).unwrap()
    }

    /// A served adapter of `rank`: 4 is held in f16 panels, 16 in 8-bit ones.
    pub fn adapter(
        &self,
        model: &LlamaModel,
        name: &str,
        (rank, seed): (usize, u64),
        targets: &[Target],
        zero: bool,
    ) -> Arc<LoraAdapter> {
        let dir = write_peft_adapter(&self.dir.path().join(name), model.config(), rank, targets, seed, zero).unwrap();
        self.adapter_from(model, name, &dir)
    }

    pub fn adapter_from(&self, model: &LlamaModel, name: &str, dir: &std::path::Path) -> Arc<LoraAdapter> {
        Arc::new(load_adapter_dir(name, dir, model).unwrap())
    }
}

const PROMPT: [u32; 7] = [40, 71, 258, 90, 12, 250, 3];

/// Greedy tokens for `prompt` run alone, and the logits at every step.
pub fn generate_alone(model: &LlamaModel, prompt: &[u32], mix: &AdapterMix, steps: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut cache = model.new_cache(prompt.len() + steps).unwrap();
    let mut logits = model.logits_for(prompt, &mut cache, mix).unwrap();
    let (mut tokens, mut all) = (Vec::new(), Vec::new());
    for _ in 0..steps {
        let next = openledger_ml::model::argmax(&logits);
        tokens.push(next);
        all.push(logits.clone());
        logits = model.logits_for(&[next], &mut cache, mix).unwrap();
    }
    (tokens, all)
}

pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn gguf_and_safetensors_give_the_same_logits() {
    let f = Fixture::new();
    let hf = f.safetensors();
    let gguf = f.gguf(GgmlDType::F32);
    // Embedding, output, final norm, and 7 projections + 2 norms in each of the 2 layers.
    assert_eq!(hf.format().tensor_types, vec![("F32".to_string(), 21)]);
    assert_eq!(gguf.format().tensor_types, vec![("F32".to_string(), 21)]);
    let none = AdapterMix::default();
    let (tokens_hf, logits_hf) = generate_alone(&hf, &PROMPT, &none, 6);
    let (tokens_gguf, logits_gguf) = generate_alone(&gguf, &PROMPT, &none, 6);
    assert_eq!(tokens_hf, tokens_gguf);
    for (a, b) in logits_hf.iter().zip(&logits_gguf) {
        assert!(max_diff(a, b) < 1e-3, "{}", max_diff(a, b));
    }
    // Quantized weights stay close to the f32 model.
    let q8 = f.gguf(GgmlDType::Q8_0);
    let (_, logits_q8) = generate_alone(&q8, &PROMPT, &none, 1);
    assert!(max_diff(&logits_q8[0], &logits_hf[0]) < 0.1, "{}", max_diff(&logits_q8[0], &logits_hf[0]));
}

#[test]
fn prefill_matches_token_by_token() {
    let f = Fixture::new();
    let model = f.gguf(GgmlDType::Q4_1);
    let none = AdapterMix::default();
    let mut whole = model.new_cache(16).unwrap();
    let at_once = model.logits_for(&PROMPT, &mut whole, &none).unwrap();
    let mut stepwise = model.new_cache(16).unwrap();
    let mut last = Vec::new();
    for t in PROMPT {
        last = model.logits_for(&[t], &mut stepwise, &none).unwrap();
    }
    assert!(max_diff(&at_once, &last) < 1e-3, "{}", max_diff(&at_once, &last));
    assert_eq!(whole.len(), PROMPT.len());
}

/// On adapters in f16 panels (rank 4) and in 8-bit panels (rank 16).
#[test]
fn adapters_zero_mix_and_batch_rows() {
    for rank in [4, 16] {
        zero_mix_and_batch_rows(rank);
    }
}

fn zero_mix_and_batch_rows(rank: usize) {
    let f = Fixture::new();
    let model = f.gguf(GgmlDType::Q8_0);
    let qkvo = [Target::Q, Target::K, Target::V, Target::O];
    let zero = f.adapter(&model, "zero", (rank, 1), &qkvo, true);
    let a = f.adapter(&model, "a", (rank, 2), &qkvo, false);
    let b = f.adapter(&model, "b", (rank, 3), &Target::ALL, false);
    let none = AdapterMix::default();
    let (base_tokens, base_logits) = generate_alone(&model, &PROMPT, &none, 5);

    // B = 0 leaves outputs unchanged.
    let (zero_tokens, zero_logits) = generate_alone(&model, &PROMPT, &AdapterMix(vec![(zero, 1.0)]), 5);
    assert_eq!(zero_tokens, base_tokens);
    assert!(max_diff(&zero_logits[0], &base_logits[0]) < 1e-5);

    // A real adapter changes them; a mix with weights (1, 0) equals the first adapter alone.
    let only_a = AdapterMix(vec![(a.clone(), 1.0)]);
    let (a_tokens, a_logits) = generate_alone(&model, &PROMPT, &only_a, 5);
    assert!(max_diff(&a_logits[0], &base_logits[0]) > 1e-2, "the adapter had no effect");
    let mix = AdapterMix(vec![(a.clone(), 1.0), (b.clone(), 0.0)]);
    let (mix_tokens, mix_logits) = generate_alone(&model, &PROMPT, &mix, 5);
    assert_eq!(mix_tokens, a_tokens);
    assert!(max_diff(&mix_logits[0], &a_logits[0]) < 1e-5);

    // A (0.5, 0.5) mix is the linear combination: halfway between is not either end.
    let half = AdapterMix(vec![(a.clone(), 0.5), (b.clone(), 0.5)]);
    let (_, half_logits) = generate_alone(&model, &PROMPT, &half, 1);
    assert!(max_diff(&half_logits[0], &a_logits[0]) > 1e-3);

    // Rows with different adapters, lengths and positions in one batch equal each run alone.
    let mixes = [none.clone(), only_a.clone(), AdapterMix(vec![(b.clone(), 1.0)]), half.clone()];
    let prompts: [&[u32]; 4] = [&PROMPT, &PROMPT[..3], &[9, 8, 7, 6, 5, 4, 3, 2, 1], &PROMPT[2..]];
    let alone: Vec<Vec<u32>> = prompts.iter().zip(&mixes).map(|(p, m)| generate_alone(&model, p, m, 6).0).collect();
    let mut caches: Vec<_> = prompts.iter().map(|p| model.new_cache(p.len() + 6).unwrap()).collect();
    let mut next: Vec<Vec<u32>> = prompts.iter().map(|p| p.to_vec()).collect();
    let mut batched: Vec<Vec<u32>> = vec![Vec::new(); 4];
    // Sequence 3 joins late, while the others are already decoding (continuous batching).
    for step in 0..7 {
        let active: Vec<usize> = (0..4).filter(|&i| (i != 3 || step >= 1) && batched[i].len() < 6).collect();
        let mut steps: Vec<SeqStep<'_>> = Vec::new();
        for (i, (cache, tokens)) in caches.iter_mut().zip(&next).enumerate() {
            if active.contains(&i) {
                steps.push(SeqStep { tokens, cache, adapters: &mixes[i] });
            }
        }
        let logits = model.forward(&mut steps).unwrap();
        drop(steps);
        for (row, &i) in active.iter().enumerate() {
            let token = openledger_ml::model::argmax(&logits.get(row).unwrap().to_vec1::<f32>().unwrap());
            batched[i].push(token);
            next[i] = vec![token];
        }
    }
    assert_eq!(batched, alone, "rank {rank}");
}

#[test]
fn adapters_on_gguf_and_safetensors_bases_agree() {
    // GGUF bases hold q/k rows permuted for interleaved RoPE; adapter B rows must follow (in
    // f16 panels at rank 4, in 8-bit panels at rank 16).
    for rank in [4, 16] {
        let f = Fixture::new();
        let hf = f.safetensors();
        let gguf = f.gguf(GgmlDType::F32);
        let targets = [Target::Q, Target::K, Target::Down];
        let on_hf = AdapterMix(vec![(f.adapter(&hf, "x", (rank, 5), &targets, false), 1.0)]);
        let on_gguf = AdapterMix(vec![(f.adapter(&gguf, "x", (rank, 5), &targets, false), 1.0)]);
        let (_, base) = generate_alone(&gguf, &PROMPT, &AdapterMix::default(), 3);
        let (_, a) = generate_alone(&hf, &PROMPT, &on_hf, 3);
        let (_, b) = generate_alone(&gguf, &PROMPT, &on_gguf, 3);
        assert!(max_diff(&b[0], &base[0]) > 1e-2, "rank {rank}: the adapter had no effect");
        for (x, y) in a.iter().zip(&b) {
            assert!(max_diff(x, y) < 1e-3, "rank {rank}: {}", max_diff(x, y));
        }
    }
}

#[test]
fn bad_models_and_adapters_are_clear_errors() {
    let f = Fixture::new();
    let missing = load_model(&f.dir.path().join("nope.gguf"), &Device::Cpu).unwrap_err();
    assert!(matches!(missing, MlError::NotFound { .. }), "{missing}");

    let good = f.tiny.write_gguf(&f.dir.path().join("good.gguf"), GgmlDType::Q4_0).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let truncated = f.dir.path().join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_model(&truncated, &Device::Cpu).unwrap_err();
    assert!(matches!(err, MlError::Corrupt { .. }), "{err}");
    let garbage = f.dir.path().join("garbage.gguf");
    std::fs::write(&garbage, b"this is not a model").unwrap();
    assert!(matches!(load_model(&garbage, &Device::Cpu).unwrap_err(), MlError::Corrupt { .. }));

    // A quantization the engine does not run (Q8_1 is only an activation format in GGML).
    let q8_1 = f.tiny.write_gguf(&f.dir.path().join("q8_1.gguf"), GgmlDType::Q8_1).unwrap();
    let err = load_model(&q8_1, &Device::Cpu).unwrap_err();
    assert!(matches!(err, MlError::Unsupported { .. }) && err.to_string().contains("Q8_1"), "{err}");

    // Another architecture in an otherwise valid file.
    let hf_dir = f.tiny.write_safetensors(&f.dir.path().join("hf")).unwrap();
    let config = std::fs::read_to_string(hf_dir.join("config.json")).unwrap();
    std::fs::write(hf_dir.join("config.json"), config.replace("\"llama\"", "\"gpt_neox\"")).unwrap();
    let err = load_model(&hf_dir, &Device::Cpu).unwrap_err();
    assert!(matches!(err, MlError::Unsupported { .. }) && err.to_string().contains("gpt_neox"), "{err}");

    // An adapter trained for a wider base.
    let model = f.gguf(GgmlDType::Q8_0);
    let mut wide = model.config().clone();
    wide.hidden_size = 96;
    let dir = write_peft_adapter(&f.dir.path().join("wide"), &wide, 4, &[Target::Q], 1, false).unwrap();
    let err = load_adapter_dir("wide", &dir, &model).unwrap_err();
    assert!(matches!(err, MlError::AdapterMismatch { .. }), "{err}");
    // A corrupt adapter file and a missing one.
    let dir = write_peft_adapter(&f.dir.path().join("bad"), model.config(), 4, &[Target::Q], 1, false).unwrap();
    std::fs::write(dir.join("adapter_model.safetensors"), b"\x10\x00\x00\x00\x00\x00\x00\x00{}").unwrap();
    assert!(matches!(load_adapter_dir("bad", &dir, &model).unwrap_err(), MlError::Corrupt { .. }));
    let err = load_adapter_dir("none", &f.dir.path().join("none"), &model).unwrap_err();
    assert!(matches!(err, MlError::NotFound { .. }), "{err}");

    // More tokens than the cache was sized for is an error, and the cache is unchanged.
    let mut cache = model.new_cache(4).unwrap();
    let err = model.logits_for(&PROMPT, &mut cache, &AdapterMix::default()).unwrap_err();
    assert!(matches!(err, MlError::ContextOverflow { .. }), "{err}");
    assert_eq!(cache.len(), 0);
    assert!(matches!(model.new_cache(100_000).unwrap_err(), MlError::ContextOverflow { .. }));
}

#[test]
fn tokenizer_from_gguf_matches_its_tokenizer_json() {
    let f = Fixture::new();
    let gguf = f.tiny.write_gguf(&f.dir.path().join("t.gguf"), GgmlDType::F32).unwrap();
    let (_, from_gguf) = load_model(&gguf, &Device::Cpu).unwrap();
    let hf = f.tiny.write_safetensors(&f.dir.path().join("hf")).unwrap();
    let (_, from_json) = load_model(&hf, &Device::Cpu).unwrap();
    let text = "<|im_start|>user\nthe tin 42 ate their hearts<|im_end|>\n";
    let ids = from_gguf.encode(text).unwrap();
    assert_eq!(ids, from_json.encode(text).unwrap());
    assert_eq!(ids[0], 262, "special token text maps to its id");
    assert!(ids.contains(&258), "merges apply: {ids:?}");
    assert_eq!(from_gguf.decode(&ids).unwrap(), "user\nthe tin 42 ate their hearts\n");
    assert_eq!(from_gguf.stop_ids(), &[263]);
    assert_eq!(from_gguf.chat_format(), Some(openledger_ml::ChatFormat::ChatMl));
}

/// Every value of every pair of `adapter` (its `A` then `B`, pair after pair), as f32.
fn adapter_values(adapter: &LoraAdapter) -> Vec<f32> {
    let as_f32 = |t: candle_core::Tensor| {
        t.to_dtype(candle_core::DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    adapter.pairs().flat_map(|(_, pair)| [as_f32(pair.a().unwrap()), as_f32(pair.b().unwrap())].concat()).collect()
}

/// Polls until `ready` holds (the panels are saved on a thread of their own), for at most a minute.
fn wait_for(what: &str, ready: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !ready() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn a_served_adapter_loads_again_from_its_saved_panels_while_they_are_sound_and_match_its_files() {
    use openledger_ml::adapters::load_adapter_dir_saving_panels as load_saving;
    use openledger_ml::adapters::{ADAPTER_PANELS, ADAPTER_PANELS_SETTLE, load_adapter_dir_as};
    use openledger_ml::lora::AdapterPrecision;
    let f = Fixture::new();
    let model = f.gguf(GgmlDType::Q8_0);
    let targets = [Target::Q, Target::V, Target::Down];
    let dir = write_peft_adapter(&f.dir.path().join("saved"), model.config(), 4, &targets, 7, false).unwrap();
    let panels = dir.join(ADAPTER_PANELS);
    // Weights written moments ago: not saved (the same size rewritten within the file system's
    // clock tick would keep the key).
    load_saving("saved", &dir, &model).unwrap();
    std::thread::sleep(ADAPTER_PANELS_SETTLE);
    assert!(!panels.exists());
    // Loaded for training or gradients (f32), or by a loader that does not own the directory
    // (the command line's, say), nothing is saved.
    load_adapter_dir("saved", &dir, &model).unwrap();
    load_adapter_dir_as("saved", &dir, &model, AdapterPrecision::Exact).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(!panels.exists());

    let built = adapter_values(&load_saving("saved", &dir, &model).unwrap());
    wait_for("the panels are saved", || panels.exists());
    let saved = std::fs::read(&panels).unwrap();
    assert_eq!(adapter_values(&load_saving("saved", &dir, &model).unwrap()), built);
    assert_eq!(adapter_values(&load_adapter_dir("saved", &dir, &model).unwrap()), built);

    // The next load reads them: a value changed in the file shows, and only that one.
    let last = saved.len() - 2;
    let mut tampered = saved.clone();
    tampered[last..].copy_from_slice(&half::f16::from_f32(1.5).to_le_bytes());
    std::fs::write(&panels, &tampered).unwrap();
    let read = adapter_values(&load_saving("saved", &dir, &model).unwrap());
    let changed: Vec<(f32, f32)> = built.iter().zip(&read).filter(|(a, b)| a != b).map(|(a, b)| (*a, *b)).collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(changed[0].1, 1.5);
    assert_eq!(adapter_values(&load_adapter_dir("saved", &dir, &model).unwrap()), read, "read by every loader");
    // Loaded in f32 (training, gradients), they are not read.
    let exact = adapter_values(&load_adapter_dir_as("saved", &dir, &model, AdapterPrecision::Exact).unwrap());
    assert_eq!(exact.iter().map(|v| half::f16::from_f32(*v).to_f32()).collect::<Vec<_>>(), built);
    // Nor with another adapter_config.json (then saved again for it).
    let config = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\n")).unwrap();
    assert_eq!(adapter_values(&load_saving("saved", &dir, &model).unwrap()), built);
    wait_for("the panels are saved for the new config", || std::fs::read(&panels).unwrap() != tampered);
    std::fs::write(&config, &text).unwrap();

    // A value that is not finite, or a short file: not used, the adapter built again from its
    // files, and the panels saved again.
    tampered[last..].copy_from_slice(&half::f16::NAN.to_le_bytes());
    std::fs::write(&panels, &tampered).unwrap();
    assert_eq!(adapter_values(&load_saving("saved", &dir, &model).unwrap()), built);
    wait_for("the panels are saved again", || std::fs::read(&panels).unwrap() == saved);
    std::fs::write(&panels, &saved[..saved.len() / 2]).unwrap();
    assert_eq!(adapter_values(&load_saving("saved", &dir, &model).unwrap()), built);
    wait_for("the panels are saved again", || std::fs::read(&panels).unwrap() == saved);

    // New weights in place (the same size): the saved panels are not theirs, and once the new
    // weights have settled, panels made from them replace the old.
    write_peft_adapter(&dir, model.config(), 4, &targets, 8, false).unwrap();
    std::thread::sleep(ADAPTER_PANELS_SETTLE);
    let other = write_peft_adapter(&f.dir.path().join("other"), model.config(), 4, &targets, 8, false).unwrap();
    let expected = adapter_values(&load_saving("other", &other, &model).unwrap());
    assert_ne!(expected, built);
    assert_eq!(adapter_values(&load_saving("saved", &dir, &model).unwrap()), expected);
    wait_for("the new weights' panels are saved", || std::fs::read(&panels).unwrap() != saved);
    assert_eq!(adapter_values(&load_saving("saved", &dir, &model).unwrap()), expected);
    // Nor for another base of the same shapes (a Hugging Face checkpoint, whose q/k rows are not
    // permuted for interleaved RoPE): built for it, as its exact values rounded to f16.
    let base = f.safetensors();
    let for_base = adapter_values(&load_saving("saved", &dir, &base).unwrap());
    let exact = adapter_values(&load_adapter_dir_as("saved", &dir, &base, AdapterPrecision::Exact).unwrap());
    let rounded: Vec<f32> = exact.iter().map(|v| half::f16::from_f32(*v).to_f32()).collect();
    assert_eq!(for_base, rounded);
    assert_ne!(for_base, expected);
}

/// A rank-16 adapter is served from 8-bit panels, saved and read back like f16 ones: the values
/// read are the values built; a scale made infinite in the file is not used (the adapter is
/// built again from its files, and its panels saved again).
#[test]
fn eight_bit_panels_are_saved_and_read_back_whole() {
    use openledger_ml::adapters::load_adapter_dir_saving_panels as load_saving;
    use openledger_ml::adapters::{ADAPTER_PANELS, ADAPTER_PANELS_SETTLE};
    let f = Fixture::new();
    let model = f.gguf(GgmlDType::Q8_0);
    let targets = [Target::Q, Target::K, Target::V, Target::O];
    let dir = write_peft_adapter(&f.dir.path().join("q8"), model.config(), 16, &targets, 3, false).unwrap();
    let panels = dir.join(ADAPTER_PANELS);
    std::thread::sleep(ADAPTER_PANELS_SETTLE);
    let adapter = load_saving("q8", &dir, &model).unwrap();
    let built = adapter_values(&adapter);
    let f16_bytes = adapter.pairs().map(|(_, p)| 2 * (p.a().unwrap().elem_count() + p.b().unwrap().elem_count())).sum();
    assert!(adapter.size_bytes() < f16_bytes, "{} bytes held, {f16_bytes} in f16", adapter.size_bytes());
    wait_for("the panels are saved", || panels.exists());
    let saved = std::fs::read(&panels).unwrap();
    assert!(saved.len() < f16_bytes);
    assert_eq!(adapter_values(&load_adapter_dir("q8", &dir, &model).unwrap()), built);
    // The first matrix's first scale (after its 64-byte factor header): infinite.
    let first_scale = saved.len() - adapter.size_bytes() + 64;
    let mut tampered = saved.clone();
    tampered[first_scale..first_scale + 2].copy_from_slice(&half::f16::INFINITY.to_le_bytes());
    std::fs::write(&panels, &tampered).unwrap();
    assert_eq!(adapter_values(&load_saving("q8", &dir, &model).unwrap()), built);
    wait_for("the panels are saved again", || std::fs::read(&panels).unwrap() == saved);
}
