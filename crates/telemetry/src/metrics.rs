//! The process-wide Prometheus registry. Components register their own metric families
//! under a prefix; `/metrics` encodes the registry in the text exposition format.

use std::sync::Arc;

use parking_lot::Mutex;

use prometheus_client::{encoding::text::encode, registry::Registry};

/// A shared handle to the process's metric registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self { registry: Arc::new(Mutex::new(Registry::with_prefix("openledger"))) }
    }

    /// Registers metric families through `register`, under `openledger_<prefix>_`.
    pub fn register(&self, prefix: &str, register: impl FnOnce(&mut Registry)) {
        let mut registry = self.registry.lock();
        register(registry.sub_registry_with_prefix(prefix));
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let registry = self.registry.lock();
        let mut text = String::new();
        encode(&mut text, &registry).expect("writing to a String cannot fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn registered_counters_appear_in_the_text_format() {
        let metrics = Metrics::new();
        let published: Counter = Counter::default();
        metrics.register("bus", |registry| registry.register("published", "messages published", published.clone()));
        published.inc_by(3);
        let text = metrics.encode();
        assert!(text.contains("openledger_bus_published_total 3"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
