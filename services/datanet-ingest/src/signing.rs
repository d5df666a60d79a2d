//! The Datanet side of [`openledger_signing`], which defines every signed message: the
//! protobuf → canonical conversions of a Datanet definition and edit, and the checks with
//! their failures as [`DatanetError`]s (always `unauthenticated`).

use ed25519_dalek::SigningKey;
use openledger_proto::datanet::v1 as pb;
use openledger_signing::canonical::{ContributionPolicy, DatanetDefinition, DatanetEdit};
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

/// What the owner signs to create `datanet` (see [`openledger_signing::datanet_create_message`]).
pub fn create_message(datanet: &pb::Datanet) -> Vec<u8> {
    openledger_signing::datanet_create_message(&definition(datanet))
}

/// What the owner signs to edit a Datanet (see [`openledger_signing::datanet_update_message`]).
pub fn update_message(request: &pb::UpdateDatanetRequest) -> Vec<u8> {
    let datanet = request.datanet.clone().unwrap_or_default();
    let edit = DatanetEdit {
        summary: datanet.summary,
        description_markdown: datanet.description_markdown,
        tags: datanet.tags,
        policy: policy(datanet.policy.as_ref()),
        update_mask: request.update_mask.clone(),
    };
    openledger_signing::datanet_update_message(&request.id, &edit, request.signed_at)
}

/// `openledger/remove-record/v1`: see [`openledger_signing::remove_record_message`].
pub fn remove_message(datanet_id: &str, record: &openledger_core::ContentHash, signed_at: i64) -> Vec<u8> {
    openledger_signing::remove_record_message(datanet_id, record, signed_at)
}

/// The canonical definition of a Datanet as sent: the fields the server assigns (id, owner,
/// created_at) are not part of it.
fn definition(datanet: &pb::Datanet) -> DatanetDefinition {
    let name = |known: Option<&str>, prefix: &str, number: i32| {
        known.map_or_else(|| number.to_string(), |name| name.trim_start_matches(prefix).to_lowercase())
    };
    DatanetDefinition {
        slug: datanet.slug.clone(),
        name: datanet.name.clone(),
        summary: datanet.summary.clone(),
        description_markdown: datanet.description_markdown.clone(),
        tags: datanet.tags.clone(),
        schema: name(
            pb::RecordSchema::try_from(datanet.schema).ok().map(|schema| schema.as_str_name()),
            "RECORD_SCHEMA_",
            datanet.schema,
        ),
        label_set: datanet.label_set.clone(),
        licence: datanet.licence.clone(),
        visibility: name(
            pb::Visibility::try_from(datanet.visibility).ok().map(|visibility| visibility.as_str_name()),
            "VISIBILITY_",
            datanet.visibility,
        ),
        policy: policy(datanet.policy.as_ref()),
        validators: datanet.validators.clone(),
    }
}

fn policy(policy: Option<&pb::ContributionPolicy>) -> ContributionPolicy {
    let policy = policy.cloned().unwrap_or_default();
    ContributionPolicy {
        allow_list_only: policy.allow_list_only,
        allowed_contributors: policy.allowed_contributors,
        stake_per_contribution: policy.stake_per_contribution.map(u128::from).unwrap_or(0),
        max_bytes_per_contributor_per_day: policy.max_bytes_per_contributor_per_day,
        max_files_per_contributor_per_day: policy.max_files_per_contributor_per_day,
        max_bytes_per_day: policy.max_bytes_per_day,
        max_files_per_day: policy.max_files_per_day,
        max_file_bytes: policy.max_file_bytes,
        auto_accept_score: policy.auto_accept_score,
        reject_below_score: policy.reject_below_score,
        near_duplicate_jaccard_ppt: policy.near_duplicate_jaccard_ppt,
        review_all: policy.review_all,
    }
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

/// Signs `message` (for clients and tests): the wire `Signature`.
pub fn sign(key: &SigningKey, message: &[u8]) -> openledger_proto::common::v1::Signature {
    openledger_signing::sign(key, message).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition a REST client hashes is the one the service rebuilds from protobuf: the
    /// REST spellings (lowercase names, hex keys, decimal amounts), every field present.
    #[test]
    fn the_definition_is_the_rest_shape_of_the_protobuf_datanet() {
        let datanet = pb::Datanet {
            id: "ignored".into(),
            slug: "med-notes".into(),
            name: "Medical notes".into(),
            schema: pb::RecordSchema::InstructionResponse as i32,
            visibility: pb::Visibility::Public as i32,
            owner: vec![9; 32],
            validators: vec![vec![0xab; 32]],
            policy: Some(pb::ContributionPolicy {
                stake_per_contribution: Some(7u128.into()),
                review_all: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        let definition = definition(&datanet);
        assert_eq!((definition.schema.as_str(), definition.visibility.as_str()), ("instruction_response", "public"));
        let json = definition.canonical_json();
        assert!(json.contains(r#""stake_per_contribution":"7""#), "{json}");
        assert!(json.contains(&format!(r#""validators":["{}"]"#, "ab".repeat(32))), "{json}");
        assert!(!json.contains("ignored") && !json.contains(&"09".repeat(32)), "server-assigned fields: {json}");
        let unset = super::definition(&pb::Datanet { schema: 42, ..Default::default() });
        assert_eq!((unset.schema.as_str(), unset.visibility.as_str()), ("42", "unspecified"));
        assert_eq!(
            unset.policy,
            super::definition(&pb::Datanet { policy: Some(Default::default()), ..Default::default() }).policy,
            "no policy signs as the all-default policy, which the service applies to both alike"
        );
    }

    #[test]
    fn a_signature_failure_is_an_unauthenticated_datanet_error() {
        let error = verify(&[1; 31], &[0; 64], b"m").expect_err("short key");
        assert_eq!(error.code, openledger_core::ErrorCode::Unauthenticated);
    }
}
