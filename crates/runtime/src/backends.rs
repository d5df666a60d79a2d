//! One connection to each backend per process, made in the background with exponential
//! backoff so a service starts (healthy, not ready) even while PostgreSQL or NATS is down.

use std::{collections::BTreeMap, future::Future, sync::Arc, time::Duration};

use parking_lot::Mutex;

use object_store::ObjectStore;
use openledger_bus::{BusSettings, EventBus, InProcessBus, JetStreamBus};
use openledger_core::Config;
use openledger_telemetry::Metrics;
use prometheus_client::{encoding::EncodeLabelSet, metrics::counter::Counter, metrics::family::Family};
use sea_orm::DatabaseConnection;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The connected backends.
#[derive(Clone)]
pub struct Backends {
    pub db: DatabaseConnection,
    pub bus: Arc<dyn EventBus>,
    pub objects: Arc<dyn ObjectStore>,
}

/// Resolves to the backends once they are connected and migrated.
#[derive(Clone)]
pub struct BackendsHandle {
    receiver: watch::Receiver<Option<Backends>>,
    progress: Progress,
}

/// What the connector last saw of each backend (`database`, `bus`, `objects`), for `/readyz`
/// while not everything is connected.
#[derive(Clone, Default)]
struct Progress(Arc<Mutex<BTreeMap<&'static str, String>>>);

impl Progress {
    fn starting() -> Self {
        let progress = Self::default();
        for backend in BACKENDS {
            progress.set(backend, "connecting".to_owned());
        }
        progress
    }

    fn set(&self, backend: &'static str, state: String) {
        self.0.lock().insert(backend, state);
    }

    fn snapshot(&self) -> BTreeMap<&'static str, String> {
        self.0.lock().clone()
    }
}

const BACKENDS: [&str; 3] = ["database", "bus", "objects"];

const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(15);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabel {
    backend: String,
}

impl BackendsHandle {
    pub(crate) fn connect_in_background(config: Arc<Config>, shutdown: CancellationToken, metrics: &Metrics) -> Self {
        let (sender, receiver) = watch::channel(None);
        let progress = Progress::starting();
        let failures = Family::<BackendLabel, Counter>::default();
        metrics.register("backend", |registry| {
            registry.register("connect_failures", "failed attempts to reach a backend", failures.clone())
        });
        let connector_progress = progress.clone();
        tokio::spawn(async move {
            if let Some(backends) = connect(&config, &shutdown, &failures, &connector_progress).await {
                let _ = sender.send(Some(backends));
                // Keep the sender alive so receivers never see a closed channel.
                shutdown.cancelled().await;
            }
        });
        Self { receiver, progress }
    }

    /// Each backend's state while connecting (`connecting`, `ok`, or why it is unreachable).
    pub fn progress(&self) -> BTreeMap<&'static str, String> {
        self.progress.snapshot()
    }

    /// The backends if connected now.
    pub fn current(&self) -> Option<Backends> {
        self.receiver.borrow().clone()
    }

    /// Waits for the backends; `None` if `shutdown` comes first.
    pub async fn wait(&self, shutdown: &CancellationToken) -> Option<Backends> {
        let mut receiver = self.receiver.clone();
        tokio::select! {
            result = receiver.wait_for(Option::is_some) => result.ok().and_then(|backends| backends.clone()),
            () = shutdown.cancelled() => None,
        }
    }
}

async fn connect(
    config: &Config,
    shutdown: &CancellationToken,
    failures: &Family<BackendLabel, Counter>,
    progress: &Progress,
) -> Option<Backends> {
    let attempt = Attempt { shutdown, failures, progress };
    let database_url = config.effective_database_url();
    let shown_url = openledger_core::redact_url(&database_url);
    let db = attempt.retry("database", "database", &shown_url, || openledger_store::connect(&database_url)).await?;
    attempt.retry("database", "migrations", &shown_url, || openledger_store::migrate(&db)).await?;
    let settings = BusSettings {
        stream: config.bus_stream.clone(),
        subject_prefix: config.bus_subject_prefix.clone(),
        duplicate_window: Duration::from_millis(config.bus_duplicate_window_ms),
        ..BusSettings::default()
    };
    let bus: Arc<dyn EventBus> = match &config.nats_url {
        Some(url) => {
            Arc::new(attempt.retry("bus", "event bus", url, || JetStreamBus::connect(url, settings.clone())).await?)
        }
        None => Arc::new(InProcessBus::new(settings)),
    };
    let objects_url = config.effective_object_store_url();
    let objects = attempt
        .retry("objects", "object store", &objects_url, || async {
            let store = openledger_store::open_object_store(&objects_url)?;
            openledger_store::check_object_store(store.as_ref()).await?;
            Ok::<_, openledger_store::StoreError>(store)
        })
        .await?;
    tracing::info!(database = %shown_url, bus = bus.kind(), objects = %objects_url, "backends connected and migrated");
    Some(Backends { db, bus, objects })
}

/// Retries connection steps, recording each backend's state.
struct Attempt<'a> {
    shutdown: &'a CancellationToken,
    failures: &'a Family<BackendLabel, Counter>,
    progress: &'a Progress,
}

impl Attempt<'_> {
    /// Runs `step` until it succeeds, doubling the pause up to `MAX_RETRY`; `None` on shutdown.
    async fn retry<T, E, F, Fut>(&self, backend: &'static str, what: &str, target: &str, mut step: F) -> Option<T>
    where
        E: std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut pause = FIRST_RETRY;
        for attempt_number in 1u64.. {
            let outcome = tokio::select! {
                outcome = step() => outcome,
                () = self.shutdown.cancelled() => return None,
            };
            match outcome {
                Ok(value) => {
                    if attempt_number > 1 {
                        tracing::info!(backend = what, target, attempts = attempt_number, "backend reachable again");
                    }
                    self.progress.set(backend, "ok".to_owned());
                    return Some(value);
                }
                Err(error) => {
                    self.failures.get_or_create(&BackendLabel { backend: what.to_owned() }).inc();
                    self.progress.set(backend, format!("unreachable: {error}"));
                    tracing::warn!(
                        backend = what,
                        target,
                        attempt = attempt_number,
                        retry_in_ms = pause.as_millis() as u64,
                        %error,
                        "backend unavailable; not ready, retrying"
                    );
                }
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.shutdown.cancelled() => return None,
            }
            pause = (pause * 2).min(MAX_RETRY);
        }
        None
    }
}
