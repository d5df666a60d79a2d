//! Datanet ingest: community datasets with signed contributions, validation, dedup, review,
//! sealed versions with Merkle proofs and access grants.
//!
//! - [`parse`] turns a file (txt, md, jsonl, csv, pdf, docx) into normalized records;
//! - [`quality`] scores records from cheap signals; [`dedup`] finds near-duplicates (both from
//!   `openledger-screen`, which attribution shares);
//! - [`datanets`] is the service's core (policy, contributions, review, snapshots, access);
//! - [`limits`] holds every limit and policy default, and the relations between them;
//! - [`bonds`] holds, releases and slashes stake bonds on the ledger; [`earnings`] reads
//!   contributors' earnings from it for the leaderboard;
//! - [`signing`] defines what each signed request signs; `api` is the gRPC surface.
//!
//! Besides its API the service runs two workers: the bond housekeeping (decisions the ledger
//! did not take, abandoned uploads, bonds whose quality was never assessed in time) and the
//! durable consumer `datanet-quality` of quality assessments, which release or slash the bonds
//! of accepted contributions (see [`datanets`]).

mod api;
pub mod bonds;
pub mod datanets;
pub mod earnings;
mod entities;
pub mod limits;
pub mod parse;
pub mod signing;

pub use openledger_screen::{dedup, quality};

use std::{sync::Arc, time::Duration};

use openledger_bus::ConsumerConfig;
use openledger_core::ErrorCode;
use openledger_proto::datanet::v1::datanet_service_server::DatanetServiceServer;
use openledger_runtime::{
    Config, Deps, RuntimeError, ServiceKind, ServiceSpec, Worker,
    clients::ServiceChannel,
    consume::{Handled, consume},
    run_service,
};
use openledger_store::db::MaybeBusy;

pub use api::Api;
pub use datanets::{Datanets, Upload};
/// A request signed by a key as its caller (what the API reads on private Datanets).
pub use openledger_signing::proto::signed_caller;

/// An error with the code callers act on and a message naming the problem.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct DatanetError {
    pub code: ErrorCode,
    pub message: String,
    /// SQLite refused the write as busy: the whole operation may run again.
    busy: bool,
}

impl DatanetError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), busy: false }
    }
}

impl From<sea_orm::DbErr> for DatanetError {
    fn from(error: sea_orm::DbErr) -> Self {
        Self { code: ErrorCode::Unavailable, busy: error.is_busy(), message: format!("database: {error}") }
    }
}

impl MaybeBusy for DatanetError {
    fn is_busy(&self) -> bool {
        self.busy
    }
}

impl From<openledger_store::StoreError> for DatanetError {
    fn from(error: openledger_store::StoreError) -> Self {
        match error {
            // A database error stays one (unavailable, and retried when SQLite was busy).
            openledger_store::StoreError::Database(error) => error.into(),
            other => Self::new(ErrorCode::Internal, other.to_string()),
        }
    }
}

/// Runs the service until the process shuts down.
pub async fn serve(config: Arc<Config>, deps: Deps) -> Result<(), RuntimeError> {
    let ledger = ServiceChannel::new(ServiceKind::Ledger, config.ledger_url.clone(), &config, deps.endpoints.clone());
    let bonds = Arc::new(bonds::LedgerBonds::new(ledger.clone()));
    let earnings = Arc::new(earnings::LedgerEarnings::new(ledger));
    let shared = api::SharedDatanets::new(deps.backends.clone(), bonds, earnings);
    let mut spec = ServiceSpec::new(ServiceKind::DatanetIngest, DatanetServiceServer::new(Api::new(shared.clone())));
    shared.set_outbox_waker(spec.outbox_waker());
    spec = spec.worker(bond_housekeeping(shared.clone())).worker(quality_assessments(shared));
    run_service(spec, &config, deps).await
}

/// Every [`limits::BOND_RETRY_INTERVAL_MS`]: applies bond decisions the ledger could not take
/// when they were made, gives back the bonds of abandoned uploads, and releases the bonds of
/// accepted contributions whose quality was not assessed within
/// [`limits::BOND_QUALITY_TIMEOUT_MS`].
fn bond_housekeeping(shared: api::SharedDatanets) -> Worker {
    Box::new(move |_backends, shutdown| {
        Box::pin(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(limits::BOND_RETRY_INTERVAL_MS)) => {}
                }
                let Some(datanets) = shared.get() else { continue };
                match datanets.resolve_bonds().await {
                    Ok(0) => {}
                    Ok(resolved) => tracing::info!(resolved, "waiting bond decisions applied"),
                    Err(error) => tracing::warn!(%error, "applying waiting bond decisions failed"),
                }
            }
        })
    })
}

/// The durable consumer `datanet-quality` of `ol.attribution.quality.assessed` (see
/// [`Datanets::handle_quality`]).
fn quality_assessments(shared: api::SharedDatanets) -> Worker {
    Box::new(move |backends, shutdown| {
        Box::pin(async move {
            let config = ConsumerConfig::new(limits::QUALITY_CONSUMER, datanets::SUBJECT_QUALITY_ASSESSED)
                .ack_wait(Duration::from_millis(limits::QUALITY_ACK_WAIT_MS))
                .max_deliver(limits::QUALITY_MAX_DELIVER);
            consume(backends.bus.clone(), config, shutdown, |delivery| {
                let (datanets, id, payload) = (shared.get(), delivery.id.clone(), delivery.payload.clone());
                async move {
                    match datanets {
                        Some(datanets) => datanets.handle_quality(&id, &payload).await,
                        None => Handled::Retry(Duration::from_millis(limits::QUALITY_RETRY_DELAY_MS)),
                    }
                }
            })
            .await;
        })
    })
}
