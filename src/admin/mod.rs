//! The admin listener, on its own address: `/health` (liveness, open), `/health/ready` and
//! `/metrics` (behind the admin token; `/metrics` may be opened by config).

mod analytics;
mod cache;
mod dashboard;
mod limits;
mod routing;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::accounting::journal::Journal;
use crate::accounting::writer::UsageSink;
use crate::config::RuntimeConfig;
use crate::metrics::Metrics;
use crate::store::Store;

/// Maximum wait for the store to respond in the readiness check.
const STORE_PING_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct AdminState {
    pub config: Arc<ArcSwap<RuntimeConfig>>,
    pub metrics: Arc<Metrics>,
    pub usage: UsageSink,
    pub journal: Arc<Journal>,
    pub limits: Arc<crate::limits::Limiter>,
    /// The alert channel, for the budget alert that a forecast raises.
    pub alerts: crate::alerts::AlertSink,
    /// Provider health and the projects' own provider keys.
    pub routing: crate::routing::Routing,
    /// `None` while the admin service has not connected to the store yet.
    pub store: Option<Store>,
    pub started: Instant,
}

pub fn router(state: AdminState) -> Router {
    let protected = Router::new()
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .merge(analytics::routes())
        .merge(cache::routes())
        .merge(limits::routes())
        .merge(routing::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new().route("/health", get(health)).merge(dashboard::routes()).merge(protected).with_state(state)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": "invalid_request_error", "code": code}});
    (status, Json(body)).into_response()
}

/// Finds a project by id or name, with the store that contains it, or returns the error response to send.
async fn find_project(state: &AdminState, id: &str) -> Result<(crate::store::Store, crate::store::Project), Response> {
    let Some(store) = state.store.clone() else {
        return Err(error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "The admin listener has no database connection."));
    };
    match store.find_project(id).await {
        Ok(Some(project)) => Ok((store, project)),
        Ok(None) => Err(error(StatusCode::NOT_FOUND, "project_not_found", &format!("Project {id:?} not found."))),
        Err(e) => {
            tracing::error!(project = id, error = %format!("{e:#}"), "failed to look up a project for the admin API");
            Err(error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", &format!("Failed to look up the project: {e:#}")))
        }
    }
}

/// Checks `Authorization: Bearer TOKEN` against the configured admin token in constant time.
async fn require_token(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let config = state.config.load();
    if request.uri().path() == "/metrics" && config.public_metrics {
        return next.run(request).await;
    }
    let Some(expected) = config.admin_token.as_ref() else {
        return error(
            StatusCode::FORBIDDEN,
            "admin_token_not_configured",
            "This endpoint needs the admin token, and none is configured: set the variable named by admin.token_env.",
        );
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !bool::from(presented.as_bytes().ct_eq(expected.0.as_bytes())) {
        return error(StatusCode::UNAUTHORIZED, "invalid_admin_token", "Missing or invalid admin token in 'Authorization: Bearer TOKEN'.");
    }
    next.run(request).await
}

/// Liveness: the process runs and has a config. It checks no dependency, so a slow database
/// never makes a supervisor restart a gateway that could still serve.
async fn health(State(state): State<AdminState>) -> Json<Value> {
    let config = state.config.load();
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "config_version": config.version,
        "uptime_seconds": state.started.elapsed().as_secs(),
    }))
}

/// Readiness: the store responds, a config is loaded, and the journal is under its limit.
async fn ready(State(state): State<AdminState>) -> Response {
    let config = state.config.load();
    let store_ok = match &state.store {
        Some(store) => matches!(tokio::time::timeout(STORE_PING_TIMEOUT, store.ping()).await, Ok(Ok(()))),
        None => false,
    };
    let proxy_ok = proxy_accepts(&config.listen).await;
    let journal_bytes = state.journal.pending_bytes();
    let journal_ok = journal_bytes <= config.accounting.journal_max_bytes;
    let ready = store_ok && journal_ok && proxy_ok;
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": {
            "store": if store_ok { "ok" } else { "unreachable" },
            "proxy": if proxy_ok { "listening" } else { "not_listening" },
            "config": {"status": "ok", "version": config.version},
            "journal": {
                "status": if journal_ok { "ok" } else { "over_limit" },
                "pending_bytes": journal_bytes,
                "limit_bytes": config.accounting.journal_max_bytes,
            },
        },
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

/// Returns whether the proxy listener accepts connections. An unspecified address is tried on loopback.
pub(crate) async fn proxy_accepts(listen: &str) -> bool {
    let Ok(mut address) = listen.parse::<std::net::SocketAddr>() else { return false };
    if address.ip().is_unspecified() {
        let loopback: std::net::IpAddr = if address.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() };
        address.set_ip(loopback);
    }
    matches!(tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(address)).await, Ok(Ok(_)))
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let text = state.metrics.render(state.usage.stats(), state.journal.pending_bytes(), state.journal.pending_events());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
