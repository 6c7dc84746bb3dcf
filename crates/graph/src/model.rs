//! The Graph resources of passkey provisioning, shaped as Microsoft's Graph
//! documentation shows them (camelCase, `@odata.type` annotations, binary
//! values in base64url without padding).

use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use serde::{Deserialize, Serialize};

/// `webauthnCredentialCreationOptions`: what creationOptions returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreationOptions {
    /// When the challenge stops being accepted (RFC 3339).
    pub challenge_timeout_date_time: String,
    pub public_key: PublicKeyCreationOptions,
}

/// `webauthnPublicKeyCredentialCreationOptions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublicKeyCreationOptions {
    pub rp: RpEntity,
    pub user: UserEntity,
    /// base64url, no padding.
    pub challenge: String,
    pub pub_key_cred_params: Vec<CredentialParameters>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    #[serde(default)]
    pub exclude_credentials: Vec<CredentialDescriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authenticator_selection: Option<AuthenticatorSelection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpEntity {
    /// The relying party ID (`login.microsoft.com`): the client data origin
    /// is `https://` + this, always taken from the response.
    pub id: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserEntity {
    /// base64url user handle.
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub display_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialParameters {
    #[serde(rename = "type")]
    pub kind: String,
    pub alg: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialDescriptor {
    #[serde(rename = "type")]
    pub kind: String,
    /// base64url; Graph may append a padding-count digit (see [`decode_id`]).
    pub id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transports: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticatorSelection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authenticator_attachment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_resident_key: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_verification: Option<String>,
}

impl PublicKeyCreationOptions {
    pub fn challenge_bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        decode_b64url(&self.challenge)
    }

    pub fn user_id_bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        decode_b64url(&self.user.id)
    }

    /// The credential IDs to exclude, decoded.
    pub fn exclude_ids(&self) -> Vec<Vec<u8>> {
        self.exclude_credentials
            .iter()
            .filter_map(|c| decode_id(&c.id))
            .collect()
    }

    /// The client data origin WebAuthn requires: `https://` + rp.id.
    pub fn origin(&self) -> String {
        format!("https://{}", self.rp.id)
    }
}

/// base64url with or without padding.
pub fn decode_b64url(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .or_else(|_| URL_SAFE.decode(s))
}

pub fn encode_b64url(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// A credential or method ID as Graph writes it: base64url, sometimes with
/// a trailing digit 0, 1 or 2 that counts the padding characters removed
/// (the .NET "UrlTokenEncode" form, documented for excludeCredentials).
pub fn decode_id(s: &str) -> Option<Vec<u8>> {
    if let Some(last) = s.chars().last().filter(|c| matches!(c, '0'..='2')) {
        let body = &s[..s.len() - 1];
        let pad = last as usize - '0' as usize;
        if (body.len() + pad).is_multiple_of(4) {
            let padded = format!("{body}{}", "=".repeat(pad));
            if let Ok(b) = URL_SAFE.decode(padded) {
                return Some(b);
            }
        }
    }
    URL_SAFE_NO_PAD.decode(s).ok()
}

/// The body of POST fido2Methods (a `fido2AuthenticationMethod` with its
/// write-only `publicKeyCredential`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewFido2Method {
    #[serde(rename = "@odata.type", default = "fido2_odata_type")]
    pub odata_type: String,
    pub display_name: String,
    pub public_key_credential: PublicKeyCredential,
}

fn fido2_odata_type() -> String {
    "#microsoft.graph.fido2AuthenticationMethod".into()
}

impl NewFido2Method {
    pub fn new(display_name: impl Into<String>, credential: PublicKeyCredential) -> Self {
        Self {
            odata_type: fido2_odata_type(),
            display_name: display_name.into(),
            public_key_credential: credential,
        }
    }
}

/// `webauthnPublicKeyCredential`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublicKeyCredential {
    /// The credential ID, base64url.
    pub id: String,
    pub response: AttestationResponse,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_extension_results: Option<serde_json::Value>,
}

/// `webauthnAuthenticatorAttestationResponse`: both base64url.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationResponse {
    #[serde(rename = "clientDataJSON")]
    pub client_data_json: String,
    #[serde(rename = "attestationObject")]
    pub attestation_object: String,
}

/// A registered `fido2AuthenticationMethod`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fido2Method {
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    /// POST answers `createdDateTime`, the list example shows `creationDateTime`.
    #[serde(default, alias = "creationDateTime")]
    pub created_date_time: Option<String>,
    #[serde(default)]
    pub aa_guid: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub attestation_certificates: Vec<String>,
    #[serde(default)]
    pub attestation_level: Option<String>,
}

/// A collection answer (`{"value": [...]}`).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Collection<T> {
    pub value: Vec<T>,
}

/// The OAuth2 token endpoint's answer.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct TokenResponse {
    pub access_token: String,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

/// Graph's error body: `{"error": {"code", "message", "innerError"}}`.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(default)]
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ErrorDetail {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

/// The authority's OAuth2 error body.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct OAuthErrorBody {
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub error_description: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_with_padding_digit() {
        // 16 bytes: base64 needs two '=' -> suffix "2".
        let raw = [7u8; 16];
        let plain = encode_b64url(&raw);
        assert_eq!(decode_id(&plain).unwrap(), raw);
        assert_eq!(decode_id(&format!("{plain}2")).unwrap(), raw);
        // The list example's IDs decode.
        assert!(decode_id("-2_GRUg2-HYz6_1YG4YRAQ2").is_some());
        assert!(decode_id("_jpuR-TGZgk6aQCLF3BQjA2").is_some());
    }
}
