//! Reading contributions (one with its record summaries, or a page of them) and the
//! contribution events written to the outbox.

use openledger_core::ErrorCode;
use openledger_proto::{
    common::v1::{Hash, PageResponse},
    datanet::v1::{self as pb, ContributionStatus},
    events::v1::ContributionEvent,
    timestamp,
};
use openledger_store::{NewEvent, now_ms};
use prost::Message;
use sea_orm::{ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use crate::{
    DatanetError,
    entities::{bond_slash, contribution, record},
    signing::Key,
};

use super::Datanets;
use super::states::{BondState, RecordStatus, contribution_status, corrupt};
use super::{PRODUCER, SUBJECT_ACCEPTED, SUBJECT_REJECTED, SUBJECT_SUBMITTED, page_size_of};

impl Datanets {
    /// A contribution, if the caller may see its Datanet.
    pub async fn contribution(
        &self,
        datanet_id: &str,
        contribution_id: &str,
        caller: Option<Key>,
    ) -> Result<pb::Contribution, DatanetError> {
        let datanet = self.row(datanet_id, caller).await?;
        let found = contribution::Entity::find_by_id(contribution_id)
            .filter(contribution::Column::DatanetId.eq(&datanet.id))
            .one(&self.db)
            .await?
            .ok_or_else(|| DatanetError::new(ErrorCode::NotFound, format!("no contribution {contribution_id:?}")))?;
        self.contribution_view(found).await
    }

    /// Contributions of a Datanet, oldest first, optionally of one status.
    pub async fn contributions(
        &self,
        datanet_id: &str,
        status: i32,
        page_size: u32,
        page_token: &str,
        caller: Option<Key>,
    ) -> Result<(Vec<pb::Contribution>, PageResponse), DatanetError> {
        let datanet = self.row(datanet_id, caller).await?;
        let size = page_size_of(page_size);
        let mut query = contribution::Entity::find()
            .filter(contribution::Column::DatanetId.eq(&datanet.id))
            .filter(contribution::Column::Status.ne(ContributionStatus::Unspecified as i16))
            .order_by_asc(contribution::Column::Id)
            .limit(u64::from(size) + 1);
        if status != 0 {
            query = query.filter(contribution::Column::Status.eq(status as i16));
        }
        if !page_token.is_empty() {
            query = query.filter(contribution::Column::Id.gt(page_token));
        }
        let mut rows = query.all(&self.db).await?;
        let next = openledger_store::page::cut_page(&mut rows, size, |row| row.id.clone());
        // Lists leave the per-record summaries out (a file may hold 100,000 records): one
        // contribution with its records is `contribution`.
        let views = rows.into_iter().map(|row| summary_view(row, Vec::new())).collect::<Result<_, _>>()?;
        Ok((views, PageResponse { next_page_token: next }))
    }

    /// One contribution with its records and, when its bond was slashed for harmful data, the
    /// evidence.
    pub(super) async fn contribution_view(&self, row: contribution::Model) -> Result<pb::Contribution, DatanetError> {
        let records = record::Entity::find()
            .filter(record::Column::ContributionId.eq(&row.id))
            .order_by_asc(record::Column::Ordinal)
            .all(&self.db)
            .await?;
        let slash = bond_slash::Entity::find_by_id(row.id.clone()).one(&self.db).await?;
        let mut view = summary_view(row, records)?;
        view.slash = slash.map(|slash| pb::BondSlash {
            snapshot_id: slash.snapshot_id,
            adapter_id: slash.adapter_id,
            estimator: slash.estimator,
            score: slash.score,
            threshold: slash.threshold,
            evidence: slash.evidence,
            event_id: slash.event_id,
            at: Some(timestamp(slash.at)),
        });
        Ok(view)
    }
}

/// A contribution as the API shows it, with the given record summaries.
pub(super) fn summary_view(
    row: contribution::Model,
    records: Vec<record::Model>,
) -> Result<pb::Contribution, DatanetError> {
    let records = records.into_iter().map(record_summary).collect::<Result<_, _>>()?;
    Ok(pb::Contribution {
        id: row.id,
        datanet_id: row.datanet_id,
        contributor: row.contributor,
        status: contribution_status(row.status)? as i32,
        reason: row.reason,
        records,
        bond: Some(row.bond.parse::<u128>().map_err(|_| corrupt("bond", &row.bond))?.into()),
        submitted_at: Some(timestamp(row.submitted_at)),
        file_name: row.file_name,
        quality_score: u32::try_from(row.quality_score).map_err(|_| corrupt("quality score", row.quality_score))?,
        bond_state: BondState::try_from(row.bond_state)?.api_name().to_owned(),
        size_bytes: u64::try_from(row.size_bytes).map_err(|_| corrupt("size", row.size_bytes))?,
        slash: None,
    })
}

/// A record as a contribution shows it.
fn record_summary(record: record::Model) -> Result<pb::RecordSummary, DatanetError> {
    Ok(pb::RecordSummary {
        hash: Some(Hash { value: record.hash }),
        quality_score: u32::try_from(record.quality).map_err(|_| corrupt("quality score", record.quality))?,
        duplicate: RecordStatus::try_from(record.status)? == RecordStatus::Duplicate,
        duplicate_of: record.duplicate_of.unwrap_or_default(),
    })
}

/// `submitted` (status unspecified), `accepted`, or `rejected` (rejected or duplicate).
pub(super) async fn enqueue_contribution_event(
    txn: &DatabaseTransaction,
    row: &contribution::Model,
    status: ContributionStatus,
    reason: &str,
    record_hashes: Vec<Hash>,
) -> Result<(), DatanetError> {
    let subject = match status {
        ContributionStatus::Unspecified | ContributionStatus::PendingReview => SUBJECT_SUBMITTED,
        ContributionStatus::Accepted => SUBJECT_ACCEPTED,
        ContributionStatus::Rejected | ContributionStatus::Duplicate => SUBJECT_REJECTED,
    };
    let event = ContributionEvent {
        datanet_id: row.datanet_id.clone(),
        contribution_id: row.id.clone(),
        contributor: row.contributor.clone(),
        record_hashes,
        status: if status == ContributionStatus::Unspecified { contribution_status(row.status)? } else { status }
            .api_name()
            .to_owned(),
        reason: reason.to_owned(),
        at: Some(timestamp(now_ms())),
    };
    openledger_store::outbox::enqueue(txn, PRODUCER, NewEvent::new(subject, event.encode_to_vec())).await?;
    Ok(())
}

pub(super) async fn record_hashes(txn: &DatabaseTransaction, contribution_id: &str) -> Result<Vec<Hash>, DatanetError> {
    Ok(record::Entity::find()
        .filter(record::Column::ContributionId.eq(contribution_id))
        .order_by_asc(record::Column::Ordinal)
        .all(txn)
        .await?
        .into_iter()
        .map(|r| Hash { value: r.hash })
        .collect())
}
