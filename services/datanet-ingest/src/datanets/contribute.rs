//! The contribution flow: check an upload, parse and score its records on a blocking thread,
//! store the bodies, hold the bond (see [`super::bond_saga`]), then decide and write the
//! contribution in one transaction under the Datanet's write lock.

use object_store::{ObjectStore, PutPayload};
use openledger_core::{ContentHash, ErrorCode, Id};
use openledger_proto::{
    common::v1::Hash,
    datanet::v1::{self as pb, ContributionStatus, Visibility},
    u128_of,
};
use openledger_store::{db::retry_when_busy, now_ms};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter, QuerySelect, Set,
    TransactionTrait, sea_query::Expr,
};

use crate::{
    DatanetError,
    dedup::{MinHasher, RecordSignatures},
    entities::{contribution, datanet, record},
    limits,
    parse::{self, FileKind, ParseLimits, RecordSchema},
    quality,
    signing::{self, Key},
};

use super::Datanets;
use super::contributions::enqueue_contribution_event;
use super::decide::{Decided, decide};
use super::definitions::policy_of;
use super::index::DatanetIndex;
use super::states::{BondState, RecordStatus, stored_json, stored_schema, visibility};
use super::{Upload, contribution_object, invalid, lock_datanet};

impl Datanets {
    /// Takes one signed file: checks, parses, scores, dedups, bonds and stores it.
    pub async fn contribute(&self, upload: Upload) -> Result<pb::Contribution, DatanetError> {
        let admitted = match self.admit(&upload).await? {
            Admission::New(admitted) => *admitted,
            Admission::Again(existing) => return self.contribution_view(*existing).await,
        };
        let prepared = self.prepare_records(&admitted.row, &upload).await?;
        let stake = u128_of(admitted.policy.stake_per_contribution.as_ref());
        let account = self.bond_account(stake, upload.account_id, &admitted.contributor).await?;
        debug_assert!(account.is_none() || stake > 0, "only a Datanet with a stake bonds uploads");
        let new = NewContribution {
            id: Id::new().to_string(),
            datanet_id: admitted.row.id,
            contributor: admitted.contributor,
            account,
            stake,
            file_name: upload.file_name.clone(),
            media_type: upload.media_type.clone(),
            size: upload.bytes.len() as u64,
            file_hash: admitted.file_hash,
            signature: upload.signature.signature.clone(),
            policy: admitted.policy,
            records: prepared.records,
        };
        self.store_bodies(&new, &prepared.bodies).await?;
        if let Some(account) = account
            && let Some(existing) = self.hold_bond(&new, account).await?
        {
            return self.contribution_view(existing).await;
        }
        self.store(&new).await
    }

    /// Checks an upload against its Datanet: size, hash, signature, who may contribute, and
    /// today's limits. The same file from the same contributor again is a retry: its
    /// contribution is the answer.
    async fn admit(&self, upload: &Upload) -> Result<Admission, DatanetError> {
        // By id; who may contribute to a private Datanet is checked once the signer is known.
        let row = datanet::Entity::find_by_id(&upload.datanet_id)
            .one(&self.db)
            .await?
            .ok_or_else(|| DatanetError::new(ErrorCode::NotFound, format!("no Datanet {:?}", upload.datanet_id)))?;
        let policy = policy_of(&row)?;
        let file_hash = check_file(upload, &policy)?;
        let message = signing::contribution_message(&row.id, &upload.file_name, &file_hash, upload.account_id);
        let contributor = signing::verify(&upload.signature.public_key, &upload.signature.signature, &message)?;
        self.check_contributor(&row, &policy, &contributor).await?;
        if let Some(existing) = same_file(&self.db, &row.id, &contributor, &file_hash, None).await? {
            return Ok(Admission::Again(Box::new(existing)));
        }
        check_daily_limits(&self.db, &row.id, &contributor, &policy, upload.bytes.len() as u64, None).await?;
        Ok(Admission::New(Box::new(Admitted { row, policy, contributor, file_hash })))
    }

    /// Refuses a contributor the Datanet does not take: outsiders of a private Datanet (who
    /// learn nothing of it, not even whether content is in it) and keys off its allow-list.
    async fn check_contributor(
        &self,
        row: &datanet::Model,
        policy: &pb::ContributionPolicy,
        contributor: &Key,
    ) -> Result<(), DatanetError> {
        let listed = policy.allowed_contributors.iter().any(|key| key.as_slice() == contributor);
        if visibility(row.visibility)? == Visibility::Private
            && !listed
            && !self.may_see(row, Some(*contributor)).await?
        {
            return Err(DatanetError::new(ErrorCode::NotFound, format!("no Datanet {:?}", row.id)));
        }
        if policy.allow_list_only && !listed {
            return Err(DatanetError::new(
                ErrorCode::PermissionDenied,
                "this Datanet takes contributions from its allow-list only, and the key is not on it",
            ));
        }
        Ok(())
    }

    /// Parses, scores and signs (MinHash) the upload's records on a blocking thread.
    async fn prepare_records(&self, row: &datanet::Model, upload: &Upload) -> Result<Prepared, DatanetError> {
        let schema = stored_schema(row.schema)?;
        let labels: Vec<String> = stored_json("label set", &row.label_set)?;
        let kind = FileKind::detect(&upload.file_name, &upload.media_type)
            .map_err(|error| invalid(format!("{}: {error}", upload.file_name)))?;
        let bytes = upload.bytes.clone();
        let limits = self.parse_limits;
        let hasher = self.hasher.clone();
        let file_name = upload.file_name.clone();
        tokio::task::spawn_blocking(move || prepare(kind, &bytes, schema, &labels, &limits, &hasher, &file_name))
            .await
            .map_err(|error| DatanetError::new(ErrorCode::Internal, format!("parsing failed: {error}")))?
    }

    /// The ledger account that bonds the upload: none when the Datanet takes no stake, else
    /// the one the upload names, which the contributor's key must own.
    async fn bond_account(
        &self,
        stake: u128,
        account: Option<u128>,
        contributor: &Key,
    ) -> Result<Option<u128>, DatanetError> {
        match (stake, account) {
            (0, _) => Ok(None),
            (_, None) => Err(DatanetError::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "this Datanet needs a stake bond of {stake} base units per contribution: give contributor_account_id (a ledger account your key owns)"
                ),
            )),
            (_, Some(account)) => {
                self.bonds.check_owner(account, contributor).await?;
                Ok(Some(account))
            }
        }
    }

    /// Puts the records' bodies in the object store, one JSONL object per contribution.
    async fn store_bodies(&self, new: &NewContribution, bodies: &[Vec<u8>]) -> Result<(), DatanetError> {
        let body: Vec<u8> = bodies.iter().flat_map(|line| line.iter().copied().chain([b'\n'])).collect();
        self.objects.put(&contribution_object(&new.datanet_id, &new.id), PutPayload::from(body)).await.map_err(
            |error| DatanetError::new(ErrorCode::Unavailable, format!("storing the records failed: {error}")),
        )?;
        Ok(())
    }

    /// Commits the contribution (giving its bond back when it is not stored), applies its bond
    /// decision, and answers the stored contribution.
    async fn store(&self, new: &NewContribution) -> Result<pb::Contribution, DatanetError> {
        let bonded = new.account.is_some();
        match self.commit_contribution(new).await {
            Ok(Committed::Stored) => {}
            Ok(Committed::SameFile(existing)) => {
                if bonded {
                    self.give_back(&new.id, "the same file was already contributed").await;
                }
                return self.contribution_view(*existing).await;
            }
            Err(error) => {
                if bonded {
                    self.give_back(&new.id, "the contribution was not stored").await;
                }
                return Err(error);
            }
        }
        self.wake_outbox();
        if bonded {
            self.resolve_bond(&new.id).await;
        }
        let stored = contribution::Entity::find_by_id(&new.id)
            .one(&self.db)
            .await?
            .ok_or_else(|| DatanetError::new(ErrorCode::Internal, "the stored contribution vanished"))?;
        self.contribution_view(stored).await
    }

    /// Decides every record against the index and writes the contribution in one transaction.
    pub(super) async fn commit_contribution(&self, new: &NewContribution) -> Result<Committed, DatanetError> {
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

    pub(super) async fn commit_attempt(
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
        debug_assert_eq!(current.generation, row.index_generation, "the index is of the Datanet's generation");
        check_daily_limits(&txn, &new.datanet_id, &new.contributor, &new.policy, new.size, Some(&new.id)).await?;
        let decided = decide(new, current, &new.policy, &self.dedup)?;
        write_contribution(&txn, new, &decided, current).await?;
        txn.commit().await?;
        Ok(Committed::Stored)
    }
}

/// An upload that passed the checks: its Datanet, the Datanet's policy, the signer, the hash.
struct Admitted {
    row: datanet::Model,
    policy: pb::ContributionPolicy,
    contributor: Key,
    file_hash: ContentHash,
}

/// What the checks made of an upload.
enum Admission {
    New(Box<Admitted>),
    /// The same file from the same contributor is already a contribution (a retry).
    Again(Box<contribution::Model>),
}

/// The file's hash, once it is not empty, within the policy's size, and the hash declared.
fn check_file(upload: &Upload, policy: &pb::ContributionPolicy) -> Result<ContentHash, DatanetError> {
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
    Ok(file_hash)
}

/// What committing an upload did.
pub(super) enum Committed {
    Stored,
    /// The same file from the same contributor is already stored (a retry that raced).
    SameFile(Box<contribution::Model>),
}

/// A contribution ready to be decided and written.
pub(super) struct NewContribution {
    pub(super) id: String,
    pub(super) datanet_id: String,
    pub(super) contributor: Key,
    pub(super) account: Option<u128>,
    pub(super) stake: u128,
    pub(super) file_name: String,
    pub(super) media_type: String,
    pub(super) size: u64,
    pub(super) file_hash: ContentHash,
    pub(super) signature: Vec<u8>,
    pub(super) policy: pb::ContributionPolicy,
    pub(super) records: Vec<PreparedRecord>,
}

/// A parsed record: canonical body, hash, score and MinHash.
pub(super) struct PreparedRecord {
    pub(super) hash: ContentHash,
    pub(super) quality: u32,
    /// What the record is indexed under (stored) and looked up with.
    pub(super) minhash: Option<RecordSignatures>,
    pub(super) size: usize,
}

pub(super) struct Prepared {
    pub(super) records: Vec<PreparedRecord>,
    pub(super) bodies: Vec<Vec<u8>>,
}

/// Parses, validates, hashes, scores and signs (MinHash) every record of a file. CPU-bound:
/// runs on a blocking thread.
pub(super) fn prepare(
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
            minhash: hasher.signatures(&text),
            size: body.len(),
        });
        bodies.push(body);
    }
    Ok(Prepared { records, bodies })
}

pub(super) async fn write_contribution(
    txn: &DatabaseTransaction,
    new: &NewContribution,
    (status, reason, decided): &(ContributionStatus, String, Vec<Decided>),
    index: &mut DatanetIndex,
) -> Result<(), DatanetError> {
    // An accepted contribution's bond stays held until its quality is known; spam and
    // duplicates are slashed at once.
    let bond = match (new.account, status) {
        (None, _) => BondState::None,
        (Some(_), ContributionStatus::Accepted) => BondState::QualityPending,
        (Some(_), ContributionStatus::PendingReview) => BondState::Held,
        (Some(_), _) => BondState::ToSlash,
    };
    let fresh_status = match status {
        ContributionStatus::Accepted => RecordStatus::Accepted,
        ContributionStatus::PendingReview => RecordStatus::Pending,
        _ => RecordStatus::Rejected,
    };
    debug_assert!(!decided.is_empty(), "prepare refuses a file without records");
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
        bond_state: Set(bond.into()),
        submitted_at: Set(submitted_at),
        decided_at: Set((*status != ContributionStatus::PendingReview).then_some(submitted_at)),
        decided_by: Set(None),
        bond_reason: Set(None),
    }
    .insert(txn)
    .await?;
    let last = write_records(txn, new, decided, fresh_status).await?;
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

/// Writes the contribution's records and returns the last sequence number they took.
async fn write_records(
    txn: &DatabaseTransaction,
    new: &NewContribution,
    decided: &[Decided],
    fresh_status: RecordStatus,
) -> Result<Option<i64>, DatanetError> {
    for chunk in decided.chunks(limits::INSERT_CHUNK_ROWS) {
        let rows = chunk.iter().map(|d| record::ActiveModel {
            datanet_id: Set(new.datanet_id.clone()),
            contribution_id: Set(new.id.clone()),
            ordinal: Set(d.ordinal as i32),
            contributor: Set(new.contributor.to_vec()),
            hash: Set(d.hash.as_bytes().to_vec()),
            quality: Set(d.quality as i32),
            status: Set(if d.duplicate_of.is_some() { RecordStatus::Duplicate } else { fresh_status }.into()),
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
    Ok(last)
}

/// The contribution of this file by this contributor (other than `except`), if there is one:
/// one contributor's file is one contribution.
pub(super) async fn same_file<C: ConnectionTrait>(
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

/// Refuses an upload that would take the contributor or the Datanet past today's limits
/// (UTC days).
pub(super) async fn check_daily_limits<C: ConnectionTrait>(
    db: &C,
    datanet_id: &str,
    contributor: &Key,
    policy: &pb::ContributionPolicy,
    size: u64,
    // This upload's own placeholder, which must not count against it.
    this_upload: Option<&str>,
) -> Result<(), DatanetError> {
    let now = now_ms();
    let day_start = now - now.rem_euclid(limits::DAY_MS);
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
