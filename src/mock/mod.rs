//! A fake OpenAI-compatible LLM provider for tests, benchmarks and demos.
//!
//! Routes:
//! - `POST /v1/chat/completions`, `POST /v1/completions` (legacy) and `POST /v1/embeddings`,
//!   as JSON or, for the first two, as server-sent events with `"stream": true`;
//! - `GET /v1/models` and `GET /v1/models/{model}`;
//! - `GET /mock/last-request`: the path, lowercased headers, body length, body SHA-256 and body
//!   text (bodies up to 64 KiB of UTF-8, else `null`) of the most recent POST request;
//! - `GET /mock/requests`: `{"count": n}`, the number of POST requests received.
//!
//! Replies are derived from the request alone: the same prompt always gets the same text and
//! usage numbers, and different prompts get different text. A token is counted as one
//! whitespace-separated word, so tests can compute usage by hand. `x-mock-*` request headers add
//! latency or inject failures; [`controls`] lists them.
//!
//! The mock keeps the request log in memory and never logs prompts, completions or header values.

mod chat;
mod content;
pub mod controls;
mod embeddings;
mod errors;
mod request;
mod sse;

#[cfg(test)]
mod test_client;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use errors::MockError;
use request::MockState;

/// Largest request body accepted, in bytes. Larger bodies get a 413 response.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Settings of a mock upstream that apply to every request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MockOptions {
    /// Wait before sending response headers, in milliseconds. The `x-mock-latency-ms` request
    /// header replaces it for one request.
    pub latency_ms: u64,
    /// Wait between the events of a stream, in milliseconds. The `x-mock-chunk-delay-ms` request
    /// header replaces it for one request.
    pub chunk_delay_ms: u64,
}

/// Serve the mock on an already-bound listener until the process ends.
///
/// Prints nothing. Returns only if accepting connections fails.
pub async fn serve(listener: tokio::net::TcpListener, options: MockOptions) -> std::io::Result<()> {
    axum::serve(listener, router(options)).await
}

/// Build the axum router (for unit tests and embedding).
///
/// Each router has its own request log, so `/mock/last-request` reports only requests that
/// reached this router.
pub fn router(options: MockOptions) -> Router {
    let state = MockState::new(options);
    Router::new()
        .route(chat::CHAT_PATH, post(chat::chat_completions))
        .route(chat::COMPLETIONS_PATH, post(chat::completions))
        .route(embeddings::EMBEDDINGS_PATH, post(embeddings::embeddings))
        .route("/v1/models", get(embeddings::list_models))
        .route("/v1/models/{model}", get(embeddings::get_model))
        .route("/mock/last-request", get(last_request))
        .route("/mock/requests", get(request_count))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn last_request(State(state): State<Arc<MockState>>) -> Response {
    match state.last_request() {
        Some(entry) => Json(entry).into_response(),
        None => MockError::not_found("The mock upstream has not received a POST request yet.")
            .into_response(),
    }
}

async fn request_count(State(state): State<Arc<MockState>>) -> Response {
    Json(json!({ "count": state.post_count() })).into_response()
}

async fn not_found(uri: Uri) -> MockError {
    MockError::not_found(format!(
        "The mock upstream has no route for {}. It serves /v1/chat/completions, /v1/completions, /v1/embeddings and /v1/models.",
        uri.path()
    ))
}
