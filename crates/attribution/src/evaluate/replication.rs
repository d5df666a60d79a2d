//! Payout inflation under copying: what a contributor's identities are paid when he adds
//! copies of his records under new identities, over what he is paid without them
//! (`R = with ÷ without`; 1 means copying gains nothing). Measured on influence-only
//! attributions of held-out probes, with the credit rule and, for comparison, without it.

use serde::{Deserialize, Serialize};

use crate::blend::{Evidence, blend};
use crate::corpus::{Corpus, CorpusRecord};
use crate::credit::{CreditGroups, CreditParams};
use crate::influence::{Estimator, GradientSet, scores};
use crate::{AttributionError, Result};

/// Copies added to a corpus: each record with its gradient under the same adapter.
pub struct Copies {
    pub records: Vec<CorpusRecord>,
    pub gradients: Vec<Vec<Vec<f32>>>,
}

/// `R` with the credit rule and without it (every record its own group).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Inflation {
    pub with_rule: f64,
    pub without_rule: f64,
}

/// The payout inflation of `contributors` (the copier's identities, old and new) when
/// `copies` join `corpus`, summed over the attributions of `probes`.
pub fn payout_inflation(
    corpus: &Corpus,
    gradients: &GradientSet,
    copies: &Copies,
    contributors: &[String],
    probes: &[Vec<Vec<f32>>],
    estimator: Estimator,
) -> Result<Inflation> {
    if gradients.len() != corpus.records.len() || copies.records.len() != copies.gradients.len() {
        return Err(AttributionError::invalid("one gradient per record is needed"));
    }
    let mut records = corpus.records.clone();
    let mut rows: Vec<Vec<Vec<f32>>> =
        (0..gradients.len()).map(|i| gradients.layers(i).map(<[f32]>::to_vec).collect()).collect();
    let last = records.last().map_or(0, |r| r.position);
    for (offset, copy) in copies.records.iter().enumerate() {
        records.push(CorpusRecord { position: last + 1 + offset as u64, ..copy.clone() });
    }
    rows.extend(copies.gradients.iter().cloned());
    let with = Corpus::new(corpus.name.clone(), corpus.kind, records)?;
    let with_gradients = GradientSet::new(with.records.iter().map(|r| r.hash).collect(), rows)?;
    let paid =
        |c: &Corpus, g: &GradientSet, groups: &CreditGroups| paid_to(c, g, groups, contributors, probes, estimator);
    let rule = |c: &Corpus| CreditGroups::build(c, &CreditParams::default());
    let singletons = |c: &Corpus| CreditGroups::singletons(c.records.len());
    let ratio = |with: f64, without: f64| if without > 0.0 { with / without } else { f64::NAN };
    Ok(Inflation {
        with_rule: ratio(paid(&with, &with_gradients, &rule(&with)?)?, paid(corpus, gradients, &rule(corpus)?)?),
        without_rule: ratio(
            paid(&with, &with_gradients, &singletons(&with))?,
            paid(corpus, gradients, &singletons(corpus))?,
        ),
    })
}

/// Parts per billion paid to `contributors` over every probe's attribution.
fn paid_to(
    corpus: &Corpus,
    gradients: &GradientSet,
    groups: &CreditGroups,
    contributors: &[String],
    probes: &[Vec<Vec<f32>>],
    estimator: Estimator,
) -> Result<f64> {
    let mut total = 0u64;
    for probe in probes {
        let influence = scores(gradients, probe, estimator)?;
        let evidence = Evidence { corpus, groups, output_bytes: 0, spans: &[], influence: Some(&influence) };
        total += blend(&evidence)?
            .weights
            .iter()
            .filter(|w| contributors.contains(&w.contributor))
            .map(|w| w.weight_ppb)
            .sum::<u64>();
    }
    Ok(total as f64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use openledger_core::ContentHash;
    use openledger_ml::train::data::RecordKind;

    use super::*;

    fn record(i: u64, text: &str, contributor: &str) -> CorpusRecord {
        CorpusRecord {
            position: i,
            hash: ContentHash::of(format!("{i}/{text}/{contributor}").as_bytes()),
            contribution: format!("{contributor}-{i}"),
            contributor: contributor.into(),
            text: text.into(),
        }
    }

    const TEXTS: [&str; 3] = [
        "glaciers carve deep valleys over thousands of years as the ice grinds the rock beneath it slowly",
        "a balanced budget needs income and spending tracked every month with a margin for surprises",
        "octopuses change colour in a fraction of a second using cells packed with pigment under the skin",
    ];

    #[test]
    fn copies_under_new_identities_inflate_nothing_under_the_rule_and_a_lot_without_it() {
        let corpus = Corpus::new(
            "t",
            RecordKind::Text,
            vec![record(0, TEXTS[0], "honest"), record(1, TEXTS[1], "other"), record(2, TEXTS[2], "third")],
        )
        .unwrap();
        let rows = vec![vec![vec![1.0, 0.0]], vec![vec![0.0, 1.0]], vec![vec![0.6, 0.6]]];
        let gradients = GradientSet::new(corpus.records.iter().map(|r| r.hash).collect(), rows).unwrap();
        let mut rng = rand::SeedableRng::seed_from_u64(7);
        let edited = crate::evaluate::corpus::replace_tenth(&mut rng, TEXTS[0], &["stone", "river", "slow"]);
        assert_ne!(edited, TEXTS[0]);
        let copies = Copies {
            records: vec![record(0, TEXTS[0], "sock-1"), record(0, &edited, "sock-2")],
            gradients: vec![vec![vec![1.0, 0.0]], vec![vec![0.95, 0.05]]],
        };
        let identities: Vec<String> = ["honest", "sock-1", "sock-2"].map(String::from).to_vec();
        let probes = vec![vec![vec![1.0, 0.2]], vec![vec![0.3, 1.0]]];
        let r = payout_inflation(&corpus, &gradients, &copies, &identities, &probes, Estimator::TracIn).unwrap();
        assert!((r.with_rule - 1.0).abs() < 1e-6, "{r:?}");
        assert!(r.without_rule > 1.5, "{r:?}");
    }
}
