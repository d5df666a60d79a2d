//! The duplicate index of each Datanet (exact hashes and MinHash signatures of the records that
//! hold credit) and the memory budget all of a process's indexes share: loading, refreshing from
//! the database, and evicting the least recently used idle ones.

use std::{collections::HashMap, sync::Arc};

use openledger_core::ErrorCode;
use sea_orm::{ColumnTrait, DatabaseTransaction, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder};

use crate::{
    DatanetError,
    dedup::{NearDuplicateIndex, Signature},
    entities::{datanet, record},
    limits,
};

use super::Datanets;
use super::states::{RecordStatus, stored_hash};

impl Datanets {
    /// Records held by the duplicate indexes loaded in this process.
    pub fn indexed_records(&self) -> usize {
        let slots: Vec<IndexSlot> = self.indexes.lock().values().cloned().collect();
        slots
            .iter()
            .filter_map(|slot| slot.index.try_lock().ok().and_then(|index| index.as_ref().map(|i| i.near.len())))
            .sum()
    }

    /// Drops the least recently used idle indexes until all fit the budget.
    pub(super) fn enforce_index_budget(&self) {
        let slots: Vec<IndexSlot> = self.indexes.lock().values().cloned().collect();
        let mut loaded: Vec<(u64, usize, IndexSlot)> = slots
            .into_iter()
            .filter_map(|slot| {
                let bytes = slot.index.try_lock().ok()?.as_ref()?.bytes();
                Some((slot.used.load(std::sync::atomic::Ordering::Relaxed), bytes, slot))
            })
            .collect();
        let mut total: usize = loaded.iter().map(|(_, bytes, _)| bytes).sum();
        loaded.sort_by_key(|(used, _, _)| *used);
        for (_, bytes, slot) in loaded {
            if total <= self.index_budget {
                break;
            }
            if let Ok(mut index) = slot.index.try_lock() {
                *index = None;
                total -= bytes;
            }
        }
    }

    pub(super) fn index_slot(&self, datanet_id: &str) -> IndexSlot {
        let slot = self.indexes.lock().entry(datanet_id.to_owned()).or_default().clone();
        slot.used.store(
            self.index_clock.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            std::sync::atomic::Ordering::Relaxed,
        );
        slot
    }

    /// Brings the index up to date with committed records (all of them when the generation
    /// moved, only new ones otherwise).
    pub(super) async fn refresh_index(
        &self,
        txn: &DatabaseTransaction,
        row: &datanet::Model,
        index: &mut Option<DatanetIndex>,
    ) -> Result<(), DatanetError> {
        if index.as_ref().is_none_or(|current| current.generation != row.index_generation) {
            *index = Some(DatanetIndex {
                near: NearDuplicateIndex::new(self.dedup),
                exact: HashMap::new(),
                last_seq: 0,
                generation: row.index_generation,
            });
        }
        let Some(current) = index.as_mut() else { return Ok(()) };
        let mut rows = record::Entity::find()
            .filter(record::Column::DatanetId.eq(&row.id))
            .filter(record::Column::Seq.gt(current.last_seq))
            .filter(record::Column::Status.is_in([RecordStatus::Pending, RecordStatus::Accepted]))
            .order_by_asc(record::Column::Seq)
            .paginate(txn, limits::INDEX_REBUILD_PAGE_RECORDS);
        while let Some(batch) = rows.fetch_and_next().await? {
            for indexed in batch {
                current.last_seq = current.last_seq.max(indexed.seq);
                let hash = *stored_hash(&indexed.hash)?.as_bytes();
                current.exact.entry(hash).or_insert_with(|| indexed.contribution_id.clone());
                // Stored signatures are of either shingle scheme (characters for short records,
                // words for long ones and for short ones stored before 2026-12-04); one index
                // holds both, see `openledger_screen::dedup`.
                if let Some(minhash) = indexed.minhash.as_deref() {
                    let signature = Signature(
                        minhash.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
                    );
                    current.near.insert(indexed.contribution_id.clone(), signature).map_err(index_full)?;
                }
            }
        }
        Ok(())
    }
}

/// The near-duplicate and exact-duplicate index of one Datanet: the records that hold credit
/// (accepted or pending review), rebuilt from the database when missing or stale.
pub(super) struct DatanetIndex {
    pub(super) near: NearDuplicateIndex<String>,
    pub(super) exact: HashMap<[u8; 32], String>,
    pub(super) last_seq: i64,
    pub(super) generation: i64,
}

impl DatanetIndex {
    pub(super) fn bytes(&self) -> usize {
        self.near.len().max(self.exact.len()) * limits::INDEX_BYTES_PER_RECORD
    }
}

/// One Datanet's index (loaded or not) and when it was last used.
#[derive(Clone, Default)]
pub(super) struct IndexSlot {
    pub(super) index: Arc<tokio::sync::Mutex<Option<DatanetIndex>>>,
    pub(super) used: Arc<std::sync::atomic::AtomicU64>,
}

pub(super) fn index_full(error: crate::dedup::DedupError) -> DatanetError {
    DatanetError::new(ErrorCode::ResourceExhausted, format!("this Datanet cannot take more records: {error}"))
}
