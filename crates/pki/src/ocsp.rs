//! OCSP (RFC 6960) for the issuing CA, pure: a request is read
//! ([`OcspQuery::parse`]), the caller looks up each serial's status in its
//! store, and the answer is signed by a delegated responder
//! ([`Responder`]: a key of its own certified by the issuing CA with
//! `id-kp-OCSPSigning` and `id-pkix-ocsp-nocheck`, sent with every answer,
//! valid at most 30 days). CertIDs hashed with SHA-1 or SHA-256 are
//! understood; the nonce (RFC 8954: 1 to 32 bytes) is echoed; a CertID of
//! another issuer makes the answer `unauthorized`.

use const_oid::db::rfc5912::{ID_SHA_1, ID_SHA_256};
use const_oid::ObjectIdentifier;
use der::asn1::{BitString, Null, OctetString};
use der::{Decode, Encode};
use keyward_signer::{Curve, DerSignature, EcdsaSigner};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::str::FromStr;
use time::OffsetDateTime;
use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::ext::pkix::{crl::CrlReason, ExtendedKeyUsage};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::Certificate;
use x509_ocsp::{
    BasicOcspResponse, CertId, CertStatus, OcspGeneralizedTime, OcspRequest, OcspResponse,
    OcspResponseStatus, ResponderId, ResponseData, RevokedInfo, SingleResponse, Version,
};

use crate::embedded::EmbeddedCa;
use crate::{build_err, PkiError};

/// id-kp-OCSPSigning.
const OID_OCSP_SIGNING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.9");
/// id-pkix-ocsp-nocheck: relying parties do not check the responder's revocation.
const OID_OCSP_NOCHECK: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.5");
/// id-pkix-ocsp-nonce.
const OID_OCSP_NONCE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.2");

/// The longest a responder certificate is valid.
pub const RESPONDER_MAX_DAYS: u32 = 30;

/// One certificate's status, as the store knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateStatus {
    Good,
    /// Revoked (or, with reason 6, on hold) at `at`.
    Revoked {
        at: OffsetDateTime,
        reason: u8,
    },
    /// A serial the issuing CA never issued.
    Unknown,
}

/// A delegated OCSP responder.
pub struct Responder {
    signer: EcdsaSigner,
    cert: Certificate,
    /// SHA-1 of its public key (its ResponderID byKey).
    key_hash: Vec<u8>,
    not_after: OffsetDateTime,
}

/// A parsed request: each CertID and the nonce to echo.
#[derive(Debug, Clone)]
pub struct OcspQuery {
    ids: Vec<CertId>,
    nonce: Option<Extension>,
}

/// Why a request gets no per-certificate answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not an OCSP request, no CertID, an unknown hash, a nonce out of bounds.
    Malformed,
    /// A CertID of another issuer.
    Unauthorized,
}

impl Refused {
    /// The unsigned answer (RFC 6960 4.2.1: no response bytes).
    pub fn response(self) -> Vec<u8> {
        let status = match self {
            Refused::Malformed => OcspResponseStatus::MalformedRequest,
            Refused::Unauthorized => OcspResponseStatus::Unauthorized,
        };
        OcspResponse {
            response_status: status,
            response_bytes: None,
        }
        .to_der()
        .unwrap_or_default()
    }
}

fn digest(algorithm: &ObjectIdentifier, data: &[u8]) -> Option<Vec<u8>> {
    match *algorithm {
        ID_SHA_1 => Some(Sha1::digest(data).to_vec()),
        ID_SHA_256 => Some(Sha256::digest(data).to_vec()),
        _ => None,
    }
}

fn ocsp_time(t: OffsetDateTime) -> Result<OcspGeneralizedTime, PkiError> {
    let t = t.replace_nanosecond(0).map_err(build_err)?;
    let dt = der::DateTime::from_system_time(t.into()).map_err(build_err)?;
    Ok(OcspGeneralizedTime::from(dt))
}

impl OcspQuery {
    /// Reads a DER OCSPRequest for the issuing CA of `ca`.
    pub fn parse(der: &[u8], ca: &EmbeddedCa) -> Result<OcspQuery, Refused> {
        let req = OcspRequest::from_der(der).map_err(|_| Refused::Malformed)?;
        let list = req.tbs_request.request_list;
        if list.is_empty() {
            return Err(Refused::Malformed);
        }
        let issuer = &ca.issuing_cert().tbs_certificate;
        let name_der = issuer.subject.to_der().map_err(|_| Refused::Malformed)?;
        let key = issuer
            .subject_public_key_info
            .subject_public_key
            .raw_bytes();
        let mut ids = Vec::with_capacity(list.len());
        for r in list {
            let id = r.req_cert;
            let alg = &id.hash_algorithm.oid;
            let (Some(name_hash), Some(key_hash)) = (digest(alg, &name_der), digest(alg, key))
            else {
                return Err(Refused::Malformed);
            };
            if id.issuer_name_hash.as_bytes() != name_hash
                || id.issuer_key_hash.as_bytes() != key_hash
            {
                return Err(Refused::Unauthorized);
            }
            ids.push(id);
        }
        let nonce = match req.tbs_request.request_extensions {
            None => None,
            Some(exts) => match exts.into_iter().find(|e| e.extn_id == OID_OCSP_NONCE) {
                None => None,
                Some(e) => {
                    // The value is an OCTET STRING of 1 to 32 bytes (RFC 8954).
                    let inner = OctetString::from_der(e.extn_value.as_bytes())
                        .map_err(|_| Refused::Malformed)?;
                    if !(1..=32).contains(&inner.as_bytes().len()) {
                        return Err(Refused::Malformed);
                    }
                    Some(e)
                }
            },
        };
        Ok(OcspQuery { ids, nonce })
    }

    /// The serial numbers asked about (big-endian bytes), in order.
    pub fn serials(&self) -> Vec<Vec<u8>> {
        self.ids
            .iter()
            .map(|id| id.serial_number.as_bytes().to_vec())
            .collect()
    }
}

impl EmbeddedCa {
    /// A new delegated responder: a P-256 key certified by the issuing CA
    /// for `days` (at most [`RESPONDER_MAX_DAYS`]).
    pub fn ocsp_responder(&self, now: OffsetDateTime, days: u32) -> Result<Responder, PkiError> {
        let days = days.clamp(1, RESPONDER_MAX_DAYS);
        let pkcs8 = EcdsaSigner::generate_pkcs8(Curve::P256).map_err(build_err)?;
        let signer = EcdsaSigner::from_pkcs8(&pkcs8).map_err(build_err)?;
        let spki =
            spki::SubjectPublicKeyInfoOwned::from_der(signer.spki_der()).map_err(build_err)?;
        let key_hash = Sha1::digest(spki.subject_public_key.raw_bytes()).to_vec();
        let issuer = self.issuing_cert().tbs_certificate.subject.clone();
        let org = issuer
            .to_string()
            .split(',')
            .find_map(|rdn| rdn.strip_prefix("O=").map(str::to_string))
            .unwrap_or_else(|| "Keyward".into());
        let validity = crate::embedded::validity_from(now, u64::from(days))?;
        let not_after = OffsetDateTime::from(validity.not_after.to_system_time());
        let mut builder = CertificateBuilder::new(
            Profile::Leaf {
                issuer,
                enable_key_agreement: false,
                enable_key_encipherment: false,
            },
            crate::embedded::random_serial(),
            validity,
            Name::from_str(&format!("CN=Keyward OCSP Responder,O={org}")).map_err(build_err)?,
            spki,
            self.issuing_signer(),
        )
        .map_err(build_err)?;
        builder
            .add_extension(&ExtendedKeyUsage(vec![OID_OCSP_SIGNING]))
            .map_err(build_err)?;
        builder.add_extension(&OcspNoCheck).map_err(build_err)?;
        let cert = builder.build::<DerSignature>().map_err(build_err)?;
        Ok(Responder {
            signer,
            cert,
            key_hash,
            not_after,
        })
    }
}

/// id-pkix-ocsp-nocheck: its value is NULL.
struct OcspNoCheck;

impl const_oid::AssociatedOid for OcspNoCheck {
    const OID: ObjectIdentifier = OID_OCSP_NOCHECK;
}

impl Encode for OcspNoCheck {
    fn encoded_len(&self) -> der::Result<der::Length> {
        Null.encoded_len()
    }
    fn encode(&self, writer: &mut impl der::Writer) -> der::Result<()> {
        Null.encode(writer)
    }
}

impl x509_cert::ext::AsExtension for OcspNoCheck {
    fn critical(&self, _subject: &Name, _extensions: &[Extension]) -> bool {
        false
    }
}

impl Responder {
    /// When its certificate expires (rotate before).
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    pub fn certificate(&self) -> &Certificate {
        &self.cert
    }

    /// The signed answer to `query`: one status per CertID (in order),
    /// valid until `next_update`.
    pub fn respond(
        &self,
        query: &OcspQuery,
        statuses: &[CertificateStatus],
        now: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<Vec<u8>, PkiError> {
        let this_update = ocsp_time(now)?;
        let mut responses = Vec::with_capacity(query.ids.len());
        for (id, status) in query.ids.iter().zip(statuses) {
            let cert_status = match *status {
                CertificateStatus::Good => CertStatus::good(),
                CertificateStatus::Unknown => CertStatus::unknown(),
                CertificateStatus::Revoked { at, reason } => CertStatus::revoked(RevokedInfo {
                    revocation_time: ocsp_time(at)?,
                    revocation_reason: crl_reason(reason),
                }),
            };
            responses.push(SingleResponse {
                cert_id: id.clone(),
                cert_status,
                this_update,
                next_update: Some(ocsp_time(next_update)?),
                single_extensions: None,
            });
        }
        let data = ResponseData {
            version: Version::V1,
            responder_id: ResponderId::ByKey(
                OctetString::new(self.key_hash.clone()).map_err(build_err)?,
            ),
            produced_at: this_update,
            responses,
            response_extensions: query.nonce.clone().map(|n| vec![n]),
        };
        let tbs = data.to_der().map_err(build_err)?;
        let signature = self.signer.sign_der(&tbs).map_err(build_err)?;
        let basic = BasicOcspResponse {
            tbs_response_data: data,
            signature_algorithm: self.signer.curve().signature_algorithm(),
            signature: BitString::from_bytes(&signature).map_err(build_err)?,
            certs: Some(vec![self.cert.clone()]),
        };
        OcspResponse::successful(basic)
            .and_then(|r| r.to_der())
            .map_err(build_err)
    }
}

fn crl_reason(code: u8) -> Option<CrlReason> {
    Some(match code {
        0 => CrlReason::Unspecified,
        1 => CrlReason::KeyCompromise,
        2 => CrlReason::CaCompromise,
        3 => CrlReason::AffiliationChanged,
        4 => CrlReason::Superseded,
        5 => CrlReason::CessationOfOperation,
        6 => CrlReason::CertificateHold,
        8 => CrlReason::RemoveFromCRL,
        9 => CrlReason::PrivilegeWithdrawn,
        10 => CrlReason::AaCompromise,
        _ => return None,
    })
}
