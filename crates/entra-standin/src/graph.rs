//! Graph's `/users/{id}/authentication/fido2Methods` as Entra answers it.

// Handlers answer early with a full Response; boxing it buys nothing here.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use rand::RngCore;
use uuid::Uuid;
use webauthn_rs_core::proto::{
    AttestationConveyancePreference, AttestationMetadata, COSEAlgorithm, COSEKeyType,
    RegisterPublicKeyCredential, UserVerificationPolicy,
};

use crate::config::StandinUser;
use crate::state::{base64_url, Pending, StoredPasskey, Tenant};

/// The longest challenge lifetime beta allows (30 days), and v1.0's fixed one.
const MAX_CHALLENGE_MINUTES: i64 = 43_200;
const V1_CHALLENGE_MINUTES: i64 = 5;

pub(crate) fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let request_id = Uuid::new_v4().to_string();
    (
        status,
        Json(serde_json::json!({
            "error": {
                "code": code,
                "message": message,
                "innerError": { "date": now, "request-id": request_id, "client-request-id": request_id }
            }
        })),
    )
        .into_response()
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// What every Graph call goes through: the API version, the bearer token,
/// then any queued fault.
fn admit(t: &Tenant, version: &str, headers: &HeaderMap) -> Result<(), Response> {
    if version != "v1.0" && version != "beta" {
        return Err(graph_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("Invalid version: {version}"),
        ));
    }
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let mut g = t.lock();
    g.graph_calls += 1;
    let valid = g
        .tokens
        .get(token)
        .is_some_and(|until| *until > Instant::now());
    if !valid {
        return Err(graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            if token.is_empty() {
                "Access token is empty."
            } else {
                "Access token has expired or is not yet valid."
            },
        ));
    }
    if let Some(f) = g.faults.pop_front() {
        let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let (code, message) = match f.status {
            429 => ("TooManyRequests", "Too many requests."),
            503 => (
                "serviceNotAvailable",
                "The service is temporarily unavailable.",
            ),
            403 => (
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            ),
            _ => ("generalException", "An injected fault."),
        };
        let mut r = graph_error(
            status,
            f.code.as_deref().unwrap_or(code),
            f.message.as_deref().unwrap_or(message),
        );
        if let Some(s) = f.retry_after {
            r.headers_mut()
                .insert("retry-after", s.to_string().parse().expect("digits"));
        }
        return Err(r);
    }
    Ok(())
}

fn user_or_404(t: &Tenant, user: &str) -> Result<StandinUser, Response> {
    t.find_user(user).ok_or_else(|| {
        graph_error(
            StatusCode::NOT_FOUND,
            "Request_ResourceNotFound",
            &format!("Resource '{user}' does not exist or one of its queried reference-property objects are not present."),
        )
    })
}

fn method_json(p: &StoredPasskey, created_key: &str) -> serde_json::Value {
    serde_json::json!({
        "@odata.type": "#microsoft.graph.fido2AuthenticationMethod",
        "id": p.id,
        "displayName": p.display_name,
        created_key: p.created_date_time,
        "aaGuid": p.aaguid.to_string(),
        "model": "Keyward virtual authenticator",
        "attestationCertificates": [],
        "attestationLevel": "attested",
    })
}

/// `GET .../fido2Methods/creationOptions[(challengeTimeoutInMinutes=N)]`,
/// or one method by ID.
pub(crate) async fn creation_options(
    State(t): State<Arc<Tenant>>,
    Path((version, user, item)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(&t, &version, &headers) {
        return r;
    }
    let u = match user_or_404(&t, &user) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let Some(rest) = item.strip_prefix("creationOptions") else {
        let found = t
            .lock()
            .passkeys
            .iter()
            .find(|p| p.user_id == u.id && p.id == item)
            .cloned();
        return match found {
            Some(p) => Json(method_json(&p, "createdDateTime")).into_response(),
            None => graph_error(
                StatusCode::NOT_FOUND,
                "itemNotFound",
                "The requested method was not found.",
            ),
        };
    };
    let minutes = match rest {
        "" => V1_CHALLENGE_MINUTES,
        p if version == "beta" => {
            let n = p
                .strip_prefix("(challengeTimeoutInMinutes=")
                .and_then(|s| s.strip_suffix(')'))
                .and_then(|s| s.parse::<i64>().ok());
            match n {
                Some(n) if (5..=MAX_CHALLENGE_MINUTES).contains(&n) => n,
                _ => {
                    return graph_error(
                        StatusCode::BAD_REQUEST,
                        "badRequest",
                        "challengeTimeoutInMinutes must be between 5 and 43200.",
                    )
                }
            }
        }
        _ => {
            return graph_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "Resource not found for the segment 'creationOptions'; v1.0 takes no challengeTimeoutInMinutes.",
            )
        }
    };
    if !t.config.self_service_setup {
        return graph_error(
            StatusCode::FORBIDDEN,
            "accessDenied",
            "The FIDO2 authentication method policy does not allow self-service setup, which passkey provisioning requires.",
        );
    }
    let exclude: Vec<Vec<u8>> = t
        .lock()
        .passkeys
        .iter()
        .filter(|p| p.user_id == u.id)
        .filter_map(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&p.credential_id)
                .ok()
        })
        .collect();
    let builder = match t.webauthn.new_challenge_register_builder(
        u.id.as_bytes(),
        &u.user_principal_name,
        &u.display_name,
    ) {
        Ok(b) => b
            .attestation(AttestationConveyancePreference::Direct)
            .user_verification_policy(UserVerificationPolicy::Required)
            .require_resident_key(true)
            .credential_algorithms(vec![COSEAlgorithm::ES256])
            .exclude_credentials(Some(exclude)),
        Err(e) => {
            return graph_error(
                StatusCode::BAD_REQUEST,
                "badRequest",
                &format!("cannot build creation options for this user: {e}"),
            )
        }
    };
    let (ccr, state) = match t.webauthn.generate_challenge_register(builder) {
        Ok(x) => x,
        Err(e) => {
            return graph_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "generalException",
                &e.to_string(),
            )
        }
    };
    let pk = serde_json::to_value(&ccr.public_key).unwrap_or_default();
    let challenge = pk["challenge"].as_str().unwrap_or_default().to_string();
    let expires = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
        + time::Duration::minutes(minutes);
    t.lock().pending.insert(
        challenge.clone(),
        Pending {
            user_id: u.id,
            state,
            expires,
        },
    );
    let exclude_json: Vec<serde_json::Value> = t
        .lock()
        .passkeys
        .iter()
        .filter(|p| p.user_id == u.id)
        .map(|p| {
            serde_json::json!({
                "@odata.type": "#microsoft.graph.webauthnPublicKeyCredentialDescriptor",
                "type": "public-key", "id": p.credential_id, "transports": [] })
        })
        .collect();
    Json(serde_json::json!({
        "@odata.type": "#microsoft.graph.webauthnCredentialCreationOptions",
        "challengeTimeoutDateTime": expires.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "publicKey": {
            "@odata.type": "#microsoft.graph.webauthnPublicKeyCredentialCreationOptions",
            "rp": {
                "@odata.type": "#microsoft.graph.webauthnPublicKeyCredentialRpEntity",
                "id": t.config.rp_id, "name": t.config.rp_name },
            "user": {
                "@odata.type": "#microsoft.graph.webauthnPublicKeyCredentialUserEntity",
                "id": pk["user"]["id"], "displayName": u.display_name, "name": u.user_principal_name },
            "challenge": challenge,
            "pubKeyCredParams": [{
                "@odata.type": "#microsoft.graph.webauthnPublicKeyCredentialParameters",
                "type": "public-key", "alg": -7 }],
            "timeout": 60000,
            "excludeCredentials": exclude_json,
            "authenticatorSelection": {
                "@odata.type": "#microsoft.graph.webauthnAuthenticatorSelectionCriteria",
                "authenticatorAttachment": "cross-platform",
                "requireResidentKey": true,
                "userVerification": "required" },
            "attestation": "direct",
            "extensions": {
                "@odata.type": "#microsoft.graph.webauthnAuthenticationExtensionsClientInputs" }
        }
    }))
    .into_response()
}

fn refuse(message: &str) -> Response {
    graph_error(StatusCode::BAD_REQUEST, "invalidRequest", message)
}

/// `POST .../fido2Methods`: verifies the registration as Entra does.
pub(crate) async fn register(
    State(t): State<Arc<Tenant>>,
    Path((version, user)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = admit(&t, &version, &headers) {
        return r;
    }
    let u = match user_or_404(&t, &user) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return refuse("The request body is not JSON.");
    };
    let display_name = body["displayName"].as_str().unwrap_or("").to_string();
    let cred = &body["publicKeyCredential"];
    let (Some(id), Some(cdj), Some(att)) = (
        cred["id"].as_str(),
        cred["response"]["clientDataJSON"].as_str(),
        cred["response"]["attestationObject"].as_str(),
    ) else {
        return refuse(
            "publicKeyCredential needs id, response.clientDataJSON and response.attestationObject.",
        );
    };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let Ok(cdj_bytes) = b64.decode(cdj.trim_end_matches('=')) else {
        return refuse("clientDataJSON is not base64url.");
    };
    let Ok(client_data) = serde_json::from_slice::<serde_json::Value>(&cdj_bytes) else {
        return refuse("clientDataJSON is not JSON.");
    };
    let challenge = client_data["challenge"].as_str().unwrap_or("").to_string();
    // Single use: the challenge is gone whatever the outcome.
    let Some(pending) = t.lock().pending.remove(&challenge) else {
        return refuse(
            "The challenge in clientDataJSON was not issued by this tenant or was already used.",
        );
    };
    if pending.user_id != u.id {
        return refuse("The challenge was issued for another user.");
    }
    if pending.expires <= time::OffsetDateTime::now_utc() {
        return refuse("The challenge has expired (challengeTimeoutDateTime passed); request new creationOptions.");
    }
    let reg: RegisterPublicKeyCredential = match serde_json::from_value(serde_json::json!({
        "id": id,
        "rawId": id.trim_end_matches('='),
        "response": { "attestationObject": att.trim_end_matches('='), "clientDataJSON": cdj.trim_end_matches('=') },
        "type": "public-key",
        "extensions": {},
    })) {
        Ok(r) => r,
        Err(e) => return refuse(&format!("publicKeyCredential is malformed: {e}")),
    };
    let credential = match t
        .webauthn
        .register_credential(&reg, &pending.state, Some(&t.trust))
    {
        Ok(c) => c,
        Err(e) => {
            let why = format!("{e:?}");
            tracing::info!(reason = %why, "registration refused");
            let message = match why.as_str() {
                w if w.contains("Aaguid") || w.contains("AAGUID") => format!("The authenticator's AAGUID is not allowed by the FIDO2 authentication method policy (key restrictions): {e}"),
                w if w.contains("Attestation") || w.contains("Certificate") || w.contains("Signature") || w.contains("Ca") => {
                    format!("The attestation of the authenticator could not be verified against the trusted roots: {e}")
                }
                "InvalidRPOrigin" => format!("The origin in clientDataJSON is not https://{}: {e}", t.config.rp_id),
                "UserNotVerified" => format!("User verification is required (the UV flag is not set): {e}"),
                "UserNotPresent" => format!("User presence is required (the UP flag is not set): {e}"),
                _ => format!("The registration could not be verified: {e}"),
            };
            return refuse(&message);
        }
    };
    let aaguid = match &credential.attestation.metadata {
        AttestationMetadata::Packed { aaguid } => *aaguid,
        _ => Uuid::nil(),
    };
    let public_key_sec1 = match &credential.cred.key {
        COSEKeyType::EC_EC2(k) => {
            let mut s = vec![0x04];
            s.extend_from_slice(&k.x);
            s.extend_from_slice(&k.y);
            hex::encode(s)
        }
        _ => String::new(),
    };
    let mut raw = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let p = StoredPasskey {
        id: base64_url(&raw),
        user_id: u.id,
        display_name,
        credential_id: base64_url(&credential.cred_id),
        aaguid,
        public_key_sec1,
        created_date_time: now_rfc3339(),
    };
    t.lock().passkeys.push(p.clone());
    tracing::info!(user = %u.user_principal_name, method = %p.id, "passkey registered");
    (
        StatusCode::CREATED,
        Json(method_json(&p, "createdDateTime")),
    )
        .into_response()
}

/// `GET .../fido2Methods`.
pub(crate) async fn list(
    State(t): State<Arc<Tenant>>,
    Path((version, user)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(&t, &version, &headers) {
        return r;
    }
    let u = match user_or_404(&t, &user) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let value: Vec<serde_json::Value> = t
        .lock()
        .passkeys
        .iter()
        .filter(|p| p.user_id == u.id)
        .map(|p| method_json(p, "creationDateTime"))
        .collect();
    Json(serde_json::json!({
        "@odata.context": format!("https://graph.microsoft.com/{version}/$metadata#users('{}')/authentication/fido2Methods", u.id),
        "value": value,
    }))
    .into_response()
}

/// `DELETE .../fido2Methods/{id}`.
pub(crate) async fn delete(
    State(t): State<Arc<Tenant>>,
    Path((version, user, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(&t, &version, &headers) {
        return r;
    }
    let u = match user_or_404(&t, &user) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let mut g = t.lock();
    let before = g.passkeys.len();
    g.passkeys.retain(|p| !(p.user_id == u.id && p.id == id));
    if g.passkeys.len() == before {
        return graph_error(
            StatusCode::NOT_FOUND,
            "itemNotFound",
            "The requested method was not found.",
        );
    }
    StatusCode::NO_CONTENT.into_response()
}
