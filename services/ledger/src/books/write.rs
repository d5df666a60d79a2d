//! Writing to the books: every batch of accounts or transfers is one transaction under the
//! writer lock. A transfer batch loads what it touches into the engine's [`Books`], applies
//! it in memory, then writes the accepted transfers, the changed balances and pending
//! states, one journal entry, and the batch's event(s) to the outbox before committing.
//! Also the service's own writes: voiding expired holds and platform operations' chains.

use std::{
    collections::{BTreeSet, HashMap},
    ops::Range,
};

use openledger_core::ContentHash;
use openledger_proto::{
    common::v1::{Hash, Uint128},
    events::v1::LedgerBatchCommitted,
};
use openledger_store::{NewEvent, db::retry_when_busy};
use prost::Message;
use sea_orm::{
    ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set, sea_query::OnConflict,
};

use super::{
    GENESIS_ACCOUNT_ID, Ledger, LedgerError, SUBJECT_BATCH_COMMITTED,
    ids::expiry_transfer_id,
    journal::{GENESIS_PREVIOUS, batch_hash, entry_hash},
    rows::{account_row, decode, encode, load_by_ids, nanos, stored, to_journal_record, transfer_row},
};
use crate::{
    engine::{self, Books, TransfersOutcome},
    entities::{account, earnings, journal, pending, transfer},
    limits::{INSERT_CHUNK_ROWS, MAX_BATCH_EVENTS},
    model::{
        Account, CODE_HOLD_EXPIRED, CreateAccountResult, CreateTransferResult, PendingState, SystemRole, Transfer,
        TransferFlags,
    },
    operations::codes,
};

/// Accounts a batch may not debit.
type ReservedDebit = dyn Fn(u128) -> bool + Sync;

/// One platform operation's linked chain (its last transfer unlinked) and the event it
/// records when all of it is accepted.
pub(crate) struct Chain {
    pub transfers: Vec<Transfer>,
    pub event: NewEvent,
}

/// The newest journal entry, which the next one chains from.
struct LastEntry {
    sequence: u64,
    hash: ContentHash,
    last_timestamp: u64,
}

/// Accounts clients (and the platform operations) may not debit: the two system accounts
/// that may go negative, the genesis account (so there is no mint after genesis) and the
/// receipt anchors (debited only inside a receipt batch's net-zero chain).
fn client_reserved(id: u128) -> bool {
    id == GENESIS_ACCOUNT_ID || id == RECEIPT_ANCHORS_ACCOUNT_ID
}

/// The receipt anchors' account (see `receipts`).
pub const RECEIPT_ANCHORS_ACCOUNT_ID: u128 = SystemRole::ReceiptAnchors as u128;

impl Ledger {
    /// Creates client accounts (ids below 2^16 are reserved for the system).
    pub async fn create_accounts(&self, batch: &[Account]) -> Result<Vec<CreateAccountResult>, LedgerError> {
        self.insert_accounts(batch, false).await
    }

    /// Creates accounts the service owns or derives (any id allowed).
    pub(crate) async fn create_system_accounts(
        &self,
        batch: &[Account],
    ) -> Result<Vec<CreateAccountResult>, LedgerError> {
        self.insert_accounts(batch, true).await
    }

    pub(super) async fn insert_accounts(
        &self,
        batch: &[Account],
        allow_reserved: bool,
    ) -> Result<Vec<CreateAccountResult>, LedgerError> {
        retry_when_busy(|| self.insert_accounts_once(batch, allow_reserved)).await
    }

    async fn insert_accounts_once(
        &self,
        batch: &[Account],
        allow_reserved: bool,
    ) -> Result<Vec<CreateAccountResult>, LedgerError> {
        check_batch(batch.len())?;
        let (_writer, txn) = self.begin_write().await?;
        let ids: Vec<u128> = batch.iter().map(|account| account.id).collect();
        let existing = load_by_ids::<account::Entity>(&txn, &ids).await?;
        let (results, created) = engine::apply_accounts(&existing, batch, Self::now_ns(), allow_reserved);
        for chunk in created.chunks(INSERT_CHUNK_ROWS) {
            account::Entity::insert_many(chunk.iter().map(account_row)).exec_without_returning(&txn).await?;
        }
        txn.commit().await?;
        Ok(results)
    }

    /// Applies client transfers now. The genesis account cannot be debited.
    pub async fn create_transfers(&self, batch: &[Transfer]) -> Result<Vec<CreateTransferResult>, LedgerError> {
        self.create_transfers_at(batch, Self::now_ns()).await
    }

    /// Applies client transfers as if at `now_ns` (tests and replays use a fixed clock).
    pub async fn create_transfers_at(
        &self,
        batch: &[Transfer],
        now_ns: u64,
    ) -> Result<Vec<CreateTransferResult>, LedgerError> {
        Ok(self.write(batch, now_ns, &client_reserved).await?.results)
    }

    /// Voids every hold whose timeout has passed at `now_ns`; returns how many.
    pub async fn expire_holds_at(&self, now_ns: u64) -> Result<usize, LedgerError> {
        let due = pending::Entity::find()
            .filter(pending::Column::State.eq(PendingState::Pending.code()))
            .filter(pending::Column::ExpiresAt.lte(nanos(now_ns)))
            .order_by_asc(pending::Column::ExpiresAt)
            .limit(MAX_BATCH_EVENTS as u64)
            .all(&self.db)
            .await?;
        let mut voids = Vec::with_capacity(due.len());
        for row in &due {
            let pending_id = decode(&row.id)?;
            voids.push(Transfer {
                id: expiry_transfer_id(pending_id),
                pending_id,
                code: CODE_HOLD_EXPIRED,
                flags: TransferFlags(TransferFlags::VOID_PENDING),
                ..Transfer::default()
            });
        }
        if voids.is_empty() {
            return Ok(0);
        }
        let outcome = self.write(&voids, now_ns, &|_| false).await?;
        Ok(outcome.results.iter().filter(|result| **result == CreateTransferResult::Ok).count())
    }

    pub(super) async fn write(
        &self,
        batch: &[Transfer],
        now_ns: u64,
        reserved_debit: &ReservedDebit,
    ) -> Result<TransfersOutcome, LedgerError> {
        retry_when_busy(|| self.write_once(batch, now_ns, reserved_debit, &[], &[])).await
    }

    /// Applies a batch the service makes itself that may debit the receipt anchors (their
    /// net-zero chains); the genesis account stays reserved.
    pub(crate) async fn write_system_at(
        &self,
        batch: &[Transfer],
        now_ns: u64,
    ) -> Result<Vec<CreateTransferResult>, LedgerError> {
        let reserved = |id: u128| id == GENESIS_ACCOUNT_ID;
        Ok(retry_when_busy(|| self.write_once(batch, now_ns, &reserved, &[], &[])).await?.results)
    }

    /// Applies many platform operations' chains in one transaction and one journal entry,
    /// after creating those of `accounts` that do not exist yet (accounts the service derives,
    /// such as contributors' earnings accounts: one that exists, whatever its fields, is left
    /// as it is). Each chain's event is recorded when every transfer of that chain is newly
    /// accepted. Returns each chain's results.
    pub(crate) async fn write_chains_at(
        &self,
        accounts: &[Account],
        chains: &[Chain],
        now_ns: u64,
    ) -> Result<Vec<Vec<CreateTransferResult>>, LedgerError> {
        let mut batch = Vec::with_capacity(chains.iter().map(|chain| chain.transfers.len()).sum());
        let mut events = Vec::with_capacity(chains.len());
        for chain in chains {
            debug_assert!(
                chain.transfers.last().is_none_or(|last| !last.flags.has(TransferFlags::LINKED)),
                "each chain closes itself, so one chain's failure never reaches the next"
            );
            events.push((batch.len()..batch.len() + chain.transfers.len(), chain.event.clone()));
            batch.extend_from_slice(&chain.transfers);
        }
        let write = || self.write_once(&batch, now_ns, &client_reserved, accounts, &events);
        let results = retry_when_busy(write).await?.results;
        Ok(events.iter().map(|(range, _)| results[range.clone()].to_vec()).collect())
    }

    /// Applies a platform operation's chain; `event` is recorded in the same transaction when
    /// every transfer of the chain is accepted.
    pub(crate) async fn write_operation(
        &self,
        batch: &[Transfer],
        event: NewEvent,
    ) -> Result<Vec<CreateTransferResult>, LedgerError> {
        self.write_operation_at(batch, event, Self::now_ns()).await
    }

    pub(crate) async fn write_operation_at(
        &self,
        batch: &[Transfer],
        event: NewEvent,
        now_ns: u64,
    ) -> Result<Vec<CreateTransferResult>, LedgerError> {
        let events = [(0..batch.len(), event)];
        let write = || self.write_once(batch, now_ns, &client_reserved, &[], &events);
        Ok(retry_when_busy(write).await?.results)
    }

    /// One transaction: `accounts` created where missing, `batch` applied, and each of
    /// `events` recorded when every transfer of its range was newly accepted.
    async fn write_once(
        &self,
        batch: &[Transfer],
        now_ns: u64,
        reserved_debit: &ReservedDebit,
        accounts: &[Account],
        events: &[(Range<usize>, NewEvent)],
    ) -> Result<TransfersOutcome, LedgerError> {
        check_batch(batch.len())?;
        check_batch(accounts.len())?;
        let (_writer, txn) = self.begin_write().await?;
        create_missing_accounts(&txn, accounts, now_ns).await?;
        let chains: Vec<Range<usize>> = events.iter().map(|(range, _)| range.clone()).collect();
        let mut books = load_books(&txn, batch, &chains).await?;
        let last = last_entry(&txn).await?;
        let outcome = engine::apply_transfers(&mut books, batch, now_ns, last.last_timestamp, reserved_debit);
        if !outcome.accepted.is_empty() {
            let sequence = last.sequence + 1;
            store_transfers(&txn, &outcome.accepted, sequence).await?;
            store_earnings(&txn, &outcome.accepted).await?;
            store_balances(&txn, &outcome.accounts).await?;
            store_pending(&txn, &outcome).await?;
            let committed = append_journal(&txn, &last, sequence, &outcome.accepted).await?;
            let batch_event = NewEvent::new(SUBJECT_BATCH_COMMITTED, committed.encode_to_vec());
            let accepted = events
                .iter()
                .filter(|(range, _)| outcome.results[range.clone()].iter().all(|r| *r == CreateTransferResult::Ok))
                .map(|(_, event)| event.clone());
            // One statement for the batch's events, not one per settled inference.
            openledger_store::outbox::enqueue_all(
                &txn,
                "ledger",
                std::iter::once(batch_event).chain(accepted).collect(),
            )
            .await
            .map_err(|error| LedgerError::Outbox(error.to_string()))?;
        }
        txn.commit().await?;
        Ok(outcome)
    }
}

/// Inserts those of `accounts` that do not exist yet, timestamped from `now_ns`.
async fn create_missing_accounts(
    txn: &DatabaseTransaction,
    accounts: &[Account],
    now_ns: u64,
) -> Result<(), LedgerError> {
    if accounts.is_empty() {
        return Ok(());
    }
    let ids: Vec<u128> = accounts.iter().map(|account| account.id).collect();
    let existing = load_by_ids::<account::Entity>(txn, &ids).await?;
    let (_, created) = engine::apply_accounts(&existing, accounts, now_ns, true);
    for chunk in created.chunks(INSERT_CHUNK_ROWS) {
        account::Entity::insert_many(chunk.iter().map(account_row)).exec_without_returning(txn).await?;
    }
    Ok(())
}

fn check_batch(len: usize) -> Result<(), LedgerError> {
    if len > MAX_BATCH_EVENTS {
        return Err(LedgerError::BatchTooLarge { len, max: MAX_BATCH_EVENTS });
    }
    Ok(())
}

fn sequence_column(sequence: u64) -> Result<i64, LedgerError> {
    i64::try_from(sequence).map_err(|_| LedgerError::Corrupt(format!("journal sequence {sequence} is out of range")))
}

/// What a batch reads: the transfers it names (by id or as `pending_id`), the states of those
/// that are holds, and every account any of them touches.
///
/// A linked chain is stored whole or not at all, so where `chains` names one (a range of the
/// batch linked up to its last transfer) only its first transfer is looked for, and the rest
/// only if that one is stored (the chain is a retry): a batch of settlements looks up one id
/// per inference instead of fourteen, in a table that grows with every one settled.
async fn load_books(
    txn: &DatabaseTransaction,
    batch: &[Transfer],
    chains: &[Range<usize>],
) -> Result<Books, LedgerError> {
    let linked = |range: &Range<usize>| {
        range.len() > 1
            && batch[range.clone()].split_last().is_some_and(|(last, rest)| {
                !last.flags.has(TransferFlags::LINKED) && rest.iter().all(|t| t.flags.has(TransferFlags::LINKED))
            })
    };
    let probed: Vec<Range<usize>> = chains.iter().filter(|range| linked(range)).cloned().collect();
    let mut in_probed = vec![false; batch.len()];
    probed.iter().flat_map(|range| range.clone().skip(1)).for_each(|index| in_probed[index] = true);
    let mut referenced: BTreeSet<u128> = batch
        .iter()
        .zip(&in_probed)
        .flat_map(|(transfer, probed)| [if *probed { 0 } else { transfer.id }, transfer.pending_id])
        .filter(|id| *id != 0)
        .collect();
    let mut transfers = load_by_ids::<transfer::Entity>(txn, &referenced.iter().copied().collect::<Vec<_>>()).await?;
    let retried: Vec<u128> = probed
        .iter()
        .filter(|range| transfers.contains_key(&batch[range.start].id))
        .flat_map(|range| batch[range.start + 1..range.end].iter().map(|t| t.id))
        .filter(|id| referenced.insert(*id))
        .collect();
    if !retried.is_empty() {
        transfers.extend(load_by_ids::<transfer::Entity>(txn, &retried).await?);
    }
    let holds: Vec<u128> = transfers.values().filter(|t| t.flags.has(TransferFlags::PENDING)).map(|t| t.id).collect();
    let pending = load_by_ids::<pending::Entity>(txn, &holds).await?;
    let account_ids: BTreeSet<u128> = batch
        .iter()
        .chain(transfers.values())
        .flat_map(|transfer| [transfer.debit_account_id, transfer.credit_account_id])
        .filter(|id| *id != 0)
        .collect();
    let accounts = load_by_ids::<account::Entity>(txn, &account_ids.into_iter().collect::<Vec<_>>()).await?;
    Ok(Books { accounts, transfers, pending })
}

async fn last_entry(txn: &DatabaseTransaction) -> Result<LastEntry, LedgerError> {
    match journal::Entity::find().order_by_desc(journal::Column::Sequence).one(txn).await? {
        None => Ok(LastEntry { sequence: 0, hash: GENESIS_PREVIOUS, last_timestamp: 0 }),
        Some(row) => {
            let entry = to_journal_record(&row)?;
            Ok(LastEntry { sequence: entry.sequence, hash: entry.entry_hash, last_timestamp: entry.last_timestamp })
        }
    }
}

async fn store_transfers(txn: &DatabaseTransaction, accepted: &[Transfer], sequence: u64) -> Result<(), LedgerError> {
    let sequence = sequence_column(sequence)?;
    for chunk in accepted.chunks(INSERT_CHUNK_ROWS) {
        transfer::Entity::insert_many(chunk.iter().map(|transfer| transfer_row(transfer, sequence)))
            .exec_without_returning(txn)
            .await?;
    }
    Ok(())
}

/// Per credited account, the sum and count of the payouts to contributors
/// (`SETTLE_CONTRIBUTOR`) among `transfers`, added to `totals`: what an account earned.
pub(super) fn add_earnings<'t>(
    totals: &mut HashMap<u128, (u128, u64)>,
    transfers: impl IntoIterator<Item = &'t Transfer>,
) {
    for payout in transfers.into_iter().filter(|t| t.code == codes::SETTLE_CONTRIBUTOR) {
        let total = totals.entry(payout.credit_account_id).or_default();
        *total = (total.0.wrapping_add(payout.amount), total.1 + 1);
    }
}

/// Adds a batch's payouts to contributors to their accounts' running totals
/// (`ledger_earnings`), which `Ledger::earnings` reads.
async fn store_earnings(txn: &DatabaseTransaction, accepted: &[Transfer]) -> Result<(), LedgerError> {
    let mut added = HashMap::new();
    add_earnings(&mut added, accepted);
    if added.is_empty() {
        return Ok(());
    }
    let ids: Vec<u128> = added.keys().copied().collect();
    let stored = load_by_ids::<earnings::Entity>(txn, &ids).await?;
    let mut rows = Vec::with_capacity(added.len());
    for (account, (amount, payouts)) in added {
        let (earned, before) = stored.get(&account).copied().unwrap_or_default();
        let earned = earned
            .checked_add(amount)
            .ok_or_else(|| LedgerError::Corrupt(format!("account {account}'s earnings overflow u128")))?;
        rows.push(earnings::ActiveModel {
            account_id: Set(encode(account)),
            earned: Set(encode(earned)),
            payouts: Set(i64::try_from(before + payouts).unwrap_or(i64::MAX)),
        });
    }
    for chunk in rows.chunks(INSERT_CHUNK_ROWS) {
        earnings::Entity::insert_many(chunk.to_vec())
            .on_conflict(
                OnConflict::column(earnings::Column::AccountId)
                    .update_columns([earnings::Column::Earned, earnings::Column::Payouts])
                    .to_owned(),
            )
            .exec_without_returning(txn)
            .await?;
    }
    Ok(())
}

/// Upserts the balances of the accounts a batch changed (their definitions never change).
async fn store_balances(txn: &DatabaseTransaction, accounts: &[Account]) -> Result<(), LedgerError> {
    let balances = [
        account::Column::DebitsPending,
        account::Column::DebitsPosted,
        account::Column::CreditsPending,
        account::Column::CreditsPosted,
    ];
    for chunk in accounts.chunks(INSERT_CHUNK_ROWS) {
        account::Entity::insert_many(chunk.iter().map(account_row))
            .on_conflict(OnConflict::column(account::Column::Id).update_columns(balances).to_owned())
            .exec_without_returning(txn)
            .await?;
    }
    Ok(())
}

/// Upserts the pending states a batch created or changed; a new hold also records when it
/// expires, so the service can find it.
async fn store_pending(txn: &DatabaseTransaction, outcome: &TransfersOutcome) -> Result<(), LedgerError> {
    let expiries: HashMap<u128, Option<u64>> =
        outcome.accepted.iter().map(|transfer| (transfer.id, transfer.expires_at())).collect();
    let rows: Vec<pending::ActiveModel> = outcome
        .pending
        .iter()
        .map(|(id, state)| pending::ActiveModel {
            id: Set(encode(*id)),
            state: Set(state.code()),
            expires_at: Set(expiries.get(id).copied().flatten().map(nanos)),
        })
        .collect();
    for chunk in rows.chunks(INSERT_CHUNK_ROWS) {
        pending::Entity::insert_many(chunk.to_vec())
            .on_conflict(OnConflict::column(pending::Column::Id).update_column(pending::Column::State).to_owned())
            .exec_without_returning(txn)
            .await?;
    }
    Ok(())
}

/// Appends the batch's journal entry after `last`; returns the event announcing it.
async fn append_journal(
    txn: &DatabaseTransaction,
    last: &LastEntry,
    sequence: u64,
    accepted: &[Transfer],
) -> Result<LedgerBatchCommitted, LedgerError> {
    debug_assert_eq!(sequence, last.sequence + 1, "journal entries are consecutive");
    debug_assert!(
        accepted.windows(2).all(|pair| pair[0].timestamp < pair[1].timestamp)
            && accepted.first().is_none_or(|first| first.timestamp > last.last_timestamp),
        "transfer timestamps strictly increase across the journal"
    );
    let batch = batch_hash(accepted);
    let count = accepted.len() as u64;
    let last_timestamp = accepted.last().map_or(last.last_timestamp, |transfer| transfer.timestamp);
    let hash = entry_hash(&last.hash, sequence, &batch, count, last_timestamp);
    journal::Entity::insert(journal::ActiveModel {
        sequence: Set(sequence_column(sequence)?),
        previous: Set(last.hash.as_bytes().to_vec()),
        batch_hash: Set(batch.as_bytes().to_vec()),
        entry_hash: Set(hash.as_bytes().to_vec()),
        transfer_count: Set(stored(count, "transfer count")?),
        last_timestamp: Set(nanos(last_timestamp)),
    })
    .exec_without_returning(txn)
    .await?;
    Ok(LedgerBatchCommitted {
        sequence,
        entry_hash: Some(Hash { value: hash.as_bytes().to_vec() }),
        transfer_count: count,
        last_timestamp,
        transfer_ids: accepted.iter().map(|t| Uint128::from(t.id)).collect(),
    })
}
