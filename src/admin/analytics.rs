//! Analytics routes of the admin API, behind the admin token: usage, savings and the spend
//! forecast of a project, and the project list of the dashboard. They read the rollup tables
//! only, never the raw usage events.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::{error, AdminState};
use crate::analytics::alert::{check_budget_alert, forecast_project};
use crate::analytics::month::month_bounds;
use crate::analytics::query::{parse_bound, savings, timestamp, usage_json, Range};
use crate::analytics::rollup::{Granularity, DAY_MS, HOUR_MS};
use crate::store::rollups::GroupBy;
use crate::store::{Project, Store};

/// Maximum range of one hourly query: 93 days, 2232 buckets.
const MAX_HOUR_RANGE_MS: i64 = 93 * DAY_MS;
/// Maximum range of one daily query: about ten years.
const MAX_DAY_RANGE_MS: i64 = 3660 * DAY_MS;

pub fn routes() -> Router<AdminState> {
    Router::new()
        .route("/admin/analytics/projects", get(list_projects))
        .route("/admin/projects/{id}/usage", get(usage))
        .route("/admin/projects/{id}/savings", get(project_savings))
        .route("/admin/projects/{id}/forecast", get(forecast))
}

type Params = Query<HashMap<String, String>>;

fn bad_request(message: String) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_parameter", &message)
}

fn internal(context: &str, failure: anyhow::Error) -> Response {
    tracing::error!(error = format!("{failure:#}"), "{context}");
    error(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", &format!("{context}; the gateway log has the cause."))
}

/// Returns the store and the project named by `id` (an id or a name), or the error response.
async fn resolve(state: &AdminState, id: &str) -> Result<(Store, Project), Response> {
    let Some(store) = state.store.clone() else {
        return Err(error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "The admin listener has no database connection; see GET /health/ready."));
    };
    match store.find_project(id).await {
        Ok(Some(project)) => Ok((store, project)),
        Ok(None) => Err(error(StatusCode::NOT_FOUND, "project_not_found", &format!("Project {id:?} not found; GET /admin/analytics/projects lists the projects."))),
        Err(failure) => Err(internal("failed to look up the project", failure)),
    }
}

/// Reads `from` and `to`; the default range is the current UTC month up to now.
fn range(params: &HashMap<String, String>, now_ms: i64) -> Result<Range, Response> {
    let (month_start, _) = month_bounds(now_ms);
    let bound = |name: &str, is_end: bool, default: i64| match params.get(name) {
        None => Ok(default),
        Some(text) => parse_bound(text, is_end).ok_or_else(|| {
            bad_request(format!("Invalid {name} {text:?}: expected a date (YYYY-MM-DD, UTC) or an RFC 3339 time."))
        }),
    };
    let from_ms = bound("from", false, month_start)?;
    let to_ms = bound("to", true, now_ms)?;
    if from_ms >= to_ms {
        return Err(bad_request(format!("Invalid range: from ({}) must be before to ({}).", timestamp(from_ms), timestamp(to_ms))));
    }
    Ok(Range { from_ms, to_ms })
}

/// Widens a range to whole buckets, so that a partial first or last bucket is included.
fn align(range: Range, granularity: Granularity) -> Range {
    let from_ms = granularity.bucket_start(range.from_ms);
    let to_ms = granularity.bucket_start(range.to_ms - 1) + granularity.width_ms();
    Range { from_ms, to_ms }
}

async fn usage(State(state): State<AdminState>, Path(id): Path<String>, Query(params): Params) -> Response {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let granularity_text = params.get("granularity").map(String::as_str).unwrap_or("day");
    let Some(granularity) = Granularity::parse(granularity_text) else {
        return bad_request(format!("Invalid granularity {granularity_text:?}: expected hour or day."));
    };
    let (group_by, group_name) = match params.get("group_by").map(String::as_str) {
        None | Some("") => (None, None),
        Some("model") => (Some(GroupBy::Model), Some("model")),
        Some("provider") => (Some(GroupBy::Provider), Some("provider")),
        Some("variant") => (Some(GroupBy::Variant), Some("variant")),
        Some("cache") => (Some(GroupBy::CacheStatus), Some("cache")),
        Some(other) => return bad_request(format!("Invalid group_by {other:?}: expected model, provider, variant or cache.")),
    };
    let range = match range(&params, now_ms) {
        Ok(range) => align(range, granularity),
        Err(response) => return response,
    };
    let limit = if granularity == Granularity::Hour { MAX_HOUR_RANGE_MS } else { MAX_DAY_RANGE_MS };
    if range.to_ms - range.from_ms > limit {
        return bad_request(format!("Range too long for granularity={granularity_text}: at most {} days.", limit / DAY_MS));
    }
    let (store, project) = match resolve(&state, &id).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    match store.query_rollups(&project.id, granularity, range.from_ms, range.to_ms, group_by).await {
        Ok(rows) => Json(usage_json(&project.id, range, granularity, group_name, &rows)).into_response(),
        Err(failure) => internal("failed to read the usage rollups", failure),
    }
}

async fn project_savings(State(state): State<AdminState>, Path(id): Path<String>, Query(params): Params) -> Response {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let requested = match range(&params, now_ms) {
        Ok(range) => range,
        Err(response) => return response,
    };
    // Whole days read the small daily table; other ranges read whole hours.
    let whole_days = requested.from_ms % DAY_MS == 0 && requested.to_ms % DAY_MS == 0;
    let granularity = if whole_days { Granularity::Day } else { Granularity::Hour };
    let range = align(requested, granularity);
    if granularity == Granularity::Hour && range.to_ms - range.from_ms > MAX_HOUR_RANGE_MS + HOUR_MS {
        return bad_request("Range too long: a range that is not whole UTC days may span at most 93 days.".to_string());
    }
    let (store, project) = match resolve(&state, &id).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    match store.query_rollups(&project.id, granularity, range.from_ms, range.to_ms, Some(GroupBy::CacheStatus)).await {
        Ok(rows) => Json(savings(&project.id, range, &rows)).into_response(),
        Err(failure) => internal("failed to read the usage rollups", failure),
    }
}

/// Projects the current month in the project's time zone. Computing a forecast also sets the projected-spend gauge and
/// raises the budget alert when it is due, as the periodic forecast does.
async fn forecast(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    let (store, project) = match resolve(&state, &id).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let now_ms = chrono::Utc::now().timestamp_millis();
    let result = async {
        let forecast = forecast_project(&store, &state.config.load(), &project, now_ms).await?;
        check_budget_alert(&store, &state.alerts, &forecast).await?;
        anyhow::Ok(forecast)
    }
    .await;
    match result {
        Ok(forecast) => {
            state.metrics.set_projected_spend(&project.id, forecast.projected_month_end_usd, forecast.interval.lower_usd, forecast.interval.upper_usd);
            Json(forecast).into_response()
        }
        Err(failure) => internal("failed to compute the spend forecast", failure),
    }
}

/// Lists the projects with their spend so far this month, for the dashboard's project picker.
async fn list_projects(State(state): State<AdminState>) -> Response {
    let Some(store) = state.store.clone() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "The admin listener has no database connection; see GET /health/ready.");
    };
    let now_ms = chrono::Utc::now().timestamp_millis();
    let (month_start, month_end) = month_bounds(now_ms);
    let result = async {
        let mut projects = Vec::new();
        for project in store.list_projects().await? {
            let rows = store.query_rollups(&project.id, Granularity::Day, month_start, month_end, None).await?;
            let spend: f64 = rows.iter().map(|row| row.values.cost_usd).sum();
            let requests: i64 = rows.iter().map(|row| row.values.requests).sum();
            projects.push(json!({
                "id": project.id,
                "name": project.name,
                "plan": project.plan,
                "month_spend_usd": spend,
                "month_requests": requests,
            }));
        }
        anyhow::Ok(projects)
    }
    .await;
    match result {
        Ok(projects) => Json(json!({"projects": projects})).into_response(),
        Err(failure) => internal("failed to list the projects", failure),
    }
}
