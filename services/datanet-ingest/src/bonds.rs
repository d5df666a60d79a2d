//! Stake bonds on the ledger: each contribution holds its stake, slashed to the treasury when
//! it is rejected as spam or a duplicate, or later for harmful data; an accepted contribution's
//! bond is released once its quality is known (see `datanets::quality`). The ledger makes every
//! operation idempotent by contribution id, so retrying is always safe.

use openledger_core::ErrorCode;
use openledger_proto::ledger::v1::{self as pb, ledger_service_client::LedgerServiceClient};
use openledger_runtime::clients::ServiceChannel;
use tonic::Status;

use crate::{DatanetError, signing::Key};

/// What releasing or slashing a bond did on the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// The bond was released or slashed (now or by an earlier call with the same id).
    Done,
    /// No bond was ever held for the contribution: its hold never reached the ledger.
    NotHeld,
}

/// The ledger operations a Datanet needs.
#[async_trait::async_trait]
pub trait Bonds: Send + Sync {
    /// Fails unless `account` exists and is owned by `key`.
    async fn check_owner(&self, account: u128, key: &Key) -> Result<(), DatanetError>;
    async fn hold(&self, contribution_id: &str, account: u128, amount: u128) -> Result<(), DatanetError>;
    async fn release(&self, contribution_id: &str, reason: &str) -> Result<Resolved, DatanetError>;
    async fn slash(&self, contribution_id: &str, reason: &str) -> Result<Resolved, DatanetError>;
}

/// Bonds through the ledger service's gRPC API.
pub struct LedgerBonds {
    ledger: ServiceChannel,
}

impl LedgerBonds {
    pub fn new(ledger: ServiceChannel) -> Self {
        Self { ledger }
    }

    fn client(&self) -> Result<LedgerServiceClient<tonic::transport::Channel>, DatanetError> {
        ledger_client(&self.ledger)
    }
}

pub(crate) fn ledger_client(
    ledger: &ServiceChannel,
) -> Result<LedgerServiceClient<tonic::transport::Channel>, DatanetError> {
    Ok(LedgerServiceClient::new(ledger.channel().map_err(|status| ledger_error("reaching the ledger", status))?))
}

pub(crate) fn ledger_error(doing: &str, status: Status) -> DatanetError {
    let code = match status.code() {
        tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument | tonic::Code::NotFound => {
            ErrorCode::FailedPrecondition
        }
        _ => ErrorCode::Unavailable,
    };
    DatanetError::new(code, format!("{doing}: the ledger says: {}", status.message()))
}

/// The ledger's answer to a release or slash, by its state code.
fn resolved(doing: &str, response: &pb::BondResponse) -> Result<Resolved, DatanetError> {
    match pb::BondState::try_from(response.state) {
        Ok(pb::BondState::Released | pb::BondState::Slashed) => Ok(Resolved::Done),
        Ok(pb::BondState::NotHeld) => Ok(Resolved::NotHeld),
        Ok(pb::BondState::Held | pb::BondState::Unspecified) | Err(_) => Err(DatanetError::new(
            ErrorCode::Internal,
            format!("{doing}: the ledger answered the unexpected bond state {}", response.state),
        )),
    }
}

#[async_trait::async_trait]
impl Bonds for LedgerBonds {
    async fn check_owner(&self, account: u128, key: &Key) -> Result<(), DatanetError> {
        let found = self
            .client()?
            .lookup_accounts(pb::LookupAccountsRequest { ids: vec![account.into()] })
            .await
            .map_err(|status| ledger_error("looking up the bond account", status))?
            .into_inner()
            .accounts;
        match found.first().and_then(|account| account.owner.as_ref()) {
            None => Err(DatanetError::new(
                ErrorCode::FailedPrecondition,
                format!("ledger account {account} does not exist: create it and fund it to post stake bonds"),
            )),
            Some(pb::account::Owner::PublicKey(owner)) if owner.as_slice() == key.as_slice() => Ok(()),
            Some(_) => Err(DatanetError::new(
                ErrorCode::PermissionDenied,
                format!("ledger account {account} is not owned by the contributor's key"),
            )),
        }
    }

    async fn hold(&self, contribution_id: &str, account: u128, amount: u128) -> Result<(), DatanetError> {
        let request = pb::HoldBondRequest {
            contribution_id: contribution_id.to_owned(),
            contributor_account_id: Some(account.into()),
            amount: Some(amount.into()),
        };
        self.client()?
            .hold_bond(request)
            .await
            .map_err(|status| ledger_error(&format!("holding the stake bond from account {account}"), status))?;
        Ok(())
    }

    async fn release(&self, contribution_id: &str, reason: &str) -> Result<Resolved, DatanetError> {
        let doing = "releasing the bond";
        let request = pb::ResolveBondRequest { contribution_id: contribution_id.to_owned(), reason: reason.to_owned() };
        let response = self.client()?.release_bond(request).await.map_err(|status| ledger_error(doing, status))?;
        resolved(doing, response.get_ref())
    }

    async fn slash(&self, contribution_id: &str, reason: &str) -> Result<Resolved, DatanetError> {
        let doing = "slashing the bond";
        let request = pb::ResolveBondRequest { contribution_id: contribution_id.to_owned(), reason: reason.to_owned() };
        let response = self.client()?.slash_bond(request).await.map_err(|status| ledger_error(doing, status))?;
        resolved(doing, response.get_ref())
    }
}

/// For Datanets without stake bonds (tools, benchmarks): every bond operation is refused.
pub struct NoLedger;

#[async_trait::async_trait]
impl Bonds for NoLedger {
    async fn check_owner(&self, _account: u128, _key: &Key) -> Result<(), DatanetError> {
        Err(no_ledger())
    }

    async fn hold(&self, _contribution_id: &str, _account: u128, _amount: u128) -> Result<(), DatanetError> {
        Err(no_ledger())
    }

    async fn release(&self, _contribution_id: &str, _reason: &str) -> Result<Resolved, DatanetError> {
        Err(no_ledger())
    }

    async fn slash(&self, _contribution_id: &str, _reason: &str) -> Result<Resolved, DatanetError> {
        Err(no_ledger())
    }
}

fn no_ledger() -> DatanetError {
    DatanetError::new(ErrorCode::FailedPrecondition, "no ledger is configured: stake bonds are unavailable")
}
