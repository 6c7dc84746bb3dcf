//! Keyward's certificate authority logic, without I/O.
//!
//! - [`EmbeddedCa`]: a root (P-384) and an issuing CA (P-256), created at first start,
//!   plus a content-signing key for PIV CHUIDs; serialisable to PKCS#8 and
//!   DER parts that the server seals under its KEK.
//! - [`LeafRequest`]: a certificate for a key generated on a device, built
//!   from a device policy's PKI application template and the user
//!   ([`template`]): subject from the template, UPN otherName for smart card
//!   logon, rfc822Name from mail, the SID extension (1.3.6.1.4.1.311.25.2)
//!   when the user has an `objectSid`, key usage and extended key usage,
//!   validity, a random serial of 128 bits.
//! - [`crl`]: signed CRLs of the issuing CA.
//!
//! The [`CertificateAuthority`] trait is what the issuance engine talks to,
//! so external CAs (EST, ACME, Microsoft AD CS) can stand in later.

pub mod attestation;
pub mod chuid;
pub mod crl;
pub mod embedded;
pub mod ext;
pub mod fido_attestation;
pub mod ocsp;
pub mod template;

pub use crl::Revoked;
pub use embedded::{EmbeddedCa, EmbeddedCaParts};
pub use template::LeafRequest;

use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate template: {0}")]
    Template(#[from] keyward_domain::ValidationError),
    #[error("the device's public key is not a valid SubjectPublicKeyInfo: {0}")]
    PublicKey(String),
    #[error("building the certificate failed: {0}")]
    Build(String),
    #[error("stored CA material is corrupt: {0}")]
    Corrupt(String),
}

pub(crate) fn build_err(e: impl std::fmt::Display) -> PkiError {
    PkiError::Build(e.to_string())
}

/// A certificate as issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    pub der: Vec<u8>,
    /// Serial number, hex (lower case, no leading zeros stripped).
    pub serial_hex: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub subject: String,
}

/// What issuance needs from a CA. The embedded CA implements it; external
/// CAs (EST, ACME, AD CS) will too.
pub trait CertificateAuthority {
    /// The name device policies refer to (`certificate_authority`).
    fn name(&self) -> &str;
    /// Certifies `request` (a key generated on a device) at `now`.
    fn issue(
        &self,
        request: &LeafRequest,
        now: OffsetDateTime,
    ) -> Result<IssuedCertificate, PkiError>;
    /// The chain above issued certificates, issuing CA first, root last (DER).
    fn chain_der(&self) -> Vec<Vec<u8>>;
}
