//! [`JsonBody`], the extractor of every JSON request body: a body that is not JSON, or not of
//! the route's shape, answers 400 `invalid_argument` in the envelope (axum's
//! own `Json` answers 415 or 422). JSON has one number type, so an integral number written
//! with a fraction (`5.0`) is the integer it equals, as JSON Schema's `integer` says.

use axum::{
    body::Bytes,
    extract::{FromRequest, Request},
    http::header,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::ApiError;

/// A JSON request body of type `T`.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.trim_start().to_ascii_lowercase().starts_with("application/json"));
        if !is_json {
            return Err(ApiError::invalid("the body must be JSON: send content-type: application/json"));
        }
        // The edge's body limit layer bounds what is read here (413 past it).
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            ApiError::new(
                openledger_core::ErrorCode::from_http_status(rejection.status().as_u16()),
                rejection.body_text(),
            )
        })?;
        let mut value: Value = serde_json::from_slice(&bytes)
            .map_err(|error| ApiError::invalid(format!("the body is not valid JSON: {error}")))?;
        integral_numbers_as_integers(&mut value);
        serde_json::from_value(value)
            .map(Self)
            .map_err(|error| ApiError::invalid(format!("the body does not fit: {error}")))
    }
}

fn integral_numbers_as_integers(value: &mut Value) {
    match value {
        Value::Number(number) if number.is_f64() => {
            if let Some(float) = number.as_f64().filter(|float| float.fract() == 0.0) {
                if float >= 0.0 && float < u64::MAX as f64 {
                    *value = Value::from(float as u64);
                } else if float < 0.0 && float >= i64::MIN as f64 {
                    *value = Value::from(float as i64);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_numbers_as_integers),
        Value::Object(fields) => fields.values_mut().for_each(integral_numbers_as_integers),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use openledger_core::ErrorCode;
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Shape {
        count: u32,
        at: i64,
    }

    async fn extract(content_type: &str, body: &str) -> Result<Shape, ApiError> {
        let request = http::Request::post("/").header("content-type", content_type).body(Body::from(body.to_owned()));
        JsonBody::<Shape>::from_request(request.expect("request"), &()).await.map(|JsonBody(shape)| shape)
    }

    #[tokio::test]
    async fn integral_numbers_with_a_fraction_are_integers() {
        assert_eq!(
            extract("application/json", r#"{"count": 5.0, "at": -7.0}"#).await.expect("ok"),
            Shape { count: 5, at: -7 }
        );
        assert!(extract("application/json", r#"{"count": 5.5, "at": 0}"#).await.is_err());
    }

    #[tokio::test]
    async fn wrong_content_types_and_shapes_are_400_naming_the_field() {
        for (content_type, body) in [
            ("text/plain", r#"{"count": 1, "at": 0}"#),
            ("application/json", "{"),
            ("application/json", r#"{"count": -1, "at": 0}"#),
        ] {
            let error = extract(content_type, body).await.expect_err("refused");
            assert_eq!(error.code, ErrorCode::InvalidArgument, "{content_type} {body}");
        }
        let error = extract("application/json", r#"{"at": 0}"#).await.expect_err("refused");
        assert!(error.message.contains("count"), "{}", error.message);
    }
}
