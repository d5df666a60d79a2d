//! Serving metrics on `/metrics`: time to first token, inter-token and request latency, tokens
//! in and out, queue depth, running batch size, per-adapter requests and tokens.

/// The serving metrics.
#[derive(Clone, Default)]
pub struct ServingMetrics {}
