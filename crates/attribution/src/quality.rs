//! Contributor quality: the influence of each training record on the loss over a trusted
//! validation set, aggregated per contribution and contributor; harmful ones are listed as
//! slashing candidates with their evidence.
//!
//! A record's score is its influence on the *mean* validation loss: the probe gradient is the
//! mean of the validation examples' gradients (every estimator here is linear in the probe but
//! Cosine, which then measures agreement with the mean direction). Scores are reported in
//! relative units: divided by the mean absolute score over all records, so `-1` means "as
//! harmful as the average record is influential", whatever the model or projection.
//!
//! Aggregation is the mean over a contribution's (or contributor's) records: a contributor
//! with many mediocre records does not outrank one with a few good ones, and volume alone
//! neither raises nor lowers quality. A contribution whose mean is below the threshold (default
//! [`DEFAULT_SLASHING_THRESHOLD`]) is a slashing candidate, listed with its records' scores
//! and its rank (1 = most harmful).

use std::collections::BTreeMap;

use openledger_ml::train::data::micro_batches;
use openledger_ml::train::grads::GradientProbe;
use serde::{Deserialize, Serialize};

use crate::influence::{Estimator, GradientSet, INDEX_BATCH_TOKENS, IndexedRecord, scores};
use crate::{AttributionError, Result};

/// Relative score below which a contribution is a slashing candidate: harmful by at least half
/// the average record's influence. A planted label-flipped set scores far below it (see the
/// tests); honest records scatter around zero and above.
pub const DEFAULT_SLASHING_THRESHOLD: f64 = -0.5;

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
    /// Relative influence on the validation loss (positive: it lowered it).
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
    /// The mean absolute raw score the relative scores are divided by.
    pub scale: f64,
    /// Sorted by public key.
    pub contributors: Vec<ContributorQuality>,
    /// Every contribution, by rank (most harmful first).
    pub contributions: Vec<ContributionQuality>,
    /// The contributions below the threshold, by rank.
    pub slashing_candidates: Vec<String>,
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
    let scale = raw.iter().map(|s| s.abs()).sum::<f64>() / raw.len().max(1) as f64;
    let relative: Vec<f64> = raw.iter().map(|s| if scale > 0.0 { s / scale } else { 0.0 }).collect();
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
                    .map(|&i| RecordQuality { record: records[i].record.clone(), score: relative[i] })
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
        scale,
        contributors,
        contributions,
        slashing_candidates,
    })
}
