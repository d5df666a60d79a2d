//! The signer of a signed route: an ed25519 public key (64 hex characters) and signature
//! (128 hex characters). A missing or malformed one answers 401 `unauthenticated`, as one that
//! does not verify does (the services check that), so every signed route refuses a bad
//! signature with the same status and code. The schema states the same shapes as patterns.

use openledger_core::ErrorCode;
use openledger_proto::common::v1 as common;
use openledger_signing::{PUBLIC_KEY_BYTES, SIGNATURE_BYTES};

use super::error::ApiError;

/// The wire signature from its hex fields, or 401 naming what is wrong.
pub fn signature(public_key: &str, signature: &str) -> Result<common::Signature, ApiError> {
    Ok(common::Signature {
        public_key: hex_bytes(public_key, PUBLIC_KEY_BYTES, "public_key")?,
        signature: hex_bytes(signature, SIGNATURE_BYTES, "signature")?,
    })
}

fn hex_bytes(text: &str, bytes: usize, field: &str) -> Result<Vec<u8>, ApiError> {
    hex::decode(text).ok().filter(|decoded| decoded.len() == bytes).ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unauthenticated,
            format!("{field} must be {} hex characters: sign the request with your ed25519 key", bytes * 2),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_signers_pass_and_anything_else_is_401() {
        let (key, sig) = ("ab".repeat(32), "CD".repeat(64));
        let wire = signature(&key, &sig).expect("well formed");
        assert_eq!((wire.public_key.len(), wire.signature.len()), (32, 64));
        for (key, sig) in
            [("", sig.as_str()), ("zz", sig.as_str()), (&key[2..], sig.as_str()), (&key, ""), (&key, "00")]
        {
            let error = signature(key, sig).expect_err("malformed");
            assert_eq!(error.code, ErrorCode::Unauthenticated, "{key:?} {sig:?}");
        }
    }
}
