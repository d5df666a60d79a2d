//! Settlement: paying captured inference fees out of escrow, many inferences in one database
//! transaction (the attribution consumer settles up to `SETTLEMENT_BATCH` at a time), and the
//! reads that show what a settlement did (`settlement_record`, `earnings`).
//!
//! Rules, besides the split itself (`operations::split_fee`):
//! - each inference is its own linked chain (`operations::settlement_transfers`) whose ids
//!   derive from the inference id, so settling it again is `already settled` and changes
//!   nothing, and a different chain under the same id (other weights, other parameters) is
//!   refused rather than paid twice;
//! - a weight whose account is 0 is paid to its contributor's earnings account
//!   (`openledger_core::fee::earnings_account_id` of the contributor's public key); the
//!   account is created when missing, in the settlement's own transaction, owned by that key,
//!   with code [`EARNINGS_ACCOUNT_CODE`] and `debits_must_not_exceed_credits` like the
//!   accounts clients open; an account that already exists is left as it is;
//! - a refusal is per inference and never stops the others: no capture (and no hold still
//!   standing), bad weights (too many, out of range, one that names neither an account nor a
//!   32-byte key, a bad inference id) and a different earlier settlement are permanent; a
//!   failed payout (an account missing, a limit) and a capture not made yet while the hold
//!   stands (the gateway writes its event just before it captures) may pass later;
//! - an `InferenceSettled` event goes to the outbox, in the same transaction, for each
//!   inference whose chain was accepted now (not for one settled before).

use std::{
    collections::{BTreeMap, HashMap},
    ops::Range,
};

use openledger_core::fee::earnings_account_id;
use openledger_proto::{common::v1::Uint128, events::v1::InferenceSettled};
use openledger_store::NewEvent;
use prost::Message;

use crate::{
    books::{Chain, Ledger, LedgerError, operation_key as key, system_transfer_id},
    limits::{MAX_BATCH_EVENTS, MAX_OPERATION_ID_BYTES, NANOS_PER_SECOND},
    model::{Account, AccountFlags, CreateTransferResult, OPEN_LEDGER, Owner, Transfer},
    operations::{
        ContributorWeight, Economics, MAX_SETTLEMENT_CONTRIBUTORS, MAX_WEIGHT_PPB, OperationError, SUBJECT_SETTLED,
        Settlement, refused, settlement_transfers,
    },
};

/// The code of the earnings accounts settlement creates (the default of client accounts).
pub const EARNINGS_ACCOUNT_CODE: u16 = 0;
/// Settlement legs read per lookup by `settlement_record`.
const SETTLEMENT_LOOKUP_LEGS: usize = 16;

/// One inference to settle: whose fee, the model owner (0: none, the treasury takes the
/// share) and the contributors' weights with the accounts they are paid to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettleOrder {
    pub inference_id: String,
    pub model_owner: u128,
    pub weights: Vec<ContributorWeight>,
    /// Earnings accounts the weights resolved to, to create when missing.
    earnings_accounts: Vec<Account>,
    /// Why the order cannot be settled, found while it was built.
    invalid: Option<String>,
}

/// The expected settlement the audit checks the books against: the order that should have
/// been settled, built from the stored attribution.
pub type ExpectedSettlement = SettleOrder;

impl SettleOrder {
    pub fn new(inference_id: impl Into<String>, model_owner: u128) -> Self {
        Self {
            inference_id: inference_id.into(),
            model_owner,
            weights: Vec::new(),
            earnings_accounts: Vec::new(),
            invalid: None,
        }
    }

    /// Adds weights paid to the accounts they name.
    pub fn with_weights(mut self, weights: &[ContributorWeight]) -> Self {
        self.weights.extend_from_slice(weights);
        self
    }

    /// Adds a weight paid to `account_id`, or, when that is 0, to the earnings account of
    /// `contributor` (an ed25519 public key).
    pub fn weight(mut self, account_id: u128, contributor: &[u8], weight_ppb: i64) -> Self {
        let account_id = if account_id != 0 {
            account_id
        } else if let Ok(key) = <[u8; 32]>::try_from(contributor) {
            let id = earnings_account_id(&key);
            if weight_ppb > 0 {
                let guarded = AccountFlags(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS);
                self.earnings_accounts.push(Account::new(
                    id,
                    Owner::Key(key),
                    OPEN_LEDGER,
                    EARNINGS_ACCOUNT_CODE,
                    guarded,
                ));
            }
            id
        } else {
            let index = self.weights.len();
            self.invalid.get_or_insert_with(|| {
                format!(
                    "weight {index} names no account and no 32-byte contributor key (got {} bytes)",
                    contributor.len()
                )
            });
            0
        };
        self.weights.push(ContributorWeight { account_id, weight_ppb });
        self
    }

    /// The earnings accounts this order pays and creates when missing.
    pub fn earnings_accounts(&self) -> impl Iterator<Item = u128> + '_ {
        self.earnings_accounts.iter().map(|account| account.id)
    }

    /// Why this order can never be settled, if it cannot.
    pub(crate) fn check(&self) -> Result<(), Refusal> {
        if self.inference_id.is_empty() || self.inference_id.len() > MAX_OPERATION_ID_BYTES {
            return Err(Refusal::BadWeights(format!(
                "the inference id must be 1 to {MAX_OPERATION_ID_BYTES} bytes, got {}",
                self.inference_id.len()
            )));
        }
        if let Some(reason) = &self.invalid {
            return Err(Refusal::BadWeights(reason.clone()));
        }
        if self.weights.len() > MAX_SETTLEMENT_CONTRIBUTORS {
            return Err(Refusal::BadWeights(format!(
                "at most {MAX_SETTLEMENT_CONTRIBUTORS} contributors, got {}",
                self.weights.len()
            )));
        }
        if let Some(weight) = self.weights.iter().find(|w| w.weight_ppb.abs() > MAX_WEIGHT_PPB) {
            return Err(Refusal::BadWeights(format!(
                "weight {} is outside ±{MAX_WEIGHT_PPB} parts per billion",
                weight.weight_ppb
            )));
        }
        Ok(())
    }

    /// The chain that settles this order's `fee` under `economics`.
    pub fn transfers(&self, fee: u128, economics: &Economics) -> Vec<Transfer> {
        settlement_transfers(&self.inference_id, fee, self.model_owner, &self.weights, economics)
    }
}

/// Why an inference was not settled.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Never captured, and it never will be: no hold, or its hold expired (the app was not
    /// charged; the gateway writes the event before it captures, so a gateway that died in
    /// between leaves exactly this).
    #[error("the inference's fee was never captured: its hold is gone or expired, the app was not charged")]
    NoCapture,
    /// Not captured yet while its hold still stands: the capture may be on its way.
    #[error("the inference's fee is not captured yet (its hold still stands)")]
    NotCapturedYet,
    #[error("bad weights: {0}")]
    BadWeights(String),
    #[error("the inference was already settled with other payouts")]
    SettledDifferently,
    #[error("a payout failed: {0}")]
    PayoutFailed(&'static str),
}

impl Refusal {
    /// True when trying again cannot succeed.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, Self::PayoutFailed(_) | Self::NotCapturedYet)
    }
}

/// What became of one order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SettleOutcome {
    /// Paid now, or before (`already_settled`).
    Settled(Settlement),
    Refused(Refusal),
}

impl SettleOutcome {
    /// `settled`, `already_settled` or `refused` (the proto's words).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Settled(settlement) if settlement.already_settled => "already_settled",
            Self::Settled(_) => "settled",
            Self::Refused(_) => "refused",
        }
    }
}

/// An inference's capture and its settlement legs in chain order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SettlementRecord {
    pub capture: Option<Transfer>,
    pub transfers: Vec<Transfer>,
}

/// Settlement payouts credited to one account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Earnings {
    pub account_id: u128,
    pub earned: u128,
    pub payouts: u64,
}

/// The id of an inference's hold transfer.
pub fn hold_id(inference_id: &str) -> u128 {
    system_transfer_id("inference-hold", key(inference_id))
}

/// The id of an inference's capture transfer.
pub fn capture_id(inference_id: &str) -> u128 {
    system_transfer_id("inference-capture", key(inference_id))
}

/// The id of leg `index` of an inference's settlement chain.
pub fn settlement_leg_id(inference_id: &str, index: usize) -> u128 {
    system_transfer_id(&format!("settle/{index}"), key(inference_id))
}

/// What one chain's results say about its inference.
fn outcome_of(results: &[CreateTransferResult], fee: u128, transfers: Vec<Transfer>) -> SettleOutcome {
    use CreateTransferResult as R;
    if results.iter().all(|result| *result == R::Exists) {
        return SettleOutcome::Settled(Settlement { fee, transfers, already_settled: true });
    }
    if results.iter().all(|result| result.is_success()) {
        return SettleOutcome::Settled(Settlement { fee, transfers, already_settled: false });
    }
    if results.contains(&R::ExistsWithDifferentFields) {
        return SettleOutcome::Refused(Refusal::SettledDifferently);
    }
    let failed = results.iter().find(|result| !result.is_success() && **result != R::LinkedEventFailed);
    SettleOutcome::Refused(Refusal::PayoutFailed(failed.map_or("linked_event_failed", |result| result.as_str())))
}

impl Ledger {
    /// Settles each order's captured fee under `economics`, as many inferences per database
    /// transaction as `MAX_BATCH_EVENTS` transfers allow; one outcome per order, in order.
    /// An error means nothing of the failed transaction was written (try again).
    pub async fn settle_inferences_at(
        &self,
        orders: &[SettleOrder],
        economics: &Economics,
        now_ns: u64,
    ) -> Result<Vec<SettleOutcome>, LedgerError> {
        let capture_ids: Vec<u128> = orders.iter().map(|order| capture_id(&order.inference_id)).collect();
        let captures: HashMap<u128, Transfer> =
            self.lookup_transfers(&capture_ids).await?.into_iter().map(|t| (t.id, t)).collect();
        // Holds of the orders not captured: one still standing means the capture may come.
        let uncaptured: Vec<u128> = orders
            .iter()
            .zip(&capture_ids)
            .filter(|(_, id)| !captures.contains_key(id))
            .map(|(order, _)| hold_id(&order.inference_id))
            .collect();
        let standing: std::collections::HashSet<u128> = if uncaptured.is_empty() {
            Default::default()
        } else {
            self.lookup_transfers(&uncaptured)
                .await?
                .into_iter()
                .filter(|hold| {
                    hold.timeout_seconds == 0
                        || hold.timestamp.saturating_add(u64::from(hold.timeout_seconds) * NANOS_PER_SECOND) > now_ns
                })
                .map(|hold| hold.id)
                .collect()
        };
        let mut outcomes: Vec<Option<SettleOutcome>> = vec![None; orders.len()];
        // The orders to write (their index and fee) and their chains, side by side.
        let (mut ready, mut chains) = (Vec::with_capacity(orders.len()), Vec::with_capacity(orders.len()));
        for (index, order) in orders.iter().enumerate() {
            if let Err(refusal) = order.check() {
                outcomes[index] = Some(SettleOutcome::Refused(refusal));
                continue;
            }
            let Some(capture) = captures.get(&capture_ids[index]) else {
                let refusal = if standing.contains(&hold_id(&order.inference_id)) {
                    Refusal::NotCapturedYet
                } else {
                    Refusal::NoCapture
                };
                outcomes[index] = Some(SettleOutcome::Refused(refusal));
                continue;
            };
            let transfers = order.transfers(capture.amount, economics);
            if transfers.is_empty() {
                // A fee of 0 pays nothing: settled, with nothing to write.
                outcomes[index] =
                    Some(SettleOutcome::Settled(Settlement { fee: 0, transfers, already_settled: false }));
                continue;
            }
            let event = InferenceSettled {
                inference_id: order.inference_id.clone(),
                fee: Some(Uint128::from(capture.amount)),
                transfer_count: transfers.len() as u64,
                journal_entry: None,
            };
            let event = NewEvent::new(SUBJECT_SETTLED, event.encode_to_vec());
            ready.push((index, capture.amount));
            chains.push(Chain { transfers, event });
        }
        for range in chunks_within(&chains, MAX_BATCH_EVENTS) {
            // Contributors recur across a batch: each earnings account is looked for once.
            let accounts: Vec<Account> = ready[range.clone()]
                .iter()
                .flat_map(|(index, _)| orders[*index].earnings_accounts.iter().map(|account| (account.id, *account)))
                .collect::<BTreeMap<u128, Account>>()
                .into_values()
                .collect();
            let results = self.write_chains_at(&accounts, &chains[range.clone()], now_ns).await?;
            for (((index, fee), chain), results) in ready[range.clone()].iter().zip(&chains[range]).zip(results) {
                outcomes[*index] = Some(outcome_of(&results, *fee, chain.transfers.clone()));
            }
        }
        Ok(outcomes.into_iter().map(|outcome| outcome.expect("every order has an outcome")).collect())
    }

    /// Pays out a captured fee; settling the same inference again changes nothing.
    pub async fn settle_inference(
        &self,
        inference_id: &str,
        model_owner: u128,
        weights: &[ContributorWeight],
        economics: &Economics,
    ) -> Result<Settlement, OperationError> {
        self.settle_inference_at(inference_id, model_owner, weights, economics, Self::now_ns()).await
    }

    /// A batch of one (see [`Ledger::settle_inferences_at`]); a refusal is an error.
    pub async fn settle_inference_at(
        &self,
        inference_id: &str,
        model_owner: u128,
        weights: &[ContributorWeight],
        economics: &Economics,
        now_ns: u64,
    ) -> Result<Settlement, OperationError> {
        let order = SettleOrder::new(inference_id, model_owner).with_weights(weights);
        self.settle_order_at(order, economics, now_ns).await
    }

    /// One order settled on its own; a refusal is an error.
    pub async fn settle_order_at(
        &self,
        order: SettleOrder,
        economics: &Economics,
        now_ns: u64,
    ) -> Result<Settlement, OperationError> {
        let operation = "settling the inference";
        match self.settle_inferences_at(&[order], economics, now_ns).await?.pop() {
            Some(SettleOutcome::Settled(settlement)) => Ok(settlement),
            Some(SettleOutcome::Refused(refusal)) => Err(refused(operation, refusal.to_string())),
            None => Err(refused(operation, "unexpected result count")),
        }
    }

    /// The capture of `inference_id` (if any) and its settlement legs in chain order
    /// (`settle/0`, `settle/1`, … until one is missing).
    pub async fn settlement_record(&self, inference_id: &str) -> Result<SettlementRecord, LedgerError> {
        let capture = self.lookup_transfers(&[capture_id(inference_id)]).await?.pop();
        let mut transfers = Vec::new();
        let most = MAX_SETTLEMENT_CONTRIBUTORS + 4;
        while transfers.len() < most {
            let first = transfers.len();
            let ids: Vec<u128> = (first..(first + SETTLEMENT_LOOKUP_LEGS).min(most))
                .map(|index| settlement_leg_id(inference_id, index))
                .collect();
            let found: HashMap<u128, Transfer> =
                self.lookup_transfers(&ids).await?.into_iter().map(|t| (t.id, t)).collect();
            let before = transfers.len();
            transfers.extend(ids.iter().map_while(|id| found.get(id).copied()));
            if transfers.len() - before < ids.len() {
                break;
            }
        }
        Ok(SettlementRecord { capture, transfers })
    }

    /// Per account asked, the sum and count of the settlement payouts to contributors it was
    /// credited (`SETTLE_CONTRIBUTOR`), from the running totals kept with them (one row per
    /// account, however many payouts); an account never paid earned 0.
    pub async fn earnings(&self, account_ids: &[u128]) -> Result<Vec<Earnings>, LedgerError> {
        let totals = self.earnings_totals(account_ids).await?;
        Ok(account_ids
            .iter()
            .map(|&account_id| {
                let (earned, payouts) = totals.get(&account_id).copied().unwrap_or_default();
                Earnings { account_id, earned, payouts }
            })
            .collect())
    }
}

/// Consecutive runs of `chains` that hold at most `max_transfers` transfers together (a
/// chain is never split: each fits on its own, see `limits`).
fn chunks_within(chains: &[Chain], max_transfers: usize) -> Vec<Range<usize>> {
    let mut chunks = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (index, chain) in chains.iter().enumerate() {
        let len = chain.transfers.len();
        debug_assert!(len <= max_transfers, "a settlement's chain fits in one batch");
        if size + len > max_transfers {
            chunks.push(start..index);
            (start, size) = (index, 0);
        }
        size += len;
    }
    if start < chains.len() {
        chunks.push(start..chains.len());
    }
    chunks
}
