//! `/admin/projects/{id}/cache`: a project's response cache settings in the store, behind the
//! admin token. `{id}` is a project id or name.
//!
//! - `GET` returns the stored override, the config's settings and the settings in force;
//! - `PUT` replaces the override with the body's fields (an absent field has no override);
//! - `PATCH` changes only the body's fields, and `null` removes one (JSON merge patch);
//! - `DELETE` removes the override.
//!
//! The body fields are `enabled`, `semantic`, `threshold` (in (0, 1]) and `ttl_seconds` (at
//! least 1). Gateways apply a change within `overrides::RELOAD_INTERVAL` (1 s) plus one query.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tracing::{error, info};

use super::{error, find_project, AdminState};
use crate::cache::overrides::{describe, CacheOverride, CacheOverridePatch};
use crate::store::{Project, Store};

pub fn routes() -> Router<AdminState> {
    Router::new().route("/admin/projects/{id}/cache", get(show).put(replace).patch(change).delete(clear))
}

fn store_error(operation: &str, e: anyhow::Error) -> Response {
    error!(operation, error = %format!("{e:#}"), "admin cache settings operation failed");
    error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", &format!("Failed to {operation}: {e:#}"))
}

/// Parses a JSON body into `T`, or returns a 400 response naming the problem.
fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| {
        let message = format!("Invalid JSON body: {e}. Expected an object with any of enabled (boolean), semantic (boolean), threshold (number in (0, 1]) and ttl_seconds (integer, at least 1).");
        error(StatusCode::BAD_REQUEST, "invalid_json", &message)
    })
}

/// Returns the project's settings as `GET` shows them.
async fn respond(state: &AdminState, store: &Store, project: &Project) -> Response {
    match store.cache_override(&project.id).await {
        Ok(stored) => {
            let settings = &state.config.load().cache;
            Json(describe(settings, project, stored.as_ref())).into_response()
        }
        Err(e) => store_error("read the cache settings", e),
    }
}

async fn show(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    match find_project(&state, &id).await {
        Ok((store, project)) => respond(&state, &store, &project).await,
        Err(response) => response,
    }
}

async fn replace(State(state): State<AdminState>, Path(id): Path<String>, body: Bytes) -> Response {
    let next: CacheOverride = match parse_body(&body) {
        Ok(next) => next,
        Err(response) => return response,
    };
    write(&state, &id, |_| next).await
}

async fn change(State(state): State<AdminState>, Path(id): Path<String>, body: Bytes) -> Response {
    let patch: CacheOverridePatch = match parse_body(&body) {
        Ok(patch) => patch,
        Err(response) => return response,
    };
    write(&state, &id, |current| current.merged(&patch)).await
}

async fn clear(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    write(&state, &id, |_| CacheOverride::default()).await
}

/// Computes the next override from the stored one, validates it and stores it.
async fn write(state: &AdminState, id: &str, next: impl FnOnce(CacheOverride) -> CacheOverride) -> Response {
    let (store, project) = match find_project(state, id).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let current = match store.cache_override(&project.id).await {
        Ok(stored) => stored.map(|s| s.settings).unwrap_or_default(),
        Err(e) => return store_error("read the cache settings", e),
    };
    let next = next(current);
    if let Err(invalid) = next.validate() {
        let message = format!("Invalid value of {}: {}.", invalid.field, invalid.message);
        return error(StatusCode::BAD_REQUEST, "invalid_value", &message);
    }
    if let Err(e) = store.set_cache_override(&project.id, &next).await {
        return store_error("write the cache settings", e);
    }
    info!(project = %project.id, "cache settings changed through the admin API");
    respond(state, &store, &project).await
}
