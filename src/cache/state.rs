//! The cache's part of one request's context.

use bytes::BytesMut;

use super::config::ProjectCache;
use super::entry::TokenCounts;
use super::guard::Salient;
use super::key::RequestKeys;

/// The cache's result for a request, as reported in `x-watchllm-cache` and the usage event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheStatus {
    /// The cache is off for this request's project or endpoint.
    #[default]
    None,
    Miss,
    HitExact,
    HitSemantic,
    /// The request turned the lookup off (`x-watchllm-cache: off`, `Cache-Control: no-store` or
    /// `no-cache`), or it cannot be cached (`n > 1`).
    Bypass,
}

impl CacheStatus {
    pub fn name(self) -> &'static str {
        match self {
            CacheStatus::None => "none",
            CacheStatus::Miss => "miss",
            CacheStatus::HitExact => "hit-exact",
            CacheStatus::HitSemantic => "hit-semantic",
            CacheStatus::Bypass => "bypass",
        }
    }
}

/// The accounting record of a hit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HitRecord {
    pub tokens: TokenCounts,
    /// Cost that the upstream charged for the cached response, in US dollars.
    pub original_cost_usd: f64,
    pub similarity: Option<f32>,
}

#[derive(Debug, Default)]
pub struct CacheState {
    pub status: CacheStatus,
    /// Whether the response may be stored once it is complete.
    pub store: bool,
    pub project: Option<ProjectCache>,
    pub keys: Option<RequestKeys>,
    /// Embedding of the last user message, computed by the lookup and reused by the store.
    pub vector: Option<Vec<f32>>,
    pub salient: Option<Salient>,
    pub hit: Option<HitRecord>,
    /// The raw upstream response, kept for storing it.
    pub captured: BytesMut,
    pub capture_overflow: bool,
    pub max_entry_bytes: usize,
}

impl CacheState {
    /// Keeps a piece of the upstream response while the response may be stored.
    pub fn capture(&mut self, piece: &[u8]) {
        if !self.store || self.capture_overflow {
            return;
        }
        if self.captured.len() + piece.len() > self.max_entry_bytes {
            self.capture_overflow = true;
            self.captured = BytesMut::new();
            return;
        }
        self.captured.extend_from_slice(piece);
    }
}
