//! Access for training: grant requests and decisions, and the logged, paged read of a sealed
//! version's records with their bodies, for a grantee or for the attribution-worker.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use object_store::ObjectStore;
use openledger_core::{ContentHash, ErrorCode, Id};
use openledger_proto::{
    common::v1::Hash,
    datanet::v1::{self as pb},
};
use openledger_store::now_ms;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set};

use crate::{
    DatanetError,
    entities::{contribution, datanet, grant, read, snapshot_record},
    limits,
    signing::{self, Key},
};

use super::Datanets;
use super::states::{GrantState, corrupt, stored_account};
use super::validation::check_text;
use super::{contribution_object, invalid, require_owner};

impl Datanets {
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
            .filter(grant::Column::State.is_in([GrantState::Requested, GrantState::Approved]))
            .one(&self.db)
            .await?;
        if let Some(open) = open {
            return grant_view(open);
        }
        let row = grant::ActiveModel {
            id: Set(Id::new().to_string()),
            datanet_id: Set(row.id),
            grantee: Set(grantee.to_vec()),
            state: Set(GrantState::Requested.into()),
            purpose: Set(request.purpose),
            requested_at: Set(now_ms()),
            decided_at: Set(None),
        }
        .insert(&self.db)
        .await?;
        grant_view(row)
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
        active.state = Set(if request.approve { GrantState::Approved } else { GrantState::Denied }.into());
        active.decided_at = Set(Some(now_ms()));
        grant_view(active.update(&self.db).await?)
    }

    /// The records of a sealed version, for training or for attribution. For training the
    /// caller must hold an approved grant; the attribution-worker indexing a version
    /// (`attribution`, an internal caller: the REST edge never reads records) needs none, and
    /// names no grant or grantee. Every read is logged (when it starts), an attribution read
    /// with no grant and its reader (`attribution` when it names none). Records come in the
    /// version's order with their positions, bodies and bond accounts, read a page at a time
    /// (memory stays bounded by a page and one contribution).
    pub async fn read_records(
        self: &Arc<Self>,
        request: &pb::ReadRecordsRequest,
        caller: Option<Key>,
    ) -> Result<futures::stream::BoxStream<'static, Result<pb::Record, DatanetError>>, DatanetError> {
        use futures::{StreamExt, TryStreamExt};

        let (grant_id, grantee, reader) = if request.attribution {
            if !request.grant_id.is_empty() || !request.grantee.is_empty() {
                return Err(invalid("an attribution read needs no grant: name neither grant_id nor grantee"));
            }
            let reader = if request.reader.is_empty() { ATTRIBUTION_READER.to_owned() } else { request.reader.clone() };
            (String::new(), caller.map(|key| key.to_vec()).unwrap_or_default(), reader)
        } else {
            let caller = reader_key(caller, &request.grantee)?;
            let found = self.approved_grant(&request.datanet_id, &request.grant_id, &caller).await?;
            (found.id, caller.to_vec(), request.reader.clone())
        };
        let sealed = self.snapshot_row(&request.datanet_id, &request.snapshot_id).await?;
        read::ActiveModel {
            id: Set(Id::new().to_string()),
            grant_id: Set(grant_id),
            datanet_id: Set(request.datanet_id.clone()),
            snapshot_id: Set(sealed.id.clone()),
            grantee: Set(grantee),
            reader: Set(reader),
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
}

impl Datanets {
    /// What a grantee would read for training (a fine-tuning job's check when it is created):
    /// the Datanet, its approved grant and the sealed version. A Datanet the grantee may not
    /// read answers `PERMISSION_DENIED`, except a private one it has never asked for, which
    /// stays invisible (`NOT_FOUND`); a Datanet without a sealed version `FAILED_PRECONDITION`.
    pub async fn check_read_access(
        &self,
        request: &pb::CheckReadAccessRequest,
    ) -> Result<pb::ReadAccess, DatanetError> {
        let grantee = reader_key(None, &request.grantee)?;
        let row = match datanet::Entity::find_by_id(&request.datanet).one(&self.db).await? {
            Some(row) => Some(row),
            None => datanet::Entity::find().filter(datanet::Column::Slug.eq(&request.datanet)).one(&self.db).await?,
        };
        let invisible = || DatanetError::new(ErrorCode::NotFound, format!("no Datanet {:?}", request.datanet));
        let row = row.ok_or_else(invisible)?;
        let asked = grant::Entity::find()
            .filter(grant::Column::DatanetId.eq(&row.id))
            .filter(grant::Column::Grantee.eq(grantee.to_vec()))
            .one(&self.db)
            .await?;
        if asked.is_none() && !self.may_see(&row, Some(grantee)).await? {
            return Err(invisible());
        }
        let grant = self.approved_grant(&row.id, &request.grant_id, &grantee).await?;
        let sealed = match self.snapshot_row(&row.id, &request.snapshot_id).await {
            Err(error) if error.code == ErrorCode::NotFound && !self.has_sealed_version(&row.id).await? => {
                return Err(DatanetError::new(
                    ErrorCode::FailedPrecondition,
                    format!("Datanet {:?} has no sealed version yet: its owner publishes one first", row.slug),
                ));
            }
            found => found?,
        };
        Ok(pb::ReadAccess {
            datanet_id: row.id.clone(),
            slug: row.slug.clone(),
            schema: i32::from(row.schema),
            snapshot: Some(super::snapshots::snapshot_view(sealed)?),
            grant_id: grant.id,
        })
    }

    async fn has_sealed_version(&self, datanet_id: &str) -> Result<bool, DatanetError> {
        use sea_orm::PaginatorTrait;
        let count = crate::entities::snapshot::Entity::find()
            .filter(crate::entities::snapshot::Column::DatanetId.eq(datanet_id))
            .count(&self.db)
            .await?;
        Ok(count > 0)
    }

    /// `grantee`'s approved grant `grant_id` on the Datanet, or its approved grant there when
    /// `grant_id` is empty; `PERMISSION_DENIED` saying what to do otherwise.
    async fn approved_grant(
        &self,
        datanet_id: &str,
        grant_id: &str,
        grantee: &Key,
    ) -> Result<grant::Model, DatanetError> {
        let query = grant::Entity::find().filter(grant::Column::DatanetId.eq(datanet_id));
        let found = if grant_id.is_empty() {
            query
                .filter(grant::Column::Grantee.eq(grantee.to_vec()))
                .filter(grant::Column::State.eq(GrantState::Approved))
                .one(&self.db)
                .await?
        } else {
            query.filter(grant::Column::Id.eq(grant_id)).one(&self.db).await?
        };
        let approved = |grant: &grant::Model| {
            Ok::<_, DatanetError>(
                grant.grantee == grantee.as_slice() && GrantState::try_from(grant.state)? == GrantState::Approved,
            )
        };
        match found {
            Some(grant) if approved(&grant)? => Ok(grant),
            _ if grant_id.is_empty() => Err(DatanetError::new(
                ErrorCode::PermissionDenied,
                "this key holds no approved grant on this Datanet: request access (POST /v1/datanets/{id}/access) and wait for its owner's approval",
            )),
            _ => Err(DatanetError::new(
                ErrorCode::PermissionDenied,
                format!("no approved grant {grant_id:?} for this key on this Datanet: request access first"),
            )),
        }
    }
}

/// The reader logged for an attribution read that names none.
pub(super) const ATTRIBUTION_READER: &str = "attribution";

/// Who reads: the signed caller, or the grantee a platform service reads for (never both).
fn reader_key(caller: Option<Key>, grantee: &[u8]) -> Result<Key, DatanetError> {
    match (caller, grantee.is_empty()) {
        (Some(caller), true) => Ok(caller),
        (None, false) => Key::try_from(grantee)
            .map_err(|_| invalid(format!("grantee must be a 32-byte ed25519 public key, not {} bytes", grantee.len()))),
        (Some(_), false) => Err(invalid("name a grantee or sign as the caller, not both")),
        (None, true) => Err(DatanetError::new(
            ErrorCode::Unauthenticated,
            "reading records for training needs the caller's signed identity (x-openledger-key, -timestamp, -signature)",
        )),
    }
}

/// Where a `read_records` stream stands.
pub(super) struct ReadCursor {
    pub(super) datanets: Arc<Datanets>,
    pub(super) datanet_id: String,
    pub(super) snapshot_id: String,
    pub(super) next_position: i64,
    /// The bodies of the contribution being read (its id, then bodies by record hash).
    pub(super) bodies: Option<(String, RecordBodies)>,
}

/// The bond account of each contribution of a page that named one.
type BondAccounts = HashMap<String, u128>;

pub(super) type RecordBodies = HashMap<Vec<u8>, Vec<u8>>;

impl ReadCursor {
    async fn next_page(&mut self) -> Result<Vec<pb::Record>, DatanetError> {
        let leaves = snapshot_record::Entity::find()
            .filter(snapshot_record::Column::SnapshotId.eq(&self.snapshot_id))
            .filter(snapshot_record::Column::Position.gte(self.next_position))
            .order_by_asc(snapshot_record::Column::Position)
            .limit(limits::READ_PAGE_RECORDS)
            .all(&self.datanets.db)
            .await?;
        let accounts = self.bond_accounts(&leaves).await?;
        let mut records = Vec::with_capacity(leaves.len());
        for leaf in leaves {
            debug_assert!(leaf.position >= self.next_position, "leaves come in the version's order");
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
            let position = u64::try_from(leaf.position).map_err(|_| corrupt("record position", leaf.position))?;
            records.push(pb::Record {
                hash: Some(Hash { value: leaf.hash }),
                contributor_account_id: accounts.get(&leaf.contribution_id).map(|&account| account.into()),
                contribution_id: leaf.contribution_id,
                contributor: leaf.contributor,
                body,
                position,
            });
        }
        Ok(records)
    }

    /// The bond accounts of the page's contributions (one query per page).
    async fn bond_accounts(&self, leaves: &[snapshot_record::Model]) -> Result<BondAccounts, DatanetError> {
        let ids: BTreeSet<&str> = leaves.iter().map(|leaf| leaf.contribution_id.as_str()).collect();
        if ids.is_empty() {
            return Ok(BondAccounts::new());
        }
        let bonded: Vec<(String, Vec<u8>)> = contribution::Entity::find()
            .select_only()
            .column(contribution::Column::Id)
            .column(contribution::Column::AccountId)
            .filter(contribution::Column::Id.is_in(ids))
            .filter(contribution::Column::AccountId.is_not_null())
            .into_tuple()
            .all(&self.datanets.db)
            .await?;
        bonded.into_iter().map(|(id, account)| Ok((id, stored_account(&account)?))).collect()
    }
}

pub(super) fn grant_view(row: grant::Model) -> Result<pb::AccessGrant, DatanetError> {
    Ok(pb::AccessGrant {
        id: row.id,
        datanet_id: row.datanet_id,
        grantee: row.grantee,
        state: GrantState::try_from(row.state)?.api_name().to_owned(),
        purpose: row.purpose,
    })
}
