//! "Test connection" for a Passkey-Enabled Service: a token by OAuth2 client
//! credentials from the authority, then one user's fido2Methods from Graph
//! (which the passkey permission allows), through the production Graph
//! client (keyward-graph). Each failure says which step and what Entra
//! said; the secret and the token are never logged or returned.

use keyward_domain::PasskeyService;
use keyward_graph::{GraphClient, GraphConfig, GraphError};
use keyward_proto::PasskeyServiceTestReport;

fn report(verdict: &str, message: String, methods: Option<usize>) -> PasskeyServiceTestReport {
    PasskeyServiceTestReport {
        verdict: verdict.into(),
        message,
        fido2_methods: methods,
    }
}

pub async fn test_connection(
    service: &PasskeyService,
    client_secret: &str,
    user: &str,
) -> PasskeyServiceTestReport {
    let mut config = GraphConfig::new(
        &service.authority_url,
        &service.tenant_id,
        &service.client_id,
        client_secret,
        &service.token_scope,
        &service.graph_url,
    );
    config.api_version = keyward_graph::ApiVersion::parse(&service.api_version).unwrap_or_default();
    // A certificate credential: the sealed credential is its private key.
    if let Some(cert) = &service.client_certificate_pem {
        config = match config.with_certificate(cert, client_secret) {
            Ok(c) => c,
            Err(e) => return report("token_failed", e.to_string(), None),
        };
    }
    let client = match GraphClient::new(config) {
        Ok(c) => c,
        Err(e) => return report("token_failed", e.to_string(), None),
    };
    match client.list(user).await {
        Ok(methods) => report(
            "ok",
            format!(
                "token obtained; user {user} has {} passkey(s)",
                methods.len()
            ),
            Some(methods.len()),
        ),
        // The token step failed: the authority refused or was unreachable.
        Err(e @ GraphError::Token { .. }) => report("token_failed", e.to_string(), None),
        Err(GraphError::Network { what, message }) if what == "the authority" => report(
            "token_failed",
            format!(
                "cannot reach the authority {}: {message}",
                service.authority_url
            ),
            None,
        ),
        Err(e) => report("graph_failed", e.to_string(), None),
    }
}
