-- Requests (issue 18): an issuance or replacement a device policy puts on
-- hold until a second person approves it (pending → approved → used once;
-- or denied, cancelled); a bulk batch is a set of requests made from one
-- CSV (all or nothing by default).
CREATE TABLE request_batches (
    id          UUID PRIMARY KEY,
    created_by  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    rows_count  BIGINT NOT NULL
);
CREATE TABLE requests (
    id            UUID PRIMARY KEY,
    kind          TEXT NOT NULL,                 -- issuance | replacement
    user_id       UUID NOT NULL REFERENCES users (id),
    policy_id     UUID NOT NULL REFERENCES device_policies (id),
    serial        TEXT,                          -- the device, when named
    replaces      TEXT,                          -- a replacement: the device replaced
    reason        TEXT,                          -- and why
    batch_id      UUID REFERENCES request_batches (id),
    state         TEXT NOT NULL,                 -- pending | approved | denied | cancelled | used
    requested_by  TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    decided_by    TEXT,
    decided_at    TIMESTAMPTZ,
    note          TEXT,
    session_id    UUID,                          -- the session that carried it out
    used_at       TIMESTAMPTZ
);
CREATE INDEX requests_state ON requests (state, created_at);
CREATE INDEX requests_batch ON requests (batch_id);
