-- A Passkey-Enabled Service may authenticate with a certificate credential
-- (signed client assertion, issue 6) instead of a client secret: the
-- certificate (PEM, public) is kept here; its private key is sealed in
-- client_secret. NULL: the service uses a client secret. SQLite.
ALTER TABLE passkey_services ADD COLUMN client_certificate_pem TEXT;
