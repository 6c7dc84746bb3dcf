//! Server configuration: a TOML file, then `KEYWARD_*` environment
//! variables, then command-line flags (each later source wins).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const DEFAULT_DATA_DIR: &str = "./keyward-data";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Folder for the SQLite database, the KEK file and the CA.
    pub data_dir: PathBuf,
    /// Address the HTTP(S) server binds.
    pub listen: SocketAddr,
    /// `sqlite://…` or `postgres://…`; default: SQLite in the data folder.
    pub database_url: Option<String>,
    /// Base64 of a 32-byte KEK, for several nodes sharing one store.
    /// Default: the `kek` file in the data folder, created at first start.
    pub kek: Option<String>,
    pub tls: Option<TlsConfig>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Browser session lifetime in minutes.
    pub session_minutes: u64,
    /// `json` or `text` log lines.
    pub log_format: String,
    /// Seconds between audit-chain head checkpoints written to the log.
    pub audit_checkpoint_seconds: u64,
    /// The URL relying parties reach this server at (CRL distribution points
    /// in certificates). Default: http(s)://<listen>.
    pub public_url: Option<String>,
    /// Days a generated initial PIN stays retrievable with Get Initial PIN.
    pub initial_pin_days: u64,
    /// Seconds without client activity after which the server cancels an
    /// issuance session (running or failed) on its own.
    pub abandon_after_seconds: u64,
    /// Trusted roots for YubiKey PIV attestation (PEM or DER files): Yubico's
    /// PIV root for real devices, `keyward vcard ca-cert` for virtual ones.
    pub attestation_roots: Vec<PathBuf>,
    /// Certificates between a device's attestation certificate and a root
    /// that devices do not carry (Yubico's newer keys chain through "PIV
    /// Attestation B 1"): PEM or DER files.
    pub attestation_intermediates: Vec<PathBuf>,
    /// Trusted roots for FIDO2 packed attestation of passkeys (PEM or DER
    /// files): Yubico's FIDO root for real YubiKeys, the manufacturer's
    /// for others, `keyward vcard ca-cert` for virtual devices. Kept apart
    /// from the PIV roots: a manufacturer may use other CAs for each.
    pub fido_attestation_roots: Vec<PathBuf>,
    /// Hours between a CRL's thisUpdate and nextUpdate; it is signed again
    /// at half-life, and at once after a revocation.
    pub crl_validity_hours: u64,
    /// An address of its own where `/metrics` is served (plain HTTP,
    /// nothing else there), for a scraper on an internal network.
    pub metrics_listen: Option<SocketAddr>,
    /// With a token, `/metrics` is served on the main address too, to
    /// `Authorization: Bearer TOKEN` only. Without either, nobody gets the
    /// metrics: the default exposes nothing.
    pub metrics_token: Option<String>,
    /// Reverse proxies whose `X-Forwarded-For` names the client (for the
    /// sign-in and pairing limits); anyone else's is ignored.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// How long an API token lasts at most, in days (a request may ask for
    /// less). Tokens made before expiry existed expire this long after the
    /// first start of the release that added it.
    pub token_days: u32,
    /// Seconds a client has to send a request's headers (a client that
    /// trickles them is disconnected).
    pub header_read_timeout_seconds: u64,
    /// Seconds a request may take, long polls included (they answer within
    /// 25 s): longer is answered 408.
    pub request_timeout_seconds: u64,
    /// Seconds a connection may stay without a byte either way.
    pub idle_timeout_seconds: u64,
    /// Connections at once; one more is closed as it is accepted.
    pub max_connections: usize,
    /// The key that signs the audit trail's checkpoints (ECDSA P-256,
    /// PKCS#8 PEM), kept apart from the KEK; created at first start, its
    /// public key beside it (`<file>.pub`). Default:
    /// `<data_dir>/audit-signing-key.pem`.
    pub audit_signing_key: Option<PathBuf>,
    /// Where signed checkpoints are appended (one JSON line each). Default:
    /// `<data_dir>/audit-checkpoints.jsonl`.
    pub audit_checkpoint_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            database_url: None,
            kek: None,
            tls: None,
            max_body_bytes: 2 * 1024 * 1024,
            session_minutes: 8 * 60,
            log_format: "text".into(),
            audit_checkpoint_seconds: 300,
            public_url: None,
            initial_pin_days: 30,
            abandon_after_seconds: 1800,
            crl_validity_hours: 24,
            attestation_roots: Vec::new(),
            attestation_intermediates: Vec::new(),
            fido_attestation_roots: Vec::new(),
            metrics_listen: None,
            metrics_token: None,
            trusted_proxies: Vec::new(),
            token_days: 90,
            header_read_timeout_seconds: 10,
            request_timeout_seconds: 60,
            idle_timeout_seconds: 120,
            max_connections: 1024,
            audit_signing_key: None,
            audit_checkpoint_file: None,
        }
    }
}

/// Values given on the command line or in the environment (clap merges the
/// two); `None` leaves the file's value.
#[derive(Clone, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub database_url: Option<String>,
    pub kek: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub public_url: Option<String>,
    pub metrics_listen: Option<SocketAddr>,
    pub metrics_token: Option<String>,
}

impl Config {
    /// Reads the TOML file (if given), then applies the overrides.
    pub fn load(file: Option<&Path>, overrides: Overrides) -> anyhow::Result<Config> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
                toml::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?
            }
            None => Config::default(),
        };
        if let Some(v) = overrides.data_dir {
            config.data_dir = v;
        }
        if let Some(v) = overrides.listen {
            config.listen = v;
        }
        if let Some(v) = overrides.public_url {
            config.public_url = Some(v);
        }
        if let Some(v) = overrides.database_url {
            config.database_url = Some(v);
        }
        if let Some(v) = overrides.kek {
            config.kek = Some(v);
        }
        if let Some(v) = overrides.metrics_listen {
            config.metrics_listen = Some(v);
        }
        if let Some(v) = overrides.metrics_token {
            config.metrics_token = Some(v);
        }
        match (overrides.tls_cert, overrides.tls_key) {
            (Some(cert_file), Some(key_file)) => {
                config.tls = Some(TlsConfig {
                    cert_file,
                    key_file,
                })
            }
            (None, None) => {}
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if let Some(url) = &self.database_url {
            if !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
            {
                anyhow::bail!(
                    "database_url: must start with sqlite:, postgres:// or postgresql://"
                );
            }
        }
        if self.max_body_bytes < 1024 {
            anyhow::bail!("max_body_bytes: must be at least 1024");
        }
        if !matches!(self.log_format.as_str(), "json" | "text") {
            anyhow::bail!("log_format: must be json or text");
        }
        // Certificates carry this server's address (CRL distribution point,
        // OCSP, caIssuers): an unspecified or otherwise unreachable listen
        // address must not end up in them.
        if self.public_url.is_none() && !self.listen.ip().is_loopback() {
            anyhow::bail!(
                "public_url: this server listens on {}, which relying parties cannot use to reach its CRL and OCSP responder; set the URL they reach it at (--public-url, KEYWARD_PUBLIC_URL or public_url = \"https://cms.example.com\")",
                self.listen
            );
        }
        if let Some(u) = &self.public_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                anyhow::bail!("public_url: {u} is not an http:// or https:// URL");
            }
        }
        if self.header_read_timeout_seconds == 0
            || self.request_timeout_seconds < 30
            || self.idle_timeout_seconds == 0
            || self.max_connections == 0
        {
            anyhow::bail!("header_read_timeout_seconds, idle_timeout_seconds and max_connections must be above 0, request_timeout_seconds at least 30 (the agents' long polls take 25)");
        }
        if !(1..=3650).contains(&self.token_days) {
            anyhow::bail!("token_days: 1 to 3650");
        }
        if self.metrics_token.as_ref().is_some_and(|t| t.len() < 24) {
            anyhow::bail!("metrics_token: use at least 24 characters");
        }
        Ok(())
    }

    /// The public URL in effect (no trailing slash).
    pub fn public_url(&self) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => format!(
                "{}://{}",
                if self.tls.is_some() { "https" } else { "http" },
                self.listen
            ),
        }
    }

    /// The database URL in effect.
    pub fn effective_database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("keyward.db").display()
            )
        })
    }

    /// TOML for `--print-config`, secrets redacted.
    pub fn redacted_toml(&self) -> String {
        let mut shown = self.clone();
        if shown.kek.is_some() {
            shown.kek = Some("<redacted>".into());
        }
        if shown.metrics_token.is_some() {
            shown.metrics_token = Some("<redacted>".into());
        }
        shown.database_url = Some(redact_url_password(&self.effective_database_url()));
        toml::to_string_pretty(&shown).expect("config serialises")
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:<redacted>@host/db`
pub fn redact_url_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:<redacted>{}",
            &url[..scheme_end + 3],
            &authority[..colon],
            &rest[at..]
        ),
        _ => url.to_string(),
    }
}

// The KEK and a database password never reach a log through `{:?}`.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("data_dir", &self.data_dir)
            .field("listen", &self.listen)
            .field(
                "database_url",
                &self.database_url.as_deref().map(redact_url_password),
            )
            .field("kek", &self.kek.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("session_minutes", &self.session_minutes)
            .field("log_format", &self.log_format)
            .field("audit_checkpoint_seconds", &self.audit_checkpoint_seconds)
            .field("public_url", &self.public_url)
            .field("initial_pin_days", &self.initial_pin_days)
            .field("abandon_after_seconds", &self.abandon_after_seconds)
            .field("attestation_roots", &self.attestation_roots)
            .field("attestation_intermediates", &self.attestation_intermediates)
            .field("fido_attestation_roots", &self.fido_attestation_roots)
            .field("crl_validity_hours", &self.crl_validity_hours)
            .field("metrics_listen", &self.metrics_listen)
            .field(
                "metrics_token",
                &self.metrics_token.as_ref().map(|_| "<redacted>"),
            )
            .field("trusted_proxies", &self.trusted_proxies)
            .field("token_days", &self.token_days)
            .field(
                "header_read_timeout_seconds",
                &self.header_read_timeout_seconds,
            )
            .field("request_timeout_seconds", &self.request_timeout_seconds)
            .field("idle_timeout_seconds", &self.idle_timeout_seconds)
            .field("max_connections", &self.max_connections)
            .field("audit_signing_key", &self.audit_signing_key)
            .field("audit_checkpoint_file", &self.audit_checkpoint_file)
            .finish()
    }
}

impl std::fmt::Debug for Overrides {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overrides")
            .field("data_dir", &self.data_dir)
            .field("listen", &self.listen)
            .field(
                "database_url",
                &self.database_url.as_deref().map(redact_url_password),
            )
            .field("kek", &self.kek.as_ref().map(|_| "<redacted>"))
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("public_url", &self.public_url)
            .field("metrics_listen", &self.metrics_listen)
            .field(
                "metrics_token",
                &self.metrics_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 15, item 7: `{:?}` of the configuration shows neither the KEK
    /// nor a database password (nor the bootstrap token of the start options).
    #[test]
    fn debug_shows_no_secret() {
        let c = Config {
            kek: Some("S0VLLXNlY3JldC1iYXNlNjQ=".into()),
            database_url: Some("postgres://keyward:pg-pass-42@db.example:5432/keyward".into()),
            ..Config::default()
        };
        let shown = format!(
            "{c:?} {:?}",
            Overrides {
                kek: c.kek.clone(),
                database_url: c.database_url.clone(),
                ..Default::default()
            }
        );
        for secret in ["S0VLLXNlY3JldC1iYXNlNjQ=", "pg-pass-42"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("db.example"), "{shown}");
        let start = crate::start::StartOptions {
            bootstrap_token: Some("kw_bootstrap-token-value".into()),
            allow_weak_bootstrap_token: false,
        };
        assert!(!format!("{start:?}").contains("bootstrap-token-value"));
    }

    #[test]
    fn file_then_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\nkek = \"c2VjcmV0\"\n").unwrap();
        let c = Config::load(
            Some(&path),
            Overrides {
                data_dir: Some("/tmp/x".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        let shown = c.redacted_toml();
        assert!(!shown.contains("c2VjcmV0"));
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.toml");
        std::fs::write(&path, "lisen = \"x\"\n").unwrap();
        let err = Config::load(Some(&path), Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
        let err = Config::load(
            None,
            Overrides {
                database_url: Some("mysql://x".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("database_url"));
    }

    #[test]
    fn url_password_redaction() {
        assert_eq!(
            redact_url_password("postgres://kw:s3cret@db:5432/kw"),
            "postgres://kw:<redacted>@db:5432/kw"
        );
        assert_eq!(redact_url_password("sqlite://x.db"), "sqlite://x.db");
    }
}
