//! Prometheus metrics. Label values come from bounded sets (configured models and providers,
//! status classes, token kinds), so series stay few; the project label is opt-in.

pub mod cache;

use prometheus::{
    CounterVec, GaugeVec, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::accounting::writer::WriterStats;
use crate::accounting::UsageEvent;

/// Latency buckets in seconds, from 1 ms to 2 minutes: LLM calls span that whole range.
const LATENCY_BUCKETS: [f64; 16] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

pub struct Metrics {
    registry: Registry,
    project_label: bool,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    ttfb: Histogram,
    upstream_duration: Histogram,
    tokens: IntCounterVec,
    cost: CounterVec,
    usage_events: IntCounterVec,
    /// Writer totals at the last scrape, so that counters rise by the difference.
    last_stats: std::sync::Mutex<WriterStats>,
    journal_pending_bytes: IntGauge,
    journal_pending_events: IntGauge,
    config_reloads: IntCounterVec,
    config_loaded_at: IntGauge,
    /// Response cache metrics, updated by the cache itself.
    pub cache: cache::CacheMetrics,
    projected_spend: GaugeVec,
}

/// The labels of one finished request.
pub struct RequestLabels<'a> {
    pub endpoint: &'a str,
    pub model: &'a str,
    pub provider: &'a str,
    pub status: u16,
    pub project: &'a str,
}

/// Maps a status code to its class label, such as `2xx`; 0 (no response) is `none`.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}

impl Metrics {
    /// Registers every metric. Fails only on a programming error (a duplicate or invalid name).
    pub fn new(project_label: bool) -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let request_labels: &[&str] =
            if project_label { &["endpoint", "model", "provider", "status", "project"] } else { &["endpoint", "model", "provider", "status"] };

        let requests = IntCounterVec::new(
            Opts::new("watchllm_requests_total", "Requests served, by endpoint, model, provider and status class."),
            request_labels,
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new("watchllm_request_duration_seconds", "Time from a request's arrival to its end.")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["endpoint", "status"],
        )?;
        let ttfb = Histogram::with_opts(
            HistogramOpts::new("watchllm_time_to_first_byte_seconds", "Time from a request's arrival to the upstream's response headers.")
                .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let upstream_duration = Histogram::with_opts(
            HistogramOpts::new("watchllm_upstream_duration_seconds", "Duration of requests that reached an upstream, to their end.")
                .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let tokens = IntCounterVec::new(
            Opts::new("watchllm_tokens_total", "Tokens accounted, by kind (prompt, completion, cached, reasoning) and model."),
            &["kind", "model"],
        )?;
        let cost = CounterVec::new(Opts::new("watchllm_cost_usd_total", "Cost of served requests in US dollars, by model."), &["model"])?;
        let usage_events = IntCounterVec::new(
            Opts::new("watchllm_usage_events_total", "Usage events by outcome: written to the store, journaled, replayed from the journal, dropped."),
            &["outcome"],
        )?;
        let journal_pending_bytes = IntGauge::new("watchllm_usage_journal_pending_bytes", "Bytes of usage events waiting in the journal.")?;
        let journal_pending_events = IntGauge::new("watchllm_usage_journal_pending_events", "Usage events waiting in the journal.")?;
        let config_reloads = IntCounterVec::new(
            Opts::new("watchllm_config_reloads_total", "Config reloads, by result (success, failure)."),
            &["result"],
        )?;
        let config_loaded_at =
            IntGauge::new("watchllm_config_loaded_timestamp_seconds", "Unix time at which the running config was loaded.")?;

        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(ttfb.clone()))?;
        registry.register(Box::new(upstream_duration.clone()))?;
        registry.register(Box::new(tokens.clone()))?;
        registry.register(Box::new(cost.clone()))?;
        registry.register(Box::new(usage_events.clone()))?;
        registry.register(Box::new(journal_pending_bytes.clone()))?;
        registry.register(Box::new(journal_pending_events.clone()))?;
        registry.register(Box::new(config_reloads.clone()))?;
        registry.register(Box::new(config_loaded_at.clone()))?;
        let cache = cache::CacheMetrics::register(&registry)?;
        let projected_spend = GaugeVec::new(
            Opts::new("watchllm_projected_spend_usd", "Projected month-end spend in US dollars per project, with the 80% interval's lower and upper bounds."),
            &["project", "bound"],
        )?;
        registry.register(Box::new(projected_spend.clone()))?;
        for result in ["success", "failure"] {
            config_reloads.with_label_values(&[result]);
        }

        Ok(Metrics {
            registry,
            project_label,
            requests,
            request_duration,
            ttfb,
            upstream_duration,
            tokens,
            cost,
            usage_events,
            last_stats: std::sync::Mutex::new(WriterStats::default()),
            journal_pending_bytes,
            journal_pending_events,
            config_reloads,
            config_loaded_at,
            cache,
            projected_spend,
        })
    }

    /// Counts a finished request. `event` is present for authenticated requests.
    pub fn observe_request(&self, labels: &RequestLabels<'_>, duration_seconds: f64, event: Option<&UsageEvent>) {
        let status = status_class(labels.status);
        let mut values = vec![labels.endpoint, labels.model, labels.provider, status];
        if self.project_label {
            values.push(labels.project);
        }
        self.requests.with_label_values(&values).inc();
        self.request_duration.with_label_values(&[labels.endpoint, status]).observe(duration_seconds);

        let Some(event) = event else { return };
        if let Some(ttfb_ms) = event.ttfb_ms {
            self.ttfb.observe(ttfb_ms as f64 / 1000.0);
            self.upstream_duration.observe(duration_seconds);
        }
        let kinds = [
            ("prompt", event.prompt_tokens),
            ("completion", event.completion_tokens),
            ("cached", event.cached_tokens),
            ("reasoning", event.reasoning_tokens),
        ];
        for (kind, count) in kinds {
            if count > 0 {
                self.tokens.with_label_values(&[kind, &event.model]).inc_by(count as u64);
            }
        }
        if event.cost_usd > 0.0 {
            self.cost.with_label_values(&[&event.model]).inc_by(event.cost_usd);
        }
    }

    /// Sets the projected month-end spend of a project: the forecast and its interval bounds.
    pub fn set_projected_spend(&self, project: &str, projected: f64, lower: f64, upper: f64) {
        for (bound, value) in [("projected", projected), ("lower", lower), ("upper", upper)] {
            self.projected_spend.with_label_values(&[project, bound]).set(value);
        }
    }

    pub fn observe_reload(&self, success: bool) {
        self.config_reloads.with_label_values(&[if success { "success" } else { "failure" }]).inc();
        if success {
            self.config_loaded_at.set(chrono::Utc::now().timestamp());
        }
    }

    /// Renders the text exposition format, with the accounting figures read at this moment.
    pub fn render(&self, stats: WriterStats, journal_bytes: u64, journal_events: u64) -> String {
        if let Ok(mut last) = self.last_stats.lock() {
            let outcomes = [
                ("written", stats.written, last.written),
                ("journaled", stats.journaled, last.journaled),
                ("replayed", stats.replayed, last.replayed),
                ("dropped", stats.dropped, last.dropped),
            ];
            for (outcome, now, before) in outcomes {
                self.usage_events.with_label_values(&[outcome]).inc_by(now.saturating_sub(before));
            }
            *last = stats;
        }
        self.journal_pending_bytes.set(journal_bytes as i64);
        self.journal_pending_events.set(journal_events as i64);

        let mut buffer = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::warn!(error = %e, "failed to encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    fn event(model: &str) -> UsageEvent {
        UsageEvent {
            model: model.into(),
            prompt_tokens: 10,
            completion_tokens: 5,
            cached_tokens: 2,
            cost_usd: 0.5,
            ttfb_ms: Some(20),
            ..Default::default()
        }
    }

    fn labels(status: u16) -> RequestLabels<'static> {
        RequestLabels { endpoint: "chat.completions", model: "m", provider: "p", status, project: "proj_1" }
    }

    #[test]
    fn request_counted_with_tokens_and_cost() {
        let metrics = Metrics::new(false).unwrap();
        metrics.observe_request(&labels(200), 0.03, Some(&event("m")));
        metrics.observe_request(&labels(503), 0.01, None);
        let text = metrics.render(WriterStats::default(), 0, 0);
        assert!(text.contains(r#"watchllm_requests_total{endpoint="chat.completions",model="m",provider="p",status="2xx"} 1"#), "{text}");
        assert!(text.contains(r#"status="5xx"} 1"#), "{text}");
        assert!(text.contains(r#"watchllm_tokens_total{kind="prompt",model="m"} 10"#), "{text}");
        assert!(text.contains(r#"watchllm_tokens_total{kind="cached",model="m"} 2"#), "{text}");
        assert!(text.contains(r#"watchllm_cost_usd_total{model="m"} 0.5"#), "{text}");
        assert!(text.contains("watchllm_time_to_first_byte_seconds_count 1"), "{text}");
        assert!(!text.contains("project="), "{text}");
    }

    #[test]
    fn project_label_only_when_configured() {
        let metrics = Metrics::new(true).unwrap();
        metrics.observe_request(&labels(200), 0.03, None);
        assert!(metrics.render(WriterStats::default(), 0, 0).contains(r#"project="proj_1""#));
    }

    #[test]
    fn accounting_figures_rendered() {
        let metrics = Metrics::new(false).unwrap();
        let stats = WriterStats { written: 7, journaled: 3, replayed: 2, dropped: 0 };
        let text = metrics.render(stats, 1234, 3);
        assert!(text.contains(r#"watchllm_usage_events_total{outcome="written"} 7"#), "{text}");
        assert!(text.contains("watchllm_usage_journal_pending_bytes 1234"), "{text}");
        let text = metrics.render(WriterStats { written: 9, ..stats }, 0, 0);
        assert!(text.contains(r#"watchllm_usage_events_total{outcome="written"} 9"#), "{text}");
    }

    #[test]
    fn reloads_counted_by_result() {
        let metrics = Metrics::new(false).unwrap();
        metrics.observe_reload(false);
        let text = metrics.render(WriterStats::default(), 0, 0);
        assert!(text.contains(r#"watchllm_config_reloads_total{result="failure"} 1"#), "{text}");
        assert!(text.contains(r#"watchllm_config_reloads_total{result="success"} 0"#), "{text}");
    }

    #[test]
    fn status_classes() {
        assert_eq!(status_class(204), "2xx");
        assert_eq!(status_class(429), "4xx");
        assert_eq!(status_class(0), "none");
    }
}
