//! The distributed event bus on NATS JetStream. One stream holds every subject under the
//! prefix (with the duplicate window doing message-id dedup); each durable name is a pull
//! consumer with explicit acks. Dead-lettering is done by the client, identically to the
//! in-process bus: the consumer has no server-side delivery limit, and a message seen for
//! the `max_deliver + 1`-th time is republished to the dead-letter subject and terminated.

use std::{collections::BTreeMap, time::Duration};

use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
    stream::{self, StorageType},
};
use async_trait::async_trait;
use futures::StreamExt;

use crate::{
    Acker, BusError, BusSettings, Consumer, ConsumerConfig, Delivery, EventBus, OutgoingMessage, PublishAck,
    Settlement, dead_letter, prepare,
};

const MESSAGE_ID_HEADER: &str = "Nats-Msg-Id";

/// The JetStream-backed bus.
#[derive(Clone)]
pub struct JetStreamBus {
    client: async_nats::Client,
    context: jetstream::Context,
    settings: BusSettings,
}

fn backend(error: impl std::fmt::Display) -> BusError {
    BusError::Backend(error.to_string())
}

impl JetStreamBus {
    /// Connects to `url` and creates the stream if it does not exist yet (idempotent).
    pub async fn connect(url: &str, settings: BusSettings) -> Result<Self, BusError> {
        let connect_error = |reason: String| BusError::Connect { url: url.to_owned(), reason };
        let client = async_nats::ConnectOptions::new()
            .name("openledger")
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|error| connect_error(error.to_string()))?;
        let context = jetstream::new(client.clone());
        let bus = Self { client, context, settings };
        bus.ensure_stream().await.map_err(|error| connect_error(error.to_string()))?;
        Ok(bus)
    }

    async fn ensure_stream(&self) -> Result<stream::Stream, BusError> {
        self.context
            .get_or_create_stream(stream::Config {
                name: self.settings.stream.clone(),
                subjects: vec![format!("{}.>", self.settings.subject_prefix)],
                duplicate_window: self.settings.duplicate_window,
                max_messages: i64::try_from(self.settings.max_messages).unwrap_or(i64::MAX),
                storage: StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(backend)
    }

    /// The underlying NATS client (e.g. for request/reply tooling).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }
}

#[async_trait]
impl EventBus for JetStreamBus {
    async fn publish(&self, mut message: OutgoingMessage) -> Result<PublishAck, BusError> {
        prepare(&self.settings, &mut message)?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(MESSAGE_ID_HEADER, message.id.as_str());
        for (name, value) in &message.headers {
            headers.insert(name.as_str(), value.as_str());
        }
        let ack = self
            .context
            .publish_with_headers(message.subject, headers, message.payload)
            .await
            .map_err(backend)?
            .await
            .map_err(backend)?;
        Ok(PublishAck { sequence: ack.sequence, duplicate: ack.duplicate })
    }

    async fn consumer(&self, config: ConsumerConfig) -> Result<Box<dyn Consumer>, BusError> {
        config.validate()?;
        let stream = self.ensure_stream().await?;
        let consumer: PullConsumer = stream
            .get_or_create_consumer(
                &config.durable_name,
                pull::Config {
                    durable_name: Some(config.durable_name.clone()),
                    filter_subject: config.filter_subject.clone(),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: config.ack_wait,
                    max_deliver: -1,
                    max_ack_pending: crate::MAX_ACK_PENDING as i64,
                    deliver_policy: DeliverPolicy::All,
                    ..Default::default()
                },
            )
            .await
            .map_err(backend)?;
        let info = consumer.cached_info();
        if info.config.filter_subject != config.filter_subject {
            return Err(BusError::InvalidConsumer(format!(
                "consumer {:?} already exists with filter {:?}",
                config.durable_name, info.config.filter_subject
            )));
        }
        Ok(Box::new(JetStreamConsumer { bus: self.clone(), config, consumer }))
    }

    async fn check(&self) -> Result<(), BusError> {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(BusError::Backend("not connected to nats-server".into()));
        }
        self.context.get_stream(&self.settings.stream).await.map_err(backend)?;
        Ok(())
    }

    fn settings(&self) -> &BusSettings {
        &self.settings
    }

    fn kind(&self) -> &'static str {
        "jetstream"
    }
}

/// Pulls one message per `next` call: a prefetching stream would hold messages for a handle
/// that may be dropped (they would wait out `ack_wait`) and starve other handles on the same
/// durable, which the in-process bus never does.
struct JetStreamConsumer {
    bus: JetStreamBus,
    config: ConsumerConfig,
    consumer: PullConsumer,
}

/// How long one pull request waits on the server before it is renewed.
const PULL_EXPIRY: Duration = Duration::from_secs(5);

#[async_trait]
impl Consumer for JetStreamConsumer {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        loop {
            let mut batch =
                self.consumer.batch().max_messages(1).expires(PULL_EXPIRY).messages().await.map_err(backend)?;
            let Some(message) = batch.next().await else { continue };
            let message = message.map_err(backend)?;
            let info = message.info().map_err(backend)?;
            let (delivered, sequence) = (u32::try_from(info.delivered).unwrap_or(u32::MAX), info.stream_sequence);
            let (message, acker) = message.split();
            let mut headers = BTreeMap::new();
            let mut id = String::new();
            for (name, values) in message.headers.iter().flat_map(|headers| headers.iter()) {
                let value = values.first().map(|value| value.as_str().to_owned()).unwrap_or_default();
                if AsRef::<str>::as_ref(name) == MESSAGE_ID_HEADER {
                    id = value;
                } else {
                    headers.insert(name.to_string(), value);
                }
            }
            let delivery = Delivery {
                subject: message.subject.to_string(),
                id,
                payload: message.payload,
                headers,
                delivered,
                sequence,
                acker: Box::new(JetStreamAcker(acker)),
            };
            if delivered <= self.config.max_deliver {
                return Ok(delivery);
            }
            let copy = dead_letter(&self.bus.settings, &self.config.durable_name, &delivery);
            self.bus.publish(copy).await?;
            tracing::warn!(consumer = %self.config.durable_name, subject = %delivery.subject, message_id = %delivery.id, "message dead-lettered after max deliveries");
            delivery.term().await?;
        }
    }
}

struct JetStreamAcker(jetstream::message::Acker);

#[async_trait]
impl Acker for JetStreamAcker {
    async fn settle(&self, settlement: Settlement) -> Result<(), BusError> {
        match settlement {
            // Confirmed by the server, so an acked message is never redelivered afterwards.
            Settlement::Ack => self.0.double_ack().await,
            Settlement::Nak(delay) => self.0.ack_with(AckKind::Nak((!delay.is_zero()).then_some(delay))).await,
            Settlement::Term => self.0.double_ack_with(AckKind::Term).await,
        }
        .map_err(backend)
    }
}
