//! Staking with an unbonding period. Each staker gets three accounts of their own, made on
//! first use with ids derived from theirs: `stake` (what is staked), `unbonding` (unstaked,
//! waiting out the unbonding period) and `rewards` (epoch rewards, claimable). Every movement
//! is a transfer, so the journal and `verify` cover staking like everything else; the
//! staker's own account id travels in each transfer's `user_data`.

use openledger_core::ContentHash;

use crate::{
    books::{Ledger, operation_key, system_transfer_id},
    limits::NANOS_PER_SECOND,
    model::{Account, AccountFlags, CreateAccountResult, OPEN_LEDGER, Transfer, TransferFlags},
    operations::{Economics, OperationError, not_found},
};

/// Transfer and account codes of staking.
pub mod codes {
    pub const STAKE: u16 = 30;
    pub const UNSTAKE: u16 = 31;
    pub const UNBOND_RELEASE: u16 = 32;
    pub const EPOCH_REWARD: u16 = 33;
    pub const CLAIM: u16 = 34;
    pub const STAKE_ACCOUNT: u16 = 40;
    pub const UNBONDING_ACCOUNT: u16 = 41;
    pub const REWARDS_ACCOUNT: u16 = 42;
}

fn derived_account_id(purpose: &str, account: u128) -> u128 {
    let hash = ContentHash::of_parts(&[b"openledger/derived-account/v1/", purpose.as_bytes(), &account.to_be_bytes()]);
    // The top bit keeps derived ids far above both system ids and typical client ids.
    hash.prefix_u128() | (1 << 127)
}

pub fn stake_account_id(account: u128) -> u128 {
    derived_account_id("stake", account)
}

pub fn unbonding_account_id(account: u128) -> u128 {
    derived_account_id("unbonding", account)
}

pub fn rewards_account_id(account: u128) -> u128 {
    derived_account_id("rewards", account)
}

fn refused(operation: &'static str, reason: impl Into<String>) -> OperationError {
    OperationError::Refused { operation, reason: reason.into() }
}

impl Ledger {
    /// Makes the staker's stake, unbonding and rewards accounts if they do not exist yet.
    async fn ensure_staker_accounts(&self, account: u128, operation: &'static str) -> Result<(), OperationError> {
        let owner = self
            .lookup_accounts(&[account])
            .await?
            .pop()
            .ok_or_else(|| not_found(operation, format!("account {account}")))?;
        let guarded = AccountFlags(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS);
        let accounts = [
            (stake_account_id(account), codes::STAKE_ACCOUNT),
            (unbonding_account_id(account), codes::UNBONDING_ACCOUNT),
            (rewards_account_id(account), codes::REWARDS_ACCOUNT),
        ]
        .map(|(id, code)| Account::new(id, owner.owner, OPEN_LEDGER, code, guarded));
        // Usually they exist already: check them without opening a write transaction.
        let existing = self.lookup_accounts(&accounts.map(|a| a.id)).await?;
        let results: Vec<CreateAccountResult> = if existing.len() == accounts.len() {
            accounts
                .iter()
                .zip(&existing)
                .map(|(wanted, found)| {
                    let same = (found.owner, found.ledger, found.code, found.flags)
                        == (wanted.owner, wanted.ledger, wanted.code, wanted.flags);
                    if same { CreateAccountResult::Exists } else { CreateAccountResult::ExistsWithDifferentFields }
                })
                .collect()
        } else {
            self.create_system_accounts(&accounts).await?
        };
        if results.iter().any(|result| !matches!(result, CreateAccountResult::Ok | CreateAccountResult::Exists)) {
            return Err(refused(operation, format!("cannot open staking accounts: {results:?}")));
        }
        Ok(())
    }

    /// What `account` has staked now.
    pub async fn staked(&self, account: u128) -> Result<u128, OperationError> {
        Ok(self.lookup_accounts(&[stake_account_id(account)]).await?.first().map_or(0, Account::posted_credit_balance))
    }

    /// Stakes `amount` more; returns the total staked. Idempotent by `operation_id`.
    pub async fn stake(
        &self,
        operation_id: &str,
        account: u128,
        amount: u128,
        economics: &Economics,
    ) -> Result<u128, OperationError> {
        let operation = "staking";
        self.ensure_staker_accounts(account, operation).await?;
        let id = system_transfer_id("stake", operation_key(operation_id));
        let already = !self.lookup_transfers(&[id]).await?.is_empty();
        let current = self.staked(account).await?;
        if !already && current.saturating_add(amount) < economics.minimum_stake {
            return Err(refused(
                operation,
                format!("a stake must total at least {} base units", economics.minimum_stake),
            ));
        }
        let stake = Transfer {
            id,
            debit_account_id: account,
            credit_account_id: stake_account_id(account),
            amount,
            user_data: account,
            ledger: OPEN_LEDGER,
            code: codes::STAKE,
            ..Transfer::default()
        };
        self.expect_one(&[stake], operation).await?;
        self.staked(account).await
    }

    /// Starts unbonding `amount`; returns when it will be paid back (Unix seconds).
    pub async fn unstake(
        &self,
        operation_id: &str,
        account: u128,
        amount: u128,
        economics: &Economics,
    ) -> Result<u64, OperationError> {
        let operation = "unstaking";
        let id = system_transfer_id("unstake", operation_key(operation_id));
        if self.lookup_transfers(&[id]).await?.is_empty() {
            let staked = self.staked(account).await?;
            if amount > staked {
                return Err(refused(operation, format!("only {staked} base units are staked")));
            }
            let remaining = staked - amount;
            if remaining > 0 && remaining < economics.minimum_stake {
                return Err(refused(
                    operation,
                    format!("this would leave {remaining}, below the minimum stake: unstake everything or less"),
                ));
            }
        }
        let unstake = Transfer {
            id,
            debit_account_id: stake_account_id(account),
            credit_account_id: unbonding_account_id(account),
            amount,
            user_data: account,
            ledger: OPEN_LEDGER,
            code: codes::UNSTAKE,
            ..Transfer::default()
        };
        self.expect_one(&[unstake], operation).await?;
        let recorded =
            self.lookup_transfers(&[id]).await?.pop().ok_or_else(|| refused(operation, "the unstake vanished"))?;
        Ok((recorded.timestamp / NANOS_PER_SECOND).saturating_add(economics.unbonding_seconds))
    }

    /// Pays back every unstake whose unbonding period has passed at `now_ns`; returns how many.
    pub async fn release_unbonded_at(&self, now_ns: u64, economics: &Economics) -> Result<usize, OperationError> {
        let cutoff = now_ns.saturating_sub(economics.unbonding_seconds.saturating_mul(NANOS_PER_SECOND));
        let cursor = self.meta_u64("unbonding_cursor").await?;
        let due = self.transfers_with_code(codes::UNSTAKE, cursor, cutoff).await?;
        let Some(last) = due.last().map(|transfer| transfer.timestamp) else { return Ok(0) };
        let releases: Vec<Transfer> = due
            .iter()
            .map(|unstake| Transfer {
                id: system_transfer_id("unbond-release", unstake.id),
                debit_account_id: unstake.credit_account_id,
                credit_account_id: unstake.user_data,
                amount: unstake.amount,
                pending_id: 0,
                user_data: unstake.user_data,
                ledger: OPEN_LEDGER,
                code: codes::UNBOND_RELEASE,
                flags: TransferFlags::default(),
                ..Transfer::default()
            })
            .collect();
        let results = self.create_transfers(&releases).await?;
        let released = results.iter().filter(|result| **result == crate::model::CreateTransferResult::Ok).count();
        if let Some(failed) = results.iter().find(|result| !result.is_success()) {
            return Err(refused("releasing unbonded stakes", failed.as_str()));
        }
        // Releases are idempotent, so a crash before this line only repeats `exists` answers.
        self.set_meta_u64("unbonding_cursor", last).await?;
        Ok(released)
    }

    /// Applies `batch` and requires every transfer to be `ok` or `exists`.
    pub(crate) async fn expect_one(&self, batch: &[Transfer], operation: &'static str) -> Result<(), OperationError> {
        let results = self.create_transfers(batch).await?;
        match results.iter().find(|result| !result.is_success()) {
            None => Ok(()),
            Some(failed) => Err(refused(operation, failed.as_str())),
        }
    }
}
