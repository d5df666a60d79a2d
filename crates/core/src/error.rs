//! Error codes shared by every edge: REST answers `{"error":{"code","message"}}` with the
//! code's text and HTTP status, gRPC answers with the matching status code. Each edge maps
//! errors through these once, never with ad-hoc strings.

use serde::{Deserialize, Serialize};

/// What went wrong, in terms a caller can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidArgument,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    MethodNotAllowed,
    AlreadyExists,
    FailedPrecondition,
    PayloadTooLarge,
    /// The paying account cannot cover the (held) fee.
    InsufficientFunds,
    ResourceExhausted,
    Timeout,
    Unimplemented,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 14] = [
        Self::InvalidArgument,
        Self::Unauthenticated,
        Self::PermissionDenied,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::AlreadyExists,
        Self::FailedPrecondition,
        Self::PayloadTooLarge,
        Self::InsufficientFunds,
        Self::ResourceExhausted,
        Self::Timeout,
        Self::Unimplemented,
        Self::Unavailable,
        Self::Internal,
    ];

    /// The stable text used in JSON error bodies.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidArgument => "invalid_argument",
            Self::Unauthenticated => "unauthenticated",
            Self::PermissionDenied => "permission_denied",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::AlreadyExists => "already_exists",
            Self::FailedPrecondition => "failed_precondition",
            Self::PayloadTooLarge => "payload_too_large",
            Self::InsufficientFunds => "insufficient_funds",
            Self::ResourceExhausted => "resource_exhausted",
            Self::Timeout => "timeout",
            Self::Unimplemented => "unimplemented",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    pub const fn http_status(self) -> u16 {
        match self {
            Self::InvalidArgument => 400,
            Self::Unauthenticated => 401,
            Self::PermissionDenied => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::AlreadyExists => 409,
            Self::FailedPrecondition => 412,
            Self::PayloadTooLarge => 413,
            Self::InsufficientFunds => 402,
            Self::ResourceExhausted => 429,
            Self::Timeout => 408,
            Self::Unimplemented => 501,
            Self::Unavailable => 503,
            Self::Internal => 500,
        }
    }

    /// The gRPC status code number (see `tonic::Code`).
    pub const fn grpc_code(self) -> i32 {
        match self {
            Self::InvalidArgument => 3,
            Self::Timeout => 4,
            Self::NotFound => 5,
            Self::AlreadyExists => 6,
            Self::PermissionDenied => 7,
            Self::ResourceExhausted | Self::PayloadTooLarge => 8,
            Self::FailedPrecondition | Self::InsufficientFunds => 9,
            Self::MethodNotAllowed | Self::Unimplemented => 12,
            Self::Internal => 13,
            Self::Unavailable => 14,
            Self::Unauthenticated => 16,
        }
    }

    /// The code a gRPC status code number means: the inverse of [`Self::grpc_code`] for every
    /// code but the gRPC merges (`PayloadTooLarge` reads back as `ResourceExhausted`,
    /// `MethodNotAllowed` as `Unimplemented`, `InsufficientFunds` as `FailedPrecondition`; the
    /// runtime's status metadata keeps them), plus
    /// gRPC's own codes no platform code makes.
    pub const fn from_grpc_code(code: i32) -> Self {
        match code {
            3 | 11 => Self::InvalidArgument, // 11: OUT_OF_RANGE
            4 => Self::Timeout,
            5 => Self::NotFound,
            6 => Self::AlreadyExists,
            7 => Self::PermissionDenied,
            8 => Self::ResourceExhausted,
            9 | 10 => Self::FailedPrecondition, // 10: ABORTED
            12 => Self::Unimplemented,
            14 => Self::Unavailable,
            16 => Self::Unauthenticated,
            _ => Self::Internal, // OK, CANCELLED, UNKNOWN, INTERNAL, DATA_LOSS
        }
    }

    /// The code an HTTP status most likely means, for errors raised by middleware.
    pub fn from_http_status(status: u16) -> Self {
        Self::ALL.into_iter().find(|code| code.http_status() == status).unwrap_or(if status >= 500 {
            Self::Internal
        } else {
            Self::InvalidArgument
        })
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_matches_serde_and_statuses_map_back() {
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).expect("json"), code.as_str());
            assert_eq!(ErrorCode::from_http_status(code.http_status()), code);
        }
        assert_eq!(ErrorCode::from_http_status(502), ErrorCode::Internal);
    }

    #[test]
    fn grpc_codes_map_back_to_the_code_that_made_them_except_the_two_merges() {
        for code in ErrorCode::ALL {
            let back = ErrorCode::from_grpc_code(code.grpc_code());
            match code {
                ErrorCode::PayloadTooLarge => assert_eq!(back, ErrorCode::ResourceExhausted),
                ErrorCode::MethodNotAllowed => assert_eq!(back, ErrorCode::Unimplemented),
                ErrorCode::InsufficientFunds => assert_eq!(back, ErrorCode::FailedPrecondition),
                _ => assert_eq!(back, code),
            }
        }
        // gRPC's codes no platform code makes.
        let others = [(0, ErrorCode::Internal), (1, ErrorCode::Internal), (2, ErrorCode::Internal)];
        let others = others.into_iter().chain([(10, ErrorCode::FailedPrecondition), (11, ErrorCode::InvalidArgument)]);
        for (grpc, code) in others.chain([(15, ErrorCode::Internal), (99, ErrorCode::Internal)]) {
            assert_eq!(ErrorCode::from_grpc_code(grpc), code, "gRPC code {grpc}");
        }
    }
}
