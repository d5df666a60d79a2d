//! The object store, chosen by URL: `file:///dir` (embedded), `s3://bucket[/prefix]`
//! (S3-compatible: credentials, region and `AWS_ENDPOINT` from the environment), `memory://`.

use std::sync::Arc;

use object_store::{
    ObjectStore,
    aws::{AmazonS3Builder, AmazonS3ConfigKey},
    local::LocalFileSystem,
    memory::InMemory,
    path::Path,
};

use crate::StoreError;

/// Opens the object store named by `url`; a local directory is created if missing. S3
/// settings come from the `AWS_*` environment variables.
pub fn open_object_store(url: &str) -> Result<Arc<dyn ObjectStore>, StoreError> {
    open_object_store_with(url, &[])
}

/// Like [`open_object_store`], with S3 settings given explicitly on top of the environment
/// (keys as object_store names them: `aws_endpoint`, `aws_allow_http`, `aws_region`,
/// `aws_access_key_id`, `aws_secret_access_key`, …).
pub fn open_object_store_with(url: &str, s3_options: &[(&str, &str)]) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let invalid = |reason: String| StoreError::ObjectStoreUrl { url: url.to_owned(), reason };
    if let Some(path) = url.strip_prefix("file://") {
        if path.is_empty() || !path.starts_with('/') {
            return Err(invalid("file URLs need an absolute path: file:///var/lib/openledger/objects".into()));
        }
        std::fs::create_dir_all(path).map_err(|error| invalid(error.to_string()))?;
        let store = LocalFileSystem::new_with_prefix(path).map_err(|error| invalid(error.to_string()))?;
        return Ok(Arc::new(store.with_automatic_cleanup(true)));
    }
    if url == "memory://" {
        return Ok(Arc::new(InMemory::new()));
    }
    if url.starts_with("s3://") {
        let mut builder = AmazonS3Builder::from_env().with_url(url);
        for (key, value) in s3_options {
            let key: AmazonS3ConfigKey = key.parse().map_err(|_| invalid(format!("unknown S3 option {key:?}")))?;
            builder = builder.with_config(key, *value);
        }
        let store = builder.build().map_err(|error| invalid(error.to_string()))?;
        return Ok(Arc::new(store));
    }
    Err(invalid("accepted schemes are file://, s3:// and memory://".into()))
}

/// Succeeds when the store answers (readiness): a missing probe object is a good answer.
pub async fn check_object_store(store: &dyn ObjectStore) -> Result<(), StoreError> {
    match store.head(&Path::from(".openledger-readiness-probe")).await {
        Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[tokio::test]
    async fn local_directories_store_and_read_objects() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("file://{}/objects", dir.path().display());
        let store = open_object_store(&url).expect("open");
        check_object_store(store.as_ref()).await.expect("reachable");
        let key = Path::from("datanets/abc/record");
        store.put(&key, Bytes::from_static(b"hello").into()).await.expect("put");
        let read = store.get(&key).await.expect("get").bytes().await.expect("bytes");
        assert_eq!(&read[..], b"hello");
        assert!(dir.path().join("objects/datanets/abc/record").is_file());
    }

    #[test]
    fn unknown_or_relative_urls_are_refused() {
        for bad in ["ftp://x", "file://relative/path", "objects"] {
            assert!(matches!(open_object_store(bad), Err(StoreError::ObjectStoreUrl { .. })), "{bad}");
        }
    }
}
