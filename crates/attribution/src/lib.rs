//! Proof of Attribution's methods: which contributions of a sealed Datanet version shaped an
//! output, and by how much. It owns the span index (verbatim spans over a suffix array), the
//! gradient index and influence estimators, the replication-robust credit rule, the blend into
//! one weight vector per output, contributor quality, and the evaluation that measures them.
//! It owns no service, storage backend or payment: the attribution-worker runs it, the ledger pays.

pub mod attribute;
pub mod baseline;
pub mod blend;
pub mod corpus;
pub mod credit;
mod error;
pub mod evaluate;
pub mod influence;
pub mod quality;
pub mod span;

pub use error::{AttributionError, Result};

/// The version of the attribution method: bumped whenever the same inputs could give other
/// weights, so a recomputation names the rule it follows.
pub const METHOD_VERSION: &str = "openledger-attribution/1";
