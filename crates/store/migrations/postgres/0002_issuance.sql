-- Issuance sessions and the credentials they put on devices. PostgreSQL.

CREATE TABLE issuance_sessions (
    id           UUID PRIMARY KEY,
    device_id    UUID NOT NULL REFERENCES devices (id),
    user_id      UUID NOT NULL REFERENCES users (id),
    policy_id    UUID NOT NULL REFERENCES device_policies (id),
    action       TEXT NOT NULL,
    status       TEXT NOT NULL,
    step         TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    sealed_state BYTEA NOT NULL,
    error        TEXT,
    created_by   TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX issuance_sessions_one_active ON issuance_sessions (device_id)
    WHERE status IN ('running', 'failed');
CREATE INDEX issuance_sessions_user ON issuance_sessions (user_id);

CREATE TABLE credentials (
    id         UUID PRIMARY KEY,
    device_id  UUID NOT NULL REFERENCES devices (id),
    session_id UUID NOT NULL REFERENCES issuance_sessions (id),
    kind       TEXT NOT NULL,
    slot       TEXT,
    serial     TEXT NOT NULL,
    not_after  TIMESTAMPTZ,
    der        BYTEA,
    created_at TIMESTAMPTZ NOT NULL,
    revoked_at TIMESTAMPTZ
);
CREATE INDEX credentials_device ON credentials (device_id);
