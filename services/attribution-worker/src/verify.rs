//! Checking an attribution from outside: the receipt is canonical and hashes to what the
//! worker published, the inputs hash to what the receipt names, the weights answered are the
//! receipt's, recomputing them from the version gives the same weights, the receipt is in its
//! batch under the root the journal recorded. Each check names the first difference it finds;
//! `openledger attribution verify` runs them in this order and stops at the first.

use openledger_core::{ContentHash, MerkleProof};

use crate::{
    attribute::{Inputs, attribute_text, receipt_weights},
    gradients::AdapterGradients,
    indexes::Version,
    receipt::{Receipt, ReceiptWeight, receipt_hash, token_hash},
};

/// The receipt's bytes are canonical and hash to `published`.
pub fn check_receipt(bytes: &[u8], published: &ContentHash) -> Result<Receipt, String> {
    let receipt = Receipt::parse(bytes)?;
    let hash = receipt_hash(bytes);
    if hash != *published {
        return Err(format!("the receipt hashes to {hash}, the attribution names {published}"));
    }
    Ok(receipt)
}

/// The inputs are what the receipt hashed.
pub fn check_inputs(receipt: &Receipt, inputs: &Inputs) -> Result<(), String> {
    if token_hash(&inputs.prompt_token_ids) != receipt.prompt_tokens {
        return Err("the prompt's tokens are not the ones the receipt hashed".into());
    }
    let completions: Vec<String> = inputs.completions.iter().map(|c| token_hash(&c.token_ids)).collect();
    if completions != receipt.completion_tokens {
        return Err("the completion's tokens are not the ones the receipt hashed".into());
    }
    if ContentHash::of(inputs.completion_text().as_bytes()).to_hex() != receipt.completion_text {
        return Err("the completion's text is not the one the receipt hashed".into());
    }
    Ok(())
}

/// The weights an answer shows are the receipt's.
pub fn check_answered(receipt: &Receipt, answered: &[ReceiptWeight]) -> Result<(), String> {
    first_weight_difference(&receipt.weights, answered)
        .map_or(Ok(()), |d| Err(format!("the answer's weights differ from the receipt's: {d}")))
}

/// Recomputes the weights from the version and compares them with the receipt's; a receipt
/// computed with influence needs [`check_recomputed_with`] and the adapter's gradient index.
pub fn check_recomputed(receipt: &Receipt, inputs: &Inputs, version: &Version) -> Result<(), String> {
    check_recomputed_with(receipt, inputs, version, None)
}

/// Recomputes the weights from the version, and from the adapter's gradient index when the
/// receipt names one (`gradients`: that index, opened with `gradients::open_gradients`), and
/// compares them with the receipt's.
pub fn check_recomputed_with(
    receipt: &Receipt,
    inputs: &Inputs,
    version: &Version,
    gradients: Option<&AdapterGradients>,
) -> Result<(), String> {
    if version.snapshot_root.to_hex() != receipt.snapshot_root {
        return Err(format!(
            "the local version's root is {}, the receipt names {}",
            version.snapshot_root, receipt.snapshot_root
        ));
    }
    if version.files_hash.to_hex() != receipt.span_index {
        return Err(format!(
            "the local span index hashes to {}, the receipt names {}: rebuild it from the version",
            version.files_hash, receipt.span_index
        ));
    }
    let influence = match (receipt.gradient_index.is_empty(), gradients) {
        (true, _) => None,
        (false, None) => {
            return Err(format!(
                "the receipt was computed with the gradient index {} of adapter {:?}: give that index to recompute it",
                receipt.gradient_index, receipt.adapter_id
            ));
        }
        (false, Some(gradients)) => {
            if gradients.files_hash.to_hex() != receipt.gradient_index {
                return Err(format!(
                    "the local gradient index hashes to {}, the receipt names {}: rebuild it for the adapter",
                    gradients.files_hash, receipt.gradient_index
                ));
            }
            if gradients.adapter_files != receipt.adapter_files {
                return Err("the local adapter's files are not the ones the receipt names".into());
            }
            let estimator = receipt.estimator.parse().map_err(|e| format!("the receipt's estimator: {e}"))?;
            Some((gradients, estimator))
        }
    };
    let explained = attribute_text(version, inputs, &receipt.parameters, influence).map_err(|e| e.message)?;
    let recomputed = receipt_weights(version, &explained);
    first_weight_difference(&receipt.weights, &recomputed)
        .map_or(Ok(()), |d| Err(format!("recomputing gives other weights: {d}")))
}

/// The receipt is leaf `proof.leaf_index` of the batch whose root the journal recorded.
pub fn check_inclusion(
    receipt_hash: &ContentHash,
    proof: &MerkleProof,
    recorded_root: &ContentHash,
) -> Result<(), String> {
    if proof.verify(receipt_hash, recorded_root) {
        Ok(())
    } else {
        Err(format!(
            "the receipt is not leaf {} of {} under the root {recorded_root} the journal recorded",
            proof.leaf_index, proof.tree_size
        ))
    }
}

/// The first difference between two weight lists, in words.
fn first_weight_difference(expected: &[ReceiptWeight], actual: &[ReceiptWeight]) -> Option<String> {
    for (index, (e, a)) in expected.iter().zip(actual).enumerate() {
        if e != a {
            return Some(format!(
                "weight {index}: expected {} of {} paid to {} ({} ppb), got {} of {} paid to {} ({} ppb)",
                e.contribution,
                e.contributor,
                e.account,
                e.weight_ppb,
                a.contribution,
                a.contributor,
                a.account,
                a.weight_ppb
            ));
        }
    }
    (expected.len() != actual.len()).then(|| format!("{} weights expected, {} found", expected.len(), actual.len()))
}
