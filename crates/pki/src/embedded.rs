//! The embedded CA: a root and an issuing CA on P-384, created at first start,
//! and a P-256 content-signing certificate for PIV CHUIDs. The server keeps
//! the private keys only sealed under its KEK (see [`EmbeddedCaParts`]).

use std::str::FromStr;

use der::asn1::{BitString, Ia5String, OctetString};
use der::{Decode, Encode};
use p384::ecdsa::{DerSignature, SigningKey};
use p384::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use rand::rngs::OsRng;
use rand::RngCore;
use sha1::{Digest, Sha1};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use time::OffsetDateTime;
use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::ext::pkix::crl::dp::DistributionPoint;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
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

const ECDSA_WITH_SHA384: const_oid::ObjectIdentifier =
    const_oid::ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");

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
    issuing_key: SigningKey,
    /// The same key for ring, which signs the certificates of issuance.
    issuing_signer: ring::signature::EcdsaKeyPair,
    issuing_cert: Certificate,
    root_key: SigningKey,
    content_signer_key: p256::ecdsa::SigningKey,
    content_signer_cert: Certificate,
    crl_url: Option<String>,
}

impl std::fmt::Debug for EmbeddedCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedCa")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn random_serial() -> SerialNumber {
    // 128 random bits, positive, never starting with a zero byte.
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    bytes[0] = (bytes[0] & 0x7F) | 0x01;
    SerialNumber::new(&bytes).expect("16 bytes is a valid serial number")
}

pub(crate) fn x509_time(t: OffsetDateTime) -> Result<Time, PkiError> {
    Time::try_from(std::time::SystemTime::from(t)).map_err(build_err)
}

fn validity_from(now: OffsetDateTime, days: u64) -> Result<Validity, PkiError> {
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

fn spki_of<K: EncodePublicKey>(k: &K) -> Result<SubjectPublicKeyInfoOwned, PkiError> {
    let der = k.to_public_key_der().map_err(build_err)?;
    SubjectPublicKeyInfoOwned::from_der(der.as_bytes()).map_err(build_err)
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
        let org = crate::template::escape_rfc4514(organisation);
        let root_key = SigningKey::random(&mut OsRng);
        let root_spki = spki_of(root_key.verifying_key())?;
        let root_name =
            Name::from_str(&format!("CN=Keyward Root CA,O={org}")).map_err(build_err)?;
        let root_cert = CertificateBuilder::new(
            Profile::Root,
            random_serial(),
            validity_from(now, ROOT_YEARS * 366)?,
            root_name.clone(),
            root_spki,
            &root_key,
        )
        .map_err(build_err)?
        .build::<DerSignature>()
        .map_err(build_err)?;

        let issuing_key = SigningKey::random(&mut OsRng);
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
            spki_of(issuing_key.verifying_key())?,
            &root_key,
        )
        .map_err(build_err)?
        .build::<DerSignature>()
        .map_err(build_err)?;

        let content_signer_key = p256::ecdsa::SigningKey::random(&mut OsRng);
        let mut builder = CertificateBuilder::new(
            Profile::Leaf {
                issuer: issuing_name,
                enable_key_agreement: false,
                enable_key_encipherment: false,
            },
            random_serial(),
            validity_from(now, 5 * 366)?,
            Name::from_str(&format!("CN=Keyward CHUID Signer,O={org}")).map_err(build_err)?,
            spki_of(content_signer_key.verifying_key())?,
            &issuing_key,
        )
        .map_err(build_err)?;
        builder
            .add_extension(&ExtendedKeyUsage(vec![OID_PIV_CONTENT_SIGNING]))
            .map_err(build_err)?;
        let content_signer_cert = builder.build::<DerSignature>().map_err(build_err)?;

        Ok(EmbeddedCa {
            issuing_signer: ring_signer(&issuing_key)?,
            name: "Keyward Issuing CA".into(),
            root_cert,
            issuing_key,
            issuing_cert,
            root_key,
            content_signer_key,
            content_signer_cert,
            crl_url,
        })
    }

    pub fn to_parts(&self) -> Result<EmbeddedCaParts, PkiError> {
        Ok(EmbeddedCaParts {
            name: self.name.clone(),
            root_key_pkcs8: Zeroizing::new(
                self.root_key
                    .to_pkcs8_der()
                    .map_err(build_err)?
                    .as_bytes()
                    .to_vec(),
            ),
            root_cert: self.root_cert.to_der().map_err(build_err)?,
            issuing_key_pkcs8: Zeroizing::new(
                self.issuing_key
                    .to_pkcs8_der()
                    .map_err(build_err)?
                    .as_bytes()
                    .to_vec(),
            ),
            issuing_cert: self.issuing_cert.to_der().map_err(build_err)?,
            content_signer_key_pkcs8: Zeroizing::new(
                self.content_signer_key
                    .to_pkcs8_der()
                    .map_err(build_err)?
                    .as_bytes()
                    .to_vec(),
            ),
            content_signer_cert: self.content_signer_cert.to_der().map_err(build_err)?,
            crl_url: self.crl_url.clone(),
        })
    }

    pub fn from_parts(p: &EmbeddedCaParts) -> Result<EmbeddedCa, PkiError> {
        let corrupt = |e: &dyn std::fmt::Display| PkiError::Corrupt(e.to_string());
        let issuing_key =
            SigningKey::from_pkcs8_der(&p.issuing_key_pkcs8).map_err(|e| corrupt(&e))?;
        let ca = EmbeddedCa {
            issuing_signer: ring_signer(&issuing_key)?,
            issuing_key,
            name: p.name.clone(),
            root_key: SigningKey::from_pkcs8_der(&p.root_key_pkcs8).map_err(|e| corrupt(&e))?,
            root_cert: Certificate::from_der(&p.root_cert).map_err(|e| corrupt(&e))?,
            issuing_cert: Certificate::from_der(&p.issuing_cert).map_err(|e| corrupt(&e))?,
            content_signer_key: p256::ecdsa::SigningKey::from_pkcs8_der(
                &p.content_signer_key_pkcs8,
            )
            .map_err(|e| corrupt(&e))?,
            content_signer_cert: Certificate::from_der(&p.content_signer_cert)
                .map_err(|e| corrupt(&e))?,
            crl_url: p.crl_url.clone(),
        };
        // The issuing key must be the one certified.
        let certified = ca
            .issuing_cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(build_err)?;
        let actual = spki_of(ca.issuing_key.verifying_key())?
            .to_der()
            .map_err(build_err)?;
        if certified != actual {
            return Err(PkiError::Corrupt(
                "the issuing CA key does not match its certificate".into(),
            ));
        }
        Ok(ca)
    }

    pub fn set_crl_url(&mut self, url: Option<String>) {
        self.crl_url = url;
    }

    pub fn root_cert(&self) -> &Certificate {
        &self.root_cert
    }

    pub fn issuing_cert(&self) -> &Certificate {
        &self.issuing_cert
    }

    pub fn issuing_key(&self) -> &SigningKey {
        &self.issuing_key
    }

    /// The CHUID content signer: key and certificate.
    pub fn content_signer(&self) -> (&p256::ecdsa::SigningKey, &Certificate) {
        (&self.content_signer_key, &self.content_signer_cert)
    }

    pub(crate) fn issuing_key_id(&self) -> Vec<u8> {
        key_id(&self.issuing_cert.tbs_certificate.subject_public_key_info)
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
        let algorithm = AlgorithmIdentifierOwned {
            oid: ECDSA_WITH_SHA384,
            parameters: None,
        };
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
        // ring's P-384 is several times faster than the portable arithmetic;
        // the signature is the same DER ECDSA-Sig-Value.
        let signature = self
            .issuing_signer
            .sign(&ring::rand::SystemRandom::new(), &tbs_der)
            .map_err(|_| PkiError::Build("signing the certificate".into()))?;
        let cert = Certificate {
            tbs_certificate: tbs,
            signature_algorithm: algorithm,
            signature: BitString::from_bytes(signature.as_ref()).map_err(build_err)?,
        };
        let tbs = &cert.tbs_certificate;
        Ok(IssuedCertificate {
            der: cert.to_der().map_err(build_err)?,
            serial_hex: hex_lower(tbs.serial_number.as_bytes()),
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

/// A P-384 key as ring's signer of ECDSA with SHA-384 (DER signatures).
fn ring_signer(key: &SigningKey) -> Result<ring::signature::EcdsaKeyPair, PkiError> {
    let pkcs8 = key.to_pkcs8_der().map_err(build_err)?;
    ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P384_SHA384_ASN1_SIGNING,
        pkcs8.as_bytes(),
        &ring::rand::SystemRandom::new(),
    )
    .map_err(|e| PkiError::Corrupt(format!("the issuing CA key: {e}")))
}

pub(crate) fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
