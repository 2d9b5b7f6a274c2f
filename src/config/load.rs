//! Reading, overriding and validating the config file.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::pricing::PricingTable;
use super::raw::{RawConfig, RawProvider};
use super::runtime::{AccountingOptions, ModelRoute, Provider, RuntimeConfig, SecretKey};

/// One problem in a config file: where it is and what is wrong.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigProblem {
    /// Dotted path inside the file, such as `models.gpt-4o.provider`, or the file itself.
    pub path: String,
    pub message: String,
}

/// Every problem found while loading a config, so that one run of `check-config` shows them all.
#[derive(Clone, Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid config {}: {} problem(s)", self.file.display(), self.problems.len())?;
        for problem in &self.problems {
            writeln!(f, "  {}: {}", problem.path, problem.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// A validated config with the file it came from.
#[derive(Clone, Debug)]
pub struct LoadedConfig {
    pub path: PathBuf,
    pub runtime: Arc<RuntimeConfig>,
    /// The modification times of the config and pricing files, taken before each was read, so
    /// that a change written while the gateway starts is still seen as a change.
    pub stamps: FileStamps,
}

/// The modification times of the config file and of its pricing file.
pub type FileStamps = (Option<SystemTime>, Option<SystemTime>);

/// Returns the modification time of `path`, or `None` when it cannot be read.
pub fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reads the config file at `path`, applies the `WATCHLLM_*` environment overrides and validates it.
pub fn load_config(path: &Path) -> Result<LoadedConfig, ConfigError> {
    let env: HashMap<String, String> = std::env::vars().collect();
    load_config_with_env(path, &env)
}

/// Same as [`load_config`] with an explicit environment, for tests.
pub fn load_config_with_env(path: &Path, env: &HashMap<String, String>) -> Result<LoadedConfig, ConfigError> {
    let fail = |path_in_file: &str, message: String| ConfigError {
        file: path.to_path_buf(),
        problems: vec![ConfigProblem { path: path_in_file.to_string(), message }],
    };

    let config_stamp = modified(path);
    let text = std::fs::read_to_string(path).map_err(|e| fail("(file)", format!("cannot read: {e}")))?;
    let mut raw = parse_yaml::<RawConfig>(&text).map_err(|p| ConfigError { file: path.to_path_buf(), problems: vec![p] })?;
    apply_env_overrides(&mut raw, env);

    let folder = path.parent().unwrap_or(Path::new("."));
    let pricing_path = folder.join(&raw.pricing_file);
    let pricing_stamp = modified(&pricing_path);
    let pricing_text = std::fs::read_to_string(&pricing_path)
        .map_err(|e| fail("pricing_file", format!("cannot read {}: {e}", pricing_path.display())))?;
    let pricing = parse_yaml::<PricingTable>(&pricing_text).map_err(|mut p| {
        p.path = format!("pricing_file ({}): {}", pricing_path.display(), p.path);
        ConfigError { file: path.to_path_buf(), problems: vec![p] }
    })?;

    let mut hasher = Sha256::new();
    hasher.update(text.as_bytes());
    hasher.update(pricing_text.as_bytes());
    let version = hex::encode(&hasher.finalize()[..6]);

    let runtime = validate(raw, &pricing, env, version, pricing_path)
        .map_err(|problems| ConfigError { file: path.to_path_buf(), problems })?;
    Ok(LoadedConfig { path: path.to_path_buf(), runtime: Arc::new(runtime), stamps: (config_stamp, pricing_stamp) })
}

/// Parses YAML into `T`, reporting the dotted path and the line of the first error.
fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigProblem> {
    let deserializer = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let text = inner.to_string();
        let message = match inner.location() {
            Some(at) if !text.contains(" line ") => format!("{text} (line {}, column {})", at.line(), at.column()),
            _ => text,
        };
        ConfigProblem { path: if path == "." { "(root)".into() } else { path }, message }
    })
}

fn apply_env_overrides(raw: &mut RawConfig, env: &HashMap<String, String>) {
    let overrides: [(&str, &mut String); 4] = [
        ("WATCHLLM_LISTEN", &mut raw.listen),
        ("WATCHLLM_ADMIN_LISTEN", &mut raw.admin_listen),
        ("WATCHLLM_DATABASE_URL", &mut raw.database_url),
        ("WATCHLLM_STATE_DIR", &mut raw.state_dir),
    ];
    for (name, field) in overrides {
        if let Some(value) = env.get(name).filter(|v| !v.is_empty()) {
            *field = value.clone();
        }
    }
}

fn validate(
    raw: RawConfig,
    pricing: &PricingTable,
    env: &HashMap<String, String>,
    version: String,
    pricing_path: PathBuf,
) -> Result<RuntimeConfig, Vec<ConfigProblem>> {
    let mut problems = Vec::new();
    let mut problem = |path: &str, message: String| problems.push(ConfigProblem { path: path.into(), message });

    for (field, value) in [("listen", &raw.listen), ("admin_listen", &raw.admin_listen)] {
        if value.parse::<std::net::SocketAddr>().is_err() {
            problem(field, format!("invalid socket address {value:?}; expected HOST:PORT such as 127.0.0.1:8080"));
        }
    }
    if raw.listen == raw.admin_listen {
        problem("admin_listen", "must differ from listen".into());
    }
    if raw.threads == 0 {
        problem("threads", "must be at least 1".into());
    }
    if raw.max_request_body_bytes == 0 {
        problem("max_request_body_bytes", "must be at least 1".into());
    }
    if raw.log_format != "text" && raw.log_format != "json" {
        problem("log_format", format!("invalid value {:?}; expected text or json", raw.log_format));
    }
    if raw.state_dir.is_empty() {
        problem("state_dir", "must not be empty".into());
    }
    let database_url = if raw.database_url.is_empty() {
        format!("sqlite://{}/watchllm.db", raw.state_dir.trim_end_matches('/'))
    } else {
        raw.database_url.clone()
    };
    if !["sqlite:", "postgres://", "postgresql://"].iter().any(|p| database_url.starts_with(p)) {
        problem("database_url", "must start with sqlite:, postgres:// or postgresql://".into());
    }
    if raw.accounting.batch_size == 0 || raw.accounting.channel_capacity == 0 {
        problem("accounting", "batch_size and channel_capacity must be at least 1".into());
    }
    if !(0..=19).contains(&raw.accounting.writer_nice) {
        problem("accounting.writer_nice", format!("must be between 0 and 19, got {}", raw.accounting.writer_nice));
    }

    let mut providers = HashMap::new();
    for (name, raw_provider) in &raw.providers {
        match parse_provider(name, raw_provider, env) {
            Ok(provider) => {
                providers.insert(name.clone(), Arc::new(provider));
            }
            Err(found) => {
                for (field, message) in found {
                    problem(&format!("providers.{name}.{field}"), message);
                }
            }
        }
    }

    let mut models = HashMap::new();
    for (name, raw_model) in &raw.models {
        let path = format!("models.{name}");
        let provider = providers.get(&raw_model.provider);
        if provider.is_none() && !raw.providers.contains_key(&raw_model.provider) {
            problem(&format!("{path}.provider"), format!("unknown provider {:?}", raw_model.provider));
        }
        let price = pricing.models.get(name);
        if price.is_none() {
            problem(&path, format!("no price for {name:?} in the pricing file; add it under models:"));
        }
        if let (Some(provider), Some(price)) = (provider, price) {
            let upstream_model = if raw_model.upstream_model.is_empty() { name.clone() } else { raw_model.upstream_model.clone() };
            models.insert(
                name.clone(),
                ModelRoute { name: name.clone(), provider: provider.clone(), upstream_model, price: *price },
            );
        }
    }

    // An unset token variable is not an error: the protected admin endpoints stay closed.
    let admin_token = read_secret(&raw.admin.token_env, env).map(SecretKey);
    if admin_token.as_ref().is_some_and(|t| t.0.len() < 16) {
        problem("admin.token_env", format!("the token in {} must be at least 16 characters", raw.admin.token_env));
    }

    let mut section_problems = Vec::new();
    let limits = crate::limits::settings::parse_limits(&raw.limits, &mut section_problems);
    let alerts = crate::alerts::settings::parse_alerts(&raw.alerts, env, &mut section_problems);
    for (path, message) in section_problems {
        problem(&path, message);
    }
    let mut cache_problems = Vec::new();
    let cache = crate::cache::config::validate(&raw.cache, Path::new(&raw.state_dir), &mut cache_problems);
    for found in cache_problems {
        problem(&found.path, found.message);
    }
    let routing_sections = crate::routing::settings::RawRouting {
        provider_keys: &raw.provider_keys,
        health: &raw.health,
        failover: &raw.failover,
        experiments: &raw.experiments,
        fallbacks: raw.models.iter().map(|(name, model)| (name.as_str(), model.fallbacks.as_slice())).collect(),
    };
    let (routing, routing_problems) = crate::routing::settings::build(routing_sections, &providers, &models);
    for (path, message) in routing_problems {
        problem(&path, message);
    }

    if !problems.is_empty() {
        return Err(problems);
    }

    let mut model_names: Vec<String> = models.keys().cloned().collect();
    model_names.sort();
    Ok(RuntimeConfig {
        version,
        pricing_path,
        listen: raw.listen,
        admin_listen: raw.admin_listen,
        state_dir: PathBuf::from(raw.state_dir),
        database_url,
        threads: raw.threads,
        max_request_body_bytes: raw.max_request_body_bytes,
        shutdown_grace: Duration::from_secs(raw.shutdown_grace_seconds),
        log_json: raw.log_format == "json",
        auth_refresh_interval: Duration::from_millis(raw.auth.refresh_interval_ms.max(50)),
        accounting: AccountingOptions {
            channel_capacity: raw.accounting.channel_capacity,
            batch_size: raw.accounting.batch_size,
            flush_interval: Duration::from_millis(raw.accounting.flush_interval_ms.max(1)),
            replay_interval: Duration::from_millis(raw.accounting.replay_interval_ms.max(10)),
            journal_max_bytes: raw.accounting.journal_max_bytes,
            writer_nice: raw.accounting.writer_nice,
        },
        admin_token,
        public_metrics: raw.admin.public_metrics,
        metrics_project_label: raw.metrics.project_label,
        reload_watch_interval: Duration::from_millis(raw.reload.watch_interval_ms),
        models,
        model_names,
        limits: Arc::new(limits),
        alerts: Arc::new(alerts),
        cache: Arc::new(cache),
        routing: Arc::new(routing),
    })
}

/// Reads a secret from the environment variable `name` or, failing that, from the file `name` in
/// systemd's `$CREDENTIALS_DIRECTORY` (where `LoadCredential=NAME:PATH` puts it). Surrounding
/// whitespace is trimmed; an empty value counts as missing.
fn read_secret(name: &str, env: &HashMap<String, String>) -> Option<String> {
    if name.is_empty() {
        return None;
    }
    if let Some(value) = env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty()) {
        return Some(value.to_string());
    }
    let directory = env.get("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty())?;
    // A credential name is a file name, never a path.
    if name.contains('/') || name == "." || name == ".." {
        return None;
    }
    let value = std::fs::read_to_string(Path::new(directory).join(name)).ok()?;
    Some(value.trim().to_string()).filter(|v| !v.is_empty())
}

/// Parses one provider entry, returning every problem as (field, message).
fn parse_provider(
    name: &str,
    raw: &RawProvider,
    env: &HashMap<String, String>,
) -> Result<Provider, Vec<(&'static str, String)>> {
    let mut problems = Vec::new();

    let url = match url::Url::parse(&raw.base_url) {
        Ok(url) if url.scheme() == "http" || url.scheme() == "https" => Some(url),
        Ok(url) => {
            problems.push(("base_url", format!("unsupported scheme {:?}; use http or https", url.scheme())));
            None
        }
        Err(e) => {
            problems.push(("base_url", format!("invalid URL {:?}: {e}", raw.base_url)));
            None
        }
    };
    let api_key = if raw.api_key_env.is_empty() {
        None
    } else {
        match read_secret(&raw.api_key_env, env) {
            Some(key) => Some(SecretKey(key)),
            None => {
                problems.push(("api_key_env", format!("environment variable {} is not set", raw.api_key_env)));
                None
            }
        }
    };
    for (field, value) in [("connect_timeout_ms", raw.connect_timeout_ms), ("read_timeout_ms", raw.read_timeout_ms), ("write_timeout_ms", raw.write_timeout_ms)] {
        if value == 0 {
            problems.push((field, "must be at least 1".into()));
        }
    }

    let mut fixed_ips = Vec::with_capacity(raw.addresses.len());
    for (index, text) in raw.addresses.iter().enumerate() {
        match text.trim().parse::<IpAddr>() {
            Ok(ip) => fixed_ips.push(ip),
            Err(_) => problems.push(("addresses", format!("entry {index} ({text:?}) is not an IP address such as 203.0.113.7 or 2001:db8::7"))),
        }
    }

    let Some(url) = url.filter(|_| problems.is_empty()) else {
        return Err(problems);
    };
    let Some(host) = url.host_str().map(str::to_string) else {
        return Err(vec![("base_url", format!("{:?} has no host", raw.base_url))]);
    };
    let tls = url.scheme() == "https";
    let port = url.port_or_known_default().unwrap_or(if tls { 443 } else { 80 });
    let bare_host = host.trim_matches(|c| c == '[' || c == ']');
    let sni = if raw.sni.is_empty() { bare_host.to_string() } else { raw.sni.clone() };
    let addresses = match bare_host.parse::<IpAddr>() {
        Ok(_) if !fixed_ips.is_empty() => {
            return Err(vec![("addresses", format!("the host of base_url, {bare_host}, is already an IP address; remove addresses or use a host name"))]);
        }
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => fixed_ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect(),
    };

    Ok(Provider {
        name: name.to_string(),
        tls,
        host,
        port,
        addresses,
        base_path: url.path().trim_end_matches('/').to_string(),
        sni,
        api_key,
        connect_timeout: Duration::from_millis(raw.connect_timeout_ms),
        read_timeout: Duration::from_millis(raw.read_timeout_ms),
        write_timeout: Duration::from_millis(raw.write_timeout_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, config: &str, pricing: &str) -> PathBuf {
        std::fs::write(dir.join("pricing.yaml"), pricing).unwrap();
        let path = dir.join("watchllm.yaml");
        std::fs::write(&path, config).unwrap();
        path
    }

    const PRICING: &str = "models:\n  small:\n    input: 1.0\n    output: 2.0\n";

    #[test]
    fn minimal_config_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "providers:\n  mock:\n    base_url: http://127.0.0.1:9000/v1\nmodels:\n  small:\n    provider: mock\n",
            PRICING,
        );
        let loaded = load_config_with_env(&path, &HashMap::new()).unwrap();
        let route = loaded.runtime.route("small").unwrap();
        assert_eq!(route.upstream_model, "small");
        assert_eq!(route.provider.port, 9000);
        assert_eq!(route.provider.base_path, "/v1");
        assert!(!route.provider.tls);
        assert_eq!(loaded.runtime.database_url, "sqlite://./state/watchllm.db");
    }

    #[test]
    fn every_problem_reported_with_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "listen: nowhere\nproviders:\n  bad:\n    base_url: ftp://x\nmodels:\n  small:\n    provider: missing\n  unpriced:\n    provider: bad\n",
            PRICING,
        );
        let err = load_config_with_env(&path, &HashMap::new()).unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"listen"), "{paths:?}");
        assert!(paths.contains(&"providers.bad.base_url"), "{paths:?}");
        assert!(paths.contains(&"models.small.provider"), "{paths:?}");
        assert!(paths.contains(&"models.unpriced"), "{paths:?}");
    }

    #[test]
    fn writer_nice_range() {
        let dir = tempfile::tempdir().unwrap();
        let providers = "providers:\n  mock:\n    base_url: http://127.0.0.1:9000/v1\nmodels:\n  small:\n    provider: mock\n";
        let path = write(dir.path(), providers, PRICING);
        assert_eq!(load_config_with_env(&path, &HashMap::new()).unwrap().runtime.accounting.writer_nice, 5);
        for (value, valid) in [("0", true), ("19", true), ("20", false), ("-1", false)] {
            let path = write(dir.path(), &format!("{providers}accounting:\n  writer_nice: {value}\n"), PRICING);
            match load_config_with_env(&path, &HashMap::new()) {
                Ok(loaded) => assert!(valid, "{value} was accepted as {}", loaded.runtime.accounting.writer_nice),
                Err(err) => {
                    assert!(!valid, "{value} was rejected: {:?}", err.problems);
                    assert_eq!(err.problems[0].path, "accounting.writer_nice");
                }
            }
        }
    }

    #[test]
    fn unknown_field_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "providers:\n  mock:\n    base_url: http://h/v1\n    colour: red\n", PRICING);
        let err = load_config_with_env(&path, &HashMap::new()).unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert_eq!(err.problems[0].path, "providers.mock.colour");
        assert!(err.problems[0].message.contains("colour"), "{}", err.problems[0].message);
        assert!(err.problems[0].message.contains("line 4"), "{}", err.problems[0].message);
    }

    #[test]
    fn environment_overrides_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "models: {}\n", PRICING);
        let env: HashMap<String, String> = [
            ("WATCHLLM_LISTEN", "127.0.0.1:1"),
            ("WATCHLLM_ADMIN_LISTEN", "127.0.0.1:2"),
            ("WATCHLLM_STATE_DIR", "/var/lib/watchllm"),
            ("WATCHLLM_DATABASE_URL", "postgres://db/x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let runtime = load_config_with_env(&path, &env).unwrap().runtime;
        assert_eq!(runtime.listen, "127.0.0.1:1");
        assert_eq!(runtime.admin_listen, "127.0.0.1:2");
        assert_eq!(runtime.state_dir, PathBuf::from("/var/lib/watchllm"));
        assert_eq!(runtime.database_url, "postgres://db/x");
    }

    #[test]
    fn missing_key_variable_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "providers:\n  p:\n    base_url: https://api.example/v1\n    api_key_env: NO_SUCH_VAR\n", PRICING);
        let err = load_config_with_env(&path, &HashMap::new()).unwrap_err();
        assert_eq!(err.problems[0].path, "providers.p.api_key_env");
    }

    #[test]
    fn provider_key_read_from_credentials_directory() {
        let dir = tempfile::tempdir().unwrap();
        let credentials = tempfile::tempdir().unwrap();
        std::fs::write(credentials.path().join("PROVIDER_KEY"), "sk-from-file\n").unwrap();
        let path = write(
            dir.path(),
            "providers:\n  p:\n    base_url: https://api.example/v1\n    api_key_env: PROVIDER_KEY\nmodels:\n  small:\n    provider: p\n",
            PRICING,
        );
        let env: HashMap<String, String> =
            [("CREDENTIALS_DIRECTORY".to_string(), credentials.path().display().to_string())].into();
        let runtime = load_config_with_env(&path, &env).unwrap().runtime;
        let key = runtime.route("small").unwrap().provider.api_key.clone().unwrap();
        assert_eq!(key.0, "sk-from-file");
    }

    #[test]
    fn provider_key_never_in_debug_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "providers:\n  p:\n    base_url: https://api.example/v1\n    api_key_env: KEY\nmodels:\n  small:\n    provider: p\n",
            PRICING,
        );
        let env: HashMap<String, String> = [("KEY".to_string(), "sk-very-secret".to_string())].into();
        let runtime = load_config_with_env(&path, &env).unwrap().runtime;
        let route = runtime.route("small").unwrap();
        assert!(route.provider.tls);
        assert_eq!(route.provider.port, 443);
        assert!(!format!("{runtime:?}").contains("sk-very-secret"));
    }

    #[test]
    fn ip_provider_address_parsed_once() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("http://10.1.2.3:8000/v1", vec!["10.1.2.3:8000"]),
            ("https://[2001:db8::1]/v1", vec!["[2001:db8::1]:443"]),
            ("https://api.example/v1", vec![]),
        ];
        for (base_url, expected) in cases {
            let path = write(dir.path(), &format!("providers:\n  p:\n    base_url: {base_url}\nmodels:\n  small:\n    provider: p\n"), PRICING);
            let runtime = load_config_with_env(&path, &HashMap::new()).unwrap().runtime;
            let addresses = runtime.route("small").unwrap().provider.addresses.clone();
            let expected: Vec<SocketAddr> = expected.iter().map(|text| text.parse().unwrap()).collect();
            assert_eq!(addresses, expected, "{base_url}");
        }
    }

    #[test]
    fn fixed_provider_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = "providers:\n  p:\n    base_url: https://api.example/v1\n    addresses: [203.0.113.7, \"2001:db8::7\"]\nmodels:\n  small:\n    provider: p\n";
        let path = write(dir.path(), yaml, PRICING);
        let runtime = load_config_with_env(&path, &HashMap::new()).unwrap().runtime;
        let provider = &runtime.route("small").unwrap().provider;
        let expected: Vec<SocketAddr> = vec!["203.0.113.7:443".parse().unwrap(), "[2001:db8::7]:443".parse().unwrap()];
        assert_eq!(provider.addresses, expected);
        assert_eq!(provider.sni, "api.example");
    }

    #[test]
    fn invalid_provider_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("https://api.example/v1", "[203.0.113.7, api.example]", "entry 1 (\"api.example\") is not an IP address"),
            ("http://10.1.2.3:8000/v1", "[203.0.113.7]", "already an IP address"),
        ];
        for (base_url, addresses, expected) in cases {
            let yaml = format!("providers:\n  p:\n    base_url: {base_url}\n    addresses: {addresses}\nmodels:\n  small:\n    provider: p\n");
            let path = write(dir.path(), &yaml, PRICING);
            let err = load_config_with_env(&path, &HashMap::new()).unwrap_err();
            let problem = err.problems.iter().find(|p| p.path == "providers.p.addresses");
            let message = problem.map(|p| p.message.as_str()).unwrap_or_default();
            assert!(message.contains(expected), "{base_url} {addresses}: {:?}", err.problems);
        }
    }
}
