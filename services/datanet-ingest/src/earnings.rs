//! Contributors' earnings on the ledger, for the leaderboard: settlement payouts credited to
//! the accounts a contributor is paid to (the bond accounts their contributions named, and
//! the earnings account derived from their key).

use std::collections::HashMap;

use openledger_core::ErrorCode;
use openledger_proto::ledger::v1 as pb;
use openledger_runtime::clients::ServiceChannel;

use crate::{
    DatanetError,
    bonds::{ledger_client, ledger_error},
    limits,
};

/// What the leaderboard asks of the ledger.
#[async_trait::async_trait]
pub trait Earnings: Send + Sync {
    /// Base units earned by each account; an account the ledger does not know (an earnings
    /// account before its first payout) earned nothing and may be left out.
    async fn earned(&self, accounts: &[u128]) -> Result<HashMap<u128, u128>, DatanetError>;
}

/// Earnings through the ledger service's `GetEarnings`.
pub struct LedgerEarnings {
    ledger: ServiceChannel,
}

impl LedgerEarnings {
    pub fn new(ledger: ServiceChannel) -> Self {
        Self { ledger }
    }
}

#[async_trait::async_trait]
impl Earnings for LedgerEarnings {
    async fn earned(&self, accounts: &[u128]) -> Result<HashMap<u128, u128>, DatanetError> {
        let mut earned = HashMap::with_capacity(accounts.len());
        for chunk in accounts.chunks(limits::EARNINGS_ACCOUNTS_PER_REQUEST) {
            let request = pb::GetEarningsRequest { account_ids: chunk.iter().map(|&id| id.into()).collect() };
            let answer = ledger_client(&self.ledger)?
                .get_earnings(request)
                .await
                .map_err(|status| ledger_error("reading earnings", status))?
                .into_inner();
            for earnings in answer.earnings {
                let (Some(account), Some(amount)) = (earnings.account_id, earnings.earned) else {
                    return Err(DatanetError::new(
                        ErrorCode::Internal,
                        "the ledger answered earnings without an account or an amount",
                    ));
                };
                earned.insert(u128::from(account), u128::from(amount));
            }
        }
        Ok(earned)
    }
}
