//! `validating_files`: a new job's records are read from datanet-ingest (for the job's owner,
//! under its grant), checked against the version's Merkle root, parsed as training records of
//! one kind, and kept in the job's directory; likewise its validation version's, which must be
//! of the same kind; then the job is queued. A version that cannot train fails the job with
//! `invalid_training_file` (or `invalid_validation_file`) and the reason.

use std::{path::Path, sync::Arc};

use openledger_core::{ContentHash, ErrorCode, MerkleTree};
use openledger_ml::train::data::{Record, RecordKind, parse_records};
use openledger_proto::modelfactory::v1 as pb;
use sea_orm::EntityTrait;
use serde::{Deserialize, Serialize};

use super::{Jobs, datanets::VersionRecord, spec::TrainingFile, store};
use crate::{RegistryError, entities::job};

/// The records file in a job's directory: one `{"hash", "body"}` object per line.
const RECORDS_FILE: &str = "records.jsonl";
/// The validation version's records in a job's directory, as [`RECORDS_FILE`].
const VALIDATION_RECORDS_FILE: &str = "validation.jsonl";

/// One of a job's sealed versions: the one it trains on or the one it is evaluated on.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Part {
    Training,
    Validation,
}

impl Part {
    /// The request field that names it.
    pub fn param(self) -> &'static str {
        match self {
            Part::Training => "training_file",
            Part::Validation => "validation_file",
        }
    }

    fn records_file(self) -> &'static str {
        match self {
            Part::Training => RECORDS_FILE,
            Part::Validation => VALIDATION_RECORDS_FILE,
        }
    }
}

/// Where one of a job's versions is read from.
struct VersionSource {
    part: Part,
    /// As asked (`datanet:<slug-or-id>@<version>`).
    file: String,
    datanet_id: String,
    snapshot_id: String,
    grant_id: String,
    merkle_root: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct StoredRecord {
    hash: String,
    body: String,
}

/// Why a job failed: OpenAI's `error` object.
#[derive(Debug)]
pub(super) struct Failure {
    pub code: &'static str,
    pub message: String,
    pub param: &'static str,
}

impl Failure {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), param: "" }
    }

    /// The version named by `part`'s field cannot be used, for `message`.
    pub fn file(part: Part, message: impl Into<String>) -> Self {
        let code = match part {
            Part::Training => "invalid_training_file",
            Part::Validation => "invalid_validation_file",
        };
        Self { code, message: message.into(), param: part.param() }
    }
}

/// A service error while working on a job: retried later when transient (the job stays
/// where it is), else the job fails.
pub(super) enum Trouble {
    Fail(Failure),
    Transient(RegistryError),
}

impl From<RegistryError> for Trouble {
    fn from(error: RegistryError) -> Self {
        if matches!(error.code, ErrorCode::Unavailable | ErrorCode::Timeout) {
            Trouble::Transient(error)
        } else {
            let code = match error.code {
                ErrorCode::PermissionDenied => "access_denied",
                ErrorCode::NotFound | ErrorCode::FailedPrecondition | ErrorCode::InvalidArgument => {
                    "invalid_training_file"
                }
                _ => "internal_error",
            };
            Trouble::Fail(Failure { code, message: error.message, param: "" })
        }
    }
}

impl Jobs {
    /// Reads and checks a new job's records on a task of its own (a few at a time).
    pub(super) fn start_validation(self: &Arc<Self>, id: String) {
        let jobs = self.clone();
        tokio::spawn(async move {
            let Ok(_permit) = jobs.validations.acquire().await else { return };
            match jobs.validate(&id).await {
                Ok(()) => {}
                Err(Trouble::Fail(failure)) => {
                    if let Err(error) = jobs.fail(&id, &[pb::JobState::ValidatingFiles], failure).await {
                        tracing::error!(job = %id, %error, "recording a failed validation failed");
                    }
                }
                Err(Trouble::Transient(error)) => {
                    // Left in validating_files: the next start (or a retry below) reads again.
                    tracing::warn!(job = %id, %error, "reading a job's records failed; retrying in 10 s");
                    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
                    jobs.start_validation(id);
                }
            }
        });
    }

    async fn validate(&self, id: &str) -> Result<(), Trouble> {
        let Some(row) = job::Entity::find_by_id(id).one(&self.db).await.map_err(RegistryError::from)? else {
            return Ok(());
        };
        if store::state_of(&row)? != pb::JobState::ValidatingFiles {
            return Ok(());
        }
        let records = self.fetch_records(&row).await?;
        let (kind, parsed) = training_records(&records).map_err(|e| Trouble::Fail(Failure::file(Part::Training, e)))?;
        let mut message =
            format!("{} {} records read and checked against the version's root", parsed.len(), kind_name(kind));
        if let Some(held) = self.held_out_records(&row, kind).await? {
            let training: std::collections::HashSet<ContentHash> = records.iter().map(|r| r.hash).collect();
            let shared = held.iter().filter(|r| training.contains(&r.hash)).count();
            message.push_str(&format!("; {} held-out records from the validation version", held.len()));
            if shared > 0 {
                message.push_str(&format!(" ({shared} of them also in the training version)"));
            }
        }
        message.push_str(": queued");
        let moved = store::transition(
            &self.db,
            &self.subjects,
            id,
            &[pb::JobState::ValidatingFiles],
            pb::JobState::Queued,
            message,
            |_| {},
        )
        .await?;
        if moved.is_some() {
            self.changed();
            self.runnable.notify_one();
        }
        Ok(())
    }

    /// The job's training records: from its directory when read before, else from
    /// datanet-ingest (checked against the version's root, then written whole to the directory).
    pub(super) async fn fetch_records(&self, row: &job::Model) -> Result<Vec<VersionRecord>, Trouble> {
        let source = VersionSource {
            part: Part::Training,
            file: row.training_file.clone(),
            datanet_id: row.datanet_id.clone(),
            snapshot_id: row.snapshot_id.clone(),
            grant_id: row.grant_id.clone(),
            merkle_root: row.snapshot_root.clone(),
        };
        self.fetch_version(row, &source).await
    }

    /// The job's validation records as training records, which must be of the training
    /// records' `kind`; none when the job has no validation version.
    pub(super) async fn held_out_records(
        &self,
        row: &job::Model,
        kind: RecordKind,
    ) -> Result<Option<Vec<Record>>, Trouble> {
        let Some(held) = self.fetch_held_out(row).await? else { return Ok(None) };
        let (held_kind, parsed) =
            training_records(&held).map_err(|e| Trouble::Fail(Failure::file(Part::Validation, e)))?;
        if held_kind != kind {
            return Err(Trouble::Fail(Failure::file(
                Part::Validation,
                format!(
                    "the validation version holds {} records but the training version {}: both must be of one kind",
                    kind_name(held_kind),
                    kind_name(kind)
                ),
            )));
        }
        Ok(Some(parsed))
    }

    /// The job's validation records, when it has a validation version; read as
    /// [`Self::fetch_records`] reads the training records.
    async fn fetch_held_out(&self, row: &job::Model) -> Result<Option<Vec<VersionRecord>>, Trouble> {
        let Some(held) = store::HeldOutVersion::of(row)? else { return Ok(None) };
        let merkle_root = hex::decode(&held.merkle_root)
            .map_err(|e| RegistryError::new(ErrorCode::Internal, format!("a job's validation root is corrupt: {e}")))?;
        let source = VersionSource {
            part: Part::Validation,
            file: row.validation_file.clone(),
            datanet_id: held.datanet_id,
            snapshot_id: held.snapshot_id,
            grant_id: held.grant_id,
            merkle_root,
        };
        self.fetch_version(row, &source).await.map(Some)
    }

    async fn fetch_version(&self, row: &job::Model, source: &VersionSource) -> Result<Vec<VersionRecord>, Trouble> {
        let dir = self.job_dir(&row.id);
        let file = dir.join(source.part.records_file());
        if file.exists() {
            return read_records_file(&file).map_err(|e| Trouble::Fail(Failure::new("internal_error", e)));
        }
        let owner: u128 = row
            .owner_account
            .parse()
            .map_err(|_| RegistryError::new(ErrorCode::Internal, "a job's owner is corrupt"))?;
        let grantee = self.owners.owner_key(owner).await?;
        let named = TrainingFile::parse(&source.file, source.part.param())?;
        let access = self.datanets.check(&source.datanet_id, &source.snapshot_id, &grantee, &source.grant_id).await?;
        let snapshot = access.snapshot.as_ref().map(|s| s.id.as_str()).unwrap_or_default();
        if snapshot != source.snapshot_id {
            return Err(Trouble::Fail(Failure::file(
                source.part,
                format!("{} now names another version", named.datanet),
            )));
        }
        let records = self.datanets.read(&access, &grantee, &format!("job:{}", row.id)).await?;
        let leaves: Vec<ContentHash> = records.iter().map(|r| r.hash).collect();
        if MerkleTree::new(&leaves).root().as_bytes().as_slice() != source.merkle_root.as_slice() {
            return Err(Trouble::Fail(Failure::file(
                source.part,
                format!(
                    "the {} records read do not hash to the version's Merkle root: nothing was trained",
                    records.len()
                ),
            )));
        }
        write_records_file(&dir, source.part.records_file(), &records)
            .map_err(|e| Trouble::Fail(Failure::new("storage_error", e)))?;
        Ok(records)
    }

    /// Fails a job in one of `from` with `failure`.
    pub(super) async fn fail(&self, id: &str, from: &[pb::JobState], failure: Failure) -> Result<(), RegistryError> {
        tracing::warn!(job = %id, code = failure.code, message = %failure.message, "fine-tuning job failed");
        let message = format!("failed: {}", failure.message);
        store::transition(&self.db, &self.subjects, id, from, pb::JobState::Failed, message, |row| {
            row.error_code = sea_orm::Set(failure.code.to_owned());
            row.error_message = sea_orm::Set(failure.message.clone());
            row.error_param = sea_orm::Set(failure.param.to_owned());
        })
        .await?;
        self.changed();
        Ok(())
    }
}

/// The version's bodies as training records of one kind, each named by its Datanet hash.
pub(super) fn training_records(records: &[VersionRecord]) -> Result<(RecordKind, Vec<Record>), String> {
    let mut kind = None;
    let mut parsed = Vec::with_capacity(records.len());
    for (position, record) in records.iter().enumerate() {
        let text = std::str::from_utf8(&record.body)
            .map_err(|_| format!("record {} (position {position}) is not UTF-8 text", record.hash.to_hex()))?;
        let (this, mut one) = parse_records(text)
            .map_err(|error| format!("record {} (position {position}) cannot train: {error}", record.hash.to_hex()))?;
        if one.len() != 1 {
            return Err(format!(
                "record {} (position {position}) holds {} records, not one",
                record.hash.to_hex(),
                one.len()
            ));
        }
        match kind {
            None => kind = Some(this),
            Some(first) if first != this => {
                return Err(format!(
                    "record {} (position {position}) is {} but the version's first record is {}: a job trains on one kind",
                    record.hash.to_hex(),
                    kind_name(this),
                    kind_name(first)
                ));
            }
            Some(_) => {}
        }
        let mut record_of = one.remove(0);
        record_of.hash = record.hash;
        record_of.line = position + 1;
        parsed.push(record_of);
    }
    Ok((kind.ok_or("the version has no records")?, parsed))
}

fn kind_name(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::Text => "free-text",
        RecordKind::Instruction => "instruction/response",
        RecordKind::Chat => "chat",
        RecordKind::Labelled => "labelled-text",
    }
}

fn write_records_file(dir: &Path, name: &str, records: &[VersionRecord]) -> Result<(), String> {
    use std::io::Write;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let partial = dir.join(format!("{name}.partial"));
    let write = || -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&partial)?);
        for record in records {
            let line =
                StoredRecord { hash: record.hash.to_hex(), body: String::from_utf8_lossy(&record.body).into_owned() };
            serde_json::to_writer(&mut out, &line)?;
            out.write_all(b"\n")?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&partial, dir.join(name))
    };
    write().map_err(|e| format!("writing the job's records to {}: {e}", dir.display()))
}

fn read_records_file(file: &Path) -> Result<Vec<VersionRecord>, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("reading {}: {e}", file.display()))?;
    text.lines()
        .map(|line| {
            let stored: StoredRecord = serde_json::from_str(line).map_err(|e| format!("{}: {e}", file.display()))?;
            let body = stored.body.into_bytes();
            let hash = ContentHash::of(&body);
            if hash.to_hex() != stored.hash {
                return Err(format!("{}: record {} does not match its body", file.display(), stored.hash));
            }
            Ok(VersionRecord { hash, contributor: Vec::new(), body })
        })
        .collect()
}
