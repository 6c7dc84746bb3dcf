//! API tokens: 256 random bits, shown once, stored as HMAC-SHA-256.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use super::Kek;

/// Prefix that makes a leaked token recognisable by secret scanners.
pub const TOKEN_PREFIX: &str = "kw_";

/// A new token (prefix + 43 base64url characters of 32 random bytes).
pub fn generate_token() -> String {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    format!("{TOKEN_PREFIX}{}", B64URL.encode(raw))
}

/// Keyed hash of token values (and of browser session ids): what the store
/// keeps and looks up by.
#[derive(Clone)]
pub struct TokenHasher {
    key: [u8; 32],
}

impl std::fmt::Debug for TokenHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHasher(<key redacted>)")
    }
}

impl TokenHasher {
    pub fn new(kek: &Kek) -> Self {
        TokenHasher {
            key: kek.derive("token/hmac-sha256"),
        }
    }

    pub fn hash(&self, token: &str) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(token.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_hash_stably() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        assert!(a.len() >= 3 + 43);
        let h = TokenHasher::new(&Kek::from_bytes([1; 32]));
        assert_eq!(h.hash(&a), h.hash(&a));
        assert_ne!(h.hash(&a), h.hash(&b));
        assert_eq!(h.hash(&a).len(), 32);
    }
}
