//! The leaderboard: contributors by accepted records, acceptance ratio and duplicates.

use std::collections::HashMap;

use openledger_proto::datanet::v1::{self as pb, ContributionStatus};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect, sea_query::Expr};

use crate::{
    DatanetError,
    entities::{contribution, record},
    limits,
    signing::Key,
};

use super::Datanets;
use super::states::{RecordStatus, contribution_status};

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
        Ok(pb::Leaderboard { entries })
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

/// One contributor's counts.
#[derive(Default)]
struct Tally {
    accepted_records: u64,
    duplicates: u64,
    decided: u64,
    accepted: u64,
}
