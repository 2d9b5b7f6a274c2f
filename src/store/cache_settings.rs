//! Per-project overrides of the response cache settings (`project_cache_settings`), and the
//! `cache_settings_version` counter that gateways poll to decide when to reload them.

use anyhow::{anyhow, Context, Result};
use sqlx::Row;

use super::{is_foreign_key_violation, now_ms, with_pool, Store};
use crate::cache::overrides::CacheOverride;

const BUMP_VERSION: &str = "UPDATE meta SET value = value + 1 WHERE key = 'cache_settings_version'";

/// A project's stored override with the time it was last written.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StoredCacheOverride {
    pub settings: CacheOverride,
    pub updated_at_ms: i64,
}

/// Builds a [`CacheOverride`] from a row of `project_cache_settings`.
macro_rules! override_from_row {
    ($row:expr) => {{
        let row = $row;
        let ttl: Option<i64> = row.try_get("ttl_seconds")?;
        CacheOverride {
            enabled: row.try_get("enabled")?,
            semantic: row.try_get("semantic")?,
            threshold: row.try_get("threshold")?,
            // The table holds only values that passed `CacheOverride::validate`, all positive.
            ttl_seconds: ttl.and_then(|t| u64::try_from(t).ok()),
        }
    }};
}

impl Store {
    /// Replaces the project's override and bumps the version, in one transaction. An empty
    /// override deletes the row. The caller validates the values first.
    pub async fn set_cache_override(&self, project_id: &str, settings: &CacheOverride) -> Result<()> {
        if settings.is_empty() {
            self.delete_cache_override(project_id).await?;
            return Ok(());
        }
        const SQL: &str = "INSERT INTO project_cache_settings (project_id, enabled, semantic, threshold, ttl_seconds, updated_at_ms) \
                           VALUES ($1, $2, $3, $4, $5, $6) \
                           ON CONFLICT (project_id) DO UPDATE SET enabled = excluded.enabled, semantic = excluded.semantic, \
                           threshold = excluded.threshold, ttl_seconds = excluded.ttl_seconds, updated_at_ms = excluded.updated_at_ms";
        let ttl = settings.ttl_seconds.map(i64::try_from).transpose().context("ttl_seconds does not fit in a 64-bit integer")?;

        let result: Result<(), sqlx::Error> = with_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            sqlx::query(SQL)
                .bind(project_id)
                .bind(settings.enabled)
                .bind(settings.semantic)
                .bind(settings.threshold)
                .bind(ttl)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
            sqlx::query(BUMP_VERSION).execute(&mut *tx).await?;
            tx.commit().await
        }
        .await);

        match result {
            Ok(()) => Ok(()),
            Err(error) if is_foreign_key_violation(&error) => Err(anyhow!("failed to set the cache settings: project {project_id} not found")),
            Err(error) => Err(error).with_context(|| format!("failed to set the cache settings of project {project_id}")),
        }
    }

    /// Deletes the project's override and bumps the version. Returns false, and changes nothing,
    /// when the project had none.
    pub async fn delete_cache_override(&self, project_id: &str) -> Result<bool> {
        const SQL: &str = "DELETE FROM project_cache_settings WHERE project_id = $1";

        let deleted = with_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            let deleted = sqlx::query(SQL).bind(project_id).execute(&mut *tx).await?.rows_affected();
            if deleted == 0 {
                tx.rollback().await?;
                return Ok::<bool, sqlx::Error>(false);
            }
            sqlx::query(BUMP_VERSION).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(true)
        }
        .await)
        .with_context(|| format!("failed to clear the cache settings of project {project_id}"))?;
        Ok(deleted)
    }

    /// Returns the project's override, or `None` when it has none.
    pub async fn cache_override(&self, project_id: &str) -> Result<Option<StoredCacheOverride>> {
        const SQL: &str = "SELECT enabled, semantic, threshold, ttl_seconds, updated_at_ms FROM project_cache_settings WHERE project_id = $1";

        let stored = with_pool!(self, pool => {
            let row = sqlx::query(SQL)
                .bind(project_id)
                .fetch_optional(pool)
                .await
                .with_context(|| format!("failed to read the cache settings of project {project_id}"))?;
            match row {
                Some(row) => Some(StoredCacheOverride { settings: override_from_row!(&row), updated_at_ms: row.try_get("updated_at_ms")? }),
                None => None,
            }
        });
        Ok(stored)
    }

    /// Returns every project's override as (project id, override).
    pub async fn load_cache_overrides(&self) -> Result<Vec<(String, CacheOverride)>> {
        const SQL: &str = "SELECT project_id, enabled, semantic, threshold, ttl_seconds FROM project_cache_settings ORDER BY project_id";

        let mut overrides = Vec::new();
        with_pool!(self, pool => {
            let rows = sqlx::query(SQL).fetch_all(pool).await.context("failed to load the cache settings overrides")?;
            for row in &rows {
                overrides.push((row.try_get("project_id")?, override_from_row!(row)));
            }
        });
        Ok(overrides)
    }

    /// Returns a counter that changes whenever an override is written or deleted.
    pub async fn cache_settings_version(&self) -> Result<i64> {
        self.meta_version("cache_settings_version").await
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{sqlite_store, with_postgres_store};
    use super::*;

    async fn overrides_round_trip(store: Store) {
        let project = store.create_project("cached", "free").await.expect("project");
        assert_eq!(store.cache_settings_version().await.expect("version"), 0);
        assert_eq!(store.cache_override(&project.id).await.expect("read"), None);

        let strict = CacheOverride { enabled: Some(true), semantic: Some(false), threshold: Some(0.97), ttl_seconds: Some(120) };
        store.set_cache_override(&project.id, &strict).await.expect("set");
        let stored = store.cache_override(&project.id).await.expect("read").expect("stored row");
        assert_eq!(stored.settings, strict);
        assert!(stored.updated_at_ms > 0);
        assert_eq!(store.cache_settings_version().await.expect("version"), 1);

        let partial = CacheOverride { threshold: Some(0.5), ..CacheOverride::default() };
        store.set_cache_override(&project.id, &partial).await.expect("replace");
        assert_eq!(store.load_cache_overrides().await.expect("load"), vec![(project.id.clone(), partial)]);
        assert_eq!(store.cache_settings_version().await.expect("version"), 2);

        assert!(store.delete_cache_override(&project.id).await.expect("delete"));
        assert!(!store.delete_cache_override(&project.id).await.expect("delete again"));
        assert_eq!(store.cache_settings_version().await.expect("version"), 3);
        assert!(store.load_cache_overrides().await.expect("load").is_empty());

        // Setting an empty override removes the row, like a delete.
        store.set_cache_override(&project.id, &strict).await.expect("set");
        store.set_cache_override(&project.id, &CacheOverride::default()).await.expect("set empty");
        assert_eq!(store.cache_override(&project.id).await.expect("read"), None);

        let missing = store.set_cache_override("proj_missing", &strict).await.expect_err("unknown project");
        assert!(format!("{missing:#}").contains("not found"), "{missing:#}");
    }

    #[tokio::test]
    async fn sqlite_cache_overrides() {
        let dir = tempfile::tempdir().expect("temporary directory");
        overrides_round_trip(sqlite_store(dir.path()).await).await;
    }

    #[tokio::test]
    async fn postgres_cache_overrides() {
        with_postgres_store(overrides_round_trip).await;
    }
}
