//! Applying a batch of events to the books, in memory and without I/O: the persistence
//! layer loads what a batch touches into a [`Books`], runs the engine, and writes the outcome
//! in one database transaction. Linked chains are undone through an undo log, so a failed
//! chain leaves no trace.

use std::collections::{HashMap, HashSet};

use crate::model::{
    Account, CODE_HOLD_EXPIRED, CreateAccountResult, CreateTransferResult, FIRST_USER_ACCOUNT_ID, PendingState,
    Transfer, TransferFlags, account_exists_result, known_transfer_flags, transfer_exists_result, validate_account,
};

use CreateTransferResult as R;

/// The part of the ledger a batch reads and changes.
#[derive(Clone, Debug, Default)]
pub struct Books {
    pub accounts: HashMap<u128, Account>,
    /// Existing transfers the batch refers to (by id or as `pending_id`).
    pub transfers: HashMap<u128, Transfer>,
    /// States of the pending transfers among `transfers`.
    pub pending: HashMap<u128, PendingState>,
}

/// What a batch did.
#[derive(Debug, Default)]
pub struct TransfersOutcome {
    pub results: Vec<CreateTransferResult>,
    /// Accepted transfers, in timestamp order.
    pub accepted: Vec<Transfer>,
    /// Final state of every account the batch changed.
    pub accounts: Vec<Account>,
    /// Pending states the batch created or changed.
    pub pending: Vec<(u128, PendingState)>,
}

enum Undo {
    Account(u128, Account),
    Transfer(u128),
    Pending(u128, Option<PendingState>),
}

struct Working<'a> {
    books: &'a mut Books,
    undo: Vec<Undo>,
    accepted: Vec<Transfer>,
    touched_accounts: HashSet<u128>,
    touched_pending: HashSet<u128>,
    next_timestamp: u64,
    now_ns: u64,
    reserved_debit: &'a dyn Fn(u128) -> bool,
}

/// Applies `batch` at time `now_ns`; timestamps continue after `last_timestamp`.
/// `reserved_debit` names accounts clients may not debit (the genesis account).
pub fn apply_transfers(
    books: &mut Books,
    batch: &[Transfer],
    now_ns: u64,
    last_timestamp: u64,
    reserved_debit: &dyn Fn(u128) -> bool,
) -> TransfersOutcome {
    #[cfg(debug_assertions)]
    let totals_before = Totals::of(books);
    let mut working = Working {
        books,
        undo: Vec::new(),
        accepted: Vec::new(),
        touched_accounts: HashSet::new(),
        touched_pending: HashSet::new(),
        next_timestamp: now_ns.max(last_timestamp + 1),
        now_ns,
        reserved_debit,
    };
    let mut results = vec![R::Ok; batch.len()];
    let mut chain: Option<(usize, usize, usize, u64)> = None; // (start, undo mark, accepted mark, next timestamp)
    let mut index = 0;
    while index < batch.len() {
        let transfer = &batch[index];
        let linked = transfer.flags.has(TransferFlags::LINKED);
        if chain.is_none() && linked {
            chain = Some((index, working.undo.len(), working.accepted.len(), working.next_timestamp));
        }
        let result = if linked && index + 1 == batch.len() { R::LinkedChainOpen } else { working.apply(transfer) };
        results[index] = result;
        match chain {
            Some((start, undo_mark, accepted_mark, timestamp_mark)) if !result.is_success() => {
                working.rollback(undo_mark, accepted_mark, timestamp_mark);
                for earlier in &mut results[start..index] {
                    *earlier = R::LinkedEventFailed;
                }
                // The rest of the chain fails without being tried.
                let mut rest = index;
                while batch[rest].flags.has(TransferFlags::LINKED) && rest + 1 < batch.len() {
                    rest += 1;
                    results[rest] = if batch[rest].flags.has(TransferFlags::LINKED) && rest + 1 == batch.len() {
                        R::LinkedChainOpen
                    } else {
                        R::LinkedEventFailed
                    };
                }
                chain = None;
                index = rest + 1;
                continue;
            }
            Some(_) if !linked => chain = None,
            _ => {}
        }
        index += 1;
    }
    // A rolled-back chain may have touched ids it then undid: keep only what still exists.
    let accounts = working.touched_accounts.iter().filter_map(|id| working.books.accounts.get(id).copied()).collect();
    let pending = working
        .touched_pending
        .iter()
        .filter_map(|id| working.books.pending.get(id).map(|state| (*id, *state)))
        .collect();
    #[cfg(debug_assertions)]
    Totals::of(working.books).assert_balanced_since(&totals_before);
    TransfersOutcome { results, accepted: working.accepted, accounts, pending }
}

/// Sums of every balance column over the books in memory (wrapping: only differences matter).
#[cfg(debug_assertions)]
struct Totals {
    debits_pending: u128,
    debits_posted: u128,
    credits_pending: u128,
    credits_posted: u128,
}

#[cfg(debug_assertions)]
impl Totals {
    fn of(books: &Books) -> Self {
        let mut totals = Self { debits_pending: 0, debits_posted: 0, credits_pending: 0, credits_posted: 0 };
        for account in books.accounts.values() {
            totals.debits_pending = totals.debits_pending.wrapping_add(account.debits_pending);
            totals.debits_posted = totals.debits_posted.wrapping_add(account.debits_posted);
            totals.credits_pending = totals.credits_pending.wrapping_add(account.credits_pending);
            totals.credits_posted = totals.credits_posted.wrapping_add(account.credits_posted);
        }
        totals
    }

    /// Every transfer debits one account and credits another by the same amount, so a batch
    /// moves debits and credits (pending and posted) by equal totals.
    fn assert_balanced_since(&self, before: &Self) {
        assert_eq!(
            self.debits_posted.wrapping_sub(before.debits_posted),
            self.credits_posted.wrapping_sub(before.credits_posted),
            "a batch changed posted debits and credits by different totals"
        );
        assert_eq!(
            self.debits_pending.wrapping_sub(before.debits_pending),
            self.credits_pending.wrapping_sub(before.credits_pending),
            "a batch changed pending debits and credits by different totals"
        );
    }
}

impl Working<'_> {
    fn apply(&mut self, transfer: &Transfer) -> CreateTransferResult {
        if transfer.id == 0 || transfer.id == u128::MAX {
            return R::InvalidId;
        }
        if !known_transfer_flags(transfer.flags) {
            return R::InvalidFlags;
        }
        if let Some(existing) = self.books.transfers.get(&transfer.id) {
            return transfer_exists_result(existing, transfer);
        }
        if transfer.timeout_seconds > 0 && !transfer.flags.has(TransferFlags::PENDING) {
            return R::TimeoutReservedForPending;
        }
        if transfer.flags.has(TransferFlags::POST_PENDING) || transfer.flags.has(TransferFlags::VOID_PENDING) {
            return self.resolve(transfer);
        }
        if transfer.pending_id != 0 {
            return R::InvalidFlags;
        }
        if transfer.debit_account_id == transfer.credit_account_id {
            return R::SameAccount;
        }
        if transfer.amount == 0 {
            return R::ZeroAmount;
        }
        if (self.reserved_debit)(transfer.debit_account_id) {
            return R::ReservedAccount;
        }
        self.post_or_hold(transfer)
    }

    /// Moves a checked single-phase or pending transfer's amount between its accounts, if
    /// they exist on its ledger and their limits allow it.
    fn post_or_hold(&mut self, transfer: &Transfer) -> CreateTransferResult {
        let (Some(mut debit), Some(mut credit)) = (
            self.books.accounts.get(&transfer.debit_account_id).copied(),
            self.books.accounts.get(&transfer.credit_account_id).copied(),
        ) else {
            return R::AccountNotFound;
        };
        if debit.ledger != transfer.ledger || credit.ledger != transfer.ledger {
            return R::LedgerMismatch;
        }
        let amount = transfer.amount;
        let pending = transfer.flags.has(TransferFlags::PENDING);
        let (debit_slot, credit_slot) = if pending {
            (&mut debit.debits_pending, &mut credit.credits_pending)
        } else {
            (&mut debit.debits_posted, &mut credit.credits_posted)
        };
        let (Some(new_debit), Some(new_credit)) = (debit_slot.checked_add(amount), credit_slot.checked_add(amount))
        else {
            return R::Overflow;
        };
        *debit_slot = new_debit;
        *credit_slot = new_credit;
        let (Some(debits_total), Some(credits_total)) = (
            debit.debits_pending.checked_add(debit.debits_posted),
            credit.credits_pending.checked_add(credit.credits_posted),
        ) else {
            return R::Overflow;
        };
        if debit.flags.has(crate::model::AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS)
            && debits_total > debit.credits_posted
        {
            return R::InsufficientFunds;
        }
        if credit.flags.has(crate::model::AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS)
            && credits_total > credit.debits_posted
        {
            return R::ExceedsDebits;
        }
        self.set_account(debit);
        self.set_account(credit);
        if pending {
            self.set_pending(transfer.id, PendingState::Pending);
        }
        self.accept(*transfer);
        R::Ok
    }

    fn resolve(&mut self, transfer: &Transfer) -> CreateTransferResult {
        let post = transfer.flags.has(TransferFlags::POST_PENDING);
        let Some(held) = self
            .books
            .transfers
            .get(&transfer.pending_id)
            .copied()
            .filter(|held| held.flags.has(TransferFlags::PENDING))
        else {
            return R::PendingNotFound;
        };
        let expired_by_time = held.expires_at().is_some_and(|expires| expires <= self.now_ns);
        let expiry_void = !post && transfer.code == CODE_HOLD_EXPIRED && expired_by_time;
        match self.books.pending.get(&held.id) {
            Some(PendingState::Pending) if expired_by_time && !expiry_void => return R::PendingExpired,
            Some(PendingState::Pending) => {}
            Some(PendingState::Expired) => return R::PendingExpired,
            Some(PendingState::Posted | PendingState::Voided) => return R::PendingAlreadyResolved,
            None => return R::PendingNotFound,
        }
        let mismatch = |given: u128, held: u128| given != 0 && given != held;
        if mismatch(transfer.debit_account_id, held.debit_account_id)
            || mismatch(transfer.credit_account_id, held.credit_account_id)
            || (transfer.ledger != 0 && transfer.ledger != held.ledger)
        {
            return R::PendingMismatch;
        }
        let amount = match (post, transfer.amount) {
            (true, 0) => held.amount,
            (true, amount) if amount <= held.amount => amount,
            (false, 0) => held.amount,
            (false, amount) if amount == held.amount => amount,
            _ => return R::PendingMismatch,
        };
        let (Some(mut debit), Some(mut credit)) = (
            self.books.accounts.get(&held.debit_account_id).copied(),
            self.books.accounts.get(&held.credit_account_id).copied(),
        ) else {
            return R::AccountNotFound;
        };
        debit.debits_pending -= held.amount;
        credit.credits_pending -= held.amount;
        if post {
            let (Some(new_debit), Some(new_credit)) =
                (debit.debits_posted.checked_add(amount), credit.credits_posted.checked_add(amount))
            else {
                return R::Overflow;
            };
            debit.debits_posted = new_debit;
            credit.credits_posted = new_credit;
        }
        self.set_account(debit);
        self.set_account(credit);
        let state = match (post, expiry_void) {
            (true, _) => PendingState::Posted,
            (false, true) => PendingState::Expired,
            (false, false) => PendingState::Voided,
        };
        self.set_pending(held.id, state);
        self.accept(Transfer {
            debit_account_id: held.debit_account_id,
            credit_account_id: held.credit_account_id,
            ledger: held.ledger,
            amount,
            ..*transfer
        });
        R::Ok
    }

    fn set_account(&mut self, account: Account) {
        let previous = self.books.accounts.insert(account.id, account).expect("accounts are loaded before use");
        self.undo.push(Undo::Account(account.id, previous));
        self.touched_accounts.insert(account.id);
    }

    fn set_pending(&mut self, id: u128, state: PendingState) {
        let previous = self.books.pending.insert(id, state);
        // A hold is created once and resolves (posted, voided or expired) once.
        debug_assert!(
            match state {
                PendingState::Pending => previous.is_none(),
                PendingState::Posted | PendingState::Voided | PendingState::Expired => {
                    previous == Some(PendingState::Pending)
                }
            },
            "hold {id}: {previous:?} -> {state:?}"
        );
        self.undo.push(Undo::Pending(id, previous));
        self.touched_pending.insert(id);
    }

    fn accept(&mut self, transfer: Transfer) {
        let transfer = Transfer { timestamp: self.next_timestamp, ..transfer };
        self.next_timestamp += 1;
        self.books.transfers.insert(transfer.id, transfer);
        self.undo.push(Undo::Transfer(transfer.id));
        self.accepted.push(transfer);
    }

    fn rollback(&mut self, undo_mark: usize, accepted_mark: usize, timestamp_mark: u64) {
        while self.undo.len() > undo_mark {
            match self.undo.pop().expect("length checked") {
                Undo::Account(id, previous) => {
                    self.books.accounts.insert(id, previous);
                }
                Undo::Transfer(id) => {
                    self.books.transfers.remove(&id);
                }
                Undo::Pending(id, Some(previous)) => {
                    self.books.pending.insert(id, previous);
                }
                Undo::Pending(id, None) => {
                    self.books.pending.remove(&id);
                }
            }
        }
        self.accepted.truncate(accepted_mark);
        self.next_timestamp = timestamp_mark;
    }
}

/// Applies a batch of new accounts against `existing` (the stored accounts with these ids).
/// Returns one result per account and the accounts to insert, timestamped from `next_timestamp`.
pub fn apply_accounts(
    existing: &HashMap<u128, Account>,
    batch: &[Account],
    next_timestamp: u64,
    allow_reserved: bool,
) -> (Vec<CreateAccountResult>, Vec<Account>) {
    let mut created: Vec<Account> = Vec::new();
    let mut by_id: HashMap<u128, usize> = HashMap::new();
    let mut timestamp = next_timestamp;
    let results = batch
        .iter()
        .map(|account| {
            if let Err(result) = validate_account(account) {
                return result;
            }
            if account.id < FIRST_USER_ACCOUNT_ID && !allow_reserved {
                return CreateAccountResult::ReservedId;
            }
            if let Some(stored) = existing.get(&account.id) {
                return account_exists_result(stored, account);
            }
            if let Some(&position) = by_id.get(&account.id) {
                return match account_exists_result(&created[position], account) {
                    CreateAccountResult::Exists => CreateAccountResult::Exists,
                    _ => CreateAccountResult::DuplicateInBatch,
                };
            }
            let fresh = Account {
                debits_pending: 0,
                debits_posted: 0,
                credits_pending: 0,
                credits_posted: 0,
                timestamp,
                ..*account
            };
            timestamp += 1;
            by_id.insert(account.id, created.len());
            created.push(fresh);
            CreateAccountResult::Ok
        })
        .collect();
    (results, created)
}
