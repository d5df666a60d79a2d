//! The hash-chained journal: one entry per committed batch, whose hash covers the previous
//! entry's, so changing any stored transfer breaks the chain from there on. Also the journal's
//! reads and its JSON-lines export, from which anyone can recompute every hash.
//!
//! The format, which the export's known-answer test pins (`tests/ledger.rs`):
//! - a transfer's hash is BLAKE3 of its 116-byte big-endian encoding (`Transfer::canonical_bytes`);
//! - a batch hash is BLAKE3 of the batch's transfer encodings, concatenated in order;
//! - an entry hash is BLAKE3 of `openledger/journal/v1`, the previous entry hash (32 zero bytes
//!   before the first), the sequence, the batch hash, the transfer count and the last transfer
//!   timestamp (integers as 8 big-endian bytes);
//! - an epoch's Merkle root is `openledger_core::MerkleTree`'s over its transfers' hashes in
//!   timestamp order.

use std::collections::BTreeMap;

use openledger_core::{ContentHash, MerkleTree};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::{
    Ledger, LedgerError,
    rows::{saturating_i64, to_journal_record, to_transfer},
};
use crate::{
    entities::{journal, transfer},
    limits::NANOS_PER_SECOND,
    model::Transfer,
};

/// The domain-separation prefix of entry hashes.
const ENTRY_DOMAIN: &[u8] = b"openledger/journal/v1";

/// The hash of a committed batch: its accepted transfers in order.
pub fn batch_hash(transfers: &[Transfer]) -> ContentHash {
    let encoded: Vec<[u8; Transfer::CANONICAL_BYTES]> = transfers.iter().map(Transfer::canonical_bytes).collect();
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
        ENTRY_DOMAIN,
        previous.as_bytes(),
        &sequence.to_be_bytes(),
        batch.as_bytes(),
        &count.to_be_bytes(),
        &last_timestamp.to_be_bytes(),
    ])
}

/// The hash standing before the first entry.
pub(super) const GENESIS_PREVIOUS: ContentHash = ContentHash::from_bytes([0; 32]);

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

impl Ledger {
    /// Journal entries after `after_sequence`, oldest first, at most `limit`.
    pub async fn journal_entries(&self, after_sequence: u64, limit: u64) -> Result<Vec<JournalRecord>, LedgerError> {
        let rows = journal::Entity::find()
            .filter(journal::Column::Sequence.gt(saturating_i64(after_sequence)))
            .order_by_asc(journal::Column::Sequence)
            .limit(limit)
            .all(&self.db)
            .await?;
        rows.iter().map(to_journal_record).collect()
    }

    /// Every journal entry, oldest first.
    pub(super) async fn all_journal_entries(&self) -> Result<Vec<JournalRecord>, LedgerError> {
        let rows = journal::Entity::find().order_by_asc(journal::Column::Sequence).all(&self.db).await?;
        rows.iter().map(to_journal_record).collect()
    }

    /// The transfers journal entry `sequence` recorded, in timestamp order.
    pub(super) async fn entry_transfers(&self, sequence: u64) -> Result<Vec<Transfer>, LedgerError> {
        let rows = transfer::Entity::find()
            .filter(transfer::Column::JournalSequence.eq(saturating_i64(sequence)))
            .order_by_asc(transfer::Column::Timestamp)
            .all(&self.db)
            .await?;
        rows.iter().map(to_transfer).collect()
    }

    /// Writes the journal as JSON lines for audit: one `entry` line per journal entry with its
    /// transfers (ids and amounts as decimal strings), then one `epoch` line per epoch of
    /// `epoch_seconds` with the Merkle root over the hashes of that epoch's transfers in
    /// timestamp order. Returns the number of lines. The module doc says how to recompute
    /// every hash from the file.
    pub async fn export_journal(&self, out: &mut impl std::io::Write, epoch_seconds: u64) -> Result<u64, LedgerError> {
        let io = |error: std::io::Error| LedgerError::Corrupt(format!("cannot write the export: {error}"));
        let epoch_ns = epoch_seconds.max(1).saturating_mul(NANOS_PER_SECOND);
        let mut lines = 0;
        let mut epochs: BTreeMap<u64, Vec<ContentHash>> = BTreeMap::new();
        for entry in self.all_journal_entries().await? {
            let transfers = self.entry_transfers(entry.sequence).await?;
            for transfer in &transfers {
                epochs
                    .entry(transfer.timestamp / epoch_ns)
                    .or_default()
                    .push(ContentHash::of(&transfer.canonical_bytes()));
            }
            writeln!(out, "{}", entry_json(&entry, &transfers)).map_err(io)?;
            lines += 1;
        }
        for (epoch, hashes) in epochs {
            let line = serde_json::json!({
                "type": "epoch",
                "epoch": epoch,
                "epoch_seconds": epoch_seconds,
                "transfer_count": hashes.len(),
                "merkle_root": MerkleTree::new(&hashes).root().to_hex(),
            });
            writeln!(out, "{line}").map_err(io)?;
            lines += 1;
        }
        Ok(lines)
    }
}

fn entry_json(entry: &JournalRecord, transfers: &[Transfer]) -> serde_json::Value {
    serde_json::json!({
        "type": "entry",
        "sequence": entry.sequence,
        "previous": entry.previous.to_hex(),
        "batch_hash": entry.batch_hash.to_hex(),
        "entry_hash": entry.entry_hash.to_hex(),
        "transfer_count": entry.transfer_count,
        "last_timestamp": entry.last_timestamp,
        "transfers": transfers.iter().map(transfer_json).collect::<Vec<_>>(),
    })
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
