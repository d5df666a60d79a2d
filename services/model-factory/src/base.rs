//! The base model adapters are imported for: the one the engines serve, from `base_model` in
//! the configuration, else the packaged SmolLM2 where `openledger_ml::source::find_packaged_model`
//! finds it. Its id is the file name without the extension, its hash BLAKE3 of the file, and
//! its shape comes from the GGUF metadata (or `config.json`) alone: no weights are loaded.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use openledger_core::{Config, ContentHash, ErrorCode};
use openledger_ml::{ModelConfig, Source, source};
use tokio::sync::OnceCell;

use crate::RegistryError;

/// A base model as the registry knows it.
#[derive(Clone, Debug)]
pub struct BaseModel {
    /// What adapters name as their base (`SmolLM2-135M-Instruct.Q4_1`).
    pub id: String,
    pub hash: ContentHash,
    pub config: ModelConfig,
    pub path: PathBuf,
}

impl BaseModel {
    /// Reads `path`'s shape and hash. Blocking (hashes the whole file).
    pub fn read(path: &Path) -> Result<Self, RegistryError> {
        let unusable = |error: openledger_ml::MlError| {
            RegistryError::new(
                ErrorCode::FailedPrecondition,
                format!("the base model {} cannot be read: {error}", path.display()),
            )
        };
        let config = source::read_model_config(path).map_err(unusable)?;
        let hex = openledger_ml::train::hash_path(path).map_err(unusable)?;
        let bytes: [u8; 32] = hex::decode(&hex)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| RegistryError::new(ErrorCode::Internal, format!("{hex:?} is not a BLAKE3 hash")))?;
        Ok(Self { id: source::model_id(path), hash: ContentHash::from_bytes(bytes), config, path: path.to_path_buf() })
    }
}

/// Finds the base model once it exists and keeps it.
pub struct BaseModels {
    /// `base_model` from the configuration; `None` looks for the packaged SmolLM2.
    setting: Option<String>,
    data_dir: PathBuf,
    found: OnceCell<Arc<BaseModel>>,
}

impl BaseModels {
    pub fn new(setting: Option<String>, data_dir: PathBuf) -> Self {
        Self { setting: setting.filter(|setting| !setting.trim().is_empty()), data_dir, found: OnceCell::new() }
    }

    pub fn from_config(config: &Config) -> Self {
        Self::new(config.base_model.clone(), config.data_dir.clone())
    }

    /// A base model at `path` (tests, tools).
    pub fn at(path: &Path) -> Self {
        Self::new(Some(path.display().to_string()), PathBuf::new())
    }

    /// The base model, or `None` when none is configured and the packaged one is not there
    /// (looked for again on every call until found).
    pub async fn current(&self) -> Result<Option<Arc<BaseModel>>, RegistryError> {
        if let Some(found) = self.found.get() {
            return Ok(Some(found.clone()));
        }
        let Some(path) = self.locate().await? else { return Ok(None) };
        let read = tokio::task::spawn_blocking(move || BaseModel::read(&path))
            .await
            .map_err(|error| RegistryError::new(ErrorCode::Internal, format!("reading the base model: {error}")))??;
        Ok(Some(self.found.get_or_init(|| async { Arc::new(read) }).await.clone()))
    }

    /// The base model, or `FAILED_PRECONDITION` saying how to configure one.
    pub async fn require(&self) -> Result<Arc<BaseModel>, RegistryError> {
        self.current().await?.ok_or_else(|| RegistryError::new(ErrorCode::FailedPrecondition, self.missing()))
    }

    async fn locate(&self) -> Result<Option<PathBuf>, RegistryError> {
        let Some(setting) = &self.setting else { return Ok(source::find_packaged_model(&self.data_dir)) };
        let bad = |error: openledger_ml::MlError| {
            RegistryError::new(ErrorCode::FailedPrecondition, format!("base_model {setting:?}: {error}"))
        };
        let source: Source = setting.parse().map_err(bad)?;
        source.resolve_model().await.map(Some).map_err(bad)
    }

    /// What `FAILED_PRECONDITION` says when no base model is there.
    pub(crate) fn missing(&self) -> String {
        let dirs: Vec<String> =
            source::packaged_model_dirs(&self.data_dir).iter().map(|dir| dir.display().to_string()).collect();
        format!(
            "no base model configured: set base_model (--base-model or OPENLEDGER_BASE_MODEL) to a GGUF file or \
             safetensors directory, or fetch the packaged one with `scripts/fetch-models.sh smollm2` so that {} \
             is in one of {}",
            source::PACKAGED_MODEL_FILE,
            dirs.join(", ")
        )
    }
}
