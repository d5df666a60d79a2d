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
