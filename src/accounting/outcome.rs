//! Turning what was seen of a finished request into its usage event.

use serde_json::Value;

use super::event::UsageEvent;
use super::usage::{count_tokens, estimate_prompt_tokens, Usage};
use crate::config::ModelPrice;

/// Everything the proxy observed about one finished request.
#[derive(Debug, Default)]
pub struct RequestOutcome<'a> {
    pub id: &'a str,
    pub created_at_ms: i64,
    pub project_id: &'a str,
    pub key_id: &'a str,
    pub endpoint: &'a str,
    pub model: &'a str,
    pub provider: &'a str,
    pub upstream_model: &'a str,
    pub status: u16,
    pub stream: bool,
    /// Usage reported by the provider, if any.
    pub reported: Option<Usage>,
    /// The request body, for a prompt estimate when no usage was reported.
    pub request: Option<&'a Value>,
    /// Text the provider produced, for a completion estimate when no usage was reported.
    pub completion_text: &'a str,
    /// Whether the request reached the provider at all; if not, it used no tokens.
    pub reached_upstream: bool,
    /// Whether the provider responded with an error (a status of 400 or more, or an error object
    /// as the first event of a stream). Without reported usage, such a response costs nothing.
    pub upstream_error: bool,
    pub price: Option<ModelPrice>,
    pub latency_ms: i64,
    pub ttfb_ms: Option<i64>,
    pub error_type: Option<String>,
    /// What the response cache did: `miss`, `hit-exact`, `hit-semantic` or `bypass`; `None` is `none`.
    pub cache_status: Option<&'a str>,
    /// The cached response that served the request, on a cache hit.
    pub cache_hit: Option<CacheHit>,
}

/// A cache hit for accounting: the original response's tokens and what the upstream charged.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CacheHit {
    pub usage: Usage,
    pub estimated: bool,
    pub original_cost_usd: f64,
    pub similarity: Option<f64>,
}

/// Builds the usage event: the provider's token counts when it reported them, otherwise an estimate
/// with the tokenizer (marked as such), and the cost from the model's price.
pub fn usage_event(outcome: &RequestOutcome<'_>) -> UsageEvent {
    let (usage, estimated) = match (outcome.reported, outcome.reached_upstream) {
        (Some(usage), _) => (usage, false),
        (None, false) => (Usage::default(), false),
        (None, true) if outcome.upstream_error => (Usage::default(), false),
        (None, true) => {
            let prompt_tokens = outcome.request.map(estimate_prompt_tokens).unwrap_or(0);
            let completion_tokens = count_tokens(outcome.completion_text);
            let usage = Usage {
                prompt_tokens,
                completion_tokens,
                total_tokens: prompt_tokens + completion_tokens,
                ..Usage::default()
            };
            (usage, true)
        }
    };
    let cost_usd = outcome
        .price
        .map(|price| price.cost_usd(usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens))
        .unwrap_or(0.0);
    // A hit reports the original response's tokens and costs nothing. What the upstream charged
    // for that response is what the hit saved.
    let (usage, estimated) = match outcome.cache_hit {
        Some(hit) => (hit.usage, hit.estimated),
        None => (usage, estimated),
    };
    let (cost_usd, potential_cost_usd) = match outcome.cache_hit {
        Some(hit) => (0.0, hit.original_cost_usd),
        None => (cost_usd, cost_usd),
    };

    UsageEvent {
        id: outcome.id.to_string(),
        created_at_ms: outcome.created_at_ms,
        project_id: outcome.project_id.to_string(),
        key_id: outcome.key_id.to_string(),
        endpoint: outcome.endpoint.to_string(),
        model: outcome.model.to_string(),
        provider: outcome.provider.to_string(),
        upstream_model: outcome.upstream_model.to_string(),
        status: outcome.status,
        stream: outcome.stream,
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        cached_tokens: usage.cached_tokens,
        reasoning_tokens: usage.reasoning_tokens,
        total_tokens: usage.total_tokens,
        tokens_estimated: estimated,
        cost_usd,
        potential_cost_usd,
        cache_status: outcome.cache_status.unwrap_or("none").to_string(),
        latency_ms: outcome.latency_ms,
        ttfb_ms: outcome.ttfb_ms,
        error_type: outcome.error_type.clone(),
        key_source: "global".to_string(),
        variant: None,
        cache_similarity: outcome.cache_hit.and_then(|hit| hit.similarity),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PRICE: ModelPrice = ModelPrice { input: 1.0, cached_input: Some(0.5), output: 2.0 };

    #[test]
    fn reported_usage_priced() {
        let outcome = RequestOutcome {
            reported: Some(Usage { prompt_tokens: 1000, completion_tokens: 500, cached_tokens: 200, reasoning_tokens: 0, total_tokens: 1500 }),
            reached_upstream: true,
            price: Some(PRICE),
            status: 200,
            ..Default::default()
        };
        let event = usage_event(&outcome);
        assert!(!event.tokens_estimated);
        assert_eq!(event.total_tokens, 1500);
        // 800 * 1 + 200 * 0.5 + 500 * 2 = 1900 per million.
        assert!((event.cost_usd - 0.0019).abs() < 1e-12, "{}", event.cost_usd);
        assert_eq!(event.potential_cost_usd, event.cost_usd);
    }

    #[test]
    fn missing_usage_estimated_and_marked() {
        let request = json!({"messages": [{"role": "user", "content": "hello world"}]});
        let outcome = RequestOutcome {
            request: Some(&request),
            completion_text: "hello world",
            reached_upstream: true,
            price: Some(PRICE),
            ..Default::default()
        };
        let event = usage_event(&outcome);
        assert!(event.tokens_estimated);
        assert_eq!(event.prompt_tokens, 9);
        assert_eq!(event.completion_tokens, 2);
        assert!(event.cost_usd > 0.0);
    }

    #[test]
    fn upstream_error_without_usage_costs_nothing() {
        let request = json!({"messages": [{"role": "user", "content": "hello"}]});
        let outcome = RequestOutcome {
            request: Some(&request),
            reached_upstream: true,
            upstream_error: true,
            price: Some(PRICE),
            status: 429,
            ..Default::default()
        };
        let event = usage_event(&outcome);
        assert_eq!(event.total_tokens, 0);
        assert_eq!(event.cost_usd, 0.0);
        assert!(!event.tokens_estimated);
    }

    #[test]
    fn cache_hit_free_with_original_tokens() {
        let hit = CacheHit {
            usage: Usage { prompt_tokens: 100, completion_tokens: 50, total_tokens: 150, ..Usage::default() },
            estimated: false,
            original_cost_usd: 0.0002,
            similarity: Some(0.93),
        };
        let outcome = RequestOutcome { status: 200, price: Some(PRICE), cache_status: Some("hit-semantic"), cache_hit: Some(hit), ..Default::default() };
        let event = usage_event(&outcome);
        assert_eq!(event.cost_usd, 0.0);
        assert_eq!(event.potential_cost_usd, 0.0002);
        assert_eq!(event.total_tokens, 150);
        assert_eq!(event.cache_status, "hit-semantic");
        assert_eq!(event.cache_similarity, Some(0.93));
    }

    #[test]
    fn request_rejected_before_upstream_costs_nothing() {
        let request = json!({"messages": [{"role": "user", "content": "hello"}]});
        let outcome = RequestOutcome { request: Some(&request), reached_upstream: false, price: Some(PRICE), status: 400, ..Default::default() };
        let event = usage_event(&outcome);
        assert_eq!(event.total_tokens, 0);
        assert_eq!(event.cost_usd, 0.0);
        assert!(!event.tokens_estimated);
    }
}
