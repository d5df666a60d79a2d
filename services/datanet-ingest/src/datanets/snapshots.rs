//! Sealed versions: publishing the accepted records as a version with its Merkle root, reading
//! versions, and inclusion proofs from a small cache of rebuilt trees.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
};

use openledger_core::{ErrorCode, Id, MerkleTree};
use openledger_proto::{
    common::v1::{Hash, MerkleProof as WireProof},
    datanet::v1::{self as pb},
    events::v1::SnapshotSealed,
    timestamp,
};
use openledger_store::{NewEvent, db::retry_when_busy, now_ms};
use prost::Message;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder, Set, TransactionTrait,
};

use crate::{
    DatanetError,
    entities::{record, snapshot, snapshot_record},
    limits,
    signing::{self, Key},
};

use super::Datanets;
use super::states::{RecordStatus, corrupt, stored_hash, stored_json};
use super::{PRODUCER, SUBJECT_SNAPSHOT_SEALED, invalid, lock_datanet, require_owner};

impl Datanets {
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
            let sealed = seal(&txn, &row.id).await?;
            txn.commit().await?;
            Ok::<_, DatanetError>(sealed)
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
        snapshot_view(self.snapshot_row(&row.id, snapshot_id).await?)
    }

    pub(super) async fn snapshot_row(
        &self,
        datanet_id: &str,
        snapshot_id: &str,
    ) -> Result<snapshot::Model, DatanetError> {
        let query = snapshot::Entity::find().filter(snapshot::Column::DatanetId.eq(datanet_id));
        let found = if snapshot_id == "latest" {
            query.order_by_desc(snapshot::Column::Version).one(&self.db).await?
        } else if let Ok(version) = snapshot_id.parse::<i64>() {
            query.filter(snapshot::Column::Version.eq(version)).one(&self.db).await?
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
    pub(super) async fn sealed_tree(&self, snapshot_id: &str) -> Result<Arc<SealedTree>, DatanetError> {
        if let Some(found) = self.trees.lock().iter().find(|tree| tree.snapshot_id == snapshot_id) {
            return Ok(found.clone());
        }
        let leaves = snapshot_record::Entity::find()
            .filter(snapshot_record::Column::SnapshotId.eq(snapshot_id))
            .order_by_asc(snapshot_record::Column::Position)
            .all(&self.db)
            .await?;
        let hashes = leaves.iter().map(|leaf| stored_hash(&leaf.hash)).collect::<Result<Vec<_>, _>>()?;
        let tree = Arc::new(SealedTree { snapshot_id: snapshot_id.to_owned(), tree: MerkleTree::new(&hashes), leaves });
        let mut trees = self.trees.lock();
        trees.insert(0, tree.clone());
        trees.truncate(limits::CACHED_TREES);
        Ok(tree)
    }
}

/// Seals the accepted records of a Datanet as its next version under its write lock, or
/// answers the latest version when nothing changed since it.
async fn seal(txn: &DatabaseTransaction, datanet_id: &str) -> Result<String, DatanetError> {
    let locked = lock_datanet(txn, datanet_id).await?;
    let accepted = record::Entity::find()
        .filter(record::Column::DatanetId.eq(datanet_id))
        .filter(record::Column::Status.eq(RecordStatus::Accepted))
        .order_by_asc(record::Column::Seq)
        .all(txn)
        .await?;
    let leaves = accepted.iter().map(|r| stored_hash(&r.hash)).collect::<Result<Vec<_>, _>>()?;
    let root = MerkleTree::new(&leaves).root();
    let previous = snapshot::Entity::find()
        .filter(snapshot::Column::DatanetId.eq(datanet_id))
        .order_by_desc(snapshot::Column::Version)
        .one(txn)
        .await?;
    if let Some(previous) = &previous
        && previous.merkle_root == root.as_bytes().to_vec()
    {
        return Ok(previous.id.clone());
    }
    let before: HashSet<Vec<u8>> = match &previous {
        Some(previous) => snapshot_record::Entity::find()
            .filter(snapshot_record::Column::SnapshotId.eq(&previous.id))
            .all(txn)
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
    let version = snapshot::Model {
        id: Id::new().to_string(),
        datanet_id: datanet_id.to_owned(),
        version: previous.as_ref().map_or(1, |p| p.version + 1),
        merkle_root: root.as_bytes().to_vec(),
        record_count: accepted.len() as i64,
        contributor_counts: serde_json::to_string(&counts).map_err(|error| {
            DatanetError::new(ErrorCode::Internal, format!("encoding the contributor counts failed: {error}"))
        })?,
        records_added: after.difference(&before).count() as i64,
        records_removed: before.difference(&after).count() as i64,
        revision: locked.revision,
        sealed_at: now_ms(),
    };
    write_version(txn, &version, &accepted).await?;
    Ok(version.id)
}

/// Writes a sealed version, its leaves in order, and its event.
async fn write_version(
    txn: &DatabaseTransaction,
    version: &snapshot::Model,
    accepted: &[record::Model],
) -> Result<(), DatanetError> {
    snapshot::ActiveModel::from(version.clone()).insert(txn).await?;
    for (chunk_number, chunk) in accepted.chunks(limits::INSERT_CHUNK_ROWS).enumerate() {
        let rows = chunk.iter().enumerate().map(|(offset, r)| snapshot_record::ActiveModel {
            snapshot_id: Set(version.id.clone()),
            position: Set((chunk_number * limits::INSERT_CHUNK_ROWS + offset) as i64),
            hash: Set(r.hash.clone()),
            contribution_id: Set(r.contribution_id.clone()),
            contributor: Set(r.contributor.clone()),
        });
        snapshot_record::Entity::insert_many(rows).exec(txn).await?;
    }
    let event = SnapshotSealed {
        datanet_id: version.datanet_id.clone(),
        snapshot_id: version.id.clone(),
        version: version.version as u64,
        merkle_root: Some(Hash { value: version.merkle_root.clone() }),
        record_count: accepted.len() as u64,
        at: Some(timestamp(version.sealed_at)),
    };
    openledger_store::outbox::enqueue(txn, PRODUCER, NewEvent::new(SUBJECT_SNAPSHOT_SEALED, event.encode_to_vec()))
        .await?;
    Ok(())
}

/// A sealed version's tree and its leaves in order.
pub(super) struct SealedTree {
    pub(super) snapshot_id: String,
    pub(super) tree: MerkleTree,
    pub(super) leaves: Vec<snapshot_record::Model>,
}

/// The API view of a sealed version.
pub(super) fn snapshot_view(found: snapshot::Model) -> Result<pb::Snapshot, DatanetError> {
    let counts: BTreeMap<String, u64> = stored_json("contributor counts", &found.contributor_counts)?;
    Ok(pb::Snapshot {
        id: found.id,
        datanet_id: found.datanet_id,
        version: found.version as u64,
        merkle_root: Some(Hash { value: found.merkle_root }),
        record_count: found.record_count as u64,
        contributor_counts: counts
            .into_iter()
            .map(|(contributor, records)| {
                let contributor = hex::decode(&contributor).map_err(|_| corrupt("contributor", &contributor))?;
                Ok(pb::ContributorCount { contributor, records })
            })
            .collect::<Result<_, DatanetError>>()?,
        records_added: found.records_added as u64,
        records_removed: found.records_removed as u64,
        sealed_at: Some(timestamp(found.sealed_at)),
    })
}
