//! The identity platform's token endpoint (OAuth2 client credentials).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
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
    #[serde(default)]
    client_assertion_type: String,
    #[serde(default)]
    client_assertion: String,
}

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

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
    headers: HeaderMap,
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
    if !req.client_assertion.is_empty() || !req.client_assertion_type.is_empty() {
        if let Some(r) = check_assertion(&t, &tenant, &headers, &req) {
            return r;
        }
    } else if !ct_eq(req.client_secret.as_bytes(), c.client_secret.as_bytes()) {
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

/// A certificate credential's client assertion, checked against the
/// configured certificate; `aud` must be this endpoint as the client reached it.
/// Some(refusal) when it does not pass.
fn check_assertion(
    t: &Tenant,
    tenant: &str,
    headers: &HeaderMap,
    req: &TokenRequest,
) -> Option<Response> {
    let refuse = |msg: &str| oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", msg);
    if req.client_assertion_type != JWT_BEARER {
        return Some(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "AADSTS50027: client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer.",
        ));
    }
    if !req.client_secret.is_empty() {
        return Some(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "AADSTS90023: Send either client_secret or client_assertion, not both.",
        ));
    }
    let Some(cert) = &t.client_certificate else {
        return Some(refuse(
            "AADSTS700027: Client assertion contains an invalid signature. [Reason - The key was not found.]",
        ));
    };
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let endpoint = format!("http://{host}/login/{tenant}/oauth2/v2.0/token");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let v = crate::assertion::verify(
        cert,
        &req.client_assertion,
        &t.config.client_id,
        &endpoint,
        now,
    );
    let v = match v {
        Ok(v) => v,
        Err(m) => return Some(refuse(&m)),
    };
    if !t.lock().used_jti.insert(v.jti) {
        return Some(refuse(
            "AADSTS700025: The client assertion was already used (jti replayed).",
        ));
    }
    None
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
