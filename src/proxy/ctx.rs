//! Per-request state carried through the Pingora phases.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rand::RngCore;

use super::request::PreparedRequest;
use crate::accounting::SseScanner;
use crate::auth::KeyEntry;
use crate::config::{ModelRoute, RuntimeConfig};
use crate::error::GatewayError;
use crate::routing::Endpoint;

/// Most bytes of a non-streamed response kept to read its `usage`. Larger bodies are still
/// forwarded whole, and their tokens are estimated.
pub const MAX_CAPTURED_RESPONSE: usize = 32 * 1024 * 1024;

/// Counts a request as in flight from its context's creation to its drop, so that a graceful
/// shutdown can wait for the requests still running.
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    pub fn enter(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct RequestCtx {
    pub id: String,
    _in_flight: InFlight,
    pub started: Instant,
    pub started_at_ms: i64,
    /// The config this request started with; a reload does not change it mid-request.
    pub config: Option<Arc<RuntimeConfig>>,
    pub endpoint: Option<Endpoint>,
    pub key: Option<Arc<KeyEntry>>,
    pub route: Option<ModelRoute>,
    pub request: Option<PreparedRequest>,
    /// The error the gateway sent to the client, if it sent one.
    pub error: Option<GatewayError>,
    pub upstream_status: Option<u16>,
    pub ttfb: Option<Duration>,
    pub sse: Option<SseScanner>,
    /// Body of a non-streamed response, captured up to `MAX_CAPTURED_RESPONSE` bytes.
    pub response_body: BytesMut,
    pub response_body_overflow: bool,
    /// Status sent to the client by `fail_to_proxy`, when the proxy failed.
    pub failure_status: Option<u16>,
    /// The client's address, after trusted proxies.
    pub client_ip: Option<std::net::IpAddr>,
    /// The estimate admission reserved, settled when the request ends.
    pub reservation: Option<crate::limits::Reservation>,
    /// `x-ratelimit-*` headers for the response.
    pub limit_headers: crate::limits::headers::Headers,
    /// `Retry-After` of a request rejected by a limit, in seconds.
    pub retry_after_s: Option<u64>,
    /// What the response cache did and what it keeps to store the response.
    pub cache: crate::cache::CacheState,
    /// The variant, the providers to try in order and the key for the current attempt.
    pub plan: Option<crate::routing::select::RoutePlan>,
}

/// Returns a new request id: a UUID version 7, ordered by time so that usage rows are appended at
/// the end of the id index. Its 74 random bits come from the thread's CSPRNG (`rand`'s
/// `ThreadRng`), because `Uuid::now_v7` made one or two `getrandom` system calls per request
/// (counted with strace).
pub fn request_id(unix_ms: i64) -> String {
    let mut random = [0u8; 10];
    rand::thread_rng().fill_bytes(&mut random);
    uuid::Builder::from_unix_timestamp_millis(unix_ms.max(0) as u64, &random).into_uuid().to_string()
}

impl RequestCtx {
    pub fn new(in_flight: InFlight) -> Self {
        let started_at_ms = chrono::Utc::now().timestamp_millis();
        RequestCtx {
            id: request_id(started_at_ms),
            _in_flight: in_flight,
            started: Instant::now(),
            started_at_ms,
            config: None,
            endpoint: None,
            key: None,
            route: None,
            request: None,
            error: None,
            upstream_status: None,
            ttfb: None,
            sse: None,
            response_body: BytesMut::new(),
            response_body_overflow: false,
            failure_status: None,
            client_ip: None,
            reservation: None,
            limit_headers: Vec::new(),
            retry_after_s: None,
            cache: Default::default(),
            plan: None,
        }
    }

    /// Keeps a piece of a non-streamed response for reading its usage at the end.
    pub fn capture_response(&mut self, piece: &[u8]) {
        if self.response_body_overflow {
            return;
        }
        if self.response_body.len() + piece.len() > MAX_CAPTURED_RESPONSE {
            self.response_body_overflow = true;
            self.response_body = BytesMut::new();
            return;
        }
        self.response_body.extend_from_slice(piece);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_version_7_has_time() {
        let unix_ms = 1_780_000_123_456;
        let id = request_id(unix_ms);
        let parsed = uuid::Uuid::parse_str(&id).expect("a UUID");
        assert_eq!(parsed.get_version_num(), 7);
        let (seconds, nanos) = parsed.get_timestamp().expect("version 7 has a timestamp").to_unix();
        assert_eq!(seconds * 1000 + u64::from(nanos) / 1_000_000, unix_ms as u64);
    }

    #[test]
    fn request_ids_unique_and_time_ordered() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| request_id(1_780_000_000_000)).collect();
        assert_eq!(ids.len(), 1000, "random bits differ within one millisecond");
        assert!(request_id(1_780_000_000_000) < request_id(1_780_000_000_001), "a later millisecond sorts after");
    }
}
