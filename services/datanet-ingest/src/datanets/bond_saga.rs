//! The bond saga around a contribution: a placeholder row before the hold, the give-back when
//! the upload is not stored, applying decided releases and slashes on the ledger, and retrying
//! what the ledger did not take (abandoned placeholders included).

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
        let (resolved, done) = match BondState::try_from(row.bond_state)? {
            BondState::ToRelease => (self.bonds.release(contribution_id, &row.reason).await?, BondState::Released),
            BondState::ToSlash => (self.bonds.slash(contribution_id, &row.reason).await?, BondState::Slashed),
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

    /// Applies every bond decision the ledger has not taken yet, and gives back the bonds of
    /// contributions whose upload never finished (placeholders older than
    /// [`limits::RECEIVING_TIMEOUT_MS`]); returns how many.
    pub async fn resolve_bonds(&self) -> Result<usize, DatanetError> {
        self.resolve_bonds_older_than(std::time::Duration::from_millis(limits::RECEIVING_TIMEOUT_MS)).await
    }

    /// [`Datanets::resolve_bonds`] with another age for abandoned uploads.
    pub async fn resolve_bonds_older_than(&self, abandoned_after: std::time::Duration) -> Result<usize, DatanetError> {
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
