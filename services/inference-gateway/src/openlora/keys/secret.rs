//! API key secrets: `olk_<key id>_<64 hex digits>`, the random part 32 bytes from the
//! operating system's generator. Only the BLAKE3 hash of the whole secret is stored; a
//! presented secret is compared with it in constant time. The key id inside the secret finds
//! the stored row without a search by hash.

use openledger_core::ErrorCode;
use rand::{TryRngCore, rngs::OsRng};

use crate::edge::ApiError;

/// What every secret starts with.
pub const PREFIX: &str = "olk_";
/// Bytes of entropy in a secret.
pub const RANDOM_BYTES: usize = 32;
/// Bytes of a stored secret hash (BLAKE3).
pub const HASH_BYTES: usize = 32;
/// The longest key id a secret may carry (a UUID is 36 characters).
const MAX_KEY_ID_CHARS: usize = 64;

/// A fresh secret for `key_id`.
pub fn generate(key_id: &str) -> Result<String, ApiError> {
    debug_assert!(is_key_id(key_id), "key ids are what secrets can carry");
    let mut random = [0u8; RANDOM_BYTES];
    OsRng.try_fill_bytes(&mut random).map_err(|error| {
        ApiError::new(ErrorCode::Unavailable, format!("the operating system's random generator failed: {error}"))
    })?;
    Ok(format!("{PREFIX}{key_id}_{}", hex::encode(random)))
}

/// The key id a well-formed secret carries; `None` for anything else.
pub fn key_id_of(secret: &str) -> Option<&str> {
    let (key_id, random) = secret.strip_prefix(PREFIX)?.split_once('_')?;
    let random_ok = random.len() == RANDOM_BYTES * 2 && random.bytes().all(|byte| byte.is_ascii_hexdigit());
    (is_key_id(key_id) && random_ok).then_some(key_id)
}

fn is_key_id(key_id: &str) -> bool {
    !key_id.is_empty()
        && key_id.len() <= MAX_KEY_ID_CHARS
        && key_id.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
}

/// What is stored for `secret`.
pub fn hash(secret: &str) -> [u8; HASH_BYTES] {
    *blake3::hash(secret.as_bytes()).as_bytes()
}

/// Whether `secret` hashes to `stored`, in time independent of where they differ
/// (`blake3::Hash`'s equality is constant-time).
pub fn matches(secret: &str, stored: &[u8; HASH_BYTES]) -> bool {
    blake3::hash(secret.as_bytes()) == blake3::Hash::from_bytes(*stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_ID: &str = "0192e4c0-0000-7000-8000-000000000001";

    #[test]
    fn secrets_carry_their_key_id_and_32_random_bytes() {
        let secret = generate(KEY_ID).expect("secret");
        assert!(secret.starts_with("olk_0192e4c0-0000-7000-8000-000000000001_"), "{secret}");
        assert_eq!(secret.len(), PREFIX.len() + KEY_ID.len() + 1 + 2 * RANDOM_BYTES);
        assert_eq!(key_id_of(&secret), Some(KEY_ID));
        assert_ne!(generate(KEY_ID).expect("secret"), secret, "two secrets for one id differ");
    }

    #[test]
    fn malformed_secrets_carry_no_key_id() {
        let random = "ab".repeat(RANDOM_BYTES);
        for secret in [
            String::new(),
            "sk-proj-abc".to_owned(),
            format!("olk_{KEY_ID}"),
            format!("olk__{random}"),
            format!("olk_{KEY_ID}_{}", &random[1..]),
            format!("olk_{KEY_ID}_{}zz", &random[2..]),
            format!("olk_a/b_{random}"),
            format!("olk_{}_{random}", "a".repeat(65)),
        ] {
            assert_eq!(key_id_of(&secret), None, "{secret}");
        }
        assert_eq!(key_id_of(&format!("olk_k1_{random}")), Some("k1"));
    }

    #[test]
    fn only_the_secret_itself_matches_its_hash() {
        let secret = generate(KEY_ID).expect("secret");
        let stored = hash(&secret);
        assert_eq!(stored, *blake3::hash(secret.as_bytes()).as_bytes(), "the hash is BLAKE3 of the secret");
        assert!(matches(&secret, &stored));
        let mut first = secret.clone().into_bytes();
        first[PREFIX.len()] ^= 1;
        let mut last = secret.clone().into_bytes();
        *last.last_mut().expect("non-empty") ^= 1;
        for other in [first, last] {
            assert!(!matches(&String::from_utf8(other).expect("ascii"), &stored));
        }
        let mut flipped = stored;
        flipped[HASH_BYTES - 1] ^= 1;
        assert!(!matches(&secret, &flipped));
    }
}
