//! Rows of the ledger's tables and the domain values they hold: `u128`s as 16 big-endian
//! bytes, timestamps as signed nanoseconds, an account's owner as a kind and its bytes. A
//! stored value that does not decode is [`LedgerError::Corrupt`], never a default. Also the
//! one way to load accounts or transfers by id, in chunks.

use std::collections::HashMap;

use openledger_core::ContentHash;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};

use super::LedgerError;
use crate::{
    entities::{account, earnings, journal, pending, transfer},
    limits::LOOKUP_CHUNK_IDS,
    model::{Account, AccountFlags, Owner, OwnerKind, PendingState, SystemRole, Transfer, TransferFlags},
};

pub(super) fn encode(value: u128) -> Vec<u8> {
    value.to_be_bytes().to_vec()
}

pub(super) fn decode(bytes: &[u8]) -> Result<u128, LedgerError> {
    <[u8; 16]>::try_from(bytes)
        .map(u128::from_be_bytes)
        .map_err(|_| LedgerError::Corrupt(format!("a u128 column holds {} bytes", bytes.len())))
}

/// A `u64` as stored (`i64`), saturating: beyond `i64::MAX` (for nanosecond timestamps, the
/// year 2262) values compare as the largest one. Used for values the ledger writes and for
/// query bounds, never to read stored data back.
pub(super) fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A nanosecond timestamp as stored.
pub(super) fn nanos(value: u64) -> i64 {
    saturating_i64(value)
}

/// A stored integer column read back into the type it was written from.
pub(super) fn stored<T: TryFrom<S>, S: Copy + std::fmt::Display>(value: S, column: &str) -> Result<T, LedgerError> {
    T::try_from(value).map_err(|_| LedgerError::Corrupt(format!("{column} holds {value}, out of range")))
}

pub(super) fn hash(bytes: &[u8], column: &str) -> Result<ContentHash, LedgerError> {
    ContentHash::try_from(bytes).map_err(|_| LedgerError::Corrupt(format!("{column} holds {} bytes", bytes.len())))
}

pub(super) fn pending_state(row: &pending::Model) -> Result<PendingState, LedgerError> {
    PendingState::try_from(row.state).map_err(|code| LedgerError::Corrupt(format!("pending state {code}")))
}

pub(super) fn to_account(row: &account::Model) -> Result<Account, LedgerError> {
    let kind =
        OwnerKind::try_from(row.owner_kind).map_err(|code| LedgerError::Corrupt(format!("owner kind {code}")))?;
    let owner = match kind {
        OwnerKind::Key => Owner::Key(
            <[u8; 32]>::try_from(row.owner.as_slice()).map_err(|_| LedgerError::Corrupt("owner key".into()))?,
        ),
        OwnerKind::System => Owner::System(
            row.owner
                .first()
                .and_then(|code| SystemRole::from_code(*code))
                .ok_or_else(|| LedgerError::Corrupt("owner role".into()))?,
        ),
    };
    Ok(Account {
        id: decode(&row.id)?,
        owner,
        ledger: stored(row.ledger, "ledger_accounts.ledger")?,
        code: stored(row.code, "ledger_accounts.code")?,
        flags: AccountFlags(stored(row.flags, "ledger_accounts.flags")?),
        debits_pending: decode(&row.debits_pending)?,
        debits_posted: decode(&row.debits_posted)?,
        credits_pending: decode(&row.credits_pending)?,
        credits_posted: decode(&row.credits_posted)?,
        timestamp: stored(row.timestamp, "ledger_accounts.timestamp")?,
    })
}

pub(super) fn account_row(account: &Account) -> account::ActiveModel {
    use sea_orm::Set;
    let (owner_kind, owner) = match account.owner {
        Owner::Key(key) => (OwnerKind::Key, key.to_vec()),
        Owner::System(role) => (OwnerKind::System, vec![role as u8]),
    };
    account::ActiveModel {
        id: Set(encode(account.id)),
        owner_kind: Set(owner_kind.code()),
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

pub(super) fn to_transfer(row: &transfer::Model) -> Result<Transfer, LedgerError> {
    Ok(Transfer {
        id: decode(&row.id)?,
        debit_account_id: decode(&row.debit_account_id)?,
        credit_account_id: decode(&row.credit_account_id)?,
        amount: decode(&row.amount)?,
        pending_id: decode(&row.pending_id)?,
        user_data: decode(&row.user_data)?,
        timeout_seconds: stored(row.timeout_seconds, "ledger_transfers.timeout_seconds")?,
        ledger: stored(row.ledger, "ledger_transfers.ledger")?,
        code: stored(row.code, "ledger_transfers.code")?,
        flags: TransferFlags(stored(row.flags, "ledger_transfers.flags")?),
        timestamp: stored(row.timestamp, "ledger_transfers.timestamp")?,
    })
}

pub(super) fn transfer_row(transfer: &Transfer, journal_sequence: i64) -> transfer::ActiveModel {
    use sea_orm::Set;
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

/// A table keyed by a `u128` id whose rows decode to one value: accounts, transfers, and
/// the pending states of holds.
pub(super) trait ById: EntityTrait {
    type Value;
    const ID: Self::Column;
    fn decode_row(row: &Self::Model) -> Result<(u128, Self::Value), LedgerError>;
}

impl ById for account::Entity {
    type Value = Account;
    const ID: account::Column = account::Column::Id;
    fn decode_row(row: &account::Model) -> Result<(u128, Account), LedgerError> {
        to_account(row).map(|account| (account.id, account))
    }
}

impl ById for transfer::Entity {
    type Value = Transfer;
    const ID: transfer::Column = transfer::Column::Id;
    fn decode_row(row: &transfer::Model) -> Result<(u128, Transfer), LedgerError> {
        to_transfer(row).map(|transfer| (transfer.id, transfer))
    }
}

impl ById for pending::Entity {
    type Value = PendingState;
    const ID: pending::Column = pending::Column::Id;
    fn decode_row(row: &pending::Model) -> Result<(u128, PendingState), LedgerError> {
        Ok((decode(&row.id)?, pending_state(row)?))
    }
}

impl ById for earnings::Entity {
    /// The sum of the account's payouts to contributors, and their count.
    type Value = (u128, u64);
    const ID: earnings::Column = earnings::Column::AccountId;
    fn decode_row(row: &earnings::Model) -> Result<(u128, (u128, u64)), LedgerError> {
        let payouts = u64::try_from(row.payouts)
            .map_err(|_| LedgerError::Corrupt(format!("an earnings row counts {} payouts", row.payouts)))?;
        Ok((decode(&row.account_id)?, (decode(&row.earned)?, payouts)))
    }
}

/// The rows of `E` with these ids (missing ids are absent), `LOOKUP_CHUNK_IDS` per query.
pub(super) async fn load_by_ids<E: ById>(
    db: &impl ConnectionTrait,
    ids: &[u128],
) -> Result<HashMap<u128, E::Value>, LedgerError> {
    let mut found = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(LOOKUP_CHUNK_IDS) {
        for row in E::find().filter(E::ID.is_in(chunk.iter().map(|id| encode(*id)))).all(db).await? {
            let (id, value) = E::decode_row(&row)?;
            found.insert(id, value);
        }
    }
    Ok(found)
}

/// A journal row read back.
pub(super) fn to_journal_record(row: &journal::Model) -> Result<super::JournalRecord, LedgerError> {
    Ok(super::JournalRecord {
        sequence: stored(row.sequence, "ledger_journal.sequence")?,
        previous: hash(&row.previous, "ledger_journal.previous")?,
        batch_hash: hash(&row.batch_hash, "ledger_journal.batch_hash")?,
        entry_hash: hash(&row.entry_hash, "ledger_journal.entry_hash")?,
        transfer_count: stored(row.transfer_count, "ledger_journal.transfer_count")?,
        last_timestamp: stored(row.last_timestamp, "ledger_journal.last_timestamp")?,
    })
}
