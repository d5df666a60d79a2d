//! The indexes attribution reads, built without anyone asking: a span index for every sealed
//! Datanet version (`ol.datanet.snapshot.sealed`, or the first inference of an adapter trained
//! on a version the worker has not indexed), and a gradient index for every adapter registered
//! with lineage (`ol.modelfactory.adapter.registered`; see `gradients`), built once its
//! version's span index is ready. The first gradient index of a version is followed by that
//! version's contributor quality (`quality`). An [`IndexExecutor`] writes the files: in this
//! process on a bounded pool (`local`), or as `AttributionJob`s on Kubernetes (`executor`);
//! either way the state is a row (`queued`, `building`, `ready`, `failed`), so a build a
//! restart interrupted is started again (or followed again). The base model is loaded once
//! for every gradient build; the gradient indexes of the adapters used most recently are kept
//! open ([`MAX_OPEN_GRADIENT_INDEXES`]).
//!
//! On disk, under `<data_dir>/attribution/versions/<snapshot_id>/`: the version as
//! `openledger datanet export` writes it (`records.jsonl`, `manifest.json`), `accounts.json`
//! (each contribution's bond account) and `span-index/`. [`files_hash`] over those files is
//! what receipts name.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use object_store::ObjectStore;
use openledger_attribution::{
    corpus::{Corpus, ExportWriter, Manifest},
    credit::{CreditGroups, CreditParams},
    influence::GradientIndex,
    quality::DEFAULT_QUALITY_ESTIMATOR,
    span::SpanIndex,
};
use openledger_core::{ContentHash, ErrorCode};
use openledger_ml::{LlamaModel, Tokenizer};
use openledger_model_factory::base::BaseModels;
use openledger_store::now_ms;
use parking_lot::Mutex;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
    sea_query::OnConflict,
};
use tokio::sync::{Notify, OnceCell};

use crate::{
    WorkerError,
    entities::index,
    executor::{Built, IndexExecutor, LocalIndexExecutor},
    gradients::{
        AdapterGradients, GRADIENT_INDEX_DIR, GradientSource, adapter_dir, build_gradient_index, fetch_adapter,
        gradient_index_id, gradient_shard_dir, gradient_shards_dir, lineage_records, merge_gradient_shards,
        open_gradients,
    },
    limits::{self, ASSESS_ATTEMPTS, ASSESS_RETRY_MAX_DELAY, MAX_OPEN_GRADIENT_INDEXES, RETRY_DELAY, SHARD_TOKENS},
    quality::{self, Assessed},
    upstream::Upstream,
};

pub const QUEUED: &str = "queued";
pub const BUILDING: &str = "building";
pub const READY: &str = "ready";
pub const FAILED: &str = "failed";
pub const SPAN: &str = "span";
pub const GRADIENT: &str = "gradient";
/// Each contribution's bond account, beside the export.
pub const ACCOUNTS_FILE: &str = "accounts.json";
pub const SPAN_INDEX_DIR: &str = "span-index";

/// Where a version's files are under the worker's directory (`<data_dir>/attribution`).
pub fn version_dir(dir: &Path, snapshot_id: &str) -> PathBuf {
    dir.join("versions").join(snapshot_id)
}

/// The id of a version's span index.
pub fn span_index_id(snapshot_id: &str) -> String {
    format!("span:{snapshot_id}")
}

/// A version ready to attribute against.
pub struct Version {
    pub corpus: Corpus,
    pub groups: CreditGroups,
    pub spans: SpanIndex,
    pub tokenizer: Arc<Tokenizer>,
    /// Contribution id → the bond account it named (absent: none).
    pub accounts: HashMap<String, u128>,
    pub files_hash: ContentHash,
    pub snapshot_root: ContentHash,
}

/// The worker's indexes.
pub struct Indexes {
    db: DatabaseConnection,
    upstream: Arc<dyn Upstream>,
    bases: Arc<BaseModels>,
    objects: Arc<dyn ObjectStore>,
    tokenizer: OnceCell<Arc<Tokenizer>>,
    /// The base model, loaded once for every gradient build and probe.
    model: OnceCell<Arc<LlamaModel>>,
    dir: PathBuf,
    loaded: Mutex<HashMap<String, Arc<Version>>>,
    /// The opened gradient indexes by adapter id, at most [`MAX_OPEN_GRADIENT_INDEXES`].
    gradients: Mutex<Recent<Arc<AdapterGradients>>>,
    executor: Arc<dyn IndexExecutor>,
    outbox_wake: Option<Arc<Notify>>,
}

/// Values by key, the least recently used dropped past `capacity`: the opened gradient indexes
/// (each holds its rows and a probe with f32 copies of the base model's weights, so their
/// number is what bounds the worker's memory).
struct Recent<T> {
    /// Key → the value and when it was last used (a counter).
    by_key: HashMap<String, (T, u64)>,
    uses: u64,
    capacity: usize,
}

impl<T: Clone> Recent<T> {
    fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "a cache holds at least one value");
        Self { by_key: HashMap::new(), uses: 0, capacity }
    }

    fn get(&mut self, key: &str) -> Option<T> {
        self.uses += 1;
        let uses = self.uses;
        self.by_key.get_mut(key).map(|(found, last)| {
            *last = uses;
            found.clone()
        })
    }

    fn insert(&mut self, key: &str, value: T) {
        self.by_key.remove(key);
        while self.by_key.len() >= self.capacity {
            let Some(oldest) = self.by_key.iter().min_by_key(|(_, (_, last))| *last).map(|(key, _)| key.clone()) else {
                break;
            };
            self.by_key.remove(&oldest);
        }
        self.uses += 1;
        self.by_key.insert(key.to_owned(), (value, self.uses));
        debug_assert!(self.by_key.len() <= self.capacity);
    }

    fn remove(&mut self, key: &str) {
        self.by_key.remove(key);
    }
}

/// An adapter registered with lineage, whose gradient index to build.
#[derive(Clone, Debug)]
pub struct AdapterRef {
    pub adapter_id: String,
    pub version: VersionRef,
    pub source: GradientSource,
}

/// What to index.
#[derive(Clone, Debug)]
pub struct VersionRef {
    pub datanet_id: String,
    pub snapshot_id: String,
    pub root: ContentHash,
    /// 0 when only the id is known.
    pub version: u64,
}

fn check_path_part(value: &str, what: &str) -> Result<(), WorkerError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !value.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(WorkerError::new(ErrorCode::InvalidArgument, format!("{what} {value:?} is not a valid id")))
    }
}

impl Indexes {
    pub fn new(
        db: DatabaseConnection,
        upstream: Arc<dyn Upstream>,
        bases: Arc<BaseModels>,
        objects: Arc<dyn ObjectStore>,
        dir: PathBuf,
        outbox_wake: Option<Arc<Notify>>,
    ) -> Self {
        Self {
            db,
            upstream,
            bases,
            objects,
            tokenizer: OnceCell::new(),
            model: OnceCell::new(),
            dir,
            loaded: Mutex::new(HashMap::new()),
            gradients: Mutex::new(Recent::new(MAX_OPEN_GRADIENT_INDEXES)),
            executor: Arc::new(LocalIndexExecutor::new()),
            outbox_wake,
        }
    }

    /// Builds with `executor` instead of the local pool.
    pub fn with_executor(mut self, executor: Arc<dyn IndexExecutor>) -> Self {
        self.executor = executor;
        self
    }

    /// The base model (what gradient indexes and probes are computed with), loaded once.
    pub async fn model(&self) -> Result<Arc<LlamaModel>, WorkerError> {
        self.model
            .get_or_try_init(|| async {
                let base = self.bases.require().await.map_err(|e| WorkerError::new(e.code, e.message))?;
                let path = base.path.clone();
                let (model, _) =
                    tokio::task::spawn_blocking(move || openledger_ml::load_model(&path, &candle_core::Device::Cpu))
                        .await
                        .map_err(WorkerError::internal)?
                        .map_err(|e| WorkerError::new(ErrorCode::FailedPrecondition, format!("the base model: {e}")))?;
                Ok(Arc::new(model))
            })
            .await
            .cloned()
    }

    /// The base model's tokenizer (what span indexes are built with).
    pub async fn tokenizer(&self) -> Result<Arc<Tokenizer>, WorkerError> {
        self.tokenizer
            .get_or_try_init(|| async {
                let base = self.bases.require().await.map_err(|e| WorkerError::new(e.code, e.message))?;
                let path = base.path.clone();
                let tokenizer = tokio::task::spawn_blocking(move || openledger_ml::source::load_tokenizer(&path))
                    .await
                    .map_err(WorkerError::internal)?
                    .map_err(|e| {
                        WorkerError::new(ErrorCode::FailedPrecondition, format!("the base model's tokenizer: {e}"))
                    })?;
                Ok(Arc::new(tokenizer))
            })
            .await
            .cloned()
    }

    fn version_dir(&self, snapshot_id: &str) -> PathBuf {
        version_dir(&self.dir, snapshot_id)
    }

    /// Asks for the version's span index: queued and built unless it exists. Returns its row.
    pub async fn request(self: &Arc<Self>, version: &VersionRef) -> Result<index::Model, WorkerError> {
        check_path_part(&version.snapshot_id, "snapshot id")?;
        let id = span_index_id(&version.snapshot_id);
        let now = now_ms();
        let row = index::ActiveModel {
            id: Set(id.clone()),
            kind: Set(SPAN.into()),
            datanet_id: Set(version.datanet_id.clone()),
            snapshot_id: Set(version.snapshot_id.clone()),
            snapshot_root: Set(version.root.as_bytes().to_vec()),
            version: Set(version.version as i64),
            adapter_id: Set(String::new()),
            state: Set(QUEUED.into()),
            records_indexed: Set(0),
            location: Set(self.version_dir(&version.snapshot_id).display().to_string()),
            files_hash: Set(Vec::new()),
            error: Set(String::new()),
            created_at_ms: Set(now),
            updated_at_ms: Set(now),
            source: Set(String::new()),
        };
        self.insert(&id, row).await
    }

    /// Asks for an adapter's gradient index: queued unless it exists, built once the span index
    /// of its version is ready. Returns its row.
    pub async fn request_gradient(self: &Arc<Self>, adapter: &AdapterRef) -> Result<index::Model, WorkerError> {
        let version = &adapter.version;
        check_path_part(&version.snapshot_id, "snapshot id")?;
        if adapter.adapter_id.is_empty() || adapter.adapter_id.len() > 128 {
            return Err(WorkerError::new(
                ErrorCode::InvalidArgument,
                format!("adapter id {:?} must be 1..=128 bytes", adapter.adapter_id),
            ));
        }
        let id = gradient_index_id(&adapter.adapter_id);
        let now = now_ms();
        let row = index::ActiveModel {
            id: Set(id.clone()),
            kind: Set(GRADIENT.into()),
            datanet_id: Set(version.datanet_id.clone()),
            snapshot_id: Set(version.snapshot_id.clone()),
            snapshot_root: Set(version.root.as_bytes().to_vec()),
            version: Set(version.version as i64),
            adapter_id: Set(adapter.adapter_id.clone()),
            state: Set(QUEUED.into()),
            records_indexed: Set(0),
            location: Set(adapter_dir(&self.dir, &adapter.adapter_id).join(GRADIENT_INDEX_DIR).display().to_string()),
            files_hash: Set(Vec::new()),
            error: Set(String::new()),
            created_at_ms: Set(now),
            updated_at_ms: Set(now),
            source: Set(serde_json::to_string(&adapter.source).map_err(WorkerError::internal)?),
        };
        self.insert(&id, row).await
    }

    /// Inserts a queued row unless its id exists, and builds it; returns the row as stored.
    async fn insert(self: &Arc<Self>, id: &str, row: index::ActiveModel) -> Result<index::Model, WorkerError> {
        let inserted = index::Entity::insert(row)
            .on_conflict(OnConflict::column(index::Column::Id).do_nothing().to_owned())
            .exec_without_returning(&self.db)
            .await?;
        let row = self.row(id).await?.ok_or_else(|| WorkerError::new(ErrorCode::Internal, "the index row vanished"))?;
        if inserted == 1 {
            tracing::info!(index = %id, datanet = %row.datanet_id, "index queued");
            self.spawn_build(row.clone());
        }
        Ok(row)
    }

    /// Builds a failed index again.
    pub async fn retry(self: &Arc<Self>, id: &str) -> Result<index::Model, WorkerError> {
        let row =
            self.row(id).await?.ok_or_else(|| WorkerError::new(ErrorCode::NotFound, format!("no index {id:?}")))?;
        if row.state != FAILED {
            return Ok(row);
        }
        self.executor.forget(&row).await?;
        let mut active: index::ActiveModel = row.into();
        active.state = Set(QUEUED.into());
        active.error = Set(String::new());
        active.updated_at_ms = Set(now_ms());
        let row = active.update(&self.db).await?;
        self.spawn_build(row.clone());
        Ok(row)
    }

    pub async fn row(&self, id: &str) -> Result<Option<index::Model>, WorkerError> {
        Ok(index::Entity::find_by_id(id).one(&self.db).await?)
    }

    /// The index's row when the index is ready.
    async fn ready_row(&self, id: &str) -> Result<Option<index::Model>, WorkerError> {
        Ok(self.row(id).await?.filter(|row| row.state == READY))
    }

    /// A page of indexes in id order, of one version and/or adapter when named (empty: any),
    /// after `page_token` (the last id of the previous page); the next page's token is empty on
    /// the last page. A size of 0 is the default, above the maximum the maximum.
    pub async fn page(
        &self,
        snapshot_id: &str,
        adapter_id: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<index::Model>, String), WorkerError> {
        let size = openledger_store::page::page_size(page_size, limits::DEFAULT_PAGE_SIZE, limits::MAX_PAGE_SIZE);
        let mut query = index::Entity::find().order_by_asc(index::Column::Id).limit(u64::from(size) + 1);
        if !snapshot_id.is_empty() {
            query = query.filter(index::Column::SnapshotId.eq(snapshot_id));
        }
        if !adapter_id.is_empty() {
            query = query.filter(index::Column::AdapterId.eq(adapter_id));
        }
        if !page_token.is_empty() {
            query = query.filter(index::Column::Id.gt(page_token));
        }
        let mut rows = query.all(&self.db).await?;
        let next = openledger_store::page::cut_page(&mut rows, size, |row| row.id.clone());
        Ok((rows, next))
    }

    /// Starts again every build a restart interrupted, and every quality assessment a restart
    /// interrupted after its gradient index was ready.
    pub async fn resume(self: &Arc<Self>) -> Result<usize, WorkerError> {
        let rows = index::Entity::find().filter(index::Column::State.is_in([QUEUED, BUILDING])).all(&self.db).await?;
        let count = rows.len();
        for row in rows {
            self.spawn_build(row);
        }
        let ready = index::Entity::find()
            .filter(index::Column::Kind.eq(GRADIENT))
            .filter(index::Column::State.eq(READY))
            .all(&self.db)
            .await?;
        for row in ready {
            if !quality::assessed(&self.db, &row.snapshot_id).await? {
                let indexes = self.clone();
                tokio::spawn(async move { indexes.assess_logged(&row).await });
            }
        }
        Ok(count)
    }

    /// Builds the row's index, trying again after a transient failure. The executor's permit
    /// (the local pool's) is held for one attempt only: a gradient index waiting for its span
    /// index lets it build.
    fn spawn_build(self: &Arc<Self>, row: index::Model) {
        let indexes = self.clone();
        tokio::spawn(async move {
            loop {
                let permit = indexes.executor.admit().await;
                let built =
                    if row.kind == GRADIENT { indexes.build_gradient(&row).await } else { indexes.build(&row).await };
                drop(permit);
                match built {
                    Ok(()) => {
                        if row.kind == GRADIENT {
                            indexes.assess_logged(&row).await;
                        }
                        return;
                    }
                    Err(error) if error.transient => {
                        tracing::warn!(index = %row.id, %error, "building the index failed for now; trying again");
                        tokio::time::sleep(RETRY_DELAY).await;
                    }
                    Err(error) => {
                        tracing::error!(index = %row.id, %error, "building the index failed");
                        let _ = indexes
                            .set_state(&row.id, FAILED, |active| active.error = Set(error.message.clone()))
                            .await;
                        return;
                    }
                }
            }
        });
    }

    async fn set_state(
        &self,
        id: &str,
        state: &str,
        change: impl FnOnce(&mut index::ActiveModel),
    ) -> Result<(), WorkerError> {
        let Some(row) = self.row(id).await? else { return Ok(()) };
        let mut active: index::ActiveModel = row.into();
        active.state = Set(state.into());
        active.updated_at_ms = Set(now_ms());
        change(&mut active);
        active.update(&self.db).await?;
        Ok(())
    }

    async fn build(&self, row: &index::Model) -> Result<(), WorkerError> {
        self.set_state(&row.id, BUILDING, |_| {}).await?;
        let built = self.executor.build(self, row).await?;
        self.set_ready(row, &built).await?;
        tracing::info!(index = %row.id, records = built.records, executor = self.executor.name(), "span index ready");
        Ok(())
    }

    async fn set_ready(&self, row: &index::Model, built: &Built) -> Result<(), WorkerError> {
        self.set_state(&row.id, READY, |active| {
            active.records_indexed = Set(built.records as i64);
            active.files_hash = Set(built.files_hash.as_bytes().to_vec());
        })
        .await
    }

    /// Writes the row's index files under the worker's directory, the same here and in an
    /// `AttributionJob`'s pod (`index_job`): a span index's version (export, accounts, suffix
    /// arrays), or a gradient index with its adapter's files fetched from the object store.
    pub(crate) async fn write_files(&self, row: &index::Model) -> Result<Built, WorkerError> {
        if row.kind == GRADIENT { self.write_gradient_files(row).await } else { self.write_span_files(row).await }
    }

    async fn write_span_files(&self, row: &index::Model) -> Result<Built, WorkerError> {
        let tokenizer = self.tokenizer().await?;
        let records = self.upstream.records(&row.datanet_id, &row.snapshot_id).await?;
        let dir = self.version_dir(&row.snapshot_id);
        let root = ContentHash::try_from(row.snapshot_root.as_slice()).map_err(|_| {
            WorkerError::new(ErrorCode::Internal, format!("index {} has no valid version root", row.id))
        })?;
        let manifest = Manifest {
            format: String::new(),
            datanet_id: row.datanet_id.clone(),
            slug: row.datanet_id.clone(),
            version: row.version as u64,
            snapshot_id: row.snapshot_id.clone(),
            merkle_root: root.to_hex(),
            records: 0,
        };
        let (records, files_hash) =
            tokio::task::spawn_blocking(move || write_version(&dir, &records, manifest, &tokenizer))
                .await
                .map_err(WorkerError::internal)??;
        Ok(Built { records, files_hash })
    }

    async fn write_gradient_files(&self, row: &index::Model) -> Result<Built, WorkerError> {
        self.write_gradient_part(row, adapter_dir(&self.dir, &row.adapter_id), (0, 1)).await
    }

    /// Shard `shard` of `shards` of a gradient row's index, in the shard's own working
    /// directory (`gradients::gradient_shard_dir`), for [`Self::merge_gradient_shards`].
    pub(crate) async fn write_gradient_shard(
        &self,
        row: &index::Model,
        shard: usize,
        shards: usize,
    ) -> Result<Built, WorkerError> {
        let work = gradient_shard_dir(&self.dir, &row.adapter_id, shard);
        self.write_gradient_part(row, work, (shard, shards)).await
    }

    async fn write_gradient_part(
        &self,
        row: &index::Model,
        adapter: PathBuf,
        part: (usize, usize),
    ) -> Result<Built, WorkerError> {
        fetch_adapter(self.objects.as_ref(), &gradient_source(row)?, &adapter).await?;
        let (model, tokenizer) = (self.model().await?, self.tokenizer().await?);
        let version = self.version_dir(&row.snapshot_id);
        let (records, files_hash) =
            tokio::task::spawn_blocking(move || build_gradient_index(&model, &tokenizer, &adapter, &version, part))
                .await
                .map_err(WorkerError::internal)??;
        Ok(Built { records, files_hash })
    }

    /// Training records of a gradient row's adapter, read from its lineage in the object store
    /// (what the kubernetes executor picks the shard count by).
    pub(crate) async fn gradient_records(&self, row: &index::Model) -> Result<usize, WorkerError> {
        lineage_records(self.objects.as_ref(), &gradient_source(row)?).await
    }

    /// Once every shard's pod is done: fetches the adapter's files where the index is read and
    /// merges the shards into its index, as a whole build writes it. A worker restarted after
    /// a merge (the shards deleted, the index whole) finds it done.
    pub(crate) async fn merge_gradient_shards(&self, row: &index::Model, shards: usize) -> Result<(), WorkerError> {
        let adapter = adapter_dir(&self.dir, &row.adapter_id);
        let shards_dir = gradient_shards_dir(&self.dir, &row.adapter_id);
        if !shards_dir.exists() && GradientIndex::find(&adapter.join(GRADIENT_INDEX_DIR)).is_ok_and(|i| i.is_some()) {
            return Ok(());
        }
        fetch_adapter(self.objects.as_ref(), &gradient_source(row)?, &adapter).await?;
        tokio::task::spawn_blocking(move || merge_gradient_shards(&adapter, &shards_dir, shards))
            .await
            .map_err(WorkerError::internal)?
    }

    /// Opens and checks the row's index files that another process wrote (an `AttributionJob`'s
    /// pod, on the shared volume): what they hold, as [`Self::write_files`] returns it.
    pub(crate) async fn open_files(&self, row: &index::Model) -> Result<Built, WorkerError> {
        if row.kind == GRADIENT {
            let dir = adapter_dir(&self.dir, &row.adapter_id);
            return tokio::task::spawn_blocking(move || {
                let out = dir.join(GRADIENT_INDEX_DIR);
                let index = GradientIndex::open(&out).map_err(WorkerError::attribution)?;
                index.check_adapter(&dir).map_err(WorkerError::attribution)?;
                Ok(Built { records: index.len(), files_hash: files_hash(&out)? })
            })
            .await
            .map_err(WorkerError::internal)?;
        }
        let tokenizer = self.tokenizer().await?;
        let dir = self.version_dir(&row.snapshot_id);
        let version = tokio::task::spawn_blocking(move || open_version(&dir, tokenizer))
            .await
            .map_err(WorkerError::internal)??;
        if version.snapshot_root.as_bytes().as_slice() != row.snapshot_root.as_slice() {
            return Err(WorkerError::new(
                ErrorCode::Internal,
                format!("the files of index {} are of another version (root {})", row.id, version.snapshot_root),
            ));
        }
        Ok(Built { records: version.corpus.records.len(), files_hash: version.files_hash })
    }

    /// Builds an adapter's gradient index once its version's span index is ready (a transient
    /// error until then).
    async fn build_gradient(&self, row: &index::Model) -> Result<(), WorkerError> {
        let span = self.row(&span_index_id(&row.snapshot_id)).await?;
        match span.as_ref().map(|span| span.state.as_str()) {
            Some(READY) => {}
            Some(FAILED) => {
                return Err(WorkerError::new(
                    ErrorCode::FailedPrecondition,
                    format!("the span index of version {} failed: retry it, then this index", row.snapshot_id),
                ));
            }
            _ => {
                return Err(WorkerError::new(
                    ErrorCode::Unavailable,
                    format!("waiting for the span index of version {}", row.snapshot_id),
                ));
            }
        }
        self.set_state(&row.id, BUILDING, |_| {}).await?;
        let built = self.executor.build(self, row).await?;
        self.gradients.lock().remove(&row.adapter_id);
        self.set_ready(row, &built).await?;
        tracing::info!(index = %row.id, records = built.records, executor = self.executor.name(), "gradient index ready");
        Ok(())
    }

    /// The adapter's gradient index when it is ready (opened once, then kept).
    pub async fn gradients(&self, adapter_id: &str) -> Result<Option<Arc<AdapterGradients>>, WorkerError> {
        if let Some(found) = self.gradients.lock().get(adapter_id) {
            return Ok(Some(found.clone()));
        }
        let Some(row) = self.ready_row(&gradient_index_id(adapter_id)).await? else { return Ok(None) };
        let model = self.model().await?;
        let dir = adapter_dir(&self.dir, adapter_id);
        let opened = tokio::task::spawn_blocking(move || open_gradients(&dir, &model))
            .await
            .map_err(WorkerError::internal)??;
        check_unchanged(&row, &opened.files_hash)?;
        let opened = Arc::new(opened);
        self.gradients.lock().insert(adapter_id, opened.clone());
        Ok(Some(opened))
    }

    /// Assesses the row's version, trying again after a transient failure (the ledger away
    /// when the threshold is read) at most [`ASSESS_ATTEMPTS`] times, backing off; bonds the
    /// assessment never reaches are released by datanet-ingest's timeout.
    async fn assess_logged(&self, row: &index::Model) {
        let mut delay = RETRY_DELAY;
        for attempt in 1..=ASSESS_ATTEMPTS {
            match self.assess(row).await {
                Ok(()) => return,
                Err(error) if error.transient && attempt < ASSESS_ATTEMPTS => {
                    tracing::warn!(index = %row.id, %error, attempt, "assessing contributor quality failed for now; trying again");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(ASSESS_RETRY_MAX_DELAY);
                }
                Err(error) => {
                    tracing::error!(index = %row.id, %error, attempt, "assessing contributor quality failed");
                    return;
                }
            }
        }
    }

    /// The contributor quality of the row's version on its adapter, unless the version was
    /// assessed before (on its first adapter): the held-out split as the validation set, the
    /// default estimator and the slashing threshold in force (governed, read from the ledger
    /// now); recorded with its event.
    pub(crate) async fn assess(&self, row: &index::Model) -> Result<(), WorkerError> {
        if quality::assessed(&self.db, &row.snapshot_id).await? {
            return Ok(());
        }
        let Some(opened) = self.gradients(&row.adapter_id).await? else { return Ok(()) };
        let threshold = self.upstream.slashing_threshold().await?;
        let (model, tokenizer) = (self.model().await?, self.tokenizer().await?);
        let (adapter, version) = (adapter_dir(&self.dir, &row.adapter_id), self.version_dir(&row.snapshot_id));
        let report = tokio::task::spawn_blocking(move || {
            openledger_attribution::quality::assess(
                &model,
                &tokenizer,
                &adapter,
                &version,
                &opened.index,
                None,
                DEFAULT_QUALITY_ESTIMATOR,
                threshold,
            )
        })
        .await
        .map_err(WorkerError::internal)?
        .map_err(WorkerError::attribution)?;
        let assessed = Assessed {
            datanet_id: row.datanet_id.clone(),
            snapshot_id: row.snapshot_id.clone(),
            adapter_id: row.adapter_id.clone(),
        };
        if quality::record(&self.db, &assessed, &report).await?
            && let Some(wake) = &self.outbox_wake
        {
            wake.notify_one();
        }
        Ok(())
    }

    /// The version, when its span index is ready (opened once, then kept).
    pub async fn version(&self, snapshot_id: &str) -> Result<Option<Arc<Version>>, WorkerError> {
        if let Some(found) = self.loaded.lock().get(snapshot_id) {
            return Ok(Some(found.clone()));
        }
        let Some(row) = self.ready_row(&span_index_id(snapshot_id)).await? else { return Ok(None) };
        let tokenizer = self.tokenizer().await?;
        let dir = self.version_dir(snapshot_id);
        let version = tokio::task::spawn_blocking(move || open_version(&dir, tokenizer))
            .await
            .map_err(WorkerError::internal)??;
        check_unchanged(&row, &version.files_hash)?;
        let version = Arc::new(version);
        self.loaded.lock().insert(snapshot_id.to_owned(), version.clone());
        Ok(Some(version))
    }
}

/// An opened index's files hash to what its row recorded when it was built.
fn gradient_source(row: &index::Model) -> Result<GradientSource, WorkerError> {
    serde_json::from_str(&row.source)
        .map_err(|e| WorkerError::new(ErrorCode::Internal, format!("index {} names no valid source: {e}", row.id)))
}

fn check_unchanged(row: &index::Model, files_hash: &ContentHash) -> Result<(), WorkerError> {
    if files_hash.as_bytes().as_slice() != row.files_hash.as_slice() {
        return Err(WorkerError::new(
            ErrorCode::Internal,
            format!("the files of index {} changed since it was built: rebuild it", row.id),
        ));
    }
    Ok(())
}

/// Writes the export, the accounts and the span index of a version into `dir` (replacing a
/// half-built one); returns the record count and the files' hash.
fn write_version(
    dir: &Path,
    records: &[crate::upstream::VersionRecord],
    manifest: Manifest,
    tokenizer: &Tokenizer,
) -> Result<(usize, ContentHash), WorkerError> {
    let _ = std::fs::remove_dir_all(dir);
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| WorkerError::io(parent, e))?;
    }
    let mut export = ExportWriter::create(dir).map_err(WorkerError::attribution)?;
    let mut accounts = std::collections::BTreeMap::new();
    for record in records {
        export
            .push(record.hash, &record.contribution_id, &record.contributor, &record.body)
            .map_err(WorkerError::attribution)?;
        if record.account != 0 {
            accounts.insert(record.contribution_id.clone(), record.account.to_string());
        }
    }
    export.finish(manifest).map_err(WorkerError::attribution)?;
    let path = dir.join(ACCOUNTS_FILE);
    std::fs::write(&path, serde_json::to_vec(&accounts).map_err(WorkerError::internal)?)
        .map_err(|e| WorkerError::io(&path, e))?;
    let corpus = Corpus::read_export(dir).map_err(WorkerError::attribution)?;
    SpanIndex::build(&corpus, tokenizer, &dir.join(SPAN_INDEX_DIR), SHARD_TOKENS, &mut |_, _| {})
        .map_err(WorkerError::attribution)?;
    Ok((corpus.records.len(), files_hash(dir)?))
}

/// Opens a version directory the worker wrote (what `verify` reads on the worker's machine).
pub fn open_version(dir: &Path, tokenizer: Arc<Tokenizer>) -> Result<Version, WorkerError> {
    let corpus = Corpus::read_export(dir).map_err(WorkerError::attribution)?;
    let groups = CreditGroups::build(&corpus, &CreditParams::default()).map_err(WorkerError::attribution)?;
    let spans = SpanIndex::open_for(&dir.join(SPAN_INDEX_DIR), &tokenizer).map_err(WorkerError::attribution)?;
    let path = dir.join(ACCOUNTS_FILE);
    let text = std::fs::read(&path).map_err(|e| WorkerError::io(&path, e))?;
    let by_contribution: HashMap<String, String> = serde_json::from_slice(&text).map_err(WorkerError::internal)?;
    let accounts = by_contribution
        .into_iter()
        .map(|(contribution, account)| account.parse().map(|account| (contribution, account)))
        .collect::<Result<HashMap<String, u128>, _>>()
        .map_err(WorkerError::internal)?;
    let snapshot_root = corpus
        .manifest
        .as_ref()
        .and_then(|m| m.merkle_root.parse::<ContentHash>().ok())
        .ok_or_else(|| WorkerError::new(ErrorCode::Internal, "the export names no version root"))?;
    Ok(Version { corpus, groups, spans, tokenizer, accounts, files_hash: files_hash(dir)?, snapshot_root })
}

/// BLAKE3 over every file under `dir` (relative path, a zero byte, the file's BLAKE3), in
/// path order: what a receipt names as the index it was computed with.
pub fn files_hash(dir: &Path) -> Result<ContentHash, WorkerError> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, ContentHash)>) -> Result<(), WorkerError> {
        for entry in std::fs::read_dir(dir).map_err(|e| WorkerError::io(dir, e))? {
            let path = entry.map_err(|e| WorkerError::io(dir, e))?.path();
            if path.is_dir() {
                walk(root, &path, out)?;
            } else {
                let bytes = std::fs::read(&path).map_err(|e| WorkerError::io(&path, e))?;
                let relative = path.strip_prefix(root).unwrap_or(&path).display().to_string();
                out.push((relative, ContentHash::of(&bytes)));
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    files.sort();
    let mut parts: Vec<&[u8]> = vec![b"openledger/attribution-index/v1\n"];
    for (path, hash) in &files {
        parts.extend([path.as_bytes(), b"\0".as_slice(), hash.as_bytes().as_slice()]);
    }
    Ok(ContentHash::of_parts(&parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_gradient_indexes_are_bounded_and_the_least_recently_used_is_closed_first() {
        let mut open = Recent::new(2);
        open.insert("ft:a", 1);
        open.insert("ft:b", 2);
        assert_eq!(open.get("ft:a"), Some(1), "a is now the more recently used");
        open.insert("ft:c", 3);
        assert_eq!((open.get("ft:a"), open.get("ft:b"), open.get("ft:c")), (Some(1), None, Some(3)));
        open.insert("ft:c", 4);
        assert_eq!((open.by_key.len(), open.get("ft:c")), (2, Some(4)), "a rebuilt index replaces its old copy");
        open.remove("ft:a");
        assert_eq!(open.get("ft:a"), None);
    }
}
