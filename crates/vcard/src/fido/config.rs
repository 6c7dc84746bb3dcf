//! What a FIDO authenticator of each profile and firmware says about itself
//! (authenticatorGetInfo) and which commands it accepts.

use serde::{Deserialize, Serialize};

/// The device family the authenticator imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FidoProfile {
    /// YubiKey 5 series: CTAP 2.1 from firmware 5.7, the FIDO_2_1_PRE
    /// preview (credentialMgmtPreview, command 0x41) before.
    YubiKey5,
    /// HID Crescendo C4000: a contact card; FIDO 2.1; no touch sensor, so
    /// user presence is implied by the card being in the reader.
    C4000,
}

/// Static description of one authenticator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FidoConfig {
    pub profile: FidoProfile,
    /// Firmware as (major, minor, patch).
    pub firmware: (u8, u8, u8),
    /// AAGUID. These are Keyward's own virtual AAGUIDs, not Yubico's or
    /// HID's: a virtual device must never pass for a certified model in an
    /// AAGUID allow-list.
    pub aaguid: [u8; 16],
    pub min_pin_length: u8,
    pub max_msg_size: u64,
    /// Discoverable credential slots (YubiKey 5: 25 before 5.7, 100 from 5.7).
    pub max_discoverable_credentials: usize,
    /// Whether the device has a touch sensor. Without one, user presence is
    /// implied and the presence object is never asked.
    pub touch_sensor: bool,
}

/// "KEYWARD-VYK5" + version nibbles would be cute; keep them plain and fixed.
pub const AAGUID_YUBIKEY5: [u8; 16] = [
    0x6b, 0x77, 0x76, 0x63, 0x79, 0x6b, 0x35, 0x00, 0x4b, 0x65, 0x79, 0x77, 0x61, 0x72, 0x64, 0x01,
];
pub const AAGUID_C4000: [u8; 16] = [
    0x6b, 0x77, 0x76, 0x63, 0x63, 0x34, 0x6b, 0x00, 0x4b, 0x65, 0x79, 0x77, 0x61, 0x72, 0x64, 0x01,
];

impl FidoConfig {
    pub fn yubikey5(firmware: (u8, u8, u8)) -> Self {
        let ctap21 = firmware >= (5, 7, 0);
        Self {
            profile: FidoProfile::YubiKey5,
            firmware,
            aaguid: AAGUID_YUBIKEY5,
            min_pin_length: 4,
            max_msg_size: 1200,
            max_discoverable_credentials: if ctap21 { 100 } else { 25 },
            touch_sensor: true,
        }
    }

    pub fn c4000(firmware: (u8, u8, u8)) -> Self {
        Self {
            profile: FidoProfile::C4000,
            firmware,
            aaguid: AAGUID_C4000,
            min_pin_length: 4,
            max_msg_size: 2048,
            max_discoverable_credentials: 50,
            touch_sensor: false,
        }
    }

    /// Full CTAP 2.1 (FIDO_2_1, credMgmt, pinUvAuthToken with permissions)
    /// rather than the FIDO_2_1_PRE preview.
    pub fn ctap21(&self) -> bool {
        match self.profile {
            FidoProfile::YubiKey5 => self.firmware >= (5, 7, 0),
            FidoProfile::C4000 => true,
        }
    }

    pub fn versions(&self) -> Vec<String> {
        let v: &[&str] = if self.ctap21() {
            &["FIDO_2_0", "FIDO_2_1"]
        } else {
            &["FIDO_2_0", "FIDO_2_1_PRE"]
        };
        v.iter().map(|s| s.to_string()).collect()
    }

    /// firmwareVersion as YubiKeys encode it: 0x00MMmmpp.
    pub fn firmware_version_number(&self) -> u64 {
        ((self.firmware.0 as u64) << 16) | ((self.firmware.1 as u64) << 8) | self.firmware.2 as u64
    }
}
