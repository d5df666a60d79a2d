//! The embedded event bus: JetStream's delivery semantics in memory, for `openledger dev`.
//! Messages live as long as the process; the transactional outbox keeps undelivered events
//! durable across restarts by republishing unsent rows.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Arc,
};

use parking_lot::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::{sync::Notify, time::Instant};

use crate::{
    Acker, BusError, BusSettings, Consumer, ConsumerConfig, Delivery, EventBus, OutgoingMessage, PublishAck,
    Settlement, dead_letter, prepare, subject_matches,
};

/// The in-process bus. Clones share the same messages and consumers.
#[derive(Clone)]
pub struct InProcessBus {
    shared: Arc<Shared>,
}

struct Shared {
    settings: BusSettings,
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Default)]
struct State {
    /// Messages in sequence order; `log[0]` has sequence `first_sequence`.
    log: VecDeque<Stored>,
    first_sequence: u64,
    /// Message ids seen inside the duplicate window, oldest first.
    recent_ids: VecDeque<(Instant, String)>,
    sequence_of_id: HashMap<String, u64>,
    consumers: HashMap<String, ConsumerState>,
}

struct Stored {
    subject: String,
    id: String,
    payload: Bytes,
    headers: BTreeMap<String, String>,
}

struct ConsumerState {
    config: ConsumerConfig,
    /// Next sequence never delivered to this consumer.
    next_sequence: u64,
    /// Delivered, not yet acked: sequence → (deliveries so far, when to deliver again).
    pending: BTreeMap<u64, Pending>,
}

struct Pending {
    delivered: u32,
    due: Instant,
}

impl InProcessBus {
    pub fn new(settings: BusSettings) -> Self {
        let state = State { first_sequence: 1, ..State::default() };
        Self { shared: Arc::new(Shared { settings, state: Mutex::new(state), changed: Notify::new() }) }
    }
}

impl Shared {
    fn store(&self, message: OutgoingMessage) -> PublishAck {
        let now = Instant::now();
        let mut state = self.state.lock();
        while let Some((at, _)) = state.recent_ids.front() {
            if now.duration_since(*at) < self.settings.duplicate_window {
                break;
            }
            let (_, id) = state.recent_ids.pop_front().expect("front exists");
            state.sequence_of_id.remove(&id);
        }
        if let Some(&sequence) = state.sequence_of_id.get(&message.id) {
            return PublishAck { sequence, duplicate: true };
        }
        let sequence = state.first_sequence + state.log.len() as u64;
        state.recent_ids.push_back((now, message.id.clone()));
        state.sequence_of_id.insert(message.id.clone(), sequence);
        state.log.push_back(Stored {
            subject: message.subject,
            id: message.id,
            payload: message.payload,
            headers: message.headers,
        });
        while state.log.len() > self.settings.max_messages {
            state.log.pop_front();
            state.first_sequence += 1;
        }
        drop(state);
        self.changed.notify_waiters();
        PublishAck { sequence, duplicate: false }
    }
}

#[async_trait]
impl EventBus for InProcessBus {
    async fn publish(&self, mut message: OutgoingMessage) -> Result<PublishAck, BusError> {
        prepare(&self.shared.settings, &mut message)?;
        Ok(self.shared.store(message))
    }

    async fn consumer(&self, config: ConsumerConfig) -> Result<Box<dyn Consumer>, BusError> {
        config.validate()?;
        let mut state = self.shared.state.lock();
        let first_sequence = state.first_sequence;
        let consumer = state.consumers.entry(config.durable_name.clone()).or_insert_with(|| ConsumerState {
            config: config.clone(),
            next_sequence: first_sequence,
            pending: BTreeMap::new(),
        });
        if consumer.config.filter_subject != config.filter_subject {
            return Err(BusError::InvalidConsumer(format!(
                "consumer {:?} already exists with filter {:?}",
                config.durable_name, consumer.config.filter_subject
            )));
        }
        consumer.config = config.clone();
        Ok(Box::new(InProcessConsumer { shared: self.shared.clone(), durable_name: config.durable_name }))
    }

    async fn check(&self) -> Result<(), BusError> {
        Ok(())
    }

    fn settings(&self) -> &BusSettings {
        &self.shared.settings
    }

    fn kind(&self) -> &'static str {
        "in-process"
    }
}

struct InProcessConsumer {
    shared: Arc<Shared>,
    durable_name: String,
}

/// What one look at the consumer's state found.
enum Step {
    Deliver(Delivery),
    DeadLetter(Delivery),
    Wait(Option<Instant>),
}

impl InProcessConsumer {
    fn step(&self) -> Result<Step, BusError> {
        let now = Instant::now();
        let mut state = self.shared.state.lock();
        let State { log, first_sequence, consumers, .. } = &mut *state;
        let consumer = consumers.get_mut(&self.durable_name).ok_or(BusError::Closed)?;
        let ack_wait = consumer.config.ack_wait;
        let acker = |sequence| InProcessAcker {
            shared: self.shared.clone(),
            durable_name: self.durable_name.clone(),
            sequence,
        };
        let delivery = |sequence: u64, delivered: u32| {
            let stored = log.get((sequence - *first_sequence) as usize)?;
            Some(Delivery {
                subject: stored.subject.clone(),
                id: stored.id.clone(),
                payload: stored.payload.clone(),
                headers: stored.headers.clone(),
                delivered,
                sequence,
                acker: Box::new(acker(sequence)),
            })
        };

        // Redeliveries come first, as in JetStream.
        let due = consumer.pending.iter_mut().find(|(_, pending)| pending.due <= now);
        if let Some((&sequence, pending)) = due {
            pending.delivered += 1;
            pending.due = now + ack_wait;
            let delivered = pending.delivered;
            let Some(found) = delivery(sequence, delivered) else {
                consumer.pending.remove(&sequence); // discarded by the retention limit
                return Ok(Step::Wait(Some(now)));
            };
            if delivered > consumer.config.max_deliver {
                consumer.pending.remove(&sequence);
                return Ok(Step::DeadLetter(found));
            }
            return Ok(Step::Deliver(found));
        }

        if consumer.pending.len() < crate::MAX_ACK_PENDING {
            consumer.next_sequence = consumer.next_sequence.max(*first_sequence);
            let end = *first_sequence + log.len() as u64;
            while consumer.next_sequence < end {
                let sequence = consumer.next_sequence;
                consumer.next_sequence += 1;
                let stored = &log[(sequence - *first_sequence) as usize];
                if subject_matches(&consumer.config.filter_subject, &stored.subject) {
                    consumer.pending.insert(sequence, Pending { delivered: 1, due: now + ack_wait });
                    let found = delivery(sequence, 1).expect("sequence is inside the log");
                    return Ok(Step::Deliver(found));
                }
            }
        }
        Ok(Step::Wait(consumer.pending.values().map(|pending| pending.due).min()))
    }
}

#[async_trait]
impl Consumer for InProcessConsumer {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.step()? {
                Step::Deliver(delivery) => return Ok(delivery),
                Step::DeadLetter(delivery) => {
                    let message = dead_letter(&self.shared.settings, &self.durable_name, &delivery);
                    self.shared.store(message);
                    tracing::warn!(consumer = %self.durable_name, subject = %delivery.subject, message_id = %delivery.id, "message dead-lettered after max deliveries");
                }
                Step::Wait(Some(due)) => {
                    tokio::select! {
                        () = &mut changed => {}
                        () = tokio::time::sleep_until(due) => {}
                    }
                }
                Step::Wait(None) => changed.await,
            }
        }
    }
}

struct InProcessAcker {
    shared: Arc<Shared>,
    durable_name: String,
    sequence: u64,
}

#[async_trait]
impl Acker for InProcessAcker {
    async fn settle(&self, settlement: Settlement) -> Result<(), BusError> {
        let mut state = self.shared.state.lock();
        let consumer = state.consumers.get_mut(&self.durable_name).ok_or(BusError::Closed)?;
        match settlement {
            Settlement::Ack | Settlement::Term => {
                consumer.pending.remove(&self.sequence);
            }
            Settlement::Nak(delay) => {
                if let Some(pending) = consumer.pending.get_mut(&self.sequence) {
                    pending.due = Instant::now() + delay;
                }
            }
        }
        drop(state);
        self.shared.changed.notify_waiters();
        Ok(())
    }
}
