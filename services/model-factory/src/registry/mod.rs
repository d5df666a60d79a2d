//! The adapter registry, one concern per module:
//!
//! - [`import`]: a signed import becomes an adapter (fetched from its source when it has one,
//!   validated against the base model, files stored, row and event committed);
//! - [`change`]: price, visibility, allow-list and description updates, and unlisting, by the
//!   owner only;
//! - [`read`]: one adapter, the adapters an account may call, the base models, and the API
//!   view of a stored adapter;
//! - [`fetch`]: an import's files from an object-store prefix or the Hugging Face hub.
//!
//! Consistency: an import claims its id with a `pending` row, writes both files to
//! `adapters/<id>/`, then marks the row `ready` in the transaction that writes the
//! `registered` event. Readers see ready rows only, so an adapter is served only once its
//! files are where the engines read them; a failed write removes the claim. Updates and
//! unlisting write their event in the transaction that makes the change.

mod change;
mod fetch;
mod import;
pub mod read;
#[cfg(test)]
pub(crate) mod tests;
mod trained;

use std::sync::Arc;

use object_store::ObjectStore;
use openledger_core::ErrorCode;
use sea_orm::DatabaseConnection;
use tokio::sync::Notify;

pub use trained::{DEFAULT_TRAINED_PRICE_PER_1K_TOKENS, TrainedAdapter};

use crate::{RegistryError, base::BaseModels, events::Subjects, limits::AdapterLimits, owners::Owners};

/// The `source` of a trained adapter: `job:<fine-tuning job id>`.
pub const JOB_SOURCE_PREFIX: &str = "job:";
/// A trained adapter's lineage, beside its two PEFT files.
pub const LINEAGE_FILE: &str = openledger_ml::train::LINEAGE_FILE;

/// The registry over a database, the platform's object store and the ledger.
pub struct Registry {
    db: DatabaseConnection,
    objects: Arc<dyn ObjectStore>,
    owners: Arc<dyn Owners>,
    bases: Arc<BaseModels>,
    subjects: Subjects,
    limits: AdapterLimits,
    outbox_wake: Option<Arc<Notify>>,
}

impl Registry {
    pub fn new(
        db: DatabaseConnection,
        objects: Arc<dyn ObjectStore>,
        owners: Arc<dyn Owners>,
        bases: Arc<BaseModels>,
        subjects: Subjects,
    ) -> Self {
        Self { db, objects, owners, bases, subjects, limits: AdapterLimits::default(), outbox_wake: None }
    }

    /// Limits on the adapter files (defaults: `openledger_ml::validate`'s).
    pub fn with_adapter_limits(mut self, limits: AdapterLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn with_outbox_waker(mut self, wake: Arc<Notify>) -> Self {
        self.outbox_wake = Some(wake);
        self
    }

    fn wake_outbox(&self) {
        if let Some(wake) = &self.outbox_wake {
            wake.notify_one();
        }
    }
}

fn invalid(message: impl Into<String>) -> RegistryError {
    RegistryError::new(ErrorCode::InvalidArgument, message)
}

fn not_found(id: &str) -> RegistryError {
    RegistryError::new(ErrorCode::NotFound, format!("no adapter {id:?}: list adapters with ListAdapters"))
}

pub(crate) fn corrupt(what: &str, detail: impl std::fmt::Display) -> RegistryError {
    RegistryError::new(ErrorCode::Internal, format!("the stored {what} is corrupt: {detail}"))
}

/// The object-store key of one of an adapter's files.
fn object_path(id: &str, file: &str) -> object_store::path::Path {
    object_store::path::Path::from(format!("{}/{id}/{file}", crate::limits::ADAPTERS_PREFIX))
}

/// Where an adapter's PEFT directory lives in the object store.
fn location(id: &str) -> String {
    format!("{}/{id}", crate::limits::ADAPTERS_PREFIX)
}

/// Accounts in ascending order, each once (an allow-list as stored).
fn distinct(accounts: &[u128]) -> Vec<u128> {
    let mut accounts = accounts.to_vec();
    accounts.sort_unstable();
    accounts.dedup();
    accounts
}
