//! Reading the registry: one adapter (listed or not: in-flight requests finish on unlisted
//! ones), the adapters an account may call, the base models, and the API and event views of a
//! stored adapter.

use std::collections::HashMap;

use openledger_proto::{
    common::v1::{Hash, PageResponse},
    events::v1::AdapterChanged,
    modelfactory::v1::{self as pb, Visibility},
    timestamp,
};
use openledger_signing::Key;
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait};

use super::{Registry, corrupt, not_found};
use crate::{
    RegistryError,
    entities::{READY, access, adapter},
    limits,
};

/// Who is asking for a list.
#[derive(Clone, Copy, Debug, Default)]
pub struct ListCaller {
    /// Adds what this account may call: its own adapters and those allow-listing it.
    pub account: Option<u128>,
    /// Adds the adapters this (verified) key owns.
    pub key: Option<Key>,
}

impl Registry {
    /// An adapter by id, listed or not.
    pub async fn get(&self, id: &str) -> Result<pb::Adapter, RegistryError> {
        let row = adapter::Entity::find_by_id(id)
            .filter(adapter::Column::State.eq(READY))
            .one(&self.db)
            .await?
            .ok_or_else(|| not_found(id))?;
        let allowed = self.allowed(id).await?;
        view(&row, allowed)
    }

    /// Adapters in id order: public ones, plus what `caller` may call; unlisted ones only with
    /// `include_unlisted`. `page_token` is the last id of the previous page.
    pub async fn list(
        &self,
        page_size: u32,
        page_token: &str,
        caller: ListCaller,
        include_unlisted: bool,
    ) -> Result<(Vec<pb::Adapter>, PageResponse), RegistryError> {
        let size = openledger_store::page::page_size(page_size, limits::DEFAULT_PAGE_SIZE, limits::MAX_PAGE_SIZE);
        let mut visible = Condition::any().add(adapter::Column::Visibility.eq(Visibility::Public as i16));
        if let Some(account) = caller.account {
            let allow_listed = access::Entity::find()
                .select_only()
                .column(access::Column::AdapterId)
                .filter(access::Column::Account.eq(account.to_string()))
                .into_query();
            visible = visible.add(adapter::Column::OwnerAccount.eq(account.to_string())).add(
                Condition::all()
                    .add(adapter::Column::Visibility.eq(Visibility::AllowList as i16))
                    .add(adapter::Column::Id.in_subquery(allow_listed)),
            );
        }
        if let Some(key) = caller.key {
            visible = visible.add(adapter::Column::Owner.eq(key.to_vec()));
        }
        let mut query = adapter::Entity::find()
            .filter(adapter::Column::State.eq(READY))
            .filter(visible)
            .order_by_asc(adapter::Column::Id);
        if !include_unlisted {
            query = query.filter(adapter::Column::Listed.eq(true));
        }
        if !page_token.is_empty() {
            query = query.filter(adapter::Column::Id.gt(page_token));
        }
        let mut rows = query.limit(u64::from(size) + 1).all(&self.db).await?;
        let next = openledger_store::page::cut_page(&mut rows, size, |row| row.id.clone());
        let ids: Vec<String> = rows.iter().map(|row| row.id.clone()).collect();
        let mut allowed = self.allow_lists(&ids).await?;
        let adapters = rows
            .iter()
            .map(|row| view(row, allowed.remove(&row.id).unwrap_or_default()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((adapters, PageResponse { next_page_token: next }))
    }

    /// The base models adapters may be imported for: the one the engines serve, if any.
    pub async fn base_models(&self) -> Result<Vec<pb::BaseModel>, RegistryError> {
        Ok(self
            .bases
            .current()
            .await?
            .map(|base| pb::BaseModel {
                id: base.id.clone(),
                hash: Some(Hash { value: base.hash.as_bytes().to_vec() }),
                context_length: base.config.context_length as u32,
            })
            .into_iter()
            .collect())
    }

    pub(super) async fn allowed(&self, id: &str) -> Result<Vec<u128>, RegistryError> {
        Ok(self.allow_lists(&[id.to_owned()]).await?.remove(id).unwrap_or_default())
    }

    async fn allow_lists(&self, ids: &[String]) -> Result<HashMap<String, Vec<u128>>, RegistryError> {
        let mut lists: HashMap<String, Vec<u128>> = HashMap::new();
        if ids.is_empty() {
            return Ok(lists);
        }
        let rows =
            access::Entity::find().filter(access::Column::AdapterId.is_in(ids.iter().cloned())).all(&self.db).await?;
        for row in rows {
            let account = row.account.parse::<u128>().map_err(|error| corrupt("allow-list account", error))?;
            lists.entry(row.adapter_id).or_default().push(account);
        }
        for list in lists.values_mut() {
            list.sort_unstable();
        }
        Ok(lists)
    }
}

fn decimal(what: &str, text: &str) -> Result<u128, RegistryError> {
    text.parse().map_err(|error| corrupt(what, format!("{text:?}: {error}")))
}

fn hash(what: &str, bytes: &[u8]) -> Result<Hash, RegistryError> {
    <[u8; 32]>::try_from(bytes).map_err(|_| corrupt(what, format!("{} bytes, not 32", bytes.len())))?;
    Ok(Hash { value: bytes.to_vec() })
}

/// The API view of a stored adapter and its allow-list.
pub(super) fn view(row: &adapter::Model, allowed: Vec<u128>) -> Result<pb::Adapter, RegistryError> {
    let target_modules: Vec<String> =
        serde_json::from_str(&row.target_modules).map_err(|error| corrupt("target modules", error))?;
    let size = |what: &str, bytes: i64| u64::try_from(bytes).map_err(|error| corrupt(what, error));
    Ok(pb::Adapter {
        id: row.id.clone(),
        owner: row.owner.clone(),
        base_model: row.base_model.clone(),
        base_model_hash: Some(hash("base model hash", &row.base_model_hash)?),
        datanet_id: row.datanet_id.clone(),
        snapshot_id: row.snapshot_id.clone(),
        snapshot_root: (!row.snapshot_root.is_empty()).then(|| Hash { value: row.snapshot_root.clone() }),
        hyperparameters: None,
        final_metrics: None,
        location: row.location.clone(),
        price_in: Some(decimal("price_in", &row.price_in)?.into()),
        price_out: Some(decimal("price_out", &row.price_out)?.into()),
        owner_account_id: Some(decimal("owner account", &row.owner_account)?.into()),
        visibility: i32::from(row.visibility),
        allowed_accounts: allowed.into_iter().map(Into::into).collect(),
        description: row.description.clone(),
        listed: row.listed,
        files: vec![
            pb::AdapterFile {
                name: openledger_ml::adapters::ADAPTER_CONFIG.to_owned(),
                hash: Some(hash("config hash", &row.config_hash)?),
                size_bytes: size("config size", row.config_bytes)?,
            },
            pb::AdapterFile {
                name: openledger_ml::adapters::ADAPTER_WEIGHTS.to_owned(),
                hash: Some(hash("weights hash", &row.weights_hash)?),
                size_bytes: size("weights size", row.weights_bytes)?,
            },
        ],
        rank: u32::try_from(row.rank).map_err(|error| corrupt("rank", error))?,
        target_modules,
        source: row.source.clone(),
        created_at_ms: row.created_at_ms,
        updated_at_ms: row.updated_at_ms,
    })
}

/// The event describing a stored adapter as it is now.
pub(super) fn event(row: &adapter::Model) -> Result<AdapterChanged, RegistryError> {
    let job_id = row.source.strip_prefix(super::JOB_SOURCE_PREFIX);
    Ok(AdapterChanged {
        adapter_id: row.id.clone(),
        owner: row.owner.clone(),
        owner_account_id: Some(decimal("owner account", &row.owner_account)?.into()),
        base_model: row.base_model.clone(),
        base_model_hash: Some(hash("base model hash", &row.base_model_hash)?),
        listed: row.listed,
        at: Some(timestamp(row.updated_at_ms)),
        file_hashes: vec![hash("config hash", &row.config_hash)?, hash("weights hash", &row.weights_hash)?],
        location: row.location.clone(),
        datanet_id: row.datanet_id.clone(),
        snapshot_id: row.snapshot_id.clone(),
        snapshot_root: (!row.snapshot_root.is_empty()).then(|| Hash { value: row.snapshot_root.clone() }),
        lineage_location: job_id
            .map(|_| super::object_path(&row.id, super::LINEAGE_FILE).to_string())
            .unwrap_or_default(),
        job_id: job_id.unwrap_or_default().to_owned(),
    })
}
