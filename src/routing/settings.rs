//! The routing sections of the config file (`provider_keys`, `health`, `failover`, `experiments`
//! and each model's `fallbacks`), as written and as validated.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::experiments::{Experiment, Variant};
use crate::config::{ModelRoute, Provider};
use crate::keys::MasterSecretSource;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawProviderKeys {
    /// Environment variable holding the master secret.
    pub master_key_env: String,
    /// File holding the master secret; wins over the variable when set.
    pub master_key_file: String,
    /// How often the gateway checks the store for changed provider keys, in milliseconds.
    pub refresh_interval_ms: u64,
}

impl Default for RawProviderKeys {
    fn default() -> Self {
        RawProviderKeys { master_key_env: "WATCHLLM_MASTER_KEY".into(), master_key_file: String::new(), refresh_interval_ms: 1000 }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHealth {
    pub enabled: bool,
    /// Path under each provider's base URL that a probe requests with GET.
    pub path: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Consecutive failures (probes or requests) that mark a provider unhealthy.
    pub unhealthy_after: u32,
    /// Consecutive successes that mark an unhealthy provider healthy again.
    pub healthy_after: u32,
    /// Maximum cool-down taken from an upstream's `Retry-After`, in seconds.
    pub max_cooldown_seconds: u64,
}

impl Default for RawHealth {
    fn default() -> Self {
        RawHealth {
            enabled: true,
            path: "/models".into(),
            interval_ms: 10_000,
            timeout_ms: 3_000,
            unhealthy_after: 3,
            healthy_after: 2,
            max_cooldown_seconds: 300,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawFailover {
    /// Upstream statuses after which the request goes to the next provider.
    pub statuses: Vec<u16>,
    /// Most providers tried for one request, the first included.
    pub max_attempts: usize,
}

impl Default for RawFailover {
    fn default() -> Self {
        RawFailover { statuses: vec![429, 502, 503], max_attempts: 3 }
    }
}

/// A fallback provider of a model: a provider name, or a provider with its own model id.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum RawFallback {
    Provider(String),
    Detailed {
        provider: String,
        #[serde(default)]
        upstream_model: String,
    },
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExperiment {
    /// The model name clients request; a key of `models`.
    pub model: String,
    /// Header naming the end user when the body has no `user` field.
    #[serde(default)]
    pub user_header: String,
    #[serde(default = "default_true")]
    pub enabled: bool,
    pub variants: Vec<RawVariant>,
}

fn default_true() -> bool {
    true
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVariant {
    pub name: String,
    /// A key of `models`: its provider, upstream model id and price serve the variant.
    pub model: String,
    /// Another configured provider for the variant; empty keeps the model's provider.
    #[serde(default)]
    pub provider: String,
    pub weight: f64,
    /// Fields set in the request body, replacing the client's values (such as `temperature`).
    #[serde(default)]
    pub parameters: serde_json::Map<String, serde_json::Value>,
}

/// Health probe settings.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthOptions {
    pub enabled: bool,
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
    pub max_cooldown: Duration,
}

/// Another provider that can serve a model.
#[derive(Clone, Debug)]
pub struct Fallback {
    pub provider: Arc<Provider>,
    pub upstream_model: String,
}

/// The validated routing settings, part of `RuntimeConfig`.
#[derive(Clone, Debug)]
pub struct RoutingConfig {
    pub master_secret: MasterSecretSource,
    pub provider_keys_refresh: Duration,
    pub health: HealthOptions,
    pub failover_statuses: Vec<u16>,
    pub max_attempts: usize,
    /// Fallback providers by model name, in order.
    pub fallbacks: HashMap<String, Vec<Fallback>>,
    /// Enabled experiments by the model name they apply to.
    pub experiments: HashMap<String, Arc<Experiment>>,
    /// Every experiment, enabled or not, by name.
    pub experiments_by_name: BTreeMap<String, Arc<Experiment>>,
    /// Every configured provider, sorted by name, for the health probes.
    pub providers: Vec<Arc<Provider>>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        let keys = RawProviderKeys::default();
        RoutingConfig {
            master_secret: MasterSecretSource { env: keys.master_key_env, file: keys.master_key_file },
            provider_keys_refresh: Duration::from_millis(keys.refresh_interval_ms),
            health: health_options(&RawHealth::default()),
            failover_statuses: RawFailover::default().statuses,
            max_attempts: RawFailover::default().max_attempts,
            fallbacks: HashMap::new(),
            experiments: HashMap::new(),
            experiments_by_name: BTreeMap::new(),
            providers: Vec::new(),
        }
    }
}

fn health_options(raw: &RawHealth) -> HealthOptions {
    HealthOptions {
        enabled: raw.enabled,
        path: if raw.path.starts_with('/') { raw.path.clone() } else { format!("/{}", raw.path) },
        interval: Duration::from_millis(raw.interval_ms.max(100)),
        timeout: Duration::from_millis(raw.timeout_ms.max(1)),
        unhealthy_after: raw.unhealthy_after.max(1),
        healthy_after: raw.healthy_after.max(1),
        max_cooldown: Duration::from_secs(raw.max_cooldown_seconds),
    }
}

/// The raw routing sections, borrowed from the whole raw config.
pub struct RawRouting<'a> {
    pub provider_keys: &'a RawProviderKeys,
    pub health: &'a RawHealth,
    pub failover: &'a RawFailover,
    pub experiments: &'a BTreeMap<String, RawExperiment>,
    /// Each model's `fallbacks`.
    pub fallbacks: BTreeMap<&'a str, &'a [RawFallback]>,
}

/// Validates the routing sections against the parsed providers and models. Returns the settings
/// and every problem as (path in the file, message).
pub fn build(
    raw: RawRouting<'_>,
    providers: &HashMap<String, Arc<Provider>>,
    models: &HashMap<String, ModelRoute>,
) -> (RoutingConfig, Vec<(String, String)>) {
    let mut problems = Vec::new();
    if raw.provider_keys.master_key_env.is_empty() && raw.provider_keys.master_key_file.is_empty() {
        problems.push(("provider_keys".to_string(), "set master_key_env or master_key_file".to_string()));
    }
    if raw.health.path.contains("://") {
        problems.push(("health.path".into(), "must be a path under the provider's base URL, such as /models".into()));
    }
    for status in &raw.failover.statuses {
        if !(400..=599).contains(status) {
            problems.push(("failover.statuses".into(), format!("{status} is not an error status (400-599)")));
        }
    }
    if raw.failover.max_attempts == 0 || raw.failover.max_attempts > super::MAX_PROVIDER_ATTEMPTS {
        problems.push(("failover.max_attempts".into(), format!("must be between 1 and {}", super::MAX_PROVIDER_ATTEMPTS)));
    }

    let mut fallbacks = HashMap::new();
    for (model, entries) in &raw.fallbacks {
        let mut list = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            let (name, upstream_model) = match entry {
                RawFallback::Provider(name) => (name, ""),
                RawFallback::Detailed { provider, upstream_model } => (provider, upstream_model.as_str()),
            };
            let Some(provider) = providers.get(name) else {
                problems.push((format!("models.{model}.fallbacks[{index}]"), format!("unknown provider {name:?}")));
                continue;
            };
            let upstream_model = if upstream_model.is_empty() {
                models.get(*model).map(|route| route.upstream_model.clone()).unwrap_or_else(|| model.to_string())
            } else {
                upstream_model.to_string()
            };
            list.push(Fallback { provider: provider.clone(), upstream_model });
        }
        if !list.is_empty() {
            fallbacks.insert(model.to_string(), list);
        }
    }

    let mut experiments = HashMap::new();
    let mut experiments_by_name = BTreeMap::new();
    for (name, experiment) in raw.experiments {
        match build_experiment(name, experiment, providers, models) {
            Ok(built) => {
                let built = Arc::new(built);
                if built.enabled {
                    if experiments.contains_key(&built.model) {
                        problems.push((format!("experiments.{name}.model"), format!("another enabled experiment already applies to {:?}", built.model)));
                    }
                    experiments.insert(built.model.clone(), built.clone());
                }
                experiments_by_name.insert(name.clone(), built);
            }
            Err(found) => problems.extend(found),
        }
    }

    let mut all_providers: Vec<Arc<Provider>> = providers.values().cloned().collect();
    all_providers.sort_by(|a, b| a.name.cmp(&b.name));
    let config = RoutingConfig {
        master_secret: MasterSecretSource { env: raw.provider_keys.master_key_env.clone(), file: raw.provider_keys.master_key_file.clone() },
        provider_keys_refresh: Duration::from_millis(raw.provider_keys.refresh_interval_ms.max(50)),
        health: health_options(raw.health),
        failover_statuses: raw.failover.statuses.clone(),
        max_attempts: raw.failover.max_attempts.clamp(1, super::MAX_PROVIDER_ATTEMPTS),
        fallbacks,
        experiments,
        experiments_by_name,
        providers: all_providers,
    };
    (config, problems)
}

fn build_experiment(
    name: &str,
    raw: &RawExperiment,
    providers: &HashMap<String, Arc<Provider>>,
    models: &HashMap<String, ModelRoute>,
) -> Result<Experiment, Vec<(String, String)>> {
    let path = format!("experiments.{name}");
    let mut problems = Vec::new();
    if !models.contains_key(&raw.model) {
        problems.push((format!("{path}.model"), format!("unknown model {:?}; an experiment applies to a model listed under models", raw.model)));
    }
    if raw.variants.is_empty() {
        problems.push((format!("{path}.variants"), "must list at least one variant".into()));
    }
    let mut variants = Vec::new();
    for (index, variant) in raw.variants.iter().enumerate() {
        let at = format!("{path}.variants[{index}]");
        if variant.name.is_empty() || raw.variants[..index].iter().any(|v| v.name == variant.name) {
            problems.push((format!("{at}.name"), "must be non-empty and unique in the experiment".into()));
        }
        if !variant.weight.is_finite() || variant.weight < 0.0 {
            problems.push((format!("{at}.weight"), format!("must be a non-negative number, got {}", variant.weight)));
        }
        if variant.parameters.contains_key("model") || variant.parameters.contains_key("stream") {
            problems.push((format!("{at}.parameters"), "must not set model or stream".into()));
        }
        let Some(model_route) = models.get(&variant.model) else {
            problems.push((format!("{at}.model"), format!("unknown model {:?}; a variant serves a model listed under models", variant.model)));
            continue;
        };
        let mut route = model_route.clone();
        route.name = raw.model.clone();
        if !variant.provider.is_empty() {
            match providers.get(&variant.provider) {
                Some(provider) => route.provider = provider.clone(),
                None => {
                    problems.push((format!("{at}.provider"), format!("unknown provider {:?}", variant.provider)));
                    continue;
                }
            }
        }
        variants.push(Variant {
            name: variant.name.clone(),
            weight: variant.weight.max(0.0),
            model: variant.model.clone(),
            route,
            parameters: variant.parameters.clone(),
        });
    }
    if problems.is_empty() && variants.iter().map(|v| v.weight).sum::<f64>() <= 0.0 {
        problems.push((format!("{path}.variants"), "at least one variant needs a weight above 0".into()));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let user_header = raw.user_header.to_ascii_lowercase();
    Ok(Experiment::new(name.to_string(), raw.model.clone(), user_header, raw.enabled, variants))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use crate::config::load::load_config_with_env;

    fn load(config: &str) -> Result<std::sync::Arc<crate::config::RuntimeConfig>, Vec<String>> {
        let dir = tempfile::tempdir().unwrap();
        let pricing = "models:\n  a:\n    input: 1\n    output: 2\n  b:\n    input: 1\n    output: 2\n";
        std::fs::write(dir.path().join("pricing.yaml"), pricing).unwrap();
        let path = dir.path().join("watchllm.yaml");
        std::fs::write(&path, config).unwrap();
        load_config_with_env(&path, &HashMap::new()).map(|l| l.runtime).map_err(|e| e.problems.into_iter().map(|p| p.path).collect())
    }

    const PROVIDERS: &str = "providers:\n  p:\n    base_url: http://127.0.0.1:1/v1\n  q:\n    base_url: http://127.0.0.1:2/v1\n";

    #[test]
    fn defaults_apply() {
        let runtime = load(&format!("{PROVIDERS}models:\n  a:\n    provider: p\n")).unwrap();
        let routing = &runtime.routing;
        assert_eq!(routing.failover_statuses, vec![429, 502, 503]);
        assert_eq!(routing.max_attempts, 3);
        assert_eq!(routing.health.path, "/models");
        assert_eq!(routing.master_secret.env, "WATCHLLM_MASTER_KEY");
        assert_eq!(routing.providers.len(), 2);
    }

    #[test]
    fn fallbacks_and_experiment_built() {
        let config = format!(
            "{PROVIDERS}models:\n  a:\n    provider: p\n    fallbacks: [q, {{provider: q, upstream_model: other}}]\n  b:\n    provider: q\n\
             experiments:\n  e:\n    model: a\n    variants:\n      - {{name: one, model: a, weight: 1}}\n      - {{name: two, model: b, provider: p, weight: 0.5, parameters: {{temperature: 0}}}}\n"
        );
        let runtime = load(&config).unwrap();
        let fallbacks = &runtime.routing.fallbacks["a"];
        assert_eq!(fallbacks.len(), 2);
        assert_eq!(fallbacks[0].upstream_model, "a");
        assert_eq!(fallbacks[1].upstream_model, "other");
        let experiment = &runtime.routing.experiments["a"];
        assert_eq!(experiment.variants[1].route.provider.name, "p");
        assert_eq!(experiment.variants[1].route.upstream_model, "b");
        assert_eq!(experiment.variants[1].route.name, "a");
        assert_eq!(experiment.total_weight(), 1.5);
    }

    #[test]
    fn invalid_sections_reported() {
        let config = format!(
            "{PROVIDERS}models:\n  a:\n    provider: p\n    fallbacks: [nowhere]\nfailover:\n  statuses: [200]\n\
             experiments:\n  e:\n    model: missing\n    variants:\n      - {{name: x, model: a, weight: -1}}\n"
        );
        let problems = load(&config).unwrap_err();
        for expected in ["models.a.fallbacks[0]", "failover.statuses", "experiments.e.model", "experiments.e.variants[0].weight"] {
            assert!(problems.iter().any(|p| p == expected), "{expected} missing from {problems:?}");
        }
    }
}
