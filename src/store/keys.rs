//! API keys, and the keys version counter that gateways poll to decide when to reload keys.

use anyhow::{anyhow, Context, Result};
use sqlx::Row;

use super::{
    is_foreign_key_violation, is_unique_violation, now_ms, with_pool, KeyInfo, KeyRecord, NewKey,
    Store,
};

const BUMP_KEYS_VERSION: &str = "UPDATE meta SET value = value + 1 WHERE key = 'keys_version'";

impl Store {
    /// Inserts a key and bumps the keys version in one transaction. Fails when the project
    /// does not exist or when a key with the same id or hash exists.
    pub async fn insert_key(&self, key: &NewKey) -> Result<()> {
        const SQL: &str = "INSERT INTO api_keys (id, project_id, key_hash, prefix, created_at_ms) \
                           VALUES ($1, $2, $3, $4, $5)";

        let result: Result<(), sqlx::Error> = with_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            sqlx::query(SQL)
                .bind(&key.id)
                .bind(&key.project_id)
                .bind(&key.key_hash)
                .bind(&key.prefix)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
            sqlx::query(BUMP_KEYS_VERSION).execute(&mut *tx).await?;
            tx.commit().await
        }
        .await);

        match result {
            Ok(()) => Ok(()),
            Err(error) if is_foreign_key_violation(&error) => Err(anyhow!(
                "failed to insert key {}: project {} not found",
                key.id,
                key.project_id
            )),
            Err(error) if is_unique_violation(&error) => Err(anyhow!(
                "failed to insert key {}: a key with this id or hash already exists",
                key.id
            )),
            Err(error) => Err(error).with_context(|| format!("failed to insert key {}", key.id)),
        }
    }

    /// Sets `revoked_at_ms` on the key and bumps the keys version in one transaction.
    /// Returns false, and changes nothing, when no active key has that id.
    pub async fn revoke_key(&self, key_id: &str) -> Result<bool> {
        const SQL: &str =
            "UPDATE api_keys SET revoked_at_ms = $1 WHERE id = $2 AND revoked_at_ms IS NULL";

        let revoked = with_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            let updated = sqlx::query(SQL)
                .bind(now_ms())
                .bind(key_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if updated == 0 {
                tx.rollback().await?;
                return Ok::<bool, sqlx::Error>(false);
            }
            sqlx::query(BUMP_KEYS_VERSION).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(true)
        }
        .await)
        .with_context(|| format!("failed to revoke key {key_id}"))?;
        Ok(revoked)
    }

    /// Returns a counter that changes whenever a key is created or revoked.
    pub async fn keys_version(&self) -> Result<i64> {
        self.meta_version("keys_version").await
    }

    /// Reads one of the change counters of the `meta` table, which writers bump when they change
    /// the rows it covers, so that readers reload only after a change.
    pub(crate) async fn meta_version(&self, key: &str) -> Result<i64> {
        const SQL: &str = "SELECT value FROM meta WHERE key = $1";

        let version: Option<i64> = with_pool!(self, pool => {
            sqlx::query_scalar(SQL)
                .bind(key)
                .fetch_optional(pool)
                .await
                .with_context(|| format!("failed to read {key} from the meta table"))?
        });
        version.with_context(|| format!("the meta table has no {key} row; run the migrations"))
    }

    /// Returns every key that is not revoked, with its project's name and plan.
    pub async fn load_active_keys(&self) -> Result<Vec<KeyRecord>> {
        const SQL: &str = "SELECT k.id, k.key_hash, k.project_id, p.name, p.plan \
                           FROM api_keys k JOIN projects p ON p.id = k.project_id \
                           WHERE k.revoked_at_ms IS NULL \
                           ORDER BY k.created_at_ms, k.id";

        let mut keys = Vec::new();
        with_pool!(self, pool => {
            let rows = sqlx::query(SQL)
                .fetch_all(pool)
                .await
                .context("failed to load active keys")?;
            for row in &rows {
                keys.push(KeyRecord {
                    key_id: row.try_get("id")?,
                    key_hash: row.try_get("key_hash")?,
                    project_id: row.try_get("project_id")?,
                    project_name: row.try_get("name")?,
                    plan: row.try_get("plan")?,
                });
            }
        });
        Ok(keys)
    }

    /// Returns the project's keys, active and revoked, oldest first.
    pub async fn list_keys(&self, project_id: &str) -> Result<Vec<KeyInfo>> {
        const SQL: &str = "SELECT id, prefix, created_at_ms, revoked_at_ms FROM api_keys \
                           WHERE project_id = $1 ORDER BY created_at_ms, id";

        let mut keys = Vec::new();
        with_pool!(self, pool => {
            let rows = sqlx::query(SQL)
                .bind(project_id)
                .fetch_all(pool)
                .await
                .with_context(|| format!("failed to list keys of project {project_id}"))?;
            for row in &rows {
                keys.push(KeyInfo {
                    id: row.try_get("id")?,
                    prefix: row.try_get("prefix")?,
                    created_at_ms: row.try_get("created_at_ms")?,
                    revoked_at_ms: row.try_get("revoked_at_ms")?,
                });
            }
        });
        Ok(keys)
    }
}
