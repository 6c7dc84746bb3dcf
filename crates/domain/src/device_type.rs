//! What each device type can do: the facts policy checks rely on.

use crate::firmware::FirmwareVersion;
use crate::names::{CharacterSet, DeviceType, KeyAlgorithm, Transport};

/// Whether an Entra ID passkey (FIDO application registered with a Passkey-Enabled
/// Service) can be issued to a device type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntraPasskeySupport {
    NotSupported,
    Supported,
    /// Supported from this firmware on (YubiKey 5.3: credential management and
    /// the enterprise features Entra relies on).
    FromFirmware(FirmwareVersion),
}

/// An algorithm and the first firmware that offers it (None: every firmware).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlgorithmSupport {
    pub algorithm: KeyAlgorithm,
    pub min_firmware: Option<FirmwareVersion>,
}

const fn alg(algorithm: KeyAlgorithm) -> AlgorithmSupport {
    AlgorithmSupport {
        algorithm,
        min_firmware: None,
    }
}

const fn alg_from(algorithm: KeyAlgorithm, v: FirmwareVersion) -> AlgorithmSupport {
    AlgorithmSupport {
        algorithm,
        min_firmware: Some(v),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceCapabilities {
    pub device_type: DeviceType,
    pub algorithms: &'static [AlgorithmSupport],
    /// PIN length limits in characters (bytes: PINs are ASCII).
    pub pin_min_length: u8,
    pub pin_max_length: u8,
    /// Character sets the device (and the product) accept for the PIV PIN.
    pub pin_character_sets: &'static [CharacterSet],
    /// Transports the PIV application is reached over.
    pub piv_transports: &'static [Transport],
    /// Transports the FIDO application is reached over; empty: no FIDO.
    pub fido_transports: &'static [Transport],
    /// PIV and FIDO can use one PIN.
    pub can_share_pin: bool,
    pub can_change_management_key: bool,
    pub can_change_retry_counts: bool,
    /// Largest PIN/PUK retry counter the device can be set to.
    pub max_retry_count: u8,
    pub entra_passkey: EntraPasskeySupport,
}

impl DeviceCapabilities {
    pub fn supports_fido(&self) -> bool {
        !self.fido_transports.is_empty()
    }

    /// The algorithm entry, if the type supports the algorithm at some firmware.
    pub fn algorithm(&self, a: KeyAlgorithm) -> Option<&AlgorithmSupport> {
        self.algorithms.iter().find(|s| s.algorithm == a)
    }
}

const C4000: DeviceCapabilities = DeviceCapabilities {
    device_type: DeviceType::C4000,
    algorithms: &[
        alg(KeyAlgorithm::Rsa2048),
        alg(KeyAlgorithm::EccP256),
        alg(KeyAlgorithm::EccP384),
    ],
    pin_min_length: 6,
    pin_max_length: 8,
    // HID's product allows alphanumeric PINs on Crescendo cards.
    pin_character_sets: &[CharacterSet::Numeric, CharacterSet::Alphanumeric],
    piv_transports: &[Transport::Pcsc],
    // FIDO over ISO 7816 (contact and NFC).
    fido_transports: &[Transport::Pcsc],
    can_share_pin: true,
    can_change_management_key: true,
    can_change_retry_counts: true,
    max_retry_count: 15,
    entra_passkey: EntraPasskeySupport::Supported,
};

const YUBIKEY5: DeviceCapabilities = DeviceCapabilities {
    device_type: DeviceType::YubiKey5,
    algorithms: &[
        alg(KeyAlgorithm::Rsa2048),
        alg(KeyAlgorithm::EccP256),
        alg(KeyAlgorithm::EccP384),
        alg_from(KeyAlgorithm::Rsa3072, FirmwareVersion::new(5, 7, 0)),
        alg_from(KeyAlgorithm::Rsa4096, FirmwareVersion::new(5, 7, 0)),
    ],
    pin_min_length: 6,
    pin_max_length: 8,
    // The device accepts any 6 to 8 bytes.
    pin_character_sets: &[
        CharacterSet::Numeric,
        CharacterSet::Alphanumeric,
        CharacterSet::Printable,
    ],
    piv_transports: &[Transport::Pcsc],
    // Over USB FIDO is CTAPHID only (no FIDO over CCID).
    fido_transports: &[Transport::Hid],
    can_share_pin: false,
    can_change_management_key: true,
    can_change_retry_counts: true,
    max_retry_count: 255,
    entra_passkey: EntraPasskeySupport::FromFirmware(FirmwareVersion::new(5, 3, 0)),
};

const PIV: DeviceCapabilities = DeviceCapabilities {
    device_type: DeviceType::Piv,
    algorithms: &[alg(KeyAlgorithm::Rsa2048), alg(KeyAlgorithm::EccP256)],
    // SP 800-73-4: 6 to 8 digits.
    pin_min_length: 6,
    pin_max_length: 8,
    pin_character_sets: &[CharacterSet::Numeric],
    piv_transports: &[Transport::Pcsc],
    fido_transports: &[],
    can_share_pin: false,
    can_change_management_key: false,
    can_change_retry_counts: false,
    max_retry_count: 0,
    entra_passkey: EntraPasskeySupport::NotSupported,
};

impl DeviceType {
    /// The device attests the keys it generates (PIV ATTEST, a
    /// manufacturer-signed certificate per key): YubiKey 5.
    pub const fn attests(self) -> bool {
        matches!(self, DeviceType::YubiKey5)
    }

    /// The device moves a key between slots (MOVE KEY: a YubiKey from 5.7),
    /// so an old Key Management key can be kept in a retired slot (82 to
    /// 95) while 9D gets a new one. An unknown firmware cannot.
    pub fn moves_keys(self, firmware: Option<FirmwareVersion>) -> bool {
        self == DeviceType::YubiKey5 && firmware.is_some_and(|f| f >= FirmwareVersion::new(5, 7, 0))
    }

    pub const fn capabilities(self) -> &'static DeviceCapabilities {
        match self {
            DeviceType::C4000 => &C4000,
            DeviceType::YubiKey5 => &YUBIKEY5,
            DeviceType::Piv => &PIV,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_follow_the_issue() {
        let c = DeviceType::C4000.capabilities();
        let y = DeviceType::YubiKey5.capabilities();
        let p = DeviceType::Piv.capabilities();
        assert!(c.can_share_pin && !y.can_share_pin);
        assert!(c.can_change_management_key && y.can_change_management_key);
        assert!(!p.can_change_management_key && !p.can_change_retry_counts);
        assert_eq!(p.pin_character_sets, &[CharacterSet::Numeric]);
        assert!(c.pin_character_sets.contains(&CharacterSet::Alphanumeric));
        assert!(!p.supports_fido() && c.supports_fido() && y.supports_fido());
        assert_eq!(
            y.entra_passkey,
            EntraPasskeySupport::FromFirmware(FirmwareVersion::new(5, 3, 0))
        );
        for t in DeviceType::ALL {
            assert_eq!(t.capabilities().device_type, *t);
        }
    }

    #[test]
    fn only_a_yubikey_from_5_7_moves_keys() {
        let v = |s: &str| Some(FirmwareVersion::parse(s).unwrap());
        assert!(DeviceType::YubiKey5.moves_keys(v("5.7.0")));
        assert!(DeviceType::YubiKey5.moves_keys(v("5.8.1")));
        assert!(!DeviceType::YubiKey5.moves_keys(v("5.6.9")));
        assert!(!DeviceType::YubiKey5.moves_keys(None));
        assert!(!DeviceType::C4000.moves_keys(v("9.9.9")));
        assert!(!DeviceType::Piv.moves_keys(v("5.7.0")));
    }
}
