//! The Datanet side of [`openledger_signing`], which defines every signed message (the
//! protobuf → canonical conversions of a Datanet definition and edit included, in its `proto`
//! module), and the checks with their failures as [`DatanetError`]s (always `unauthenticated`).

pub use openledger_signing::proto::{
    datanet_create_message as create_message, datanet_update_message as update_message, sign,
};
pub use openledger_signing::{
    Key, MAX_CLOCK_SKEW_SECONDS, SigningError, access_decision_message, access_request_message, caller_message,
    contribution_message, now_unix, publish_message, review_message,
};

use crate::DatanetError;

impl From<SigningError> for DatanetError {
    fn from(error: SigningError) -> Self {
        DatanetError::new(error.code(), error.to_string())
    }
}

/// `openledger/remove-record/v1`: see [`openledger_signing::remove_record_message`].
pub fn remove_message(datanet_id: &str, record: &openledger_core::ContentHash, signed_at: i64) -> Vec<u8> {
    openledger_signing::remove_record_message(datanet_id, record, signed_at)
}

/// Checks that `signature` by `public_key` signs `message`; returns the key.
pub fn verify(public_key: &[u8], signature: &[u8], message: &[u8]) -> Result<Key, DatanetError> {
    Ok(openledger_signing::verify(public_key, signature, message)?)
}

/// Refuses a `signed_at` more than [`MAX_CLOCK_SKEW_SECONDS`] from now.
pub fn check_fresh(signed_at: i64, now_unix: i64) -> Result<(), DatanetError> {
    Ok(openledger_signing::check_fresh(signed_at, now_unix)?)
}

/// Checks a signed-caller triple (hex key, Unix seconds, hex signature) against `now_unix`.
pub fn verify_caller(key_hex: &str, timestamp: &str, signature_hex: &str, now_unix: i64) -> Result<Key, DatanetError> {
    Ok(openledger_signing::verify_caller(key_hex, timestamp, signature_hex, now_unix)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_failure_is_an_unauthenticated_datanet_error() {
        let error = verify(&[1; 31], &[0; 64], b"m").expect_err("short key");
        assert_eq!(error.code, openledger_core::ErrorCode::Unauthenticated);
    }
}
