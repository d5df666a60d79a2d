//! What each record of a contribution becomes (fresh, or a duplicate of whose credit) and the
//! contribution's status from its records' quality and the policy.

use std::collections::HashSet;

use openledger_core::ContentHash;
use openledger_proto::datanet::v1::{self as pb, ContributionStatus};

use crate::{
    DatanetError,
    dedup::{DedupParams, NearDuplicateIndex, Signature},
    limits,
};

use super::contribute::NewContribution;
use super::index::{DatanetIndex, index_full};

/// What one record became.
pub(super) struct Decided {
    pub(super) ordinal: usize,
    pub(super) hash: ContentHash,
    pub(super) quality: u32,
    pub(super) duplicate_of: Option<String>,
    /// The signature the record is indexed under (and stored with).
    pub(super) minhash: Option<Signature>,
    pub(super) size: usize,
}

/// Decides each record (fresh or a duplicate of whose credit) and the contribution's status,
/// adding fresh records to the index as it goes (so copies inside one file are caught too).
pub(super) fn decide(
    new: &NewContribution,
    index: &mut DatanetIndex,
    policy: &pb::ContributionPolicy,
    dedup: &DedupParams,
) -> Result<(ContributionStatus, String, Vec<Decided>), DatanetError> {
    let threshold = f64::from(policy.near_duplicate_jaccard_ppt) / f64::from(limits::PARTS_PER_THOUSAND);
    let accept_at = DedupParams { threshold, ..*dedup }.accept_at();
    let mut decided = Vec::with_capacity(new.records.len());
    // Copies inside this file are checked against the file's own fresh records; those join
    // the Datanet's index only if the contribution holds credit (accepted or pending review).
    let mut file_exact = HashSet::new();
    let mut file_near = NearDuplicateIndex::new(DedupParams { max_records: new.records.len().max(1), ..*dedup });
    for (ordinal, record) in new.records.iter().enumerate() {
        let exact = index
            .exact
            .get(record.hash.as_bytes())
            .cloned()
            .or_else(|| file_exact.contains(record.hash.as_bytes()).then(|| new.id.clone()));
        let near = || {
            let signature = record.minhash.as_ref()?;
            let similar = |found: Option<(String, f64)>| found.filter(|(_, s)| *s >= accept_at).map(|(id, _)| id);
            similar(index.near.nearest_to(signature)).or_else(|| similar(file_near.nearest_to(signature)))
        };
        let duplicate_of = exact.or_else(near);
        let indexed = record.minhash.as_ref().map(|signatures| signatures.indexed.clone());
        if duplicate_of.is_none() {
            file_exact.insert(*record.hash.as_bytes());
            if let Some(signature) = &indexed {
                file_near.insert(new.id.clone(), signature.clone()).map_err(index_full)?;
            }
        }
        decided.push(Decided {
            ordinal,
            hash: record.hash,
            quality: record.quality,
            duplicate_of,
            minhash: indexed,
            size: record.size,
        });
    }
    let (status, reason) = verdict(&decided, policy);
    if matches!(status, ContributionStatus::Accepted | ContributionStatus::PendingReview) {
        for fresh in decided.iter().filter(|d| d.duplicate_of.is_none()) {
            index.exact.insert(*fresh.hash.as_bytes(), new.id.clone());
            if let Some(signature) = &fresh.minhash {
                index.near.insert(new.id.clone(), signature.clone()).map_err(index_full)?;
            }
        }
    }
    debug_assert!(
        decided.iter().enumerate().all(|(ordinal, d)| d.ordinal == ordinal),
        "one decision per record, in order"
    );
    debug_assert_eq!(status == ContributionStatus::Duplicate, decided.iter().all(|d| d.duplicate_of.is_some()));
    Ok((status, reason, decided))
}

/// The contribution's status and reason from its records: a duplicate when none is fresh,
/// else by the fresh records' mean quality against the policy.
fn verdict(decided: &[Decided], policy: &pb::ContributionPolicy) -> (ContributionStatus, String) {
    let fresh: Vec<&Decided> = decided.iter().filter(|d| d.duplicate_of.is_none()).collect();
    if fresh.is_empty() {
        let first = decided.first().and_then(|d| d.duplicate_of.clone()).unwrap_or_default();
        (
            ContributionStatus::Duplicate,
            format!(
                "all {} records duplicate earlier contributions (e.g. {first}): credit stays with the first copy",
                decided.len()
            ),
        )
    } else {
        let score = fresh.iter().map(|d| u64::from(d.quality)).sum::<u64>() / fresh.len() as u64;
        let duplicates = decided.len() - fresh.len();
        let note =
            if duplicates > 0 { format!("; {duplicates} duplicate records earn nothing") } else { String::new() };
        if score < u64::from(policy.reject_below_score) {
            (
                ContributionStatus::Rejected,
                format!("spam: quality score {score} is below {}{note}", policy.reject_below_score),
            )
        } else if score >= u64::from(policy.auto_accept_score) && !policy.review_all {
            (ContributionStatus::Accepted, format!("accepted: quality score {score}{note}"))
        } else {
            (
                ContributionStatus::PendingReview,
                format!(
                    "pending review: quality score {score} is below {} for automatic acceptance{note}",
                    policy.auto_accept_score
                ),
            )
        }
    }
}
