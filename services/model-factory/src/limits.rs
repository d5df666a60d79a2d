//! Every limit of the registry, with its unit. The adapter files' own limits (bytes per file,
//! rank) are `openledger_ml::validate`'s, so the registry and the engines agree on them.

pub use openledger_ml::adapters::MAX_ADAPTER_BYTES;
pub use openledger_ml::validate::{AdapterLimits, MAX_ADAPTER_CONFIG_BYTES, MAX_REGISTRY_RANK};

/// Adapter ids: `[A-Za-z0-9._-]{1,128}`, not starting with `.` (`validate_adapter_id`).
pub const MAX_ADAPTER_ID_BYTES: usize = 128;
/// Characters of an adapter's description.
pub const MAX_DESCRIPTION_CHARS: usize = 1_000;
/// Accounts on one adapter's allow-list.
pub const MAX_ALLOWED_ACCOUNTS: usize = 1_000;
/// Bytes of an import's `source` (an object-store key prefix or `hf://owner/name[@rev]`).
pub const MAX_SOURCE_BYTES: usize = 1_024;
/// Largest gRPC request the service decodes: an inline import carries both files, so this
/// bounds inline uploads; larger adapters are imported from the object store (`source`).
pub const MAX_GRPC_MESSAGE_BYTES: usize = 256 << 20;
/// Adapters per page of `ListAdapters` when the request names no size, and at most.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1_000;
/// Where adapters live in the platform's object store: `adapters/<id>/<file>` (what the
/// engines' `AdapterSource::ObjectStore` with this prefix reads).
pub const ADAPTERS_PREFIX: &str = "adapters";

/// Fine-tuning jobs. Epochs a job may ask for (the trainer's own limit is higher).
pub const MAX_JOB_EPOCHS: u32 = 100;
/// Examples per optimizer step a job may ask for.
pub const MAX_BATCH_SIZE: u32 = 256;
pub const MAX_LEARNING_RATE_MULTIPLIER: f64 = 100.0;
/// Characters of a job's suffix (OpenAI allows 64; ours must fit `ft:` names in an adapter id).
pub const MAX_SUFFIX_CHARS: usize = 40;
/// OpenAI's metadata limits.
pub const MAX_METADATA_PAIRS: usize = 16;
pub const MAX_METADATA_KEY_CHARS: usize = 64;
pub const MAX_METADATA_VALUE_CHARS: usize = 512;
/// Characters of an idempotency key.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 256;
/// Jobs waiting (validating, queued or paused) per account; more are refused with
/// `RESOURCE_EXHAUSTED` until some finish.
pub const MAX_WAITING_JOBS_PER_ACCOUNT: u64 = 16;
/// Records and bytes of the version a job trains on (read into the job's work directory and
/// held in memory while tokenized).
pub const MAX_TRAINING_RECORDS: u64 = 1_000_000;
pub const MAX_TRAINING_BYTES: u64 = 1 << 30;
/// Jobs per page of `ListFineTuneJobs`, events and checkpoints per page.
pub const DEFAULT_JOB_PAGE_SIZE: u32 = 20;
pub const MAX_JOB_PAGE_SIZE: u32 = 1_000;
