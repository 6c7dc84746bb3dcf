//! The identity platform's token endpoint (OAuth2 client credentials).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rand::RngCore;
use serde::Deserialize;
use subtle_eq::ct_eq;

use crate::state::{base64_url, Tenant};

#[derive(Deserialize)]
pub(crate) struct TokenRequest {
    #[serde(default)]
    grant_type: String,
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    client_secret: String,
    #[serde(default)]
    scope: String,
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(serde_json::json!({
            "error": error,
            "error_description": description,
            "error_codes": [],
        })),
    )
        .into_response()
}

pub(crate) async fn token(
    State(t): State<Arc<Tenant>>,
    Path(tenant): Path<String>,
    Form(req): Form<TokenRequest>,
) -> Response {
    let c = &t.config;
    if !tenant.eq_ignore_ascii_case(&c.tenant_id) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("AADSTS90002: Tenant '{tenant}' not found."),
        );
    }
    if req.grant_type != "client_credentials" {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "AADSTS70003: The app requested an unsupported grant type.",
        );
    }
    if req.client_id != c.client_id {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            &format!(
                "AADSTS700016: Application with identifier '{}' was not found in the directory.",
                req.client_id
            ),
        );
    }
    if !ct_eq(req.client_secret.as_bytes(), c.client_secret.as_bytes()) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided.",
        );
    }
    if req.scope != c.token_scope {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            &format!(
                "AADSTS1002012: The provided value for scope {} is not valid.",
                req.scope
            ),
        );
    }
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let token = format!("standin.{}", base64_url(&raw));
    t.lock()
        .tokens
        .insert(token.clone(), Instant::now() + c.token_lifetime);
    let secs = c.token_lifetime.as_secs();
    Json(serde_json::json!({
        "token_type": "Bearer",
        "expires_in": secs,
        "ext_expires_in": secs,
        "access_token": token,
    }))
    .into_response()
}

/// Constant-time comparison of secrets.
mod subtle_eq {
    pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}
