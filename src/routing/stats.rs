//! Experiment results: per-variant figures from the usage events, and significance tests between
//! each variant and the first one (the control).
//!
//! Means (latency, cost per request) are compared with Welch's t-test and rates (errors, cache
//! hits) with a two-proportion z-test, both two-sided; `significant` means p < 0.05.

use anyhow::{Context, Result};
use serde_json::{json, Value};
use sqlx::Row;
use statrs::distribution::{ContinuousCDF, Normal, StudentsT};

use super::experiments::Experiment;
use crate::store::{with_pool, Store};

/// Significance level of the reported tests.
pub const ALPHA: f64 = 0.05;

/// One usage event's figures that the report needs.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub variant: String,
    pub error: bool,
    pub latency_ms: f64,
    /// Time to the first response byte of a streamed request, as time to first token.
    pub ttft_ms: Option<f64>,
    pub tokens: f64,
    pub cost_usd: f64,
    pub cache_hit: bool,
}

/// Reads the events of an experiment's model that carry a variant, newest first, at most `limit`.
pub async fn load_samples(store: &Store, experiment: &Experiment, since_ms: i64, limit: i64) -> Result<Vec<Sample>> {
    const SQL: &str = "SELECT variant, status, error_type, latency_ms, ttfb_ms, stream, total_tokens, cost_usd, cache_status \
                       FROM usage_events WHERE model = $1 AND variant IS NOT NULL AND created_at_ms >= $2 \
                       ORDER BY created_at_ms DESC LIMIT $3";
    let mut samples = Vec::new();
    with_pool!(store, pool => {
        let rows = sqlx::query(SQL)
            .bind(&experiment.model)
            .bind(since_ms)
            .bind(limit)
            .fetch_all(pool)
            .await
            .with_context(|| format!("failed to read the usage events of experiment {}", experiment.name))?;
        for row in &rows {
            let status: i32 = row.try_get("status")?;
            let error_type: Option<String> = row.try_get("error_type")?;
            let stream: bool = row.try_get("stream")?;
            let ttfb: Option<i64> = row.try_get("ttfb_ms")?;
            let cache_status: String = row.try_get("cache_status")?;
            samples.push(Sample {
                variant: row.try_get("variant")?,
                error: status >= 400 || error_type.is_some(),
                latency_ms: row.try_get::<i64, _>("latency_ms")? as f64,
                ttft_ms: ttfb.filter(|_| stream).map(|t| t as f64),
                tokens: row.try_get::<i64, _>("total_tokens")? as f64,
                cost_usd: row.try_get("cost_usd")?,
                cache_hit: cache_status.starts_with("hit"),
            });
        }
    });
    Ok(samples)
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

fn variance(values: &[f64]) -> Option<f64> {
    let m = mean(values)?;
    (values.len() > 1).then(|| values.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (values.len() - 1) as f64)
}

/// Returns the `q` quantile (0..=1) by the nearest-rank method.
fn percentile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Welch's t-test: the two-sided p-value that two samples have equal means. `None` with fewer
/// than two values on a side. Equal constant samples give 1, different ones 0.
pub fn welch_t_test(a: &[f64], b: &[f64]) -> Option<f64> {
    let (ma, mb, va, vb) = (mean(a)?, mean(b)?, variance(a)?, variance(b)?);
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let standard_error = (va / na + vb / nb).sqrt();
    if standard_error == 0.0 {
        return Some(if ma == mb { 1.0 } else { 0.0 });
    }
    let t = (ma - mb) / standard_error;
    let degrees = (va / na + vb / nb).powi(2) / ((va / na).powi(2) / (na - 1.0) + (vb / nb).powi(2) / (nb - 1.0));
    let distribution = StudentsT::new(0.0, 1.0, degrees).ok()?;
    Some((2.0 * (1.0 - distribution.cdf(t.abs()))).clamp(0.0, 1.0))
}

/// Two-proportion z-test: the two-sided p-value that `xa / na` and `xb / nb` are the same rate.
pub fn two_proportion_z_test(xa: usize, na: usize, xb: usize, nb: usize) -> Option<f64> {
    if na == 0 || nb == 0 {
        return None;
    }
    let (na_f, nb_f) = (na as f64, nb as f64);
    let pooled = (xa + xb) as f64 / (na_f + nb_f);
    let standard_error = (pooled * (1.0 - pooled) * (1.0 / na_f + 1.0 / nb_f)).sqrt();
    if standard_error == 0.0 {
        return Some(1.0);
    }
    let z = (xa as f64 / na_f - xb as f64 / nb_f) / standard_error;
    let normal = Normal::new(0.0, 1.0).ok()?;
    Some((2.0 * (1.0 - normal.cdf(z.abs()))).clamp(0.0, 1.0))
}

fn column(samples: &[&Sample], pick: impl Fn(&Sample) -> f64) -> Vec<f64> {
    samples.iter().map(|s| pick(s)).collect()
}

fn test_result(p_value: Option<f64>) -> Value {
    json!({"p_value": p_value, "significant": p_value.map(|p| p < ALPHA)})
}

/// Builds the report of `GET /admin/experiments/{name}` from the samples.
pub fn report(experiment: &Experiment, samples: &[Sample]) -> Value {
    let total_weight = experiment.total_weight();
    let groups: Vec<Vec<&Sample>> =
        experiment.variants.iter().map(|v| samples.iter().filter(|s| s.variant == v.name).collect()).collect();

    let mut variants = Vec::new();
    for (variant, group) in experiment.variants.iter().zip(&groups) {
        let requests = group.len();
        let errors = group.iter().filter(|s| s.error).count();
        let hits = group.iter().filter(|s| s.cache_hit).count();
        let latency = column(group, |s| s.latency_ms);
        let ttft: Vec<f64> = group.iter().filter_map(|s| s.ttft_ms).collect();
        let rate = |count: usize| (requests > 0).then(|| count as f64 / requests as f64);
        variants.push(json!({
            "name": variant.name,
            "model": variant.model,
            "provider": variant.route.provider.name,
            "weight": variant.weight,
            "share": if total_weight > 0.0 { variant.weight / total_weight } else { 0.0 },
            "requests": requests,
            "errors": errors,
            "error_rate": rate(errors),
            "latency_ms": {"mean": mean(&latency), "p50": percentile(&latency, 0.5), "p95": percentile(&latency, 0.95)},
            "ttft_ms": {"mean": mean(&ttft), "p50": percentile(&ttft, 0.5), "p95": percentile(&ttft, 0.95), "requests": ttft.len()},
            "tokens_per_request": mean(&column(group, |s| s.tokens)),
            "cost_per_request_usd": mean(&column(group, |s| s.cost_usd)),
            "cache_hit_rate": rate(hits),
        }));
    }

    let mut comparisons = Vec::new();
    if let Some((control, control_group)) = experiment.variants.first().zip(groups.first()) {
        for (variant, group) in experiment.variants.iter().zip(&groups).skip(1) {
            let count = |g: &[&Sample], f: fn(&Sample) -> bool| g.iter().filter(|s| f(s)).count();
            comparisons.push(json!({
                "control": control.name,
                "variant": variant.name,
                "cost_per_request": test_result(welch_t_test(&column(control_group, |s| s.cost_usd), &column(group, |s| s.cost_usd))),
                "latency": test_result(welch_t_test(&column(control_group, |s| s.latency_ms), &column(group, |s| s.latency_ms))),
                "error_rate": test_result(two_proportion_z_test(count(control_group, |s| s.error), control_group.len(), count(group, |s| s.error), group.len())),
                "cache_hit_rate": test_result(two_proportion_z_test(count(control_group, |s| s.cache_hit), control_group.len(), count(group, |s| s.cache_hit), group.len())),
            }));
        }
    }

    json!({
        "name": experiment.name,
        "model": experiment.model,
        "enabled": experiment.enabled,
        "requests": samples.len(),
        "alpha": ALPHA,
        "tests": {"means": "Welch's t-test, two-sided", "rates": "two-proportion z-test, two-sided"},
        "variants": variants,
        "comparisons": comparisons,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::experiments::tests::experiment;

    #[test]
    fn welch_matches_reference() {
        // The first example of Wikipedia's "Welch's t-test" article: t = -2.46, 25.0 degrees of
        // freedom, p = 0.021.
        let a = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4];
        let b = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4];
        let p = welch_t_test(&a, &b).unwrap();
        assert!((p - 0.021).abs() < 0.001, "p = {p}");
    }

    #[test]
    fn z_test_detects_difference() {
        let p_same = two_proportion_z_test(50, 1000, 52, 1000).unwrap();
        assert!(p_same > 0.5, "{p_same}");
        let p_different = two_proportion_z_test(50, 1000, 150, 1000).unwrap();
        assert!(p_different < 1e-6, "{p_different}");
        assert_eq!(two_proportion_z_test(0, 10, 0, 10), Some(1.0));
        assert_eq!(two_proportion_z_test(0, 0, 1, 10), None);
    }

    #[test]
    fn report_per_variant() {
        let experiment = experiment(&[("control", 1.0), ("cheap", 1.0)]);
        let mut samples = Vec::new();
        for i in 0..40 {
            samples.push(Sample { variant: "control".into(), latency_ms: 100.0 + i as f64, cost_usd: 0.01, tokens: 10.0, error: i % 10 == 0, ..Default::default() });
            samples.push(Sample { variant: "cheap".into(), latency_ms: 50.0 + i as f64, cost_usd: 0.001 + i as f64 * 1e-6, tokens: 10.0, ..Default::default() });
        }
        let report = report(&experiment, &samples);
        assert_eq!(report["variants"][0]["requests"], 40);
        assert_eq!(report["variants"][0]["error_rate"], 0.1);
        assert_eq!(report["variants"][1]["latency_ms"]["p50"], 69.0);
        // Nearest rank: the 20th and the 38th of the 40 values 50..=89.
        assert_eq!(report["variants"][1]["latency_ms"]["p95"], 87.0);
        let comparison = &report["comparisons"][0];
        assert_eq!(comparison["latency"]["significant"], true);
        assert_eq!(comparison["cost_per_request"]["significant"], true);
        assert!(comparison["error_rate"]["p_value"].as_f64().unwrap() > 0.0);
    }
}
