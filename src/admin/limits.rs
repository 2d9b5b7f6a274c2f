//! `GET /admin/projects/{id}/alerts` lists a project's usage alerts with every delivery
//! attempt; `GET /admin/projects/{id}/limits` shows its limits and this node's counters.
//! `{id}` is a project id or name. Both are behind the admin token.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::{error, find_project, AdminState};
use crate::alerts::dedup::list_alerts;

pub fn routes() -> Router<AdminState> {
    Router::new().route("/admin/projects/{id}/alerts", get(alerts)).route("/admin/projects/{id}/limits", get(limits))
}

async fn alerts(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    let (store, project) = match find_project(&state, &id).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    match list_alerts(&store, &project.id).await {
        Ok(alerts) => Json(json!({"project": {"id": project.id, "name": project.name}, "alerts": alerts})).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", &format!("Failed to list alerts: {e}")),
    }
}

async fn limits(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    let (_, project) = match find_project(&state, &id).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let config = state.config.load();
    let resolved = config.limits.resolve(&project.id, &project.name, &project.plan);
    let limits = resolved.limits;
    let month = state.limits.project_snapshot(&project.id);
    let totals = |t: crate::limits::quota::Totals| json!({"requests": t.requests, "tokens": t.tokens, "cost_usd": t.cost_usd});
    Json(json!({
        "project": {"id": project.id, "name": project.name, "plan": project.plan},
        "plan_configured": resolved.known_plan,
        "time_zone": resolved.time_zone.name(),
        "limits": {
            "monthly_requests": limits.monthly_requests,
            "monthly_tokens": limits.monthly_tokens,
            "monthly_cost_usd": limits.monthly_cost_usd,
            "requests_per_minute": limits.requests_per_minute,
            "tokens_per_minute": limits.tokens_per_minute,
            "max_concurrent_requests": limits.max_concurrent_requests,
        },
        "month": month.map(|(m, used, reserved)| json!({"period": m.label(), "start_ms": m.start_ms, "end_ms": m.end_ms, "used": totals(used), "reserved": totals(reserved)})),
    }))
    .into_response()
}
