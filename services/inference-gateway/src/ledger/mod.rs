//! The ledger's routes over REST, forwarded to its gRPC API: `accounts` (`/v1/accounts`,
//! an account, its transfers), `governance` (stake and unstake under `/v1/accounts/{id}`,
//! parameters, proposals and votes under `/v1/governance`). Amounts are decimal strings of
//! base units (OPEN has 18 decimals); ids are decimal strings of u128.

pub mod accounts;
pub mod governance;

use axum::Router;
use openledger_proto::ledger::v1::ledger_service_client::LedgerServiceClient;
use openledger_runtime::clients::ServiceChannel;
use tonic::transport::Channel;

use crate::edge::{ApiError, Upstream};

/// The ledger as the state of its routes.
pub type Ledger = Upstream<LedgerServiceClient<Channel>>;

/// Every ledger route.
pub fn routes(channel: ServiceChannel) -> Router {
    let ledger = Ledger::new(channel, LedgerServiceClient::new);
    accounts::routes().merge(governance::routes()).with_state(ledger)
}

/// A decimal u128 from a path or body field named `what`.
pub(crate) fn parse_u128(text: &str, what: &str) -> Result<u128, ApiError> {
    text.parse::<u128>().map_err(|_| ApiError::invalid(format!("{what} {text:?} must be a decimal number below 2^128")))
}
