//! One output attributed end to end: the span index and (when the adapter has one) the
//! gradient index of a version, the credit groups of its records, and the blend. This is what
//! the CLI's `score` runs and what the attribution-worker will run per paid inference.

use std::collections::HashMap;

use openledger_core::ContentHash;
use openledger_ml::Tokenizer;
use openledger_ml::train::grads::GradientProbe;

use crate::blend::{Attribution, Evidence, RecordScore, blend};
use crate::corpus::Corpus;
use crate::credit::CreditGroups;
use crate::influence::{Estimator, GradientSet, probe_gradient, scores, top_contributions};
use crate::span::{SpanIndex, SpanParams};
use crate::{AttributionError, Result};

/// The influence side: an adapter's gradients and the probe that computes an output's.
pub struct Influence<'a> {
    pub gradients: &'a GradientSet,
    pub probe: &'a GradientProbe,
    pub estimator: Estimator,
}

/// Everything an output is attributed against.
pub struct Attributor<'a> {
    pub corpus: &'a Corpus,
    pub groups: &'a CreditGroups,
    pub tokenizer: &'a Tokenizer,
    pub spans: &'a SpanIndex,
    pub span_params: SpanParams,
    /// `None`: span-only (the adapter has no gradient index), and the result says so.
    pub influence: Option<Influence<'a>>,
}

/// An attribution with the records that explain it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Explained {
    pub attribution: Attribution,
    /// The most helpful records by influence (after the credit rule), best first.
    pub top_records: Vec<RecordScore>,
}

/// Most records listed as the top influences of one output.
pub const TOP_RECORDS: usize = 10;

impl Attributor<'_> {
    /// Attributes `completion` (given after `prompt`, when there is one).
    pub fn attribute(&self, prompt: Option<&str>, completion: &str) -> Result<Explained> {
        if self.groups.len() != self.corpus.records.len() {
            return Err(AttributionError::invalid("the credit groups were built for another corpus"));
        }
        let spans = self.spans.trace(self.tokenizer, completion, &self.span_params)?;
        let (influence, top_records) = match &self.influence {
            Some(influence) => {
                let (per_record, top) = self.influence_scores(influence, prompt, completion)?;
                (Some(per_record), top)
            }
            None => (None, Vec::new()),
        };
        let evidence = Evidence {
            corpus: self.corpus,
            groups: self.groups,
            output_bytes: completion.len(),
            spans: &spans,
            influence: influence.as_deref(),
        };
        Ok(Explained { attribution: blend(&evidence)?, top_records })
    }

    /// Scores in corpus order (records the index lacks score 0) and the top records after the
    /// credit rule.
    fn influence_scores(
        &self,
        influence: &Influence<'_>,
        prompt: Option<&str>,
        completion: &str,
    ) -> Result<(Vec<f64>, Vec<RecordScore>)> {
        let gradient = probe_gradient(influence.probe, self.tokenizer, prompt, completion)?;
        let by_index = scores(influence.gradients, &gradient, influence.estimator)?;
        let row_of: HashMap<ContentHash, usize> =
            influence.gradients.records.iter().enumerate().map(|(row, hash)| (*hash, row)).collect();
        let per_record: Vec<f64> =
            self.corpus.records.iter().map(|r| row_of.get(&r.hash).map_or(0.0, |&row| by_index[row])).collect();
        let credited = self.groups.apply(&per_record)?;
        let mut by_row = vec![0.0f64; influence.gradients.len()];
        for (record, score) in self.corpus.records.iter().zip(&credited) {
            if let Some(&row) = row_of.get(&record.hash) {
                by_row[row] = by_row[row].max(*score);
            }
        }
        let top = top_contributions(influence.gradients, &by_row, TOP_RECORDS)?;
        Ok((per_record, top))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::blend::{Method, PPB};
    use crate::credit::CreditParams;
    use crate::span::testing::{corpus, word_tokenizer};

    /// Eight or more quoted tokens of one record: that record's contribution is paid in full,
    /// span-only since there is no gradient index, and a later copy of it earns nothing.
    #[test]
    fn a_verbatim_quote_of_eight_tokens_pays_its_first_accepted_record_in_full() {
        let dir = tempfile::tempdir().unwrap();
        let tokenizer = word_tokenizer(&dir.path().join("tok"), &[]);
        let quoted = "a b c d e f g h i j";
        let corpus = corpus(&["x y z 1 2 3", quoted, "q r s t 4 5", quoted]);
        SpanIndex::build(&corpus, &tokenizer, &dir.path().join("spans"), 1 << 20, &mut |_, _| {}).unwrap();
        let spans = SpanIndex::open_for(&dir.path().join("spans"), &tokenizer).unwrap();
        let groups = CreditGroups::build(&corpus, &CreditParams::default()).unwrap();
        let attributor = Attributor {
            corpus: &corpus,
            groups: &groups,
            tokenizer: &tokenizer,
            spans: &spans,
            span_params: SpanParams::default(),
            influence: None,
        };
        let explained = attributor.attribute(Some("tell me"), "so 7 8 c d e f g h i j 9").unwrap();
        let attribution = explained.attribution;
        assert_eq!(attribution.method, Method::SpanMatch);
        let weights: Vec<(&str, u64)> =
            attribution.weights.iter().map(|w| (w.contribution.as_str(), w.weight_ppb)).collect();
        assert_eq!(weights, [("c1", PPB)]);
        assert!(attribution.notes.iter().any(|n| n.contains("span-only")));
        // Seven quoted tokens are below the verbatim rule: nobody is paid for them.
        let short = attributor.attribute(None, "so d e f g h i j 9").unwrap().attribution;
        assert!(short.weights.is_empty(), "{short:?}");
    }
}
