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
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
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
        let body = ErrorBody { error: ErrorDetail { code: self.code.as_str().to_owned(), message: self.message } };
        (status, Json(body)).into_response()
    }
}
