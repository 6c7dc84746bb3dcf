//! PIV management keys: the block-cipher operations of mutual
//! authentication, and the per-device key derived from a master key, so the
//! database holds no per-card key (HKDF-SHA-256 over the serial number).

use cipher::generic_array::GenericArray;
use cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use keyward_card::piv::alg;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MgmtAlgorithm {
    Tdes,
    Aes128,
    Aes192,
    Aes256,
}

impl MgmtAlgorithm {
    /// The PIV algorithm identifier (P1 of GENERAL AUTHENTICATE).
    pub fn id(self) -> u8 {
        match self {
            MgmtAlgorithm::Tdes => alg::TDES,
            MgmtAlgorithm::Aes128 => alg::AES_128,
            MgmtAlgorithm::Aes192 => alg::AES_192,
            MgmtAlgorithm::Aes256 => alg::AES_256,
        }
    }

    pub fn key_len(self) -> usize {
        match self {
            MgmtAlgorithm::Tdes | MgmtAlgorithm::Aes192 => 24,
            MgmtAlgorithm::Aes128 => 16,
            MgmtAlgorithm::Aes256 => 32,
        }
    }

    pub fn block_len(self) -> usize {
        match self {
            MgmtAlgorithm::Tdes => 8,
            _ => 16,
        }
    }
}

/// A management key. `Debug` never shows the key.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManagementKey {
    pub algorithm: MgmtAlgorithm,
    key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for ManagementKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ManagementKey({:?}, <redacted>)", self.algorithm)
    }
}

/// The generation of the per-device keys Keyward derives now.
pub const KEY_GENERATION: u32 = 1;

/// The factory default management key of PIV devices (YubiKey, C4000).
pub const FACTORY_DEFAULT: [u8; 24] = [
    1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8,
];

impl ManagementKey {
    pub fn new(algorithm: MgmtAlgorithm, key: &[u8]) -> Option<ManagementKey> {
        (key.len() == algorithm.key_len()).then(|| ManagementKey {
            algorithm,
            key: Zeroizing::new(key.to_vec()),
        })
    }

    pub fn factory_default(algorithm: MgmtAlgorithm) -> ManagementKey {
        ManagementKey::new(algorithm, &FACTORY_DEFAULT)
            .expect("24-byte default for 3DES and AES-192")
    }

    /// The per-device key, derivation v2: HKDF-SHA-256 over the master key
    /// with the algorithm, the key's generation and the serial in `info`.
    /// The algorithm is there so that keys of different lengths are not
    /// prefixes of one another (HKDF's output for a shorter length is the
    /// prefix of a longer one under the same info); the generation so that
    /// a device's key can be rotated (the next generation) without a new
    /// master key. Each device's key is recomputed, never stored.
    pub fn derive(
        master: &[u8],
        serial: u64,
        algorithm: MgmtAlgorithm,
        generation: u32,
    ) -> ManagementKey {
        let hk = Hkdf::<Sha256>::new(Some(b"keyward/piv-management-key/v2"), master);
        let info = format!(
            "alg={:02x};gen={generation};serial={serial}",
            algorithm.id()
        );
        let mut key = Zeroizing::new(vec![0u8; algorithm.key_len()]);
        hk.expand(info.as_bytes(), &mut key)
            .expect("at most 32 bytes is a valid HKDF output");
        ManagementKey { algorithm, key }
    }

    /// Derivation v1, of devices issued before v2: the serial alone in
    /// `info`. Those devices keep their keys (each session carries the key
    /// the device holds in its sealed state); this is how they were made.
    pub fn derive_v1(master: &[u8], serial: u64, algorithm: MgmtAlgorithm) -> ManagementKey {
        let hk = Hkdf::<Sha256>::new(Some(b"keyward/piv-management-key/v1"), master);
        let mut key = Zeroizing::new(vec![0u8; algorithm.key_len()]);
        hk.expand(serial.to_string().as_bytes(), &mut key)
            .expect("at most 32 bytes is a valid HKDF output");
        ManagementKey { algorithm, key }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.key
    }

    fn crypt(&self, block: &[u8], encrypt: bool) -> Option<Vec<u8>> {
        if block.len() != self.algorithm.block_len() {
            return None;
        }
        let mut b = block.to_vec();
        macro_rules! run {
            ($c:ty) => {{
                let c = <$c>::new_from_slice(&self.key).ok()?;
                let ga = GenericArray::from_mut_slice(&mut b);
                if encrypt {
                    c.encrypt_block(ga)
                } else {
                    c.decrypt_block(ga)
                }
            }};
        }
        match self.algorithm {
            MgmtAlgorithm::Tdes => run!(des::TdesEde3),
            MgmtAlgorithm::Aes128 => run!(aes::Aes128),
            MgmtAlgorithm::Aes192 => run!(aes::Aes192),
            MgmtAlgorithm::Aes256 => run!(aes::Aes256),
        }
        Some(b)
    }

    pub fn encrypt_block(&self, block: &[u8]) -> Option<Vec<u8>> {
        self.crypt(block, true)
    }

    pub fn decrypt_block(&self, block: &[u8]) -> Option<Vec<u8>> {
        self.crypt(block, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 15, item 8: under v1 the AES-128 key of a device was the first
    /// half of its AES-256 key (and its 3DES key the AES-192 one); under v2
    /// no key is a prefix of another, and a new generation is a new key.
    #[test]
    fn keys_of_different_lengths_are_not_prefixes_and_generations_rotate() {
        let v1_short = ManagementKey::derive_v1(b"m", 42, MgmtAlgorithm::Aes128);
        let v1_long = ManagementKey::derive_v1(b"m", 42, MgmtAlgorithm::Aes256);
        assert!(
            v1_long.bytes().starts_with(v1_short.bytes()),
            "the v1 defect"
        );
        let all = [
            MgmtAlgorithm::Tdes,
            MgmtAlgorithm::Aes128,
            MgmtAlgorithm::Aes192,
            MgmtAlgorithm::Aes256,
        ];
        for a in all {
            for b in all {
                if a == b {
                    continue;
                }
                let ka = ManagementKey::derive(b"m", 42, a, KEY_GENERATION);
                let kb = ManagementKey::derive(b"m", 42, b, KEY_GENERATION);
                let n = ka.bytes().len().min(kb.bytes().len());
                assert_ne!(ka.bytes()[..n], kb.bytes()[..n], "{a:?} {b:?}");
            }
        }
        let g1 = ManagementKey::derive(b"m", 42, MgmtAlgorithm::Aes192, 1);
        let g2 = ManagementKey::derive(b"m", 42, MgmtAlgorithm::Aes192, 2);
        assert_ne!(g1.bytes(), g2.bytes());
        assert_ne!(
            g1.bytes(),
            ManagementKey::derive_v1(b"m", 42, MgmtAlgorithm::Aes192).bytes()
        );
    }

    #[test]
    fn derived_keys_differ_per_serial_and_master_and_round_trip() {
        let a = ManagementKey::derive(b"master-one", 1, MgmtAlgorithm::Aes192, 1);
        let b = ManagementKey::derive(b"master-one", 2, MgmtAlgorithm::Aes192, 1);
        let c = ManagementKey::derive(b"master-two", 1, MgmtAlgorithm::Aes192, 1);
        assert_ne!(a.bytes(), b.bytes());
        assert_ne!(a.bytes(), c.bytes());
        assert_eq!(
            a,
            ManagementKey::derive(b"master-one", 1, MgmtAlgorithm::Aes192, 1)
        );
        for alg in [
            MgmtAlgorithm::Tdes,
            MgmtAlgorithm::Aes128,
            MgmtAlgorithm::Aes192,
            MgmtAlgorithm::Aes256,
        ] {
            let k = ManagementKey::derive(b"m", 7, alg, KEY_GENERATION);
            let block = vec![0x5A; alg.block_len()];
            let e = k.encrypt_block(&block).unwrap();
            assert_ne!(e, block);
            assert_eq!(k.decrypt_block(&e).unwrap(), block);
            assert!(k.encrypt_block(&[0; 3]).is_none());
        }
        assert!(
            !format!("{a:?}").contains(&format!("{:?}", a.bytes()[0]))
                || format!("{a:?}").contains("redacted")
        );
    }
}
