//! Checking the books: the journal's hash chain recomputed entry by entry, every stored balance
//! reproduced by replaying the transfers, total debits equal to total credits (posted and
//! pending), no account over its limit, and every closed epoch's recorded Merkle root
//! recomputed. Also the replay itself, which `account_at` uses for balances in the past.

use std::collections::HashMap;

use openledger_core::{ContentHash, MerkleTree};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use super::{
    Ledger, LedgerError,
    journal::{GENESIS_PREVIOUS, JournalRecord, batch_hash, entry_hash},
    rows::{ById, to_account},
    write::add_earnings,
};
use crate::{
    entities::{account, earnings, meta},
    model::{Account, AccountFlags, Owner, SystemRole, Transfer, TransferFlags},
};

/// What `verify` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalReport {
    pub entries: u64,
    pub transfers: u64,
    /// Closed epochs whose Merkle roots were recomputed.
    pub epochs: u64,
    /// The first journal entry (sequence) that does not match, and why.
    pub first_mismatch: Option<(u64, String)>,
    /// Balances that replaying the transfers does not reproduce, or invariants that fail.
    pub book_errors: Vec<String>,
}

impl JournalReport {
    pub fn ok(&self) -> bool {
        self.first_mismatch.is_none() && self.book_errors.is_empty()
    }
}

/// Balances rebuilt from transfers alone, and the holds seen so far.
#[derive(Default)]
pub(super) struct Replay {
    pub(super) accounts: HashMap<u128, Account>,
    holds: HashMap<u128, Transfer>,
}

impl Replay {
    /// Applies one stored transfer to the replayed balances.
    pub(super) fn apply(&mut self, transfer: &Transfer) {
        let blank = |id| Account::new(id, Owner::System(SystemRole::Burn), 0, 0, AccountFlags::default());
        let flags = transfer.flags;
        let resolves = flags.has(TransferFlags::POST_PENDING) || flags.has(TransferFlags::VOID_PENDING);
        let held = if resolves { self.holds.get(&transfer.pending_id).map_or(0, |hold| hold.amount) } else { 0 };
        let pending = flags.has(TransferFlags::PENDING);
        let posts = !pending && !flags.has(TransferFlags::VOID_PENDING);
        let debit = self.accounts.entry(transfer.debit_account_id).or_insert_with(|| blank(transfer.debit_account_id));
        if pending {
            debit.debits_pending = debit.debits_pending.wrapping_add(transfer.amount);
        } else {
            debit.debits_pending = debit.debits_pending.wrapping_sub(held);
        }
        if posts {
            debit.debits_posted = debit.debits_posted.wrapping_add(transfer.amount);
        }
        let credit =
            self.accounts.entry(transfer.credit_account_id).or_insert_with(|| blank(transfer.credit_account_id));
        if pending {
            credit.credits_pending = credit.credits_pending.wrapping_add(transfer.amount);
            self.holds.insert(transfer.id, *transfer);
        } else {
            credit.credits_pending = credit.credits_pending.wrapping_sub(held);
        }
        if posts {
            credit.credits_posted = credit.credits_posted.wrapping_add(transfer.amount);
        }
    }
}

/// Why a stored entry differs from the one its contents and predecessor make, if it does.
fn entry_mismatch(entry: &JournalRecord, previous: &ContentHash, transfers: &[Transfer]) -> Option<&'static str> {
    let batch = batch_hash(transfers);
    let last_timestamp = transfers.last().map_or(0, |t| t.timestamp);
    let expected = entry_hash(previous, entry.sequence, &batch, transfers.len() as u64, last_timestamp);
    if entry.previous != *previous {
        Some("previous hash does not match the entry before it")
    } else if entry.batch_hash != batch {
        Some("the batch's transfers do not hash to the recorded batch hash")
    } else if entry.entry_hash != expected {
        Some("the entry hash does not match its contents")
    } else {
        None
    }
}

/// Compares stored accounts with the replay and checks limits and that the books balance.
/// The running totals of payouts to contributors against the payouts themselves.
fn check_earnings(
    stored: &HashMap<u128, (u128, u64)>,
    replayed: &HashMap<u128, (u128, u64)>,
    errors: &mut Vec<String>,
) {
    let mut accounts: Vec<&u128> = stored.keys().chain(replayed.keys()).collect();
    accounts.sort_unstable();
    accounts.dedup();
    for account in accounts {
        let (kept, paid) =
            (stored.get(account).copied().unwrap_or_default(), replayed.get(account).copied().unwrap_or_default());
        if kept != paid {
            errors.push(format!(
                "account {account}: earnings kept as {} in {} payouts, but its payouts to contributors sum to {} in {}",
                kept.0, kept.1, paid.0, paid.1
            ));
        }
    }
}

fn check_accounts(stored: &[Account], replay: &Replay, errors: &mut Vec<String>) {
    let balances = |a: &Account| (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted);
    let (mut debits_posted, mut credits_posted, mut debits_pending, mut credits_pending) = (0u128, 0u128, 0u128, 0u128);
    for account in stored {
        let expected = replay.accounts.get(&account.id).map_or((0, 0, 0, 0), balances);
        if balances(account) != expected {
            errors.push(format!("account {}: stored balances differ from the replayed transfers", account.id));
        }
        debits_posted = debits_posted.wrapping_add(account.debits_posted);
        credits_posted = credits_posted.wrapping_add(account.credits_posted);
        debits_pending = debits_pending.wrapping_add(account.debits_pending);
        credits_pending = credits_pending.wrapping_add(account.credits_pending);
        let debit_total = account.debits_pending.saturating_add(account.debits_posted);
        let credit_total = account.credits_pending.saturating_add(account.credits_posted);
        if account.flags.has(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS) && debit_total > account.credits_posted {
            errors.push(format!("account {}: debits exceed credits", account.id));
        }
        if account.flags.has(AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS) && credit_total > account.debits_posted {
            errors.push(format!("account {}: credits exceed debits", account.id));
        }
    }
    if debits_posted != credits_posted {
        errors.push("total posted debits differ from total posted credits".to_owned());
    }
    if debits_pending != credits_pending {
        errors.push("total pending debits differ from total pending credits".to_owned());
    }
}

impl Ledger {
    /// Recomputes the journal's hash chain and replays every transfer to check the stored
    /// balances and the books' invariants.
    pub async fn verify(&self) -> Result<JournalReport, LedgerError> {
        let mut report =
            JournalReport { entries: 0, transfers: 0, epochs: 0, first_mismatch: None, book_errors: Vec::new() };
        let mut previous = GENESIS_PREVIOUS;
        let mut replay = Replay::default();
        // Per account, the sum and count of its payouts to contributors, from the transfers.
        let mut payouts: HashMap<u128, (u128, u64)> = HashMap::new();
        for entry in self.all_journal_entries().await? {
            report.entries += 1;
            let transfers = self.entry_transfers(entry.sequence).await?;
            report.transfers += transfers.len() as u64;
            if report.first_mismatch.is_none()
                && let Some(detail) = entry_mismatch(&entry, &previous, &transfers)
            {
                report.first_mismatch = Some((entry.sequence, detail.to_owned()));
            }
            previous = entry.entry_hash;
            for transfer in &transfers {
                replay.apply(transfer);
            }
            add_earnings(&mut payouts, &transfers);
        }
        let stored: Vec<Account> =
            account::Entity::find().all(&self.db).await?.iter().map(to_account).collect::<Result<_, _>>()?;
        check_accounts(&stored, &replay, &mut report.book_errors);
        let totals = earnings::Entity::find().all(&self.db).await?;
        let totals = totals.iter().map(earnings::Entity::decode_row).collect::<Result<HashMap<_, _>, _>>()?;
        check_earnings(&totals, &payouts, &mut report.book_errors);
        self.check_epoch_roots(&mut report).await?;
        Ok(report)
    }

    /// Every closed epoch's recorded Merkle root, recomputed from its transfers.
    async fn check_epoch_roots(&self, report: &mut JournalReport) -> Result<(), LedgerError> {
        let closed = meta::Entity::find().filter(meta::Column::Key.starts_with("epoch:")).all(&self.db).await?;
        for row in closed {
            let Some((root, start, end)) = crate::epochs::recorded_root(&row.value) else {
                report.book_errors.push(format!("{}: unreadable epoch record", row.key));
                continue;
            };
            let hashes: Vec<ContentHash> = self
                .transfers_between(start, end)
                .await?
                .iter()
                .map(|t| ContentHash::of(&t.canonical_bytes()))
                .collect();
            if MerkleTree::new(&hashes).root() != root {
                report
                    .book_errors
                    .push(format!("{}: its transfers no longer hash to the recorded Merkle root", row.key));
            }
            report.epochs += 1;
        }
        Ok(())
    }
}
