//! The ledger's books in the database. Every `create_transfers` batch runs in one
//! transaction: load what it touches, apply it with the engine, write the accepted transfers,
//! the changed balances and pending states, and append one entry to the hash-chained journal.
//! Writers are serial: a process-wide mutex, and on PostgreSQL a row lock that replicas share.
//!
//! Where each concern lives:
//! - `rows`: table rows ⇄ domain values, and the one way to load rows by id;
//! - `ids`: ids the service derives (system transfers, operation keys);
//! - `write`: applying batches of accounts and transfers, expiring holds, and many platform
//!   operations' chains (with the accounts they derive) in one transaction;
//! - `queries`: lookups, account history, balances in the past, `ledger_meta`;
//! - `genesis`: the system accounts and the one mint of the supply;
//! - `journal`: the hash chain, its format, and the JSON-lines export;
//! - `verify`: recomputing the chain and replaying every balance.

mod genesis;
mod ids;
mod journal;
mod queries;
mod rows;
mod verify;
mod write;

use openledger_store::db::MaybeBusy;
use sea_orm::{ColumnTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, QueryFilter, TransactionTrait};
use tokio::sync::Mutex;

pub use genesis::{Allocation, GENESIS_ACCOUNT_ID, GENESIS_SUPPLY, default_allocations};
pub use ids::{expiry_transfer_id, operation_key, system_transfer_id};
pub use journal::{JournalRecord, batch_hash, entry_hash};
pub use verify::JournalReport;
pub(crate) use write::Chain;
pub use write::RECEIPT_ANCHORS_ACCOUNT_ID;

use crate::entities::meta;

/// Subject of the event each committed batch publishes (through the outbox).
pub const SUBJECT_BATCH_COMMITTED: &str = "ol.ledger.batch.committed";

/// Errors of the ledger's storage.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("database error: {0}")]
    Database(#[from] sea_orm::DbErr),
    #[error("a batch holds at most {max} events, got {len}")]
    BatchTooLarge { len: usize, max: usize },
    #[error("stored ledger data is corrupt: {0}")]
    Corrupt(String),
    /// The genesis allocation or parameter set is not one the ledger can start from.
    #[error("invalid genesis: {0}")]
    InvalidGenesis(String),
    #[error("cannot record the batch's event: {0}")]
    Outbox(String),
}

impl MaybeBusy for LedgerError {
    fn is_busy(&self) -> bool {
        matches!(self, Self::Database(error) if error.is_busy())
    }
}

/// The ledger's books.
pub struct Ledger {
    db: DatabaseConnection,
    writer: Mutex<()>,
}

impl Ledger {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db, writer: Mutex::new(()) }
    }

    /// Nanoseconds since the Unix epoch (0 before it; `u64::MAX` after 2554).
    pub fn now_ns() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    pub(crate) fn connection(&self) -> &DatabaseConnection {
        &self.db
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
}
