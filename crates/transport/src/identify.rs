//! Device identification as pure functions: the responses of the probe
//! commands in, the device's identity out. The I/O that sends the probes
//! is in [`crate::discover`].
//!
//! * YubiKey: "Yubikey" in the ATR, or the PIV application answering
//!   Yubico's GET VERSION (`00 FD`) and GET SERIAL (`00 F8`).
//! * Crescendo C4000: PIV, GlobalPlatform CPLC data (`80 CA 9F 7F`; the
//!   IC serial number is the device serial) and "C4000" in the ATR's
//!   historical bytes.
//! * Another PIV card: device type `piv`, serial from CPLC.
//! * Anything without a PIV application is listed as unsupported, with the
//!   reason.
//! * FIDO: SELECT of A0000006472F0001 answering `FIDO_2_0`/`U2F_V2`, then
//!   authenticatorGetInfo (AAGUID, versions, firmwareVersion).

use crate::ctap::{is_fido_select_answer, parse_get_info};
use keyward_card::apdu::ResponseApdu;
use keyward_card::tlv;
use keyward_domain::{Applet, DeviceType, FirmwareVersion, Transport};

/// The responses of the card probes (`None`: not sent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CardProbe {
    pub atr: Vec<u8>,
    pub piv_select: Option<ResponseApdu>,
    pub yk_version: Option<ResponseApdu>,
    pub yk_serial: Option<ResponseApdu>,
    /// GET DATA 9F7F (CPLC).
    pub cplc: Option<ResponseApdu>,
    pub fido_select: Option<ResponseApdu>,
    /// authenticatorGetInfo response (status byte + CBOR).
    pub fido_info: Option<Vec<u8>>,
}

/// The responses of the FIDO HID probes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HidProbe {
    /// USB vendor id (hidraw); `None` for the virtual HID socket.
    pub vendor_id: Option<u16>,
    /// Device version from CTAPHID INIT.
    pub init_version: (u8, u8, u8),
    /// authenticatorGetInfo response (status byte + CBOR).
    pub fido_info: Option<Vec<u8>>,
    /// Payload of Yubico's vendor CTAPHID command READ CONFIG (0xC2).
    pub yubikey_config: Option<Vec<u8>>,
}

/// What the FIDO application says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FidoIdentity {
    pub aaguid: [u8; 16],
    pub versions: Vec<String>,
    /// getInfo firmwareVersion, read the way YubiKeys encode it (0x00MMmmpp).
    pub firmware: Option<FirmwareVersion>,
}

/// A device's identity, as far as one transport shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `None`: not a device type Keyward manages.
    pub device_type: Option<DeviceType>,
    pub serial: Option<u32>,
    pub firmware: Option<FirmwareVersion>,
    pub applets: Vec<Applet>,
    pub supported: bool,
    /// Why the device is not supported.
    pub reason: Option<String>,
    pub fido: Option<FidoIdentity>,
}

impl Identity {
    fn unsupported(reason: impl Into<String>) -> Self {
        Identity {
            device_type: None,
            serial: None,
            firmware: None,
            applets: Vec::new(),
            supported: false,
            reason: Some(reason.into()),
            fido: None,
        }
    }
}

/// The AAGUIDs of Keyward's virtual devices (crates/vcard/src/fido/config.rs).
pub const AAGUID_VIRTUAL_YUBIKEY5: [u8; 16] = [
    0x6b, 0x77, 0x76, 0x63, 0x79, 0x6b, 0x35, 0x00, 0x4b, 0x65, 0x79, 0x77, 0x61, 0x72, 0x64, 0x01,
];
pub const AAGUID_VIRTUAL_C4000: [u8; 16] = [
    0x6b, 0x77, 0x76, 0x63, 0x63, 0x34, 0x6b, 0x00, 0x4b, 0x65, 0x79, 0x77, 0x61, 0x72, 0x64, 0x01,
];

/// AAGUIDs of YubiKey 5 series models (Yubico's published list).
const AAGUIDS_YUBIKEY5: &[&str] = &[
    "cb69481e8ff7403993ec0a2729a154a8", // YubiKey 5 Series, firmware 5.1
    "ee882879721c491397753dfcce97072a", // YubiKey 5 Series, 5.2 and 5.4
    "fa2b99dc9e3942578f924a30d23c4118", // YubiKey 5 Series with NFC, 5.1
    "2fc0579f811347eab116bb5a8db9202a", // YubiKey 5 Series with NFC, 5.2 and 5.4
    "c5ef55ffad9a4b9fb580adebafe026d0", // YubiKey 5Ci
    "73bb0cd4e50249b89c6fb59445bf720b", // YubiKey 5 FIPS Series
    "c1f9a0bc1dd2404ab27f8e29047a43fd", // YubiKey 5 FIPS Series with NFC
    "85203421485543559bc88a53846e5083", // YubiKey 5Ci FIPS
    "a25342c03cdc44148e46f4807fca511c", // YubiKey 5 Series with NFC, 5.7
    "19083c3d83834b18bc038f1c9ab2fd1b", // YubiKey 5 Series, 5.7
];

/// Whether an AAGUID is a YubiKey 5's (real or Keyward's virtual one).
pub fn is_yubikey5_aaguid(aaguid: &[u8; 16]) -> bool {
    *aaguid == AAGUID_VIRTUAL_YUBIKEY5 || AAGUIDS_YUBIKEY5.iter().any(|h| *h == hex::encode(aaguid))
}

fn ok_data(r: &Option<ResponseApdu>) -> Option<&[u8]> {
    r.as_ref()
        .filter(|r| r.is_success())
        .map(|r| r.data.as_slice())
}

fn contains_ascii(haystack: &[u8], needle: &str) -> bool {
    let needle = needle.as_bytes();
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// A firmwareVersion as YubiKeys encode it: 0x00MMmmpp.
pub fn firmware_from_number(n: u64) -> FirmwareVersion {
    FirmwareVersion::new(
        ((n >> 16) & 0xFF) as u16,
        ((n >> 8) & 0xFF) as u16,
        (n & 0xFF) as u16,
    )
}

/// The FIDO identity from a getInfo response, if it decodes.
pub fn fido_identity(get_info_response: &[u8]) -> Option<FidoIdentity> {
    let info = parse_get_info(get_info_response).ok()?;
    Some(FidoIdentity {
        aaguid: info.aaguid,
        versions: info.versions,
        firmware: info.firmware_version.map(firmware_from_number),
    })
}

/// CPLC data (the value of tag 9F7F, with or without the tag around it).
pub fn cplc_value(data: &[u8]) -> Option<&[u8]> {
    let value = match tlv::find(data, 0x9F7F) {
        Some(v) => v,
        None => data,
    };
    (value.len() >= 18).then_some(value)
}

/// The IC serial number from CPLC data (bytes 12..16).
pub fn cplc_serial(cplc: &[u8]) -> Option<u32> {
    let c = cplc_value(cplc)?;
    Some(u32::from_be_bytes([c[12], c[13], c[14], c[15]]))
}

/// The operating system release level from CPLC data (bytes 8..10) as major.minor.
pub fn cplc_os_release(cplc: &[u8]) -> Option<FirmwareVersion> {
    let c = cplc_value(cplc)?;
    Some(FirmwareVersion::new(c[8] as u16, c[9] as u16, 0))
}

/// ATR markers of Crescendo C4000 cards: Keyward's virtual card says
/// "KeywardvC4000" in its historical bytes. Real cards' ATRs go here once
/// known (see docs/devices.md).
fn atr_says_c4000(atr: &[u8]) -> bool {
    contains_ascii(atr, "C4000")
}

fn atr_says_yubikey(atr: &[u8]) -> bool {
    contains_ascii(atr, "Yubikey")
}

/// Identifies a card from its probe responses.
pub fn identify_card(p: &CardProbe) -> Identity {
    let fido = if ok_data(&p.fido_select).is_some_and(is_fido_select_answer) {
        p.fido_info.as_deref().and_then(fido_identity)
    } else {
        None
    };
    let fido_present = ok_data(&p.fido_select).is_some_and(is_fido_select_answer);
    let Some(_apt) = ok_data(&p.piv_select) else {
        let sw = p
            .piv_select
            .as_ref()
            .map(|r| format!("{:04X}", r.sw))
            .unwrap_or_else(|| "nothing".into());
        let mut id = Identity::unsupported(format!(
            "no PIV application (SELECT PIV answered {sw}): Keyward manages PIV devices"
        ));
        if fido_present {
            id.applets.push(Applet::Fido);
        }
        id.fido = fido;
        return id;
    };
    let mut applets = vec![Applet::Piv];
    if fido_present {
        applets.push(Applet::Fido);
    }
    let yk_version = ok_data(&p.yk_version).filter(|d| d.len() == 3);
    let yk_serial = ok_data(&p.yk_serial)
        .filter(|d| d.len() == 4)
        .map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]));
    let cplc = ok_data(&p.cplc);

    if atr_says_yubikey(&p.atr) || yk_version.is_some() {
        let firmware =
            yk_version.map(|v| FirmwareVersion::new(v[0] as u16, v[1] as u16, v[2] as u16));
        let mut id = Identity {
            device_type: Some(DeviceType::YubiKey5),
            serial: yk_serial,
            firmware,
            applets,
            supported: true,
            reason: None,
            fido,
        };
        match firmware {
            None => {
                id.device_type = None;
                id.supported = false;
                id.reason = Some("a YubiKey that does not answer GET VERSION".into());
            }
            Some(f) if f.major != 5 => {
                id.device_type = None;
                id.supported = false;
                id.reason = Some(format!(
                    "YubiKey firmware {f}: Keyward manages the YubiKey 5 series"
                ));
            }
            Some(_) if yk_serial.is_none() => {
                id.supported = false;
                id.reason = Some(
                    "the YubiKey does not answer GET SERIAL (serial number not visible)".into(),
                );
            }
            Some(_) => {}
        }
        return id;
    }

    let serial = cplc.and_then(cplc_serial);
    let fido_firmware = fido.as_ref().and_then(|f| f.firmware);
    let firmware = fido_firmware.or_else(|| cplc.and_then(cplc_os_release));
    let device_type = if atr_says_c4000(&p.atr) && serial.is_some() {
        DeviceType::C4000
    } else {
        DeviceType::Piv
    };
    let (supported, reason) = match serial {
        Some(_) => (true, None),
        None => (
            false,
            Some(
                "a PIV card without a readable serial number (no GlobalPlatform CPLC data)".into(),
            ),
        ),
    };
    Identity {
        device_type: Some(device_type),
        serial,
        firmware: if device_type == DeviceType::Piv {
            cplc.and_then(cplc_os_release)
        } else {
            firmware
        },
        applets,
        supported,
        reason,
        fido,
    }
}

/// Parses Yubico's device configuration (READ CONFIG): a length byte, then
/// TLVs with one-byte tags and lengths; tag 02 is the serial number.
pub fn yubikey_config_serial(config: &[u8]) -> Option<u32> {
    let (&len, rest) = config.split_first()?;
    let mut data = rest.get(..len as usize)?;
    while data.len() >= 2 {
        let (tag, l) = (data[0], data[1] as usize);
        let value = data.get(2..2 + l)?;
        if tag == 0x02 && l == 4 {
            return Some(u32::from_be_bytes([value[0], value[1], value[2], value[3]]));
        }
        data = &data[2 + l..];
    }
    None
}

/// Whether the HID device is Yubico's (vendor id, or a YubiKey AAGUID):
/// only then may Yubico's vendor CTAPHID commands be sent to it.
pub fn hid_is_yubico(vendor_id: Option<u16>, fido: Option<&FidoIdentity>) -> bool {
    vendor_id == Some(crate::hid::YUBICO_VENDOR_ID)
        || fido.is_some_and(|f| is_yubikey5_aaguid(&f.aaguid))
}

/// Identifies a FIDO HID device from its probe responses. On its own a HID
/// device is never manageable (PIV goes over the smart card interface):
/// [`merge`] joins it to its smart card side.
pub fn identify_hid(p: &HidProbe) -> Identity {
    let fido = p.fido_info.as_deref().and_then(fido_identity);
    let yubico = hid_is_yubico(p.vendor_id, fido.as_ref());
    let (major, minor, build) = p.init_version;
    let firmware = if yubico {
        fido.as_ref()
            .and_then(|f| f.firmware)
            .or(Some(FirmwareVersion::new(
                major as u16,
                minor as u16,
                build as u16,
            )))
    } else {
        fido.as_ref().and_then(|f| f.firmware)
    };
    let device_type = if yubico && firmware.is_some_and(|f| f.major == 5) {
        Some(DeviceType::YubiKey5)
    } else if fido
        .as_ref()
        .is_some_and(|f| f.aaguid == AAGUID_VIRTUAL_C4000)
    {
        Some(DeviceType::C4000)
    } else {
        None
    };
    let serial = p.yubikey_config.as_deref().and_then(yubikey_config_serial);
    Identity {
        device_type,
        serial,
        firmware,
        applets: if fido.is_some() {
            vec![Applet::Fido]
        } else {
            Vec::new()
        },
        supported: false,
        reason: Some(match (&fido, device_type) {
            (None, _) => "a FIDO HID device that does not answer authenticatorGetInfo".into(),
            (Some(_), None) => "a FIDO security key of a type Keyward does not manage".into(),
            (Some(_), Some(_)) => {
                "seen only as a FIDO HID device: its smart card (PIV) interface is not connected, \
                 or it could not be matched to it"
                    .into()
            }
        }),
        fido,
    }
}

/// One device with everything known about it, over all its transports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceEntry {
    pub identity: Identity,
    /// PC/SC reader name.
    pub reader: Option<String>,
    /// hidraw path or HID socket path.
    pub hid_path: Option<String>,
    pub transports: Vec<Transport>,
    /// How the HID side was joined to the smart card side.
    pub matched_by: Option<MatchedBy>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchedBy {
    /// Both sides gave the same serial number.
    Serial,
    /// The HID side gives no serial: the only device of its type and
    /// firmware on each side (see docs/devices.md).
    TypeAndFirmware,
}

/// Joins what a device shows through PC/SC and through HID into one entry
/// per device: by serial when the HID side has one; else when exactly one
/// smart card of the same device type and firmware and exactly one such
/// HID device are connected.
pub fn merge(cards: Vec<(String, Identity)>, hids: Vec<(String, Identity)>) -> Vec<DeviceEntry> {
    let mut out: Vec<DeviceEntry> = cards
        .into_iter()
        .map(|(reader, identity)| DeviceEntry {
            identity,
            reader: Some(reader),
            hid_path: None,
            transports: vec![Transport::Pcsc],
            matched_by: None,
        })
        .collect();
    let key = |id: &Identity| (id.device_type, id.firmware);
    let serial_less: Vec<_> = hids
        .iter()
        .filter(|(_, h)| h.serial.is_none() && h.device_type.is_some())
        .map(|(_, h)| key(h))
        .collect();
    for (path, hid) in hids {
        let target = match hid.serial {
            Some(serial) => out
                .iter()
                .position(|d| {
                    d.hid_path.is_none()
                        && d.identity.serial == Some(serial)
                        && d.identity.device_type == hid.device_type
                })
                .map(|i| (i, MatchedBy::Serial)),
            None if hid.device_type.is_some() => {
                let candidates: Vec<usize> = out
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| {
                        d.reader.is_some() && d.hid_path.is_none() && key(&d.identity) == key(&hid)
                    })
                    .map(|(i, _)| i)
                    .collect();
                let same_hids = serial_less.iter().filter(|k| **k == key(&hid)).count();
                (candidates.len() == 1 && same_hids == 1)
                    .then(|| (candidates[0], MatchedBy::TypeAndFirmware))
            }
            None => None,
        };
        match target {
            Some((i, how)) => {
                let d = &mut out[i];
                d.hid_path = Some(path);
                d.transports.push(Transport::Hid);
                d.matched_by = Some(how);
                for a in &hid.applets {
                    if !d.identity.applets.contains(a) {
                        d.identity.applets.push(*a);
                    }
                }
                if d.identity.fido.is_none() {
                    d.identity.fido = hid.fido;
                }
            }
            None => out.push(DeviceEntry {
                identity: hid,
                reader: None,
                hid_path: Some(path),
                transports: vec![Transport::Hid],
                matched_by: None,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_card::ctap::{encode_response, GetInfoResponse, StatusCode};

    fn ok(data: &[u8]) -> Option<ResponseApdu> {
        Some(ResponseApdu::success(data.to_vec()))
    }
    fn sw(sw: u16) -> Option<ResponseApdu> {
        Some(ResponseApdu::status(sw))
    }
    fn info(aaguid: [u8; 16], fw: Option<u64>) -> Vec<u8> {
        let i = GetInfoResponse {
            versions: vec!["FIDO_2_0".into(), "FIDO_2_1".into()],
            aaguid,
            firmware_version: fw,
            ..Default::default()
        };
        encode_response(StatusCode(0), Some(&i.to_value()))
    }
    const YK_ATR: &[u8] = &[
        0x3B, 0xFD, 0x13, 0x00, 0x00, 0x81, 0x31, 0xFE, 0x15, 0x80, 0x73, 0xC0, 0x21, 0xC0, 0x57,
        0x59, 0x75, 0x62, 0x69, 0x4B, 0x65, 0x79, 0x40,
    ];

    fn cplc(serial: u32, os: (u8, u8)) -> Vec<u8> {
        let mut c = vec![
            0x4B, 0x57, 0xC4, 0x00, 0x4B, 0x57, 0x60, 0x01, os.0, os.1, 0x60, 0x01,
        ];
        c.extend_from_slice(&serial.to_be_bytes());
        c.extend_from_slice(&[0; 26]);
        tlv::encode(0x9F7F, &c)
    }

    fn c4000_atr() -> Vec<u8> {
        let mut a = vec![0x3B, 0x8F, 0x80, 0x01, 0x80, 0x5D];
        a.extend_from_slice(b"KeywardvC4000");
        a.push(0x00);
        a
    }

    #[test]
    fn yubikey_usb_over_pcsc() {
        let id = identify_card(&CardProbe {
            atr: YK_ATR.to_vec(),
            piv_select: ok(&[0x61, 0x00]),
            yk_version: ok(&[5, 7, 1]),
            yk_serial: ok(&10_000_002u32.to_be_bytes()),
            fido_select: sw(0x6A82),
            ..Default::default()
        });
        assert_eq!(id.device_type, Some(DeviceType::YubiKey5));
        assert_eq!(id.serial, Some(10_000_002));
        assert_eq!(id.firmware, Some(FirmwareVersion::new(5, 7, 1)));
        assert_eq!(id.applets, vec![Applet::Piv]);
        assert!(id.supported);
    }

    #[test]
    fn yubikey_4_and_hidden_serial_are_unsupported() {
        let mut p = CardProbe {
            atr: YK_ATR.to_vec(),
            piv_select: ok(&[]),
            yk_version: ok(&[4, 3, 7]),
            yk_serial: ok(&[0, 0, 0, 1]),
            ..Default::default()
        };
        let id = identify_card(&p);
        assert!(!id.supported);
        assert_eq!(id.device_type, None);
        assert!(id.reason.unwrap().contains("4.3.7"));
        p.yk_version = ok(&[5, 4, 3]);
        p.yk_serial = sw(0x6D00);
        let id = identify_card(&p);
        assert_eq!(id.device_type, Some(DeviceType::YubiKey5));
        assert!(!id.supported);
        assert!(id.reason.unwrap().contains("GET SERIAL"));
    }

    #[test]
    fn c4000_by_cplc_and_atr_with_fido_firmware() {
        let id = identify_card(&CardProbe {
            atr: c4000_atr(),
            piv_select: ok(&[0x61, 0x00]),
            yk_version: sw(0x6D00),
            yk_serial: sw(0x6D00),
            cplc: ok(&cplc(20_000_001, (1, 0))),
            fido_select: ok(b"FIDO_2_0"),
            fido_info: Some(info(AAGUID_VIRTUAL_C4000, Some(0x010203))),
        });
        assert_eq!(id.device_type, Some(DeviceType::C4000));
        assert_eq!(id.serial, Some(20_000_001));
        assert_eq!(id.firmware, Some(FirmwareVersion::new(1, 2, 3)));
        assert_eq!(id.applets, vec![Applet::Piv, Applet::Fido]);
        assert_eq!(id.fido.unwrap().aaguid, AAGUID_VIRTUAL_C4000);
        assert!(id.supported);
    }

    #[test]
    fn c4000_without_fido_takes_the_cplc_release() {
        let id = identify_card(&CardProbe {
            atr: c4000_atr(),
            piv_select: ok(&[]),
            cplc: ok(&cplc(7, (1, 4))),
            ..Default::default()
        });
        assert_eq!(id.firmware, Some(FirmwareVersion::new(1, 4, 0)));
        assert_eq!(id.applets, vec![Applet::Piv]);
    }

    #[test]
    fn other_piv_cards_are_piv_with_a_cplc_serial_or_unsupported() {
        let mut p = CardProbe {
            atr: vec![0x3B, 0x88, 0x80, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0x09],
            piv_select: ok(&[]),
            yk_version: sw(0x6D00),
            cplc: ok(&cplc(42, (2, 1))),
            ..Default::default()
        };
        let id = identify_card(&p);
        assert_eq!(id.device_type, Some(DeviceType::Piv));
        assert_eq!(id.serial, Some(42));
        assert!(id.supported);
        p.cplc = sw(0x6A88);
        let id = identify_card(&p);
        assert_eq!(id.device_type, Some(DeviceType::Piv));
        assert!(!id.supported);
        assert!(id.reason.unwrap().contains("CPLC"));
    }

    #[test]
    fn cards_without_piv_are_unsupported_with_the_reason() {
        let id = identify_card(&CardProbe {
            atr: vec![0x3B, 0x00],
            piv_select: sw(0x6A82),
            fido_select: sw(0x6A82),
            ..Default::default()
        });
        assert_eq!(id.device_type, None);
        assert!(!id.supported);
        assert!(id.reason.unwrap().contains("6A82"));
        assert!(id.applets.is_empty());
    }

    #[test]
    fn cplc_and_config_parsing() {
        let c = cplc(0x01020304, (1, 0));
        assert_eq!(cplc_serial(&c), Some(0x01020304));
        assert_eq!(cplc_serial(&c[3..]), Some(0x01020304));
        assert_eq!(cplc_serial(&[0x9F, 0x7F, 0x02, 0, 0]), None);
        // length, USB supported (01), serial (02), form factor (04)
        let cfg = [
            0x0C, 0x01, 0x02, 0x02, 0x3F, 0x02, 0x04, 0x00, 0x98, 0x96, 0x82, 0x04, 0x01,
        ];
        assert_eq!(yubikey_config_serial(&cfg[..13]), Some(10_000_002));
        assert_eq!(yubikey_config_serial(&[0x02, 0x01, 0x05]), None);
        assert_eq!(yubikey_config_serial(&[]), None);
        assert_eq!(
            firmware_from_number(0x050701),
            FirmwareVersion::new(5, 7, 1)
        );
    }

    #[test]
    fn yubikey_aaguids() {
        assert!(is_yubikey5_aaguid(&AAGUID_VIRTUAL_YUBIKEY5));
        let real: [u8; 16] = hex::decode("ee882879721c491397753dfcce97072a")
            .unwrap()
            .try_into()
            .unwrap();
        assert!(is_yubikey5_aaguid(&real));
        assert!(!is_yubikey5_aaguid(&AAGUID_VIRTUAL_C4000));
    }

    #[test]
    fn virtual_aaguids_match_the_virtual_device() {
        assert_eq!(
            AAGUID_VIRTUAL_YUBIKEY5,
            keyward_vcard::fido::config::AAGUID_YUBIKEY5
        );
        assert_eq!(
            AAGUID_VIRTUAL_C4000,
            keyward_vcard::fido::config::AAGUID_C4000
        );
    }

    fn yk_hid(serial_config: Option<Vec<u8>>, fw: u64) -> Identity {
        identify_hid(&HidProbe {
            vendor_id: None,
            init_version: (5, 7, 1),
            fido_info: Some(info(AAGUID_VIRTUAL_YUBIKEY5, Some(fw))),
            yubikey_config: serial_config,
        })
    }

    fn yk_card(serial: u32, fw: (u8, u8, u8)) -> Identity {
        identify_card(&CardProbe {
            atr: YK_ATR.to_vec(),
            piv_select: ok(&[]),
            yk_version: ok(&[fw.0, fw.1, fw.2]),
            yk_serial: ok(&serial.to_be_bytes()),
            ..Default::default()
        })
    }

    #[test]
    fn hid_identity_alone_is_not_manageable() {
        let id = yk_hid(None, 0x050701);
        assert_eq!(id.device_type, Some(DeviceType::YubiKey5));
        assert_eq!(id.firmware, Some(FirmwareVersion::new(5, 7, 1)));
        assert_eq!(id.applets, vec![Applet::Fido]);
        assert!(!id.supported);
        let other = identify_hid(&HidProbe {
            vendor_id: Some(0x1234),
            init_version: (1, 0, 0),
            fido_info: Some(info([9; 16], None)),
            yubikey_config: None,
        });
        assert_eq!(other.device_type, None);
        assert!(other.reason.unwrap().contains("does not manage"));
    }

    #[test]
    fn merge_by_serial() {
        let cfg = {
            let mut t = vec![0x06, 0x02, 0x04];
            t.extend_from_slice(&10_000_002u32.to_be_bytes());
            t
        };
        let out = merge(
            vec![
                ("r0".into(), yk_card(10_000_001, (5, 7, 1))),
                ("r1".into(), yk_card(10_000_002, (5, 7, 1))),
            ],
            vec![("hid".into(), yk_hid(Some(cfg), 0x050701))],
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].transports, vec![Transport::Pcsc, Transport::Hid]);
        assert_eq!(out[1].matched_by, Some(MatchedBy::Serial));
        assert_eq!(out[1].identity.applets, vec![Applet::Piv, Applet::Fido]);
        assert_eq!(out[0].transports, vec![Transport::Pcsc]);
    }

    #[test]
    fn merge_without_serial_needs_exactly_one_candidate() {
        // One YubiKey on each side with the same firmware: one device.
        let out = merge(
            vec![("r0".into(), yk_card(10_000_002, (5, 7, 1)))],
            vec![("hid".into(), yk_hid(None, 0x050701))],
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].matched_by, Some(MatchedBy::TypeAndFirmware));
        assert_eq!(out[0].hid_path.as_deref(), Some("hid"));
        assert!(out[0].identity.supported);

        // Different firmware: two entries.
        let out = merge(
            vec![("r0".into(), yk_card(10_000_002, (5, 4, 3)))],
            vec![("hid".into(), yk_hid(None, 0x050701))],
        );
        assert_eq!(out.len(), 2);
        assert!(!out[1].identity.supported);

        // Two smart card candidates: ambiguous, not joined.
        let out = merge(
            vec![
                ("r0".into(), yk_card(1, (5, 7, 1))),
                ("r1".into(), yk_card(2, (5, 7, 1))),
            ],
            vec![("hid".into(), yk_hid(None, 0x050701))],
        );
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|d| d.matched_by.is_none()));

        // Two HID candidates: ambiguous too.
        let out = merge(
            vec![("r0".into(), yk_card(1, (5, 7, 1)))],
            vec![
                ("h0".into(), yk_hid(None, 0x050701)),
                ("h1".into(), yk_hid(None, 0x050701)),
            ],
        );
        assert_eq!(out.len(), 3);
    }
}
