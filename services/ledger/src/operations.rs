//! Platform operations on top of the accounting core. Each is one linked chain of transfers
//! whose ids derive from the operation's own id, so repeating an operation changes nothing.
//!
//! Inference payment: `hold_inference_fee` reserves the most a request may cost (app → fee
//! escrow, pending); `capture_inference_fee` posts the actual fee and releases the rest;
//! settlement (`settlement`: `settle_inferences`, and `settle_inference` as a batch of one)
//! pays the captured fee out of escrow as [`split_fee`] says:
//!
//! * the platform fee to the treasury;
//! * of the rest (`net`), β to the model owner, γ to the stakers pool, δ to contributors in
//!   proportion to their positive attribution weights (negative weights are never paid);
//! * no model owner (account 0: the base model alone, which nobody owns): β goes to the
//!   treasury, still as a model-owner leg, so the chain has the same shape either way;
//! * no positive weight (an output that quotes nothing attributable, or an attribution made
//!   without its index): δ goes to the treasury with the rounding remainder;
//! * every share is rounded down, and whatever rounding leaves goes to the treasury, so a
//!   settlement always balances to the base unit.

use openledger_core::slashing::DEFAULT_SLASHING_THRESHOLD_MILLI;
use openledger_proto::{common::v1::Uint128, events::v1::BondSlashed};
use openledger_store::NewEvent;
use prost::Message;

use crate::{
    books::{Ledger, LedgerError, operation_key as key, system_transfer_id},
    limits::BASIS_POINTS_TOTAL,
    model::{CreateTransferResult, OPEN_LEDGER, SystemRole, Transfer, TransferFlags},
};

/// Transfer codes of the platform operations.
pub mod codes {
    pub const INFERENCE_HOLD: u16 = 10;
    pub const INFERENCE_CAPTURE: u16 = 11;
    pub const SETTLE_PLATFORM_FEE: u16 = 12;
    pub const SETTLE_MODEL_OWNER: u16 = 13;
    pub const SETTLE_STAKERS: u16 = 14;
    pub const SETTLE_CONTRIBUTOR: u16 = 15;
    pub const SETTLE_REMAINDER: u16 = 16;
    pub const BOND_HOLD: u16 = 20;
    pub const BOND_RELEASE: u16 = 21;
    pub const BOND_SLASH: u16 = 22;
    /// The two net-zero legs that record an attribution receipt batch's root (`receipts`).
    pub const RECEIPT_BATCH: u16 = 30;
}

/// Subjects of the operations' events (published through the outbox).
pub const SUBJECT_SETTLED: &str = "ol.ledger.settled";
pub const SUBJECT_BOND_SLASHED: &str = "ol.ledger.bond.slashed";

pub const TREASURY: u128 = SystemRole::Treasury as u128;
pub const FEE_ESCROW: u128 = SystemRole::FeeEscrow as u128;
pub const STAKERS_POOL: u128 = SystemRole::StakersPool as u128;
/// Most contributors paid by one settlement (one transfer each).
pub const MAX_SETTLEMENT_CONTRIBUTORS: usize = 4096;
/// Attribution weights are parts per billion: at most ±10^9 each. With at most 4096 of them
/// the share arithmetic stays far inside u128.
pub const MAX_WEIGHT_PPB: i64 = 1_000_000_000;

/// The economic parameters (defaults from the architecture; governance will change them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Economics {
    pub model_owner_bps: u32,
    pub stakers_bps: u32,
    pub contributors_bps: u32,
    /// Flat fee per inference, in base units.
    pub platform_fee: u128,
    /// Share of a bond taken to the treasury when a contribution is slashed.
    pub slashing_bps: u32,
    /// Least a staker may have staked (base units); unstaking may go to zero, not below this.
    pub minimum_stake: u128,
    /// Time between an unstake and its payout.
    pub unbonding_seconds: u64,
    /// Length of a rewards epoch.
    pub epoch_seconds: u64,
    /// Quality score below which the attribution-worker makes a contribution a slashing
    /// candidate, in thousandths (see `openledger_core::slashing`: −1000 is one median
    /// deviation below the typical record).
    pub slashing_threshold_milli: i32,
}

impl Economics {
    /// The parameters as `GetParameters` answers them (and proposals carry them); a message
    /// without a slashing threshold (from a server older than it) means the default.
    pub fn from_proto(parameters: &openledger_proto::ledger::v1::Parameters) -> Self {
        use openledger_proto::u128_of;
        Self {
            model_owner_bps: parameters.model_owner_bps,
            stakers_bps: parameters.stakers_bps,
            contributors_bps: parameters.contributors_bps,
            platform_fee: u128_of(parameters.platform_fee.as_ref()),
            slashing_bps: parameters.slashing_bps,
            minimum_stake: u128_of(parameters.minimum_stake.as_ref()),
            unbonding_seconds: parameters.unbonding_seconds,
            epoch_seconds: parameters.epoch_seconds,
            slashing_threshold_milli: parameters.slashing_threshold_milli.unwrap_or(DEFAULT_SLASHING_THRESHOLD_MILLI),
        }
    }

    /// The parameters as a message (`effective_from_epoch` left 0 for the caller to set).
    pub fn to_proto(&self) -> openledger_proto::ledger::v1::Parameters {
        use openledger_proto::uint128;
        openledger_proto::ledger::v1::Parameters {
            model_owner_bps: self.model_owner_bps,
            stakers_bps: self.stakers_bps,
            contributors_bps: self.contributors_bps,
            platform_fee: uint128(self.platform_fee),
            slashing_bps: self.slashing_bps,
            unbonding_seconds: self.unbonding_seconds,
            minimum_stake: uint128(self.minimum_stake),
            epoch_seconds: self.epoch_seconds,
            effective_from_epoch: 0,
            slashing_threshold_milli: Some(self.slashing_threshold_milli),
        }
    }

    /// The slashing threshold as the quality score it is.
    pub fn slashing_threshold(&self) -> f64 {
        openledger_core::slashing::slashing_threshold(self.slashing_threshold_milli)
    }
}

impl Default for Economics {
    fn default() -> Self {
        Self {
            model_owner_bps: 3_000,
            stakers_bps: 2_000,
            contributors_bps: 5_000,
            platform_fee: 10u128.pow(15),
            slashing_bps: 10_000,
            minimum_stake: 10u128.pow(18),
            unbonding_seconds: 7 * 86_400,
            epoch_seconds: openledger_core::governance::DEFAULT_EPOCH_SECONDS,
            slashing_threshold_milli: DEFAULT_SLASHING_THRESHOLD_MILLI,
        }
    }
}

/// Why an operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum OperationError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("{operation} refused: {reason}")]
    Refused { operation: &'static str, reason: String },
    /// What the request names (an account, a proposal) does not exist.
    #[error("{operation} refused: {what} does not exist")]
    NotFound { operation: &'static str, what: String },
    /// The request's signature is missing, malformed or does not verify.
    #[error(transparent)]
    Unauthenticated(#[from] openledger_signing::SigningError),
    /// The signature verifies, but its key does not own the account.
    #[error("{operation} refused: the key does not own account {account}: sign with the account owner's key")]
    NotOwner { operation: &'static str, account: u128 },
    /// The debited account's balance cannot cover the amount.
    #[error("{operation} refused: the account's balance cannot cover it: fund the account and try again")]
    InsufficientFunds { operation: &'static str },
}

impl OperationError {
    /// Whether trying again cannot help (everything but the database's errors).
    pub fn is_permanent(&self) -> bool {
        !matches!(self, Self::Ledger(_))
    }
}

pub(crate) fn refused(operation: &'static str, reason: impl Into<String>) -> OperationError {
    OperationError::Refused { operation, reason: reason.into() }
}

pub(crate) fn not_found(operation: &'static str, what: impl Into<String>) -> OperationError {
    OperationError::NotFound { operation, what: what.into() }
}

/// One contributor's attribution weight (parts per billion; negative means harmful).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContributorWeight {
    pub account_id: u128,
    pub weight_ppb: i64,
}

/// What a settlement paid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settlement {
    pub fee: u128,
    pub transfers: Vec<Transfer>,
    /// True when this inference had been settled before (nothing changed now).
    pub already_settled: bool,
}

/// The fee of an inference under `economics` (the formula: `openledger_core::fee`).
pub fn inference_fee(
    tokens_in: u32,
    tokens_out: u32,
    price_in: u128,
    price_out: u128,
    economics: &Economics,
) -> Option<u128> {
    openledger_core::fee::inference_fee(tokens_in, tokens_out, price_in, price_out, economics.platform_fee)
}

/// `bps` basis points of `amount`, rounded down, without overflow for any `u128` amount.
pub(crate) fn bps_share(amount: u128, bps: u32) -> u128 {
    let total = u128::from(BASIS_POINTS_TOTAL);
    amount / total * u128::from(bps) + amount % total * u128::from(bps) / total
}

/// Splits `fee` into (account, amount, code) payouts; they sum to `fee` exactly. A
/// `model_owner` of 0 is the treasury. Weights must be within ±`MAX_WEIGHT_PPB` and at most
/// `MAX_SETTLEMENT_CONTRIBUTORS` (checked by `settle_inferences`).
pub fn split_fee(
    fee: u128,
    model_owner: u128,
    weights: &[ContributorWeight],
    economics: &Economics,
) -> Vec<(u128, u128, u16)> {
    let platform = economics.platform_fee.min(fee);
    let net = fee - platform;
    let share = |bps: u32| bps_share(net, bps);
    let owner = share(economics.model_owner_bps);
    let stakers = share(economics.stakers_bps);
    let contributors = share(economics.contributors_bps);
    let positive: Vec<&ContributorWeight> = weights.iter().filter(|w| w.weight_ppb > 0).collect();
    let total_weight: u128 = positive.iter().map(|w| w.weight_ppb as u128).sum();
    let owner_account = if model_owner == 0 { TREASURY } else { model_owner };
    let mut payouts = vec![
        (TREASURY, platform, codes::SETTLE_PLATFORM_FEE),
        (owner_account, owner, codes::SETTLE_MODEL_OWNER),
        (STAKERS_POOL, stakers, codes::SETTLE_STAKERS),
    ];
    let mut paid = platform + owner + stakers;
    if total_weight > 0 {
        for weight in positive {
            // contributors * w / total without overflow: contributors <= u128, w <= 2^63.
            let amount = mul_div_floor(contributors, weight.weight_ppb as u128, total_weight);
            payouts.push((weight.account_id, amount, codes::SETTLE_CONTRIBUTOR));
            paid += amount;
        }
    }
    payouts.push((TREASURY, fee - paid, codes::SETTLE_REMAINDER));
    payouts
}

fn mul_div_floor(value: u128, numerator: u128, denominator: u128) -> u128 {
    openledger_core::Amount::from_base_units(value)
        .mul_div_floor(numerator, denominator)
        .map(openledger_core::Amount::base_units)
        .expect("bounded weights keep value * weight / total inside u128")
}

fn single(results: &[CreateTransferResult], operation: &'static str) -> Result<bool, OperationError> {
    match results {
        [CreateTransferResult::Ok] => Ok(false),
        [CreateTransferResult::Exists] => Ok(true),
        [CreateTransferResult::InsufficientFunds] => Err(OperationError::InsufficientFunds { operation }),
        [other] => Err(refused(operation, other.as_str())),
        _ => Err(refused(operation, "unexpected result count")),
    }
}

/// The hold of an inference's fee (app → fee escrow, pending).
pub fn hold_transfer(inference_id: &str, app_account: u128, max_fee: u128, timeout_seconds: u32) -> Transfer {
    Transfer {
        id: system_transfer_id("inference-hold", key(inference_id)),
        debit_account_id: app_account,
        credit_account_id: FEE_ESCROW,
        amount: max_fee,
        timeout_seconds,
        ledger: OPEN_LEDGER,
        code: codes::INFERENCE_HOLD,
        flags: TransferFlags(TransferFlags::PENDING),
        ..Transfer::default()
    }
}

/// The capture of `fee` from an inference's hold.
pub fn capture_transfer(inference_id: &str, fee: u128) -> Transfer {
    Transfer {
        id: system_transfer_id("inference-capture", key(inference_id)),
        pending_id: system_transfer_id("inference-hold", key(inference_id)),
        amount: fee,
        code: codes::INFERENCE_CAPTURE,
        flags: TransferFlags(TransferFlags::POST_PENDING),
        ..Transfer::default()
    }
}

/// The linked chain that pays out a captured `fee` (see `split_fee`).
pub fn settlement_transfers(
    inference_id: &str,
    fee: u128,
    model_owner: u128,
    weights: &[ContributorWeight],
    economics: &Economics,
) -> Vec<Transfer> {
    let payouts: Vec<(u128, u128, u16)> =
        split_fee(fee, model_owner, weights, economics).into_iter().filter(|(_, amount, _)| *amount > 0).collect();
    let last = payouts.len().saturating_sub(1);
    payouts
        .iter()
        .enumerate()
        .map(|(index, (account, amount, code))| Transfer {
            id: system_transfer_id(&format!("settle/{index}"), key(inference_id)),
            debit_account_id: FEE_ESCROW,
            credit_account_id: *account,
            amount: *amount,
            ledger: OPEN_LEDGER,
            code: *code,
            flags: TransferFlags(if index == last { 0 } else { TransferFlags::LINKED }),
            ..Transfer::default()
        })
        .collect()
}

impl Ledger {
    /// Holds `max_fee` from the app's account until capture (or `timeout_seconds`).
    pub async fn hold_inference_fee(
        &self,
        inference_id: &str,
        app_account: u128,
        max_fee: u128,
        timeout_seconds: u32,
    ) -> Result<u128, OperationError> {
        self.hold_inference_fee_at(inference_id, app_account, max_fee, timeout_seconds, Self::now_ns()).await
    }

    pub async fn hold_inference_fee_at(
        &self,
        inference_id: &str,
        app_account: u128,
        max_fee: u128,
        timeout_seconds: u32,
        now_ns: u64,
    ) -> Result<u128, OperationError> {
        let hold = hold_transfer(inference_id, app_account, max_fee, timeout_seconds);
        single(&self.create_transfers_at(&[hold], now_ns).await?, "holding the inference fee")?;
        Ok(hold.id)
    }

    /// Captures the actual fee from the hold and releases the rest; returns the fee.
    pub async fn capture_inference_fee(
        &self,
        inference_id: &str,
        tokens_in: u32,
        tokens_out: u32,
        price_in: u128,
        price_out: u128,
        economics: &Economics,
    ) -> Result<u128, OperationError> {
        self.capture_inference_fee_at(
            inference_id,
            tokens_in,
            tokens_out,
            price_in,
            price_out,
            economics,
            Self::now_ns(),
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn capture_inference_fee_at(
        &self,
        inference_id: &str,
        tokens_in: u32,
        tokens_out: u32,
        price_in: u128,
        price_out: u128,
        economics: &Economics,
        now_ns: u64,
    ) -> Result<u128, OperationError> {
        let operation = "capturing the inference fee";
        let fee = inference_fee(tokens_in, tokens_out, price_in, price_out, economics)
            .ok_or_else(|| refused(operation, "the fee overflows u128"))?;
        let capture = capture_transfer(inference_id, fee);
        let hold = self
            .lookup_transfers(&[capture.pending_id])
            .await?
            .pop()
            .ok_or_else(|| refused(operation, "no hold for this inference"))?;
        within_hold(operation, fee, &hold)?;
        single(&self.create_transfers_at(&[capture], now_ns).await?, operation)?;
        Ok(fee)
    }

    /// Captures `fee` (what the inference's completion event says it cost) from the
    /// inference's hold, unless its capture is in the books already; before `due_ns` an
    /// uncaptured inference is left to the gateway (`NotDue`). The capture's id derives from the
    /// inference id, so whichever of the gateway and this path runs first captures it once.
    pub async fn capture_completed_at(
        &self,
        inference_id: &str,
        fee: u128,
        now_ns: u64,
        due_ns: u64,
    ) -> Result<LateCapture, OperationError> {
        let operation = "capturing a completed inference's fee";
        let capture = capture_transfer(inference_id, fee);
        let found = self.lookup_transfers(&[capture.id, capture.pending_id]).await?;
        if found.iter().any(|transfer| transfer.id == capture.id) {
            return Ok(LateCapture::AlreadyCaptured);
        }
        if now_ns < due_ns {
            return Ok(LateCapture::NotDue);
        }
        let Some(hold) = found.iter().find(|transfer| transfer.id == capture.pending_id) else {
            return Ok(LateCapture::Uncaptured("no hold"));
        };
        within_hold(operation, fee, hold)?;
        match self.create_transfers_at(&[capture], now_ns).await?.as_slice() {
            [CreateTransferResult::Ok] => Ok(LateCapture::Captured),
            [CreateTransferResult::Exists] => Ok(LateCapture::AlreadyCaptured),
            [CreateTransferResult::PendingAlreadyResolved] => Ok(LateCapture::Uncaptured("its hold was voided")),
            [CreateTransferResult::PendingExpired] => Ok(LateCapture::Uncaptured("its hold expired")),
            [other] => Err(refused(operation, other.as_str())),
            _ => Err(refused(operation, "unexpected result count")),
        }
    }
}

/// A capture of `fee` from `hold` is refused when the fee is larger than what was held.
fn within_hold(operation: &'static str, fee: u128, hold: &Transfer) -> Result<(), OperationError> {
    if fee > hold.amount {
        return Err(refused(operation, format!("the fee {fee} exceeds the hold of {}", hold.amount)));
    }
    Ok(())
}

/// What became of an inference's capture from its completion event ([`Ledger::capture_completed_at`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LateCapture {
    /// Its capture was in the books already (the gateway's, nearly always).
    AlreadyCaptured,
    /// Captured now.
    Captured,
    /// Not captured and not due yet: the gateway may still capture it.
    NotDue,
    /// Nothing to capture from: no hold, or its hold was voided or expired (nothing charged).
    Uncaptured(&'static str),
}

/// Where a contribution's bond stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BondState {
    Held,
    Released,
    Slashed,
    /// Releasing or slashing found no bond held for the contribution (its hold never reached
    /// the ledger): nothing moved, and no transfer was made (its id is 0). An answer, not an
    /// error, so a caller cleaning up after a failed hold branches on it.
    NotHeld,
}

/// The transfer id that goes with [`BondState::NotHeld`]: none was made.
pub const NO_TRANSFER: u128 = 0;

impl Ledger {
    /// Holds a contribution's stake bond (contributor → treasury, pending, no expiry).
    pub async fn hold_bond(
        &self,
        contribution_id: &str,
        contributor: u128,
        amount: u128,
    ) -> Result<(u128, BondState), OperationError> {
        let id = system_transfer_id("bond-hold", key(contribution_id));
        let hold = Transfer {
            id,
            debit_account_id: contributor,
            credit_account_id: TREASURY,
            amount,
            ledger: OPEN_LEDGER,
            code: codes::BOND_HOLD,
            flags: TransferFlags(TransferFlags::PENDING),
            ..Transfer::default()
        };
        single(&self.create_transfers(&[hold]).await?, "holding the bond")?;
        Ok((id, BondState::Held))
    }

    /// Gives the bond back to the contributor (the contribution was accepted); answers
    /// [`BondState::NotHeld`] when no bond was ever held for the contribution.
    pub async fn release_bond(&self, contribution_id: &str) -> Result<(u128, BondState), OperationError> {
        let operation = "releasing the bond";
        let hold_id = system_transfer_id("bond-hold", key(contribution_id));
        let id = system_transfer_id("bond-release", key(contribution_id));
        let release = Transfer {
            id,
            pending_id: hold_id,
            code: codes::BOND_RELEASE,
            flags: TransferFlags(TransferFlags::VOID_PENDING),
            ..Transfer::default()
        };
        match self.create_transfers(&[release]).await?.as_slice() {
            [CreateTransferResult::Ok | CreateTransferResult::Exists] => Ok((id, BondState::Released)),
            [CreateTransferResult::PendingAlreadyResolved] => Err(refused(operation, "the bond was already slashed")),
            [CreateTransferResult::PendingNotFound] => Ok((NO_TRANSFER, BondState::NotHeld)),
            [other] => Err(refused(operation, other.as_str())),
            _ => Err(refused(operation, "unexpected result count")),
        }
    }

    /// Takes `slashing_bps` of the bond to the treasury and releases the rest (the contribution
    /// was spam, a duplicate, or proven harmful); answers [`BondState::NotHeld`] when no bond
    /// was ever held for the contribution.
    pub async fn slash_bond(
        &self,
        contribution_id: &str,
        reason: &str,
        economics: &Economics,
    ) -> Result<(u128, BondState), OperationError> {
        let operation = "slashing the bond";
        let hold_id = system_transfer_id("bond-hold", key(contribution_id));
        let Some(hold) = self.lookup_transfers(&[hold_id]).await?.pop() else {
            return Ok((NO_TRANSFER, BondState::NotHeld));
        };
        let slashed = mul_div_floor(hold.amount, u128::from(economics.slashing_bps.min(10_000)), 10_000);
        let id = system_transfer_id("bond-slash", key(contribution_id));
        let slash = Transfer {
            id,
            pending_id: hold_id,
            // A post of 0 would capture everything: a zero slash is a release instead.
            amount: slashed,
            code: if slashed == 0 { codes::BOND_RELEASE } else { codes::BOND_SLASH },
            flags: TransferFlags(if slashed == 0 { TransferFlags::VOID_PENDING } else { TransferFlags::POST_PENDING }),
            ..Transfer::default()
        };
        let event = BondSlashed {
            contribution_id: contribution_id.to_owned(),
            contributor_account_id: Some(Uint128 {
                high: (hold.debit_account_id >> 64) as u64,
                low: hold.debit_account_id as u64,
            }),
            slashed: Some(Uint128::from(slashed)),
            released: Some(Uint128 {
                high: ((hold.amount - slashed) >> 64) as u64,
                low: (hold.amount - slashed) as u64,
            }),
            reason: reason.chars().take(512).collect(),
        };
        match self
            .write_operation(&[slash], NewEvent::new(SUBJECT_BOND_SLASHED, event.encode_to_vec()))
            .await?
            .as_slice()
        {
            [CreateTransferResult::Ok | CreateTransferResult::Exists] => Ok((id, BondState::Slashed)),
            [CreateTransferResult::PendingAlreadyResolved] => Err(refused(operation, "the bond was already released")),
            [other] => Err(refused(operation, other.as_str())),
            _ => Err(refused(operation, "unexpected result count")),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn fee_follows_the_formula() {
        let economics = Economics { platform_fee: 7, ..Economics::default() };
        // ceil(1500 * 3 / 1000) = 5, ceil(1 * 999 / 1000) = 1
        assert_eq!(inference_fee(1500, 1, 3, 999, &economics), Some(5 + 1 + 7));
        assert_eq!(inference_fee(u32::MAX, 0, u128::MAX, 0, &economics), None);
    }

    #[test]
    fn a_documented_example_splits_as_written() {
        let economics = Economics { platform_fee: 100, ..Economics::default() };
        let weights = [
            ContributorWeight { account_id: 500, weight_ppb: 2 },
            ContributorWeight { account_id: 501, weight_ppb: 1 },
            ContributorWeight { account_id: 502, weight_ppb: -5 },
        ];
        // fee 1101: platform 100; net 1001 → owner 300, stakers 200, contributors 500
        // (floors of 300.3, 200.2, 500.5); contributors 2:1 → 333 and 166; remainder 2.
        let payouts = split_fee(1101, 9, &weights, &economics);
        assert_eq!(
            payouts,
            vec![
                (TREASURY, 100, codes::SETTLE_PLATFORM_FEE),
                (9, 300, codes::SETTLE_MODEL_OWNER),
                (STAKERS_POOL, 200, codes::SETTLE_STAKERS),
                (500, 333, codes::SETTLE_CONTRIBUTOR),
                (501, 166, codes::SETTLE_CONTRIBUTOR),
                (TREASURY, 2, codes::SETTLE_REMAINDER),
            ]
        );
    }

    proptest! {
        #[test]
        fn every_split_balances_to_the_base_unit(
            fee in any::<u128>(),
            platform_fee in any::<u64>(),
            weights in prop::collection::vec(-MAX_WEIGHT_PPB..=MAX_WEIGHT_PPB, 0..20),
        ) {
            let economics = Economics { platform_fee: u128::from(platform_fee), ..Economics::default() };
            let weights: Vec<ContributorWeight> =
                weights.iter().enumerate().map(|(i, w)| ContributorWeight { account_id: 1000 + i as u128, weight_ppb: *w }).collect();
            let payouts = split_fee(fee, 9, &weights, &economics);
            let total = payouts.iter().try_fold(0u128, |sum, (_, amount, _)| sum.checked_add(*amount));
            prop_assert_eq!(total, Some(fee));
            let net = fee - u128::from(platform_fee).min(fee);
            let contributors = net / 10_000 * 5_000 + net % 10_000 * 5_000 / 10_000;
            let total: u128 = weights.iter().filter(|w| w.weight_ppb > 0).map(|w| w.weight_ppb as u128).sum();
            for weight in weights.iter().filter(|w| w.weight_ppb > 0) {
                let expected = openledger_core::Amount::from_base_units(contributors).mul_div_floor(weight.weight_ppb as u128, total).expect("fits");
                let paid = payouts.iter().find(|(account, _, _)| *account == weight.account_id).map(|(_, amount, _)| *amount);
                prop_assert_eq!(paid, Some(expected.base_units()));
            }
            for weight in weights.iter().filter(|w| w.weight_ppb <= 0) {
                prop_assert!(payouts.iter().all(|(account, _, _)| *account != weight.account_id), "non-positive weights are never paid");
            }
        }
    }
}
