-- Workstation agents (`keyward agent`): pairing by device code, the agent's
-- revocable credential, the devices it reports, and the issuance sessions it
-- relays. PostgreSQL. Every secret is stored as an HMAC only.

CREATE TABLE agents (
    id              UUID PRIMARY KEY,
    name            TEXT NOT NULL,              -- what the agent calls itself (host name)
    status          TEXT NOT NULL,              -- pending | paired | revoked
    owner_kind      TEXT,                       -- account | token (set at approval)
    owner_id        UUID,
    owner_login     TEXT,                       -- account login or token name, for display
    code_hmac       BYTEA UNIQUE,                -- pairing code (XXXX-XXXX) while pending
    poll_hmac       BYTEA UNIQUE,                -- the agent's polling secret until it picks its credential
    credential_hmac BYTEA UNIQUE,                -- the agent's bearer credential (kwa_…)
    code_expires_at TIMESTAMPTZ NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    approved_at     TIMESTAMPTZ,
    approved_by     TEXT,
    revoked_at      TIMESTAMPTZ,
    last_seen_at    TIMESTAMPTZ
);

-- The devices an agent reports connected now (replaced on every change).
CREATE TABLE agent_devices (
    agent_id   UUID NOT NULL REFERENCES agents (id),
    serial     TEXT NOT NULL,                   -- decimal
    info       TEXT NOT NULL,                   -- JSON: device_type, firmware, applets, transports, reader
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (agent_id, serial)
);
CREATE INDEX agent_devices_serial ON agent_devices (serial);

-- Issuance sessions whose command batches an agent relays.
CREATE TABLE agent_sessions (
    session_id UUID PRIMARY KEY REFERENCES issuance_sessions (id),
    agent_id   UUID NOT NULL REFERENCES agents (id),
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX agent_sessions_agent ON agent_sessions (agent_id);
