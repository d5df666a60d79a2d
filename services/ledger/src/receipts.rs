//! Attribution receipt batches recorded in the hash-chained journal, without changing the
//! journal's format: a batch's Merkle root rides in the `user_data` of two linked transfers
//! (code [`codes::RECEIPT_BATCH`]) whose ids derive from the batch's sequence:
//!
//! - `receipt-batch/0`: receipt anchors → treasury, `user_data` = the root's first 16 bytes;
//! - `receipt-batch/1`: treasury → receipt anchors, `user_data` = the root's last 16 bytes;
//! - both of `size` base units (the batch's receipt count, at least 1), so the size is in the
//!   journal too and nothing moves: the pair nets to zero for both accounts. The anchors go
//!   first, which the treasury's own limit could not (it may hold nothing when the first batch
//!   is recorded); clients may never debit the anchors (`write::client_reserved`).
//!
//! Recording the same batch again answers the existing record; another root or size under a
//! recorded sequence is refused.

use openledger_core::ContentHash;

use crate::{
    books::{Ledger, LedgerError, RECEIPT_ANCHORS_ACCOUNT_ID, system_transfer_id},
    model::{CreateTransferResult, OPEN_LEDGER, Transfer, TransferFlags},
    operations::{OperationError, TREASURY, codes, refused},
};

/// A receipt batch as the journal holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptBatch {
    pub sequence: u64,
    pub root: ContentHash,
    pub size: u64,
    /// The journal entry that recorded the batch, and its hash.
    pub journal_sequence: u64,
    pub journal_entry_hash: ContentHash,
    pub transfer_ids: [u128; 2],
}

/// The ids of the two transfers that record batch `sequence`.
pub fn receipt_batch_ids(sequence: u64) -> [u128; 2] {
    [0, 1].map(|leg| system_transfer_id(&format!("receipt-batch/{leg}"), u128::from(sequence)))
}

/// The net-zero pair that records `root` and `size` under `sequence`.
pub fn receipt_batch_transfers(sequence: u64, root: &ContentHash, size: u64) -> [Transfer; 2] {
    let bytes = root.as_bytes();
    let high = u128::from_be_bytes(bytes[..16].try_into().expect("16 bytes"));
    let low = u128::from_be_bytes(bytes[16..].try_into().expect("16 bytes"));
    let [first, second] = receipt_batch_ids(sequence);
    let leg = |id, debit, credit, user_data, flags| Transfer {
        id,
        debit_account_id: debit,
        credit_account_id: credit,
        amount: u128::from(size),
        user_data,
        ledger: OPEN_LEDGER,
        code: codes::RECEIPT_BATCH,
        flags: TransferFlags(flags),
        ..Transfer::default()
    };
    [
        leg(first, RECEIPT_ANCHORS_ACCOUNT_ID, TREASURY, high, TransferFlags::LINKED),
        leg(second, TREASURY, RECEIPT_ANCHORS_ACCOUNT_ID, low, 0),
    ]
}

impl Ledger {
    /// Records receipt batch `sequence`'s Merkle `root` of `size` receipts; recording the same
    /// batch again answers the existing record.
    pub async fn record_receipt_batch_at(
        &self,
        sequence: u64,
        root: &ContentHash,
        size: u64,
        now_ns: u64,
    ) -> Result<ReceiptBatch, OperationError> {
        let operation = "recording the receipt batch";
        if size == 0 {
            return Err(refused(operation, "a receipt batch holds at least one receipt"));
        }
        let pair = receipt_batch_transfers(sequence, root, size);
        let results = self.write_system_at(&pair, now_ns).await?;
        if results.contains(&CreateTransferResult::ExistsWithDifferentFields) {
            return Err(refused(
                operation,
                format!("receipt batch {sequence} is already recorded with another root or size"),
            ));
        }
        if let Some(failed) = results.iter().find(|result| !result.is_success()) {
            return Err(refused(operation, failed.as_str()));
        }
        self.receipt_batch(sequence).await?.ok_or_else(|| {
            OperationError::Ledger(LedgerError::Corrupt(format!("receipt batch {sequence} vanished after recording")))
        })
    }

    /// Receipt batch `sequence` read back from its transfers; `None` if never recorded.
    pub async fn receipt_batch(&self, sequence: u64) -> Result<Option<ReceiptBatch>, LedgerError> {
        let ids = receipt_batch_ids(sequence);
        let found = self.lookup_transfers(&ids).await?;
        let [first, second] = match found.as_slice() {
            [] => return Ok(None),
            [first, second] => [first, second],
            _ => return Err(LedgerError::Corrupt(format!("receipt batch {sequence} has one of its two transfers"))),
        };
        let mut root = [0u8; 32];
        root[..16].copy_from_slice(&first.user_data.to_be_bytes());
        root[16..].copy_from_slice(&second.user_data.to_be_bytes());
        let size = u64::try_from(first.amount)
            .map_err(|_| LedgerError::Corrupt(format!("receipt batch {sequence}'s size does not fit u64")))?;
        let entry = self
            .journal_entry_of(first.id)
            .await?
            .ok_or_else(|| LedgerError::Corrupt(format!("receipt batch {sequence} has no journal entry")))?;
        Ok(Some(ReceiptBatch {
            sequence,
            root: ContentHash::from_bytes(root),
            size,
            journal_sequence: entry.sequence,
            journal_entry_hash: entry.entry_hash,
            transfer_ids: ids,
        }))
    }
}
