//! YubiKey PIV attestation, verified without I/O.
//!
//! A YubiKey proves that a key was generated on the device with ATTEST
//! (INS F9, P1 = the slot): it answers an X.509 *attestation certificate*
//! for the slot's public key, signed by the device's own attestation key
//! (slot F9). The certificate of that key (the *device attestation
//! certificate*, PIV object 5FFF01) is signed by the manufacturer: Yubico's
//! PIV root (for newer devices through an intermediate, "Yubico PIV
//! Attestation B 1"), or the virtual manufacturer CA of `keyward vcard`.
//!
//! # API
//!
//! ```ignore
//! use keyward_pki::attestation::{verify_piv_attestation, PivAttestationInput};
//! let verified = verify_piv_attestation(&PivAttestationInput {
//!     attestation_der: &attest_response_data,        // ATTEST (00 F9 9A 00) response
//!     device_cert_der: &device_cert,                 // 5FFF01, see `certificate_from_object`
//!     intermediates: &[],                            // optional chain certificates (DER)
//!     trust_anchors: &[virtual_ca_root_der],         // or Yubico's PIV root (DER)
//!     expected_spki_der: &spki_from_generate,        // the key GENERATE returned, as SPKI DER
//!     now: OffsetDateTime::now_utc(),
//! })?;
//! verified.serial; verified.firmware; verified.pin_policy; verified.touch_policy;
//! ```
//!
//! - [`verify_piv_attestation`] checks, in order: both certificates parse;
//!   the attested public key equals `expected_spki_der` (the key the device
//!   returned from GENERATE ASYMMETRIC KEY PAIR) → [`AttestationError::KeyMismatch`];
//!   the attestation certificate's signature with the device attestation key
//!   → [`AttestationError::BadSignature`]; a path from the device attestation
//!   certificate through `intermediates` to one of `trust_anchors`, each
//!   signature checked → [`AttestationError::UntrustedChain`] if no anchor
//!   signs it (a bad signature under an anchor of the right name is
//!   `BadSignature`); every certificate on the path valid at `now` →
//!   [`AttestationError::NotValidAt`]. Anything unparsable is
//!   [`AttestationError::Malformed`]; an algorithm outside ECDSA P-256/P-384
//!   and RSA PKCS#1 v1.5 with SHA-256/384/512 is
//!   [`AttestationError::UnsupportedAlgorithm`].
//! - It returns [`PivAttestation`]: Yubico's extensions read from the
//!   attestation certificate: firmware (1.3.6.1.4.1.41482.3.3, three bytes),
//!   serial (.3.7, a DER INTEGER), PIN and touch policy (.3.8, two bytes),
//!   form factor (.3.9), plus the slot named in the subject
//!   ("CN=YubiKey PIV Attestation 9a") and the subjects along the chain.
//!   Callers should compare `serial` and `firmware` with the inventory.
//! - [`certificate_from_object`] takes the certificate out of a PIV
//!   certificate object (`53 { 70 cert, 71 info, FE }`), as GET DATA of
//!   5FFF01 returns it; plain DER passes through.
//!
//! Trust anchors are the caller's choice: this module trusts nothing by
//! itself. Anchors are matched by subject name and signature, so an anchor
//! needs no basic-constraints check here; the device attestation certificate
//! is not required to carry CA basic constraints (Yubico's do not always).

use der::{Decode, Encode, Reader, SliceReader};
use sha2::{Digest, Sha256, Sha384, Sha512};
use time::OffsetDateTime;
use x509_cert::Certificate;

/// Yubico attestation extension: firmware version, 3 bytes.
pub const OID_YUBICO_FIRMWARE: &str = "1.3.6.1.4.1.41482.3.3";
/// Yubico attestation extension: serial number, a DER INTEGER.
pub const OID_YUBICO_SERIAL: &str = "1.3.6.1.4.1.41482.3.7";
/// Yubico attestation extension: PIN policy and touch policy, 2 bytes.
pub const OID_YUBICO_POLICY: &str = "1.3.6.1.4.1.41482.3.8";
/// Yubico attestation extension: form factor, 1 byte.
pub const OID_YUBICO_FORM_FACTOR: &str = "1.3.6.1.4.1.41482.3.9";

/// How many intermediates a path may hold (Yubico uses at most one).
const MAX_INTERMEDIATES: usize = 4;

/// What to verify. All certificates are DER.
#[derive(Debug, Clone, Copy)]
pub struct PivAttestationInput<'a> {
    /// The data of the ATTEST (INS F9) response for the slot.
    pub attestation_der: &'a [u8],
    /// The device attestation certificate (object 5FFF01's certificate).
    pub device_cert_der: &'a [u8],
    /// Certificates between the device certificate and an anchor, any order.
    pub intermediates: &'a [Vec<u8>],
    /// Trusted manufacturer roots (e.g. Yubico PIV Root CA, or the virtual CA).
    pub trust_anchors: &'a [Vec<u8>],
    /// The generated key's SubjectPublicKeyInfo (DER).
    pub expected_spki_der: &'a [u8],
    /// Validity of every certificate on the path is checked at this time.
    pub now: OffsetDateTime,
}

/// Yubico PIN policy of an attested key (first byte of extension .3.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinPolicy {
    Never,
    Once,
    Always,
    /// Biometric match once (YubiKey Bio).
    MatchOnce,
    /// Biometric match always (YubiKey Bio).
    MatchAlways,
    Other(u8),
}

impl From<u8> for PinPolicy {
    fn from(b: u8) -> Self {
        match b {
            1 => PinPolicy::Never,
            2 => PinPolicy::Once,
            3 => PinPolicy::Always,
            4 => PinPolicy::MatchOnce,
            5 => PinPolicy::MatchAlways,
            other => PinPolicy::Other(other),
        }
    }
}

/// Yubico touch policy of an attested key (second byte of extension .3.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TouchPolicy {
    Never,
    Always,
    Cached,
    Other(u8),
}

impl From<u8> for TouchPolicy {
    fn from(b: u8) -> Self {
        match b {
            1 => TouchPolicy::Never,
            2 => TouchPolicy::Always,
            3 => TouchPolicy::Cached,
            other => TouchPolicy::Other(other),
        }
    }
}

/// A verified attestation: what the device says about the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PivAttestation {
    /// Firmware version (major, minor, patch), from .3.3.
    pub firmware: Option<(u8, u8, u8)>,
    /// Device serial number, from .3.7.
    pub serial: Option<u32>,
    pub pin_policy: Option<PinPolicy>,
    pub touch_policy: Option<TouchPolicy>,
    /// Raw form factor byte, from .3.9 (1 = USB-A keychain, …).
    pub form_factor: Option<u8>,
    /// The slot named in the subject ("YubiKey PIV Attestation 9a").
    pub slot: Option<u8>,
    /// Subject of the device attestation certificate.
    pub device_subject: String,
    /// Subject of the trust anchor the chain ends at.
    pub anchor_subject: String,
}

/// Why an attestation was not accepted. Messages name certificates by
/// role and subject only; they carry no key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestationError {
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("the attested public key is not the generated key")]
    KeyMismatch,
    #[error("the signature on the {certificate} certificate does not verify")]
    BadSignature { certificate: &'static str },
    #[error(
        "the device attestation chain ends at '{issuer}', which is not a trusted manufacturer CA"
    )]
    UntrustedChain { issuer: String },
    #[error("the {certificate} certificate is not valid at the time of verification")]
    NotValidAt { certificate: &'static str },
    #[error("unsupported algorithm {0}")]
    UnsupportedAlgorithm(String),
    /// A statement that parses but does not meet a requirement (FIDO
    /// packed attestation: the format, the certificate's fields, the AAGUID).
    #[error("{0}")]
    Requirement(String),
}

pub(crate) fn malformed(what: &'static str, e: impl std::fmt::Display) -> AttestationError {
    AttestationError::Malformed {
        what,
        detail: e.to_string(),
    }
}

/// A parsed certificate with its TBS bytes exactly as signed.
pub(crate) struct Parsed {
    pub(crate) cert: Certificate,
    tbs: Vec<u8>,
    der: Vec<u8>,
}

impl Parsed {
    pub(crate) fn new(der_bytes: &[u8], what: &'static str) -> Result<Parsed, AttestationError> {
        let cert = Certificate::from_der(der_bytes).map_err(|e| malformed(what, e))?;
        // The TBS as encoded on the wire (re-encoding a device's certificate
        // could differ from what its issuer signed).
        let mut reader = SliceReader::new(der_bytes).map_err(|e| malformed(what, e))?;
        let tbs = reader
            .sequence(|inner| {
                let tbs = inner.tlv_bytes()?.to_vec();
                // Skip the rest of the outer sequence.
                let rest = inner.remaining_len();
                inner.read_slice(rest)?;
                Ok(tbs)
            })
            .map_err(|e| malformed(what, e))?;
        Ok(Parsed {
            cert,
            tbs,
            der: der_bytes.to_vec(),
        })
    }

    pub(crate) fn subject(&self) -> String {
        self.cert.tbs_certificate.subject.to_string()
    }

    fn issuer_is(&self, issuer: &Parsed) -> bool {
        self.cert.tbs_certificate.issuer == issuer.cert.tbs_certificate.subject
    }

    pub(crate) fn spki_der(&self) -> Result<Vec<u8>, AttestationError> {
        self.cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| malformed("certificate public key", e))
    }

    pub(crate) fn valid_at(&self, now: OffsetDateTime) -> bool {
        let v = &self.cert.tbs_certificate.validity;
        let nb = v.not_before.to_unix_duration().as_secs() as i64;
        let na = v.not_after.to_unix_duration().as_secs() as i64;
        let t = now.unix_timestamp();
        nb <= t && t <= na
    }

    /// Whether `issuer`'s key signed this certificate.
    fn signed_by(&self, issuer: &Parsed) -> Result<bool, AttestationError> {
        let sig_alg = self.cert.signature_algorithm.oid.to_string();
        let signature = self
            .cert
            .signature
            .as_bytes()
            .ok_or_else(|| malformed("signature", "not a whole number of bytes"))?;
        let digest: Vec<u8> = match sig_alg.as_str() {
            "1.2.840.10045.4.3.2" | "1.2.840.113549.1.1.11" => Sha256::digest(&self.tbs).to_vec(),
            "1.2.840.10045.4.3.3" | "1.2.840.113549.1.1.12" => Sha384::digest(&self.tbs).to_vec(),
            "1.2.840.10045.4.3.4" | "1.2.840.113549.1.1.13" => Sha512::digest(&self.tbs).to_vec(),
            other => return Err(AttestationError::UnsupportedAlgorithm(other.to_string())),
        };
        let is_rsa_sig = sig_alg.starts_with("1.2.840.113549.1.1.");
        let spki = &issuer.cert.tbs_certificate.subject_public_key_info;
        let key_alg = spki.algorithm.oid.to_string();
        let key_bytes = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| malformed("issuer public key", "not a whole number of bytes"))?;
        match (key_alg.as_str(), is_rsa_sig) {
            ("1.2.840.10045.2.1", false) => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.decode_as::<der::asn1::ObjectIdentifier>().ok())
                    .map(|o| o.to_string())
                    .unwrap_or_default();
                if let Some(alg) = ring_ecdsa(&curve, &sig_alg) {
                    // A key that is no point of the curve is malformed, as below.
                    check_ecdsa_key(&curve, key_bytes)?;
                    return Ok(ring::signature::UnparsedPublicKey::new(alg, key_bytes)
                        .verify(&self.tbs, signature)
                        .is_ok());
                }
                verify_ecdsa(&curve, key_bytes, &digest, signature)
            }
            ("1.2.840.113549.1.1.1", true) => verify_rsa(&sig_alg, key_bytes, &digest, signature),
            (k, _) => Err(AttestationError::UnsupportedAlgorithm(format!(
                "{sig_alg} with a {k} key"
            ))),
        }
    }
}

/// ring's verifier for the common curve and hash pairs: several times faster
/// than the portable arithmetic, and attestation checks are on the issuance
/// path. Other pairs (SHA-512) go through RustCrypto.
fn ring_ecdsa(
    curve: &str,
    sig_alg: &str,
) -> Option<&'static ring::signature::EcdsaVerificationAlgorithm> {
    use ring::signature::*;
    Some(match (curve, sig_alg) {
        ("1.2.840.10045.3.1.7", "1.2.840.10045.4.3.2") => &ECDSA_P256_SHA256_ASN1,
        ("1.2.840.10045.3.1.7", "1.2.840.10045.4.3.3") => &ECDSA_P256_SHA384_ASN1,
        ("1.3.132.0.34", "1.2.840.10045.4.3.2") => &ECDSA_P384_SHA256_ASN1,
        ("1.3.132.0.34", "1.2.840.10045.4.3.3") => &ECDSA_P384_SHA384_ASN1,
        _ => return None,
    })
}

fn check_ecdsa_key(curve: &str, sec1: &[u8]) -> Result<(), AttestationError> {
    match curve {
        "1.2.840.10045.3.1.7" => p256::PublicKey::from_sec1_bytes(sec1)
            .map(|_| ())
            .map_err(|e| malformed("issuer P-256 key", e)),
        _ => p384::PublicKey::from_sec1_bytes(sec1)
            .map(|_| ())
            .map_err(|e| malformed("issuer P-384 key", e)),
    }
}

fn verify_ecdsa(
    curve: &str,
    sec1: &[u8],
    digest: &[u8],
    signature: &[u8],
) -> Result<bool, AttestationError> {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    match curve {
        "1.2.840.10045.3.1.7" => {
            let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(sec1)
                .map_err(|e| malformed("issuer P-256 key", e))?;
            let Ok(sig) = p256::ecdsa::Signature::from_der(signature) else {
                return Ok(false);
            };
            Ok(vk.verify_prehash(digest, &sig).is_ok())
        }
        "1.3.132.0.34" => {
            let vk = p384::ecdsa::VerifyingKey::from_sec1_bytes(sec1)
                .map_err(|e| malformed("issuer P-384 key", e))?;
            let Ok(sig) = p384::ecdsa::Signature::from_der(signature) else {
                return Ok(false);
            };
            Ok(vk.verify_prehash(digest, &sig).is_ok())
        }
        other => Err(AttestationError::UnsupportedAlgorithm(format!(
            "elliptic curve {other}"
        ))),
    }
}

fn verify_rsa(
    sig_alg: &str,
    pkcs1: &[u8],
    digest: &[u8],
    signature: &[u8],
) -> Result<bool, AttestationError> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    use rsa::Pkcs1v15Sign;
    let key =
        rsa::RsaPublicKey::from_pkcs1_der(pkcs1).map_err(|e| malformed("issuer RSA key", e))?;
    let scheme = match sig_alg {
        "1.2.840.113549.1.1.11" => Pkcs1v15Sign::new::<Sha256>(),
        "1.2.840.113549.1.1.12" => Pkcs1v15Sign::new::<Sha384>(),
        _ => Pkcs1v15Sign::new::<Sha512>(),
    };
    Ok(key.verify(scheme, digest, signature).is_ok())
}

/// The certificate inside a PIV certificate object (`53 { 70 …, 71 …, FE }`
/// or its content `70 … 71 …`), as GET DATA 5FFF01 answers; DER certificates
/// (starting with a SEQUENCE) pass through. A compressed certificate
/// (CertInfo 01) is refused: YubiKeys do not compress 5FFF01.
pub fn certificate_from_object(object: &[u8]) -> Result<Vec<u8>, AttestationError> {
    let what = "PIV certificate object";
    let mut data = object;
    if data.first() == Some(&0x30) {
        return Ok(data.to_vec());
    }
    let bad = |e: keyward_card::tlv::TlvError| malformed(what, e);
    if data.first() == Some(&0x53) {
        data = keyward_card::tlv::parse_one(data).map_err(bad)?.0.value;
    }
    let mut cert = None;
    for t in keyward_card::tlv::parse_all(data).map_err(bad)? {
        match t.tag {
            0x70 => cert = Some(t.value.to_vec()),
            0x71 if t.value.first().is_some_and(|b| *b & 0x01 != 0) => {
                return Err(malformed(what, "compressed certificate"))
            }
            _ => {}
        }
    }
    cert.ok_or_else(|| malformed(what, "no certificate (tag 70)"))
}

/// Verify a YubiKey PIV attestation; see the module documentation.
pub fn verify_piv_attestation(
    input: &PivAttestationInput<'_>,
) -> Result<PivAttestation, AttestationError> {
    let attestation = Parsed::new(input.attestation_der, "attestation certificate")?;
    let device = Parsed::new(input.device_cert_der, "device attestation certificate")?;
    let intermediates = input
        .intermediates
        .iter()
        .map(|d| Parsed::new(d, "intermediate certificate"))
        .collect::<Result<Vec<_>, _>>()?;
    let anchors = input
        .trust_anchors
        .iter()
        .map(|d| Parsed::new(d, "trust anchor"))
        .collect::<Result<Vec<_>, _>>()?;

    check_key(&attestation, &device, input.expected_spki_der, input.now)?;
    let anchor = chain_to_anchor(&device, &intermediates, &anchors, input.now)?;
    let mut out = read_extensions(&attestation)?;
    out.device_subject = device.subject();
    out.anchor_subject = anchor.subject();
    Ok(out)
}

/// One generated key of a device, for [`verify_piv_attestations`].
#[derive(Debug, Clone, Copy)]
pub struct AttestedKey<'a> {
    /// The data of the ATTEST (INS F9) response for the key's slot.
    pub attestation_der: &'a [u8],
    /// The key's SubjectPublicKeyInfo (DER) as GENERATE returned it.
    pub expected_spki_der: &'a [u8],
}

/// Verify the attestations of several keys of one device: the same checks
/// as [`verify_piv_attestation`] for each key, but the device attestation
/// certificate's path to an anchor is verified once, not once per key
/// (its signatures are the costly part of an issuance's verification).
/// One result per key, in the order given.
pub fn verify_piv_attestations(
    device_cert_der: &[u8],
    intermediates: &[Vec<u8>],
    trust_anchors: &[Vec<u8>],
    keys: &[AttestedKey<'_>],
    now: OffsetDateTime,
) -> Vec<Result<PivAttestation, AttestationError>> {
    let parsed: Result<_, AttestationError> = (|| {
        let device = Parsed::new(device_cert_der, "device attestation certificate")?;
        let intermediates = intermediates
            .iter()
            .map(|d| Parsed::new(d, "intermediate certificate"))
            .collect::<Result<Vec<_>, _>>()?;
        let anchors = trust_anchors
            .iter()
            .map(|d| Parsed::new(d, "trust anchor"))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((device, intermediates, anchors))
    })();
    let (device, intermediates, anchors) = match parsed {
        Ok(p) => p,
        Err(e) => return keys.iter().map(|_| Err(e.clone())).collect(),
    };
    // The anchor's subject, or why there is no path: computed at the first
    // key that passes its own checks.
    let mut chain: Option<Result<String, AttestationError>> = None;
    let mut one = |key: &AttestedKey<'_>| -> Result<PivAttestation, AttestationError> {
        let attestation = Parsed::new(key.attestation_der, "attestation certificate")?;
        check_key(&attestation, &device, key.expected_spki_der, now)?;
        let anchor_subject = chain
            .get_or_insert_with(|| {
                chain_to_anchor(&device, &intermediates, &anchors, now).map(|a| a.subject())
            })
            .clone()?;
        let mut out = read_extensions(&attestation)?;
        out.device_subject = device.subject();
        out.anchor_subject = anchor_subject;
        Ok(out)
    };
    keys.iter().map(|k| one(k)).collect()
}

/// A key's own checks: the attested key is the generated one, the device
/// certificate signed the attestation, and the attestation is valid now.
fn check_key(
    attestation: &Parsed,
    device: &Parsed,
    expected_spki_der: &[u8],
    now: OffsetDateTime,
) -> Result<(), AttestationError> {
    // The attested key must be the key the device returned from GENERATE.
    let expected = spki::SubjectPublicKeyInfoOwned::from_der(expected_spki_der)
        .map_err(|e| malformed("expected public key", e))?
        .to_der()
        .map_err(|e| malformed("expected public key", e))?;
    if attestation.spki_der()? != expected {
        return Err(AttestationError::KeyMismatch);
    }
    if !attestation.issuer_is(device) || !attestation.signed_by(device)? {
        return Err(AttestationError::BadSignature {
            certificate: "attestation",
        });
    }
    if !attestation.valid_at(now) {
        return Err(AttestationError::NotValidAt {
            certificate: "attestation",
        });
    }
    Ok(())
}

/// Walks from the device certificate up through intermediates to an anchor.
pub(crate) fn chain_to_anchor<'a>(
    device: &Parsed,
    intermediates: &[Parsed],
    anchors: &'a [Parsed],
    now: OffsetDateTime,
) -> Result<&'a Parsed, AttestationError> {
    let mut current = device;
    let mut role = "device attestation";
    for _ in 0..=MAX_INTERMEDIATES {
        if !current.valid_at(now) {
            return Err(AttestationError::NotValidAt { certificate: role });
        }
        // An anchor of the issuer's name must also have signed it.
        let named: Vec<&Parsed> = anchors.iter().filter(|a| current.issuer_is(a)).collect();
        for anchor in &named {
            if current.signed_by(anchor)? {
                return Ok(anchor);
            }
        }
        let next = intermediates
            .iter()
            .filter(|i| i.der != current.der && current.issuer_is(i))
            .find_map(|i| match current.signed_by(i) {
                Ok(true) => Some(Ok(i)),
                Ok(false) => None,
                Err(e) => Some(Err(e)),
            })
            .transpose()?;
        match next {
            Some(i) => {
                current = i;
                role = "intermediate";
            }
            None if !named.is_empty() => {
                return Err(AttestationError::BadSignature { certificate: role })
            }
            None => {
                return Err(AttestationError::UntrustedChain {
                    issuer: current.cert.tbs_certificate.issuer.to_string(),
                })
            }
        }
    }
    Err(AttestationError::UntrustedChain {
        issuer: current.cert.tbs_certificate.issuer.to_string(),
    })
}

fn read_extensions(attestation: &Parsed) -> Result<PivAttestation, AttestationError> {
    let mut out = PivAttestation {
        firmware: None,
        serial: None,
        pin_policy: None,
        touch_policy: None,
        form_factor: None,
        slot: slot_from_subject(&attestation.subject()),
        device_subject: String::new(),
        anchor_subject: String::new(),
    };
    let what = "Yubico attestation extension";
    for ext in attestation.cert.tbs_certificate.extensions.iter().flatten() {
        let value = ext.extn_value.as_bytes();
        match ext.extn_id.to_string().as_str() {
            OID_YUBICO_FIRMWARE => match value {
                [a, b, c] => out.firmware = Some((*a, *b, *c)),
                _ => return Err(malformed(what, "firmware is not 3 bytes")),
            },
            OID_YUBICO_SERIAL => {
                let n = der::asn1::Uint::from_der(value).map_err(|e| malformed(what, e))?;
                let bytes = n.as_bytes();
                if bytes.len() > 4 {
                    return Err(malformed(what, "serial wider than 32 bits"));
                }
                out.serial = Some(bytes.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)));
            }
            OID_YUBICO_POLICY => match value {
                [pin, touch, ..] => {
                    out.pin_policy = Some(PinPolicy::from(*pin));
                    out.touch_policy = Some(TouchPolicy::from(*touch));
                }
                _ => return Err(malformed(what, "policy is not 2 bytes")),
            },
            OID_YUBICO_FORM_FACTOR => out.form_factor = value.first().copied(),
            _ => {}
        }
    }
    Ok(out)
}

/// "CN=YubiKey PIV Attestation 9a" → 0x9A.
fn slot_from_subject(subject: &str) -> Option<u8> {
    let tail = subject.split("PIV Attestation ").nth(1)?;
    let hex: String = tail.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(&hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_vcard::keys::SlotKey;
    use keyward_vcard::{ManufacturerCa, ProfileKind, VcardConfig, VirtualCard};

    const SLOT_9A: u8 = 0x9A;

    /// A virtual YubiKey with a P-256 key "generated on the card" in 9A
    /// (origin 1, PIN once, touch never), its CA, and the key's SPKI.
    struct Fixture {
        _dir: tempfile::TempDir,
        ca: ManufacturerCa,
        card: VirtualCard,
        spki: Vec<u8>,
    }

    fn fixture(serial: u32) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let ca = ManufacturerCa::load_or_create(&dir.path().join("ca")).unwrap();
        let mut card = VirtualCard::with_ca(
            VcardConfig::new(ProfileKind::Yubikey5)
                .with_firmware(keyward_vcard::Firmware(5, 7, 1))
                .with_serial(serial),
            &ca,
        )
        .unwrap();
        card.power_on();
        let key = SlotKey::generate(0x11).unwrap();
        let spki = key.public_key_der();
        card.piv().store_key(SLOT_9A, key, 0x02, 0x01, 1);
        let selected = card.transmit(&[0x00, 0xA4, 0x04, 0x00, 0x05, 0xA0, 0x00, 0x00, 0x03, 0x08]);
        assert!(selected.ends_with(&[0x90, 0x00]));
        Fixture {
            _dir: dir,
            ca,
            card,
            spki,
        }
    }

    /// APDU → data, asserting 9000 and following 61xx.
    fn call(card: &mut VirtualCard, apdu: &[u8]) -> Vec<u8> {
        let mut resp = card.transmit(apdu);
        let mut data = Vec::new();
        loop {
            let (d, sw) = resp.split_at(resp.len() - 2);
            data.extend_from_slice(d);
            match sw {
                [0x90, 0x00] => return data,
                [0x61, n] => resp = card.transmit(&[0x00, 0xC0, 0x00, 0x00, *n]),
                other => panic!("status {other:02x?} for {apdu:02x?}"),
            }
        }
    }

    fn attest(f: &mut Fixture, slot: u8) -> Vec<u8> {
        call(&mut f.card, &[0x00, 0xF9, slot, 0x00, 0x00])
    }

    fn device_cert(f: &mut Fixture) -> Vec<u8> {
        let object = call(
            &mut f.card,
            &[
                0x00, 0xCB, 0x3F, 0xFF, 0x05, 0x5C, 0x03, 0x5F, 0xFF, 0x01, 0x00,
            ],
        );
        certificate_from_object(&object).unwrap()
    }

    fn verify(
        att: &[u8],
        dev: &[u8],
        anchors: &[Vec<u8>],
        spki: &[u8],
    ) -> Result<PivAttestation, AttestationError> {
        verify_piv_attestation(&PivAttestationInput {
            attestation_der: att,
            device_cert_der: dev,
            intermediates: &[],
            trust_anchors: anchors,
            expected_spki_der: spki,
            now: OffsetDateTime::now_utc(),
        })
    }

    #[test]
    fn a_virtual_yubikey_attestation_verifies_and_reports_serial_firmware_policy() {
        let mut f = fixture(31_000_042);
        let att = attest(&mut f, SLOT_9A);
        let dev = device_cert(&mut f);
        let v = verify(&att, &dev, &[f.ca.root_der()], &f.spki).unwrap();
        assert_eq!(v.serial, Some(31_000_042));
        assert_eq!(v.firmware, Some((5, 7, 1)));
        assert_eq!(v.pin_policy, Some(PinPolicy::Once));
        assert_eq!(v.touch_policy, Some(TouchPolicy::Never));
        assert_eq!(v.form_factor, Some(1));
        assert_eq!(v.slot, Some(0x9A));
        assert!(
            v.device_subject.contains("31000042"),
            "{}",
            v.device_subject
        );
        assert!(v.anchor_subject.contains("Keyward Virtual Manufacturer CA"));
        // Extra unrelated anchors do not matter; order does not either.
        let other = ManufacturerCa::load_or_create(&f._dir.path().join("other")).unwrap();
        verify(&att, &dev, &[other.root_der(), f.ca.root_der()], &f.spki).unwrap();
    }

    #[test]
    fn several_keys_verify_with_one_chain_and_each_key_is_checked() {
        let mut f = fixture(31_000_049);
        let other = SlotKey::generate(0x11).unwrap();
        let other_spki = other.public_key_der();
        f.card.piv().store_key(0x9C, other, 0x02, 0x01, 1);
        let att_9a = attest(&mut f, SLOT_9A);
        let att_9c = attest(&mut f, 0x9C);
        let dev = device_cert(&mut f);
        let anchors = vec![f.ca.root_der()];
        let now = OffsetDateTime::now_utc();
        let keys = [
            AttestedKey {
                attestation_der: &att_9a,
                expected_spki_der: &f.spki,
            },
            AttestedKey {
                attestation_der: &att_9c,
                expected_spki_der: &other_spki,
            },
            // 9C's attestation offered for 9A's key: this key alone fails.
            AttestedKey {
                attestation_der: &att_9c,
                expected_spki_der: &f.spki,
            },
        ];
        let out = verify_piv_attestations(&dev, &[], &anchors, &keys, now);
        assert_eq!(out.len(), 3);
        let a = out[0].as_ref().unwrap();
        assert_eq!((a.slot, a.serial), (Some(0x9A), Some(31_000_049)));
        assert_eq!(out[1].as_ref().unwrap().slot, Some(0x9C));
        assert_eq!(out[2], Err(AttestationError::KeyMismatch));
        // The same as one at a time.
        assert_eq!(out[0], verify(&att_9a, &dev, &anchors, &f.spki));

        // Another CA of the same name: the chain fails, for every key.
        let out = verify_piv_attestations(&dev, &[], &[impostor_of(&f.ca)], &keys[..2], now);
        let bad = Err(AttestationError::BadSignature {
            certificate: "device attestation",
        });
        assert_eq!(out, vec![bad.clone(), bad]);
    }

    #[test]
    fn another_manufacturer_ca_as_the_anchor_is_an_untrusted_chain() {
        let mut f = fixture(31_000_043);
        let att = attest(&mut f, SLOT_9A);
        let dev = device_cert(&mut f);
        // Same subject name, another key: the name matches, the signature
        // does not.
        assert_eq!(
            verify(&att, &dev, &[impostor_of(&f.ca)], &f.spki),
            Err(AttestationError::BadSignature {
                certificate: "device attestation"
            })
        );
        // Another virtual manufacturer (its own name): untrusted.
        let other = ManufacturerCa::load_or_create(&f._dir.path().join("other")).unwrap();
        let e = verify(&att, &dev, &[other.root_der()], &f.spki).unwrap_err();
        assert!(matches!(e, AttestationError::UntrustedChain { .. }), "{e}");
        // No anchor at all, or only unrelated ones: untrusted.
        let e = verify(&att, &dev, &[], &f.spki).unwrap_err();
        assert!(matches!(e, AttestationError::UntrustedChain { .. }), "{e}");
        // The device certificate as its own anchor is not a manufacturer root.
        let e = verify(&att, &dev, std::slice::from_ref(&dev), &f.spki).unwrap_err();
        assert!(matches!(e, AttestationError::UntrustedChain { .. }), "{e}");
    }

    /// A root of `ca`'s name with another key.
    fn impostor_of(ca: &ManufacturerCa) -> Vec<u8> {
        use x509_cert::builder::{Builder, CertificateBuilder, Profile};
        let key = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        let name = Certificate::from_der(&ca.root_der())
            .unwrap()
            .tbs_certificate
            .subject;
        CertificateBuilder::new(
            Profile::Root,
            x509_cert::serial_number::SerialNumber::from(9u32),
            x509_cert::time::Validity::from_now(std::time::Duration::from_secs(86_400)).unwrap(),
            name,
            spki::SubjectPublicKeyInfoOwned::from_key(*key.verifying_key()).unwrap(),
            &key,
        )
        .unwrap()
        .build::<p256::ecdsa::DerSignature>()
        .unwrap()
        .to_der()
        .unwrap()
    }

    #[test]
    fn another_key_is_a_key_mismatch() {
        let mut f = fixture(31_000_044);
        let att = attest(&mut f, SLOT_9A);
        let dev = device_cert(&mut f);
        let other = SlotKey::generate(0x11).unwrap().public_key_der();
        assert_eq!(
            verify(&att, &dev, &[f.ca.root_der()], &other),
            Err(AttestationError::KeyMismatch)
        );
    }

    #[test]
    fn another_devices_attestation_certificate_does_not_sign() {
        let mut f = fixture(31_000_045);
        let mut g = fixture(31_000_046);
        let att = attest(&mut f, SLOT_9A);
        // g's device certificate under g's CA; f's attestation was signed by f's F9 key.
        let dev_g = device_cert(&mut g);
        let e = verify(&att, &dev_g, &[g.ca.root_der()], &f.spki).unwrap_err();
        assert_eq!(
            e,
            AttestationError::BadSignature {
                certificate: "attestation"
            }
        );
    }

    #[test]
    fn a_tampered_attestation_certificate_fails_its_signature() {
        let mut f = fixture(31_000_047);
        let mut att = attest(&mut f, SLOT_9A);
        let dev = device_cert(&mut f);
        // Flip a bit inside the serial extension's value (…3.7).
        let oid = [0x2B, 0x06, 0x01, 0x04, 0x01, 0x82, 0xC4, 0x0A, 0x03, 0x07];
        let at = att.windows(oid.len()).position(|w| w == oid).unwrap() + oid.len();
        let last = at + 5;
        att[last] ^= 0x01;
        let e = verify(&att, &dev, &[f.ca.root_der()], &f.spki).unwrap_err();
        assert_eq!(
            e,
            AttestationError::BadSignature {
                certificate: "attestation"
            }
        );
    }

    #[test]
    fn garbage_is_malformed_and_expiry_is_checked() {
        let mut f = fixture(31_000_048);
        let att = attest(&mut f, SLOT_9A);
        let dev = device_cert(&mut f);
        let e = verify(&att[..att.len() - 3], &dev, &[f.ca.root_der()], &f.spki).unwrap_err();
        assert!(
            matches!(
                e,
                AttestationError::Malformed {
                    what: "attestation certificate",
                    ..
                }
            ),
            "{e}"
        );
        let e = verify(&att, &dev, &[f.ca.root_der()], b"\x30\x00").unwrap_err();
        assert!(matches!(e, AttestationError::Malformed { .. }), "{e}");
        let e = verify_piv_attestation(&PivAttestationInput {
            attestation_der: &att,
            device_cert_der: &dev,
            intermediates: &[],
            trust_anchors: &[f.ca.root_der()],
            expected_spki_der: &f.spki,
            now: OffsetDateTime::now_utc() + time::Duration::days(365 * 40),
        })
        .unwrap_err();
        assert!(matches!(e, AttestationError::NotValidAt { .. }), "{e}");
    }

    #[test]
    fn a_chain_through_an_intermediate_verifies() {
        // Like Yubico's newer chain (PIV Root CA → PIV Attestation B 1 →
        // device): another root cross-certifies the virtual CA's key, so the
        // path is device → intermediate (the cross certificate) → new root.
        use der::asn1::BitString;
        use std::str::FromStr;
        use x509_cert::builder::{Builder, CertificateBuilder, Profile};
        let mut f = fixture(31_000_049);
        let att = attest(&mut f, SLOT_9A);
        let dev = device_cert(&mut f);
        let root_key = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        let root_name = x509_cert::name::Name::from_str("CN=Cross Root,O=Test").unwrap();
        let validity =
            x509_cert::time::Validity::from_now(std::time::Duration::from_secs(86_400)).unwrap();
        let spki_of = |vk: &p256::ecdsa::VerifyingKey| {
            spki::SubjectPublicKeyInfoOwned::from_key(*vk).unwrap()
        };
        let root = CertificateBuilder::new(
            Profile::Root,
            x509_cert::serial_number::SerialNumber::from(1u32),
            validity,
            root_name.clone(),
            spki_of(root_key.verifying_key()),
            &root_key,
        )
        .unwrap()
        .build::<p256::ecdsa::DerSignature>()
        .unwrap();
        let ca_root = Certificate::from_der(&f.ca.root_der()).unwrap();
        let mut ca_spki = ca_root.tbs_certificate.subject_public_key_info.clone();
        ca_spki.subject_public_key =
            BitString::from_bytes(ca_spki.subject_public_key.raw_bytes()).unwrap();
        let cross = CertificateBuilder::new(
            Profile::SubCA {
                issuer: root_name,
                path_len_constraint: None,
            },
            x509_cert::serial_number::SerialNumber::from(2u32),
            validity,
            ca_root.tbs_certificate.subject.clone(),
            ca_spki,
            &root_key,
        )
        .unwrap()
        .build::<p256::ecdsa::DerSignature>()
        .unwrap();
        let input = |intermediates: &[Vec<u8>]| {
            verify_piv_attestation(&PivAttestationInput {
                attestation_der: &att,
                device_cert_der: &dev,
                intermediates,
                trust_anchors: &[root.to_der().unwrap()],
                expected_spki_der: &f.spki,
                now: OffsetDateTime::now_utc(),
            })
        };
        let v = input(&[cross.to_der().unwrap()]).unwrap();
        assert_eq!(v.serial, Some(31_000_049));
        assert!(v.anchor_subject.contains("Cross Root"));
        // Without the intermediate there is no path to the anchor.
        let e = input(&[]).unwrap_err();
        assert!(matches!(e, AttestationError::UntrustedChain { .. }), "{e}");
    }

    /// Yubico's PIV root is RSA 2048 with sha256WithRSAEncryption: a chain
    /// whose anchor is an RSA root (cross-certifying the virtual CA's P-256
    /// key) verifies through the RSA path; a tampered RSA signature does not.
    #[test]
    fn an_rsa_root_like_yubicos_verifies_the_chain() {
        use std::str::FromStr;
        use x509_cert::builder::{Builder, CertificateBuilder, Profile};
        let mut f = fixture(31_000_051);
        let att = attest(&mut f, SLOT_9A);
        let dev = device_cert(&mut f);
        let rsa_key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
        let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(rsa_key.clone());
        let root_name =
            x509_cert::name::Name::from_str("CN=Test PIV Root CA Serial 263751,O=Test").unwrap();
        let validity =
            x509_cert::time::Validity::from_now(std::time::Duration::from_secs(86_400)).unwrap();
        let root_spki = spki::SubjectPublicKeyInfoOwned::from_key(rsa_key.to_public_key()).unwrap();
        let root = CertificateBuilder::new(
            Profile::Root,
            x509_cert::serial_number::SerialNumber::from(7u32),
            validity,
            root_name.clone(),
            root_spki,
            &signer,
        )
        .unwrap()
        .build::<rsa::pkcs1v15::Signature>()
        .unwrap();
        let ca_root = Certificate::from_der(&f.ca.root_der()).unwrap();
        let cross = CertificateBuilder::new(
            Profile::SubCA {
                issuer: root_name,
                path_len_constraint: None,
            },
            x509_cert::serial_number::SerialNumber::from(8u32),
            validity,
            ca_root.tbs_certificate.subject.clone(),
            ca_root.tbs_certificate.subject_public_key_info.clone(),
            &signer,
        )
        .unwrap()
        .build::<rsa::pkcs1v15::Signature>()
        .unwrap();
        assert_eq!(
            cross.signature_algorithm.oid.to_string(),
            "1.2.840.113549.1.1.11"
        );
        let run = |cross_der: Vec<u8>| {
            verify_piv_attestation(&PivAttestationInput {
                attestation_der: &att,
                device_cert_der: &dev,
                intermediates: &[cross_der],
                trust_anchors: &[root.to_der().unwrap()],
                expected_spki_der: &f.spki,
                now: OffsetDateTime::now_utc(),
            })
        };
        let v = run(cross.to_der().unwrap()).unwrap();
        assert_eq!(v.serial, Some(31_000_051));
        assert!(v.anchor_subject.contains("Test PIV Root CA"));
        // The last byte of the DER is the last byte of the RSA signature.
        let mut bad = cross.to_der().unwrap();
        *bad.last_mut().unwrap() ^= 0x01;
        assert_eq!(
            run(bad),
            Err(AttestationError::BadSignature {
                certificate: "intermediate"
            })
        );
    }

    #[test]
    fn certificate_objects_unwrap() {
        let cert = vec![0x30, 0x03, 0x02, 0x01, 0x01];
        let mut inner = vec![0x70, cert.len() as u8];
        inner.extend_from_slice(&cert);
        inner.extend_from_slice(&[0x71, 0x01, 0x00]);
        let mut object = vec![0x53, inner.len() as u8];
        object.extend_from_slice(&inner);
        assert_eq!(certificate_from_object(&object).unwrap(), cert);
        assert_eq!(certificate_from_object(&inner).unwrap(), cert);
        assert_eq!(certificate_from_object(&cert).unwrap(), cert);
        let compressed = [0x70, 0x01, 0xAA, 0x71, 0x01, 0x01];
        assert!(certificate_from_object(&compressed).is_err());
        assert!(certificate_from_object(&[0x53, 0x05, 0x70]).is_err());
    }
}
