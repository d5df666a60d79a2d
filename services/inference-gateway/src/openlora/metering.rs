//! Metering on the ledger: hold the largest fee a request can cost before generating (402
//! `insufficient_funds` when the account cannot cover it), capture the actual fee into escrow
//! after (a cancelled request pays for the tokens it produced) and release the rest.

use openledger_runtime::clients::ServiceChannel;

/// Holds and captures inference fees.
#[derive(Clone)]
pub struct Metering {
    #[allow(dead_code)]
    ledger: ServiceChannel,
}

impl Metering {
    pub fn new(ledger: ServiceChannel) -> Self {
        Self { ledger }
    }
}
