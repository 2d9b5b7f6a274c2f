-- Initial schema for SQLite. Times are Unix milliseconds (UTC), costs are US dollars,
-- and booleans are INTEGER 0 or 1.

-- Plan limits per calendar month. NULL means no limit. The config sets the limits later,
-- so the seed rows have none.
CREATE TABLE plans (
    name             TEXT PRIMARY KEY NOT NULL,
    monthly_requests INTEGER,
    monthly_tokens   INTEGER,
    monthly_cost_usd REAL
);

INSERT INTO plans (name) VALUES ('free'), ('pro'), ('enterprise')
    ON CONFLICT (name) DO NOTHING;

CREATE TABLE projects (
    id            TEXT PRIMARY KEY NOT NULL,
    name          TEXT NOT NULL UNIQUE,
    plan          TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);

-- key_hash is the hex SHA-256 of the API key, which the gateway never stores.
CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY NOT NULL,
    project_id    TEXT NOT NULL REFERENCES projects (id),
    key_hash      TEXT NOT NULL UNIQUE,
    prefix        TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER
);

CREATE INDEX api_keys_project_id ON api_keys (project_id);

-- Counters. keys_version changes whenever a key is created or revoked, so gateways can
-- reload their key cache only when it changed.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
);

INSERT INTO meta (key, value) VALUES ('keys_version', 0)
    ON CONFLICT (key) DO NOTHING;

-- One row per request; the columns match the fields of accounting::UsageEvent.
CREATE TABLE usage_events (
    id                 TEXT PRIMARY KEY NOT NULL,
    created_at_ms      INTEGER NOT NULL,
    project_id         TEXT NOT NULL,
    key_id             TEXT NOT NULL,
    endpoint           TEXT NOT NULL,
    model              TEXT NOT NULL,
    provider           TEXT NOT NULL,
    upstream_model     TEXT NOT NULL,
    status             INTEGER NOT NULL,
    stream             INTEGER NOT NULL CHECK (stream IN (0, 1)),
    prompt_tokens      INTEGER NOT NULL,
    completion_tokens  INTEGER NOT NULL,
    cached_tokens      INTEGER NOT NULL,
    reasoning_tokens   INTEGER NOT NULL,
    total_tokens       INTEGER NOT NULL,
    tokens_estimated   INTEGER NOT NULL CHECK (tokens_estimated IN (0, 1)),
    cost_usd           REAL NOT NULL,
    potential_cost_usd REAL NOT NULL,
    cache_status       TEXT NOT NULL,
    latency_ms         INTEGER NOT NULL,
    ttfb_ms            INTEGER,
    error_type         TEXT
);

CREATE INDEX usage_events_project_created ON usage_events (project_id, created_at_ms);
CREATE INDEX usage_events_created ON usage_events (created_at_ms);
