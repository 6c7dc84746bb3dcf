//! Which FIDO authenticator models (AAGUIDs) each device type may present,
//! by firmware: the FIDO step refuses a passkey whose verified attestation
//! names an AAGUID the device's type and firmware do not have (a relay
//! cannot pass off another authenticator as the card it reported).
//!
//! Source of the YubiKey rows: Yubico's AAGUID list, <https://yubi.co/aaguids>
//! (YubiKey 5 Series, firmware 5.1 to 5.7). HID does not publish the
//! Crescendo C4000's AAGUID in a source checked here: a real C4000's
//! passkey is recorded "not attested" until a row is added (its policies do
//! not require attestation unless they say so). The Keyward virtual devices
//! (`keyward vcard`) have rows of their own; they are accepted only where
//! their virtual manufacturer CA is a configured FIDO root.

use crate::firmware::FirmwareVersion;
use crate::names::DeviceType;

/// One authenticator model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authenticator {
    pub device_type: DeviceType,
    /// The AAGUID, lower-case hyphenated.
    pub aaguid: &'static str,
    pub model: &'static str,
    /// Firmware range (inclusive); None: any.
    pub first_firmware: Option<FirmwareVersion>,
    pub last_firmware: Option<FirmwareVersion>,
}

const fn fw(major: u16, minor: u16, patch: u16) -> Option<FirmwareVersion> {
    Some(FirmwareVersion::new(major, minor, patch))
}

const fn yubikey(
    aaguid: &'static str,
    model: &'static str,
    first: Option<FirmwareVersion>,
    last: Option<FirmwareVersion>,
) -> Authenticator {
    Authenticator {
        device_type: DeviceType::YubiKey5,
        aaguid,
        model,
        first_firmware: first,
        last_firmware: last,
    }
}

/// The table.
pub const AUTHENTICATORS: &[Authenticator] = &[
    // YubiKey 5 (USB-A), YubiKey 5 Nano
    yubikey(
        "cb69481e-8ff7-4039-93ec-0a2729a154a8",
        "YubiKey 5 Series",
        fw(5, 1, 0),
        fw(5, 1, 99),
    ),
    yubikey(
        "ee882879-721c-4913-9775-3dfcce97072a",
        "YubiKey 5 Series",
        fw(5, 2, 0),
        fw(5, 6, 99),
    ),
    // YubiKey 5 NFC, 5C NFC
    yubikey(
        "fa2b99dc-9e39-4257-8f92-4a30d23c4118",
        "YubiKey 5 Series with NFC",
        fw(5, 1, 0),
        fw(5, 1, 99),
    ),
    yubikey(
        "2fc0579f-8113-47ea-b116-bb5a8db9202a",
        "YubiKey 5 Series with NFC",
        fw(5, 2, 0),
        fw(5, 6, 99),
    ),
    yubikey(
        "a25342c0-3cdc-4414-8e46-f4807fca511c",
        "YubiKey 5 Series with NFC",
        fw(5, 7, 0),
        None,
    ),
    yubikey(
        "d7781e5d-e353-46aa-afe2-3ca49f13332a",
        "YubiKey 5 Series with NFC",
        fw(5, 7, 4),
        None,
    ),
    // YubiKey 5Ci
    yubikey(
        "c5ef55ff-ad9a-4b9f-b580-adebafe026d0",
        "YubiKey 5 Series with Lightning",
        fw(5, 2, 0),
        fw(5, 6, 99),
    ),
    // Keyward virtual devices (keyward-vcard's AAGUID_YUBIKEY5, AAGUID_C4000).
    yubikey(
        "6b777663-796b-3500-4b65-797761726401",
        "Keyward virtual YubiKey 5",
        None,
        None,
    ),
    Authenticator {
        device_type: DeviceType::C4000,
        aaguid: "6b777663-6334-6b00-4b65-797761726401",
        model: "Keyward virtual Crescendo C4000",
        first_firmware: None,
        last_firmware: None,
    },
];

/// The model a device of `device_type` at `firmware` (unknown: any) may
/// present with `aaguid`, or why not.
pub fn allowed(
    device_type: DeviceType,
    firmware: Option<FirmwareVersion>,
    aaguid: &uuid::Uuid,
) -> Result<&'static Authenticator, String> {
    let text = aaguid.hyphenated().to_string();
    let rows: Vec<&Authenticator> = AUTHENTICATORS
        .iter()
        .filter(|a| a.device_type == device_type && a.aaguid == text)
        .collect();
    if rows.is_empty() {
        return Err(format!(
            "AAGUID {text} is not a {} model Keyward knows",
            device_type.label()
        ));
    }
    rows.iter()
        .find(|a| {
            firmware.is_none_or(|f| {
                a.first_firmware.is_none_or(|first| f >= first)
                    && a.last_firmware.is_none_or(|last| f <= last)
            })
        })
        .copied()
        .ok_or_else(|| {
            format!(
                "AAGUID {text} ({}) does not match firmware {}",
                rows[0].model,
                firmware.map(|f| f.to_string()).unwrap_or_default()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> uuid::Uuid {
        s.parse().unwrap()
    }

    #[test]
    fn a_yubikey_s_aaguid_must_fit_its_firmware() {
        let nfc_54 = id("2fc0579f-8113-47ea-b116-bb5a8db9202a");
        assert!(allowed(DeviceType::YubiKey5, fw(5, 4, 3), &nfc_54).is_ok());
        let e = allowed(DeviceType::YubiKey5, fw(5, 7, 1), &nfc_54).unwrap_err();
        assert!(e.contains("does not match firmware 5.7.1"), "{e}");
        assert!(allowed(DeviceType::YubiKey5, None, &nfc_54).is_ok());
    }

    #[test]
    fn an_aaguid_of_another_type_or_unknown_is_refused() {
        let c4000 = id("6b777663-6334-6b00-4b65-797761726401");
        assert!(allowed(DeviceType::C4000, fw(1, 0, 0), &c4000).is_ok());
        assert!(allowed(DeviceType::YubiKey5, fw(5, 7, 1), &c4000).is_err());
        assert!(allowed(DeviceType::Piv, None, &uuid::Uuid::nil()).is_err());
    }

    #[test]
    fn the_virtual_rows_are_the_virtual_devices_aaguids() {
        // keyward-vcard's constants, as bytes (the domain does not depend on it).
        let yk: [u8; 16] = [
            0x6b, 0x77, 0x76, 0x63, 0x79, 0x6b, 0x35, 0x00, 0x4b, 0x65, 0x79, 0x77, 0x61, 0x72,
            0x64, 0x01,
        ];
        assert!(allowed(
            DeviceType::YubiKey5,
            fw(5, 4, 3),
            &uuid::Uuid::from_bytes(yk)
        )
        .is_ok());
    }
}
