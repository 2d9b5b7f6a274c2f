//! The `projected_budget_exceeded` alert and the periodic forecast of every project, which also
//! sets the projected-spend gauge.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use arc_swap::ArcSwap;
use serde_json::json;

use super::month::{project_forecast, MonthForecast};
use crate::config::RuntimeConfig;
use crate::metrics::Metrics;
use crate::store::{Project, Store};

pub const BUDGET_ALERT_KIND: &str = "projected_budget_exceeded";
/// Time between two forecasts of every project in the background task.
pub const FORECAST_INTERVAL: Duration = Duration::from_secs(300);

/// Returns the budget of a project: its `monthly_cost_usd` from the config's `limits` section
/// (the project's override or its plan's), else the `monthly_cost_usd` of its plan's row in the
/// `plans` table, else none.
// NOTE: the forecast's month is the UTC calendar month, while monthly limits follow the
// project's `limits.time_zone`, so near a month's edge the two can cover different days.
pub async fn project_budget(store: &Store, config: &RuntimeConfig, project: &Project) -> Result<Option<f64>> {
    let configured = config.limits.resolve(&project.id, &project.name, &project.plan).limits.monthly_cost_usd;
    match configured {
        Some(budget) => Ok(Some(budget)),
        None => store.plan_monthly_cost(&project.id).await,
    }
}

/// Raises the `projected_budget_exceeded` alert when the forecast's lower bound exceeds the
/// budget, once per project and month (the store's dedup key makes that hold across restarts
/// and gateways). Returns true when this call raised it.
pub async fn check_budget_alert(store: &Store, forecast: &MonthForecast) -> Result<bool> {
    let Some(budget) = forecast.budget_usd else { return Ok(false) };
    if !forecast.projected_budget_exceeded {
        return Ok(false);
    }
    let dedup_key = format!("{BUDGET_ALERT_KIND}:{}:{}", forecast.project_id, forecast.month);
    let payload = json!({
        "kind": BUDGET_ALERT_KIND,
        "project_id": forecast.project_id,
        "month": forecast.month,
        "budget_usd": budget,
        "spend_so_far_usd": forecast.spend_so_far_usd,
        "projected_month_end_usd": forecast.projected_month_end_usd,
        "lower_usd": forecast.interval.lower_usd,
        "upper_usd": forecast.interval.upper_usd,
        "projected_budget_exhaustion_date": forecast.projected_budget_exhaustion_date,
    });
    let raised = store
        .insert_alert_once(&dedup_key, BUDGET_ALERT_KIND, &forecast.project_id, &forecast.month, &payload.to_string())
        .await?;
    if raised {
        tracing::warn!(
            alert = BUDGET_ALERT_KIND,
            project_id = %forecast.project_id,
            month = %forecast.month,
            budget_usd = budget,
            projected_usd = forecast.projected_month_end_usd,
            lower_usd = forecast.interval.lower_usd,
            "projected month-end spend exceeds the budget"
        );
        deliver(&payload);
    }
    Ok(raised)
}

/// Hands an alert to the alert channel.
// TODO: send it by webhook and email through `crate::alerts` once that channel accepts alerts
// other than limit thresholds (its `AlertSink` takes only `limits::quota::AlertCandidate`).
// Until then the alert reaches operators as the warning above, as a row in `analytics_alerts`
// and as `projected_budget_exceeded: true` in the forecast API.
fn deliver(_payload: &serde_json::Value) {}

/// Forecasts every project, sets the projected-spend gauge and raises budget alerts. Returns
/// the number of projects forecast.
pub async fn forecast_all(store: &Store, config: &RuntimeConfig, metrics: &Metrics, now_ms: i64) -> Result<usize> {
    let projects = store.list_projects().await?;
    for project in &projects {
        let budget = project_budget(store, config, project).await?;
        let forecast = project_forecast(store, &project.id, now_ms, budget).await?;
        metrics.set_projected_spend(&project.id, forecast.projected_month_end_usd, forecast.interval.lower_usd, forecast.interval.upper_usd);
        check_budget_alert(store, &forecast).await?;
    }
    Ok(projects.len())
}

/// Runs [`forecast_all`] at start and then every `interval`, logging failures. Never returns.
pub async fn run_forecasts(store: Store, config: Arc<ArcSwap<RuntimeConfig>>, metrics: Arc<Metrics>, interval: Duration) {
    let mut failures = 0u32;
    loop {
        let now_ms = chrono::Utc::now().timestamp_millis();
        match forecast_all(&store, &config.load(), &metrics, now_ms).await {
            Ok(projects) => {
                failures = 0;
                tracing::debug!(projects, "spend forecasts updated");
            }
            Err(error) => {
                failures += 1;
                // The first failure of a streak, then one line per hour at the default interval.
                if failures == 1 || failures % 12 == 0 {
                    tracing::warn!(error = format!("{error:#}"), failures, "failed to update the spend forecasts; the next run retries");
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
}
