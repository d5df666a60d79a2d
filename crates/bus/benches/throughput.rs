//! Publish and consume throughput of both bus implementations (JetStream on a throwaway local
//! nats-server). Run: `cargo bench -p openledger-bus --bench throughput [-- MESSAGES]`.
//! Publishing awaits each ack (durable, as the outbox relay does); consuming acks each
//! message with a server-confirmed ack.

use std::{sync::Arc, time::Instant};

use openledger_bus::{BusSettings, ConsumerConfig, EventBus, InProcessBus, JetStreamBus, OutgoingMessage};

const PAYLOAD_BYTES: usize = 256;

async fn measure(name: &str, bus: Arc<dyn EventBus>, messages: usize) {
    let payload = vec![7u8; PAYLOAD_BYTES];
    let started = Instant::now();
    for i in 0..messages {
        bus.publish(OutgoingMessage::new("ol.bench.event", format!("bench-{i}"), payload.clone()))
            .await
            .expect("publish");
    }
    let publish = started.elapsed();
    let mut consumer = bus.consumer(ConsumerConfig::new("bench", "ol.bench.>")).await.expect("consumer");
    let started = Instant::now();
    for _ in 0..messages {
        consumer.next().await.expect("delivery").ack().await.expect("ack");
    }
    let consume = started.elapsed();
    println!(
        "{name:<12} {messages} x {PAYLOAD_BYTES} B: publish {:>8.0} msg/s ({:.1} us each), consume+ack {:>8.0} msg/s ({:.1} us each)",
        messages as f64 / publish.as_secs_f64(),
        publish.as_secs_f64() * 1e6 / messages as f64,
        messages as f64 / consume.as_secs_f64(),
        consume.as_secs_f64() * 1e6 / messages as f64,
    );
}

#[tokio::main]
async fn main() {
    let messages: usize = std::env::args().filter_map(|arg| arg.parse().ok()).next().unwrap_or(10_000);
    measure("in-process", Arc::new(InProcessBus::new(BusSettings::default())), messages).await;
    let nats = openledger_testkit::Nats::start();
    let bus = JetStreamBus::connect(&nats.url(), BusSettings::default()).await.expect("connect");
    measure("jetstream", Arc::new(bus), messages).await;
}
