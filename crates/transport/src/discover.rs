//! Discovery: every connected device, probed and identified. I/O only;
//! the decisions are in [`crate::identify`].

use crate::apdu::{self, ApduTransport};
use crate::ctap::{CtapControl, CtapTransport};
use crate::ctaphid::{CtaphidDevice, HidReports};
use crate::error::TransportError;
use crate::hid::{self, HidDeviceInfo, HidKind, HidUevent};
use crate::identify::{
    fido_identity, hid_is_yubico, identify_card, identify_hid, merge, CardProbe, DeviceEntry,
    HidProbe, Identity,
};
use crate::pcsc::Pcsc;
use keyward_card::apdu::CommandApdu;
use keyward_card::ctap::command;
use keyward_card::piv::{self, ins};
use std::path::{Path, PathBuf};

/// Yubico's vendor CTAPHID command READ CONFIG (0x42 with the init bit),
/// answered with the device configuration (serial number in tag 02).
pub const YUBICO_CTAPHID_READ_CONFIG: u8 = 0xC2;

/// Where to look.
#[derive(Debug, Clone)]
pub struct DiscoveryOptions {
    pub pcsc: bool,
    pub hidraw: bool,
    /// Virtual HID sockets (`--hid-socket`).
    pub hid_sockets: Vec<PathBuf>,
    pub sysfs_root: PathBuf,
    pub dev_root: PathBuf,
    /// Readers and HID paths not to touch: a device session holds them (a
    /// probe would SELECT another application and, on a YubiKey, drop the
    /// session's PIV security state). They are left out of the result.
    pub hold_off: Vec<String>,
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        DiscoveryOptions {
            pcsc: true,
            hidraw: true,
            hid_sockets: Vec::new(),
            sysfs_root: PathBuf::from("/sys"),
            dev_root: PathBuf::from("/dev"),
            hold_off: Vec::new(),
        }
    }
}

/// The devices found, and what could not be looked at (pcscd not running,
/// a HID socket that does not exist): worth telling, not an error.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    pub devices: Vec<DeviceEntry>,
    pub warnings: Vec<String>,
}

/// GlobalPlatform GET DATA CPLC.
pub fn get_cplc() -> CommandApdu {
    CommandApdu::new(0x80, ins::GET_DATA_ISO, 0x9F, 0x7F).with_le(256)
}

/// authenticatorGetInfo wrapped in an ISO 7816 APDU.
pub fn iso_get_info() -> CommandApdu {
    CommandApdu::new(0x80, ins::CTAP_MSG, 0x80, 0x00)
        .with_data(vec![command::GET_INFO])
        .with_le(256)
}

/// Sends the identification probes to a card. Transport errors end the
/// probe; status words are recorded for [`identify_card`].
pub fn probe_card<T: ApduTransport + ?Sized>(t: &mut T) -> Result<CardProbe, TransportError> {
    let mut p = CardProbe {
        atr: t.atr(),
        ..Default::default()
    };
    let piv_select = apdu::transmit(t, &piv::select_piv())?;
    let has_piv = piv_select.is_success();
    p.piv_select = Some(piv_select);
    if has_piv {
        let version = apdu::transmit(t, &piv::yk_get_version())?;
        let is_yubikey = version.is_success();
        p.yk_version = Some(version);
        if is_yubikey {
            p.yk_serial = Some(apdu::transmit(t, &piv::yk_get_serial())?);
        }
    }
    if !p.yk_version.as_ref().is_some_and(|r| r.is_success()) {
        // Many cards answer CPLC whatever is selected; others only from the
        // issuer security domain.
        let mut cplc = apdu::transmit(t, &get_cplc())?;
        if !cplc.is_success() {
            for aid in [&piv::GP_ISD_AID[..], &piv::GP_CARD_MANAGER_AID[..]] {
                if apdu::transmit(t, &piv::select_aid(aid))?.is_success() {
                    cplc = apdu::transmit(t, &get_cplc())?;
                    break;
                }
            }
        }
        p.cplc = Some(cplc);
    }
    let fido_select = apdu::transmit(t, &piv::select_aid(&piv::FIDO_AID))?;
    if fido_select.is_success() && crate::ctap::is_fido_select_answer(&fido_select.data) {
        let info = apdu::transmit(t, &iso_get_info())?;
        if info.is_success() {
            p.fido_info = Some(info.data);
        }
    }
    p.fido_select = Some(fido_select);
    if has_piv {
        // Leave the card as a power-up would: PIV selected.
        apdu::transmit(t, &piv::select_piv())?;
    }
    Ok(p)
}

/// Sends the identification probes to a FIDO HID device: CTAPHID INIT,
/// authenticatorGetInfo, and on Yubico devices READ CONFIG for the serial.
pub fn probe_hid<D: HidReports>(
    dev: D,
    vendor_id: Option<u16>,
) -> Result<HidProbe, TransportError> {
    let mut dev = CtaphidDevice::open(dev)?;
    let init = dev.info();
    let fido_info = if init.supports_cbor() {
        Some(dev.ctap(&[command::GET_INFO], &mut CtapControl::default())?)
    } else {
        None
    };
    let fido = fido_info.as_deref().and_then(fido_identity);
    let yubikey_config = if hid_is_yubico(vendor_id, fido.as_ref()) {
        // The virtual device has no such command and answers ERR_INVALID_CMD.
        dev.vendor(YUBICO_CTAPHID_READ_CONFIG, &[0x00]).ok()
    } else {
        None
    };
    Ok(HidProbe {
        vendor_id,
        init_version: init.version,
        fido_info,
        yubikey_config,
    })
}

/// Probes and identifies a card; a card that cannot be read is listed as
/// unsupported with the reason.
pub fn identify_apdu_device<T: ApduTransport + ?Sized>(t: &mut T) -> Identity {
    match probe_card(t) {
        Ok(p) => identify_card(&p),
        Err(e) => unreadable(&e),
    }
}

/// One device reached through `t` alone (an in-process virtual card, a
/// card an agent relays): identified, with `t`'s transport and name.
pub fn identify_entry<T: ApduTransport + ?Sized>(t: &mut T) -> DeviceEntry {
    DeviceEntry {
        identity: identify_apdu_device(t),
        reader: Some(t.name()),
        hid_path: None,
        transports: vec![t.transport()],
        matched_by: None,
    }
}

fn unreadable(e: &TransportError) -> Identity {
    let reason = match e {
        TransportError::SharingViolation => {
            "in use by another program (opened exclusively); try again when it is free".to_string()
        }
        other => format!("could not be read: {other}"),
    };
    Identity {
        device_type: None,
        serial: None,
        firmware: None,
        applets: Vec::new(),
        supported: false,
        reason: Some(reason),
        fido: None,
    }
}

fn identify_hid_device(info: &HidDeviceInfo) -> Identity {
    let probe = hid::open(info).and_then(|dev| probe_hid(dev, info.uevent.vendor_id));
    match probe {
        Ok(p) => identify_hid(&p),
        Err(e) => unreadable(&e),
    }
}

/// The HID sockets that exist, as HID devices; a missing one is a warning
/// (the virtual device is not plugged in).
pub fn socket_devices(paths: &[PathBuf], warnings: &mut Vec<String>) -> Vec<HidDeviceInfo> {
    paths
        .iter()
        .filter(|p| {
            let exists = Path::new(p).exists();
            if !exists {
                warnings.push(format!(
                    "HID socket {}: no device (the socket does not exist)",
                    p.display()
                ));
            }
            exists
        })
        .map(|p| HidDeviceInfo {
            path: p.clone(),
            kind: HidKind::Socket,
            uevent: HidUevent::default(),
        })
        .collect()
}

/// Lists and identifies every connected device.
pub fn discover(opts: &DiscoveryOptions) -> Discovery {
    let mut warnings = Vec::new();
    let mut cards = Vec::new();
    if opts.pcsc {
        match Pcsc::establish().and_then(|p| p.readers().map(|r| (p, r))) {
            Ok((pcsc, readers)) => {
                for r in readers
                    .into_iter()
                    .filter(|r| r.card_present && !opts.hold_off.contains(&r.name))
                {
                    // Shared, the probes inside one transaction (no other
                    // program's command in between), ended with LEAVE_CARD:
                    // the card is not reset.
                    let identity = match pcsc
                        .connect(&r.name)
                        .and_then(|mut t| t.with_transaction(|t| identify_apdu_device(t)))
                    {
                        Ok(identity) => identity,
                        Err(e) => unreadable(&e),
                    };
                    cards.push((r.name, identity));
                }
            }
            Err(e) => warnings.push(format!("PC/SC: {e}")),
        }
    }
    let mut hid_devices = Vec::new();
    if opts.hidraw {
        hid_devices.extend(hid::list_hidraw(&opts.sysfs_root, &opts.dev_root));
    }
    hid_devices.extend(socket_devices(&opts.hid_sockets, &mut warnings));
    hid_devices.retain(|h| !opts.hold_off.contains(&h.path.display().to_string()));
    let hids = hid_devices
        .iter()
        .map(|info| (info.path.display().to_string(), identify_hid_device(info)))
        .collect();
    Discovery {
        devices: merge(cards, hids),
        warnings,
    }
}
