//! ECDSA signing through ring, shaped for RustCrypto's X.509 and CMS builders.
//!
//! Certificates, CHUID signatures and attestation certificates are built with
//! RustCrypto's `x509-cert` and `cms`, which sign through the `signature` and
//! `spki` traits. RustCrypto's portable P-256 arithmetic spends a full scalar
//! multiplication (about 0.2 ms here) on every signature and on every public key
//! it derives; ring's assembly with precomputed base-point tables does the same in
//! tens of microseconds, and an issuance signs several times. [`EcdsaSigner`] is a
//! ring key pair behind those traits, so the builders stay as they are.
//!
//! Signatures are DER `ECDSA-Sig-Value`s: ECDSA with SHA-256 on P-256 and with
//! SHA-384 on P-384 (RFC 5758 3.2), the pairs PIV relying parties expect.

use const_oid::ObjectIdentifier;
use der::asn1::BitString;
use der::{Any, Document, Encode};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, EcdsaSigningAlgorithm, KeyPair};
use spki::{
    AlgorithmIdentifierOwned, DynSignatureAlgorithmIdentifier, EncodePublicKey,
    SignatureBitStringEncoding, SubjectPublicKeyInfoOwned,
};
use zeroize::Zeroizing;

const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");

/// The curves a signer can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
}

impl Curve {
    fn ring_algorithm(self) -> &'static EcdsaSigningAlgorithm {
        match self {
            Curve::P256 => &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            Curve::P384 => &ring::signature::ECDSA_P384_SHA384_ASN1_SIGNING,
        }
    }

    fn oid(self) -> ObjectIdentifier {
        match self {
            Curve::P256 => SECP256R1,
            Curve::P384 => SECP384R1,
        }
    }

    /// The signature algorithm this curve signs with.
    pub fn signature_algorithm(self) -> AlgorithmIdentifierOwned {
        AlgorithmIdentifierOwned {
            oid: match self {
                Curve::P256 => ECDSA_WITH_SHA256,
                Curve::P384 => ECDSA_WITH_SHA384,
            },
            parameters: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    /// The key is not a usable P-256 or P-384 key (or not the pair it claims).
    #[error("not a usable ECDSA key: {0}")]
    BadKey(String),
    #[error("ECDSA signing failed")]
    Signing,
}

/// A P-256 or P-384 key pair that signs with ring.
pub struct EcdsaSigner {
    curve: Curve,
    pair: EcdsaKeyPair,
    spki_der: Vec<u8>,
    rng: SystemRandom,
}

impl std::fmt::Debug for EcdsaSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcdsaSigner")
            .field("curve", &self.curve)
            .finish_non_exhaustive()
    }
}

impl EcdsaSigner {
    /// A new random key on `curve`, as PKCS#8 DER (RFC 5208, its ECPrivateKey
    /// carrying the public key).
    pub fn generate_pkcs8(curve: Curve) -> Result<Zeroizing<Vec<u8>>, SignerError> {
        let doc = EcdsaKeyPair::generate_pkcs8(curve.ring_algorithm(), &SystemRandom::new())
            .map_err(|_| SignerError::BadKey("key generation failed".into()))?;
        Ok(Zeroizing::new(doc.as_ref().to_vec()))
    }

    /// The key in PKCS#8 DER, its curve read from the key. ring checks that
    /// the private and public halves belong together.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<EcdsaSigner, SignerError> {
        let mut last = String::new();
        for curve in [Curve::P256, Curve::P384] {
            match EcdsaKeyPair::from_pkcs8(curve.ring_algorithm(), pkcs8, &SystemRandom::new()) {
                Ok(pair) => return EcdsaSigner::new(curve, pair),
                Err(e) => last = e.to_string(),
            }
        }
        Err(SignerError::BadKey(last))
    }

    /// The key from its private scalar (big-endian, the field's size) and its
    /// public point (SEC1 uncompressed).
    pub fn from_scalar_and_point(
        curve: Curve,
        scalar: &[u8],
        point: &[u8],
    ) -> Result<EcdsaSigner, SignerError> {
        let pair = EcdsaKeyPair::from_private_key_and_public_key(
            curve.ring_algorithm(),
            scalar,
            point,
            &SystemRandom::new(),
        )
        .map_err(|e| SignerError::BadKey(e.to_string()))?;
        EcdsaSigner::new(curve, pair)
    }

    fn new(curve: Curve, pair: EcdsaKeyPair) -> Result<EcdsaSigner, SignerError> {
        let spki = SubjectPublicKeyInfoOwned {
            algorithm: AlgorithmIdentifierOwned {
                oid: ID_EC_PUBLIC_KEY,
                parameters: Some(Any::from(curve.oid())),
            },
            subject_public_key: BitString::from_bytes(pair.public_key().as_ref())
                .map_err(|e| SignerError::BadKey(e.to_string()))?,
        };
        let spki_der = spki
            .to_der()
            .map_err(|e| SignerError::BadKey(e.to_string()))?;
        Ok(EcdsaSigner {
            curve,
            pair,
            spki_der,
            rng: SystemRandom::new(),
        })
    }

    pub fn curve(&self) -> Curve {
        self.curve
    }

    /// The public point, SEC1 uncompressed.
    pub fn public_point(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// The public key as a DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// A DER ECDSA-Sig-Value over `message` (hashed with the curve's hash).
    pub fn sign_der(&self, message: &[u8]) -> Result<Vec<u8>, SignerError> {
        self.pair
            .sign(&self.rng, message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| SignerError::Signing)
    }
}

/// A DER ECDSA signature, as the builders put it into a BIT STRING.
pub struct DerSignature(Vec<u8>);

impl DerSignature {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl SignatureBitStringEncoding for DerSignature {
    fn to_bitstring(&self) -> der::Result<BitString> {
        BitString::from_bytes(&self.0)
    }
}

impl signature::Signer<DerSignature> for EcdsaSigner {
    fn try_sign(&self, msg: &[u8]) -> Result<DerSignature, signature::Error> {
        self.sign_der(msg)
            .map(DerSignature)
            .map_err(|_| signature::Error::new())
    }
}

/// The signer's public key for the builders (which put it into
/// subjectPublicKeyInfo or derive key identifiers from it).
#[derive(Clone)]
pub struct PublicKeyDer(Vec<u8>);

impl EncodePublicKey for PublicKeyDer {
    fn to_public_key_der(&self) -> spki::Result<Document> {
        Ok(Document::try_from(self.0.as_slice())?)
    }
}

impl signature::Keypair for EcdsaSigner {
    type VerifyingKey = PublicKeyDer;
    fn verifying_key(&self) -> PublicKeyDer {
        PublicKeyDer(self.spki_der.clone())
    }
}

impl DynSignatureAlgorithmIdentifier for EcdsaSigner {
    fn signature_algorithm_identifier(&self) -> spki::Result<AlgorithmIdentifierOwned> {
        Ok(self.curve.signature_algorithm())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ECDSA_P384_SHA384_ASN1};
    use signature::Signer;

    #[test]
    fn signatures_verify_on_both_curves_and_keys_reload() {
        for (curve, verify) in [
            (Curve::P256, &ECDSA_P256_SHA256_ASN1),
            (Curve::P384, &ECDSA_P384_SHA384_ASN1),
        ] {
            let pkcs8 = EcdsaSigner::generate_pkcs8(curve).unwrap();
            let signer = EcdsaSigner::from_pkcs8(&pkcs8).unwrap();
            assert_eq!(signer.curve(), curve);
            let sig: DerSignature = signer.try_sign(b"to be signed").unwrap();
            let key = UnparsedPublicKey::new(verify, signer.public_point());
            key.verify(b"to be signed", sig.as_bytes()).unwrap();
            assert!(key.verify(b"something else", sig.as_bytes()).is_err());
            let spki = SubjectPublicKeyInfoOwned::try_from(signer.spki_der()).unwrap();
            assert_eq!(spki.algorithm.oid, ID_EC_PUBLIC_KEY);
            assert_eq!(
                spki.subject_public_key.raw_bytes(),
                signer.public_point(),
                "the SPKI carries the signer's own point"
            );
        }
    }

    #[test]
    fn a_point_that_is_not_the_scalars_is_refused() {
        let a =
            EcdsaSigner::from_pkcs8(&EcdsaSigner::generate_pkcs8(Curve::P256).unwrap()).unwrap();
        let b =
            EcdsaSigner::from_pkcs8(&EcdsaSigner::generate_pkcs8(Curve::P256).unwrap()).unwrap();
        let scalar = [7u8; 32];
        assert!(
            EcdsaSigner::from_scalar_and_point(Curve::P256, &scalar, b.public_point()).is_err()
        );
        assert!(EcdsaSigner::from_pkcs8(b"not a key").is_err());
        assert_ne!(a.public_point(), b.public_point());
    }
}
