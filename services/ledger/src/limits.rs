//! The ledger's limits and fixed quantities in one place, units in their names. Relations
//! between them that can be checked at compile time are, at the bottom of this file.

use std::time::Duration;

/// Most events in one `create_transfers` or `create_accounts` call.
pub const MAX_BATCH_EVENTS: usize = 8190;
/// Rows per multi-row INSERT (see the parameter bound below).
pub const INSERT_CHUNK_ROWS: usize = 500;
/// Ids per `IN (…)` lookup.
pub const LOOKUP_CHUNK_IDS: usize = 1000;
/// SQLite's most bound parameters in one statement (`SQLITE_MAX_VARIABLE_NUMBER` since 3.32).
/// PostgreSQL allows 65,535, so this is the bound both must meet.
pub const SQLITE_MAX_BOUND_PARAMETERS: usize = 32_766;
/// Columns of `ledger_accounts`, `ledger_transfers` and `ledger_pending` (a unit test checks
/// these against the entities): each inserted row binds one parameter per column.
pub(crate) const ACCOUNT_COLUMNS: usize = 11;
pub(crate) const TRANSFER_COLUMNS: usize = 12;
pub(crate) const PENDING_COLUMNS: usize = 3;

/// Transfers per page of an account's history, at most and when the caller names none.
pub const MAX_ACCOUNT_HISTORY_PAGE: u64 = 1000;
pub const DEFAULT_ACCOUNT_HISTORY_PAGE: u64 = 100;
/// Journal entries per database page of the `ExportJournal` stream.
pub const EXPORT_PAGE_ENTRIES: u64 = 1000;
/// Bytes of a caller-chosen operation, proposal or inference id.
pub const MAX_OPERATION_ID_BYTES: usize = 128;
/// Characters of a proposal's rationale kept.
pub const MAX_PROPOSAL_RATIONALE_CHARS: usize = 10_000;

/// Most genesis allocation accounts.
pub const MAX_GENESIS_ALLOCATIONS: usize = 50;
/// 100% in basis points: allocations and fee shares sum to this.
pub const BASIS_POINTS_TOTAL: u32 = 10_000;
pub const NANOS_PER_SECOND: u64 = 1_000_000_000;
/// The longest epoch, and the longest unbonding period, governance may set: a year.
pub const MAX_EPOCH_SECONDS: u64 = openledger_core::governance::MAX_SECONDS;
/// Most epochs one housekeeping tick closes, when several ended since the last (very short
/// epochs on a test network; a ledger that was busy): the rest wait for the next ticks.
pub const MAX_EPOCHS_CLOSED_PER_TICK: u64 = 16;
/// How often the service voids expired holds, pays back unbonded stakes, closes epochs and
/// advances governance.
pub const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

/// Most attribution deliveries the settlement consumer settles in one transaction, and the
/// longest it waits after the first for the others.
pub const SETTLEMENT_BATCH: usize = 256;
pub const SETTLEMENT_LINGER: Duration = Duration::from_millis(20);
/// How long a delivery the ledger could not settle now (a database error, a failed payout)
/// waits before it comes again.
pub const SETTLEMENT_RETRY_DELAY: Duration = Duration::from_secs(2);
/// Deliveries of one attribution before the bus dead-letters it: enough to wait out a hold's
/// 900 s (the gateway's `HOLD_TIMEOUT_SECONDS`) at `SETTLEMENT_RETRY_DELAY` while its capture
/// may still come.
pub const SETTLEMENT_MAX_DELIVER: u32 = 500;
/// The step by which the wait for a capture grows per delivery (see `consumer::capture_wait`).
pub const CAPTURE_RETRY_STEP: Duration = Duration::from_millis(50);
/// Most accounts in one `GetEarnings` request.
pub const MAX_EARNINGS_ACCOUNTS: usize = 1000;
/// Most orders in one `SettleInferences` request.
pub const MAX_SETTLE_ORDERS: usize = 4096;
/// Most expected settlements one audit holds in memory (about a kilobyte each).
pub const MAX_AUDIT_SETTLEMENTS: usize = 1_000_000;

/// The transfers a settlement adds beside one per contributor: platform fee, model owner,
/// stakers pool and rounding remainder.
const SETTLEMENT_FIXED_LEGS: usize = 4;

const _: () = assert!(
    INSERT_CHUNK_ROWS * TRANSFER_COLUMNS <= SQLITE_MAX_BOUND_PARAMETERS
        && INSERT_CHUNK_ROWS * ACCOUNT_COLUMNS <= SQLITE_MAX_BOUND_PARAMETERS
        && INSERT_CHUNK_ROWS * PENDING_COLUMNS <= SQLITE_MAX_BOUND_PARAMETERS,
    "a chunk of inserted rows binds more parameters than SQLite allows in one statement"
);
const _: () = assert!(
    LOOKUP_CHUNK_IDS <= SQLITE_MAX_BOUND_PARAMETERS,
    "an id lookup binds more parameters than SQLite allows in one statement"
);
const _: () = assert!(
    crate::operations::MAX_SETTLEMENT_CONTRIBUTORS + SETTLEMENT_FIXED_LEGS <= MAX_BATCH_EVENTS,
    "a settlement's chain must fit in one batch"
);
const _: () = assert!(
    SETTLEMENT_BATCH * (SETTLEMENT_FIXED_LEGS + 10) <= MAX_BATCH_EVENTS,
    "a consumer batch of settlements with ten contributors each fits one ledger transaction"
);
const _: () = assert!(EXPORT_PAGE_ENTRIES > 0 && DEFAULT_ACCOUNT_HISTORY_PAGE <= MAX_ACCOUNT_HISTORY_PAGE);

#[cfg(test)]
mod tests {
    use sea_orm::Iterable;

    use super::*;
    use crate::entities::{account, pending, transfer};

    #[test]
    fn the_column_counts_match_the_entities() {
        assert_eq!(account::Column::iter().count(), ACCOUNT_COLUMNS);
        assert_eq!(transfer::Column::iter().count(), TRANSFER_COLUMNS);
        assert_eq!(pending::Column::iter().count(), PENDING_COLUMNS);
    }
}
