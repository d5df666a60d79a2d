//! One trace id crosses a gRPC call and a bus message: the client's context travels in gRPC
//! metadata to the server's request span, and in NATS message headers (JetStream, on a real
//! nats-server) to the consumer's span.

use std::time::Duration;

use openledger_bus::{ConsumerConfig, EventBus, JetStreamBus, OutgoingMessage};
use openledger_runtime::grpc;
use opentelemetry::trace::{SpanId, TracerProvider as _};
use opentelemetry_sdk::{
    propagation::TraceContextPropagator,
    trace::{InMemorySpanExporter, SdkTracerProvider},
};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_crosses_a_grpc_call_and_a_bus_message() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::set_global_default(subscriber).expect("first subscriber in this process");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (_reporter, health) = tonic_health::server::health_reporter();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(grpc::serve(listener, Routes::new(health), shutdown.clone(), Duration::from_secs(1)));
    let nats = openledger_testkit::Nats::start();
    let bus = JetStreamBus::connect(&nats.url(), Default::default()).await.expect("connect to nats-server");

    let client_trace = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let mut client = HealthClient::with_interceptor(channel, grpc::inject_trace_context);
        client.check(HealthCheckRequest { service: String::new() }).await.expect("health check");
        bus.publish(OutgoingMessage::new("ol.trace.test", "trace-1", Vec::new())).await.expect("publish");
        openledger_telemetry::current_trace_id().expect("a recorded trace")
    }
    .instrument(tracing::info_span!("client-operation"))
    .await;

    let mut consumer = bus.consumer(ConsumerConfig::new("tracer", "ol.trace.>")).await.expect("consumer");
    let delivery =
        tokio::time::timeout(Duration::from_secs(5), consumer.next()).await.expect("in time").expect("delivery");
    let handling = delivery.span("handle-trace-test");
    let consumer_trace = handling.in_scope(openledger_telemetry::current_trace_id);
    drop(handling);
    assert_eq!(consumer_trace.as_deref(), Some(client_trace.as_str()), "the bus carried the trace");

    let server_span = async {
        loop {
            let spans = exporter.get_finished_spans().expect("spans");
            if let Some(span) = spans.into_iter().find(|span| span.name == "/grpc.health.v1.Health/Check") {
                return span;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let server_span = tokio::time::timeout(Duration::from_secs(5), server_span).await.expect("server span exported");
    assert_eq!(server_span.span_context.trace_id().to_string(), client_trace, "gRPC metadata carried the trace");
    assert_ne!(server_span.parent_span_id, SpanId::INVALID, "the server span has the client span as parent");

    shutdown.cancel();
    server.await.expect("join").expect("server stops cleanly");
}
