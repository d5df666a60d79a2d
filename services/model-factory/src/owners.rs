//! Who owns a ledger account: an adapter's owner account must be owned (on the ledger) by the
//! key that signs its import.

use openledger_core::ErrorCode;
use openledger_proto::ledger::v1::{self as pb, ledger_service_client::LedgerServiceClient};
use openledger_runtime::clients::ServiceChannel;
use openledger_signing::Key;

use crate::RegistryError;

/// The ledger question the registry asks.
#[async_trait::async_trait]
pub trait Owners: Send + Sync {
    /// Fails unless `account` exists and is owned by `key`: `PERMISSION_DENIED` when another
    /// key owns it, `FAILED_PRECONDITION` when it does not exist.
    async fn check_owner(&self, account: u128, key: &Key) -> Result<(), RegistryError>;

    /// The key owning `account` (a fine-tuning job reads Datanets as it, and the adapter it
    /// trains is owned by it): `FAILED_PRECONDITION` when the account does not exist or no
    /// key owns it.
    async fn owner_key(&self, account: u128) -> Result<Key, RegistryError>;
}

/// Account owners through the ledger service's `LookupAccounts`.
pub struct LedgerOwners {
    ledger: ServiceChannel,
}

impl LedgerOwners {
    pub fn new(ledger: ServiceChannel) -> Self {
        Self { ledger }
    }
}

#[async_trait::async_trait]
impl Owners for LedgerOwners {
    async fn check_owner(&self, account: u128, key: &Key) -> Result<(), RegistryError> {
        owned_by(account, self.lookup_owner(account).await?.as_ref(), key)
    }

    async fn owner_key(&self, account: u128) -> Result<Key, RegistryError> {
        key_of(account, self.lookup_owner(account).await?.as_ref())
    }
}

impl LedgerOwners {
    /// The owner of `account` on the ledger (`None` when the account does not exist).
    async fn lookup_owner(&self, account: u128) -> Result<Option<pb::account::Owner>, RegistryError> {
        let unreachable = |status: tonic::Status| {
            RegistryError::new(
                ErrorCode::Unavailable,
                format!("looking up ledger account {account}: the ledger says: {}", status.message()),
            )
        };
        let channel = self.ledger.channel().map_err(unreachable)?;
        let found = LedgerServiceClient::new(channel)
            .lookup_accounts(pb::LookupAccountsRequest { ids: vec![account.into()] })
            .await
            .map_err(unreachable)?
            .into_inner()
            .accounts;
        Ok(found.into_iter().next().and_then(|found| found.owner))
    }
}

/// The key owning a looked-up account.
pub fn key_of(account: u128, owner: Option<&pb::account::Owner>) -> Result<Key, RegistryError> {
    match owner {
        Some(pb::account::Owner::PublicKey(key)) => Key::try_from(key.as_slice()).map_err(|_| {
            RegistryError::new(ErrorCode::Internal, format!("ledger account {account} has a malformed owner key"))
        }),
        _ => Err(RegistryError::new(
            ErrorCode::FailedPrecondition,
            format!("ledger account {account} does not exist or has no owner key: create it with your key first"),
        )),
    }
}

/// The verdict on a looked-up account's owner.
pub fn owned_by(account: u128, owner: Option<&pb::account::Owner>, key: &Key) -> Result<(), RegistryError> {
    match owner {
        None => Err(RegistryError::new(
            ErrorCode::FailedPrecondition,
            format!("ledger account {account} does not exist: create it (POST /v1/accounts) with your key first"),
        )),
        Some(pb::account::Owner::PublicKey(owner)) if owner.as_slice() == key.as_slice() => Ok(()),
        Some(_) => Err(RegistryError::new(
            ErrorCode::PermissionDenied,
            format!("ledger account {account} is not owned by the signing key: sign with the account owner's key"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_owning_key_passes() {
        let owner = pb::account::Owner::PublicKey(vec![1; 32]);
        assert!(owned_by(7, Some(&owner), &[1; 32]).is_ok());
        assert_eq!(owned_by(7, Some(&owner), &[2; 32]).expect_err("another key").code, ErrorCode::PermissionDenied);
        assert_eq!(owned_by(7, None, &[1; 32]).expect_err("no account").code, ErrorCode::FailedPrecondition);
    }
}
