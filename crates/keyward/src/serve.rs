//! `keyward serve`

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use keyward_server::config::{Config, Overrides};

#[derive(Args, Debug, Clone)]
pub struct ServerFlags {
    /// TOML configuration file.
    #[arg(long, env = "KEYWARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data folder (SQLite database, KEK, CA). Default ./keyward-data.
    #[arg(long, env = "KEYWARD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on. Default 127.0.0.1:8080.
    #[arg(long, env = "KEYWARD_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// sqlite://… or postgres://… (default: SQLite in the data folder).
    #[arg(long, env = "KEYWARD_DATABASE_URL")]
    pub database_url: Option<String>,
    /// TLS certificate chain (PEM); with --tls-key.
    #[arg(long, env = "KEYWARD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); with --tls-cert.
    #[arg(long, env = "KEYWARD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The URL relying parties reach this server at (written into
    /// certificates: CRL, OCSP, caIssuers). Needed when listening on
    /// anything but loopback.
    #[arg(long, env = "KEYWARD_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// An address of its own for Prometheus' `/metrics` (e.g. an internal
    /// interface). Without it, or KEYWARD_METRICS_TOKEN, no metrics are served.
    #[arg(long, env = "KEYWARD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

impl ServerFlags {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            data_dir: self.data_dir.clone(),
            listen: self.listen,
            database_url: self.database_url.clone(),
            // The KEK is read from the environment only (never a flag: flags
            // show in process listings).
            kek: std::env::var("KEYWARD_KEK").ok(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            public_url: self.public_url.clone(),
            metrics_listen: self.metrics_listen,
            // Like the KEK: the environment only, never a flag.
            metrics_token: std::env::var("KEYWARD_METRICS_TOKEN").ok(),
        }
    }
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub flags: ServerFlags,
    /// Print the configuration in effect (secrets redacted) and exit.
    #[arg(long)]
    pub print_config: bool,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(args.flags.config.as_deref(), args.flags.overrides())?;
    if args.print_config {
        print!("{}", config.redacted_toml());
        return Ok(ExitCode::SUCCESS);
    }
    keyward_server::logging::init(&config.log_format);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let server =
            keyward_server::Server::start(config, keyward_server::StartOptions::from_env()).await?;
        // Scripts and tests read the address from this line (useful with port 0).
        println!("keyward listening on {}", server.url);
        server.wait().await
    })?;
    Ok(ExitCode::SUCCESS)
}
