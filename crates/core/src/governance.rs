//! The timings of governance a network is configured with (how long a proposal is voted on,
//! how long a passed one waits), which are not themselves governed, and the epoch length of
//! the genesis parameter set, which is. A test network shortens them all to seconds; the
//! defaults are a main network's.

/// How long a proposal is open for votes unless `governance_voting_seconds` says otherwise.
pub const DEFAULT_VOTING_SECONDS: u64 = 3 * 86_400;
/// How long a passed proposal waits before it is executed unless
/// `governance_timelock_seconds` says otherwise.
pub const DEFAULT_TIMELOCK_SECONDS: u64 = 86_400;
/// The epoch length of the genesis parameter set unless `genesis_epoch_seconds` says otherwise.
pub const DEFAULT_EPOCH_SECONDS: u64 = 86_400;
/// The longest epoch, unbonding period, vote or timelock: a year.
pub const MAX_SECONDS: u64 = 365 * 86_400;
