//! Every limit and timing of the attribution-worker, in one place.

use std::time::Duration;

/// How long an inference waits for its version's span index (from the inference's completion)
/// before it is attributed with what exists, which the attribution then says
/// (`completeness: partial`).
pub const INDEX_WAIT: Duration = Duration::from_secs(120);
/// Indexes a `ListIndexes` page holds when the request names no size, and at most.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1_000;
/// How far behind its inferences the worker may be and still compute influence: the setting
/// `attribution_influence_max_lag_ms`'s default.
pub const INFLUENCE_MAX_LAG: Duration =
    Duration::from_millis(openledger_core::config::DEFAULT_ATTRIBUTION_INFLUENCE_MAX_LAG_MS);
/// Attempts at a version's quality assessment that failed for now (the ledger away when its
/// slashing threshold is read, say), the first [`RETRY_DELAY`] apart, doubling up to
/// [`ASSESS_RETRY_MAX_DELAY`]: about eight hours in all. A restart tries again; bonds never
/// assessed are released by datanet-ingest's timeout.
pub const ASSESS_ATTEMPTS: u32 = 100;
pub const ASSESS_RETRY_MAX_DELAY: Duration = Duration::from_secs(300);
/// Delay before a waiting or failed delivery is tried again.
pub const RETRY_DELAY: Duration = Duration::from_secs(2);
/// Deliveries of one event before it goes to the dead-letter subject: enough to wait
/// [`INDEX_WAIT`] at [`RETRY_DELAY`] and ride out restarts of the services it asks.
pub const MAX_DELIVER: u32 = 100;
/// Time a delivery may stay unacknowledged before the bus delivers it again.
pub const ACK_WAIT: Duration = Duration::from_secs(60);
/// Time between two receipt batches.
pub const BATCH_INTERVAL: Duration = Duration::from_secs(1);
/// Most receipts in one batch (one Merkle tree, one journal record).
pub const MAX_BATCH_RECEIPTS: u64 = 4096;
/// Span-index builds running at once (each uses one core while it sorts).
pub const CONCURRENT_INDEX_BUILDS: usize = 1;
/// Time between two looks at an `AttributionJob` being built (one GET each).
pub const INDEX_JOB_POLL: Duration = Duration::from_secs(5);
/// Values per layer a gradient index's rows are projected to at least (see
/// `gradients::probing_for`): the size `openledger attribution evaluate` measures with.
pub const GRADIENT_PROJECTION_MIN_DIM: usize = 256;
/// Seed of the projection matrices (fixed: an index rebuilt from the same files is the same).
pub const GRADIENT_PROJECTION_SEED: u64 = 1;
/// Adapters' gradient indexes kept open at once (each holds its rows and a probe; the probes
/// share one f32 copy of the base model's weights, about 540 MB for SmolLM2-135M); the least
/// recently used is closed first.
pub const MAX_OPEN_GRADIENT_INDEXES: usize = 4;
/// Training records per shard of a gradient index built by an `AttributionJob` (one pod
/// each): enough work to pay for a pod's start (fetching the adapter, loading the base model);
/// not measured on a cluster yet. An index of at most this many records is one shard, with no
/// merge.
pub const GRADIENT_RECORDS_PER_SHARD: usize = 16 * 1024;
/// Most shards of one gradient index (pods of one Job; each fetches the adapter and loads the
/// base model).
pub const MAX_GRADIENT_SHARDS: usize = 16;
/// Tokens per span-index shard (about 1.5 GB of suffix array at 6 bytes per token).
pub const SHARD_TOKENS: usize = 256 * 1024 * 1024;
/// Most stored attributions one `ListAttributions` page returns.
pub const MAX_PAGE: u32 = 1000;
/// Largest gRPC message read from datanet-ingest (a record's body is at most 1 MiB).
pub const MAX_GRPC_MESSAGE_BYTES: usize = 64 << 20;
