-- Keyward schema, SQLite. Keep in step with migrations/postgres.
-- UUIDs are 16-byte BLOBs, times RFC 3339 TEXT (microsecond precision), JSON TEXT.

CREATE TABLE users (
    id               BLOB PRIMARY KEY NOT NULL,
    login            TEXT NOT NULL UNIQUE,      -- BINARY collation: range scans = prefix search
    upn              TEXT,
    display_name     TEXT NOT NULL,
    display_name_key TEXT NOT NULL,             -- lower-cased display name for prefix search
    email            TEXT,
    attributes       TEXT NOT NULL DEFAULT '{}',
    status           TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
);
CREATE INDEX users_display_name_key ON users (display_name_key, id);

CREATE TABLE device_policies (
    id         BLOB PRIMARY KEY NOT NULL,
    name       TEXT NOT NULL UNIQUE,
    document   TEXT NOT NULL,
    version    INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE devices (
    id               BLOB PRIMARY KEY NOT NULL,
    device_type      TEXT NOT NULL,
    serial           TEXT NOT NULL UNIQUE,
    firmware_version TEXT,
    atr              BLOB,
    state            TEXT NOT NULL,
    reason           TEXT,
    assigned_user    BLOB REFERENCES users (id),
    device_policy    BLOB REFERENCES device_policies (id),
    version          INTEGER NOT NULL,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
);
CREATE INDEX devices_state ON devices (state, serial);
CREATE INDEX devices_assigned_user ON devices (assigned_user);
CREATE INDEX devices_device_policy ON devices (device_policy);

CREATE TABLE device_history (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id     BLOB NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    at            TEXT NOT NULL,
    actor         TEXT NOT NULL,
    from_state    TEXT,
    from_reason   TEXT,
    to_state      TEXT NOT NULL,
    to_reason     TEXT,
    assigned_user BLOB,
    note          TEXT
);
CREATE INDEX device_history_device ON device_history (device_id, id);

CREATE TABLE settings (
    key        TEXT PRIMARY KEY NOT NULL,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE passkey_services (
    id            BLOB PRIMARY KEY NOT NULL,
    name          TEXT NOT NULL UNIQUE,
    tenant_id     TEXT NOT NULL,
    client_id     TEXT NOT NULL,
    client_secret BLOB NOT NULL,                -- AEAD ciphertext only
    authority_url TEXT NOT NULL,
    graph_url     TEXT NOT NULL,
    token_scope   TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);

CREATE TABLE accounts (
    id                   BLOB PRIMARY KEY NOT NULL,
    login                TEXT NOT NULL UNIQUE,
    role                 TEXT NOT NULL,
    password_hash        TEXT,                  -- argon2 PHC string
    must_change_password INTEGER NOT NULL,
    user_id              BLOB UNIQUE REFERENCES users (id),
    disabled             INTEGER NOT NULL,
    created_at           TEXT NOT NULL,
    updated_at           TEXT NOT NULL
);

CREATE TABLE sessions (
    id_hash    BLOB PRIMARY KEY NOT NULL,       -- hash of the cookie value, never the value
    account_id BLOB NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    csrf_token TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE INDEX sessions_expires_at ON sessions (expires_at);

CREATE TABLE api_tokens (
    id           BLOB PRIMARY KEY NOT NULL,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL,
    token_hmac   BLOB NOT NULL UNIQUE,          -- HMAC-SHA-256 of the token bytes
    created_by   TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    last_used_at TEXT,
    revoked_at   TEXT
);

CREATE TABLE secrets (
    name       TEXT PRIMARY KEY NOT NULL,
    ciphertext BLOB NOT NULL,                   -- KEK-encrypted
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE audit_log (
    seq      INTEGER PRIMARY KEY NOT NULL,
    at       TEXT NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    target   TEXT NOT NULL,
    outcome  TEXT NOT NULL,
    details  TEXT NOT NULL,                     -- the exact JSON text the MAC covers
    prev_mac BLOB NOT NULL,
    mac      BLOB NOT NULL
);
CREATE INDEX audit_log_mac ON audit_log (mac);

-- The chain head: one row, updated in the same write transaction as each append.
CREATE TABLE audit_head (
    id       INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    count    INTEGER NOT NULL,
    last_mac BLOB NOT NULL
);
INSERT INTO audit_head (id, count, last_mac) VALUES (1, 0, zeroblob(32));

-- Append-only: the application never updates or deletes audit records.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
