-- OCSP looks a certificate up by its serial number. SQLite.
CREATE INDEX credentials_serial ON credentials (serial);
