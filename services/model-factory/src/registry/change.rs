//! Changes by an adapter's owner (the key that imported it), each signed and fresh: prices,
//! visibility, the allow-list and the description; and unlisting, after which no new request
//! may name the adapter while in-flight ones finish (`GetAdapter` still answers it).

use openledger_core::ErrorCode;
use openledger_proto::modelfactory::v1 as pb;
use openledger_store::{db::retry_when_busy, now_ms};
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, Set, TransactionTrait};

use super::{
    Registry, distinct,
    import::{check_description, check_visibility},
    invalid, not_found,
};
use crate::{
    RegistryError,
    entities::{READY, access, adapter},
    events::{self, Change},
    signing::{self, accounts},
};

impl Registry {
    /// Applies the fields `request` sets; the others stay.
    pub async fn update(&self, request: pb::UpdateAdapterRequest) -> Result<pb::Adapter, RegistryError> {
        let signer =
            signing::signer(request.signature.as_ref(), &signing::update_message(&request), request.signed_at)?;
        let row = self.owned_row(&request.id, &signer, "change it").await?;
        let nothing = request.price_in.is_none()
            && request.price_out.is_none()
            && request.visibility.is_none()
            && !request.set_allowed_accounts
            && request.description.is_none();
        if nothing {
            return Err(invalid(
                "name at least one of price_in, price_out, visibility, allowed_accounts, description to change",
            ));
        }
        let visibility = request.visibility.unwrap_or(i32::from(row.visibility));
        let allowed = accounts(&request.allowed_accounts);
        check_visibility(visibility, if request.set_allowed_accounts { allowed.len() } else { 0 })?;
        if let Some(description) = &request.description {
            check_description(description)?;
        }
        let mut active: adapter::ActiveModel = row.clone().into();
        if let Some(price) = request.price_in {
            active.price_in = Set(u128::from(price).to_string());
        }
        if let Some(price) = request.price_out {
            active.price_out = Set(u128::from(price).to_string());
        }
        active.visibility = Set(visibility as i16);
        if let Some(description) = &request.description {
            active.description = Set(description.clone());
        }
        active.updated_at_ms = Set(now_ms());
        let replace = request.set_allowed_accounts.then_some(allowed.as_slice());
        self.commit_change(active, replace, Change::Updated).await?;
        self.get(&row.id).await
    }

    /// Unlists the adapter (again: answers it unchanged).
    pub async fn unlist(&self, request: pb::UnlistAdapterRequest) -> Result<pb::Adapter, RegistryError> {
        let message = signing::unlist_message(&request.id, request.signed_at);
        let signer = signing::signer(request.signature.as_ref(), &message, request.signed_at)?;
        let row = self.owned_row(&request.id, &signer, "unlist it").await?;
        if row.listed {
            let mut active: adapter::ActiveModel = row.clone().into();
            active.listed = Set(false);
            active.updated_at_ms = Set(now_ms());
            self.commit_change(active, None, Change::Unlisted).await?;
        }
        self.get(&row.id).await
    }

    /// The ready row of `id` if `signer` owns it.
    async fn owned_row(
        &self,
        id: &str,
        signer: &openledger_signing::Key,
        what: &str,
    ) -> Result<adapter::Model, RegistryError> {
        let row = adapter::Entity::find_by_id(id)
            .filter(adapter::Column::State.eq(READY))
            .one(&self.db)
            .await?
            .ok_or_else(|| not_found(id))?;
        if row.owner != signer.as_slice() {
            return Err(RegistryError::new(
                ErrorCode::PermissionDenied,
                format!("only the owner of adapter {id:?} may {what}: sign with the key that imported it"),
            ));
        }
        Ok(row)
    }

    /// Writes the row, the allow-list when replaced, and the event, in one transaction.
    async fn commit_change(
        &self,
        active: adapter::ActiveModel,
        allowed: Option<&[u128]>,
        change: Change,
    ) -> Result<(), RegistryError> {
        retry_when_busy(|| async {
            let txn = self.db.begin().await?;
            let row = active.clone().update(&txn).await?;
            if let Some(allowed) = allowed {
                access::Entity::delete_many().filter(access::Column::AdapterId.eq(&row.id)).exec(&txn).await?;
                for account in distinct(allowed) {
                    let entry =
                        access::ActiveModel { adapter_id: Set(row.id.clone()), account: Set(account.to_string()) };
                    access::Entity::insert(entry).exec(&txn).await?;
                }
            }
            events::enqueue(&txn, &self.subjects, change, &super::read::event(&row)?).await?;
            txn.commit().await?;
            Ok::<_, RegistryError>(())
        })
        .await?;
        self.wake_outbox();
        Ok(())
    }
}
