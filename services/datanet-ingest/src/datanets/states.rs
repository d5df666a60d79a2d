//! The states stored as small integers (records, bonds, grants) and the names the API shows
//! for them; decoding of stored schema values.

use openledger_proto::datanet::v1::{ContributionStatus, RecordSchema as WireSchema};

use crate::{DatanetError, parse::RecordSchema};

use super::invalid;

/// Record states (`datanet_records.status`).
pub(super) mod record_status {
    pub const PENDING: i16 = 0;
    pub const ACCEPTED: i16 = 1;
    pub const REJECTED: i16 = 2;
    pub const DUPLICATE: i16 = 3;
    pub const REMOVED: i16 = 4;
}

/// Bond states (`datanet_contributions.bond_state`): decided states wait for the ledger.
pub(super) mod bond_state {
    pub const NONE: i16 = 0;
    pub const HELD: i16 = 1;
    pub const RELEASED: i16 = 2;
    pub const SLASHED: i16 = 3;
    pub const TO_RELEASE: i16 = 4;
    pub const TO_SLASH: i16 = 5;
    /// Being held for a contribution still being received.
    pub const HOLDING: i16 = 6;

    pub fn name(state: i16) -> &'static str {
        match state {
            HELD | TO_RELEASE | TO_SLASH | HOLDING => "held",
            RELEASED => "released",
            SLASHED => "slashed",
            _ => "none",
        }
    }
}

/// Grant states (`datanet_grants.state`).
pub(super) mod grant_state {
    pub const REQUESTED: i16 = 0;
    pub const APPROVED: i16 = 1;
    pub const DENIED: i16 = 2;

    pub fn name(state: i16) -> &'static str {
        match state {
            APPROVED => "approved",
            DENIED => "denied",
            _ => "requested",
        }
    }
}

/// The API name of a stored contribution status (see `ContributionStatus::api_name`).
pub(super) fn status_name(status: i16) -> &'static str {
    ContributionStatus::try_from(i32::from(status)).unwrap_or(ContributionStatus::Unspecified).api_name()
}

pub(super) fn schema_of(schema: i32) -> Result<RecordSchema, DatanetError> {
    match WireSchema::try_from(schema).unwrap_or(WireSchema::Unspecified) {
        WireSchema::FreeText => Ok(RecordSchema::FreeText),
        WireSchema::InstructionResponse => Ok(RecordSchema::InstructionResponse),
        WireSchema::LabelledText => Ok(RecordSchema::LabelledText),
        WireSchema::Unspecified => Err(invalid("schema must be free_text, instruction_response or labelled_text")),
    }
}
