-- Shared monthly totals per project, which gateway nodes on one database reconcile their
-- counters with, and usage alerts with their delivery attempts. period_start_ms is the
-- start of the calendar month in the project's time zone.
CREATE TABLE limit_totals (
    project_id      TEXT NOT NULL,
    period_start_ms INTEGER NOT NULL,
    requests        INTEGER NOT NULL DEFAULT 0,
    tokens          INTEGER NOT NULL DEFAULT 0,
    cost_usd        REAL NOT NULL DEFAULT 0,
    updated_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (project_id, period_start_ms)
);

CREATE INDEX limit_totals_updated ON limit_totals (updated_at_ms);

-- One row per project, month, limit and threshold: the unique key deduplicates alerts across
-- restarts and nodes. threshold_bp is the threshold in basis points (8000 = 80%).
-- Statuses: pending, delivered, failed, or disabled when the channel is not configured.
CREATE TABLE usage_alerts (
    id            TEXT PRIMARY KEY NOT NULL,
    project_id    TEXT NOT NULL,
    period        TEXT NOT NULL,
    limit_name    TEXT NOT NULL,
    threshold_bp  INTEGER NOT NULL,
    used          REAL NOT NULL,
    limit_value   REAL NOT NULL,
    created_at_ms INTEGER NOT NULL,
    webhook_status TEXT NOT NULL,
    email_status  TEXT NOT NULL,
    UNIQUE (project_id, period, limit_name, threshold_bp)
);

CREATE INDEX usage_alerts_project ON usage_alerts (project_id, created_at_ms);

-- One row per delivery attempt. status_code is the webhook's HTTP status, if one came back.
CREATE TABLE alert_deliveries (
    id          TEXT PRIMARY KEY NOT NULL,
    alert_id    TEXT NOT NULL REFERENCES usage_alerts (id),
    channel     TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    at_ms       INTEGER NOT NULL,
    ok          INTEGER NOT NULL CHECK (ok IN (0, 1)),
    status_code INTEGER,
    error       TEXT
);

CREATE INDEX alert_deliveries_alert ON alert_deliveries (alert_id, at_ms);
