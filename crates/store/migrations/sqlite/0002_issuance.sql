-- Issuance sessions and the credentials they put on devices. SQLite.

CREATE TABLE issuance_sessions (
    id           BLOB PRIMARY KEY NOT NULL,
    device_id    BLOB NOT NULL REFERENCES devices (id),
    user_id      BLOB NOT NULL REFERENCES users (id),
    policy_id    BLOB NOT NULL REFERENCES device_policies (id),
    action       TEXT NOT NULL,                 -- issue | assign
    status       TEXT NOT NULL,                 -- running | issued | assigned | failed | cancelled
    step         TEXT NOT NULL,
    seq          INTEGER NOT NULL,              -- sequence number of the current batch
    sealed_state BLOB NOT NULL,                 -- engine state with its secrets, sealed under the KEK
    error        TEXT,                          -- JSON failure report, never a secret
    created_by   TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
-- One device, one active session.
CREATE UNIQUE INDEX issuance_sessions_one_active ON issuance_sessions (device_id)
    WHERE status IN ('running', 'failed');
CREATE INDEX issuance_sessions_user ON issuance_sessions (user_id);

CREATE TABLE credentials (
    id         BLOB PRIMARY KEY NOT NULL,
    device_id  BLOB NOT NULL REFERENCES devices (id),
    session_id BLOB NOT NULL REFERENCES issuance_sessions (id),
    kind       TEXT NOT NULL,                   -- certificate | passkey
    slot       TEXT,
    serial     TEXT NOT NULL,                   -- certificate serial (hex) or passkey id
    not_after  TEXT,
    der        BLOB,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE INDEX credentials_device ON credentials (device_id);
