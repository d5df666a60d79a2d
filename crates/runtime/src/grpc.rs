//! The gRPC side of a service: one tonic server carrying the service's API, the standard
//! health service and server reflection (v1 and v1alpha, so grpcurl and friends can list
//! every RPC), with W3C trace context taken from request metadata.

use std::time::Duration;

use openledger_core::ErrorCode;
use openledger_telemetry::{HeaderExtractor, set_parent_from};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{
    Status,
    metadata::{MetadataKey, MetadataMap, MetadataValue},
    service::Routes,
    transport::Server,
};

/// The span of one inbound RPC, parented on the caller's trace context.
pub fn request_span(request: &http::Request<()>) -> tracing::Span {
    let span = tracing::info_span!(
        "grpc.request",
        otel.name = %request.uri().path(),
        otel.kind = "server",
        rpc.system = "grpc",
    );
    set_parent_from(&span, &HeaderExtractor(request.headers()));
    span
}

/// Serves `routes` plus reflection until `shutdown`, then drains in-flight calls for at most
/// `drain_grace`. The bound matters: hyper's HTTP/2 graceful shutdown can wait forever on an
/// idle client connection (hyperium/hyper#4170), which must not hold a pod's exit hostage.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    shutdown: CancellationToken,
    drain_grace: Duration,
) -> Result<(), tonic::transport::Error> {
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(openledger_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the compiled descriptor set is valid");
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(openledger_proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("the compiled descriptor set is valid");
    let server = Server::builder()
        .trace_fn(request_span)
        .add_routes(routes.add_service(reflection_v1).add_service(reflection_v1alpha))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown.clone().cancelled_owned());
    tokio::pin!(server);
    tokio::select! {
        served = &mut server => served,
        () = async { shutdown.cancelled().await; tokio::time::sleep(drain_grace).await } => {
            tracing::warn!(grace_ms = drain_grace.as_millis() as u64, "gRPC connections still open after the drain grace; closing them");
            Ok(())
        }
    }
}

/// Client interceptor: sends the current trace context with every call.
pub fn inject_trace_context(mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
    openledger_telemetry::inject_current(&mut MetadataInjector(request.metadata_mut()));
    Ok(request)
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl opentelemetry::propagation::Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (MetadataKey::from_bytes(key.as_bytes()), MetadataValue::try_from(value.as_str()))
        {
            self.0.insert(key, value);
        }
    }
}

/// Metadata key carrying the platform error code on error statuses, so an edge that forwards
/// a gRPC error keeps codes gRPC merges (payload too large and resource exhausted).
pub const ERROR_CODE_METADATA: &str = "x-openledger-error-code";

/// The one mapping from platform error codes to gRPC statuses.
pub fn status(code: ErrorCode, message: impl Into<String>) -> Status {
    let mut status = Status::new(tonic::Code::from(code.grpc_code()), message.into());
    status.metadata_mut().insert(ERROR_CODE_METADATA, MetadataValue::from_static(code.as_str()));
    status
}

/// The one mapping from gRPC statuses back to platform error codes: the code in the status
/// metadata when [`status`] made it (this keeps the codes gRPC merges), else the code the
/// gRPC status code means.
pub fn error_code_of(status: &Status) -> ErrorCode {
    status
        .metadata()
        .get(ERROR_CODE_METADATA)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| ErrorCode::ALL.into_iter().find(|code| code.as_str() == text))
        .unwrap_or_else(|| ErrorCode::from_grpc_code(status.code() as i32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_map_to_matching_grpc_codes() {
        assert_eq!(status(ErrorCode::NotFound, "x").code(), tonic::Code::NotFound);
        assert_eq!(status(ErrorCode::ResourceExhausted, "x").code(), tonic::Code::ResourceExhausted);
        assert_eq!(status(ErrorCode::Unimplemented, "x").code(), tonic::Code::Unimplemented);
        assert_eq!(status(ErrorCode::Unavailable, "x").code(), tonic::Code::Unavailable);
    }

    #[test]
    fn every_code_survives_a_round_trip_through_a_status() {
        for code in ErrorCode::ALL {
            assert_eq!(error_code_of(&status(code, "x")), code);
        }
    }

    #[test]
    fn statuses_without_the_metadata_map_by_their_grpc_code() {
        assert_eq!(error_code_of(&Status::not_found("x")), ErrorCode::NotFound);
        assert_eq!(error_code_of(&Status::unauthenticated("x")), ErrorCode::Unauthenticated);
        assert_eq!(error_code_of(&Status::aborted("x")), ErrorCode::FailedPrecondition);
        assert_eq!(error_code_of(&Status::unknown("x")), ErrorCode::Internal);
        let mut garbled = Status::resource_exhausted("x");
        garbled.metadata_mut().insert(ERROR_CODE_METADATA, MetadataValue::from_static("no-such-code"));
        assert_eq!(error_code_of(&garbled), ErrorCode::ResourceExhausted);
    }
}
