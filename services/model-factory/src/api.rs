//! The gRPC surface: the registry RPCs of `ModelFactoryService` over [`Registry`] and the
//! fine-tuning job RPCs over [`Jobs`] (`UNAVAILABLE` until the service's backends are up).
//! `ListAdapters` also reads the signed caller metadata (`x-openledger-key`, `-timestamp`,
//! `-signature`): a verified caller sees the adapters its key owns, whatever their visibility.

use std::sync::{Arc, OnceLock};

use openledger_core::ErrorCode;
use openledger_proto::modelfactory::v1::{self as pb, model_factory_service_server::ModelFactoryService};
use openledger_runtime::{BackendsHandle, grpc::status};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tonic::{Request, Response, Status, metadata::MetadataMap};

use crate::{
    RegistryError, base::BaseModels, events::Subjects, jobs::Jobs, owners::Owners, registry::Registry,
    registry::read::ListCaller,
};

/// The process's one [`Registry`], made once the backends are connected.
#[derive(Clone)]
pub struct SharedRegistry {
    /// What the registry is made of; `None` when it was given ready-made.
    parts: Option<Parts>,
    outbox_wake: Arc<Mutex<Option<Arc<Notify>>>>,
    registry: Arc<OnceLock<Arc<Registry>>>,
}

#[derive(Clone)]
struct Parts {
    backends: BackendsHandle,
    owners: Arc<dyn Owners>,
    bases: Arc<BaseModels>,
    subjects: Subjects,
}

impl SharedRegistry {
    pub fn new(backends: BackendsHandle, owners: Arc<dyn Owners>, bases: Arc<BaseModels>, subjects: Subjects) -> Self {
        Self {
            parts: Some(Parts { backends, owners, bases, subjects }),
            outbox_wake: Arc::default(),
            registry: Arc::default(),
        }
    }

    /// A registry made elsewhere (tests, tools).
    pub fn ready(registry: Arc<Registry>) -> Self {
        Self { parts: None, outbox_wake: Arc::default(), registry: Arc::new(OnceLock::from(registry)) }
    }

    pub fn set_outbox_waker(&self, wake: Arc<Notify>) {
        *self.outbox_wake.lock() = Some(wake);
    }

    pub fn get(&self) -> Option<Arc<Registry>> {
        if let Some(registry) = self.registry.get() {
            return Some(registry.clone());
        }
        let parts = self.parts.as_ref()?;
        let backends = parts.backends.current()?;
        let wake = self.outbox_wake.lock().clone();
        Some(
            self.registry
                .get_or_init(|| {
                    let registry = Registry::new(
                        backends.db,
                        backends.objects,
                        parts.owners.clone(),
                        parts.bases.clone(),
                        parts.subjects.clone(),
                    );
                    Arc::new(match wake {
                        Some(wake) => registry.with_outbox_waker(wake),
                        None => registry,
                    })
                })
                .clone(),
        )
    }
}

/// The process's [`Jobs`], set once the backends are connected.
pub type SharedJobs = Arc<OnceLock<Arc<Jobs>>>;

/// The gRPC API of this service.
#[derive(Clone)]
pub struct Api {
    shared: SharedRegistry,
    jobs: SharedJobs,
}

impl Api {
    pub fn new(shared: SharedRegistry, jobs: SharedJobs) -> Self {
        Self { shared, jobs }
    }

    fn jobs(&self) -> Result<Arc<Jobs>, Status> {
        self.jobs.get().cloned().ok_or_else(|| {
            status(ErrorCode::Unavailable, "the model-factory service is starting: fine-tuning jobs are not ready yet")
        })
    }

    fn registry(&self) -> Result<Arc<Registry>, Status> {
        self.shared.get().ok_or_else(|| {
            status(ErrorCode::Unavailable, "the model-factory service is starting: its database is not connected yet")
        })
    }
}

fn failed(error: RegistryError) -> Status {
    status(error.code, error.message)
}

/// The caller's key from signed metadata, if the request carries it.
fn caller(metadata: &MetadataMap) -> Result<Option<openledger_signing::Key>, Status> {
    let text = |name: &str| metadata.get(name).and_then(|value| value.to_str().ok()).map(str::to_owned);
    let [Some(key), Some(at), Some(signature)] = openledger_signing::headers::CALLER.map(text) else {
        return Ok(None);
    };
    openledger_signing::verify_caller(&key, &at, &signature, openledger_signing::now_unix())
        .map(Some)
        .map_err(|error| failed(error.into()))
}

type JobEventStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::JobEvent, Status>> + Send>>;

#[tonic::async_trait]
impl ModelFactoryService for Api {
    async fn create_fine_tune_job(
        &self,
        request: Request<pb::CreateFineTuneJobRequest>,
    ) -> Result<Response<pb::FineTuneJob>, Status> {
        Ok(Response::new(self.jobs()?.create(request.into_inner()).await.map_err(failed)?))
    }

    async fn get_fine_tune_job(
        &self,
        request: Request<pb::GetFineTuneJobRequest>,
    ) -> Result<Response<pb::FineTuneJob>, Status> {
        Ok(Response::new(self.jobs()?.get(request.get_ref()).await.map_err(failed)?))
    }

    async fn list_fine_tune_jobs(
        &self,
        request: Request<pb::ListFineTuneJobsRequest>,
    ) -> Result<Response<pb::ListFineTuneJobsResponse>, Status> {
        Ok(Response::new(self.jobs()?.list(request.get_ref()).await.map_err(failed)?))
    }

    async fn cancel_fine_tune_job(
        &self,
        request: Request<pb::FineTuneJobActionRequest>,
    ) -> Result<Response<pb::FineTuneJob>, Status> {
        Ok(Response::new(self.jobs()?.cancel(request.get_ref()).await.map_err(failed)?))
    }

    async fn pause_fine_tune_job(
        &self,
        request: Request<pb::FineTuneJobActionRequest>,
    ) -> Result<Response<pb::FineTuneJob>, Status> {
        Ok(Response::new(self.jobs()?.pause(request.get_ref()).await.map_err(failed)?))
    }

    async fn resume_fine_tune_job(
        &self,
        request: Request<pb::FineTuneJobActionRequest>,
    ) -> Result<Response<pb::FineTuneJob>, Status> {
        Ok(Response::new(self.jobs()?.resume(request.get_ref()).await.map_err(failed)?))
    }

    async fn list_job_events(
        &self,
        request: Request<pb::ListJobEventsRequest>,
    ) -> Result<Response<pb::ListJobEventsResponse>, Status> {
        Ok(Response::new(self.jobs()?.events(request.get_ref()).await.map_err(failed)?))
    }

    async fn stream_job_events(
        &self,
        request: Request<pb::StreamJobEventsRequest>,
    ) -> Result<Response<JobEventStream>, Status> {
        let jobs = self.jobs()?;
        let (sink, events) = tokio::sync::mpsc::channel(64);
        let request = request.into_inner();
        // The first answer (not found, not allowed) comes before the stream starts.
        jobs.get(&pb::GetFineTuneJobRequest {
            id: request.job_id.clone(),
            caller_account_id: request.caller_account_id,
        })
        .await
        .map_err(failed)?;
        tokio::spawn(async move {
            let errors = sink.clone();
            if let Err(error) = jobs.stream(request, sink).await {
                let _ = errors.send(Err(error)).await;
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(events);
        Ok(Response::new(Box::pin(futures::StreamExt::map(stream, |event| event.map_err(failed)))))
    }

    async fn list_job_checkpoints(
        &self,
        request: Request<pb::ListJobCheckpointsRequest>,
    ) -> Result<Response<pb::ListJobCheckpointsResponse>, Status> {
        Ok(Response::new(self.jobs()?.checkpoints(request.get_ref()).await.map_err(failed)?))
    }

    async fn import_adapter(
        &self,
        request: Request<pb::ImportAdapterRequest>,
    ) -> Result<Response<pb::Adapter>, Status> {
        Ok(Response::new(self.registry()?.import(request.into_inner()).await.map_err(failed)?))
    }

    async fn get_adapter(&self, request: Request<pb::GetAdapterRequest>) -> Result<Response<pb::Adapter>, Status> {
        Ok(Response::new(self.registry()?.get(&request.into_inner().id).await.map_err(failed)?))
    }

    async fn list_adapters(
        &self,
        request: Request<pb::ListAdaptersRequest>,
    ) -> Result<Response<pb::ListAdaptersResponse>, Status> {
        let key = caller(request.metadata())?;
        let request = request.into_inner();
        let page = request.page.unwrap_or_default();
        let account = request.caller_account_id.map(u128::from).filter(|account| *account != 0);
        let (adapters, page) = self
            .registry()?
            .list(page.page_size, &page.page_token, ListCaller { account, key }, request.include_unlisted)
            .await
            .map_err(failed)?;
        Ok(Response::new(pb::ListAdaptersResponse { adapters, page: Some(page) }))
    }

    async fn update_adapter(
        &self,
        request: Request<pb::UpdateAdapterRequest>,
    ) -> Result<Response<pb::Adapter>, Status> {
        Ok(Response::new(self.registry()?.update(request.into_inner()).await.map_err(failed)?))
    }

    async fn unlist_adapter(
        &self,
        request: Request<pb::UnlistAdapterRequest>,
    ) -> Result<Response<pb::Adapter>, Status> {
        Ok(Response::new(self.registry()?.unlist(request.into_inner()).await.map_err(failed)?))
    }

    async fn list_base_models(
        &self,
        _request: Request<pb::ListBaseModelsRequest>,
    ) -> Result<Response<pb::ListBaseModelsResponse>, Status> {
        Ok(Response::new(pb::ListBaseModelsResponse { models: self.registry()?.base_models().await.map_err(failed)? }))
    }
}
