-- Hourly and daily usage rollups, kept up to date in the transaction that inserts the usage
-- events, and the record of analytics alerts. Buckets start at UTC hour and day boundaries
-- (bucket_start_ms is a multiple of 3600000 or 86400000). variant is '' for requests outside
-- an A/B experiment, because a NULL in the primary key would never conflict.
-- errors counts events with a status of 400 or more, or with an error type.
-- latency_* are non-cumulative counts of events by latency_ms: le_100ms counts 0-100 ms,
-- le_250ms counts 101-250 ms, and so on; gt_60s counts everything above 60000 ms.

CREATE TABLE usage_rollups_hourly (
    project_id         TEXT NOT NULL,
    bucket_start_ms    BIGINT NOT NULL,
    model              TEXT NOT NULL,
    provider           TEXT NOT NULL,
    variant            TEXT NOT NULL,
    cache_status       TEXT NOT NULL,
    requests           BIGINT NOT NULL,
    errors             BIGINT NOT NULL,
    prompt_tokens      BIGINT NOT NULL,
    completion_tokens  BIGINT NOT NULL,
    cached_tokens      BIGINT NOT NULL,
    reasoning_tokens   BIGINT NOT NULL,
    total_tokens       BIGINT NOT NULL,
    cost_usd           DOUBLE PRECISION NOT NULL,
    potential_cost_usd DOUBLE PRECISION NOT NULL,
    latency_ms_sum     BIGINT NOT NULL,
    latency_le_100ms   BIGINT NOT NULL,
    latency_le_250ms   BIGINT NOT NULL,
    latency_le_500ms   BIGINT NOT NULL,
    latency_le_1s      BIGINT NOT NULL,
    latency_le_2500ms  BIGINT NOT NULL,
    latency_le_5s      BIGINT NOT NULL,
    latency_le_10s     BIGINT NOT NULL,
    latency_le_30s     BIGINT NOT NULL,
    latency_le_60s     BIGINT NOT NULL,
    latency_gt_60s     BIGINT NOT NULL,
    PRIMARY KEY (project_id, bucket_start_ms, model, provider, variant, cache_status)
);

CREATE TABLE usage_rollups_daily (
    project_id         TEXT NOT NULL,
    bucket_start_ms    BIGINT NOT NULL,
    model              TEXT NOT NULL,
    provider           TEXT NOT NULL,
    variant            TEXT NOT NULL,
    cache_status       TEXT NOT NULL,
    requests           BIGINT NOT NULL,
    errors             BIGINT NOT NULL,
    prompt_tokens      BIGINT NOT NULL,
    completion_tokens  BIGINT NOT NULL,
    cached_tokens      BIGINT NOT NULL,
    reasoning_tokens   BIGINT NOT NULL,
    total_tokens       BIGINT NOT NULL,
    cost_usd           DOUBLE PRECISION NOT NULL,
    potential_cost_usd DOUBLE PRECISION NOT NULL,
    latency_ms_sum     BIGINT NOT NULL,
    latency_le_100ms   BIGINT NOT NULL,
    latency_le_250ms   BIGINT NOT NULL,
    latency_le_500ms   BIGINT NOT NULL,
    latency_le_1s      BIGINT NOT NULL,
    latency_le_2500ms  BIGINT NOT NULL,
    latency_le_5s      BIGINT NOT NULL,
    latency_le_10s     BIGINT NOT NULL,
    latency_le_30s     BIGINT NOT NULL,
    latency_le_60s     BIGINT NOT NULL,
    latency_gt_60s     BIGINT NOT NULL,
    PRIMARY KEY (project_id, bucket_start_ms, model, provider, variant, cache_status)
);

-- Alerts raised by the analytics, one row per dedup_key (for example
-- 'projected_budget_exceeded:proj_...:2026-12'), so each fires once even with several gateways.
-- delivered_at_ms stays NULL until an alert channel has sent it.
CREATE TABLE analytics_alerts (
    dedup_key       TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    project_id      TEXT NOT NULL,
    period          TEXT NOT NULL,
    payload         TEXT NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    delivered_at_ms BIGINT
);
