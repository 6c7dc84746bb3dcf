//! Passkey-Enabled Services (Microsoft Entra ID): configuration, with the
//! client secret sealed under the KEK, and "Test connection".

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use keyward_domain::passkey::{DEFAULT_AUTHORITY_URL, DEFAULT_GRAPH_URL, DEFAULT_TOKEN_SCOPE};
use keyward_domain::{PasskeyService, PasskeyServiceView, SealedSecret};
use keyward_proto::{PasskeyServiceCreate, PasskeyServiceTest, PasskeyServiceTestReport};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{audit, invalid, store_error};
use crate::app::AppState;
use crate::auth::{perm, Allowed};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::ApiJson;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show))
        .routes(routes!(test))
}

/// The AEAD context of a service's sealed client credential (the client
/// secret, or a certificate credential's private key): binds the ciphertext
/// to its row.
pub fn secret_context(id: Uuid) -> String {
    format!("passkey_service:{id}:client_secret")
}

/// Every Passkey-Enabled Service (secrets never shown).
#[utoipa::path(get, path = "/passkey-services", operation_id = "listPasskeyServices", tag = "passkey-services",
    responses((status = 200, body = Vec<Object>, description = "Services"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    Allowed(_caller, _): Allowed<perm::PasskeyServicesRead>,
) -> ApiResult<Json<Vec<PasskeyServiceView>>> {
    let services = state
        .store
        .list_passkey_services()
        .await
        .map_err(|e| store_error("listing Passkey-Enabled Services", e))?;
    Ok(Json(services.iter().map(view).collect()))
}

/// Configure a Passkey-Enabled Service.
#[utoipa::path(post, path = "/passkey-services", operation_id = "createPasskeyService", tag = "passkey-services",
    request_body = PasskeyServiceCreate,
    responses((status = 201, body = Object, description = "The service, without its secret"), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::PasskeyServicesWrite>,
    ApiJson(req): ApiJson<PasskeyServiceCreate>,
) -> ApiResult<(StatusCode, Json<PasskeyServiceView>)> {
    let id = Uuid::new_v4();
    // Exactly one kind of client credential: a secret, or a certificate and
    // its private key (checked to match; the key is sealed like a secret).
    let (credential, client_certificate_pem) = match (
        req.client_secret.is_empty(),
        req.client_certificate_pem.as_deref(),
        req.client_private_key_pem.as_deref(),
    ) {
        (false, None, None) => (zeroize::Zeroizing::new(req.client_secret.clone()), None),
        (true, Some(cert), Some(key)) => {
            keyward_graph::ClientCertificate::from_pem(cert, key).map_err(|e| {
                ApiError::bad_request("client_certificate_invalid", e.to_string())
                    .field("client_certificate_pem")
            })?;
            (zeroize::Zeroizing::new(key.to_string()), Some(cert.trim().to_string()))
        }
        (true, None, None) => {
            return Err(ApiError::bad_request(
                "client_credential_missing",
                "a client credential is required: client_secret, or client_certificate_pem and client_private_key_pem",
            )
            .field("client_secret"))
        }
        (true, _, _) => {
            return Err(ApiError::bad_request(
                "client_certificate_incomplete",
                "a certificate credential needs both client_certificate_pem and client_private_key_pem",
            )
            .field("client_certificate_pem"))
        }
        (false, _, _) => {
            return Err(ApiError::bad_request(
                "client_credential_ambiguous",
                "give either client_secret or a certificate credential, not both",
            )
            .field("client_secret"))
        }
    };
    let service = PasskeyService {
        id,
        name: req.name,
        tenant_id: req.tenant_id,
        client_id: req.client_id,
        client_secret: SealedSecret(
            state
                .sealer
                .seal(&secret_context(id), credential.as_bytes()),
        ),
        client_certificate_pem,
        authority_url: req
            .authority_url
            .unwrap_or_else(|| DEFAULT_AUTHORITY_URL.into()),
        graph_url: req.graph_url.unwrap_or_else(|| DEFAULT_GRAPH_URL.into()),
        token_scope: req.scope.unwrap_or_else(|| DEFAULT_TOKEN_SCOPE.into()),
        api_version: req
            .api_version
            .unwrap_or_else(|| keyward_domain::passkey::DEFAULT_API_VERSION.into()),
        challenge_timeout_minutes: req
            .challenge_timeout_minutes
            .unwrap_or(keyward_domain::passkey::DEFAULT_CHALLENGE_TIMEOUT_MINUTES),
        user_id_attribute: req.user_id_attribute,
    };
    service.validate().map_err(invalid)?;
    state
        .store
        .create_passkey_service(
            &service,
            &audit(
                &caller,
                "passkey_service.create",
                format!("passkey_service:{}", service.name),
                serde_json::json!({ "tenant_id": service.tenant_id }),
            ),
        )
        .await
        .map_err(|e| store_error("saving the Passkey-Enabled Service", e))?;
    Ok((StatusCode::CREATED, Json(view(&service))))
}

/// The view with the certificate's SHA-256 thumbprint (the domain does not
/// parse certificates).
fn view(service: &PasskeyService) -> PasskeyServiceView {
    let mut v = service.view();
    v.certificate_thumbprint_sha256 = service
        .client_certificate_pem
        .as_deref()
        .and_then(|pem| keyward_graph::assertion::thumbprint_sha256_hex(pem).ok());
    v
}

async fn load(state: &AppState, name: &str) -> ApiResult<PasskeyService> {
    state
        .store
        .get_passkey_service_by_name(name)
        .await
        .map_err(|e| store_error("reading the Passkey-Enabled Service", e))
}

/// One Passkey-Enabled Service by name.
#[utoipa::path(get, path = "/passkey-services/{name}", operation_id = "getPasskeyService", tag = "passkey-services", params(("name" = String, Path)),
    responses((status = 200, body = Object, description = "The service"), (status = 404, body = ErrorBody)))]
async fn show(
    State(state): State<AppState>,
    Allowed(_caller, _): Allowed<perm::PasskeyServicesRead>,
    Path(name): Path<String>,
) -> ApiResult<Json<PasskeyServiceView>> {
    Ok(Json(view(&load(&state, &name).await?)))
}

/// "Test connection": obtains a token by client credentials and lists one
/// user's fido2Methods, with a verdict saying which step failed.
#[utoipa::path(post, path = "/passkey-services/{name}/test", operation_id = "testPasskeyService", tag = "passkey-services", params(("name" = String, Path)),
    request_body = PasskeyServiceTest,
    responses((status = 200, body = PasskeyServiceTestReport), (status = 404, body = ErrorBody)))]
async fn test(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<perm::PasskeyServicesWrite>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<PasskeyServiceTest>,
) -> ApiResult<Json<PasskeyServiceTestReport>> {
    let service = load(&state, &name).await?;
    let secret = state
        .sealer
        .open(&secret_context(service.id), &service.client_secret.0)
        .map_err(|e| ApiError::internal("opening the client secret", e))?;
    let secret = String::from_utf8(secret)
        .map_err(|e| ApiError::internal("reading the client secret", e))?;
    let secret = zeroize::Zeroizing::new(secret);
    let report = crate::graph_probe::test_connection(&service, &secret, &req.user).await;
    let mut draft = audit(
        &caller,
        "passkey_service.test",
        format!("passkey_service:{}", service.name),
        serde_json::json!({ "verdict": report.verdict }),
    );
    if report.verdict != "ok" {
        draft.outcome = keyward_domain::AuditOutcome::Failure;
    }
    state
        .store
        .append_audit(&draft)
        .await
        .map_err(|e| store_error("auditing the test", e))?;
    Ok(Json(report))
}
