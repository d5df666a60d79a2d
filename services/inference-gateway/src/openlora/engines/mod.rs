//! The seam between the edge and the engines that generate: [`EngineHost`]. The edge tokenizes,
//! meters and answers; a host runs one sequence per [`EngineHost::generate`] call and streams
//! its events back. `local` runs the engine in this process (embedded mode); `remote` routes to
//! engine replicas by adapter affinity (cluster mode); `server` is what a replica serves.

pub mod local;

use std::sync::Arc;

use async_trait::async_trait;
use openledger_core::ContentHash;
use openledger_ml::{Event, GenerateRequest, MlError, Tokenizer};
use tokio::sync::mpsc::UnboundedReceiver;

/// Where the gateway finds its engine host once it is built (models load after the service
/// starts listening).
pub type EngineSlot = Arc<std::sync::OnceLock<Arc<dyn EngineHost>>>;

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
