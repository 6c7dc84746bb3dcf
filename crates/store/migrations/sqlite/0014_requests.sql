-- Requests (issue 18): an issuance or replacement a device policy puts on
-- hold until a second person approves it (pending → approved → used once;
-- or denied, cancelled); a bulk batch is a set of requests made from one
-- CSV (all or nothing by default).
CREATE TABLE request_batches (
    id          BLOB PRIMARY KEY NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    rows_count  INTEGER NOT NULL
);
CREATE TABLE requests (
    id            BLOB PRIMARY KEY NOT NULL,
    kind          TEXT NOT NULL,                 -- issuance | replacement
    user_id       BLOB NOT NULL REFERENCES users (id),
    policy_id     BLOB NOT NULL REFERENCES device_policies (id),
    serial        TEXT,                          -- the device, when named
    replaces      TEXT,                          -- a replacement: the device replaced
    reason        TEXT,                          -- and why
    batch_id      BLOB REFERENCES request_batches (id),
    state         TEXT NOT NULL,                 -- pending | approved | denied | cancelled | used
    requested_by  TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    decided_by    TEXT,
    decided_at    TEXT,
    note          TEXT,
    session_id    BLOB,                          -- the session that carried it out
    used_at       TEXT
);
CREATE INDEX requests_state ON requests (state, created_at);
CREATE INDEX requests_batch ON requests (batch_id);
