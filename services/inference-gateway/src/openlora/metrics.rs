//! Serving metrics on `/metrics` (prefix `openlora_`): time to first token, inter-token and
//! request latency histograms, tokens in and out, requests by outcome, and per-adapter requests
//! and tokens. The engines' own gauges (queue depth, running batch, adapter cache hits, misses,
//! evictions, bytes, load time) are registered by the engine host.

use openledger_telemetry::Metrics;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdapterLabels {
    /// The adapter id, or `base` for the base model.
    pub adapter: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `stop`, `length`, `cancelled` or `error`.
    pub outcome: String,
}

/// The serving metrics.
#[derive(Clone)]
pub struct ServingMetrics {
    pub time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
    pub request_latency: Histogram,
    pub prompt_tokens: Counter,
    pub completion_tokens: Counter,
    pub requests: Family<OutcomeLabels, Counter>,
    pub adapter_requests: Family<AdapterLabels, Counter>,
    pub adapter_tokens: Family<AdapterLabels, Counter>,
}

impl Default for ServingMetrics {
    fn default() -> Self {
        Self {
            time_to_first_token: Histogram::new([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            inter_token_latency: Histogram::new([0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28]),
            request_latency: Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]),
            prompt_tokens: Counter::default(),
            completion_tokens: Counter::default(),
            requests: Family::default(),
            adapter_requests: Family::default(),
            adapter_tokens: Family::default(),
        }
    }
}

impl ServingMetrics {
    /// Creates the metrics and registers them on `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self::default();
        metrics.register("openlora", |registry| {
            registry.register(
                "time_to_first_token_seconds",
                "from the request's arrival to its first generated token",
                this.time_to_first_token.clone(),
            );
            registry.register(
                "inter_token_latency_seconds",
                "between consecutive tokens of one sequence",
                this.inter_token_latency.clone(),
            );
            registry.register(
                "request_latency_seconds",
                "from a generation request's arrival to its last token",
                this.request_latency.clone(),
            );
            registry.register("prompt_tokens", "prompt tokens of completed requests", this.prompt_tokens.clone());
            registry.register("completion_tokens", "tokens generated", this.completion_tokens.clone());
            registry.register("requests", "generation requests by how they ended", this.requests.clone());
            registry.register("adapter_requests", "generation requests per adapter", this.adapter_requests.clone());
            registry.register("adapter_tokens", "tokens generated per adapter", this.adapter_tokens.clone());
        });
        this
    }
}
