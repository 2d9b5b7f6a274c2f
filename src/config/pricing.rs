//! Model prices and the cost of a request.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Prices of one model in USD per million tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    pub input: f64,
    /// Price of prompt tokens served from the provider's prompt cache; defaults to `input`.
    #[serde(default)]
    pub cached_input: Option<f64>,
    pub output: f64,
}

/// The pricing file: model name to price.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricingTable {
    pub models: BTreeMap<String, ModelPrice>,
}

impl ModelPrice {
    /// Computes the cost in USD of a request's tokens.
    ///
    /// Cached tokens are part of the prompt tokens: they are charged once, at the cached rate, and the
    /// rest of the prompt at the input rate. Counts that contradict each other (more cached than prompt
    /// tokens, negative counts) are clamped, so the cost is never negative.
    pub fn cost_usd(&self, prompt_tokens: i64, cached_tokens: i64, completion_tokens: i64) -> f64 {
        let prompt = prompt_tokens.max(0) as f64;
        let cached = (cached_tokens.max(0) as f64).min(prompt);
        let completion = completion_tokens.max(0) as f64;
        let cached_rate = self.cached_input.unwrap_or(self.input);

        let cost = (prompt - cached) * self.input + cached * cached_rate + completion * self.output;
        (cost / 1_000_000.0).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price() -> ModelPrice {
        ModelPrice { input: 2.0, cached_input: Some(0.5), output: 8.0 }
    }

    #[test]
    fn cost_charges_each_token_kind() {
        let cost = price().cost_usd(1_000_000, 0, 1_000_000);
        assert!((cost - 10.0).abs() < 1e-9, "{cost}");
    }

    #[test]
    fn cached_tokens_charged_once_at_cached_rate() {
        // 1M prompt tokens of which 400k cached: 600k * 2 + 400k * 0.5 = 1.4 USD.
        let cost = price().cost_usd(1_000_000, 400_000, 0);
        assert!((cost - 1.4).abs() < 1e-9, "{cost}");
    }

    #[test]
    fn cached_beyond_prompt_is_clamped() {
        let cost = price().cost_usd(100, 500, 0);
        assert!((cost - 100.0 * 0.5 / 1e6).abs() < 1e-12, "{cost}");
    }

    #[test]
    fn negative_counts_cost_nothing() {
        assert_eq!(price().cost_usd(-5, -5, -5), 0.0);
    }

    #[test]
    fn cached_rate_defaults_to_input() {
        let price = ModelPrice { input: 1.0, cached_input: None, output: 0.0 };
        assert!((price.cost_usd(1000, 1000, 0) - 0.001).abs() < 1e-12);
    }
}
