//! The OpenAI-compatible routes: `POST /v1/chat/completions`, `POST /v1/completions` (JSON or
//! SSE), `GET /v1/models`.

use axum::Router;

use super::OpenLora;

/// The OpenAI-compatible routes.
pub fn routes(_state: OpenLora) -> Router {
    Router::new()
}
