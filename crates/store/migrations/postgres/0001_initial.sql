-- Keyward schema, PostgreSQL. Keep in step with migrations/sqlite.
-- Text columns searched by prefix use COLLATE "C" so a B-tree range scan is a prefix
-- match (linguistic collations do not order by bytes).

CREATE TABLE users (
    id               UUID PRIMARY KEY,
    login            TEXT COLLATE "C" NOT NULL UNIQUE,
    upn              TEXT,
    display_name     TEXT NOT NULL,
    display_name_key TEXT COLLATE "C" NOT NULL,
    email            TEXT,
    attributes       TEXT NOT NULL DEFAULT '{}',
    status           TEXT NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL
);
CREATE INDEX users_display_name_key ON users (display_name_key, id);

CREATE TABLE device_policies (
    id         UUID PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    document   TEXT NOT NULL,
    version    BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE devices (
    id               UUID PRIMARY KEY,
    device_type      TEXT NOT NULL,
    serial           TEXT COLLATE "C" NOT NULL UNIQUE,
    firmware_version TEXT,
    atr              BYTEA,
    state            TEXT NOT NULL,
    reason           TEXT,
    assigned_user    UUID REFERENCES users (id),
    device_policy    UUID REFERENCES device_policies (id),
    version          BIGINT NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL
);
CREATE INDEX devices_state ON devices (state, serial);
CREATE INDEX devices_assigned_user ON devices (assigned_user);
CREATE INDEX devices_device_policy ON devices (device_policy);

CREATE TABLE device_history (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id     UUID NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    at            TIMESTAMPTZ NOT NULL,
    actor         TEXT NOT NULL,
    from_state    TEXT,
    from_reason   TEXT,
    to_state      TEXT NOT NULL,
    to_reason     TEXT,
    assigned_user UUID,
    note          TEXT
);
CREATE INDEX device_history_device ON device_history (device_id, id);

CREATE TABLE settings (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE passkey_services (
    id            UUID PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    tenant_id     TEXT NOT NULL,
    client_id     TEXT NOT NULL,
    client_secret BYTEA NOT NULL,
    authority_url TEXT NOT NULL,
    graph_url     TEXT NOT NULL,
    token_scope   TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL
);

CREATE TABLE accounts (
    id                   UUID PRIMARY KEY,
    login                TEXT NOT NULL UNIQUE,
    role                 TEXT NOT NULL,
    password_hash        TEXT,
    must_change_password BOOLEAN NOT NULL,
    user_id              UUID UNIQUE REFERENCES users (id),
    disabled             BOOLEAN NOT NULL,
    created_at           TIMESTAMPTZ NOT NULL,
    updated_at           TIMESTAMPTZ NOT NULL
);

CREATE TABLE sessions (
    id_hash    BYTEA PRIMARY KEY,
    account_id UUID NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    csrf_token TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX sessions_expires_at ON sessions (expires_at);

CREATE TABLE api_tokens (
    id           UUID PRIMARY KEY,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL,
    token_hmac   BYTEA NOT NULL UNIQUE,
    created_by   TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    last_used_at TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ
);

CREATE TABLE secrets (
    name       TEXT PRIMARY KEY,
    ciphertext BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE audit_log (
    seq      BIGINT PRIMARY KEY,
    at       TIMESTAMPTZ NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    target   TEXT NOT NULL,
    outcome  TEXT NOT NULL,
    details  TEXT NOT NULL,
    prev_mac BYTEA NOT NULL,
    mac      BYTEA NOT NULL
);
CREATE INDEX audit_log_mac ON audit_log (mac);

CREATE TABLE audit_head (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    count    BIGINT NOT NULL,
    last_mac BYTEA NOT NULL
);
INSERT INTO audit_head (id, count, last_mac) VALUES (1, 0, decode(repeat('00', 32), 'hex'));

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
