//! The device a session holds: one connection from the session's first
//! batch to its end.
//!
//! A device session builds security state on the device across batches (the
//! management key's witness in one batch, its response in the next; a
//! verified PIN; a FIDO pinUvAuthToken; the selected application). So the
//! agent keeps one connection per session ([`Held`]) and:
//!
//! * runs each batch inside a PC/SC transaction (`SCardBeginTransaction`):
//!   no other program's command reaches the card in the middle of a batch;
//! * never disconnects with a reset between batches (`SCARD_LEAVE_CARD`);
//! * ends the connection with a reset when the session ends (issued,
//!   assigned, failed, cancelled: [`Held::end`]), so no verified PIN or
//!   authenticated management key outlives the session on the workstation;
//! * when the device leaves in the middle, the connection is over: the batch
//!   answers `device_removed` (or `card_reset`) and the server decides
//!   (Retry after re-insertion); only where the session itself asked the
//!   person to take the device out and put it back (`reinsert_device`) does
//!   the next batch begin on a new connection.
//!
//! The agent's device watcher does not probe a held device (see
//! `devices::Watcher::scan`). docs/protocol.md states these guarantees.

use std::time::Duration;

use keyward_proto::RelayBatch;
use keyward_transport::ctaphid::{CtaphidDevice, HidReports};
use keyward_transport::hid::HidDeviceInfo;
use keyward_transport::pcsc::{Disposition, Pcsc, PcscTransport};
use keyward_transport::TransportError;

use super::devices::{Endpoint, VirtualDevice};
use super::relay::{self, BatchRun, CardIo, DeviceIo, HidIo};

type HidChannel = HidIo<CtaphidDevice<Box<dyn HidReports>>>;

/// How long the agent waits for a device the person was asked to put back.
const REINSERT_WAIT: Duration = Duration::from_secs(20);

/// A device held by one device session.
pub struct Held {
    io: HeldIo,
    /// The session asked the person to take the device out and put it back:
    /// the next batch begins on a new connection.
    reinsert_expected: bool,
}

enum HeldIo {
    /// A card in a PC/SC reader, and its FIDO HID interface where it has
    /// one (a USB YubiKey answers CTAP only there).
    Pcsc { card: PcscTransport, hid: HidSide },
    /// A FIDO HID device only.
    Hid(HidSide),
    /// An in-process virtual device: no connection to keep, it is reached
    /// afresh for each batch (its state lives in the device itself).
    Virtual(VirtualDevice),
}

/// The HID side of a device, opened at the first CTAP message and kept.
struct HidSide {
    info: Option<HidDeviceInfo>,
    open: Option<HidChannel>,
}

impl HidSide {
    fn channel(&mut self) -> Result<Option<&mut HidChannel>, TransportError> {
        let Some(info) = &self.info else {
            return Ok(None);
        };
        if self.open.is_none() {
            let dev = keyward_transport::hid::open(info)?;
            self.open = Some(HidIo(CtaphidDevice::open(dev)?));
        }
        Ok(self.open.as_mut())
    }
}

/// PIV over the card (inside the batch's transaction), CTAP over the HID
/// side where there is one, else over ISO 7816 on the card.
struct SplitIo<'a, T: keyward_transport::ApduTransport> {
    card: CardIo<T>,
    hid: &'a mut HidSide,
}

impl<T: keyward_transport::ApduTransport> DeviceIo for SplitIo<'_, T> {
    fn piv(&mut self, bytes: &[u8]) -> Result<(Vec<u8>, u16), TransportError> {
        self.card.piv(bytes)
    }

    fn ctap(&mut self, request: &[u8]) -> Result<Vec<u8>, TransportError> {
        match self.hid.channel() {
            Ok(Some(hid)) => hid.ctap(request),
            Ok(None) => self.card.ctap(request),
            Err(e) => Err(e),
        }
    }
}

impl Held {
    /// Connects to the device for a session (PC/SC: shared, so that other
    /// programs may still list the reader; each batch is a transaction).
    pub fn open(endpoint: &Endpoint) -> Result<Held, TransportError> {
        let io = match endpoint {
            Endpoint::Pcsc { reader, hid } => HeldIo::Pcsc {
                card: Pcsc::establish()?.connect(reader)?,
                hid: HidSide {
                    info: hid.clone(),
                    open: None,
                },
            },
            Endpoint::Hid { info } => HeldIo::Hid(HidSide {
                info: Some(info.clone()),
                open: None,
            }),
            Endpoint::Virtual(v) => HeldIo::Virtual(v.clone()),
        };
        Ok(Held {
            io,
            reinsert_expected: false,
        })
    }

    /// The reader or HID path this hold keeps the watcher away from.
    pub fn locators(&self) -> Vec<String> {
        let hid = |h: &HidSide| h.info.as_ref().map(|i| i.path.display().to_string());
        match &self.io {
            HeldIo::Pcsc { card, hid: side } => {
                let mut v = vec![card.reader().to_string()];
                v.extend(hid(side));
                v
            }
            HeldIo::Hid(side) => hid(side).into_iter().collect(),
            HeldIo::Virtual(_) => Vec::new(),
        }
    }

    /// The connection has seen its card leave (or be reset): nothing of the
    /// session's device state is left on it.
    pub fn lost(&self) -> bool {
        match &self.io {
            HeldIo::Pcsc { card, .. } => !card.is_connected(),
            HeldIo::Hid(_) | HeldIo::Virtual(_) => false,
        }
    }

    /// The session's answer asked the person to take the device out and put
    /// it back: its next batch begins on a new connection.
    pub fn expect_reinsert(&mut self) {
        self.reinsert_expected = true;
    }

    /// Runs one batch on the held connection.
    pub fn run(&mut self, batch: &RelayBatch) -> BatchRun {
        let reinserted = std::mem::take(&mut self.reinsert_expected);
        match &mut self.io {
            HeldIo::Pcsc { card, hid } => {
                if reinserted {
                    hid.open = None;
                    if let Err(e) = card.reconnect(REINSERT_WAIT) {
                        return relay::failed(batch, &e);
                    }
                }
                let ran = card.with_transaction(|t| {
                    relay::run_batch(
                        &mut SplitIo {
                            card: CardIo::new(t),
                            hid,
                        },
                        batch,
                    )
                });
                match ran {
                    Ok(run) => run,
                    // Beginning the transaction failed: the card left or was
                    // reset since the last batch.
                    Err(e) => relay::failed(batch, &e),
                }
            }
            HeldIo::Hid(side) => {
                if reinserted {
                    side.open = None;
                }
                match side.channel() {
                    Ok(Some(hid)) => relay::run_batch(hid, batch),
                    Ok(None) => unreachable_hid(batch),
                    Err(e) => relay::failed(batch, &e),
                }
            }
            HeldIo::Virtual(v) => relay::run_batch(v.open().as_mut(), batch),
        }
    }

    /// Ends the hold: [`Disposition::Reset`] when the session is over (its
    /// security state must not outlive it), [`Disposition::Leave`] otherwise.
    pub fn end(self, disposition: Disposition) {
        match self.io {
            HeldIo::Pcsc { card, .. } => card.end(disposition),
            // Closing the HID channel ends it; an in-process device has no
            // connection.
            HeldIo::Hid(_) | HeldIo::Virtual(_) => {}
        }
    }
}

/// A HID-only hold always has its path; kept apart so that the match above
/// stays total without a panic.
fn unreachable_hid(batch: &RelayBatch) -> BatchRun {
    relay::failed(
        batch,
        &TransportError::Protocol("the device has no FIDO HID interface".into()),
    )
}
