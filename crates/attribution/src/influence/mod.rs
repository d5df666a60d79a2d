//! Influence attribution for adapters trained here: a gradient index of the per-example
//! projected LoRA gradients of an adapter's training records, and estimators that score every
//! record for a probe (prompt, completion).
//!
//! **Sign.** The probe gradient `p = ∇θ L_probe` is the gradient of the probe's loss. A step
//! on record `i` moves `θ ← θ − η H⁻¹ g_i`, which changes the probe's loss by
//! `−η ⟨p, H⁻¹ g_i⟩` to first order; so the score is `+⟨p, H⁻¹ g_i⟩` and a positive score means
//! the record helped (lowered the probe's loss). Only positive scores are ever paid
//! ([`top_contributions`]); negative ones feed contributor quality.
//!
//! **Estimators** (`n` records, `L` layers of `d_l` projected values each, `D = Σ d_l`):
//! - *TracIn* (final checkpoint, one term of Pruthi et al.): `Σ_l ⟨p_l, g_i,l⟩`. One read of
//!   the index, `O(nD)`. Assumes the final weights stand for the run. Magnitude-dominated: the
//!   records the adapter fits worst (junk, mislabelled) have the largest gradients.
//! - *Cosine*: `(1/L) Σ_l ⟨p_l, g_i,l⟩ / (‖p_l‖ ‖g_i,l‖)`. One read, `O(nD)`. Magnitude
//!   removed per layer, so every layer counts equally whatever its scale.
//! - *DataInf* (Kwon et al. 2024): per layer, the damped empirical Fisher
//!   `H_l = (1/n) Σ_j g_j gⱼᵀ + λ_l I` is inverted by swapping the order of averaging and
//!   inversion, each rank-one term by Sherman–Morrison:
//!   `H_l⁻¹ v ≈ (1/λ_l)(v − (1/n) Σ_j ⟨v, g_j⟩ / (λ_l + ‖g_j‖²) · g_j)`, with
//!   `λ_l = 0.1 × mean_j ‖g_j,l‖² / d_l` (the authors' choice). The approximation is
//!   symmetric, so `w_l = H_l⁻¹ p_l` is formed once and `score_i = Σ_l ⟨w_l, g_i,l⟩`: three
//!   reads of the index, `O(nD)` time and `O(D)` extra memory. The swap is exact when the
//!   per-layer gradients are orthogonal and its error grows with `d_l` (the paper's bound);
//!   small projected layers keep it tight.
//! - *DataInf, unit norm*: DataInf on every record's and the probe's layer gradient scaled to
//!   unit norm (`λ_l = 0.1 / d_l`). Same cost; the preconditioning of DataInf without the
//!   magnitude that lets junk records dominate.
//!
//! Every score is deterministic to the byte on any thread count (see `score.rs`).

use openledger_core::ContentHash;
use openledger_ml::train::grads::GradDType;
use serde::{Deserialize, Serialize};

use crate::{AttributionError, Result};

#[cfg(test)]
pub(crate) mod fixture;
mod index;
mod probe;
mod score;

pub use index::{
    DEFAULT_INDEX_DIR, GradientIndex, INDEX_BATCH_TOKENS, INDEX_DTYPE, INDEX_FORMAT, IndexManifest, IndexedRecord,
    Probing, ShardOf, default_first_layer,
};
pub(crate) use index::{corpus_examples, read_lineage};
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
#[derive(Clone, Debug)]
pub struct GradientSet {
    pub records: Vec<ContentHash>,
    pub layer_dims: Vec<usize>,
    values: Vec<f32>,
    /// `‖g_i,l‖²` per row and layer, computed on first use: they do not depend on the probe,
    /// so the estimators that need them read the rows once per probe instead of twice.
    squared_norms: std::sync::OnceLock<Vec<f64>>,
    /// DataInf's per-layer damping and operators, raw and unit-norm, computed on first use.
    datainf: [std::sync::OnceLock<score::DataInfOperator>; 2],
}

impl PartialEq for GradientSet {
    fn eq(&self, other: &Self) -> bool {
        (&self.records, &self.layer_dims, &self.values) == (&other.records, &other.layer_dims, &other.values)
    }
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
        Ok(Self { records, layer_dims, values, squared_norms: Default::default(), datainf: Default::default() })
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
        Ok(Self { records, layer_dims, values, squared_norms: Default::default(), datainf: Default::default() })
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

    /// Row `i` cut into its layers.
    pub fn layers(&self, i: usize) -> impl Iterator<Item = &[f32]> + '_ {
        let row = self.row(i);
        let mut start = 0;
        self.layer_dims.iter().map(move |&dim| {
            let layer = &row[start..start + dim];
            start += dim;
            layer
        })
    }
}
