//! Asymmetric slot keys and the symmetric management key: the card's own
//! cryptography, kept apart from APDU handling.

use keyward_card::piv::{alg, PublicKeyTemplate};
use rand_core::OsRng;
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use rsa::{BigUint, RsaPrivateKey};
use serde::{Deserialize, Serialize};

/// Why a key operation failed; mapped to status words by the applet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// Input has the wrong size or is not a valid value for the key.
    BadInput,
    /// The algorithm is not usable for this operation.
    Unsupported,
}

/// A private key in a slot.
#[derive(Clone)]
pub enum SlotKey {
    Rsa(Box<RsaPrivateKey>),
    P256(P256Key),
    P384(p384::SecretKey),
}

/// A P-256 key with its public point, derived once: GENERATE returns the
/// point and ATTEST certifies it, and deriving it again with the portable
/// arithmetic would cost a scalar multiplication each time.
#[derive(Clone)]
pub struct P256Key {
    pub secret: p256::SecretKey,
    pub public: p256::PublicKey,
}

impl P256Key {
    /// A new key. ring generates it (its base-point tables make the public
    /// point several times cheaper than the portable arithmetic); the key is
    /// then read from ring's PKCS#8 into RustCrypto's types, which the
    /// card's other operations (ECDSA over a given hash, ECDH) need.
    pub fn generate() -> Result<P256Key, KeyError> {
        use p256::pkcs8::der::Decode;
        let pkcs8 = keyward_signer::EcdsaSigner::generate_pkcs8(keyward_signer::Curve::P256)
            .map_err(|_| KeyError::Unsupported)?;
        let info =
            p256::pkcs8::PrivateKeyInfo::from_der(&pkcs8).map_err(|_| KeyError::Unsupported)?;
        let ec =
            sec1::EcPrivateKey::from_der(info.private_key).map_err(|_| KeyError::Unsupported)?;
        let point = ec.public_key.ok_or(KeyError::Unsupported)?;
        Ok(P256Key {
            secret: p256::SecretKey::from_slice(ec.private_key)
                .map_err(|_| KeyError::Unsupported)?,
            public: p256::PublicKey::from_sec1_bytes(point).map_err(|_| KeyError::Unsupported)?,
        })
    }

    fn from_secret(secret: p256::SecretKey) -> P256Key {
        P256Key {
            public: secret.public_key(),
            secret,
        }
    }

    /// The public point, SEC1 uncompressed.
    pub fn point(&self) -> Vec<u8> {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        self.public.to_encoded_point(false).as_bytes().to_vec()
    }

    /// A signer of ECDSA with SHA-256 over whole messages (ATTEST's
    /// certificates), through ring.
    pub fn signer(&self) -> Result<keyward_signer::EcdsaSigner, KeyError> {
        keyward_signer::EcdsaSigner::from_scalar_and_point(
            keyward_signer::Curve::P256,
            &self.secret.to_bytes(),
            &self.point(),
        )
        .map_err(|_| KeyError::BadInput)
    }
}

impl SlotKey {
    /// Generate a key of PIV algorithm `algorithm`.
    pub fn generate(algorithm: u8) -> Result<SlotKey, KeyError> {
        match algorithm {
            alg::ECC_P256 => Ok(SlotKey::P256(P256Key::generate()?)),
            alg::ECC_P384 => Ok(SlotKey::P384(p384::SecretKey::random(&mut OsRng))),
            a => {
                let bytes = alg::rsa_bytes(a).ok_or(KeyError::Unsupported)?;
                let key =
                    RsaPrivateKey::new(&mut OsRng, bytes * 8).map_err(|_| KeyError::Unsupported)?;
                Ok(SlotKey::Rsa(Box::new(key)))
            }
        }
    }

    /// PIV algorithm identifier of this key.
    pub fn algorithm(&self) -> u8 {
        match self {
            SlotKey::Rsa(k) => match k.size() {
                128 => alg::RSA_1024,
                256 => alg::RSA_2048,
                384 => alg::RSA_3072,
                _ => alg::RSA_4096,
            },
            SlotKey::P256(_) => alg::ECC_P256,
            SlotKey::P384(_) => alg::ECC_P384,
        }
    }

    /// The public key as GENERATE returns it.
    pub fn public_template(&self) -> PublicKeyTemplate {
        match self {
            SlotKey::Rsa(k) => PublicKeyTemplate::Rsa {
                modulus: k.n().to_bytes_be(),
                exponent: k.e().to_bytes_be(),
            },
            SlotKey::P256(k) => PublicKeyTemplate::Ec { point: k.point() },
            SlotKey::P384(k) => PublicKeyTemplate::Ec {
                point: k.public_key().to_sec1_bytes().to_vec(),
            },
        }
    }

    /// DER SubjectPublicKeyInfo of the public key.
    pub fn public_key_der(&self) -> Vec<u8> {
        use spki_encode::EncodePublicKey;
        let doc = match self {
            SlotKey::Rsa(k) => k.to_public_key().to_public_key_der(),
            SlotKey::P256(k) => k.public.to_public_key_der(),
            SlotKey::P384(k) => k.public_key().to_public_key_der(),
        };
        doc.map(|d| d.as_bytes().to_vec()).unwrap_or_default()
    }

    /// The private operation of GENERAL AUTHENTICATE with a challenge (81):
    /// raw RSA on a modulus-sized block, or ECDSA over a hash (DER signature).
    pub fn sign_or_decrypt(&self, input: &[u8]) -> Result<Vec<u8>, KeyError> {
        use p256::ecdsa::signature::hazmat::PrehashSigner;
        match self {
            SlotKey::Rsa(k) => {
                let size = k.size();
                if input.len() != size {
                    return Err(KeyError::BadInput);
                }
                let c = BigUint::from_bytes_be(input);
                if &c >= k.n() {
                    return Err(KeyError::BadInput);
                }
                let m = rsa::hazmat::rsa_decrypt_and_check(k.as_ref(), Some(&mut OsRng), &c)
                    .map_err(|_| KeyError::BadInput)?;
                let bytes = m.to_bytes_be();
                let mut out = vec![0u8; size - bytes.len()];
                out.extend_from_slice(&bytes);
                Ok(out)
            }
            SlotKey::P256(k) => {
                let sk = p256::ecdsa::SigningKey::from(&k.secret);
                let sig: p256::ecdsa::Signature = sk
                    .sign_prehash(&fit_hash(input, 32)?)
                    .map_err(|_| KeyError::BadInput)?;
                Ok(sig.to_der().as_bytes().to_vec())
            }
            SlotKey::P384(k) => {
                let sk = p384::ecdsa::SigningKey::from(k);
                let sig: p384::ecdsa::Signature = sk
                    .sign_prehash(&fit_hash(input, 48)?)
                    .map_err(|_| KeyError::BadInput)?;
                Ok(sig.to_der().as_bytes().to_vec())
            }
        }
    }

    /// ECDH (GENERAL AUTHENTICATE with exponentiation, 85): the shared X coordinate.
    pub fn ecdh(&self, peer_point: &[u8]) -> Result<Vec<u8>, KeyError> {
        match self {
            SlotKey::P256(k) => {
                let peer =
                    p256::PublicKey::from_sec1_bytes(peer_point).map_err(|_| KeyError::BadInput)?;
                let shared =
                    p256::ecdh::diffie_hellman(k.secret.to_nonzero_scalar(), peer.as_affine());
                Ok(shared.raw_secret_bytes().to_vec())
            }
            SlotKey::P384(k) => {
                let peer =
                    p384::PublicKey::from_sec1_bytes(peer_point).map_err(|_| KeyError::BadInput)?;
                let shared = p384::ecdh::diffie_hellman(k.to_nonzero_scalar(), peer.as_affine());
                Ok(shared.raw_secret_bytes().to_vec())
            }
            SlotKey::Rsa(_) => Err(KeyError::Unsupported),
        }
    }

    /// Import an EC private scalar (YubiKey IMPORT KEY tag 06).
    pub fn import_ec(algorithm: u8, scalar: &[u8]) -> Result<SlotKey, KeyError> {
        match algorithm {
            alg::ECC_P256 => p256::SecretKey::from_slice(scalar)
                .map(|k| SlotKey::P256(P256Key::from_secret(k)))
                .map_err(|_| KeyError::BadInput),
            alg::ECC_P384 => p384::SecretKey::from_slice(scalar)
                .map(SlotKey::P384)
                .map_err(|_| KeyError::BadInput),
            _ => Err(KeyError::Unsupported),
        }
    }

    /// Import an RSA key from its primes (YubiKey IMPORT KEY tags 01, 02), e = 65537.
    pub fn import_rsa(algorithm: u8, p: &[u8], q: &[u8]) -> Result<SlotKey, KeyError> {
        let bytes = alg::rsa_bytes(algorithm).ok_or(KeyError::Unsupported)?;
        let key = RsaPrivateKey::from_p_q(
            BigUint::from_bytes_be(p),
            BigUint::from_bytes_be(q),
            BigUint::from(65537u32),
        )
        .map_err(|_| KeyError::BadInput)?;
        if key.size() != bytes {
            return Err(KeyError::BadInput);
        }
        Ok(SlotKey::Rsa(Box::new(key)))
    }

    /// Serialisable form (PKCS#8 DER for EC, the primes for RSA: fast to reload).
    pub fn to_stored(&self) -> StoredKeyMaterial {
        match self {
            SlotKey::Rsa(k) => StoredKeyMaterial::Rsa {
                primes: k.primes().iter().map(|p| p.to_bytes_be()).collect(),
                e: k.e().to_bytes_be(),
            },
            SlotKey::P256(k) => StoredKeyMaterial::P256 {
                scalar: k.secret.to_bytes().to_vec(),
                point: Some(k.point()),
            },
            SlotKey::P384(k) => StoredKeyMaterial::P384 {
                scalar: k.to_bytes().to_vec(),
            },
        }
    }

    pub fn from_stored(stored: &StoredKeyMaterial) -> Option<SlotKey> {
        match stored {
            StoredKeyMaterial::Rsa { primes, e } => RsaPrivateKey::from_primes(
                primes.iter().map(|p| BigUint::from_bytes_be(p)).collect(),
                BigUint::from_bytes_be(e),
            )
            .ok()
            .map(|k| SlotKey::Rsa(Box::new(k))),
            StoredKeyMaterial::P256 { scalar, point } => {
                let secret = p256::SecretKey::from_slice(scalar).ok()?;
                // The stored point saves a scalar multiplication; a state
                // file from before it was stored has none.
                let key = match point.as_deref().map(p256::PublicKey::from_sec1_bytes) {
                    Some(Ok(public)) => P256Key { secret, public },
                    Some(Err(_)) => return None,
                    None => P256Key::from_secret(secret),
                };
                Some(SlotKey::P256(key))
            }
            StoredKeyMaterial::P384 { scalar } => {
                p384::SecretKey::from_slice(scalar).ok().map(SlotKey::P384)
            }
        }
    }
}

/// Private key material as persisted in the `--state` file.
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum StoredKeyMaterial {
    Rsa {
        #[serde(with = "hex_vecs")]
        primes: Vec<Vec<u8>>,
        #[serde(with = "hex_bytes")]
        e: Vec<u8>,
    },
    P256 {
        #[serde(with = "hex_bytes")]
        scalar: Vec<u8>,
        /// The public point (SEC1 uncompressed), absent in older state files.
        #[serde(default, with = "hex_opt", skip_serializing_if = "Option::is_none")]
        point: Option<Vec<u8>>,
    },
    P384 {
        #[serde(with = "hex_bytes")]
        scalar: Vec<u8>,
    },
}

/// A PIV card takes the hash as given; ECDSA wants it the size of the field:
/// left-pad shorter hashes, truncate longer ones (FIPS 186-4 6.4).
fn fit_hash(input: &[u8], size: usize) -> Result<Vec<u8>, KeyError> {
    if input.is_empty() {
        return Err(KeyError::BadInput);
    }
    if input.len() >= size {
        return Ok(input[..size].to_vec());
    }
    let mut out = vec![0u8; size - input.len()];
    out.extend_from_slice(input);
    Ok(out)
}

// Re-exported trait path for public key DER encoding.
mod spki_encode {
    pub use rsa::pkcs8::EncodePublicKey;
}

/// Hex encoding of byte vectors in the state file (readable, compact).
pub mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

pub mod hex_opt {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_some(&hex::encode(v)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| hex::decode(s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

pub mod hex_vecs {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(hex::encode))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        v.into_iter()
            .map(|s| hex::decode(s).map_err(serde::de::Error::custom))
            .collect()
    }
}

/// The management key (slot 9B): a 3DES or AES key used for mutual or
/// single (challenge-response) authentication in ECB mode on one block.
#[derive(Clone, Serialize, Deserialize)]
pub struct ManagementKey {
    pub algorithm: u8,
    #[serde(with = "hex_bytes")]
    pub key: Vec<u8>,
    /// YubiKey: touch required for authentication (stored, not enforced).
    #[serde(default)]
    pub touch: bool,
}

impl ManagementKey {
    pub fn new(algorithm: u8, key: &[u8]) -> Option<Self> {
        let (len, _) = alg::symmetric_sizes(algorithm)?;
        (key.len() == len).then(|| ManagementKey {
            algorithm,
            key: key.to_vec(),
            touch: false,
        })
    }

    pub fn block_size(&self) -> usize {
        alg::symmetric_sizes(self.algorithm).map_or(8, |(_, b)| b)
    }

    /// Encrypt one block in ECB mode.
    pub fn encrypt_block(&self, block: &[u8]) -> Vec<u8> {
        use cipher::{BlockEncrypt, KeyInit};
        let mut buf = block.to_vec();
        macro_rules! enc {
            ($c:ty) => {{
                let c = <$c>::new_from_slice(&self.key).expect("key length checked");
                c.encrypt_block(cipher::generic_array::GenericArray::from_mut_slice(
                    &mut buf,
                ));
            }};
        }
        match self.algorithm {
            alg::TDES => enc!(des::TdesEde3),
            alg::AES_128 => enc!(aes::Aes128),
            alg::AES_192 => enc!(aes::Aes192),
            _ => enc!(aes::Aes256),
        }
        buf
    }

    /// Decrypt one block in ECB mode.
    pub fn decrypt_block(&self, block: &[u8]) -> Vec<u8> {
        use cipher::{BlockDecrypt, KeyInit};
        let mut buf = block.to_vec();
        macro_rules! dec {
            ($c:ty) => {{
                let c = <$c>::new_from_slice(&self.key).expect("key length checked");
                c.decrypt_block(cipher::generic_array::GenericArray::from_mut_slice(
                    &mut buf,
                ));
            }};
        }
        match self.algorithm {
            alg::TDES => dec!(des::TdesEde3),
            alg::AES_128 => dec!(aes::Aes128),
            alg::AES_192 => dec!(aes::Aes192),
            _ => dec!(aes::Aes256),
        }
        buf
    }
}

/// Constant-time equality for secrets.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn management_key_round_trips_each_algorithm() {
        for (a, len) in [
            (alg::TDES, 24),
            (alg::AES_128, 16),
            (alg::AES_192, 24),
            (alg::AES_256, 32),
        ] {
            let k = ManagementKey::new(a, &vec![7u8; len]).unwrap();
            let block = vec![1u8; k.block_size()];
            let e = k.encrypt_block(&block);
            assert_ne!(e, block);
            assert_eq!(k.decrypt_block(&e), block);
        }
        assert!(ManagementKey::new(alg::AES_128, &[0; 24]).is_none());
    }

    #[test]
    fn ec_keys_sign_ecdh_and_reload() {
        use p256::ecdsa::signature::hazmat::PrehashVerifier;
        let k = SlotKey::generate(alg::ECC_P256).unwrap();
        let sig = k.sign_or_decrypt(&[5u8; 32]).unwrap();
        let SlotKey::P256(sk) = &k else { panic!() };
        // The point ring generated is the scalar's own.
        assert_eq!(sk.public, sk.secret.public_key());
        let vk = p256::ecdsa::VerifyingKey::from(sk.secret.public_key());
        let sig = p256::ecdsa::Signature::from_der(&sig).unwrap();
        vk.verify_prehash(&[5u8; 32], &sig).unwrap();
        let other = p256::SecretKey::random(&mut OsRng);
        let shared = k.ecdh(&other.public_key().to_sec1_bytes()).unwrap();
        let expect = p256::ecdh::diffie_hellman(other.to_nonzero_scalar(), sk.public.as_affine());
        assert_eq!(shared, expect.raw_secret_bytes().to_vec());
        assert_eq!(k.ecdh(&[4, 1, 2]), Err(KeyError::BadInput));
        let back = SlotKey::from_stored(&k.to_stored()).unwrap();
        assert_eq!(back.public_template(), k.public_template());
        // A state file written before the point was stored still loads,
        // and a stored point that is no point of the curve does not.
        let StoredKeyMaterial::P256 { scalar, .. } = k.to_stored() else {
            panic!()
        };
        let old: StoredKeyMaterial = serde_json::from_value(
            serde_json::json!({"type": "p256", "scalar": hex::encode(&scalar)}),
        )
        .unwrap();
        let back = SlotKey::from_stored(&old).unwrap();
        assert_eq!(back.public_template(), k.public_template());
        let bad = StoredKeyMaterial::P256 {
            scalar,
            point: Some(vec![4; 65]),
        };
        assert!(SlotKey::from_stored(&bad).is_none());
        let k384 = SlotKey::generate(alg::ECC_P384).unwrap();
        assert_eq!(k384.algorithm(), alg::ECC_P384);
        assert!(k384.sign_or_decrypt(&[1u8; 48]).is_ok());
    }

    #[test]
    fn rsa_raw_private_operation() {
        let k = SlotKey::generate(alg::RSA_1024).unwrap();
        let SlotKey::Rsa(rk) = &k else { panic!() };
        let mut block = vec![0u8; 128];
        block[1] = 1;
        block[127] = 42;
        let out = k.sign_or_decrypt(&block).unwrap();
        // Raising to e must give the block back.
        let back =
            rsa::hazmat::rsa_encrypt(&rk.to_public_key(), &BigUint::from_bytes_be(&out)).unwrap();
        assert_eq!(back, BigUint::from_bytes_be(&block));
        assert_eq!(k.sign_or_decrypt(&[1u8; 127]), Err(KeyError::BadInput));
        assert_eq!(k.sign_or_decrypt(&[0xFFu8; 128]), Err(KeyError::BadInput));
        let back = SlotKey::from_stored(&k.to_stored()).unwrap();
        assert_eq!(back.public_template(), k.public_template());
        let SlotKey::Rsa(rk) = &back else { panic!() };
        let p = rk.primes()[0].to_bytes_be();
        let q = rk.primes()[1].to_bytes_be();
        let imported = SlotKey::import_rsa(alg::RSA_1024, &p, &q).unwrap();
        assert_eq!(imported.public_template(), k.public_template());
        assert_eq!(
            SlotKey::import_rsa(alg::RSA_2048, &p, &q).err(),
            Some(KeyError::BadInput)
        );
    }
}
