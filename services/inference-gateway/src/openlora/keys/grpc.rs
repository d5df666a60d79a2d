//! The gateway's gRPC `InferenceService`: API keys, over the same [`Keys`] as the REST routes.
//! Listing reads the caller from metadata as REST reads headers (`authorization: Bearer …` or
//! the signed caller keys).

use openledger_proto::{
    inference::v1::{self as pb, inference_service_server::InferenceService},
    u128_of,
};
use openledger_runtime::grpc::status;
use tonic::{Request, Response, Status};

use super::{Keys, Limits, NewKey};
use crate::edge::{ApiError, page::PageQuery};

/// The gateway's gRPC API.
#[derive(Clone)]
pub struct Api {
    keys: Keys,
}

impl Api {
    pub fn new(keys: Keys) -> Self {
        Self { keys }
    }
}

fn failed(error: ApiError) -> Status {
    status(error.code, error.message)
}

#[tonic::async_trait]
impl InferenceService for Api {
    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let request = request.into_inner();
        let limits = request.limits.unwrap_or_default();
        let new = NewKey {
            account_id: u128_of(request.account_id.as_ref()),
            name: request.name,
            limits: Limits {
                requests_per_minute: u64::from(limits.requests_per_minute),
                tokens_per_minute: u64::from(limits.tokens_per_minute),
            },
            signed_at: request.signed_at,
            signature: request.signature.unwrap_or_default(),
        };
        let (key, secret) = self.keys.create(new).await.map_err(failed)?;
        Ok(Response::new(pb::CreateApiKeyResponse { key: Some(key), secret }))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let headers = request.metadata().clone().into_headers();
        let request = request.into_inner();
        let page = request.page.unwrap_or_default();
        // The same bounds as REST: 0 means the default page size.
        let limit = Some(page.page_size).filter(|size| *size != 0);
        let page = PageQuery { limit, after: Some(page.page_token) }.request().map_err(failed)?;
        let (keys, next) =
            self.keys.list(&headers, u128_of(request.account_id.as_ref()), page).await.map_err(failed)?;
        let page = openledger_proto::common::v1::PageResponse { next_page_token: next.unwrap_or_default() };
        Ok(Response::new(pb::ListApiKeysResponse { keys, page: Some(page) }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let request = request.into_inner();
        let signature = request.signature.unwrap_or_default();
        let key = self.keys.revoke(&request.key_id, request.signed_at, &signature).await.map_err(failed)?;
        Ok(Response::new(pb::RevokeApiKeyResponse { key: Some(key) }))
    }
}
