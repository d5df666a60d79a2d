//! The entrypoint of an `AttributionJob`'s pods (`openledger index-job <span|gradient> <target>
//! --shards N`, shard from `JOB_COMPLETION_INDEX`): it reads the index's row (the worker queued
//! it before creating the resource), writes the files into its data directory (the shared
//! claim) with the code the local pool runs, and changes nothing else: the worker sees the
//! resource succeed, opens the files and marks the row ready. Everything else it needs comes
//! from the same settings as the worker's (database, object store, datanet-ingest, base model).
//! A gradient index in several shards is written shard by shard into working directories of
//! their own, which the worker merges once the resource has succeeded.

use std::sync::Arc;

use openledger_core::{Config, ErrorCode};
use openledger_model_factory::base::BaseModels;
use openledger_operator::crd::IndexKind;

use crate::{
    WorkerError,
    executor::Built,
    gradients::gradient_index_id,
    indexes::{Indexes, span_index_id},
    limits::MAX_GRADIENT_SHARDS,
    upstream::Services,
};

/// Builds shard `shard` of `shards` of the index of `target` (a snapshot id or an adapter id)
/// with the services `config` names; see the module doc.
pub async fn build_index_shard(
    config: &Config,
    kind: IndexKind,
    target: &str,
    shard: u32,
    shards: u32,
) -> Result<Built, WorkerError> {
    check_shard(kind, shard, shards)?;
    let db = openledger_store::connect(&config.effective_database_url())
        .await
        .map_err(|e| WorkerError::new(ErrorCode::Unavailable, format!("database: {e}")))?;
    let objects = openledger_store::open_object_store(&config.effective_object_store_url())
        .map_err(|e| WorkerError::new(ErrorCode::Unavailable, format!("object store: {e}")))?;
    let upstream = Arc::new(Services::from_config(config, openledger_runtime::Endpoints::default()));
    let bases = Arc::new(BaseModels::from_config(config));
    let indexes = Indexes::new(db, upstream, bases, objects, config.data_dir.join("attribution"), None);
    build_shard(&indexes, kind, target, shard, shards).await
}

/// [`build_index_shard`] with the worker's parts.
pub async fn build_shard(
    indexes: &Indexes,
    kind: IndexKind,
    target: &str,
    shard: u32,
    shards: u32,
) -> Result<Built, WorkerError> {
    check_shard(kind, shard, shards)?;
    let id = match kind {
        IndexKind::Span => span_index_id(target),
        IndexKind::Gradient => gradient_index_id(target),
    };
    let row = indexes.row(&id).await?.ok_or_else(|| {
        WorkerError::new(
            ErrorCode::NotFound,
            format!("no index {id:?}: the attribution-worker queues it before its job"),
        )
    })?;
    let built = match kind {
        IndexKind::Gradient if shards > 1 => {
            indexes.write_gradient_shard(&row, shard as usize, shards as usize).await?
        }
        _ => indexes.write_files(&row).await?,
    };
    tracing::info!(index = %id, records = built.records, shard, shards, "index files written");
    Ok(built)
}

/// A span index is built in one shard (see `kubernetes`), a gradient index in at most
/// [`MAX_GRADIENT_SHARDS`].
fn check_shard(kind: IndexKind, shard: u32, shards: u32) -> Result<(), WorkerError> {
    let most = if kind == IndexKind::Gradient { MAX_GRADIENT_SHARDS } else { 1 };
    if shards == 0 || shards as usize > most || shard >= shards {
        return Err(WorkerError::new(
            ErrorCode::InvalidArgument,
            format!("a {} index is built in 1..={most} shards: got shard {shard} of {shards}", kind.as_str()),
        ));
    }
    Ok(())
}
