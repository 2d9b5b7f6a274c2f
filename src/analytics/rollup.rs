//! Rollups: usage events summed per project, UTC hour or day, model, provider, A/B variant and
//! cache status. The store keeps them in `usage_rollups_hourly` and `usage_rollups_daily`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::accounting::UsageEvent;

pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 86_400_000;

/// Upper bounds of the latency histogram buckets in milliseconds; a last bucket counts the rest.
pub const LATENCY_BOUNDS_MS: [i64; 9] = [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000];
/// Number of histogram buckets: one per bound and the overflow bucket.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;
/// Column names of the histogram buckets, in the order of [`LATENCY_BOUNDS_MS`].
pub const LATENCY_COLUMNS: [&str; LATENCY_BUCKETS] = [
    "latency_le_100ms",
    "latency_le_250ms",
    "latency_le_500ms",
    "latency_le_1s",
    "latency_le_2500ms",
    "latency_le_5s",
    "latency_le_10s",
    "latency_le_30s",
    "latency_le_60s",
    "latency_gt_60s",
];

/// Bucket width of a rollup table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    Hour,
    Day,
}

impl Granularity {
    pub fn width_ms(self) -> i64 {
        match self {
            Granularity::Hour => HOUR_MS,
            Granularity::Day => DAY_MS,
        }
    }

    pub fn table(self) -> &'static str {
        match self {
            Granularity::Hour => "usage_rollups_hourly",
            Granularity::Day => "usage_rollups_daily",
        }
    }

    /// Returns the start of the bucket that contains `ms`.
    pub fn bucket_start(self, ms: i64) -> i64 {
        ms.div_euclid(self.width_ms()) * self.width_ms()
    }

    pub fn parse(text: &str) -> Option<Granularity> {
        match text {
            "hour" => Some(Granularity::Hour),
            "day" => Some(Granularity::Day),
            _ => None,
        }
    }
}

/// The dimensions of one rollup row. `variant` is empty for requests outside an experiment.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RollupKey {
    pub project_id: String,
    pub bucket_start_ms: i64,
    pub model: String,
    pub provider: String,
    pub variant: String,
    pub cache_status: String,
}

/// The sums of one rollup row.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RollupValues {
    pub requests: i64,
    pub errors: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cached_tokens: i64,
    pub reasoning_tokens: i64,
    pub total_tokens: i64,
    pub cost_usd: f64,
    pub potential_cost_usd: f64,
    pub latency_ms_sum: i64,
    /// Non-cumulative counts per latency bucket, in the order of [`LATENCY_BOUNDS_MS`].
    pub latency_buckets: [i64; LATENCY_BUCKETS],
}

/// Returns the index of the histogram bucket that counts `latency_ms`.
pub fn latency_bucket(latency_ms: i64) -> usize {
    LATENCY_BOUNDS_MS
        .iter()
        .position(|&bound| latency_ms <= bound)
        .unwrap_or(LATENCY_BOUNDS_MS.len())
}

/// Returns whether an event counts as an error: a status of 400 or more, or an error type such
/// as `client_disconnected` on a request whose status was already sent.
pub fn is_error(event: &UsageEvent) -> bool {
    event.status >= 400 || event.error_type.is_some()
}

impl RollupValues {
    pub fn add_event(&mut self, event: &UsageEvent) {
        self.requests += 1;
        self.errors += i64::from(is_error(event));
        self.prompt_tokens += event.prompt_tokens;
        self.completion_tokens += event.completion_tokens;
        self.cached_tokens += event.cached_tokens;
        self.reasoning_tokens += event.reasoning_tokens;
        self.total_tokens += event.total_tokens;
        self.cost_usd += event.cost_usd;
        self.potential_cost_usd += event.potential_cost_usd;
        self.latency_ms_sum += event.latency_ms;
        self.latency_buckets[latency_bucket(event.latency_ms)] += 1;
    }

    pub fn add(&mut self, other: &RollupValues) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.cached_tokens += other.cached_tokens;
        self.reasoning_tokens += other.reasoning_tokens;
        self.total_tokens += other.total_tokens;
        self.cost_usd += other.cost_usd;
        self.potential_cost_usd += other.potential_cost_usd;
        self.latency_ms_sum += other.latency_ms_sum;
        for (sum, count) in self.latency_buckets.iter_mut().zip(other.latency_buckets) {
            *sum += count;
        }
    }
}

/// Rollup rows of one granularity, keyed by their dimensions.
pub type Rollups = BTreeMap<RollupKey, RollupValues>;

/// Sums `events` into rollup rows of the given granularity.
pub fn aggregate<'a>(granularity: Granularity, events: impl IntoIterator<Item = &'a UsageEvent>) -> Rollups {
    let mut rollups = Rollups::new();
    for event in events {
        let key = RollupKey {
            project_id: event.project_id.clone(),
            bucket_start_ms: granularity.bucket_start(event.created_at_ms),
            model: event.model.clone(),
            provider: event.provider.clone(),
            variant: event.variant.clone().unwrap_or_default(),
            cache_status: event.cache_status.clone(),
        };
        rollups.entry(key).or_default().add_event(event);
    }
    rollups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_include_bounds() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(100), 0);
        assert_eq!(latency_bucket(101), 1);
        assert_eq!(latency_bucket(60_000), 8);
        assert_eq!(latency_bucket(60_001), 9);
    }

    #[test]
    fn bucket_start_truncates_to_utc() {
        // 2026-12-04T20:33:19.5Z
        let ms = 1_796_416_399_500;
        assert_eq!(Granularity::Hour.bucket_start(ms), 1_796_414_400_000);
        assert_eq!(Granularity::Day.bucket_start(ms), 1_796_342_400_000);
    }

    #[test]
    fn aggregate_groups_by_dimensions() {
        let base = UsageEvent {
            project_id: "p".into(),
            created_at_ms: 1_796_342_400_000,
            model: "m".into(),
            provider: "x".into(),
            cache_status: "miss".into(),
            status: 200,
            cost_usd: 1.0,
            latency_ms: 120,
            ..UsageEvent::default()
        };
        let failed = UsageEvent { status: 502, latency_ms: 70_000, ..base.clone() };
        let other_variant = UsageEvent { variant: Some("b".into()), ..base.clone() };
        let rollups = aggregate(Granularity::Day, [&base, &failed, &other_variant]);

        assert_eq!(rollups.len(), 2);
        let plain = rollups.values().next().expect("row without a variant");
        assert_eq!(plain.requests, 2);
        assert_eq!(plain.errors, 1);
        assert_eq!(plain.latency_ms_sum, 70_120);
        assert_eq!(plain.latency_buckets[1], 1);
        assert_eq!(plain.latency_buckets[9], 1);
        assert_eq!(plain.cost_usd, 2.0);
    }
}
