//! One conformance suite for every `EventBus`: each case runs against the in-process bus and
//! against a real nats-server with JetStream started by the testkit.

use std::{future::Future, sync::Arc, time::Duration};

use openledger_bus::{
    BusSettings, ConsumerConfig, Delivery, EventBus, HEADER_DEAD_LETTER_CONSUMER, HEADER_ORIGINAL_SUBJECT,
    InProcessBus, JetStreamBus, OutgoingMessage,
};
use openledger_testkit::Nats;

const WAIT: Duration = Duration::from_secs(15);
/// Long enough that a message that is going to arrive does.
const QUIET: Duration = Duration::from_millis(700);

fn settings() -> BusSettings {
    BusSettings { duplicate_window: Duration::from_secs(60), ..BusSettings::default() }
}

async fn with_in_process<F, Fut>(case: F)
where
    F: FnOnce(Arc<dyn EventBus>) -> Fut,
    Fut: Future<Output = ()>,
{
    case(Arc::new(InProcessBus::new(settings()))).await;
}

async fn with_jetstream<F, Fut>(case: F)
where
    F: FnOnce(Arc<dyn EventBus>) -> Fut,
    Fut: Future<Output = ()>,
{
    let nats = Nats::start();
    let bus = JetStreamBus::connect(&nats.url(), settings()).await.expect("connect to nats-server");
    case(Arc::new(bus)).await;
    drop(nats);
}

/// Runs `$case` once per implementation, as two tests.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod in_process { $(#[tokio::test] async fn $case() { super::with_in_process(super::$case).await; })* }
        mod jetstream { $(#[tokio::test] async fn $case() { super::with_jetstream(super::$case).await; })* }
    };
}

conformance!(
    delivers_in_order_with_ids_payloads_and_headers,
    drops_duplicate_ids_inside_the_window,
    acked_messages_are_not_redelivered,
    unacked_messages_are_redelivered_after_ack_wait,
    nak_redelivers_after_its_delay,
    exhausted_messages_go_to_the_dead_letter_subject,
    durable_consumers_resume_where_they_left_off,
    filters_select_subjects,
    handles_on_one_durable_share_the_work,
    rejects_invalid_input,
);

async fn next(consumer: &mut Box<dyn openledger_bus::Consumer>) -> Delivery {
    tokio::time::timeout(WAIT, consumer.next()).await.expect("a delivery in time").expect("delivery")
}

async fn nothing_within(consumer: &mut Box<dyn openledger_bus::Consumer>, quiet: Duration) {
    if let Ok(delivery) = tokio::time::timeout(quiet, consumer.next()).await {
        panic!("expected no delivery, got {delivery:?}");
    }
}

async fn publish(bus: &Arc<dyn EventBus>, subject: &str, id: &str, payload: &str) -> openledger_bus::PublishAck {
    bus.publish(OutgoingMessage::new(subject, id, payload.as_bytes().to_vec())).await.expect("publish")
}

async fn delivers_in_order_with_ids_payloads_and_headers(bus: Arc<dyn EventBus>) {
    for i in 0..5 {
        let message = OutgoingMessage::new("ol.test.order", format!("m{i}"), format!("payload {i}").into_bytes())
            .with_header("Ol-Event-Type", "test");
        let ack = bus.publish(message).await.expect("publish");
        assert!(!ack.duplicate);
    }
    let mut consumer = bus.consumer(ConsumerConfig::new("order", "ol.test.>")).await.expect("consumer");
    let mut previous_sequence = 0;
    for i in 0..5 {
        let delivery = next(&mut consumer).await;
        assert_eq!(delivery.id, format!("m{i}"));
        assert_eq!(delivery.subject, "ol.test.order");
        assert_eq!(&delivery.payload[..], format!("payload {i}").as_bytes());
        assert_eq!(delivery.headers.get("Ol-Event-Type").map(String::as_str), Some("test"));
        assert_eq!(delivery.delivered, 1);
        assert!(delivery.sequence > previous_sequence);
        previous_sequence = delivery.sequence;
        delivery.ack().await.expect("ack");
    }
}

async fn drops_duplicate_ids_inside_the_window(bus: Arc<dyn EventBus>) {
    let first = publish(&bus, "ol.test.dedup", "same-id", "first").await;
    let second = publish(&bus, "ol.test.dedup", "same-id", "second").await;
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(second.sequence, first.sequence);
    publish(&bus, "ol.test.dedup", "other-id", "third").await;
    let mut consumer = bus.consumer(ConsumerConfig::new("dedup", "ol.test.dedup")).await.expect("consumer");
    let delivery = next(&mut consumer).await;
    assert_eq!(&delivery.payload[..], b"first");
    delivery.ack().await.expect("ack");
    let delivery = next(&mut consumer).await;
    assert_eq!(delivery.id, "other-id");
    delivery.ack().await.expect("ack");
    nothing_within(&mut consumer, QUIET).await;
}

async fn acked_messages_are_not_redelivered(bus: Arc<dyn EventBus>) {
    let config = ConsumerConfig::new("acked", "ol.test.ack").ack_wait(Duration::from_millis(300));
    let mut consumer = bus.consumer(config).await.expect("consumer");
    publish(&bus, "ol.test.ack", "a1", "x").await;
    next(&mut consumer).await.ack().await.expect("ack");
    nothing_within(&mut consumer, Duration::from_millis(1200)).await;
}

async fn unacked_messages_are_redelivered_after_ack_wait(bus: Arc<dyn EventBus>) {
    let config = ConsumerConfig::new("unacked", "ol.test.unacked").ack_wait(Duration::from_millis(400));
    let mut consumer = bus.consumer(config).await.expect("consumer");
    publish(&bus, "ol.test.unacked", "u1", "x").await;
    let first = next(&mut consumer).await;
    assert_eq!(first.delivered, 1);
    drop(first); // neither acked nor naked: the handler "crashed"
    let again = next(&mut consumer).await;
    assert_eq!(again.id, "u1");
    assert_eq!(again.delivered, 2);
    again.ack().await.expect("ack");
}

async fn nak_redelivers_after_its_delay(bus: Arc<dyn EventBus>) {
    let config = ConsumerConfig::new("naked", "ol.test.nak").ack_wait(Duration::from_secs(30));
    let mut consumer = bus.consumer(config).await.expect("consumer");
    publish(&bus, "ol.test.nak", "n1", "x").await;
    next(&mut consumer).await.nak(Duration::from_millis(1500)).await.expect("nak");
    // Not before the delay (well inside it) ...
    nothing_within(&mut consumer, Duration::from_millis(500)).await;
    // ... but after it, and long before the 30 s ack wait.
    let again = next(&mut consumer).await;
    assert_eq!((again.id.as_str(), again.delivered), ("n1", 2));
    again.ack().await.expect("ack");
}

async fn exhausted_messages_go_to_the_dead_letter_subject(bus: Arc<dyn EventBus>) {
    let config = ConsumerConfig::new("poisoned", "ol.test.poison").ack_wait(Duration::from_secs(30)).max_deliver(3);
    let mut consumer = bus.consumer(config).await.expect("consumer");
    publish(&bus, "ol.test.poison", "p1", "poison").await;
    publish(&bus, "ol.test.poison", "p2", "fine").await;
    let mut seen = Vec::new();
    loop {
        let delivery = next(&mut consumer).await;
        seen.push((delivery.id.clone(), delivery.delivered));
        if delivery.id == "p1" {
            delivery.nak(Duration::ZERO).await.expect("nak");
        } else {
            delivery.ack().await.expect("ack");
        }
        if seen.iter().filter(|(id, _)| id == "p1").count() == 3 && seen.iter().any(|(id, _)| id == "p2") {
            break;
        }
    }
    let poison: Vec<u32> = seen.iter().filter(|(id, _)| id == "p1").map(|(_, n)| *n).collect();
    assert_eq!(poison, vec![1, 2, 3]);
    nothing_within(&mut consumer, QUIET).await;

    let dead_letters = bus.settings().dead_letter_subject("poisoned");
    let mut dlq = bus.consumer(ConsumerConfig::new("poisoned-dlq", dead_letters.clone())).await.expect("dlq consumer");
    let dead = next(&mut dlq).await;
    assert_eq!(dead.subject, dead_letters);
    assert_eq!(&dead.payload[..], b"poison");
    assert_eq!(dead.headers.get(HEADER_ORIGINAL_SUBJECT).map(String::as_str), Some("ol.test.poison"));
    assert_eq!(dead.headers.get(HEADER_DEAD_LETTER_CONSUMER).map(String::as_str), Some("poisoned"));
    dead.ack().await.expect("ack");
    nothing_within(&mut dlq, QUIET).await;
}

async fn durable_consumers_resume_where_they_left_off(bus: Arc<dyn EventBus>) {
    for i in 0..3 {
        publish(&bus, "ol.test.durable", &format!("d{i}"), "x").await;
    }
    let config = ConsumerConfig::new("resumer", "ol.test.durable");
    let mut consumer = bus.consumer(config.clone()).await.expect("consumer");
    next(&mut consumer).await.ack().await.expect("ack");
    drop(consumer);
    let mut reopened = bus.consumer(config).await.expect("consumer again");
    assert_eq!(next(&mut reopened).await.id, "d1");
}

async fn filters_select_subjects(bus: Arc<dyn EventBus>) {
    publish(&bus, "ol.datanet.accepted", "f1", "x").await;
    publish(&bus, "ol.ledger.settled", "f2", "x").await;
    publish(&bus, "ol.datanet.rejected", "f3", "x").await;
    let mut consumer = bus.consumer(ConsumerConfig::new("datanet-only", "ol.datanet.*")).await.expect("consumer");
    let first = next(&mut consumer).await;
    let second = next(&mut consumer).await;
    assert_eq!((first.id.as_str(), second.id.as_str()), ("f1", "f3"));
    first.ack().await.expect("ack");
    second.ack().await.expect("ack");
    nothing_within(&mut consumer, QUIET).await;
    let clash = bus.consumer(ConsumerConfig::new("datanet-only", "ol.ledger.>")).await;
    assert!(clash.is_err(), "reopening a durable with another filter must fail");
}

async fn handles_on_one_durable_share_the_work(bus: Arc<dyn EventBus>) {
    let config = ConsumerConfig::new("workers", "ol.test.work");
    let mut one = bus.consumer(config.clone()).await.expect("consumer");
    let mut two = bus.consumer(config).await.expect("consumer");
    for i in 0..6 {
        publish(&bus, "ol.test.work", &format!("w{i}"), "x").await;
    }
    let mut ids = Vec::new();
    for i in 0..6 {
        let delivery = if i % 2 == 0 { next(&mut one).await } else { next(&mut two).await };
        ids.push(delivery.id.clone());
        delivery.ack().await.expect("ack");
    }
    ids.sort();
    assert_eq!(ids, ["w0", "w1", "w2", "w3", "w4", "w5"]);
    nothing_within(&mut one, QUIET).await;
}

async fn rejects_invalid_input(bus: Arc<dyn EventBus>) {
    let outside = bus.publish(OutgoingMessage::new("other.subject", "x", Vec::new())).await;
    assert!(outside.is_err(), "subjects outside the prefix are refused");
    let wildcard = bus.publish(OutgoingMessage::new("ol.*", "x", Vec::new())).await;
    assert!(wildcard.is_err());
    let huge =
        bus.publish(OutgoingMessage::new("ol.test.big", "x", vec![0u8; openledger_bus::MAX_PAYLOAD_BYTES + 1])).await;
    assert!(matches!(huge, Err(openledger_bus::BusError::PayloadTooLarge { .. })));
    assert!(bus.consumer(ConsumerConfig::new("bad name", "ol.>")).await.is_err());
    assert!(bus.consumer(ConsumerConfig::new("zero", "ol.>").max_deliver(0)).await.is_err());
    bus.check().await.expect("bus is healthy");
}
