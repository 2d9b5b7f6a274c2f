//! Provider health: consecutive probe and request outcomes, `Retry-After` cool-downs, and the
//! state that routing and `GET /health/detailed` read.
//!
//! A provider starts healthy. `unhealthy_after` consecutive failures (probes, connect errors,
//! timeouts, 5xx responses, or a 200 stream whose first event is an error) mark it unhealthy, and
//! `healthy_after` consecutive successes mark it healthy again. A 429 with `Retry-After` makes it
//! unavailable for that long without changing its health.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tracing::{info, warn};

use super::settings::HealthOptions;

#[derive(Debug, Default)]
struct State {
    unhealthy: bool,
    consecutive_failures: u32,
    consecutive_successes: u32,
    cooldown_until: Option<Instant>,
    last_probe_at_ms: Option<i64>,
    last_probe_latency_ms: Option<u64>,
    last_probe_ok: Option<bool>,
    last_error: Option<String>,
    last_error_at_ms: Option<i64>,
    changed_at_ms: Option<i64>,
}

/// The health of every provider, by name. Providers are added on first use, so that a reloaded
/// config with new providers needs no restart.
#[derive(Default)]
pub struct HealthRegistry {
    providers: RwLock<HashMap<String, Arc<Mutex<State>>>>,
}

/// Source of an observed outcome, for the log line of a state change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    Probe,
    Request,
}

impl HealthRegistry {
    fn state(&self, provider: &str) -> Arc<Mutex<State>> {
        if let Some(state) = self.providers.read().unwrap_or_else(|e| e.into_inner()).get(provider) {
            return state.clone();
        }
        let mut providers = self.providers.write().unwrap_or_else(|e| e.into_inner());
        providers.entry(provider.to_string()).or_default().clone()
    }

    /// Whether routing should prefer this provider: healthy and not cooling down.
    pub fn is_available(&self, provider: &str) -> bool {
        let providers = self.providers.read().unwrap_or_else(|e| e.into_inner());
        let Some(state) = providers.get(provider) else { return true };
        let state = state.lock().unwrap_or_else(|e| e.into_inner());
        !state.unhealthy && state.cooldown_until.is_none_or(|until| until <= Instant::now())
    }

    pub fn record_success(&self, provider: &str, options: &HealthOptions, observed: Observed) {
        let state = self.state(provider);
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        state.consecutive_failures = 0;
        state.consecutive_successes = state.consecutive_successes.saturating_add(1);
        if state.unhealthy && state.consecutive_successes >= options.healthy_after {
            state.unhealthy = false;
            state.changed_at_ms = Some(now_ms());
            info!(provider, successes = state.consecutive_successes, source = ?observed, "provider is healthy again");
        }
    }

    /// Counts a failure. `error` must not contain secrets; it is shown by `/health/detailed`.
    pub fn record_failure(&self, provider: &str, options: &HealthOptions, observed: Observed, error: &str) {
        let state = self.state(provider);
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        state.consecutive_successes = 0;
        state.consecutive_failures = state.consecutive_failures.saturating_add(1);
        state.last_error = Some(error.to_string());
        state.last_error_at_ms = Some(now_ms());
        if !state.unhealthy && state.consecutive_failures >= options.unhealthy_after {
            state.unhealthy = true;
            state.changed_at_ms = Some(now_ms());
            warn!(provider, failures = state.consecutive_failures, source = ?observed, error, "provider marked unhealthy; traffic moves to its fallbacks");
        }
    }

    /// Makes a provider unavailable for `duration` (from an upstream's `Retry-After`).
    pub fn cool_down(&self, provider: &str, duration: Duration) {
        let state = self.state(provider);
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        let until = Instant::now() + duration;
        if state.cooldown_until.is_none_or(|current| current < until) {
            state.cooldown_until = Some(until);
            info!(provider, seconds = duration.as_secs_f64(), "provider cools down after a 429 with Retry-After");
        }
    }

    /// Records a probe's time and latency; the outcome goes through `record_success` or
    /// `record_failure`.
    pub fn record_probe(&self, provider: &str, latency: Duration, ok: bool) {
        let state = self.state(provider);
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        state.last_probe_at_ms = Some(now_ms());
        state.last_probe_latency_ms = Some(latency.as_millis() as u64);
        state.last_probe_ok = Some(ok);
    }

    /// Describes one provider for `/health/detailed`: `status` is `healthy`, `unhealthy` or
    /// `cooling_down`.
    pub fn describe(&self, provider: &str) -> (Value, bool) {
        let state = self.state(provider);
        let state = state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let cooldown_left = state.cooldown_until.filter(|until| *until > now).map(|until| until - now);
        let status = match (state.unhealthy, cooldown_left) {
            (true, _) => "unhealthy",
            (false, Some(_)) => "cooling_down",
            (false, None) => "healthy",
        };
        let body = json!({
            "status": status,
            "consecutive_failures": state.consecutive_failures,
            "consecutive_successes": state.consecutive_successes,
            "cooldown_seconds_left": cooldown_left.map(|d| (d.as_secs_f64() * 10.0).ceil() / 10.0),
            "last_probe_at_ms": state.last_probe_at_ms,
            "last_probe_latency_ms": state.last_probe_latency_ms,
            "last_probe_ok": state.last_probe_ok,
            "last_error": state.last_error,
            "last_error_at_ms": state.last_error_at_ms,
            "changed_at_ms": state.changed_at_ms,
        });
        (body, status == "healthy")
    }
}

/// Parses `Retry-After` as seconds or an HTTP date, capped at `max`.
pub fn parse_retry_after(value: &str, max: Duration) -> Option<Duration> {
    let value = value.trim();
    let duration = match value.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds >= 0.0 => Duration::from_secs_f64(seconds),
        Ok(_) => return None,
        Err(_) => {
            let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            let delta = date.with_timezone(&chrono::Utc) - chrono::Utc::now();
            delta.to_std().unwrap_or(Duration::ZERO)
        }
    };
    (!duration.is_zero()).then(|| duration.min(max))
}

/// Returns `url` with credentials removed: the user info and the values of query parameters
/// whose names suggest a secret.
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else { return "(unparsable URL)".into() };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        let _ = parsed.set_username("REDACTED");
        let _ = parsed.set_password(None);
    }
    if parsed.query().is_some() {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(name, value)| {
                let lower = name.to_ascii_lowercase();
                let secret = ["key", "token", "secret", "password", "signature", "sig", "auth", "credential"].iter().any(|w| lower.contains(w));
                (name.into_owned(), if secret { "REDACTED".into() } else { value.into_owned() })
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> HealthOptions {
        HealthOptions {
            enabled: true,
            path: "/models".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            unhealthy_after: 3,
            healthy_after: 2,
            max_cooldown: Duration::from_secs(60),
        }
    }

    #[test]
    fn unhealthy_after_threshold_and_back() {
        let registry = HealthRegistry::default();
        let options = options();
        assert!(registry.is_available("a"));
        registry.record_failure("a", &options, Observed::Probe, "connection refused");
        registry.record_failure("a", &options, Observed::Request, "status 503");
        assert!(registry.is_available("a"), "two failures are below the threshold of three");
        registry.record_failure("a", &options, Observed::Probe, "connection refused");
        assert!(!registry.is_available("a"));
        registry.record_success("a", &options, Observed::Probe);
        assert!(!registry.is_available("a"), "one success is below the threshold of two");
        registry.record_success("a", &options, Observed::Probe);
        assert!(registry.is_available("a"));
    }

    #[test]
    fn success_resets_failure_streak() {
        let registry = HealthRegistry::default();
        let options = options();
        for _ in 0..2 {
            registry.record_failure("a", &options, Observed::Probe, "x");
        }
        registry.record_success("a", &options, Observed::Request);
        registry.record_failure("a", &options, Observed::Probe, "x");
        assert!(registry.is_available("a"));
    }

    #[test]
    fn cooldown_expires() {
        let registry = HealthRegistry::default();
        registry.cool_down("a", Duration::from_millis(50));
        assert!(!registry.is_available("a"));
        assert_eq!(registry.describe("a").0["status"], "cooling_down");
        std::thread::sleep(Duration::from_millis(80));
        assert!(registry.is_available("a"));
    }

    #[test]
    fn retry_after_forms() {
        let max = Duration::from_secs(300);
        assert_eq!(parse_retry_after("2", max), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("0.5", max), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("100000", max), Some(max));
        assert_eq!(parse_retry_after("soon", max), None);
        assert_eq!(parse_retry_after("0", max), None);
        let later = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        let parsed = parse_retry_after(&later, max).unwrap();
        assert!(parsed > Duration::from_secs(25), "{parsed:?}");
        assert!(parsed <= Duration::from_secs(30), "{parsed:?}");
    }

    #[test]
    fn url_secrets_redacted() {
        let redacted = redact_url("https://user:pw@api.example/v1/models?api_key=sk-123&region=eu");
        assert!(!redacted.contains("sk-123"), "{redacted}");
        assert!(!redacted.contains("pw"), "{redacted}");
        assert!(redacted.contains("region=eu"), "{redacted}");
    }
}
