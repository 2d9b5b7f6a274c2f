-- Hourly and daily usage rollups, kept up to date in the transaction that inserts the usage
-- events, and the record of analytics alerts. Buckets start at UTC hour and day boundaries
-- (bucket_start_ms is a multiple of 3600000 or 86400000). variant is '' for requests outside
-- an A/B experiment, because a NULL in the primary key would never conflict.
-- errors counts events with a status of 400 or more, or with an error type.
-- The SQLite tables are WITHOUT ROWID, so rows are stored in primary key order and a project's
-- range is one contiguous scan.
-- latency_* are non-cumulative counts of events by latency_ms: le_100ms counts 0-100 ms,
-- le_250ms counts 101-250 ms, and so on; gt_60s counts everything above 60000 ms.

CREATE TABLE usage_rollups_hourly (
    project_id         TEXT NOT NULL,
    bucket_start_ms    INTEGER NOT NULL,
    model              TEXT NOT NULL,
    provider           TEXT NOT NULL,
    variant            TEXT NOT NULL,
    cache_status       TEXT NOT NULL,
    requests           INTEGER NOT NULL,
    errors             INTEGER NOT NULL,
    prompt_tokens      INTEGER NOT NULL,
    completion_tokens  INTEGER NOT NULL,
    cached_tokens      INTEGER NOT NULL,
    reasoning_tokens   INTEGER NOT NULL,
    total_tokens       INTEGER NOT NULL,
    cost_usd           REAL NOT NULL,
    potential_cost_usd REAL NOT NULL,
    latency_ms_sum     INTEGER NOT NULL,
    latency_le_100ms   INTEGER NOT NULL,
    latency_le_250ms   INTEGER NOT NULL,
    latency_le_500ms   INTEGER NOT NULL,
    latency_le_1s      INTEGER NOT NULL,
    latency_le_2500ms  INTEGER NOT NULL,
    latency_le_5s      INTEGER NOT NULL,
    latency_le_10s     INTEGER NOT NULL,
    latency_le_30s     INTEGER NOT NULL,
    latency_le_60s     INTEGER NOT NULL,
    latency_gt_60s     INTEGER NOT NULL,
    PRIMARY KEY (project_id, bucket_start_ms, model, provider, variant, cache_status)
) WITHOUT ROWID;

CREATE TABLE usage_rollups_daily (
    project_id         TEXT NOT NULL,
    bucket_start_ms    INTEGER NOT NULL,
    model              TEXT NOT NULL,
    provider           TEXT NOT NULL,
    variant            TEXT NOT NULL,
    cache_status       TEXT NOT NULL,
    requests           INTEGER NOT NULL,
    errors             INTEGER NOT NULL,
    prompt_tokens      INTEGER NOT NULL,
    completion_tokens  INTEGER NOT NULL,
    cached_tokens      INTEGER NOT NULL,
    reasoning_tokens   INTEGER NOT NULL,
    total_tokens       INTEGER NOT NULL,
    cost_usd           REAL NOT NULL,
    potential_cost_usd REAL NOT NULL,
    latency_ms_sum     INTEGER NOT NULL,
    latency_le_100ms   INTEGER NOT NULL,
    latency_le_250ms   INTEGER NOT NULL,
    latency_le_500ms   INTEGER NOT NULL,
    latency_le_1s      INTEGER NOT NULL,
    latency_le_2500ms  INTEGER NOT NULL,
    latency_le_5s      INTEGER NOT NULL,
    latency_le_10s     INTEGER NOT NULL,
    latency_le_30s     INTEGER NOT NULL,
    latency_le_60s     INTEGER NOT NULL,
    latency_gt_60s     INTEGER NOT NULL,
    PRIMARY KEY (project_id, bucket_start_ms, model, provider, variant, cache_status)
) WITHOUT ROWID;

-- Alerts raised by the analytics, one row per dedup_key (for example
-- 'projected_budget_exceeded:proj_...:2026-12'), so each fires once even with several gateways.
-- delivered_at_ms stays NULL until an alert channel has sent it.
CREATE TABLE analytics_alerts (
    dedup_key       TEXT PRIMARY KEY NOT NULL,
    kind            TEXT NOT NULL,
    project_id      TEXT NOT NULL,
    period          TEXT NOT NULL,
    payload         TEXT NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    delivered_at_ms INTEGER
);
