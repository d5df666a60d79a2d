//! The registry side of [`openledger_signing`], which defines every signed message: the
//! protobuf → message conversions of an import, an update and an unlisting. Every signature
//! failure is `UNAUTHENTICATED`.

use openledger_core::ContentHash;
use openledger_proto::{common::v1::Signature, modelfactory::v1 as pb, u128_of};
use openledger_signing::{AdapterFiles, AdapterImport, AdapterUpdate, Key};

use crate::RegistryError;

/// The REST and message spelling of a visibility (`public`, `private`, `allow_list`);
/// `unspecified` for 0 and `unknown` for a value this build does not know.
pub fn visibility_name(visibility: i32) -> &'static str {
    match pb::Visibility::try_from(visibility) {
        Ok(pb::Visibility::Public) => "public",
        Ok(pb::Visibility::Private) => "private",
        Ok(pb::Visibility::AllowList) => "allow_list",
        Ok(pb::Visibility::Unspecified) => "unspecified",
        Err(_) => "unknown",
    }
}

/// Account ids of a repeated `Uint128` field.
pub fn accounts(ids: &[openledger_proto::common::v1::Uint128]) -> Vec<u128> {
    ids.iter().map(|id| u128::from(*id)).collect()
}

/// What the owner signs to import `request`; `files` are the hashes of inline files (`None`
/// for an import from `source`).
pub fn import_message(request: &pb::ImportAdapterRequest, files: Option<(&ContentHash, &ContentHash)>) -> Vec<u8> {
    let allowed = accounts(&request.allowed_accounts);
    openledger_signing::adapter_import_message(&AdapterImport {
        adapter_id: &request.id,
        base_model: &request.base_model,
        owner_account: u128_of(request.owner_account_id.as_ref()),
        files: match files {
            Some((config, weights)) => AdapterFiles::Upload { config, weights },
            None => AdapterFiles::Source(&request.source),
        },
        price_in: u128_of(request.price_in.as_ref()),
        price_out: u128_of(request.price_out.as_ref()),
        visibility: visibility_name(request.visibility),
        allowed_accounts: &allowed,
        signed_at: request.signed_at,
        description: &request.description,
    })
}

/// What the owner signs to change an adapter.
pub fn update_message(request: &pb::UpdateAdapterRequest) -> Vec<u8> {
    let allowed = accounts(&request.allowed_accounts);
    openledger_signing::adapter_update_message(&AdapterUpdate {
        adapter_id: &request.id,
        price_in: request.price_in.map(u128::from),
        price_out: request.price_out.map(u128::from),
        visibility: request.visibility.map(visibility_name),
        allowed_accounts: request.set_allowed_accounts.then_some(allowed.as_slice()),
        signed_at: request.signed_at,
        description: request.description.as_deref(),
    })
}

/// What the owner signs to unlist an adapter.
pub fn unlist_message(adapter_id: &str, signed_at: i64) -> Vec<u8> {
    openledger_signing::adapter_unlist_message(adapter_id, signed_at)
}

/// The signer of `message`, checked (and `signed_at` within the clock-skew window).
pub fn signer(signature: Option<&Signature>, message: &[u8], signed_at: i64) -> Result<Key, RegistryError> {
    let signature = signature.ok_or_else(|| {
        RegistryError::new(
            openledger_core::ErrorCode::Unauthenticated,
            "signature is required: the owner account's key signs the request",
        )
    })?;
    let key = openledger_signing::verify(&signature.public_key, &signature.signature, message)?;
    openledger_signing::check_fresh(signed_at, openledger_signing::now_unix())?;
    Ok(key)
}

/// The proto signature of `message` by `key` (one definition, in openledger-signing).
pub use openledger_signing::proto::sign;
