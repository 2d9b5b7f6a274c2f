//! The database: projects, API keys and usage events in SQLite or PostgreSQL.
//!
//! Both dialects share one schema (`migrations/sqlite` and `migrations/postgres`) and, where
//! the SQL is the same, one query text: sqlx binds `$1`-style parameters in SQLite too.

pub mod cache_settings;
mod keys;
mod projects;
pub mod rollups;
mod sqlite_usage;
mod usage;

#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;

use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

/// A connection pool to the gateway's database.
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// A project: the unit that owns API keys, a plan and usage.
#[derive(Clone, Debug, Serialize)]
pub struct Project {
    /// `proj_` followed by 16 random hex digits.
    pub id: String,
    pub name: String,
    /// Plan name, such as `free`, `pro` or `enterprise`.
    pub plan: String,
    pub created_at_ms: i64,
}

/// An API key to insert. The store keeps only the key's hash and display prefix.
#[derive(Clone, Debug, Serialize)]
pub struct NewKey {
    pub id: String,
    pub project_id: String,
    /// Hex SHA-256 of the full key.
    pub key_hash: String,
    /// First characters of the key, shown in listings so that users can tell keys apart.
    pub prefix: String,
}

/// An active key with its project, as the gateway's key cache needs it.
#[derive(Clone, Debug, Serialize)]
pub struct KeyRecord {
    pub key_id: String,
    pub key_hash: String,
    pub project_id: String,
    pub project_name: String,
    pub plan: String,
}

/// A key as listed for its project, active or revoked.
#[derive(Clone, Debug, Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub prefix: String,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

/// Maximum connections per pool. SQLite serializes writers anyway, so it gets fewer.
const SQLITE_MAX_CONNECTIONS: u32 = 4;
const POSTGRES_MAX_CONNECTIONS: u32 = 10;
/// How long a query waits for a free connection before it fails.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long SQLite waits for another connection's write lock before it returns SQLITE_BUSY.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the same block against whichever pool the store holds. The block is compiled once
/// per dialect, so its SQL must be valid in both.
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            $crate::store::Store::Sqlite($pool) => $body,
            $crate::store::Store::Postgres($pool) => $body,
        }
    };
}
pub(crate) use with_pool;

/// Row counts of the multi-row statements that batch writes are split into. A batch takes as
/// many statements of the first length as fit, then one of each length in the binary digits of
/// the rest, so every batch runs one of these few SQL texts, which stay prepared on the
/// connection. Parsing a new multi-row text for every batch cost about a tenth of a proxied
/// request's instructions (docs/BENCHMARKS.md).
pub(crate) const STATEMENT_ROWS: [usize; 7] = [64, 32, 16, 8, 4, 2, 1];

/// Bind parameters allowed in one statement: SQLite's default since 3.32, the lower of the two
/// databases' limits (PostgreSQL's wire protocol allows 65,535). Each table's module checks that
/// its longest statement fits.
pub(crate) const MAX_BIND_PARAMETERS: usize = 32_766;

/// Returns the chunk lengths, from [`STATEMENT_ROWS`] and largest first, that `rows` is written in.
pub(crate) fn statement_chunks(rows: usize) -> impl Iterator<Item = usize> {
    let largest = STATEMENT_ROWS[0];
    let full = std::iter::repeat_n(largest, rows / largest);
    let rest = rows % largest;
    full.chain(STATEMENT_ROWS[1..].iter().copied().filter(move |length| rest & length != 0))
}

impl Store {
    /// Connects to `sqlite://path/to/file.db` or `postgres://...` (`postgresql://...`).
    ///
    /// A SQLite file and its parent directory are created if missing, and the connections use
    /// WAL journal mode, a 5 s busy timeout and foreign key checks. `sqlite://` followed by a
    /// relative path is relative to the working directory; `sqlite:///abs/file.db` is absolute.
    pub async fn connect(url: &str) -> Result<Store> {
        if url.starts_with("sqlite:") {
            Self::connect_sqlite(url).await
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::connect_postgres(url).await
        } else {
            bail!(
                "unsupported database URL {}: expected sqlite://PATH or postgres://...",
                redact_url(url)
            )
        }
    }

    async fn connect_sqlite(url: &str) -> Result<Store> {
        let options = SqliteConnectOptions::from_str(url)
            .with_context(|| format!("invalid SQLite URL {url}"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(SQLITE_BUSY_TIMEOUT)
            .foreign_keys(true);

        let path = options.get_filename();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !url.contains(":memory:") && !url.contains("mode=memory") {
                std::fs::create_dir_all(parent).with_context(|| {
                    format!(
                        "failed to create directory {} for the SQLite database",
                        parent.display()
                    )
                })?;
            }
        }

        let pool = SqlitePoolOptions::new()
            .max_connections(SQLITE_MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .with_context(|| format!("failed to open SQLite database {url}"))?;
        Ok(Store::Sqlite(pool))
    }

    async fn connect_postgres(url: &str) -> Result<Store> {
        let options = PgConnectOptions::from_str(url)
            .with_context(|| format!("invalid PostgreSQL URL {}", redact_url(url)))?;
        let pool = PgPoolOptions::new()
            .max_connections(POSTGRES_MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .with_context(|| format!("failed to connect to PostgreSQL at {}", redact_url(url)))?;
        Ok(Store::Postgres(pool))
    }

    /// Applies the migrations that the database has not seen yet. sqlx records applied
    /// migrations in `_sqlx_migrations`, so running this again is a no-op.
    pub async fn migrate(&self) -> Result<()> {
        match self {
            Store::Sqlite(pool) => sqlx::migrate!("./migrations/sqlite")
                .run(pool)
                .await
                .context("failed to migrate the SQLite database")?,
            Store::Postgres(pool) => sqlx::migrate!("./migrations/postgres")
                .run(pool)
                .await
                .context("failed to migrate the PostgreSQL database")?,
        }
        Ok(())
    }

    /// Runs `SELECT 1` to check that the database responds.
    pub async fn ping(&self) -> Result<()> {
        with_pool!(self, pool => {
            sqlx::query("SELECT 1")
                .execute(pool)
                .await
                .with_context(|| format!("{} database failed to run SELECT 1", self.kind()))?;
        });
        Ok(())
    }

    /// Closes the pool: waits for checked-out connections to return, and fails later queries.
    pub async fn close(&self) {
        with_pool!(self, pool => pool.close().await)
    }

    /// Returns `"sqlite"` or `"postgres"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }
}

/// Current time in milliseconds since the Unix epoch (UTC).
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Returns the URL with its password, in the user info or a `password` query parameter,
/// replaced, for error messages.
fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "(unparsable URL)".to_string();
    };
    if parsed.password().is_some() && parsed.set_password(Some("REDACTED")).is_err() {
        return "(unparsable URL)".to_string();
    }

    if parsed.query_pairs().any(|(name, _)| name == "password") {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(name, value)| {
                let value = if name == "password" {
                    "REDACTED".into()
                } else {
                    value
                };
                (name.into_owned(), value.into_owned())
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

/// Returns true when the error is a violation of a UNIQUE or PRIMARY KEY constraint.
fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Returns true when the error is a violation of a FOREIGN KEY constraint.
fn is_foreign_key_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_foreign_key_violation())
}
