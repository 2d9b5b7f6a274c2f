//! A/B experiments: a requested model split between weighted variants, with sticky assignment.
//!
//! A user's variant is chosen by a SHA-256 hash of the experiment name and the user id, mapped to
//! a point in `[0, total weight)`. The same user therefore keeps the same variant across
//! requests, gateways and restarts, as long as the experiment's variants and weights stay the
//! same. A variant with weight 0 owns an empty interval and is never chosen.

use http::{HeaderMap, HeaderName};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::ModelRoute;

/// Request header that forces a variant by name, and response header that names the variant.
pub static VARIANT_HEADER: HeaderName = HeaderName::from_static("x-watchllm-variant");

#[derive(Clone, Debug)]
pub struct Variant {
    pub name: String,
    pub weight: f64,
    /// The configured model that serves this variant.
    pub model: String,
    /// Provider, upstream model and price of the variant; `route.name` is the requested model.
    pub route: ModelRoute,
    pub parameters: Map<String, Value>,
}

#[derive(Clone, Debug)]
pub struct Experiment {
    pub name: String,
    /// The requested model name that the experiment applies to.
    pub model: String,
    /// Lowercase header name that identifies the end user; empty when not configured.
    pub user_header: String,
    pub enabled: bool,
    pub variants: Vec<Variant>,
    /// Running sums of the weights, one per variant.
    cumulative: Vec<f64>,
}

impl Experiment {
    pub fn new(name: String, model: String, user_header: String, enabled: bool, variants: Vec<Variant>) -> Self {
        let mut total = 0.0;
        let cumulative = variants
            .iter()
            .map(|variant| {
                total += variant.weight;
                total
            })
            .collect();
        Experiment { name, model, user_header, enabled, variants, cumulative }
    }

    pub fn total_weight(&self) -> f64 {
        self.cumulative.last().copied().unwrap_or(0.0)
    }

    pub fn variant(&self, name: &str) -> Option<&Variant> {
        self.variants.iter().find(|v| v.name == name)
    }

    /// Picks the variant for a user id. Deterministic: the same id always gets the same variant.
    pub fn assign(&self, user: &str) -> &Variant {
        let point = unit_hash(&self.name, user) * self.total_weight();
        let index = self.cumulative.iter().position(|&bound| point < bound);
        // Rounding can leave the point at the total; the last variant with weight takes it.
        let index = index.or_else(|| self.variants.iter().rposition(|v| v.weight > 0.0)).unwrap_or(0);
        &self.variants[index]
    }

    /// Returns the user id of a request: the body's `user`, else the configured header, else the
    /// API key id.
    pub fn user_id<'a>(&self, body: &'a Value, headers: &'a HeaderMap, key_id: &'a str) -> &'a str {
        if let Some(user) = body.get("user").and_then(Value::as_str).filter(|u| !u.is_empty()) {
            return user;
        }
        if !self.user_header.is_empty() {
            if let Some(value) = headers.get(self.user_header.as_str()).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()) {
                return value;
            }
        }
        key_id
    }
}

/// Maps (experiment, user) to a number in `[0, 1)` from the first 8 bytes of a SHA-256 hash.
fn unit_hash(experiment: &str, user: &str) -> f64 {
    let mut hasher = Sha256::new();
    hasher.update(experiment.as_bytes());
    hasher.update([0u8]);
    hasher.update(user.as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // 53 bits fill an f64 mantissa exactly, so the result is uniform and below 1.
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{ModelPrice, Provider};
    use statrs::distribution::{ChiSquared, ContinuousCDF};
    use std::sync::Arc;
    use std::time::Duration;

    pub(crate) fn experiment(weights: &[(&str, f64)]) -> Experiment {
        let provider = Arc::new(Provider {
            name: "p".into(),
            tls: false,
            host: "127.0.0.1".into(),
            port: 1,
            addresses: vec![([127, 0, 0, 1], 1).into()],
            base_path: "/v1".into(),
            sni: "127.0.0.1".into(),
            api_key: None,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
        });
        let variants = weights
            .iter()
            .map(|(name, weight)| Variant {
                name: name.to_string(),
                weight: *weight,
                model: "m".into(),
                route: ModelRoute { name: "m".into(), provider: provider.clone(), upstream_model: "m".into(), price: ModelPrice { input: 1.0, cached_input: None, output: 1.0 } },
                parameters: Map::new(),
            })
            .collect();
        Experiment::new("exp".into(), "m".into(), String::new(), true, variants)
    }

    fn counts(experiment: &Experiment, users: usize) -> Vec<usize> {
        let mut counts = vec![0; experiment.variants.len()];
        for user in 0..users {
            let chosen = experiment.assign(&format!("user-{user}"));
            let index = experiment.variants.iter().position(|v| v.name == chosen.name).unwrap();
            counts[index] += 1;
        }
        counts
    }

    #[test]
    fn small_weight_gets_its_share() {
        let counts = counts(&experiment(&[("big", 0.995), ("small", 0.005)]), 20_000);
        assert!((50..=160).contains(&counts[1]), "small variant got {} of 20000", counts[1]);
    }

    #[test]
    fn zero_weight_gets_nothing() {
        let counts = counts(&experiment(&[("a", 1.0), ("never", 0.0), ("b", 1.0)]), 20_000);
        assert_eq!(counts[1], 0);
        assert_eq!(counts[0] + counts[2], 20_000);
        let only_first = counts_first_zero();
        assert_eq!(only_first, 0);
    }

    fn counts_first_zero() -> usize {
        counts(&experiment(&[("never", 0.0), ("all", 3.0)]), 5_000)[0]
    }

    #[test]
    fn even_split_passes_chi_square() {
        let counts = counts(&experiment(&[("a", 50.0), ("b", 50.0)]), 20_000);
        let expected = 10_000.0;
        let statistic: f64 = counts.iter().map(|&c| (c as f64 - expected).powi(2) / expected).sum();
        let p_value = 1.0 - ChiSquared::new(1.0).unwrap().cdf(statistic);
        assert!(p_value > 0.01, "counts {counts:?}, chi-square {statistic}, p {p_value}");
    }

    #[test]
    fn assignment_is_sticky() {
        let experiment = experiment(&[("a", 1.0), ("b", 1.0), ("c", 1.0)]);
        for user in ["alice", "bob", "carol", ""] {
            let first = experiment.assign(user).name.clone();
            for _ in 0..10 {
                assert_eq!(experiment.assign(user).name, first, "user {user:?}");
            }
        }
    }

    #[test]
    fn user_id_precedence() {
        let mut experiment = experiment(&[("a", 1.0)]);
        experiment.user_header = "x-end-user".into();
        let mut headers = HeaderMap::new();
        headers.insert("x-end-user", "from-header".parse().unwrap());
        let with_user = serde_json::json!({"user": "from-body"});
        let without = serde_json::json!({});
        assert_eq!(experiment.user_id(&with_user, &headers, "key_1"), "from-body");
        assert_eq!(experiment.user_id(&without, &headers, "key_1"), "from-header");
        assert_eq!(experiment.user_id(&without, &HeaderMap::new(), "key_1"), "key_1");
    }
}
