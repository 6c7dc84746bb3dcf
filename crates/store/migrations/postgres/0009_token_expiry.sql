-- Security hardening (issue 15): API tokens expire. A token made before
-- this release gets an expiry at the server's first start after the
-- upgrade (90 days later); new tokens get theirs when they are made.
ALTER TABLE api_tokens ADD COLUMN expires_at TIMESTAMPTZ;
