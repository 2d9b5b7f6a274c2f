-- Provider keys that projects bring (BYOK), encrypted with AES-256-GCM under a key derived by
-- PBKDF2-HMAC-SHA256 from the gateway's master secret. The plaintext key is never stored;
-- last_four keeps its last four characters so that listings can tell keys apart.
CREATE TABLE provider_keys (
    project_id     TEXT NOT NULL REFERENCES projects (id),
    provider       TEXT NOT NULL,
    ciphertext     BLOB NOT NULL,
    nonce          BLOB NOT NULL,
    salt           BLOB NOT NULL,
    kdf_iterations INTEGER NOT NULL,
    -- 1 when the key is set, plus one for each re-encryption (rotate-master) or replacement.
    key_version    INTEGER NOT NULL,
    last_four      TEXT NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    rotated_at_ms  INTEGER,
    PRIMARY KEY (project_id, provider)
);

-- Changes whenever a provider key is set, deleted or re-encrypted, so gateways reload only then.
INSERT INTO meta (key, value) VALUES ('provider_keys_version', 0)
    ON CONFLICT (key) DO NOTHING;
