//! The vocabulary every OpenLedger crate shares: sortable ids, content hashes, the binary
//! Merkle tree behind snapshot and batch proofs, `Amount` (OPEN in u128 base units), error
//! codes and the platform configuration. No I/O and no async here.

pub mod amount;
pub mod config;
pub mod error;
pub mod fee;
pub mod governance;
pub mod hash;
pub mod id;
pub mod merkle;
pub mod record;
pub mod slashing;

pub use amount::{Amount, AmountError};
pub use config::{Config, ConfigError, LogFormat, ServiceKind, redact_url};
pub use error::ErrorCode;
pub use hash::ContentHash;
pub use id::Id;
pub use merkle::{MerkleProof, MerkleTree};
