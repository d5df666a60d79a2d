//! The transactional outbox. A service writes its events with [`enqueue`] on the same
//! transaction as the state change they describe, so both commit or neither does. The
//! [`OutboxRelay`] publishes unsent rows in id order with the row's event id as the message
//! id, then marks them sent. A crash after publishing and before marking republishes the row
//! with the same message id: the bus drops it inside its duplicate window, and consumers are
//! idempotent by event id beyond it (see `inbox`). Several relays may run (replicas): at worst
//! a row is published twice, with the same id.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use openledger_bus::{EventBus, OutgoingMessage};
use openledger_core::Id;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{StoreError, now_ms};

pub(crate) mod entity {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "outbox")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub event_id: String,
        pub producer: String,
        pub subject: String,
        pub payload: Vec<u8>,
        pub headers: String,
        pub created_at_ms: i64,
        pub sent_at_ms: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

use entity::{ActiveModel, Column, Entity};

/// An event to publish once the surrounding transaction commits.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub subject: String,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

impl NewEvent {
    pub fn new(subject: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Self { subject: subject.into(), payload: payload.into(), headers: BTreeMap::new() }
    }
}

/// Writes `event` to the outbox on `connection` (normally an open transaction) and returns
/// its event id. The current trace context travels with it.
pub async fn enqueue<C: ConnectionTrait>(
    connection: &C,
    producer: &str,
    event: NewEvent,
) -> Result<String, StoreError> {
    let mut ids = enqueue_all(connection, producer, vec![event]).await?;
    Ok(ids.pop().expect("one event, one id"))
}

/// Rows per outbox insert statement: 7 columns each keeps a statement far inside SQLite's
/// 32,766 and PostgreSQL's 65,535 bound parameters.
pub const INSERT_ROWS: usize = 500;

/// Writes `events` to the outbox on `connection` in as few statements as [`INSERT_ROWS`]
/// allows (a settlement batch writes hundreds at once) and returns their event ids in order.
pub async fn enqueue_all<C: ConnectionTrait>(
    connection: &C,
    producer: &str,
    events: Vec<NewEvent>,
) -> Result<Vec<String>, StoreError> {
    let now = now_ms();
    let mut ids = Vec::with_capacity(events.len());
    let mut rows = Vec::with_capacity(events.len());
    for mut event in events {
        // At write time, so the span changing state is the parent consumers see, not the relay's.
        openledger_bus::check_event(&event.subject, event.payload.len(), &mut event.headers)
            .map_err(|error| StoreError::InvalidEvent(error.to_string()))?;
        let event_id = Id::new().to_string();
        ids.push(event_id.clone());
        rows.push(ActiveModel {
            event_id: Set(event_id),
            producer: Set(producer.to_owned()),
            subject: Set(event.subject),
            payload: Set(event.payload),
            headers: Set(serde_json::to_string(&event.headers).expect("string maps serialize")),
            created_at_ms: Set(now),
            sent_at_ms: Set(None),
            ..Default::default()
        });
    }
    while !rows.is_empty() {
        let rest = rows.split_off(rows.len().min(INSERT_ROWS));
        Entity::insert_many(std::mem::replace(&mut rows, rest)).exec_without_returning(connection).await?;
    }
    Ok(ids)
}

/// Publishes a producer's unsent outbox rows to the bus.
#[derive(Clone)]
pub struct OutboxRelay {
    db: DatabaseConnection,
    bus: Arc<dyn EventBus>,
    producer: String,
    batch_size: u64,
    poll_interval: Duration,
    wake: Arc<Notify>,
}

impl OutboxRelay {
    pub fn new(db: DatabaseConnection, bus: Arc<dyn EventBus>, producer: impl Into<String>) -> Self {
        Self {
            db,
            bus,
            producer: producer.into(),
            batch_size: 256,
            poll_interval: Duration::from_millis(500),
            wake: Arc::new(Notify::new()),
        }
    }

    /// Shares a wake-up signal created before the relay (e.g. by a service's API).
    pub fn with_waker(mut self, wake: Arc<Notify>) -> Self {
        self.wake = wake;
        self
    }

    /// Call `notify_one` on this after committing events to relay them without waiting for
    /// the next poll.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Publishes up to one batch of unsent rows; returns how many were published.
    pub async fn relay_once(&self) -> Result<usize, StoreError> {
        let rows = Entity::find()
            .filter(Column::Producer.eq(self.producer.as_str()))
            .filter(Column::SentAtMs.is_null())
            .order_by_asc(Column::Id)
            .limit(self.batch_size)
            .all(&self.db)
            .await?;
        for row in &rows {
            fail::fail_point!("outbox-before-publish", |_| crash("outbox-before-publish"));
            let headers: BTreeMap<String, String> = serde_json::from_str(&row.headers).unwrap_or_default();
            let message = OutgoingMessage {
                subject: row.subject.clone(),
                id: row.event_id.clone(),
                payload: row.payload.clone().into(),
                headers,
            };
            self.bus.publish(message).await?;
            fail::fail_point!("outbox-after-publish", |_| crash("outbox-after-publish"));
            Entity::update_many()
                .col_expr(Column::SentAtMs, sea_orm::sea_query::Expr::value(now_ms()))
                .filter(Column::Id.eq(row.id))
                .exec(&self.db)
                .await?;
        }
        Ok(rows.len())
    }

    /// Rows not yet published.
    pub async fn unsent(&self) -> Result<u64, StoreError> {
        Ok(Entity::find()
            .filter(Column::Producer.eq(self.producer.as_str()))
            .filter(Column::SentAtMs.is_null())
            .count(&self.db)
            .await?)
    }

    /// Relays until `shutdown`, then flushes what is left within `flush_timeout`. Rows that
    /// cannot be flushed stay in the outbox and go out after the next start.
    pub async fn run(&self, shutdown: CancellationToken, flush_timeout: Duration) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.relay_once().await {
                Ok(count) if count as u64 == self.batch_size => continue,
                Ok(_) => backoff = Duration::from_millis(100),
                Err(error) => {
                    tracing::warn!(producer = %self.producer, %error, retry_in_ms = backoff.as_millis() as u64, "outbox relay failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.poll_interval) => {}
            }
        }
        self.flush(flush_timeout).await;
    }

    async fn flush(&self, timeout: Duration) {
        let flushed = tokio::time::timeout(timeout, async {
            loop {
                match self.relay_once().await {
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    Err(error) => return Err(error),
                }
            }
        })
        .await;
        match flushed {
            Ok(Ok(())) => tracing::info!(producer = %self.producer, "outbox flushed"),
            Ok(Err(error)) => {
                tracing::warn!(producer = %self.producer, %error, "outbox not flushed; unsent events will be relayed after restart")
            }
            Err(_) => {
                tracing::warn!(producer = %self.producer, "outbox flush timed out; unsent events will be relayed after restart")
            }
        }
    }
}

/// What a process killed by an outbox fail point prints on stderr just before it aborts, so a
/// crash test can tell a death at the fail point from one anywhere else.
pub const CRASH_MARKER: &str = "outbox fail point reached, aborting:";

/// Used by the crash tests' fail points: dies the way a killed process does (no unwinding, no
/// destructors, no flush of anything but the marker line).
#[allow(dead_code)]
fn crash(failpoint: &str) -> Result<usize, StoreError> {
    eprintln!("{CRASH_MARKER} {failpoint}");
    std::process::abort()
}
