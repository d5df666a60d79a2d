//! Reads of the books: accounts and transfers by id, an account's history and its balances at
//! a past moment, transfers by code, credited account or time range (for the platform
//! operations), the journal entry of a transfer, and the `ledger_meta` key-value rows the
//! operations keep their progress in.

use std::collections::HashMap;

use sea_orm::{
    ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set, sea_query::OnConflict,
};

use super::{
    JournalRecord, Ledger, LedgerError,
    rows::{encode, load_by_ids, nanos, to_journal_record, to_transfer},
    verify::Replay,
};
use crate::{
    entities::{account, earnings, journal, meta, transfer},
    limits::{MAX_ACCOUNT_HISTORY_PAGE, MAX_BATCH_EVENTS},
    model::{Account, Transfer},
};

/// Transfers that debit or credit `account_id`.
fn involving(account_id: u128) -> sea_orm::Condition {
    let id = encode(account_id);
    sea_orm::Condition::any()
        .add(transfer::Column::DebitAccountId.eq(id.clone()))
        .add(transfer::Column::CreditAccountId.eq(id))
}

impl Ledger {
    /// The accounts with these ids that exist, in the order asked.
    pub async fn lookup_accounts(&self, ids: &[u128]) -> Result<Vec<Account>, LedgerError> {
        let found = load_by_ids::<account::Entity>(&self.db, ids).await?;
        Ok(ids.iter().filter_map(|id| found.get(id).copied()).collect())
    }

    /// The transfers with these ids that exist, in the order asked.
    pub async fn lookup_transfers(&self, ids: &[u128]) -> Result<Vec<Transfer>, LedgerError> {
        let found = load_by_ids::<transfer::Entity>(&self.db, ids).await?;
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
            .limit(limit.clamp(1, MAX_ACCOUNT_HISTORY_PAGE))
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
        let mut replay = Replay::default();
        for row in &rows {
            replay.apply(&to_transfer(row)?);
        }
        let replayed = replay.accounts.get(&account_id);
        Ok(Some(Account {
            debits_pending: replayed.map_or(0, |a| a.debits_pending),
            debits_posted: replayed.map_or(0, |a| a.debits_posted),
            credits_pending: replayed.map_or(0, |a| a.credits_pending),
            credits_posted: replayed.map_or(0, |a| a.credits_posted),
            ..now
        }))
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

    /// Per account of `accounts` with payouts to contributors: their sum and count (the
    /// running totals written with them).
    pub(crate) async fn earnings_totals(&self, accounts: &[u128]) -> Result<HashMap<u128, (u128, u64)>, LedgerError> {
        load_by_ids::<earnings::Entity>(&self.db, accounts).await
    }

    /// How many transfers have `code`.
    pub(crate) async fn count_with_code(&self, code: u16) -> Result<u64, LedgerError> {
        Ok(transfer::Entity::find().filter(transfer::Column::Code.eq(i32::from(code))).count(&self.db).await?)
    }

    /// The journal entry that recorded transfer `id`, if the transfer exists.
    pub(crate) async fn journal_entry_of(&self, id: u128) -> Result<Option<JournalRecord>, LedgerError> {
        let Some(row) = transfer::Entity::find_by_id(encode(id)).one(&self.db).await? else { return Ok(None) };
        let entry = journal::Entity::find_by_id(row.journal_sequence).one(&self.db).await?.ok_or_else(|| {
            LedgerError::Corrupt(format!(
                "transfer {id} names journal entry {}, which is missing",
                row.journal_sequence
            ))
        })?;
        to_journal_record(&entry).map(Some)
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

    /// A numeric `ledger_meta` value; 0 when the key was never written (an absent row is the
    /// start, a present row that is not a number is corrupt).
    pub(crate) async fn meta_u64(&self, key: &str) -> Result<u64, LedgerError> {
        match self.meta_text(key).await? {
            None => Ok(0),
            Some(text) => text.parse().map_err(|_| LedgerError::Corrupt(format!("ledger_meta {key} is not a number"))),
        }
    }

    pub(crate) async fn set_meta_u64(&self, key: &str, value: u64) -> Result<(), LedgerError> {
        self.set_meta_text(key, &value.to_string()).await
    }
}
