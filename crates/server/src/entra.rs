//! The Entra ID connector: Graph clients per Passkey-Enabled Service, and
//! what device sessions ask of Graph (creationOptions, the registration) and
//! what follows them (a passkey deleted again when its session failed, the
//! passkeys of a recycled device).

use std::time::Instant;

use keyward_domain::{PasskeyService, User};
use keyward_engine::fido::{self, CreationRequest, Registration};
use keyward_engine::{Failure, FailureCode, PasskeyRecord, RegisteredMethod, Step};
use keyward_graph::{GraphClient, GraphConfig, GraphError, NewFido2Method};
use keyward_store::Credential;
use uuid::Uuid;

use crate::api::store_error;
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};

/// The Graph clients the server keeps, by Passkey-Enabled Service: the
/// fingerprint of the configuration each was built from, and the client.
pub type GraphClients =
    std::sync::Mutex<std::collections::HashMap<Uuid, ([u8; 32], std::sync::Arc<GraphClient>)>>;

/// The production Graph client for a Passkey-Enabled Service.
async fn graph_client(
    state: &AppState,
    service_id: Uuid,
) -> ApiResult<std::sync::Arc<GraphClient>> {
    Ok(graph_client_and_service(state, service_id).await?.0)
}

/// What a Graph client is built from: a changed service (URLs, IDs, API
/// version, the sealed secret or key, the certificate) gets a new client.
fn service_fingerprint(service: &PasskeyService) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [
        service.authority_url.as_bytes(),
        service.tenant_id.as_bytes(),
        service.client_id.as_bytes(),
        service.token_scope.as_bytes(),
        service.graph_url.as_bytes(),
        service.api_version.as_bytes(),
        &service.client_secret.0,
        service
            .client_certificate_pem
            .as_deref()
            .unwrap_or("")
            .as_bytes(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// The client and the service (its challenge timeout and user matching).
/// The client is kept per service, so its token is reused until it expires.
async fn graph_client_and_service(
    state: &AppState,
    service_id: Uuid,
) -> ApiResult<(std::sync::Arc<GraphClient>, PasskeyService)> {
    let service: PasskeyService = state
        .store
        .get_passkey_service(service_id)
        .await
        .map_err(|e| store_error("reading the Passkey-Enabled Service", e))?;
    let fingerprint = service_fingerprint(&service);
    if let Some((seen, client)) = state
        .graph_clients
        .lock()
        .expect("graph clients lock")
        .get(&service.id)
    {
        if *seen == fingerprint {
            return Ok((client.clone(), service));
        }
    }
    let secret = zeroize::Zeroizing::new(
        state
            .sealer
            .open(
                &crate::api::passkey_services::secret_context(service.id),
                &service.client_secret.0,
            )
            .map_err(|e| ApiError::internal("opening the client secret", e))?,
    );
    let secret = std::str::from_utf8(&secret)
        .map_err(|e| ApiError::internal("reading the client secret", e))?;
    let mut config = GraphConfig::new(
        &service.authority_url,
        &service.tenant_id,
        &service.client_id,
        secret,
        &service.token_scope,
        &service.graph_url,
    );
    config.api_version = keyward_graph::ApiVersion::parse(&service.api_version).unwrap_or_default();
    // A certificate credential: the sealed credential is its private key.
    if let Some(cert) = &service.client_certificate_pem {
        config = config
            .with_certificate(cert, secret)
            .map_err(|e| ApiError::internal("the certificate credential", e))?;
    }
    let client = std::sync::Arc::new(
        GraphClient::new(config).map_err(|e| ApiError::internal("the Graph client", e))?,
    );
    state
        .graph_clients
        .lock()
        .expect("graph clients lock")
        .insert(service.id, (fingerprint, client.clone()));
    Ok((client, service))
}

/// A Graph error ends the attempt with its code (`graph_throttled`, …).
fn graph_failure(step: Step, e: &GraphError) -> Failure {
    let code = e.code().parse().unwrap_or(FailureCode::GraphError);
    Failure::new(code, step, e.to_string())
}

/// The creationOptions for the session's user, as the service matches
/// them (UPN, or an object ID attribute): the user as Entra knows them,
/// and what the device needs. A failure ends the attempt.
pub(crate) async fn creation_options(
    state: &AppState,
    session: Uuid,
    service_id: Uuid,
    user: &User,
) -> ApiResult<Result<(String, CreationRequest), Failure>> {
    let (graph, service) = graph_client_and_service(state, service_id).await?;
    let Some(entra_user) = service.entra_user(user) else {
        return Ok(Err(Failure::new(
            FailureCode::EntraUserUnknown,
            fido::STEP_REGISTER,
            format!(
                "user {} has no value for the attribute {} that holds their Entra object ID",
                user.login,
                service.user_id_attribute.as_deref().unwrap_or("")
            ),
        )));
    };
    let started = Instant::now();
    let timeout = Some(service.challenge_timeout_minutes);
    let options = match graph.creation_options(&entra_user, timeout).await {
        Ok(o) => o,
        Err(e) => return Ok(Err(graph_failure(fido::STEP_REGISTER, &e))),
    };
    tracing::info!(
        session = %session,
        graph_ms = started.elapsed().as_millis() as u64,
        "passkey creationOptions fetched"
    );
    Ok(creation_request(&options).map(|r| (entra_user, r)))
}

/// POSTs the registration; answers the method Graph created.
pub(crate) async fn register(
    state: &AppState,
    session: Uuid,
    service_id: Uuid,
    entra_user: &str,
    display_name: String,
    reg: &Registration,
) -> ApiResult<Result<RegisteredMethod, Failure>> {
    let graph = graph_client(state, service_id).await?;
    let body = NewFido2Method::new(
        display_name,
        keyward_graph::PublicKeyCredential {
            id: fido::b64url(&reg.credential_id),
            response: keyward_graph::AttestationResponse {
                client_data_json: fido::b64url(&reg.client_data_json),
                attestation_object: fido::b64url(&reg.attestation_object),
            },
            client_extension_results: Some(serde_json::json!({})),
        },
    );
    let started = Instant::now();
    let method = match graph.register(entra_user, &body).await {
        Ok(m) => m,
        Err(e) => return Ok(Err(graph_failure(fido::STEP_REGISTER, &e))),
    };
    tracing::info!(
        session = %session,
        graph_ms = started.elapsed().as_millis() as u64,
        "passkey registered with the Passkey-Enabled Service"
    );
    Ok(Ok(RegisteredMethod {
        id: method.id,
        aaguid: method.aa_guid,
    }))
}

fn creation_request(o: &keyward_graph::CreationOptions) -> Result<CreationRequest, Failure> {
    let pk = &o.public_key;
    let bad = |what: &str| {
        Failure::new(
            FailureCode::GraphBadAnswer,
            fido::STEP_REGISTER,
            format!("creationOptions: {what} is not base64url"),
        )
    };
    Ok(CreationRequest {
        rp_id: pk.rp.id.clone(),
        rp_name: pk.rp.name.clone(),
        user_id: pk.user_id_bytes().map_err(|_| bad("user.id"))?,
        user_name: pk.user.name.clone(),
        user_display_name: pk.user.display_name.clone(),
        challenge: pk.challenge_bytes().map_err(|_| bad("challenge"))?,
        algorithms: pk.pub_key_cred_params.iter().map(|p| p.alg).collect(),
        exclude_credentials: pk.exclude_ids(),
    })
}

/// Deletes passkeys registered in a step whose end could not be recorded.
pub(crate) async fn compensate(state: &AppState, records: &[PasskeyRecord]) {
    for r in records {
        match delete_passkey(state, r).await {
            Ok(()) => tracing::info!(graph_id = %r.graph_id, "unrecorded passkey deleted again"),
            Err(e) => {
                tracing::warn!(graph_id = %r.graph_id, error = %e, "an unrecorded passkey could not be deleted")
            }
        }
    }
}

/// The passkey record of a credential of kind `passkey`.
pub(crate) fn passkey_record(c: &Credential) -> Option<PasskeyRecord> {
    if c.kind != "passkey" {
        return None;
    }
    serde_json::from_slice(c.der.as_deref()?).ok()
}

/// Compensation: deletes a registered passkey at Graph (a cancelled or
/// failed attempt, a recycled device). Already gone counts as done. The
/// error is a message without secrets.
pub(crate) async fn delete_passkey(state: &AppState, record: &PasskeyRecord) -> Result<(), String> {
    let graph = graph_client(state, record.passkey_service_id)
        .await
        .map_err(|_| "the Passkey-Enabled Service cannot be used".to_string())?;
    graph
        .delete(&record.entra_user, &record.graph_id)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
