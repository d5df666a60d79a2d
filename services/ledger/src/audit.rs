//! The settlement audit: the books checked against the settlements the attributions call for
//! (nothing lost, nothing doubled, every payout as the formula says to the base unit).
//!
//! Given every expected settlement (inference, model owner, weights with their accounts, from
//! the attribution-worker's stored attributions), it checks that
//! - every expected inference that was captured has exactly the settlement chain
//!   `settlement_transfers` gives for its captured fee, under the economics in force at the
//!   settlement's first leg's timestamp (missing: "lost"; longer, shorter or other: "doubled"
//!   or "mismatched"); one never captured is counted apart (nothing charged, nothing owed:
//!   the gateway writes its event just before it captures);
//! - every `INFERENCE_CAPTURE` transfer in the books belongs to an expected inference;
//! - no settlement transfer exists that the expected inferences' chains do not account for
//!   (a settlement without its capture, or of an inference nobody attributed);
//! - the books verify (`verify`: the journal chain, replayed balances, debits = credits).
//!
//! The report counts each kind and names the first exception in words, in the order the
//! expected settlements were given, then unknown captures, stray transfers and the books.

use std::collections::HashMap;

use crate::{
    books::{Ledger, LedgerError},
    model::Transfer,
    operations::{FEE_ESCROW, codes},
    settlement::{ExpectedSettlement, SettlementRecord, capture_id},
};

/// The codes of settlement legs.
const SETTLEMENT_CODES: [u16; 5] = [
    codes::SETTLE_PLATFORM_FEE,
    codes::SETTLE_MODEL_OWNER,
    codes::SETTLE_STAKERS,
    codes::SETTLE_CONTRIBUTOR,
    codes::SETTLE_REMAINDER,
];

/// What the audit found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditReport {
    pub expected: u64,
    /// `INFERENCE_CAPTURE` transfers in the books.
    pub captures: u64,
    /// Expected inferences settled exactly as the formula says.
    pub settled: u64,
    /// Expected inferences captured and not settled ("lost").
    pub unsettled: u64,
    /// Expected inferences never captured: the gateway writes the event just before it
    /// captures, and the ledger's `ledger-capture` consumer captures from the event what the
    /// gateway could not while the hold stands; one whose hold ended first leaves an
    /// attribution with nothing charged and nothing owed. Not an exception.
    pub never_captured: u64,
    /// Settled otherwise than expected ("doubled" or "mismatched"), or without a capture.
    pub mismatched: u64,
    /// Captures no expected settlement names.
    pub unknown_captures: u64,
    /// Settlement transfers no expected settlement's chain accounts for.
    pub stray_settlement_transfers: u64,
    pub books_verified: bool,
    /// The first exception, in words.
    pub first_exception: Option<String>,
}

impl AuditReport {
    pub fn ok(&self) -> bool {
        self.first_exception.is_none()
    }

    fn exception(&mut self, words: String) {
        self.first_exception.get_or_insert(words);
    }
}

/// One expected inference's standing.
enum Verdict {
    Settled,
    NeverCaptured,
    Unsettled(String),
    Mismatched(String),
}

fn describe(transfer: &Transfer) -> String {
    format!("{} base units to account {} (code {})", transfer.amount, transfer.credit_account_id, transfer.code)
}

/// The first difference between the chain the formula gives and the one in the books.
fn compare(inference_id: &str, expected: &[Transfer], actual: &[Transfer]) -> Verdict {
    for index in 0..expected.len().max(actual.len()) {
        match (expected.get(index), actual.get(index)) {
            (Some(formula), Some(paid)) if *formula == Transfer { timestamp: 0, ..*paid } => {}
            (Some(formula), Some(paid)) => {
                return Verdict::Mismatched(format!(
                    "inference {inference_id:?}: settlement leg {index} pays {} where its attribution gives {}",
                    describe(paid),
                    describe(formula)
                ));
            }
            (None, Some(_)) => {
                return Verdict::Mismatched(format!(
                    "inference {inference_id:?} was paid by {} settlement transfers where its attribution gives {} \
                     (doubled)",
                    actual.len(),
                    expected.len()
                ));
            }
            (Some(formula), None) => {
                return Verdict::Mismatched(format!(
                    "inference {inference_id:?}: settlement leg {index} ({}) is missing",
                    describe(formula)
                ));
            }
            (None, None) => unreachable!("the index is below one of the lengths"),
        }
    }
    Verdict::Settled
}

impl Ledger {
    /// Checks the books against `expected` (see the module doc).
    pub async fn audit_settlements(&self, expected: &[ExpectedSettlement]) -> Result<AuditReport, LedgerError> {
        let mut report = AuditReport::default();
        let mut captures = self.all_captures().await?;
        report.captures = captures.len() as u64;
        let mut accounted_legs = 0u64;
        for order in expected {
            report.expected += 1;
            let record = self.settlement_record(&order.inference_id).await?;
            captures.remove(&capture_id(&order.inference_id));
            accounted_legs += record.transfers.len() as u64;
            match self.judge(order, &record).await? {
                Verdict::Settled => report.settled += 1,
                Verdict::NeverCaptured => report.never_captured += 1,
                Verdict::Unsettled(words) => {
                    report.unsettled += 1;
                    report.exception(words);
                }
                Verdict::Mismatched(words) => {
                    report.mismatched += 1;
                    report.exception(words);
                }
            }
        }
        report.unknown_captures = captures.len() as u64;
        if let Some(capture) = captures.values().min_by_key(|capture| capture.timestamp) {
            report.exception(format!(
                "capture {} of {} base units (at {} ns) belongs to no attributed inference ({} such captures)",
                capture.id,
                capture.amount,
                capture.timestamp,
                captures.len()
            ));
        }
        let mut settlement_legs = 0;
        for code in SETTLEMENT_CODES {
            settlement_legs += self.count_with_code(code).await?;
        }
        report.stray_settlement_transfers = settlement_legs.saturating_sub(accounted_legs);
        if report.stray_settlement_transfers > 0 {
            report.exception(format!(
                "{} settlement transfers belong to no attributed inference's settlement",
                report.stray_settlement_transfers
            ));
        }
        let books = self.verify().await?;
        report.books_verified = books.ok();
        if !books.ok() {
            let detail = match &books.first_mismatch {
                Some((sequence, why)) => format!("journal entry {sequence}: {why}"),
                None => books.book_errors.join("; "),
            };
            report.exception(format!("the books do not verify: {detail}"));
        }
        Ok(report)
    }

    async fn judge(&self, order: &ExpectedSettlement, record: &SettlementRecord) -> Result<Verdict, LedgerError> {
        let id = &order.inference_id;
        let verdict = match (&record.capture, record.transfers.first()) {
            (None, None) => Verdict::NeverCaptured,
            (None, Some(_)) => Verdict::Mismatched(format!("inference {id:?} was settled without a capture")),
            (Some(capture), None) => Verdict::Unsettled(match order.check() {
                Ok(()) => {
                    format!("inference {id:?} is captured ({} base units) but not settled (lost)", capture.amount)
                }
                Err(refusal) => {
                    format!("inference {id:?} is captured but its attribution cannot be settled: {refusal}")
                }
            }),
            (Some(capture), Some(first)) => {
                debug_assert_eq!(first.debit_account_id, FEE_ESCROW, "settlements pay out of the fee escrow");
                let economics = self.parameters_at(first.timestamp).await?;
                compare(id, &order.transfers(capture.amount, &economics), &record.transfers)
            }
        };
        Ok(verdict)
    }

    /// Every capture in the books, by id.
    async fn all_captures(&self) -> Result<HashMap<u128, Transfer>, LedgerError> {
        let mut captures = HashMap::new();
        let mut after = 0;
        loop {
            let page = self.transfers_with_code(codes::INFERENCE_CAPTURE, after, u64::MAX).await?;
            let Some(last) = page.last() else { break };
            after = last.timestamp;
            captures.extend(page.into_iter().map(|capture| (capture.id, capture)));
        }
        Ok(captures)
    }
}
