//! Where services keep state: the database connection (sea-orm over SQLite or PostgreSQL,
//! chosen by URL), migrations applied at start, the object store (`object_store`: local
//! directory, S3-compatible, or memory, chosen by URL), and the transactional outbox and inbox
//! that connect database transactions to the event bus exactly once in effect.
//! Service-specific tables and queries live in each service, not here.

pub mod db;
pub mod inbox;
pub mod objects;
pub mod outbox;
pub mod page;

pub use db::{connect, migrate, pending_migrations, ping};
pub use objects::{check_object_store, open_object_store, open_object_store_with};
pub use outbox::{NewEvent, OutboxRelay};

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to the database at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("database error: {0}")]
    Database(#[from] sea_orm::DbErr),
    #[error("migrations failed: {0}")]
    Migration(String),
    #[error("invalid object store URL {url:?}: {reason}")]
    ObjectStoreUrl { url: String, reason: String },
    #[error("object store error: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("event bus error: {0}")]
    Bus(#[from] openledger_bus::BusError),
    #[error("invalid event: {0}")]
    InvalidEvent(String),
}

/// Milliseconds since the Unix epoch, the timestamp unit of every table.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
