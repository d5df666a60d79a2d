//! The measures the evaluation reports: ROC-AUC (is a detector's ranking of contributors right),
//! Spearman rank correlation (the linear datamodeling score's per-example measure) and payout
//! inflation (how much copying under new identities raises a copier's pay).

/// The area under the ROC curve of `scores` for telling `positive` items from the others: the
/// chance that a random positive scores above a random negative, ties counting one half.
/// `None` without at least one positive and one negative, or with a non-finite score.
pub fn roc_auc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    assert_eq!(scores.len(), positive.len(), "one label per score");
    if scores.iter().any(|s| !s.is_finite()) {
        return None;
    }
    let ranks = average_ranks(scores);
    let positives = positive.iter().filter(|&&p| p).count();
    let negatives = positive.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    // Mann–Whitney U from the positives' rank sum; average ranks give ties one half.
    let rank_sum: f64 = ranks.iter().zip(positive).filter(|(_, p)| **p).map(|(r, _)| r).sum();
    let u = rank_sum - (positives * (positives + 1)) as f64 / 2.0;
    Some(u / (positives * negatives) as f64)
}

/// Spearman's rank correlation of two equally long series (ties get their average rank).
/// `None` for fewer than two points, a constant series or a non-finite value.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    assert_eq!(a.len(), b.len(), "two series of one length");
    if a.len() < 2 || a.iter().chain(b).any(|v| !v.is_finite()) {
        return None;
    }
    pearson(&average_ranks(a), &average_ranks(b))
}

/// Payout inflation `R`: what a copier's identities are paid together with its copies in the
/// corpus, over what the original record's contributor is paid without them. 1 means copying
/// gained nothing; `None` when nothing was paid without copies.
pub fn payout_inflation(copier_paid_with_copies: f64, paid_without_copies: f64) -> Option<f64> {
    (paid_without_copies > 0.0).then(|| copier_paid_with_copies / paid_without_copies)
}

/// 1-based ranks, tied values sharing the mean of the ranks they span.
fn average_ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&i, &j| values[i].total_cmp(&values[j]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        let rank = (start + end + 1) as f64 / 2.0; // mean of start+1 ..= end
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        start = end;
    }
    ranks
}

fn pearson(a: &[f64], b: &[f64]) -> Option<f64> {
    let n = a.len() as f64;
    let (mean_a, mean_b) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut cov, mut var_a, mut var_b) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        cov += (x - mean_a) * (y - mean_b);
        var_a += (x - mean_a).powi(2);
        var_b += (y - mean_b).powi(2);
    }
    (var_a > 0.0 && var_b > 0.0).then(|| cov / (var_a * var_b).sqrt())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn auc_is_one_for_a_perfect_ranking_zero_for_a_reversed_one_and_a_half_for_all_ties() {
        let positive = [true, true, false, false];
        assert_eq!(roc_auc(&[0.9, 0.8, 0.2, 0.1], &positive), Some(1.0));
        assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &positive), Some(0.0));
        assert_eq!(roc_auc(&[0.5; 4], &positive), Some(0.5));
    }

    #[test]
    fn auc_counts_a_tied_pair_as_one_half() {
        // Pairs (positive, negative): (3,1) win, (3,2) win, (2,1) win, (2,2) tie → 3.5 / 4.
        assert_eq!(roc_auc(&[3.0, 2.0, 1.0, 2.0], &[true, true, false, false]), Some(0.875));
        // One positive at 0.4 against negatives 0.1, 0.4, 0.7: win, tie, loss → 1.5 / 3.
        assert_eq!(roc_auc(&[0.4, 0.1, 0.4, 0.7], &[true, false, false, false]), Some(0.5));
    }

    #[test]
    fn auc_needs_both_classes_and_finite_scores() {
        assert_eq!(roc_auc(&[1.0, 2.0], &[true, true]), None);
        assert_eq!(roc_auc(&[1.0, 2.0], &[false, false]), None);
        assert_eq!(roc_auc(&[f64::NAN, 2.0], &[true, false]), None);
    }

    #[test]
    fn spearman_is_one_for_any_increasing_map_and_minus_one_for_a_decreasing_one() {
        let a = [1.0, 2.0, 3.0, 4.0, 5.0];
        let cubes: Vec<f64> = a.iter().map(|x: &f64| x.powi(3)).collect();
        assert!((spearman(&a, &cubes).unwrap() - 1.0).abs() < 1e-12);
        let negated: Vec<f64> = a.iter().map(|x| -x).collect();
        assert!((spearman(&a, &negated).unwrap() + 1.0).abs() < 1e-12);
    }

    #[test]
    fn spearman_averages_tied_ranks() {
        // Ranks of b: [1.5, 1.5, 3, 4]; Pearson of [1,2,3,4] with them is 0.9486832980505138.
        let rho = spearman(&[1.0, 2.0, 3.0, 4.0], &[7.0, 7.0, 8.0, 9.0]).unwrap();
        assert!((rho - 0.948_683_298_050_513_8).abs() < 1e-12, "{rho}");
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[5.0, 5.0, 5.0]), None, "a constant series has no rank order");
        assert_eq!(spearman(&[1.0], &[2.0]), None);
    }

    #[test]
    fn payout_inflation_is_the_ratio_of_pay_with_copies_to_pay_without() {
        assert_eq!(payout_inflation(3.0, 1.0), Some(3.0));
        assert_eq!(payout_inflation(1.0, 1.0), Some(1.0));
        assert_eq!(payout_inflation(1.0, 0.0), None);
    }
}
