//! Verifies a certificate credential's client assertion as Entra does: the
//! JWT's signature with the configured certificate's key (PS256 or RS256),
//! `x5t#S256` naming that certificate, `aud` = this token endpoint,
//! `iss` = `sub` = the client ID, not expired, and a `jti` never seen before.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use rsa::RsaPublicKey;
use sha2::{Digest, Sha256};
use x509_cert::der::{DecodePem, Encode};
use x509_cert::Certificate;

/// The configured certificate: its `x5t#S256` and RSA public key.
pub(crate) struct TrustedCertificate {
    x5t_s256: String,
    key: RsaPublicKey,
}

impl TrustedCertificate {
    pub(crate) fn from_pem(pem: &str) -> anyhow::Result<Self> {
        let cert = Certificate::from_pem(pem.trim().as_bytes())?;
        let der = cert.to_der()?;
        let spki = cert.tbs_certificate.subject_public_key_info.to_der()?;
        let key = RsaPublicKey::from_public_key_der(&spki)
            .map_err(|e| anyhow::anyhow!("the client certificate's key is not RSA: {e}"))?;
        Ok(TrustedCertificate {
            x5t_s256: URL_SAFE_NO_PAD.encode(Sha256::digest(der)),
            key,
        })
    }
}

/// The claims that passed; the caller records `jti` (single use).
pub(crate) struct Verified {
    pub jti: String,
}

fn part(s: &str) -> Result<serde_json::Value, String> {
    let raw = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| "AADSTS50027: JWT token is invalid or malformed.".to_string())?;
    serde_json::from_slice(&raw)
        .map_err(|_| "AADSTS50027: JWT token is invalid or malformed.".to_string())
}

/// Checks `assertion`; Err is an AADSTS-like message for `invalid_client`.
pub(crate) fn verify(
    cert: &TrustedCertificate,
    assertion: &str,
    client_id: &str,
    token_endpoint: &str,
    now: u64,
) -> Result<Verified, String> {
    let mut parts = assertion.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("AADSTS50027: JWT token is invalid or malformed.".into());
    };
    let header = part(h)?;
    let claims = part(c)?;
    let sig = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| "AADSTS50027: JWT token is invalid or malformed.".to_string())?;
    if header["x5t#S256"].as_str() != Some(cert.x5t_s256.as_str()) {
        return Err(format!(
            "AADSTS700027: The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Thumbprint of key used by client: '{}']",
            header["x5t#S256"].as_str().unwrap_or("")
        ));
    }
    let signed = format!("{h}.{c}");
    let ok = match header["alg"].as_str() {
        Some("PS256") => rsa::pss::Signature::try_from(sig.as_slice())
            .ok()
            .is_some_and(|sig| {
                rsa::pss::VerifyingKey::<Sha256>::new(cert.key.clone())
                    .verify(signed.as_bytes(), &sig)
                    .is_ok()
            }),
        Some("RS256") => rsa::pkcs1v15::Signature::try_from(sig.as_slice())
            .ok()
            .is_some_and(|sig| {
                rsa::pkcs1v15::VerifyingKey::<Sha256>::new(cert.key.clone())
                    .verify(signed.as_bytes(), &sig)
                    .is_ok()
            }),
        _ => {
            return Err(
                "AADSTS5002730: Invalid JWT token. Unsupported key for the signing algorithm."
                    .into(),
            )
        }
    };
    if !ok {
        return Err("AADSTS7000274: Client assertion contains an invalid signature.".into());
    }
    if claims["aud"].as_str() != Some(token_endpoint) {
        return Err(format!(
            "AADSTS700212: No matching federated identity record found for presented assertion audience '{}'.",
            claims["aud"].as_str().unwrap_or("")
        ));
    }
    if claims["iss"].as_str() != Some(client_id) || claims["sub"].as_str() != Some(client_id) {
        return Err(
            "AADSTS700023: Client assertion audience claim does not match Realm issuer; iss and sub must be the client ID."
                .into(),
        );
    }
    let exp = claims["exp"].as_u64().unwrap_or(0);
    if exp <= now {
        return Err("AADSTS700024: Client assertion is not within its valid time range.".into());
    }
    if claims["nbf"].as_u64().is_some_and(|nbf| nbf > now + 300) {
        return Err("AADSTS700024: Client assertion is not within its valid time range.".into());
    }
    let jti = claims["jti"]
        .as_str()
        .filter(|j| !j.is_empty())
        .ok_or_else(|| "AADSTS700025: Client assertion has no jti claim.".to_string())?;
    Ok(Verified { jti: jti.into() })
}
