//! The `x-mock-*` request headers that shape a reply or inject a failure.
//!
//! | header | value | effect |
//! |---|---|---|
//! | `x-mock-status` | status 200-599 | reply with that status and an OpenAI-style error body |
//! | `x-mock-retry-after` | any header value | with `x-mock-status`, sets `Retry-After` to this value |
//! | `x-mock-latency-ms` | milliseconds | replaces the `latency_ms` option for this request |
//! | `x-mock-delay-ms` | milliseconds | waits this long too before sending response headers |
//! | `x-mock-chunks` | count | number of content chunks in a stream (default 5) |
//! | `x-mock-chunk-delay-ms` | milliseconds | replaces the `chunk_delay_ms` option for this request |
//! | `x-mock-keepalive` | flag | sends an SSE comment `: keep-alive` before the first chunk |
//! | `x-mock-cut-after` | count | closes a stream abruptly after this many content chunks |
//! | `x-mock-malformed` | flag | inserts the invalid event `data: {not json` mid-stream |
//! | `x-mock-no-usage` | flag | omits `usage` from JSON replies and streams |
//! | `x-mock-error-in-200` | flag | replies 200 with an error body, or a stream of one error event |
//! | `x-mock-cached-tokens` | count | value of `usage.prompt_tokens_details.cached_tokens` |
//!
//! A flag is on for `1` or `true` and off for `0` or `false`. Any other value, or a count that
//! is not a non-negative integer, gets a 400 response that names the header.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode};

use super::errors::MockError;
use super::MockOptions;

pub const STATUS: &str = "x-mock-status";
pub const RETRY_AFTER: &str = "x-mock-retry-after";
pub const LATENCY_MS: &str = "x-mock-latency-ms";
pub const DELAY_MS: &str = "x-mock-delay-ms";
pub const CHUNKS: &str = "x-mock-chunks";
pub const CHUNK_DELAY_MS: &str = "x-mock-chunk-delay-ms";
pub const KEEPALIVE: &str = "x-mock-keepalive";
pub const CUT_AFTER: &str = "x-mock-cut-after";
pub const MALFORMED: &str = "x-mock-malformed";
pub const NO_USAGE: &str = "x-mock-no-usage";
pub const ERROR_IN_200: &str = "x-mock-error-in-200";
pub const CACHED_TOKENS: &str = "x-mock-cached-tokens";

/// Default number of content chunks in a streamed reply.
pub const DEFAULT_CHUNKS: u64 = 5;

/// Upper bound for `x-mock-chunks`, so that one request cannot make the mock build a huge stream.
const MAX_CHUNKS: u64 = 10_000;

/// The settings that the `x-mock-*` headers and the [`MockOptions`] give one request.
#[derive(Debug, Clone)]
pub(crate) struct Controls {
    /// Status requested by `x-mock-status`.
    pub status: Option<StatusCode>,
    pub retry_after: Option<HeaderValue>,
    /// Wait before the response headers: the latency plus `x-mock-delay-ms`.
    pub header_delay: Duration,
    /// Number of content chunks per streamed choice, at least 1.
    pub chunks: u64,
    pub chunk_delay: Duration,
    pub keepalive: bool,
    pub cut_after: Option<u64>,
    pub malformed: bool,
    pub no_usage: bool,
    pub error_in_200: bool,
    pub cached_tokens: u64,
}

impl Controls {
    /// Reads the `x-mock-*` headers, falling back to `options` for the latency and chunk delay.
    pub fn from_headers(headers: &HeaderMap, options: &MockOptions) -> Result<Self, MockError> {
        let status = match read_count(headers, STATUS)? {
            None => None,
            Some(code) => Some(parse_status(code)?),
        };
        let latency_ms = read_count(headers, LATENCY_MS)?.unwrap_or(options.latency_ms);
        let delay_ms = read_count(headers, DELAY_MS)?.unwrap_or(0);
        let chunk_delay_ms = read_count(headers, CHUNK_DELAY_MS)?.unwrap_or(options.chunk_delay_ms);
        let chunks = read_count(headers, CHUNKS)?.unwrap_or(DEFAULT_CHUNKS);
        if chunks > MAX_CHUNKS {
            return Err(MockError::invalid_request(format!(
                "Invalid {CHUNKS} header: {chunks} is above the maximum of {MAX_CHUNKS}."
            )));
        }

        Ok(Self {
            status,
            retry_after: headers.get(RETRY_AFTER).cloned(),
            header_delay: Duration::from_millis(latency_ms.saturating_add(delay_ms)),
            chunks: chunks.max(1),
            chunk_delay: Duration::from_millis(chunk_delay_ms),
            keepalive: read_flag(headers, KEEPALIVE)?,
            cut_after: read_count(headers, CUT_AFTER)?,
            malformed: read_flag(headers, MALFORMED)?,
            no_usage: read_flag(headers, NO_USAGE)?,
            error_in_200: read_flag(headers, ERROR_IN_200)?,
            cached_tokens: read_count(headers, CACHED_TOKENS)?.unwrap_or(0),
        })
    }
}

fn parse_status(code: u64) -> Result<StatusCode, MockError> {
    let status = u16::try_from(code)
        .ok()
        .filter(|code| (200..=599).contains(code))
        .and_then(|code| StatusCode::from_u16(code).ok());
    status.ok_or_else(|| {
        MockError::invalid_request(format!(
            "Invalid {STATUS} header: {code} is not a status between 200 and 599."
        ))
    })
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, MockError> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| {
        MockError::invalid_request(format!(
            "Invalid {name} header: the value is not visible ASCII."
        ))
    })?;
    Ok(Some(text.trim()))
}

fn read_count(headers: &HeaderMap, name: &str) -> Result<Option<u64>, MockError> {
    let Some(text) = header_text(headers, name)? else {
        return Ok(None);
    };
    let count = text.parse::<u64>().map_err(|_| {
        MockError::invalid_request(format!(
            "Invalid {name} header: expected a non-negative integer, got {text:?}."
        ))
    })?;
    Ok(Some(count))
}

fn read_flag(headers: &HeaderMap, name: &str) -> Result<bool, MockError> {
    match header_text(headers, name)? {
        None => Ok(false),
        Some("1") | Some("true") => Ok(true),
        Some("0") | Some("false") => Ok(false),
        Some(text) => Err(MockError::invalid_request(format!(
            "Invalid {name} header: expected 1, 0, true or false, got {text:?}."
        ))),
    }
}
