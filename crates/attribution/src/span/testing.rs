//! Test fixtures: a word-level tokenizer (one token per word, so spans read as words) and
//! corpora built from plain strings.

use std::path::Path;

use openledger_core::record::record_hash;
use openledger_ml::Tokenizer;
use openledger_ml::train::data::RecordKind;

use crate::corpus::{Corpus, CorpusRecord};

/// A word-level tokenizer knowing `a`..`z`, `0`..`299` and `extra`, saved into `dir`.
pub fn word_tokenizer(dir: &Path, extra: &[&str]) -> Tokenizer {
    let mut vocab = serde_json::Map::new();
    let words = std::iter::once("[UNK]".to_string())
        .chain(('a'..='z').map(String::from))
        .chain((0..300).map(|n| n.to_string()))
        .chain(extra.iter().map(|w| w.to_string()));
    for (id, word) in words.enumerate() {
        vocab.insert(word, id.into());
    }
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"},
    });
    std::fs::create_dir_all(dir).expect("tokenizer dir");
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, json.to_string()).expect("tokenizer.json");
    Tokenizer::from_file(&path).expect("word tokenizer loads")
}

/// A corpus of `texts` in order, each its own record and contribution.
pub fn corpus(texts: &[&str]) -> Corpus {
    let records = texts
        .iter()
        .enumerate()
        .map(|(i, text)| CorpusRecord {
            position: i as u64 * 10,
            hash: record_hash(&[("text", text), ("n", &i.to_string())]),
            contribution: format!("c{i}"),
            contributor: format!("{i:02x}"),
            text: text.to_string(),
        })
        .collect();
    Corpus::new("test", RecordKind::Text, records).expect("non-empty corpus")
}
