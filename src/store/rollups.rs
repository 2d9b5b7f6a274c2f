//! Usage rollups: the incremental upsert that runs in the usage-event insert's transaction, the
//! rebuild of a range from raw events, the reads of the analytics API, and analytics alerts.

use anyhow::{ensure, Context, Result};
use sqlx::Row;

use super::{with_pool, Store};
use crate::analytics::rollup::{Granularity, RollupKey, RollupValues, Rollups, LATENCY_BOUNDS_MS, LATENCY_COLUMNS};

/// Columns of both rollup tables, in the order in which `upsert_rollups!` binds them.
pub(super) const ROLLUP_COLUMNS: &str = "project_id, bucket_start_ms, model, provider, variant, cache_status, \
     requests, errors, prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, total_tokens, \
     cost_usd, potential_cost_usd, latency_ms_sum, latency_le_100ms, latency_le_250ms, latency_le_500ms, \
     latency_le_1s, latency_le_2500ms, latency_le_5s, latency_le_10s, latency_le_30s, latency_le_60s, latency_gt_60s";
const ROLLUP_COLUMN_COUNT: usize = 26;
const _: () = assert!(super::STATEMENT_ROWS[0] * ROLLUP_COLUMN_COUNT <= super::MAX_BIND_PARAMETERS);
/// The summed columns, which an upsert adds to the stored row.
const VALUE_COLUMNS: [&str; 10] = [
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "total_tokens",
    "cost_usd",
    "potential_cost_usd",
    "latency_ms_sum",
];

/// Returns the `ON CONFLICT` clause that adds the new row's sums to the stored row.
pub(super) fn upsert_clause(table: &str) -> String {
    let sets: Vec<String> = VALUE_COLUMNS
        .iter()
        .chain(LATENCY_COLUMNS.iter())
        .map(|column| format!("{column} = {table}.{column} + excluded.{column}"))
        .collect();
    format!(
        " ON CONFLICT (project_id, bucket_start_ms, model, provider, variant, cache_status) DO UPDATE SET {}",
        sets.join(", ")
    )
}

/// Adds `$rollups` (a `&Rollups`) to `$granularity`'s table through the connection `$conn`, in
/// multi-row upserts of the lengths of [`statement_chunks`](super::statement_chunks). Evaluates to
/// `Result<(), sqlx::Error>`.
macro_rules! upsert_rollups {
    ($conn:expr, $rollups:expr, $granularity:expr) => {
        async {
            let table = $granularity.table();
            let rows: Vec<_> = $rollups.iter().collect();
            let mut rest = rows.as_slice();
            for length in $crate::store::statement_chunks(rest.len()) {
                let (chunk, tail) = rest.split_at(length);
                rest = tail;
                let mut builder = sqlx::QueryBuilder::new(format!(
                    "INSERT INTO {table} ({}) ",
                    $crate::store::rollups::ROLLUP_COLUMNS
                ));
                builder.push_values(chunk, |mut row, (key, values)| {
                    row.push_bind(key.project_id.as_str())
                        .push_bind(key.bucket_start_ms)
                        .push_bind(key.model.as_str())
                        .push_bind(key.provider.as_str())
                        .push_bind(key.variant.as_str())
                        .push_bind(key.cache_status.as_str())
                        .push_bind(values.requests)
                        .push_bind(values.errors)
                        .push_bind(values.prompt_tokens)
                        .push_bind(values.completion_tokens)
                        .push_bind(values.cached_tokens)
                        .push_bind(values.reasoning_tokens)
                        .push_bind(values.total_tokens)
                        .push_bind(values.cost_usd)
                        .push_bind(values.potential_cost_usd)
                        .push_bind(values.latency_ms_sum);
                    for count in values.latency_buckets {
                        row.push_bind(count);
                    }
                });
                builder.push($crate::store::rollups::upsert_clause(table));
                // Prepared once per connection, table and chunk length.
                builder.build().execute(&mut *$conn).await?;
            }
            Ok::<(), sqlx::Error>(())
        }
        .await
    };
}
pub(crate) use upsert_rollups;

/// Adds `$inserted` (a `Vec<&UsageEvent>` of the events that the insert stored) to the hourly and
/// daily rollups, through `$conn`. The inserts list an id once even when it appears twice in the
/// batch, because they store only its first copy.
macro_rules! add_events_to_rollups {
    ($conn:expr, $inserted:expr) => {
        async {
            for granularity in [$crate::analytics::rollup::Granularity::Hour, $crate::analytics::rollup::Granularity::Day] {
                let rollups = $crate::analytics::rollup::aggregate(granularity, $inserted.iter().copied());
                $crate::store::rollups::upsert_rollups!($conn, &rollups, granularity)?;
            }
            Ok::<(), sqlx::Error>(())
        }
        .await
    };
}
pub(crate) use add_events_to_rollups;

/// A column of the rollups that the usage API can group by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    Model,
    Provider,
    Variant,
    CacheStatus,
}

impl GroupBy {
    pub fn column(self) -> &'static str {
        match self {
            GroupBy::Model => "model",
            GroupBy::Provider => "provider",
            GroupBy::Variant => "variant",
            GroupBy::CacheStatus => "cache_status",
        }
    }
}

/// One row of a rollup query: a bucket, the group's value ('' without a grouping) and its sums.
#[derive(Clone, Debug, PartialEq)]
pub struct RollupRow {
    pub bucket_start_ms: i64,
    pub group: String,
    pub values: RollupValues,
}

/// Returns the SELECT list that sums every value column of a rollup table.
fn sum_columns() -> String {
    let sums: Vec<String> = VALUE_COLUMNS
        .iter()
        .chain(LATENCY_COLUMNS.iter())
        .map(|column| match *column {
            "cost_usd" | "potential_cost_usd" => format!("COALESCE(SUM({column}), 0.0) AS {column}"),
            _ => format!("CAST(COALESCE(SUM({column}), 0) AS BIGINT) AS {column}"),
        })
        .collect();
    sums.join(", ")
}

/// Builds [`RollupValues`] from a row with the columns of [`sum_columns`].
macro_rules! values_from_row {
    ($row:expr) => {{
        let row = $row;
        let mut latency_buckets = [0i64; LATENCY_COLUMNS.len()];
        for (count, column) in latency_buckets.iter_mut().zip(LATENCY_COLUMNS) {
            *count = row.try_get(column)?;
        }
        RollupValues {
            requests: row.try_get("requests")?,
            errors: row.try_get("errors")?,
            prompt_tokens: row.try_get("prompt_tokens")?,
            completion_tokens: row.try_get("completion_tokens")?,
            cached_tokens: row.try_get("cached_tokens")?,
            reasoning_tokens: row.try_get("reasoning_tokens")?,
            total_tokens: row.try_get("total_tokens")?,
            cost_usd: row.try_get("cost_usd")?,
            potential_cost_usd: row.try_get("potential_cost_usd")?,
            latency_ms_sum: row.try_get("latency_ms_sum")?,
            latency_buckets,
        }
    }};
}

impl Store {
    /// Returns a project's rollup sums per bucket of `granularity` in `[from_ms, to_ms)`, and per
    /// value of `group_by` when given, ordered by bucket and group. Reads only the rollup table.
    pub async fn query_rollups(
        &self,
        project_id: &str,
        granularity: Granularity,
        from_ms: i64,
        to_ms: i64,
        group_by: Option<GroupBy>,
    ) -> Result<Vec<RollupRow>> {
        let (group_select, group_clause) = match group_by {
            Some(group) => (group.column().to_string(), format!(", {}", group.column())),
            None => ("''".to_string(), String::new()),
        };
        let sql = format!(
            "SELECT bucket_start_ms, {group_select} AS group_value, {} FROM {} \
             WHERE project_id = $1 AND bucket_start_ms >= $2 AND bucket_start_ms < $3 \
             GROUP BY bucket_start_ms{group_clause} ORDER BY bucket_start_ms{group_clause}",
            sum_columns(),
            granularity.table()
        );

        let mut result = Vec::new();
        with_pool!(self, pool => {
            let rows = sqlx::query(&sql)
                .bind(project_id)
                .bind(from_ms)
                .bind(to_ms)
                .fetch_all(pool)
                .await
                .with_context(|| format!("failed to read the {} rollups of project {project_id}", granularity.table()))?;
            for row in &rows {
                result.push(RollupRow {
                    bucket_start_ms: row.try_get("bucket_start_ms")?,
                    group: row.try_get("group_value")?,
                    values: values_from_row!(row),
                });
            }
        });
        Ok(result)
    }

    /// Returns every rollup row of `granularity` with its key, for tests and consistency checks.
    pub async fn list_rollups(&self, granularity: Granularity) -> Result<Rollups> {
        let sql = format!("SELECT {ROLLUP_COLUMNS} FROM {}", granularity.table());
        let mut rollups = Rollups::new();
        with_pool!(self, pool => {
            let rows = sqlx::query(&sql).fetch_all(pool).await.context("failed to list rollups")?;
            for row in &rows {
                let key = RollupKey {
                    project_id: row.try_get("project_id")?,
                    bucket_start_ms: row.try_get("bucket_start_ms")?,
                    model: row.try_get("model")?,
                    provider: row.try_get("provider")?,
                    variant: row.try_get("variant")?,
                    cache_status: row.try_get("cache_status")?,
                };
                rollups.insert(key, values_from_row!(row));
            }
        });
        Ok(rollups)
    }

    /// Adds rollup rows as the incremental path does, for seeding benchmarks and tests.
    pub async fn add_rollups(&self, granularity: Granularity, rollups: &Rollups) -> Result<()> {
        let result = match self {
            Store::Sqlite(pool) => async {
                let mut tx = pool.begin().await?;
                upsert_rollups!(tx, rollups, granularity)?;
                tx.commit().await
            }
            .await,
            Store::Postgres(pool) => async {
                let mut tx = pool.begin().await?;
                upsert_rollups!(tx, rollups, granularity)?;
                tx.commit().await
            }
            .await,
        };
        result.with_context(|| format!("failed to add {} rows to {}", rollups.len(), granularity.table()))
    }

    /// Recomputes both rollup tables for the UTC days that overlap `[from_ms, to_ms)` from the
    /// raw usage events, in one transaction, and returns the number of events summed.
    ///
    /// PostgreSQL: the rollup tables are locked against concurrent upserts first, so an insert
    /// that commits while the rebuild runs adds its events on top of the rebuilt rows. SQLite
    /// has one writer at a time anyway.
    pub async fn rebuild_rollups(&self, from_ms: i64, to_ms: i64) -> Result<i64> {
        ensure!(from_ms < to_ms, "invalid range: the start must be before the end");
        let start = Granularity::Day.bucket_start(from_ms);
        let end = Granularity::Day.bucket_start(to_ms - 1) + Granularity::Day.width_ms();

        let result = with_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            if matches!(self, Store::Postgres(_)) {
                sqlx::query("LOCK TABLE usage_rollups_hourly, usage_rollups_daily IN SHARE ROW EXCLUSIVE MODE")
                    .execute(&mut *tx)
                    .await?;
            }
            for granularity in [Granularity::Hour, Granularity::Day] {
                let table = granularity.table();
                sqlx::query(&format!("DELETE FROM {table} WHERE bucket_start_ms >= $1 AND bucket_start_ms < $2"))
                    .bind(start)
                    .bind(end)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(&rebuild_sql(granularity)).bind(start).bind(end).execute(&mut *tx).await?;
            }
            let events: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM usage_events WHERE created_at_ms >= $1 AND created_at_ms < $2",
            )
            .bind(start)
            .bind(end)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok::<i64, sqlx::Error>(events)
        }
        .await);
        result.context("failed to rebuild the usage rollups")
    }

    /// Stores an alert under `dedup_key` and returns true, or returns false when an alert with
    /// that key is already stored.
    pub async fn insert_alert_once(&self, dedup_key: &str, kind: &str, project_id: &str, period: &str, payload: &str) -> Result<bool> {
        const SQL: &str = "INSERT INTO analytics_alerts (dedup_key, kind, project_id, period, payload, created_at_ms) \
                           VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (dedup_key) DO NOTHING";
        let inserted = with_pool!(self, pool => {
            sqlx::query(SQL)
                .bind(dedup_key)
                .bind(kind)
                .bind(project_id)
                .bind(period)
                .bind(payload)
                .bind(super::now_ms())
                .execute(pool)
                .await
                .with_context(|| format!("failed to store alert {dedup_key}"))?
                .rows_affected()
        });
        Ok(inserted == 1)
    }

    /// Sets `delivered_at_ms` of the alert stored under `dedup_key`, unless a channel already
    /// delivered it.
    pub async fn mark_alert_delivered(&self, dedup_key: &str, at_ms: i64) -> Result<()> {
        const SQL: &str = "UPDATE analytics_alerts SET delivered_at_ms = $1 WHERE dedup_key = $2 AND delivered_at_ms IS NULL";
        with_pool!(self, pool => {
            sqlx::query(SQL)
                .bind(at_ms)
                .bind(dedup_key)
                .execute(pool)
                .await
                .with_context(|| format!("failed to mark alert {dedup_key} as delivered"))?;
        });
        Ok(())
    }

    /// Returns the stored alerts of a project as (dedup_key, kind, period, payload), oldest first.
    pub async fn list_alerts(&self, project_id: &str) -> Result<Vec<(String, String, String, String)>> {
        const SQL: &str = "SELECT dedup_key, kind, period, payload FROM analytics_alerts \
                           WHERE project_id = $1 ORDER BY created_at_ms, dedup_key";
        let alerts = with_pool!(self, pool => {
            sqlx::query_as(SQL).bind(project_id).fetch_all(pool).await.context("failed to list alerts")?
        });
        Ok(alerts)
    }

    /// Returns the monthly cost limit of the project's plan from the `plans` table, if any.
    pub async fn plan_monthly_cost(&self, project_id: &str) -> Result<Option<f64>> {
        const SQL: &str = "SELECT plans.monthly_cost_usd FROM projects JOIN plans ON plans.name = projects.plan \
                           WHERE projects.id = $1";
        let budget: Option<Option<f64>> = with_pool!(self, pool => {
            sqlx::query_scalar(SQL)
                .bind(project_id)
                .fetch_optional(pool)
                .await
                .with_context(|| format!("failed to read the plan of project {project_id}"))?
        });
        Ok(budget.flatten())
    }
}

/// Returns the INSERT ... SELECT that sums the raw events of `[$1, $2)` into `granularity`'s table.
fn rebuild_sql(granularity: Granularity) -> String {
    let width = granularity.width_ms();
    let mut buckets = Vec::new();
    let mut lower = i64::MIN;
    for bound in LATENCY_BOUNDS_MS {
        let condition = if lower == i64::MIN { format!("latency_ms <= {bound}") } else { format!("latency_ms > {lower} AND latency_ms <= {bound}") };
        buckets.push(format!("SUM(CASE WHEN {condition} THEN 1 ELSE 0 END)"));
        lower = bound;
    }
    buckets.push(format!("SUM(CASE WHEN latency_ms > {lower} THEN 1 ELSE 0 END)"));
    format!(
        "INSERT INTO {table} ({ROLLUP_COLUMNS}) \
         SELECT project_id, (created_at_ms / {width}) * {width}, model, provider, COALESCE(variant, ''), cache_status, \
         COUNT(*), SUM(CASE WHEN status >= 400 OR error_type IS NOT NULL THEN 1 ELSE 0 END), \
         SUM(prompt_tokens), SUM(completion_tokens), SUM(cached_tokens), SUM(reasoning_tokens), SUM(total_tokens), \
         SUM(cost_usd), SUM(potential_cost_usd), SUM(latency_ms), {buckets} \
         FROM usage_events WHERE created_at_ms >= $1 AND created_at_ms < $2 \
         GROUP BY project_id, (created_at_ms / {width}) * {width}, model, provider, COALESCE(variant, ''), cache_status",
        table = granularity.table(),
        buckets = buckets.join(", "),
    )
}
