//! What a job asks datanet-ingest: whether the job's owner may train on a sealed version
//! (`CheckReadAccess`, when the job is created) and the version's records (`ReadRecords` for
//! the grantee, logged there as read by `job:<id>`).

use futures::TryStreamExt;
use openledger_core::{ContentHash, ErrorCode};
use openledger_proto::datanet::v1::{self as pb, datanet_service_client::DatanetServiceClient};
use openledger_runtime::clients::ServiceChannel;
use openledger_signing::Key;

use crate::RegistryError;
use crate::limits::{MAX_TRAINING_BYTES, MAX_TRAINING_RECORDS};

/// One record of a sealed version, its hash checked against its body.
#[derive(Clone, Debug)]
pub struct VersionRecord {
    pub hash: ContentHash,
    pub contributor: Vec<u8>,
    pub body: Vec<u8>,
}

/// The questions a job asks about Datanets.
#[async_trait::async_trait]
pub trait DatanetReads: Send + Sync {
    async fn check(
        &self,
        datanet: &str,
        version: &str,
        grantee: &Key,
        grant_id: &str,
    ) -> Result<pb::ReadAccess, RegistryError>;

    /// Every record of the version, in its order (at most [`MAX_TRAINING_RECORDS`] and
    /// [`MAX_TRAINING_BYTES`] of bodies).
    async fn read(
        &self,
        access: &pb::ReadAccess,
        grantee: &Key,
        reader: &str,
    ) -> Result<Vec<VersionRecord>, RegistryError>;
}

/// datanet-ingest over gRPC.
pub struct DatanetService {
    channel: ServiceChannel,
}

impl DatanetService {
    pub fn new(channel: ServiceChannel) -> Self {
        Self { channel }
    }

    fn client(&self) -> Result<DatanetServiceClient<tonic::transport::Channel>, RegistryError> {
        let channel = self.channel.channel().map_err(|status| upstream(&status))?;
        Ok(DatanetServiceClient::new(channel).max_decoding_message_size(64 << 20))
    }
}

/// datanet-ingest's answer as ours: its code, its message.
fn upstream(status: &tonic::Status) -> RegistryError {
    RegistryError::new(openledger_runtime::grpc::error_code_of(status), format!("datanet-ingest: {}", status.message()))
}

#[async_trait::async_trait]
impl DatanetReads for DatanetService {
    async fn check(
        &self,
        datanet: &str,
        version: &str,
        grantee: &Key,
        grant_id: &str,
    ) -> Result<pb::ReadAccess, RegistryError> {
        let request = pb::CheckReadAccessRequest {
            datanet: datanet.to_owned(),
            snapshot_id: version.to_owned(),
            grantee: grantee.to_vec(),
            grant_id: grant_id.to_owned(),
        };
        Ok(self.client()?.check_read_access(request).await.map_err(|status| upstream(&status))?.into_inner())
    }

    async fn read(
        &self,
        access: &pb::ReadAccess,
        grantee: &Key,
        reader: &str,
    ) -> Result<Vec<VersionRecord>, RegistryError> {
        let snapshot = access.snapshot.as_ref().ok_or_else(|| corrupt("a read access without its version"))?;
        let request = pb::ReadRecordsRequest {
            datanet_id: access.datanet_id.clone(),
            snapshot_id: snapshot.id.clone(),
            grant_id: access.grant_id.clone(),
            grantee: grantee.to_vec(),
            reader: reader.to_owned(),
            attribution: false,
        };
        let mut stream = self.client()?.read_records(request).await.map_err(|status| upstream(&status))?.into_inner();
        let mut records = Vec::with_capacity(snapshot.record_count.min(MAX_TRAINING_RECORDS) as usize);
        let mut bytes = 0u64;
        while let Some(record) = stream.try_next().await.map_err(|status| upstream(&status))? {
            bytes += record.body.len() as u64;
            if records.len() as u64 >= MAX_TRAINING_RECORDS || bytes > MAX_TRAINING_BYTES {
                return Err(RegistryError::new(
                    ErrorCode::FailedPrecondition,
                    format!(
                        "the version holds more than {MAX_TRAINING_RECORDS} records or {MAX_TRAINING_BYTES} bytes, the most one job trains on"
                    ),
                ));
            }
            let hash = record.hash.as_ref().map(|hash| hash.value.as_slice()).unwrap_or_default();
            let hash: [u8; 32] = hash.try_into().map_err(|_| corrupt("a record without a 32-byte hash"))?;
            let hash = ContentHash::from_bytes(hash);
            if ContentHash::of(&record.body) != hash {
                return Err(corrupt(&format!("record {} does not match its body", hash.to_hex())));
            }
            records.push(VersionRecord { hash, contributor: record.contributor, body: record.body });
        }
        Ok(records)
    }
}

fn corrupt(what: &str) -> RegistryError {
    RegistryError::new(ErrorCode::Internal, format!("datanet-ingest sent {what}"))
}
