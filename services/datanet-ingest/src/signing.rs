//! What each signed Datanet request signs, and the check. Every write is signed with the
//! caller's ed25519 key over a message that starts with `openledger/<operation>/v1` and lists
//! the fields that decide the operation, one per line; the API documents each message. Reads
//! of private Datanets identify the caller by signed request metadata instead (see
//! [`caller_message`]).

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use openledger_core::{ContentHash, ErrorCode};
use prost::Message;

use crate::DatanetError;

/// A caller's public key.
pub type Key = [u8; 32];

/// How far a signed read's timestamp may be from the server's clock.
pub const CALLER_CLOCK_SKEW_SECONDS: i64 = 300;

/// `openledger/datanet/create/v1\n<slug>\n<BLAKE3 hex of the Datanet message, protobuf-encoded,
/// with id, owner and created_at cleared>`.
pub fn create_message(datanet: &openledger_proto::datanet::v1::Datanet) -> Vec<u8> {
    let mut unsigned = datanet.clone();
    unsigned.id.clear();
    unsigned.owner.clear();
    unsigned.created_at = None;
    let digest = ContentHash::of(&unsigned.encode_to_vec());
    format!("openledger/datanet/create/v1\n{}\n{}", datanet.slug, digest.to_hex()).into_bytes()
}

/// `openledger/datanet/update/v1\n<id>\n<BLAKE3 hex of the UpdateDatanetRequest, protobuf-encoded,
/// with the signature cleared>`.
pub fn update_message(request: &openledger_proto::datanet::v1::UpdateDatanetRequest) -> Vec<u8> {
    let mut unsigned = request.clone();
    unsigned.signature = None;
    let digest = ContentHash::of(&unsigned.encode_to_vec());
    format!("openledger/datanet/update/v1\n{}\n{}", request.id, digest.to_hex()).into_bytes()
}

/// `openledger/contribution/v1\n<datanet id>\n<file name>\n<file BLAKE3 hex>\n<account id or ->`.
pub fn contribution_message(
    datanet_id: &str,
    file_name: &str,
    file_hash: &ContentHash,
    account: Option<u128>,
) -> Vec<u8> {
    let account = account.map_or_else(|| "-".to_owned(), |id| id.to_string());
    format!("openledger/contribution/v1\n{datanet_id}\n{file_name}\n{}\n{account}", file_hash.to_hex()).into_bytes()
}

/// `openledger/review/v1\n<datanet id>\n<contribution id>\n<approve|reject>\n<reason>`.
pub fn review_message(datanet_id: &str, contribution_id: &str, approve: bool, reason: &str) -> Vec<u8> {
    let verdict = if approve { "approve" } else { "reject" };
    format!("openledger/review/v1\n{datanet_id}\n{contribution_id}\n{verdict}\n{reason}").into_bytes()
}

/// `openledger/remove-record/v1\n<datanet id>\n<record BLAKE3 hex>\n<signed at, Unix seconds>`.
pub fn remove_message(datanet_id: &str, record: &ContentHash, signed_at: i64) -> Vec<u8> {
    format!("openledger/remove-record/v1\n{datanet_id}\n{}\n{signed_at}", record.to_hex()).into_bytes()
}

/// `openledger/publish/v1\n<datanet id>\n<signed at, Unix seconds>`.
pub fn publish_message(datanet_id: &str, signed_at: i64) -> Vec<u8> {
    format!("openledger/publish/v1\n{datanet_id}\n{signed_at}").into_bytes()
}

/// `openledger/access-request/v1\n<datanet id>\n<purpose>`.
pub fn access_request_message(datanet_id: &str, purpose: &str) -> Vec<u8> {
    format!("openledger/access-request/v1\n{datanet_id}\n{purpose}").into_bytes()
}

/// `openledger/access-decision/v1\n<datanet id>\n<grant id>\n<approve|deny>\n<signed at>`.
pub fn access_decision_message(datanet_id: &str, grant_id: &str, approve: bool, signed_at: i64) -> Vec<u8> {
    let verdict = if approve { "approve" } else { "deny" };
    format!("openledger/access-decision/v1\n{datanet_id}\n{grant_id}\n{verdict}\n{signed_at}").into_bytes()
}

/// Now, in Unix seconds (what `signed_at` fields carry).
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs() as i64)
        .unwrap_or(0)
}

/// Refuses a signature made more than [`CALLER_CLOCK_SKEW_SECONDS`] from now: a captured
/// request cannot be replayed later.
pub fn check_fresh(signed_at: i64, now_unix: i64) -> Result<(), DatanetError> {
    if (now_unix - signed_at).abs() > CALLER_CLOCK_SKEW_SECONDS {
        return Err(DatanetError::new(
            ErrorCode::Unauthenticated,
            format!(
                "signed_at {signed_at} is more than {CALLER_CLOCK_SKEW_SECONDS} s from the server's clock ({now_unix}): sign the request again"
            ),
        ));
    }
    Ok(())
}

/// `openledger/caller/v1\n<unix seconds>`: signed into request metadata (`x-openledger-key`,
/// `x-openledger-timestamp`, `x-openledger-signature`, hex) to read private Datanets.
pub fn caller_message(unix_seconds: i64) -> Vec<u8> {
    format!("openledger/caller/v1\n{unix_seconds}").into_bytes()
}

/// Checks that `signature` by `public_key` signs `message`; returns the key.
pub fn verify(public_key: &[u8], signature: &[u8], message: &[u8]) -> Result<Key, DatanetError> {
    let key: Key = public_key.try_into().map_err(|_| {
        DatanetError::new(
            ErrorCode::InvalidArgument,
            format!("signature.public_key must be 32 bytes (ed25519), got {}", public_key.len()),
        )
    })?;
    let signature: [u8; 64] = signature.try_into().map_err(|_| {
        DatanetError::new(
            ErrorCode::InvalidArgument,
            format!("signature.signature must be 64 bytes (ed25519), got {}", signature.len()),
        )
    })?;
    VerifyingKey::from_bytes(&key)
        .and_then(|verifying| verifying.verify_strict(message, &Signature::from_bytes(&signature)))
        .map_err(|_| {
            DatanetError::new(
                ErrorCode::Unauthenticated,
                format!(
                    "the signature does not verify: it must sign {:?} with the key's ed25519 secret",
                    String::from_utf8_lossy(message)
                ),
            )
        })?;
    Ok(key)
}

/// Signs `message` (for clients and tests): the wire `Signature`.
pub fn sign(key: &SigningKey, message: &[u8]) -> openledger_proto::common::v1::Signature {
    openledger_proto::common::v1::Signature {
        public_key: key.verifying_key().to_bytes().to_vec(),
        signature: key.sign(message).to_bytes().to_vec(),
    }
}

/// Checks a signed-caller triple (hex key, unix seconds, hex signature) against `now`.
pub fn verify_caller(key_hex: &str, timestamp: &str, signature_hex: &str, now_unix: i64) -> Result<Key, DatanetError> {
    let bad = |what: &str| DatanetError::new(ErrorCode::Unauthenticated, format!("caller identity: {what}"));
    let key = hex::decode(key_hex).map_err(|_| bad("x-openledger-key must be hex"))?;
    let signature = hex::decode(signature_hex).map_err(|_| bad("x-openledger-signature must be hex"))?;
    let at: i64 = timestamp.parse().map_err(|_| bad("x-openledger-timestamp must be Unix seconds"))?;
    check_fresh(at, now_unix)?;
    verify(&key, &signature, &caller_message(at))
}
