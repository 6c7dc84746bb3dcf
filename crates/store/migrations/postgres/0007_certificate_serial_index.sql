-- OCSP looks a certificate up by its serial number. PostgreSQL.
CREATE INDEX credentials_serial ON credentials (serial);
