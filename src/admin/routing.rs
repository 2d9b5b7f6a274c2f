//! Admin routes of upstream selection, all behind the admin token:
//!
//! - `GET /health/detailed`: each provider's health, the store, the cache and the config version;
//!   200 when every dependency is up or only some providers are down, 503 when the store is
//!   unreachable or no provider is healthy;
//! - `GET /admin/experiments/{name}`: per-variant results with significance tests;
//! - `GET /admin/provider-keys[?project=P]`, `PUT` and `DELETE /admin/provider-keys/{project}/{provider}`
//!   and `POST /admin/provider-keys/rotate-master`: the projects' own provider keys, always masked.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tracing::{error, info};

use super::AdminState;
use crate::keys::manage::{check_provider, delete_key, list_keys, rotate_master, set_key};
use crate::keys::{MasterSecret, RecordSnapshot};
use crate::routing::health::redact_url;
use crate::routing::service::probe_url;
use crate::routing::stats::{load_samples, report};
use crate::store::Store;

/// Maximum wait for the store in `/health/detailed`.
const STORE_PING_TIMEOUT: Duration = Duration::from_secs(2);
/// Most usage events an experiment report reads by default.
const DEFAULT_REPORT_LIMIT: i64 = 100_000;

pub fn routes() -> Router<AdminState> {
    Router::new()
        .route("/health/detailed", get(health_detailed))
        .route("/admin/experiments/{name}", get(experiment_report))
        .route("/admin/provider-keys", get(list_provider_keys))
        .route("/admin/provider-keys/rotate-master", post(rotate_master_secret))
        .route("/admin/provider-keys/{project}/{provider}", put(set_provider_key).delete(delete_provider_key))
}

fn error_response(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({"error": {"message": message.into(), "type": "invalid_request_error", "code": code}});
    (status, Json(body)).into_response()
}

fn store_of(state: &AdminState) -> Result<&Store, Response> {
    state.store.as_ref().ok_or_else(|| error_response(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "The admin listener has no database connection."))
}

/// Maps an operation's error to a response. Not-found and invalid-input errors become 404 and
/// 400; the rest is logged and becomes 500. The messages never contain key material.
fn operation_error(operation: &str, error: anyhow::Error) -> Response {
    let message = format!("{error:#}");
    if message.contains("not found") {
        return error_response(StatusCode::NOT_FOUND, "not_found", message);
    }
    if message.contains("unknown provider") || message.contains("provider key") || message.contains("master secret") {
        return error_response(StatusCode::BAD_REQUEST, "invalid_request", message);
    }
    error!(operation, error = %message, "admin provider-key operation failed");
    error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
}

async fn health_detailed(State(state): State<AdminState>) -> Response {
    let config = state.config.load_full();
    let routing = &config.routing;

    let mut providers = serde_json::Map::new();
    let mut healthy = 0;
    for provider in &routing.providers {
        let (mut body, is_healthy) = state.routing.health.describe(&provider.name);
        healthy += usize::from(is_healthy);
        body["base_url"] = json!(redact_url(&probe_url(provider, "")));
        body["probe_url"] = json!(redact_url(&probe_url(provider, &routing.health.path)));
        providers.insert(provider.name.clone(), body);
    }
    let store_ok = match &state.store {
        Some(store) => matches!(tokio::time::timeout(STORE_PING_TIMEOUT, store.ping()).await, Ok(Ok(()))),
        None => false,
    };
    let snapshot = state.routing.vault.snapshot();
    let all_providers_down = !routing.providers.is_empty() && healthy == 0;
    let status = match (store_ok, all_providers_down, healthy == routing.providers.len()) {
        (false, _, _) | (_, true, _) => "unavailable",
        (true, false, true) => "ok",
        (true, false, false) => "degraded",
    };
    // NOTE: the cache and the embedding model are reported from the config, not probed.
    let body = json!({
        "status": status,
        "config_version": config.version,
        "providers": providers,
        "probes": {
            "enabled": routing.health.enabled,
            "path": routing.health.path,
            "interval_ms": routing.health.interval.as_millis() as u64,
            "timeout_ms": routing.health.timeout.as_millis() as u64,
            "unhealthy_after": routing.health.unhealthy_after,
            "healthy_after": routing.health.healthy_after,
        },
        "store": {
            "status": if store_ok { "ok" } else { "unreachable" },
            "kind": state.store.as_ref().map(Store::kind),
        },
        "cache": {"status": if config.cache.enabled { "enabled" } else { "disabled" }},
        "embedding_model": {"status": if config.cache.enabled && config.cache.semantic_enabled { "enabled" } else { "disabled" }},
        "provider_keys": {
            "records": snapshot.len(),
            "version": snapshot.version,
            "master_secret": if state.routing.vault.has_master() { "configured" } else { "missing" },
        },
    });
    let code = if status == "unavailable" { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    (code, Json(body)).into_response()
}

#[derive(Deserialize)]
struct ReportQuery {
    /// Only events at or after this time, in milliseconds since the Unix epoch.
    since_ms: Option<i64>,
    limit: Option<i64>,
}

async fn experiment_report(State(state): State<AdminState>, Path(name): Path<String>, Query(query): Query<ReportQuery>) -> Response {
    let config = state.config.load_full();
    let Some(experiment) = config.routing.experiments_by_name.get(&name) else {
        let known: Vec<&String> = config.routing.experiments_by_name.keys().collect();
        return error_response(StatusCode::NOT_FOUND, "experiment_not_found", format!("No experiment named {name:?}; configured: {known:?}."));
    };
    let store = match store_of(&state) {
        Ok(store) => store,
        Err(response) => return response,
    };
    let limit = query.limit.unwrap_or(DEFAULT_REPORT_LIMIT).clamp(1, 1_000_000);
    match load_samples(store, experiment, query.since_ms.unwrap_or(0), limit).await {
        Ok(samples) => {
            let mut body = report(experiment, &samples);
            body["limit"] = json!(limit);
            Json(body).into_response()
        }
        Err(e) => {
            error!(experiment = %name, error = %format!("{e:#}"), "failed to build the experiment report");
            error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "Failed to read the usage events; see the gateway log.")
        }
    }
}

#[derive(Deserialize)]
struct ListQuery {
    project: Option<String>,
}

async fn list_provider_keys(State(state): State<AdminState>, Query(query): Query<ListQuery>) -> Response {
    let store = match store_of(&state) {
        Ok(store) => store,
        Err(response) => return response,
    };
    match list_keys(store, query.project.as_deref()).await {
        Ok(keys) => Json(json!({"data": keys})).into_response(),
        Err(e) => operation_error("list", e),
    }
}

#[derive(Deserialize)]
struct SetBody {
    key: String,
}

async fn set_provider_key(State(state): State<AdminState>, Path((project, provider)): Path<(String, String)>, body: Option<Json<SetBody>>) -> Response {
    let Some(Json(body)) = body else {
        return error_response(StatusCode::BAD_REQUEST, "invalid_request", "Expected a JSON body {\"key\": \"...\"}.");
    };
    let store = match store_of(&state) {
        Ok(store) => store,
        Err(response) => return response,
    };
    let config = state.config.load_full();
    let configured: Vec<String> = config.routing.providers.iter().map(|p| p.name.clone()).collect();
    if let Err(e) = check_provider(&provider, &configured) {
        return operation_error("set", e);
    }
    let Some(master) = state.routing.vault.master() else {
        let source = config.routing.master_secret.describe();
        return error_response(StatusCode::CONFLICT, "master_secret_missing", format!("No master secret is configured; set the {source} and restart the gateway."));
    };
    match set_key(store, &master, &project, &provider, &body.key).await {
        Ok(info) => {
            info!(project = %info.project_id, provider = %provider, "provider key set through the admin API");
            (StatusCode::OK, Json(json!(info))).into_response()
        }
        Err(e) => operation_error("set", e),
    }
}

async fn delete_provider_key(State(state): State<AdminState>, Path((project, provider)): Path<(String, String)>) -> Response {
    let store = match store_of(&state) {
        Ok(store) => store,
        Err(response) => return response,
    };
    match delete_key(store, &project, &provider).await {
        Ok(true) => {
            info!(project = %project, provider = %provider, "provider key deleted through the admin API");
            Json(json!({"deleted": true})).into_response()
        }
        Ok(false) => error_response(StatusCode::NOT_FOUND, "not_found", format!("Project {project:?} has no key for provider {provider:?}.")),
        Err(e) => operation_error("delete", e),
    }
}

#[derive(Deserialize)]
struct RotateBody {
    new_master_secret: String,
}

/// Re-encrypts every key under a new master secret and makes this gateway use it. The new
/// secret must also be put where the config reads it before the next restart.
async fn rotate_master_secret(State(state): State<AdminState>, body: Option<Json<RotateBody>>) -> Response {
    let Some(Json(body)) = body else {
        return error_response(StatusCode::BAD_REQUEST, "invalid_request", "Expected a JSON body {\"new_master_secret\": \"...\"}.");
    };
    let store = match store_of(&state) {
        Ok(store) => store,
        Err(response) => return response,
    };
    let new = match MasterSecret::new(body.new_master_secret.into_bytes()) {
        Ok(new) => new,
        Err(e) => return operation_error("rotate-master", e.context("invalid new master secret")),
    };
    let config = state.config.load_full();
    let source = &config.routing.master_secret;
    let Some(old) = state.routing.vault.master() else {
        return error_response(StatusCode::CONFLICT, "master_secret_missing", format!("No current master secret is configured in the {}.", source.describe()));
    };
    match rotate_master(store, &old, &new).await {
        Ok(count) => {
            // The re-encrypted records and the new secret go into the vault together.
            // NOTE: the background refresh may load the new records a moment before this, and
            // requests in that moment fail to decrypt.
            match reload_records(store).await {
                Ok(snapshot) => state.routing.vault.replace_all(new, snapshot),
                Err(e) => {
                    error!(error = %format!("{e:#}"), "failed to reload the re-encrypted provider keys; restart the gateway with the new master secret");
                    state.routing.vault.set_master(Some(new));
                }
            }
            info!(keys = count, "provider keys re-encrypted under a new master secret through the admin API");
            Json(json!({
                "reencrypted": count,
                "note": format!("This gateway now uses the new master secret. Put it in the {} before the next restart.", source.describe()),
            }))
            .into_response()
        }
        Err(e) => operation_error("rotate-master", e),
    }
}

async fn reload_records(store: &Store) -> anyhow::Result<RecordSnapshot> {
    let version = store.provider_keys_version().await?;
    let records = store.load_provider_keys().await?;
    Ok(RecordSnapshot::new(version, records))
}
