//! An import's files from its `source`: `hf://owner/name[@rev]` through `openledger_ml`'s hub
//! fetch, or a key prefix in the platform's object store (`<prefix>/adapter_config.json` and
//! `<prefix>/adapter_model.safetensors`). Sizes are checked before a file is read.

use bytes::Bytes;
use object_store::{ObjectStore, path::Path as ObjectPath};
use openledger_core::ErrorCode;
use openledger_ml::adapters::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};

use super::invalid;
use crate::{RegistryError, limits::AdapterLimits};

/// Both files of the adapter at `source`.
pub(super) async fn fetch_source(
    objects: &dyn ObjectStore,
    source: &str,
    limits: &AdapterLimits,
) -> Result<(Bytes, Bytes), RegistryError> {
    if openledger_ml::adapters::is_hub_id(source) {
        return fetch_hub(source, limits).await;
    }
    check_prefix(source)?;
    let prefix = source.trim_end_matches('/');
    let config = read_object(objects, &format!("{prefix}/{ADAPTER_CONFIG}"), limits.max_config_bytes).await?;
    let weights = read_object(objects, &format!("{prefix}/{ADAPTER_WEIGHTS}"), limits.max_weights_bytes).await?;
    Ok((config, weights))
}

/// An object-store key prefix: relative, `/`-separated segments of `[A-Za-z0-9._-]`, none `.`
/// or `..` (so it cannot name another scheme or climb out of the store).
fn check_prefix(source: &str) -> Result<(), RegistryError> {
    let trimmed = source.trim_end_matches('/');
    let ok = !trimmed.is_empty()
        && trimmed.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "source {source:?} must be hf://owner/name[@revision] or an object-store key prefix such as \
             uploads/my-adapter (segments of A-Z a-z 0-9 . _ -)"
        )))
    }
}

async fn read_object(objects: &dyn ObjectStore, key: &str, max_bytes: u64) -> Result<Bytes, RegistryError> {
    let path = ObjectPath::from(key);
    let failed = |error: object_store::Error| match error {
        object_store::Error::NotFound { .. } => RegistryError::new(
            ErrorCode::FailedPrecondition,
            format!(
                "the object store has no {key}: upload adapter_config.json and adapter_model.safetensors under the source prefix first"
            ),
        ),
        other => RegistryError::new(ErrorCode::Unavailable, format!("reading {key} from the object store: {other}")),
    };
    let meta = objects.head(&path).await.map_err(failed)?;
    if meta.size > max_bytes {
        return Err(invalid(format!("{key} is {} bytes; the registry accepts at most {max_bytes}", meta.size)));
    }
    objects.get(&path).await.map_err(failed)?.bytes().await.map_err(failed)
}

async fn fetch_hub(source: &str, limits: &AdapterLimits) -> Result<(Bytes, Bytes), RegistryError> {
    let dir = openledger_ml::adapters::fetch_hub_adapter_dir(source).await.map_err(|error| match error {
        openledger_ml::MlError::InvalidRequest(message) => invalid(message),
        other => RegistryError::new(
            ErrorCode::FailedPrecondition,
            format!(
                "{other}: check that {source} is a PEFT adapter repository this server can reach \
                 (or upload the two files instead)"
            ),
        ),
    })?;
    let config = read_file(source, &dir.join(ADAPTER_CONFIG), limits.max_config_bytes).await?;
    let weights = read_file(source, &dir.join(ADAPTER_WEIGHTS), limits.max_weights_bytes).await?;
    Ok((config, weights))
}

/// One downloaded file, its size checked before it is read.
async fn read_file(source: &str, path: &std::path::Path, max_bytes: u64) -> Result<Bytes, RegistryError> {
    let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let unreadable = |error: std::io::Error| {
        RegistryError::new(ErrorCode::FailedPrecondition, format!("{source}: reading {name}: {error}"))
    };
    let size = tokio::fs::metadata(path).await.map_err(unreadable)?.len();
    if size > max_bytes {
        return Err(invalid(format!("{source}: {name} is {size} bytes; the registry accepts at most {max_bytes}")));
    }
    Ok(Bytes::from(tokio::fs::read(path).await.map_err(unreadable)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_stay_inside_the_store() {
        for good in ["uploads/a", "uploads/a/", "x", "a.b/c-d_e"] {
            assert!(check_prefix(good).is_ok(), "{good}");
        }
        for bad in ["", "/", "s3://bucket/a", "../a", "a/../b", "a//b", "a b", "a\nb", "./a"] {
            assert_eq!(check_prefix(bad).expect_err(bad).code, ErrorCode::InvalidArgument, "{bad:?}");
        }
    }
}
