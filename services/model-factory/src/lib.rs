//! The ModelFactory: the adapter registry (imported and, later, trained LoRA adapters, each
//! validated against its base model and stored in the object store) and the fine-tuning jobs
//! that produce adapters (their RPCs answer `UNIMPLEMENTED` until the jobs issue lands).
//!
//! - [`registry`] is the registry itself: import, read, update, unlist;
//! - [`base`] finds the base model adapters are validated against (the one the engines serve);
//! - [`owners`] checks with the ledger that a key owns an account;
//! - [`signing`] rebuilds what each signed request signs; [`events`] names the subjects;
//! - [`limits`] holds every limit; `api` is the gRPC surface.

mod api;
pub mod base;
mod entities;
pub mod events;
pub mod jobs;
pub mod limits;
pub mod owners;
pub mod registry;
pub mod signing;

use std::sync::Arc;

use openledger_core::ErrorCode;
use openledger_proto::modelfactory::v1::model_factory_service_server::ModelFactoryServiceServer;
use openledger_runtime::{Config, Deps, RuntimeError, ServiceKind, ServiceSpec, clients::ServiceChannel, run_service};
use openledger_store::db::MaybeBusy;

pub use api::{Api, SharedJobs, SharedRegistry};
pub use jobs::pod::{JobOutcome, run_job};
pub use registry::Registry;

/// An error with the code callers act on and a message naming the problem.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct RegistryError {
    pub code: ErrorCode,
    pub message: String,
    /// SQLite refused the write as busy: the whole operation may run again.
    busy: bool,
}

impl RegistryError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), busy: false }
    }

    /// Whether trying again later may succeed (a service or the database was unreachable).
    pub fn is_transient(&self) -> bool {
        self.busy || matches!(self.code, ErrorCode::Unavailable | ErrorCode::Timeout)
    }
}

impl From<sea_orm::DbErr> for RegistryError {
    fn from(error: sea_orm::DbErr) -> Self {
        Self { code: ErrorCode::Unavailable, busy: error.is_busy(), message: format!("database: {error}") }
    }
}

impl MaybeBusy for RegistryError {
    fn is_busy(&self) -> bool {
        self.busy
    }
}

impl From<openledger_store::StoreError> for RegistryError {
    fn from(error: openledger_store::StoreError) -> Self {
        Self::new(ErrorCode::Internal, error.to_string())
    }
}

impl From<openledger_signing::SigningError> for RegistryError {
    fn from(error: openledger_signing::SigningError) -> Self {
        Self::new(error.code(), error.to_string())
    }
}

/// Runs the service until the process shuts down.
pub async fn serve(config: Arc<Config>, deps: Deps) -> Result<(), RuntimeError> {
    let ledger = ServiceChannel::new(ServiceKind::Ledger, config.ledger_url.clone(), &config, deps.endpoints.clone());
    let datanet =
        ServiceChannel::new(ServiceKind::DatanetIngest, config.datanet_url.clone(), &config, deps.endpoints.clone());
    let owners: Arc<dyn owners::Owners> = Arc::new(owners::LedgerOwners::new(ledger));
    let bases = Arc::new(base::BaseModels::from_config(&config));
    let subjects = events::Subjects::new(&config.bus_subject_prefix);
    let shared = api::SharedRegistry::new(deps.backends.clone(), owners.clone(), bases.clone(), subjects.clone());
    let jobs = SharedJobs::default();
    let server = ModelFactoryServiceServer::new(Api::new(shared.clone(), jobs.clone()))
        .max_decoding_message_size(limits::MAX_GRPC_MESSAGE_BYTES);
    let spec = ServiceSpec::new(ServiceKind::ModelFactory, server);
    shared.set_outbox_waker(spec.outbox_waker());
    let outbox_wake = spec.outbox_waker();
    let (work_dir, memory_limit) = (config.data_dir.join("finetune"), config.job_memory_limit_bytes);
    let executor = executor(&config, deps.embedded).await?;
    let worker: openledger_runtime::Worker = Box::new(move |backends, shutdown| {
        Box::pin(async move {
            let Some(registry) = shared.get() else {
                tracing::error!("the registry is not ready although the backends are: no fine-tuning jobs");
                return;
            };
            let made = jobs::Jobs::new(jobs::JobsParts {
                db: backends.db,
                registry,
                datanets: Arc::new(jobs::datanets::DatanetService::new(datanet)),
                owners,
                bases,
                subjects,
                work_dir,
                executor: executor.name(),
                threads: jobs::default_threads(),
                memory_limit,
                outbox_wake: Some(outbox_wake),
            });
            let _ = jobs.set(made.clone());
            executor.run(made, shutdown).await;
        })
    });
    run_service(spec.worker(worker), &config, deps).await
}

/// The executor `job_executor` names; embedded mode always runs jobs in its own process.
async fn executor(config: &Config, embedded: bool) -> Result<Arc<dyn jobs::executor::Executor>, RuntimeError> {
    if config.job_executor != jobs::kubernetes::NAME {
        return Ok(Arc::new(jobs::executor::LocalExecutor));
    }
    if embedded {
        tracing::warn!("job_executor is kubernetes, but `openledger dev` runs fine-tuning jobs in its own process");
        return Ok(Arc::new(jobs::executor::LocalExecutor));
    }
    match jobs::kubernetes::KubernetesExecutor::from_config(config).await {
        Ok(executor) => Ok(Arc::new(executor)),
        Err(error) => Err(RuntimeError::Server {
            service: ServiceKind::ModelFactory,
            role: "kubernetes job executor",
            reason: format!(
                "{error}: run it in a cluster (a service account) or with a kubeconfig, or set job_executor to local"
            ),
        }),
    }
}
