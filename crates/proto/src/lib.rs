//! Generated protobuf messages and tonic services for every OpenLedger API, compiled from
//! `proto/` at build time with protox. Written by hand: the module tree, `Uint128` conversions and
//! the API names of enum values.

#![allow(clippy::all, missing_docs, unreachable_pub)]

pub mod openledger {
    pub mod common {
        pub mod v1 {
            tonic::include_proto!("openledger.common.v1");
        }
    }
    pub mod events {
        pub mod v1 {
            tonic::include_proto!("openledger.events.v1");
        }
    }
    pub mod ledger {
        pub mod v1 {
            tonic::include_proto!("openledger.ledger.v1");
        }
    }
    pub mod datanet {
        pub mod v1 {
            tonic::include_proto!("openledger.datanet.v1");
        }
    }
    pub mod modelfactory {
        pub mod v1 {
            tonic::include_proto!("openledger.modelfactory.v1");
        }
    }
    pub mod attribution {
        pub mod v1 {
            tonic::include_proto!("openledger.attribution.v1");
        }
    }
    pub mod inference {
        pub mod v1 {
            tonic::include_proto!("openledger.inference.v1");
        }
    }
}

pub use openledger::{attribution, common, datanet, events, inference, ledger, modelfactory};

impl From<u128> for common::v1::Uint128 {
    fn from(value: u128) -> Self {
        Self { high: (value >> 64) as u64, low: value as u64 }
    }
}

impl From<common::v1::Uint128> for u128 {
    fn from(value: common::v1::Uint128) -> Self {
        (u128::from(value.high) << 64) | u128::from(value.low)
    }
}

/// The value of an optional `Uint128` field; absent means 0, as proto3 treats scalars.
pub fn u128_of(value: Option<&common::v1::Uint128>) -> u128 {
    value.map_or(0, |value| u128::from(*value))
}

/// A `u128` for an optional `Uint128` field.
pub fn uint128(value: u128) -> Option<common::v1::Uint128> {
    Some(value.into())
}

/// A time in Unix milliseconds as a protobuf `Timestamp` (negative ones too: `nanos` stays in
/// `0..1e9`, as the type requires).
pub fn timestamp(unix_ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: unix_ms.div_euclid(1000), nanos: (unix_ms.rem_euclid(1000) * 1_000_000) as i32 }
}

/// A protobuf `Timestamp` as Unix milliseconds (sub-millisecond nanos dropped; saturating).
pub fn unix_ms(at: &prost_types::Timestamp) -> i64 {
    at.seconds.saturating_mul(1000).saturating_add(i64::from(at.nanos) / 1_000_000)
}

/// The encoded `FileDescriptorSet` of every OpenLedger proto (and the well-known types they
/// import), for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/openledger_descriptor.bin"));

/// Fully qualified names of the gRPC services, one per platform service.
pub mod service_names {
    pub const LEDGER: &str = "openledger.ledger.v1.LedgerService";
    pub const DATANET: &str = "openledger.datanet.v1.DatanetService";
    pub const MODEL_FACTORY: &str = "openledger.modelfactory.v1.ModelFactoryService";
    pub const ATTRIBUTION: &str = "openledger.attribution.v1.AttributionService";
    pub const INFERENCE: &str = "openledger.inference.v1.InferenceService";
}

impl datanet::v1::ContributionStatus {
    /// The status's one name in events and REST (snake case). `Unspecified` is an upload still
    /// being received (its placeholder): `submitted`.
    pub fn api_name(self) -> &'static str {
        match self {
            Self::Unspecified => "submitted",
            Self::PendingReview => "pending_review",
            Self::Accepted => "accepted",
            Self::Rejected => "rejected",
            Self::Duplicate => "duplicate",
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn timestamps_round_trip_unix_milliseconds() {
        for ms in [0, 1, 999, 1_500, 1_796_574_811_123, -1, -1_500] {
            let at = timestamp(ms);
            assert!((0..1_000_000_000).contains(&at.nanos), "{ms}: {at:?}");
            assert_eq!(unix_ms(&at), ms);
        }
        assert_eq!(timestamp(1_500), prost_types::Timestamp { seconds: 1, nanos: 500_000_000 });
        assert_eq!(unix_ms(&prost_types::Timestamp { seconds: i64::MAX, nanos: 0 }), i64::MAX);
    }

    #[test]
    fn uint128_round_trips_every_bit() {
        for value in [0, 1, u128::from(u64::MAX), u128::from(u64::MAX) + 1, u128::MAX] {
            assert_eq!(u128_of(uint128(value).as_ref()), value);
        }
        assert_eq!(u128_of(None), 0);
    }

    #[test]
    fn descriptor_set_holds_every_service() {
        let set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
        let services: Vec<String> = set
            .file
            .iter()
            .flat_map(|file| file.service.iter().map(move |service| format!("{}.{}", file.package(), service.name())))
            .collect();
        for name in [
            service_names::LEDGER,
            service_names::DATANET,
            service_names::MODEL_FACTORY,
            service_names::ATTRIBUTION,
            service_names::INFERENCE,
        ] {
            assert!(services.iter().any(|s| s == name), "{name} missing from {services:?}");
        }
    }

    #[test]
    fn contribution_statuses_have_one_snake_case_name_each() {
        use datanet::v1::ContributionStatus as S;
        let all = [S::Unspecified, S::PendingReview, S::Accepted, S::Rejected, S::Duplicate];
        let names: std::collections::BTreeSet<&str> = all.iter().map(|status| status.api_name()).collect();
        assert_eq!(names.len(), all.len());
        assert!(names.iter().all(|name| name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
        assert_eq!(S::Unspecified.api_name(), "submitted", "the placeholder of an upload in progress");
    }
}
