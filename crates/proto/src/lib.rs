//! Generated protobuf messages and tonic services for every OpenLedger API, compiled from
//! `proto/` at build time with protox. Nothing here is written by hand except the module tree.

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

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

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
}
