//! Receipt batches: every [`BATCH_INTERVAL`] the receipts not yet batched (oldest first, at
//! most [`MAX_BATCH_RECEIPTS`]) become the next batch, an RFC 9162 Merkle tree over their
//! receipt hashes in that order, sealed in one transaction with each receipt's leaf index.
//! Then each sealed batch's root is recorded in the ledger's journal (idempotent by the
//! batch's sequence, so recording again after a crash changes nothing).

use std::sync::Arc;

use openledger_core::{ContentHash, ErrorCode, MerkleProof, MerkleTree};
use openledger_store::now_ms;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
    TransactionTrait,
};
use tokio_util::sync::CancellationToken;

use crate::{
    WorkerError,
    entities::{attribution, batch},
    limits::{BATCH_INTERVAL, MAX_BATCH_RECEIPTS},
    upstream::Upstream,
};

pub struct Batches {
    db: DatabaseConnection,
    upstream: Arc<dyn Upstream>,
}

fn hash(bytes: &[u8], what: &str) -> Result<ContentHash, WorkerError> {
    ContentHash::try_from(bytes).map_err(|_| WorkerError::new(ErrorCode::Internal, format!("{what} is not a hash")))
}

impl Batches {
    pub fn new(db: DatabaseConnection, upstream: Arc<dyn Upstream>) -> Self {
        Self { db, upstream }
    }

    /// Seals the next batch; `None` when no receipt waits.
    pub async fn seal(&self) -> Result<Option<u64>, WorkerError> {
        let txn = self.db.begin().await?;
        let pending = attribution::Entity::find()
            .filter(attribution::Column::BatchSequence.is_null())
            .order_by_asc(attribution::Column::CreatedAtMs)
            .order_by_asc(attribution::Column::InferenceId)
            .limit(MAX_BATCH_RECEIPTS)
            .all(&txn)
            .await?;
        if pending.is_empty() {
            return Ok(None);
        }
        let last = batch::Entity::find().order_by_desc(batch::Column::Sequence).one(&txn).await?;
        let sequence = last.map_or(1, |b| b.sequence + 1);
        let leaves: Vec<ContentHash> =
            pending.iter().map(|row| hash(&row.receipt_hash, "a receipt hash")).collect::<Result<_, _>>()?;
        let root = MerkleTree::new(&leaves).root();
        batch::ActiveModel {
            sequence: Set(sequence),
            root: Set(root.as_bytes().to_vec()),
            size: Set(leaves.len() as i64),
            created_at_ms: Set(now_ms()),
            journal_sequence: Set(None),
            journal_entry_hash: Set(None),
            recorded_at_ms: Set(None),
        }
        .insert(&txn)
        .await?;
        for (leaf, row) in pending.into_iter().enumerate() {
            let mut active: attribution::ActiveModel = row.into();
            active.batch_sequence = Set(Some(sequence));
            active.leaf_index = Set(Some(leaf as i64));
            active.update(&txn).await?;
        }
        txn.commit().await?;
        tracing::info!(sequence, receipts = leaves.len(), root = %root, "receipt batch sealed");
        Ok(Some(sequence as u64))
    }

    /// Records every sealed batch's root in the ledger's journal; returns how many it recorded.
    pub async fn record(&self) -> Result<usize, WorkerError> {
        let waiting = batch::Entity::find()
            .filter(batch::Column::JournalSequence.is_null())
            .order_by_asc(batch::Column::Sequence)
            .all(&self.db)
            .await?;
        let mut recorded = 0;
        for row in waiting {
            let root = hash(&row.root, "a batch root")?;
            let at = self.upstream.record_batch(row.sequence as u64, &root, row.size as u64).await?;
            let sequence = row.sequence;
            let mut active: batch::ActiveModel = row.into();
            active.journal_sequence = Set(Some(at.journal_sequence as i64));
            active.journal_entry_hash = Set(Some(at.entry_hash));
            active.recorded_at_ms = Set(Some(now_ms()));
            active.update(&self.db).await?;
            tracing::info!(
                sequence,
                journal_sequence = at.journal_sequence,
                "receipt batch root recorded in the journal"
            );
            recorded += 1;
        }
        Ok(recorded)
    }

    pub async fn get(&self, sequence: u64) -> Result<Option<batch::Model>, WorkerError> {
        Ok(batch::Entity::find_by_id(sequence as i64).one(&self.db).await?)
    }

    /// The inclusion proof of a batched attribution and its batch.
    pub async fn proof(&self, row: &attribution::Model) -> Result<Option<(MerkleProof, batch::Model)>, WorkerError> {
        let (Some(sequence), Some(leaf)) = (row.batch_sequence, row.leaf_index) else { return Ok(None) };
        let Some(sealed) = self.get(sequence as u64).await? else { return Ok(None) };
        let leaves: Vec<Vec<u8>> = attribution::Entity::find()
            .select_only()
            .column(attribution::Column::ReceiptHash)
            .filter(attribution::Column::BatchSequence.eq(sequence))
            .order_by_asc(attribution::Column::LeafIndex)
            .into_tuple()
            .all(&self.db)
            .await?;
        let leaves: Vec<ContentHash> =
            leaves.iter().map(|bytes| hash(bytes, "a receipt hash")).collect::<Result<_, _>>()?;
        let tree = MerkleTree::new(&leaves);
        if tree.root().as_bytes().as_slice() != sealed.root.as_slice() {
            return Err(WorkerError::new(
                ErrorCode::Internal,
                format!("batch {sequence}'s receipts no longer hash to its root: the store was changed"),
            ));
        }
        let proof = tree
            .proof(leaf as usize)
            .ok_or_else(|| WorkerError::new(ErrorCode::Internal, format!("leaf {leaf} is outside batch {sequence}")))?;
        Ok(Some((proof, sealed)))
    }

    /// Seals and records batches until shutdown.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(BATCH_INTERVAL) => {}
            }
            loop {
                match self.seal().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => break,
                    Err(error) => {
                        tracing::warn!(%error, "sealing a receipt batch failed; trying again");
                        break;
                    }
                }
            }
            if let Err(error) = self.record().await {
                tracing::warn!(%error, "recording receipt batch roots in the journal failed; trying again");
            }
        }
    }
}
