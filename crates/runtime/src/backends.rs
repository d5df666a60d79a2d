//! One connection to each backend per process, made in the background with exponential
//! backoff so a service starts (healthy, not ready) even while PostgreSQL or NATS is down.

use std::{future::Future, sync::Arc, time::Duration};

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
}

const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(15);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabel {
    backend: String,
}

impl BackendsHandle {
    /// Backends that are already connected (tests, tools).
    pub fn ready(backends: Backends) -> Self {
        let (_sender, receiver) = watch::channel(Some(backends));
        Self { receiver }
    }

    pub(crate) fn connect_in_background(config: Arc<Config>, shutdown: CancellationToken, metrics: &Metrics) -> Self {
        let (sender, receiver) = watch::channel(None);
        let failures = Family::<BackendLabel, Counter>::default();
        metrics.register("backend", |registry| {
            registry.register("connect_failures", "failed attempts to reach a backend", failures.clone())
        });
        tokio::spawn(async move {
            if let Some(backends) = connect(&config, &shutdown, &failures).await {
                let _ = sender.send(Some(backends));
                // Keep the sender alive so receivers never see a closed channel.
                shutdown.cancelled().await;
            }
        });
        Self { receiver }
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
) -> Option<Backends> {
    let database_url = config.effective_database_url();
    let shown_url = openledger_core::redact_url(&database_url);
    let db = retry("database", &shown_url, shutdown, failures, || openledger_store::connect(&database_url)).await?;
    retry("migrations", &shown_url, shutdown, failures, || openledger_store::migrate(&db)).await?;
    let settings = BusSettings {
        stream: config.bus_stream.clone(),
        subject_prefix: config.bus_subject_prefix.clone(),
        duplicate_window: Duration::from_millis(config.bus_duplicate_window_ms),
        ..BusSettings::default()
    };
    let bus: Arc<dyn EventBus> = match &config.nats_url {
        Some(url) => Arc::new(
            retry("event bus", url, shutdown, failures, || JetStreamBus::connect(url, settings.clone())).await?,
        ),
        None => Arc::new(InProcessBus::new(settings)),
    };
    let objects_url = config.effective_object_store_url();
    let objects = retry("object store", &objects_url, shutdown, failures, || async {
        let store = openledger_store::open_object_store(&objects_url)?;
        openledger_store::check_object_store(store.as_ref()).await?;
        Ok::<_, openledger_store::StoreError>(store)
    })
    .await?;
    tracing::info!(database = %shown_url, bus = bus.kind(), objects = %objects_url, "backends connected and migrated");
    Some(Backends { db, bus, objects })
}

/// Runs `attempt` until it succeeds, doubling the pause up to `MAX_RETRY`; `None` on shutdown.
async fn retry<T, E, F, Fut>(
    what: &str,
    target: &str,
    shutdown: &CancellationToken,
    failures: &Family<BackendLabel, Counter>,
    mut attempt: F,
) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut pause = FIRST_RETRY;
    for attempt_number in 1u64.. {
        let outcome = tokio::select! {
            outcome = attempt() => outcome,
            () = shutdown.cancelled() => return None,
        };
        match outcome {
            Ok(value) => {
                if attempt_number > 1 {
                    tracing::info!(backend = what, target, attempts = attempt_number, "backend reachable again");
                }
                return Some(value);
            }
            Err(error) => {
                failures.get_or_create(&BackendLabel { backend: what.to_owned() }).inc();
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
            () = shutdown.cancelled() => return None,
        }
        pause = (pause * 2).min(MAX_RETRY);
    }
    None
}
