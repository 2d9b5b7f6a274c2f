//! The `provider_keys` table, and the `provider_keys_version` counter that gateways poll to decide
//! when to reload the records.

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use sqlx::Row;

use super::crypto::SealedKey;
use crate::store::{now_ms, with_pool, Store};

const BUMP_VERSION: &str = "UPDATE meta SET value = value + 1 WHERE key = 'provider_keys_version'";

/// One stored provider key with its encrypted form.
#[derive(Clone, Debug)]
pub struct ProviderKeyRecord {
    pub project_id: String,
    pub provider: String,
    pub sealed: SealedKey,
    pub key_version: i64,
    pub last_four: String,
    pub created_at_ms: i64,
    pub rotated_at_ms: Option<i64>,
}

/// A provider key as listed: masked, the last four characters only.
#[derive(Clone, Debug, Serialize)]
pub struct ProviderKeyInfo {
    pub project_id: String,
    pub project_name: String,
    pub provider: String,
    /// `****` followed by the last four characters.
    pub key: String,
    pub key_version: i64,
    pub created_at_ms: i64,
    pub rotated_at_ms: Option<i64>,
}

/// A re-encrypted record for [`Store::replace_provider_keys`]: the new form, and the nonce of
/// the form it replaces, so that a record changed meanwhile is detected.
#[derive(Clone, Debug)]
pub struct Reencrypted {
    pub project_id: String,
    pub provider: String,
    pub previous_nonce: Vec<u8>,
    pub sealed: SealedKey,
}

macro_rules! record_from_row {
    ($row:expr) => {{
        let row = $row;
        let iterations: i64 = row.try_get("kdf_iterations")?;
        ProviderKeyRecord {
            project_id: row.try_get("project_id")?,
            provider: row.try_get("provider")?,
            sealed: SealedKey {
                ciphertext: row.try_get("ciphertext")?,
                nonce: row.try_get("nonce")?,
                salt: row.try_get("salt")?,
                iterations: u32::try_from(iterations).unwrap_or(0),
            },
            key_version: row.try_get("key_version")?,
            last_four: row.try_get("last_four")?,
            created_at_ms: row.try_get("created_at_ms")?,
            rotated_at_ms: row.try_get("rotated_at_ms")?,
        }
    }};
}

impl Store {
    /// Inserts or replaces the key of `project_id` for `provider`, and bumps the version, in one
    /// transaction.
    pub async fn upsert_provider_key(&self, project_id: &str, provider: &str, sealed: &SealedKey, last_four: &str) -> Result<()> {
        const SQL: &str = "INSERT INTO provider_keys \
             (project_id, provider, ciphertext, nonce, salt, kdf_iterations, key_version, last_four, created_at_ms, rotated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $8, NULL) \
             ON CONFLICT (project_id, provider) DO UPDATE SET \
             ciphertext = excluded.ciphertext, nonce = excluded.nonce, salt = excluded.salt, \
             kdf_iterations = excluded.kdf_iterations, key_version = provider_keys.key_version + 1, \
             last_four = excluded.last_four, rotated_at_ms = excluded.created_at_ms";
        let now = now_ms();
        with_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            sqlx::query(SQL)
                .bind(project_id)
                .bind(provider)
                .bind(&sealed.ciphertext)
                .bind(&sealed.nonce)
                .bind(&sealed.salt)
                .bind(i64::from(sealed.iterations))
                .bind(last_four)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            sqlx::query(BUMP_VERSION).execute(&mut *tx).await?;
            tx.commit().await
        }
        .await)
        .with_context(|| format!("failed to store the provider key of project {project_id} for {provider}"))
    }

    /// Deletes the key of `project_id` for `provider`. Returns false when there was none.
    pub async fn delete_provider_key(&self, project_id: &str, provider: &str) -> Result<bool> {
        const SQL: &str = "DELETE FROM provider_keys WHERE project_id = $1 AND provider = $2";
        with_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            let deleted = sqlx::query(SQL).bind(project_id).bind(provider).execute(&mut *tx).await?.rows_affected();
            if deleted == 0 {
                tx.rollback().await?;
                return Ok::<bool, sqlx::Error>(false);
            }
            sqlx::query(BUMP_VERSION).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(true)
        }
        .await)
        .with_context(|| format!("failed to delete the provider key of project {project_id} for {provider}"))
    }

    /// Returns every record with its ciphertext, for the gateway's snapshot and for rotation.
    pub async fn load_provider_keys(&self) -> Result<Vec<ProviderKeyRecord>> {
        const SQL: &str = "SELECT project_id, provider, ciphertext, nonce, salt, kdf_iterations, key_version, \
                           last_four, created_at_ms, rotated_at_ms FROM provider_keys ORDER BY project_id, provider";
        let mut records = Vec::new();
        with_pool!(self, pool => {
            let rows = sqlx::query(SQL).fetch_all(pool).await.context("failed to load provider keys")?;
            for row in &rows {
                records.push(record_from_row!(row));
            }
        });
        Ok(records)
    }

    /// Lists keys masked, optionally for one project only.
    pub async fn list_provider_keys(&self, project_id: Option<&str>) -> Result<Vec<ProviderKeyInfo>> {
        const SQL: &str = "SELECT k.project_id, p.name, k.provider, k.last_four, k.key_version, k.created_at_ms, k.rotated_at_ms \
                           FROM provider_keys k JOIN projects p ON p.id = k.project_id \
                           WHERE $1 = '' OR k.project_id = $1 ORDER BY p.name, k.provider";
        let mut keys = Vec::new();
        with_pool!(self, pool => {
            let rows = sqlx::query(SQL)
                .bind(project_id.unwrap_or(""))
                .fetch_all(pool)
                .await
                .context("failed to list provider keys")?;
            for row in &rows {
                let last_four: String = row.try_get("last_four")?;
                keys.push(ProviderKeyInfo {
                    project_id: row.try_get("project_id")?,
                    project_name: row.try_get("name")?,
                    provider: row.try_get("provider")?,
                    key: format!("****{last_four}"),
                    key_version: row.try_get("key_version")?,
                    created_at_ms: row.try_get("created_at_ms")?,
                    rotated_at_ms: row.try_get("rotated_at_ms")?,
                });
            }
        });
        Ok(keys)
    }

    /// Returns a counter that changes whenever a provider key is set, deleted or re-encrypted.
    pub async fn provider_keys_version(&self) -> Result<i64> {
        self.meta_version("provider_keys_version").await
    }

    /// Replaces every record with its re-encrypted form in one transaction: all of them or none.
    ///
    /// Fails, and changes nothing, when the table contains a record that is not in `records` or when
    /// a record changed since it was read (its nonce differs).
    pub async fn replace_provider_keys(&self, records: &[Reencrypted]) -> Result<()> {
        const COUNT: &str = "SELECT COUNT(*) FROM provider_keys";
        const SQL: &str = "UPDATE provider_keys SET ciphertext = $1, nonce = $2, salt = $3, kdf_iterations = $4, \
                           key_version = key_version + 1, rotated_at_ms = $5 \
                           WHERE project_id = $6 AND provider = $7 AND nonce = $8";
        let now = now_ms();
        let outcome: Result<Option<String>, sqlx::Error> = with_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            let count: i64 = sqlx::query_scalar(COUNT).fetch_one(&mut *tx).await?;
            if usize::try_from(count).unwrap_or(usize::MAX) != records.len() {
                tx.rollback().await?;
                return Ok(Some(format!("the table holds {count} provider keys but {} were re-encrypted", records.len())));
            }
            for record in records {
                let updated = sqlx::query(SQL)
                    .bind(&record.sealed.ciphertext)
                    .bind(&record.sealed.nonce)
                    .bind(&record.sealed.salt)
                    .bind(i64::from(record.sealed.iterations))
                    .bind(now)
                    .bind(&record.project_id)
                    .bind(&record.provider)
                    .bind(&record.previous_nonce)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if updated != 1 {
                    tx.rollback().await?;
                    return Ok(Some(format!("the key of project {} for {} changed during the rotation", record.project_id, record.provider)));
                }
            }
            sqlx::query(BUMP_VERSION).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(None)
        }
        .await);
        match outcome.context("failed to write the re-encrypted provider keys; nothing was changed")? {
            None => Ok(()),
            Some(reason) => bail!("{reason}; nothing was changed, run the rotation again"),
        }
    }
}

/// Finds a project by name or id, with an error that names the command that lists projects.
pub async fn require_project(store: &Store, name_or_id: &str) -> Result<crate::store::Project> {
    store
        .find_project(name_or_id)
        .await?
        .ok_or_else(|| anyhow!("project {name_or_id:?} not found; `watchllm project list` shows the projects"))
}
