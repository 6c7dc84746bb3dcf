-- After issuance, part 1 (issue 14): an issued device may be suspended
-- (certificates on hold, passkeys deleted and to be registered again), and
-- a device may be issued in place of another: permanently (the original is
-- terminated when it is issued) or temporarily while the original is
-- forgotten (it ends at temporary_until, or when the original is found).
-- PostgreSQL.
ALTER TABLE devices ADD COLUMN suspended BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE devices ADD COLUMN passkey_reregistration BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE devices ADD COLUMN replaces UUID REFERENCES devices (id);
ALTER TABLE devices ADD COLUMN replace_reason TEXT;
ALTER TABLE devices ADD COLUMN temporary_until TIMESTAMPTZ;
CREATE INDEX devices_replaces ON devices (replaces) WHERE replaces IS NOT NULL;
