//! Steps shared by the POST routes: recording the request, applying the `x-mock-*` delays and
//! injected status, and reading common fields of the JSON body.

use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Bytes;
use axum::http::HeaderMap;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::controls::Controls;
use super::errors::MockError;
use super::MockOptions;

/// Largest body that `GET /mock/last-request` returns as text. Larger bodies are reported by
/// length and SHA-256 only.
pub(crate) const MAX_RECORDED_BODY_BYTES: usize = 64 * 1024;

/// Largest `n` accepted, so that one request cannot make the mock build a huge reply.
const MAX_CHOICES: u64 = 128;

/// State shared by all handlers of one router.
#[derive(Debug)]
pub(crate) struct MockState {
    pub options: MockOptions,
    log: Mutex<RequestLog>,
}

#[derive(Debug, Default)]
struct RequestLog {
    post_count: u64,
    /// JSON description of the most recent POST request, as `GET /mock/last-request` returns it.
    last: Option<Value>,
}

impl MockState {
    pub fn new(options: MockOptions) -> Arc<Self> {
        Arc::new(Self {
            options,
            log: Mutex::new(RequestLog::default()),
        })
    }

    /// Starts a POST request: records it, reads its `x-mock-*` headers, waits the requested
    /// latency, and returns the failure that `x-mock-status` requests, if any.
    pub async fn begin(
        &self,
        path: &str,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<Controls, MockError> {
        self.record(path, headers, body);
        let controls = Controls::from_headers(headers, &self.options)?;
        if !controls.header_delay.is_zero() {
            tokio::time::sleep(controls.header_delay).await;
        }
        if let Some(status) = controls.status {
            return Err(MockError::injected(status, controls.retry_after.clone()));
        }
        Ok(controls)
    }

    fn record(&self, path: &str, headers: &HeaderMap, body: &Bytes) {
        let mut header_map = Map::new();
        for (name, value) in headers {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            match header_map.get_mut(name.as_str()) {
                Some(Value::String(existing)) => {
                    existing.push_str(", ");
                    existing.push_str(&value);
                }
                _ => {
                    header_map.insert(name.as_str().to_owned(), Value::String(value));
                }
            }
        }
        let body_text = if body.len() <= MAX_RECORDED_BODY_BYTES {
            std::str::from_utf8(body).ok().map(str::to_owned)
        } else {
            None
        };
        let entry = json!({
            "method": "POST",
            "path": path,
            "headers": header_map,
            "body_sha256": hex::encode(Sha256::digest(body)),
            "body_len": body.len(),
            "body": body_text,
        });

        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        log.post_count += 1;
        log.last = Some(entry);
    }

    /// Returns the recorded most recent POST request, if one arrived.
    pub fn last_request(&self) -> Option<Value> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last
            .clone()
    }

    /// Returns the number of POST requests received.
    pub fn post_count(&self) -> u64 {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .post_count
    }
}

/// Parses the request body as a JSON object.
pub(crate) fn parse_object(body: &Bytes) -> Result<Map<String, Value>, MockError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(MockError::invalid_request(
            "The request body must be a JSON object.",
        )),
        Err(error) => Err(MockError::invalid_request(format!(
            "The request body is not valid JSON: {error}."
        ))),
    }
}

/// Returns the request's `model`, or `mock-model` when it is missing, so replies can echo it.
pub(crate) fn model_name(request: &Map<String, Value>) -> String {
    request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock-model")
        .to_owned()
}

/// Reads `n`, the number of choices per prompt: 1 by default, at most [`MAX_CHOICES`].
pub(crate) fn choice_count(request: &Map<String, Value>) -> Result<u64, MockError> {
    match request.get("n") {
        None | Some(Value::Null) => Ok(1),
        Some(value) => value
            .as_u64()
            .filter(|n| (1..=MAX_CHOICES).contains(n))
            .ok_or_else(|| {
                MockError::invalid_request(format!(
                    "Invalid `n`: expected an integer from 1 to {MAX_CHOICES}, got {value}."
                ))
            }),
    }
}

/// Reads the first of `fields` that is set, as the maximum number of reply words.
pub(crate) fn max_words(
    request: &Map<String, Value>,
    fields: &[&str],
) -> Result<Option<u64>, MockError> {
    for field in fields {
        match request.get(*field) {
            None | Some(Value::Null) => continue,
            Some(value) => {
                let limit = value.as_u64().ok_or_else(|| {
                    MockError::invalid_request(format!(
                        "Invalid `{field}`: expected a non-negative integer, got {value}."
                    ))
                })?;
                return Ok(Some(limit));
            }
        }
    }
    Ok(None)
}

/// Returns true when the request sets `"stream": true`.
pub(crate) fn wants_stream(request: &Map<String, Value>) -> bool {
    request.get("stream").and_then(Value::as_bool) == Some(true)
}

/// Returns true when the request sets `stream_options.include_usage` to true.
pub(crate) fn wants_stream_usage(request: &Map<String, Value>) -> bool {
    request
        .get("stream_options")
        .and_then(|options| options.get("include_usage"))
        .and_then(Value::as_bool)
        == Some(true)
}
