//! `ol.inference.completed`: what attribution and settlement need of a paid inference, written
//! to the gateway's outbox (the runtime's relay publishes it) just before its fee is captured.

use std::{sync::Arc, time::SystemTime};

use openledger_proto::{
    common::v1::Hash,
    events::v1::{Completion, InferenceAdapter, InferenceCompleted},
    uint128,
};
use openledger_runtime::BackendsHandle;
use openledger_store::outbox::{NewEvent, enqueue};
use prost::Message;
use tokio::sync::Notify;

use super::{catalog::Choice, engines::BaseModel, keys::Caller, metering::Tariff};

pub const SUBJECT_INFERENCE_COMPLETED: &str = "ol.inference.completed";
const PRODUCER: &str = "inference-gateway";
/// Attempts at writing the event before it is logged as lost.
pub const ENQUEUE_ATTEMPTS: u32 = 5;

/// A finished, paid inference.
pub struct Completed<'a> {
    pub inference_id: &'a str,
    pub base: &'a BaseModel,
    pub choice: &'a Choice,
    pub caller: &'a Caller,
    pub prompt: &'a [u32],
    /// Token ids, text and finish reason of each choice.
    pub completions: Vec<(&'a [u32], &'a str, &'a str)>,
    pub tariff: &'a Tariff,
    pub fee: u128,
    pub started_at: SystemTime,
}

/// Writes inference events to the outbox.
#[derive(Clone)]
pub struct Events {
    backends: BackendsHandle,
    wake: Arc<Notify>,
}

fn timestamp(at: SystemTime) -> prost_types::Timestamp {
    let since = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp { seconds: since.as_secs() as i64, nanos: since.subsec_nanos() as i32 }
}

fn hash(bytes: &[u8]) -> Option<Hash> {
    Some(Hash { value: bytes.to_vec() })
}

impl Completed<'_> {
    pub fn to_event(&self) -> InferenceCompleted {
        let prompt_text = self.base.tokenizer.decode(self.prompt).unwrap_or_default();
        InferenceCompleted {
            inference_id: self.inference_id.to_owned(),
            base_model: self.base.id.clone(),
            base_model_hash: hash(self.base.hash.as_bytes()),
            adapters: self
                .choice
                .adapters
                .iter()
                .map(|adapter| InferenceAdapter {
                    adapter_id: adapter.id.clone(),
                    weight: adapter.weight,
                    file_hashes: adapter.file_hashes.iter().map(|h| Hash { value: h.as_bytes().to_vec() }).collect(),
                    owner_account_id: uint128(adapter.owner_account_id),
                })
                .collect(),
            app_account_id: uint128(self.caller.account_id),
            api_key_id: self.caller.key_id.clone(),
            prompt_token_ids: self.prompt.to_vec(),
            prompt_text,
            completions: self
                .completions
                .iter()
                .map(|(ids, text, finish)| Completion {
                    token_ids: ids.to_vec(),
                    text: (*text).to_owned(),
                    finish_reason: (*finish).to_owned(),
                })
                .collect(),
            tokens_in: self.prompt.len() as u32,
            tokens_out: self.completions.iter().map(|(ids, _, _)| ids.len() as u32).sum(),
            fee: uint128(self.fee),
            price_in: uint128(self.tariff.price_in),
            price_out: uint128(self.tariff.price_out),
            started_at: Some(timestamp(self.started_at)),
            completed_at: Some(timestamp(SystemTime::now())),
        }
    }
}

impl Events {
    pub fn new(backends: BackendsHandle, wake: Arc<Notify>) -> Self {
        Self { backends, wake }
    }

    /// Writes the event (retrying while the database is away); false, logged, when it cannot.
    pub async fn completed(&self, completed: Completed<'_>) -> bool {
        let payload = completed.to_event().encode_to_vec();
        for attempt in 0..ENQUEUE_ATTEMPTS {
            let Some(backends) = self.backends.current() else {
                tokio::time::sleep(std::time::Duration::from_millis(100 << attempt)).await;
                continue;
            };
            let event = NewEvent::new(SUBJECT_INFERENCE_COMPLETED, payload.clone());
            match enqueue(&backends.db, PRODUCER, event).await {
                Ok(_) => {
                    self.wake.notify_one();
                    return true;
                }
                Err(error) => {
                    tracing::warn!(inference_id = completed.inference_id, attempt, %error, "writing the inference event failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100 << attempt)).await;
                }
            }
        }
        tracing::error!(
            inference_id = completed.inference_id,
            "ol.inference.completed was not written: the fee is not captured (the hold expires unpaid)"
        );
        false
    }
}
