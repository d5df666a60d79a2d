//! Contributor quality: the influence of each training record on the loss over a trusted
//! validation set, aggregated per contribution and contributor; harmful ones are listed as
//! slashing candidates with their evidence.
//!
//! A record's influence is on the *mean* validation loss: the probe gradient is the mean of the
//! validation examples' gradients (every estimator here is linear in the probe but Cosine,
//! which then measures agreement with the mean direction). Its score is that influence
//! relative to the typical record: `(influence − median) / median |influence − median|`. The
//! centring matters: every record of a version teaches the shared format (answer with a label
//! and end the turn), a component of the validation gradient so large that on a tiny run even
//! label-flipped records have a positive raw influence; what sets them apart is how far below
//! the others they fall. The raw influence is kept beside the score, and the unit makes the
//! threshold mean the same whatever the model or projection.
//!
//! Aggregation is the mean over a contribution's (or contributor's) records: a contributor
//! with many mediocre records does not outrank one with a few good ones, and volume alone
//! neither raises nor lowers quality. A contribution whose mean is below the threshold (default
//! [`DEFAULT_SLASHING_THRESHOLD`]) is a slashing candidate, listed with its records' scores
//! and its rank (1 = most harmful).

use std::collections::BTreeMap;

use openledger_core::slashing::DEFAULT_SLASHING_THRESHOLD_MILLI;
use std::path::Path;

use openledger_ml::AdapterPrecision;
use openledger_ml::adapters::load_adapter_dir_as;
use openledger_ml::train::data::{Example, Tokenize, micro_batches, read_records};
use openledger_ml::train::grads::GradientProbe;
use openledger_ml::{LlamaModel, Tokenizer};
use serde::{Deserialize, Serialize};

use crate::influence::{Estimator, GradientIndex, GradientSet, INDEX_BATCH_TOKENS, IndexedRecord, scores};
use crate::influence::{corpus_examples, read_lineage};
use crate::{AttributionError, Result};

/// Score below which a contribution is a slashing candidate: its records' mean falls below the
/// typical record by more than the records' median deviation. A mean over a contribution's
/// records varies less than one record, so an honest contribution rarely gets there; a planted
/// label-flipped one does (see the tests).
/// The platform's threshold is a governed parameter (the ledger's, in thousandths); this is its
/// default.
pub const DEFAULT_SLASHING_THRESHOLD: f64 = DEFAULT_SLASHING_THRESHOLD_MILLI as f64 / 1000.0;
/// The estimator quality is measured with unless the caller picks another: on the planted
/// label-flip test it separates the harmful contribution best (see the tests).
pub const DEFAULT_QUALITY_ESTIMATOR: Estimator = Estimator::DataInfNormalized;

/// Which examples the validation loss was taken over.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ValidationSet {
    /// The adapter lineage's `eval_records`: the split held out of training.
    HeldOut { records: usize },
    /// A file the Datanet owner designates as trusted.
    Trusted { path: String, records: usize },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordQuality {
    /// Content hash, hex.
    pub record: String,
    /// Raw influence on the mean validation loss (positive: a step on it lowered the loss).
    pub influence: f64,
    /// `(influence − center) / scale`: how much more (or less) it helped than the typical record.
    pub score: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContributionQuality {
    pub contribution: String,
    pub contributor: String,
    /// Mean of its records' scores.
    pub score: f64,
    /// 1 = lowest score of all contributions.
    pub rank: usize,
    pub records: Vec<RecordQuality>,
    pub slashing_candidate: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContributorQuality {
    /// Public key, hex.
    pub contributor: String,
    /// Mean of its records' scores.
    pub score: f64,
    pub records: usize,
    pub contributions: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QualityReport {
    pub method: String,
    pub estimator: Estimator,
    pub validation: ValidationSet,
    pub threshold: f64,
    /// The median raw influence (the typical record), subtracted from every score.
    pub center: f64,
    /// The median absolute deviation of the raw influences from the median, the unit of scores.
    pub scale: f64,
    /// Sorted by public key.
    pub contributors: Vec<ContributorQuality>,
    /// Every contribution, by rank (most harmful first).
    pub contributions: Vec<ContributionQuality>,
    /// The contributions below the threshold, by rank.
    pub slashing_candidates: Vec<String>,
}

/// The quality report of the adapter in `adapter_dir` from its gradient `index`: validation
/// on `trusted` (a JSONL file of records of the training kind) when given, else on the
/// lineage's held-out split (records read from the exported `corpus_dir`).
#[allow(clippy::too_many_arguments)]
pub fn assess(
    model: &LlamaModel,
    tokenizer: &Tokenizer,
    adapter_dir: &Path,
    corpus_dir: &Path,
    index: &GradientIndex,
    trusted: Option<&Path>,
    estimator: Estimator,
    threshold: f64,
) -> Result<QualityReport> {
    index.check_adapter(adapter_dir)?;
    let lineage = read_lineage(adapter_dir)?;
    let max_tokens = lineage.config.max_seq_tokens.unwrap_or(model.config().context_length);
    let tokenize = Tokenize { tokenizer, max_tokens };
    let (examples, validation): (Vec<Example>, ValidationSet) = match trusted {
        Some(path) => {
            let (kind, records) = read_records(path)?;
            let examples =
                records.iter().map(|r| tokenize.example(r, kind)).collect::<openledger_ml::Result<Vec<_>>>()?;
            let records = examples.len();
            (examples, ValidationSet::Trusted { path: path.display().to_string(), records })
        }
        None => {
            let (examples, _) = corpus_examples(&lineage.eval_records, corpus_dir, &tokenize, &lineage.dataset)?;
            let records = examples.len();
            (examples, ValidationSet::HeldOut { records })
        }
    };
    let adapter = load_adapter_dir_as("attribution", adapter_dir, model, AdapterPrecision::Exact)?;
    let probe = index.probing().probe(model, &adapter)?;
    let rows: Vec<(&[u32], usize)> = examples.iter().map(|e| (e.tokens.as_slice(), e.first_scored)).collect();
    let gradient = mean_gradient(&probe, &rows)?;
    quality_report(&index.gradients()?, &index.manifest.records, &gradient, validation, estimator, threshold)
}

/// The mean gradient of the validation examples (`tokens`, first scored), computed in batches
/// of [`INDEX_BATCH_TOKENS`] and summed in example order (deterministic).
pub fn mean_gradient(probe: &GradientProbe, examples: &[(&[u32], usize)]) -> Result<Vec<Vec<f32>>> {
    if examples.is_empty() {
        return Err(AttributionError::invalid(
            "the validation set is empty: designate a trusted file or train with an eval split",
        ));
    }
    let order: Vec<usize> = (0..examples.len()).collect();
    let mut sum: Vec<Vec<f64>> = Vec::new();
    for batch in micro_batches(&order, |i| examples[i].0.len(), INDEX_BATCH_TOKENS) {
        let rows: Vec<(&[u32], usize)> = batch.iter().map(|&i| examples[i]).collect();
        for row in probe.gradients(&rows)? {
            if sum.is_empty() {
                sum = row.iter().map(|l| vec![0.0; l.len()]).collect();
            }
            for (s, l) in sum.iter_mut().zip(&row) {
                for (s, &v) in s.iter_mut().zip(l) {
                    *s += v as f64;
                }
            }
        }
    }
    let n = examples.len() as f64;
    Ok(sum.into_iter().map(|l| l.into_iter().map(|s| (s / n) as f32).collect()).collect())
}

/// The median of `values` and their median absolute deviation from it (robust: a harmful
/// minority moves neither).
fn center_and_spread(values: &[f64]) -> (f64, f64) {
    let center = median(values.to_vec());
    (center, median(values.iter().map(|v| (v - center).abs()).collect()))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Scores every record of `index` (`records[i]` its provenance) for the validation gradient
/// and aggregates them (see the module doc).
pub fn quality_report(
    index: &GradientSet,
    records: &[IndexedRecord],
    validation_gradient: &[Vec<f32>],
    validation: ValidationSet,
    estimator: Estimator,
    threshold: f64,
) -> Result<QualityReport> {
    if records.len() != index.len() {
        return Err(AttributionError::invalid(format!("{} records for {} gradient rows", records.len(), index.len())));
    }
    let raw = scores(index, validation_gradient, estimator)?;
    let (center, scale) = center_and_spread(&raw);
    let relative: Vec<f64> = raw.iter().map(|s| if scale > 0.0 { (s - center) / scale } else { 0.0 }).collect();
    let mut by_contribution: BTreeMap<&str, (Vec<usize>, &str)> = BTreeMap::new();
    let mut by_contributor: BTreeMap<&str, (Vec<usize>, std::collections::BTreeSet<&str>)> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        by_contribution.entry(&r.contribution).or_insert_with(|| (Vec::new(), &r.contributor)).0.push(i);
        let entry = by_contributor.entry(&r.contributor).or_default();
        entry.0.push(i);
        entry.1.insert(&r.contribution);
    }
    let mean = |rows: &[usize]| rows.iter().map(|&i| relative[i]).sum::<f64>() / rows.len() as f64;
    let mut contributions: Vec<ContributionQuality> = by_contribution
        .into_iter()
        .map(|(contribution, (rows, contributor))| {
            let score = mean(&rows);
            ContributionQuality {
                contribution: contribution.to_string(),
                contributor: contributor.to_string(),
                score,
                rank: 0,
                records: rows
                    .iter()
                    .map(|&i| RecordQuality {
                        record: records[i].record.clone(),
                        influence: raw[i],
                        score: relative[i],
                    })
                    .collect(),
                slashing_candidate: score < threshold,
            }
        })
        .collect();
    contributions.sort_by(|a, b| a.score.total_cmp(&b.score).then_with(|| a.contribution.cmp(&b.contribution)));
    for (rank, c) in contributions.iter_mut().enumerate() {
        c.rank = rank + 1;
    }
    let contributors = by_contributor
        .into_iter()
        .map(|(contributor, (rows, set))| ContributorQuality {
            contributor: contributor.to_string(),
            score: mean(&rows),
            records: rows.len(),
            contributions: set.len(),
        })
        .collect();
    let slashing_candidates =
        contributions.iter().filter(|c| c.slashing_candidate).map(|c| c.contribution.clone()).collect();
    Ok(QualityReport {
        method: crate::METHOD_VERSION.into(),
        estimator,
        validation,
        threshold,
        center,
        scale,
        contributors,
        contributions,
        slashing_candidates,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use openledger_ml::train::grads::{Projection, ProjectionKind};

    use super::*;
    use crate::influence::Probing;
    use crate::influence::fixture::fixture;

    #[test]
    fn a_label_flipped_contribution_is_the_first_slashing_candidate() {
        // Contribution c3 (records 24..32) has every label wrong. Four epochs: the adapter has
        // learnt the task but not yet memorised the flipped records (after twelve, their
        // final-checkpoint gradients have shrunk and c3 no longer stands out: the limit of any
        // final-checkpoint estimator, reported in bench/RESULTS.md).
        let f = fixture(64, 4, |i| (24..32).contains(&i));
        let probing = Probing {
            projection: Some(Projection { kind: ProjectionKind::Rademacher, dim: 48, seed: 1 }),
            first_layer: 0,
        };
        let dir = f.dir.path().join("index");
        let index =
            GradientIndex::build(&f.model, &f.tokenizer, &f.adapter, &f.corpus, &dir, probing, &mut |_, _| {}).unwrap();
        let report = assess(
            &f.model,
            &f.tokenizer,
            &f.adapter,
            &f.corpus,
            &index,
            None,
            DEFAULT_QUALITY_ESTIMATOR,
            DEFAULT_SLASHING_THRESHOLD,
        )
        .unwrap();
        let summary: Vec<(String, f64)> =
            report.contributions.iter().map(|c| (c.contribution.clone(), c.score)).collect();
        assert!(matches!(report.validation, ValidationSet::HeldOut { records } if records > 0));
        assert_eq!(report.contributions[0].contribution, "c3", "{summary:?}");
        assert_eq!(report.slashing_candidates, ["c3"], "{summary:?}");
        let worst = &report.contributions[0];
        let trained = index.manifest.records.iter().filter(|r| r.contribution == "c3").count();
        assert_eq!((worst.rank, worst.records.len(), worst.slashing_candidate), (1, trained, true));
        // Contributor k1 owns c2 and c3: its mean sits between them; the others are above.
        let k1 = report.contributors.iter().find(|c| c.contributor == "k1").unwrap();
        assert_eq!(report.contributors.iter().map(|c| c.score).min_by(f64::total_cmp), Some(k1.score));
        assert_eq!(report.contributors.len(), 4);
        let json = serde_json::to_string(&report).unwrap();
        let back: QualityReport = serde_json::from_str(&json).unwrap();
        assert_eq!((back.slashing_candidates, back.contributions.len()), (report.slashing_candidates, 8));
    }
}
