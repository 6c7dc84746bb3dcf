//! Password hashing with argon2id (PHC string format in the store).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("stored password hash is malformed")]
    MalformedHash,
}

pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters accepts any password")
        .to_string()
}

pub fn verify_password(password: &str, phc: &str) -> Result<bool, PasswordError> {
    let parsed = PasswordHash::new(phc).map_err(|_| PasswordError::MalformedHash)?;
    Ok(Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_verifies_and_hides_the_password() {
        let h = hash_password("correct horse");
        assert!(h.starts_with("$argon2id$"));
        assert!(!h.contains("correct horse"));
        assert!(verify_password("correct horse", &h).unwrap());
        assert!(!verify_password("wrong", &h).unwrap());
        assert!(verify_password("x", "garbage").is_err());
    }
}

/// [`hash_password`] off the async workers, at most
/// [`crate::limits::CONCURRENT_HASHES`] at once (each takes 19 MiB).
pub async fn hash_bounded(state: &crate::app::AppState, password: String) -> String {
    let _permit = state
        .limits
        .hashing
        .acquire()
        .await
        .expect("the hashing semaphore is never closed");
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .expect("hashing does not panic")
}

/// [`verify_password`] off the async workers, bounded like [`hash_bounded`].
pub async fn verify_bounded(state: &crate::app::AppState, password: String, phc: String) -> bool {
    let _permit = state
        .limits
        .hashing
        .acquire()
        .await
        .expect("the hashing semaphore is never closed");
    tokio::task::spawn_blocking(move || verify_password(&password, &phc).unwrap_or(false))
        .await
        .unwrap_or(false)
}
