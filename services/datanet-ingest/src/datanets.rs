//! The Datanet service's core: definitions and policy, signed contributions (parse, normalize,
//! content-address, score, dedup, bond, store), review, sealed snapshots with Merkle proofs,
//! access grants with logged reads, and the leaderboard.
//!
//! Consistency: every write to a Datanet starts its transaction by bumping the Datanet's
//! `revision`. That row lock serializes writers of one Datanet across replicas on PostgreSQL
//! and takes SQLite's write lock first, so daily limits and duplicate checks see everything
//! committed before them. Record bodies go to the object store before the transaction (one
//! JSONL object per contribution, named by its id: a failed commit leaves only an unreferenced
//! object); events go through the outbox in the same transaction.
//!
//! Bonds: the stake is held on the ledger before the transaction (and given back if the
//! transaction fails). The decision (release or slash) is committed with the contribution and
//! applied right after; [`Datanets::resolve_bonds`] retries any the ledger did not take.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
};

use object_store::{ObjectStore, PutPayload, path::Path as ObjectPath};
use openledger_core::{ContentHash, ErrorCode, Id, MerkleTree};
use openledger_proto::{
    common::v1::{Hash, MerkleProof as WireProof, PageResponse},
    datanet::v1::{self as pb, ContributionStatus, RecordSchema as WireSchema, Visibility},
    events::v1::{ContributionEvent, SnapshotSealed},
};
use openledger_store::{NewEvent, db::retry_when_busy, now_ms};
use prost::Message;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DatabaseTransaction, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait, Set, TransactionTrait, sea_query::Expr,
};
use tokio::sync::Notify;

use crate::{
    DatanetError,
    bonds::{Bonds, Resolved},
    dedup::{DedupParams, MinHasher, NearDuplicateIndex, Signature},
    entities::{contribution, datanet, grant, read, record, snapshot, snapshot_record},
    parse::{self, FileKind, ParseLimits, RecordSchema},
    quality,
    signing::{self, Key},
};

pub const SUBJECT_SUBMITTED: &str = "ol.datanet.contribution.submitted";
pub const SUBJECT_ACCEPTED: &str = "ol.datanet.contribution.accepted";
pub const SUBJECT_REJECTED: &str = "ol.datanet.contribution.rejected";
pub const SUBJECT_SNAPSHOT_SEALED: &str = "ol.datanet.snapshot.sealed";
const PRODUCER: &str = "datanet-ingest";

/// Defaults of a Datanet's contribution policy (a zero in a request means "the default").
pub mod defaults {
    pub const MAX_BYTES_PER_CONTRIBUTOR_PER_DAY: u64 = 10_000_000;
    pub const MAX_FILES_PER_CONTRIBUTOR_PER_DAY: u32 = 20;
    pub const MAX_BYTES_PER_DAY: u64 = 1_000_000_000;
    pub const MAX_FILES_PER_DAY: u32 = 10_000;
    pub const MAX_FILE_BYTES: u64 = 5_000_000;
    pub use crate::quality::{AUTO_ACCEPT_SCORE, REJECT_BELOW_SCORE};
    pub const NEAR_DUPLICATE_JACCARD_PPT: u32 = 800;
}

/// Hard limits of the service, whatever a policy says.
pub mod limits {
    /// Largest file accepted (policies may only lower it).
    pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
    pub const MAX_TAGS: usize = 20;
    pub const MAX_TAG_CHARS: usize = 40;
    pub const MAX_LABELS: usize = 1_000;
    pub const MAX_LABEL_CHARS: usize = 100;
    pub const MAX_NAME_CHARS: usize = 200;
    pub const MAX_SUMMARY_CHARS: usize = 500;
    pub const MAX_DESCRIPTION_BYTES: usize = 100_000;
    pub const MAX_VALIDATORS: usize = 100;
    pub const MAX_ALLOWED_CONTRIBUTORS: usize = 10_000;
    pub const MAX_PURPOSE_CHARS: usize = 1_000;
    pub const MAX_REASON_CHARS: usize = 1_000;
    pub const MAX_PAGE_SIZE: u32 = 1_000;
    pub const DEFAULT_PAGE_SIZE: u32 = 100;
}

const DAY_MS: i64 = 86_400_000;

/// After this long, a contribution still receiving (its process died after holding the bond)
/// is abandoned: its bond is given back and the placeholder removed.
pub const RECEIVING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Record states (`datanet_records.status`).
mod record_status {
    pub const PENDING: i16 = 0;
    pub const ACCEPTED: i16 = 1;
    pub const REJECTED: i16 = 2;
    pub const DUPLICATE: i16 = 3;
    pub const REMOVED: i16 = 4;
}

/// Bond states (`datanet_contributions.bond_state`): decided states wait for the ledger.
mod bond_state {
    pub const NONE: i16 = 0;
    pub const HELD: i16 = 1;
    pub const RELEASED: i16 = 2;
    pub const SLASHED: i16 = 3;
    pub const TO_RELEASE: i16 = 4;
    pub const TO_SLASH: i16 = 5;
    /// Being held for a contribution still being received.
    pub const HOLDING: i16 = 6;

    pub fn name(state: i16) -> &'static str {
        match state {
            HELD | TO_RELEASE | TO_SLASH | HOLDING => "held",
            RELEASED => "released",
            SLASHED => "slashed",
            _ => "none",
        }
    }
}

/// Grant states (`datanet_grants.state`).
mod grant_state {
    pub const REQUESTED: i16 = 0;
    pub const APPROVED: i16 = 1;
    pub const DENIED: i16 = 2;

    pub fn name(state: i16) -> &'static str {
        match state {
            APPROVED => "approved",
            DENIED => "denied",
            _ => "requested",
        }
    }
}

/// One uploaded file, as received.
pub struct Upload {
    pub datanet_id: String,
    pub file_name: String,
    pub media_type: String,
    pub bytes: bytes::Bytes,
    /// The BLAKE3 hash the client declared, checked against the bytes when given.
    pub declared_hash: Option<ContentHash>,
    pub signature: openledger_proto::common::v1::Signature,
    pub account_id: Option<u128>,
}

/// The near-duplicate and exact-duplicate index of one Datanet: the records that hold credit
/// (accepted or pending review), rebuilt from the database when missing or stale.
struct DatanetIndex {
    near: NearDuplicateIndex<String>,
    exact: HashMap<[u8; 32], String>,
    last_seq: i64,
    generation: i64,
}

/// Resident bytes per indexed record: the near-duplicate index (measured by the `dedup` bench)
/// plus the exact-duplicate entry and the contribution id it names.
pub const INDEX_BYTES_PER_RECORD: usize = 1_500;

impl DatanetIndex {
    fn bytes(&self) -> usize {
        self.near.len().max(self.exact.len()) * INDEX_BYTES_PER_RECORD
    }
}

/// One Datanet's index (loaded or not) and when it was last used.
#[derive(Clone, Default)]
struct IndexSlot {
    index: Arc<tokio::sync::Mutex<Option<DatanetIndex>>>,
    used: Arc<std::sync::atomic::AtomicU64>,
}

/// The Datanet service over a database, an object store and the ledger.
pub struct Datanets {
    db: DatabaseConnection,
    objects: Arc<dyn ObjectStore>,
    bonds: Arc<dyn Bonds>,
    hasher: MinHasher,
    dedup: DedupParams,
    parse_limits: ParseLimits,
    indexes: Mutex<HashMap<String, IndexSlot>>,
    index_budget: usize,
    /// Ticks on every use of an index (least recently used is evicted first).
    index_clock: std::sync::atomic::AtomicU64,
    /// Merkle trees of recently proven versions, newest first.
    trees: Mutex<Vec<Arc<SealedTree>>>,
    outbox_wake: Option<Arc<Notify>>,
}

/// Resident bytes of all duplicate indexes in one process by default (2 GiB).
pub const DEFAULT_INDEX_BUDGET: usize = 2 << 30;

/// Sealed versions whose trees stay in memory for proofs.
const CACHED_TREES: usize = 4;

/// A sealed version's tree and its leaves in order.
struct SealedTree {
    snapshot_id: String,
    tree: MerkleTree,
    leaves: Vec<snapshot_record::Model>,
}

/// What one record became.
struct Decided {
    ordinal: usize,
    hash: ContentHash,
    quality: u32,
    duplicate_of: Option<String>,
    minhash: Option<Signature>,
    size: usize,
}

impl Datanets {
    pub fn new(db: DatabaseConnection, objects: Arc<dyn ObjectStore>, bonds: Arc<dyn Bonds>) -> Self {
        let dedup = DedupParams::default();
        Self {
            db,
            objects,
            bonds,
            hasher: MinHasher::new(dedup),
            dedup,
            parse_limits: ParseLimits::default(),
            indexes: Mutex::new(HashMap::new()),
            index_budget: DEFAULT_INDEX_BUDGET,
            index_clock: std::sync::atomic::AtomicU64::new(1),
            trees: Mutex::new(Vec::new()),
            outbox_wake: None,
        }
    }

    /// Most records one Datanet's near-duplicate index holds (about 1.4 KiB each with the
    /// exact-duplicate map; see `dedup`).
    pub fn with_index_capacity(mut self, max_records: usize) -> Self {
        self.dedup.max_records = max_records;
        self
    }

    /// Resident bytes all Datanets' duplicate indexes may take in this process together;
    /// beyond it the least recently used idle ones are dropped (and rebuilt from the database
    /// when next needed).
    pub fn with_index_budget(mut self, bytes: usize) -> Self {
        self.index_budget = bytes;
        self
    }

    /// Records held by the duplicate indexes loaded in this process.
    pub fn indexed_records(&self) -> usize {
        let slots: Vec<IndexSlot> = self.lock_indexes().values().cloned().collect();
        slots
            .iter()
            .filter_map(|slot| slot.index.try_lock().ok().and_then(|index| index.as_ref().map(|i| i.near.len())))
            .sum()
    }

    fn lock_indexes(&self) -> std::sync::MutexGuard<'_, HashMap<String, IndexSlot>> {
        self.indexes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Drops the least recently used idle indexes until all fit the budget.
    fn enforce_index_budget(&self) {
        let slots: Vec<IndexSlot> = self.lock_indexes().values().cloned().collect();
        let mut loaded: Vec<(u64, usize, IndexSlot)> = slots
            .into_iter()
            .filter_map(|slot| {
                let bytes = slot.index.try_lock().ok()?.as_ref()?.bytes();
                Some((slot.used.load(std::sync::atomic::Ordering::Relaxed), bytes, slot))
            })
            .collect();
        let mut total: usize = loaded.iter().map(|(_, bytes, _)| bytes).sum();
        loaded.sort_by_key(|(used, _, _)| *used);
        for (_, bytes, slot) in loaded {
            if total <= self.index_budget {
                break;
            }
            if let Ok(mut index) = slot.index.try_lock() {
                *index = None;
                total -= bytes;
            }
        }
    }

    pub fn with_outbox_waker(mut self, wake: Arc<Notify>) -> Self {
        self.outbox_wake = Some(wake);
        self
    }

    fn wake_outbox(&self) {
        if let Some(wake) = &self.outbox_wake {
            wake.notify_one();
        }
    }

    // ---- Datanets -------------------------------------------------------------------------

    /// Creates a Datanet owned by the signer.
    pub async fn create(
        &self,
        mut wanted: pb::Datanet,
        signature: Option<openledger_proto::common::v1::Signature>,
    ) -> Result<pb::Datanet, DatanetError> {
        let signature = signature.ok_or_else(|| invalid("signature is required: the owner signs the creation"))?;
        let owner = signing::verify(&signature.public_key, &signature.signature, &signing::create_message(&wanted))?;
        check_slug(&wanted.slug)?;
        check_text("name", &wanted.name, 1, limits::MAX_NAME_CHARS)?;
        check_editable(&wanted)?;
        check_text("licence", &wanted.licence, 1, 100)?;
        let schema = schema_of(wanted.schema)?;
        check_labels(schema, &wanted.label_set)?;
        if Visibility::try_from(wanted.visibility).unwrap_or(Visibility::Unspecified) == Visibility::Unspecified {
            return Err(invalid("visibility must be public or private"));
        }
        let validators = keys("validators", &wanted.validators, limits::MAX_VALIDATORS)?;
        wanted.policy = Some(complete_policy(wanted.policy.take().unwrap_or_default())?);
        let existing = datanet::Entity::find().filter(datanet::Column::Slug.eq(&wanted.slug)).one(&self.db).await?;
        if let Some(existing) = existing {
            let existing = view(&existing)?;
            if existing.owner == owner {
                return Ok(existing); // a retried creation
            }
            return Err(DatanetError::new(
                ErrorCode::AlreadyExists,
                format!("the slug {:?} is taken: choose another", wanted.slug),
            ));
        }
        let id = Id::new().to_string();
        let row = datanet::ActiveModel {
            id: Set(id.clone()),
            slug: Set(wanted.slug.clone()),
            name: Set(wanted.name.clone()),
            summary: Set(wanted.summary.clone()),
            description: Set(wanted.description_markdown.clone()),
            tags: Set(serde_json::to_string(&wanted.tags).unwrap_or_default()),
            schema: Set(wanted.schema as i16),
            label_set: Set(serde_json::to_string(&wanted.label_set).unwrap_or_default()),
            licence: Set(wanted.licence.clone()),
            visibility: Set(wanted.visibility as i16),
            policy: Set(wanted.policy.clone().unwrap_or_default().encode_to_vec()),
            owner: Set(owner.to_vec()),
            validators: Set(validators.concat()),
            created_at: Set(now_ms()),
            revision: Set(0),
            index_generation: Set(0),
        };
        row.insert(&self.db).await.map_err(|error| {
            if is_unique_violation(&error) {
                DatanetError::new(ErrorCode::AlreadyExists, format!("the slug {:?} is taken", wanted.slug))
            } else {
                error.into()
            }
        })?;
        self.get(&id, Some(owner)).await
    }

    /// Edits summary, description, tags and policy (the owner only).
    pub async fn update(&self, request: pb::UpdateDatanetRequest) -> Result<pb::Datanet, DatanetError> {
        let signature = request.signature.clone().ok_or_else(|| invalid("signature is required"))?;
        let caller = signing::verify(&signature.public_key, &signature.signature, &signing::update_message(&request))?;
        signing::check_fresh(request.signed_at, signing::now_unix())?;
        let row = self.row(&request.id, Some(caller)).await?;
        require_owner(&row, &caller, "edit the Datanet")?;
        let wanted = request.datanet.unwrap_or_default();
        let mut mask: Vec<&str> = request.update_mask.iter().map(String::as_str).collect();
        if mask.is_empty() {
            mask = vec!["summary", "description_markdown", "tags", "policy"];
        }
        let mut active: datanet::ActiveModel = row.clone().into();
        for field in mask {
            match field {
                "summary" => {
                    check_text("summary", &wanted.summary, 0, limits::MAX_SUMMARY_CHARS)?;
                    active.summary = Set(wanted.summary.clone());
                }
                "description_markdown" => {
                    check_description(&wanted.description_markdown)?;
                    active.description = Set(wanted.description_markdown.clone());
                }
                "tags" => {
                    check_tags(&wanted.tags)?;
                    active.tags = Set(serde_json::to_string(&wanted.tags).unwrap_or_default());
                }
                "policy" => {
                    let policy = complete_policy(wanted.policy.clone().unwrap_or_default())?;
                    active.policy = Set(policy.encode_to_vec());
                }
                other => {
                    return Err(invalid(format!(
                        "{other:?} cannot be changed: only summary, description_markdown, tags and policy are editable"
                    )));
                }
            }
        }
        // Under the Datanet's write lock, so no upload commits under a half-changed policy.
        retry_when_busy(|| async {
            let txn = self.db.begin().await?;
            lock_datanet(&txn, &row.id).await?;
            active.clone().update(&txn).await?;
            txn.commit().await?;
            Ok::<_, DatanetError>(())
        })
        .await?;
        self.get(&row.id, Some(caller)).await
    }

    /// A Datanet by id or slug, if the caller may see it (private ones are invisible to others).
    pub async fn get(&self, id_or_slug: &str, caller: Option<Key>) -> Result<pb::Datanet, DatanetError> {
        view(&self.row(id_or_slug, caller).await?)
    }

    /// Datanets the caller may see, newest first, optionally with a tag.
    pub async fn list(
        &self,
        tag: &str,
        page_size: u32,
        page_token: &str,
        caller: Option<Key>,
    ) -> Result<(Vec<pb::Datanet>, PageResponse), DatanetError> {
        let size = page_size_of(page_size);
        // Visible: public, or owned by the caller, or granted to the caller. (Validators of a
        // private Datanet see it by id, not in lists.)
        let mut visible = Condition::any().add(datanet::Column::Visibility.eq(Visibility::Public as i16));
        if let Some(caller) = caller {
            let granted = grant::Entity::find()
                .select_only()
                .column(grant::Column::DatanetId)
                .filter(grant::Column::Grantee.eq(caller.to_vec()))
                .filter(grant::Column::State.eq(grant_state::APPROVED))
                .into_query();
            visible =
                visible.add(datanet::Column::Owner.eq(caller.to_vec())).add(datanet::Column::Id.in_subquery(granted));
        }
        let mut query = datanet::Entity::find().filter(visible).order_by_desc(datanet::Column::Id);
        if !tag.is_empty() {
            // Tags are stored as a JSON array of [a-z0-9-] words: a quoted match is exact.
            check_tags(std::slice::from_ref(&tag.to_owned()))?;
            query = query.filter(datanet::Column::Tags.contains(format!("\"{tag}\"")));
        }
        if !page_token.is_empty() {
            query = query.filter(datanet::Column::Id.lt(page_token));
        }
        let mut rows = query.limit(u64::from(size) + 1).all(&self.db).await?;
        let more = rows.len() > size as usize;
        rows.truncate(size as usize);
        let next = if more { rows.last().map(|row| row.id.clone()).unwrap_or_default() } else { String::new() };
        let found = rows.iter().map(view).collect::<Result<Vec<_>, _>>()?;
        Ok((found, PageResponse { next_page_token: next }))
    }

    async fn row(&self, id_or_slug: &str, caller: Option<Key>) -> Result<datanet::Model, DatanetError> {
        let row = match datanet::Entity::find_by_id(id_or_slug).one(&self.db).await? {
            Some(row) => Some(row),
            None => datanet::Entity::find().filter(datanet::Column::Slug.eq(id_or_slug)).one(&self.db).await?,
        };
        match row {
            Some(row) if self.may_see(&row, caller).await? => Ok(row),
            _ => Err(DatanetError::new(ErrorCode::NotFound, format!("no Datanet {id_or_slug:?}"))),
        }
    }

    /// Public Datanets are visible to all; private ones to the owner, validators and grantees.
    async fn may_see(&self, row: &datanet::Model, caller: Option<Key>) -> Result<bool, DatanetError> {
        if row.visibility != Visibility::Private as i16 {
            return Ok(true);
        }
        let Some(caller) = caller else { return Ok(false) };
        if row.owner == caller || is_validator(row, &caller) {
            return Ok(true);
        }
        let granted = grant::Entity::find()
            .filter(grant::Column::DatanetId.eq(&row.id))
            .filter(grant::Column::Grantee.eq(caller.to_vec()))
            .filter(grant::Column::State.eq(grant_state::APPROVED))
            .count(&self.db)
            .await?;
        Ok(granted > 0)
    }

    // ---- Contributions --------------------------------------------------------------------

    /// Takes one signed file: checks, parses, scores, dedups, bonds and stores it.
    pub async fn contribute(&self, upload: Upload) -> Result<pb::Contribution, DatanetError> {
        // By id; who may contribute to a private Datanet is checked once the signer is known.
        let row = datanet::Entity::find_by_id(&upload.datanet_id)
            .one(&self.db)
            .await?
            .ok_or_else(|| DatanetError::new(ErrorCode::NotFound, format!("no Datanet {:?}", upload.datanet_id)))?;
        let policy = policy_of(&row)?;
        if upload.bytes.is_empty() {
            return Err(invalid(format!("{}: the file is empty", upload.file_name)));
        }
        if upload.bytes.len() as u64 > policy.max_file_bytes {
            return Err(DatanetError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "{} is {} bytes; this Datanet takes files of at most {} bytes",
                    upload.file_name,
                    upload.bytes.len(),
                    policy.max_file_bytes
                ),
            ));
        }
        let file_hash = ContentHash::of(&upload.bytes);
        if let Some(declared) = upload.declared_hash
            && declared != file_hash
        {
            return Err(invalid(format!(
                "the file's BLAKE3 hash is {} but the request declared {}: the upload was altered or truncated",
                file_hash.to_hex(),
                declared.to_hex()
            )));
        }
        let message = signing::contribution_message(&row.id, &upload.file_name, &file_hash, upload.account_id);
        let contributor = signing::verify(&upload.signature.public_key, &upload.signature.signature, &message)?;
        let listed = policy.allowed_contributors.iter().any(|key| key.as_slice() == contributor);
        if row.visibility == Visibility::Private as i16 && !listed && !self.may_see(&row, Some(contributor)).await? {
            // Outsiders learn nothing of a private Datanet, not even whether content is in it.
            return Err(DatanetError::new(ErrorCode::NotFound, format!("no Datanet {:?}", upload.datanet_id)));
        }
        if policy.allow_list_only && !listed {
            return Err(DatanetError::new(
                ErrorCode::PermissionDenied,
                "this Datanet takes contributions from its allow-list only, and the key is not on it",
            ));
        }
        if let Some(existing) = same_file(&self.db, &row.id, &contributor, &file_hash, None).await? {
            return self.contribution_view(existing).await; // the same file again: a retry
        }
        check_daily_limits(&self.db, &row.id, &contributor, &policy, upload.bytes.len() as u64, None).await?;

        let schema = schema_of(i32::from(row.schema))?;
        let labels: Vec<String> = serde_json::from_str(&row.label_set).unwrap_or_default();
        let prepared = {
            let bytes = upload.bytes.clone();
            let kind = FileKind::detect(&upload.file_name, &upload.media_type)
                .map_err(|error| invalid(format!("{}: {error}", upload.file_name)))?;
            let limits = self.parse_limits;
            let hasher = self.hasher.clone();
            let file_name = upload.file_name.clone();
            tokio::task::spawn_blocking(move || prepare(kind, &bytes, schema, &labels, &limits, &hasher, &file_name))
                .await
                .map_err(|error| DatanetError::new(ErrorCode::Internal, format!("parsing failed: {error}")))??
        };

        let contribution_id = Id::new().to_string();
        let stake = policy.stake_per_contribution.map(u128::from).unwrap_or(0);
        let account = match (stake, upload.account_id) {
            (0, _) => None,
            (_, None) => {
                return Err(DatanetError::new(
                    ErrorCode::FailedPrecondition,
                    format!(
                        "this Datanet needs a stake bond of {} base units per contribution: give contributor_account_id (a ledger account your key owns)",
                        stake
                    ),
                ));
            }
            (_, Some(account)) => {
                self.bonds.check_owner(account, &contributor).await?;
                Some(account)
            }
        };

        let body: Vec<u8> = prepared.bodies.iter().flat_map(|line| line.iter().copied().chain([b'\n'])).collect();
        self.objects.put(&contribution_object(&row.id, &contribution_id), PutPayload::from(body)).await.map_err(
            |error| DatanetError::new(ErrorCode::Unavailable, format!("storing the records failed: {error}")),
        )?;
        if let Some(account) = account {
            // A placeholder first, so a bond held by a process that then dies is found and
            // given back ([`Datanets::resolve_bonds`]). The same file from the same
            // contributor can have only one row: a concurrent retry stops here.
            if let Err(error) = self
                .insert_placeholder(&contribution_id, &row.id, &contributor, &upload, file_hash, account, stake)
                .await
            {
                return match same_file(&self.db, &row.id, &contributor, &file_hash, None).await? {
                    Some(existing) => self.contribution_view(existing).await,
                    None => Err(error),
                };
            }
            if let Err(error) = self.bonds.hold(&contribution_id, account, stake).await {
                // The hold may have reached the ledger even so (a lost answer).
                self.give_back(&contribution_id, "holding the bond failed").await;
                return Err(error);
            }
            fail::fail_point!("datanet-after-bond-hold", |_| Err(DatanetError::new(
                ErrorCode::Unavailable,
                "fail point datanet-after-bond-hold: the process stops here"
            )));
        }
        let new = NewContribution {
            id: contribution_id.clone(),
            datanet_id: row.id.clone(),
            contributor,
            account,
            stake,
            file_name: upload.file_name.clone(),
            media_type: upload.media_type.clone(),
            size: upload.bytes.len() as u64,
            file_hash,
            signature: upload.signature.signature.clone(),
            policy,
            records: prepared.records,
        };
        match self.commit_contribution(&new).await {
            Ok(Committed::Stored) => {}
            Ok(Committed::SameFile(existing)) => {
                if account.is_some() {
                    self.give_back(&contribution_id, "the same file was already contributed").await;
                }
                return self.contribution_view(*existing).await;
            }
            Err(error) => {
                if account.is_some() {
                    self.give_back(&contribution_id, "the contribution was not stored").await;
                }
                return Err(error);
            }
        }
        self.wake_outbox();
        if account.is_some() {
            self.resolve_bond(&contribution_id).await;
        }
        let stored = contribution::Entity::find_by_id(&contribution_id)
            .one(&self.db)
            .await?
            .ok_or_else(|| DatanetError::new(ErrorCode::Internal, "the stored contribution vanished"))?;
        self.contribution_view(stored).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn insert_placeholder(
        &self,
        id: &str,
        datanet_id: &str,
        contributor: &Key,
        upload: &Upload,
        file_hash: ContentHash,
        account: u128,
        stake: u128,
    ) -> Result<(), DatanetError> {
        contribution::ActiveModel {
            id: Set(id.to_owned()),
            datanet_id: Set(datanet_id.to_owned()),
            contributor: Set(contributor.to_vec()),
            account_id: Set(Some(account.to_be_bytes().to_vec())),
            status: Set(ContributionStatus::Unspecified as i16),
            reason: Set("receiving: the bond is being held".into()),
            file_name: Set(upload.file_name.clone()),
            media_type: Set(upload.media_type.clone()),
            size_bytes: Set(upload.bytes.len() as i64),
            file_hash: Set(file_hash.as_bytes().to_vec()),
            signature: Set(upload.signature.signature.clone()),
            record_count: Set(0),
            quality_score: Set(0),
            bond: Set(stake.to_string()),
            bond_state: Set(bond_state::HOLDING),
            submitted_at: Set(now_ms()),
            decided_at: Set(None),
            decided_by: Set(None),
        }
        .insert(&self.db)
        .await?;
        Ok(())
    }

    /// Gives back the bond of an upload that will not be stored and removes its placeholder;
    /// true when done. When the ledger cannot be reached the placeholder stays, and
    /// [`Datanets::resolve_bonds`] tries again once the upload counts as abandoned.
    async fn give_back(&self, contribution_id: &str, reason: &str) -> bool {
        let released = match self.bonds.release(contribution_id, reason).await {
            // `NotHeld`: the hold never reached the ledger, so there is nothing to give back.
            Ok(Resolved::Done | Resolved::NotHeld) => true,
            Err(error) => {
                tracing::warn!(contribution = %contribution_id, %error, "giving back a bond failed; it is retried later");
                false
            }
        };
        if released {
            self.delete_placeholder(contribution_id).await;
        }
        released
    }

    async fn delete_placeholder(&self, id: &str) {
        let deleted = contribution::Entity::delete_many()
            .filter(contribution::Column::Id.eq(id))
            .filter(contribution::Column::Status.eq(ContributionStatus::Unspecified as i16))
            .exec(&self.db)
            .await;
        if let Err(error) = deleted {
            tracing::warn!(contribution = %id, %error, "removing a placeholder failed; it is retried later");
        }
    }

    fn index_slot(&self, datanet_id: &str) -> IndexSlot {
        let slot = self.lock_indexes().entry(datanet_id.to_owned()).or_default().clone();
        slot.used.store(
            self.index_clock.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            std::sync::atomic::Ordering::Relaxed,
        );
        slot
    }

    /// Decides every record against the index and writes the contribution in one transaction.
    async fn commit_contribution(&self, new: &NewContribution) -> Result<Committed, DatanetError> {
        let slot = self.index_slot(&new.datanet_id);
        let committed = retry_when_busy(|| async {
            let mut index = slot.index.lock().await;
            let outcome = self.commit_attempt(new, &mut index).await;
            if outcome.is_err() {
                *index = None; // whatever the failed attempt added is rebuilt from the database
            }
            outcome
        })
        .await;
        self.enforce_index_budget();
        committed
    }

    async fn commit_attempt(
        &self,
        new: &NewContribution,
        index: &mut Option<DatanetIndex>,
    ) -> Result<Committed, DatanetError> {
        let txn = self.db.begin().await?;
        let row = lock_datanet(&txn, &new.datanet_id).await?;
        // A retry of the same file that raced this one (unbonded uploads have no placeholder).
        if let Some(existing) =
            same_file(&txn, &new.datanet_id, &new.contributor, &new.file_hash, Some(&new.id)).await?
        {
            return Ok(Committed::SameFile(Box::new(existing)));
        }
        self.refresh_index(&txn, &row, index).await?;
        let Some(current) = index.as_mut() else {
            return Err(DatanetError::new(ErrorCode::Internal, "the duplicate index is not loaded"));
        };
        check_daily_limits(&txn, &new.datanet_id, &new.contributor, &new.policy, new.size, Some(&new.id)).await?;
        let decided = decide(new, current, &new.policy, &self.dedup)?;
        write_contribution(&txn, new, &decided, current).await?;
        txn.commit().await?;
        Ok(Committed::Stored)
    }

    /// Brings the index up to date with committed records (all of them when the generation
    /// moved, only new ones otherwise).
    async fn refresh_index(
        &self,
        txn: &DatabaseTransaction,
        row: &datanet::Model,
        index: &mut Option<DatanetIndex>,
    ) -> Result<(), DatanetError> {
        if index.as_ref().is_none_or(|current| current.generation != row.index_generation) {
            *index = Some(DatanetIndex {
                near: NearDuplicateIndex::new(self.dedup),
                exact: HashMap::new(),
                last_seq: 0,
                generation: row.index_generation,
            });
        }
        let Some(current) = index.as_mut() else { return Ok(()) };
        let mut rows = record::Entity::find()
            .filter(record::Column::DatanetId.eq(&row.id))
            .filter(record::Column::Seq.gt(current.last_seq))
            .filter(record::Column::Status.is_in([record_status::PENDING, record_status::ACCEPTED]))
            .order_by_asc(record::Column::Seq)
            .paginate(txn, 10_000);
        while let Some(batch) = rows.fetch_and_next().await? {
            for indexed in batch {
                current.last_seq = current.last_seq.max(indexed.seq);
                if let Ok(hash) = <[u8; 32]>::try_from(indexed.hash.as_slice()) {
                    current.exact.entry(hash).or_insert_with(|| indexed.contribution_id.clone());
                }
                if let Some(minhash) = indexed.minhash.as_deref() {
                    let signature = Signature(
                        minhash.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
                    );
                    current.near.insert(indexed.contribution_id.clone(), signature).map_err(index_full)?;
                }
            }
        }
        Ok(())
    }

    /// A contribution, if the caller may see its Datanet.
    pub async fn contribution(
        &self,
        datanet_id: &str,
        contribution_id: &str,
        caller: Option<Key>,
    ) -> Result<pb::Contribution, DatanetError> {
        let datanet = self.row(datanet_id, caller).await?;
        let found = contribution::Entity::find_by_id(contribution_id)
            .filter(contribution::Column::DatanetId.eq(&datanet.id))
            .one(&self.db)
            .await?
            .ok_or_else(|| DatanetError::new(ErrorCode::NotFound, format!("no contribution {contribution_id:?}")))?;
        self.contribution_view(found).await
    }

    /// Contributions of a Datanet, oldest first, optionally of one status.
    pub async fn contributions(
        &self,
        datanet_id: &str,
        status: i32,
        page_size: u32,
        page_token: &str,
        caller: Option<Key>,
    ) -> Result<(Vec<pb::Contribution>, PageResponse), DatanetError> {
        let datanet = self.row(datanet_id, caller).await?;
        let size = page_size_of(page_size);
        let mut query = contribution::Entity::find()
            .filter(contribution::Column::DatanetId.eq(&datanet.id))
            .filter(contribution::Column::Status.ne(ContributionStatus::Unspecified as i16))
            .order_by_asc(contribution::Column::Id)
            .limit(u64::from(size) + 1);
        if status != 0 {
            query = query.filter(contribution::Column::Status.eq(status as i16));
        }
        if !page_token.is_empty() {
            query = query.filter(contribution::Column::Id.gt(page_token));
        }
        let mut rows = query.all(&self.db).await?;
        let more = rows.len() > size as usize;
        rows.truncate(size as usize);
        let next = if more { rows.last().map(|row| row.id.clone()).unwrap_or_default() } else { String::new() };
        // Lists leave the per-record summaries out (a file may hold 100,000 records): one
        // contribution with its records is `contribution`.
        let views = rows.into_iter().map(|row| summary_view(row, Vec::new())).collect();
        Ok((views, PageResponse { next_page_token: next }))
    }

    async fn contribution_view(&self, row: contribution::Model) -> Result<pb::Contribution, DatanetError> {
        let records = record::Entity::find()
            .filter(record::Column::ContributionId.eq(&row.id))
            .order_by_asc(record::Column::Ordinal)
            .all(&self.db)
            .await?;
        Ok(summary_view(row, records))
    }

    /// Applies a decided bond on the ledger (release or slash); a failure is retried later by
    /// [`Datanets::resolve_bonds`].
    async fn resolve_bond(&self, contribution_id: &str) {
        if let Err(error) = self.try_resolve_bond(contribution_id).await {
            tracing::warn!(contribution = %contribution_id, %error, "the bond decision waits for the ledger");
        }
    }

    async fn try_resolve_bond(&self, contribution_id: &str) -> Result<(), DatanetError> {
        let Some(row) = contribution::Entity::find_by_id(contribution_id).one(&self.db).await? else { return Ok(()) };
        let (resolved, done) = match row.bond_state {
            bond_state::TO_RELEASE => (self.bonds.release(contribution_id, &row.reason).await?, bond_state::RELEASED),
            bond_state::TO_SLASH => (self.bonds.slash(contribution_id, &row.reason).await?, bond_state::SLASHED),
            _ => return Ok(()),
        };
        if resolved == Resolved::NotHeld {
            // Decided bonds were held before the decision was stored: the ledger lost one.
            return Err(DatanetError::new(
                ErrorCode::Internal,
                format!("the ledger holds no bond for decided contribution {contribution_id}"),
            ));
        }
        contribution::Entity::update_many()
            .col_expr(contribution::Column::BondState, Expr::value(done))
            .filter(contribution::Column::Id.eq(contribution_id))
            .filter(contribution::Column::BondState.eq(row.bond_state))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Applies every bond decision the ledger has not taken yet, and gives back the bonds of
    /// contributions whose upload never finished (placeholders older than
    /// [`RECEIVING_TIMEOUT`]); returns how many.
    pub async fn resolve_bonds(&self) -> Result<usize, DatanetError> {
        self.resolve_bonds_older_than(RECEIVING_TIMEOUT).await
    }

    /// [`Datanets::resolve_bonds`] with another age for abandoned uploads.
    pub async fn resolve_bonds_older_than(&self, abandoned_after: std::time::Duration) -> Result<usize, DatanetError> {
        let cutoff = now_ms() - i64::try_from(abandoned_after.as_millis()).unwrap_or(i64::MAX);
        let abandoned = contribution::Entity::find()
            .filter(contribution::Column::Status.eq(ContributionStatus::Unspecified as i16))
            .filter(contribution::Column::SubmittedAt.lte(cutoff))
            .order_by_asc(contribution::Column::SubmittedAt)
            .limit(1_000)
            .all(&self.db)
            .await?;
        let mut resolved = 0;
        for row in abandoned {
            if self.give_back(&row.id, "the upload never finished").await {
                resolved += 1;
            }
        }
        resolved += self.resolve_decided_bonds().await?;
        Ok(resolved)
    }

    async fn resolve_decided_bonds(&self) -> Result<usize, DatanetError> {
        let waiting = contribution::Entity::find()
            .filter(contribution::Column::BondState.is_in([bond_state::TO_RELEASE, bond_state::TO_SLASH]))
            .limit(1_000)
            .all(&self.db)
            .await?;
        let mut resolved = 0;
        for row in waiting {
            if self.try_resolve_bond(&row.id).await.is_ok() {
                resolved += 1;
            }
        }
        Ok(resolved)
    }

    // ---- Review ---------------------------------------------------------------------------

    /// The owner or a validator approves or rejects a contribution pending review.
    pub async fn review(&self, request: pb::ReviewContributionRequest) -> Result<pb::Contribution, DatanetError> {
        let signature = request.signature.clone().ok_or_else(|| invalid("signature is required"))?;
        check_text("reason", &request.reason, 0, limits::MAX_REASON_CHARS)?;
        let message =
            signing::review_message(&request.datanet_id, &request.contribution_id, request.approve, &request.reason);
        let reviewer = signing::verify(&signature.public_key, &signature.signature, &message)?;
        let row = self.row(&request.datanet_id, Some(reviewer)).await?;
        if row.owner != reviewer && !is_validator(&row, &reviewer) {
            return Err(DatanetError::new(
                ErrorCode::PermissionDenied,
                "only the Datanet's owner and validators review contributions",
            ));
        }
        let slot = self.index_slot(&row.id);
        let _index = slot.index.lock().await;
        let decided = retry_when_busy(|| async {
            let txn = self.db.begin().await?;
            lock_datanet(&txn, &row.id).await?;
            let found = contribution::Entity::find_by_id(&request.contribution_id)
                .filter(contribution::Column::DatanetId.eq(&row.id))
                .one(&txn)
                .await?
                .ok_or_else(|| {
                    DatanetError::new(ErrorCode::NotFound, format!("no contribution {:?}", request.contribution_id))
                })?;
            if found.status != ContributionStatus::PendingReview as i16 {
                return Err(DatanetError::new(
                    ErrorCode::FailedPrecondition,
                    format!("contribution {} is {}, not pending review", found.id, status_name(found.status)),
                ));
            }
            let (status, records, bond) = if request.approve {
                (ContributionStatus::Accepted, record_status::ACCEPTED, bond_state::TO_RELEASE)
            } else {
                (ContributionStatus::Rejected, record_status::REJECTED, bond_state::TO_SLASH)
            };
            let reason = if request.reason.is_empty() {
                format!("{} by review", if request.approve { "approved" } else { "rejected" })
            } else {
                request.reason.clone()
            };
            contribution::Entity::update_many()
                .col_expr(contribution::Column::Status, Expr::value(status as i16))
                .col_expr(contribution::Column::Reason, Expr::value(reason.clone()))
                .col_expr(contribution::Column::DecidedAt, Expr::value(now_ms()))
                .col_expr(contribution::Column::DecidedBy, Expr::value(reviewer.to_vec()))
                .col_expr(
                    contribution::Column::BondState,
                    Expr::value(if found.bond_state == bond_state::HELD { bond } else { found.bond_state }),
                )
                .filter(contribution::Column::Id.eq(&found.id))
                .exec(&txn)
                .await?;
            record::Entity::update_many()
                .col_expr(record::Column::Status, Expr::value(records))
                .filter(record::Column::ContributionId.eq(&found.id))
                .filter(record::Column::Status.eq(record_status::PENDING))
                .exec(&txn)
                .await?;
            if !request.approve {
                bump_index_generation(&txn, &row.id).await?;
            }
            let hashes = record_hashes(&txn, &found.id).await?;
            enqueue_contribution_event(&txn, &found, status, &reason, hashes).await?;
            txn.commit().await?;
            Ok(found.id)
        })
        .await?;
        self.wake_outbox();
        self.resolve_bond(&decided).await;
        self.contribution(&row.id, &decided, Some(reviewer)).await
    }

    /// The owner takes a record out of the draft; sealed versions keep it.
    pub async fn remove_record(&self, request: pb::RemoveRecordRequest) -> Result<u64, DatanetError> {
        let signature = request.signature.clone().ok_or_else(|| invalid("signature is required"))?;
        let hash = hash_of(request.record_hash.as_ref(), "record_hash")?;
        let owner = signing::verify(
            &signature.public_key,
            &signature.signature,
            &signing::remove_message(&request.datanet_id, &hash, request.signed_at),
        )?;
        signing::check_fresh(request.signed_at, signing::now_unix())?;
        let row = self.row(&request.datanet_id, Some(owner)).await?;
        require_owner(&row, &owner, "remove records")?;
        let slot = self.index_slot(&row.id);
        let _index = slot.index.lock().await;
        retry_when_busy(|| async {
            let txn = self.db.begin().await?;
            lock_datanet(&txn, &row.id).await?;
            let removed = record::Entity::update_many()
                .col_expr(record::Column::Status, Expr::value(record_status::REMOVED))
                .filter(record::Column::DatanetId.eq(&row.id))
                .filter(record::Column::Hash.eq(hash.as_bytes().to_vec()))
                .filter(record::Column::Status.is_in([record_status::ACCEPTED, record_status::PENDING]))
                .exec(&txn)
                .await?
                .rows_affected;
            if removed == 0 {
                return Err(DatanetError::new(
                    ErrorCode::NotFound,
                    format!("no accepted or pending record {} in this Datanet", hash.to_hex()),
                ));
            }
            bump_index_generation(&txn, &row.id).await?;
            txn.commit().await?;
            Ok(removed)
        })
        .await
    }

    // ---- Snapshots ------------------------------------------------------------------------

    /// Seals the accepted records as the next version (or returns the latest version when
    /// nothing changed since it).
    pub async fn publish(&self, request: pb::PublishSnapshotRequest) -> Result<pb::Snapshot, DatanetError> {
        let signature = request.signature.clone().ok_or_else(|| invalid("signature is required"))?;
        let owner = signing::verify(
            &signature.public_key,
            &signature.signature,
            &signing::publish_message(&request.datanet_id, request.signed_at),
        )?;
        signing::check_fresh(request.signed_at, signing::now_unix())?;
        let row = self.row(&request.datanet_id, Some(owner)).await?;
        require_owner(&row, &owner, "publish versions")?;
        let sealed = retry_when_busy(|| async {
            let txn = self.db.begin().await?;
            let locked = lock_datanet(&txn, &row.id).await?;
            let accepted = record::Entity::find()
                .filter(record::Column::DatanetId.eq(&row.id))
                .filter(record::Column::Status.eq(record_status::ACCEPTED))
                .order_by_asc(record::Column::Seq)
                .all(&txn)
                .await?;
            let leaves: Vec<ContentHash> = accepted.iter().filter_map(|r| content_hash(&r.hash)).collect();
            let root = MerkleTree::new(&leaves).root();
            let previous = snapshot::Entity::find()
                .filter(snapshot::Column::DatanetId.eq(&row.id))
                .order_by_desc(snapshot::Column::Version)
                .one(&txn)
                .await?;
            if let Some(previous) = &previous
                && previous.merkle_root == root.as_bytes().to_vec()
            {
                return Ok::<_, DatanetError>(previous.id.clone());
            }
            let before: HashSet<Vec<u8>> = match &previous {
                Some(previous) => snapshot_record::Entity::find()
                    .filter(snapshot_record::Column::SnapshotId.eq(&previous.id))
                    .all(&txn)
                    .await?
                    .into_iter()
                    .map(|r| r.hash)
                    .collect(),
                None => HashSet::new(),
            };
            let after: HashSet<Vec<u8>> = accepted.iter().map(|r| r.hash.clone()).collect();
            let mut counts: BTreeMap<String, u64> = BTreeMap::new();
            for r in &accepted {
                *counts.entry(hex::encode(&r.contributor)).or_default() += 1;
            }
            let id = Id::new().to_string();
            let version = previous.as_ref().map_or(1, |p| p.version + 1);
            let sealed_at = now_ms();
            snapshot::ActiveModel {
                id: Set(id.clone()),
                datanet_id: Set(row.id.clone()),
                version: Set(version),
                merkle_root: Set(root.as_bytes().to_vec()),
                record_count: Set(accepted.len() as i64),
                contributor_counts: Set(serde_json::to_string(&counts).unwrap_or_default()),
                records_added: Set(after.difference(&before).count() as i64),
                records_removed: Set(before.difference(&after).count() as i64),
                revision: Set(locked.revision),
                sealed_at: Set(sealed_at),
            }
            .insert(&txn)
            .await?;
            for (chunk_number, chunk) in accepted.chunks(500).enumerate() {
                let rows = chunk.iter().enumerate().map(|(offset, r)| snapshot_record::ActiveModel {
                    snapshot_id: Set(id.clone()),
                    position: Set((chunk_number * 500 + offset) as i64),
                    hash: Set(r.hash.clone()),
                    contribution_id: Set(r.contribution_id.clone()),
                    contributor: Set(r.contributor.clone()),
                });
                snapshot_record::Entity::insert_many(rows).exec(&txn).await?;
            }
            let event = SnapshotSealed {
                datanet_id: row.id.clone(),
                snapshot_id: id.clone(),
                version: version as u64,
                merkle_root: Some(Hash { value: root.as_bytes().to_vec() }),
                record_count: accepted.len() as u64,
                at: Some(timestamp(sealed_at)),
            };
            openledger_store::outbox::enqueue(
                &txn,
                PRODUCER,
                NewEvent::new(SUBJECT_SNAPSHOT_SEALED, event.encode_to_vec()),
            )
            .await?;
            txn.commit().await?;
            Ok(id)
        })
        .await?;
        self.wake_outbox();
        self.snapshot(&row.id, &sealed, Some(owner)).await
    }

    /// A sealed version ("latest" for the newest).
    pub async fn snapshot(
        &self,
        datanet_id: &str,
        snapshot_id: &str,
        caller: Option<Key>,
    ) -> Result<pb::Snapshot, DatanetError> {
        let row = self.row(datanet_id, caller).await?;
        let found = self.snapshot_row(&row.id, snapshot_id).await?;
        let counts: BTreeMap<String, u64> = serde_json::from_str(&found.contributor_counts).unwrap_or_default();
        Ok(pb::Snapshot {
            id: found.id,
            datanet_id: found.datanet_id,
            version: found.version as u64,
            merkle_root: Some(Hash { value: found.merkle_root }),
            record_count: found.record_count as u64,
            contributor_counts: counts
                .into_iter()
                .map(|(contributor, records)| pb::ContributorCount {
                    contributor: hex::decode(contributor).unwrap_or_default(),
                    records,
                })
                .collect(),
            records_added: found.records_added as u64,
            records_removed: found.records_removed as u64,
            sealed_at: Some(timestamp(found.sealed_at)),
        })
    }

    async fn snapshot_row(&self, datanet_id: &str, snapshot_id: &str) -> Result<snapshot::Model, DatanetError> {
        let query = snapshot::Entity::find().filter(snapshot::Column::DatanetId.eq(datanet_id));
        let found = if snapshot_id == "latest" {
            query.order_by_desc(snapshot::Column::Version).one(&self.db).await?
        } else {
            query.filter(snapshot::Column::Id.eq(snapshot_id)).one(&self.db).await?
        };
        found.ok_or_else(|| {
            DatanetError::new(ErrorCode::NotFound, format!("no snapshot {snapshot_id:?} of this Datanet"))
        })
    }

    /// Inclusion proofs of a contribution's records in a sealed version.
    pub async fn proof(
        &self,
        datanet_id: &str,
        snapshot_id: &str,
        contribution_id: &str,
        caller: Option<Key>,
    ) -> Result<pb::InclusionProof, DatanetError> {
        let row = self.row(datanet_id, caller).await?;
        let sealed = self.snapshot_row(&row.id, snapshot_id).await?;
        let sealed_tree = self.sealed_tree(&sealed.id).await?;
        let (tree, leaves) = (&sealed_tree.tree, &sealed_tree.leaves);
        let root = Hash { value: tree.root().as_bytes().to_vec() };
        let records: Vec<pb::RecordProof> = leaves
            .iter()
            .filter(|leaf| leaf.contribution_id == contribution_id)
            .filter_map(|leaf| {
                let proof = tree.proof(leaf.position as usize)?;
                Some(pb::RecordProof {
                    record_hash: Some(Hash { value: leaf.hash.clone() }),
                    proof: Some(WireProof {
                        leaf_index: proof.leaf_index,
                        tree_size: proof.tree_size,
                        path: proof.path.iter().map(|node| Hash { value: node.as_bytes().to_vec() }).collect(),
                        root: Some(root.clone()),
                    }),
                })
            })
            .collect();
        if records.is_empty() {
            return Err(DatanetError::new(
                ErrorCode::NotFound,
                format!("contribution {contribution_id:?} has no records in version {}", sealed.version),
            ));
        }
        Ok(pb::InclusionProof { snapshot_id: sealed.id, records })
    }

    /// A sealed version's Merkle tree and leaves, rebuilt from the database once and kept for
    /// the most recently asked versions (sealed versions never change).
    async fn sealed_tree(&self, snapshot_id: &str) -> Result<Arc<SealedTree>, DatanetError> {
        if let Some(found) = self.lock_trees().iter().find(|tree| tree.snapshot_id == snapshot_id) {
            return Ok(found.clone());
        }
        let leaves = snapshot_record::Entity::find()
            .filter(snapshot_record::Column::SnapshotId.eq(snapshot_id))
            .order_by_asc(snapshot_record::Column::Position)
            .all(&self.db)
            .await?;
        let hashes: Vec<ContentHash> = leaves.iter().filter_map(|leaf| content_hash(&leaf.hash)).collect();
        let tree = Arc::new(SealedTree { snapshot_id: snapshot_id.to_owned(), tree: MerkleTree::new(&hashes), leaves });
        let mut trees = self.lock_trees();
        trees.insert(0, tree.clone());
        trees.truncate(CACHED_TREES);
        Ok(tree)
    }

    fn lock_trees(&self) -> std::sync::MutexGuard<'_, Vec<Arc<SealedTree>>> {
        self.trees.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    // ---- Access ---------------------------------------------------------------------------

    /// A model builder asks to train on a Datanet (a repeated request returns the open grant).
    pub async fn request_access(&self, request: pb::RequestAccessRequest) -> Result<pb::AccessGrant, DatanetError> {
        let signature = request.signature.clone().ok_or_else(|| invalid("signature is required"))?;
        check_text("purpose", &request.purpose, 1, limits::MAX_PURPOSE_CHARS)?;
        let grantee = signing::verify(
            &signature.public_key,
            &signature.signature,
            &signing::access_request_message(&request.datanet_id, &request.purpose),
        )?;
        // Private Datanets are invisible, but their id can be shared to ask for access.
        let row = datanet::Entity::find_by_id(&request.datanet_id)
            .one(&self.db)
            .await?
            .ok_or_else(|| DatanetError::new(ErrorCode::NotFound, format!("no Datanet {:?}", request.datanet_id)))?;
        let open = grant::Entity::find()
            .filter(grant::Column::DatanetId.eq(&row.id))
            .filter(grant::Column::Grantee.eq(grantee.to_vec()))
            .filter(grant::Column::State.is_in([grant_state::REQUESTED, grant_state::APPROVED]))
            .one(&self.db)
            .await?;
        if let Some(open) = open {
            return Ok(grant_view(open));
        }
        let row = grant::ActiveModel {
            id: Set(Id::new().to_string()),
            datanet_id: Set(row.id),
            grantee: Set(grantee.to_vec()),
            state: Set(grant_state::REQUESTED),
            purpose: Set(request.purpose),
            requested_at: Set(now_ms()),
            decided_at: Set(None),
        }
        .insert(&self.db)
        .await?;
        Ok(grant_view(row))
    }

    /// The owner approves or denies an access request.
    pub async fn decide_access(&self, request: pb::DecideAccessRequest) -> Result<pb::AccessGrant, DatanetError> {
        let signature = request.signature.clone().ok_or_else(|| invalid("signature is required"))?;
        let owner = signing::verify(
            &signature.public_key,
            &signature.signature,
            &signing::access_decision_message(
                &request.datanet_id,
                &request.grant_id,
                request.approve,
                request.signed_at,
            ),
        )?;
        signing::check_fresh(request.signed_at, signing::now_unix())?;
        let row = self.row(&request.datanet_id, Some(owner)).await?;
        require_owner(&row, &owner, "decide access")?;
        let found = grant::Entity::find_by_id(&request.grant_id)
            .filter(grant::Column::DatanetId.eq(&row.id))
            .one(&self.db)
            .await?
            .ok_or_else(|| DatanetError::new(ErrorCode::NotFound, format!("no access grant {:?}", request.grant_id)))?;
        let mut active: grant::ActiveModel = found.into();
        active.state = Set(if request.approve { grant_state::APPROVED } else { grant_state::DENIED });
        active.decided_at = Set(Some(now_ms()));
        Ok(grant_view(active.update(&self.db).await?))
    }

    /// The records of a sealed version, for training: the caller must hold an approved grant;
    /// every read is logged (when it starts). Records come in the version's order, with their
    /// bodies, read a page at a time (memory stays bounded by a page and one contribution).
    pub async fn read_records(
        self: &Arc<Self>,
        request: &pb::ReadRecordsRequest,
        caller: Option<Key>,
    ) -> Result<futures::stream::BoxStream<'static, Result<pb::Record, DatanetError>>, DatanetError> {
        use futures::{StreamExt, TryStreamExt};

        let caller = caller.ok_or_else(|| {
            DatanetError::new(
                ErrorCode::Unauthenticated,
                "reading records for training needs the caller's signed identity (x-openledger-key, -timestamp, -signature)",
            )
        })?;
        let found = grant::Entity::find_by_id(&request.grant_id)
            .filter(grant::Column::DatanetId.eq(&request.datanet_id))
            .one(&self.db)
            .await?;
        let Some(found) = found.filter(|g| g.grantee == caller && g.state == grant_state::APPROVED) else {
            return Err(DatanetError::new(
                ErrorCode::PermissionDenied,
                format!("no approved grant {:?} for this key on this Datanet: request access first", request.grant_id),
            ));
        };
        let sealed = self.snapshot_row(&request.datanet_id, &request.snapshot_id).await?;
        read::ActiveModel {
            id: Set(Id::new().to_string()),
            grant_id: Set(found.id),
            datanet_id: Set(request.datanet_id.clone()),
            snapshot_id: Set(sealed.id.clone()),
            grantee: Set(caller.to_vec()),
            records: Set(sealed.record_count),
            at: Set(now_ms()),
        }
        .insert(&self.db)
        .await?;
        let start = ReadCursor {
            datanets: self.clone(),
            datanet_id: request.datanet_id.clone(),
            snapshot_id: sealed.id,
            next_position: 0,
            bodies: None,
        };
        let pages = futures::stream::try_unfold(start, |mut cursor| async move {
            let page = cursor.next_page().await?;
            Ok::<_, DatanetError>(if page.is_empty() { None } else { Some((page, cursor)) })
        });
        Ok(pages.map_ok(|page| futures::stream::iter(page.into_iter().map(Ok))).try_flatten().boxed())
    }

    // ---- Leaderboard ----------------------------------------------------------------------

    /// Contributors by accepted records, with their acceptance ratio and duplicates rejected.
    pub async fn leaderboard(
        &self,
        datanet_id: &str,
        limit: u32,
        caller: Option<Key>,
    ) -> Result<pb::Leaderboard, DatanetError> {
        let row = self.row(datanet_id, caller).await?;
        #[derive(Default)]
        struct Tally {
            accepted_records: u64,
            duplicates: u64,
            decided: u64,
            accepted: u64,
        }
        let mut tallies: HashMap<Vec<u8>, Tally> = HashMap::new();
        let statuses: Vec<(Vec<u8>, i16, i64)> = record::Entity::find()
            .select_only()
            .column(record::Column::Contributor)
            .column(record::Column::Status)
            .column_as(Expr::col(record::Column::Seq).count(), "n")
            .filter(record::Column::DatanetId.eq(&row.id))
            .group_by(record::Column::Contributor)
            .group_by(record::Column::Status)
            .into_tuple()
            .all(&self.db)
            .await?;
        for (contributor, status, n) in statuses {
            let tally = tallies.entry(contributor).or_default();
            match status {
                record_status::ACCEPTED => tally.accepted_records += n as u64,
                record_status::DUPLICATE => tally.duplicates += n as u64,
                _ => {}
            }
        }
        let decisions: Vec<(Vec<u8>, i16, i64)> = contribution::Entity::find()
            .select_only()
            .column(contribution::Column::Contributor)
            .column(contribution::Column::Status)
            .column_as(Expr::col(contribution::Column::Id).count(), "n")
            .filter(contribution::Column::DatanetId.eq(&row.id))
            .group_by(contribution::Column::Contributor)
            .group_by(contribution::Column::Status)
            .into_tuple()
            .all(&self.db)
            .await?;
        for (contributor, status, n) in decisions {
            let tally = tallies.entry(contributor).or_default();
            if status != ContributionStatus::PendingReview as i16 && status != ContributionStatus::Unspecified as i16 {
                tally.decided += n as u64;
            }
            if status == ContributionStatus::Accepted as i16 {
                tally.accepted += n as u64;
            }
        }
        let mut entries: Vec<pb::LeaderboardEntry> = tallies
            .into_iter()
            .map(|(contributor, tally)| pb::LeaderboardEntry {
                contributor,
                accepted_records: tally.accepted_records,
                acceptance_ratio_ppt: (tally.accepted * 1000).checked_div(tally.decided).unwrap_or(0) as u32,
                duplicates_rejected: tally.duplicates,
                earnings: None,
            })
            .collect();
        entries.sort_by(|a, b| {
            b.accepted_records
                .cmp(&a.accepted_records)
                .then(b.acceptance_ratio_ppt.cmp(&a.acceptance_ratio_ppt))
                .then(a.contributor.cmp(&b.contributor))
        });
        entries.truncate(if limit == 0 { 100 } else { limit.min(limits::MAX_PAGE_SIZE) } as usize);
        Ok(pb::Leaderboard { entries })
    }
}

/// Where a `read_records` stream stands.
struct ReadCursor {
    datanets: Arc<Datanets>,
    datanet_id: String,
    snapshot_id: String,
    next_position: i64,
    /// The bodies of the contribution being read (its id, then bodies by record hash).
    bodies: Option<(String, RecordBodies)>,
}

type RecordBodies = HashMap<Vec<u8>, Vec<u8>>;

impl ReadCursor {
    const PAGE: u64 = 500;

    async fn next_page(&mut self) -> Result<Vec<pb::Record>, DatanetError> {
        let leaves = snapshot_record::Entity::find()
            .filter(snapshot_record::Column::SnapshotId.eq(&self.snapshot_id))
            .filter(snapshot_record::Column::Position.gte(self.next_position))
            .order_by_asc(snapshot_record::Column::Position)
            .limit(Self::PAGE)
            .all(&self.datanets.db)
            .await?;
        let mut records = Vec::with_capacity(leaves.len());
        for leaf in leaves {
            self.next_position = leaf.position + 1;
            if self.bodies.as_ref().is_none_or(|(id, _)| *id != leaf.contribution_id) {
                let object = contribution_object(&self.datanet_id, &leaf.contribution_id);
                let unavailable = |error: object_store::Error| {
                    DatanetError::new(ErrorCode::Unavailable, format!("reading {object}: {error}"))
                };
                let bytes = self
                    .datanets
                    .objects
                    .get(&object)
                    .await
                    .map_err(unavailable)?
                    .bytes()
                    .await
                    .map_err(unavailable)?;
                let by_hash = bytes
                    .split(|byte| *byte == b'\n')
                    .filter(|line| !line.is_empty())
                    .map(|line| (ContentHash::of(line).as_bytes().to_vec(), line.to_vec()))
                    .collect();
                self.bodies = Some((leaf.contribution_id.clone(), by_hash));
            }
            let body =
                self.bodies.as_ref().and_then(|(_, by_hash)| by_hash.get(&leaf.hash)).cloned().ok_or_else(|| {
                    DatanetError::new(
                        ErrorCode::Internal,
                        format!("the body of record {} is missing", hex::encode(&leaf.hash)),
                    )
                })?;
            records.push(pb::Record {
                hash: Some(Hash { value: leaf.hash }),
                contribution_id: leaf.contribution_id,
                contributor: leaf.contributor,
                body,
            });
        }
        Ok(records)
    }
}

/// A contribution as the API shows it, with the given record summaries.
fn summary_view(row: contribution::Model, records: Vec<record::Model>) -> pb::Contribution {
    pb::Contribution {
        id: row.id,
        datanet_id: row.datanet_id,
        contributor: row.contributor,
        status: i32::from(row.status),
        reason: row.reason,
        records: records
            .into_iter()
            .map(|record| pb::RecordSummary {
                hash: Some(Hash { value: record.hash }),
                quality_score: record.quality.max(0) as u32,
                duplicate: record.status == record_status::DUPLICATE,
                duplicate_of: record.duplicate_of.unwrap_or_default(),
            })
            .collect(),
        bond: Some(row.bond.parse::<u128>().unwrap_or(0).into()),
        submitted_at: Some(timestamp(row.submitted_at)),
        file_name: row.file_name,
        quality_score: row.quality_score.max(0) as u32,
        bond_state: bond_state::name(row.bond_state).to_owned(),
        size_bytes: row.size_bytes.max(0) as u64,
    }
}

/// What committing an upload did.
enum Committed {
    Stored,
    /// The same file from the same contributor is already stored (a retry that raced).
    SameFile(Box<contribution::Model>),
}

/// A contribution ready to be decided and written.
struct NewContribution {
    id: String,
    datanet_id: String,
    contributor: Key,
    account: Option<u128>,
    stake: u128,
    file_name: String,
    media_type: String,
    size: u64,
    file_hash: ContentHash,
    signature: Vec<u8>,
    policy: pb::ContributionPolicy,
    records: Vec<PreparedRecord>,
}

/// A parsed record: canonical body, hash, score and MinHash.
struct PreparedRecord {
    hash: ContentHash,
    quality: u32,
    minhash: Option<Signature>,
    size: usize,
}

struct Prepared {
    records: Vec<PreparedRecord>,
    bodies: Vec<Vec<u8>>,
}

/// Parses, validates, hashes, scores and signs (MinHash) every record of a file. CPU-bound:
/// runs on a blocking thread.
fn prepare(
    kind: FileKind,
    bytes: &[u8],
    schema: RecordSchema,
    labels: &[String],
    limits: &ParseLimits,
    hasher: &MinHasher,
    file_name: &str,
) -> Result<Prepared, DatanetError> {
    let parsed = parse::parse(kind, bytes, schema, limits).map_err(|error| invalid(format!("{file_name}: {error}")))?;
    if parsed.is_empty() {
        return Err(invalid(format!("{file_name}: no records in the file")));
    }
    let mut records = Vec::with_capacity(parsed.len());
    let mut bodies = Vec::with_capacity(parsed.len());
    for record in &parsed {
        if let Some(label) = &record.label
            && !labels.iter().any(|known| known == label)
        {
            return Err(invalid(format!(
                "{file_name}, {}: the label {label:?} is not in the Datanet's label set ({})",
                record.source,
                labels.join(", ")
            )));
        }
        let body = record.canonical_json(schema);
        let text = record.dedup_text();
        records.push(PreparedRecord {
            hash: ContentHash::of(&body),
            quality: quality::score(&text).score,
            minhash: hasher.signature(&text),
            size: body.len(),
        });
        bodies.push(body);
    }
    Ok(Prepared { records, bodies })
}

/// Decides each record (fresh or a duplicate of whose credit) and the contribution's status,
/// adding fresh records to the index as it goes (so copies inside one file are caught too).
fn decide(
    new: &NewContribution,
    index: &mut DatanetIndex,
    policy: &pb::ContributionPolicy,
    dedup: &DedupParams,
) -> Result<(ContributionStatus, String, Vec<Decided>), DatanetError> {
    let threshold = f64::from(policy.near_duplicate_jaccard_ppt) / 1000.0;
    let accept_at = DedupParams { threshold, ..*dedup }.accept_at();
    let mut decided = Vec::with_capacity(new.records.len());
    // Copies inside this file are checked against the file's own fresh records; those join
    // the Datanet's index only if the contribution holds credit (accepted or pending review).
    let mut file_exact = HashSet::new();
    let mut file_near = NearDuplicateIndex::new(DedupParams { max_records: new.records.len().max(1), ..*dedup });
    for (ordinal, record) in new.records.iter().enumerate() {
        let exact = index
            .exact
            .get(record.hash.as_bytes())
            .cloned()
            .or_else(|| file_exact.contains(record.hash.as_bytes()).then(|| new.id.clone()));
        let near = || {
            let signature = record.minhash.as_ref()?;
            let similar = |found: Option<(String, f64)>| found.filter(|(_, s)| *s >= accept_at).map(|(id, _)| id);
            similar(index.near.nearest(signature)).or_else(|| similar(file_near.nearest(signature)))
        };
        let duplicate_of = exact.or_else(near);
        if duplicate_of.is_none() {
            file_exact.insert(*record.hash.as_bytes());
            if let Some(signature) = &record.minhash {
                file_near.insert(new.id.clone(), signature.clone()).map_err(index_full)?;
            }
        }
        decided.push(Decided {
            ordinal,
            hash: record.hash,
            quality: record.quality,
            duplicate_of,
            minhash: record.minhash.clone(),
            size: record.size,
        });
    }
    let fresh: Vec<&Decided> = decided.iter().filter(|d| d.duplicate_of.is_none()).collect();
    let (status, reason) = if fresh.is_empty() {
        let first = decided.first().and_then(|d| d.duplicate_of.clone()).unwrap_or_default();
        (
            ContributionStatus::Duplicate,
            format!(
                "all {} records duplicate earlier contributions (e.g. {first}): credit stays with the first copy",
                decided.len()
            ),
        )
    } else {
        let score = fresh.iter().map(|d| u64::from(d.quality)).sum::<u64>() / fresh.len() as u64;
        let duplicates = decided.len() - fresh.len();
        let note =
            if duplicates > 0 { format!("; {duplicates} duplicate records earn nothing") } else { String::new() };
        if score < u64::from(policy.reject_below_score) {
            (
                ContributionStatus::Rejected,
                format!("spam: quality score {score} is below {}{note}", policy.reject_below_score),
            )
        } else if score >= u64::from(policy.auto_accept_score) && !policy.review_all {
            (ContributionStatus::Accepted, format!("accepted: quality score {score}{note}"))
        } else {
            (
                ContributionStatus::PendingReview,
                format!(
                    "pending review: quality score {score} is below {} for automatic acceptance{note}",
                    policy.auto_accept_score
                ),
            )
        }
    };
    if matches!(status, ContributionStatus::Accepted | ContributionStatus::PendingReview) {
        for fresh in decided.iter().filter(|d| d.duplicate_of.is_none()) {
            index.exact.insert(*fresh.hash.as_bytes(), new.id.clone());
            if let Some(signature) = &fresh.minhash {
                index.near.insert(new.id.clone(), signature.clone()).map_err(index_full)?;
            }
        }
    }
    Ok((status, reason, decided))
}

async fn write_contribution(
    txn: &DatabaseTransaction,
    new: &NewContribution,
    (status, reason, decided): &(ContributionStatus, String, Vec<Decided>),
    index: &mut DatanetIndex,
) -> Result<(), DatanetError> {
    let bond = match (new.account, status) {
        (None, _) => bond_state::NONE,
        (Some(_), ContributionStatus::Accepted) => bond_state::TO_RELEASE,
        (Some(_), ContributionStatus::PendingReview) => bond_state::HELD,
        (Some(_), _) => bond_state::TO_SLASH,
    };
    let fresh_status = match status {
        ContributionStatus::Accepted => record_status::ACCEPTED,
        ContributionStatus::PendingReview => record_status::PENDING,
        _ => record_status::REJECTED,
    };
    let quality = decided.iter().map(|d| d.quality).min().unwrap_or(0);
    let submitted_at = now_ms();
    let placeholder = contribution::Entity::delete_by_id(&new.id).exec(txn).await?.rows_affected;
    if new.account.is_some() && placeholder != 1 {
        return Err(DatanetError::new(
            ErrorCode::Unavailable,
            "the upload took too long and was abandoned (its bond was given back): send it again",
        ));
    }
    contribution::ActiveModel {
        id: Set(new.id.clone()),
        datanet_id: Set(new.datanet_id.clone()),
        contributor: Set(new.contributor.to_vec()),
        account_id: Set(new.account.map(|id| id.to_be_bytes().to_vec())),
        status: Set(*status as i16),
        reason: Set(reason.clone()),
        file_name: Set(new.file_name.clone()),
        media_type: Set(new.media_type.clone()),
        size_bytes: Set(new.size as i64),
        file_hash: Set(new.file_hash.as_bytes().to_vec()),
        signature: Set(new.signature.clone()),
        record_count: Set(decided.len() as i32),
        quality_score: Set(quality as i32),
        bond: Set(if new.account.is_some() { new.stake } else { 0 }.to_string()),
        bond_state: Set(bond),
        submitted_at: Set(submitted_at),
        decided_at: Set((*status != ContributionStatus::PendingReview).then_some(submitted_at)),
        decided_by: Set(None),
    }
    .insert(txn)
    .await?;
    for chunk in decided.chunks(500) {
        let rows = chunk.iter().map(|d| record::ActiveModel {
            datanet_id: Set(new.datanet_id.clone()),
            contribution_id: Set(new.id.clone()),
            ordinal: Set(d.ordinal as i32),
            contributor: Set(new.contributor.to_vec()),
            hash: Set(d.hash.as_bytes().to_vec()),
            quality: Set(d.quality as i32),
            status: Set(if d.duplicate_of.is_some() { record_status::DUPLICATE } else { fresh_status }),
            duplicate_of: Set(d.duplicate_of.clone()),
            // Only records that hold credit are indexed, so only theirs are kept.
            minhash: Set(d
                .minhash
                .as_ref()
                .filter(|_| d.duplicate_of.is_none())
                .map(|s| s.0.iter().flat_map(|v| v.to_le_bytes()).collect())),
            size_bytes: Set(d.size as i32),
            ..Default::default()
        });
        record::Entity::insert_many(rows).exec(txn).await?;
    }
    let last: Option<i64> = record::Entity::find()
        .select_only()
        .column_as(Expr::col(record::Column::Seq).max(), "m")
        .filter(record::Column::ContributionId.eq(&new.id))
        .into_tuple()
        .one(txn)
        .await?
        .flatten();
    index.last_seq = index.last_seq.max(last.unwrap_or(0));
    let row = contribution::Entity::find_by_id(&new.id)
        .one(txn)
        .await?
        .ok_or_else(|| DatanetError::new(ErrorCode::Internal, "the contribution just written is missing"))?;
    let hashes: Vec<Hash> = decided.iter().map(|d| Hash { value: d.hash.as_bytes().to_vec() }).collect();
    enqueue_contribution_event(txn, &row, ContributionStatus::Unspecified, "submitted", hashes.clone()).await?;
    if *status != ContributionStatus::PendingReview {
        enqueue_contribution_event(txn, &row, *status, reason, hashes).await?;
    }
    Ok(())
}

/// `submitted` (status unspecified), `accepted`, or `rejected` (rejected or duplicate).
async fn enqueue_contribution_event(
    txn: &DatabaseTransaction,
    row: &contribution::Model,
    status: ContributionStatus,
    reason: &str,
    record_hashes: Vec<Hash>,
) -> Result<(), DatanetError> {
    let subject = match status {
        ContributionStatus::Unspecified | ContributionStatus::PendingReview => SUBJECT_SUBMITTED,
        ContributionStatus::Accepted => SUBJECT_ACCEPTED,
        ContributionStatus::Rejected | ContributionStatus::Duplicate => SUBJECT_REJECTED,
    };
    let event = ContributionEvent {
        datanet_id: row.datanet_id.clone(),
        contribution_id: row.id.clone(),
        contributor: row.contributor.clone(),
        record_hashes,
        status: if status == ContributionStatus::Unspecified {
            status_name(row.status).to_owned()
        } else {
            status_name(status as i16).to_owned()
        },
        reason: reason.to_owned(),
        at: Some(timestamp(now_ms())),
    };
    openledger_store::outbox::enqueue(txn, PRODUCER, NewEvent::new(subject, event.encode_to_vec())).await?;
    Ok(())
}

async fn record_hashes(txn: &DatabaseTransaction, contribution_id: &str) -> Result<Vec<Hash>, DatanetError> {
    Ok(record::Entity::find()
        .filter(record::Column::ContributionId.eq(contribution_id))
        .order_by_asc(record::Column::Ordinal)
        .all(txn)
        .await?
        .into_iter()
        .map(|r| Hash { value: r.hash })
        .collect())
}

/// The contribution of this file by this contributor (other than `except`), if there is one:
/// one contributor's file is one contribution.
async fn same_file<C: ConnectionTrait>(
    db: &C,
    datanet_id: &str,
    contributor: &Key,
    file_hash: &ContentHash,
    except: Option<&str>,
) -> Result<Option<contribution::Model>, DatanetError> {
    let mut query = contribution::Entity::find()
        .filter(contribution::Column::DatanetId.eq(datanet_id))
        .filter(contribution::Column::Contributor.eq(contributor.to_vec()))
        .filter(contribution::Column::FileHash.eq(file_hash.as_bytes().to_vec()));
    if let Some(id) = except {
        query = query.filter(contribution::Column::Id.ne(id));
    }
    Ok(query.one(db).await?)
}

/// Takes the Datanet's write lock (bumping its revision) and returns the row.
async fn lock_datanet(txn: &DatabaseTransaction, datanet_id: &str) -> Result<datanet::Model, DatanetError> {
    datanet::Entity::update_many()
        .col_expr(datanet::Column::Revision, Expr::col(datanet::Column::Revision).add(1))
        .filter(datanet::Column::Id.eq(datanet_id))
        .exec(txn)
        .await?;
    datanet::Entity::find_by_id(datanet_id)
        .one(txn)
        .await?
        .ok_or_else(|| DatanetError::new(ErrorCode::NotFound, format!("no Datanet {datanet_id:?}")))
}

async fn bump_index_generation(txn: &DatabaseTransaction, datanet_id: &str) -> Result<(), DatanetError> {
    datanet::Entity::update_many()
        .col_expr(datanet::Column::IndexGeneration, Expr::col(datanet::Column::IndexGeneration).add(1))
        .filter(datanet::Column::Id.eq(datanet_id))
        .exec(txn)
        .await?;
    Ok(())
}

/// Refuses an upload that would take the contributor or the Datanet past today's limits
/// (UTC days).
async fn check_daily_limits<C: ConnectionTrait>(
    db: &C,
    datanet_id: &str,
    contributor: &Key,
    policy: &pb::ContributionPolicy,
    size: u64,
    // This upload's own placeholder, which must not count against it.
    this_upload: Option<&str>,
) -> Result<(), DatanetError> {
    let now = now_ms();
    let day_start = now - now.rem_euclid(DAY_MS);
    let used = |by_contributor: bool| {
        let mut query = contribution::Entity::find()
            .select_only()
            .column_as(Expr::col(contribution::Column::Id).count(), "files")
            .column_as(Expr::cust("CAST(COALESCE(SUM(size_bytes), 0) AS BIGINT)"), "bytes")
            .filter(contribution::Column::DatanetId.eq(datanet_id))
            .filter(contribution::Column::SubmittedAt.gte(day_start));
        if by_contributor {
            query = query.filter(contribution::Column::Contributor.eq(contributor.to_vec()));
        }
        if let Some(id) = this_upload {
            query = query.filter(contribution::Column::Id.ne(id));
        }
        query.into_tuple::<(i64, i64)>()
    };
    for (by_contributor, max_files, max_bytes, who) in [
        (true, policy.max_files_per_contributor_per_day, policy.max_bytes_per_contributor_per_day, "this contributor"),
        (false, policy.max_files_per_day, policy.max_bytes_per_day, "this Datanet"),
    ] {
        let (files, bytes) = used(by_contributor).one(db).await?.unwrap_or((0, 0));
        let bytes = bytes.max(0) as u64;
        if files as u64 >= u64::from(max_files) {
            return Err(DatanetError::new(
                ErrorCode::ResourceExhausted,
                format!("{who} has reached today's limit of {max_files} files (UTC day); try again tomorrow"),
            ));
        }
        if bytes + size > max_bytes {
            return Err(DatanetError::new(
                ErrorCode::ResourceExhausted,
                format!(
                    "this file would take {who} to {} bytes today, over the daily limit of {max_bytes} bytes (UTC day)",
                    bytes + size
                ),
            ));
        }
    }
    Ok(())
}

fn contribution_object(datanet_id: &str, contribution_id: &str) -> ObjectPath {
    ObjectPath::from(format!("datanets/{datanet_id}/contributions/{contribution_id}.jsonl"))
}

/// A write refused by a unique index (by the database's error code, on SQLite and PostgreSQL).
fn is_unique_violation(error: &sea_orm::DbErr) -> bool {
    matches!(error.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_)))
}

fn index_full(error: crate::dedup::DedupError) -> DatanetError {
    DatanetError::new(ErrorCode::ResourceExhausted, format!("this Datanet cannot take more records: {error}"))
}

fn invalid(message: impl Into<String>) -> DatanetError {
    DatanetError::new(ErrorCode::InvalidArgument, message)
}

fn require_owner(row: &datanet::Model, caller: &Key, what: &str) -> Result<(), DatanetError> {
    if row.owner != caller {
        return Err(DatanetError::new(ErrorCode::PermissionDenied, format!("only the Datanet's owner may {what}")));
    }
    Ok(())
}

fn is_validator(row: &datanet::Model, key: &Key) -> bool {
    row.validators.chunks_exact(32).any(|validator| validator == key)
}

fn status_name(status: i16) -> &'static str {
    match ContributionStatus::try_from(i32::from(status)).unwrap_or(ContributionStatus::Unspecified) {
        ContributionStatus::PendingReview => "pending_review",
        ContributionStatus::Accepted => "accepted",
        ContributionStatus::Rejected => "rejected",
        ContributionStatus::Duplicate => "duplicate",
        ContributionStatus::Unspecified => "submitted",
    }
}

fn grant_view(row: grant::Model) -> pb::AccessGrant {
    pb::AccessGrant {
        id: row.id,
        datanet_id: row.datanet_id,
        grantee: row.grantee,
        state: grant_state::name(row.state).to_owned(),
        purpose: row.purpose,
    }
}

fn content_hash(bytes: &[u8]) -> Option<ContentHash> {
    <[u8; 32]>::try_from(bytes).ok().map(ContentHash::from_bytes)
}

fn hash_of(hash: Option<&Hash>, field: &str) -> Result<ContentHash, DatanetError> {
    hash.and_then(|hash| content_hash(&hash.value))
        .ok_or_else(|| invalid(format!("{field} must be a 32-byte BLAKE3 hash")))
}

fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

fn page_size_of(requested: u32) -> u32 {
    if requested == 0 { limits::DEFAULT_PAGE_SIZE } else { requested.min(limits::MAX_PAGE_SIZE) }
}

fn view(row: &datanet::Model) -> Result<pb::Datanet, DatanetError> {
    Ok(pb::Datanet {
        id: row.id.clone(),
        slug: row.slug.clone(),
        name: row.name.clone(),
        summary: row.summary.clone(),
        description_markdown: row.description.clone(),
        tags: serde_json::from_str(&row.tags).unwrap_or_default(),
        schema: i32::from(row.schema),
        label_set: serde_json::from_str(&row.label_set).unwrap_or_default(),
        licence: row.licence.clone(),
        visibility: i32::from(row.visibility),
        policy: Some(policy_of(row)?),
        owner: row.owner.clone(),
        validators: row.validators.chunks_exact(32).map(<[u8]>::to_vec).collect(),
        created_at: Some(timestamp(row.created_at)),
    })
}

fn policy_of(row: &datanet::Model) -> Result<pb::ContributionPolicy, DatanetError> {
    pb::ContributionPolicy::decode(row.policy.as_slice())
        .map_err(|error| DatanetError::new(ErrorCode::Internal, format!("the stored policy is corrupt: {error}")))
}

fn schema_of(schema: i32) -> Result<RecordSchema, DatanetError> {
    match WireSchema::try_from(schema).unwrap_or(WireSchema::Unspecified) {
        WireSchema::FreeText => Ok(RecordSchema::FreeText),
        WireSchema::InstructionResponse => Ok(RecordSchema::InstructionResponse),
        WireSchema::LabelledText => Ok(RecordSchema::LabelledText),
        WireSchema::Unspecified => Err(invalid("schema must be free_text, instruction_response or labelled_text")),
    }
}

/// Fills a policy's zeros with the defaults and checks its ranges.
pub fn complete_policy(mut policy: pb::ContributionPolicy) -> Result<pb::ContributionPolicy, DatanetError> {
    let or = |value: u64, default: u64| if value == 0 { default } else { value };
    policy.max_bytes_per_contributor_per_day =
        or(policy.max_bytes_per_contributor_per_day, defaults::MAX_BYTES_PER_CONTRIBUTOR_PER_DAY);
    policy.max_files_per_contributor_per_day =
        or(policy.max_files_per_contributor_per_day.into(), defaults::MAX_FILES_PER_CONTRIBUTOR_PER_DAY.into()) as u32;
    policy.max_bytes_per_day = or(policy.max_bytes_per_day, defaults::MAX_BYTES_PER_DAY);
    policy.max_files_per_day = or(policy.max_files_per_day.into(), defaults::MAX_FILES_PER_DAY.into()) as u32;
    policy.max_file_bytes = or(policy.max_file_bytes, defaults::MAX_FILE_BYTES);
    if policy.auto_accept_score == 0 && policy.reject_below_score == 0 {
        policy.auto_accept_score = defaults::AUTO_ACCEPT_SCORE;
        policy.reject_below_score = defaults::REJECT_BELOW_SCORE;
    }
    policy.near_duplicate_jaccard_ppt =
        or(policy.near_duplicate_jaccard_ppt.into(), defaults::NEAR_DUPLICATE_JACCARD_PPT.into()) as u32;
    if policy.max_file_bytes > limits::MAX_FILE_BYTES {
        return Err(invalid(format!(
            "policy.max_file_bytes is {}; the service takes files of at most {} bytes",
            policy.max_file_bytes,
            limits::MAX_FILE_BYTES
        )));
    }
    if policy.auto_accept_score > 1000 || policy.reject_below_score > policy.auto_accept_score {
        return Err(invalid(format!(
            "policy scores must satisfy reject_below_score ≤ auto_accept_score ≤ 1000, got {} and {}",
            policy.reject_below_score, policy.auto_accept_score
        )));
    }
    if policy.near_duplicate_jaccard_ppt > 1000 {
        return Err(invalid("policy.near_duplicate_jaccard_ppt must be in 1..=1000 (parts per thousand)"));
    }
    keys("policy.allowed_contributors", &policy.allowed_contributors, limits::MAX_ALLOWED_CONTRIBUTORS)?;
    if policy.allow_list_only && policy.allowed_contributors.is_empty() {
        return Err(invalid("policy.allow_list_only needs at least one key in policy.allowed_contributors"));
    }
    Ok(policy)
}

fn keys(field: &str, keys: &[Vec<u8>], max: usize) -> Result<Vec<Key>, DatanetError> {
    if keys.len() > max {
        return Err(invalid(format!("{field} holds at most {max} keys, got {}", keys.len())));
    }
    keys.iter()
        .enumerate()
        .map(|(i, key)| {
            Key::try_from(key.as_slice()).map_err(|_| {
                invalid(format!("{field}[{i}] must be a 32-byte ed25519 public key, got {} bytes", key.len()))
            })
        })
        .collect()
}

fn check_text(field: &str, value: &str, min_chars: usize, max_chars: usize) -> Result<(), DatanetError> {
    let chars = value.chars().count();
    if chars < min_chars || chars > max_chars {
        return Err(invalid(format!("{field} must have {min_chars} to {max_chars} characters, got {chars}")));
    }
    if value.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(invalid(format!("{field} must not contain control characters")));
    }
    Ok(())
}

fn check_slug(slug: &str) -> Result<(), DatanetError> {
    if slug.parse::<Id>().is_ok() {
        return Err(invalid(format!("slug {slug:?} has the form of a Datanet id: choose a name")));
    }
    let ok = (2..=64).contains(&slug.len())
        && slug.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !slug.starts_with('-')
        && !slug.ends_with('-');
    if !ok {
        return Err(invalid(format!(
            "slug {slug:?} must be 2 to 64 characters of a-z, 0-9 and '-', not starting or ending with '-'"
        )));
    }
    Ok(())
}

fn check_description(description: &str) -> Result<(), DatanetError> {
    if description.len() > limits::MAX_DESCRIPTION_BYTES {
        return Err(invalid(format!(
            "description_markdown is {} bytes; at most {} are kept",
            description.len(),
            limits::MAX_DESCRIPTION_BYTES
        )));
    }
    Ok(())
}

fn check_tags(tags: &[String]) -> Result<(), DatanetError> {
    if tags.len() > limits::MAX_TAGS {
        return Err(invalid(format!("at most {} tags, got {}", limits::MAX_TAGS, tags.len())));
    }
    for tag in tags {
        let ok = (1..=limits::MAX_TAG_CHARS).contains(&tag.len())
            && tag.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(invalid(format!(
                "tag {tag:?} must be 1 to {} characters of a-z, 0-9 and '-'",
                limits::MAX_TAG_CHARS
            )));
        }
    }
    Ok(())
}

/// The editable fields (summary, description, tags) of a new Datanet.
fn check_editable(datanet: &pb::Datanet) -> Result<(), DatanetError> {
    check_text("summary", &datanet.summary, 0, limits::MAX_SUMMARY_CHARS)?;
    check_description(&datanet.description_markdown)?;
    check_tags(&datanet.tags)
}

fn check_labels(schema: RecordSchema, labels: &[String]) -> Result<(), DatanetError> {
    match schema {
        RecordSchema::LabelledText if labels.is_empty() => {
            Err(invalid("labelled_text Datanets need a label_set (the labels records may carry)"))
        }
        RecordSchema::LabelledText => {
            if labels.len() > limits::MAX_LABELS {
                return Err(invalid(format!("label_set holds at most {} labels", limits::MAX_LABELS)));
            }
            let mut seen = HashSet::new();
            for label in labels {
                check_text("label", label, 1, limits::MAX_LABEL_CHARS)?;
                if !seen.insert(label) {
                    return Err(invalid(format!("label {label:?} appears twice in label_set")));
                }
            }
            Ok(())
        }
        _ if !labels.is_empty() => Err(invalid("label_set is only for labelled_text Datanets")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
