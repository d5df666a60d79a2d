//! Registering an adapter a fine-tuning job trained: validated against the base like an
//! import, stored with its `lineage.json`, owned by the job's owner, private to it at first,
//! at the default prices ([`DEFAULT_TRAINED_PRICE_PER_1K_TOKENS`], changeable by the owner).
//! The same consistency as imports: the row is claimed `pending`, the three files written,
//! then the row turns `ready` with its `registered` event; registering again with the same
//! files (a job continued after a crash) answers the adapter as it is.

use bytes::Bytes;
use object_store::PutPayload;
use openledger_core::ErrorCode;
use openledger_proto::modelfactory::v1 as pb;
use openledger_store::now_ms;
use sea_orm::{ActiveModelTrait, EntityTrait, Set};

use super::{JOB_SOURCE_PREFIX, LINEAGE_FILE, Registry, location, object_path};
use crate::{
    RegistryError,
    entities::{PENDING, adapter},
};

/// Base units per 1,000 tokens, in and out, of a newly trained adapter.
pub const DEFAULT_TRAINED_PRICE_PER_1K_TOKENS: u128 = 1_000_000_000_000;

/// What a finished job hands the registry.
pub struct TrainedAdapter {
    /// The `ft:` name.
    pub id: String,
    pub job_id: String,
    pub owner: openledger_signing::Key,
    pub owner_account: u128,
    pub base_model: String,
    pub datanet_id: String,
    pub snapshot_id: String,
    pub snapshot_root: Vec<u8>,
    pub config: Bytes,
    pub weights: Bytes,
    pub lineage: Bytes,
    pub description: String,
}

impl Registry {
    pub async fn register_trained(&self, trained: TrainedAdapter) -> Result<pb::Adapter, RegistryError> {
        let base = self.bases.require().await?;
        if base.id != trained.base_model {
            return Err(RegistryError::new(
                ErrorCode::FailedPrecondition,
                format!("the adapter was trained for {:?} but this platform serves {:?}", trained.base_model, base.id),
            ));
        }
        let files = super::import::Files::new(trained.config.clone(), trained.weights.clone());
        if let Some(existing) = adapter::Entity::find_by_id(&trained.id).one(&self.db).await? {
            let same = existing.source == format!("{JOB_SOURCE_PREFIX}{}", trained.job_id)
                && existing.weights_hash == files.weights_hash.as_bytes();
            if !same {
                return Err(RegistryError::new(
                    ErrorCode::AlreadyExists,
                    format!("adapter id {:?} is taken by another adapter", trained.id),
                ));
            }
            if existing.state != PENDING {
                return self.get(&trained.id).await;
            }
        } else {
            let checked = self.validate(&base, &trained.id, &files).await?;
            let now = now_ms();
            let modules: Vec<&str> = checked.targets.iter().map(|target| target.module_name()).collect();
            let price = DEFAULT_TRAINED_PRICE_PER_1K_TOKENS.to_string();
            adapter::ActiveModel {
                id: Set(trained.id.clone()),
                state: Set(PENDING),
                owner: Set(trained.owner.to_vec()),
                owner_account: Set(trained.owner_account.to_string()),
                base_model: Set(base.id.clone()),
                base_model_hash: Set(base.hash.as_bytes().to_vec()),
                location: Set(location(&trained.id)),
                source: Set(format!("{JOB_SOURCE_PREFIX}{}", trained.job_id)),
                config_hash: Set(files.config_hash.as_bytes().to_vec()),
                config_bytes: Set(files.config.len() as i64),
                weights_hash: Set(files.weights_hash.as_bytes().to_vec()),
                weights_bytes: Set(files.weights.len() as i64),
                rank: Set(checked.rank as i32),
                target_modules: Set(serde_json::Value::from(modules).to_string()),
                price_in: Set(price.clone()),
                price_out: Set(price),
                visibility: Set(pb::Visibility::Private as i16),
                description: Set(trained.description.chars().take(crate::limits::MAX_DESCRIPTION_CHARS).collect()),
                listed: Set(true),
                datanet_id: Set(trained.datanet_id.clone()),
                snapshot_id: Set(trained.snapshot_id.clone()),
                snapshot_root: Set(trained.snapshot_root.clone()),
                created_at_ms: Set(now),
                updated_at_ms: Set(now),
            }
            .insert(&self.db)
            .await?;
        }
        // The lineage first: a ready adapter always has all three files.
        let lineage =
            self.objects.put(&object_path(&trained.id, LINEAGE_FILE), PutPayload::from(trained.lineage.clone())).await;
        if let Err(error) = lineage {
            return Err(RegistryError::new(
                ErrorCode::Unavailable,
                format!("storing the lineage of {:?} failed: {error}", trained.id),
            ));
        }
        self.store_and_commit(&trained.id, &files, &[]).await
    }
}
