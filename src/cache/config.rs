//! The `cache:` section of the config file, its validation, and per-project settings.
//!
//! Per-project settings (`cache.projects`), the defaults they fall back to, the threshold and the
//! guard apply on reload. The store's place and sizes, the model and the embedding pool apply
//! only at start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::index::{Quantization, INDEX_SETTINGS};
use crate::config::load::ConfigProblem;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCache {
    pub enabled: bool,
    pub dir: String,
    pub memory_bytes: usize,
    pub disk_bytes: usize,
    pub ttl_seconds: u64,
    pub max_entry_bytes: usize,
    pub cache_multiple_choices: bool,
    pub index_save_interval_ms: u64,
    pub semantic: RawSemantic,
    pub projects: BTreeMap<String, RawProjectCache>,
}

impl Default for RawCache {
    fn default() -> Self {
        RawCache {
            enabled: false,
            dir: String::new(),
            memory_bytes: 64 * 1024 * 1024,
            disk_bytes: 1024 * 1024 * 1024,
            ttl_seconds: 86_400,
            max_entry_bytes: 1024 * 1024,
            cache_multiple_choices: false,
            index_save_interval_ms: 1000,
            semantic: RawSemantic::default(),
            projects: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSemantic {
    pub enabled: bool,
    pub model_dir: String,
    pub threshold: f32,
    pub guard: bool,
    pub quantization: String,
    pub expansion_search: usize,
    pub max_tokens: usize,
    pub threads: usize,
    pub max_batch: usize,
    pub queue_capacity: usize,
}

impl Default for RawSemantic {
    fn default() -> Self {
        RawSemantic {
            enabled: false,
            model_dir: String::new(),
            threshold: DEFAULT_THRESHOLD,
            guard: true,
            // At 100,000 entries i8 keeps f32's recall on rewordings with half the search time
            // and 3.4 times less memory (docs/BENCHMARKS.md).
            quantization: "i8".into(),
            expansion_search: INDEX_SETTINGS.expansion_search,
            max_tokens: 256,
            threads: 1,
            max_batch: 32,
            queue_capacity: 256,
        }
    }
}

/// Default similarity threshold of a semantic hit. See docs/BENCHMARKS.md for the labelled set
/// that it was chosen on.
pub const DEFAULT_THRESHOLD: f32 = 0.85;

/// One project's overrides; an absent field keeps the `cache` section's value. Overrides in the
/// store (`watchllm cache set`, the admin API) win over these, as `overrides` describes.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawProjectCache {
    pub enabled: Option<bool>,
    pub semantic: Option<bool>,
    pub threshold: Option<f32>,
    pub ttl_seconds: Option<u64>,
}

/// The validated cache settings.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheSettings {
    pub enabled: bool,
    pub dir: PathBuf,
    pub memory_bytes: usize,
    pub disk_bytes: usize,
    pub max_entry_bytes: usize,
    pub cache_multiple_choices: bool,
    pub index_save_interval: Duration,
    pub semantic_enabled: bool,
    pub model_dir: PathBuf,
    pub guard: bool,
    pub quantization: Quantization,
    /// Candidates the vector index keeps during a search: lower is faster, higher finds the
    /// nearest entry more often (docs/BENCHMARKS.md has the figures).
    pub expansion_search: usize,
    pub max_tokens: usize,
    pub threads: usize,
    pub max_batch: usize,
    pub queue_capacity: usize,
    pub defaults: ProjectCache,
    /// Overrides by project name or id.
    pub projects: BTreeMap<String, ProjectCache>,
}

/// The cache settings in force for one project.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProjectCache {
    pub enabled: bool,
    pub semantic: bool,
    pub threshold: f32,
    pub ttl: Duration,
}

impl CacheSettings {
    /// Returns the settings of a project from the config alone, found by name first and then by
    /// id. `overrides::resolve` adds the store's overrides.
    pub fn project(&self, name: &str, id: &str) -> ProjectCache {
        self.limit_to_global(self.configured(name, id))
    }

    /// Returns the project's entry in `cache.projects`, or the defaults, before the global switches.
    pub fn configured(&self, name: &str, id: &str) -> ProjectCache {
        self.projects.get(name).or_else(|| self.projects.get(id)).copied().unwrap_or(self.defaults)
    }

    /// Turns the cache off when `cache.enabled` is off, and the semantic cache when either switch
    /// or the project's own `enabled` is off.
    pub fn limit_to_global(&self, found: ProjectCache) -> ProjectCache {
        ProjectCache { enabled: found.enabled && self.enabled, semantic: found.semantic && self.semantic_enabled && found.enabled && self.enabled, ..found }
    }

    /// Names the settings that differ between two configs and apply only at start.
    pub fn restart_only_changes(&self, other: &CacheSettings) -> bool {
        (self.enabled, &self.dir, self.memory_bytes, self.disk_bytes, self.semantic_enabled, &self.model_dir, self.quantization)
            != (other.enabled, &other.dir, other.memory_bytes, other.disk_bytes, other.semantic_enabled, &other.model_dir, other.quantization)
            || (self.max_tokens, self.threads, self.max_batch, self.queue_capacity, self.index_save_interval, self.expansion_search)
                != (other.max_tokens, other.threads, other.max_batch, other.queue_capacity, other.index_save_interval, other.expansion_search)
    }

    /// Returns `loaded` with the start-only settings of `self`.
    pub fn merge_reloaded(&self, loaded: &CacheSettings) -> CacheSettings {
        CacheSettings {
            defaults: loaded.defaults,
            projects: loaded.projects.clone(),
            guard: loaded.guard,
            max_entry_bytes: loaded.max_entry_bytes,
            cache_multiple_choices: loaded.cache_multiple_choices,
            ..self.clone()
        }
    }
}

/// Validates the `cache` section; `state_dir` places the default directories.
pub fn validate(raw: &RawCache, state_dir: &Path, problems: &mut Vec<ConfigProblem>) -> CacheSettings {
    let mut problem = |path: &str, message: String| problems.push(ConfigProblem { path: path.into(), message });
    let threshold_ok = |t: f32| t.is_finite() && (0.0..=1.0).contains(&t);

    if !threshold_ok(raw.semantic.threshold) {
        problem("cache.semantic.threshold", format!("must be between 0 and 1, not {}", raw.semantic.threshold));
    }
    let quantization = Quantization::parse(&raw.semantic.quantization).unwrap_or_else(|| {
        problem("cache.semantic.quantization", format!("invalid value {:?}; expected f32, f16 or i8", raw.semantic.quantization));
        Quantization::F32
    });
    if raw.memory_bytes < 1024 * 1024 {
        problem("cache.memory_bytes", "must be at least 1048576 (1 MiB)".into());
    }
    // The disk tier writes 4 MiB blocks and needs a few of them.
    if raw.disk_bytes < 16 * 1024 * 1024 {
        problem("cache.disk_bytes", "must be at least 16777216 (16 MiB)".into());
    }
    if raw.max_entry_bytes == 0 || raw.max_entry_bytes > 4 * 1024 * 1024 - 64 * 1024 {
        problem("cache.max_entry_bytes", "must be between 1 and 4128768 (a disk block less its index)".into());
    }
    if raw.ttl_seconds == 0 {
        problem("cache.ttl_seconds", "must be at least 1".into());
    }
    if raw.semantic.max_tokens < 8 || raw.semantic.max_tokens > 512 {
        problem("cache.semantic.max_tokens", "must be between 8 and 512 (the model's positions)".into());
    }
    if raw.semantic.expansion_search == 0 || raw.semantic.expansion_search > 4096 {
        problem("cache.semantic.expansion_search", format!("must be between 1 and 4096, not {}", raw.semantic.expansion_search));
    }
    if raw.semantic.threads == 0 || raw.semantic.max_batch == 0 || raw.semantic.queue_capacity == 0 {
        problem("cache.semantic", "threads, max_batch and queue_capacity must be at least 1".into());
    }

    let defaults = ProjectCache { enabled: true, semantic: true, threshold: raw.semantic.threshold, ttl: Duration::from_secs(raw.ttl_seconds) };
    let mut projects = BTreeMap::new();
    for (name, project) in &raw.projects {
        if let Some(t) = project.threshold.filter(|t| !threshold_ok(*t)) {
            problem(&format!("cache.projects.{name}.threshold"), format!("must be between 0 and 1, not {t}"));
        }
        if project.ttl_seconds == Some(0) {
            problem(&format!("cache.projects.{name}.ttl_seconds"), "must be at least 1".into());
        }
        let settings = ProjectCache {
            enabled: project.enabled.unwrap_or(defaults.enabled),
            semantic: project.semantic.unwrap_or(defaults.semantic),
            threshold: project.threshold.unwrap_or(defaults.threshold),
            ttl: project.ttl_seconds.map(Duration::from_secs).unwrap_or(defaults.ttl),
        };
        projects.insert(name.clone(), settings);
    }

    let dir = if raw.dir.is_empty() { state_dir.join("cache") } else { PathBuf::from(&raw.dir) };
    let model_dir = if raw.semantic.model_dir.is_empty() { state_dir.join("models").join("all-MiniLM-L6-v2") } else { PathBuf::from(&raw.semantic.model_dir) };
    CacheSettings {
        enabled: raw.enabled,
        dir,
        memory_bytes: raw.memory_bytes,
        disk_bytes: raw.disk_bytes,
        max_entry_bytes: raw.max_entry_bytes,
        cache_multiple_choices: raw.cache_multiple_choices,
        index_save_interval: Duration::from_millis(raw.index_save_interval_ms.max(100)),
        semantic_enabled: raw.semantic.enabled,
        model_dir,
        guard: raw.semantic.guard,
        quantization,
        expansion_search: raw.semantic.expansion_search,
        max_tokens: raw.semantic.max_tokens,
        threads: raw.semantic.threads,
        max_batch: raw.semantic.max_batch,
        queue_capacity: raw.semantic.queue_capacity,
        defaults,
        projects,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(yaml: &str) -> (CacheSettings, Vec<ConfigProblem>) {
        let raw: RawCache = serde_yaml_ng::from_str(yaml).unwrap();
        let mut problems = Vec::new();
        let settings = validate(&raw, Path::new("/var/lib/w"), &mut problems);
        (settings, problems)
    }

    #[test]
    fn defaults_place_dirs_in_state() {
        let (settings, problems) = settings("{}");
        assert!(problems.is_empty(), "{problems:?}");
        assert!(!settings.enabled);
        assert_eq!(settings.dir, PathBuf::from("/var/lib/w/cache"));
        assert_eq!(settings.model_dir, PathBuf::from("/var/lib/w/models/all-MiniLM-L6-v2"));
        assert_eq!(settings.defaults.threshold, DEFAULT_THRESHOLD);
    }

    #[test]
    fn project_overrides_apply() {
        let (settings, _) = settings("enabled: true\nsemantic: {enabled: true}\nprojects:\n  bank: {threshold: 0.95, ttl_seconds: 60}\n  quiet: {enabled: false}\n");
        let bank = settings.project("bank", "proj_1");
        assert_eq!(bank.threshold, 0.95);
        assert_eq!(bank.ttl, Duration::from_secs(60));
        assert!(bank.semantic);
        assert!(!settings.project("quiet", "proj_2").enabled);
        assert!(!settings.project("quiet", "proj_2").semantic);
        assert_eq!(settings.project("other", "proj_3").threshold, DEFAULT_THRESHOLD);
    }

    #[test]
    fn search_expansion_applies_at_start_only() {
        let (running, _) = settings("semantic: {quantization: i8}\n");
        assert_eq!(running.expansion_search, INDEX_SETTINGS.expansion_search);
        let (loaded, problems) = settings("semantic: {quantization: i8, expansion_search: 32}\n");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(loaded.expansion_search, 32);
        assert!(running.restart_only_changes(&loaded));
    }

    #[test]
    fn semantic_off_globally_wins() {
        let (settings, _) = settings("enabled: true\nprojects:\n  a: {semantic: true}\n");
        assert!(!settings.project("a", "x").semantic);
    }

    #[test]
    fn invalid_values_reported() {
        let (_, problems) = settings("semantic: {threshold: 1.5, quantization: f8, expansion_search: 0}\nprojects:\n  a: {threshold: -1}\n");
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"cache.semantic.threshold"), "{paths:?}");
        assert!(paths.contains(&"cache.semantic.expansion_search"), "{paths:?}");
        assert!(paths.contains(&"cache.semantic.quantization"), "{paths:?}");
        assert!(paths.contains(&"cache.projects.a.threshold"), "{paths:?}");
    }
}
