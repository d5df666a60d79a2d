//! The attribution-worker: Proof of Attribution for every paid inference. It consumes
//! `ol.inference.completed`, attributes each output to the contributions of the Datanet
//! version its adapter was trained on (`attribute`), keeps a canonical receipt of each
//! (`receipt`), batches the receipts into Merkle trees whose roots the ledger's journal records
//! (`batches`), and emits `ol.attribution.computed`, which the ledger settles. It builds the
//! indexes it reads without anyone asking (`indexes`: a span index per sealed version, on
//! `ol.datanet.snapshot.sealed`; `gradients`: a gradient index per adapter registered with
//! lineage, on `ol.modelfactory.adapter.registered`, which attribution blends in once ready),
//! and measures each version's contributor quality on its first adapter (`quality`:
//! `ol.attribution.quality.assessed`, which releases or slashes bonds). `executor` says where
//! index files are built: here, or as `AttributionJob`s on Kubernetes (`kubernetes`), whose
//! pods run `index_job`. `api` is the gRPC surface; `limits` holds every limit.

mod api;
pub mod attribute;
pub mod batches;
mod entities;
pub mod executor;
pub mod gradients;
pub mod index_job;
pub mod indexes;
pub mod kubernetes;
#[cfg(test)]
mod kubernetes_tests;
pub mod limits;
pub mod quality;
pub mod receipt;
#[cfg(test)]
mod tests;
pub mod upstream;
pub mod verify;

use std::{path::Path, sync::Arc};

use openledger_bus::ConsumerConfig;
use openledger_core::{ContentHash, ErrorCode};
use openledger_model_factory::base::BaseModels;
use openledger_proto::{
    attribution::v1::attribution_service_server::AttributionServiceServer,
    events::v1::{AdapterChanged, InferenceCompleted, SnapshotSealed},
};
use openledger_runtime::{
    Config, Deps, RuntimeError, ServiceKind, ServiceSpec,
    consume::{Handled, consume},
};
use prost::Message;
use tokio::sync::OnceCell;

pub use api::Api;
pub use attribute::{Attributions, Outcome};
pub use batches::Batches;
pub use executor::{Built, IndexExecutor, LocalIndexExecutor};
pub use index_job::build_index_shard;
pub use indexes::{Indexes, open_version};

/// Subjects the worker consumes.
pub const SUBJECT_INFERENCE_COMPLETED: &str = "ol.inference.completed";
pub const SUBJECT_SNAPSHOT_SEALED: &str = "ol.datanet.snapshot.sealed";
pub const SUBJECT_ADAPTER_REGISTERED: &str = "ol.modelfactory.adapter.registered";
/// Its durable consumers.
pub const CONSUMER_INFERENCES: &str = "attribution-inferences";
pub const CONSUMER_VERSIONS: &str = "attribution-versions";
pub const CONSUMER_ADAPTERS: &str = "attribution-adapters";

/// An error with the code callers act on; `transient` when trying again later may succeed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct WorkerError {
    pub code: ErrorCode,
    pub message: String,
    pub transient: bool,
}

impl WorkerError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let transient = matches!(code, ErrorCode::Unavailable | ErrorCode::Timeout);
        Self { code, message: message.into(), transient }
    }

    pub fn internal(error: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::Internal, error.to_string())
    }

    pub fn io(path: &Path, error: std::io::Error) -> Self {
        Self::new(ErrorCode::Internal, format!("{}: {error}", path.display()))
    }

    /// Attribution's errors: bad input stays the caller's; a mismatch or damage is ours.
    pub fn attribution(error: openledger_attribution::AttributionError) -> Self {
        use openledger_attribution::AttributionError as E;
        let code = match &error {
            E::InvalidInput(_) => ErrorCode::InvalidArgument,
            _ => ErrorCode::Internal,
        };
        Self::new(code, error.to_string())
    }
}

impl From<sea_orm::DbErr> for WorkerError {
    fn from(error: sea_orm::DbErr) -> Self {
        Self::new(ErrorCode::Unavailable, format!("database: {error}"))
    }
}

/// What the gRPC API and the workers share once the backends are up.
#[derive(Clone)]
pub struct Parts {
    pub attributions: Arc<Attributions>,
    pub indexes: Arc<Indexes>,
    pub batches: Arc<Batches>,
}

/// Set once the backends are connected.
pub type SharedParts = Arc<OnceCell<Parts>>;

/// Builds the worker's parts on `db` under `dir` (`<data_dir>/attribution`), building indexes
/// in this process.
pub fn parts(
    db: sea_orm::DatabaseConnection,
    upstream: Arc<dyn upstream::Upstream>,
    bases: Arc<BaseModels>,
    objects: Arc<dyn object_store::ObjectStore>,
    dir: std::path::PathBuf,
    outbox_wake: Option<Arc<tokio::sync::Notify>>,
) -> Parts {
    let executor = Arc::new(LocalIndexExecutor::new());
    parts_with(db, upstream, bases, objects, dir, outbox_wake, executor, limits::INFLUENCE_MAX_LAG)
}

/// [`parts`] building indexes with `executor`, computing influence for inferences at most
/// `influence_max_lag` old (zero: any; see [`Attributions::with_influence_max_lag`]).
#[allow(clippy::too_many_arguments)]
pub fn parts_with(
    db: sea_orm::DatabaseConnection,
    upstream: Arc<dyn upstream::Upstream>,
    bases: Arc<BaseModels>,
    objects: Arc<dyn object_store::ObjectStore>,
    dir: std::path::PathBuf,
    outbox_wake: Option<Arc<tokio::sync::Notify>>,
    executor: Arc<dyn IndexExecutor>,
    influence_max_lag: std::time::Duration,
) -> Parts {
    let indexes = Indexes::new(db.clone(), upstream.clone(), bases, objects, dir, outbox_wake.clone());
    let indexes = Arc::new(indexes.with_executor(executor));
    Parts {
        attributions: Arc::new(
            Attributions::new(db.clone(), indexes.clone(), upstream.clone(), outbox_wake)
                .with_influence_max_lag(influence_max_lag),
        ),
        indexes,
        batches: Arc::new(Batches::new(db, upstream)),
    }
}

/// What the inference consumer does with one delivery.
pub async fn on_inference(attributions: &Attributions, payload: &[u8]) -> Handled {
    let event = match InferenceCompleted::decode(payload) {
        Ok(event) => event,
        Err(error) => return Handled::Poison(format!("not an InferenceCompleted: {error}")),
    };
    match attributions.handle(&event, openledger_store::now_ms()).await {
        Ok(Outcome::Attributed | Outcome::AlreadyAttributed) => Handled::Ack,
        Ok(Outcome::Wait(delay)) => Handled::Retry(delay),
        Err(error) if error.transient => {
            tracing::warn!(inference_id = %event.inference_id, %error, "attributing failed for now; trying again");
            Handled::Retry(limits::RETRY_DELAY)
        }
        Err(error) => Handled::Poison(format!("attributing inference {:?} failed: {error}", event.inference_id)),
    }
}

/// What the version consumer does with one delivery: queue the sealed version's span index.
pub async fn on_sealed(indexes: &Arc<Indexes>, payload: &[u8]) -> Handled {
    let event = match SnapshotSealed::decode(payload) {
        Ok(event) => event,
        Err(error) => return Handled::Poison(format!("not a SnapshotSealed: {error}")),
    };
    let Some(root) = event.merkle_root.as_ref().and_then(|h| ContentHash::try_from(h.value.as_slice()).ok()) else {
        return Handled::Poison(format!("version {} names no 32-byte root", event.snapshot_id));
    };
    let version = indexes::VersionRef {
        datanet_id: event.datanet_id,
        snapshot_id: event.snapshot_id,
        root,
        version: event.version,
    };
    match indexes.request(&version).await {
        Ok(_) => Handled::Ack,
        Err(error) if error.transient => Handled::Retry(limits::RETRY_DELAY),
        Err(error) => Handled::Poison(format!("indexing version {} failed: {error}", version.snapshot_id)),
    }
}

/// What the adapter consumer does with one delivery: an adapter trained on a version makes
/// sure that version is indexed (it may have been sealed before this worker ran), and one
/// registered with its lineage gets a gradient index.
pub async fn on_adapter(indexes: &Arc<Indexes>, payload: &[u8]) -> Handled {
    let event = match AdapterChanged::decode(payload) {
        Ok(event) => event,
        Err(error) => return Handled::Poison(format!("not an AdapterChanged: {error}")),
    };
    if event.snapshot_id.is_empty() {
        return Handled::Ack;
    }
    let Some(root) = event.snapshot_root.as_ref().and_then(|h| ContentHash::try_from(h.value.as_slice()).ok()) else {
        return Handled::Poison(format!(
            "adapter {} names version {} without its root",
            event.adapter_id, event.snapshot_id
        ));
    };
    let version =
        indexes::VersionRef { datanet_id: event.datanet_id, snapshot_id: event.snapshot_id, root, version: 0 };
    let requested = match indexes.request(&version).await {
        Ok(_) if event.lineage_location.is_empty() => Ok(()),
        Ok(_) => {
            let source = gradients::GradientSource {
                location: event.location,
                lineage_location: event.lineage_location,
                file_hashes: event.file_hashes.iter().map(|h| hex::encode(&h.value)).collect(),
            };
            let adapter = indexes::AdapterRef { adapter_id: event.adapter_id, version: version.clone(), source };
            indexes.request_gradient(&adapter).await.map(|_| ())
        }
        Err(error) => Err(error),
    };
    match requested {
        Ok(()) => Handled::Ack,
        Err(error) if error.transient => Handled::Retry(limits::RETRY_DELAY),
        Err(error) => Handled::Poison(format!("indexing version {} failed: {error}", version.snapshot_id)),
    }
}

/// The executor `job_executor` names: `kubernetes` (with the cluster's client from the pod's
/// service account or the kubeconfig) or `local`; embedded mode always builds in its process.
async fn index_executor(config: &Config, embedded: bool) -> Result<Arc<dyn IndexExecutor>, RuntimeError> {
    if config.job_executor != "kubernetes" {
        return Ok(Arc::new(LocalIndexExecutor::new()));
    }
    if embedded {
        tracing::warn!(
            "job_executor is kubernetes, but `openledger dev` builds attribution indexes in its own process"
        );
        return Ok(Arc::new(LocalIndexExecutor::new()));
    }
    let failed = |reason: String| RuntimeError::Server {
        service: ServiceKind::AttributionWorker,
        role: "kubernetes index executor",
        reason,
    };
    let settings =
        kubernetes::JobSettings::from_config(config, limits::INDEX_JOB_POLL).map_err(|e| failed(e.message))?;
    let client = kube::Client::try_default().await.map_err(|e| {
        failed(format!(
            "no cluster client ({e}): run it in a cluster (a service account) or with a kubeconfig, or set job_executor \
             to local"
        ))
    })?;
    tracing::info!(namespace = %settings.namespace, "index builds run as AttributionJobs");
    Ok(Arc::new(kubernetes::KubernetesIndexExecutor::new(client, settings)))
}

/// Runs the service until the process shuts down.
pub async fn serve(config: Arc<Config>, deps: Deps) -> Result<(), RuntimeError> {
    let upstream: Arc<dyn upstream::Upstream> =
        Arc::new(upstream::Services::from_config(&config, deps.endpoints.clone()));
    let executor = index_executor(&config, deps.embedded).await?;
    let bases = Arc::new(BaseModels::from_config(&config));
    let dir = config.data_dir.join("attribution");
    let influence_max_lag = std::time::Duration::from_millis(config.attribution_influence_max_lag_ms);
    let shared: SharedParts = Arc::default();
    let spec =
        ServiceSpec::new(ServiceKind::AttributionWorker, AttributionServiceServer::new(Api::new(shared.clone())));
    let outbox_wake = spec.outbox_waker();
    let worker: openledger_runtime::Worker = Box::new(move |backends, shutdown| {
        Box::pin(async move {
            let (db, objects) = (backends.db.clone(), backends.objects.clone());
            let made = parts_with(db, upstream, bases, objects, dir, Some(outbox_wake), executor, influence_max_lag);
            let _ = shared.set(made.clone());
            match made.indexes.resume().await {
                Ok(0) => {}
                Ok(resumed) => tracing::info!(resumed, "index builds resumed"),
                Err(error) => tracing::warn!(%error, "resuming index builds failed"),
            }
            let inferences = ConsumerConfig::new(CONSUMER_INFERENCES, SUBJECT_INFERENCE_COMPLETED)
                .ack_wait(limits::ACK_WAIT)
                .max_deliver(limits::MAX_DELIVER);
            let versions = ConsumerConfig::new(CONSUMER_VERSIONS, SUBJECT_SNAPSHOT_SEALED)
                .ack_wait(limits::ACK_WAIT)
                .max_deliver(limits::MAX_DELIVER);
            let adapters = ConsumerConfig::new(CONSUMER_ADAPTERS, SUBJECT_ADAPTER_REGISTERED)
                .ack_wait(limits::ACK_WAIT)
                .max_deliver(limits::MAX_DELIVER);
            let attributions = made.attributions.clone();
            let indexes = made.indexes.clone();
            let batches = made.batches.clone();
            tokio::join!(
                consume(backends.bus.clone(), inferences, shutdown.clone(), |delivery| {
                    let (attributions, payload) = (attributions.clone(), delivery.payload.clone());
                    async move { on_inference(&attributions, &payload).await }
                }),
                consume(backends.bus.clone(), versions, shutdown.clone(), |delivery| {
                    let (indexes, payload) = (indexes.clone(), delivery.payload.clone());
                    async move { on_sealed(&indexes, &payload).await }
                }),
                consume(backends.bus.clone(), adapters, shutdown.clone(), |delivery| {
                    let (indexes, payload) = (indexes.clone(), delivery.payload.clone());
                    async move { on_adapter(&indexes, &payload).await }
                }),
                batches.run(shutdown.clone()),
            );
        })
    });
    openledger_runtime::run_service(spec.worker(worker), &config, deps).await
}
