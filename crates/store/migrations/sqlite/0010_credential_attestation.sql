-- Security hardening (issue 15): whether the device proved it made each
-- credential's key (its attestation verified). NULL: recorded before this
-- release, or a credential of a device that cannot attest.
ALTER TABLE credentials ADD COLUMN attested BOOLEAN;
