//! Certificate credentials: the signed client assertion (RFC 7523, as
//! Microsoft's identity platform takes it) sent instead of a client secret.
//!
//! The assertion is a JWT signed with PS256 (RSA-PSS, SHA-256): header `alg`,
//! `typ` JWT and `x5t#S256` (base64url SHA-256 of the certificate DER);
//! claims `aud` = the token endpoint, `iss` = `sub` = the client ID, a random
//! `jti`, `nbf`/`iat` now and `exp` ten minutes later.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::signature::{RandomizedSigner, SignatureEncoding};
use rsa::{RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256};
use x509_cert::der::{DecodePem, Encode};
use x509_cert::Certificate;

use crate::error::GraphError;

/// The `client_assertion_type` of a JWT client assertion.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long an assertion is valid (Microsoft accepts up to 10 minutes).
const LIFETIME_SECS: u64 = 600;

fn config(msg: &str) -> GraphError {
    GraphError::Config(msg.into())
}

/// The certificate's DER (from one PEM CERTIFICATE block) and its RSA public key.
pub fn parse_certificate(cert_pem: &str) -> Result<(Vec<u8>, RsaPublicKey), GraphError> {
    let cert = Certificate::from_pem(cert_pem.trim().as_bytes())
        .map_err(|_| config("the client certificate is not a PEM X.509 certificate"))?;
    let der = cert
        .to_der()
        .map_err(|_| config("the client certificate cannot be encoded"))?;
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|_| config("the client certificate's public key cannot be encoded"))?;
    let public = RsaPublicKey::from_public_key_der(&spki).map_err(|_| {
        config("the client certificate's key is not RSA (Entra ID takes RS256/PS256 certificates)")
    })?;
    Ok((der, public))
}

/// base64url(SHA-256(certificate DER)): the `x5t#S256` header value.
pub fn x5t_s256(cert_der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(cert_der))
}

/// The certificate's SHA-256 thumbprint in hex (as the Entra portal shows it).
pub fn thumbprint_sha256_hex(cert_pem: &str) -> Result<String, GraphError> {
    let (der, _) = parse_certificate(cert_pem)?;
    Ok(Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect())
}

/// A certificate credential: the certificate and its RSA private key.
#[derive(Clone)]
pub struct ClientCertificate {
    cert_der: Vec<u8>,
    key: RsaPrivateKey,
}

impl std::fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("x5t#S256", &x5t_s256(&self.cert_der))
            .finish_non_exhaustive()
    }
}

impl ClientCertificate {
    /// Parses the certificate and the private key (PKCS#8 or PKCS#1 PEM) and
    /// checks that the key is the certificate's. Errors never quote the key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, GraphError> {
        let (cert_der, public) = parse_certificate(cert_pem)?;
        let key_pem = key_pem.trim();
        let key = RsaPrivateKey::from_pkcs8_pem(key_pem)
            .or_else(|_| RsaPrivateKey::from_pkcs1_pem(key_pem))
            .map_err(|_| {
                config("the client private key is not an RSA private key in PEM (PKCS#8 or PKCS#1)")
            })?;
        if key.to_public_key() != public {
            return Err(config(
                "the client private key does not match the client certificate",
            ));
        }
        Ok(ClientCertificate { cert_der, key })
    }

    pub fn x5t_s256(&self) -> String {
        x5t_s256(&self.cert_der)
    }

    /// A fresh client assertion for `client_id` at the token endpoint `aud`.
    pub fn assertion(&self, client_id: &str, aud: &str) -> Result<String, GraphError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut jti = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut jti);
        let header = serde_json::json!({
            "alg": "PS256",
            "typ": "JWT",
            "x5t#S256": self.x5t_s256(),
        });
        let claims = serde_json::json!({
            "aud": aud,
            "iss": client_id,
            "sub": client_id,
            "jti": URL_SAFE_NO_PAD.encode(jti),
            "nbf": now,
            "iat": now,
            "exp": now + LIFETIME_SECS,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signer = rsa::pss::BlindedSigningKey::<Sha256>::new(self.key.clone());
        let sig = signer
            .try_sign_with_rng(&mut rand::rngs::OsRng, signing_input.as_bytes())
            .map_err(|_| config("signing the client assertion failed"))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(sig.to_bytes())
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed RSA certificate and key from the openssl CLI.
    fn openssl_rsa() -> (String, String) {
        let dir = std::env::temp_dir().join(format!(
            "keyward-graph-assertion-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (key, cert) = (dir.join("k.pem"), dir.join("c.pem"));
        let out = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=assertion-test", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("the openssl CLI");
        assert!(out.status.success());
        let pems = (
            std::fs::read_to_string(&cert).unwrap(),
            std::fs::read_to_string(&key).unwrap(),
        );
        std::fs::remove_dir_all(&dir).unwrap();
        pems
    }

    fn json_part(s: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(s).unwrap()).unwrap()
    }

    #[test]
    fn assertion_header_claims_and_signature() {
        let (cert, key) = openssl_rsa();
        let c = ClientCertificate::from_pem(&cert, &key).unwrap();
        let aud = "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token";
        let a = c.assertion("client-1", aud).unwrap();
        let parts: Vec<&str> = a.split('.').collect();
        assert_eq!(parts.len(), 3);
        let (h, claims) = (json_part(parts[0]), json_part(parts[1]));
        assert_eq!(h["alg"], "PS256");
        assert_eq!(h["typ"], "JWT");
        let (der, public) = parse_certificate(&cert).unwrap();
        assert_eq!(h["x5t#S256"], x5t_s256(&der));
        assert_eq!(claims["aud"], aud);
        assert_eq!(claims["iss"], "client-1");
        assert_eq!(claims["sub"], "client-1");
        let (iat, exp) = (
            claims["iat"].as_u64().unwrap(),
            claims["exp"].as_u64().unwrap(),
        );
        assert_eq!(exp - iat, 600);
        assert_eq!(claims["nbf"], claims["iat"]);
        assert_ne!(
            claims["jti"],
            json_part(
                c.assertion("client-1", aud)
                    .unwrap()
                    .split('.')
                    .nth(1)
                    .unwrap()
            )["jti"]
        );
        use rsa::signature::Verifier;
        let sig =
            rsa::pss::Signature::try_from(URL_SAFE_NO_PAD.decode(parts[2]).unwrap().as_slice())
                .unwrap();
        rsa::pss::VerifyingKey::<Sha256>::new(public)
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .unwrap();
        // Debug never shows the key.
        assert!(!format!("{c:?}").contains(&key[40..80]));
    }

    #[test]
    fn the_key_must_match_the_certificate() {
        let (cert, _) = openssl_rsa();
        let (_, other_key) = openssl_rsa();
        let e = ClientCertificate::from_pem(&cert, &other_key).unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");
        assert!(!e.to_string().contains("PRIVATE"));
        assert!(ClientCertificate::from_pem("junk", &other_key).is_err());
        assert!(ClientCertificate::from_pem(&cert, "junk").is_err());
    }
}
