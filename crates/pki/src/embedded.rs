//! The embedded CA: a root on P-384 and an issuing CA on P-256, created at
//! first start, and a P-256 content-signing certificate for PIV CHUIDs. The
//! server keeps the private keys only sealed under its KEK (see
//! [`EmbeddedCaParts`]).
//!
//! Why the issuing CA is P-256: it signs two certificates per issuance, and a
//! P-256 signature (ECDSA with SHA-256, which every PIV relying party accepts,
//! SP 800-78-4 table 3-3) costs about a tenth of a P-384 one. The root signs
//! once in ten years and keeps the larger curve. CAs created before this
//! choice have a P-384 issuing key, which still loads and signs with SHA-384.
//! All signatures are made by ring ([`keyward_signer`]).

use std::str::FromStr;

use der::asn1::{BitString, Ia5String, OctetString};
use der::{Decode, Encode};
use keyward_signer::{Curve, DerSignature, EcdsaSigner};
use rand::rngs::OsRng;
use rand::RngCore;
use sha1::{Digest, Sha1};
use spki::SubjectPublicKeyInfoOwned;
use time::OffsetDateTime;
use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::ext::pkix::crl::dp::DistributionPoint;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::{AccessDescription, AuthorityInfoAccessSyntax};
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, CrlDistributionPoints, ExtendedKeyUsage, KeyUsage,
    SubjectAltName, SubjectKeyIdentifier,
};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};
use x509_cert::{Certificate, TbsCertificate, Version};
use zeroize::Zeroizing;

use crate::ext::SidExtension;
use crate::template::LeafRequest;
use crate::{build_err, CertificateAuthority, IssuedCertificate, PkiError};

/// id-PIV-content-signing (SP 800-73-4 / FIPS 201).
pub const OID_PIV_CONTENT_SIGNING: const_oid::ObjectIdentifier =
    const_oid::ObjectIdentifier::new_unwrap("2.16.840.1.101.3.6.7");

/// Years of validity of the root and the issuing CA.
const ROOT_YEARS: u64 = 20;
const ISSUING_YEARS: u64 = 10;

/// The CA's material for storage: keys as PKCS#8 DER (to be sealed), and
/// certificates as DER.
#[derive(Clone)]
pub struct EmbeddedCaParts {
    pub name: String,
    pub root_key_pkcs8: Zeroizing<Vec<u8>>,
    pub root_cert: Vec<u8>,
    pub issuing_key_pkcs8: Zeroizing<Vec<u8>>,
    pub issuing_cert: Vec<u8>,
    pub content_signer_key_pkcs8: Zeroizing<Vec<u8>>,
    pub content_signer_cert: Vec<u8>,
    /// URL of the issuing CA's CRL, written into issued certificates.
    pub crl_url: Option<String>,
}

pub struct EmbeddedCa {
    name: String,
    root_cert: Certificate,
    /// Kept as given, for [`EmbeddedCa::to_parts`]; the root signs nothing
    /// after [`EmbeddedCa::generate`].
    root_key_pkcs8: Zeroizing<Vec<u8>>,
    issuing: EcdsaSigner,
    issuing_key_pkcs8: Zeroizing<Vec<u8>>,
    issuing_cert: Certificate,
    content_signer: EcdsaSigner,
    content_signer_key_pkcs8: Zeroizing<Vec<u8>>,
    content_signer_cert: Certificate,
    crl_url: Option<String>,
    /// Authority Information Access of issued certificates: the OCSP
    /// responder and the issuing CA certificate (caIssuers).
    authority_info: Option<(String, String)>,
}

impl std::fmt::Debug for EmbeddedCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedCa")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

pub(crate) fn random_serial() -> SerialNumber {
    // 128 random bits, positive, never starting with a zero byte.
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    bytes[0] = (bytes[0] & 0x7F) | 0x01;
    SerialNumber::new(&bytes).expect("16 bytes is a valid serial number")
}

pub(crate) fn x509_time(t: OffsetDateTime) -> Result<Time, PkiError> {
    Time::try_from(std::time::SystemTime::from(t)).map_err(build_err)
}

pub(crate) fn validity_from(now: OffsetDateTime, days: u64) -> Result<Validity, PkiError> {
    // A minute back: clocks of the relying parties drift.
    let start = now - time::Duration::minutes(1);
    let end = now + time::Duration::days(days as i64);
    Ok(Validity {
        not_before: x509_time(start)?,
        not_after: x509_time(end)?,
    })
}

fn key_id(spki: &SubjectPublicKeyInfoOwned) -> Vec<u8> {
    // RFC 5280 4.2.1.2 method 1: SHA-1 of the subjectPublicKey BIT STRING.
    Sha1::digest(spki.subject_public_key.raw_bytes()).to_vec()
}

fn spki_of(k: &EcdsaSigner) -> Result<SubjectPublicKeyInfoOwned, PkiError> {
    SubjectPublicKeyInfoOwned::from_der(k.spki_der()).map_err(build_err)
}

/// A new key on `curve`: its PKCS#8 (to be sealed) and its signer.
fn new_key(curve: Curve) -> Result<(Zeroizing<Vec<u8>>, EcdsaSigner), PkiError> {
    let pkcs8 = EcdsaSigner::generate_pkcs8(curve).map_err(build_err)?;
    let signer = EcdsaSigner::from_pkcs8(&pkcs8).map_err(build_err)?;
    Ok((pkcs8, signer))
}

fn time_of(t: &Time) -> OffsetDateTime {
    OffsetDateTime::from(t.to_system_time())
}

impl EmbeddedCa {
    /// A new root, issuing CA and content signer named after `organisation`.
    pub fn generate(
        organisation: &str,
        crl_url: Option<String>,
        now: OffsetDateTime,
    ) -> Result<EmbeddedCa, PkiError> {
        EmbeddedCa::generate_with(organisation, crl_url, now, Curve::P256)
    }

    /// [`EmbeddedCa::generate`] with the issuing CA on `issuing_curve`
    /// (tests make the P-384 issuing CAs of earlier versions with it).
    fn generate_with(
        organisation: &str,
        crl_url: Option<String>,
        now: OffsetDateTime,
        issuing_curve: Curve,
    ) -> Result<EmbeddedCa, PkiError> {
        let org = crate::template::escape_rfc4514(organisation);
        let (root_key_pkcs8, root) = new_key(Curve::P384)?;
        let root_name =
            Name::from_str(&format!("CN=Keyward Root CA,O={org}")).map_err(build_err)?;
        let root_cert = CertificateBuilder::new(
            Profile::Root,
            random_serial(),
            validity_from(now, ROOT_YEARS * 366)?,
            root_name.clone(),
            spki_of(&root)?,
            &root,
        )
        .map_err(build_err)?
        .build::<DerSignature>()
        .map_err(build_err)?;

        let (issuing_key_pkcs8, issuing) = new_key(issuing_curve)?;
        let issuing_name =
            Name::from_str(&format!("CN=Keyward Issuing CA,O={org}")).map_err(build_err)?;
        let issuing_cert = CertificateBuilder::new(
            Profile::SubCA {
                issuer: root_name,
                path_len_constraint: Some(0),
            },
            random_serial(),
            validity_from(now, ISSUING_YEARS * 366)?,
            issuing_name.clone(),
            spki_of(&issuing)?,
            &root,
        )
        .map_err(build_err)?
        .build::<DerSignature>()
        .map_err(build_err)?;

        let (content_signer_key_pkcs8, content_signer) = new_key(Curve::P256)?;
        let mut builder = CertificateBuilder::new(
            Profile::Leaf {
                issuer: issuing_name,
                enable_key_agreement: false,
                enable_key_encipherment: false,
            },
            random_serial(),
            validity_from(now, 5 * 366)?,
            Name::from_str(&format!("CN=Keyward CHUID Signer,O={org}")).map_err(build_err)?,
            spki_of(&content_signer)?,
            &issuing,
        )
        .map_err(build_err)?;
        builder
            .add_extension(&ExtendedKeyUsage(vec![OID_PIV_CONTENT_SIGNING]))
            .map_err(build_err)?;
        let content_signer_cert = builder.build::<DerSignature>().map_err(build_err)?;

        Ok(EmbeddedCa {
            name: "Keyward Issuing CA".into(),
            root_cert,
            root_key_pkcs8,
            issuing,
            issuing_key_pkcs8,
            issuing_cert,
            content_signer,
            content_signer_key_pkcs8,
            content_signer_cert,
            crl_url,
            authority_info: None,
        })
    }

    pub fn to_parts(&self) -> Result<EmbeddedCaParts, PkiError> {
        Ok(EmbeddedCaParts {
            name: self.name.clone(),
            root_key_pkcs8: self.root_key_pkcs8.clone(),
            root_cert: self.root_cert.to_der().map_err(build_err)?,
            issuing_key_pkcs8: self.issuing_key_pkcs8.clone(),
            issuing_cert: self.issuing_cert.to_der().map_err(build_err)?,
            content_signer_key_pkcs8: self.content_signer_key_pkcs8.clone(),
            content_signer_cert: self.content_signer_cert.to_der().map_err(build_err)?,
            crl_url: self.crl_url.clone(),
        })
    }

    pub fn from_parts(p: &EmbeddedCaParts) -> Result<EmbeddedCa, PkiError> {
        let corrupt =
            |what: &str, e: &dyn std::fmt::Display| PkiError::Corrupt(format!("the {what}: {e}"));
        let key = |what: &str, pkcs8: &[u8]| {
            EcdsaSigner::from_pkcs8(pkcs8).map_err(|e| corrupt(what, &e))
        };
        let cert =
            |what: &str, der: &[u8]| Certificate::from_der(der).map_err(|e| corrupt(what, &e));
        // The root key is only checked: it signs nothing after generation.
        key("root CA key", &p.root_key_pkcs8)?;
        let ca = EmbeddedCa {
            name: p.name.clone(),
            root_cert: cert("root CA certificate", &p.root_cert)?,
            root_key_pkcs8: p.root_key_pkcs8.clone(),
            issuing: key("issuing CA key", &p.issuing_key_pkcs8)?,
            issuing_key_pkcs8: p.issuing_key_pkcs8.clone(),
            issuing_cert: cert("issuing CA certificate", &p.issuing_cert)?,
            content_signer: key("CHUID signer key", &p.content_signer_key_pkcs8)?,
            content_signer_key_pkcs8: p.content_signer_key_pkcs8.clone(),
            content_signer_cert: cert("CHUID signer certificate", &p.content_signer_cert)?,
            crl_url: p.crl_url.clone(),
            authority_info: None,
        };
        // Each key must be the one its certificate certifies.
        for (what, signer, cert) in [
            ("issuing CA", &ca.issuing, &ca.issuing_cert),
            ("CHUID signer", &ca.content_signer, &ca.content_signer_cert),
        ] {
            let certified = cert
                .tbs_certificate
                .subject_public_key_info
                .subject_public_key
                .raw_bytes();
            if certified != signer.public_point() {
                return Err(PkiError::Corrupt(format!(
                    "the {what} key does not match its certificate"
                )));
            }
        }
        Ok(ca)
    }

    pub fn set_crl_url(&mut self, url: Option<String>) {
        self.crl_url = url;
    }

    /// The OCSP responder's URL and the issuing CA certificate's URL,
    /// written into issued certificates (Authority Information Access).
    pub fn set_authority_info(&mut self, ocsp_url: String, ca_issuers_url: String) {
        self.authority_info = Some((ocsp_url, ca_issuers_url));
    }

    pub fn root_cert(&self) -> &Certificate {
        &self.root_cert
    }

    pub fn issuing_cert(&self) -> &Certificate {
        &self.issuing_cert
    }

    /// The issuing CA's signer (P-256 for CAs created now, P-384 for older ones).
    pub(crate) fn issuing_signer(&self) -> &EcdsaSigner {
        &self.issuing
    }

    /// The CHUID content signer: key and certificate.
    pub fn content_signer(&self) -> (&EcdsaSigner, &Certificate) {
        (&self.content_signer, &self.content_signer_cert)
    }

    pub(crate) fn issuing_key_id(&self) -> Vec<u8> {
        key_id(&self.issuing_cert.tbs_certificate.subject_public_key_info)
    }

    pub(crate) fn root_key_id(&self) -> Vec<u8> {
        key_id(&self.root_cert.tbs_certificate.subject_public_key_info)
    }

    /// The root's signer (it signs the root CRL and re-certifies the
    /// issuing CA; nothing else).
    pub(crate) fn root_signer(&self) -> Result<EcdsaSigner, PkiError> {
        EcdsaSigner::from_pkcs8(&self.root_key_pkcs8).map_err(build_err)
    }

    /// The CRL distribution point the issuing CA's certificate names, if any.
    pub fn issuing_crl_url(&self) -> Option<String> {
        use const_oid::AssociatedOid;
        let ext = self
            .issuing_cert
            .tbs_certificate
            .extensions
            .as_ref()?
            .iter()
            .find(|e| e.extn_id == CrlDistributionPoints::OID)?;
        let cdp = CrlDistributionPoints::from_der(ext.extn_value.as_bytes()).ok()?;
        cdp.0.iter().find_map(|dp| match &dp.distribution_point {
            Some(DistributionPointName::FullName(names)) => names.iter().find_map(|n| match n {
                GeneralName::UniformResourceIdentifier(u) => Some(u.to_string()),
                _ => None,
            }),
            _ => None,
        })
    }

    /// Certifies the issuing CA's key again (same subject, key and
    /// validity, a new serial) with a CRL distribution point at the root's
    /// CRL, `root_crl_url`: Windows checks the revocation of every
    /// certificate in the chain below the root.
    pub fn reissue_issuing_cert(&mut self, root_crl_url: &str) -> Result<(), PkiError> {
        use const_oid::AssociatedOid;
        let root = self.root_signer()?;
        let mut tbs = self.issuing_cert.tbs_certificate.clone();
        tbs.serial_number = random_serial();
        let algorithm = root.curve().signature_algorithm();
        tbs.signature = algorithm.clone();
        let cdp = CrlDistributionPoints(vec![DistributionPoint {
            distribution_point: Some(DistributionPointName::FullName(vec![
                GeneralName::UniformResourceIdentifier(
                    Ia5String::new(root_crl_url).map_err(build_err)?,
                ),
            ])),
            reasons: None,
            crl_issuer: None,
        }]);
        let mut extensions: Vec<Extension> = tbs
            .extensions
            .take()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.extn_id != CrlDistributionPoints::OID)
            .collect();
        extensions.push(Extension {
            extn_id: CrlDistributionPoints::OID,
            critical: false,
            extn_value: OctetString::new(cdp.to_der().map_err(build_err)?).map_err(build_err)?,
        });
        tbs.extensions = Some(extensions);
        let signature = root
            .sign_der(&tbs.to_der().map_err(build_err)?)
            .map_err(build_err)?;
        self.issuing_cert = Certificate {
            tbs_certificate: tbs,
            signature_algorithm: algorithm,
            signature: BitString::from_bytes(&signature).map_err(build_err)?,
        };
        Ok(())
    }
}

impl CertificateAuthority for EmbeddedCa {
    fn name(&self) -> &str {
        &self.name
    }

    fn issue(&self, req: &LeafRequest, now: OffsetDateTime) -> Result<IssuedCertificate, PkiError> {
        // Built field by field rather than through x509-cert's builder: its
        // leaf profile decides key usage itself, and a device certificate's
        // key usage and extended key usage come from the template.
        fn ext<T: Encode>(
            oid: const_oid::ObjectIdentifier,
            critical: bool,
            value: &T,
        ) -> Result<Extension, PkiError> {
            Ok(Extension {
                extn_id: oid,
                critical,
                extn_value: OctetString::new(value.to_der().map_err(build_err)?)
                    .map_err(build_err)?,
            })
        }
        use const_oid::AssociatedOid;
        let mut extensions = vec![ext(
            BasicConstraints::OID,
            true,
            &BasicConstraints {
                ca: false,
                path_len_constraint: None,
            },
        )?];
        if !req.key_usage_empty {
            extensions.push(ext(KeyUsage::OID, true, &KeyUsage(req.key_usage))?);
        }
        if !req.extended_key_usage.is_empty() {
            extensions.push(ext(
                ExtendedKeyUsage::OID,
                false,
                &ExtendedKeyUsage(req.extended_key_usage.clone()),
            )?);
        }
        if !req.subject_alt_names.is_empty() {
            // Critical when the subject is empty (RFC 5280 4.2.1.6).
            let critical = req.subject.0.is_empty();
            extensions.push(ext(
                SubjectAltName::OID,
                critical,
                &SubjectAltName(req.subject_alt_names.clone()),
            )?);
        }
        if let Some(sid) = &req.sid {
            extensions.push(ext(
                SidExtension::OID,
                false,
                &SidExtension::new(sid).map_err(build_err)?,
            )?);
        }
        extensions.push(ext(
            SubjectKeyIdentifier::OID,
            false,
            &SubjectKeyIdentifier(OctetString::new(key_id(&req.spki)).map_err(build_err)?),
        )?);
        extensions.push(ext(
            AuthorityKeyIdentifier::OID,
            false,
            &AuthorityKeyIdentifier {
                key_identifier: Some(OctetString::new(self.issuing_key_id()).map_err(build_err)?),
                authority_cert_issuer: None,
                authority_cert_serial_number: None,
            },
        )?);
        if let Some(url) = &self.crl_url {
            let uri = Ia5String::new(url).map_err(build_err)?;
            extensions.push(ext(
                CrlDistributionPoints::OID,
                false,
                &CrlDistributionPoints(vec![DistributionPoint {
                    distribution_point: Some(DistributionPointName::FullName(vec![
                        GeneralName::UniformResourceIdentifier(uri),
                    ])),
                    reasons: None,
                    crl_issuer: None,
                }]),
            )?);
        }
        if let Some((ocsp, ca_issuers)) = &self.authority_info {
            let access = |method: &str, url: &str| -> Result<AccessDescription, PkiError> {
                Ok(AccessDescription {
                    access_method: const_oid::ObjectIdentifier::new_unwrap(method),
                    access_location: GeneralName::UniformResourceIdentifier(
                        Ia5String::new(url).map_err(build_err)?,
                    ),
                })
            };
            extensions.push(ext(
                AuthorityInfoAccessSyntax::OID,
                false,
                &AuthorityInfoAccessSyntax(vec![
                    // id-ad-ocsp, id-ad-caIssuers
                    access("1.3.6.1.5.5.7.48.1", ocsp)?,
                    access("1.3.6.1.5.5.7.48.2", ca_issuers)?,
                ]),
            )?);
        }
        let algorithm = self.issuing.curve().signature_algorithm();
        let tbs = TbsCertificate {
            version: Version::V3,
            serial_number: random_serial(),
            signature: algorithm.clone(),
            issuer: self.issuing_cert.tbs_certificate.subject.clone(),
            validity: validity_from(now, req.validity_days as u64)?,
            subject: req.subject.clone(),
            subject_public_key_info: req.spki.clone(),
            issuer_unique_id: None,
            subject_unique_id: None,
            extensions: Some(extensions),
        };
        let tbs_der = tbs.to_der().map_err(build_err)?;
        let signature = self.issuing.sign_der(&tbs_der).map_err(build_err)?;
        let cert = Certificate {
            tbs_certificate: tbs,
            signature_algorithm: algorithm,
            signature: BitString::from_bytes(&signature).map_err(build_err)?,
        };
        let tbs = &cert.tbs_certificate;
        Ok(IssuedCertificate {
            der: cert.to_der().map_err(build_err)?,
            serial_hex: hex::encode(tbs.serial_number.as_bytes()),
            not_before: time_of(&tbs.validity.not_before),
            not_after: time_of(&tbs.validity.not_after),
            subject: tbs.subject.to_string(),
        })
    }

    fn chain_der(&self) -> Vec<Vec<u8>> {
        vec![
            self.issuing_cert.to_der().unwrap_or_default(),
            self.root_cert.to_der().unwrap_or_default(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crl::Revoked;
    use keyward_domain::{
        CertificateTemplate, ExtendedKeyUsage as Eku, KeyAlgorithm, KeyUsage as Ku, PivSlot,
        PkiApplication, SanSource, User, UserStatus,
    };
    use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ECDSA_P384_SHA384_ASN1};

    fn request() -> LeafRequest {
        let app = PkiApplication {
            name: "PIV Authentication".into(),
            slot: PivSlot::Authentication,
            algorithm: KeyAlgorithm::EccP256,
            certificate_authority: "Keyward Issuing CA".into(),
            template: CertificateTemplate {
                subject_dn: "CN={display_name}".into(),
                subject_alt_names: vec![SanSource::Upn],
                validity_days: 30,
                key_usage: vec![Ku::DigitalSignature],
                extended_key_usage: vec![Eku::ClientAuth],
            },
            renewal_window_days: None,
            renewal: None,
        };
        let user = User {
            id: uuid::Uuid::new_v4(),
            login: "alice".into(),
            upn: Some("alice@example.com".into()),
            display_name: "Alice".into(),
            email: None,
            attributes: Default::default(),
            status: UserStatus::Active,
        };
        let (_, device_key) = new_key(Curve::P256).unwrap();
        LeafRequest::from_template(&app, &user, None, device_key.spki_der()).unwrap()
    }

    /// Certificates and CRLs signed by `ca` carry `oid` and verify with the
    /// issuing CA certificate's key under `verifier`, after a reload.
    fn signs_with(
        ca: EmbeddedCa,
        oid: &str,
        verifier: &'static ring::signature::EcdsaVerificationAlgorithm,
    ) {
        let ca = EmbeddedCa::from_parts(&ca.to_parts().unwrap()).unwrap();
        let now = OffsetDateTime::now_utc();
        let key = ca
            .issuing_cert
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes()
            .to_vec();
        let key = UnparsedPublicKey::new(verifier, key);
        let leaf = Certificate::from_der(&ca.issue(&request(), now).unwrap().der).unwrap();
        assert_eq!(leaf.signature_algorithm.oid.to_string(), oid);
        let tbs = leaf.tbs_certificate.to_der().unwrap();
        key.verify(&tbs, leaf.signature.raw_bytes()).unwrap();
        let signer = &ca.content_signer_cert;
        assert_eq!(signer.signature_algorithm.oid.to_string(), oid);
        let tbs = signer.tbs_certificate.to_der().unwrap();
        key.verify(&tbs, signer.signature.raw_bytes()).unwrap();
        let revoked = [Revoked {
            serial: vec![1, 2, 3],
            at: now,
            reason: Some(4),
        }];
        let crl = ca
            .crl(&revoked, now, now + time::Duration::days(1), 7)
            .unwrap();
        let crl = x509_cert::crl::CertificateList::from_der(&crl).unwrap();
        assert_eq!(crl.signature_algorithm.oid.to_string(), oid);
        let tbs = crl.tbs_cert_list.to_der().unwrap();
        key.verify(&tbs, crl.signature.raw_bytes()).unwrap();
    }

    #[test]
    fn new_issuing_cas_sign_with_p256_and_sha256() {
        let ca = EmbeddedCa::generate("Example", None, OffsetDateTime::now_utc()).unwrap();
        let spki = &ca.issuing_cert.tbs_certificate.subject_public_key_info;
        assert_eq!(
            spki.subject_public_key.raw_bytes().len(),
            65,
            "a P-256 point"
        );
        let root = &ca.root_cert.tbs_certificate.subject_public_key_info;
        assert_eq!(
            root.subject_public_key.raw_bytes().len(),
            97,
            "a P-384 root"
        );
        signs_with(ca, "1.2.840.10045.4.3.2", &ECDSA_P256_SHA256_ASN1);
    }

    #[test]
    fn an_earlier_p384_issuing_ca_still_loads_and_signs_with_sha384() {
        let now = OffsetDateTime::now_utc();
        let ca = EmbeddedCa::generate_with("Example", None, now, Curve::P384).unwrap();
        signs_with(ca, "1.2.840.10045.4.3.3", &ECDSA_P384_SHA384_ASN1);
    }

    #[test]
    fn keys_that_do_not_match_their_certificates_are_refused() {
        let now = OffsetDateTime::now_utc();
        let a = EmbeddedCa::generate("A", None, now)
            .unwrap()
            .to_parts()
            .unwrap();
        let b = EmbeddedCa::generate("B", None, now)
            .unwrap()
            .to_parts()
            .unwrap();
        let mut mixed = a.clone();
        mixed.issuing_key_pkcs8 = b.issuing_key_pkcs8.clone();
        let e = EmbeddedCa::from_parts(&mixed).unwrap_err().to_string();
        assert!(e.contains("issuing CA key does not match"), "{e}");
        let mut mixed = a.clone();
        mixed.content_signer_key_pkcs8 = b.content_signer_key_pkcs8.clone();
        let e = EmbeddedCa::from_parts(&mixed).unwrap_err().to_string();
        assert!(e.contains("CHUID signer key does not match"), "{e}");
        let mut broken = a;
        broken.root_key_pkcs8 = Zeroizing::new(b"not a key".to_vec());
        let e = EmbeddedCa::from_parts(&broken).unwrap_err().to_string();
        assert!(e.contains("root CA key"), "{e}");
    }
}
