//! The admin listener: a separate address for operators. It serves `GET /health` for now.

use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::config::RuntimeConfig;

#[derive(Clone)]
pub struct AdminState {
    pub config: Arc<ArcSwap<RuntimeConfig>>,
    pub started: std::time::Instant,
}

pub fn router(state: AdminState) -> Router {
    Router::new().route("/health", get(health)).with_state(state)
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
