//! A simulated Entra ID tenant: the identity platform's token endpoint and
//! Graph's `fido2Methods` for passkey provisioning, over real HTTP.
//!
//! Used by Keyward's tests and by `keyward demo` (shown as "simulated
//! tenant"). It checks what Entra checks when a passkey is registered, with
//! the kanidm project's WebAuthn library (webauthn-rs-core), not by hand:
//! client data type, challenge and origin (`https://` + rp.id), rpIdHash,
//! user present and user verified flags, the packed attestation signature
//! and its chain to the configured trust store, an optional AAGUID
//! allow-list; a challenge expires and is used once.
//!
//! Layout: `{url}/login/{tenant}/oauth2/v2.0/token` (the authority URL is
//! `{url}/login`), `{url}/graph/{v1.0|beta}/users/{id}/authentication/...`
//! (the Graph URL is `{url}/graph`), and `{url}/admin/...` for tests: users,
//! faults (429 with Retry-After, 503, 403), challenge expiry, stored keys.

mod assertion;
pub mod cli;
mod config;
mod graph;
mod state;
mod token;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

pub use config::{StandinConfig, StandinUser};
pub use state::{Fault, StoredPasskey};

use state::Tenant;

/// The name the demo and the portal show for this tenant.
pub const DISPLAY_NAME: &str = "simulated tenant";

/// A running stand-in. Dropping it does not stop the server; call
/// [`StandinHandle::shutdown`].
pub struct StandinHandle {
    addr: SocketAddr,
    tenant: Arc<Tenant>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl StandinHandle {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// The authority URL to configure in a Passkey-Enabled Service.
    pub fn authority_url(&self) -> String {
        format!("{}/login", self.url())
    }
    /// The Graph URL to configure in a Passkey-Enabled Service.
    pub fn graph_url(&self) -> String {
        format!("{}/graph", self.url())
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn add_user(&self, user: StandinUser) {
        self.tenant.add_user(user);
    }
    /// The passkeys registered for a user (by object ID or UPN), with their
    /// public keys.
    pub fn passkeys(&self, user: &str) -> Vec<StoredPasskey> {
        self.tenant.passkeys(user)
    }
    /// Faults to answer the next Graph calls with, in order.
    pub fn push_fault(&self, fault: Fault) {
        self.tenant.push_fault(fault);
    }
    pub fn clear_faults(&self) {
        self.tenant.clear_faults();
    }
    /// Makes every outstanding challenge expired.
    pub fn expire_challenges(&self) {
        self.tenant.expire_challenges();
    }
    /// Graph calls answered so far (faults included).
    pub fn graph_calls(&self) -> u64 {
        self.tenant.graph_calls()
    }
    /// Bearer tokens issued so far.
    pub fn tokens_issued(&self) -> usize {
        self.tenant.tokens_issued()
    }

    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

pub fn router(tenant: Arc<Tenant>) -> Router {
    Router::new()
        .route("/login/{tenant}/oauth2/v2.0/token", post(token::token))
        .route(
            "/graph/{version}/users/{user}/authentication/fido2Methods",
            get(graph::list).post(graph::register),
        )
        .route(
            "/graph/{version}/users/{user}/authentication/fido2Methods/{item}",
            get(graph::creation_options).delete(graph::delete),
        )
        .route("/admin/users", post(state::admin_add_user))
        .route("/admin/users/{user}/passkeys", get(state::admin_passkeys))
        .route(
            "/admin/faults",
            post(state::admin_push_fault).delete(state::admin_clear_faults),
        )
        .route("/admin/challenges/expire", post(state::admin_expire))
        .route("/admin/health", get(|| async { "ok" }))
        .with_state(tenant)
}

/// A fresh random client secret (48 hex digits) for a tenant started in
/// process (the demo), so no fixed secret ships in the binary.
pub fn random_secret() -> String {
    use rand::RngCore;
    let mut raw = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    hex::encode(raw)
}

/// Starts the stand-in on `config.bind` (port 0: any free port).
pub async fn serve(config: StandinConfig) -> anyhow::Result<StandinHandle> {
    let bind = config.bind;
    let tenant = Arc::new(Tenant::new(config)?);
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    let app = router(tenant.clone());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
    });
    tracing::info!(%addr, "simulated Entra ID tenant listening");
    Ok(StandinHandle {
        addr,
        tenant,
        shutdown: Some(tx),
        task: Some(task),
    })
}
