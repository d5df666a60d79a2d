//! The ledger's books in the database. Every `create_transfers` batch runs in one
//! transaction: load what it touches, apply it with the engine, write the accepted transfers,
//! the changed balances and pending states, and append one entry to the hash-chained journal.
//! Writers are serial: a process-wide mutex, and on PostgreSQL a row lock that replicas share.

use std::collections::{BTreeSet, HashMap};

use openledger_core::ContentHash;
use openledger_proto::{
    common::v1::{Hash, Uint128},
    events::v1::LedgerBatchCommitted,
};
use openledger_store::{
    NewEvent,
    db::{MaybeBusy, retry_when_busy},
};
use prost::Message;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set, TransactionTrait, sea_query::OnConflict,
};
use tokio::sync::Mutex;

use crate::{
    engine::{self, Books, TransfersOutcome},
    entities::{account, journal, meta, pending, transfer},
    model::{
        Account, AccountFlags, CODE_GENESIS, CODE_HOLD_EXPIRED, CreateAccountResult, CreateTransferResult,
        MAX_BATCH_EVENTS, OPEN_LEDGER, Owner, PendingState, SystemRole, Transfer, TransferFlags,
    },
};

/// Subject of the event each committed batch publishes (through the outbox).
pub const SUBJECT_BATCH_COMMITTED: &str = "ol.ledger.batch.committed";
/// Rows per multi-row INSERT (keeps under SQLite's and PostgreSQL's parameter limits).
const INSERT_CHUNK_ROWS: usize = 500;
/// Ids per `IN (…)` lookup.
const LOOKUP_CHUNK_IDS: usize = 1000;
/// The genesis account: debited once to mint the supply, never again.
pub const GENESIS_ACCOUNT_ID: u128 = SystemRole::Genesis as u128;
/// 1,000,000,000 OPEN in base units.
pub const GENESIS_SUPPLY: u128 = 1_000_000_000 * 10u128.pow(18);
const ALLOCATION_FIRST_ID: u128 = 101;

/// Errors of the ledger's storage.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("database error: {0}")]
    Database(#[from] sea_orm::DbErr),
    #[error("a batch holds at most {max} events, got {len}")]
    BatchTooLarge { len: usize, max: usize },
    #[error("stored ledger data is corrupt: {0}")]
    Corrupt(String),
    #[error("invalid genesis allocation: {0}")]
    InvalidAllocation(String),
    #[error("cannot record the batch's event: {0}")]
    Outbox(String),
}

fn encode(value: u128) -> Vec<u8> {
    value.to_be_bytes().to_vec()
}

fn decode(bytes: &[u8]) -> Result<u128, LedgerError> {
    <[u8; 16]>::try_from(bytes)
        .map(u128::from_be_bytes)
        .map_err(|_| LedgerError::Corrupt(format!("a u128 column holds {} bytes", bytes.len())))
}

fn nanos(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_account(row: &account::Model) -> Result<Account, LedgerError> {
    let owner = match row.owner_kind {
        0 => Owner::Key(
            <[u8; 32]>::try_from(row.owner.as_slice()).map_err(|_| LedgerError::Corrupt("owner key".into()))?,
        ),
        _ => Owner::System(
            row.owner
                .first()
                .and_then(|code| SystemRole::from_code(*code))
                .ok_or_else(|| LedgerError::Corrupt("owner role".into()))?,
        ),
    };
    Ok(Account {
        id: decode(&row.id)?,
        owner,
        ledger: row.ledger as u32,
        code: row.code as u16,
        flags: AccountFlags(row.flags as u16),
        debits_pending: decode(&row.debits_pending)?,
        debits_posted: decode(&row.debits_posted)?,
        credits_pending: decode(&row.credits_pending)?,
        credits_posted: decode(&row.credits_posted)?,
        timestamp: row.timestamp as u64,
    })
}

fn account_row(account: &Account) -> account::ActiveModel {
    let (owner_kind, owner) = match account.owner {
        Owner::Key(key) => (0, key.to_vec()),
        Owner::System(role) => (1, vec![role as u8]),
    };
    account::ActiveModel {
        id: Set(encode(account.id)),
        owner_kind: Set(owner_kind),
        owner: Set(owner),
        ledger: Set(i64::from(account.ledger)),
        code: Set(i32::from(account.code)),
        flags: Set(i32::from(account.flags.0)),
        debits_pending: Set(encode(account.debits_pending)),
        debits_posted: Set(encode(account.debits_posted)),
        credits_pending: Set(encode(account.credits_pending)),
        credits_posted: Set(encode(account.credits_posted)),
        timestamp: Set(nanos(account.timestamp)),
    }
}

fn to_transfer(row: &transfer::Model) -> Result<Transfer, LedgerError> {
    Ok(Transfer {
        id: decode(&row.id)?,
        debit_account_id: decode(&row.debit_account_id)?,
        credit_account_id: decode(&row.credit_account_id)?,
        amount: decode(&row.amount)?,
        pending_id: decode(&row.pending_id)?,
        user_data: decode(&row.user_data)?,
        timeout_seconds: row.timeout_seconds as u32,
        ledger: row.ledger as u32,
        code: row.code as u16,
        flags: TransferFlags(row.flags as u16),
        timestamp: row.timestamp as u64,
    })
}

fn transfer_row(transfer: &Transfer, journal_sequence: i64) -> transfer::ActiveModel {
    transfer::ActiveModel {
        id: Set(encode(transfer.id)),
        debit_account_id: Set(encode(transfer.debit_account_id)),
        credit_account_id: Set(encode(transfer.credit_account_id)),
        amount: Set(encode(transfer.amount)),
        pending_id: Set(encode(transfer.pending_id)),
        user_data: Set(encode(transfer.user_data)),
        timeout_seconds: Set(i64::from(transfer.timeout_seconds)),
        ledger: Set(i64::from(transfer.ledger)),
        code: Set(i32::from(transfer.code)),
        flags: Set(i32::from(transfer.flags.0)),
        timestamp: Set(nanos(transfer.timestamp)),
        journal_sequence: Set(journal_sequence),
    }
}

/// The hash of a committed batch: its accepted transfers in order.
pub fn batch_hash(transfers: &[Transfer]) -> ContentHash {
    let encoded: Vec<[u8; 116]> = transfers.iter().map(Transfer::canonical_bytes).collect();
    let parts: Vec<&[u8]> = encoded.iter().map(|bytes| &bytes[..]).collect();
    ContentHash::of_parts(&parts)
}

/// A journal entry's hash: it covers the previous entry, so changing any batch breaks the chain.
pub fn entry_hash(
    previous: &ContentHash,
    sequence: u64,
    batch: &ContentHash,
    count: u64,
    last_timestamp: u64,
) -> ContentHash {
    ContentHash::of_parts(&[
        b"openledger/journal/v1",
        previous.as_bytes(),
        &sequence.to_be_bytes(),
        batch.as_bytes(),
        &count.to_be_bytes(),
        &last_timestamp.to_be_bytes(),
    ])
}

/// Ids of transfers the service makes itself (genesis mint, expiry voids): derived from a
/// hash, so they take no part of the id space clients choose from.
pub fn system_transfer_id(purpose: &str, key: u128) -> u128 {
    ContentHash::of_parts(&[b"openledger/system-transfer/v1/", purpose.as_bytes(), &key.to_be_bytes()]).prefix_u128()
}

/// The key an operation's caller-chosen id (inference, contribution, operation) stands for.
pub fn operation_key(operation_id: &str) -> u128 {
    ContentHash::of(operation_id.as_bytes()).prefix_u128()
}

/// The id of the void transfer the service makes when hold `pending_id` expires.
pub fn expiry_transfer_id(pending_id: u128) -> u128 {
    system_transfer_id("expire", pending_id)
}

/// One genesis allocation account and its share of the supply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub name: String,
    pub basis_points: u32,
}

/// Community 51.71%, investors 18.29%, team 15%, ecosystem 10%, liquidity 5%.
pub fn default_allocations() -> Vec<Allocation> {
    [("community", 5171), ("investors", 1829), ("team", 1500), ("ecosystem", 1000), ("liquidity", 500)]
        .into_iter()
        .map(|(name, basis_points)| Allocation { name: name.to_owned(), basis_points })
        .collect()
}

/// One journal entry as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalRecord {
    pub sequence: u64,
    pub previous: ContentHash,
    pub batch_hash: ContentHash,
    pub entry_hash: ContentHash,
    pub transfer_count: u64,
    pub last_timestamp: u64,
}

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

/// The ledger's books.
pub struct Ledger {
    db: DatabaseConnection,
    writer: Mutex<()>,
}

struct LastEntry {
    sequence: u64,
    hash: ContentHash,
    last_timestamp: u64,
}

impl Ledger {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db, writer: Mutex::new(()) }
    }

    pub fn now_ns() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    /// Creates client accounts (ids below 2^16 are reserved for the system).
    pub async fn create_accounts(&self, batch: &[Account]) -> Result<Vec<CreateAccountResult>, LedgerError> {
        self.insert_accounts(batch, false).await
    }

    async fn insert_accounts(
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
        let existing = load_accounts(&txn, &ids).await?;
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
        Ok(self.write(batch, now_ns, &|id| id == GENESIS_ACCOUNT_ID).await?.results)
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

    async fn write(
        &self,
        batch: &[Transfer],
        now_ns: u64,
        reserved_debit: &(dyn Fn(u128) -> bool + Sync),
    ) -> Result<TransfersOutcome, LedgerError> {
        retry_when_busy(|| self.write_once(batch, now_ns, reserved_debit, None)).await
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
        let reserved = |id| id == GENESIS_ACCOUNT_ID;
        Ok(retry_when_busy(|| self.write_once(batch, now_ns, &reserved, Some(event.clone()))).await?.results)
    }

    async fn write_once(
        &self,
        batch: &[Transfer],
        now_ns: u64,
        reserved_debit: &(dyn Fn(u128) -> bool + Sync),
        event: Option<NewEvent>,
    ) -> Result<TransfersOutcome, LedgerError> {
        check_batch(batch.len())?;
        let submitted = batch.len();
        let (_writer, txn) = self.begin_write().await?;
        let mut books = load_books(&txn, batch).await?;
        let last = last_entry(&txn).await?;
        let outcome = engine::apply_transfers(&mut books, batch, now_ns, last.last_timestamp, reserved_debit);
        if !outcome.accepted.is_empty() {
            let sequence = last.sequence + 1;
            let sequence_column =
                i64::try_from(sequence).map_err(|_| LedgerError::Corrupt("journal sequence".into()))?;
            for chunk in outcome.accepted.chunks(INSERT_CHUNK_ROWS) {
                transfer::Entity::insert_many(chunk.iter().map(|transfer| transfer_row(transfer, sequence_column)))
                    .exec_without_returning(&txn)
                    .await?;
            }
            for chunk in outcome.accounts.chunks(INSERT_CHUNK_ROWS) {
                account::Entity::insert_many(chunk.iter().map(account_row))
                    .on_conflict(
                        OnConflict::column(account::Column::Id)
                            .update_columns([
                                account::Column::DebitsPending,
                                account::Column::DebitsPosted,
                                account::Column::CreditsPending,
                                account::Column::CreditsPosted,
                            ])
                            .to_owned(),
                    )
                    .exec_without_returning(&txn)
                    .await?;
            }
            let expiries: HashMap<u128, Option<u64>> =
                outcome.accepted.iter().map(|transfer| (transfer.id, transfer.expires_at())).collect();
            let pending_rows = outcome.pending.iter().map(|(id, state)| pending::ActiveModel {
                id: Set(encode(*id)),
                state: Set(state.code()),
                expires_at: Set(expiries.get(id).copied().flatten().map(nanos)),
            });
            let pending_rows: Vec<_> = pending_rows.collect();
            for chunk in pending_rows.chunks(INSERT_CHUNK_ROWS) {
                pending::Entity::insert_many(chunk.to_vec())
                    .on_conflict(
                        OnConflict::column(pending::Column::Id).update_column(pending::Column::State).to_owned(),
                    )
                    .exec_without_returning(&txn)
                    .await?;
            }
            let batch = batch_hash(&outcome.accepted);
            let count = outcome.accepted.len() as u64;
            let last_timestamp = outcome.accepted.last().map_or(last.last_timestamp, |transfer| transfer.timestamp);
            let hash = entry_hash(&last.hash, sequence, &batch, count, last_timestamp);
            journal::Entity::insert(journal::ActiveModel {
                sequence: Set(sequence_column),
                previous: Set(last.hash.as_bytes().to_vec()),
                batch_hash: Set(batch.as_bytes().to_vec()),
                entry_hash: Set(hash.as_bytes().to_vec()),
                transfer_count: Set(count as i64),
                last_timestamp: Set(nanos(last_timestamp)),
            })
            .exec_without_returning(&txn)
            .await?;
            let committed = LedgerBatchCommitted {
                sequence,
                entry_hash: Some(Hash { value: hash.as_bytes().to_vec() }),
                transfer_count: count,
                last_timestamp,
                transfer_ids: outcome.accepted.iter().map(|t| Uint128::from(t.id)).collect(),
            };
            let batch_event = NewEvent::new(SUBJECT_BATCH_COMMITTED, committed.encode_to_vec());
            let all_accepted = outcome.accepted.len() == submitted;
            for event in std::iter::once(batch_event).chain(event.filter(|_| all_accepted)) {
                openledger_store::outbox::enqueue(&txn, "ledger", event)
                    .await
                    .map_err(|error| LedgerError::Outbox(error.to_string()))?;
            }
        }
        txn.commit().await?;
        Ok(outcome)
    }

    pub(crate) fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Creates accounts the service owns or derives (any id allowed).
    pub(crate) async fn create_system_accounts(
        &self,
        batch: &[Account],
    ) -> Result<Vec<CreateAccountResult>, LedgerError> {
        self.insert_accounts(batch, true).await
    }

    /// Transfers with `code` and a timestamp in `(after, up_to]`, oldest first (one batch).
    pub(crate) async fn transfers_with_code(
        &self,
        code: u16,
        after: u64,
        up_to: u64,
    ) -> Result<Vec<Transfer>, LedgerError> {
        let rows = transfer::Entity::find()
            .filter(transfer::Column::Code.eq(i32::from(code)))
            .filter(transfer::Column::Timestamp.gt(nanos(after)))
            .filter(transfer::Column::Timestamp.lte(nanos(up_to)))
            .order_by_asc(transfer::Column::Timestamp)
            .limit(MAX_BATCH_EVENTS as u64)
            .all(&self.db)
            .await?;
        rows.iter().map(to_transfer).collect()
    }

    /// Transfers timestamped in `[start, end)`, oldest first.
    pub(crate) async fn transfers_between(&self, start: u64, end: u64) -> Result<Vec<Transfer>, LedgerError> {
        let rows = transfer::Entity::find()
            .filter(transfer::Column::Timestamp.gte(nanos(start)))
            .filter(transfer::Column::Timestamp.lt(nanos(end)))
            .order_by_asc(transfer::Column::Timestamp)
            .all(&self.db)
            .await?;
        rows.iter().map(to_transfer).collect()
    }

    pub(crate) async fn meta_text(&self, key: &str) -> Result<Option<String>, LedgerError> {
        Ok(meta::Entity::find_by_id(key.to_owned()).one(&self.db).await?.map(|row| row.value))
    }

    pub(crate) async fn set_meta_text(&self, key: &str, value: &str) -> Result<(), LedgerError> {
        meta::Entity::insert(meta::ActiveModel { key: Set(key.to_owned()), value: Set(value.to_owned()) })
            .on_conflict(OnConflict::column(meta::Column::Key).update_column(meta::Column::Value).to_owned())
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    pub(crate) async fn meta_u64(&self, key: &str) -> Result<u64, LedgerError> {
        match self.meta_text(key).await? {
            None => Ok(0),
            Some(text) => text.parse().map_err(|_| LedgerError::Corrupt(format!("ledger_meta {key} is not a number"))),
        }
    }

    pub(crate) async fn set_meta_u64(&self, key: &str, value: u64) -> Result<(), LedgerError> {
        self.set_meta_text(key, &value.to_string()).await
    }

    /// Starts a write transaction holding the writer lock: this process's mutex, and a first
    /// statement that writes. On PostgreSQL that row lock makes replicas take turns; on SQLite
    /// it takes the database's write lock before anything is read, so a busy database is waited
    /// for (busy timeout) instead of failing when a read transaction tries to turn into a write.
    async fn begin_write(&self) -> Result<(tokio::sync::MutexGuard<'_, ()>, DatabaseTransaction), LedgerError> {
        let writer = self.writer.lock().await;
        let txn = self.db.begin().await?;
        meta::Entity::update_many()
            .col_expr(meta::Column::Value, sea_orm::sea_query::Expr::col(meta::Column::Value).into())
            .filter(meta::Column::Key.eq("writer"))
            .exec(&txn)
            .await?;
        Ok((writer, txn))
    }

    pub async fn lookup_accounts(&self, ids: &[u128]) -> Result<Vec<Account>, LedgerError> {
        let found = load_accounts(&self.db, ids).await?;
        Ok(ids.iter().filter_map(|id| found.get(id).copied()).collect())
    }

    pub async fn lookup_transfers(&self, ids: &[u128]) -> Result<Vec<Transfer>, LedgerError> {
        let found = load_transfers(&self.db, ids).await?;
        Ok(ids.iter().filter_map(|id| found.get(id).copied()).collect())
    }

    /// Transfers debiting or crediting `account_id` after `after_timestamp`, oldest first; the
    /// last one's timestamp is the cursor of the next page.
    pub async fn account_transfers(
        &self,
        account_id: u128,
        after_timestamp: u64,
        limit: u64,
    ) -> Result<Vec<Transfer>, LedgerError> {
        let rows = transfer::Entity::find()
            .filter(involving(account_id))
            .filter(transfer::Column::Timestamp.gt(nanos(after_timestamp)))
            .order_by_asc(transfer::Column::Timestamp)
            .limit(limit.clamp(1, 1000))
            .all(&self.db)
            .await?;
        rows.iter().map(to_transfer).collect()
    }

    /// The account with the balances it had at `timestamp` (ns): its transfers up to then,
    /// replayed. `None` if the account did not exist yet.
    pub async fn account_at(&self, account_id: u128, timestamp: u64) -> Result<Option<Account>, LedgerError> {
        let Some(now) = self.lookup_accounts(&[account_id]).await?.pop() else { return Ok(None) };
        if now.timestamp > timestamp {
            return Ok(None);
        }
        let rows = transfer::Entity::find()
            .filter(involving(account_id))
            .filter(transfer::Column::Timestamp.lte(nanos(timestamp)))
            .order_by_asc(transfer::Column::Timestamp)
            .all(&self.db)
            .await?;
        let mut replay = HashMap::new();
        let mut holds = HashMap::new();
        for row in &rows {
            replay_transfer(&mut replay, &mut holds, &to_transfer(row)?);
        }
        let replayed = replay.get(&account_id);
        Ok(Some(Account {
            debits_pending: replayed.map_or(0, |a| a.debits_pending),
            debits_posted: replayed.map_or(0, |a| a.debits_posted),
            credits_pending: replayed.map_or(0, |a| a.credits_pending),
            credits_posted: replayed.map_or(0, |a| a.credits_posted),
            ..now
        }))
    }

    /// Mints the supply into the allocation accounts, once; later calls change nothing.
    pub async fn ensure_genesis(&self, allocations: &[Allocation]) -> Result<(), LedgerError> {
        if meta::Entity::find_by_id("genesis").one(&self.db).await?.is_some() {
            return Ok(());
        }
        let total: u32 = allocations.iter().map(|allocation| allocation.basis_points).sum();
        if allocations.is_empty()
            || allocations.len() > 50
            || total != 10_000
            || allocations.iter().any(|a| a.basis_points == 0)
        {
            return Err(LedgerError::InvalidAllocation(format!(
                "1 to 50 allocations with positive shares summing to 10000 basis points (100%), got {} summing to {total}",
                allocations.len()
            )));
        }
        let guarded = AccountFlags(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS);
        let mut accounts: Vec<Account> = SystemRole::ALL
            .into_iter()
            .filter(|role| *role != SystemRole::Allocation)
            .map(|role| {
                let flags = if role == SystemRole::Genesis { AccountFlags::default() } else { guarded };
                Account::new(role as u128, Owner::System(role), OPEN_LEDGER, role as u16, flags)
            })
            .collect();
        let mut mint = Vec::new();
        let mut minted = 0u128;
        for (index, allocation) in allocations.iter().enumerate() {
            let id = ALLOCATION_FIRST_ID + index as u128;
            accounts.push(Account::new(
                id,
                Owner::System(SystemRole::Allocation),
                OPEN_LEDGER,
                100 + index as u16,
                guarded,
            ));
            // The last allocation takes the rounding remainder, so the supply is exact.
            let amount = if index + 1 == allocations.len() {
                GENESIS_SUPPLY - minted
            } else {
                GENESIS_SUPPLY / 10_000 * u128::from(allocation.basis_points)
            };
            minted += amount;
            let linked = if index + 1 == allocations.len() { 0 } else { TransferFlags::LINKED };
            mint.push(Transfer {
                id: system_transfer_id("genesis", index as u128),
                debit_account_id: GENESIS_ACCOUNT_ID,
                credit_account_id: id,
                amount,
                ledger: OPEN_LEDGER,
                code: CODE_GENESIS,
                flags: TransferFlags(linked),
                ..Transfer::default()
            });
        }
        self.insert_accounts(&accounts, true).await?;
        let outcome = self.write(&mint, Self::now_ns(), &|_| false).await?;
        if let Some(result) = outcome.results.iter().find(|result| !result.is_success()) {
            return Err(LedgerError::Corrupt(format!("genesis mint failed: {}", result.as_str())));
        }
        let record = allocations.iter().map(|a| format!("{}={}", a.name, a.basis_points)).collect::<Vec<_>>().join(",");
        meta::Entity::insert(meta::ActiveModel { key: Set("genesis".into()), value: Set(record) })
            .on_conflict(OnConflict::column(meta::Column::Key).do_nothing().to_owned())
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    /// Journal entries after `after_sequence`, oldest first, at most `limit`.
    pub async fn journal_entries(&self, after_sequence: u64, limit: u64) -> Result<Vec<JournalRecord>, LedgerError> {
        let rows = journal::Entity::find()
            .filter(journal::Column::Sequence.gt(i64::try_from(after_sequence).unwrap_or(i64::MAX)))
            .order_by_asc(journal::Column::Sequence)
            .limit(limit)
            .all(&self.db)
            .await?;
        let hash = |bytes: &[u8]| ContentHash::try_from(bytes).map_err(|_| LedgerError::Corrupt("journal hash".into()));
        rows.iter()
            .map(|row| {
                Ok(JournalRecord {
                    sequence: row.sequence as u64,
                    previous: hash(&row.previous)?,
                    batch_hash: hash(&row.batch_hash)?,
                    entry_hash: hash(&row.entry_hash)?,
                    transfer_count: row.transfer_count as u64,
                    last_timestamp: row.last_timestamp as u64,
                })
            })
            .collect()
    }

    /// Writes the journal as JSON lines for audit: one `entry` line per journal entry with its
    /// transfers (ids and amounts as decimal strings), then one `epoch` line per epoch of
    /// `epoch_seconds` with the Merkle root over the hashes of that epoch's transfers in
    /// timestamp order. Returns the number of lines. Anyone can recompute every hash from the
    /// file: a transfer's hash is BLAKE3 of its 116-byte big-endian encoding
    /// (`Transfer::canonical_bytes`), a batch hash is BLAKE3 of the concatenated encodings,
    /// an entry hash is BLAKE3 of "openledger/journal/v1", previous, sequence, batch hash,
    /// count and last timestamp.
    pub async fn export_journal(&self, out: &mut impl std::io::Write, epoch_seconds: u64) -> Result<u64, LedgerError> {
        let io = |error: std::io::Error| LedgerError::Corrupt(format!("cannot write the export: {error}"));
        let epoch_ns = epoch_seconds.max(1).saturating_mul(1_000_000_000);
        let mut lines = 0;
        let mut epochs: std::collections::BTreeMap<u64, Vec<ContentHash>> = std::collections::BTreeMap::new();
        for entry in journal::Entity::find().order_by_asc(journal::Column::Sequence).all(&self.db).await? {
            let rows = transfer::Entity::find()
                .filter(transfer::Column::JournalSequence.eq(entry.sequence))
                .order_by_asc(transfer::Column::Timestamp)
                .all(&self.db)
                .await?;
            let transfers: Vec<Transfer> = rows.iter().map(to_transfer).collect::<Result<_, _>>()?;
            for transfer in &transfers {
                epochs
                    .entry(transfer.timestamp / epoch_ns)
                    .or_default()
                    .push(ContentHash::of(&transfer.canonical_bytes()));
            }
            let line = serde_json::json!({
                "type": "entry",
                "sequence": entry.sequence,
                "previous": hex::encode(&entry.previous),
                "batch_hash": hex::encode(&entry.batch_hash),
                "entry_hash": hex::encode(&entry.entry_hash),
                "transfer_count": entry.transfer_count,
                "last_timestamp": entry.last_timestamp,
                "transfers": transfers.iter().map(transfer_json).collect::<Vec<_>>(),
            });
            writeln!(out, "{line}").map_err(io)?;
            lines += 1;
        }
        for (epoch, hashes) in epochs {
            let line = serde_json::json!({
                "type": "epoch",
                "epoch": epoch,
                "epoch_seconds": epoch_seconds,
                "transfer_count": hashes.len(),
                "merkle_root": openledger_core::MerkleTree::new(&hashes).root().to_hex(),
            });
            writeln!(out, "{line}").map_err(io)?;
            lines += 1;
        }
        Ok(lines)
    }

    /// Recomputes the journal's hash chain and replays every transfer to check the stored
    /// balances and the books' invariants.
    pub async fn verify(&self) -> Result<JournalReport, LedgerError> {
        let mut report =
            JournalReport { entries: 0, transfers: 0, epochs: 0, first_mismatch: None, book_errors: Vec::new() };
        let mut previous = ContentHash::from_bytes([0; 32]);
        let mut replay: HashMap<u128, Account> = HashMap::new();
        let mut holds: HashMap<u128, Transfer> = HashMap::new();
        for entry in journal::Entity::find().order_by_asc(journal::Column::Sequence).all(&self.db).await? {
            report.entries += 1;
            let sequence = entry.sequence as u64;
            let rows = transfer::Entity::find()
                .filter(transfer::Column::JournalSequence.eq(entry.sequence))
                .order_by_asc(transfer::Column::Timestamp)
                .all(&self.db)
                .await?;
            let transfers: Vec<Transfer> = rows.iter().map(to_transfer).collect::<Result<_, _>>()?;
            report.transfers += transfers.len() as u64;
            let batch = batch_hash(&transfers);
            let last_timestamp = transfers.last().map_or(0, |t| t.timestamp);
            let expected = entry_hash(&previous, sequence, &batch, transfers.len() as u64, last_timestamp);
            if report.first_mismatch.is_none() {
                let mismatch = if entry.previous != previous.as_bytes() {
                    Some("previous hash does not match the entry before it")
                } else if entry.batch_hash != batch.as_bytes() {
                    Some("the batch's transfers do not hash to the recorded batch hash")
                } else if entry.entry_hash != expected.as_bytes() {
                    Some("the entry hash does not match its contents")
                } else {
                    None
                };
                if let Some(detail) = mismatch {
                    report.first_mismatch = Some((sequence, detail.to_owned()));
                }
            }
            previous = ContentHash::try_from(entry.entry_hash.as_slice())
                .map_err(|_| LedgerError::Corrupt("entry hash".into()))?;
            for transfer in transfers {
                replay_transfer(&mut replay, &mut holds, &transfer);
            }
        }
        let stored: Vec<Account> =
            account::Entity::find().all(&self.db).await?.iter().map(to_account).collect::<Result<_, _>>()?;
        let (mut debits_posted, mut credits_posted, mut debits_pending, mut credits_pending) =
            (0u128, 0u128, 0u128, 0u128);
        for account in &stored {
            let replayed = replay.get(&account.id);
            let balances = |a: &Account| (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted);
            let expected = replayed.map_or((0, 0, 0, 0), balances);
            if balances(account) != expected {
                report
                    .book_errors
                    .push(format!("account {}: stored balances differ from the replayed transfers", account.id));
            }
            debits_posted = debits_posted.wrapping_add(account.debits_posted);
            credits_posted = credits_posted.wrapping_add(account.credits_posted);
            debits_pending = debits_pending.wrapping_add(account.debits_pending);
            credits_pending = credits_pending.wrapping_add(account.credits_pending);
            let debit_total = account.debits_pending.saturating_add(account.debits_posted);
            let credit_total = account.credits_pending.saturating_add(account.credits_posted);
            if account.flags.has(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS) && debit_total > account.credits_posted {
                report.book_errors.push(format!("account {}: debits exceed credits", account.id));
            }
            if account.flags.has(AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS) && credit_total > account.debits_posted {
                report.book_errors.push(format!("account {}: credits exceed debits", account.id));
            }
        }
        if debits_posted != credits_posted {
            report.book_errors.push("total posted debits differ from total posted credits".to_owned());
        }
        // Every closed epoch's recorded Merkle root, recomputed from its transfers.
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
            if openledger_core::MerkleTree::new(&hashes).root() != root {
                report
                    .book_errors
                    .push(format!("{}: its transfers no longer hash to the recorded Merkle root", row.key));
            }
            report.epochs += 1;
        }
        if debits_pending != credits_pending {
            report.book_errors.push("total pending debits differ from total pending credits".to_owned());
        }
        Ok(report)
    }
}

fn transfer_json(transfer: &Transfer) -> serde_json::Value {
    serde_json::json!({
        "id": transfer.id.to_string(),
        "debit_account_id": transfer.debit_account_id.to_string(),
        "credit_account_id": transfer.credit_account_id.to_string(),
        "amount": transfer.amount.to_string(),
        "pending_id": transfer.pending_id.to_string(),
        "user_data": transfer.user_data.to_string(),
        "timeout_seconds": transfer.timeout_seconds,
        "ledger": transfer.ledger,
        "code": transfer.code,
        "flags": transfer.flags.0,
        "timestamp": transfer.timestamp,
    })
}

/// Applies one stored transfer to replayed balances (`verify`).
fn replay_transfer(accounts: &mut HashMap<u128, Account>, holds: &mut HashMap<u128, Transfer>, transfer: &Transfer) {
    let blank = |id| Account::new(id, Owner::System(SystemRole::Burn), 0, 0, AccountFlags::default());
    let flags = transfer.flags;
    let held = if flags.has(TransferFlags::POST_PENDING) || flags.has(TransferFlags::VOID_PENDING) {
        holds.get(&transfer.pending_id).map(|hold| hold.amount).unwrap_or(0)
    } else {
        0
    };
    let debit = accounts.entry(transfer.debit_account_id).or_insert_with(|| blank(transfer.debit_account_id));
    if flags.has(TransferFlags::PENDING) {
        debit.debits_pending = debit.debits_pending.wrapping_add(transfer.amount);
    } else {
        debit.debits_pending = debit.debits_pending.wrapping_sub(held);
        if !flags.has(TransferFlags::VOID_PENDING) {
            debit.debits_posted = debit.debits_posted.wrapping_add(transfer.amount);
        }
    }
    let credit = accounts.entry(transfer.credit_account_id).or_insert_with(|| blank(transfer.credit_account_id));
    if flags.has(TransferFlags::PENDING) {
        credit.credits_pending = credit.credits_pending.wrapping_add(transfer.amount);
        holds.insert(transfer.id, *transfer);
    } else {
        credit.credits_pending = credit.credits_pending.wrapping_sub(held);
        if !flags.has(TransferFlags::VOID_PENDING) {
            credit.credits_posted = credit.credits_posted.wrapping_add(transfer.amount);
        }
    }
}

/// Transfers that debit or credit `account_id`.
fn involving(account_id: u128) -> sea_orm::Condition {
    let id = encode(account_id);
    sea_orm::Condition::any()
        .add(transfer::Column::DebitAccountId.eq(id.clone()))
        .add(transfer::Column::CreditAccountId.eq(id))
}

fn check_batch(len: usize) -> Result<(), LedgerError> {
    if len > MAX_BATCH_EVENTS {
        return Err(LedgerError::BatchTooLarge { len, max: MAX_BATCH_EVENTS });
    }
    Ok(())
}

async fn load_books(txn: &DatabaseTransaction, batch: &[Transfer]) -> Result<Books, LedgerError> {
    let referenced: BTreeSet<u128> =
        batch.iter().flat_map(|transfer| [transfer.id, transfer.pending_id]).filter(|id| *id != 0).collect();
    let transfers = load_transfers(txn, &referenced.into_iter().collect::<Vec<_>>()).await?;
    let holds: Vec<u128> = transfers.values().filter(|t| t.flags.has(TransferFlags::PENDING)).map(|t| t.id).collect();
    let mut pending = HashMap::new();
    for chunk in holds.chunks(LOOKUP_CHUNK_IDS) {
        let rows = pending::Entity::find()
            .filter(pending::Column::Id.is_in(chunk.iter().map(|id| encode(*id))))
            .all(txn)
            .await?;
        for row in rows {
            let state =
                PendingState::from_code(row.state).ok_or_else(|| LedgerError::Corrupt("pending state".into()))?;
            pending.insert(decode(&row.id)?, state);
        }
    }
    let account_ids: BTreeSet<u128> = batch
        .iter()
        .chain(transfers.values())
        .flat_map(|transfer| [transfer.debit_account_id, transfer.credit_account_id])
        .filter(|id| *id != 0)
        .collect();
    let accounts = load_accounts(txn, &account_ids.into_iter().collect::<Vec<_>>()).await?;
    Ok(Books { accounts, transfers, pending })
}

async fn load_accounts(db: &impl ConnectionTrait, ids: &[u128]) -> Result<HashMap<u128, Account>, LedgerError> {
    let mut found = HashMap::new();
    for chunk in ids.chunks(LOOKUP_CHUNK_IDS) {
        let rows = account::Entity::find()
            .filter(account::Column::Id.is_in(chunk.iter().map(|id| encode(*id))))
            .all(db)
            .await?;
        for row in &rows {
            let account = to_account(row)?;
            found.insert(account.id, account);
        }
    }
    Ok(found)
}

async fn load_transfers(db: &impl ConnectionTrait, ids: &[u128]) -> Result<HashMap<u128, Transfer>, LedgerError> {
    let mut found = HashMap::new();
    for chunk in ids.chunks(LOOKUP_CHUNK_IDS) {
        let rows = transfer::Entity::find()
            .filter(transfer::Column::Id.is_in(chunk.iter().map(|id| encode(*id))))
            .all(db)
            .await?;
        for row in &rows {
            let transfer = to_transfer(row)?;
            found.insert(transfer.id, transfer);
        }
    }
    Ok(found)
}

async fn last_entry(txn: &DatabaseTransaction) -> Result<LastEntry, LedgerError> {
    match journal::Entity::find().order_by_desc(journal::Column::Sequence).one(txn).await? {
        None => Ok(LastEntry { sequence: 0, hash: ContentHash::from_bytes([0; 32]), last_timestamp: 0 }),
        Some(entry) => Ok(LastEntry {
            sequence: entry.sequence as u64,
            hash: ContentHash::try_from(entry.entry_hash.as_slice())
                .map_err(|_| LedgerError::Corrupt("entry hash".into()))?,
            last_timestamp: entry.last_timestamp as u64,
        }),
    }
}

impl MaybeBusy for LedgerError {
    fn is_busy(&self) -> bool {
        matches!(self, Self::Database(error) if error.is_busy())
    }
}
