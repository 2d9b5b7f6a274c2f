//! Applying a reloaded config to a running gateway.

use super::runtime::RuntimeConfig;

/// Names the settings that differ between `running` and `loaded` but apply only at start.
pub fn restart_only_changes(running: &RuntimeConfig, loaded: &RuntimeConfig) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if running.listen != loaded.listen {
        changed.push("listen");
    }
    if running.admin_listen != loaded.admin_listen {
        changed.push("admin_listen");
    }
    if running.state_dir != loaded.state_dir {
        changed.push("state_dir");
    }
    if running.database_url != loaded.database_url {
        changed.push("database_url");
    }
    if running.threads != loaded.threads {
        changed.push("threads");
    }
    if running.shutdown_grace != loaded.shutdown_grace {
        changed.push("shutdown_grace_seconds");
    }
    if running.log_json != loaded.log_json {
        changed.push("log_format");
    }
    if running.metrics_project_label != loaded.metrics_project_label {
        changed.push("metrics.project_label");
    }
    let (a, b) = (&running.accounting, &loaded.accounting);
    if (a.channel_capacity, a.batch_size, a.flush_interval, a.replay_interval, a.writer_nice) != (b.channel_capacity, b.batch_size, b.flush_interval, b.replay_interval, b.writer_nice) {
        changed.push("accounting");
    }
    if running.cache.restart_only_changes(&loaded.cache) {
        changed.push("cache (store, model and embedding pool)");
    }
    changed
}

/// Builds the config to run after a reload: everything from `loaded`, except the settings that
/// apply only at start, which keep their running values so that what is reported is what runs.
pub fn merge_reloaded(running: &RuntimeConfig, loaded: &RuntimeConfig) -> RuntimeConfig {
    let mut merged = loaded.clone();
    merged.listen = running.listen.clone();
    merged.admin_listen = running.admin_listen.clone();
    merged.state_dir = running.state_dir.clone();
    merged.database_url = running.database_url.clone();
    merged.threads = running.threads;
    merged.shutdown_grace = running.shutdown_grace;
    merged.log_json = running.log_json;
    merged.metrics_project_label = running.metrics_project_label;
    merged.accounting.channel_capacity = running.accounting.channel_capacity;
    merged.accounting.batch_size = running.accounting.batch_size;
    merged.accounting.flush_interval = running.accounting.flush_interval;
    merged.accounting.replay_interval = running.accounting.replay_interval;
    merged.accounting.writer_nice = running.accounting.writer_nice;
    merged.cache = std::sync::Arc::new(running.cache.merge_reloaded(&loaded.cache));
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::load_config_with_env;
    use std::collections::HashMap;

    fn load(config: &str) -> RuntimeConfig {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pricing.yaml"), "models:\n  a:\n    input: 1\n    output: 2\n  b:\n    input: 1\n    output: 2\n").unwrap();
        let path = dir.path().join("w.yaml");
        std::fs::write(&path, config).unwrap();
        (*load_config_with_env(&path, &HashMap::new()).unwrap().runtime).clone()
    }

    const BASE: &str = "providers:\n  p:\n    base_url: http://127.0.0.1:1/v1\nmodels:\n  a:\n    provider: p\n";

    #[test]
    fn model_change_applies_live() {
        let running = load(BASE);
        let loaded = load(&format!("{BASE}  b:\n    provider: p\n"));
        assert!(restart_only_changes(&running, &loaded).is_empty());
        assert!(merge_reloaded(&running, &loaded).route("b").is_some());
    }

    #[test]
    fn listen_change_kept_for_restart() {
        let running = load(BASE);
        let loaded = load(&format!("listen: 127.0.0.1:9999\nthreads: 4\n{BASE}"));
        assert_eq!(restart_only_changes(&running, &loaded), vec!["listen", "threads"]);
        let merged = merge_reloaded(&running, &loaded);
        assert_eq!(merged.listen, running.listen);
        assert_eq!(merged.threads, running.threads);
    }
}
