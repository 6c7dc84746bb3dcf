//! Shared server state and the router: every route of the API, health,
//! metrics and the OpenAPI document, with the layers around them.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{middleware, Router};
use keyward_store::Store;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::secrets::{Kek, Sealed, TokenHasher};

/// Everything a request handler may need. Cheap to clone.
#[derive(Clone)]
pub struct AppState(pub(crate) Arc<Inner>);

pub struct Inner {
    pub store: Store,
    pub sealer: Sealed,
    pub tokens: TokenHasher,
    pub metrics: Arc<Metrics>,
    /// Sign-in, enrollment and pairing limits, password hashes at once.
    pub limits: crate::limits::Limits,
    pub config: Config,
    /// The OpenAPI document, rendered once at start-up.
    pub openapi_json: String,
    /// The embedded certificate authority.
    pub pki: Arc<crate::pki::Pki>,
    /// Wakes the workstation agents' long-polls.
    pub agents: crate::agents::Hub,
    /// The management-key master key, read and unsealed at its first use
    /// (created once, then only read back: safe to keep across requests).
    pub master_key: tokio::sync::OnceCell<zeroize::Zeroizing<Vec<u8>>>,
    /// The attestation roots and intermediates, read at start.
    pub attestation_anchors: crate::attestation::Anchors,
    /// One Graph client per Passkey-Enabled Service (with the fingerprint of
    /// the configuration it was built from), so its token cache lives until
    /// the token expires instead of one call.
    pub graph_clients: crate::entra::GraphClients,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Opens (or at first start creates) the CA, then the state.
    pub async fn new(store: Store, kek: &Kek, config: Config) -> anyhow::Result<Self> {
        let sealer = Sealed::new(kek);
        let pki = crate::pki::Pki::load_or_create(&store, &sealer, &config.public_url()).await?;
        let state = AppState(Arc::new(Inner {
            pki,
            agents: Default::default(),
            master_key: Default::default(),
            attestation_anchors: crate::attestation::Anchors::read(&config)?,
            graph_clients: Default::default(),
            store,
            sealer,
            tokens: TokenHasher::new(kek),
            metrics: Arc::new(Metrics::default()),
            limits: Default::default(),
            config,
            openapi_json: crate::openapi::document()
                .to_pretty_json()
                .expect("OpenAPI serialises"),
        }));
        crate::agents::follow_changes(&state);
        Ok(state)
    }
}

pub fn router(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    let metrics = state.metrics.clone();
    let request_timeout = Duration::from_secs(state.config.request_timeout_seconds);
    // Browsers that reached this server over HTTPS keep to it.
    let hsts = crate::sign_in::served_securely(&state).then(|| {
        SetResponseHeaderLayer::if_not_present(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        )
    });
    let (api, _doc) = crate::api::router().split_for_parts();
    let router = Router::new()
        .nest("/api/v1", api)
        .route("/api/v1/openapi.json", get(crate::openapi::serve))
        .route("/healthz", get(healthz))
        .merge(crate::pki::routes())
        .merge(crate::web::router())
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(tower::util::option_layer(hsts))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .layer(middleware::from_fn_with_state(
            metrics,
            crate::metrics::track,
        ));
    router.with_state(state)
}

async fn healthz(axum::extract::State(state): axum::extract::State<AppState>) -> impl IntoResponse {
    match tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ok\n").into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "store unreachable\n").into_response(),
    }
}

/// `/metrics` on the main address: only with the configured token (the
/// metrics listener of its own serves them without one). Anyone else gets
/// the same 404 as for a route that does not exist.
async fn metrics_text(
    axum::extract::State(state): axum::extract::State<AppState>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    let sent = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let allowed = match (&state.config.metrics_token, sent) {
        (Some(want), Some(sent)) => {
            use subtle::ConstantTimeEq;
            bool::from(want.as_bytes().ct_eq(sent.as_bytes()))
        }
        _ => false,
    };
    if !allowed {
        return not_found().await.into_response();
    }
    metrics_body(&state).into_response()
}

fn metrics_body(state: &AppState) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// The router of the metrics listener: `/metrics` and nothing else.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(
                |axum::extract::State(state): axum::extract::State<AppState>| async move {
                    metrics_body(&state)
                },
            ),
        )
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("route")
}
