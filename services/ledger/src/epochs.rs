//! Epochs: at the close of epoch `n` (the `epoch_seconds` after `n × epoch_seconds` since the
//! Unix epoch), the stakers pool is paid out to stakers' rewards accounts pro rata to stake ×
//! time within the epoch; rounding leaves the rest in the pool for the next epoch. Each epoch
//! also gets a Merkle root over its transfers. Closing an epoch again changes nothing; rewards
//! are claimed into the staker's own account.

use std::collections::BTreeMap;

use openledger_core::{ContentHash, MerkleTree};
use openledger_proto::{
    common::v1::{Hash, Uint128},
    events::v1::EpochClosed,
};
use openledger_store::NewEvent;
use prost::Message;
use ruint::aliases::U256;

use crate::{
    books::{Ledger, operation_key, system_transfer_id},
    model::{Account, CreateTransferResult, MAX_BATCH_EVENTS, OPEN_LEDGER, Transfer, TransferFlags},
    operations::{Economics, OperationError, STAKERS_POOL},
    staking::{codes, rewards_account_id},
};

pub const SUBJECT_EPOCH_CLOSED: &str = "ol.ledger.epoch.closed";
use crate::limits::NANOS_PER_SECOND as NANOS;

/// What closing an epoch did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochClose {
    pub epoch: u64,
    pub merkle_root: ContentHash,
    pub distributed: u128,
    pub stakers: usize,
    pub already_closed: bool,
}

fn refused(reason: impl Into<String>) -> OperationError {
    OperationError::Refused { operation: "closing the epoch", reason: reason.into() }
}

/// `value × numerator ÷ denominator`, rounded down, with a 256-bit intermediate.
fn share(value: u128, numerator: U256, denominator: U256) -> u128 {
    if denominator.is_zero() {
        return 0;
    }
    let exact = U256::from(value) * numerator / denominator;
    u128::try_from(exact).expect("a share never exceeds the whole")
}

/// Stake × nanoseconds of each staker inside `[start, end)`, from the stake and unstake
/// transfers (`user_data` names the staker).
fn stake_time(movements: &[Transfer], start: u64, end: u64) -> BTreeMap<u128, U256> {
    let mut staked: BTreeMap<u128, u128> = BTreeMap::new();
    let mut since: BTreeMap<u128, u64> = BTreeMap::new();
    let mut weight: BTreeMap<u128, U256> = BTreeMap::new();
    let accrue = |staker: u128, amount: u128, from: u64, to: u64, weight: &mut BTreeMap<u128, U256>| {
        let (from, to) = (from.max(start), to.min(end));
        if to > from && amount > 0 {
            *weight.entry(staker).or_default() += U256::from(amount) * U256::from(to - from);
        }
    };
    for movement in movements.iter().filter(|t| t.timestamp < end) {
        let staker = movement.user_data;
        let current = staked.get(&staker).copied().unwrap_or(0);
        accrue(staker, current, since.get(&staker).copied().unwrap_or(start), movement.timestamp, &mut weight);
        let next = if movement.code == codes::STAKE {
            current + movement.amount
        } else {
            current.saturating_sub(movement.amount)
        };
        staked.insert(staker, next);
        since.insert(staker, movement.timestamp);
    }
    for (staker, amount) in &staked {
        accrue(*staker, *amount, since.get(staker).copied().unwrap_or(start), end, &mut weight);
    }
    weight
}

/// What is kept of a closed epoch: `root distributed stakers start end` (times in ns), so
/// `verify` can recompute the root.
fn record(root: &ContentHash, distributed: u128, stakers: usize, start: u64, end: u64) -> String {
    format!("{} {distributed} {stakers} {start} {end}", root.to_hex())
}

/// A closed epoch's recorded root and time bounds, for `verify`.
pub(crate) fn recorded_root(text: &str) -> Option<(ContentHash, u64, u64)> {
    let parts: Vec<&str> = text.split(' ').collect();
    match parts.as_slice() {
        [root, _, _, start, end] => Some((root.parse().ok()?, start.parse().ok()?, end.parse().ok()?)),
        _ => None,
    }
}

fn parse_record(epoch: u64, text: &str) -> Result<EpochClose, OperationError> {
    let corrupt = || OperationError::Ledger(crate::books::LedgerError::Corrupt(format!("epoch record {text:?}")));
    let mut parts = text.split(' ');
    let merkle_root = parts.next().and_then(|hex| hex.parse().ok()).ok_or_else(corrupt)?;
    let distributed = parts.next().and_then(|n| n.parse().ok()).ok_or_else(corrupt)?;
    let stakers = parts.next().and_then(|n| n.parse().ok()).ok_or_else(corrupt)?;
    Ok(EpochClose { epoch, merkle_root, distributed, stakers, already_closed: true })
}

impl Ledger {
    async fn all_with_code(&self, code: u16, up_to: u64) -> Result<Vec<Transfer>, OperationError> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let page = self.transfers_with_code(code, after, up_to).await?;
            let Some(last) = page.last() else { break };
            after = last.timestamp;
            let full = page.len() == MAX_BATCH_EVENTS;
            all.extend(page);
            if !full {
                break;
            }
        }
        Ok(all)
    }

    /// Closes epoch `epoch` at `now_ns` (it must have ended).
    pub async fn close_epoch_at(
        &self,
        epoch: u64,
        now_ns: u64,
        economics: &Economics,
    ) -> Result<EpochClose, OperationError> {
        let length = economics.epoch_seconds.max(1).saturating_mul(NANOS);
        let start = epoch.checked_mul(length).ok_or_else(|| refused("epoch number out of range"))?;
        let end = start.saturating_add(length);
        if now_ns < end {
            return Err(refused(format!("epoch {epoch} runs until {} (Unix seconds)", end / NANOS)));
        }
        let record_key = format!("epoch:{epoch}");
        if let Some(record) = self.meta_text(&record_key).await? {
            return parse_record(epoch, &record);
        }
        let mut movements = self.all_with_code(codes::STAKE, end).await?;
        movements.extend(self.all_with_code(codes::UNSTAKE, end).await?);
        movements.sort_by_key(|t| t.timestamp);
        let weights = stake_time(&movements, start, end);
        if weights.len() > MAX_BATCH_EVENTS {
            return Err(refused(format!("more than {MAX_BATCH_EVENTS} stakers in one epoch is not supported yet")));
        }
        let reward_id = |staker: u128| system_transfer_id(&format!("epoch-reward/{epoch}"), staker);
        let merkle_root = self.epoch_root(start, end).await?;
        let ids: Vec<u128> = weights.keys().map(|staker| reward_id(*staker)).collect();
        let paid = self.lookup_transfers(&ids).await?;
        if !paid.is_empty() {
            // Closed before, but the record was not written (a crash in between): write it now.
            let distributed = paid.iter().map(|t| t.amount).sum();
            self.set_meta_text(&record_key, &record(&merkle_root, distributed, paid.len(), start, end)).await?;
            return Ok(EpochClose { epoch, merkle_root, distributed, stakers: paid.len(), already_closed: true });
        }
        let pool = self.lookup_accounts(&[STAKERS_POOL]).await?.first().map_or(0, Account::posted_credit_balance);
        let total: U256 = weights.values().copied().fold(U256::ZERO, |sum, weight| sum + weight);
        let rewards: Vec<(u128, u128)> = weights
            .iter()
            .map(|(staker, weight)| (*staker, share(pool, *weight, total)))
            .filter(|(_, amount)| *amount > 0)
            .collect();
        let distributed: u128 = rewards.iter().map(|(_, amount)| amount).sum();
        let last = rewards.len().saturating_sub(1);
        let transfers: Vec<Transfer> = rewards
            .iter()
            .enumerate()
            .map(|(index, (staker, amount))| Transfer {
                id: reward_id(*staker),
                debit_account_id: STAKERS_POOL,
                credit_account_id: rewards_account_id(*staker),
                amount: *amount,
                user_data: *staker,
                ledger: OPEN_LEDGER,
                code: codes::EPOCH_REWARD,
                flags: TransferFlags(if index == last { 0 } else { TransferFlags::LINKED }),
                ..Transfer::default()
            })
            .collect();
        if !transfers.is_empty() {
            let event = EpochClosed {
                epoch,
                merkle_root: Some(Hash { value: merkle_root.as_bytes().to_vec() }),
                rewards_distributed: Some(Uint128::from(distributed)),
                stakers: transfers.len() as u64,
            };
            let results =
                self.write_operation(&transfers, NewEvent::new(SUBJECT_EPOCH_CLOSED, event.encode_to_vec())).await?;
            if let Some(failed) =
                results.iter().find(|result| !matches!(result, CreateTransferResult::Ok | CreateTransferResult::Exists))
            {
                return Err(refused(failed.as_str()));
            }
        }
        self.set_meta_text(&record_key, &record(&merkle_root, distributed, transfers.len(), start, end)).await?;
        Ok(EpochClose { epoch, merkle_root, distributed, stakers: transfers.len(), already_closed: false })
    }

    /// The Merkle root over the hashes of the transfers timestamped in `[start, end)`.
    pub async fn epoch_root(&self, start: u64, end: u64) -> Result<ContentHash, OperationError> {
        let hashes: Vec<ContentHash> =
            self.transfers_between(start, end).await?.iter().map(|t| ContentHash::of(&t.canonical_bytes())).collect();
        Ok(MerkleTree::new(&hashes).root())
    }

    /// Moves everything in the staker's rewards account to their own account; returns the
    /// amount. Idempotent by `operation_id`.
    pub async fn claim_rewards(&self, operation_id: &str, account: u128) -> Result<u128, OperationError> {
        let operation = "claiming rewards";
        let id = system_transfer_id("claim", operation_key(operation_id));
        if let Some(done) = self.lookup_transfers(&[id]).await?.pop() {
            return Ok(done.amount);
        }
        let rewards = rewards_account_id(account);
        let available = self.lookup_accounts(&[rewards]).await?.first().map_or(0, Account::posted_credit_balance);
        if available == 0 {
            return Err(OperationError::Refused { operation, reason: "no rewards to claim".into() });
        }
        let claim = Transfer {
            id,
            debit_account_id: rewards,
            credit_account_id: account,
            amount: available,
            user_data: account,
            ledger: OPEN_LEDGER,
            code: codes::CLAIM,
            ..Transfer::default()
        };
        self.expect_one(&[claim], operation).await?;
        Ok(available)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn movement(staker: u128, amount: u128, timestamp: u64, code: u16) -> Transfer {
        Transfer { user_data: staker, amount, timestamp, code, ..Transfer::default() }
    }

    #[test]
    fn stake_time_counts_only_the_epoch() {
        let movements = [
            movement(1, 100, 5, codes::STAKE),   // before the epoch: counts from its start
            movement(2, 50, 15, codes::STAKE),   // inside
            movement(1, 40, 18, codes::UNSTAKE), // inside
            movement(3, 70, 25, codes::STAKE),   // after: nothing
        ];
        let weights = stake_time(&movements, 10, 20);
        assert_eq!(weights[&1], U256::from(100 * 8 + 60 * 2));
        assert_eq!(weights[&2], U256::from(50 * 5));
        assert!(!weights.contains_key(&3));
    }

    #[test]
    fn shares_use_wide_intermediates() {
        let supply = 10u128.pow(27);
        let day = U256::from(86_400u64 * NANOS);
        let big = U256::from(supply) * day;
        assert_eq!(share(supply, big, big * U256::from(4u8)), supply / 4);
        assert_eq!(share(7, U256::from(1u8), U256::ZERO), 0);
    }
}
