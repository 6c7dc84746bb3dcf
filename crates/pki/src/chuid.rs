//! The issuer's signature over a PIV CHUID (SP 800-73-4 tag 3E): a CMS
//! SignedData, content detached, eContentType id-PIV-CHUIDSecurityObject,
//! signed by the CA's content signer whose certificate it carries.

use cms::builder::{SignedDataBuilder, SignerInfoBuilder};
use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::signed_data::{EncapsulatedContentInfo, SignerIdentifier};
use der::Encode;
use sha2::{Digest, Sha256};
use spki::AlgorithmIdentifierOwned;

use crate::{build_err, EmbeddedCa, PkiError};

/// id-PIV-CHUIDSecurityObject.
pub const OID_PIV_CHUID_SECURITY_OBJECT: const_oid::ObjectIdentifier =
    const_oid::ObjectIdentifier::new_unwrap("2.16.840.1.101.3.6.1");

impl EmbeddedCa {
    /// Signs CHUID `content` (tags 30, 34, 35): returns the DER ContentInfo.
    pub fn sign_chuid(&self, content: &[u8]) -> Result<Vec<u8>, PkiError> {
        let (key, cert) = self.content_signer();
        let econtent = EncapsulatedContentInfo {
            econtent_type: OID_PIV_CHUID_SECURITY_OBJECT,
            econtent: None,
        };
        let sha256 = AlgorithmIdentifierOwned {
            oid: const_oid::db::rfc5912::ID_SHA_256,
            parameters: None,
        };
        let digest = Sha256::digest(content);
        let sid = SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: cert.tbs_certificate.issuer.clone(),
            serial_number: cert.tbs_certificate.serial_number.clone(),
        });
        let signer = SignerInfoBuilder::new(key, sid, sha256.clone(), &econtent, Some(&digest))
            .map_err(build_err)?;
        let mut builder = SignedDataBuilder::new(&econtent);
        let content_info = builder
            .add_digest_algorithm(sha256)
            .map_err(build_err)?
            .add_certificate(CertificateChoices::Certificate(cert.clone()))
            .map_err(build_err)?
            .add_signer_info::<keyward_signer::EcdsaSigner, keyward_signer::DerSignature>(signer)
            .map_err(build_err)?
            .build()
            .map_err(build_err)?;
        content_info.to_der().map_err(build_err)
    }
}
