//! Replication-robust credit: records that are exact or near copies of each other share one
//! credit, which goes to the first accepted copy, so copying records under more identities
//! never raises the copier's total payout.
//!
//! The rule: records are grouped in corpus order (acceptance order). A record joins the group
//! of the first earlier record whose text is the same after normalisation (lower case, runs of
//! whitespace as one space), else of the most similar earlier record whose estimated Jaccard
//! similarity reaches [`CreditParams::near_copy_jaccard`] (0.7 by default: looser than ingest's
//! 0.8, because ingest refuses what it is sure of and attribution must not pay for what ingest
//! let through; on the evaluation's corpora of short template sentences 0.7 grouped every
//! ~10%-edited copy and 0–2% of distinct records, 0.5 grouped 5–10% of distinct records). Shingles are ingest's (`openledger_screen::dedup`): 4-character windows for
//! short records, and word bigrams (ingest: 5-grams) for long ones, so a long record with a
//! word in five replaced still groups with its original. A group is paid what its first accepted copy
//! earns on its own score; every other member earns nothing. So k copies under k identities
//! earn what one earns, and a copier of someone else's record earns nothing at all (the credit
//! stays with the original). Grouping is transitive only through the first copy: a record joins
//! the group of the record it resembles, and that record's group is the group.
//!
//! Cost: one MinHash signature per record (128 permutations) and an LSH lookup, as ingest does.

use std::collections::HashMap;

use openledger_screen::dedup::{DedupParams, MinHasher, NearDuplicateIndex};

use crate::corpus::Corpus;
use crate::{AttributionError, Result};

/// Tuning of the grouping.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CreditParams {
    /// Estimated Jaccard similarity of shingles at which a record is a near copy.
    pub near_copy_jaccard: f64,
}

impl Default for CreditParams {
    fn default() -> Self {
        Self { near_copy_jaccard: 0.7 }
    }
}

/// Which records share a credit: for each record (by corpus index), the index of its group's
/// first accepted copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreditGroups {
    first_copy: Vec<usize>,
}

impl CreditGroups {
    /// Groups the records of `corpus` (see the module doc for the rule).
    pub fn build(corpus: &Corpus, params: &CreditParams) -> Result<Self> {
        let dedup = DedupParams {
            threshold: params.near_copy_jaccard,
            shingle_words: 2,
            max_records: corpus.records.len().max(1),
            ..DedupParams::default()
        };
        dedup.validate().map_err(|e| AttributionError::invalid(format!("credit grouping: {e}")))?;
        let hasher = MinHasher::new(dedup);
        let mut index: NearDuplicateIndex<usize> = NearDuplicateIndex::new(dedup);
        let mut exact: HashMap<String, usize> = HashMap::new();
        let mut first_copy = Vec::with_capacity(corpus.records.len());
        for (i, record) in corpus.records.iter().enumerate() {
            let normalised = record.text.split_whitespace().map(str::to_lowercase).collect::<Vec<_>>().join(" ");
            if let Some(&earlier) = exact.get(&normalised) {
                first_copy.push(first_copy[earlier]);
                continue;
            }
            exact.insert(normalised, i);
            let Some(signatures) = hasher.signatures(&record.text) else {
                first_copy.push(i);
                continue;
            };
            match index.nearest_to(&signatures) {
                Some((earlier, _)) => first_copy.push(first_copy[earlier]),
                None => first_copy.push(i),
            }
            index
                .insert(i, signatures.indexed)
                .map_err(|e| AttributionError::invalid(format!("credit grouping: {e}")))?;
        }
        Ok(Self { first_copy })
    }

    /// Each record in its own group: no copy detection (the baseline the evaluation compares).
    pub fn singletons(records: usize) -> Self {
        Self { first_copy: (0..records).collect() }
    }

    pub fn len(&self) -> usize {
        self.first_copy.len()
    }

    pub fn is_empty(&self) -> bool {
        self.first_copy.is_empty()
    }

    /// The corpus index of the first accepted copy in record `i`'s group.
    pub fn first_copy(&self, i: usize) -> usize {
        self.first_copy[i]
    }

    /// Whether record `i` is a later copy (earns nothing).
    pub fn is_later_copy(&self, i: usize) -> bool {
        self.first_copy[i] != i
    }

    /// Per-record scores after the rule: a first copy keeps its own score, later copies get 0.
    pub fn apply(&self, scores: &[f64]) -> Result<Vec<f64>> {
        if scores.len() != self.first_copy.len() {
            return Err(AttributionError::invalid(format!(
                "{} scores for {} grouped records",
                scores.len(),
                self.first_copy.len()
            )));
        }
        Ok(scores.iter().enumerate().map(|(i, &s)| if self.is_later_copy(i) { 0.0 } else { s }).collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {

    use super::*;
    use crate::corpus::test_corpus as corpus;

    const ORIGINAL: &str = "the river floods every spring when snow melts in the northern hills and farmers move \
                            their cattle to higher pastures until the water falls again in early summer";

    #[test]
    fn exact_and_lightly_edited_copies_join_the_first_accepted_copy() {
        let edited = ORIGINAL.replace("cattle", "sheep").replace("early", "late").replace("hills", "mountains");
        let c = corpus(&[
            (ORIGINAL, "alice"),
            ("a completely different record about tax law and filing deadlines for small firms", "bob"),
            (&ORIGINAL.to_uppercase(), "mallory-2"),
            (&edited, "mallory-3"),
        ]);
        let groups = CreditGroups::build(&c, &CreditParams::default()).unwrap();
        assert_eq!((0..4).map(|i| groups.first_copy(i)).collect::<Vec<_>>(), [0, 1, 0, 0]);
    }

    #[test]
    fn k_copies_under_k_identities_earn_no_more_than_one() {
        let base = [(ORIGINAL, "mallory"), ("tax law and filing deadlines for small firms change every year", "bob")];
        let without = corpus(&base);
        let mut with_copies = base.to_vec();
        with_copies.extend([(ORIGINAL, "mallory-2"), (ORIGINAL, "mallory-3"), (ORIGINAL, "mallory-4")]);
        let with = corpus(&with_copies);
        let payout = |c: &Corpus, scores: &[f64]| {
            let paid = CreditGroups::build(c, &CreditParams::default()).unwrap().apply(scores).unwrap();
            c.records
                .iter()
                .zip(paid)
                .filter(|(r, _)| r.contributor.starts_with("mallory"))
                .map(|(_, s)| s)
                .sum::<f64>()
        };
        // Every copy scores as well as the original, as identical gradients would.
        assert_eq!(payout(&with, &[0.7, 0.2, 0.7, 0.7, 0.7]), payout(&without, &[0.7, 0.2]));
    }

    #[test]
    fn a_copier_of_another_contributors_record_earns_nothing() {
        let c = corpus(&[(ORIGINAL, "alice"), (ORIGINAL, "mallory")]);
        let paid = CreditGroups::build(&c, &CreditParams::default()).unwrap().apply(&[0.4, 0.9]).unwrap();
        assert_eq!(paid, [0.4, 0.0]);
    }

    #[test]
    fn distinct_records_on_one_topic_keep_their_own_credit() {
        let c = corpus(&[
            ("the river floods every spring when snow melts in the northern hills", "alice"),
            ("dams upstream hold back meltwater so the valley towns stay dry in april", "bob"),
        ]);
        let groups = CreditGroups::build(&c, &CreditParams::default()).unwrap();
        assert!(!groups.is_later_copy(1));
    }
}
