//! Graph and authority failures as a person needs to read them: which
//! permission is missing, which tenant policy refused, what to change.
//! Messages never carry the client secret or a token.

use crate::model::{ErrorBody, OAuthErrorBody};

/// The permissions that allow passkey provisioning (application permissions,
/// admin consent): the least privileged first.
pub const PASSKEY_PERMISSIONS: &str =
    "UserAuthMethod-Passkey.ReadWrite.All or UserAuthenticationMethod.ReadWrite.All";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    /// The authority refused the client credentials (wrong tenant, client ID,
    /// secret, or scope).
    #[error("the authority refused the client credentials (HTTP {status}, {code}): {message}")]
    Token {
        status: u16,
        code: String,
        message: String,
    },
    #[error("user {user} not found in the tenant")]
    UserNotFound { user: String },
    #[error("passkey {id} of user {user} not found")]
    MethodNotFound { user: String, id: String },
    #[error("permission missing: grant the application {PASSKEY_PERMISSIONS} with admin consent (Graph said: {message})")]
    PermissionMissing { message: String },
    #[error("the tenant's passkey (FIDO2) policy does not allow self-service setup, which passkey provisioning needs: enable \"Allow self-service setup\" (Graph said: {message})")]
    SelfServiceNotAllowed { message: String },
    /// Entra refused the registration itself: attestation, AAGUID allow-list,
    /// an expired or reused challenge, a bad signature.
    #[error("Entra ID refused the passkey registration ({code}): {message}")]
    RegistrationRefused { code: String, message: String },
    #[error("Graph refused the access token (HTTP 401): check the token scope and the Graph URL ({message})")]
    Unauthorized { message: String },
    /// Still throttled (429) or unavailable (503) after the retries allowed.
    #[error("Graph is throttling or unavailable (HTTP {status}) after {attempts} attempts; try again later")]
    Throttled { status: u16, attempts: u32 },
    #[error("Graph answered HTTP {status} ({code}): {message}")]
    Unexpected {
        status: u16,
        code: String,
        message: String,
    },
    #[error("cannot reach {what}: {message}")]
    Network { what: String, message: String },
    #[error("unexpected answer from {what}: {message}")]
    Decode { what: String, message: String },
    #[error("invalid Graph client configuration: {0}")]
    Config(String),
}

impl GraphError {
    /// A stable code for APIs and reports.
    pub fn code(&self) -> &'static str {
        match self {
            GraphError::Token { .. } => "graph_token_refused",
            GraphError::UserNotFound { .. } => "graph_user_not_found",
            GraphError::MethodNotFound { .. } => "graph_method_not_found",
            GraphError::PermissionMissing { .. } => "graph_permission_missing",
            GraphError::SelfServiceNotAllowed { .. } => "graph_self_service_not_allowed",
            GraphError::RegistrationRefused { .. } => "graph_registration_refused",
            GraphError::Unauthorized { .. } => "graph_unauthorized",
            GraphError::Throttled { .. } => "graph_throttled",
            GraphError::Unexpected { .. } => "graph_error",
            GraphError::Network { .. } => "graph_unreachable",
            GraphError::Decode { .. } => "graph_bad_answer",
            GraphError::Config(_) => "graph_config",
        }
    }

    /// Worth retrying later as is (the same request may succeed).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            GraphError::Throttled { .. } | GraphError::Network { .. }
        )
    }
}

/// What a Graph call was, to classify its errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    CreationOptions,
    Register,
    List,
    Delete,
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("").trim();
    // Bound what an error message can carry.
    line.chars().take(400).collect()
}

/// Classifies a failed Graph answer.
pub(crate) fn classify(call: Call, status: u16, body: &[u8], user: &str, id: &str) -> GraphError {
    let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let code = parsed.error.code;
    let message = first_line(&parsed.error.message);
    let lower = message.to_ascii_lowercase();
    match status {
        404 if call == Call::Delete && !lower.contains("user") => GraphError::MethodNotFound {
            user: user.into(),
            id: id.into(),
        },
        404 => GraphError::UserNotFound { user: user.into() },
        400 if code == "Request_ResourceNotFound" => GraphError::UserNotFound { user: user.into() },
        401 => GraphError::Unauthorized { message },
        403 if lower.contains("self-service") || lower.contains("self service") => {
            GraphError::SelfServiceNotAllowed { message }
        }
        403 if call == Call::Register
            && (lower.contains("attestation") || lower.contains("aaguid")) =>
        {
            GraphError::RegistrationRefused { code, message }
        }
        403 => GraphError::PermissionMissing { message },
        400 | 409 | 422 if call == Call::Register => {
            GraphError::RegistrationRefused { code, message }
        }
        _ => GraphError::Unexpected {
            status,
            code,
            message,
        },
    }
}

/// Classifies a failed token request.
pub(crate) fn classify_token(status: u16, body: &[u8]) -> GraphError {
    let parsed: OAuthErrorBody = serde_json::from_slice(body).unwrap_or_default();
    GraphError::Token {
        status,
        code: if parsed.error.is_empty() {
            "no_error_code".into()
        } else {
            parsed.error
        },
        message: if parsed.error_description.is_empty() {
            "no access_token in the answer".into()
        } else {
            first_line(&parsed.error_description)
        },
    }
}
