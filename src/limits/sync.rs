//! The counters' link to the store: the rebuild from stored usage events at start, and the
//! reconciliation of several nodes through shared totals in PostgreSQL.
//!
//! Each node pushes the usage it settled since its last push as one atomic increment of the
//! `limit_totals` row of the project's month, then reads back every row changed since its last
//! read and takes `shared total + usage settled since the push` as the month's usage. A node
//! therefore learns of another node's usage within one interval plus the time of a round trip,
//! and the nodes together can admit beyond a limit by at most the usage that the other nodes
//! admit in that time.

use std::collections::HashMap;

use anyhow::{Context, Result};
use sqlx::Row;

use super::clock::Month;
use super::quota::{AlertCandidate, Totals};
use super::reservation::NOT_ADMITTED_CODES;
use super::settings::LimitSettings;
use super::Limiter;
use crate::store::{with_pool, Store};

/// Usage events are summed in buckets of 15 minutes, a divisor of every time zone's offset,
/// so that each bucket lies in one calendar month in every zone.
const BUCKET_MS: i64 = 15 * 60 * 1000;
/// How far back the rebuild reads: the longest month plus the largest time-zone offsets.
const REBUILD_WINDOW_MS: i64 = 33 * 24 * 3600 * 1000;
/// Rows read again after each read, so that clocks a little apart on two nodes lose no update.
const READ_OVERLAP_MS: i64 = 10_000;

fn rebuild_sql() -> String {
    let codes: Vec<String> = NOT_ADMITTED_CODES.iter().map(|code| format!("'{code}'")).collect();
    format!(
        "SELECT e.project_id AS project_id, p.name AS name, p.plan AS plan, \
         CAST(e.created_at_ms / {BUCKET_MS} AS BIGINT) AS bucket, \
         CAST(SUM(CASE WHEN e.endpoint <> 'models' AND (e.error_type IS NULL OR e.error_type NOT IN ({})) THEN 1 ELSE 0 END) AS BIGINT) AS requests, \
         CAST(SUM(e.total_tokens) AS BIGINT) AS tokens, SUM(e.cost_usd) AS cost_usd \
         FROM usage_events e JOIN projects p ON p.id = e.project_id \
         WHERE e.created_at_ms >= $1 \
         GROUP BY e.project_id, p.name, p.plan, CAST(e.created_at_ms / {BUCKET_MS} AS BIGINT)",
        codes.join(", ")
    )
}

/// Usage of one project's current month, summed from its stored usage events.
#[derive(Clone, Debug, PartialEq)]
pub struct MonthUsage {
    pub project_id: String,
    pub name: String,
    pub plan: String,
    pub month: Month,
    pub used: Totals,
}

/// Sums the stored usage events of every project's current month, in the project's time zone.
pub async fn month_usage(store: &Store, settings: &LimitSettings, now_ms: i64) -> Result<Vec<MonthUsage>> {
    let sql = rebuild_sql();
    let mut found: HashMap<String, MonthUsage> = HashMap::new();
    with_pool!(store, pool => {
        let rows = sqlx::query(&sql).bind(now_ms - REBUILD_WINDOW_MS).fetch_all(pool).await.context("failed to sum this month's usage events")?;
        for row in &rows {
            let project_id: String = row.try_get("project_id")?;
            let name: String = row.try_get("name")?;
            let plan: String = row.try_get("plan")?;
            let bucket: i64 = row.try_get("bucket")?;
            let month = Month::containing(now_ms, settings.resolve(&project_id, &name, &plan).time_zone);
            if !month.contains(bucket * BUCKET_MS) {
                continue;
            }
            let usage = Totals { requests: row.try_get("requests")?, tokens: row.try_get("tokens")?, cost_usd: row.try_get::<Option<f64>, _>("cost_usd")?.unwrap_or(0.0) };
            let entry = found.entry(project_id.clone()).or_insert_with(|| MonthUsage { project_id, name, plan, month, used: Totals::default() });
            entry.used.add(usage);
        }
    });
    Ok(found.into_values().collect())
}

/// Loads this month's stored usage of every project into the counters; returns the projects.
pub async fn rebuild(store: &Store, limiter: &Limiter, settings: &LimitSettings) -> Result<Vec<MonthUsage>> {
    let usage = month_usage(store, settings, limiter.now_ms()).await?;
    for project in &usage {
        limiter.load_month(settings, &project.project_id, &project.name, &project.plan, project.month.start_ms, project.used);
    }
    Ok(usage)
}

/// Raises the shared totals to at least the rebuilt usage, which covers usage whose push a
/// stopped node never made. Only PostgreSQL stores shared totals.
pub async fn seed_shared(store: &Store, usage: &[MonthUsage], now_ms: i64) -> Result<()> {
    let Store::Postgres(pool) = store else { return Ok(()) };
    const SQL: &str = "INSERT INTO limit_totals (project_id, period_start_ms, requests, tokens, cost_usd, updated_at_ms) \
                       VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (project_id, period_start_ms) DO UPDATE SET \
                       requests = GREATEST(limit_totals.requests, EXCLUDED.requests), \
                       tokens = GREATEST(limit_totals.tokens, EXCLUDED.tokens), \
                       cost_usd = GREATEST(limit_totals.cost_usd, EXCLUDED.cost_usd), \
                       updated_at_ms = EXCLUDED.updated_at_ms";
    for project in usage {
        sqlx::query(SQL)
            .bind(&project.project_id)
            .bind(project.month.start_ms)
            .bind(project.used.requests)
            .bind(project.used.tokens)
            .bind(project.used.cost_usd)
            .bind(now_ms)
            .execute(pool)
            .await
            .with_context(|| format!("failed to seed the shared totals of project {}", project.project_id))?;
    }
    Ok(())
}

/// Pushes this node's unsynced usage and applies every shared total changed since `read_since_ms`.
/// Returns the alerts now due and the `read_since_ms` of the next round.
pub async fn reconcile(store: &Store, limiter: &Limiter, settings: &LimitSettings, thresholds: &[f64], read_since_ms: i64) -> Result<(Vec<AlertCandidate>, i64)> {
    let Store::Postgres(pool) = store else { return Ok((Vec::new(), read_since_ms)) };
    const PUSH: &str = "INSERT INTO limit_totals (project_id, period_start_ms, requests, tokens, cost_usd, updated_at_ms) \
                        VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (project_id, period_start_ms) DO UPDATE SET \
                        requests = limit_totals.requests + EXCLUDED.requests, \
                        tokens = limit_totals.tokens + EXCLUDED.tokens, \
                        cost_usd = limit_totals.cost_usd + EXCLUDED.cost_usd, \
                        updated_at_ms = EXCLUDED.updated_at_ms";
    const READ: &str = "SELECT t.project_id, p.name, p.plan, t.period_start_ms, t.requests, t.tokens, t.cost_usd \
                        FROM limit_totals t JOIN projects p ON p.id = t.project_id WHERE t.updated_at_ms >= $1";

    let started_ms = limiter.now_ms();
    let mut pending = limiter.take_unsynced().into_iter();
    while let Some((project_id, start_ms, usage)) = pending.next() {
        let pushed = sqlx::query(PUSH)
            .bind(&project_id)
            .bind(start_ms)
            .bind(usage.requests)
            .bind(usage.tokens)
            .bind(usage.cost_usd)
            .bind(started_ms)
            .execute(pool)
            .await;
        if let Err(error) = pushed {
            limiter.restore_unsynced(&project_id, start_ms, usage);
            for (project_id, start_ms, usage) in pending {
                limiter.restore_unsynced(&project_id, start_ms, usage);
            }
            return Err(error).context("failed to push usage to the shared totals");
        }
    }

    let rows = sqlx::query(READ).bind(read_since_ms).fetch_all(pool).await.context("failed to read the shared totals")?;
    let mut alerts = Vec::new();
    for row in &rows {
        let project_id: String = row.try_get("project_id")?;
        let name: String = row.try_get("name")?;
        let plan: String = row.try_get("plan")?;
        let shared = Totals { requests: row.try_get("requests")?, tokens: row.try_get("tokens")?, cost_usd: row.try_get("cost_usd")? };
        let start_ms: i64 = row.try_get("period_start_ms")?;
        alerts.extend(limiter.apply_shared(settings, thresholds, (&project_id, &name, &plan), start_ms, shared));
    }
    Ok((alerts, started_ms - READ_OVERLAP_MS))
}
