//! The seam between the edge and the engines that generate: [`EngineHost`]. The edge tokenizes,
//! meters and answers; a host runs one sequence per [`EngineHost::generate`] call and streams
//! its events back. `local` runs the engine in this process (embedded mode); `remote` routes to
//! engine replicas by adapter affinity (cluster mode), the replicas of a Kubernetes Service
//! found by `discovery`; `server` is what a replica serves.

pub mod discovery;
pub mod host;
pub mod local;
pub mod remote;
pub mod ring;
pub mod server;
#[cfg(test)]
mod tests;

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use openledger_core::{ContentHash, ErrorCode};
use openledger_ml::{Event, GenerateRequest, MlError, Tokenizer};
use tokio::sync::mpsc::UnboundedReceiver;

pub use host::{HostError, from_config, missing_model_message};

/// The base model every engine of a host serves.
#[derive(Clone, Debug)]
pub struct BaseModel {
    /// What `model` names for it (the file name without its extension, e.g.
    /// `SmolLM2-135M-Instruct.Q4_1`).
    pub id: String,
    /// BLAKE3 of the model file: what adapters and attribution are bound to.
    pub hash: ContentHash,
    /// Most tokens one sequence may hold (prompt + output).
    pub context_length: usize,
    pub tokenizer: Arc<Tokenizer>,
}

/// One running generation's events: tokens, then `Done` or `Error`. Dropping it cancels the
/// generation at once (in this process or across the gRPC hop).
pub struct EngineStream {
    pub events: UnboundedReceiver<Event>,
    /// Whatever cancels the generation when dropped.
    _cancel_on_drop: Box<dyn Send + Sync>,
}

impl EngineStream {
    pub fn new(events: UnboundedReceiver<Event>, cancel_on_drop: impl Send + Sync + 'static) -> Self {
        Self { events, _cancel_on_drop: Box::new(cancel_on_drop) }
    }
}

impl std::fmt::Debug for EngineStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineStream").finish_non_exhaustive()
    }
}

/// Where generations run.
#[async_trait]
pub trait EngineHost: Send + Sync + 'static {
    fn base(&self) -> &BaseModel;

    /// Starts one sequence. `request.prompt` is `Prompt::Tokens` (the edge tokenized it).
    /// Fails at once with `Overloaded` when no engine can queue it, `InvalidRequest` /
    /// `ContextOverflow` for bad input, `NotFound` for an adapter no engine can load.
    async fn generate(&self, inference_id: &str, request: GenerateRequest) -> Result<EngineStream, MlError>;

    /// Engines and the requests each holds (for `/readyz` details and metrics).
    fn describe(&self) -> Vec<EngineStatus>;
}

/// One engine as its host sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineStatus {
    /// `in-process`, or the replica's URL.
    pub name: String,
    pub healthy: bool,
    pub running: usize,
    pub waiting: usize,
}

/// The platform error code of an engine error: the one mapping behind both the gRPC status a
/// replica answers with and (through `edge::error`) the REST status.
pub fn error_code(error: &MlError) -> ErrorCode {
    match error {
        MlError::NotFound { .. } => ErrorCode::NotFound,
        MlError::InvalidRequest(_)
        | MlError::ContextOverflow { .. }
        | MlError::AdapterMismatch { .. }
        | MlError::Corrupt { .. }
        | MlError::Unsupported { .. } => ErrorCode::InvalidArgument,
        MlError::Overloaded(_) | MlError::InsufficientMemory(_) => ErrorCode::ResourceExhausted,
        MlError::EngineStopped | MlError::Fetch { .. } => ErrorCode::Unavailable,
        MlError::Tensor(_) | MlError::Diverged(_) | MlError::Checkpoint(_) | MlError::Io { .. } => ErrorCode::Internal,
    }
}

/// The engine host once it has started. The edge binds and serves while the base model loads
/// (or replicas are checked), so routes read the host from here: [`EngineSlot::get`] says why
/// there is none yet.
#[derive(Clone, Default)]
pub struct EngineSlot {
    state: Arc<OnceLock<Result<Arc<dyn EngineHost>, String>>>,
}

impl EngineSlot {
    /// A slot holding `host` from the start (tests, embedders that built one themselves).
    pub fn ready(host: Arc<dyn EngineHost>) -> Self {
        let slot = Self::default();
        slot.fill(Ok(host));
        slot
    }

    /// Sets the host, or why there is none (e.g. [`missing_model_message`]); only the first
    /// call counts.
    pub fn fill(&self, host: Result<Arc<dyn EngineHost>, String>) {
        let _ = self.state.set(host);
    }

    /// The host, or a message for a 503: still starting, or why there is no engine.
    pub fn get(&self) -> Result<Arc<dyn EngineHost>, String> {
        match self.state.get() {
            Some(state) => state.clone(),
            None => Err("the engine is still loading the base model; retry in a few seconds".into()),
        }
    }
}
