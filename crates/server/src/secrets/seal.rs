//! AEAD sealing of secrets at rest (XChaCha20-Poly1305, random 192-bit nonce).
//!
//! The associated data binds a ciphertext to its purpose and owner (for
//! example `passkey_service:<id>:client_secret`), so a sealed value copied
//! into another row does not open there.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;

use super::Kek;

const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("sealed value is malformed")]
    Malformed,
    #[error("sealed value does not open under this key and context")]
    Authentication,
}

/// Seals and opens values with the KEK-derived sealing key.
#[derive(Clone)]
pub struct Sealed {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealed(<key redacted>)")
    }
}

impl Sealed {
    pub fn new(kek: &Kek) -> Self {
        let key = kek.derive("seal/xchacha20poly1305");
        Sealed {
            cipher: XChaCha20Poly1305::new((&key).into()),
        }
    }

    /// `version || nonce || ciphertext+tag`
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory input");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < 1 + NONCE_LEN + 16 || sealed[0] != VERSION {
            return Err(SealError::Malformed);
        }
        let (nonce, ct) = sealed[1..].split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SealError::Authentication)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_context_binding() {
        let s = Sealed::new(&Kek::from_bytes([3; 32]));
        let c = s.seal("puk:1", b"87654321");
        assert!(!c.windows(8).any(|w| w == b"87654321"));
        assert_eq!(s.open("puk:1", &c).unwrap(), b"87654321");
        assert_eq!(s.open("puk:2", &c), Err(SealError::Authentication));
        let other = Sealed::new(&Kek::from_bytes([4; 32]));
        assert_eq!(other.open("puk:1", &c), Err(SealError::Authentication));
        assert_eq!(s.open("puk:1", &c[..10]), Err(SealError::Malformed));
        let mut tampered = c.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(s.open("puk:1", &tampered), Err(SealError::Authentication));
    }
}
