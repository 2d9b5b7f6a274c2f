//! The usage event: one row per request, written to the store and to the journal.

use serde::{Deserialize, Serialize};

/// What one request used and cost, as recorded after it ended.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageEvent {
    /// Request id (UUID v4). Unique, so that replaying the journal cannot insert a row twice.
    pub id: String,
    /// Start of the request, in milliseconds since the Unix epoch (UTC).
    pub created_at_ms: i64,
    pub project_id: String,
    pub key_id: String,
    /// API endpoint: `chat.completions`, `completions` or `embeddings`.
    pub endpoint: String,
    /// Model name the client requested.
    pub model: String,
    /// Provider name from the config.
    pub provider: String,
    /// Model id sent to the provider.
    pub upstream_model: String,
    /// HTTP status sent to the client.
    pub status: u16,
    pub stream: bool,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// Prompt tokens served from the provider's prompt cache; part of `prompt_tokens`.
    pub cached_tokens: i64,
    /// Reasoning tokens; part of `completion_tokens`.
    pub reasoning_tokens: i64,
    pub total_tokens: i64,
    /// True when the provider reported no usage and the gateway counted tokens itself.
    pub tokens_estimated: bool,
    pub cost_usd: f64,
    /// What the request would have cost without the gateway's response cache.
    pub potential_cost_usd: f64,
    /// `none`, `miss`, `hit-exact`, `hit-semantic` or `bypass`.
    pub cache_status: String,
    /// Time from the request's arrival to its end, in milliseconds.
    pub latency_ms: i64,
    /// Time from the request's arrival to the first response byte from upstream, in milliseconds.
    pub ttfb_ms: Option<i64>,
    /// Error kind when the request failed, such as `upstream_timeout` or `client_disconnected`.
    pub error_type: Option<String>,
    /// Whose provider key served the request: `global` (the gateway's) or `byok` (the project's).
    #[serde(default)]
    pub key_source: String,
    /// A/B experiment variant that served the request, if any.
    #[serde(default)]
    pub variant: Option<String>,
    /// Similarity of the prompt to the cached one, on a semantic cache hit.
    #[serde(default)]
    pub cache_similarity: Option<f64>,
}
