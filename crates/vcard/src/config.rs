//! What a virtual device is: its profile, firmware, serial and transport.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The real device a virtual card behaves like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProfileKind {
    /// HID Crescendo C4000 contact smart card.
    C4000,
    /// Yubico YubiKey 5 series.
    Yubikey5,
}

impl FromStr for ProfileKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "c4000" => Ok(ProfileKind::C4000),
            "yubikey5" => Ok(ProfileKind::Yubikey5),
            _ => Err(format!("unknown profile {s:?} (c4000 or yubikey5)")),
        }
    }
}

impl fmt::Display for ProfileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProfileKind::C4000 => "c4000",
            ProfileKind::Yubikey5 => "yubikey5",
        })
    }
}

/// How a YubiKey is reached: USB (FIDO over CTAPHID only) or NFC (FIDO over ISO 7816).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    #[default]
    Usb,
    Nfc,
}

impl FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "usb" => Ok(Transport::Usb),
            "nfc" => Ok(Transport::Nfc),
            _ => Err(format!("unknown transport {s:?} (usb or nfc)")),
        }
    }
}

/// Firmware version `major.minor.patch`, ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Firmware(pub u8, pub u8, pub u8);

impl Firmware {
    pub fn at_least(self, major: u8, minor: u8, patch: u8) -> bool {
        self >= Firmware(major, minor, patch)
    }
    pub fn bytes(self) -> [u8; 3] {
        [self.0, self.1, self.2]
    }
}

impl FromStr for Firmware {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('.').collect();
        if parts.len() != 3 {
            return Err(format!("firmware {s:?} is not X.Y.Z"));
        }
        let n = |p: &str| {
            p.parse::<u8>()
                .map_err(|_| format!("firmware {s:?} is not X.Y.Z"))
        };
        Ok(Firmware(n(parts[0])?, n(parts[1])?, n(parts[2])?))
    }
}

impl fmt::Display for Firmware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// Everything needed to build a factory-new virtual device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcardConfig {
    pub profile: ProfileKind,
    pub firmware: Firmware,
    pub serial: u32,
    pub transport: Transport,
    /// Folder of the virtual manufacturer CA.
    pub ca_dir: PathBuf,
}

impl VcardConfig {
    /// Defaults of a profile: firmware 5.7.1 for a YubiKey, 1.0.0 for a C4000.
    pub fn new(profile: ProfileKind) -> Self {
        VcardConfig {
            profile,
            firmware: match profile {
                ProfileKind::Yubikey5 => Firmware(5, 7, 1),
                ProfileKind::C4000 => Firmware(1, 0, 0),
            },
            serial: 10_000_001,
            transport: Transport::Usb,
            ca_dir: crate::ca::default_ca_dir(),
        }
    }

    pub fn with_firmware(mut self, firmware: Firmware) -> Self {
        self.firmware = firmware;
        self
    }
    pub fn with_serial(mut self, serial: u32) -> Self {
        self.serial = serial;
        self
    }
    pub fn with_transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }
    pub fn with_ca_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.ca_dir = dir.into();
        self
    }

    /// Whether the FIDO application answers over ISO 7816 (PC/SC).
    pub fn fido_over_iso(&self) -> bool {
        match self.profile {
            ProfileKind::C4000 => true,
            ProfileKind::Yubikey5 => self.transport == Transport::Nfc,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firmware_parses_and_orders() {
        let f: Firmware = "5.4.3".parse().unwrap();
        assert!(f.at_least(5, 4, 2));
        assert!(!f.at_least(5, 7, 0));
        assert_eq!(f.to_string(), "5.4.3");
        assert!("5.4".parse::<Firmware>().is_err());
        assert!("5.x.1".parse::<Firmware>().is_err());
    }

    #[test]
    fn fido_over_iso_by_profile() {
        assert!(VcardConfig::new(ProfileKind::C4000).fido_over_iso());
        let yk = VcardConfig::new(ProfileKind::Yubikey5);
        assert!(!yk.fido_over_iso());
        assert!(yk.with_transport(Transport::Nfc).fido_over_iso());
    }
}
