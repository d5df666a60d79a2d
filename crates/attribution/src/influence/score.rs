//! The estimators: one score per record of a [`GradientSet`] for one probe gradient.
//!
//! Every sum runs in a fixed order: rows are cut into chunks of [`CHUNK_RECORDS`] whatever the
//! thread count, each chunk's partial sums are combined in chunk order, and every dot product
//! accumulates the same lanes in the same order. The scores are therefore the same to the byte
//! on one thread or many.

use rayon::prelude::*;

use super::{Estimator, GradientSet};
use crate::{AttributionError, Result};

/// Rows per unit of parallel work (a constant, never derived from the thread count: the
/// reduction order, hence the bytes of a score, must not depend on the machine).
pub const CHUNK_RECORDS: usize = 512;

/// DataInf's damping: `λ_l = DATAINF_DAMPING × mean_j ‖g_j,l‖² / d_l`, the mean squared entry
/// of layer `l`'s gradients (the paper's eq. and the authors' `src/influence.py`:
/// `torch.mean(S) / lambda_const_param` with `S_j = mean(g_j²)` and `lambda_const_param = 10`).
pub const DATAINF_DAMPING: f64 = 0.1;

/// One score per record of `index`, in index order; positive = the record helped the probe.
///
/// `probe` is the gradient of the probe's loss, one vector per layer of `index`'s layout. A
/// record helps when a gradient step on it (`θ ← θ − η g_i`) lowers the probe's loss, which to
/// first order is when `⟨g_probe, H⁻¹ g_i⟩ > 0` (`H = I` for TracIn), so that is the sign kept.
pub fn scores(index: &GradientSet, probe: &[Vec<f32>], estimator: Estimator) -> Result<Vec<f64>> {
    check_probe(index, probe)?;
    if index.is_empty() {
        return Ok(Vec::new());
    }
    Ok(match estimator {
        Estimator::TracIn => score_rows(index, probe, |_, dots| dots.iter().sum()),
        Estimator::Cosine => cosine(index, probe),
        Estimator::DataInf => datainf(index, probe, false),
        Estimator::DataInfNormalized => datainf(index, probe, true),
    })
}

fn check_probe(index: &GradientSet, probe: &[Vec<f32>]) -> Result<()> {
    let dims: Vec<usize> = probe.iter().map(Vec::len).collect();
    if dims != index.layer_dims {
        return Err(AttributionError::Mismatch(format!(
            "the probe gradient's layers {dims:?} do not match the index's {:?}: compute the probe with the index's adapter, projection and first layer (`GradientIndex::probing`)",
            index.layer_dims
        )));
    }
    if probe.iter().flatten().any(|v| !v.is_finite()) {
        return Err(AttributionError::invalid("the probe gradient is not finite: its loss overflowed"));
    }
    Ok(())
}

/// For each row, `combine(i, per-layer ⟨w_l, g_i,l⟩)`; rows in parallel (each row's own sums
/// are sequential, so the result does not depend on the threads).
fn score_rows(set: &GradientSet, w: &[Vec<f32>], combine: impl Fn(usize, &[f64]) -> f64 + Sync) -> Vec<f64> {
    let mut out = vec![0.0; set.len()];
    out.par_chunks_mut(CHUNK_RECORDS).enumerate().for_each(|(chunk, scores)| {
        let mut dots = vec![0.0; w.len()];
        for (k, score) in scores.iter_mut().enumerate() {
            let i = chunk * CHUNK_RECORDS + k;
            for ((dot_l, g), w_l) in dots.iter_mut().zip(set.layers(i)).zip(w) {
                *dot_l = dot(w_l, g);
            }
            *score = combine(i, &dots);
        }
    });
    out
}

/// Per record and layer, `⟨p_l, g_i,l⟩`: `dots[i * layers + l]`.
fn layer_dots(set: &GradientSet, probe: &[Vec<f32>]) -> Vec<f64> {
    let n_layers = set.layer_dims.len();
    let mut out = vec![0.0; set.len() * n_layers];
    out.par_chunks_mut(CHUNK_RECORDS * n_layers).enumerate().for_each(|(chunk, dots)| {
        for (k, row) in dots.chunks_mut(n_layers).enumerate() {
            for ((d, g), p) in row.iter_mut().zip(set.layers(chunk * CHUNK_RECORDS + k)).zip(probe) {
                *d = dot(p, g);
            }
        }
    });
    out
}

/// Per record and layer, `‖g_i,l‖²` (cached in the set: they do not depend on the probe).
fn squared_norms(set: &GradientSet) -> &[f64] {
    set.squared_norms.get_or_init(|| {
        let n_layers = set.layer_dims.len();
        let mut out = vec![0.0; set.len() * n_layers];
        out.par_chunks_mut(CHUNK_RECORDS * n_layers).enumerate().for_each(|(chunk, norms)| {
            for (k, row) in norms.chunks_mut(n_layers).enumerate() {
                for (norm, g) in row.iter_mut().zip(set.layers(chunk * CHUNK_RECORDS + k)) {
                    *norm = dot(g, g);
                }
            }
        });
        out
    })
}

fn cosine(set: &GradientSet, probe: &[Vec<f32>]) -> Vec<f64> {
    let n_layers = probe.len();
    let norms = squared_norms(set);
    let probe_norms: Vec<f64> = probe.iter().map(|p| dot(p, p).sqrt()).collect();
    score_rows(set, probe, |i, dots| {
        let mut sum = 0.0;
        for (l, d) in dots.iter().enumerate() {
            let denominator = probe_norms[l] * norms[i * n_layers + l].sqrt();
            if denominator > 0.0 {
                sum += d / denominator;
            }
        }
        sum / n_layers as f64
    })
}

/// Widest layer for which DataInf keeps its per-layer operator as a matrix (`d × d` f64): with
/// projected gradients (64 values per layer by default) the matrix makes a probe cost one pass
/// over the rows instead of three; full-width gradients keep the three passes.
pub const MAX_DATAINF_MATRIX_DIM: usize = 1024;

/// What DataInf needs of a set besides the probe: per layer, the damping `λ_l` and, for narrow
/// layers, `M_l = Σ_j ĝ_j ĝ_jᵀ / (λ_l + ‖ĝ_j‖²)` (row-major), so that the sum DataInf takes over
/// the records for a probe `p` is `M_l p`.
#[derive(Clone, Debug)]
pub(crate) struct DataInfOperator {
    lambda: Vec<f64>,
    matrices: Option<Vec<Vec<f64>>>,
}

/// DataInf: per layer, `w_l = H_l⁻¹ p_l` with
/// `H_l⁻¹ v ≈ (1/λ_l)(v − (1/n) Σ_j ⟨v,g_j⟩/(λ_l + ‖g_j‖²) g_j)`, then `score_i = Σ_l ⟨w_l, g_i,l⟩`
/// (the approximation is symmetric, so `⟨p, H⁻¹ g_i⟩ = ⟨H⁻¹ p, g_i⟩` and one `w` serves all rows).
/// `normalized`: every record's and the probe's layer gradient is first scaled to unit norm.
fn datainf(set: &GradientSet, probe: &[Vec<f32>], normalized: bool) -> Vec<f64> {
    let operator = set.datainf[usize::from(normalized)].get_or_init(|| datainf_operator(set, normalized, true));
    datainf_with(set, probe, normalized, operator)
}

fn datainf_with(set: &GradientSet, probe: &[Vec<f32>], normalized: bool, operator: &DataInfOperator) -> Vec<f64> {
    let n_layers = probe.len();
    let n = set.len() as f64;
    let probe: Vec<Vec<f32>> = if normalized { probe.iter().map(|p| unit(p)).collect() } else { probe.to_vec() };
    let scale = row_scales(set, normalized);
    let lambda = &operator.lambda;
    let u: Vec<Vec<f64>> = match &operator.matrices {
        // u_l = M_l p_l: no pass over the rows.
        Some(matrices) => matrices
            .iter()
            .zip(&probe)
            .map(|(m, p)| {
                m.chunks_exact(p.len()).map(|row| row.iter().zip(p).map(|(a, &b)| a * b as f64).sum()).collect()
            })
            .collect(),
        None => {
            // Pass 1: per row and layer, ⟨p_l, g_j,l⟩ (‖g_j,l‖² is cached in the set).
            let norms = squared_norms(set);
            let dots = layer_dots(set, &probe);
            // c_j,l = ⟨p_l, ĝ_j,l⟩ / (λ_l + ‖ĝ_j,l‖²), times ĝ's scale so pass 2 can sum raw rows.
            let coefficients: Vec<f64> = (0..set.len() * n_layers)
                .map(|k| {
                    let (l, s) = (k % n_layers, scale[k]);
                    dots[k] * s / (lambda[l] + norms[k] * s * s) * s
                })
                .collect();
            // Pass 2: u_l = Σ_j c_j,l ĝ_j,l, in fixed chunks combined in order.
            weighted_sum(set, &coefficients)
        }
    };
    let w: Vec<Vec<f32>> = (0..n_layers)
        .map(|l| probe[l].iter().zip(&u[l]).map(|(&p, &u)| ((p as f64 - u / n) / lambda[l]) as f32).collect())
        .collect();
    // The pass every probe pays: ⟨w_l, ĝ_i,l⟩.
    score_rows(set, &w, |i, dots| dots.iter().enumerate().map(|(l, d)| d * scale[i * n_layers + l]).sum())
}

/// Per row and layer, what scales `g` to `ĝ`: 1, or `1/‖g‖` for unit-norm DataInf.
fn row_scales(set: &GradientSet, normalized: bool) -> Vec<f64> {
    let norms = squared_norms(set);
    if normalized {
        norms.iter().map(|&s| if s > 0.0 { 1.0 / s.sqrt() } else { 0.0 }).collect()
    } else {
        vec![1.0; norms.len()]
    }
}

/// The damping per layer and, when every layer is at most [`MAX_DATAINF_MATRIX_DIM`] wide and
/// `matrices` is asked for, the operators `M_l` (sums in fixed chunks, combined in order).
fn datainf_operator(set: &GradientSet, normalized: bool, matrices: bool) -> DataInfOperator {
    let n_layers = set.layer_dims.len();
    let n = set.len() as f64;
    let norms = squared_norms(set);
    let scale = row_scales(set, normalized);
    let lambda: Vec<f64> = (0..n_layers)
        .map(|l| {
            let squares: f64 = (0..set.len()).map(|i| norms[i * n_layers + l] * scale[i * n_layers + l].powi(2)).sum();
            let lambda = DATAINF_DAMPING * squares / n / set.layer_dims[l] as f64;
            // An all-zero layer contributes nothing; any positive λ keeps the division finite.
            if lambda > 0.0 { lambda } else { 1.0 }
        })
        .collect();
    let narrow = set.layer_dims.iter().all(|&d| d <= MAX_DATAINF_MATRIX_DIM);
    let matrices = (matrices && narrow).then(|| {
        let chunks = set.len().div_ceil(CHUNK_RECORDS);
        let partial: Vec<Vec<Vec<f64>>> = (0..chunks)
            .into_par_iter()
            .map(|chunk| {
                let mut sums: Vec<Vec<f64>> = set.layer_dims.iter().map(|&d| vec![0.0; d * d]).collect();
                let mut g = Vec::new();
                for i in chunk * CHUNK_RECORDS..((chunk + 1) * CHUNK_RECORDS).min(set.len()) {
                    for (l, raw) in set.layers(i).enumerate() {
                        let k = i * n_layers + l;
                        let weight = scale[k] * scale[k] / (lambda[l] + norms[k] * scale[k] * scale[k]);
                        g.clear();
                        g.extend(raw.iter().map(|&v| v as f64));
                        let d = g.len();
                        for (a, row) in g.iter().zip(sums[l].chunks_exact_mut(d)) {
                            let wa = weight * a;
                            for (m, b) in row.iter_mut().zip(&g) {
                                *m += wa * b;
                            }
                        }
                    }
                }
                sums
            })
            .collect();
        let mut total: Vec<Vec<f64>> = set.layer_dims.iter().map(|&d| vec![0.0; d * d]).collect();
        for sums in partial {
            for (t, s) in total.iter_mut().zip(sums) {
                for (t, s) in t.iter_mut().zip(s) {
                    *t += s;
                }
            }
        }
        total
    });
    DataInfOperator { lambda, matrices }
}

/// `Σ_i coefficients[i*L+l] · g_i,l` per layer, in f64: per chunk in parallel, then the chunks'
/// sums added in chunk order.
fn weighted_sum(set: &GradientSet, coefficients: &[f64]) -> Vec<Vec<f64>> {
    let n_layers = set.layer_dims.len();
    let chunks = set.len().div_ceil(CHUNK_RECORDS);
    let partial: Vec<Vec<Vec<f64>>> = (0..chunks)
        .into_par_iter()
        .map(|chunk| {
            let mut sum: Vec<Vec<f64>> = set.layer_dims.iter().map(|&d| vec![0.0; d]).collect();
            for i in chunk * CHUNK_RECORDS..((chunk + 1) * CHUNK_RECORDS).min(set.len()) {
                for (l, g) in set.layers(i).enumerate() {
                    let c = coefficients[i * n_layers + l];
                    for (s, &v) in sum[l].iter_mut().zip(g) {
                        *s += c * v as f64;
                    }
                }
            }
            sum
        })
        .collect();
    let mut total: Vec<Vec<f64>> = set.layer_dims.iter().map(|&d| vec![0.0; d]).collect();
    for sum in partial {
        for (t, s) in total.iter_mut().zip(sum) {
            for (t, s) in t.iter_mut().zip(s) {
                *t += s;
            }
        }
    }
    total
}

fn unit(v: &[f32]) -> Vec<f32> {
    let norm = dot(v, v).sqrt();
    if norm > 0.0 { v.iter().map(|&x| (x as f64 / norm) as f32).collect() } else { vec![0.0; v.len()] }
}

/// Lanes of the f32 accumulator: eight independent sums the compiler keeps in one SIMD register.
const DOT_LANES: usize = 8;
/// Values accumulated in f32 before the lanes are added into the f64 total: short enough that
/// f32 rounding stays below the f64 result's use, long enough to stay vectorised.
const DOT_BLOCK: usize = 256;

/// `⟨a, b⟩` in a fixed order: blocks of [`DOT_BLOCK`] in eight f32 lanes, blocks added in f64.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f64 {
    debug_assert_eq!(a.len(), b.len());
    let mut total = 0.0f64;
    for (a, b) in a.chunks(DOT_BLOCK).zip(b.chunks(DOT_BLOCK)) {
        let mut lanes = [0.0f32; DOT_LANES];
        let (a8, b8) = (a.chunks_exact(DOT_LANES), b.chunks_exact(DOT_LANES));
        let (ar, br) = (a8.remainder(), b8.remainder());
        for (x, y) in a8.zip(b8) {
            for k in 0..DOT_LANES {
                lanes[k] += x[k] * y[k];
            }
        }
        for (k, (x, y)) in ar.iter().zip(br).enumerate() {
            lanes[k] += x * y;
        }
        total += lanes.iter().map(|&v| v as f64).sum::<f64>();
    }
    total
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use openledger_core::ContentHash;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;

    fn random_set(rng: &mut StdRng, n: usize, dims: &[usize]) -> (GradientSet, Vec<Vec<Vec<f32>>>) {
        let rows: Vec<Vec<Vec<f32>>> = (0..n)
            .map(|i| {
                let magnitude = 1.0 + (i % 5) as f32; // rows of unequal size, as real gradients are
                dims.iter().map(|&d| (0..d).map(|_| magnitude * rng.random_range(-1.0..1.0)).collect()).collect()
            })
            .collect();
        let records = (0..n).map(|i| ContentHash::of(&(i as u64).to_le_bytes())).collect();
        (GradientSet::new(records, rows.clone()).unwrap(), rows)
    }

    fn naive_dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-5 * a.abs().max(b.abs()).max(1e-3)
    }

    #[test]
    fn dot_matches_the_naive_sum_on_long_and_odd_lengths() {
        let mut rng = StdRng::seed_from_u64(1);
        for len in [0, 1, 7, 8, 255, 256, 257, 1000] {
            let a: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0..1.0)).collect();
            let b: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0..1.0)).collect();
            assert!(close(dot(&a, &b), naive_dot(&a, &b)), "len {len}");
        }
    }

    #[test]
    fn tracin_and_cosine_equal_their_formulas() {
        let mut rng = StdRng::seed_from_u64(2);
        let dims = [5, 3];
        let (set, rows) = random_set(&mut rng, 9, &dims);
        let (_, probe) = random_set(&mut rng, 1, &dims);
        let probe = &probe[0];
        let tracin = scores(&set, probe, Estimator::TracIn).unwrap();
        let cosine = scores(&set, probe, Estimator::Cosine).unwrap();
        for (i, row) in rows.iter().enumerate() {
            let expected: f64 = row.iter().zip(probe).map(|(g, p)| naive_dot(g, p)).sum();
            assert!(close(tracin[i], expected), "{} vs {expected}", tracin[i]);
            let expected: f64 = row
                .iter()
                .zip(probe)
                .map(|(g, p)| naive_dot(g, p) / (naive_dot(g, g).sqrt() * naive_dot(p, p).sqrt()))
                .sum::<f64>()
                / 2.0;
            assert!(close(cosine[i], expected), "{} vs {expected}", cosine[i]);
        }
    }

    /// The naive DataInf: per layer, `H⁻¹ g_i` term by term with the Sherman–Morrison inverse of
    /// each `(g_j g_jᵀ + λI)`, averaged: `(1/n) Σ_j (g_j g_jᵀ + λI)⁻¹ g_i`, dotted with the probe.
    fn naive_datainf(rows: &[Vec<Vec<f32>>], probe: &[Vec<f32>], normalized: bool) -> Vec<f64> {
        let to64 = |v: &[f32]| -> Vec<f64> {
            let v: Vec<f64> = v.iter().map(|&x| x as f64).collect();
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            if normalized { v.iter().map(|x| x / norm).collect() } else { v }
        };
        let n = rows.len();
        let mut out = vec![0.0; n];
        for l in 0..probe.len() {
            let g: Vec<Vec<f64>> = rows.iter().map(|r| to64(&r[l])).collect();
            let p = to64(&probe[l]);
            let d64 = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
            let lambda = 0.1 * g.iter().map(|g| d64(g, g)).sum::<f64>() / n as f64 / g[0].len() as f64;
            for (i, gi) in g.iter().enumerate() {
                let mut hinv_gi = vec![0.0; gi.len()];
                for gj in &g {
                    // (g gᵀ + λI)⁻¹ v = (v − g ⟨g,v⟩/(λ + ‖g‖²)) / λ
                    let c = d64(gj, gi) / (lambda + d64(gj, gj));
                    for (h, (v, gjk)) in hinv_gi.iter_mut().zip(gi.iter().zip(gj)) {
                        *h += (v - c * gjk) / lambda / n as f64;
                    }
                }
                out[i] += d64(&p, &hinv_gi);
            }
        }
        out
    }

    #[test]
    fn datainf_by_matrix_equals_datainf_by_three_passes() {
        let mut rng = StdRng::seed_from_u64(9);
        let dims = [6, 4];
        // More rows than one chunk, so the operator's chunked sums are exercised.
        let (set, _) = random_set(&mut rng, 700, &dims);
        let (_, probe) = random_set(&mut rng, 1, &dims);
        let probe = &probe[0];
        for normalized in [false, true] {
            let by_matrix = datainf_with(&set, probe, normalized, &datainf_operator(&set, normalized, true));
            let by_passes = datainf_with(&set, probe, normalized, &datainf_operator(&set, normalized, false));
            for (a, b) in by_matrix.iter().zip(&by_passes) {
                assert!(close(*a, *b), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn datainf_equals_the_averaged_sherman_morrison_inverse() {
        let mut rng = StdRng::seed_from_u64(3);
        let dims = [6, 4, 5];
        let (set, rows) = random_set(&mut rng, 11, &dims);
        let (_, probe) = random_set(&mut rng, 1, &dims);
        for (estimator, normalized) in [(Estimator::DataInf, false), (Estimator::DataInfNormalized, true)] {
            let got = scores(&set, &probe[0], estimator).unwrap();
            let expected = naive_datainf(&rows, &probe[0], normalized);
            for (g, e) in got.iter().zip(&expected) {
                assert!(close(*g, *e), "{estimator:?}: {g} vs {e}");
            }
        }
    }

    #[test]
    fn a_record_aligned_with_the_probe_scores_highest_under_every_estimator() {
        let mut rng = StdRng::seed_from_u64(4);
        let dims = [64, 64];
        let (_, mut rows) = random_set(&mut rng, 40, &dims);
        let (_, probe) = random_set(&mut rng, 1, &dims);
        // Record 17 is the probe's direction; the others are random, some of them larger.
        rows[17] = probe[0].iter().map(|l| l.iter().map(|v| 3.0 * v).collect()).collect();
        let records = (0..40u64).map(|i| ContentHash::of(&i.to_le_bytes())).collect();
        let set = GradientSet::new(records, rows).unwrap();
        for estimator in Estimator::ALL {
            let s = scores(&set, &probe[0], estimator).unwrap();
            let best = (0..s.len()).max_by(|&a, &b| s[a].total_cmp(&s[b])).unwrap();
            assert_eq!(best, 17, "{estimator:?}: {s:?}");
            assert!(s[17] > 0.0);
        }
    }

    #[test]
    fn scores_are_the_same_bytes_on_one_thread_and_on_many() {
        let mut rng = StdRng::seed_from_u64(5);
        let dims = [300, 40];
        let (set, _) = random_set(&mut rng, 3 * CHUNK_RECORDS + 17, &dims);
        let (_, probe) = random_set(&mut rng, 1, &dims);
        let run = |threads: usize| -> Vec<Vec<u64>> {
            // A fresh set: its cached norms are computed on this pool too.
            let set = GradientSet { squared_norms: Default::default(), ..set.clone() };
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                Estimator::ALL
                    .iter()
                    .map(|&e| scores(&set, &probe[0], e).unwrap().iter().map(|s| s.to_bits()).collect())
                    .collect()
            })
        };
        let one = run(1);
        assert_eq!(one, run(3));
        assert_eq!(one, run(1));
    }

    #[test]
    fn a_probe_of_another_layout_is_a_mismatch() {
        let mut rng = StdRng::seed_from_u64(6);
        let (set, _) = random_set(&mut rng, 3, &[4, 4]);
        let err = scores(&set, &[vec![0.0; 4]], Estimator::TracIn).unwrap_err();
        assert!(matches!(err, AttributionError::Mismatch(_)), "{err}");
        let err = scores(&set, &[vec![f32::NAN; 4], vec![0.0; 4]], Estimator::TracIn).unwrap_err();
        assert!(err.to_string().contains("not finite"), "{err}");
    }
}
