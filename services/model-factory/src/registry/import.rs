//! Importing an adapter: check the request and its signature, find the base model, check the
//! owner account with the ledger, fetch the files (from `source`), validate them against the
//! base, claim the id, store the files, commit the row and its `registered` event.

use bytes::Bytes;
use object_store::PutPayload;
use openledger_core::{ContentHash, ErrorCode};
use openledger_ml::{
    adapters::{ADAPTER_CONFIG, ADAPTER_WEIGHTS},
    validate::CheckedAdapter,
};
use openledger_proto::{modelfactory::v1 as pb, u128_of};
use openledger_store::{db::retry_when_busy, now_ms};
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, Set, TransactionTrait};

use super::{Registry, distinct, invalid, location, object_path};
use crate::{
    RegistryError,
    base::BaseModel,
    entities::{PENDING, READY, access, adapter},
    events::{self, Change},
    limits,
    signing::{self, accounts},
};

/// An import's files and what identifies them.
pub(super) struct Files {
    pub(super) config: Bytes,
    pub(super) weights: Bytes,
    pub(super) config_hash: ContentHash,
    pub(super) weights_hash: ContentHash,
}

impl Files {
    pub(super) fn new(config: Bytes, weights: Bytes) -> Self {
        Self { config_hash: ContentHash::of(&config), weights_hash: ContentHash::of(&weights), config, weights }
    }
}

impl Registry {
    /// Imports an adapter signed by the key owning `owner_account_id`. Importing the same id
    /// again with the same files and owner answers the adapter as it is (a retry); anything
    /// else under a taken id is `ALREADY_EXISTS`.
    pub async fn import(&self, request: pb::ImportAdapterRequest) -> Result<pb::Adapter, RegistryError> {
        check_request(&request)?;
        let inline = !request.adapter_config_json.is_empty() || !request.adapter_model_safetensors.is_empty();
        let mut files = inline.then(|| {
            Files::new(request.adapter_config_json.clone().into(), request.adapter_model_safetensors.clone().into())
        });
        let message =
            signing::import_message(&request, files.as_ref().map(|files| (&files.config_hash, &files.weights_hash)));
        let owner = signing::signer(request.signature.as_ref(), &message, request.signed_at)?;
        let base = self.bases.require().await?;
        if !request.base_model.is_empty() && request.base_model != base.id {
            return Err(invalid(format!(
                "the adapter is for base model {:?} but this platform serves {:?}: import it where that base is served",
                request.base_model, base.id
            )));
        }
        let owner_account = u128_of(request.owner_account_id.as_ref());
        self.owners.check_owner(owner_account, &owner).await?;
        let files = match files.take() {
            Some(files) => files,
            None => {
                let (config, weights) =
                    super::fetch::fetch_source(self.objects.as_ref(), &request.source, &self.limits).await?;
                Files::new(config, weights)
            }
        };
        let existing = adapter::Entity::find_by_id(&request.id).one(&self.db).await?;
        if let Some(existing) = existing {
            return self.retried(existing, &owner, owner_account, &files).await;
        }
        let checked = self.validate(&base, &request.id, &files).await?;
        let row = new_row(&request, &owner, owner_account, &base, &files, &checked);
        if let Err(error) = row.clone().insert(&self.db).await {
            if !is_unique_violation(&error) {
                return Err(error.into());
            }
            // A concurrent import claimed the id first.
            let existing = adapter::Entity::find_by_id(&request.id).one(&self.db).await?.ok_or(error)?;
            return self.retried(existing, &owner, owner_account, &files).await;
        }
        self.store_and_commit(&request.id, &files, &accounts(&request.allowed_accounts)).await
    }

    /// An import of an id that exists: the same import again finishes or answers it.
    async fn retried(
        &self,
        existing: adapter::Model,
        owner: &openledger_signing::Key,
        owner_account: u128,
        files: &Files,
    ) -> Result<pb::Adapter, RegistryError> {
        let same = existing.owner == owner.as_slice()
            && existing.owner_account == owner_account.to_string()
            && existing.config_hash == files.config_hash.as_bytes()
            && existing.weights_hash == files.weights_hash.as_bytes();
        if !same {
            return Err(RegistryError::new(
                ErrorCode::AlreadyExists,
                format!("adapter id {:?} is taken: choose another id", existing.id),
            ));
        }
        if existing.state == PENDING {
            let allowed = self.allowed(&existing.id).await?;
            return self.store_and_commit(&existing.id, files, &allowed).await;
        }
        self.get(&existing.id).await
    }

    /// The files against the base model, on a blocking thread (the engine's loader reads them).
    pub(super) async fn validate(
        &self,
        base: &BaseModel,
        id: &str,
        files: &Files,
    ) -> Result<CheckedAdapter, RegistryError> {
        let (base_id, config, limits) = (base.id.clone(), base.config.clone(), self.limits);
        let (config_json, weights) = (files.config.clone(), files.weights.clone());
        let checked = tokio::task::spawn_blocking(move || {
            openledger_ml::validate::check_adapter(&base_id, &config, &config_json, &weights, &limits)
        })
        .await
        .map_err(|error| RegistryError::new(ErrorCode::Internal, format!("validating the adapter: {error}")))?;
        checked.map_err(|error| invalid(format!("adapter {id:?} is refused: {error}")))
    }

    /// Writes the files where the engines read them, then marks the claimed row ready with its
    /// allow-list and event. A failed write gives the id back.
    pub(super) async fn store_and_commit(
        &self,
        id: &str,
        files: &Files,
        allowed: &[u128],
    ) -> Result<pb::Adapter, RegistryError> {
        let stored = async {
            for (name, bytes) in [(ADAPTER_CONFIG, &files.config), (ADAPTER_WEIGHTS, &files.weights)] {
                self.objects.put(&object_path(id, name), PutPayload::from(bytes.clone())).await?;
            }
            Ok::<_, object_store::Error>(())
        }
        .await;
        if let Err(error) = stored {
            let released = adapter::Entity::delete_many()
                .filter(adapter::Column::Id.eq(id))
                .filter(adapter::Column::State.eq(PENDING))
                .exec(&self.db)
                .await;
            if let Err(release_error) = released {
                tracing::warn!(%release_error, adapter = id, "giving back the id of a failed import failed");
            }
            return Err(RegistryError::new(
                ErrorCode::Unavailable,
                format!("storing adapter {id:?} in the object store failed: {error}; import it again"),
            ));
        }
        let committed = retry_when_busy(|| async {
            let txn = self.db.begin().await?;
            let marked = adapter::Entity::update_many()
                .col_expr(adapter::Column::State, sea_orm::sea_query::Expr::value(READY))
                .filter(adapter::Column::Id.eq(id))
                .filter(adapter::Column::State.eq(PENDING))
                .exec(&txn)
                .await?;
            if marked.rows_affected == 0 {
                return Ok(false); // a concurrent retry finished it
            }
            for account in distinct(allowed) {
                let row = access::ActiveModel { adapter_id: Set(id.to_owned()), account: Set(account.to_string()) };
                access::Entity::insert(row).exec(&txn).await?;
            }
            let row = adapter::Entity::find_by_id(id).one(&txn).await?.ok_or_else(|| super::not_found(id))?;
            events::enqueue(&txn, &self.subjects, Change::Registered, &super::read::event(&row)?).await?;
            txn.commit().await?;
            Ok::<_, RegistryError>(true)
        })
        .await?;
        if committed {
            self.wake_outbox();
            tracing::info!(adapter = id, "adapter registered");
        }
        self.get(id).await
    }
}

/// The request's own fields, before anything is fetched or verified.
fn check_request(request: &pb::ImportAdapterRequest) -> Result<(), RegistryError> {
    check_id(&request.id)?;
    let inline = !request.adapter_config_json.is_empty() || !request.adapter_model_safetensors.is_empty();
    match (inline, request.source.is_empty()) {
        (true, false) => return Err(invalid("send either the two files or a source, not both")),
        (false, true) => {
            return Err(invalid(
                "send adapter_config.json and adapter_model.safetensors, or a source (an object-store key prefix or hf://owner/name[@revision])",
            ));
        }
        (true, true) if request.adapter_config_json.is_empty() || request.adapter_model_safetensors.is_empty() => {
            return Err(invalid("an upload needs both adapter_config.json and adapter_model.safetensors"));
        }
        _ => {}
    }
    if request.source.len() > limits::MAX_SOURCE_BYTES
        || request.source.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(invalid(format!(
            "source must be at most {} bytes without spaces or line breaks",
            limits::MAX_SOURCE_BYTES
        )));
    }
    if u128_of(request.owner_account_id.as_ref()) == 0 {
        return Err(invalid("owner_account_id is required: the ledger account the adapter's fees go to"));
    }
    check_visibility(request.visibility, request.allowed_accounts.len())?;
    check_description(&request.description)
}

/// `[A-Za-z0-9._-]{1,128}`, not starting with `.`, never `hf://…` (those name hub adapters).
pub(super) fn check_id(id: &str) -> Result<(), RegistryError> {
    if openledger_ml::adapters::is_hub_id(id) {
        return Err(invalid(format!(
            "adapter id {id:?} names a hub adapter: choose a registry id ([A-Za-z0-9._-]{{1,128}}) and pass hf://… as the source"
        )));
    }
    if id.starts_with("ft:") {
        return Err(invalid(format!(
            "adapter id {id:?}: ft:… names are given to adapters trained by fine-tuning jobs; choose another id"
        )));
    }
    openledger_ml::adapters::validate_adapter_id(id).map_err(|error| invalid(error.to_string()))
}

/// A visibility the registry knows, and an allow-list only with `allow_list`.
pub(super) fn check_visibility(visibility: i32, allowed: usize) -> Result<(), RegistryError> {
    let known = matches!(
        pb::Visibility::try_from(visibility),
        Ok(pb::Visibility::Public | pb::Visibility::Private | pb::Visibility::AllowList)
    );
    if !known {
        return Err(invalid("visibility must be public, private or allow_list"));
    }
    if allowed > limits::MAX_ALLOWED_ACCOUNTS {
        return Err(invalid(format!(
            "allowed_accounts has {allowed} accounts; at most {}",
            limits::MAX_ALLOWED_ACCOUNTS
        )));
    }
    // An allow-list is kept with any visibility and takes effect under `allow_list` only, so an
    // owner can prepare it before switching.
    Ok(())
}

pub(super) fn check_description(description: &str) -> Result<(), RegistryError> {
    let chars = description.chars().count();
    if chars > limits::MAX_DESCRIPTION_CHARS {
        return Err(invalid(format!("description has {chars} characters; at most {}", limits::MAX_DESCRIPTION_CHARS)));
    }
    Ok(())
}

fn new_row(
    request: &pb::ImportAdapterRequest,
    owner: &openledger_signing::Key,
    owner_account: u128,
    base: &BaseModel,
    files: &Files,
    checked: &CheckedAdapter,
) -> adapter::ActiveModel {
    let now = now_ms();
    let modules: Vec<&str> = checked.targets.iter().map(|target| target.module_name()).collect();
    adapter::ActiveModel {
        id: Set(request.id.clone()),
        state: Set(PENDING),
        owner: Set(owner.to_vec()),
        owner_account: Set(owner_account.to_string()),
        base_model: Set(base.id.clone()),
        base_model_hash: Set(base.hash.as_bytes().to_vec()),
        location: Set(location(&request.id)),
        source: Set(if request.source.is_empty() { "upload".to_owned() } else { request.source.clone() }),
        config_hash: Set(files.config_hash.as_bytes().to_vec()),
        config_bytes: Set(files.config.len() as i64),
        weights_hash: Set(files.weights_hash.as_bytes().to_vec()),
        weights_bytes: Set(files.weights.len() as i64),
        rank: Set(checked.rank as i32),
        target_modules: Set(serde_json::Value::from(modules).to_string()),
        price_in: Set(u128_of(request.price_in.as_ref()).to_string()),
        price_out: Set(u128_of(request.price_out.as_ref()).to_string()),
        visibility: Set(request.visibility as i16),
        description: Set(request.description.clone()),
        listed: Set(true),
        datanet_id: Set(String::new()),
        snapshot_id: Set(String::new()),
        snapshot_root: Set(Vec::new()),
        created_at_ms: Set(now),
        updated_at_ms: Set(now),
    }
}

/// A write refused by a unique index (by the database's error code, on SQLite and PostgreSQL).
fn is_unique_violation(error: &sea_orm::DbErr) -> bool {
    matches!(error.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_)))
}
