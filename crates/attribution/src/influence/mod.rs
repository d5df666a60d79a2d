//! Influence attribution for adapters trained here: a gradient index of the per-example
//! projected LoRA gradients of an adapter's training records, and estimators that score every
//! record for a probe (prompt, completion).
//!
//! A score is positive when the record's gradient points the way the probe's loss falls: a
//! gradient step on the record would lower the loss of the probe (it helped).

use openledger_core::ContentHash;
use serde::{Deserialize, Serialize};

use crate::{AttributionError, Result};

/// How a probe gradient and a record gradient make a score.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Estimator {
    /// TracIn at the final weights: `⟨g_probe, g_i⟩`, summed over layers.
    TracIn,
    /// Per layer, the cosine of the two gradients, averaged over layers: magnitude removed.
    Cosine,
    /// DataInf's closed-form per-layer inverse-Hessian approximation.
    DataInf,
}

impl Estimator {
    pub const ALL: [Estimator; 3] = [Self::TracIn, Self::Cosine, Self::DataInf];

    pub fn name(self) -> &'static str {
        match self {
            Self::TracIn => "tracin",
            Self::Cosine => "cosine",
            Self::DataInf => "datainf",
        }
    }
}

impl std::str::FromStr for Estimator {
    type Err = AttributionError;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|e| e.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|e| e.name()).collect();
            AttributionError::invalid(format!("unknown estimator {s:?}: use one of {}", names.join(", ")))
        })
    }
}

/// Per-example gradients in memory: one row per record, each row its layers concatenated.
#[derive(Clone, Debug, PartialEq)]
pub struct GradientSet {
    pub records: Vec<ContentHash>,
    pub layer_dims: Vec<usize>,
    values: Vec<f32>,
}

impl GradientSet {
    /// `rows[i]` is record `i`'s gradient, one vector per layer.
    pub fn new(records: Vec<ContentHash>, rows: Vec<Vec<Vec<f32>>>) -> Result<Self> {
        if records.len() != rows.len() {
            return Err(AttributionError::invalid(format!(
                "{} records but {} gradient rows",
                records.len(),
                rows.len()
            )));
        }
        let layer_dims: Vec<usize> = rows.first().map(|r| r.iter().map(Vec::len).collect()).unwrap_or_default();
        let width: usize = layer_dims.iter().sum();
        let mut values = Vec::with_capacity(rows.len() * width);
        for (i, row) in rows.into_iter().enumerate() {
            if row.iter().map(Vec::len).ne(layer_dims.iter().copied()) {
                return Err(AttributionError::invalid(format!("gradient row {i} has another layer layout")));
            }
            values.extend(row.into_iter().flatten());
        }
        Ok(Self { records, layer_dims, values })
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn width(&self) -> usize {
        self.layer_dims.iter().sum()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        let width = self.width();
        &self.values[i * width..(i + 1) * width]
    }
}
