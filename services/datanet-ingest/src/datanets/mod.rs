//! The Datanet service's core, one concern per module:
//!
//! - [`definitions`]: Datanets themselves (create, edit, get, list) and who may see them;
//! - [`contribute`]: a signed upload becomes a contribution ([`decide`] says what its records
//!   and the contribution become; [`index`] holds the duplicate indexes and their memory budget);
//! - [`bond_saga`]: the stake bond around a contribution, on the ledger; [`quality`]: bonds of
//!   accepted contributions held until a quality assessment releases or slashes them;
//! - [`contributions`]: reading contributions, and their events;
//! - [`review`]: review decisions and record removal;
//! - [`snapshots`]: sealed versions and Merkle inclusion proofs;
//! - [`access`]: grants and logged reads for training and for attribution; [`leaderboard`]
//!   (with earnings from the ledger);
//! - [`validation`] of what callers send, and [`states`]: stored states and their names.
//!
//! This module holds the [`Datanets`] service itself and what every concern shares: finding a
//! Datanet the caller may see, and the Datanet's write lock.
//!
//! Consistency: every write to a Datanet starts its transaction by bumping the Datanet's
//! `revision`. That row lock serializes writers of one Datanet across replicas on PostgreSQL
//! and takes SQLite's write lock first, so daily limits and duplicate checks see everything
//! committed before them. Record bodies go to the object store before the transaction (one
//! JSONL object per contribution, named by its id: a failed commit leaves only an unreferenced
//! object); events go through the outbox in the same transaction.
//!
//! Bonds: the stake is held on the ledger before the transaction (and given back if the
//! transaction fails). Spam and duplicates are slashed at once: the decision is committed with
//! the contribution and applied right after. An accepted contribution's bond stays held until
//! its quality is known ([`quality`]): a quality assessment of a sealed version containing it
//! releases it, or slashes it with the evidence recorded when it is a slashing candidate; with
//! no assessment it is released after [`limits::BOND_QUALITY_TIMEOUT_MS`].
//! [`Datanets::resolve_bonds`] retries every decision the ledger did not take.

mod access;
mod bond_saga;
mod contribute;
mod contributions;
mod decide;
mod definitions;
mod index;
mod leaderboard;
mod quality;
mod review;
mod snapshots;
mod states;
#[cfg(test)]
mod tests;
mod validation;

pub use quality::{QualityDecisions, SUBJECT_QUALITY_ASSESSED};
pub use validation::complete_policy;

use std::{collections::HashMap, sync::Arc};

use object_store::{ObjectStore, path::Path as ObjectPath};
use openledger_core::{ContentHash, ErrorCode};
use openledger_proto::{common::v1::Hash, datanet::v1::Visibility};
use parking_lot::Mutex;
use sea_orm::{
    ColumnTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, PaginatorTrait, QueryFilter, sea_query::Expr,
};
use tokio::sync::Notify;

use crate::{
    DatanetError,
    bonds::Bonds,
    dedup::{DedupParams, MinHasher},
    earnings::Earnings,
    entities::{datanet, grant},
    limits,
    parse::ParseLimits,
    signing::Key,
};

use index::IndexSlot;
use snapshots::SealedTree;
use states::{GrantState, visibility};

pub const SUBJECT_SUBMITTED: &str = "ol.datanet.contribution.submitted";

pub const SUBJECT_ACCEPTED: &str = "ol.datanet.contribution.accepted";

pub const SUBJECT_REJECTED: &str = "ol.datanet.contribution.rejected";

pub const SUBJECT_SNAPSHOT_SEALED: &str = "ol.datanet.snapshot.sealed";

const PRODUCER: &str = "datanet-ingest";

/// One uploaded file, as received.
pub struct Upload {
    pub datanet_id: String,
    pub file_name: String,
    pub media_type: String,
    pub bytes: bytes::Bytes,
    /// The BLAKE3 hash the client declared, checked against the bytes when given.
    pub declared_hash: Option<ContentHash>,
    pub signature: openledger_proto::common::v1::Signature,
    pub account_id: Option<u128>,
}

/// The Datanet service over a database, an object store and the ledger.
pub struct Datanets {
    db: DatabaseConnection,
    objects: Arc<dyn ObjectStore>,
    bonds: Arc<dyn Bonds>,
    /// Where the leaderboard reads earnings; without it the leaderboard shows none.
    earnings: Option<Arc<dyn Earnings>>,
    hasher: MinHasher,
    dedup: DedupParams,
    parse_limits: ParseLimits,
    indexes: Mutex<HashMap<String, IndexSlot>>,
    index_budget: usize,
    /// Ticks on every use of an index (least recently used is evicted first).
    index_clock: std::sync::atomic::AtomicU64,
    /// Merkle trees of recently proven versions, newest first.
    trees: Mutex<Vec<Arc<SealedTree>>>,
    outbox_wake: Option<Arc<Notify>>,
}

impl Datanets {
    pub fn new(db: DatabaseConnection, objects: Arc<dyn ObjectStore>, bonds: Arc<dyn Bonds>) -> Self {
        let dedup = DedupParams::default();
        Self {
            db,
            objects,
            bonds,
            earnings: None,
            hasher: MinHasher::new(dedup),
            dedup,
            parse_limits: ParseLimits::default(),
            indexes: Mutex::new(HashMap::new()),
            index_budget: limits::DEFAULT_INDEX_BUDGET_BYTES,
            index_clock: std::sync::atomic::AtomicU64::new(1),
            trees: Mutex::new(Vec::new()),
            outbox_wake: None,
        }
    }

    /// Most records one Datanet's near-duplicate index holds (about 1.4 KiB each with the
    /// exact-duplicate map; see `dedup`).
    pub fn with_index_capacity(mut self, max_records: usize) -> Self {
        self.dedup.max_records = max_records;
        self
    }

    /// Resident bytes all Datanets' duplicate indexes may take in this process together;
    /// beyond it the least recently used idle ones are dropped (and rebuilt from the database
    /// when next needed).
    pub fn with_index_budget(mut self, bytes: usize) -> Self {
        self.index_budget = bytes;
        self
    }

    /// Reads contributors' earnings for the leaderboard from `earnings` (the ledger).
    pub fn with_earnings(mut self, earnings: Arc<dyn Earnings>) -> Self {
        self.earnings = Some(earnings);
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

    async fn row(&self, id_or_slug: &str, caller: Option<Key>) -> Result<datanet::Model, DatanetError> {
        let row = match datanet::Entity::find_by_id(id_or_slug).one(&self.db).await? {
            Some(row) => Some(row),
            None => datanet::Entity::find().filter(datanet::Column::Slug.eq(id_or_slug)).one(&self.db).await?,
        };
        match row {
            Some(row) if self.may_see(&row, caller).await? => Ok(row),
            _ => Err(DatanetError::new(ErrorCode::NotFound, format!("no Datanet {id_or_slug:?}"))),
        }
    }

    /// Public Datanets are visible to all; private ones to the owner, validators and grantees.
    async fn may_see(&self, row: &datanet::Model, caller: Option<Key>) -> Result<bool, DatanetError> {
        if visibility(row.visibility)? != Visibility::Private {
            return Ok(true);
        }
        let Some(caller) = caller else { return Ok(false) };
        if row.owner == caller || is_validator(row, &caller) {
            return Ok(true);
        }
        let granted = grant::Entity::find()
            .filter(grant::Column::DatanetId.eq(&row.id))
            .filter(grant::Column::Grantee.eq(caller.to_vec()))
            .filter(grant::Column::State.eq(GrantState::Approved))
            .count(&self.db)
            .await?;
        Ok(granted > 0)
    }
}

/// Takes the Datanet's write lock (bumping its revision) and returns the row.
async fn lock_datanet(txn: &DatabaseTransaction, datanet_id: &str) -> Result<datanet::Model, DatanetError> {
    datanet::Entity::update_many()
        .col_expr(datanet::Column::Revision, Expr::col(datanet::Column::Revision).add(1))
        .filter(datanet::Column::Id.eq(datanet_id))
        .exec(txn)
        .await?;
    datanet::Entity::find_by_id(datanet_id)
        .one(txn)
        .await?
        .ok_or_else(|| DatanetError::new(ErrorCode::NotFound, format!("no Datanet {datanet_id:?}")))
}

async fn bump_index_generation(txn: &DatabaseTransaction, datanet_id: &str) -> Result<(), DatanetError> {
    datanet::Entity::update_many()
        .col_expr(datanet::Column::IndexGeneration, Expr::col(datanet::Column::IndexGeneration).add(1))
        .filter(datanet::Column::Id.eq(datanet_id))
        .exec(txn)
        .await?;
    Ok(())
}

fn contribution_object(datanet_id: &str, contribution_id: &str) -> ObjectPath {
    ObjectPath::from(format!("datanets/{datanet_id}/contributions/{contribution_id}.jsonl"))
}

fn invalid(message: impl Into<String>) -> DatanetError {
    DatanetError::new(ErrorCode::InvalidArgument, message)
}

fn require_owner(row: &datanet::Model, caller: &Key, what: &str) -> Result<(), DatanetError> {
    if row.owner != caller {
        return Err(DatanetError::new(ErrorCode::PermissionDenied, format!("only the Datanet's owner may {what}")));
    }
    Ok(())
}

fn is_validator(row: &datanet::Model, key: &Key) -> bool {
    row.validators.chunks_exact(32).any(|validator| validator == key)
}

fn content_hash(bytes: &[u8]) -> Option<ContentHash> {
    <[u8; 32]>::try_from(bytes).ok().map(ContentHash::from_bytes)
}

fn hash_of(hash: Option<&Hash>, field: &str) -> Result<ContentHash, DatanetError> {
    hash.and_then(|hash| content_hash(&hash.value))
        .ok_or_else(|| invalid(format!("{field} must be a 32-byte BLAKE3 hash")))
}

fn page_size_of(requested: u32) -> u32 {
    openledger_store::page::page_size(requested, limits::DEFAULT_PAGE_SIZE, limits::MAX_PAGE_SIZE)
}
