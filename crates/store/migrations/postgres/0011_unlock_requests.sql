-- After issuance, part 2 (issue 16): the help desk's "Create Unlock
-- Request": the person completes the unlock in the User Portal before
-- expires_at; used once (used_at, the session that used it).
CREATE TABLE unlock_requests (
    id         UUID PRIMARY KEY,
    device_id  UUID NOT NULL REFERENCES devices (id),
    created_by TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ,
    session_id UUID
);
CREATE INDEX unlock_requests_device ON unlock_requests (device_id, expires_at);
