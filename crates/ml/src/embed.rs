//! Sentence embeddings: a BERT encoder (candle-transformers' implementation) whose token states
//! are mean-pooled over the real tokens and L2-normalised, as sentence-transformers does for
//! all-MiniLM-L6-v2. Cosine similarity of two embeddings is then their dot product.
//!
//! Files: a directory with `config.json`, `tokenizer.json` and `model.safetensors`
//! (`scripts/fetch-models.sh minilm` puts all-MiniLM-L6-v2 there; with internet,
//! `Source::from_str(MINILM_HUB)?.resolve_model()` downloads the same three files).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};

use crate::error::{MlError, Result};

/// The Hugging Face repository of the reference sentence encoder.
pub const MINILM_HUB: &str = "hf://sentence-transformers/all-MiniLM-L6-v2";

/// Longest input in tokens (all-MiniLM-L6-v2 was trained on 256; longer text is cut).
pub const MAX_SENTENCE_TOKENS: usize = 256;

/// Sentences encoded per forward pass: bounds the activations (batch × tokens × hidden).
pub const EMBED_BATCH_SENTENCES: usize = 32;

/// Where `scripts/fetch-models.sh minilm` puts all-MiniLM-L6-v2 (`$OPENLEDGER_MODELS_DIR`,
/// default `/var/tmp/openledger-models`).
pub fn minilm_path() -> PathBuf {
    let dir = std::env::var("OPENLEDGER_MODELS_DIR").unwrap_or_else(|_| "/var/tmp/openledger-models".into());
    PathBuf::from(dir).join("all-MiniLM-L6-v2")
}

/// A BERT sentence encoder with its WordPiece tokenizer.
pub struct SentenceEncoder {
    model: BertModel,
    tokenizer: tokenizers::Tokenizer,
    hidden: usize,
    device: Device,
}

impl SentenceEncoder {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from `dir`.
    pub fn from_dir(dir: &Path, device: &Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| MlError::io(&config_path, e))?;
        let config: Config = serde_json::from_str(&text).map_err(|e| MlError::corrupt("BERT config", e))?;
        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.exists() {
            return Err(MlError::NotFound { what: "tokenizer", path: tokenizer_path.display().to_string() });
        }
        let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| MlError::corrupt("tokenizer", format!("{}: {e}", tokenizer_path.display())))?;
        let weights = dir.join("model.safetensors");
        if !weights.exists() {
            return Err(MlError::NotFound { what: "model", path: weights.display().to_string() });
        }
        // Read rather than mapped: the crate has no unsafe code, and the file is 90 MB.
        let tensors = crate::model::read_safetensors(&weights, device)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        Self::new(vb, &config, tokenizer)
    }

    /// An encoder from weights already in a `VarBuilder` (HF BERT tensor names).
    pub fn new(vb: VarBuilder, config: &Config, mut tokenizer: tokenizers::Tokenizer) -> Result<Self> {
        let device = vb.device().clone();
        let model = BertModel::load(vb, config)?;
        let limit = MAX_SENTENCE_TOKENS.min(config.max_position_embeddings);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams { max_length: limit, ..Default::default() }))
            .map_err(|e| MlError::corrupt("tokenizer", e))?;
        tokenizer.with_padding(Some(tokenizers::PaddingParams {
            strategy: tokenizers::PaddingStrategy::BatchLongest,
            pad_id: config.pad_token_id as u32,
            ..Default::default()
        }));
        Ok(Self { model, tokenizer, hidden: config.hidden_size, device })
    }

    /// The embedding width.
    pub fn dim(&self) -> usize {
        self.hidden
    }

    /// One unit-length embedding per text, in order.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(EMBED_BATCH_SENTENCES) {
            out.extend(self.embed_batch(chunk)?);
        }
        Ok(out)
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let inputs: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
        let encodings = self
            .tokenizer
            .encode_batch(inputs, true)
            .map_err(|e| MlError::InvalidRequest(format!("tokenizing: {e}")))?;
        let rows = |f: &dyn Fn(&tokenizers::Encoding) -> &[u32]| -> Result<Tensor> {
            let rows: Vec<Tensor> =
                encodings.iter().map(|e| Tensor::new(f(e), &self.device)).collect::<candle_core::Result<_>>()?;
            Ok(Tensor::stack(&rows, 0)?)
        };
        let ids = rows(&|e| e.get_ids())?;
        let type_ids = rows(&|e| e.get_type_ids())?;
        let mask = rows(&|e| e.get_attention_mask())?;
        let states = self.model.forward(&ids, &type_ids, Some(&mask))?; // (batch, tokens, hidden)
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (batch, tokens, 1)
        let summed = states.broadcast_mul(&mask)?.sum(1)?;
        let counts = mask.sum(1)?.clamp(1e-9, f32::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f32::MAX)?;
        Ok(mean.broadcast_div(&norms)?.to_vec2()?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use candle_transformers::models::bert::HiddenAct;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;

    const WORDS: [&str; 10] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "cat", "sat", "on", "the", "mat"];

    fn tiny_config() -> Config {
        Config {
            vocab_size: WORDS.len(),
            hidden_size: 16,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            intermediate_size: 32,
            hidden_act: HiddenAct::Gelu,
            max_position_embeddings: 32,
            ..Config::default()
        }
    }

    /// A word-level tokenizer over `WORDS` that adds `[CLS]`/`[SEP]` as BERT's does.
    fn tiny_tokenizer() -> tokenizers::Tokenizer {
        let vocab: serde_json::Map<String, serde_json::Value> =
            WORDS.iter().enumerate().map(|(i, w)| (w.to_string(), i.into())).collect();
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": {"type": "Lowercase"},
            "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
            "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"},
        });
        json.to_string().parse().unwrap()
    }

    /// Random weights under every name candle's BERT loads.
    fn tiny_encoder(seed: u64) -> SentenceEncoder {
        let c = tiny_config();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut random = |shape: &[usize]| {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|_| rng.random_range(-0.3..0.3)).collect();
            Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
        };
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        let mut add = |name: String, shape: &[usize]| {
            tensors.insert(name, random(shape));
        };
        add("embeddings.word_embeddings.weight".into(), &[c.vocab_size, h]);
        add("embeddings.position_embeddings.weight".into(), &[c.max_position_embeddings, h]);
        add("embeddings.token_type_embeddings.weight".into(), &[c.type_vocab_size, h]);
        let mut linear = |prefix: String, out_f: usize, in_f: usize| {
            add(format!("{prefix}.weight"), &[out_f, in_f]);
            add(format!("{prefix}.bias"), &[out_f]);
        };
        for l in 0..c.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            for m in ["query", "key", "value"] {
                linear(format!("{p}.attention.self.{m}"), h, h);
            }
            linear(format!("{p}.attention.output.dense"), h, h);
            linear(format!("{p}.intermediate.dense"), i, h);
            linear(format!("{p}.output.dense"), h, i);
        }
        let mut norms = vec!["embeddings.LayerNorm".to_string()];
        for l in 0..c.num_hidden_layers {
            norms.push(format!("encoder.layer.{l}.attention.output.LayerNorm"));
            norms.push(format!("encoder.layer.{l}.output.LayerNorm"));
        }
        for n in norms {
            tensors.insert(format!("{n}.weight"), Tensor::ones(h, DType::F32, &Device::Cpu).unwrap());
            tensors.insert(format!("{n}.bias"), Tensor::zeros(h, DType::F32, &Device::Cpu).unwrap());
        }
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        SentenceEncoder::new(vb, &c, tiny_tokenizer()).unwrap()
    }

    fn dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn embeddings_have_unit_norm_and_do_not_depend_on_the_batch() {
        let encoder = tiny_encoder(3);
        let texts = ["a cat sat", "the cat sat on the mat", "mat"];
        let together = encoder.embed(&texts).unwrap();
        assert_eq!(together.len(), 3);
        for e in &together {
            assert_eq!(e.len(), encoder.dim());
            assert!((dot(e, e) - 1.0).abs() < 1e-4, "norm² {}", dot(e, e));
        }
        // Padding to the longest text of a batch must not change a shorter text's embedding.
        let alone = encoder.embed(&texts[..1]).unwrap();
        for (x, y) in alone[0].iter().zip(&together[0]) {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
        assert_eq!(tiny_encoder(3).embed(&texts).unwrap(), together, "same weights, same embeddings");
        assert!(dot(&together[0], &together[1]) < 0.9999, "different texts, different embeddings");
    }

    #[test]
    fn minilm_puts_paraphrases_closer_than_unrelated_sentences() {
        let dir = minilm_path();
        if !dir.join("model.safetensors").exists() {
            eprintln!("skipped: no all-MiniLM-L6-v2 at {} (run scripts/fetch-models.sh minilm)", dir.display());
            return;
        }
        let encoder = SentenceEncoder::from_dir(&dir, &Device::Cpu).unwrap();
        let e = encoder.embed(&["a cat sat on the mat", "a kitten sat on a rug", "quarterly revenue rose"]).unwrap();
        assert_eq!(encoder.dim(), 384);
        let (near, far) = (dot(&e[0], &e[1]), dot(&e[0], &e[2]));
        assert!(near > far + 0.2, "paraphrase {near}, unrelated {far}");
    }
}
