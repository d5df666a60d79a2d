//! One attribution vector per output: span evidence and influence scores blended into weights
//! per contribution in parts per billion, deterministic to the byte for the same inputs.
//! (Rule and rounding: see [`blend`].)

use std::collections::{BTreeMap, HashMap};

use openledger_core::ContentHash;
use serde::{Deserialize, Serialize};

use crate::corpus::Corpus;
use crate::credit::CreditGroups;
use crate::{AttributionError, METHOD_VERSION, Result};

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

/// Which evidence an attribution rests on (the protobuf `Method`'s names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    SpanMatch,
    GradientInfluence,
    Blended,
}

/// One output's attribution: its weights and what they rest on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attribution {
    pub method: Method,
    pub method_version: String,
    /// Share of the output's bytes inside credited spans, in parts per million: the span
    /// evidence's share of the blend.
    pub span_coverage_ppm: u32,
    /// Sorted by contribution id; sums to 10⁹ unless empty (no evidence: nobody is paid).
    pub weights: Vec<ContributionWeight>,
    pub spans: Vec<SpanEvidence>,
    /// What a reader should know: span-only because the adapter has no gradient index, no
    /// evidence at all, …
    pub notes: Vec<String>,
}

/// The parts of one attribution, before blending.
#[derive(Clone, Copy, Debug)]
pub struct Evidence<'a> {
    pub corpus: &'a Corpus,
    pub groups: &'a CreditGroups,
    /// The output's length in bytes (the span offsets' frame).
    pub output_bytes: usize,
    pub spans: &'a [SpanEvidence],
    /// Influence per record in corpus order; `None` when the adapter has no gradient index.
    pub influence: Option<&'a [f64]>,
}

/// Parts per billion: the unit of weights.
pub const PPB: u64 = 1_000_000_000;

/// Blends the evidence into one weight per contribution.
///
/// The rule (method version [`METHOD_VERSION`]):
/// 1. Credit goes through [`CreditGroups`]: a span or score of a later copy counts for the
///    group's first accepted copy only (a span is already credited to its first record; a
///    later copy's influence is dropped, see [`CreditGroups::apply`]).
/// 2. Span share: each record's credited span tokens over all credited span tokens.
///    Influence share: each record's positive score over all positive scores (harm is never
///    paid, and never subtracted from others).
/// 3. `c` = the share of the output's bytes inside credited spans. The blend is
///    `c × span share + (1 − c) × influence share`: an output that quotes the data verbatim is
///    paid by its quotes; what it did not quote is paid by influence. With one kind of evidence
///    only, that kind is the whole blend.
/// 4. Records sum into their contributions; shares become parts per billion by largest
///    remainder (ties to the smaller contribution id), so the weights sum to exactly 10⁹.
///
/// All sums run in corpus order, so the same inputs give the same bytes.
pub fn blend(evidence: &Evidence<'_>) -> Result<Attribution> {
    let corpus = evidence.corpus;
    if evidence.groups.len() != corpus.records.len() {
        return Err(AttributionError::invalid("the credit groups were built for another corpus"));
    }
    let by_hash: HashMap<ContentHash, usize> =
        corpus.records.iter().enumerate().rev().map(|(i, r)| (r.hash, i)).collect();
    let mut span_tokens = vec![0f64; corpus.records.len()];
    let mut ranges = Vec::with_capacity(evidence.spans.len());
    for span in evidence.spans {
        let record = *by_hash.get(&span.record).ok_or_else(|| {
            AttributionError::Mismatch(format!("span evidence names record {} that is not in the corpus", span.record))
        })?;
        if span.start > span.end || span.end > evidence.output_bytes {
            return Err(AttributionError::invalid(format!(
                "span {}..{} lies outside an output of {} bytes",
                span.start, span.end, evidence.output_bytes
            )));
        }
        span_tokens[evidence.groups.first_copy(record)] += span.tokens as f64;
        ranges.push((span.start, span.end));
    }
    let coverage_ppm = covered_ppm(&mut ranges, evidence.output_bytes);
    let influence = match evidence.influence {
        Some(scores) => Some(evidence.groups.apply(scores)?.into_iter().map(|s| s.max(0.0)).collect::<Vec<f64>>()),
        None => None,
    };
    let span_share = shares(&span_tokens);
    let influence_share = influence.as_deref().and_then(shares);
    let mut notes = Vec::new();
    let (method, per_record) = match (span_share, influence_share) {
        (Some(spans), Some(influence)) => {
            let c = f64::from(coverage_ppm) / 1e6;
            (Method::Blended, spans.iter().zip(&influence).map(|(s, i)| c * s + (1.0 - c) * i).collect())
        }
        (Some(spans), None) => (Method::SpanMatch, spans),
        (None, Some(influence)) => (Method::GradientInfluence, influence),
        (None, None) => {
            notes.push("no record was quoted or helped: no contribution is paid for this output".into());
            let method = if evidence.influence.is_some() { Method::Blended } else { Method::SpanMatch };
            (method, vec![0.0; corpus.records.len()])
        }
    };
    if evidence.influence.is_none() {
        notes.push("span-only: the adapter has no gradient index".into());
    }
    let mut by_contribution: BTreeMap<&str, (f64, &str)> = BTreeMap::new();
    for (record, share) in corpus.records.iter().zip(&per_record) {
        if *share > 0.0 {
            by_contribution.entry(&record.contribution).or_insert((0.0, &record.contributor)).0 += share;
        }
    }
    Ok(Attribution {
        method,
        method_version: METHOD_VERSION.into(),
        span_coverage_ppm: coverage_ppm,
        weights: to_ppb(&by_contribution),
        spans: evidence.spans.to_vec(),
        notes,
    })
}

/// Each value's share of the positive total; `None` when nothing is positive.
fn shares(values: &[f64]) -> Option<Vec<f64>> {
    let total: f64 = values.iter().filter(|v| **v > 0.0).sum();
    (total > 0.0).then(|| values.iter().map(|v| v.max(0.0) / total).collect())
}

/// The share of `0..len` covered by the union of `ranges`, in parts per million.
fn covered_ppm(ranges: &mut [(usize, usize)], len: usize) -> u32 {
    if len == 0 {
        return 0;
    }
    ranges.sort_unstable();
    let (mut covered, mut reach) = (0usize, 0usize);
    for &(start, end) in ranges.iter() {
        let start = start.max(reach);
        if end > start {
            covered += end - start;
            reach = end;
        }
    }
    (covered as u128 * 1_000_000 / len as u128) as u32
}

/// Shares (summing to 1) as parts per billion summing to exactly 10⁹, by largest remainder.
fn to_ppb(shares: &BTreeMap<&str, (f64, &str)>) -> Vec<ContributionWeight> {
    let total: f64 = shares.values().map(|(s, _)| s).sum();
    if total <= 0.0 {
        return Vec::new();
    }
    let exact: Vec<f64> = shares.values().map(|(s, _)| s / total * PPB as f64).collect();
    let mut ppb: Vec<u64> = exact.iter().map(|e| e.floor() as u64).collect();
    let short = PPB.saturating_sub(ppb.iter().sum());
    let mut order: Vec<usize> = (0..exact.len()).collect();
    // Largest fractional part first; the stable sort keeps contribution-id order among ties.
    order.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())));
    for &i in order.iter().cycle().take(short as usize) {
        ppb[i] += 1;
    }
    shares
        .iter()
        .zip(ppb)
        .filter(|(_, weight)| *weight > 0)
        .map(|((contribution, (_, contributor)), weight_ppb)| ContributionWeight {
            contribution: (*contribution).into(),
            contributor: (*contributor).into(),
            weight_ppb,
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::corpus::test_corpus as corpus;
    use crate::credit::CreditParams;

    fn span(hash: ContentHash, start: usize, end: usize, tokens: usize) -> SpanEvidence {
        SpanEvidence { start, end, tokens, occurrences: 1, record: hash, records: vec![hash] }
    }

    const A: &str = "wind turbines turn faster in the cold dense air of the winter months near the coast";
    const B: &str = "sourdough needs a warm kitchen and a starter fed twice a day for a week before baking";

    fn weights(attribution: &Attribution) -> Vec<(&str, u64)> {
        attribution.weights.iter().map(|w| (w.contribution.as_str(), w.weight_ppb)).collect()
    }

    #[test]
    fn a_quoted_record_takes_the_whole_weight_when_there_is_no_influence() {
        let c = corpus(&[(A, "alice"), (B, "bob")]);
        let groups = CreditGroups::build(&c, &CreditParams::default()).unwrap();
        let spans = [span(c.records[1].hash, 0, 40, 9)];
        let evidence = Evidence { corpus: &c, groups: &groups, output_bytes: 60, spans: &spans, influence: None };
        let attribution = blend(&evidence).unwrap();
        assert_eq!(attribution.method, Method::SpanMatch);
        assert_eq!(weights(&attribution), [("c1", PPB)]);
        assert!(attribution.notes.iter().any(|n| n.contains("span-only")));
    }

    #[test]
    fn coverage_splits_spans_from_influence_and_harm_is_never_paid() {
        let c = corpus(&[(A, "alice"), (B, "bob"), ("a third record about tides and moons", "carol")]);
        let groups = CreditGroups::build(&c, &CreditParams::default()).unwrap();
        // A quarter of the output quotes A; influence helps B only, C harmed.
        let spans = [span(c.records[0].hash, 0, 25, 8)];
        let influence = [0.0, 2.0, -5.0];
        let evidence =
            Evidence { corpus: &c, groups: &groups, output_bytes: 100, spans: &spans, influence: Some(&influence) };
        let attribution = blend(&evidence).unwrap();
        assert_eq!(attribution.method, Method::Blended);
        assert_eq!(attribution.span_coverage_ppm, 250_000);
        assert_eq!(weights(&attribution), [("c0", 250_000_000), ("c1", 750_000_000)]);
    }

    #[test]
    fn a_later_copy_earns_nothing_and_its_first_copy_keeps_its_own_score() {
        let c = corpus(&[(A, "alice"), (B, "bob"), (&A.to_uppercase(), "mallory")]);
        let groups = CreditGroups::build(&c, &CreditParams::default()).unwrap();
        let influence = [1.0, 1.0, 1.0];
        let evidence =
            Evidence { corpus: &c, groups: &groups, output_bytes: 10, spans: &[], influence: Some(&influence) };
        assert_eq!(weights(&blend(&evidence).unwrap()), [("c0", PPB / 2), ("c1", PPB / 2)]);
    }

    #[test]
    fn no_evidence_pays_nobody_and_says_so() {
        let c = corpus(&[(A, "alice")]);
        let groups = CreditGroups::singletons(1);
        let evidence = Evidence { corpus: &c, groups: &groups, output_bytes: 10, spans: &[], influence: Some(&[-1.0]) };
        let attribution = blend(&evidence).unwrap();
        assert!(attribution.weights.is_empty());
        assert!(attribution.notes[0].contains("no contribution is paid"));
    }

    #[test]
    fn evidence_outside_the_corpus_or_the_output_is_refused() {
        let c = corpus(&[(A, "alice")]);
        let groups = CreditGroups::singletons(1);
        let stranger = [span(ContentHash::of(b"a record not in the corpus"), 0, 5, 8)];
        let evidence = Evidence { corpus: &c, groups: &groups, output_bytes: 10, spans: &stranger, influence: None };
        assert!(matches!(blend(&evidence), Err(AttributionError::Mismatch(_))));
        let too_far = [span(c.records[0].hash, 5, 50, 8)];
        let evidence = Evidence { corpus: &c, groups: &groups, output_bytes: 10, spans: &too_far, influence: None };
        assert!(matches!(blend(&evidence), Err(AttributionError::InvalidInput(_))));
    }

    proptest! {
        /// Whatever the scores, positive weights sum to exactly one billion, and the same
        /// inputs give the same bytes.
        #[test]
        fn weights_sum_to_one_billion_and_are_deterministic(scores in proptest::collection::vec(-1.0f64..1.0, 1..40)) {
            let texts: Vec<(String, String)> =
                (0..scores.len()).map(|i| (format!("record number {i} {}", "word ".repeat(i % 5)), format!("k{}", i % 3))).collect();
            let refs: Vec<(&str, &str)> = texts.iter().map(|(t, k)| (t.as_str(), k.as_str())).collect();
            let c = corpus(&refs);
            let groups = CreditGroups::singletons(scores.len());
            let evidence = Evidence { corpus: &c, groups: &groups, output_bytes: 10, spans: &[], influence: Some(&scores) };
            let first = blend(&evidence).unwrap();
            let total: u64 = first.weights.iter().map(|w| w.weight_ppb).sum();
            let any_positive = scores.iter().any(|s| *s > 0.0);
            prop_assert_eq!(total, if any_positive { PPB } else { 0 });
            let again = blend(&evidence).unwrap();
            prop_assert_eq!(serde_json::to_vec(&first).unwrap(), serde_json::to_vec(&again).unwrap());
        }
    }
}
