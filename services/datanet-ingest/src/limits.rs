//! Every limit of the Datanet service in one place: hard limits whatever a policy says, the
//! defaults of a Datanet's contribution policy, and the relations between them, checked at
//! compile time.

/// Defaults of a Datanet's contribution policy (a zero in a request means "the default").
pub mod defaults {
    pub const MAX_BYTES_PER_CONTRIBUTOR_PER_DAY: u64 = 10_000_000;
    pub const MAX_FILES_PER_CONTRIBUTOR_PER_DAY: u32 = 20;
    pub const MAX_BYTES_PER_DAY: u64 = 1_000_000_000;
    pub const MAX_FILES_PER_DAY: u32 = 10_000;
    pub const MAX_FILE_BYTES: u64 = 5_000_000;
    pub use crate::quality::{AUTO_ACCEPT_SCORE, REJECT_BELOW_SCORE};
    pub const NEAR_DUPLICATE_JACCARD_PPT: u32 = 800;
}

/// Largest file accepted (policies may only lower it).
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
pub const MAX_TAGS: usize = 20;
pub const MAX_TAG_CHARS: usize = 40;
pub const MAX_LABELS: usize = 1_000;
pub const MAX_LABEL_CHARS: usize = 100;
pub const MAX_NAME_CHARS: usize = 200;
pub const MAX_SUMMARY_CHARS: usize = 500;
pub const MAX_DESCRIPTION_BYTES: usize = 100_000;
pub const MAX_VALIDATORS: usize = 100;
pub const MAX_ALLOWED_CONTRIBUTORS: usize = 10_000;
pub const MAX_PURPOSE_CHARS: usize = 1_000;
pub const MAX_REASON_CHARS: usize = 1_000;
pub const MAX_PAGE_SIZE: u32 = 1_000;
pub const DEFAULT_PAGE_SIZE: u32 = 100;

/// Longest licence name, in characters.
pub const MAX_LICENCE_CHARS: usize = 100;
/// Slug length, in bytes (ASCII).
pub const MIN_SLUG_BYTES: usize = 2;
pub const MAX_SLUG_BYTES: usize = 64;
/// Quality scores and similarity thresholds are parts per thousand.
pub const PARTS_PER_THOUSAND: u32 = 1_000;
/// Leaderboard entries when a request asks for none (at most [`MAX_PAGE_SIZE`]).
pub const DEFAULT_LEADERBOARD_ENTRIES: u32 = 100;

/// Uploads buffered at once by one process; further ones wait (their senders are held back by
/// HTTP/2 flow control).
pub const CONCURRENT_UPLOADS: usize = 8;
/// Memory the buffered uploads may take together.
pub const UPLOAD_BUFFERS_BUDGET_BYTES: u64 = 512 * 1024 * 1024;
const _: () = assert!(CONCURRENT_UPLOADS as u64 * MAX_FILE_BYTES <= UPLOAD_BUFFERS_BUDGET_BYTES);
/// What a header's announced size alone may reserve before its chunks arrive.
pub const MAX_ANNOUNCED_RESERVATION_BYTES: u64 = 1024 * 1024;
const _: () = assert!(MAX_ANNOUNCED_RESERVATION_BYTES <= MAX_FILE_BYTES);

/// Resident bytes per indexed record: the near-duplicate index (measured by the `dedup` bench)
/// plus the exact-duplicate entry and the contribution id it names.
pub const INDEX_BYTES_PER_RECORD: usize = 1_500;
/// Resident bytes of all duplicate indexes in one process by default (2 GiB).
pub const DEFAULT_INDEX_BUDGET_BYTES: usize = 2 << 30;
/// Records one Datanet's index holds at most (see `dedup::DedupParams`).
pub use openledger_screen::MAX_INDEXED_RECORDS;
// One full index fits the default budget, so a Datanet at its limit can always be loaded.
const _: () = assert!(MAX_INDEXED_RECORDS * INDEX_BYTES_PER_RECORD <= DEFAULT_INDEX_BUDGET_BYTES);
/// Records read per query when an index is rebuilt from the database.
pub const INDEX_REBUILD_PAGE_RECORDS: u64 = 10_000;
/// Sealed versions whose Merkle trees stay in memory for proofs.
pub const CACHED_TREES: usize = 4;
/// Records per page of a `read_records` stream.
pub const READ_PAGE_RECORDS: u64 = 500;

/// Rows per multi-row INSERT (records of a contribution, leaves of a sealed version).
pub const INSERT_CHUNK_ROWS: usize = 500;
/// Columns bound per record row (all but the auto-increment `seq`) and per leaf row.
pub const RECORD_INSERT_COLUMNS: usize = 10;
pub const SNAPSHOT_RECORD_INSERT_COLUMNS: usize = 5;
/// Bound parameters one statement may carry: SQLite's `SQLITE_MAX_VARIABLE_NUMBER` (since
/// 3.32) and PostgreSQL's (a 16-bit count in the wire protocol).
pub const SQLITE_MAX_BOUND_PARAMETERS: usize = 32_766;
pub const POSTGRES_MAX_BOUND_PARAMETERS: usize = 65_535;
const _: () = assert!(INSERT_CHUNK_ROWS * RECORD_INSERT_COLUMNS <= SQLITE_MAX_BOUND_PARAMETERS);
const _: () = assert!(INSERT_CHUNK_ROWS * SNAPSHOT_RECORD_INSERT_COLUMNS <= SQLITE_MAX_BOUND_PARAMETERS);
const _: () = assert!(SQLITE_MAX_BOUND_PARAMETERS <= POSTGRES_MAX_BOUND_PARAMETERS);

/// After this long, a contribution still receiving (its process died after holding the bond)
/// is abandoned: its bond is given back and the placeholder removed.
pub const RECEIVING_TIMEOUT_MS: u64 = 600_000;
/// How often decided bonds the ledger has not taken yet are retried.
pub const BOND_RETRY_INTERVAL_MS: u64 = 2_000;
/// Abandoned uploads and decided bonds taken per retry pass.
pub const BOND_RETRY_BATCH: u64 = 1_000;
/// A UTC day, for the daily limits.
pub const DAY_MS: i64 = 86_400_000;

/// An accepted contribution's bond is held until its quality is known: an
/// `ol.attribution.quality.assessed` event for a sealed version containing it (the first
/// adapter trained on that version was evaluated), or, when none comes, this long after the
/// acceptance, when the housekeeping worker releases it (30 days: long enough for a version to
/// be sealed, trained on and evaluated; short enough that a contributor's stake is not tied up
/// indefinitely by a Datanet nobody trains on).
pub const BOND_QUALITY_TIMEOUT_MS: u64 = 30 * DAY_MS as u64;
const _: () = assert!(BOND_QUALITY_TIMEOUT_MS > RECEIVING_TIMEOUT_MS);
/// The durable consumer of quality assessments, and its delivery settings: an assessment not
/// acknowledged within the ack wait is delivered again, up to the deliveries before it goes
/// to `ol.dlq.datanet-quality` (a poison one, undecodable or naming an unknown version, goes
/// there at once).
pub const QUALITY_CONSUMER: &str = "datanet-quality";
pub const QUALITY_ACK_WAIT_MS: u64 = 60_000;
pub const QUALITY_MAX_DELIVER: u32 = 10;
/// How long an assessment that could not be recorded (database unavailable) waits before it
/// is delivered again.
pub const QUALITY_RETRY_DELAY_MS: u64 = 5_000;
/// Contribution ids bound per statement when an assessment decides bonds (well under the
/// databases' bound-parameter limits).
pub const QUALITY_IDS_PER_STATEMENT: usize = 500;
const _: () = assert!(QUALITY_IDS_PER_STATEMENT + 4 <= SQLITE_MAX_BOUND_PARAMETERS);
/// Bond decisions sent to the ledger at once after an assessment.
pub const BOND_APPLY_CONCURRENCY: usize = 8;

/// Account ids per `GetEarnings` request to the ledger (the leaderboard sums a page of
/// contributors' bond and earnings accounts): the ledger refuses more than its
/// `MAX_EARNINGS_ACCOUNTS` (1,000) in one request.
pub const EARNINGS_ACCOUNTS_PER_REQUEST: usize = 1_000;

#[cfg(test)]
mod tests {
    use sea_orm::Iterable;

    use super::*;
    use crate::entities::{record, snapshot_record};

    #[test]
    fn insert_column_counts_match_the_entities() {
        // The record's `seq` is assigned by the database, not bound.
        assert_eq!(record::Column::iter().count() - 1, RECORD_INSERT_COLUMNS);
        assert_eq!(snapshot_record::Column::iter().count(), SNAPSHOT_RECORD_INSERT_COLUMNS);
    }
}
