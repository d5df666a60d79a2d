//! What the worker asks the other services: an adapter's lineage (model-factory), a sealed
//! version's records (datanet-ingest, read as the attribution reader), the recording of a
//! receipt batch's root in the journal and the slashing threshold governance set (ledger). Behind one trait so tests can script them.

use futures::TryStreamExt;
use openledger_core::{ContentHash, ErrorCode};
use openledger_proto::{
    datanet::v1::{self as dpb, datanet_service_client::DatanetServiceClient},
    ledger::v1::{self as lpb, ledger_service_client::LedgerServiceClient},
    modelfactory::v1::{self as mpb, model_factory_service_client::ModelFactoryServiceClient},
    u128_of,
};
use openledger_runtime::clients::ServiceChannel;

use crate::{WorkerError, limits::MAX_GRPC_MESSAGE_BYTES};

/// What attribution needs of an adapter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterLineage {
    pub id: String,
    pub owner_account: u128,
    /// Empty for an adapter that names no Datanet version (imported without lineage).
    pub datanet_id: String,
    pub snapshot_id: String,
    pub snapshot_root: Option<ContentHash>,
}

/// One record of a sealed version, in the version's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionRecord {
    pub hash: ContentHash,
    pub contribution_id: String,
    pub contributor: Vec<u8>,
    /// The bond account the contribution named; 0 for none.
    pub account: u128,
    pub body: Vec<u8>,
}

/// Where a journal recorded a receipt batch's root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub journal_sequence: u64,
    pub entry_hash: Vec<u8>,
}

#[async_trait::async_trait]
pub trait Upstream: Send + Sync {
    /// `None` when the registry has no such adapter.
    async fn adapter(&self, id: &str) -> Result<Option<AdapterLineage>, WorkerError>;
    /// Every record of the version, in order.
    async fn records(&self, datanet_id: &str, snapshot_id: &str) -> Result<Vec<VersionRecord>, WorkerError>;
    async fn record_batch(&self, sequence: u64, root: &ContentHash, size: u64) -> Result<Recorded, WorkerError>;
    /// The quality score below which a contribution is a slashing candidate, as the parameters
    /// in force now set it.
    async fn slashing_threshold(&self) -> Result<f64, WorkerError>;
}

/// The services over gRPC.
pub struct Services {
    pub model_factory: ServiceChannel,
    pub datanets: ServiceChannel,
    pub ledger: ServiceChannel,
}

impl Services {
    /// The services where `config` names them (else where `endpoints` and the default ports
    /// find them).
    pub fn from_config(config: &openledger_core::Config, endpoints: openledger_runtime::Endpoints) -> Self {
        use openledger_core::ServiceKind;
        let channel = |kind, url: &Option<String>| ServiceChannel::new(kind, url.clone(), config, endpoints.clone());
        Self {
            model_factory: channel(ServiceKind::ModelFactory, &config.model_factory_url),
            datanets: channel(ServiceKind::DatanetIngest, &config.datanet_url),
            ledger: channel(ServiceKind::Ledger, &config.ledger_url),
        }
    }
}

/// A service's answer as ours: not found and refusals keep their code; the rest may pass.
fn upstream(service: &str, status: &tonic::Status) -> WorkerError {
    WorkerError::new(openledger_runtime::grpc::error_code_of(status), format!("{service}: {}", status.message()))
}

/// The slashing threshold the ledger's parameters set (the default when a ledger older than
/// the parameter leaves it out).
fn threshold_of(parameters: &lpb::Parameters) -> f64 {
    use openledger_core::slashing::{DEFAULT_SLASHING_THRESHOLD_MILLI, slashing_threshold};
    slashing_threshold(parameters.slashing_threshold_milli.unwrap_or(DEFAULT_SLASHING_THRESHOLD_MILLI))
}

fn channel(service: &ServiceChannel, name: &str) -> Result<tonic::transport::Channel, WorkerError> {
    service.channel().map_err(|status| upstream(name, &status))
}

pub(crate) fn hash_of(
    hash: Option<&openledger_proto::common::v1::Hash>,
    what: &str,
) -> Result<ContentHash, WorkerError> {
    hash.and_then(|h| ContentHash::try_from(h.value.as_slice()).ok())
        .ok_or_else(|| WorkerError::new(ErrorCode::Internal, format!("{what} is not a 32-byte hash")))
}

#[async_trait::async_trait]
impl Upstream for Services {
    async fn adapter(&self, id: &str) -> Result<Option<AdapterLineage>, WorkerError> {
        let mut client = ModelFactoryServiceClient::new(channel(&self.model_factory, "model-factory")?);
        let adapter = match client.get_adapter(mpb::GetAdapterRequest { id: id.to_owned() }).await {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == tonic::Code::NotFound => return Ok(None),
            Err(status) => return Err(upstream("model-factory", &status)),
        };
        let snapshot_root = if adapter.snapshot_id.is_empty() {
            None
        } else {
            Some(hash_of(adapter.snapshot_root.as_ref(), "the adapter's version root")?)
        };
        Ok(Some(AdapterLineage {
            id: adapter.id,
            owner_account: u128_of(adapter.owner_account_id.as_ref()),
            datanet_id: adapter.datanet_id,
            snapshot_id: adapter.snapshot_id,
            snapshot_root,
        }))
    }

    async fn records(&self, datanet_id: &str, snapshot_id: &str) -> Result<Vec<VersionRecord>, WorkerError> {
        let mut client = DatanetServiceClient::new(channel(&self.datanets, "datanet-ingest")?)
            .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES);
        let request = dpb::ReadRecordsRequest {
            datanet_id: datanet_id.to_owned(),
            snapshot_id: snapshot_id.to_owned(),
            reader: "attribution".into(),
            attribution: true,
            ..Default::default()
        };
        let mut stream =
            client.read_records(request).await.map_err(|status| upstream("datanet-ingest", &status))?.into_inner();
        let mut records = Vec::new();
        while let Some(record) = stream.try_next().await.map_err(|status| upstream("datanet-ingest", &status))? {
            records.push(VersionRecord {
                hash: hash_of(record.hash.as_ref(), "a record hash")?,
                contribution_id: record.contribution_id,
                contributor: record.contributor,
                account: u128_of(record.contributor_account_id.as_ref()),
                body: record.body,
            });
        }
        Ok(records)
    }

    async fn record_batch(&self, sequence: u64, root: &ContentHash, size: u64) -> Result<Recorded, WorkerError> {
        let mut client = LedgerServiceClient::new(channel(&self.ledger, "ledger")?);
        let request = lpb::RecordReceiptBatchRequest {
            sequence,
            root: Some(openledger_proto::common::v1::Hash { value: root.as_bytes().to_vec() }),
            size,
        };
        let record =
            client.record_receipt_batch(request).await.map_err(|status| upstream("ledger", &status))?.into_inner();
        Ok(Recorded {
            journal_sequence: record.journal_sequence,
            entry_hash: record.journal_entry_hash.map(|h| h.value).unwrap_or_default(),
        })
    }

    async fn slashing_threshold(&self) -> Result<f64, WorkerError> {
        let mut client = LedgerServiceClient::new(channel(&self.ledger, "ledger")?);
        let parameters = client
            .get_parameters(lpb::GetParametersRequest { epoch: 0 })
            .await
            .map_err(|status| upstream("ledger", &status))?
            .into_inner();
        Ok(threshold_of(&parameters))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_is_the_ledgers_in_thousandths_or_the_default() {
        let governed = lpb::Parameters { slashing_threshold_milli: Some(-2_500), ..Default::default() };
        assert_eq!(threshold_of(&governed), -2.5);
        assert_eq!(threshold_of(&lpb::Parameters::default()), -1.0, "a ledger older than the parameter");
    }
}
