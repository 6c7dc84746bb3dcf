-- Revocation that relying parties see (issue 13): each revoked certificate
-- keeps its RFC 5280 reason (NULL on rows revoked before: they were written
-- as cessationOfOperation, 5); the issuing CA's CRL numbers, kept so that
-- every node signs a higher one; and the durable job runner's outbox. SQLite.
ALTER TABLE credentials ADD COLUMN revocation_reason INTEGER;
CREATE INDEX credentials_revoked ON credentials (revoked_at) WHERE revoked_at IS NOT NULL;

CREATE TABLE crl_numbers (
    issuer TEXT PRIMARY KEY NOT NULL,   -- `issuing` or `root`
    number INTEGER NOT NULL             -- the last number signed
);

CREATE TABLE jobs (
    id          BLOB PRIMARY KEY NOT NULL,
    kind        TEXT NOT NULL,          -- delete_passkey, …
    payload     TEXT NOT NULL,          -- JSON; never a secret
    target      TEXT NOT NULL,          -- what it is about (device:SERIAL)
    state       TEXT NOT NULL,          -- pending | done | closed
    attempts    INTEGER NOT NULL,
    next_at     TEXT NOT NULL,          -- not before
    lease_until TEXT,                   -- a worker holds it until then
    leased_by   TEXT,
    last_error  TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX jobs_due ON jobs (state, next_at);
CREATE INDEX jobs_target ON jobs (target);
