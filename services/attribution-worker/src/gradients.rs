//! The gradient index of an adapter trained with lineage: its files fetched from the object
//! store where its registration put them (checked against the hashes the registration named),
//! the per-record gradients of its training records computed over the version's export
//! (`openledger_attribution::influence::GradientIndex`, as `openledger attribution index
//! build --adapter` does), and the index opened for attribution with its probe.
//!
//! On disk, under `<data_dir>/attribution/adapters/<BLAKE3 of the adapter id>/`: the PEFT
//! directory (`adapter_config.json`, `adapter_model.safetensors`), the trainer's
//! `lineage.json`, and `gradient-index/`. [`crate::indexes::files_hash`] over the index is
//! what receipts name. An index built in shards (by an `AttributionJob`'s pods, see
//! `kubernetes`) is built under `<data_dir>/attribution/adapter-shards/<BLAKE3 of the adapter
//! id>/<shard>/`, each shard with its own copy of the adapter's files, then merged into
//! `gradient-index/`.

use std::path::{Path, PathBuf};

use object_store::{ObjectStore, path::Path as ObjectPath};
use openledger_attribution::influence::{GradientIndex, GradientSet, Probing, default_first_layer};
use openledger_core::{ContentHash, ErrorCode};
use openledger_ml::{
    AdapterConfig, LlamaModel, Tokenizer,
    adapters::{ADAPTER_CONFIG, ADAPTER_WEIGHTS, load_adapter_dir},
    train::{
        LINEAGE_FILE, Lineage,
        grads::{GradientProbe, Projection, ProjectionKind},
    },
};
use serde::{Deserialize, Serialize};

use crate::{
    WorkerError,
    indexes::files_hash,
    limits::{GRADIENT_PROJECTION_MIN_DIM, GRADIENT_PROJECTION_SEED},
};

pub const GRADIENT_INDEX_DIR: &str = openledger_attribution::influence::DEFAULT_INDEX_DIR;

/// The id of an adapter's gradient index.
pub fn gradient_index_id(adapter_id: &str) -> String {
    format!("gradient:{adapter_id}")
}

/// Where an adapter's files and gradient index are under the worker's directory. Adapter ids
/// hold `:` and `/`, so the directory is named by the id's BLAKE3.
pub fn adapter_dir(dir: &Path, adapter_id: &str) -> PathBuf {
    dir.join("adapters").join(ContentHash::of(adapter_id.as_bytes()).to_hex())
}

/// Where the shards of an adapter's gradient index are built when it is built in shards.
pub fn gradient_shards_dir(dir: &Path, adapter_id: &str) -> PathBuf {
    dir.join("adapter-shards").join(ContentHash::of(adapter_id.as_bytes()).to_hex())
}

/// The working directory of one shard (the adapter's files and the shard's `gradient-index/`):
/// one per shard, because [`fetch_adapter`] replaces the directory it writes and the shards'
/// pods run at once on the same claim.
pub fn gradient_shard_dir(dir: &Path, adapter_id: &str, shard: usize) -> PathBuf {
    gradient_shards_dir(dir, adapter_id).join(shard.to_string())
}

/// Where a registered adapter's files are, as its `ol.modelfactory.adapter.registered` named
/// them (the gradient index row keeps it, so a restart builds from the same files).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GradientSource {
    /// Object store key prefix of the PEFT directory.
    pub location: String,
    /// Object store key of the registry's lineage.json.
    pub lineage_location: String,
    /// BLAKE3 of adapter_config.json and adapter_model.safetensors, hex, in that order.
    pub file_hashes: Vec<String>,
}

fn objects_error(key: &str, error: object_store::Error) -> WorkerError {
    match error {
        object_store::Error::NotFound { .. } => {
            WorkerError::new(ErrorCode::FailedPrecondition, format!("object {key:?} is not in the object store"))
        }
        other => WorkerError::new(ErrorCode::Unavailable, format!("object store: reading {key:?}: {other}")),
    }
}

async fn get(objects: &dyn ObjectStore, key: &str) -> Result<Vec<u8>, WorkerError> {
    let path = ObjectPath::from(key);
    let got = objects.get(&path).await.map_err(|e| objects_error(key, e))?;
    Ok(got.bytes().await.map_err(|e| objects_error(key, e))?.to_vec())
}

/// Fetches the adapter's PEFT files and lineage into `dir` (replacing what was there),
/// checking each file against the hash its registration named.
pub async fn fetch_adapter(objects: &dyn ObjectStore, source: &GradientSource, dir: &Path) -> Result<(), WorkerError> {
    if source.file_hashes.len() != 2 || source.lineage_location.is_empty() {
        return Err(WorkerError::new(
            ErrorCode::InvalidArgument,
            "a gradient index needs the adapter's two file hashes and its lineage's location",
        ));
    }
    let mut files = Vec::with_capacity(3);
    for (name, expected) in [ADAPTER_CONFIG, ADAPTER_WEIGHTS].into_iter().zip(&source.file_hashes) {
        let key = format!("{}/{name}", source.location.trim_end_matches('/'));
        let bytes = get(objects, &key).await?;
        let actual = ContentHash::of(&bytes).to_hex();
        if &actual != expected {
            return Err(WorkerError::new(
                ErrorCode::FailedPrecondition,
                format!("{key} hashes to {actual}, its registration names {expected}: the adapter's files changed"),
            ));
        }
        files.push((name, bytes));
    }
    files.push((LINEAGE_FILE, trainer_lineage(&get(objects, &source.lineage_location).await?)?));
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| WorkerError::io(dir, e))?;
    for (name, bytes) in files {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| WorkerError::io(&path, e))?;
    }
    Ok(())
}

/// The trainer's lineage (record hashes in training order, the held-out split, the settings)
/// out of the registry's lineage.json, which wraps it under `trainer`; a trainer's own
/// lineage.json is taken as it is.
fn trainer_lineage(bytes: &[u8]) -> Result<Vec<u8>, WorkerError> {
    let corrupt = |e: String| WorkerError::new(ErrorCode::FailedPrecondition, format!("the adapter's lineage: {e}"));
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    let trainer = value.get("trainer").cloned().unwrap_or(value);
    serde_json::to_vec(&trainer).map_err(|e| corrupt(e.to_string()))
}

/// Training records (each once) the adapter's lineage lists: what an index of it holds.
pub async fn lineage_records(objects: &dyn ObjectStore, source: &GradientSource) -> Result<usize, WorkerError> {
    let bytes = trainer_lineage(&get(objects, &source.lineage_location).await?)?;
    let lineage: Lineage = serde_json::from_slice(&bytes)
        .map_err(|e| WorkerError::new(ErrorCode::FailedPrecondition, format!("the adapter's lineage: {e}")))?;
    Ok(lineage.train_records.iter().collect::<std::collections::HashSet<_>>().len())
}

/// Builds the gradient index of the adapter in `adapter_dir` over the version exported in
/// `version_dir` (replacing a half-built one): shard `part.0` of `part.1`, `(0, 1)` for the
/// whole index; returns the records indexed and the files' hash.
pub fn build_gradient_index(
    model: &LlamaModel,
    tokenizer: &Tokenizer,
    adapter_dir: &Path,
    version_dir: &Path,
    part: (usize, usize),
) -> Result<(usize, ContentHash), WorkerError> {
    let out = adapter_dir.join(GRADIENT_INDEX_DIR);
    let _ = std::fs::remove_dir_all(&out);
    let probing = probing_for(adapter_dir, model)?;
    let index =
        GradientIndex::build_shard(model, tokenizer, adapter_dir, version_dir, &out, probing, part, &mut |_, _| {})
            .map_err(WorkerError::attribution)?;
    Ok((index.len(), files_hash(&out)?))
}

/// Merges the `shards` shards built under `shards_dir` into the gradient index of the adapter
/// in `adapter_dir` (replacing what was there), then deletes them. A missing or damaged shard
/// fails the merge and is kept, to be looked at.
pub fn merge_gradient_shards(adapter_dir: &Path, shards_dir: &Path, shards: usize) -> Result<(), WorkerError> {
    let out = adapter_dir.join(GRADIENT_INDEX_DIR);
    let _ = std::fs::remove_dir_all(&out);
    let parts: Vec<PathBuf> = (0..shards).map(|s| shards_dir.join(s.to_string()).join(GRADIENT_INDEX_DIR)).collect();
    GradientIndex::merge(&parts, &out).map_err(WorkerError::attribution)?;
    std::fs::remove_dir_all(shards_dir).map_err(|e| WorkerError::io(shards_dir, e))
}

/// The gradients an adapter's index holds: those of the upper half of the layers
/// ([`default_first_layer`]), projected (Rademacher) to the smallest multiple of
/// 2 × rank × targets (what a projection must be) of at least [`GRADIENT_PROJECTION_MIN_DIM`]
/// values per layer. Whole rows of a SmolLM2 adapter are megabytes per record; projected, a
/// version of 100,000 records fits in a few GB. The index records both (the manifest and the
/// rows' header), so probes and `verify` take the same.
pub fn probing_for(adapter_dir: &Path, model: &LlamaModel) -> Result<Probing, WorkerError> {
    let path = adapter_dir.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&path).map_err(|e| WorkerError::io(&path, e))?;
    let invalid = |e: String| WorkerError::new(ErrorCode::FailedPrecondition, format!("{}: {e}", path.display()));
    let config: AdapterConfig = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    let targets = config.targets().map_err(|e| invalid(e.to_string()))?.len();
    let per_layer = 2 * config.r * targets;
    if per_layer == 0 {
        return Err(invalid("the adapter has no rank or no targets".into()));
    }
    let dim = GRADIENT_PROJECTION_MIN_DIM.div_ceil(per_layer) * per_layer;
    Ok(Probing {
        projection: Some(Projection { kind: ProjectionKind::Rademacher, dim, seed: GRADIENT_PROJECTION_SEED }),
        first_layer: default_first_layer(model.config().num_layers),
    })
}

/// An adapter's gradient index opened for attribution: the rows in memory and the probe that
/// takes an output's gradient under the adapter.
pub struct AdapterGradients {
    pub index: GradientIndex,
    pub gradients: GradientSet,
    pub probe: GradientProbe,
    /// BLAKE3 over the index's files (what receipts name).
    pub files_hash: ContentHash,
    /// BLAKE3 of adapter_config.json and adapter_model.safetensors, hex, in that order.
    pub adapter_files: Vec<String>,
}

/// Opens the gradient index in `adapter_dir` (what attribution and `verify` read), checking it
/// was built for the adapter's weights there.
pub fn open_gradients(adapter_dir: &Path, model: &LlamaModel) -> Result<AdapterGradients, WorkerError> {
    let dir = adapter_dir.join(GRADIENT_INDEX_DIR);
    let index = GradientIndex::open(&dir).map_err(WorkerError::attribution)?;
    index.check_adapter(adapter_dir).map_err(WorkerError::attribution)?;
    let gradients = index.gradients().map_err(WorkerError::attribution)?;
    let weights = load_adapter_dir("attribution", adapter_dir, model)
        .map_err(|e| WorkerError::new(ErrorCode::Internal, format!("the adapter in {}: {e}", adapter_dir.display())))?;
    let probe = index
        .probing()
        .probe(model, &weights)
        .map_err(|e| WorkerError::new(ErrorCode::Internal, format!("the adapter's gradient probe: {e}")))?;
    let adapter_files = [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
        .into_iter()
        .map(|name| {
            let path = adapter_dir.join(name);
            std::fs::read(&path).map(|bytes| ContentHash::of(&bytes).to_hex()).map_err(|e| WorkerError::io(&path, e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AdapterGradients { files_hash: files_hash(&dir)?, index, gradients, probe, adapter_files })
}

/// The gradient index of `adapter_id` as the worker keeps it under `worker_dir`
/// (`<data_dir>/attribution`), opened with the base model at `base`: what `openledger
/// attribution verify` recomputes an influence receipt with.
pub fn open_adapter_gradients(
    worker_dir: &Path,
    adapter_id: &str,
    base: &Path,
) -> Result<AdapterGradients, WorkerError> {
    let (model, _) = openledger_ml::load_model(base, &candle_core::Device::Cpu)
        .map_err(|e| WorkerError::new(ErrorCode::FailedPrecondition, format!("the base model: {e}")))?;
    open_gradients(&adapter_dir(worker_dir, adapter_id), &model)
}
