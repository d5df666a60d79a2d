//! Decisions after the fact: the owner or a validator reviews a contribution pending review,
//! and the owner removes a record from the draft.

use openledger_core::ErrorCode;
use openledger_proto::datanet::v1::{self as pb, ContributionStatus};
use openledger_store::{db::retry_when_busy, now_ms};
use sea_orm::{ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter, TransactionTrait, sea_query::Expr};

use crate::{
    DatanetError,
    entities::{contribution, record},
    limits,
    signing::{self, Key},
};

use super::Datanets;
use super::contributions::{enqueue_contribution_event, record_hashes};
use super::states::{BondState, RecordStatus, contribution_status};
use super::validation::check_text;
use super::{bump_index_generation, hash_of, invalid, is_validator, lock_datanet, require_owner};

impl Datanets {
    /// The owner or a validator approves or rejects a contribution pending review.
    pub async fn review(&self, request: pb::ReviewContributionRequest) -> Result<pb::Contribution, DatanetError> {
        let signature = request.signature.clone().ok_or_else(|| invalid("signature is required"))?;
        check_text("reason", &request.reason, 0, limits::MAX_REASON_CHARS)?;
        let message =
            signing::review_message(&request.datanet_id, &request.contribution_id, request.approve, &request.reason);
        let reviewer = signing::verify(&signature.public_key, &signature.signature, &message)?;
        let row = self.row(&request.datanet_id, Some(reviewer)).await?;
        if row.owner != reviewer && !is_validator(&row, &reviewer) {
            return Err(DatanetError::new(
                ErrorCode::PermissionDenied,
                "only the Datanet's owner and validators review contributions",
            ));
        }
        let slot = self.index_slot(&row.id);
        let _index = slot.index.lock().await;
        let decided = retry_when_busy(|| async {
            let txn = self.db.begin().await?;
            let decided = decide_review(&txn, &row.id, &request, &reviewer).await?;
            txn.commit().await?;
            Ok::<_, DatanetError>(decided)
        })
        .await?;
        self.wake_outbox();
        self.resolve_bond(&decided).await;
        self.contribution(&row.id, &decided, Some(reviewer)).await
    }

    /// The owner takes a record out of the draft; sealed versions keep it.
    pub async fn remove_record(&self, request: pb::RemoveRecordRequest) -> Result<u64, DatanetError> {
        let signature = request.signature.clone().ok_or_else(|| invalid("signature is required"))?;
        let hash = hash_of(request.record_hash.as_ref(), "record_hash")?;
        let owner = signing::verify(
            &signature.public_key,
            &signature.signature,
            &signing::remove_message(&request.datanet_id, &hash, request.signed_at),
        )?;
        signing::check_fresh(request.signed_at, signing::now_unix())?;
        let row = self.row(&request.datanet_id, Some(owner)).await?;
        require_owner(&row, &owner, "remove records")?;
        let slot = self.index_slot(&row.id);
        let _index = slot.index.lock().await;
        retry_when_busy(|| async {
            let txn = self.db.begin().await?;
            lock_datanet(&txn, &row.id).await?;
            let removed = record::Entity::update_many()
                .col_expr(record::Column::Status, Expr::value(RecordStatus::Removed))
                .filter(record::Column::DatanetId.eq(&row.id))
                .filter(record::Column::Hash.eq(hash.as_bytes().to_vec()))
                .filter(record::Column::Status.is_in([RecordStatus::Accepted, RecordStatus::Pending]))
                .exec(&txn)
                .await?
                .rows_affected;
            if removed == 0 {
                return Err(DatanetError::new(
                    ErrorCode::NotFound,
                    format!("no accepted or pending record {} in this Datanet", hash.to_hex()),
                ));
            }
            bump_index_generation(&txn, &row.id).await?;
            txn.commit().await?;
            Ok(removed)
        })
        .await
    }
}

/// Records a review decision on a contribution pending review (under the Datanet's write
/// lock) with its event; returns the contribution's id.
async fn decide_review(
    txn: &DatabaseTransaction,
    datanet_id: &str,
    request: &pb::ReviewContributionRequest,
    reviewer: &Key,
) -> Result<String, DatanetError> {
    lock_datanet(txn, datanet_id).await?;
    let found = contribution::Entity::find_by_id(&request.contribution_id)
        .filter(contribution::Column::DatanetId.eq(datanet_id))
        .one(txn)
        .await?
        .ok_or_else(|| {
            DatanetError::new(ErrorCode::NotFound, format!("no contribution {:?}", request.contribution_id))
        })?;
    let found_status = contribution_status(found.status)?;
    if found_status != ContributionStatus::PendingReview {
        return Err(DatanetError::new(
            ErrorCode::FailedPrecondition,
            format!("contribution {} is {}, not pending review", found.id, found_status.api_name()),
        ));
    }
    let (status, records, bond) = if request.approve {
        // Held until the contribution's quality is known (see `super::quality`).
        (ContributionStatus::Accepted, RecordStatus::Accepted, BondState::QualityPending)
    } else {
        (ContributionStatus::Rejected, RecordStatus::Rejected, BondState::ToSlash)
    };
    let reason = if request.reason.is_empty() {
        format!("{} by review", if request.approve { "approved" } else { "rejected" })
    } else {
        request.reason.clone()
    };
    contribution::Entity::update_many()
        .col_expr(contribution::Column::Status, Expr::value(status as i16))
        .col_expr(contribution::Column::Reason, Expr::value(reason.clone()))
        .col_expr(contribution::Column::DecidedAt, Expr::value(now_ms()))
        .col_expr(contribution::Column::DecidedBy, Expr::value(reviewer.to_vec()))
        .col_expr(
            contribution::Column::BondState,
            Expr::value(if BondState::try_from(found.bond_state)? == BondState::Held {
                bond.into()
            } else {
                found.bond_state
            }),
        )
        .filter(contribution::Column::Id.eq(&found.id))
        .exec(txn)
        .await?;
    record::Entity::update_many()
        .col_expr(record::Column::Status, Expr::value(records))
        .filter(record::Column::ContributionId.eq(&found.id))
        .filter(record::Column::Status.eq(RecordStatus::Pending))
        .exec(txn)
        .await?;
    if !request.approve {
        bump_index_generation(txn, datanet_id).await?;
    }
    let hashes = record_hashes(txn, &found.id).await?;
    enqueue_contribution_event(txn, &found, status, &reason, hashes).await?;
    Ok(found.id)
}
