-- Workstation agents (`keyward agent`): pairing by device code, the agent's
-- revocable credential, the devices it reports, and the issuance sessions it
-- relays. SQLite. Every secret is stored as an HMAC only.

CREATE TABLE agents (
    id              BLOB PRIMARY KEY NOT NULL,
    name            TEXT NOT NULL,              -- what the agent calls itself (host name)
    status          TEXT NOT NULL,              -- pending | paired | revoked
    owner_kind      TEXT,                       -- account | token (set at approval)
    owner_id        BLOB,
    owner_login     TEXT,                       -- account login or token name, for display
    code_hmac       BLOB UNIQUE,                -- pairing code (XXXX-XXXX) while pending
    poll_hmac       BLOB UNIQUE,                -- the agent's polling secret until it picks its credential
    credential_hmac BLOB UNIQUE,                -- the agent's bearer credential (kwa_…)
    code_expires_at TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    approved_at     TEXT,
    approved_by     TEXT,
    revoked_at      TEXT,
    last_seen_at    TEXT
);

-- The devices an agent reports connected now (replaced on every change).
CREATE TABLE agent_devices (
    agent_id   BLOB NOT NULL REFERENCES agents (id),
    serial     TEXT NOT NULL,                   -- decimal
    info       TEXT NOT NULL,                   -- JSON: device_type, firmware, applets, transports, reader
    updated_at TEXT NOT NULL,
    PRIMARY KEY (agent_id, serial)
);
CREATE INDEX agent_devices_serial ON agent_devices (serial);

-- Issuance sessions whose command batches an agent relays.
CREATE TABLE agent_sessions (
    session_id BLOB PRIMARY KEY NOT NULL REFERENCES issuance_sessions (id),
    agent_id   BLOB NOT NULL REFERENCES agents (id),
    created_at TEXT NOT NULL
);
CREATE INDEX agent_sessions_agent ON agent_sessions (agent_id);
