//! `/v1/adapters/**`: the adapter registry's REST routes, forwarded to model-factory.
//!
//! SKELETON: the issue-17 registry work fills this module.

use axum::Router;
use openledger_runtime::clients::ServiceChannel;

/// Routes under `/v1/adapters`.
pub fn routes(_model_factory: ServiceChannel) -> Router {
    Router::new()
}
