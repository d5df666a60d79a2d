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
