//! Sortable identifiers: UUIDv7, so ids created later sort later (index-friendly, and a
//! rough creation time can be read back from the id).

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A time-ordered unique id (UUIDv7). Printed in the canonical hyphenated form.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Id(Uuid);

impl Id {
    /// A fresh id; ids made later in the same process compare greater.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    /// Milliseconds since the Unix epoch at which the id was made, when it is a v7 id.
    pub fn timestamp_ms(&self) -> Option<u64> {
        let (seconds, nanos) = self.0.get_timestamp()?.to_unix();
        Some(seconds * 1000 + u64::from(nanos) / 1_000_000)
    }
}

impl Default for Id {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({self})")
    }
}

impl FromStr for Id {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_ids_sort_later_and_round_trip_through_text() {
        let ids: Vec<Id> = (0..1000).map(|_| Id::new()).collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
        let parsed: Id = ids[7].to_string().parse().expect("parse");
        assert_eq!(parsed, ids[7]);
        assert!(ids[0].timestamp_ms().expect("v7") > 1_700_000_000_000);
    }

    #[test]
    fn rejects_text_that_is_not_a_uuid() {
        assert!("not-an-id".parse::<Id>().is_err());
    }
}
