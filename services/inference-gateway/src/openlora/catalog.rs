//! What `model` names: the base model the engines serve, or an adapter of the registry
//! (model-factory) with its owner, prices, files and who may call it. A request may also mix
//! several adapters (`adapters`); its prices are then the highest of the mix, in and out.
//!
//! The base model's prices are zero: a call to it pays the platform fee only.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use openledger_core::{ContentHash, ErrorCode};
use openledger_proto::{
    modelfactory::v1::{
        self as pb, GetAdapterRequest, ListAdaptersRequest, model_factory_service_client::ModelFactoryServiceClient,
    },
    u128_of,
};
use openledger_runtime::clients::ServiceChannel;
use parking_lot::Mutex;

use super::{engines::BaseModel, keys::Caller};
use crate::edge::ApiError;

/// How long an adapter's registry entry is reused before it is read again: an update or an
/// unlisting reaches new requests within this time.
pub const ADAPTER_CACHE_TTL: Duration = Duration::from_secs(2);
/// Most adapter entries kept; past it the cache starts over.
pub const MAX_CACHED_ADAPTERS: usize = 10_000;
/// Largest number of adapters `/v1/models` lists for one caller.
pub const MAX_LISTED_ADAPTERS: usize = 1_000;

/// One adapter of a request, as the registry describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct ChosenAdapter {
    pub id: String,
    pub weight: f32,
    pub owner_account_id: u128,
    /// BLAKE3 of adapter_config.json and adapter_model.safetensors, in that order.
    pub file_hashes: Vec<ContentHash>,
}

/// What a request runs on and what it costs per 1,000 tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    /// The `model` the response names.
    pub model: String,
    /// Empty for the base model.
    pub adapters: Vec<ChosenAdapter>,
    pub price_in: u128,
    pub price_out: u128,
}

/// Looks models up in the registry, with a short-lived cache.
#[derive(Clone)]
pub struct Catalog {
    model_factory: ServiceChannel,
    cache: Arc<Mutex<HashMap<String, (Instant, pb::Adapter)>>>,
}

impl Catalog {
    pub fn new(model_factory: ServiceChannel) -> Self {
        Self { model_factory, cache: Arc::default() }
    }

    fn client(&self) -> Result<ModelFactoryServiceClient<tonic::transport::Channel>, ApiError> {
        Ok(ModelFactoryServiceClient::new(self.model_factory.channel()?))
    }

    /// The registry entry of adapter `id`; 404 `model_not_found` when there is none.
    async fn adapter(&self, id: &str) -> Result<pb::Adapter, ApiError> {
        if let Some((at, adapter)) = self.cache.lock().get(id)
            && at.elapsed() < ADAPTER_CACHE_TTL
        {
            return Ok(adapter.clone());
        }
        let adapter = match self.client()?.get_adapter(GetAdapterRequest { id: id.to_owned() }).await {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == tonic::Code::NotFound => return Err(model_not_found(id)),
            Err(status) => return Err(status.into()),
        };
        let mut cache = self.cache.lock();
        if cache.len() >= MAX_CACHED_ADAPTERS {
            cache.clear();
        }
        cache.insert(id.to_owned(), (Instant::now(), adapter.clone()));
        Ok(adapter)
    }

    /// Resolves `model` (and the `adapters` mix, when given) for `caller`: 404
    /// `model_not_found` for an unknown or unlisted model, 403 for an adapter the caller's
    /// account may not use, 400 for an adapter of another base model.
    pub async fn resolve(
        &self,
        base: &BaseModel,
        model: &str,
        mix: &[(String, f32)],
        caller: &Caller,
    ) -> Result<Choice, ApiError> {
        let names: Vec<(String, f32)> = if !mix.is_empty() {
            if model != base.id && !mix.iter().any(|(id, _)| id == model) {
                return Err(ApiError::invalid(format!(
                    "model must name the base model {:?} or one of the adapters of the mix, not {model:?}",
                    base.id
                )));
            }
            mix.to_vec()
        } else if model == base.id {
            Vec::new()
        } else {
            vec![(model.to_owned(), 1.0)]
        };
        let mut choice = Choice { model: model.to_owned(), adapters: Vec::new(), price_in: 0, price_out: 0 };
        for (id, weight) in names {
            let adapter = self.adapter(&id).await?;
            if !adapter.listed {
                return Err(model_not_found(&id));
            }
            if !may_use(&adapter, caller.account_id) {
                return Err(ApiError::new(
                    ErrorCode::PermissionDenied,
                    format!(
                        "adapter {id:?} is not available to account {}: ask its owner for access",
                        caller.account_id
                    ),
                ));
            }
            let base_hash = adapter.base_model_hash.as_ref().map(|hash| hash.value.as_slice()).unwrap_or_default();
            if base_hash != base.hash.as_bytes() {
                return Err(ApiError::invalid(format!(
                    "adapter {id:?} was made for base model {:?}, but this platform serves {:?}",
                    adapter.base_model, base.id
                )));
            }
            choice.price_in = choice.price_in.max(u128_of(adapter.price_in.as_ref()));
            choice.price_out = choice.price_out.max(u128_of(adapter.price_out.as_ref()));
            let file_hashes = adapter
                .files
                .iter()
                .filter_map(|file| file.hash.as_ref())
                .filter_map(|hash| ContentHash::try_from(hash.value.as_slice()).ok())
                .collect();
            choice.adapters.push(ChosenAdapter {
                id,
                weight,
                owner_account_id: u128_of(adapter.owner_account_id.as_ref()),
                file_hashes,
            });
        }
        Ok(choice)
    }

    /// The listed adapters `caller` may use, for `/v1/models`.
    pub async fn adapters_for(&self, caller: &Caller) -> Result<Vec<pb::Adapter>, ApiError> {
        let mut adapters = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = ListAdaptersRequest {
                page: Some(openledger_proto::common::v1::PageRequest { page_size: 1000, page_token }),
                caller_account_id: openledger_proto::uint128(caller.account_id),
                include_unlisted: false,
            };
            let response = self.client()?.list_adapters(request).await?.into_inner();
            adapters.extend(response.adapters);
            page_token = response.page.map(|page| page.next_page_token).unwrap_or_default();
            if page_token.is_empty() || adapters.len() >= MAX_LISTED_ADAPTERS {
                adapters.truncate(MAX_LISTED_ADAPTERS);
                return Ok(adapters);
            }
        }
    }
}

/// Whether `account` may call `adapter`: public, its owner's, or on its allow-list.
fn may_use(adapter: &pb::Adapter, account: u128) -> bool {
    let owner = u128_of(adapter.owner_account_id.as_ref());
    match pb::Visibility::try_from(adapter.visibility).unwrap_or(pb::Visibility::Private) {
        pb::Visibility::Public => true,
        pb::Visibility::AllowList => {
            owner == account || adapter.allowed_accounts.iter().any(|allowed| u128::from(*allowed) == account)
        }
        pb::Visibility::Private | pb::Visibility::Unspecified => owner == account,
    }
}

pub fn model_not_found(model: &str) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("model {model:?} does not exist or is not listed: GET /v1/models lists what you may call"),
    )
    .with_detail_code("model_not_found")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter(visibility: pb::Visibility, allowed: &[u128]) -> pb::Adapter {
        pb::Adapter {
            owner_account_id: openledger_proto::uint128(70_000),
            visibility: visibility as i32,
            allowed_accounts: allowed.iter().map(|&a| a.into()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn visibility_decides_who_may_call_an_adapter() {
        assert!(may_use(&adapter(pb::Visibility::Public, &[]), 1));
        assert!(may_use(&adapter(pb::Visibility::Private, &[]), 70_000));
        assert!(!may_use(&adapter(pb::Visibility::Private, &[1]), 1));
        assert!(may_use(&adapter(pb::Visibility::AllowList, &[1, 2]), 2));
        assert!(may_use(&adapter(pb::Visibility::AllowList, &[1, 2]), 70_000));
        assert!(!may_use(&adapter(pb::Visibility::AllowList, &[1, 2]), 3));
        assert!(!may_use(&adapter(pb::Visibility::Unspecified, &[]), 3));
    }
}
