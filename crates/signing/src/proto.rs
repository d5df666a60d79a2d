//! The protobuf side of signing, for crates that already speak it (the `proto` feature): the
//! wire `Signature` of a [`Signed`], a tonic request carrying a signed caller identity, and
//! the protobuf → canonical conversions of a Datanet definition and edit, so a client, a
//! service checking the signature and the operator all sign the same bytes. Verification stays
//! with the services.

use ed25519_dalek::SigningKey;
use openledger_proto::{common::v1 as common, datanet::v1 as pb};

use crate::{
    Signed,
    canonical::{ContributionPolicy, DatanetDefinition, DatanetEdit},
};

impl From<Signed> for common::Signature {
    fn from(signed: Signed) -> Self {
        Self { public_key: signed.public_key.to_vec(), signature: signed.signature.to_vec() }
    }
}

/// Signs `message` with `key` (for clients and tests): the wire `Signature`.
pub fn sign(key: &SigningKey, message: &[u8]) -> common::Signature {
    crate::sign(key, message).into()
}

/// `message` as a request signed by `key` as its caller now: the [`crate::headers::CALLER`]
/// metadata, which services check with [`crate::verify_caller`].
pub fn signed_caller<T>(message: T, key: &SigningKey) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for (name, value) in crate::caller_headers(key, crate::now_unix()) {
        // Hex and decimal digits are always valid metadata values.
        if let Ok(value) = value.parse() {
            request.metadata_mut().insert(name, value);
        }
    }
    request
}

/// What the owner signs to create `datanet`: [`crate::datanet_create_message`] of its
/// definition as sent (the fields the server assigns, id, owner and created_at, are not part
/// of it).
pub fn datanet_create_message(datanet: &pb::Datanet) -> Vec<u8> {
    crate::datanet_create_message(&datanet_definition(datanet))
}

/// What the owner signs to edit a Datanet: [`crate::datanet_update_message`] of the request's
/// editable fields, its `update_mask` and `signed_at`.
pub fn datanet_update_message(request: &pb::UpdateDatanetRequest) -> Vec<u8> {
    let datanet = request.datanet.clone().unwrap_or_default();
    let edit = DatanetEdit {
        summary: datanet.summary,
        description_markdown: datanet.description_markdown,
        tags: datanet.tags,
        policy: contribution_policy(datanet.policy.as_ref()),
        update_mask: request.update_mask.clone(),
    };
    crate::datanet_update_message(&request.id, &edit, request.signed_at)
}

/// The canonical definition of a Datanet as sent, in the REST spellings: enum values by their
/// lowercase names without prefix (the number, for a value this build does not know).
fn datanet_definition(datanet: &pb::Datanet) -> DatanetDefinition {
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
        policy: contribution_policy(datanet.policy.as_ref()),
        validators: datanet.validators.clone(),
    }
}

/// An absent policy signs as the all-default one, which the service applies to both alike.
fn contribution_policy(policy: Option<&pb::ContributionPolicy>) -> ContributionPolicy {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

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
        let definition = datanet_definition(&datanet);
        assert_eq!((definition.schema.as_str(), definition.visibility.as_str()), ("instruction_response", "public"));
        let json = definition.canonical_json();
        assert!(json.contains(r#""stake_per_contribution":"7""#), "{json}");
        assert!(json.contains(&format!(r#""validators":["{}"]"#, "ab".repeat(32))), "{json}");
        assert!(!json.contains("ignored") && !json.contains(&"09".repeat(32)), "server-assigned fields: {json}");
        assert_eq!(datanet_create_message(&datanet), crate::datanet_create_message(&definition));
        let unset = datanet_definition(&pb::Datanet { schema: 42, ..Default::default() });
        assert_eq!((unset.schema.as_str(), unset.visibility.as_str()), ("42", "unspecified"));
        assert_eq!(
            unset.policy,
            datanet_definition(&pb::Datanet { policy: Some(Default::default()), ..Default::default() }).policy,
            "no policy signs as the all-default policy, which the service applies to both alike"
        );
    }

    /// An edit signs the editable fields, the mask and the time; not what the mask leaves out
    /// of the request's other fields (name, slug), which an update cannot change.
    #[test]
    fn an_edit_signs_its_editable_fields_mask_and_time() {
        let request = pb::UpdateDatanetRequest {
            id: "dn_1".into(),
            datanet: Some(pb::Datanet {
                name: "not editable".into(),
                summary: "new".into(),
                policy: Some(pb::ContributionPolicy { review_all: true, ..Default::default() }),
                ..Default::default()
            }),
            update_mask: vec!["summary".into(), "policy".into()],
            signed_at: 1_800_000_000,
            ..Default::default()
        };
        let edit = DatanetEdit {
            summary: "new".into(),
            description_markdown: String::new(),
            tags: Vec::new(),
            policy: ContributionPolicy { review_all: true, ..Default::default() },
            update_mask: vec!["summary".into(), "policy".into()],
        };
        assert_eq!(datanet_update_message(&request), crate::datanet_update_message("dn_1", &edit, 1_800_000_000));
        let renamed = pb::UpdateDatanetRequest {
            datanet: Some(pb::Datanet { name: "other".into(), ..request.datanet.clone().unwrap_or_default() }),
            ..request.clone()
        };
        assert_eq!(datanet_update_message(&renamed), datanet_update_message(&request));
        let later = pb::UpdateDatanetRequest { signed_at: 1_800_000_001, ..request.clone() };
        assert_ne!(datanet_update_message(&later), datanet_update_message(&request));
    }

    #[test]
    fn a_wire_signature_verifies_over_its_message() {
        let signature = sign(&key(1), b"m");
        assert_eq!(
            crate::verify(&signature.public_key, &signature.signature, b"m"),
            Ok(key(1).verifying_key().to_bytes())
        );
    }

    #[test]
    fn a_signed_caller_carries_the_caller_headers_that_verify() {
        let request = signed_caller((), &key(2));
        let value = |name: &str| request.metadata().get(name).and_then(|value| value.to_str().ok()).expect(name);
        let [key_hex, at, signature_hex] = crate::headers::CALLER.map(value);
        assert_eq!(
            crate::verify_caller(key_hex, at, signature_hex, crate::now_unix()),
            Ok(key(2).verifying_key().to_bytes())
        );
    }
}
