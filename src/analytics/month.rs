//! The month-end projection of a project's spend: spend so far, the projected total with its 80%
//! prediction interval, and the date on which the budget runs out. Months are UTC calendar months.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use serde::Serialize;

use super::forecast::{forecast, Method, Z_80};
use super::rollup::{Granularity, DAY_MS};
use crate::store::Store;

/// Full days of history that the forecast reads, before today.
pub const HISTORY_DAYS: i64 = 56;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Interval {
    /// Probability that the month-end spend falls inside the interval.
    pub level: f64,
    pub lower_usd: f64,
    pub upper_usd: f64,
}

/// One day's spend: measured, or forecast with its 80% interval.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DaySpend {
    pub date: String,
    pub cost_usd: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lower_usd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upper_usd: Option<f64>,
}

/// The forecast API's response for one project and month.
#[derive(Clone, Debug, Serialize)]
pub struct MonthForecast {
    pub project_id: String,
    /// `YYYY-MM` (UTC).
    pub month: String,
    pub generated_at: String,
    pub spend_so_far_usd: f64,
    pub spend_today_usd: f64,
    pub projected_month_end_usd: f64,
    pub interval: Interval,
    pub budget_usd: Option<f64>,
    /// First day on which the measured or projected spend reaches the budget. Null without a
    /// budget, or when the projection stays under it.
    pub projected_budget_exhaustion_date: Option<String>,
    /// True when even the interval's lower bound exceeds the budget.
    pub projected_budget_exceeded: bool,
    pub method: Method,
    /// Full days of history that the forecast used.
    pub history_days: usize,
    /// Measured spend per day of the month so far; today's is partial.
    pub daily: Vec<DaySpend>,
    /// Forecast spend per day from today (a whole-day estimate) to the month's last day.
    pub forecast_daily: Vec<DaySpend>,
}

/// Returns the start of the UTC month that contains `ms`, and the start of the next month.
pub fn month_bounds(ms: i64) -> (i64, i64) {
    let now = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
    let start = Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0).single().unwrap_or_default();
    let (year, month) = if now.month() == 12 { (now.year() + 1, 1) } else { (now.year(), now.month() + 1) };
    let end = Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0).single().unwrap_or_default();
    (start.timestamp_millis(), end.timestamp_millis())
}

/// Formats the UTC date of `ms` as `YYYY-MM-DD`.
pub fn date_of(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default().format("%Y-%m-%d").to_string()
}

/// Parses `YYYY-MM-DD` into the start of that UTC day.
pub fn parse_date(text: &str) -> Option<i64> {
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    Some(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis())
}

/// Projects the month that contains `now_ms` from daily costs (day start to cost; days without
/// usage may be missing). Days before the first day with usage are not history.
pub fn project_month(project_id: &str, daily_costs: &BTreeMap<i64, f64>, now_ms: i64, budget: Option<f64>) -> MonthForecast {
    let (month_start, month_end) = month_bounds(now_ms);
    let today = Granularity::Day.bucket_start(now_ms);
    let history_start = today - HISTORY_DAYS * DAY_MS;
    let first_day = daily_costs.range(history_start..today).next().map(|(&day, _)| day);

    let history: Vec<f64> = match first_day {
        Some(first) => (0..(today - first) / DAY_MS).map(|d| daily_costs.get(&(first + d * DAY_MS)).copied().unwrap_or(0.0)).collect(),
        None => Vec::new(),
    };
    let spend_today = daily_costs.get(&today).copied().unwrap_or(0.0);
    let elapsed_fraction = ((now_ms - today) as f64 / DAY_MS as f64).clamp(0.0, 1.0);
    let horizon = ((month_end - today) / DAY_MS) as usize;
    // The run rate counts at least one hour as elapsed, so that a request in the day's first
    // minutes does not project a day of that pace.
    let run_rate = spend_today / elapsed_fraction.max(1.0 / 24.0);
    let series = forecast(&history, horizon, run_rate);

    // Today counts with the part of the day still ahead; the days after it count whole.
    let mut weights = vec![1.0; horizon];
    if let Some(first) = weights.first_mut() {
        *first = 1.0 - elapsed_fraction;
    }
    let spend_so_far: f64 = daily_costs.range(month_start..month_end).map(|(_, cost)| cost).sum();
    let (remaining, sd) = series.weighted_total(&weights);
    let projected = spend_so_far + remaining;
    let interval = Interval { level: 0.8, lower_usd: (projected - Z_80 * sd).max(spend_so_far), upper_usd: projected + Z_80 * sd };

    let daily = (0..(today - month_start) / DAY_MS + 1)
        .map(|d| month_start + d * DAY_MS)
        .map(|day| DaySpend { date: date_of(day), cost_usd: daily_costs.get(&day).copied().unwrap_or(0.0), lower_usd: None, upper_usd: None })
        .collect();
    let mut forecast_daily = Vec::with_capacity(horizon);
    for (index, mean) in series.means.iter().enumerate() {
        let day = today + index as i64 * DAY_MS;
        let spread = Z_80 * series.day_sd(index + 1) * weights[index];
        let base = if index == 0 { spend_today } else { 0.0 };
        let cost = base + mean * weights[index];
        forecast_daily.push(DaySpend { date: date_of(day), cost_usd: cost, lower_usd: Some((cost - spread).max(base)), upper_usd: Some(cost + spread) });
    }

    let exhaustion = budget.and_then(|budget| exhaustion_date(budget, month_start, today, daily_costs, &forecast_daily));
    MonthForecast {
        project_id: project_id.to_string(),
        month: date_of(month_start)[..7].to_string(),
        generated_at: DateTime::<Utc>::from_timestamp_millis(now_ms).unwrap_or_default().to_rfc3339(),
        spend_so_far_usd: spend_so_far,
        spend_today_usd: spend_today,
        projected_month_end_usd: projected,
        projected_budget_exceeded: budget.is_some_and(|budget| interval.lower_usd > budget),
        interval,
        budget_usd: budget,
        projected_budget_exhaustion_date: exhaustion,
        method: series.method,
        history_days: history.len(),
        daily,
        forecast_daily,
    }
}

/// Returns the first day on which the cumulative spend, measured before today and projected
/// from today on, reaches `budget`.
fn exhaustion_date(budget: f64, month_start: i64, today: i64, daily_costs: &BTreeMap<i64, f64>, forecast_daily: &[DaySpend]) -> Option<String> {
    let mut cumulative = 0.0;
    for (&day, cost) in daily_costs.range(month_start..today) {
        cumulative += cost;
        if cumulative >= budget {
            return Some(date_of(day));
        }
    }
    for day in forecast_daily {
        cumulative += day.cost_usd;
        if cumulative >= budget {
            return Some(day.date.clone());
        }
    }
    None
}

/// Reads the project's daily costs from the daily rollups and projects the current month.
pub async fn project_forecast(store: &Store, project_id: &str, now_ms: i64, budget: Option<f64>) -> Result<MonthForecast> {
    let today = Granularity::Day.bucket_start(now_ms);
    let (month_start, month_end) = month_bounds(now_ms);
    let from = (today - HISTORY_DAYS * DAY_MS).min(month_start);
    let rows = store
        .query_rollups(project_id, Granularity::Day, from, month_end, None)
        .await
        .with_context(|| format!("failed to read the daily spend of project {project_id}"))?;
    let daily_costs: BTreeMap<i64, f64> = rows.into_iter().map(|row| (row.bucket_start_ms, row.values.cost_usd)).collect();
    Ok(project_month(project_id, &daily_costs, now_ms, budget))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-10T12:00:00Z.
    const NOW: i64 = 1_796_904_000_000;

    fn days(costs: &[(i64, f64)]) -> BTreeMap<i64, f64> {
        let today = Granularity::Day.bucket_start(NOW);
        costs.iter().map(|&(offset, cost)| (today + offset * DAY_MS, cost)).collect()
    }

    #[test]
    fn month_bounds_cover_december() {
        let (start, end) = month_bounds(NOW);
        assert_eq!(date_of(start), "2026-12-01");
        assert_eq!(date_of(end), "2027-01-01");
        assert_eq!(parse_date("2026-12-01"), Some(start));
        assert_eq!(parse_date("2026-13-01"), None);
    }

    #[test]
    fn flat_spend_projects_linearly() {
        let history: Vec<(i64, f64)> = (-30..0).map(|d| (d, 10.0)).chain([(0, 5.0)]).collect();
        let forecast = project_month("p", &days(&history), NOW, Some(250.0));
        assert_eq!(forecast.month, "2026-12");
        assert_eq!(forecast.method, Method::HoltWintersWeekly);
        assert!((forecast.spend_so_far_usd - 95.0).abs() < 1e-9);
        // 9 full days and half of today spent; 21.5 days remain at 10 per day.
        assert!((forecast.projected_month_end_usd - 310.0).abs() < 1.0, "{}", forecast.projected_month_end_usd);
        assert!(forecast.interval.lower_usd <= forecast.projected_month_end_usd);
        assert!(forecast.interval.upper_usd >= forecast.projected_month_end_usd);
        assert_eq!(forecast.projected_budget_exhaustion_date.as_deref(), Some("2026-12-25"));
        assert_eq!(forecast.daily.len(), 10);
        assert_eq!(forecast.forecast_daily.len(), 22);
        assert_eq!(forecast.forecast_daily.last().map(|d| d.date.as_str()), Some("2026-12-31"));
    }

    #[test]
    fn no_budget_no_exhaustion() {
        let forecast = project_month("p", &days(&[(0, 1.0)]), NOW, None);
        assert_eq!(forecast.method, Method::RunRate);
        assert_eq!(forecast.history_days, 0);
        assert!(forecast.projected_budget_exhaustion_date.is_none());
        assert!(!forecast.projected_budget_exceeded);
    }
}
