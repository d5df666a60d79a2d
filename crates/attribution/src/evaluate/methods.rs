//! Every method's scores of the corpus records: the influence estimators on the adapter's
//! gradients, KNN-Shapley on sentence embeddings and on TF-IDF, and random; and how a method's
//! scores become its detection AUC and LDS.

use std::collections::{BTreeMap, HashMap};

use crate::influence::Probing;
use candle_core::Device;
use openledger_ml::embed::SentenceEncoder;
use openledger_ml::lora::LoraAdapter;

use super::corpus::{GeneratedCorpus, LabelledText, Role};
use super::metrics::{roc_auc, spearman};
use super::model::Trainer;
use super::report::MethodResult;
use super::{Counterfactuals, EvaluationSpec};
use crate::baseline::{knn_shapley, random_scores, tfidf};
use crate::influence::{Estimator, GradientSet, scores};
use crate::{AttributionError, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Method {
    Influence(Estimator),
    KnnShapleyMiniLm,
    KnnShapleyTfidf,
    Random,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Self::Influence(e) => e.name(),
            Self::KnnShapleyMiniLm => "knn_shapley_minilm",
            Self::KnnShapleyTfidf => "knn_shapley_tfidf",
            Self::Random => "random",
        }
    }
}

/// One method's scores: per record, its quality (value for the validation set), and per test
/// example, every record's score (`per_test[t][i]`, positive: record `i` helped example `t`).
pub(super) struct MethodScores {
    pub method: Method,
    pub quality: Vec<f64>,
    pub per_test: Vec<Vec<f64>>,
}

/// Each estimator's scores on the gradients of `adapter` (computed once for all of them).
pub(super) fn influence(
    trainer: &Trainer,
    adapter: &LoraAdapter,
    probing: Probing,
    estimators: &[Estimator],
    on_progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<(Vec<MethodScores>, Gradients)> {
    on_progress("gradients", 0, 3);
    let rows = trainer.gradients(adapter, probing, &trainer.train.examples)?;
    let hashes = trainer.train.examples.iter().map(|e| e.hash).collect();
    let index = GradientSet::new(hashes, rows)?;
    on_progress("gradients", 1, 3);
    let validation = trainer.gradients(adapter, probing, &trainer.validation.examples)?;
    on_progress("gradients", 2, 3);
    let test = trainer.gradients(adapter, probing, &trainer.test.examples)?;
    on_progress("gradients", 3, 3);
    let all = |probes: &[Vec<Vec<f32>>], estimator| -> Result<Vec<Vec<f64>>> {
        probes.iter().map(|probe| scores(&index, probe, estimator)).collect()
    };
    let methods = estimators
        .iter()
        .map(|&estimator| {
            Ok(MethodScores {
                method: Method::Influence(estimator),
                quality: column_means(&all(&validation, estimator)?),
                per_test: all(&test, estimator)?,
            })
        })
        .collect::<Result<_>>()?;
    Ok((methods, Gradients { records: index, test }))
}

/// The gradients the influence methods scored with: every training record's, and every test
/// example's (the probes).
pub(super) struct Gradients {
    pub records: GradientSet,
    pub test: Vec<Vec<Vec<f32>>>,
}

/// KNN-Shapley on MiniLM embeddings (when `spec.minilm` is set) and on TF-IDF, and random.
pub(super) fn baselines(
    g: &GeneratedCorpus,
    spec: &EvaluationSpec,
    on_progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<Vec<MethodScores>> {
    let mut out = Vec::new();
    let texts: Vec<&str> = g.records.iter().chain(&g.validation).chain(&g.test).map(|r| r.text.as_str()).collect();
    if let Some(dir) = &spec.minilm {
        on_progress("embed", 0, 1);
        let features = SentenceEncoder::from_dir(dir, &Device::Cpu)?.embed(&texts)?;
        on_progress("embed", 1, 1);
        out.push(knn_method(Method::KnnShapleyMiniLm, g, &features, spec.knn_k)?);
    }
    out.push(knn_method(Method::KnnShapleyTfidf, g, &tfidf(&texts), spec.knn_k)?);
    let n = g.records.len();
    let per_test = (0..g.test.len()).map(|t| random_scores(n, spec.seed.wrapping_add(1 + t as u64))).collect();
    out.push(MethodScores { method: Method::Random, quality: random_scores(n, spec.seed), per_test });
    Ok(out)
}

/// KNN-Shapley with `features` of the records, then the validation, then the test texts.
fn knn_method(method: Method, g: &GeneratedCorpus, features: &[Vec<f32>], k: usize) -> Result<MethodScores> {
    let (n, v) = (g.records.len(), g.validation.len());
    let label_ids: HashMap<&str, usize> = g.truth.labels.iter().enumerate().map(|(i, l)| (l.as_str(), i)).collect();
    let ids = |texts: &[LabelledText]| -> Result<Vec<usize>> {
        texts
            .iter()
            .map(|t| {
                label_ids.get(t.label.as_str()).copied().ok_or_else(|| {
                    AttributionError::invalid(format!("label {:?} is not in the corpus's label set", t.label))
                })
            })
            .collect()
    };
    let (train, validation, test) = (&features[..n], &features[n..n + v], &features[n + v..]);
    let train_labels = ids(&g.records)?;
    let quality = knn_shapley(train, &train_labels, validation, &ids(&g.validation)?, k)?;
    let test_labels = ids(&g.test)?;
    let per_test = test
        .iter()
        .zip(&test_labels)
        .map(|(x, &y)| knn_shapley(train, &train_labels, std::slice::from_ref(x), &[y], k))
        .collect::<Result<_>>()?;
    Ok(MethodScores { method, quality, per_test })
}

impl MethodScores {
    /// Detection AUCs against the ground truth and, with counterfactuals, the LDS.
    pub fn result(&self, g: &GeneratedCorpus, counterfactuals: Option<&Counterfactuals>) -> MethodResult {
        // Every contributor has a role: `generate` assigns them and `read_dir` checks them.
        let roles: Vec<Role> =
            g.corpus.records.iter().map(|r| g.truth.role(&r.contributor).unwrap_or(Role::Honest)).collect();
        debug_assert!(g.corpus.records.iter().all(|r| g.truth.role(&r.contributor).is_some()));
        // Low quality means harmful: the detector's score is the negated quality.
        let mut per_contributor: BTreeMap<&str, (f64, usize, Role)> = BTreeMap::new();
        for ((record, q), role) in g.corpus.records.iter().zip(&self.quality).zip(&roles) {
            let entry = per_contributor.entry(record.contributor.as_str()).or_insert((0.0, 0, *role));
            entry.0 += q;
            entry.1 += 1;
        }
        let contributors: Vec<(f64, Role)> =
            per_contributor.values().map(|(sum, count, role)| (-sum / *count as f64, *role)).collect();
        let auc_of = |items: &[(f64, Role)], bad: &dyn Fn(Role) -> bool| {
            let kept: Vec<&(f64, Role)> = items.iter().filter(|(_, r)| *r != Role::Copying).collect();
            let scores: Vec<f64> = kept.iter().map(|(s, _)| *s).collect();
            let positive: Vec<bool> = kept.iter().map(|(_, r)| bad(*r)).collect();
            roc_auc(&scores, &positive)
        };
        let records: Vec<(f64, Role)> = self.quality.iter().zip(&roles).map(|(q, r)| (-q, *r)).collect();
        let auc_by_role = [Role::LabelFlipping, Role::OffDomain, Role::Spam]
            .into_iter()
            .map(|role| {
                let only: Vec<(f64, Role)> =
                    contributors.iter().copied().filter(|(_, r)| *r == role || *r == Role::Honest).collect();
                (role.name().to_string(), auc_of(&only, &|r| r == role))
            })
            .collect();
        MethodResult {
            method: self.method.name().to_string(),
            detection_auc: auc_of(&contributors, &|r| r.is_harmful()),
            record_auc: auc_of(&records, &|r| r.is_harmful()),
            auc_by_role,
            lds: counterfactuals.and_then(|c| self.lds(c)),
        }
    }

    /// The mean over test examples of the Spearman correlation, across subsets, between the
    /// subset's summed scores and the example's negative loss (examples whose correlation is
    /// undefined are left out; `None` if all are).
    fn lds(&self, c: &Counterfactuals) -> Option<f64> {
        let correlations: Vec<f64> = self
            .per_test
            .iter()
            .enumerate()
            .filter_map(|(t, scores)| {
                let predicted: Vec<f64> = c.subsets.iter().map(|s| s.iter().map(|&i| scores[i]).sum()).collect();
                let actual: Vec<f64> = c.losses.iter().map(|l| -l[t]).collect();
                spearman(&predicted, &actual)
            })
            .collect();
        (!correlations.is_empty()).then(|| correlations.iter().sum::<f64>() / correlations.len() as f64)
    }
}

fn column_means(rows: &[Vec<f64>]) -> Vec<f64> {
    let mut means = vec![0f64; rows.first().map_or(0, Vec::len)];
    for row in rows {
        means.iter_mut().zip(row).for_each(|(m, v)| *m += v);
    }
    means.iter_mut().for_each(|m| *m /= rows.len().max(1) as f64);
    means
}
