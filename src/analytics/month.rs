//! The month-end projection of a project's spend: spend so far, the projected total with its 80%
//! prediction interval, and the date on which the budget runs out. Months and days are calendar
//! months and days in the project's time zone, as for its monthly limits.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use chrono::{DateTime, Days, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use super::forecast::{forecast, Method, Z_80};
use super::rollup::Granularity;
use crate::limits::clock::{local_date, local_day_start_ms, Month};
use crate::store::Store;

/// Full days of history that the forecast reads, before today.
pub const HISTORY_DAYS: u64 = 56;

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
    /// `YYYY-MM` in `time_zone`.
    pub month: String,
    /// IANA name of the project's time zone, whose calendar days and months the forecast uses.
    pub time_zone: String,
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
    let month = Month::containing(ms, Tz::UTC);
    (month.start_ms, month.end_ms)
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

/// Returns the day after `date`.
fn next_day(date: NaiveDate) -> NaiveDate {
    date.succ_opt().unwrap_or(date)
}

/// Returns the days of `[from, to)`, oldest first.
fn days_between(from: NaiveDate, to: NaiveDate) -> impl Iterator<Item = NaiveDate> {
    from.iter_days().take_while(move |day| *day < to)
}

/// Projects the month that contains `now_ms` in `zone` from the spend per local calendar day
/// (days without usage may be missing). Days before the first day with usage are not history.
pub fn project_month(project_id: &str, daily_costs: &BTreeMap<NaiveDate, f64>, now_ms: i64, budget: Option<f64>, zone: Tz) -> MonthForecast {
    let month = Month::containing(now_ms, zone);
    let month_start = local_date(month.start_ms, zone);
    let month_end = local_date(month.end_ms, zone);
    let today = local_date(now_ms, zone);
    let cost_of = |day: NaiveDate| daily_costs.get(&day).copied().unwrap_or(0.0);

    let history_start = today.checked_sub_days(Days::new(HISTORY_DAYS)).unwrap_or(today);
    let first_day = daily_costs.range(history_start..today).next().map(|(&day, _)| day);
    let history: Vec<f64> = match first_day {
        Some(first) => days_between(first, today).map(cost_of).collect(),
        None => Vec::new(),
    };
    let spend_today = cost_of(today);
    // A day where the clocks change lasts 23 or 25 hours.
    let today_start_ms = local_day_start_ms(zone, today);
    let today_length_ms = (local_day_start_ms(zone, next_day(today)) - today_start_ms).max(1);
    let elapsed_fraction = ((now_ms - today_start_ms) as f64 / today_length_ms as f64).clamp(0.0, 1.0);
    let horizon = (month_end - today).num_days().max(0) as usize;
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

    let daily = days_between(month_start, next_day(today))
        .map(|day| DaySpend { date: day.to_string(), cost_usd: cost_of(day), lower_usd: None, upper_usd: None })
        .collect();
    let mut forecast_daily = Vec::with_capacity(horizon);
    for ((index, mean), day) in series.means.iter().enumerate().zip(today.iter_days()) {
        let spread = Z_80 * series.day_sd(index + 1) * weights[index];
        let base = if index == 0 { spend_today } else { 0.0 };
        let cost = base + mean * weights[index];
        forecast_daily.push(DaySpend { date: day.to_string(), cost_usd: cost, lower_usd: Some((cost - spread).max(base)), upper_usd: Some(cost + spread) });
    }

    let exhaustion = budget.and_then(|budget| exhaustion_date(budget, month_start, today, daily_costs, &forecast_daily));
    MonthForecast {
        project_id: project_id.to_string(),
        month: month.label(),
        time_zone: zone.name().to_string(),
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
fn exhaustion_date(budget: f64, month_start: NaiveDate, today: NaiveDate, daily_costs: &BTreeMap<NaiveDate, f64>, forecast_daily: &[DaySpend]) -> Option<String> {
    let mut cumulative = 0.0;
    for (&day, cost) in daily_costs.range(month_start..today) {
        cumulative += cost;
        if cumulative >= budget {
            return Some(day.to_string());
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

/// Returns whether `zone`'s days are UTC days, so that the daily rollups hold them.
fn is_utc(zone: Tz) -> bool {
    zone == Tz::UTC || zone == Tz::Etc__UTC
}

/// Reads the project's spend per day in `zone` and projects the current month. A UTC project
/// reads the daily rollups; any other zone sums the hourly rollups into its local days.
// NOTE: the rollups' hours are UTC hours, so in a zone whose offset is not a whole number of
// hours (Asia/Kolkata, Australia/Adelaide) each hour counts on the local day on which it starts.
pub async fn project_forecast(store: &Store, project_id: &str, now_ms: i64, budget: Option<f64>, zone: Tz) -> Result<MonthForecast> {
    let month = Month::containing(now_ms, zone);
    let today = local_date(now_ms, zone);
    let history_start = today.checked_sub_days(Days::new(HISTORY_DAYS)).unwrap_or(today);
    let granularity = if is_utc(zone) { Granularity::Day } else { Granularity::Hour };
    let from = granularity.bucket_start(local_day_start_ms(zone, history_start).min(month.start_ms));
    let rows = store
        .query_rollups(project_id, granularity, from, month.end_ms, None)
        .await
        .with_context(|| format!("failed to read the spend of project {project_id}"))?;

    let mut daily_costs: BTreeMap<NaiveDate, f64> = BTreeMap::new();
    for row in rows {
        *daily_costs.entry(local_date(row.bucket_start_ms, zone)).or_default() += row.values.cost_usd;
    }
    Ok(project_month(project_id, &daily_costs, now_ms, budget, zone))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-10T12:00:00Z.
    const NOW: i64 = 1_796_904_000_000;

    /// Spend per day, keyed by days after (or before) the UTC date of `NOW`.
    fn days(costs: &[(i64, f64)]) -> BTreeMap<NaiveDate, f64> {
        let today = local_date(NOW, Tz::UTC);
        costs.iter().map(|&(offset, cost)| (today + chrono::TimeDelta::days(offset), cost)).collect()
    }

    fn utc_ms(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text).expect("RFC 3339 time").timestamp_millis()
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
        let forecast = project_month("p", &days(&history), NOW, Some(250.0), Tz::UTC);
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
        let forecast = project_month("p", &days(&[(0, 1.0)]), NOW, None, Tz::UTC);
        assert_eq!(forecast.method, Method::RunRate);
        assert_eq!(forecast.history_days, 0);
        assert!(forecast.projected_budget_exhaustion_date.is_none());
        assert!(!forecast.projected_budget_exceeded);
    }

    #[test]
    fn tokyo_month_starts_before_utc_month() {
        // 2026-12-01T01:00 in Tokyo (UTC+9) is still November 30 in UTC.
        let now = utc_ms("2026-11-30T16:00:00Z");
        let tokyo: Tz = "Asia/Tokyo".parse().expect("zone");
        let date = |text: &str| NaiveDate::parse_from_str(text, "%Y-%m-%d").expect("date");
        let mut costs: BTreeMap<NaiveDate, f64> = (1..=30).map(|day| (date(&format!("2026-11-{day:02}")), 10.0)).collect();
        costs.insert(date("2026-12-01"), 2.0);

        let forecast = project_month("p", &costs, now, Some(200.0), tokyo);
        assert_eq!(forecast.month, "2026-12");
        assert_eq!(forecast.time_zone, "Asia/Tokyo");
        assert_eq!(forecast.spend_so_far_usd, 2.0);
        assert_eq!(forecast.spend_today_usd, 2.0);
        assert_eq!(forecast.history_days, 30);
        assert_eq!(forecast.daily.len(), 1);
        assert_eq!(forecast.daily[0].date, "2026-12-01");
        assert_eq!(forecast.forecast_daily.len(), 31);
        assert_eq!(forecast.forecast_daily.last().map(|d| d.date.as_str()), Some("2026-12-31"));
        // One hour of 24 elapsed; 30.96 days remain at 10 per day.
        assert!((forecast.projected_month_end_usd - 311.6).abs() < 1.0, "{}", forecast.projected_month_end_usd);
        // 2 today plus 10 per day reaches 200 on the 20th day of the month.
        assert_eq!(forecast.projected_budget_exhaustion_date.as_deref(), Some("2026-12-20"));

        // The same instant in UTC is the last day of November.
        let utc = project_month("p", &costs, now, Some(200.0), Tz::UTC);
        assert_eq!(utc.month, "2026-11");
        assert_eq!(utc.daily.len(), 30);
        assert_eq!(utc.forecast_daily.len(), 1);
    }

    #[test]
    fn dst_day_lasts_25_hours() {
        // New York leaves daylight saving time on 2026-11-01; that day is 25 hours long, so
        // at 12:30 UTC (07:30 local) 8.5 of its 25 hours have passed.
        let new_york: Tz = "America/New_York".parse().expect("zone");
        let now = utc_ms("2026-11-01T12:30:00Z");
        let today = local_date(now, new_york);
        let costs = BTreeMap::from([(today, 8.5)]);
        let forecast = project_month("p", &costs, now, None, new_york);
        assert_eq!(forecast.month, "2026-11");
        assert_eq!(forecast.method, Method::RunRate);
        // The run rate is 25 per day: 8.5 today, 16.5 for the rest of it and 25 for each of 29 days.
        assert!((forecast.projected_month_end_usd - (25.0 + 29.0 * 25.0)).abs() < 1e-6, "{}", forecast.projected_month_end_usd);
    }
}
