//! Influence attribution for adapters trained here: a gradient index of the per-example
//! projected LoRA gradients of an adapter's training records, and estimators that score every
//! record for a probe (prompt, completion).
//!
//! A score is positive when the record's gradient points the way the probe's loss falls: a
//! gradient step on the record would lower the loss of the probe (it helped).

use openledger_core::ContentHash;
use openledger_ml::train::grads::GradDType;
use serde::{Deserialize, Serialize};

use crate::{AttributionError, Result};

mod index;
mod probe;
mod score;

pub use index::{
    DEFAULT_INDEX_DIR, GradientIndex, INDEX_BATCH_TOKENS, INDEX_DTYPE, INDEX_FORMAT, IndexManifest, IndexedRecord,
};
pub use probe::{MAX_COMPLETION_TOKENS, MAX_PROMPT_TOKENS, probe_gradient, top_contributions};
pub use score::{CHUNK_RECORDS, DATAINF_DAMPING, scores};

/// How a probe gradient and a record gradient make a score.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Estimator {
    /// TracIn at the final weights: `⟨g_probe, g_i⟩`, summed over layers.
    #[serde(rename = "tracin")]
    TracIn,
    /// Per layer, the cosine of the two gradients, averaged over layers: magnitude removed.
    #[serde(rename = "cosine")]
    Cosine,
    /// DataInf's closed-form per-layer inverse-Hessian approximation.
    #[serde(rename = "datainf")]
    DataInf,
    /// DataInf on gradients scaled to unit norm per layer (record and probe): the same
    /// preconditioning, without the magnitude that lets junk records dominate.
    #[serde(rename = "datainf_normalized")]
    DataInfNormalized,
}

impl Estimator {
    pub const ALL: [Estimator; 4] = [Self::TracIn, Self::Cosine, Self::DataInf, Self::DataInfNormalized];

    pub fn name(self) -> &'static str {
        match self {
            Self::TracIn => "tracin",
            Self::Cosine => "cosine",
            Self::DataInf => "datainf",
            Self::DataInfNormalized => "datainf_normalized",
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

    /// Rows stored flat as little-endian `dtype` values, `records.len()` rows of the layers'
    /// total width (a gradient file's `grads.bin`).
    pub fn from_le_bytes(
        records: Vec<ContentHash>,
        layer_dims: Vec<usize>,
        dtype: GradDType,
        bytes: &[u8],
    ) -> Result<Self> {
        let width: usize = layer_dims.iter().sum();
        let size = if dtype == GradDType::F32 { 4 } else { 2 };
        if bytes.len() != records.len() * width * size {
            return Err(AttributionError::corrupt(
                "gradient rows",
                format!("{} bytes for {} records of {width} values", bytes.len(), records.len()),
            ));
        }
        let values: Vec<f32> = match dtype {
            GradDType::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            // bf16 is the top half of an f32.
            GradDType::Bf16 => {
                bytes.chunks_exact(2).map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16)).collect()
            }
        };
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
