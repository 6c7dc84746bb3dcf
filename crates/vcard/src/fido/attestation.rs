//! Packed attestation (WebAuthn section 8.2) for makeCredential.
//!
//! The authenticator only needs something that signs `authData ||
//! clientDataHash` with an attestation key and hands out the certificate
//! chain (x5c): [`AttestationSigner`]. The virtual manufacturer CA lives in
//! the card layer; [`issue_attestation_key`] makes a key and a certificate
//! meeting the packed-attestation certificate requirements (WebAuthn section
//! 8.2.1: version 3; subject C, O, OU "Authenticator Attestation", CN; basic
//! constraints CA false; the id-fido-gen-ce-aaguid extension equal to the
//! AAGUID), so webauthn-rs-core and Entra-like verifiers accept it against
//! the CA root.

use der::asn1::OctetString;
use der::oid::{AssociatedOid, ObjectIdentifier};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{DerSignature, SigningKey};
use serde::{Deserialize, Serialize};
use std::str::FromStr;
use std::time::Duration;
use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::der::Encode;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use x509_cert::time::Validity;

/// COSE ES256, the only attestation algorithm used here.
pub const ATTESTATION_ALG: i64 = keyward_card::ctap::cose::ES256;

/// Signs packed attestation statements.
pub trait AttestationSigner: Send {
    /// DER certificates, the attestation certificate first, then any
    /// intermediates (not the root: verifiers are given the root).
    fn x5c(&self) -> Vec<Vec<u8>>;
    /// ES256 (ASN.1 DER) signature over `message`.
    fn sign(&self, message: &[u8]) -> Vec<u8>;
}

/// A software attestation key with its certificate chain. Serialisable, so
/// a card can keep the same attestation identity across restarts.
#[derive(Clone, Serialize, Deserialize)]
pub struct SoftAttestationKey {
    secret: Vec<u8>,
    chain: Vec<Vec<u8>>,
}

impl std::fmt::Debug for SoftAttestationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftAttestationKey")
            .field("certificates", &self.chain.len())
            .finish()
    }
}

impl SoftAttestationKey {
    /// Wraps an existing P-256 key (32-byte scalar) and its chain.
    pub fn new(secret: &[u8], chain: Vec<Vec<u8>>) -> Result<Self, AttestationError> {
        SigningKey::from_slice(secret).map_err(|_| AttestationError::Key)?;
        Ok(Self {
            secret: secret.to_vec(),
            chain,
        })
    }

    fn key(&self) -> SigningKey {
        SigningKey::from_slice(&self.secret).expect("checked when built")
    }
}

impl AttestationSigner for SoftAttestationKey {
    fn x5c(&self) -> Vec<Vec<u8>> {
        self.chain.clone()
    }
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        let sig: DerSignature = self.key().sign(message);
        sig.as_bytes().to_vec()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AttestationError {
    #[error("invalid attestation key")]
    Key,
    #[error("building the attestation certificate failed: {0}")]
    Certificate(String),
}

/// The FIDO AAGUID certificate extension (id-fido-gen-ce-aaguid), whose
/// value is an OCTET STRING holding the 16-byte AAGUID.
struct AaguidExtension(OctetString);

impl AssociatedOid for AaguidExtension {
    const OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.45724.1.1.4");
}

impl der::Encode for AaguidExtension {
    fn encoded_len(&self) -> der::Result<der::Length> {
        self.0.encoded_len()
    }
    fn encode(&self, writer: &mut impl der::Writer) -> der::Result<()> {
        self.0.encode(writer)
    }
}

impl x509_cert::ext::AsExtension for AaguidExtension {
    fn critical(&self, _: &Name, _: &[x509_cert::ext::Extension]) -> bool {
        // WebAuthn: the extension MUST NOT be marked critical.
        false
    }
}

/// Subject of a virtual attestation certificate (the name says virtual).
pub fn attestation_subject(model: &str) -> String {
    format!("CN=Keyward Virtual {model} FIDO Attestation,OU=Authenticator Attestation,O=Keyward Virtual Devices,C=US")
}

/// Generates an attestation key and its certificate, issued by `ca_key`
/// under the name `ca_name` (RFC 4514 string), valid for 20 years.
/// `chain_tail` (intermediates, without the root) is appended to x5c.
pub fn issue_attestation_key(
    aaguid: [u8; 16],
    model: &str,
    serial: u64,
    ca_key: &SigningKey,
    ca_name: &str,
    chain_tail: Vec<Vec<u8>>,
) -> Result<SoftAttestationKey, AttestationError> {
    let err = |e: &dyn std::fmt::Display| AttestationError::Certificate(e.to_string());
    let key = SigningKey::random(&mut rand::rngs::OsRng);
    let spki = SubjectPublicKeyInfoOwned::from_key(*key.verifying_key()).map_err(|e| err(&e))?;
    let issuer = Name::from_str(ca_name).map_err(|e| err(&e))?;
    let subject = Name::from_str(&attestation_subject(model)).map_err(|e| err(&e))?;
    let mut serial_bytes = serial.to_be_bytes().to_vec();
    serial_bytes.insert(0, 0x01); // positive and non-zero
    let validity =
        Validity::from_now(Duration::from_secs(20 * 365 * 86_400)).map_err(|e| err(&e))?;
    let profile = Profile::Leaf {
        issuer,
        enable_key_agreement: false,
        enable_key_encipherment: false,
    };
    let mut builder = CertificateBuilder::new(
        profile,
        SerialNumber::new(&serial_bytes).map_err(|e| err(&e))?,
        validity,
        subject,
        spki,
        ca_key,
    )
    .map_err(|e| err(&e))?;
    builder
        .add_extension(&AaguidExtension(
            OctetString::new(aaguid.to_vec()).map_err(|e| err(&e))?,
        ))
        .map_err(|e| err(&e))?;
    let cert = builder.build::<DerSignature>().map_err(|e| err(&e))?;
    let mut chain = vec![cert.to_der().map_err(|e| err(&e))?];
    chain.extend(chain_tail);
    Ok(SoftAttestationKey {
        secret: key.to_bytes().to_vec(),
        chain,
    })
}

/// A self-signed root for tests and for callers without a manufacturer CA:
/// returns the CA key, its name and its DER certificate.
pub fn test_ca() -> Result<(SigningKey, String, Vec<u8>), AttestationError> {
    let err = |e: &dyn std::fmt::Display| AttestationError::Certificate(e.to_string());
    let key = SigningKey::random(&mut rand::rngs::OsRng);
    let name =
        "CN=Keyward Virtual Test Attestation Root,O=Keyward Virtual Devices,C=US".to_string();
    let spki = SubjectPublicKeyInfoOwned::from_key(*key.verifying_key()).map_err(|e| err(&e))?;
    let builder = CertificateBuilder::new(
        Profile::Root,
        SerialNumber::new(&[1]).map_err(|e| err(&e))?,
        Validity::from_now(Duration::from_secs(20 * 365 * 86_400)).map_err(|e| err(&e))?,
        Name::from_str(&name).map_err(|e| err(&e))?,
        spki,
        &key,
    )
    .map_err(|e| err(&e))?;
    let cert = builder.build::<DerSignature>().map_err(|e| err(&e))?;
    let der = cert.to_der().map_err(|e| err(&e))?;
    Ok((key, name, der))
}
