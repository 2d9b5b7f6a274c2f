//! The config file as written. Every field has a default, documented in conf/watchllm.yaml.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// Proxy listen address. Overridden by `WATCHLLM_LISTEN`.
    pub listen: String,
    /// Admin listen address (health, later metrics). Overridden by `WATCHLLM_ADMIN_LISTEN`.
    pub admin_listen: String,
    /// Directory for the SQLite file and the usage journal. Overridden by `WATCHLLM_STATE_DIR`.
    pub state_dir: String,
    /// `sqlite://FILE` or `postgres://...`; empty means `sqlite://<state_dir>/watchllm.db`.
    /// Overridden by `WATCHLLM_DATABASE_URL`.
    pub database_url: String,
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// Pricing file, relative to this config file's folder.
    pub pricing_file: String,
    /// Largest accepted request body in bytes, after gzip decoding.
    pub max_request_body_bytes: usize,
    /// Seconds that a graceful shutdown waits for in-flight requests.
    pub shutdown_grace_seconds: u64,
    /// `text` or `json` log lines.
    pub log_format: String,
    pub auth: RawAuth,
    pub accounting: RawAccounting,
    pub admin: RawAdmin,
    pub metrics: RawMetrics,
    pub reload: RawReload,
    pub limits: crate::limits::settings::RawLimits,
    pub alerts: crate::alerts::settings::RawAlerts,
    /// The response cache; see conf/watchllm.yaml.
    pub cache: crate::cache::config::RawCache,
    /// Projects' own provider keys: where the master secret comes from.
    pub provider_keys: crate::routing::settings::RawProviderKeys,
    /// Provider health probes.
    pub health: crate::routing::settings::RawHealth,
    /// When a request goes to a model's next provider.
    pub failover: crate::routing::settings::RawFailover,
    /// A/B experiments by name.
    pub experiments: BTreeMap<String, crate::routing::settings::RawExperiment>,
    pub providers: BTreeMap<String, RawProvider>,
    pub models: BTreeMap<String, RawModel>,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            listen: "127.0.0.1:8080".into(),
            admin_listen: "127.0.0.1:8081".into(),
            state_dir: "./state".into(),
            database_url: String::new(),
            threads: 2,
            pricing_file: "pricing.yaml".into(),
            max_request_body_bytes: 10 * 1024 * 1024,
            shutdown_grace_seconds: 30,
            log_format: "text".into(),
            auth: RawAuth::default(),
            accounting: RawAccounting::default(),
            admin: RawAdmin::default(),
            metrics: RawMetrics::default(),
            reload: RawReload::default(),
            limits: Default::default(),
            alerts: Default::default(),
            cache: Default::default(),
            provider_keys: Default::default(),
            health: Default::default(),
            failover: Default::default(),
            experiments: BTreeMap::new(),
            providers: BTreeMap::new(),
            models: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    /// How often the gateway checks the store for created or revoked keys, in milliseconds.
    pub refresh_interval_ms: u64,
}

impl Default for RawAuth {
    fn default() -> Self {
        RawAuth { refresh_interval_ms: 1000 }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAccounting {
    /// Usage events buffered in memory before they spill to the journal.
    pub channel_capacity: usize,
    /// Events written per database transaction.
    pub batch_size: usize,
    /// Maximum wait before a partial batch is written, in milliseconds.
    pub flush_interval_ms: u64,
    /// How often a non-empty journal is replayed into the store, in milliseconds.
    pub replay_interval_ms: u64,
    /// Journal size in bytes above which `/health/ready` reports not ready.
    pub journal_max_bytes: u64,
    /// How much the usage writer's thread raises its nice value, from 0 to 19.
    pub writer_nice: i32,
}

impl Default for RawAccounting {
    fn default() -> Self {
        RawAccounting {
            channel_capacity: 10_000,
            batch_size: 500,
            flush_interval_ms: 200,
            replay_interval_ms: 1000,
            journal_max_bytes: 1024 * 1024 * 1024,
            writer_nice: 5,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    /// Environment variable holding the admin token; empty disables every protected endpoint.
    pub token_env: String,
    /// Serve `/metrics` without the admin token.
    pub public_metrics: bool,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin { token_env: "WATCHLLM_ADMIN_TOKEN".into(), public_metrics: false }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMetrics {
    /// Add a `project` label to the request metrics. Multiplies the series by the number of projects.
    pub project_label: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawReload {
    /// How often the config and pricing files are checked for changes, in milliseconds; 0 turns
    /// the check off (SIGHUP still reloads).
    pub watch_interval_ms: u64,
}

impl Default for RawReload {
    fn default() -> Self {
        RawReload { watch_interval_ms: 1000 }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawProvider {
    /// Base URL including the API version path, such as `https://openrouter.ai/api/v1`.
    pub base_url: String,
    /// Environment variable that contains the provider's API key; empty sends no key.
    pub api_key_env: String,
    /// TCP (and TLS) connect timeout in milliseconds.
    pub connect_timeout_ms: u64,
    /// Maximum wait for the next bytes of a response, in milliseconds.
    pub read_timeout_ms: u64,
    /// Maximum wait for a write to the provider, in milliseconds.
    pub write_timeout_ms: u64,
    /// Host name sent in TLS SNI and the Host header; empty means the host of `base_url`.
    pub sni: String,
    /// IP addresses to connect to instead of looking up the host of `base_url`.
    pub addresses: Vec<String>,
}

impl Default for RawProvider {
    fn default() -> Self {
        RawProvider {
            base_url: String::new(),
            api_key_env: String::new(),
            connect_timeout_ms: 5_000,
            read_timeout_ms: 120_000,
            write_timeout_ms: 30_000,
            sni: String::new(),
            addresses: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawModel {
    /// Provider name, a key of `providers`.
    pub provider: String,
    /// Model id sent to the provider; empty means the model's own name.
    pub upstream_model: String,
    /// Providers tried in order when `provider` is unhealthy or fails before acting.
    pub fallbacks: Vec<crate::routing::settings::RawFallback>,
}

impl Default for RawModel {
    fn default() -> Self {
        RawModel { provider: String::new(), upstream_model: String::new(), fallbacks: Vec::new() }
    }
}
