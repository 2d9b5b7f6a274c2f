-- Initial schema for PostgreSQL. Times are Unix milliseconds (UTC) and costs are US dollars.

-- Plan limits per calendar month. NULL means no limit. The config sets the limits later,
-- so the seed rows have none.
CREATE TABLE plans (
    name             TEXT PRIMARY KEY,
    monthly_requests BIGINT,
    monthly_tokens   BIGINT,
    monthly_cost_usd DOUBLE PRECISION
);

INSERT INTO plans (name) VALUES ('free'), ('pro'), ('enterprise')
    ON CONFLICT (name) DO NOTHING;

CREATE TABLE projects (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    plan          TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

-- key_hash is the hex SHA-256 of the API key, which the gateway never stores.
CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    project_id    TEXT NOT NULL REFERENCES projects (id),
    key_hash      TEXT NOT NULL UNIQUE,
    prefix        TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT
);

CREATE INDEX api_keys_project_id ON api_keys (project_id);

-- Counters. keys_version changes whenever a key is created or revoked, so gateways can
-- reload their key cache only when it changed.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);

INSERT INTO meta (key, value) VALUES ('keys_version', 0)
    ON CONFLICT (key) DO NOTHING;

-- One row per request; the columns match the fields of accounting::UsageEvent.
CREATE TABLE usage_events (
    id                 TEXT PRIMARY KEY,
    created_at_ms      BIGINT NOT NULL,
    project_id         TEXT NOT NULL,
    key_id             TEXT NOT NULL,
    endpoint           TEXT NOT NULL,
    model              TEXT NOT NULL,
    provider           TEXT NOT NULL,
    upstream_model     TEXT NOT NULL,
    status             INTEGER NOT NULL,
    stream             BOOLEAN NOT NULL,
    prompt_tokens      BIGINT NOT NULL,
    completion_tokens  BIGINT NOT NULL,
    cached_tokens      BIGINT NOT NULL,
    reasoning_tokens   BIGINT NOT NULL,
    total_tokens       BIGINT NOT NULL,
    tokens_estimated   BOOLEAN NOT NULL,
    cost_usd           DOUBLE PRECISION NOT NULL,
    potential_cost_usd DOUBLE PRECISION NOT NULL,
    cache_status       TEXT NOT NULL,
    latency_ms         BIGINT NOT NULL,
    ttfb_ms            BIGINT,
    error_type         TEXT
);

CREATE INDEX usage_events_project_created ON usage_events (project_id, created_at_ms);
CREATE INDEX usage_events_created ON usage_events (created_at_ms);
