//! The public REST edge's own concerns: the router that composes every service's routes, the
//! middleware every route passes through (request id, tracing, metrics, timeout, body limit,
//! the error envelope for answers the router and layers make) and [`EdgeSettings`]. Beside it:
//! `error` (the envelope and the one gRPC→HTTP conversion), `upstream` (calling a service),
//! `body` (the JSON body extractor), `signature` (a signer's fields; 401 when malformed),
//! `page` (the pagination convention) and `openapi` (the document, its links and drift test).

pub mod body;
pub mod error;
pub mod openapi;
pub mod page;
pub mod signature;
pub mod upstream;

use std::time::{Duration, Instant};

use axum::{
    Router,
    body::Body,
    extract::{DefaultBodyLimit, MatchedPath, Request},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use openledger_core::{Config, ErrorCode, Id};
use openledger_runtime::{Deps, clients::ServiceChannel, ops};
use openledger_telemetry::{HeaderExtractor, Metrics, set_parent_from};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
};
use tower_http::{
    limit::RequestBodyLimitLayer,
    request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    timeout::TimeoutLayer,
    trace::TraceLayer,
};

pub use self::{
    error::{ApiError, ErrorBody, ErrorDetail},
    upstream::Upstream,
};

/// Limits of the edge, from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct EdgeSettings {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
}

impl EdgeSettings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            max_body_bytes: usize::try_from(config.max_body_bytes).unwrap_or(usize::MAX),
            request_timeout: Duration::from_millis(config.request_timeout_ms),
        }
    }
}

/// The whole edge: public routes plus ops routes, behind the middleware.
pub fn router(
    settings: EdgeSettings,
    deps: &Deps,
    ledger: ServiceChannel,
    datanet: ServiceChannel,
    openlora: crate::openlora::OpenLora,
) -> Router {
    let routes = Router::new()
        .route("/openapi.json", get(openapi::openapi_json))
        .merge(crate::ledger::routes(ledger))
        .merge(crate::datanets::routes(datanet))
        .merge(crate::openlora::routes(openlora))
        .merge(ops::router(deps.clone()));
    edge(routes, settings, &deps.metrics)
}

/// Wraps `routes` in the edge's middleware; the outermost layer comes first.
pub fn edge(routes: Router, settings: EdgeSettings, metrics: &Metrics) -> Router {
    let request_metrics = RequestMetrics::register(metrics);
    routes
        .fallback(|request: Request| async move {
            ApiError::new(ErrorCode::NotFound, format!("no route for {} {}", request.method(), request.uri().path()))
        })
        // Innermost first: each layer wraps everything above it.
        .layer(RequestBodyLimitLayer::new(settings.max_body_bytes))
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, settings.request_timeout))
        .layer(middleware::from_fn(move |request: Request, next: Next| request_metrics.clone().observe(request, next)))
        .layer(middleware::from_fn(move |request: Request, next: Next| error_envelope(settings, request, next)))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(SetRequestIdLayer::x_request_id(MakeV7RequestId))
}

/// Request ids are UUIDv7, so they sort by arrival.
#[derive(Clone, Copy)]
struct MakeV7RequestId;

impl MakeRequestId for MakeV7RequestId {
    fn make_request_id<B>(&mut self, _request: &http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&Id::new().to_string()).ok().map(RequestId::new)
    }
}

fn request_span(request: &http::Request<Body>) -> tracing::Span {
    let request_id = request.headers().get("x-request-id").and_then(|value| value.to_str().ok()).unwrap_or("");
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format!("{} {}", request.method(), request.uri().path()),
        otel.kind = "server",
        method = %request.method(),
        path = %request.uri().path(),
        request_id,
    );
    set_parent_from(&span, &HeaderExtractor(request.headers()));
    span
}

/// Turns any error answer that is not already JSON (from the router, extractors or layers)
/// into the error envelope, keeping its status and headers.
async fn error_envelope(settings: EdgeSettings, request: Request, next: Next) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let response = next.run(request).await;
    // axum's Json extractor refuses a wrong content type with 415 and a body of the wrong shape
    // with 422: both are a malformed request to a caller, answered as 400 like every other one.
    let status = match response.status() {
        StatusCode::UNSUPPORTED_MEDIA_TYPE | StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
        status => status,
    };
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let code = ErrorCode::from_http_status(status.as_u16());
    let message = match code {
        ErrorCode::PayloadTooLarge => format!("request body exceeds the {}-byte limit", settings.max_body_bytes),
        ErrorCode::Timeout => format!("request took longer than {} ms", settings.request_timeout.as_millis()),
        ErrorCode::MethodNotAllowed => format!("{method} is not allowed on {path}"),
        ErrorCode::NotFound => format!("no route for {method} {path}"),
        _ => {
            let (_, body) = response.into_parts();
            let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
            let text = String::from_utf8_lossy(&text).trim().to_owned();
            let message =
                if text.is_empty() { status.canonical_reason().unwrap_or("error").to_lowercase() } else { text };
            let mut rewritten = ApiError::new(code, message).into_response();
            *rewritten.status_mut() = status;
            return rewritten;
        }
    };
    let (mut parts, _) = response.into_parts();
    let mut rewritten = ApiError::new(code, message).into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    *rewritten.status_mut() = status;
    rewritten.headers_mut().extend(parts.headers.drain().filter_map(|(name, value)| name.map(|name| (name, value))));
    rewritten
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone)]
struct RequestMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Histogram,
}

impl RequestMetrics {
    fn register(metrics: &Metrics) -> Self {
        let this = Self {
            requests: Family::default(),
            duration: Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0]),
        };
        metrics.register("http", |registry| {
            registry.register("requests", "REST requests answered", this.requests.clone());
            registry.register("request_duration_seconds", "REST request latency", this.duration.clone());
        });
        this
    }

    async fn observe(self, request: Request, next: Next) -> Response {
        let method = request.method().to_string();
        // The matched route template, never the raw path, so ids do not explode cardinality.
        let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_owned();
        let started = Instant::now();
        let response = next.run(request).await;
        self.duration.observe(started.elapsed().as_secs_f64());
        self.requests.get_or_create(&RequestLabels { method, route, status: response.status().as_u16() }).inc();
        response
    }
}

#[cfg(test)]
mod tests {
    use axum::routing::post;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    fn settings() -> EdgeSettings {
        EdgeSettings { max_body_bytes: 64, request_timeout: Duration::from_millis(200) }
    }

    fn test_edge() -> Router {
        let routes = Router::new()
            .route("/echo", post(|body: axum::body::Bytes| async move { body }))
            .route("/slow", get(|| async { tokio::time::sleep(Duration::from_secs(10)).await }))
            .route("/openapi.json", get(openapi::openapi_json));
        edge(routes, settings(), &Metrics::new())
    }

    async fn call(request: http::Request<Body>) -> (StatusCode, http::HeaderMap, Vec<u8>) {
        let response = test_edge().oneshot(request).await.expect("infallible");
        let (parts, body) = response.into_parts();
        (parts.status, parts.headers, body.collect().await.expect("body").to_bytes().to_vec())
    }

    fn envelope(body: &[u8]) -> ErrorDetail {
        serde_json::from_slice::<ErrorBody>(body).expect("error envelope").error
    }

    #[tokio::test]
    async fn unknown_routes_answer_the_error_envelope_with_a_request_id() {
        let (status, headers, body) =
            call(http::Request::get("/v1/nothing").body(Body::empty()).expect("request")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let error = envelope(&body);
        assert_eq!(error.code, "not_found");
        assert!(error.message.contains("/v1/nothing"), "{}", error.message);
        let id = headers.get("x-request-id").expect("request id").to_str().expect("ascii");
        assert!(id.parse::<Id>().is_ok(), "{id}");
    }

    #[tokio::test]
    async fn a_callers_request_id_is_kept() {
        let request =
            http::Request::get("/openapi.json").header("x-request-id", "abc-123").body(Body::empty()).expect("request");
        let (status, headers, _) = call(request).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers.get("x-request-id").and_then(|v| v.to_str().ok()), Some("abc-123"));
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused_with_413() {
        let request = http::Request::post("/echo").body(Body::from(vec![b'x'; 65])).expect("request");
        let (status, _, body) = call(request).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(envelope(&body).code, "payload_too_large");
        let request = http::Request::post("/echo").body(Body::from(vec![b'x'; 64])).expect("request");
        let (status, _, body) = call(request).await;
        assert_eq!((status, body.len()), (StatusCode::OK, 64));
    }

    #[tokio::test]
    async fn slow_requests_time_out_with_the_envelope() {
        let (status, _, body) = call(http::Request::get("/slow").body(Body::empty()).expect("request")).await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        let error = envelope(&body);
        assert_eq!(error.code, "timeout");
        assert!(error.message.contains("200 ms"));
    }

    #[tokio::test]
    async fn wrong_methods_answer_405_in_the_envelope() {
        let (status, _, body) = call(http::Request::delete("/echo").body(Body::empty()).expect("request")).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(envelope(&body).code, "method_not_allowed");
    }
}
