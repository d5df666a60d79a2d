//! A service's durable consumer loop: each delivery handled in turn, then acknowledged, tried
//! again later, or dead-lettered at once when it can never be handled. The loop reopens the
//! consumer after a bus error (with a pause) and stops at shutdown.

use std::{future::Future, sync::Arc, time::Duration};

use openledger_bus::{ConsumerConfig, Delivery, EventBus, dead_letter_now};
use tokio_util::sync::CancellationToken;

/// What became of one delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handled {
    /// Done (or done before): acknowledge.
    Ack,
    /// Not now: deliver again after this long (counts towards `max_deliver`).
    Retry(Duration),
    /// Never: dead-letter it with this reason.
    Poison(String),
}

/// Pause before reopening a consumer after a bus error.
pub const REOPEN_PAUSE: Duration = Duration::from_secs(1);

/// Runs `handle` on every delivery of `config`'s consumer until `shutdown`.
pub async fn consume<H, F>(bus: Arc<dyn EventBus>, config: ConsumerConfig, shutdown: CancellationToken, mut handle: H)
where
    H: FnMut(&Delivery) -> F,
    F: Future<Output = Handled>,
{
    let name = config.durable_name.clone();
    loop {
        let mut consumer = tokio::select! {
            () = shutdown.cancelled() => return,
            opened = bus.consumer(config.clone()) => match opened {
                Ok(consumer) => consumer,
                Err(error) => {
                    tracing::warn!(consumer = %name, %error, "opening the consumer failed; trying again");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(REOPEN_PAUSE) => continue,
                    }
                }
            },
        };
        loop {
            let delivery = tokio::select! {
                () = shutdown.cancelled() => return,
                next = consumer.next() => next,
            };
            let delivery = match delivery {
                Ok(delivery) => delivery,
                Err(error) => {
                    tracing::warn!(consumer = %name, %error, "the consumer failed; reopening it");
                    tokio::time::sleep(REOPEN_PAUSE).await;
                    break;
                }
            };
            let (id, subject) = (delivery.id.clone(), delivery.subject.clone());
            let settled = match handle(&delivery).await {
                Handled::Ack => delivery.ack().await,
                Handled::Retry(delay) => delivery.nak(delay).await,
                Handled::Poison(reason) => {
                    tracing::error!(consumer = %name, message_id = %id, %subject, %reason, "poison message dead-lettered");
                    dead_letter_now(bus.as_ref(), &name, delivery, &reason).await
                }
            };
            if let Err(error) = settled {
                tracing::warn!(consumer = %name, message_id = %id, %error, "settling a delivery failed; it will come again");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use openledger_bus::{BusSettings, HEADER_DEAD_LETTER_REASON, InProcessBus, OutgoingMessage};

    use super::*;

    /// Acked messages are done, a retried one comes again, and poison lands on the
    /// dead-letter subject with its reason, delivered no more.
    #[tokio::test]
    async fn poison_is_dead_lettered_once_and_retries_come_again() {
        let bus: Arc<dyn EventBus> = Arc::new(InProcessBus::new(BusSettings::default()));
        for id in ["good", "later", "poison"] {
            bus.publish(OutgoingMessage::new("ol.test.work", id, id.as_bytes().to_vec())).await.unwrap();
        }
        let mut dead = bus.consumer(ConsumerConfig::new("dlq-reader", "ol.dlq.>")).await.unwrap();
        let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let shutdown = CancellationToken::new();
        let worker = tokio::spawn({
            let (bus, seen, shutdown) = (bus.clone(), seen.clone(), shutdown.clone());
            async move {
                consume(bus, ConsumerConfig::new("worker", "ol.test.work"), shutdown, |delivery| {
                    let (id, delivered, seen) = (delivery.id.clone(), delivery.delivered, seen.clone());
                    async move {
                        seen.lock().push((id.clone(), delivered));
                        match id.as_str() {
                            "later" if delivered == 1 => Handled::Retry(Duration::from_millis(10)),
                            "poison" => Handled::Poison("not a work item".into()),
                            _ => Handled::Ack,
                        }
                    }
                })
                .await
            }
        });
        let letter = tokio::time::timeout(Duration::from_secs(10), dead.next()).await.unwrap().unwrap();
        assert_eq!(letter.subject, "ol.dlq.worker");
        assert_eq!(letter.payload.as_ref(), b"poison");
        assert_eq!(letter.headers.get(HEADER_DEAD_LETTER_REASON).map(String::as_str), Some("not a work item"));
        letter.ack().await.unwrap();
        for _ in 0..200 {
            if seen.lock().iter().any(|(id, delivered)| id == "later" && *delivered == 2) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        shutdown.cancel();
        worker.await.unwrap();
        let seen = seen.lock().clone();
        let count = |name: &str| seen.iter().filter(|(id, _)| id == name).count();
        assert_eq!((count("good"), count("later"), count("poison")), (1, 2, 1), "{seen:?}");
    }
}
