//! OpenLoRA behind the REST edge: the OpenAI-compatible routes, API keys, the adapter registry's
//! routes, metering on the ledger, and the engines that generate (in this process, or replicas
//! chosen by adapter affinity in cluster mode).
//!
//! - `engines`: the [`engines::EngineHost`] seam; `engines::local` (the engine in this
//!   process), `engines::remote` (replicas over gRPC `EngineService`, consistent hashing with
//!   bounded load) and `engines::server` (what a replica serves).
//! - `keys`: API keys (`/v1/api_keys`, stored hashed), the Bearer check and per-key limits.
//! - `adapters`: `/v1/adapters/**`, forwarded to model-factory's registry.
//! - `fine_tuning`: `/v1/fine_tuning/jobs/**` (OpenAI's fine-tuning API), forwarded to
//!   model-factory's jobs for the API key's account.
//! - `attributions`: `/v1/attributions/{inference_id}` and `/v1/attribution/indexes/**`, what
//!   the attribution-worker made of each paid inference, forwarded for the API key's account.
//! - `catalog`: what `model` names: the base model or a registry adapter, with its prices and
//!   who may call it.
//! - `metering`: the ledger hold before generating and the capture after.
//! - `events`: `ol.inference.completed` through the outbox.
//! - `openai`: `/v1/chat/completions`, `/v1/completions`, `/v1/models` in OpenAI's shapes, SSE.
//! - `metrics`: serving metrics on `/metrics`.

pub mod adapters;
pub mod attributions;
pub mod catalog;
pub mod engines;
pub mod events;
pub mod fine_tuning;
pub mod keys;
pub mod metering;
pub mod metrics;
pub mod openai;

use axum::Router;
use openledger_runtime::clients::ServiceChannel;

pub use keys::Api;

/// What the OpenLoRA routes share.
#[derive(Clone)]
pub struct OpenLora {
    /// The engine host once started; until then (or without a base model) `get` gives the 503
    /// message saying why.
    pub engines: engines::EngineSlot,
    pub keys: keys::Keys,
    pub catalog: catalog::Catalog,
    pub metering: metering::Metering,
    pub metrics: metrics::ServingMetrics,
    pub events: events::Events,
    pub model_factory: ServiceChannel,
    pub attribution: ServiceChannel,
}

/// Every OpenLoRA route.
pub fn routes(state: OpenLora) -> Router {
    Router::new()
        .merge(openai::routes(state.clone()))
        .merge(keys::routes(state.keys.clone()))
        .merge(adapters::routes(state.model_factory.clone()))
        .merge(fine_tuning::routes(state.keys.clone(), state.model_factory.clone()))
        .merge(attributions::routes(state.keys.clone(), state.attribution.clone()))
}
