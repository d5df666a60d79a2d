//! What an evaluation found, serialisable and printable as a markdown table. The replication and
//! verbatim sections are filled by the credit and span evaluations (left `None` here).

use std::fmt;

use openledger_ml::lora::LoraAdapter;
use serde::{Deserialize, Serialize};

use super::corpus::GeneratedCorpus;
use super::model::Trainer;
use super::replication::Inflation;
use crate::Result;

/// One method's measures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MethodResult {
    pub method: String,
    /// ROC-AUC of low contributor quality for harmful (label-flipping, off-domain, spam) against
    /// honest contributors; copiers are left out.
    pub detection_auc: Option<f64>,
    /// The same per record.
    pub record_auc: Option<f64>,
    /// Contributor AUC of each harmful role alone against the honest contributors.
    pub auc_by_role: Vec<(String, Option<f64>)>,
    /// Linear datamodeling score over the retrained subsets (`None` without subsets).
    pub lds: Option<f64>,
}

/// Payout inflation under copying: one honest contributor re-posts each of his records under
/// two new identities, once exactly and once with about one word in ten replaced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicationReport {
    pub estimator: String,
    /// Records copied (each once exactly, once edited).
    pub records_copied: usize,
    /// `R` for the exact copies: with the credit rule, and without it (each record its own group).
    pub exact: Inflation,
    /// `R` for the edited copies.
    pub edited: Inflation,
    pub note: String,
}

/// How much of outputs' verbatim text is credited to the record it came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerbatimReport {
    /// Share of verbatim spans credited to their first accepted source record.
    pub credited_share: f64,
    pub spans: usize,
    pub note: String,
}

/// The adapter trained on the whole corpus, on the test split, next to the base model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct AdapterSummary {
    pub base_loss: f64,
    pub loss: f64,
    pub accuracy: Option<f64>,
    pub base_accuracy: Option<f64>,
}

impl AdapterSummary {
    pub fn measure(trainer: &Trainer, adapter: &LoraAdapter) -> Result<Self> {
        let report =
            openledger_ml::train::evaluate(&trainer.model, Some(adapter), &trainer.test, trainer.batch_tokens)?;
        Ok(Self {
            base_loss: report.base_loss,
            loss: report.loss,
            accuracy: report.accuracy,
            base_accuracy: report.base_accuracy,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvaluationReport {
    pub corpus: String,
    pub base_model: String,
    pub records: usize,
    pub contributors: usize,
    pub harmful_contributors: usize,
    pub copying_contributors: usize,
    pub subsets: usize,
    /// The first layer whose gradients the influence estimators read.
    #[serde(default)]
    pub first_layer: usize,
    /// The full-corpus adapter on the test split: loss per scored token, label accuracy.
    pub test_loss: f64,
    pub test_base_loss: f64,
    pub test_accuracy: Option<f64>,
    pub test_base_accuracy: Option<f64>,
    pub methods: Vec<MethodResult>,
    pub replication: Option<ReplicationReport>,
    pub verbatim: Option<VerbatimReport>,
}

impl EvaluationReport {
    pub(super) fn new(
        g: &GeneratedCorpus,
        trainer: &Trainer,
        summary: AdapterSummary,
        subsets: usize,
        methods: Vec<MethodResult>,
    ) -> Self {
        let roles = || g.truth.contributors.iter().map(|c| c.role);
        Self {
            corpus: g.corpus.name.clone(),
            base_model: trainer.model_path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
            records: g.corpus.records.len(),
            contributors: g.truth.contributors.len(),
            harmful_contributors: roles().filter(|r| r.is_harmful()).count(),
            copying_contributors: roles().filter(|r| *r == super::Role::Copying).count(),
            subsets,
            first_layer: 0,
            test_loss: summary.loss,
            test_base_loss: summary.base_loss,
            test_accuracy: summary.accuracy,
            test_base_accuracy: summary.base_accuracy,
            methods,
            replication: None,
            verbatim: None,
        }
    }
}

fn cell(value: Option<f64>) -> String {
    value.map_or("–".into(), |v| format!("{v:.3}"))
}

impl fmt::Display for EvaluationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} on {}: {} records, {} contributors ({} harmful, {} copying), {} subsets, gradients from layer {}",
            self.base_model,
            self.corpus,
            self.records,
            self.contributors,
            self.harmful_contributors,
            self.copying_contributors,
            self.subsets,
            self.first_layer
        )?;
        writeln!(
            f,
            "test loss {:.3} (base {:.3}), accuracy {} (base {})\n",
            self.test_loss,
            self.test_base_loss,
            cell(self.test_accuracy),
            cell(self.test_base_accuracy)
        )?;
        let roles: Vec<&str> =
            self.methods.first().map(|m| m.auc_by_role.iter().map(|(r, _)| r.as_str()).collect()).unwrap_or_default();
        write!(f, "| method | contributor AUC | record AUC |")?;
        for role in &roles {
            write!(f, " AUC {role} |")?;
        }
        writeln!(f, " LDS |")?;
        writeln!(f, "|---|---|---|{}---|", "---|".repeat(roles.len()))?;
        for m in &self.methods {
            write!(f, "| {} | {} | {} |", m.method, cell(m.detection_auc), cell(m.record_auc))?;
            for (_, auc) in &m.auc_by_role {
                write!(f, " {} |", cell(*auc))?;
            }
            writeln!(f, " {} |", cell(m.lds))?;
        }
        if let Some(r) = &self.replication {
            writeln!(
                f,
                "\npayout inflation R ({}, {} records copied): exact copies {:.3} with the credit rule ({:.3} without), \
                 edited copies {:.3} ({:.3} without) {}",
                r.estimator,
                r.records_copied,
                r.exact.with_rule,
                r.exact.without_rule,
                r.edited.with_rule,
                r.edited.without_rule,
                r.note
            )?;
        }
        if let Some(v) = &self.verbatim {
            writeln!(f, "\nverbatim credit: {:.3} of {} spans {}", v.credited_share, v.spans, v.note)?;
        }
        Ok(())
    }
}
