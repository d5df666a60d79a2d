//! One attribution vector per output: span evidence and influence scores blended into weights
//! per contribution in parts per billion, deterministic to the byte for the same inputs.
//! (Rule and rounding: see [`blend`].)

use openledger_core::ContentHash;
use serde::{Deserialize, Serialize};

/// One maximal span of an output found verbatim in the corpus, credited to one record (the
/// first accepted record that contains it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpanEvidence {
    /// Byte offsets of the span in the output text.
    pub start: usize,
    pub end: usize,
    /// Its length in tokens of the index's tokenizer.
    pub tokens: usize,
    /// Occurrences in the whole corpus.
    pub occurrences: u64,
    /// The record credited: the first accepted one that contains the span.
    pub record: ContentHash,
    /// Every record that contains it, in corpus order (at most a documented number).
    pub records: Vec<ContentHash>,
}

/// An influence score of one training record on an output (positive: it helped).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordScore {
    pub record: ContentHash,
    pub score: f64,
}

/// What one contribution is paid for one output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContributionWeight {
    pub contribution: String,
    /// Public key, hex.
    pub contributor: String,
    /// Parts per billion of the contributors' share; the weights of an output sum to 10⁹.
    pub weight_ppb: u64,
}
