//! The leaderboard: contributors by accepted records, acceptance ratio and duplicates, with
//! their earnings from the ledger.
//!
//! A contributor's earnings are the payouts credited to the accounts they are paid to: the
//! bond accounts their contributions to this Datanet named, and the earnings account derived
//! from their key ([`earnings_account_id`]), summed. Accounts are the contributor's, not the
//! Datanet's: payouts for their data in other Datanets paid to the same accounts count too.
//! When the ledger cannot answer, the leaderboard answers without earnings.

use std::collections::{BTreeSet, HashMap};

use openledger_core::{ErrorCode, fee::earnings_account_id};
use openledger_proto::datanet::v1::{self as pb, ContributionStatus};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect, sea_query::Expr};

use crate::{
    DatanetError,
    earnings::Earnings,
    entities::{contribution, record},
    limits,
    signing::Key,
};

use super::Datanets;
use super::states::{RecordStatus, contribution_status, stored_account};

impl Datanets {
    /// Contributors by accepted records, with their acceptance ratio and duplicates rejected.
    pub async fn leaderboard(
        &self,
        datanet_id: &str,
        limit: u32,
        caller: Option<Key>,
    ) -> Result<pb::Leaderboard, DatanetError> {
        let row = self.row(datanet_id, caller).await?;
        let tallies = self.tallies(&row.id).await?;
        let mut entries: Vec<pb::LeaderboardEntry> = tallies
            .into_iter()
            .map(|(contributor, tally)| pb::LeaderboardEntry {
                contributor,
                accepted_records: tally.accepted_records,
                acceptance_ratio_ppt: (tally.accepted * u64::from(limits::PARTS_PER_THOUSAND))
                    .checked_div(tally.decided)
                    .unwrap_or(0) as u32,
                duplicates_rejected: tally.duplicates,
                earnings: None,
            })
            .collect();
        entries.sort_by(|a, b| {
            b.accepted_records
                .cmp(&a.accepted_records)
                .then(b.acceptance_ratio_ppt.cmp(&a.acceptance_ratio_ppt))
                .then(a.contributor.cmp(&b.contributor))
        });
        entries
            .truncate(if limit == 0 { limits::DEFAULT_LEADERBOARD_ENTRIES } else { limit.min(limits::MAX_PAGE_SIZE) }
                as usize);
        if let Some(earnings) = &self.earnings {
            let accounts = self.paid_accounts(&row.id, &entries).await?;
            match earned_by(earnings.as_ref(), &accounts).await {
                Ok(earned) => {
                    for entry in &mut entries {
                        entry.earnings = earned.get(&entry.contributor).map(|&amount| amount.into());
                    }
                }
                Err(error) => {
                    tracing::warn!(datanet = %row.id, %error, "the leaderboard answers without earnings");
                }
            }
        }
        Ok(pb::Leaderboard { entries })
    }

    /// The accounts each listed contributor is paid to: the bond accounts their contributions
    /// to the Datanet named, and their earnings account.
    async fn paid_accounts(
        &self,
        datanet_id: &str,
        entries: &[pb::LeaderboardEntry],
    ) -> Result<HashMap<Vec<u8>, BTreeSet<u128>>, DatanetError> {
        debug_assert!(entries.len() <= limits::MAX_PAGE_SIZE as usize, "one page of contributors per query");
        let mut accounts: HashMap<Vec<u8>, BTreeSet<u128>> = entries
            .iter()
            .map(|entry| (entry.contributor.clone(), BTreeSet::from([earnings_account_id(&entry.contributor)])))
            .collect();
        let bonds: Vec<(Vec<u8>, Vec<u8>)> = contribution::Entity::find()
            .select_only()
            .column(contribution::Column::Contributor)
            .column(contribution::Column::AccountId)
            .distinct()
            .filter(contribution::Column::DatanetId.eq(datanet_id))
            .filter(contribution::Column::AccountId.is_not_null())
            .filter(contribution::Column::Contributor.is_in(entries.iter().map(|entry| entry.contributor.clone())))
            .into_tuple()
            .all(&self.db)
            .await?;
        for (contributor, account) in bonds {
            if let Some(paid) = accounts.get_mut(&contributor) {
                paid.insert(stored_account(&account)?);
            }
        }
        Ok(accounts)
    }

    /// Each contributor's counts: accepted and duplicate records, decided and accepted
    /// contributions.
    async fn tallies(&self, datanet_id: &str) -> Result<HashMap<Vec<u8>, Tally>, DatanetError> {
        let mut tallies: HashMap<Vec<u8>, Tally> = HashMap::new();
        let statuses: Vec<(Vec<u8>, i16, i64)> = record::Entity::find()
            .select_only()
            .column(record::Column::Contributor)
            .column(record::Column::Status)
            .column_as(Expr::col(record::Column::Seq).count(), "n")
            .filter(record::Column::DatanetId.eq(datanet_id))
            .group_by(record::Column::Contributor)
            .group_by(record::Column::Status)
            .into_tuple()
            .all(&self.db)
            .await?;
        for (contributor, status, n) in statuses {
            let tally = tallies.entry(contributor).or_default();
            match RecordStatus::try_from(status)? {
                RecordStatus::Accepted => tally.accepted_records += n as u64,
                RecordStatus::Duplicate => tally.duplicates += n as u64,
                _ => {}
            }
        }
        let decisions: Vec<(Vec<u8>, i16, i64)> = contribution::Entity::find()
            .select_only()
            .column(contribution::Column::Contributor)
            .column(contribution::Column::Status)
            .column_as(Expr::col(contribution::Column::Id).count(), "n")
            .filter(contribution::Column::DatanetId.eq(datanet_id))
            .group_by(contribution::Column::Contributor)
            .group_by(contribution::Column::Status)
            .into_tuple()
            .all(&self.db)
            .await?;
        for (contributor, status, n) in decisions {
            let tally = tallies.entry(contributor).or_default();
            let status = contribution_status(status)?;
            if !matches!(status, ContributionStatus::PendingReview | ContributionStatus::Unspecified) {
                tally.decided += n as u64;
            }
            if status == ContributionStatus::Accepted {
                tally.accepted += n as u64;
            }
        }
        Ok(tallies)
    }
}

/// Each contributor's earnings over their accounts, in base units (one ledger call for all).
async fn earned_by(
    earnings: &dyn Earnings,
    accounts: &HashMap<Vec<u8>, BTreeSet<u128>>,
) -> Result<HashMap<Vec<u8>, u128>, DatanetError> {
    let all: Vec<u128> = accounts.values().flatten().copied().collect::<BTreeSet<u128>>().into_iter().collect();
    let earned = earnings.earned(&all).await?;
    accounts
        .iter()
        .map(|(contributor, paid)| {
            let total = paid
                .iter()
                .try_fold(0u128, |total, account| total.checked_add(earned.get(account).copied().unwrap_or(0)));
            let total = total.ok_or_else(|| {
                DatanetError::new(
                    ErrorCode::Internal,
                    "a contributor's earnings overflow 128 bits: the ledger is wrong",
                )
            })?;
            Ok((contributor.clone(), total))
        })
        .collect()
}

/// One contributor's counts.
#[derive(Default)]
struct Tally {
    accepted_records: u64,
    duplicates: u64,
    decided: u64,
    accepted: u64,
}
