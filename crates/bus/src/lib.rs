//! The platform's event bus: at-least-once delivery with message-id dedup, durable named
//! consumers with explicit ack, nak with delay, redelivery after an ack timeout, and a
//! dead-letter subject once a message has been delivered `max_deliver` times. Two
//! implementations with the same semantics, checked by one conformance suite: NATS JetStream
//! (distributed) and in-process (embedded). Outbox relaying lives in `openledger-store`.

mod inprocess;
mod jetstream;
mod subject;

use std::{collections::BTreeMap, fmt, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;

pub use inprocess::InProcessBus;
pub use jetstream::JetStreamBus;
pub use subject::{subject_matches, validate_subject};

/// Header naming the subject a dead-lettered message was first published on.
pub const HEADER_ORIGINAL_SUBJECT: &str = "Ol-Original-Subject";
/// Header naming the consumer that gave up on a dead-lettered message.
pub const HEADER_DEAD_LETTER_CONSUMER: &str = "Ol-Dead-Letter-Consumer";
/// Largest payload accepted (the nats-server default `max_payload`).
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Most messages a consumer has delivered and not yet acked before it pauses new deliveries.
pub const MAX_ACK_PENDING: usize = 1000;

/// Errors of the event bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot reach the event bus at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("invalid subject {subject:?}: {reason}")]
    InvalidSubject { subject: String, reason: String },
    #[error("message of {size} bytes exceeds the {limit}-byte payload limit")]
    PayloadTooLarge { size: usize, limit: usize },
    #[error("invalid consumer configuration: {0}")]
    InvalidConsumer(String),
    #[error("event bus request failed: {0}")]
    Backend(String),
    #[error("the event bus is closed")]
    Closed,
}

/// Settings shared by both implementations.
#[derive(Clone, Debug)]
pub struct BusSettings {
    /// JetStream stream holding every subject under `subject_prefix`.
    pub stream: String,
    /// Root token of every subject (`ol`).
    pub subject_prefix: String,
    /// Window in which a repeated message id is dropped.
    pub duplicate_window: Duration,
    /// Oldest messages are discarded beyond this count.
    pub max_messages: usize,
}

impl Default for BusSettings {
    fn default() -> Self {
        Self {
            stream: "OPENLEDGER".to_owned(),
            subject_prefix: "ol".to_owned(),
            duplicate_window: Duration::from_secs(120),
            max_messages: 1_000_000,
        }
    }
}

impl BusSettings {
    /// Where messages go after `max_deliver` deliveries without an ack.
    pub fn dead_letter_subject(&self, durable_name: &str) -> String {
        format!("{}.dlq.{durable_name}", self.subject_prefix)
    }
}

/// A message to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingMessage {
    pub subject: String,
    /// Unique id of the event; a repeat inside the duplicate window is dropped.
    pub id: String,
    pub payload: Bytes,
    pub headers: BTreeMap<String, String>,
}

impl OutgoingMessage {
    pub fn new(subject: impl Into<String>, id: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self { subject: subject.into(), id: id.into(), payload: payload.into(), headers: BTreeMap::new() }
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }
}

/// The bus's answer to a publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishAck {
    /// Position of the message in the stream.
    pub sequence: u64,
    /// True when the id was seen inside the duplicate window and the message was dropped.
    pub duplicate: bool,
}

/// A durable consumer's settings.
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    /// Survives restarts (JetStream) and is shared by every handle with the same name.
    pub durable_name: String,
    /// Subject filter with NATS wildcards (`ol.datanet.>`).
    pub filter_subject: String,
    /// Time after a delivery at which an unacked message is delivered again.
    pub ack_wait: Duration,
    /// Deliveries before the message moves to the dead-letter subject.
    pub max_deliver: u32,
}

impl ConsumerConfig {
    pub fn new(durable_name: impl Into<String>, filter_subject: impl Into<String>) -> Self {
        Self {
            durable_name: durable_name.into(),
            filter_subject: filter_subject.into(),
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
        }
    }

    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    pub fn max_deliver(mut self, max_deliver: u32) -> Self {
        self.max_deliver = max_deliver;
        self
    }

    fn validate(&self) -> Result<(), BusError> {
        let durable_ok = !self.durable_name.is_empty()
            && self.durable_name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !durable_ok {
            return Err(BusError::InvalidConsumer(format!(
                "durable name {:?} must be letters, digits, '_' or '-'",
                self.durable_name
            )));
        }
        if self.max_deliver == 0 {
            return Err(BusError::InvalidConsumer("max_deliver must be at least 1".into()));
        }
        if self.ack_wait.is_zero() {
            return Err(BusError::InvalidConsumer("ack_wait must be positive".into()));
        }
        validate_subject(&self.filter_subject, true)
    }
}

/// One delivery of a message to a consumer; settle it with `ack`, `nak` or `term`.
pub struct Delivery {
    pub subject: String,
    pub id: String,
    pub payload: Bytes,
    pub headers: BTreeMap<String, String>,
    /// 1 on the first delivery, then 2, 3, … up to the consumer's `max_deliver`.
    pub delivered: u32,
    /// Position of the message in the stream.
    pub sequence: u64,
    acker: Box<dyn Acker>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("subject", &self.subject)
            .field("id", &self.id)
            .field("delivered", &self.delivered)
            .field("sequence", &self.sequence)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// Done: the message will not be delivered to this consumer again.
    pub async fn ack(self) -> Result<(), BusError> {
        self.acker.settle(Settlement::Ack).await
    }

    /// Not now: deliver again after `delay` (counts as a delivery).
    pub async fn nak(self, delay: Duration) -> Result<(), BusError> {
        self.acker.settle(Settlement::Nak(delay)).await
    }

    /// Never: stop delivering this message to this consumer, without dead-lettering it.
    pub async fn term(self) -> Result<(), BusError> {
        self.acker.settle(Settlement::Term).await
    }

    /// A span for handling this message, parented on the publisher's trace context.
    pub fn span(&self, name: &'static str) -> tracing::Span {
        let span = tracing::info_span!("bus.consume", otel.name = name, subject = %self.subject, message_id = %self.id, delivered = self.delivered);
        openledger_telemetry::set_parent_from(&span, &openledger_telemetry::MapExtractor(&self.headers));
        span
    }
}

/// How a delivery was settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settlement {
    Ack,
    Nak(Duration),
    Term,
}

/// Settles one delivery with its implementation.
#[async_trait]
pub trait Acker: Send + Sync {
    async fn settle(&self, settlement: Settlement) -> Result<(), BusError>;
}

/// A handle on a durable consumer.
#[async_trait]
pub trait Consumer: Send {
    /// The next delivery; waits until one is available. Messages delivered more than
    /// `max_deliver` times are moved to the dead-letter subject instead of being returned.
    async fn next(&mut self) -> Result<Delivery, BusError>;
}

/// The event bus, as services see it.
#[async_trait]
pub trait EventBus: Send + Sync {
    /// Publishes durably; returns once the bus has stored (or deduplicated) the message. The
    /// current trace context is added to the headers.
    async fn publish(&self, message: OutgoingMessage) -> Result<PublishAck, BusError>;

    /// Opens (creating it if needed) the durable consumer `config.durable_name`.
    async fn consumer(&self, config: ConsumerConfig) -> Result<Box<dyn Consumer>, BusError>;

    /// Succeeds when the bus is reachable and its stream exists (readiness).
    async fn check(&self) -> Result<(), BusError>;

    fn settings(&self) -> &BusSettings;

    /// Which implementation this is, for logs and `/readyz` (`in-process`, `jetstream`).
    fn kind(&self) -> &'static str;
}

/// Checks an outgoing message and adds the current trace context to its headers.
fn prepare(settings: &BusSettings, message: &mut OutgoingMessage) -> Result<(), BusError> {
    check_event(&message.subject, message.payload.len(), &mut message.headers)?;
    if !message.subject.starts_with(&format!("{}.", settings.subject_prefix)) {
        return Err(BusError::InvalidSubject {
            subject: message.subject.clone(),
            reason: format!("subjects must start with \"{}.\"", settings.subject_prefix),
        });
    }
    if message.id.is_empty() || message.id.len() > 256 {
        return Err(BusError::InvalidSubject {
            subject: message.subject.clone(),
            reason: "message id must be 1..=256 bytes".into(),
        });
    }
    Ok(())
}

/// The checks every event passes before it may be published (a concrete subject, a payload
/// within the limit), and the current trace context added to its headers. The outbox runs
/// them when an event is written, so a bad event fails its transaction, not the relay.
pub fn check_event(subject: &str, payload_len: usize, headers: &mut BTreeMap<String, String>) -> Result<(), BusError> {
    validate_subject(subject, false)?;
    if payload_len > MAX_PAYLOAD_BYTES {
        return Err(BusError::PayloadTooLarge { size: payload_len, limit: MAX_PAYLOAD_BYTES });
    }
    if !headers.contains_key("traceparent") {
        inject_trace_context(headers);
    }
    Ok(())
}

/// Adds the current span's W3C trace context to message headers.
pub fn inject_trace_context(headers: &mut BTreeMap<String, String>) {
    openledger_telemetry::inject_current(&mut openledger_telemetry::MapInjector(headers));
}

/// The dead-letter copy of a message a consumer gave up on.
fn dead_letter(settings: &BusSettings, durable_name: &str, delivery: &Delivery) -> OutgoingMessage {
    let mut headers = delivery.headers.clone();
    headers.insert(HEADER_ORIGINAL_SUBJECT.to_owned(), delivery.subject.clone());
    headers.insert(HEADER_DEAD_LETTER_CONSUMER.to_owned(), durable_name.to_owned());
    OutgoingMessage {
        subject: settings.dead_letter_subject(durable_name),
        id: format!("dlq:{durable_name}:{}", delivery.id),
        payload: delivery.payload.clone(),
        headers,
    }
}

/// Header saying why a consumer dead-lettered a message at once (a poison message).
pub const HEADER_DEAD_LETTER_REASON: &str = "Ol-Dead-Letter-Reason";

/// Gives up on a message that can never be handled (it does not decode, or what it asks is
/// refused for good): publishes its copy to the consumer's dead-letter subject with `reason`,
/// then stops its delivery. Retrying a poison message `max_deliver` times first would only
/// delay the report.
pub async fn dead_letter_now(
    bus: &dyn EventBus,
    durable_name: &str,
    delivery: Delivery,
    reason: &str,
) -> Result<(), BusError> {
    let mut copy = dead_letter(bus.settings(), durable_name, &delivery);
    let reason: String = reason.chars().filter(|c| !c.is_control()).take(512).collect();
    copy.headers.insert(HEADER_DEAD_LETTER_REASON.to_owned(), reason);
    bus.publish(copy).await?;
    delivery.term().await
}
