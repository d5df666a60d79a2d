//! SmolLM2-135M-Instruct Q4_1 against llama.cpp's own logits (crates/ml/reference).

use std::path::PathBuf;

use candle_core::Device;
use openledger_ml::lora::AdapterMix;
use openledger_ml::{ChatMessage, load_model};
use serde_json::Value;

pub fn smollm2_path() -> PathBuf {
    let path = openledger_ml::testing::smollm2_path();
    assert!(path.exists(), "{} is missing: run scripts/fetch-models.sh smollm2", path.display());
    path
}

/// Teacher-forced: feed llama.cpp's own greedy tokens, and at every step compare our top-1 with
/// theirs and our logits of their top-5 tokens with theirs (log-softmax, so a shift is free).
#[test]
fn smollm2_q4_1_agrees_with_llama_cpp() {
    let reference: Value = serde_json::from_str(include_str!("../../reference/smollm2_q4_1_reference.json")).unwrap();
    let (model, tokenizer) = load_model(&smollm2_path(), &Device::Cpu).unwrap();
    let none = AdapterMix::default();
    let (mut steps, mut agree, mut worst) = (0, 0, 0f32);
    for prompt in reference["prompts"].as_array().unwrap() {
        let expected: Vec<u32> = serde_json::from_value(prompt["prompt_tokens"].clone()).unwrap();
        let text = prompt["text"].as_str().unwrap();
        assert_eq!(tokenizer.encode(text).unwrap(), expected, "tokenizer differs on {text:?}");
        if prompt["kind"] == "chat" {
            let user = text.split('\n').nth(1).unwrap().trim_end_matches("<|im_end|>");
            assert_eq!(tokenizer.encode_chat(&[ChatMessage::new("user", user)]).unwrap(), expected);
        }
        let mut cache = model.new_cache(expected.len() + 40).unwrap();
        let mut logits = model.logits_for(&expected, &mut cache, &none).unwrap();
        for step in prompt["steps"].as_array().unwrap() {
            let token = step["token"].as_u64().unwrap() as u32;
            let ours = openledger_ml::model::argmax(&logits);
            steps += 1;
            agree += usize::from(ours == token);
            let our_lse = log_sum_exp(&logits);
            let their_lse = step["logsumexp"].as_f64().unwrap() as f32;
            for pair in step["top"].as_array().unwrap() {
                let id = pair[0].as_u64().unwrap() as usize;
                let theirs = pair[1].as_f64().unwrap() as f32 - their_lse;
                worst = worst.max((logits[id] - our_lse - theirs).abs());
            }
            logits = model.logits_for(&[token], &mut cache, &none).unwrap();
        }
    }
    eprintln!("top-1 agreement {agree}/{steps}, worst log-prob difference on llama.cpp's top-5: {worst:.3}");
    assert!(agree * 100 >= steps * 95, "top-1 agreement {agree}/{steps} is under 95%");
    assert!(worst < 1.0, "log-probabilities differ by up to {worst}");
}

fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max + logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln()
}
