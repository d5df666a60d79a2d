//! The operator's Prometheus metrics: reconciles and failures per kind, writes to the API.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: String,
}

#[derive(Default)]
pub struct Metrics {
    reconciles: Family<Kind, Counter>,
    failures: Family<Kind, Counter>,
    writes: Family<Kind, Counter>,
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("reconciles", "Reconciles run", self.reconciles.clone());
        registry.register("reconcile_failures", "Reconciles that failed", self.failures.clone());
        registry.register("writes", "Objects created, changed or deleted", self.writes.clone());
    }

    pub fn reconciled(&self, kind: &str) {
        self.reconciles.get_or_create(&Kind { kind: kind.to_owned() }).inc();
    }

    pub fn failure(&self, kind: &str) {
        self.failures.get_or_create(&Kind { kind: kind.to_owned() }).inc();
    }

    pub fn wrote(&self, kind: &str) {
        self.writes.get_or_create(&Kind { kind: kind.to_owned() }).inc();
    }
}
