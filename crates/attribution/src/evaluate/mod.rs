//! The evaluation harness: labelled corpora split among honest and bad contributors, and the
//! measures that say how well attribution works (ROC-AUC, payout inflation under copies, the
//! linear datamodeling score, verbatim credit), next to baselines (KNN-Shapley, random).
//!
//! One run: train a LoRA adapter on the corpus, index every record's projected gradient, then
//! - detection: each record's quality is its influence on the trusted validation loss (the mean
//!   of its scores over the validation examples), a contributor's the mean over its records; the
//!   ROC-AUC says how well low quality singles out the harmful contributors;
//! - counterfactual truth (LDS, the datamodels' linear datamodeling score): retrain on `subsets`
//!   random halves of the corpus; for each test example, the Spearman correlation across subsets
//!   between the summed scores of a subset's records and the example's negative loss after
//!   training on that subset, averaged over the test examples.
//!
//! Files: `corpus.rs` generates the corpus, `model.rs` trains and probes, `methods.rs` scores
//! records by each method, `report.rs` holds the report, `metrics.rs` the measures.

pub mod corpus;
mod methods;
pub mod metrics;
mod model;
pub mod replication;
mod report;
pub mod verbatim;

use std::path::PathBuf;

use openledger_ml::lora::Target;
use openledger_ml::testing::TinySpec;
use openledger_ml::train::TrainConfig;
use openledger_ml::train::grads::{Projection, ProjectionKind};

use crate::influence::{Probing, default_first_layer};
use rand::seq::index::sample;
use rand::{SeedableRng, rngs::StdRng};

pub use corpus::{CorpusSpec, GeneratedCorpus, GroundTruth, LabelledText, Role};
pub use model::BaseModel;
use model::Trainer;
pub use report::{EvaluationReport, MethodResult, ReplicationReport, VerbatimReport};

use crate::influence::Estimator;
use crate::{AttributionError, Result};

/// Most retrained subsets an evaluation may ask for (each is a full fine-tuning run).
pub const MAX_SUBSETS: usize = 1024;

/// Where the corpus comes from.
#[derive(Clone, Debug)]
pub enum CorpusSource {
    Generate(CorpusSpec),
    /// A directory `GeneratedCorpus::write_dir` wrote.
    Dir(PathBuf),
}

/// What one evaluation run does.
#[derive(Clone, Debug)]
pub struct EvaluationSpec {
    pub base: BaseModel,
    pub corpus: CorpusSource,
    /// The fine-tuning of the full corpus and of every subset (its held-out split is ignored:
    /// the corpus brings its own validation split).
    pub train: TrainConfig,
    /// The random projection of per-example gradients (`None`: full LoRA gradients).
    pub projection: Option<Projection>,
    /// The first layer whose gradients are taken (0: all; see `GradientProbe::from_layer`);
    /// `None`: the platform's indexes' ([`crate::influence::default_first_layer`]).
    pub first_layer: Option<usize>,
    pub estimators: Vec<Estimator>,
    /// Random half subsets retrained for the LDS (0 skips it; at least 3 give a correlation).
    pub subsets: usize,
    /// Neighbours of KNN-Shapley.
    pub knn_k: usize,
    /// all-MiniLM-L6-v2's directory for KNN-Shapley on sentence embeddings (`None` skips it).
    pub minilm: Option<PathBuf>,
    /// Adapters and the tiny model are written here.
    pub work_dir: PathBuf,
    /// Seeds the subsets and the random baseline.
    pub seed: u64,
}

impl EvaluationSpec {
    /// The CI-size run: the tiny model, a small corpus, 8 subsets; seconds on two cores.
    pub fn ci(work_dir: PathBuf, seed: u64) -> Self {
        let train = TrainConfig {
            rank: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets: vec![Target::Q, Target::V, Target::O, Target::Down],
            learning_rate: 2e-2,
            weight_decay: 0.0,
            warmup_steps: Some(2),
            epochs: 6,
            batch_tokens: 1024,
            seed,
            ..TrainConfig::default()
        };
        Self {
            base: BaseModel::Tiny(TinySpec { seed, ..TinySpec::default() }),
            corpus: CorpusSource::Generate(CorpusSpec::ci(seed)),
            train,
            projection: None,
            first_layer: None,
            estimators: Estimator::ALL.to_vec(),
            subsets: 8,
            knn_k: 5,
            minilm: None,
            work_dir,
            seed,
        }
    }

    /// The bench-size run on a real model (SmolLM2-135M-Instruct): a larger corpus, projected
    /// gradients and `subsets` retrainings.
    pub fn bench(work_dir: PathBuf, model: PathBuf, minilm: Option<PathBuf>, subsets: usize, seed: u64) -> Self {
        // Sized for two shared cores, where one SmolLM2 training step of 1024 tokens takes
        // about 20 s: every subset is a fresh fine-tuning run.
        let corpus = CorpusSpec {
            honest: 8,
            label_flipping: 2,
            off_domain: 1,
            spam: 1,
            copying: 1,
            records_per_contributor: 6,
            validation_records: 16,
            test_records: 12,
            ..CorpusSpec::ci(seed)
        };
        let train = TrainConfig {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            learning_rate: 2e-3,
            weight_decay: 0.0,
            warmup_steps: Some(1),
            epochs: 2,
            batch_tokens: 1024,
            max_seq_tokens: Some(128),
            seed,
            ..TrainConfig::default()
        };
        let projection = Some(Projection { kind: ProjectionKind::Rademacher, dim: 256, seed });
        Self {
            base: BaseModel::Path(model),
            corpus: CorpusSource::Generate(corpus),
            train,
            projection,
            first_layer: None,
            estimators: Estimator::ALL.to_vec(),
            subsets,
            knn_k: 5,
            minilm,
            work_dir,
            seed,
        }
    }
}

/// Runs one evaluation. `on_progress(stage, done, total)` follows the long steps.
pub fn evaluate(spec: &EvaluationSpec, on_progress: &mut dyn FnMut(&str, u64, u64)) -> Result<EvaluationReport> {
    if spec.subsets > MAX_SUBSETS || spec.subsets == 1 || spec.subsets == 2 {
        return Err(AttributionError::invalid(format!(
            "subsets must be 0 (no LDS) or in 3..={MAX_SUBSETS}, not {}",
            spec.subsets
        )));
    }
    let generated = match &spec.corpus {
        CorpusSource::Generate(corpus) => GeneratedCorpus::generate(corpus)?,
        CorpusSource::Dir(dir) => GeneratedCorpus::read_dir(dir)?,
    };
    let g = &generated;
    let trainer =
        Trainer::new(&spec.base, &spec.work_dir, &spec.train, (&g.records, &g.validation, &g.test), &g.truth.labels)?;
    let n = g.records.len();
    on_progress("train", 0, 1);
    let everything: Vec<usize> = (0..n).collect();
    let adapter = trainer.train_on(&everything, "adapter")?;
    on_progress("train", 1, 1);
    let summary = report::AdapterSummary::measure(&trainer, &adapter)?;
    let layers = trainer.model.config().num_layers;
    let probing = Probing {
        projection: spec.projection,
        first_layer: spec.first_layer.unwrap_or_else(|| default_first_layer(layers)),
    };
    let (mut methods, gradients) = methods::influence(&trainer, &adapter, probing, &spec.estimators, on_progress)?;
    methods.extend(methods::baselines(g, spec, on_progress)?);
    let actual = counterfactual_losses(&trainer, n, spec, on_progress)?;
    let results = methods.iter().map(|m| m.result(g, actual.as_ref())).collect();
    let mut report = EvaluationReport::new(g, &trainer, summary, spec.subsets, results);
    report.first_layer = probing.first_layer;
    on_progress("credit", 0, 2);
    report.replication = Some(measure_replication(g, &trainer, &adapter, spec, probing, &gradients)?);
    on_progress("credit", 1, 2);
    report.verbatim = Some(measure_verbatim(g, &trainer, spec)?);
    on_progress("credit", 2, 2);
    Ok(report)
}

/// The estimator payouts are measured with: the quality default when the run has it.
fn paying_estimator(spec: &EvaluationSpec) -> Estimator {
    let default = crate::quality::DEFAULT_QUALITY_ESTIMATOR;
    if spec.estimators.contains(&default) { default } else { spec.estimators.first().copied().unwrap_or(default) }
}

/// The first honest contributor re-posts every record under two new identities: an exact copy
/// and one with about a word in ten replaced; `R` over the test examples' attributions.
fn measure_replication(
    g: &GeneratedCorpus,
    trainer: &Trainer,
    adapter: &openledger_ml::lora::LoraAdapter,
    spec: &EvaluationSpec,
    probing: Probing,
    gradients: &methods::Gradients,
) -> Result<ReplicationReport> {
    use crate::corpus::CorpusRecord;
    use replication::{Copies, payout_inflation};

    let honest = g
        .truth
        .contributors
        .iter()
        .find(|c| c.role == Role::Honest)
        .map(|c| c.contributor.clone())
        .ok_or_else(|| AttributionError::invalid("the corpus has no honest contributor to copy"))?;
    let originals: Vec<usize> =
        (0..g.corpus.records.len()).filter(|&i| g.corpus.records[i].contributor == honest).collect();
    let mut vocabulary: Vec<&str> = g.records.iter().flat_map(|r| r.text.split_whitespace()).collect();
    vocabulary.sort_unstable();
    vocabulary.dedup();
    let copy = |i: usize, text: &str, label: &str, kind: &str| {
        let source = &g.corpus.records[i];
        CorpusRecord {
            position: 0,
            hash: openledger_core::ContentHash::of(format!("{kind}/{}/{text}", source.hash).as_bytes()),
            contribution: format!("{}-{kind}", source.contribution),
            contributor: format!("{honest}-{kind}"),
            text: format!("{text}\n{label}"),
        }
    };
    let exact = Copies {
        records: originals.iter().map(|&i| copy(i, &g.records[i].text, &g.records[i].label, "exact")).collect(),
        gradients: originals.iter().map(|&i| gradients.records.layers(i).map(<[f32]>::to_vec).collect()).collect(),
    };
    let edited_texts: Vec<LabelledText> = originals
        .iter()
        .map(|&i| LabelledText {
            text: corpus::replace_tenth(
                &mut StdRng::seed_from_u64(spec.seed ^ i as u64),
                &g.records[i].text,
                &vocabulary,
            ),
            label: g.records[i].label.clone(),
        })
        .collect();
    let edited = Copies {
        records: originals.iter().zip(&edited_texts).map(|(&i, t)| copy(i, &t.text, &t.label, "edited")).collect(),
        gradients: trainer.gradients(adapter, probing, &trainer.dataset(&edited_texts)?.examples)?,
    };
    let estimator = paying_estimator(spec);
    let identities = |kind: &str| vec![honest.clone(), format!("{honest}-{kind}")];
    let (records, probes) = (&gradients.records, &gradients.test);
    Ok(ReplicationReport {
        estimator: estimator.name().into(),
        records_copied: originals.len(),
        exact: payout_inflation(&g.corpus, records, &exact, &identities("exact"), probes, estimator)?,
        edited: payout_inflation(&g.corpus, records, &edited, &identities("edited"), probes, estimator)?,
        note: "with the adapter trained without the copies (influence only, over the test examples)".into(),
    })
}

/// Quotes of eight tokens cut from the corpus's records, attributed span-only.
fn measure_verbatim(g: &GeneratedCorpus, trainer: &Trainer, spec: &EvaluationSpec) -> Result<VerbatimReport> {
    use crate::credit::{CreditGroups, CreditParams};
    use crate::span::SpanIndex;

    let dir = spec.work_dir.join("span-index");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| AttributionError::io(&dir, e))?;
    }
    SpanIndex::build(&g.corpus, &trainer.tokenizer, &dir, crate::span::MAX_SHARD_TOKENS, &mut |_, _| {})?;
    let index = SpanIndex::open_for(&dir, &trainer.tokenizer)?;
    let groups = CreditGroups::build(&g.corpus, &CreditParams::default())?;
    let quotes = g.corpus.records.len().min(VERBATIM_QUOTES);
    let check = verbatim::check(&g.corpus, &groups, &index, &trainer.tokenizer, quotes, 8)?;
    Ok(VerbatimReport {
        credited_share: check.credited_share(),
        spans: check.quotes,
        note: format!(
            "quotes of 8 tokens: {} of {} paid to the first accepted copy holding them ({} of them through a near \
             copy's group), {} in full; misses: {:?}",
            check.credited, check.quotes, check.moved_to_first_copy, check.credited_in_full, check.misses
        ),
    })
}

/// Quotes the verbatim check cuts at most.
const VERBATIM_QUOTES: usize = 100;

/// The random half subsets (record indices, sorted) and each test example's loss after
/// training on each: `losses[subset][test example]`.
pub(crate) struct Counterfactuals {
    pub subsets: Vec<Vec<usize>>,
    pub losses: Vec<Vec<f64>>,
}

fn counterfactual_losses(
    trainer: &Trainer,
    n: usize,
    spec: &EvaluationSpec,
    on_progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<Option<Counterfactuals>> {
    if spec.subsets == 0 {
        return Ok(None);
    }
    let mut rng = StdRng::seed_from_u64(spec.seed ^ 0x1D5_0000);
    let (mut subsets, mut losses) = (Vec::new(), Vec::new());
    for m in 0..spec.subsets {
        on_progress("subsets", m as u64, spec.subsets as u64);
        let mut subset = sample(&mut rng, n, n / 2).into_vec();
        subset.sort_unstable();
        let adapter = trainer.train_on(&subset, &format!("subset-{m}"))?;
        losses.push(trainer.losses(&adapter, &trainer.test.examples)?);
        subsets.push(subset);
    }
    on_progress("subsets", spec.subsets as u64, spec.subsets as u64);
    Ok(Some(Counterfactuals { subsets, losses }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn run(seed: u64, dir: &std::path::Path) -> EvaluationReport {
        let mut stages = Vec::new();
        let report = evaluate(&EvaluationSpec::ci(dir.to_path_buf(), seed), &mut |stage, _, _| {
            stages.push(stage.to_string());
        })
        .unwrap();
        assert!(stages.iter().any(|s| s == "subsets"), "progress names its stages: {stages:?}");
        report
    }

    #[test]
    fn the_ci_evaluation_is_deterministic_and_its_measures_are_in_range() {
        let dir = tempfile::tempdir().unwrap();
        let report = run(11, dir.path());
        println!("{report}");
        for m in &report.methods {
            for value in [m.detection_auc, m.record_auc].into_iter().flatten() {
                assert!((0.0..=1.0).contains(&value), "{}: {value}", m.method);
            }
            if let Some(lds) = m.lds {
                assert!((-1.0..=1.0).contains(&lds), "{}: {lds}", m.method);
            }
        }
        let names: Vec<&str> = report.methods.iter().map(|m| m.method.as_str()).collect();
        let mut expected: Vec<&str> = Estimator::ALL.iter().map(|e| e.name()).collect();
        expected.extend(["knn_shapley_tfidf", "random"]);
        assert_eq!(names, expected);
        assert!(report.methods.iter().all(|m| m.lds.is_some()), "8 subsets give every method an LDS");
        assert!(report.test_loss < report.test_base_loss, "training on the corpus lowers the test loss");
        // Copies under new identities: the credit rule holds R at 1 (exact) and near it
        // (edited); without the rule the copier is paid more.
        let r = report.replication.as_ref().unwrap();
        assert!(r.records_copied > 0);
        assert!(r.exact.with_rule <= 1.0 + 1e-9, "{r:?}");
        assert!(r.edited.with_rule <= 1.05, "{r:?}");
        assert!(r.exact.without_rule > 1.2 && r.edited.without_rule > 1.2, "{r:?}");
        let v = report.verbatim.as_ref().unwrap();
        assert!(v.spans > 0);
        assert_eq!(v.credited_share, 1.0, "{v:?}");
        let again = run(11, tempfile::tempdir().unwrap().path());
        assert_eq!(serde_json::to_value(&again).unwrap(), serde_json::to_value(&report).unwrap());
    }

    #[test]
    fn the_best_influence_estimator_predicts_retraining_better_than_random() {
        // Detection AUC is not asserted: the tiny model learns the labels only in part (test
        // accuracy about 0.4), so which contributors hurt it is a coin toss at this size; the
        // bench-size run on SmolLM2 measures it.
        let dir = tempfile::tempdir().unwrap();
        let report = run(12, dir.path());
        let lds = |name: &str| report.methods.iter().find(|m| m.method == name).and_then(|m| m.lds);
        let best = Estimator::ALL.iter().filter_map(|e| lds(e.name())).fold(f64::MIN, f64::max);
        let random = lds("random").unwrap();
        assert!(best > random, "best estimator {best} vs random {random}\n{report}");
        assert!(best > 0.2, "{report}");
    }

    #[test]
    fn too_few_subsets_for_a_correlation_are_refused() {
        let mut spec = EvaluationSpec::ci(PathBuf::from("/nonexistent"), 1);
        spec.subsets = 2;
        assert!(evaluate(&spec, &mut |_, _, _| {}).unwrap_err().to_string().contains("subsets"));
    }
}
