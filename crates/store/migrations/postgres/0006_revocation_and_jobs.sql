-- Revocation that relying parties see (issue 13): each revoked certificate
-- keeps its RFC 5280 reason (NULL on rows revoked before: they were written
-- as cessationOfOperation, 5); the issuing CA's CRL numbers, kept so that
-- every node signs a higher one; and the durable job runner's outbox. PostgreSQL.
ALTER TABLE credentials ADD COLUMN revocation_reason BIGINT;
CREATE INDEX credentials_revoked ON credentials (revoked_at) WHERE revoked_at IS NOT NULL;

CREATE TABLE crl_numbers (
    issuer TEXT PRIMARY KEY,
    number BIGINT NOT NULL
);

CREATE TABLE jobs (
    id          UUID PRIMARY KEY,
    kind        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    target      TEXT NOT NULL,
    state       TEXT NOT NULL,
    attempts    BIGINT NOT NULL,
    next_at     TIMESTAMPTZ NOT NULL,
    lease_until TIMESTAMPTZ,
    leased_by   TEXT,
    last_error  TEXT,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX jobs_due ON jobs (state, next_at);
CREATE INDEX jobs_target ON jobs (target);
