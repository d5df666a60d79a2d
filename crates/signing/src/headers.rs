//! The HTTP headers (and gRPC metadata keys) that carry signatures outside a request body.
//!
//! A caller proves who it is on a read (a private Datanet, its records) with [`CALLER`]: its
//! key, the time and its signature of [`crate::caller_message`] at that time. A JSON or JSONL
//! contribution, whose body is the file itself, carries its signature of
//! [`crate::contribution_message`] in [`KEY`] and [`SIGNATURE`], and the fields that message
//! covers beside the file in [`ACCOUNT`] and [`FILE_NAME`].

/// The signer's ed25519 public key, 64 lowercase or uppercase hex digits.
pub const KEY: &str = "x-openledger-key";
/// When the caller identity was signed, Unix seconds (decimal).
pub const TIMESTAMP: &str = "x-openledger-timestamp";
/// The ed25519 signature, 128 hex digits.
pub const SIGNATURE: &str = "x-openledger-signature";
/// The headers of a signed caller identity, in the order key, timestamp, signature.
pub const CALLER: [&str; 3] = [KEY, TIMESTAMP, SIGNATURE];

/// A contribution's ledger account (decimal), when its Datanet asks for a stake bond.
pub const ACCOUNT: &str = "x-openledger-account";
/// A contribution's file name, when the body is the file itself.
pub const FILE_NAME: &str = "x-openledger-file-name";
