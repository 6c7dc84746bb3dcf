//! The devices an agent serves: the connected ones (keyward-client
//! discovery over PC/SC, hidraw and `--hid-socket`), and in-process virtual
//! devices (`--virtual`, and `keyward demo`'s agent), which open nothing on
//! the workstation.
//!
//! Discovery probes a device (SELECTs), so the agent only looks again when
//! something changed (readers, card presence, HID nodes and sockets, a
//! virtual card's insert/remove generation), and never while it runs a
//! batch.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail};
use keyward_client::apdu::ApduTransport;
use keyward_client::discover::{discover, identify_entry, DiscoveryOptions};
use keyward_client::hid::{HidDeviceInfo, HidKind, HidUevent};
use keyward_client::identify::DeviceEntry;
use keyward_client::in_process::{InProcessCard, InProcessFido};
use keyward_client::pcsc::Pcsc;
use keyward_client::TransportError;
use keyward_domain::Transport;
use keyward_vcard::{ProfileKind, VcardConfig, VcardHandle, VirtualCard};
use serde::{Deserialize, Serialize};

use super::relay::{CardIo, DeviceIo, HidIo};

/// One device as reported to the server (`PUT /agents/me/devices`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reported {
    pub serial: String,
    pub device_type: String,
    pub firmware: Option<String>,
    pub applets: Vec<String>,
    pub transports: Vec<String>,
    pub reader: Option<String>,
}

/// A virtual device living in the agent's process.
#[derive(Clone)]
pub struct VirtualDevice {
    pub handle: VcardHandle,
    pub name: String,
    /// Test fault: remove the card when this many more relayed commands
    /// have been sent (`--virtual KIND:SERIAL:remove-after=N`).
    pub remove_after: Arc<Mutex<Option<u64>>>,
}

impl VirtualDevice {
    pub fn new(handle: VcardHandle, name: impl Into<String>) -> Self {
        VirtualDevice {
            handle,
            name: name.into(),
            remove_after: Arc::new(Mutex::new(None)),
        }
    }
}

/// `KIND:SERIAL[:remove-after=N]` (KIND `yubikey5` or `c4000`); the card's
/// manufacturer CA lives in `ca_dir`.
pub fn parse_virtual(spec: &str, ca_dir: &std::path::Path) -> anyhow::Result<VirtualDevice> {
    let mut parts = spec.split(':');
    let kind: ProfileKind = parts
        .next()
        .unwrap_or("")
        .parse()
        .map_err(|e: String| anyhow!("--virtual {spec}: {e}"))?;
    let serial: u32 = parts
        .next()
        .ok_or_else(|| anyhow!("--virtual {spec}: expected KIND:SERIAL"))?
        .parse()
        .map_err(|_| anyhow!("--virtual {spec}: the serial is a decimal number"))?;
    let mut remove_after = None;
    for opt in parts {
        match opt.split_once('=') {
            Some(("remove-after", n)) => {
                remove_after = Some(
                    n.parse()
                        .map_err(|_| anyhow!("--virtual {spec}: remove-after=N"))?,
                )
            }
            _ => bail!("--virtual {spec}: unknown option {opt:?} (remove-after=N)"),
        }
    }
    let config = VcardConfig::new(kind)
        .with_serial(serial)
        .with_ca_dir(ca_dir.to_path_buf());
    let card = VirtualCard::new(config).map_err(|e| anyhow!("--virtual {spec}: {e}"))?;
    let dev = VirtualDevice::new(
        VcardHandle::new(card),
        format!("Keyward in-process {kind} {serial}"),
    );
    *dev.remove_after.lock().unwrap() = remove_after;
    Ok(dev)
}

/// How the agent reaches a device to relay a batch.
#[derive(Clone)]
pub enum Endpoint {
    /// A card in a PC/SC reader; `hid`: the same device's FIDO HID
    /// interface (a USB YubiKey answers CTAP only there).
    Pcsc {
        reader: String,
        hid: Option<HidDeviceInfo>,
    },
    Hid {
        info: HidDeviceInfo,
    },
    Virtual(VirtualDevice),
}

impl Endpoint {
    /// Opens the device for one batch.
    pub fn open(&self) -> Result<Box<dyn DeviceIo>, TransportError> {
        match self {
            Endpoint::Pcsc { reader, hid } => {
                let card = Pcsc::establish()?.connect(reader)?;
                Ok(Box::new(SplitIo {
                    card: CardIo::new(card),
                    hid: hid.clone(),
                    open: None,
                }))
            }
            Endpoint::Hid { info } => {
                let dev = keyward_client::hid::open(info)?;
                Ok(Box::new(HidIo(
                    keyward_client::ctaphid::CtaphidDevice::open(dev)?,
                )))
            }
            Endpoint::Virtual(v) => {
                let card = CardIo::new(Faulty {
                    card: InProcessCard::new(v.handle.clone(), v.name.clone()),
                    remove_after: v.remove_after.clone(),
                });
                // A USB YubiKey answers CTAP only on its HID side (its CCID
                // interface has no FIDO application); a C4000, or a key over
                // NFC, takes CTAP wrapped in ISO 7816.
                let usb_yubikey = v.handle.with_card(|c| {
                    let config = c.config();
                    config.profile == ProfileKind::Yubikey5
                        && config.transport == keyward_vcard::Transport::Usb
                });
                if usb_yubikey {
                    Ok(Box::new(VirtualUsbIo {
                        card,
                        fido: HidIo(InProcessFido::new(v.handle.clone(), v.name.clone())),
                    }))
                } else {
                    Ok(Box::new(card))
                }
            }
        }
    }
}

/// A device seen as a card and as a HID device: PIV over the card, CTAP
/// over CTAPHID (opened at the first CTAP message).
struct SplitIo<T: ApduTransport> {
    card: CardIo<T>,
    hid: Option<HidDeviceInfo>,
    open: Option<
        HidIo<keyward_client::ctaphid::CtaphidDevice<Box<dyn keyward_client::ctaphid::HidReports>>>,
    >,
}

impl<T: ApduTransport> DeviceIo for SplitIo<T> {
    fn piv(&mut self, bytes: &[u8]) -> Result<(Vec<u8>, u16), TransportError> {
        self.card.piv(bytes)
    }

    fn ctap(&mut self, request: &[u8]) -> Result<Vec<u8>, TransportError> {
        let Some(info) = &self.hid else {
            return self.card.ctap(request);
        };
        if self.open.is_none() {
            let dev = keyward_client::hid::open(info)?;
            self.open = Some(HidIo(keyward_client::ctaphid::CtaphidDevice::open(dev)?));
        }
        self.open.as_mut().expect("opened").ctap(request)
    }
}

/// An in-process USB YubiKey: PIV over its card side, CTAP over its
/// FIDO (CTAPHID) side, as [`SplitIo`] does for a real one.
struct VirtualUsbIo {
    card: CardIo<Faulty>,
    fido: HidIo<InProcessFido>,
}

impl DeviceIo for VirtualUsbIo {
    fn piv(&mut self, bytes: &[u8]) -> Result<(Vec<u8>, u16), TransportError> {
        self.card.piv(bytes)
    }

    fn ctap(&mut self, request: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.fido.ctap(request)
    }
}

/// The in-process card, with the optional test fault.
struct Faulty {
    card: InProcessCard,
    remove_after: Arc<Mutex<Option<u64>>>,
}

impl ApduTransport for Faulty {
    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        let mut left = self.remove_after.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = left.as_mut() {
            if *n == 0 {
                *left = None;
                self.card.handle().remove();
                return Err(TransportError::DeviceRemoved);
            }
            *n -= 1;
        }
        drop(left);
        self.card.transmit_raw(command)
    }
    fn transport(&self) -> Transport {
        self.card.transport()
    }
    fn name(&self) -> String {
        self.card.name()
    }
    fn atr(&self) -> Vec<u8> {
        self.card.atr()
    }
}

/// A virtual card held locked by [`VcardHandle::with_card`].
struct Locked<'a> {
    card: &'a mut VirtualCard,
    name: String,
}

impl ApduTransport for Locked<'_> {
    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        Ok(self.card.transmit(command))
    }
    fn transport(&self) -> Transport {
        Transport::InProcess
    }
    fn name(&self) -> String {
        self.name.clone()
    }
    fn atr(&self) -> Vec<u8> {
        self.card.atr()
    }
}

/// Where the agent looks.
#[derive(Clone, Default)]
pub struct Sources {
    pub pcsc: bool,
    pub hidraw: bool,
    pub hid_sockets: Vec<PathBuf>,
    pub virtual_devices: Vec<VirtualDevice>,
}

/// The devices seen, by serial, with how to reach each.
pub type Seen = BTreeMap<String, (Reported, Endpoint)>;

fn reported(e: &DeviceEntry) -> Option<Reported> {
    let id = &e.identity;
    if !id.supported {
        return None;
    }
    Some(Reported {
        serial: id.serial?.to_string(),
        device_type: id.device_type?.as_str().to_string(),
        firmware: id.firmware.map(|f| f.to_string()),
        applets: id.applets.iter().map(|a| a.as_str().to_string()).collect(),
        transports: e
            .transports
            .iter()
            .map(|t| t.as_str().to_string())
            .collect(),
        reader: e.reader.clone().or_else(|| e.hid_path.clone()),
    })
}

/// Watches the sources; `scan` answers the devices, probing only what changed.
pub struct Watcher {
    sources: Sources,
    physical_signature: Option<String>,
    physical: Seen,
    virtual_seen: Vec<(u64, bool, Option<Reported>)>,
    pub warnings: Vec<String>,
}

impl Watcher {
    pub fn new(sources: Sources) -> Self {
        let n = sources.virtual_devices.len();
        Watcher {
            sources,
            physical_signature: None,
            physical: Seen::new(),
            virtual_seen: vec![(u64::MAX, false, None); n],
            warnings: Vec::new(),
        }
    }

    /// What the physical sources show without touching a device.
    fn signature(&self) -> String {
        let mut s = String::new();
        if self.sources.pcsc {
            match Pcsc::establish().and_then(|p| p.readers()) {
                Ok(readers) => {
                    for r in readers {
                        s.push_str(&format!("r:{}:{};", r.name, r.card_present));
                    }
                }
                Err(e) => s.push_str(&format!("pcsc-error:{};", e.code())),
            }
        }
        if self.sources.hidraw {
            for h in keyward_client::hid::list_hidraw(
                std::path::Path::new("/sys"),
                std::path::Path::new("/dev"),
            ) {
                s.push_str(&format!("h:{};", h.path.display()));
            }
        }
        for p in &self.sources.hid_sockets {
            s.push_str(&format!("s:{}:{};", p.display(), p.exists()));
        }
        s
    }

    pub fn scan(&mut self) -> Seen {
        let physical_wanted =
            self.sources.pcsc || self.sources.hidraw || !self.sources.hid_sockets.is_empty();
        if physical_wanted {
            let sig = self.signature();
            if self.physical_signature.as_ref() != Some(&sig) {
                let found = discover(&DiscoveryOptions {
                    pcsc: self.sources.pcsc,
                    hidraw: self.sources.hidraw,
                    hid_sockets: self.sources.hid_sockets.clone(),
                    ..Default::default()
                });
                self.warnings = found.warnings.clone();
                self.physical = found
                    .devices
                    .iter()
                    .filter_map(|e| {
                        let r = reported(e)?;
                        let hid = e.hid_path.as_ref().map(|path| {
                            let path = PathBuf::from(path);
                            let kind = if self.sources.hid_sockets.contains(&path) {
                                HidKind::Socket
                            } else {
                                HidKind::Hidraw
                            };
                            HidDeviceInfo {
                                path,
                                kind,
                                uevent: HidUevent::default(),
                            }
                        });
                        let endpoint = match (&e.reader, hid) {
                            (Some(reader), hid) if e.transports.contains(&Transport::Pcsc) => {
                                Endpoint::Pcsc {
                                    reader: reader.clone(),
                                    hid,
                                }
                            }
                            (_, Some(info)) => Endpoint::Hid { info },
                            _ => return None,
                        };
                        Some((r.serial.clone(), (r, endpoint)))
                    })
                    .collect();
                self.physical_signature = Some(sig);
            }
        }
        let mut seen = self.physical.clone();
        for (i, v) in self.sources.virtual_devices.iter().enumerate() {
            let generation = v.handle.generation();
            let inserted = v.handle.is_inserted();
            let cached = &mut self.virtual_seen[i];
            if cached.0 != generation || cached.1 != inserted {
                let r = if inserted {
                    // With the card locked for the whole probe: another agent
                    // of the same process (the demo's) may probe it too.
                    let name = v.name.clone();
                    v.handle
                        .with_card(|card| reported(&identify_entry(&mut Locked { card, name })))
                } else {
                    None
                };
                *cached = (generation, inserted, r);
            }
            if let Some(r) = &cached.2 {
                seen.insert(r.serial.clone(), (r.clone(), Endpoint::Virtual(v.clone())));
            }
        }
        seen
    }
}
