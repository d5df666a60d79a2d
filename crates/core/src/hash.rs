//! Content addressing with BLAKE3: records, files and batches are named by the hash of
//! their bytes.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A 32-byte BLAKE3 digest, printed as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContentHash([u8; 32]);

impl ContentHash {
    pub const LEN: usize = 32;

    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// The hash of several parts fed in order, without concatenating them first.
    pub fn of_parts(parts: &[&[u8]]) -> Self {
        let mut hasher = blake3::Hasher::new();
        for part in parts {
            hasher.update(part);
        }
        Self(*hasher.finalize().as_bytes())
    }

    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 16 bytes as a big-endian `u128`: how ids are derived from hashes.
    pub fn prefix_u128(&self) -> u128 {
        u128::from_be_bytes(self.0[..16].try_into().expect("32 bytes hold 16"))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// Why a string is not a content hash.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("content hash must be 64 hex characters (32 bytes), got {0:?}")]
pub struct ParseHashError(String);

impl FromStr for ContentHash {
    type Err = ParseHashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| ParseHashError(s.to_owned()))?;
        Ok(Self(bytes))
    }
}

impl TryFrom<&[u8]> for ContentHash {
    type Error = ParseHashError;

    fn try_from(bytes: &[u8]) -> Result<Self, Self::Error> {
        <[u8; 32]>::try_from(bytes).map(Self).map_err(|_| ParseHashError(format!("{} bytes", bytes.len())))
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({})", self.to_hex())
    }
}

impl Serialize for ContentHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ContentHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_blake3_reference_vector_for_empty_input() {
        assert_eq!(ContentHash::of(b"").to_hex(), "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262");
    }

    #[test]
    fn parts_hash_like_their_concatenation_and_hex_round_trips() {
        let whole = ContentHash::of(b"hello world");
        assert_eq!(ContentHash::of_parts(&[b"hello", b" world"]), whole);
        assert_eq!(whole.to_string().parse::<ContentHash>(), Ok(whole));
        assert!("abc".parse::<ContentHash>().is_err());
        let json = serde_json::to_string(&whole).expect("serialize");
        assert_eq!(serde_json::from_str::<ContentHash>(&json).expect("deserialize"), whole);
    }
}
