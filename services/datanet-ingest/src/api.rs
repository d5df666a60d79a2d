//! The gRPC surface: `DatanetService` over [`Datanets`]. Reads of private Datanets identify
//! the caller by signed metadata (`x-openledger-key`, `x-openledger-timestamp`,
//! `x-openledger-signature`; see [`signing::caller_message`]).

use std::sync::{Arc, OnceLock};

use futures::StreamExt;
use openledger_core::{ContentHash, ErrorCode};
use openledger_proto::datanet::v1::{self as pb, contribute_request::Part, datanet_service_server::DatanetService};
use openledger_runtime::{BackendsHandle, grpc::status};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tonic::{Request, Response, Status, Streaming, metadata::MetadataMap};

use crate::{
    DatanetError,
    bonds::Bonds,
    datanets::{Datanets, Upload},
    earnings::Earnings,
    limits,
    signing::{self, Key},
};

/// The process's one `Datanets` (one duplicate index per Datanet), made once the backends
/// are connected.
#[derive(Clone)]
pub struct SharedDatanets {
    backends: BackendsHandle,
    bonds: Arc<dyn Bonds>,
    earnings: Arc<dyn Earnings>,
    outbox_wake: Arc<Mutex<Option<Arc<Notify>>>>,
    datanets: Arc<OnceLock<Arc<Datanets>>>,
}

impl SharedDatanets {
    pub fn new(backends: BackendsHandle, bonds: Arc<dyn Bonds>, earnings: Arc<dyn Earnings>) -> Self {
        Self { backends, bonds, earnings, outbox_wake: Arc::default(), datanets: Arc::default() }
    }

    pub fn set_outbox_waker(&self, wake: Arc<Notify>) {
        *self.outbox_wake.lock() = Some(wake);
    }

    pub fn get(&self) -> Option<Arc<Datanets>> {
        if let Some(datanets) = self.datanets.get() {
            return Some(datanets.clone());
        }
        let backends = self.backends.current()?;
        let wake = self.outbox_wake.lock().clone();
        Some(
            self.datanets
                .get_or_init(|| {
                    let datanets = Datanets::new(backends.db, backends.objects, self.bonds.clone())
                        .with_earnings(self.earnings.clone());
                    Arc::new(match wake {
                        Some(wake) => datanets.with_outbox_waker(wake),
                        None => datanets,
                    })
                })
                .clone(),
        )
    }
}

#[derive(Clone)]
pub struct Api {
    shared: SharedDatanets,
    uploads: Arc<tokio::sync::Semaphore>,
}

impl Api {
    pub fn new(shared: SharedDatanets) -> Self {
        Self { shared, uploads: Arc::new(tokio::sync::Semaphore::new(limits::CONCURRENT_UPLOADS)) }
    }

    fn datanets(&self) -> Result<Arc<Datanets>, Status> {
        self.shared.get().ok_or_else(|| {
            status(ErrorCode::Unavailable, "the Datanet service is starting: its database is not connected yet")
        })
    }
}

fn failed(error: DatanetError) -> Status {
    status(error.code, error.message)
}

/// The caller's key from signed metadata, if the request carries it.
pub fn caller(metadata: &MetadataMap) -> Result<Option<Key>, Status> {
    let text = |name: &str| metadata.get(name).and_then(|value| value.to_str().ok()).map(str::to_owned);
    let [Some(key), Some(at), Some(signature)] = openledger_signing::headers::CALLER.map(text) else {
        return Ok(None);
    };
    signing::verify_caller(&key, &at, &signature, signing::now_unix()).map(Some).map_err(failed)
}

type RecordStream = futures::stream::BoxStream<'static, Result<pb::Record, Status>>;

#[tonic::async_trait]
impl DatanetService for Api {
    async fn create_datanet(
        &self,
        request: Request<pb::CreateDatanetRequest>,
    ) -> Result<Response<pb::Datanet>, Status> {
        let request = request.into_inner();
        let wanted = request.datanet.ok_or_else(|| status(ErrorCode::InvalidArgument, "datanet is required"))?;
        Ok(Response::new(self.datanets()?.create(wanted, request.signature).await.map_err(failed)?))
    }

    async fn get_datanet(&self, request: Request<pb::GetDatanetRequest>) -> Result<Response<pb::Datanet>, Status> {
        let caller = caller(request.metadata())?;
        Ok(Response::new(self.datanets()?.get(&request.into_inner().id_or_slug, caller).await.map_err(failed)?))
    }

    async fn list_datanets(
        &self,
        request: Request<pb::ListDatanetsRequest>,
    ) -> Result<Response<pb::ListDatanetsResponse>, Status> {
        let caller = caller(request.metadata())?;
        let request = request.into_inner();
        let page = request.page.unwrap_or_default();
        let (datanets, page) =
            self.datanets()?.list(&request.tag, page.page_size, &page.page_token, caller).await.map_err(failed)?;
        Ok(Response::new(pb::ListDatanetsResponse { datanets, page: Some(page) }))
    }

    async fn update_datanet(
        &self,
        request: Request<pb::UpdateDatanetRequest>,
    ) -> Result<Response<pb::Datanet>, Status> {
        Ok(Response::new(self.datanets()?.update(request.into_inner()).await.map_err(failed)?))
    }

    async fn contribute(
        &self,
        request: Request<Streaming<pb::ContributeRequest>>,
    ) -> Result<Response<pb::Contribution>, Status> {
        let _slot =
            self.uploads.acquire().await.map_err(|_| status(ErrorCode::Unavailable, "the service is shutting down"))?;
        let mut stream = request.into_inner();
        let header = match stream.next().await {
            Some(Ok(pb::ContributeRequest { part: Some(Part::Header(header)) })) => header,
            Some(Err(error)) => return Err(error),
            _ => {
                return Err(status(
                    ErrorCode::InvalidArgument,
                    "the first message of Contribute must be the header (datanet_id, file_name, signature, …)",
                ));
            }
        };
        if header.size_bytes > limits::MAX_FILE_BYTES {
            return Err(status(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the file is {} bytes; the service takes at most {}",
                    header.size_bytes,
                    limits::MAX_FILE_BYTES
                ),
            ));
        }
        // Grown as chunks arrive: a header's claim alone reserves at most 1 MiB.
        let mut bytes = Vec::with_capacity(header.size_bytes.min(limits::MAX_ANNOUNCED_RESERVATION_BYTES) as usize);
        while let Some(message) = stream.next().await {
            match message?.part {
                Some(Part::Chunk(chunk)) => {
                    if (bytes.len() + chunk.len()) as u64 > limits::MAX_FILE_BYTES {
                        return Err(status(
                            ErrorCode::PayloadTooLarge,
                            format!("the file exceeds the service's limit of {} bytes", limits::MAX_FILE_BYTES),
                        ));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                _ => return Err(status(ErrorCode::InvalidArgument, "only the first message may be a header")),
            }
        }
        if header.size_bytes != 0 && header.size_bytes != bytes.len() as u64 {
            return Err(status(
                ErrorCode::InvalidArgument,
                format!("the header announced {} bytes but {} arrived", header.size_bytes, bytes.len()),
            ));
        }
        let declared_hash = match header.file_hash.as_ref().map(|hash| hash.value.as_slice()) {
            None | Some([]) => None,
            Some(value) => Some(ContentHash::from_bytes(
                value
                    .try_into()
                    .map_err(|_| status(ErrorCode::InvalidArgument, "file_hash must be a 32-byte BLAKE3 hash"))?,
            )),
        };
        let upload = Upload {
            datanet_id: header.datanet_id,
            file_name: header.file_name,
            media_type: header.media_type,
            bytes: bytes.into(),
            declared_hash,
            signature: header.signature.ok_or_else(|| {
                status(ErrorCode::InvalidArgument, "the header must carry the contributor's signature")
            })?,
            account_id: header.contributor_account_id.map(u128::from).filter(|id| *id != 0),
        };
        Ok(Response::new(self.datanets()?.contribute(upload).await.map_err(failed)?))
    }

    async fn get_contribution(
        &self,
        request: Request<pb::GetContributionRequest>,
    ) -> Result<Response<pb::Contribution>, Status> {
        let caller = caller(request.metadata())?;
        let request = request.into_inner();
        Ok(Response::new(
            self.datanets()?
                .contribution(&request.datanet_id, &request.contribution_id, caller)
                .await
                .map_err(failed)?,
        ))
    }

    async fn list_contributions(
        &self,
        request: Request<pb::ListContributionsRequest>,
    ) -> Result<Response<pb::ListContributionsResponse>, Status> {
        let caller = caller(request.metadata())?;
        let request = request.into_inner();
        let page = request.page.unwrap_or_default();
        let (contributions, page) = self
            .datanets()?
            .contributions(&request.datanet_id, request.status, page.page_size, &page.page_token, caller)
            .await
            .map_err(failed)?;
        Ok(Response::new(pb::ListContributionsResponse { contributions, page: Some(page) }))
    }

    async fn review_contribution(
        &self,
        request: Request<pb::ReviewContributionRequest>,
    ) -> Result<Response<pb::Contribution>, Status> {
        Ok(Response::new(self.datanets()?.review(request.into_inner()).await.map_err(failed)?))
    }

    async fn remove_record(
        &self,
        request: Request<pb::RemoveRecordRequest>,
    ) -> Result<Response<pb::RemoveRecordResponse>, Status> {
        self.datanets()?.remove_record(request.into_inner()).await.map_err(failed)?;
        Ok(Response::new(pb::RemoveRecordResponse {}))
    }

    async fn publish_snapshot(
        &self,
        request: Request<pb::PublishSnapshotRequest>,
    ) -> Result<Response<pb::Snapshot>, Status> {
        Ok(Response::new(self.datanets()?.publish(request.into_inner()).await.map_err(failed)?))
    }

    async fn get_snapshot(&self, request: Request<pb::GetSnapshotRequest>) -> Result<Response<pb::Snapshot>, Status> {
        let caller = caller(request.metadata())?;
        let request = request.into_inner();
        Ok(Response::new(
            self.datanets()?.snapshot(&request.datanet_id, &request.snapshot_id, caller).await.map_err(failed)?,
        ))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<pb::GetInclusionProofRequest>,
    ) -> Result<Response<pb::InclusionProof>, Status> {
        let caller = caller(request.metadata())?;
        let request = request.into_inner();
        Ok(Response::new(
            self.datanets()?
                .proof(&request.datanet_id, &request.snapshot_id, &request.contribution_id, caller)
                .await
                .map_err(failed)?,
        ))
    }

    async fn request_access(
        &self,
        request: Request<pb::RequestAccessRequest>,
    ) -> Result<Response<pb::AccessGrant>, Status> {
        Ok(Response::new(self.datanets()?.request_access(request.into_inner()).await.map_err(failed)?))
    }

    async fn decide_access(
        &self,
        request: Request<pb::DecideAccessRequest>,
    ) -> Result<Response<pb::AccessGrant>, Status> {
        Ok(Response::new(self.datanets()?.decide_access(request.into_inner()).await.map_err(failed)?))
    }

    async fn read_records(&self, request: Request<pb::ReadRecordsRequest>) -> Result<Response<RecordStream>, Status> {
        let caller = caller(request.metadata())?;
        let records = self.datanets()?.read_records(request.get_ref(), caller).await.map_err(failed)?;
        Ok(Response::new(records.map(|record| record.map_err(failed)).boxed()))
    }

    async fn check_read_access(
        &self,
        request: Request<pb::CheckReadAccessRequest>,
    ) -> Result<Response<pb::ReadAccess>, Status> {
        Ok(Response::new(self.datanets()?.check_read_access(request.get_ref()).await.map_err(failed)?))
    }

    async fn get_leaderboard(
        &self,
        request: Request<pb::GetLeaderboardRequest>,
    ) -> Result<Response<pb::Leaderboard>, Status> {
        let caller = caller(request.metadata())?;
        let request = request.into_inner();
        Ok(Response::new(
            self.datanets()?.leaderboard(&request.datanet_id, request.limit, caller).await.map_err(failed)?,
        ))
    }
}
