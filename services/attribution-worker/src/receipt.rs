//! The canonical receipt of an attribution: the hashes of everything the weights were computed
//! from (the inference, its adapter's files, the Datanet version, the index files, the method
//! and its parameters) and the weight vector itself. Its bytes are serde_json's rendering of
//! [`Receipt`] (fields in declaration order, no maps, integers as JSON numbers or decimal
//! strings), its hash BLAKE3 of [`RECEIPT_DOMAIN`] then those bytes; that hash is the receipt's
//! leaf in its batch's RFC 9162 Merkle tree, whose root the ledger's journal records.

use openledger_core::ContentHash;
use serde::{Deserialize, Serialize};

/// The receipt format's name, the first field of every receipt.
pub const RECEIPT_FORMAT: &str = "openledger-attribution-receipt/1";
/// Prefix of the receipt hash (domain separation).
pub const RECEIPT_DOMAIN: &[u8] = b"openledger/attribution-receipt/v1\n";

/// What one contribution is paid (parts per billion of the contributors' share).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptWeight {
    pub contribution: String,
    /// Public key, hex.
    pub contributor: String,
    /// The ledger account paid, decimal.
    pub account: String,
    pub weight_ppb: u64,
}

/// The span parameters and credit rule the weights follow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReceiptParameters {
    pub min_span_tokens: usize,
    pub max_occurrences: u64,
    pub max_spans_per_token: f64,
    pub max_completion_tokens: usize,
    pub near_copy_jaccard: f64,
}

impl ReceiptParameters {
    pub fn of(
        span: &openledger_attribution::span::SpanParams,
        credit: &openledger_attribution::credit::CreditParams,
    ) -> Self {
        Self {
            min_span_tokens: span.min_span_tokens,
            max_occurrences: span.max_occurrences,
            max_spans_per_token: span.max_spans_per_token,
            max_completion_tokens: span.max_completion_tokens,
            near_copy_jaccard: credit.near_copy_jaccard,
        }
    }

    pub fn span_params(&self) -> openledger_attribution::span::SpanParams {
        openledger_attribution::span::SpanParams {
            min_span_tokens: self.min_span_tokens,
            max_occurrences: self.max_occurrences,
            max_spans_per_token: self.max_spans_per_token,
            max_completion_tokens: self.max_completion_tokens,
        }
    }

    pub fn credit_params(&self) -> openledger_attribution::credit::CreditParams {
        openledger_attribution::credit::CreditParams { near_copy_jaccard: self.near_copy_jaccard }
    }
}

/// One attribution's receipt (see the module doc).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub format: String,
    pub inference_id: String,
    /// BLAKE3 of the base model file, hex.
    pub base_model_hash: String,
    /// [`token_hash`] of the prompt's token ids.
    pub prompt_tokens: String,
    /// [`token_hash`] of each choice's token ids, in choice order.
    pub completion_tokens: Vec<String>,
    /// BLAKE3 of the text attributed (the choices' texts joined by [`CHOICE_SEPARATOR`]), hex.
    pub completion_text: String,
    /// Empty when the base model alone answered.
    pub adapter_id: String,
    /// BLAKE3 of adapter_config.json and adapter_model.safetensors, hex.
    pub adapter_files: Vec<String>,
    pub datanet_id: String,
    pub snapshot_id: String,
    /// The version's Merkle root, hex.
    pub snapshot_root: String,
    /// BLAKE3 over the span index's files (see `indexes::files_hash`), hex; empty without one.
    pub span_index: String,
    /// BLAKE3 over the adapter's gradient index files (see `indexes::files_hash`), hex; empty
    /// when the weights were computed span-only.
    pub gradient_index: String,
    /// The influence estimator (`openledger_attribution::influence::Estimator`'s name) the
    /// gradient index was read with; empty span-only.
    pub estimator: String,
    pub method: String,
    pub method_version: String,
    pub parameters: ReceiptParameters,
    /// Sorted by contribution id; they sum to 10⁹ or are empty.
    pub weights: Vec<ReceiptWeight>,
    /// Decimal; empty when the base model alone answered.
    pub model_owner_account: String,
    /// `complete`, or `partial` when the index was not ready in time.
    pub completeness: String,
}

/// Between the texts of several choices in the text attributed.
pub const CHOICE_SEPARATOR: &str = "\n\n";

impl Receipt {
    /// The canonical bytes (what the hash covers).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a receipt always serialises")
    }

    pub fn hash(&self) -> ContentHash {
        receipt_hash(&self.canonical_bytes())
    }

    /// Parses canonical bytes, checking they are exactly what this receipt renders to.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let receipt: Self = serde_json::from_slice(bytes).map_err(|e| format!("the receipt does not parse: {e}"))?;
        if receipt.format != RECEIPT_FORMAT {
            return Err(format!("receipt format {:?}, expected {RECEIPT_FORMAT:?}", receipt.format));
        }
        if receipt.canonical_bytes() != bytes {
            return Err("the receipt's bytes are not in canonical form".into());
        }
        Ok(receipt)
    }
}

/// The hash of a receipt's canonical bytes.
pub fn receipt_hash(bytes: &[u8]) -> ContentHash {
    ContentHash::of_parts(&[RECEIPT_DOMAIN, bytes])
}

/// BLAKE3 of token ids as 4-byte little-endian integers, hex.
pub fn token_hash(tokens: &[u32]) -> String {
    let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    ContentHash::of(&bytes).to_hex()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn receipt() -> Receipt {
        Receipt {
            format: RECEIPT_FORMAT.into(),
            inference_id: "inf-1".into(),
            base_model_hash: "00".repeat(32),
            prompt_tokens: token_hash(&[1, 2, 3]),
            completion_tokens: vec![token_hash(&[4, 5])],
            completion_text: ContentHash::of(b"hello").to_hex(),
            adapter_id: "ft:a".into(),
            adapter_files: vec![],
            datanet_id: "d".into(),
            snapshot_id: "s".into(),
            snapshot_root: "11".repeat(32),
            span_index: "22".repeat(32),
            gradient_index: String::new(),
            estimator: String::new(),
            method: "span_match".into(),
            method_version: "openledger-attribution/1".into(),
            parameters: ReceiptParameters::of(&Default::default(), &Default::default()),
            weights: vec![ReceiptWeight {
                contribution: "c1".into(),
                contributor: "ab".into(),
                account: "70000".into(),
                weight_ppb: 1_000_000_000,
            }],
            model_owner_account: "65536".into(),
            completeness: "complete".into(),
        }
    }

    #[test]
    fn a_receipt_round_trips_and_any_change_changes_its_hash() {
        let r = receipt();
        let bytes = r.canonical_bytes();
        assert_eq!(Receipt::parse(&bytes).unwrap(), r);
        let mut other = r.clone();
        other.weights[0].weight_ppb -= 1;
        assert_ne!(other.hash(), r.hash());
        // Reformatted JSON with the same content is not canonical.
        let pretty = serde_json::to_vec_pretty(&r).unwrap();
        assert!(Receipt::parse(&pretty).unwrap_err().contains("canonical"));
    }
}
