//! The FIDO PIN store: where the authenticator keeps its clientPIN and the
//! PIN retry counter.
//!
//! CTAP never sends a PIN for verification, only `LEFT(SHA-256(pin), 16)`
//! (encrypted under the PIN protocol's shared secret), so a store only has to
//! compare that 16-byte hash. Two implementations exist:
//!
//! * [`LocalPinStore`] (here): the authenticator's own PIN, used by a YubiKey
//!   and by a C4000 in unshared mode. It keeps the hash and the counter
//!   (8 retries, CTAP's maximum) and is serialised with the rest of the
//!   authenticator state.
//! * The PIV engineer's adapter over the PIV PIN, for the C4000 shared-PIN
//!   mode: one PIN and **one** retry counter for both applets. Its
//!   `verify_pin_hash` hashes the PIV PIN (without PIV's 0xFF padding) and
//!   compares; a FIDO mismatch counts down the PIV counter and a match resets
//!   it, exactly as a PIV VERIFY would.
//!
//! What the authenticator keeps itself (not the store's business): the
//! "three consecutive mismatches need a power cycle" rule, the key agreement
//! key and the pinUvAuthToken.

use keyward_card::ctap::StatusCode;
use serde::{Deserialize, Serialize};

/// CTAP's maximum (and a YubiKey's) PIN retry count.
pub const MAX_PIN_RETRIES: u8 = 8;

/// Result of comparing a PIN hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinVerification {
    /// The PIN matched; the store has reset its retry counter.
    Match,
    /// The PIN did not match; the store has counted down. `retries_left`
    /// is 0 when this attempt blocked the PIN.
    Mismatch { retries_left: u8 },
    /// The PIN was already blocked; nothing was compared.
    Blocked,
}

/// A PIN store the authenticator verifies and sets PINs through.
pub trait FidoPinStore {
    /// Whether a PIN has been set (CTAP's clientPin option true).
    fn is_pin_set(&self) -> bool;
    /// Remaining PIN attempts.
    fn pin_retries(&self) -> u8;
    /// Compares `pin_hash16 = LEFT(SHA-256(pin), 16)` with the PIN, counting
    /// down on a mismatch and resetting the counter on a match.
    fn verify_pin_hash(&mut self, pin_hash16: &[u8; 16]) -> PinVerification;
    /// Sets a new PIN (setPIN, changePIN). The authenticator has already
    /// checked CTAP's rules (UTF-8, at least minPINLength code points, at most
    /// 63 bytes); a store may refuse a PIN its own rules forbid (a PIV PIN
    /// must be 6 to 8 bytes) with `CTAP2_ERR_PIN_POLICY_VIOLATION`.
    /// Sets the retry counter back to its maximum.
    fn set_pin(&mut self, pin: &[u8]) -> Result<(), StatusCode>;
    /// A minimum PIN length stricter than the authenticator's, if the store
    /// has one (the shared PIV PIN has 6).
    fn min_pin_length(&self) -> Option<u8> {
        None
    }
    /// authenticatorReset happened. The local store forgets its PIN; the
    /// shared-PIN adapter keeps the PIV PIN (a FIDO reset must not wipe PIV).
    fn on_authenticator_reset(&mut self);
}

/// The authenticator's own PIN store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalPinStore {
    /// LEFT(SHA-256(pin), 16), as CTAP 2.1 section 6.5.5.5 has it stored.
    pin_hash: Option<[u8; 16]>,
    retries: u8,
}

impl Default for LocalPinStore {
    fn default() -> Self {
        Self {
            pin_hash: None,
            retries: MAX_PIN_RETRIES,
        }
    }
}

/// Constant-time equality of two PIN hashes.
pub fn hashes_equal(a: &[u8; 16], b: &[u8; 16]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl FidoPinStore for LocalPinStore {
    fn is_pin_set(&self) -> bool {
        self.pin_hash.is_some()
    }

    fn pin_retries(&self) -> u8 {
        self.retries
    }

    fn verify_pin_hash(&mut self, pin_hash16: &[u8; 16]) -> PinVerification {
        let Some(stored) = self.pin_hash else {
            return PinVerification::Mismatch {
                retries_left: self.retries,
            };
        };
        if self.retries == 0 {
            return PinVerification::Blocked;
        }
        // Count down first, so that losing power mid-compare cannot give a
        // free attempt (CTAP 2.1 section 6.5.5.7 step "decrement").
        self.retries -= 1;
        if hashes_equal(&stored, pin_hash16) {
            self.retries = MAX_PIN_RETRIES;
            PinVerification::Match
        } else {
            PinVerification::Mismatch {
                retries_left: self.retries,
            }
        }
    }

    fn set_pin(&mut self, pin: &[u8]) -> Result<(), StatusCode> {
        self.pin_hash = Some(keyward_card::ctap::pin_hash16(pin));
        self.retries = MAX_PIN_RETRIES;
        Ok(())
    }

    fn on_authenticator_reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_store_counts_down_and_blocks() {
        let mut s = LocalPinStore::default();
        assert!(!s.is_pin_set());
        s.set_pin(b"1234").unwrap();
        let good = keyward_card::ctap::pin_hash16(b"1234");
        let bad = keyward_card::ctap::pin_hash16(b"0000");
        assert_eq!(
            s.verify_pin_hash(&bad),
            PinVerification::Mismatch { retries_left: 7 }
        );
        assert_eq!(s.verify_pin_hash(&good), PinVerification::Match);
        assert_eq!(s.pin_retries(), 8);
        for left in (0..8).rev() {
            assert_eq!(
                s.verify_pin_hash(&bad),
                PinVerification::Mismatch { retries_left: left }
            );
        }
        assert_eq!(s.verify_pin_hash(&good), PinVerification::Blocked);
        s.on_authenticator_reset();
        assert!(!s.is_pin_set());
        assert_eq!(s.pin_retries(), 8);
    }
}
