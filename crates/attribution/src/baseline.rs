//! Baselines the influence estimators are measured against: KNN-Shapley (Jia et al. 2019, "Efficient
//! task-specific data valuation for nearest neighbor algorithms"), the exact Shapley value of each
//! training point for a K-nearest-neighbour classifier, on any features (sentence embeddings,
//! TF-IDF); and seeded random scores, the floor every method must beat.

use std::collections::HashMap;

use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::{AttributionError, Result};

/// Each training point's KNN-Shapley value, averaged over the test points: for each test point
/// the exact recursion of Jia et al. (Theorem 1) over the training points sorted by distance,
/// O(N log N). The utility is the K-NN classifier's likelihood of the right label,
/// `U(S) = (1/K) Σ_{k ≤ min(K,|S|)} 1[y_(k) = y_test]`. Euclidean distance (on unit vectors,
/// the order of cosine similarity); equal distances keep the training order.
pub fn knn_shapley(
    train: &[Vec<f32>],
    train_labels: &[usize],
    test: &[Vec<f32>],
    test_labels: &[usize],
    k: usize,
) -> Result<Vec<f64>> {
    if train.len() != train_labels.len() || test.len() != test_labels.len() {
        return Err(AttributionError::invalid("knn-shapley needs one label per point"));
    }
    if train.is_empty() || test.is_empty() || k == 0 {
        return Err(AttributionError::invalid("knn-shapley needs training points, test points and k ≥ 1"));
    }
    let n = train.len();
    let mut values = vec![0f64; n];
    for (x, &y) in test.iter().zip(test_labels) {
        let distances: Vec<f64> = train.iter().map(|t| squared_distance(t, x)).collect();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&i, &j| distances[i].total_cmp(&distances[j]));
        let hit = |rank: usize| f64::from(u8::from(train_labels[order[rank]] == y));
        // s_(N) = 1[y_(N) = y] / N; s_(i) = s_(i+1) + (1[y_(i)=y] − 1[y_(i+1)=y]) / K · min(K, i) / i
        let mut s = hit(n - 1) / n as f64;
        values[order[n - 1]] += s;
        for rank in (0..n - 1).rev() {
            let i = (rank + 1) as f64; // 1-based position
            s += (hit(rank) - hit(rank + 1)) / k as f64 * (k as f64).min(i) / i;
            values[order[rank]] += s;
        }
    }
    let m = test.len() as f64;
    Ok(values.into_iter().map(|v| v / m).collect())
}

/// TF-IDF vectors of lowercased alphanumeric words (smoothed idf `ln((1+N)/(1+df)) + 1`, as
/// scikit-learn's default), L2-normalised, over the vocabulary of `texts`.
pub fn tfidf(texts: &[&str]) -> Vec<Vec<f32>> {
    let documents: Vec<Vec<String>> = texts.iter().map(|t| words(t)).collect();
    let mut vocabulary: HashMap<&str, usize> = HashMap::new();
    let mut document_frequency: Vec<usize> = Vec::new();
    for document in &documents {
        let mut seen: Vec<usize> = document
            .iter()
            .map(|w| {
                let next = vocabulary.len();
                *vocabulary.entry(w.as_str()).or_insert(next)
            })
            .collect();
        document_frequency.resize(vocabulary.len(), 0);
        seen.sort_unstable();
        seen.dedup();
        for id in seen {
            document_frequency[id] += 1;
        }
    }
    let n = texts.len() as f64;
    let idf: Vec<f64> = document_frequency.iter().map(|&df| ((1.0 + n) / (1.0 + df as f64)).ln() + 1.0).collect();
    documents
        .iter()
        .map(|document| {
            let mut v = vec![0f64; vocabulary.len()];
            for w in document {
                v[vocabulary[w.as_str()]] += 1.0;
            }
            v.iter_mut().zip(&idf).for_each(|(x, idf)| *x *= idf);
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
            v.into_iter().map(|x| (x / norm) as f32).collect()
        })
        .collect()
}

/// Seeded uniform scores in [0, 1): the baseline that knows nothing.
pub fn random_scores(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random::<f64>()).collect()
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

fn squared_distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2)).sum()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The K-NN utility of a subset of training points for one test point.
    fn utility(subset: &[usize], distances: &[f64], labels: &[usize], y: usize, k: usize) -> f64 {
        let mut sorted = subset.to_vec();
        sorted.sort_by(|&i, &j| distances[i].total_cmp(&distances[j]).then(i.cmp(&j)));
        sorted.iter().take(k).filter(|&&i| labels[i] == y).count() as f64 / k as f64
    }

    /// Shapley values by brute force: the mean marginal contribution over every permutation.
    fn brute_force(train: &[Vec<f32>], labels: &[usize], x: &[f32], y: usize, k: usize) -> Vec<f64> {
        let n = train.len();
        let distances: Vec<f64> = train.iter().map(|t| squared_distance(t, x)).collect();
        let mut values = vec![0f64; n];
        let mut permutation: Vec<usize> = (0..n).collect();
        let mut count = 0usize;
        permute(&mut permutation, 0, &mut |order| {
            count += 1;
            let mut prefix = Vec::new();
            for &i in order {
                let before = utility(&prefix, &distances, labels, y, k);
                prefix.push(i);
                values[i] += utility(&prefix, &distances, labels, y, k) - before;
            }
        });
        values.into_iter().map(|v| v / count as f64).collect()
    }

    fn permute(items: &mut Vec<usize>, from: usize, visit: &mut dyn FnMut(&[usize])) {
        if from == items.len() {
            visit(items);
            return;
        }
        for i in from..items.len() {
            items.swap(from, i);
            permute(items, from + 1, visit);
            items.swap(from, i);
        }
    }

    fn random_points(n: usize, seed: u64) -> (Vec<Vec<f32>>, Vec<usize>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let points = (0..n).map(|_| (0..3).map(|_| rng.random_range(-1.0..1.0)).collect()).collect();
        let labels = (0..n).map(|_| rng.random_range(0..2)).collect();
        (points, labels)
    }

    #[test]
    fn knn_shapley_equals_the_brute_force_shapley_value_over_all_permutations() {
        for (n, k, seed) in [(5, 1, 1), (6, 2, 2), (7, 3, 3), (7, 5, 4), (4, 6, 5)] {
            let (train, labels) = random_points(n, seed);
            let (test, test_labels) = random_points(2, seed + 100);
            let fast = knn_shapley(&train, &labels, &test, &test_labels, k).unwrap();
            let mut exact = vec![0f64; n];
            for (x, &y) in test.iter().zip(&test_labels) {
                for (e, v) in exact.iter_mut().zip(brute_force(&train, &labels, x, y, k)) {
                    *e += v / 2.0;
                }
            }
            for (a, b) in fast.iter().zip(&exact) {
                assert!((a - b).abs() < 1e-9, "n={n} k={k}: {fast:?} vs {exact:?}");
            }
        }
    }

    #[test]
    fn knn_shapley_values_sum_to_the_utility_of_the_whole_set() {
        // Efficiency: Σ φ_i = U(all) − U(∅), and U(∅) = 0.
        let (train, labels) = random_points(7, 9);
        let (test, test_labels) = random_points(1, 10);
        let values = knn_shapley(&train, &labels, &test, &test_labels, 3).unwrap();
        let distances: Vec<f64> = train.iter().map(|t| squared_distance(t, &test[0])).collect();
        let all: Vec<usize> = (0..7).collect();
        let whole = utility(&all, &distances, &labels, test_labels[0], 3);
        assert!((values.iter().sum::<f64>() - whole).abs() < 1e-12);
    }

    #[test]
    fn knn_shapley_refuses_mismatched_inputs() {
        assert!(knn_shapley(&[vec![0.0]], &[], &[vec![0.0]], &[0], 1).is_err());
        assert!(knn_shapley(&[vec![0.0]], &[0], &[vec![0.0]], &[0], 0).is_err());
    }

    #[test]
    fn tfidf_vectors_are_unit_length_and_rare_words_weigh_more() {
        let v = tfidf(&["the cat", "the dog", "the cat sat"]);
        assert_eq!(v.len(), 3);
        for row in &v {
            let norm: f32 = row.iter().map(|x| x * x).sum();
            assert!((norm - 1.0).abs() < 1e-5);
        }
        // In "the dog", "dog" (in one document) outweighs "the" (in all three).
        let (the, dog) = (0, 2);
        assert!(v[1][dog] > v[1][the]);
    }

    #[test]
    fn random_scores_are_seeded() {
        assert_eq!(random_scores(5, 1), random_scores(5, 1));
        assert_ne!(random_scores(5, 1), random_scores(5, 2));
    }
}
