//! Observability shared by every process: structured logs (pretty or JSON) with an env
//! filter, OpenTelemetry spans (exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set),
//! W3C trace-context propagation helpers for gRPC metadata and bus headers, and the
//! Prometheus registry behind `/metrics`. It does not serve HTTP; the runtime crate does.

mod metrics;
mod propagation;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

pub use metrics::Metrics;
pub use propagation::{
    HeaderExtractor, HeaderInjector, MapExtractor, MapInjector, current_trace_id, extract_context, inject_current,
    set_parent_from,
};

/// Errors raised while installing telemetry.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {filter:?}: {reason}; use a level (info) or directives (openledger=debug,info)")]
    InvalidFilter { filter: String, reason: String },
    #[error("cannot build the OTLP exporter for {endpoint}: {reason}")]
    Exporter { endpoint: String, reason: String },
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// How the process logs and traces.
#[derive(Clone, Debug)]
pub struct TelemetryConfig {
    pub service_name: String,
    pub json_logs: bool,
    /// An env-filter directive; `RUST_LOG` overrides it when set.
    pub log_filter: String,
}

/// Keeps the tracer provider alive; flushes pending spans when dropped.
#[must_use = "dropping the guard shuts telemetry down"]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// Builds the tracer provider: always present (so trace ids exist and propagate), exporting
/// over OTLP/gRPC only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
pub fn tracer_provider(service_name: &str) -> Result<SdkTracerProvider, TelemetryError> {
    let resource = Resource::builder().with_service_name(service_name.to_owned()).build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Ok(endpoint) = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|error| TelemetryError::Exporter { endpoint, reason: error.to_string() })?;
        builder = builder.with_batch_exporter(exporter);
    }
    Ok(builder.build())
}

/// Dependencies that log routine steps at INFO (sea-orm-migration: two lines per migration
/// applied at start), held to warnings unless a filter names them; the store logs the same
/// steps at debug.
const QUIETER_DEPENDENCIES: &[(&str, &str)] = &[("sea_orm_migration", "warn")];

/// `directive` plus the [`QUIETER_DEPENDENCIES`] it does not mention.
fn with_quieter_dependencies(directive: &str) -> String {
    let mut full = directive.to_owned();
    for (target, level) in QUIETER_DEPENDENCIES {
        if !directive.contains(target) {
            full.push_str(&format!(",{target}={level}"));
        }
    }
    full
}

/// Installs the global subscriber, tracer provider and W3C propagator. Call once per process.
pub fn init(config: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    let directive = std::env::var("RUST_LOG").unwrap_or_else(|_| config.log_filter.clone());
    let filter = EnvFilter::builder()
        .parse(with_quieter_dependencies(&directive))
        .map_err(|error| TelemetryError::InvalidFilter { filter: directive.clone(), reason: error.to_string() })?;
    let provider = tracer_provider(&config.service_name)?;
    let tracer = provider.tracer("openledger");
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());

    let fmt = if config.json_logs {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed()
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(TelemetryGuard { provider })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routine_dependency_logs_are_held_to_warnings_unless_the_filter_names_them() {
        assert_eq!(with_quieter_dependencies("info"), "info,sea_orm_migration=warn");
        assert_eq!(with_quieter_dependencies("debug,sea_orm_migration=info"), "debug,sea_orm_migration=info");
        for directive in ["", "info", "openledger=debug,info"] {
            assert!(EnvFilter::builder().parse(with_quieter_dependencies(directive)).is_ok(), "{directive:?}");
        }
    }
}
