//! The validated configuration that the gateway runs on. It is built once per load and then shared
//! read-only behind an `Arc`, so that a request keeps the config it started with.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::pricing::ModelPrice;

/// A provider's API key. Its `Debug` output is redacted so the key cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(pub String);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// An upstream LLM provider, with its address already parsed.
#[derive(Clone, Debug)]
pub struct Provider {
    pub name: String,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// The fixed socket addresses: the one of an IP address `host`, or the configured
    /// `addresses`. Empty for a host name that `routing::resolve` looks up.
    pub addresses: Vec<SocketAddr>,
    /// Path prefix from the base URL without a trailing slash, such as `/v1` or `/api/v1`.
    pub base_path: String,
    /// Host name for TLS SNI and the Host header.
    pub sni: String,
    pub api_key: Option<SecretKey>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
}

/// The provider and price of a model name exposed to clients.
#[derive(Clone, Debug)]
pub struct ModelRoute {
    pub name: String,
    pub provider: Arc<Provider>,
    pub upstream_model: String,
    pub price: ModelPrice,
}

#[derive(Clone, Debug)]
pub struct AccountingOptions {
    pub channel_capacity: usize,
    pub batch_size: usize,
    pub flush_interval: Duration,
    pub replay_interval: Duration,
    pub journal_max_bytes: u64,
    pub writer_nice: i32,
}

#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Short SHA-256 of the config and pricing files, reported by the health endpoint.
    pub version: String,
    /// The pricing file this config read, watched for changes with the config file.
    pub pricing_path: PathBuf,
    pub listen: String,
    pub admin_listen: String,
    pub state_dir: PathBuf,
    pub database_url: String,
    pub threads: usize,
    pub max_request_body_bytes: usize,
    pub shutdown_grace: Duration,
    pub log_json: bool,
    pub auth_refresh_interval: Duration,
    pub accounting: AccountingOptions,
    /// Token for the admin listener's protected endpoints; `None` disables them.
    pub admin_token: Option<SecretKey>,
    pub public_metrics: bool,
    pub metrics_project_label: bool,
    /// Zero turns file watching off.
    pub reload_watch_interval: Duration,
    pub models: HashMap<String, ModelRoute>,
    /// Model names in sorted order, for `GET /v1/models`.
    pub model_names: Vec<String>,
    /// Plans, per-project overrides and IP limits.
    pub limits: Arc<crate::limits::settings::LimitSettings>,
    pub alerts: Arc<crate::alerts::settings::AlertSettings>,
    pub cache: Arc<crate::cache::CacheSettings>,
    /// Fallback providers, failover, health probes, experiments and the master secret's source.
    pub routing: Arc<crate::routing::settings::RoutingConfig>,
}

impl RuntimeConfig {
    pub fn route(&self, model: &str) -> Option<&ModelRoute> {
        self.models.get(model)
    }

    /// Returns the journal folder inside the state directory.
    pub fn journal_dir(&self) -> PathBuf {
        self.state_dir.join("journal")
    }
}
