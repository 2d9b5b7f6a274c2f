//! What admission reserves for a request, and settling it to the actual usage when it ends.

use std::sync::Arc;

use serde_json::Value;

use super::quota::{AlertCandidate, ProjectCounters, Totals};
use super::rate::KeyCounters;
use super::settings::PlanLimits;
use crate::accounting::usage::estimate_prompt_tokens;
use crate::accounting::UsageEvent;
use crate::config::ModelPrice;

/// Gateway error codes of requests rejected before admission. Their usage events count no
/// request, so that a rebuild from the stored events counts what admission counted.
pub const NOT_ADMITTED_CODES: [&str; 16] = [
    "missing_api_key",
    "invalid_api_key",
    "unknown_url",
    "method_not_allowed",
    "request_too_large",
    "unsupported_content_encoding",
    "invalid_body_encoding",
    "invalid_json",
    "invalid_request",
    "missing_required_parameter",
    "model_not_found",
    "monthly_request_quota_exceeded",
    "monthly_token_quota_exceeded",
    "monthly_budget_exceeded",
    "rate_limit_exceeded",
    "concurrency_limit_exceeded",
];

/// Returns what a finished request counts against the monthly limits: one request unless it
/// was never admitted, and its tokens and cost.
pub fn counted_usage(event: &UsageEvent) -> Totals {
    let admitted = event.endpoint != "models" && !event.error_type.as_deref().is_some_and(|code| NOT_ADMITTED_CODES.contains(&code));
    Totals { requests: i64::from(admitted), tokens: event.total_tokens.max(0), cost_usd: event.cost_usd.max(0.0) }
}

/// Estimates a request before it runs: its prompt by the tokenizer, plus `max_tokens` (or
/// `max_completion_tokens`, or `default_max_tokens`) for each of its `n` choices, and the cost
/// of both at the model's price. Embeddings have no completion.
pub fn estimate(request: &Value, embeddings: bool, default_max_tokens: i64, price: Option<ModelPrice>) -> Totals {
    let prompt = estimate_prompt_tokens(request);
    let completion = if embeddings {
        0
    } else {
        // One pass over the request's fields costs less than a lookup of each.
        let (mut max_completion_tokens, mut max_tokens, mut n) = (None, None, None);
        for (field, value) in request.as_object().into_iter().flatten() {
            match field.as_str() {
                "max_completion_tokens" => max_completion_tokens = value.as_i64(),
                "max_tokens" => max_tokens = value.as_i64(),
                "n" => n = value.as_i64(),
                _ => {}
            }
        }
        let max_tokens = max_completion_tokens.or(max_tokens).unwrap_or(default_max_tokens).max(0);
        let choices = n.unwrap_or(1).clamp(1, 128);
        max_tokens.saturating_mul(choices)
    };
    let cost_usd = price.map(|p| p.cost_usd(prompt, 0, completion)).unwrap_or(0.0);
    Totals { requests: 1, tokens: prompt.saturating_add(completion), cost_usd }
}

/// The estimate an admitted request keeps reserved until it ends. Dropping it unsettled releases it as
/// a request that used nothing.
#[derive(Debug)]
pub struct Reservation {
    pub(super) project: Option<Arc<ProjectCounters>>,
    pub(super) key: Option<Arc<KeyCounters>>,
    pub(super) limits: PlanLimits,
    pub(super) month_start_ms: i64,
    pub(super) minute_ms: i64,
    pub(super) reserved: Totals,
    pub(super) holds_slot: bool,
    pub(super) settled: bool,
}

impl Reservation {
    pub fn reserved(&self) -> Totals {
        self.reserved
    }

    /// Replaces the estimate by `actual` in every counter, once; returns the alerts now due.
    pub fn settle(&mut self, actual: Totals, thresholds: &[f64]) -> Vec<AlertCandidate> {
        if self.settled {
            return Vec::new();
        }
        self.settled = true;
        if let Some(key) = &self.key {
            if let Ok(mut state) = key.state.lock() {
                state.tokens.add(self.minute_ms, actual.tokens - self.reserved.tokens);
                if self.holds_slot {
                    state.in_flight = (state.in_flight - 1).max(0);
                }
            }
        }
        let Some(project) = &self.project else { return Vec::new() };
        let Ok(mut state) = project.state.lock() else { return Vec::new() };
        state.settle(self.month_start_ms, self.reserved, actual);
        state.due_alerts(&project.project_id, &self.limits, thresholds)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.settle(Totals::default(), &[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn estimate_uses_max_tokens_and_choices() {
        let request = json!({"messages": [{"role": "user", "content": "hello world"}], "max_tokens": 40, "n": 2});
        let estimate = estimate(&request, false, 1024, None);
        assert_eq!(estimate.tokens, 9 + 80);
        assert_eq!(estimate.requests, 1);
    }

    #[test]
    fn max_completion_tokens_wins_over_max_tokens() {
        let request = json!({"max_tokens": 10, "messages": [{"role": "user", "content": "hello world"}], "max_completion_tokens": 40, "n": "two"});
        assert_eq!(estimate(&request, false, 1024, None).tokens, 9 + 40);
    }

    #[test]
    fn estimate_defaults_and_prices() {
        let request = json!({"messages": [{"role": "user", "content": "hello world"}]});
        let price = ModelPrice { input: 1_000_000.0, cached_input: None, output: 2_000_000.0 };
        let estimate = estimate(&request, false, 100, Some(price));
        assert_eq!(estimate.tokens, 109);
        assert!((estimate.cost_usd - (9.0 + 200.0)).abs() < 1e-9, "{}", estimate.cost_usd);
    }

    #[test]
    fn embeddings_reserve_no_completion() {
        let estimate = estimate(&json!({"input": [1, 2, 3]}), true, 1024, None);
        assert_eq!(estimate.tokens, 3);
    }

    #[test]
    fn rejected_requests_count_no_request() {
        let mut event = UsageEvent { endpoint: "chat.completions".into(), total_tokens: 7, cost_usd: 0.5, ..UsageEvent::default() };
        assert_eq!(counted_usage(&event), Totals { requests: 1, tokens: 7, cost_usd: 0.5 });
        event.error_type = Some("upstream_timeout".into());
        assert_eq!(counted_usage(&event).requests, 1);
        event.error_type = Some("rate_limit_exceeded".into());
        assert_eq!(counted_usage(&event).requests, 0);
        event.error_type = None;
        event.endpoint = "models".into();
        assert_eq!(counted_usage(&event).requests, 0);
    }
}
