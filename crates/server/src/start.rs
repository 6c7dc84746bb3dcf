//! Starting and stopping the server: KEK, store and migrations, bootstrap,
//! then the HTTP(S) listener, with a graceful stop on Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use keyward_store::Store;
use tokio::task::JoinHandle;

use crate::app::{router, AppState};
use crate::config::Config;
use crate::secrets::Kek;

#[derive(Clone, Default)]
pub struct StartOptions {
    /// `KEYWARD_BOOTSTRAP_TOKEN`: an administrator API token with this value.
    pub bootstrap_token: Option<String>,
    /// The demo accepts a short or simple bootstrap token (and says so);
    /// `serve` refuses one.
    pub allow_weak_bootstrap_token: bool,
}

/// Why a bootstrap token is too weak for `serve`: under 32 characters, or
/// of one character class (all digits, all letters of one case, …).
pub fn weak_token(token: &str) -> Option<&'static str> {
    if token.chars().count() < 32 {
        return Some("it has fewer than 32 characters");
    }
    let classes = [
        token.chars().any(|c| c.is_ascii_lowercase()),
        token.chars().any(|c| c.is_ascii_uppercase()),
        token.chars().any(|c| c.is_ascii_digit()),
        token.chars().any(|c| !c.is_ascii_alphanumeric()),
    ];
    (classes.iter().filter(|c| **c).count() < 2).then_some("it is made of one character class")
}

impl std::fmt::Debug for StartOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartOptions")
            .field(
                "bootstrap_token",
                &self.bootstrap_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl StartOptions {
    pub fn from_env() -> Self {
        StartOptions {
            bootstrap_token: std::env::var("KEYWARD_BOOTSTRAP_TOKEN").ok(),
            allow_weak_bootstrap_token: false,
        }
    }
}

pub struct Server {
    pub state: AppState,
    pub addr: SocketAddr,
    /// The scheme and address to reach the server at.
    pub url: String,
    /// Where `/metrics` is served on its own (`metrics_listen`).
    pub metrics_addr: Option<SocketAddr>,
    /// This start created the first administrator, `admin` (an empty store),
    /// and printed its one-time password.
    pub created_first_admin: bool,
    task: JoinHandle<std::io::Result<()>>,
    handle: axum_server::Handle,
}

impl Server {
    pub async fn start(mut config: Config, opts: StartOptions) -> anyhow::Result<Server> {
        if let Some(why) = opts
            .bootstrap_token
            .as_deref()
            .filter(|t| !t.is_empty())
            .and_then(weak_token)
        {
            if opts.allow_weak_bootstrap_token {
                println!("note: KEYWARD_BOOTSTRAP_TOKEN is weak ({why}): the demo accepts it; `keyward serve` would not");
            } else {
                anyhow::bail!("KEYWARD_BOOTSTRAP_TOKEN is refused: {why}; use at least 32 random characters of two classes or more (e.g. `openssl rand -base64 33`)");
            }
        }
        // Bound first: with port 0 the address certificates carry (CRL,
        // OCSP, caIssuers, without public_url) is the port actually bound.
        let listener = std::net::TcpListener::bind(config.listen)
            .map_err(|e| anyhow::anyhow!("listen {}: {e}", config.listen))?;
        listener.set_nonblocking(true)?;
        config.listen = listener.local_addr()?;
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| anyhow::anyhow!("data folder {}: {e}", config.data_dir.display()))?;
        let kek = match &config.kek {
            Some(text) => Kek::from_base64(text)?,
            None => Kek::load_or_create(&config.data_dir)?.0,
        };
        let url = config.effective_database_url();
        let store = Store::open(&url, kek.derive("audit/hmac-sha256"))
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "opening the store {}: {e}",
                    crate::config::redact_url_password(&url)
                )
            })?;
        let state = AppState::new(store, &kek, config.clone()).await?;

        let first_admin = crate::bootstrap::run(&state, opts.bootstrap_token.as_deref()).await?;
        let created_first_admin = first_admin.is_some();
        if let Some(password) = first_admin {
            // On the console only, once: never through the log.
            println!("created operator 'admin' with one-time password: {password}");
            println!("(sign in and change it; it is not shown again)");
        }
        // Attestation required with nothing to verify against: every
        // YubiKey issuance would fail; say so at start.
        crate::bootstrap::migrate_attestation_setting(&state).await?;
        warn_attestation_without_roots(&state).await?;
        let key_file = config
            .audit_signing_key
            .clone()
            .unwrap_or_else(|| config.data_dir.join("audit-signing-key.pem"));
        let signer = crate::audit_checkpoints::Signer::load_or_create(&key_file)?;
        tracing::info!(
            key = %key_file.display(),
            public_key = %crate::audit_checkpoints::public_key_path(&key_file).display(),
            "audit checkpoints are signed with this key: keep its public key to verify them"
        );
        crate::audit_checkpoints::spawn(
            state.clone(),
            signer,
            config
                .audit_checkpoint_file
                .clone()
                .unwrap_or_else(|| config.data_dir.join("audit-checkpoints.jsonl")),
            config.audit_checkpoint_seconds,
        );
        spawn_abandoned_sweeper(state.clone(), config.abandon_after_seconds);
        crate::jobs::spawn_worker(state.clone());

        let app = router(state.clone());
        let handle = axum_server::Handle::new();
        let addr = config.listen;
        // The peer's address for the sign-in and pairing limits.
        let service = app.into_make_service_with_connect_info::<SocketAddr>();
        // At most max_connections at once, none idle for long (before TLS).
        let guard = crate::connections::Guarded::new(
            axum_server::accept::DefaultAcceptor::new(),
            config.max_connections,
            Duration::from_secs(config.idle_timeout_seconds),
        );
        let (scheme, task) = match &config.tls {
            Some(tls) => {
                let _ = rustls::crypto::ring::default_provider().install_default();
                let rustls_config = axum_server::tls_rustls::RustlsConfig::from_pem_file(
                    &tls.cert_file,
                    &tls.key_file,
                )
                .await
                .map_err(|e| anyhow::anyhow!("TLS certificate or key: {e}"))?;
                let mut server = axum_server::from_tcp_rustls(listener, rustls_config)
                    .handle(handle.clone())
                    .map(|tls| tls.acceptor(guard));
                limit_http(server.http_builder(), &config);
                (
                    "https",
                    tokio::spawn(async move { server.serve(service).await }),
                )
            }
            None => {
                let mut server = axum_server::from_tcp(listener)
                    .handle(handle.clone())
                    .acceptor(guard);
                limit_http(server.http_builder(), &config);
                (
                    "http",
                    tokio::spawn(async move { server.serve(service).await }),
                )
            }
        };
        // Metrics on an address of their own, when configured.
        let metrics_addr = match config.metrics_listen {
            Some(at) => {
                let listener = std::net::TcpListener::bind(at)
                    .map_err(|e| anyhow::anyhow!("metrics_listen {at}: {e}"))?;
                listener.set_nonblocking(true)?;
                let bound = listener.local_addr()?;
                let server = axum_server::from_tcp(listener).handle(handle.clone());
                let service = crate::app::metrics_router(state.clone()).into_make_service();
                tokio::spawn(async move { server.serve(service).await });
                tracing::info!(address = %bound, "metrics listening");
                Some(bound)
            }
            None => None,
        };
        let url = format!("{scheme}://{addr}");
        tracing::info!(%url, "keyward listening");
        Ok(Server {
            state,
            addr,
            url,
            metrics_addr,
            created_first_admin,
            task,
            handle,
        })
    }

    /// Runs until Ctrl-C or SIGTERM, then stops gracefully.
    pub async fn wait(self) -> anyhow::Result<()> {
        let handle = self.handle.clone();
        let state = self.state.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("stopping");
            // Open long-polls answer now; the rest get 10 s to finish.
            state.agents.stop_long_polls();
            handle.graceful_shutdown(Some(Duration::from_secs(10)));
        });
        self.task.await??;
        Ok(())
    }

    pub fn stop(&self) {
        self.state.agents.stop_long_polls();
        self.handle.graceful_shutdown(Some(Duration::from_secs(5)));
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Cancels abandoned issuance sessions, checking a few times per period.
fn spawn_abandoned_sweeper(state: AppState, abandon_after_seconds: u64) {
    let every = Duration::from_secs((abandon_after_seconds / 4).clamp(1, 60));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if let Err(e) = crate::issuance::sweep_abandoned(&state).await {
                tracing::warn!(error = %e, "sweeping abandoned issuance sessions failed");
            }
        }
    });
}

/// hyper's limits: the time a client has to send a request's headers (a
/// client that trickles them is disconnected).
fn limit_http(
    builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    config: &Config,
) {
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(config.header_read_timeout_seconds));
}

/// Attestation required with nothing to verify against: every attesting
/// device of those policies would fail issuance; said at start, for the PIV
/// roots and the FIDO roots apart.
async fn warn_attestation_without_roots(state: &AppState) -> anyhow::Result<()> {
    let policies = state.store.list_policies().await?;
    let requiring = |fido: bool| -> Vec<&str> {
        policies
            .iter()
            .filter(|p| !fido || p.fido_application.is_some())
            .filter(|p| p.device_types.iter().any(|t| p.requires_attestation(*t)))
            .map(|p| p.name.as_str())
            .collect()
    };
    let anchors = &state.attestation_anchors;
    for (missing, fido, key) in [
        (anchors.roots.is_empty(), false, "attestation_roots"),
        (
            anchors.fido_roots.is_empty(),
            true,
            "fido_attestation_roots",
        ),
    ] {
        let names = requiring(fido);
        if missing && !names.is_empty() {
            tracing::warn!(
                policies = ?names,
                "these policies require device attestation but no {key} are configured: their attesting devices cannot be issued"
            );
        }
    }
    Ok(())
}
