//! What every signed OpenLedger request signs, and the one check of such a signature. Owns the
//! message formats (a spec: see [`messages`] and [`canonical`]), ed25519 verification with the
//! clock-skew rule, the caller header names and signing for clients and tests. It knows neither
//! HTTP nor, without its `proto` feature, protobuf: services turn their requests into the plain
//! values the builders take (the `proto` module does it for wire signatures, signed caller
//! metadata and a Datanet's protobuf form).
//!
//! # The rules every message follows
//!
//! - A message is UTF-8 text: a version tag `openledger/<operation>/v<N>`, then the fields that
//!   decide the operation, each on its own line (`\n`, no trailing newline). Free text a user
//!   types (a reason, a purpose, a key name) is always the last field, so a newline inside it
//!   cannot shift the other fields.
//! - Numbers are decimal ASCII without leading zeros or `+`; account ids and amounts are
//!   unsigned 128-bit integers; times (`signed_at`) are Unix seconds.
//! - Hashes and keys are lowercase hex; a content hash is BLAKE3 (32 bytes, 64 hex digits).
//! - The signature is ed25519 over exactly these bytes, checked with `verify_strict` (no
//!   small-order keys, canonical `S`).
//! - A message that carries `signed_at` is refused when `signed_at` is more than
//!   [`MAX_CLOCK_SKEW_SECONDS`] from the server's clock, so a captured request cannot be
//!   replayed later.
//! - Every failure of a signature (wrong length, does not verify, stale or future time,
//!   malformed caller header) is [`ErrorCode::Unauthenticated`]: HTTP 401 `unauthenticated`.
//!   A valid signature by a key that may not do the operation is the service's business
//!   (`permission_denied`, 403).

pub mod canonical;
pub mod headers;
pub mod messages;
#[cfg(feature = "proto")]
pub mod proto;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
pub use messages::*;
use openledger_core::ErrorCode;

/// Bytes of an ed25519 public key.
pub const PUBLIC_KEY_BYTES: usize = ed25519_dalek::PUBLIC_KEY_LENGTH;
/// Bytes of an ed25519 signature.
pub const SIGNATURE_BYTES: usize = ed25519_dalek::SIGNATURE_LENGTH;

/// A signer's ed25519 public key.
pub type Key = [u8; PUBLIC_KEY_BYTES];

/// How far a `signed_at` (or a caller header's timestamp) may be from the server's clock, in
/// seconds, either way.
pub const MAX_CLOCK_SKEW_SECONDS: i64 = 300;

/// Why a signature was refused. Every variant is [`ErrorCode::Unauthenticated`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    #[error("the public key must be 32 bytes (an ed25519 key), got {0}: sign with an ed25519 key")]
    KeyLength(usize),
    #[error("the signature must be 64 bytes (ed25519), got {0}: send the whole signature")]
    SignatureLength(usize),
    #[error("the signature does not verify: it must sign {message:?} with the key's ed25519 secret")]
    DoesNotVerify { message: String },
    #[error(
        "signed_at {signed_at} is more than {MAX_CLOCK_SKEW_SECONDS} s from the server's clock ({now_unix}): sign the request again"
    )]
    Stale { signed_at: i64, now_unix: i64 },
    #[error("caller identity: {header} must be {expected}")]
    MalformedHeader { header: &'static str, expected: &'static str },
}

impl SigningError {
    /// The platform code of every signature failure.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::Unauthenticated
    }
}

/// A signature and the key that made it (what requests carry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signed {
    pub public_key: Key,
    pub signature: [u8; SIGNATURE_BYTES],
}

impl Signed {
    /// The key as lowercase hex (what REST bodies and caller headers carry).
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.public_key)
    }

    /// The signature as lowercase hex.
    pub fn signature_hex(&self) -> String {
        hex::encode(self.signature)
    }
}

/// Signs `message` with `key` (for clients and tests).
pub fn sign(key: &SigningKey, message: &[u8]) -> Signed {
    Signed { public_key: key.verifying_key().to_bytes(), signature: key.sign(message).to_bytes() }
}

/// Checks that `signature` by `public_key` signs `message`; returns the key.
pub fn verify(public_key: &[u8], signature: &[u8], message: &[u8]) -> Result<Key, SigningError> {
    let key: Key = public_key.try_into().map_err(|_| SigningError::KeyLength(public_key.len()))?;
    let signature: [u8; SIGNATURE_BYTES] =
        signature.try_into().map_err(|_| SigningError::SignatureLength(signature.len()))?;
    VerifyingKey::from_bytes(&key)
        .and_then(|verifying| verifying.verify_strict(message, &Signature::from_bytes(&signature)))
        .map_err(|_| SigningError::DoesNotVerify { message: String::from_utf8_lossy(message).into_owned() })?;
    Ok(key)
}

/// Refuses a `signed_at` more than [`MAX_CLOCK_SKEW_SECONDS`] from `now_unix`.
pub fn check_fresh(signed_at: i64, now_unix: i64) -> Result<(), SigningError> {
    if now_unix.abs_diff(signed_at) > MAX_CLOCK_SKEW_SECONDS.unsigned_abs() {
        return Err(SigningError::Stale { signed_at, now_unix });
    }
    Ok(())
}

/// [`verify`], then [`check_fresh`] of the `signed_at` the message carries.
pub fn verify_fresh(
    public_key: &[u8],
    signature: &[u8],
    message: &[u8],
    signed_at: i64,
    now_unix: i64,
) -> Result<Key, SigningError> {
    let key = verify(public_key, signature, message)?;
    check_fresh(signed_at, now_unix)?;
    Ok(key)
}

/// Checks a signed caller identity, the values of the [`headers::CALLER`] headers (hex key,
/// Unix seconds, hex signature of [`caller_message`]), against `now_unix`.
pub fn verify_caller(key_hex: &str, timestamp: &str, signature_hex: &str, now_unix: i64) -> Result<Key, SigningError> {
    let malformed = |header, expected| SigningError::MalformedHeader { header, expected };
    let key = hex::decode(key_hex).map_err(|_| malformed(headers::KEY, "hex"))?;
    let signature = hex::decode(signature_hex).map_err(|_| malformed(headers::SIGNATURE, "hex"))?;
    let at: i64 = timestamp.parse().map_err(|_| malformed(headers::TIMESTAMP, "Unix seconds"))?;
    check_fresh(at, now_unix)?;
    verify(&key, &signature, &caller_message(at))
}

/// The caller headers' values for `key` signing its identity at `now_unix`, in the order of
/// [`headers::CALLER`] (for clients and tests).
pub fn caller_headers(key: &SigningKey, now_unix: i64) -> [(&'static str, String); 3] {
    let signed = sign(key, &caller_message(now_unix));
    let [key_header, timestamp_header, signature_header] = headers::CALLER;
    [
        (key_header, signed.public_key_hex()),
        (timestamp_header, now_unix.to_string()),
        (signature_header, signed.signature_hex()),
    ]
}

/// Now, in Unix seconds (what `signed_at` fields carry).
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn a_signature_verifies_over_its_message_only() {
        let signed = sign(&key(1), b"openledger/publish/v1\nd\n1");
        assert_eq!(
            verify(&signed.public_key, &signed.signature, b"openledger/publish/v1\nd\n1"),
            Ok(signed.public_key)
        );
        let wrong = verify(&signed.public_key, &signed.signature, b"openledger/publish/v1\nd\n2");
        assert!(matches!(wrong, Err(SigningError::DoesNotVerify { .. })), "{wrong:?}");
        let other = key(2).verifying_key().to_bytes();
        assert!(matches!(verify(&other, &signed.signature, b"x"), Err(SigningError::DoesNotVerify { .. })));
    }

    #[test]
    fn every_failure_is_unauthenticated() {
        let signed = sign(&key(1), b"m");
        let failures = [
            verify(&signed.public_key[..31], &signed.signature, b"m").expect_err("fails"),
            verify(&signed.public_key, &signed.signature[..63], b"m").expect_err("fails"),
            verify(&signed.public_key, &signed.signature, b"n").expect_err("fails"),
            check_fresh(0, MAX_CLOCK_SKEW_SECONDS + 1).expect_err("fails"),
            verify_caller("zz", "1", "00", 1).expect_err("fails"),
        ];
        assert_eq!(failures[0], SigningError::KeyLength(31));
        assert_eq!(failures[1], SigningError::SignatureLength(63));
        for failure in failures {
            assert_eq!(failure.code(), ErrorCode::Unauthenticated, "{failure}");
        }
    }

    #[test]
    fn freshness_allows_the_skew_both_ways_and_no_more() {
        let now = 1_800_000_000;
        for skew in [0, MAX_CLOCK_SKEW_SECONDS, -MAX_CLOCK_SKEW_SECONDS] {
            assert_eq!(check_fresh(now + skew, now), Ok(()), "{skew}");
        }
        for skew in [MAX_CLOCK_SKEW_SECONDS + 1, -MAX_CLOCK_SKEW_SECONDS - 1] {
            assert_eq!(
                check_fresh(now + skew, now),
                Err(SigningError::Stale { signed_at: now + skew, now_unix: now }),
                "{skew}"
            );
        }
        assert!(check_fresh(i64::MIN, i64::MAX).is_err(), "no overflow at the extremes");
    }

    #[test]
    fn caller_headers_verify_and_go_stale() {
        let now = 1_800_000_000;
        let [(_, key_hex), (_, at), (_, signature_hex)] = caller_headers(&key(3), now);
        assert_eq!(verify_caller(&key_hex, &at, &signature_hex, now + 10), Ok(key(3).verifying_key().to_bytes()));
        assert!(matches!(
            verify_caller(&key_hex, &at, &signature_hex, now + MAX_CLOCK_SKEW_SECONDS + 1),
            Err(SigningError::Stale { .. })
        ));
        assert_eq!(
            verify_caller(&key_hex, "soon", &signature_hex, now),
            Err(SigningError::MalformedHeader { header: headers::TIMESTAMP, expected: "Unix seconds" })
        );
    }
}
