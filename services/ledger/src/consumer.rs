//! The ledger's consumer of `ol.attribution.computed` (durable name `ledger-settlement`):
//! settlement driven by attribution, exactly once.
//!
//! It takes up to `SETTLEMENT_BATCH` deliveries, waiting at most `SETTLEMENT_LINGER` after the
//! first for the others, settles them all in one transaction with the economics in force, and
//! only then settles the deliveries with the bus:
//! - settled now, or settled before (a duplicate or a redelivery: the transfer ids derive from
//!   the inference id, so nothing is paid twice): ack;
//! - a message that does not decode, or is refused for good (no capture, bad weights, settled
//!   before with other payouts): published to `ol.dlq.ledger-settlement` with its reason,
//!   counted, logged at error, and terminated: it never settles;
//! - a database error (for the whole batch) or a failed payout: nak, to come again after
//!   `SETTLEMENT_RETRY_DELAY`; after the consumer's `max_deliver` the bus dead-letters it.
//!
//! A process killed between the commit and the acks has its deliveries come again after
//! `ack_wait`, and they find their inferences settled.

use std::sync::Arc;

use openledger_bus::{BusError, Consumer, ConsumerConfig, Delivery, EventBus, dead_letter_now};
use openledger_proto::{events::v1::AttributionComputed, u128_of};
use prometheus_client::{metrics::counter::Counter, registry::Registry};
use prost::Message;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::{
    books::Ledger,
    limits::{CAPTURE_RETRY_STEP, SETTLEMENT_BATCH, SETTLEMENT_LINGER, SETTLEMENT_MAX_DELIVER, SETTLEMENT_RETRY_DELAY},
    settlement::{Refusal, SettleOrder, SettleOutcome},
};

/// The durable consumer's name.
pub const CONSUMER: &str = "ledger-settlement";
/// What it consumes.
pub const SUBJECT_ATTRIBUTION_COMPUTED: &str = "ol.attribution.computed";
/// Pause before reopening the consumer after a bus error.
const REOPEN_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// How long an attribution whose capture has not come waits before its next try: 50 ms after
/// the first delivery, growing by 50 ms a delivery up to `SETTLEMENT_RETRY_DELAY` (so
/// `SETTLEMENT_MAX_DELIVER` deliveries still cover the gateway's 900 s hold).
pub fn capture_wait(delivered: u32) -> std::time::Duration {
    (CAPTURE_RETRY_STEP * delivered.max(1)).min(SETTLEMENT_RETRY_DELAY)
}

/// The consumer's configuration: the bus's default `ack_wait`, `SETTLEMENT_MAX_DELIVER`.
pub fn consumer_config() -> ConsumerConfig {
    ConsumerConfig::new(CONSUMER, SUBJECT_ATTRIBUTION_COMPUTED).max_deliver(SETTLEMENT_MAX_DELIVER)
}

/// What the consumer counts, by how each delivery ended.
#[derive(Clone, Debug, Default)]
pub struct SettlementMetrics {
    pub settled: Counter,
    pub already_settled: Counter,
    pub dead_lettered: Counter,
    pub retried: Counter,
}

impl SettlementMetrics {
    /// Registers the counters (`…_settlement_deliveries_<outcome>_total`).
    pub fn register(&self, registry: &mut Registry) {
        for (name, help, counter) in [
            ("deliveries_settled", "attribution deliveries whose inference was settled now", &self.settled),
            (
                "deliveries_already_settled",
                "attribution deliveries whose inference had been settled before (duplicates, redeliveries)",
                &self.already_settled,
            ),
            (
                "deliveries_dead_lettered",
                "attribution deliveries that cannot be settled (poison messages), dead-lettered",
                &self.dead_lettered,
            ),
            ("deliveries_retried", "attribution deliveries to settle again later", &self.retried),
        ] {
            registry.register(name, help, counter.clone());
        }
    }
}

/// The attribution event in `delivery` as an order, or why it can never be one.
fn order_of(delivery: &Delivery) -> Result<SettleOrder, String> {
    let event = AttributionComputed::decode(&delivery.payload[..])
        .map_err(|error| format!("the message is not an AttributionComputed: {error}"))?;
    let owner = u128_of(event.model_owner_account_id.as_ref());
    Ok(event.weights.iter().fold(SettleOrder::new(event.inference_id.clone(), owner), |order, weight| {
        order.weight(u128_of(weight.contributor_account_id.as_ref()), &weight.contributor, weight.weight_ppb)
    }))
}

/// Consumes `config` on `bus` until `shutdown`, settling on `ledger`; `outbox` is woken after
/// settlements so their events leave at once.
pub async fn consume_attributions(
    ledger: Arc<Ledger>,
    bus: Arc<dyn EventBus>,
    config: ConsumerConfig,
    metrics: SettlementMetrics,
    outbox: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let name = config.durable_name.clone();
    loop {
        let consumer = tokio::select! {
            () = shutdown.cancelled() => return,
            opened = bus.consumer(config.clone()) => opened,
        };
        let failure = match consumer {
            Err(error) => error,
            Ok(consumer) => {
                // A reader task owns the consumer, so the linger's timeout only ever cancels a
                // channel receive, never a pull in flight (whose message would wait ack_wait).
                let (sender, mut deliveries) = mpsc::channel(SETTLEMENT_BATCH);
                let reader = tokio::spawn(read_into(consumer, sender));
                let settled = settle_from(&mut deliveries, &ledger, bus.as_ref(), &name, &metrics, &outbox, &shutdown);
                let failure = settled.await;
                reader.abort();
                match failure {
                    Some(error) => error,
                    None => return,
                }
            }
        };
        tracing::warn!(consumer = %name, error = %failure, "the settlement consumer failed; reopening it");
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(REOPEN_PAUSE) => {}
        }
    }
}

/// Forwards the consumer's deliveries until it fails or nobody listens.
async fn read_into(mut consumer: Box<dyn Consumer>, sender: mpsc::Sender<Result<Delivery, BusError>>) {
    loop {
        let next = consumer.next().await;
        let failed = next.is_err();
        if sender.send(next).await.is_err() || failed {
            return;
        }
    }
}

/// Settles batches from `deliveries` until `shutdown` (`None`) or the bus fails (the error).
async fn settle_from(
    deliveries: &mut mpsc::Receiver<Result<Delivery, BusError>>,
    ledger: &Ledger,
    bus: &dyn EventBus,
    consumer: &str,
    metrics: &SettlementMetrics,
    outbox: &Notify,
    shutdown: &CancellationToken,
) -> Option<BusError> {
    loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => return None,
            first = deliveries.recv() => first.unwrap_or(Err(BusError::Closed)),
        };
        let mut failed = None;
        let mut batch = Vec::with_capacity(SETTLEMENT_BATCH);
        match first {
            Ok(delivery) => batch.push(delivery),
            Err(error) => failed = Some(error),
        }
        let linger = tokio::time::Instant::now() + SETTLEMENT_LINGER;
        while failed.is_none() && batch.len() < SETTLEMENT_BATCH {
            match tokio::time::timeout_at(linger, deliveries.recv()).await {
                Ok(Some(Ok(delivery))) => batch.push(delivery),
                Ok(Some(Err(error))) => failed = Some(error),
                Ok(None) => failed = Some(BusError::Closed),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            settle_batch(ledger, bus, consumer, batch, metrics).await;
            outbox.notify_one();
        }
        if failed.is_some() {
            return failed;
        }
    }
}

/// Settles one batch of deliveries in one transaction, then acks, naks or dead-letters each.
async fn settle_batch(
    ledger: &Ledger,
    bus: &dyn EventBus,
    consumer: &str,
    deliveries: Vec<Delivery>,
    metrics: &SettlementMetrics,
) {
    let mut orders = Vec::with_capacity(deliveries.len());
    let mut settled_by = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        match order_of(&delivery) {
            Ok(order) => {
                orders.push(order);
                settled_by.push(delivery);
            }
            Err(reason) => dead_letter(bus, consumer, delivery, &reason, metrics).await,
        }
    }
    if orders.is_empty() {
        return;
    }
    let now = Ledger::now_ns();
    let outcomes = match ledger.parameters_at(now).await {
        Ok(economics) => ledger.settle_inferences_at(&orders, &economics, now).await,
        Err(error) => Err(error),
    };
    let outcomes = match outcomes {
        Ok(outcomes) => outcomes,
        Err(error) => {
            tracing::warn!(%error, deliveries = settled_by.len(), "settling a batch failed; it will come again");
            for delivery in settled_by {
                metrics.retried.inc();
                report(delivery.nak(SETTLEMENT_RETRY_DELAY).await);
            }
            return;
        }
    };
    for ((delivery, order), outcome) in settled_by.into_iter().zip(&orders).zip(outcomes) {
        match outcome {
            SettleOutcome::Settled(settlement) => {
                let counter = if settlement.already_settled { &metrics.already_settled } else { &metrics.settled };
                counter.inc();
                report(delivery.ack().await);
            }
            SettleOutcome::Refused(refusal) if refusal.is_permanent() => {
                let reason = format!("inference {:?}: {refusal}", order.inference_id);
                dead_letter(bus, consumer, delivery, &reason, metrics).await;
            }
            SettleOutcome::Refused(refusal) => {
                // A capture not made yet is usually milliseconds away (the gateway writes its
                // event just before it captures): try again soon, then back off.
                let delay = match refusal {
                    Refusal::NotCapturedYet => capture_wait(delivery.delivered),
                    _ => SETTLEMENT_RETRY_DELAY,
                };
                tracing::debug!(inference_id = %order.inference_id, %refusal, ?delay, "settlement refused for now; it will come again");
                metrics.retried.inc();
                report(delivery.nak(delay).await);
            }
        }
    }
}

async fn dead_letter(
    bus: &dyn EventBus,
    consumer: &str,
    delivery: Delivery,
    reason: &str,
    metrics: &SettlementMetrics,
) {
    tracing::error!(consumer, message_id = %delivery.id, subject = %delivery.subject, %reason, "poison attribution message dead-lettered");
    metrics.dead_lettered.inc();
    report(dead_letter_now(bus, consumer, delivery, reason).await);
}

fn report(settled: Result<(), BusError>) {
    if let Err(error) = settled {
        tracing::warn!(%error, "settling a delivery with the bus failed; it will come again");
    }
}
