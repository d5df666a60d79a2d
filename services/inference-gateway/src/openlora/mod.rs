//! OpenLoRA: the gateway's own gRPC API (`InferenceService`) and the place the OpenLoRA engine
//! host lands next: loading base models and LoRA adapters, scheduling requests onto engines,
//! and the OpenAI-compatible routes `/v1/chat/completions`, `/v1/completions` and
//! `/v1/models`, which join the edge's router from here like the `ledger` and `datanets`
//! routes do. Until then every RPC answers `UNIMPLEMENTED`.

use openledger_proto::inference::v1::inference_service_server::InferenceService;
use openledger_runtime::BackendsHandle;

/// The gRPC API of the gateway.
#[derive(Clone)]
pub struct Api {
    #[allow(dead_code)]
    backends: BackendsHandle,
}

impl Api {
    pub fn new(backends: BackendsHandle) -> Self {
        Self { backends }
    }
}

impl InferenceService for Api {}
