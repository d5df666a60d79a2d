//! The edge's one error type and envelope: every failure answers
//! `{"error":{"code","message"}}` with the HTTP status of its [`ErrorCode`]. A gRPC status from
//! an upstream service becomes an [`ApiError`] here, once, through
//! `openledger_runtime::grpc::error_code_of`; no other status→HTTP table exists.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use openledger_core::ErrorCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The body of every error answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `not_found`, `payload_too_large`.
    pub code: String,
    /// What went wrong and what to do about it.
    pub message: String,
}

/// An error answered by the edge: the status comes from the code.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// A finer code than `code`'s text for the body (`model_not_found`, `overloaded`); the
    /// status still comes from `code`.
    pub detail_code: Option<&'static str>,
    /// Sent as `Retry-After` (429 and 503 answers).
    pub retry_after_seconds: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), detail_code: None, retry_after_seconds: None }
    }

    /// The same error with a finer code in its body.
    pub fn with_detail_code(mut self, detail_code: &'static str) -> Self {
        self.detail_code = Some(detail_code);
        self
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_seconds = Some(seconds);
        self
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }
}

/// gRPC answers from the services become REST errors here, once.
impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        Self::new(openledger_runtime::grpc::error_code_of(&status), status.message().to_owned())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let code = self.detail_code.unwrap_or(self.code.as_str()).to_owned();
        let body = ErrorBody { error: ErrorDetail { code, message: self.message } };
        let mut response = (status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after_seconds {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}
