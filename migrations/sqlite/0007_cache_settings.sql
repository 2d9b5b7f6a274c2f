-- Per-project overrides of the response cache settings, written by `watchllm cache set` and the
-- admin API. NULL in a column means no override: the project's entry in the config file, or
-- else the config's default, applies. Booleans are INTEGER 0 or 1.
CREATE TABLE project_cache_settings (
    project_id    TEXT PRIMARY KEY NOT NULL REFERENCES projects (id),
    enabled       INTEGER,
    semantic      INTEGER,
    -- Minimum cosine similarity of a semantic hit, in (0, 1].
    threshold     REAL,
    ttl_seconds   INTEGER,
    updated_at_ms INTEGER NOT NULL
);

-- Changes whenever an override is written or cleared, so gateways reload them only then.
INSERT INTO meta (key, value) VALUES ('cache_settings_version', 0)
    ON CONFLICT (key) DO NOTHING;
