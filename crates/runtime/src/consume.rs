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
