//! Secrets at rest.
//!
//! Everything secret that Keyward must keep (client secrets of Passkey-Enabled
//! Services, master keys, PUKs, initial PINs) is sealed with an AEAD under the
//! key-encryption key (KEK). Passwords are argon2 hashes. API tokens are random
//! values whose HMAC (under a key derived from the KEK) is what the store holds:
//! checking one costs a single HMAC, cheap enough for every request.

mod kek;
pub mod management_key;
mod password;
mod seal;
mod token;

pub use kek::{Kek, KekSource};
pub use password::{hash_bounded, hash_password, verify_bounded, verify_password, PasswordError};
pub use seal::{SealError, Sealed};
pub use token::{generate_token, TokenHasher};
