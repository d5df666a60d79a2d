//! LoRA adapters on demand: sources (a local directory, an object store, the Hugging Face
//! hub), and a byte-budgeted LRU cache whose entries in use by running sequences are pinned.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::error::{MlError, Result};
use crate::lora::{AdapterConfig, AdapterPrecision, LoraAdapter};
use crate::model::LlamaModel;
use crate::saved_panels;

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// The panels [`load_adapter_dir_saving_panels`] saves beside the two files above (for serving
/// on the CPU), read by any later load for serving while they match them (see `saved_panels`);
/// safe to delete.
pub const ADAPTER_PANELS: &str = "adapter_panels.bin";
/// How long the weights file must have stood unchanged before panels made from it are saved:
/// longer than the coarsest file-system clock tick (1-2 s on some file systems; git's rule for
/// "racily clean" files), so that a rewrite in place of the same size cannot keep their key.
pub const ADAPTER_PANELS_SETTLE: std::time::Duration = std::time::Duration::from_secs(2);
/// Largest adapter weights file accepted (rank 1024 on all seven projections of a 1B model).
pub const MAX_ADAPTER_BYTES: u64 = 2 << 30;

/// Reads a PEFT adapter directory and fits it to `model`, for serving
/// ([`AdapterPrecision::Serving`]), from its saved panels where they match its files. Writes
/// nothing: the directory may be the user's.
pub fn load_adapter_dir(id: &str, dir: &Path, model: &LlamaModel) -> Result<LoraAdapter> {
    load(id, dir, model, AdapterPrecision::Serving, false)
}

/// [`load_adapter_dir`], and if the adapter was built from its files on the CPU, its panels
/// saved beside them ([`ADAPTER_PANELS`]) for the next load: for directories the platform owns
/// (the adapter cache's local directory and object-store copies, not the Hugging Face cache).
pub fn load_adapter_dir_saving_panels(id: &str, dir: &Path, model: &LlamaModel) -> Result<LoraAdapter> {
    load(id, dir, model, AdapterPrecision::Serving, true)
}

/// [`load_adapter_dir`] with its weights held as `precision` says (`Exact` for gradients).
pub fn load_adapter_dir_as(
    id: &str,
    dir: &Path,
    model: &LlamaModel,
    precision: AdapterPrecision,
) -> Result<LoraAdapter> {
    load(id, dir, model, precision, false)
}

fn load(
    id: &str,
    dir: &Path,
    model: &LlamaModel,
    precision: AdapterPrecision,
    save_panels: bool,
) -> Result<LoraAdapter> {
    let config_path = dir.join(ADAPTER_CONFIG);
    let config_text = std::fs::read_to_string(&config_path)
        .map_err(|_| MlError::NotFound { what: "adapter", path: config_path.display().to_string() })?;
    let config = AdapterConfig::parse(&config_text)?;
    let weights_path = dir.join(ADAPTER_WEIGHTS);
    let file = std::fs::File::open(&weights_path).map_err(|e| MlError::io(&weights_path, e))?;
    let metadata = file.metadata().map_err(|e| MlError::io(&weights_path, e))?;
    let size = metadata.len();
    if size > MAX_ADAPTER_BYTES {
        return Err(MlError::corrupt("adapter", format!("{size} bytes exceeds {MAX_ADAPTER_BYTES}")));
    }
    // Served from the CPU: the panels a previous load saved, if they were made from these files.
    let saved = (precision == AdapterPrecision::Serving && model.device().is_cpu())
        .then(|| saved_panels::Source::new(&metadata, &config_text, model.config()))
        .flatten();
    if let Some(source) = &saved
        && let Some(adapter) = saved_panels::load(dir, source, id, &config, model.config())
    {
        return Ok(adapter);
    }
    // Mapped rather than read: each tensor is converted once, from the page cache straight
    // into the adapter's own buffer.
    let mapped = crate::memory::map_file(&file).map_err(|e| MlError::io(&weights_path, e))?;
    let weights = safetensors::SafeTensors::deserialize(&mapped)
        .map_err(|e| MlError::corrupt("safetensors", format!("{}: {e}", weights_path.display())))?;
    let adapter = LoraAdapter::from_safetensors(id, &config, &weights, model.config(), model.device(), precision)?;
    if let Some(source) = saved.as_ref().filter(|_| save_panels) {
        saved_panels::save(dir, &weights_path, source, &adapter, model.config(), &config_text);
    }
    Ok(adapter)
}

/// Where adapter ids resolve to files. Ids of the directory and object-store sources are
/// names (`[A-Za-z0-9._-]`, up to 128 bytes); `hf://owner/name[@rev]` ids always go to the hub.
#[derive(Clone)]
pub enum AdapterSource {
    /// `<root>/<id>/adapter_config.json` and `adapter_model.safetensors`.
    Dir(PathBuf),
    /// `<prefix>/<id>/...` in an object store, copied into `cache_dir/<id>` on first use.
    ObjectStore { store: Arc<dyn ObjectStore>, prefix: String, cache_dir: PathBuf },
    /// Only hub ids are accepted.
    HubOnly,
}

impl std::fmt::Debug for AdapterSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dir(p) => write!(f, "Dir({})", p.display()),
            Self::ObjectStore { prefix, .. } => write!(f, "ObjectStore({prefix})"),
            Self::HubOnly => write!(f, "HubOnly"),
        }
    }
}

/// Whether `id` names an adapter on the Hugging Face hub (`hf://owner/name[@rev]`), whose files
/// live in hf-hub's cache rather than in a directory the platform owns.
pub fn is_hub_id(id: &str) -> bool {
    id.starts_with(crate::source::HUB_PREFIX)
}

pub fn validate_adapter_id(id: &str) -> Result<()> {
    if is_hub_id(id) {
        return id.parse::<crate::Source>().map(|_| ());
    }
    // Fine-tuned adapters are named `ft:<base>:<owner>:<suffix>:<job>` (OpenAI's form).
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c) || (c == ':' && id.starts_with("ft:"));
    let ok = !id.is_empty() && id.len() <= 128 && !id.starts_with('.') && id.chars().all(allowed);
    if ok {
        Ok(())
    } else {
        Err(MlError::InvalidRequest(format!(
            "adapter id {id:?} must match [A-Za-z0-9._-]{{1,128}} (or ft:… with colons, for fine-tuned adapters)"
        )))
    }
}

impl AdapterSource {
    /// The local directory holding adapter `id`, fetching it first if needed. Blocking: call
    /// from a loader thread, never from the async runtime or the decode loop.
    pub fn local_dir(&self, id: &str, runtime: &tokio::runtime::Handle) -> Result<PathBuf> {
        validate_adapter_id(id)?;
        if is_hub_id(id) {
            let crate::Source::Hub { repo, revision, .. } = id.parse()? else {
                unreachable!("hf:// parses as a hub source")
            };
            return runtime.block_on(fetch_hub_adapter(id, &repo, revision));
        }
        match self {
            Self::Dir(root) => Ok(root.join(id)),
            Self::HubOnly => Err(MlError::NotFound { what: "adapter", path: id.into() }),
            Self::ObjectStore { store, prefix, cache_dir } => {
                let dir = cache_dir.join(id);
                if dir.join(ADAPTER_WEIGHTS).exists() && dir.join(ADAPTER_CONFIG).exists() {
                    return Ok(dir);
                }
                runtime.block_on(fetch_object_adapter(store.as_ref(), prefix, id, &dir))?;
                Ok(dir)
            }
        }
    }
}

async fn fetch_object_adapter(store: &dyn ObjectStore, prefix: &str, id: &str, dir: &Path) -> Result<()> {
    let staging = dir.with_extension(format!("partial-{}", std::process::id()));
    std::fs::create_dir_all(&staging).map_err(|e| MlError::io(&staging, e))?;
    let fetched = download_adapter_files(store, prefix, id, &staging).await;
    // Whole directories appear atomically: a failed or interrupted download leaves no adapter
    // directory, and a failed one removes its staging directory too.
    let result = fetched.and_then(|()| std::fs::rename(&staging, dir).map_err(|e| MlError::io(dir, e)));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

async fn download_adapter_files(store: &dyn ObjectStore, prefix: &str, id: &str, staging: &Path) -> Result<()> {
    let fetch = |e: object_store::Error| match e {
        object_store::Error::NotFound { path, .. } => MlError::NotFound { what: "adapter", path },
        other => MlError::Fetch { what: format!("adapter {id}"), detail: other.to_string() },
    };
    for name in [ADAPTER_CONFIG, ADAPTER_WEIGHTS] {
        let path = ObjectPath::from(format!("{}/{id}/{name}", prefix.trim_end_matches('/')));
        let object = store.get(&path).await.map_err(fetch)?;
        if object.meta.size > MAX_ADAPTER_BYTES {
            return Err(MlError::corrupt("adapter", format!("{path} is {} bytes", object.meta.size)));
        }
        let bytes = object.bytes().await.map_err(fetch)?;
        let target = staging.join(name);
        std::fs::write(&target, &bytes).map_err(|e| MlError::io(&target, e))?;
    }
    Ok(())
}

/// Downloads (or finds in hf-hub's cache) the PEFT adapter `hf://owner/name[@revision]` and
/// returns the local directory holding its two files.
pub async fn fetch_hub_adapter_dir(source: &str) -> Result<PathBuf> {
    let crate::Source::Hub { repo, revision, file: None } = source.parse()? else {
        return Err(MlError::InvalidRequest(format!("{source:?} is not hf://owner/name[@revision]")));
    };
    fetch_hub_adapter(source, &repo, revision).await
}

async fn fetch_hub_adapter(id: &str, repo: &str, revision: Option<String>) -> Result<PathBuf> {
    let fetch = |e: hf_hub::api::tokio::ApiError| MlError::Fetch { what: id.to_string(), detail: e.to_string() };
    let repo = crate::source::hub_repo(repo, revision.as_deref()).map_err(fetch)?;
    let config = repo.get(ADAPTER_CONFIG).await.map_err(fetch)?;
    repo.get(ADAPTER_WEIGHTS).await.map_err(fetch)?;
    Ok(config.parent().map(Path::to_path_buf).unwrap_or_default())
}

/// Cache counters, exported on `/metrics` by whoever hosts the engine.
#[derive(Clone, Debug)]
pub struct AdapterMetrics {
    pub hits: Counter,
    pub misses: Counter,
    pub load_failures: Counter,
    pub evictions: Counter,
    pub load_seconds: Histogram,
    pub cached_bytes: Gauge,
    pub cached_adapters: Gauge,
}

impl Default for AdapterMetrics {
    fn default() -> Self {
        Self {
            hits: Counter::default(),
            misses: Counter::default(),
            load_failures: Counter::default(),
            evictions: Counter::default(),
            load_seconds: Histogram::new([0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0, 30.0]),
            cached_bytes: Gauge::default(),
            cached_adapters: Gauge::default(),
        }
    }
}

impl AdapterMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("adapter_cache_hits", "adapter lookups served from memory", self.hits.clone());
        registry.register("adapter_cache_misses", "adapter lookups that needed a load", self.misses.clone());
        registry.register("adapter_load_failures", "adapter loads that failed", self.load_failures.clone());
        registry.register("adapter_cache_evictions", "adapters evicted to stay within budget", self.evictions.clone());
        registry.register("adapter_load_seconds", "time to fetch and load one adapter", self.load_seconds.clone());
        registry.register("adapter_cache_bytes", "bytes of adapter weights held", self.cached_bytes.clone());
        registry.register("adapter_cache_adapters", "adapters held in memory", self.cached_adapters.clone());
    }
}

struct Entry {
    adapter: Arc<LoraAdapter>,
    last_used: u64,
}

#[derive(Default)]
struct CacheState {
    entries: HashMap<String, Entry>,
    clock: u64,
    bytes: usize,
}

/// Loaded adapters within `budget_bytes`, least recently used evicted first. An adapter held
/// by a running sequence (an `Arc` clone outside the cache) is pinned: it is never evicted.
pub struct AdapterCache {
    state: Mutex<CacheState>,
    budget_bytes: usize,
    source: AdapterSource,
    pub metrics: AdapterMetrics,
}

impl std::fmt::Debug for AdapterCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdapterCache").field("budget_bytes", &self.budget_bytes).field("source", &self.source).finish()
    }
}

impl AdapterCache {
    pub fn new(source: AdapterSource, budget_bytes: usize) -> Self {
        Self { state: Mutex::new(CacheState::default()), budget_bytes, source, metrics: AdapterMetrics::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The adapter if it is in memory (a hit bumps its recency).
    pub fn get(&self, id: &str) -> Option<Arc<LoraAdapter>> {
        let mut state = self.lock();
        state.clock += 1;
        let clock = state.clock;
        let entry = state.entries.get_mut(id)?;
        entry.last_used = clock;
        self.metrics.hits.inc();
        Some(entry.adapter.clone())
    }

    /// Whether `id` is in memory, without counting a lookup.
    pub fn contains(&self, id: &str) -> bool {
        self.lock().entries.contains_key(id)
    }

    /// Fetches and loads `id`, then inserts it, evicting unpinned adapters as needed. Blocking.
    pub fn load(&self, id: &str, model: &LlamaModel, runtime: &tokio::runtime::Handle) -> Result<Arc<LoraAdapter>> {
        if let Some(hit) = self.get(id) {
            return Ok(hit);
        }
        self.metrics.misses.inc();
        let started = Instant::now();
        // Panels are saved where the platform keeps adapters, not in the Hugging Face cache.
        let loaded = self.source.local_dir(id, runtime).and_then(|dir| {
            if is_hub_id(id) {
                load_adapter_dir(id, &dir, model)
            } else {
                load_adapter_dir_saving_panels(id, &dir, model)
            }
        });
        let adapter = match loaded {
            Ok(a) => Arc::new(a),
            Err(e) => {
                self.metrics.load_failures.inc();
                return Err(e);
            }
        };
        self.metrics.load_seconds.observe(started.elapsed().as_secs_f64());
        self.insert(adapter)
    }

    fn insert(&self, adapter: Arc<LoraAdapter>) -> Result<Arc<LoraAdapter>> {
        let size = adapter.size_bytes();
        if size > self.budget_bytes {
            return Err(MlError::Overloaded(format!(
                "adapter {} needs {size} bytes, over the cache budget of {}",
                adapter.id, self.budget_bytes
            )));
        }
        let mut state = self.lock();
        if let Some(existing) = state.entries.get(&adapter.id) {
            return Ok(existing.adapter.clone()); // a concurrent load won
        }
        while state.bytes + size > self.budget_bytes {
            let victim = state
                .entries
                .iter()
                .filter(|(_, e)| Arc::strong_count(&e.adapter) == 1)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(id, _)| id.clone());
            let Some(victim) = victim else {
                return Err(MlError::Overloaded(format!(
                    "adapter cache is full of adapters in use ({} of {} bytes)",
                    state.bytes, self.budget_bytes
                )));
            };
            if let Some(e) = state.entries.remove(&victim) {
                state.bytes -= e.adapter.size_bytes();
                self.metrics.evictions.inc();
            }
        }
        state.clock += 1;
        let last_used = state.clock;
        state.bytes += size;
        state.entries.insert(adapter.id.clone(), Entry { adapter: adapter.clone(), last_used });
        self.metrics.cached_bytes.set(state.bytes as i64);
        self.metrics.cached_adapters.set(state.entries.len() as i64);
        Ok(adapter)
    }

    pub fn cached_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.lock().entries.keys().cloned().collect();
        ids.sort();
        ids
    }

    pub fn cached_bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use candle_core::Device;
    use candle_core::quantized::GgmlDType;

    use super::*;
    use crate::Target;
    use crate::testing::{TinyModel, TinySpec, write_peft_adapter};

    /// The mapped weights file is checked like a read one: cut short, empty or garbled, it is
    /// refused as corrupt with the file named; missing, as not found.
    #[test]
    fn a_truncated_or_garbled_weights_file_is_refused_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let tiny = TinyModel::new(TinySpec::default()).unwrap();
        let model =
            LlamaModel::from_gguf(&tiny.write_gguf(&dir.path().join("t.gguf"), GgmlDType::Q8_0).unwrap(), &Device::Cpu)
                .unwrap();
        let adapter =
            write_peft_adapter(&dir.path().join("a"), model.config(), 4, &[Target::Q, Target::V], 1, false).unwrap();
        let weights = adapter.join(ADAPTER_WEIGHTS);
        let good = std::fs::read(&weights).unwrap();
        assert_eq!(load_adapter_dir("a", &adapter, &model).unwrap().pairs().count(), 2 * model.config().num_layers);

        let cases: [(&str, &[u8]); 4] = [
            ("one byte short", &good[..good.len() - 1]),
            ("cut in its header", &good[..40]),
            ("empty", b""),
            ("garbled", b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a safetensors file"),
        ];
        for (case, bytes) in cases {
            std::fs::write(&weights, bytes).unwrap();
            let err = load_adapter_dir("a", &adapter, &model).unwrap_err();
            assert!(
                matches!(err, MlError::Corrupt { .. }) && err.to_string().contains(&weights.display().to_string()),
                "{case}: {err}"
            );
        }
        std::fs::remove_file(&weights).unwrap();
        let err = load_adapter_dir("a", &adapter, &model).unwrap_err();
        assert!(matches!(err, MlError::NotFound { .. }), "{err}");
    }
}
