//! The responses of the usage and savings APIs, built from rollup rows.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};

use super::month::{date_of, parse_date};
use super::rollup::{Granularity, RollupValues, DAY_MS, LATENCY_BOUNDS_MS};
use crate::store::rollups::RollupRow;

/// Cache statuses that mean the response came from the gateway's cache.
pub const CACHE_HIT_STATUSES: [&str; 2] = ["hit-exact", "hit-semantic"];

/// A time range `[from_ms, to_ms)` requested through `from` and `to` query parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub from_ms: i64,
    pub to_ms: i64,
}

/// Parses a `from` or `to` parameter: `YYYY-MM-DD` (UTC) or RFC 3339. A date as `to` includes
/// that whole day. Returns None when the text is neither.
pub fn parse_bound(text: &str, is_end: bool) -> Option<i64> {
    if let Some(day) = parse_date(text) {
        return Some(if is_end { day + DAY_MS } else { day });
    }
    DateTime::parse_from_rfc3339(text).ok().map(|time| time.timestamp_millis())
}

/// Formats milliseconds as RFC 3339 in UTC.
pub fn timestamp(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default().to_rfc3339()
}

/// Returns the JSON of one row's sums: counts, tokens by kind, costs, the saving, the mean
/// latency and the latency histogram.
pub fn values_json(values: &RollupValues) -> Value {
    let histogram: Vec<Value> = values
        .latency_buckets
        .iter()
        .enumerate()
        .map(|(index, count)| json!({"le_ms": LATENCY_BOUNDS_MS.get(index), "count": count}))
        .collect();
    let latency_ms_avg = if values.requests > 0 { Some(values.latency_ms_sum as f64 / values.requests as f64) } else { None };
    json!({
        "requests": values.requests,
        "errors": values.errors,
        "tokens": {
            "prompt": values.prompt_tokens,
            "completion": values.completion_tokens,
            "cached": values.cached_tokens,
            "reasoning": values.reasoning_tokens,
            "total": values.total_tokens,
        },
        "cost_usd": values.cost_usd,
        "potential_cost_usd": values.potential_cost_usd,
        "saved_usd": values.potential_cost_usd - values.cost_usd,
        "latency_ms_sum": values.latency_ms_sum,
        "latency_ms_avg": latency_ms_avg,
        "latency_histogram": histogram,
    })
}

/// Builds the usage API's response: one entry per bucket and group, and the totals per group and
/// overall.
pub fn usage_json(project_id: &str, range: Range, granularity: Granularity, group_by: Option<&str>, rows: &[RollupRow]) -> Value {
    let mut totals = RollupValues::default();
    let mut group_totals: BTreeMap<&str, RollupValues> = BTreeMap::new();
    let series: Vec<Value> = rows
        .iter()
        .map(|row| {
            totals.add(&row.values);
            let mut entry = values_json(&row.values);
            entry["bucket_start"] = json!(timestamp(row.bucket_start_ms));
            if group_by.is_some() {
                group_totals.entry(row.group.as_str()).or_default().add(&row.values);
                entry["group"] = group_value(&row.group);
            }
            entry
        })
        .collect();

    let mut groups: Vec<(&str, RollupValues)> = group_totals.into_iter().collect();
    groups.sort_by(|a, b| b.1.cost_usd.total_cmp(&a.1.cost_usd).then(b.1.requests.cmp(&a.1.requests)));
    let groups: Vec<Value> = groups
        .iter()
        .map(|(group, values)| {
            let mut entry = values_json(values);
            entry["group"] = group_value(group);
            entry
        })
        .collect();

    json!({
        "project_id": project_id,
        "from": timestamp(range.from_ms),
        "to": timestamp(range.to_ms),
        "granularity": granularity,
        "group_by": group_by,
        "series": series,
        "groups": groups,
        "totals": values_json(&totals),
    })
}

/// Returns a group value as JSON. An empty value is traffic outside any A/B experiment, shown as null.
fn group_value(group: &str) -> Value {
    if group.is_empty() {
        Value::Null
    } else {
        json!(group)
    }
}

/// The savings API's response for one period.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Savings {
    pub project_id: String,
    pub from: String,
    pub to: String,
    pub requests: i64,
    pub cost_usd: f64,
    pub potential_cost_usd: f64,
    /// Potential cost minus cost: what the response cache saved.
    pub saved_usd: f64,
    pub cache_hits: i64,
    pub cache_hits_exact: i64,
    pub cache_hits_semantic: i64,
    pub cache_misses: i64,
    /// Hits over hits plus misses; requests that bypassed or skipped the cache do not count.
    /// Null when there was no cache lookup.
    pub cache_hit_rate: Option<f64>,
    /// Requests per cache status (`none`, `miss`, `hit-exact`, `hit-semantic`, `bypass`).
    pub requests_by_cache_status: BTreeMap<String, i64>,
    /// Savings per day, for charts.
    pub daily: Vec<Value>,
}

/// Builds the savings response from rows grouped by cache status.
pub fn savings(project_id: &str, range: Range, rows: &[RollupRow]) -> Savings {
    let mut totals = RollupValues::default();
    let mut by_status: BTreeMap<String, i64> = BTreeMap::new();
    let mut by_day: BTreeMap<i64, RollupValues> = BTreeMap::new();
    for row in rows {
        totals.add(&row.values);
        *by_status.entry(row.group.clone()).or_default() += row.values.requests;
        by_day.entry(Granularity::Day.bucket_start(row.bucket_start_ms)).or_default().add(&row.values);
    }
    let count = |status: &str| by_status.get(status).copied().unwrap_or(0);
    let (exact, semantic, misses) = (count(CACHE_HIT_STATUSES[0]), count(CACHE_HIT_STATUSES[1]), count("miss"));
    let lookups = exact + semantic + misses;
    let daily = by_day
        .iter()
        .map(|(day, values)| {
            json!({
                "date": date_of(*day),
                "cost_usd": values.cost_usd,
                "potential_cost_usd": values.potential_cost_usd,
                "saved_usd": values.potential_cost_usd - values.cost_usd,
            })
        })
        .collect();
    Savings {
        project_id: project_id.to_string(),
        from: timestamp(range.from_ms),
        to: timestamp(range.to_ms),
        requests: totals.requests,
        cost_usd: totals.cost_usd,
        potential_cost_usd: totals.potential_cost_usd,
        saved_usd: totals.potential_cost_usd - totals.cost_usd,
        cache_hits: exact + semantic,
        cache_hits_exact: exact,
        cache_hits_semantic: semantic,
        cache_misses: misses,
        cache_hit_rate: if lookups > 0 { Some((exact + semantic) as f64 / lookups as f64) } else { None },
        requests_by_cache_status: by_status,
        daily,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(status: &str, requests: i64, cost: f64, potential: f64) -> RollupRow {
        let values = RollupValues { requests, cost_usd: cost, potential_cost_usd: potential, ..RollupValues::default() };
        RollupRow { bucket_start_ms: 0, group: status.into(), values }
    }

    #[test]
    fn bounds_accept_dates_and_rfc3339() {
        assert_eq!(parse_bound("2026-12-01", false), Some(1_796_083_200_000));
        assert_eq!(parse_bound("2026-12-01", true), Some(1_796_083_200_000 + DAY_MS));
        assert_eq!(parse_bound("2026-12-01T01:00:00Z", true), Some(1_796_086_800_000));
        assert_eq!(parse_bound("yesterday", false), None);
    }

    #[test]
    fn savings_rate_ignores_bypass() {
        let rows = [row("hit-exact", 3, 0.0, 3.0), row("hit-semantic", 1, 0.0, 1.0), row("miss", 4, 4.0, 4.0), row("bypass", 10, 10.0, 10.0)];
        let savings = savings("p", Range { from_ms: 0, to_ms: DAY_MS }, &rows);
        assert_eq!(savings.cache_hits, 4);
        assert_eq!(savings.cache_hit_rate, Some(0.5));
        assert_eq!(savings.saved_usd, 4.0);
        assert_eq!(savings.requests, 18);
    }
}
