//! The probe side of a score: the gradient of one (prompt, completion)'s loss under the
//! index's adapter and projection, and the ranking of the scores it gives.

use openledger_ml::train::data::Tokenize;
use openledger_ml::train::grads::GradientProbe;
use openledger_ml::{ChatMessage, Tokenizer};

use super::GradientSet;
use crate::blend::RecordScore;
use crate::{AttributionError, Result};

/// Longest completion a probe gradient is computed on, in tokens: a 64–512-token answer is
/// the use; the backward pass's memory grows with the length.
pub const MAX_COMPLETION_TOKENS: usize = 1024;
/// Longest prompt kept, in tokens (its beginning is dropped beyond, as in training).
pub const MAX_PROMPT_TOKENS: usize = 2048;

/// The gradient of the mean loss over `completion`'s tokens (the prompt is context only), one
/// vector per layer, in the layout of `probe`'s gradient index. With a prompt, it is given as
/// a user message in the model's chat format (as training formats instruction records).
pub fn probe_gradient(
    probe: &GradientProbe,
    tokenizer: &Tokenizer,
    prompt: Option<&str>,
    completion: &str,
) -> Result<Vec<Vec<f32>>> {
    let completion_ids = tokenizer.encode_continuation(completion)?;
    if completion_ids.is_empty() {
        return Err(AttributionError::invalid("the completion is empty: there is nothing to attribute"));
    }
    if completion_ids.len() > MAX_COMPLETION_TOKENS {
        return Err(AttributionError::invalid(format!(
            "the completion is {} tokens; attribute at most {MAX_COMPLETION_TOKENS} (split a longer output)",
            completion_ids.len()
        )));
    }
    let mut tokens = match prompt {
        Some(prompt) => {
            let tokenize = Tokenize { tokenizer, max_tokens: MAX_PROMPT_TOKENS };
            let mut ids = tokenize.prompt(&[ChatMessage::new("user", prompt)])?;
            if ids.len() > MAX_PROMPT_TOKENS {
                ids.drain(..ids.len() - MAX_PROMPT_TOKENS);
            }
            ids
        }
        // Free text: the first token has nothing before it to be predicted from, unless the
        // tokenizer starts sequences with a BOS token.
        None => tokenizer.encode("")?,
    };
    let first_scored = tokens.len().max(1);
    tokens.extend(completion_ids);
    if tokens.len() <= first_scored {
        return Err(AttributionError::invalid("the completion is one token with no context: nothing to score"));
    }
    let mut grads = probe.gradients(&[(&tokens, first_scored)])?;
    grads.pop().ok_or_else(|| AttributionError::invalid("the gradient pass returned no row"))
}

/// The `k` records with the largest positive scores, best first (ties: index order). Only a
/// positive influence is ever paid; negative scores stay with the caller for quality.
pub fn top_contributions(index: &GradientSet, scores: &[f64], k: usize) -> Result<Vec<RecordScore>> {
    if scores.len() != index.len() {
        return Err(AttributionError::invalid(format!("{} scores for {} records", scores.len(), index.len())));
    }
    let mut positive: Vec<usize> = (0..scores.len()).filter(|&i| scores[i] > 0.0).collect();
    positive.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    positive.truncate(k);
    Ok(positive.into_iter().map(|i| RecordScore { record: index.records[i], score: scores[i] }).collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use openledger_core::ContentHash;

    use super::*;

    #[test]
    fn only_positive_scores_are_ranked_best_first_with_ties_in_index_order() {
        let records: Vec<ContentHash> = (0..5u8).map(|i| ContentHash::of(&[i])).collect();
        let set = GradientSet::new(records.clone(), vec![vec![vec![0.0]]; 5]).unwrap();
        let top = top_contributions(&set, &[0.5, -2.0, 3.0, 0.5, 0.0], 10).unwrap();
        let got: Vec<(ContentHash, f64)> = top.iter().map(|s| (s.record, s.score)).collect();
        assert_eq!(got, [(records[2], 3.0), (records[0], 0.5), (records[3], 0.5)]);
        assert_eq!(top_contributions(&set, &[0.5, -2.0, 3.0, 0.5, 0.0], 1).unwrap().len(), 1);
        assert!(top_contributions(&set, &[1.0], 1).is_err());
    }
}
