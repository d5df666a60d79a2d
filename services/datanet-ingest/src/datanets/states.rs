//! What the integers in state columns mean: record, bond and grant states (enums here), and
//! the stored protobuf enums (contribution status, schema, visibility). Every conversion from
//! a stored value is checked: a value that cannot be decoded is an error, never a default.

use openledger_core::ErrorCode;
use openledger_proto::datanet::v1::{ContributionStatus, RecordSchema as WireSchema, Visibility};

use crate::{DatanetError, parse::RecordSchema};

/// A stored value this version cannot decode: the row is corrupt or a newer version wrote it.
pub(super) fn corrupt(what: &str, value: impl std::fmt::Display) -> DatanetError {
    DatanetError::new(
        ErrorCode::Internal,
        format!("the stored {what} {value} cannot be decoded: the row is corrupt or was written by a newer version"),
    )
}

/// An enum stored as a small integer, with checked decoding and plain encoding.
macro_rules! stored_enum {
    ($(#[$meta:meta])* $name:ident ($what:literal) {
        $($(#[$variant_meta:meta])* $variant:ident = $value:literal,)+
    }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(super) enum $name {
            $($(#[$variant_meta])* $variant = $value,)+
        }

        impl From<$name> for i16 {
            fn from(state: $name) -> i16 {
                state as i16
            }
        }

        impl From<$name> for sea_orm::Value {
            fn from(state: $name) -> sea_orm::Value {
                sea_orm::Value::from(state as i16)
            }
        }

        impl TryFrom<i16> for $name {
            type Error = DatanetError;

            fn try_from(stored: i16) -> Result<Self, DatanetError> {
                match stored {
                    $($value => Ok(Self::$variant),)+
                    _ => Err(corrupt($what, stored)),
                }
            }
        }
    };
}

stored_enum!(
    /// A record's state (`datanet_records.status`).
    RecordStatus ("record status") {
        Pending = 0,
        Accepted = 1,
        Rejected = 2,
        Duplicate = 3,
        Removed = 4,
    }
);

stored_enum!(
    /// A contribution's bond (`datanet_contributions.bond_state`): decided states wait for the
    /// ledger.
    BondState ("bond state") {
        None = 0,
        Held = 1,
        Released = 2,
        Slashed = 3,
        ToRelease = 4,
        ToSlash = 5,
        /// Being held for a contribution still being received.
        Holding = 6,
        /// An accepted contribution's bond, held until its quality is known: an assessment of
        /// a sealed version containing it, or [`crate::limits::BOND_QUALITY_TIMEOUT_MS`].
        QualityPending = 7,
    }
);

impl BondState {
    /// The name the API shows: a decided bond the ledger has not taken yet is still held.
    pub(super) fn api_name(self) -> &'static str {
        match self {
            Self::Held | Self::ToRelease | Self::ToSlash | Self::Holding => "held",
            Self::QualityPending => "held: quality pending",
            Self::Released => "released",
            Self::Slashed => "slashed",
            Self::None => "none",
        }
    }
}

stored_enum!(
    /// An access grant's state (`datanet_grants.state`).
    GrantState ("grant state") {
        Requested = 0,
        Approved = 1,
        Denied = 2,
    }
);

impl GrantState {
    pub(super) fn api_name(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Approved => "approved",
            Self::Denied => "denied",
        }
    }
}

/// A stored contribution status (`Unspecified` is the placeholder of an upload in progress).
pub(super) fn contribution_status(stored: i16) -> Result<ContributionStatus, DatanetError> {
    ContributionStatus::try_from(i32::from(stored)).map_err(|_| corrupt("contribution status", stored))
}

/// A stored Datanet visibility (public or private).
pub(super) fn visibility(stored: i16) -> Result<Visibility, DatanetError> {
    match Visibility::try_from(i32::from(stored)) {
        Ok(visibility @ (Visibility::Public | Visibility::Private)) => Ok(visibility),
        Ok(Visibility::Unspecified) | Err(_) => Err(corrupt("visibility", stored)),
    }
}

/// A stored Datanet schema.
pub(super) fn stored_schema(stored: i16) -> Result<RecordSchema, DatanetError> {
    schema(i32::from(stored)).ok_or_else(|| corrupt("schema", stored))
}

/// The record schema a request names.
pub(super) fn schema_of(wire: i32) -> Result<RecordSchema, DatanetError> {
    schema(wire).ok_or_else(|| {
        DatanetError::new(ErrorCode::InvalidArgument, "schema must be free_text, instruction_response or labelled_text")
    })
}

/// The record schema a wire value names, if it names one.
fn schema(wire: i32) -> Option<RecordSchema> {
    match WireSchema::try_from(wire) {
        Ok(WireSchema::FreeText) => Some(RecordSchema::FreeText),
        Ok(WireSchema::InstructionResponse) => Some(RecordSchema::InstructionResponse),
        Ok(WireSchema::LabelledText) => Some(RecordSchema::LabelledText),
        Ok(WireSchema::Unspecified) | Err(_) => None,
    }
}

/// A stored record hash (32 bytes).
pub(super) fn stored_hash(stored: &[u8]) -> Result<openledger_core::ContentHash, DatanetError> {
    <[u8; 32]>::try_from(stored)
        .map(openledger_core::ContentHash::from_bytes)
        .map_err(|_| corrupt("record hash", hex::encode(stored)))
}

/// A stored ledger account id (16 bytes, big-endian).
pub(super) fn stored_account(stored: &[u8]) -> Result<u128, DatanetError> {
    <[u8; 16]>::try_from(stored).map(u128::from_be_bytes).map_err(|_| corrupt("account id", hex::encode(stored)))
}

/// A JSON column (tags, labels, counts) decoded, or an error naming it.
pub(super) fn stored_json<T: serde::de::DeserializeOwned>(what: &str, stored: &str) -> Result<T, DatanetError> {
    serde_json::from_str(stored).map_err(|error| corrupt(what, format!("{stored:?} ({error})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_states_round_trip_and_unknown_values_are_errors() {
        for state in [RecordStatus::Pending, RecordStatus::Accepted, RecordStatus::Removed] {
            assert_eq!(RecordStatus::try_from(i16::from(state)).expect("known"), state);
        }
        for state in [BondState::None, BondState::ToSlash, BondState::Holding, BondState::QualityPending] {
            assert_eq!(BondState::try_from(i16::from(state)).expect("known"), state);
        }
        assert_eq!(GrantState::try_from(2).expect("known"), GrantState::Denied);
        for unknown in [-1, 8, i16::MAX] {
            assert_eq!(BondState::try_from(unknown).expect_err("unknown").code, ErrorCode::Internal);
            assert!(RecordStatus::try_from(unknown).is_err() && GrantState::try_from(unknown).is_err());
            assert!(contribution_status(unknown).is_err() && visibility(unknown).is_err());
            assert!(stored_schema(unknown).is_err());
        }
        assert!(visibility(0).is_err(), "a stored Datanet is public or private");
        assert!(stored_schema(0).is_err());
        assert!(stored_json::<Vec<String>>("tags", "[\"a\"").is_err());
        assert_eq!(stored_account(&7u128.to_be_bytes()).expect("16 bytes"), 7);
        assert_eq!(stored_account(&[7; 15]).expect_err("15 bytes").code, ErrorCode::Internal);
    }
}
