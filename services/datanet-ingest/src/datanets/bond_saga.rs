//! The bond saga around a contribution: a placeholder row before the hold, the give-back when
//! the upload is not stored, applying decided releases and slashes on the ledger, retrying
//! what the ledger did not take (abandoned placeholders included), and releasing the bonds of
//! accepted contributions whose quality was never assessed in time.
//!
//! Every ledger call follows a committed decision (a `To…` bond state, or a placeholder row for
//! a hold) and the ledger is idempotent by contribution id, so a process that dies anywhere
//! leaves a row from which [`Datanets::resolve_bonds`] finishes the work.

use std::time::Duration;

use openledger_core::ErrorCode;
use openledger_proto::datanet::v1::ContributionStatus;
use openledger_store::now_ms;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set, sea_query::Expr};

use crate::{DatanetError, bonds::Resolved, entities::contribution, limits};

use super::Datanets;
use super::contribute::{NewContribution, same_file};
use super::states::BondState;

impl Datanets {
    /// Holds the upload's stake behind a placeholder row, so a bond held by a process that
    /// then dies is found and given back ([`Datanets::resolve_bonds`]). `Some` is the
    /// contribution of a concurrent retry of the same file, stored first.
    pub(super) async fn hold_bond(
        &self,
        new: &NewContribution,
        account: u128,
    ) -> Result<Option<contribution::Model>, DatanetError> {
        // The same file from the same contributor can have only one row: a concurrent retry
        // stops here.
        if let Err(error) = self.insert_placeholder(new, account).await {
            return match same_file(&self.db, &new.datanet_id, &new.contributor, &new.file_hash, None).await? {
                Some(existing) => Ok(Some(existing)),
                None => Err(error),
            };
        }
        if let Err(error) = self.bonds.hold(&new.id, account, new.stake).await {
            // The hold may have reached the ledger even so (a lost answer).
            self.give_back(&new.id, "holding the bond failed").await;
            return Err(error);
        }
        fail::fail_point!("datanet-after-bond-hold", |_| Err(DatanetError::new(
            ErrorCode::Unavailable,
            "fail point datanet-after-bond-hold: the process stops here"
        )));
        Ok(None)
    }

    async fn insert_placeholder(&self, new: &NewContribution, account: u128) -> Result<(), DatanetError> {
        contribution::ActiveModel {
            id: Set(new.id.clone()),
            datanet_id: Set(new.datanet_id.clone()),
            contributor: Set(new.contributor.to_vec()),
            account_id: Set(Some(account.to_be_bytes().to_vec())),
            status: Set(ContributionStatus::Unspecified as i16),
            reason: Set("receiving: the bond is being held".into()),
            file_name: Set(new.file_name.clone()),
            media_type: Set(new.media_type.clone()),
            size_bytes: Set(new.size as i64),
            file_hash: Set(new.file_hash.as_bytes().to_vec()),
            signature: Set(new.signature.clone()),
            record_count: Set(0),
            quality_score: Set(0),
            bond: Set(new.stake.to_string()),
            bond_state: Set(BondState::Holding.into()),
            submitted_at: Set(now_ms()),
            decided_at: Set(None),
            decided_by: Set(None),
            bond_reason: Set(None),
        }
        .insert(&self.db)
        .await?;
        Ok(())
    }

    /// Gives back the bond of an upload that will not be stored and removes its placeholder;
    /// true when done. When the ledger cannot be reached the placeholder stays, and
    /// [`Datanets::resolve_bonds`] tries again once the upload counts as abandoned.
    pub(super) async fn give_back(&self, contribution_id: &str, reason: &str) -> bool {
        let released = match self.bonds.release(contribution_id, reason).await {
            // `NotHeld`: the hold never reached the ledger, so there is nothing to give back.
            Ok(Resolved::Done | Resolved::NotHeld) => true,
            Err(error) => {
                tracing::warn!(contribution = %contribution_id, %error, "giving back a bond failed; it is retried later");
                false
            }
        };
        if released {
            self.delete_placeholder(contribution_id).await;
        }
        released
    }

    pub(super) async fn delete_placeholder(&self, id: &str) {
        let deleted = contribution::Entity::delete_many()
            .filter(contribution::Column::Id.eq(id))
            .filter(contribution::Column::Status.eq(ContributionStatus::Unspecified as i16))
            .exec(&self.db)
            .await;
        if let Err(error) = deleted {
            tracing::warn!(contribution = %id, %error, "removing a placeholder failed; it is retried later");
        }
    }

    /// Applies a decided bond on the ledger (release or slash); a failure is retried later by
    /// [`Datanets::resolve_bonds`].
    pub(super) async fn resolve_bond(&self, contribution_id: &str) {
        if let Err(error) = self.try_resolve_bond(contribution_id).await {
            tracing::warn!(contribution = %contribution_id, %error, "the bond decision waits for the ledger");
        }
    }

    pub(super) async fn try_resolve_bond(&self, contribution_id: &str) -> Result<(), DatanetError> {
        let Some(row) = contribution::Entity::find_by_id(contribution_id).one(&self.db).await? else { return Ok(()) };
        let reason = row.bond_reason.as_deref().unwrap_or(&row.reason);
        let (resolved, done) = match BondState::try_from(row.bond_state)? {
            BondState::ToRelease => (self.bonds.release(contribution_id, reason).await?, BondState::Released),
            BondState::ToSlash => (self.bonds.slash(contribution_id, reason).await?, BondState::Slashed),
            _ => return Ok(()),
        };
        if resolved == Resolved::NotHeld {
            // Decided bonds were held before the decision was stored: the ledger lost one.
            return Err(DatanetError::new(
                ErrorCode::Internal,
                format!("the ledger holds no bond for decided contribution {contribution_id}"),
            ));
        }
        contribution::Entity::update_many()
            .col_expr(contribution::Column::BondState, Expr::value(done))
            .filter(contribution::Column::Id.eq(contribution_id))
            .filter(contribution::Column::BondState.eq(row.bond_state))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Applies every bond decision the ledger has not taken yet, gives back the bonds of
    /// contributions whose upload never finished (placeholders older than
    /// [`limits::RECEIVING_TIMEOUT_MS`]), and releases the bonds of accepted contributions
    /// still waiting for a quality assessment after [`limits::BOND_QUALITY_TIMEOUT_MS`];
    /// returns how many.
    pub async fn resolve_bonds(&self) -> Result<usize, DatanetError> {
        let unassessed =
            self.release_unassessed_bonds_older_than(Duration::from_millis(limits::BOND_QUALITY_TIMEOUT_MS)).await?;
        Ok(unassessed + self.resolve_bonds_older_than(Duration::from_millis(limits::RECEIVING_TIMEOUT_MS)).await?)
    }

    /// Decides to release the bonds of accepted contributions whose quality has not been
    /// assessed for `timeout` since their acceptance, applies them, and returns how many the
    /// ledger took (the others are retried with every decided bond).
    pub async fn release_unassessed_bonds_older_than(&self, timeout: Duration) -> Result<usize, DatanetError> {
        let cutoff = now_ms().saturating_sub(i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX));
        let reason = format!("bond released: no quality assessment within {} of acceptance", in_days(timeout));
        let due: Vec<String> = contribution::Entity::find()
            .select_only()
            .column(contribution::Column::Id)
            .filter(contribution::Column::BondState.eq(BondState::QualityPending))
            .filter(contribution::Column::DecidedAt.lte(cutoff))
            .order_by_asc(contribution::Column::DecidedAt)
            .limit(limits::BOND_RETRY_BATCH)
            .into_tuple()
            .all(&self.db)
            .await?;
        if due.is_empty() {
            return Ok(0);
        }
        // Only bonds still waiting: an assessment committed meanwhile keeps its decision.
        contribution::Entity::update_many()
            .col_expr(contribution::Column::BondState, Expr::value(BondState::ToRelease))
            .col_expr(contribution::Column::BondReason, Expr::value(reason))
            .filter(contribution::Column::Id.is_in(due.clone()))
            .filter(contribution::Column::BondState.eq(BondState::QualityPending))
            .exec(&self.db)
            .await?;
        let mut released = 0;
        for id in &due {
            if self.try_resolve_bond(id).await.is_ok() {
                released += 1;
            }
        }
        Ok(released)
    }

    /// Applies every bond decision the ledger has not taken yet and gives back the bonds of
    /// uploads abandoned for `abandoned_after` ([`Datanets::resolve_bonds`] without the
    /// quality timeout).
    pub async fn resolve_bonds_older_than(&self, abandoned_after: Duration) -> Result<usize, DatanetError> {
        let cutoff = now_ms() - i64::try_from(abandoned_after.as_millis()).unwrap_or(i64::MAX);
        let abandoned = contribution::Entity::find()
            .filter(contribution::Column::Status.eq(ContributionStatus::Unspecified as i16))
            .filter(contribution::Column::SubmittedAt.lte(cutoff))
            .order_by_asc(contribution::Column::SubmittedAt)
            .limit(limits::BOND_RETRY_BATCH)
            .all(&self.db)
            .await?;
        let mut resolved = 0;
        for row in abandoned {
            if self.give_back(&row.id, "the upload never finished").await {
                resolved += 1;
            }
        }
        resolved += self.resolve_decided_bonds().await?;
        Ok(resolved)
    }

    pub(super) async fn resolve_decided_bonds(&self) -> Result<usize, DatanetError> {
        let waiting = contribution::Entity::find()
            .filter(contribution::Column::BondState.is_in([BondState::ToRelease, BondState::ToSlash]))
            .limit(limits::BOND_RETRY_BATCH)
            .all(&self.db)
            .await?;
        let mut resolved = 0;
        for row in waiting {
            if self.try_resolve_bond(&row.id).await.is_ok() {
                resolved += 1;
            }
        }
        Ok(resolved)
    }
}

/// A timeout as people read it: whole days when it is at least one, else milliseconds.
fn in_days(timeout: Duration) -> String {
    let day = Duration::from_millis(limits::DAY_MS as u64);
    if timeout >= day {
        format!("{} days", timeout.as_secs() / day.as_secs())
    } else {
        format!("{} ms", timeout.as_millis())
    }
}
