//! The ledger's consumer of `ol.inference.completed` (durable name `ledger-capture`): the
//! durable path of an inference's capture.
//!
//! The gateway writes an inference's event to its outbox just before it captures the fee from
//! the hold, and retries the capture for a few seconds. When the ledger is away longer, or the
//! gateway dies between the two, the answered inference would never be charged (and so never
//! settled). This consumer closes that gap: an event whose capture is not in the books
//! [`LATE_CAPTURE_AFTER`] after the inference completed is captured here, with the fee the
//! event carries (what the gateway metered and answered as usage). Both paths make the same
//! transfer id (it derives from the inference id), so a fee is captured once whichever runs
//! first; the wait only keeps the common case (the gateway's own capture, milliseconds after
//! its event) from racing.
//!
//! Each delivery ends as:
//! - captured before (nearly always: by the gateway), or captured now: ack;
//! - no hold, or its hold already voided or expired (the ledger voids holds after their
//!   timeout): ack, counted as uncaptured: nothing was charged and nothing is owed;
//! - not due yet: retried when it is;
//! - a database error: retried after [`CAPTURE_RETRY_DELAY`];
//! - a message that does not decode, or a fee beyond its hold: dead-lettered.

use std::{sync::Arc, time::Duration};

use openledger_bus::{ConsumerConfig, EventBus};
use openledger_proto::{events::v1::InferenceCompleted, u128_of};
use openledger_runtime::consume::{Handled, consume};
use prometheus_client::{metrics::counter::Counter, registry::Registry};
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::{books::Ledger, operations::LateCapture};

/// The durable consumer's name.
pub const CONSUMER: &str = "ledger-capture";
/// What it consumes.
pub const SUBJECT_INFERENCE_COMPLETED: &str = "ol.inference.completed";
/// How long after an inference completed its capture is left to the gateway (whose retries
/// span about 3 s).
pub const LATE_CAPTURE_AFTER: Duration = Duration::from_secs(5);
/// Pause before another try after a database error.
pub const CAPTURE_RETRY_DELAY: Duration = Duration::from_secs(2);
/// Deliveries before the bus dead-letters an event: 900 s (the gateway's hold) at
/// [`CAPTURE_RETRY_DELAY`], and more.
pub const CAPTURE_MAX_DELIVER: u32 = 500;

/// The consumer's configuration.
pub fn consumer_config() -> ConsumerConfig {
    ConsumerConfig::new(CONSUMER, SUBJECT_INFERENCE_COMPLETED).max_deliver(CAPTURE_MAX_DELIVER)
}

/// What the consumer counts, by how each delivery ended.
#[derive(Clone, Debug, Default)]
pub struct CaptureMetrics {
    pub captured: Counter,
    pub already_captured: Counter,
    pub uncaptured: Counter,
    pub dead_lettered: Counter,
}

impl CaptureMetrics {
    /// Registers the counters (`…_capture_deliveries_<outcome>_total`).
    pub fn register(&self, registry: &mut Registry) {
        for (name, help, counter) in [
            (
                "deliveries_captured",
                "completed inferences whose fee this consumer captured (the gateway could not)",
                &self.captured,
            ),
            (
                "deliveries_already_captured",
                "completed inferences captured before (by the gateway)",
                &self.already_captured,
            ),
            (
                "deliveries_uncaptured",
                "completed inferences without a hold to capture from (none, voided or expired): nothing charged",
                &self.uncaptured,
            ),
            (
                "deliveries_dead_lettered",
                "completion events that cannot be captured, dead-lettered",
                &self.dead_lettered,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
    }
}

/// Consumes `config` on `bus` until `shutdown`, capturing on `ledger`.
pub async fn consume_completions(
    ledger: Arc<Ledger>,
    bus: Arc<dyn EventBus>,
    config: ConsumerConfig,
    metrics: CaptureMetrics,
    shutdown: CancellationToken,
) {
    consume(bus, config, shutdown, |delivery| {
        let (ledger, metrics, payload) = (ledger.clone(), metrics.clone(), delivery.payload.clone());
        async move { handle(&ledger, &payload, Ledger::now_ns(), &metrics).await }
    })
    .await
}

/// What to do with one completion event at `now_ns`.
pub async fn handle(ledger: &Ledger, payload: &[u8], now_ns: u64, metrics: &CaptureMetrics) -> Handled {
    let event = match InferenceCompleted::decode(payload) {
        Ok(event) => event,
        Err(error) => {
            metrics.dead_lettered.inc();
            return Handled::Poison(format!("the message is not an InferenceCompleted: {error}"));
        }
    };
    let completed_ns = event.completed_at.map_or(0, |at| {
        u64::try_from(at.seconds).unwrap_or(0).saturating_mul(1_000_000_000) + u64::try_from(at.nanos).unwrap_or(0)
    });
    let due_ns = completed_ns.saturating_add(LATE_CAPTURE_AFTER.as_nanos() as u64);
    let fee = u128_of(event.fee.as_ref());
    match ledger.capture_completed_at(&event.inference_id, fee, now_ns, due_ns).await {
        Ok(LateCapture::AlreadyCaptured) => {
            metrics.already_captured.inc();
            Handled::Ack
        }
        Ok(LateCapture::Captured) => {
            tracing::info!(inference_id = %event.inference_id, fee, "captured an inference's fee the gateway had not");
            metrics.captured.inc();
            Handled::Ack
        }
        Ok(LateCapture::NotDue) => {
            Handled::Retry(Duration::from_nanos(due_ns.saturating_sub(now_ns)).max(Duration::from_millis(100)))
        }
        Ok(LateCapture::Uncaptured(why)) => {
            tracing::warn!(inference_id = %event.inference_id, fee, why, "an answered inference was never charged");
            metrics.uncaptured.inc();
            Handled::Ack
        }
        Err(error) if error.is_permanent() => {
            metrics.dead_lettered.inc();
            Handled::Poison(format!("inference {:?}: {error}", event.inference_id))
        }
        Err(error) => {
            tracing::warn!(inference_id = %event.inference_id, %error, "capturing failed; it will come again");
            Handled::Retry(CAPTURE_RETRY_DELAY)
        }
    }
}
