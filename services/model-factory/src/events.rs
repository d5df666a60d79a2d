//! The registry's events (`AdapterChanged`), written to the outbox in the transaction that
//! makes the change: `<prefix>.modelfactory.adapter.registered`, `.updated` and `.unlisted`,
//! under the configured subject prefix (`ol` by default).

use openledger_proto::events::v1::AdapterChanged;
use openledger_store::outbox::NewEvent;
use prost::Message;
use sea_orm::ConnectionTrait;

use crate::RegistryError;

/// The service's name as the outbox's producer (what the runtime's relay publishes).
pub const PRODUCER: &str = openledger_core::ServiceKind::ModelFactory.name();

/// What happened to an adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Registered,
    Updated,
    Unlisted,
}

/// The subjects under one prefix.
#[derive(Clone, Debug)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.trim_end_matches('.').to_owned() }
    }

    /// The prefix without its trailing dot (`ol`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn of(&self, change: Change) -> String {
        let name = match change {
            Change::Registered => "registered",
            Change::Updated => "updated",
            Change::Unlisted => "unlisted",
        };
        format!("{}.modelfactory.adapter.{name}", self.prefix)
    }
}

impl Default for Subjects {
    fn default() -> Self {
        Self::new("ol")
    }
}

/// Writes `event` to the outbox on `txn`.
pub async fn enqueue<C: ConnectionTrait>(
    txn: &C,
    subjects: &Subjects,
    change: Change,
    event: &AdapterChanged,
) -> Result<(), RegistryError> {
    openledger_store::outbox::enqueue(txn, PRODUCER, NewEvent::new(subjects.of(change), event.encode_to_vec())).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_the_configured_prefix() {
        assert_eq!(Subjects::default().of(Change::Registered), "ol.modelfactory.adapter.registered");
        assert_eq!(Subjects::new("test.").of(Change::Unlisted), "test.modelfactory.adapter.unlisted");
    }
}
