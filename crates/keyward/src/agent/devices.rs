//! The devices an agent serves: the connected ones (keyward-transport
//! discovery over PC/SC, hidraw and `--hid-socket`), and in-process virtual
//! devices (`--virtual`, and `keyward demo`'s agent), which open nothing on
//! the workstation.
//!
//! Discovery probes a device (SELECTs), so the agent only looks again when
//! something changed (readers, card presence, HID nodes and sockets, a
//! virtual card's insert/remove generation), and never while it runs a
//! batch.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail};
use keyward_domain::Transport;
use keyward_transport::apdu::ApduTransport;
use keyward_transport::discover::{discover, identify_entry, DiscoveryOptions};
use keyward_transport::hid::{HidDeviceInfo, HidKind, HidUevent};
use keyward_transport::identify::DeviceEntry;
use keyward_transport::in_process::{InProcessCard, InProcessFido};
use keyward_transport::pcsc::Pcsc;
use keyward_transport::TransportError;
use keyward_vcard::{ProfileKind, VcardConfig, VcardHandle, VirtualCard};

use super::relay::{CardIo, DeviceIo, HidIo};

/// One device as reported to the server (`PUT /agents/me/devices`).
pub use keyward_proto::agent::ReportedDevice as Reported;

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

impl VirtualDevice {
    /// The in-process device for one batch: it keeps its own state, so
    /// there is no connection to hold.
    pub fn open(&self) -> Box<dyn DeviceIo> {
        let card = CardIo::new(Faulty {
            card: InProcessCard::new(self.handle.clone(), self.name.clone()),
            remove_after: self.remove_after.clone(),
        });
        // A USB YubiKey answers CTAP only on its HID side (its CCID
        // interface has no FIDO application); a C4000, or a key over NFC,
        // takes CTAP wrapped in ISO 7816.
        let usb_yubikey = self.handle.with_card(|c| {
            let config = c.config();
            config.profile == ProfileKind::Yubikey5
                && config.transport == keyward_vcard::Transport::Usb
        });
        if usb_yubikey {
            Box::new(VirtualUsbIo {
                card,
                fido: HidIo(InProcessFido::new(self.handle.clone(), self.name.clone())),
            })
        } else {
            Box::new(card)
        }
    }
}

/// An in-process USB YubiKey: PIV over its card side, CTAP over its
/// FIDO (CTAPHID) side, as a held real one does (`held::SplitIo`).
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

/// Watches the sources; `scan` answers the devices, probing only what
/// changed, and never a device a session holds.
pub struct Watcher {
    sources: Sources,
    physical_signature: Option<String>,
    physical: Seen,
    /// The devices sessions hold, as last seen before they were held: they
    /// are reported while their reader (or HID node) still shows them,
    /// without being probed.
    held_known: Seen,
    virtual_seen: Vec<(u64, bool, Option<Reported>)>,
    pub warnings: Vec<String>,
}

/// What the physical sources show without touching a device: a signature
/// of the whole, and the readers with a card, HID nodes and sockets there.
struct Look {
    signature: String,
    present: BTreeSet<String>,
}

/// The reader or HID path a device is reached through.
fn locator(endpoint: &Endpoint) -> Option<String> {
    match endpoint {
        Endpoint::Pcsc { reader, .. } => Some(reader.clone()),
        Endpoint::Hid { info } => Some(info.path.display().to_string()),
        Endpoint::Virtual(_) => None,
    }
}

impl Watcher {
    pub fn new(sources: Sources) -> Self {
        let n = sources.virtual_devices.len();
        Watcher {
            sources,
            physical_signature: None,
            physical: Seen::new(),
            held_known: Seen::new(),
            virtual_seen: vec![(u64::MAX, false, None); n],
            warnings: Vec::new(),
        }
    }

    fn look(&self) -> Look {
        let mut s = String::new();
        let mut present = BTreeSet::new();
        if self.sources.pcsc {
            match Pcsc::establish().and_then(|p| p.readers()) {
                Ok(readers) => {
                    for r in readers {
                        s.push_str(&format!("r:{}:{};", r.name, r.card_present));
                        if r.card_present {
                            present.insert(r.name);
                        }
                    }
                }
                Err(e) => s.push_str(&format!("pcsc-error:{};", e.code())),
            }
        }
        if self.sources.hidraw {
            for h in keyward_transport::hid::list_hidraw(
                std::path::Path::new("/sys"),
                std::path::Path::new("/dev"),
            ) {
                s.push_str(&format!("h:{};", h.path.display()));
                present.insert(h.path.display().to_string());
            }
        }
        for p in &self.sources.hid_sockets {
            let exists = p.exists();
            s.push_str(&format!("s:{}:{};", p.display(), exists));
            if exists {
                present.insert(p.display().to_string());
            }
        }
        Look {
            signature: s,
            present,
        }
    }

    /// The devices seen now. `held`: serials a session holds; `hold_off`:
    /// their readers and HID paths, which are not probed.
    pub fn scan(&mut self, held: &BTreeSet<String>, hold_off: &[String]) -> Seen {
        // Remember how to reach a device as it becomes held; a device no
        // longer held is looked at again (its session is over).
        for serial in held {
            if !self.held_known.contains_key(serial) {
                if let Some(entry) = self.physical.get(serial) {
                    self.held_known.insert(serial.clone(), entry.clone());
                }
            }
        }
        let before = self.held_known.len();
        self.held_known.retain(|serial, _| held.contains(serial));
        if self.held_known.len() != before {
            self.physical_signature = None;
        }
        let physical_wanted =
            self.sources.pcsc || self.sources.hidraw || !self.sources.hid_sockets.is_empty();
        let mut seen = Seen::new();
        if physical_wanted {
            let look = self.look();
            if self.physical_signature.as_ref() != Some(&look.signature) {
                let found = discover(&DiscoveryOptions {
                    pcsc: self.sources.pcsc,
                    hidraw: self.sources.hidraw,
                    hid_sockets: self.sources.hid_sockets.clone(),
                    hold_off: hold_off.to_vec(),
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
                self.physical_signature = Some(look.signature);
            }
            seen = self.physical.clone();
            // A held device is reported while its reader or HID node shows
            // it; a removal shows at once, without touching it.
            for (serial, entry) in &self.held_known {
                if locator(&entry.1).is_some_and(|l| look.present.contains(&l)) {
                    seen.insert(serial.clone(), entry.clone());
                }
            }
        }
        for (i, v) in self.sources.virtual_devices.iter().enumerate() {
            let generation = v.handle.generation();
            let inserted = v.handle.is_inserted();
            let cached = &mut self.virtual_seen[i];
            let held_here = cached.2.as_ref().is_some_and(|r| held.contains(&r.serial));
            if cached.0 != generation || cached.1 != inserted {
                let r = if inserted && held_here {
                    // Back in, and held by a session: not probed again.
                    cached.2.clone()
                } else if inserted {
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
