//! Reading a contribution's upload from a REST request: a `multipart/form-data` form or a raw
//! JSON/JSONL body with the signer in headers.

use axum::{
    body::Bytes,
    extract::{FromRequest, Multipart, Request},
};
use openledger_core::ErrorCode;
use openledger_signing::headers;

use openledger_proto::common::v1 as common;

use crate::edge::{ApiError, signature::signature};

pub(super) struct RestUpload {
    pub file_name: String,
    pub media_type: String,
    pub bytes: Bytes,
    /// The signer; 401 when missing or malformed, like a signature that does not verify.
    pub signature: common::Signature,
    pub account_id: Option<u128>,
}

fn parse_account(text: &str) -> Result<Option<u128>, ApiError> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| ApiError::new(ErrorCode::InvalidArgument, "the account id must be a decimal number"))
}

pub(super) async fn body_upload(request: Request) -> Result<RestUpload, ApiError> {
    let (parts, body) = request.into_parts();
    let header = |name: &str| {
        parts.headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_owned).unwrap_or_default()
    };
    let (key, signed, account) = (header(headers::KEY), header(headers::SIGNATURE), header(headers::ACCOUNT));
    let file_name = Some(header(headers::FILE_NAME)).filter(|name| !name.is_empty()).unwrap_or("upload.jsonl".into());
    if key.is_empty() || signed.is_empty() {
        return Err(ApiError::new(
            ErrorCode::Unauthenticated,
            "a JSON or JSONL contribution needs the x-openledger-key and x-openledger-signature headers",
        ));
    }
    let upload = RestUpload {
        media_type: "application/jsonl".into(),
        file_name,
        bytes: Bytes::new(),
        signature: signature(&key, &signed)?,
        account_id: parse_account(&account)?,
    };
    // The edge's body limit layer bounds what is read here.
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|error| ApiError::new(ErrorCode::InvalidArgument, format!("reading the body: {error}")))?;
    Ok(RestUpload { bytes, ..upload })
}

pub(super) async fn multipart_upload(request: Request) -> Result<RestUpload, ApiError> {
    let bad = |message: String| ApiError::new(ErrorCode::InvalidArgument, message);
    let mut form = Multipart::from_request(request, &()).await.map_err(|error| bad(format!("multipart: {error}")))?;
    let (mut file, mut key, mut signed, mut account) = (None, String::new(), String::new(), String::new());
    while let Some(field) = form.next_field().await.map_err(|error| bad(format!("multipart: {error}")))? {
        let name = field.name().unwrap_or_default().to_owned();
        match name.as_str() {
            "file" => {
                let file_name = field.file_name().unwrap_or("upload").to_owned();
                let media_type = field.content_type().unwrap_or_default().to_owned();
                let bytes = field.bytes().await.map_err(|error| bad(format!("multipart file: {error}")))?;
                file = Some((file_name, media_type, bytes));
            }
            "public_key" | "signature" | "account_id" => {
                let text = field.text().await.map_err(|error| bad(format!("multipart {name}: {error}")))?;
                match name.as_str() {
                    "public_key" => key = text,
                    "signature" => signed = text,
                    _ => account = text,
                }
            }
            other => {
                return Err(bad(format!(
                    "unknown multipart field {other:?}: expected file, public_key, signature, account_id"
                )));
            }
        }
    }
    let (file_name, media_type, bytes) = file.ok_or_else(|| bad("the multipart form needs a `file` part".into()))?;
    Ok(RestUpload {
        file_name,
        media_type,
        bytes,
        signature: signature(&key, &signed)?,
        account_id: parse_account(&account)?,
    })
}
