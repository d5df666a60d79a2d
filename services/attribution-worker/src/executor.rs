//! Where index files are built, behind one interface chosen by `job_executor`:
//!
//! - [`LocalIndexExecutor`] (embedded mode, and the default): in this process, on a bounded pool
//!   ([`CONCURRENT_INDEX_BUILDS`]).
//! - [`KubernetesIndexExecutor`](crate::kubernetes::KubernetesIndexExecutor): an
//!   `AttributionJob` per index, whose pods run `openledger index-job` (`index_job`) and write
//!   the files on a volume shared with the worker, which then opens and checks them.
//!
//! Either way `indexes` keeps the row's state, retries and events: an executor only turns a row
//! into files and says what they hold.

use std::sync::Arc;

use openledger_core::ContentHash;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{WorkerError, entities::index, indexes::Indexes, limits::CONCURRENT_INDEX_BUILDS};

/// What a built index holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Built {
    pub records: usize,
    /// [`crate::indexes::files_hash`] over its files (what receipts name).
    pub files_hash: ContentHash,
}

/// Builds index files where the worker reads them.
#[async_trait::async_trait]
pub trait IndexExecutor: Send + Sync {
    /// `local` or `kubernetes`.
    fn name(&self) -> &'static str;

    /// Waits for a slot before one build attempt; `None` when the executor does not bound them
    /// here (a cluster queues its jobs itself).
    async fn admit(&self) -> Option<OwnedSemaphorePermit> {
        None
    }

    /// Builds the row's index files (or has them built) and returns what they hold. A transient
    /// error is tried again; any other fails the row.
    async fn build(&self, indexes: &Indexes, row: &index::Model) -> Result<Built, WorkerError>;

    /// Forgets a failed build before the row is built again.
    async fn forget(&self, _row: &index::Model) -> Result<(), WorkerError> {
        Ok(())
    }
}

/// Builds in this process, [`CONCURRENT_INDEX_BUILDS`] at once.
pub struct LocalIndexExecutor {
    builds: Arc<Semaphore>,
}

impl LocalIndexExecutor {
    pub fn new() -> Self {
        Self { builds: Arc::new(Semaphore::new(CONCURRENT_INDEX_BUILDS)) }
    }
}

impl Default for LocalIndexExecutor {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait::async_trait]
impl IndexExecutor for LocalIndexExecutor {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.builds.clone().acquire_owned().await.ok()
    }

    async fn build(&self, indexes: &Indexes, row: &index::Model) -> Result<Built, WorkerError> {
        indexes.write_files(row).await
    }
}
