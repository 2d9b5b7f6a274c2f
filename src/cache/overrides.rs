//! Per-project cache settings kept in the store (`project_cache_settings`), set with
//! `watchllm cache set` or the admin API.
//!
//! A stored field wins over the project's entry in `cache.projects`, which wins over the config's
//! defaults. `cache.enabled` and `cache.semantic.enabled` still switch the whole cache off. The
//! gateway polls the store's `cache_settings_version` every [`RELOAD_INTERVAL`] and reloads the
//! overrides when it changed, so a write reaches every node within that interval plus one query.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{info, warn};

use super::config::{CacheSettings, ProjectCache};
use crate::store::cache_settings::StoredCacheOverride;
use crate::store::{Project, Store};

/// How often the gateway checks the store for changed overrides.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Longest TTL an override may set: the TTL is added to a millisecond timestamp in an `i64`.
pub const MAX_TTL_SECONDS: u64 = i64::MAX as u64 / 1000 / 2;

/// One project's stored overrides; `None` keeps the value of the config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheOverride {
    pub enabled: Option<bool>,
    pub semantic: Option<bool>,
    /// Minimum cosine similarity of a semantic hit, in (0, 1].
    pub threshold: Option<f64>,
    pub ttl_seconds: Option<u64>,
}

/// An invalid override value, with the field it belongs to.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("invalid {field}: {message}")]
pub struct InvalidOverride {
    pub field: &'static str,
    pub message: String,
}

impl CacheOverride {
    /// Returns true when no field is set, so the stored row can be deleted.
    pub fn is_empty(&self) -> bool {
        *self == CacheOverride::default()
    }

    /// Checks that the threshold is in (0, 1] and the TTL is between 1 and [`MAX_TTL_SECONDS`].
    pub fn validate(&self) -> Result<(), InvalidOverride> {
        if let Some(threshold) = self.threshold {
            if !(threshold.is_finite() && threshold > 0.0 && threshold <= 1.0) {
                let message = format!("{threshold} is not in (0, 1]. Use a similarity such as 0.95 for strict matching or 0.80 for casual chat");
                return Err(InvalidOverride { field: "threshold", message });
            }
        }
        if let Some(ttl) = self.ttl_seconds {
            if ttl == 0 || ttl > MAX_TTL_SECONDS {
                let message = format!("{ttl} is not between 1 and {MAX_TTL_SECONDS} seconds");
                return Err(InvalidOverride { field: "ttl_seconds", message });
            }
        }
        Ok(())
    }

    /// Returns `self` with the fields that `patch` sets replaced, as a JSON merge patch does:
    /// `Some(None)` clears a field, `None` leaves it.
    pub fn merged(&self, patch: &CacheOverridePatch) -> CacheOverride {
        fn pick<T: Copy>(current: Option<T>, change: Option<Option<T>>) -> Option<T> {
            change.unwrap_or(current)
        }
        CacheOverride {
            enabled: pick(self.enabled, patch.enabled),
            semantic: pick(self.semantic, patch.semantic),
            threshold: pick(self.threshold, patch.threshold),
            ttl_seconds: pick(self.ttl_seconds, patch.ttl_seconds),
        }
    }

    /// Applies the set fields to a project's settings from the config.
    pub fn apply(&self, settings: ProjectCache) -> ProjectCache {
        ProjectCache {
            enabled: self.enabled.unwrap_or(settings.enabled),
            semantic: self.semantic.unwrap_or(settings.semantic),
            threshold: self.threshold.map(|t| t as f32).unwrap_or(settings.threshold),
            ttl: self.ttl_seconds.map(Duration::from_secs).unwrap_or(settings.ttl),
        }
    }
}

/// A change to a stored override, in JSON merge patch form (RFC 7396): an absent field keeps its
/// value, `null` removes the override of that field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheOverridePatch {
    #[serde(default, deserialize_with = "present")]
    pub enabled: Option<Option<bool>>,
    #[serde(default, deserialize_with = "present")]
    pub semantic: Option<Option<bool>>,
    #[serde(default, deserialize_with = "present")]
    pub threshold: Option<Option<f64>>,
    #[serde(default, deserialize_with = "present")]
    pub ttl_seconds: Option<Option<u64>>,
}

/// Deserializes a field that is present, `null` included, as `Some`.
fn present<'de, T, D>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Returns the settings in force for a project: the store's override over the config's.
pub fn resolve(settings: &CacheSettings, stored: Option<&CacheOverride>, project_name: &str, project_id: &str) -> ProjectCache {
    let configured = settings.configured(project_name, project_id);
    let merged = stored.map_or(configured, |o| o.apply(configured));
    settings.limit_to_global(merged)
}

/// The overrides of every project, by project id, as last loaded from the store.
#[derive(Default)]
pub struct OverrideSnapshot {
    version: Option<i64>,
    by_project: HashMap<String, CacheOverride>,
}

impl OverrideSnapshot {
    pub fn new(version: i64, rows: Vec<(String, CacheOverride)>) -> OverrideSnapshot {
        OverrideSnapshot { version: Some(version), by_project: rows.into_iter().collect() }
    }

    pub fn get(&self, project_id: &str) -> Option<&CacheOverride> {
        self.by_project.get(project_id)
    }

    pub fn len(&self) -> usize {
        self.by_project.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_project.is_empty()
    }
}

/// The shared snapshot that lookups read and the reload task replaces.
pub type SharedOverrides = Arc<ArcSwap<OverrideSnapshot>>;

/// Loads the overrides when the store's version differs from the snapshot's. Returns whether the
/// snapshot was replaced.
pub async fn refresh(store: &Store, overrides: &SharedOverrides) -> anyhow::Result<bool> {
    let version = store.cache_settings_version().await?;
    if overrides.load().version == Some(version) {
        return Ok(false);
    }
    let rows = store.load_cache_overrides().await?;
    let count = rows.len();
    overrides.store(Arc::new(OverrideSnapshot::new(version, rows)));
    info!(version, projects = count, "cache settings overrides loaded from the store");
    Ok(true)
}

/// Polls the store every [`RELOAD_INTERVAL`] and keeps `overrides` current. A failed poll keeps
/// the last snapshot and is logged once until a poll succeeds again.
pub async fn keep_current(store: Store, overrides: SharedOverrides) {
    let mut failing = false;
    loop {
        tokio::time::sleep(RELOAD_INTERVAL).await;
        match refresh(&store, &overrides).await {
            Ok(_) => failing = false,
            Err(e) if !failing => {
                warn!(error = %format!("{e:#}"), "failed to reload the cache settings overrides, so the last ones stay in force");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// Returns a project's settings as JSON: the stored override, the config's settings and the
/// settings in force, for `watchllm cache show` and the admin API.
pub fn describe(settings: &CacheSettings, project: &Project, stored: Option<&StoredCacheOverride>) -> serde_json::Value {
    let configured = settings.project(&project.name, &project.id);
    let effective = resolve(settings, stored.map(|s| &s.settings), &project.name, &project.id);
    json!({
        "project": {"id": project.id, "name": project.name},
        "override": stored.map(|s| json!({
            "enabled": s.settings.enabled,
            "semantic": s.settings.semantic,
            "threshold": s.settings.threshold,
            "ttl_seconds": s.settings.ttl_seconds,
            "updated_at_ms": s.updated_at_ms,
        })),
        "config": settings_json(&configured),
        "effective": settings_json(&effective),
        "reload_interval_ms": RELOAD_INTERVAL.as_millis() as u64,
    })
}

fn settings_json(settings: &ProjectCache) -> serde_json::Value {
    // The f32 threshold is printed in its shortest decimal form (0.95, not 0.949999988).
    let threshold: f64 = settings.threshold.to_string().parse().unwrap_or(f64::from(settings.threshold));
    json!({"enabled": settings.enabled, "semantic": settings.semantic, "threshold": threshold, "ttl_seconds": settings.ttl.as_secs()})
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn settings(yaml: &str) -> CacheSettings {
        let raw: super::super::config::RawCache = serde_yaml_ng::from_str(yaml).unwrap();
        let mut problems = Vec::new();
        let settings = super::super::config::validate(&raw, Path::new("/var/lib/w"), &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        settings
    }

    const CONFIG: &str = "enabled: true\nsemantic: {enabled: true, threshold: 0.85}\nttl_seconds: 600\nprojects:\n  bank: {threshold: 0.95, semantic: true}\n";

    #[test]
    fn store_wins_over_config_entry() {
        let settings = settings(CONFIG);
        let stored = CacheOverride { threshold: Some(0.99), ..CacheOverride::default() };
        let project = resolve(&settings, Some(&stored), "bank", "proj_1");
        assert_eq!(project.threshold, 0.99);
        // Fields the store leaves unset keep the config entry's value, then the default's.
        assert!(project.semantic);
        assert_eq!(project.ttl, Duration::from_secs(600));
    }

    #[test]
    fn config_entry_wins_over_default() {
        let settings = settings(CONFIG);
        assert_eq!(resolve(&settings, None, "bank", "proj_1").threshold, 0.95);
        assert_eq!(resolve(&settings, None, "other", "proj_2").threshold, 0.85);
        let stored = CacheOverride { ttl_seconds: Some(5), ..CacheOverride::default() };
        let other = resolve(&settings, Some(&stored), "other", "proj_2");
        assert_eq!(other.ttl, Duration::from_secs(5));
        assert_eq!(other.threshold, 0.85);
    }

    #[test]
    fn global_switches_still_apply() {
        let settings = settings("enabled: true\nsemantic: {enabled: false}\n");
        let stored = CacheOverride { semantic: Some(true), ..CacheOverride::default() };
        assert!(!resolve(&settings, Some(&stored), "a", "proj_1").semantic);

        let settings = settings_with_cache_off();
        let stored = CacheOverride { enabled: Some(true), semantic: Some(true), ..CacheOverride::default() };
        let project = resolve(&settings, Some(&stored), "a", "proj_1");
        assert!(!project.enabled);
        assert!(!project.semantic);
    }

    fn settings_with_cache_off() -> CacheSettings {
        settings("enabled: false\nsemantic: {enabled: true}\n")
    }

    #[test]
    fn disabled_override_turns_semantic_off() {
        let settings = settings(CONFIG);
        let stored = CacheOverride { enabled: Some(false), ..CacheOverride::default() };
        let project = resolve(&settings, Some(&stored), "bank", "proj_1");
        assert!(!project.enabled);
        assert!(!project.semantic);
    }

    #[test]
    fn validation_bounds() {
        let with_threshold = |t: f64| CacheOverride { threshold: Some(t), ..CacheOverride::default() }.validate();
        assert!(with_threshold(1.0).is_ok());
        assert!(with_threshold(0.01).is_ok());
        for bad in [0.0, -0.5, 1.0001, f64::NAN, f64::INFINITY] {
            let error = with_threshold(bad).expect_err("threshold outside (0, 1] should be rejected");
            assert_eq!(error.field, "threshold");
        }
        let with_ttl = |t: u64| CacheOverride { ttl_seconds: Some(t), ..CacheOverride::default() }.validate();
        assert!(with_ttl(1).is_ok());
        assert_eq!(with_ttl(0).expect_err("zero TTL").field, "ttl_seconds");
        assert_eq!(with_ttl(MAX_TTL_SECONDS + 1).expect_err("huge TTL").field, "ttl_seconds");
    }

    #[test]
    fn patch_sets_clears_and_keeps() {
        let current = CacheOverride { enabled: Some(true), semantic: Some(false), threshold: Some(0.9), ttl_seconds: Some(60) };
        let patch: CacheOverridePatch = serde_json::from_str(r#"{"threshold": 0.97, "semantic": null}"#).unwrap();
        let merged = current.merged(&patch);
        assert_eq!(merged.threshold, Some(0.97));
        assert_eq!(merged.semantic, None);
        assert_eq!(merged.enabled, Some(true));
        assert_eq!(merged.ttl_seconds, Some(60));
    }

    #[test]
    fn patch_rejects_unknown_fields() {
        let error = serde_json::from_str::<CacheOverridePatch>(r#"{"treshold": 0.9}"#).expect_err("unknown field");
        assert!(error.to_string().contains("treshold"), "{error}");
        assert!(serde_json::from_str::<CacheOverridePatch>(r#"{"ttl_seconds": -5}"#).is_err());
        assert!(serde_json::from_str::<CacheOverridePatch>(r#"{"enabled": "yes"}"#).is_err());
    }

    #[test]
    fn snapshot_finds_by_project_id() {
        let stored = CacheOverride { enabled: Some(false), ..CacheOverride::default() };
        let snapshot = OverrideSnapshot::new(3, vec![("proj_1".into(), stored)]);
        assert_eq!(snapshot.get("proj_1"), Some(&stored));
        assert_eq!(snapshot.get("proj_2"), None);
        assert_eq!(snapshot.len(), 1);
    }
}
