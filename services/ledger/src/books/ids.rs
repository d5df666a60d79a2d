//! Ids the service derives rather than clients choosing them: system transfers (genesis mint,
//! expiry voids, operations' legs) and the key an operation's caller-chosen id stands for.
//! All are BLAKE3 prefixes, so they take no part of the id space clients choose from.

use openledger_core::ContentHash;

/// Ids of transfers the service makes itself (genesis mint, expiry voids): derived from a
/// hash, so they take no part of the id space clients choose from.
pub fn system_transfer_id(purpose: &str, key: u128) -> u128 {
    ContentHash::of_parts(&[b"openledger/system-transfer/v1/", purpose.as_bytes(), &key.to_be_bytes()]).prefix_u128()
}

/// The key an operation's caller-chosen id (inference, contribution, operation) stands for.
pub fn operation_key(operation_id: &str) -> u128 {
    ContentHash::of(operation_id.as_bytes()).prefix_u128()
}

/// The id of the void transfer the service makes when hold `pending_id` expires.
pub fn expiry_transfer_id(pending_id: u128) -> u128 {
    system_transfer_id("expire", pending_id)
}
