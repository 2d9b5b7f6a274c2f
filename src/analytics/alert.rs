//! The `projected_budget_exceeded` alert and the periodic forecast of every project, which also
//! sets the projected-spend gauge.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use arc_swap::ArcSwap;
use serde::Serialize;

use super::month::{project_forecast, Interval, MonthForecast};
use crate::alerts::{Alert, AlertSink};
use crate::config::RuntimeConfig;
use crate::metrics::Metrics;
use crate::store::{Project, Store};

pub const BUDGET_ALERT_KIND: &str = "projected_budget_exceeded";
/// Time between two forecasts of every project in the background task.
pub const FORECAST_INTERVAL: Duration = Duration::from_secs(300);

/// A `projected_budget_exceeded` alert: the forecast's figures when it was raised. It is stored
/// as JSON in `analytics_alerts` and delivered through the alert channel.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProjectedBudgetAlert {
    /// The key that deduplicates it in `analytics_alerts`: `projected_budget_exceeded:{project_id}:{month}`.
    pub id: String,
    pub project_id: String,
    /// `YYYY-MM` in `time_zone`.
    pub month: String,
    /// IANA name of the project's time zone.
    pub time_zone: String,
    pub budget_usd: f64,
    pub spend_so_far_usd: f64,
    pub projected_month_end_usd: f64,
    pub interval: Interval,
    pub projected_budget_exhaustion_date: Option<String>,
    pub created_at_ms: i64,
}

/// Returns the budget of a project: its `monthly_cost_usd` from the config's `limits` section
/// (the project's override or its plan's), else the `monthly_cost_usd` of its plan's row in the
/// `plans` table, else none.
pub async fn project_budget(store: &Store, config: &RuntimeConfig, project: &Project) -> Result<Option<f64>> {
    let configured = config.limits.resolve(&project.id, &project.name, &project.plan).limits.monthly_cost_usd;
    match configured {
        Some(budget) => Ok(Some(budget)),
        None => store.plan_monthly_cost(&project.id).await,
    }
}

/// Projects the current month of a project with its budget, in the time zone that its monthly
/// limits follow (`limits.time_zone`, or the project's own).
pub async fn forecast_project(store: &Store, config: &RuntimeConfig, project: &Project, now_ms: i64) -> Result<MonthForecast> {
    let budget = project_budget(store, config, project).await?;
    let zone = config.limits.resolve(&project.id, &project.name, &project.plan).time_zone;
    project_forecast(store, &project.id, now_ms, budget, zone).await
}

/// Raises the `projected_budget_exceeded` alert when the forecast's lower bound exceeds the
/// budget, once per project and month: the store's dedup key makes that hold across restarts
/// and gateways, and only the call that stored it sends it to `alerts`. Returns true when this
/// call raised it.
pub async fn check_budget_alert(store: &Store, alerts: &AlertSink, forecast: &MonthForecast) -> Result<bool> {
    let Some(budget) = forecast.budget_usd else { return Ok(false) };
    if !forecast.projected_budget_exceeded {
        return Ok(false);
    }
    let alert = ProjectedBudgetAlert {
        id: format!("{BUDGET_ALERT_KIND}:{}:{}", forecast.project_id, forecast.month),
        project_id: forecast.project_id.clone(),
        month: forecast.month.clone(),
        time_zone: forecast.time_zone.clone(),
        budget_usd: budget,
        spend_so_far_usd: forecast.spend_so_far_usd,
        projected_month_end_usd: forecast.projected_month_end_usd,
        interval: forecast.interval.clone(),
        projected_budget_exhaustion_date: forecast.projected_budget_exhaustion_date.clone(),
        created_at_ms: chrono::Utc::now().timestamp_millis(),
    };
    let payload = serde_json::to_string(&alert)?;
    let raised = store.insert_alert_once(&alert.id, BUDGET_ALERT_KIND, &alert.project_id, &alert.month, &payload).await?;
    if raised {
        tracing::warn!(
            alert = BUDGET_ALERT_KIND,
            project_id = %alert.project_id,
            month = %alert.month,
            budget_usd = budget,
            projected_usd = alert.projected_month_end_usd,
            lower_usd = alert.interval.lower_usd,
            "projected month-end spend exceeds the budget"
        );
        alerts.send(Alert::ProjectedBudgetExceeded(alert));
    }
    Ok(raised)
}

/// Forecasts every project, sets the projected-spend gauge and raises budget alerts. Returns
/// the number of projects forecast.
pub async fn forecast_all(store: &Store, config: &RuntimeConfig, metrics: &Metrics, alerts: &AlertSink, now_ms: i64) -> Result<usize> {
    let projects = store.list_projects().await?;
    for project in &projects {
        let forecast = forecast_project(store, config, project, now_ms).await?;
        metrics.set_projected_spend(&project.id, forecast.projected_month_end_usd, forecast.interval.lower_usd, forecast.interval.upper_usd);
        check_budget_alert(store, alerts, &forecast).await?;
    }
    Ok(projects.len())
}

/// Runs [`forecast_all`] at start and then every `interval`, logging failures. Never returns.
pub async fn run_forecasts(store: Store, config: Arc<ArcSwap<RuntimeConfig>>, metrics: Arc<Metrics>, alerts: AlertSink, interval: Duration) {
    let mut failures = 0u32;
    loop {
        let now_ms = chrono::Utc::now().timestamp_millis();
        match forecast_all(&store, &config.load(), &metrics, &alerts, now_ms).await {
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
