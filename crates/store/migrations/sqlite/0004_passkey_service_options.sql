-- Passkey-Enabled Service options (issue 6): the Graph API version, the
-- creationOptions challenge timeout, and how users are matched in Entra ID
-- (NULL: by UPN; else the user attribute holding the Entra object ID). SQLite.
ALTER TABLE passkey_services ADD COLUMN api_version TEXT NOT NULL DEFAULT 'v1.0';
ALTER TABLE passkey_services ADD COLUMN challenge_timeout_minutes INTEGER NOT NULL DEFAULT 5;
ALTER TABLE passkey_services ADD COLUMN user_id_attribute TEXT;
