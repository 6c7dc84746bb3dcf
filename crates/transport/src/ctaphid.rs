//! The platform side of CTAPHID (CTAP 2.1 section 11.2) over any source of
//! 64-byte HID reports ([`HidReports`]: a hidraw node, the virtual
//! device's HID socket): CTAPHID INIT with a nonce and channel allocation,
//! message fragmentation and reassembly (keyward-card's codec), KEEPALIVE,
//! CANCEL, ERROR mapping and timeouts.

use crate::ctap::{CtapControl, CtapTransport, KeepaliveStatus};
use crate::error::TransportError;
use keyward_card::ctaphid::{self, cmd, error, Packet, Reassembler, BROADCAST_CID, REPORT_SIZE};
use keyward_domain::Transport;
use std::time::{Duration, Instant};

pub type Report = [u8; REPORT_SIZE];

/// A HID device seen as reports (without report ID).
pub trait HidReports: Send {
    fn write_report(&mut self, report: &Report) -> Result<(), TransportError>;
    /// The next input report, or `None` if none came within `timeout`.
    fn read_report(&mut self, timeout: Duration) -> Result<Option<Report>, TransportError>;
    /// hidraw path or socket path.
    fn path(&self) -> String;
}

impl<T: HidReports + ?Sized> HidReports for Box<T> {
    fn write_report(&mut self, report: &Report) -> Result<(), TransportError> {
        (**self).write_report(report)
    }
    fn read_report(&mut self, timeout: Duration) -> Result<Option<Report>, TransportError> {
        (**self).read_report(timeout)
    }
    fn path(&self) -> String {
        (**self).path()
    }
}

/// What CTAPHID INIT told about the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitInfo {
    pub cid: u32,
    pub protocol_version: u8,
    /// Device version (major, minor, build): a YubiKey's firmware.
    pub version: (u8, u8, u8),
    pub capabilities: u8,
}

impl InitInfo {
    pub fn supports_cbor(&self) -> bool {
        self.capabilities & ctaphid::capability::CBOR != 0
    }
}

/// Parses a CTAPHID INIT response payload for `nonce`.
pub fn parse_init_response(nonce: &[u8; 8], data: &[u8]) -> Option<InitInfo> {
    if data.len() < 17 || &data[..8] != nonce {
        return None;
    }
    Some(InitInfo {
        cid: u32::from_be_bytes([data[8], data[9], data[10], data[11]]),
        protocol_version: data[12],
        version: (data[13], data[14], data[15]),
        capabilities: data[16],
    })
}

/// A CTAPHID ERROR code as a transport error.
pub fn map_hid_error(code: u8) -> TransportError {
    match code {
        error::CHANNEL_BUSY | error::LOCK_REQUIRED => TransportError::SharingViolation,
        error::MSG_TIMEOUT => TransportError::Timeout(Duration::ZERO),
        error::INVALID_CMD => TransportError::protocol(
            "CTAPHID: the device does not know the command (ERR_INVALID_CMD)",
        ),
        error::INVALID_PAR => {
            TransportError::protocol("CTAPHID: invalid parameter (ERR_INVALID_PAR)")
        }
        error::INVALID_LEN => TransportError::protocol("CTAPHID: invalid length (ERR_INVALID_LEN)"),
        error::INVALID_SEQ => {
            TransportError::protocol("CTAPHID: invalid sequence (ERR_INVALID_SEQ)")
        }
        error::INVALID_CHANNEL => {
            TransportError::protocol("CTAPHID: invalid channel (ERR_INVALID_CHANNEL)")
        }
        other => TransportError::protocol(format!("CTAPHID: error {other:#04x}")),
    }
}

/// How long INIT may take.
const INIT_TIMEOUT: Duration = Duration::from_secs(3);
/// Report reads wake up this often to look at the cancel flag.
const POLL: Duration = Duration::from_millis(50);

/// A CTAPHID channel on one device.
pub struct CtaphidDevice<D: HidReports> {
    dev: D,
    info: InitInfo,
}

impl<D: HidReports> CtaphidDevice<D> {
    /// Allocates a channel (INIT on the broadcast channel with a random nonce).
    pub fn open(mut dev: D) -> Result<Self, TransportError> {
        let nonce: [u8; 8] = rand::random();
        let info = init(&mut dev, BROADCAST_CID, &nonce)?;
        Ok(CtaphidDevice { dev, info })
    }

    pub fn info(&self) -> InitInfo {
        self.info
    }

    pub fn path(&self) -> String {
        self.dev.path()
    }

    /// Sends one message on the channel and returns the response payload of
    /// the same command. KEEPALIVE restarts the idle timeout and is passed
    /// to `control`; a cancel sends CTAPHID CANCEL once and waits for the
    /// device's answer (CTAP2_ERR_KEEPALIVE_CANCEL for CBOR).
    pub fn call(
        &mut self,
        command: u8,
        data: &[u8],
        control: &mut CtapControl,
    ) -> Result<Vec<u8>, TransportError> {
        let cid = self.info.cid;
        let reports = ctaphid::fragment(cid, command, data)
            .map_err(|_| TransportError::protocol("the message is too long for CTAPHID"))?;
        for r in &reports {
            self.dev.write_report(r)?;
        }
        let mut reassembler = Reassembler::new();
        let mut last_sign_of_life = Instant::now();
        let mut cancel_sent = false;
        loop {
            if control.cancel.is_cancelled() && !cancel_sent {
                let cancel = ctaphid::fragment(cid, cmd::CANCEL, &[]).expect("empty message");
                self.dev.write_report(&cancel[0])?;
                cancel_sent = true;
            }
            let Some(report) = self.dev.read_report(POLL)? else {
                if last_sign_of_life.elapsed() > control.idle_timeout {
                    if !cancel_sent {
                        // Leave the device free for the next request.
                        let cancel =
                            ctaphid::fragment(cid, cmd::CANCEL, &[]).expect("empty message");
                        let _ = self.dev.write_report(&cancel[0]);
                    }
                    return Err(TransportError::Timeout(control.idle_timeout));
                }
                continue;
            };
            let packet = Packet::parse(&report)
                .map_err(|e| TransportError::protocol(format!("CTAPHID report: {e:?}")))?;
            if packet.cid() != cid {
                // Another client's traffic (hidraw shows every report).
                continue;
            }
            last_sign_of_life = Instant::now();
            if let Packet::Init {
                cmd: c, bcnt, data, ..
            } = packet
            {
                if c == cmd::KEEPALIVE {
                    let status = if bcnt >= 1 { data[0] } else { 0 };
                    control.keepalive(KeepaliveStatus::from_byte(status));
                    continue;
                }
                if c == cmd::ERROR {
                    let code = if bcnt >= 1 { data[0] } else { error::OTHER };
                    return Err(map_hid_error(code));
                }
            }
            match reassembler.push(&report) {
                Ok(Some(message)) => {
                    if message.cmd != command {
                        return Err(TransportError::protocol(format!(
                            "CTAPHID: answer {:#04x} to command {command:#04x}",
                            message.cmd
                        )));
                    }
                    return Ok(message.data);
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(TransportError::protocol(format!(
                        "CTAPHID reassembly: {e:?}"
                    )))
                }
            }
        }
    }

    /// CTAPHID PING: the device echoes `data`.
    pub fn ping(&mut self, data: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.call(cmd::PING, data, &mut CtapControl::default())
    }

    /// A vendor command (`0x40..=0x7F` with the init bit: `0xC0..=0xFF`).
    /// Only send these to a device of the vendor that defines them.
    pub fn vendor(&mut self, command: u8, data: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.call(command, data, &mut CtapControl::default())
    }
}

/// INIT on `cid` with `nonce`; skips unrelated reports until the answer.
fn init<D: HidReports + ?Sized>(
    dev: &mut D,
    cid: u32,
    nonce: &[u8; 8],
) -> Result<InitInfo, TransportError> {
    let req = ctaphid::fragment(cid, cmd::INIT, nonce).expect("8 bytes fit");
    dev.write_report(&req[0])?;
    let deadline = Instant::now() + INIT_TIMEOUT;
    let mut reassembler = Reassembler::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(TransportError::Timeout(INIT_TIMEOUT));
        }
        let Some(report) = dev.read_report(left.min(POLL))? else {
            continue;
        };
        let Ok(packet) = Packet::parse(&report) else {
            continue;
        };
        if packet.cid() != cid {
            continue;
        }
        if let Packet::Init {
            cmd: cmd::ERROR,
            data,
            ..
        } = packet
        {
            return Err(map_hid_error(data[0]));
        }
        match reassembler.push(&report) {
            Ok(Some(m)) if m.cmd == cmd::INIT => {
                // An answer to someone else's INIT carries their nonce.
                if let Some(info) = parse_init_response(nonce, &m.data) {
                    return Ok(info);
                }
            }
            _ => {}
        }
    }
}

impl<D: HidReports> CtapTransport for CtaphidDevice<D> {
    fn ctap(
        &mut self,
        request: &[u8],
        control: &mut CtapControl,
    ) -> Result<Vec<u8>, TransportError> {
        if !self.info.supports_cbor() {
            return Err(TransportError::protocol(
                "the HID device does not speak CTAP2 (no CBOR capability)",
            ));
        }
        self.call(cmd::CBOR, request, control)
    }

    fn transport(&self) -> Transport {
        Transport::Hid
    }

    fn name(&self) -> String {
        self.dev.path()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ctap::CancelFlag;
    use keyward_card::ctaphid::{fragment, init_response, keepalive_report};
    use std::collections::VecDeque;

    /// A device that answers each written message from a function.
    pub struct FakeHid {
        pub inbox: VecDeque<Report>,
        pub written: Vec<Report>,
        #[allow(clippy::type_complexity)]
        pub respond: Box<dyn FnMut(&Report, &mut VecDeque<Report>) + Send>,
        pub gone: bool,
    }

    impl HidReports for FakeHid {
        fn write_report(&mut self, report: &Report) -> Result<(), TransportError> {
            if self.gone {
                return Err(TransportError::DeviceRemoved);
            }
            self.written.push(*report);
            (self.respond)(report, &mut self.inbox);
            Ok(())
        }
        fn read_report(&mut self, _timeout: Duration) -> Result<Option<Report>, TransportError> {
            if let Some(r) = self.inbox.pop_front() {
                return Ok(Some(r));
            }
            if self.gone {
                return Err(TransportError::DeviceRemoved);
            }
            Ok(None)
        }
        fn path(&self) -> String {
            "fake".into()
        }
    }

    const CID: u32 = 0x0102_0304;

    /// Answers INIT (after a stray report for another nonce) and echoes
    /// CBOR after a KEEPALIVE; CANCEL gets a KEEPALIVE_CANCEL response.
    fn device() -> FakeHid {
        FakeHid {
            inbox: VecDeque::new(),
            written: Vec::new(),
            gone: false,
            respond: Box::new(|report, inbox| {
                let Ok(Packet::Init {
                    cid, cmd: c, data, ..
                }) = Packet::parse(report)
                else {
                    return;
                };
                match c {
                    cmd::INIT => {
                        let mut other = [0u8; 8];
                        other[0] = !data[0];
                        let stray = init_response(&other, 9, (5, 7, 1), 0x0D);
                        inbox.extend(fragment(cid, cmd::INIT, &stray).unwrap());
                        let mut nonce = [0u8; 8];
                        nonce.copy_from_slice(&data[..8]);
                        let r = init_response(&nonce, CID, (5, 7, 1), 0x0D);
                        inbox.extend(fragment(cid, cmd::INIT, &r).unwrap());
                    }
                    cmd::CBOR => {
                        inbox.push_back(keepalive_report(cid, 2));
                        let len = u16::from_be_bytes([report[5], report[6]]) as usize;
                        if len > 57 {
                            return; // continuation packets follow; answered below
                        }
                        let mut body = vec![0u8];
                        body.extend_from_slice(&data[..len]);
                        inbox.extend(fragment(cid, cmd::CBOR, &body).unwrap());
                    }
                    cmd::CANCEL => {
                        inbox.extend(fragment(cid, cmd::CBOR, &[0x2D]).unwrap());
                    }
                    cmd::PING => inbox.push_back(ctaphid::error_report(cid, error::CHANNEL_BUSY)),
                    _ => inbox.extend(fragment(cid, cmd::ERROR, &[error::INVALID_CMD]).unwrap()),
                }
            }),
        }
    }

    #[test]
    fn init_allocates_a_channel_and_skips_foreign_answers() {
        let d = CtaphidDevice::open(device()).unwrap();
        assert_eq!(d.info().cid, CID);
        assert_eq!(d.info().version, (5, 7, 1));
        assert!(d.info().supports_cbor());
        assert_eq!(d.dev.written[0][..5], [0xFF, 0xFF, 0xFF, 0xFF, cmd::INIT]);
    }

    #[test]
    fn cbor_with_keepalive_and_errors() {
        let mut d = CtaphidDevice::open(device()).unwrap();
        let mut seen = Vec::new();
        let mut on = |s| seen.push(s);
        let mut ctl = CtapControl {
            on_keepalive: Some(&mut on),
            ..Default::default()
        };
        assert_eq!(d.ctap(&[0x04], &mut ctl).unwrap(), vec![0x00, 0x04]);
        drop(ctl);
        assert_eq!(seen, vec![KeepaliveStatus::UserPresenceNeeded]);
        assert_eq!(d.ping(b"hi").unwrap_err(), TransportError::SharingViolation);
        assert!(d
            .vendor(0xC2, &[])
            .unwrap_err()
            .to_string()
            .contains("INVALID_CMD"));
    }

    #[test]
    fn cancel_sends_ctaphid_cancel() {
        let mut dev = device();
        let inner = std::mem::replace(&mut dev.respond, Box::new(|_, _| {}));
        // CBOR requests get only a keep-alive; the answer comes after CANCEL.
        let mut inner = inner;
        dev.respond = Box::new(move |report, inbox| {
            if report[4] == cmd::CBOR {
                inbox.push_back(keepalive_report(CID, 2));
            } else {
                inner(report, inbox);
            }
        });
        let mut d = CtaphidDevice::open(dev).unwrap();
        let flag = CancelFlag::new();
        flag.cancel();
        let mut ctl = CtapControl {
            cancel: flag,
            ..Default::default()
        };
        assert_eq!(d.ctap(&[0x02], &mut ctl).unwrap(), vec![0x2D]);
        assert!(d.dev.written.iter().any(|r| r[4] == cmd::CANCEL));
    }

    #[test]
    fn silence_times_out_and_removal_is_typed() {
        let mut dev = device();
        dev.respond = Box::new(|report, inbox| {
            if report[4] == cmd::INIT {
                let mut nonce = [0u8; 8];
                nonce.copy_from_slice(&report[7..15]);
                inbox.extend(
                    fragment(
                        BROADCAST_CID,
                        cmd::INIT,
                        &init_response(&nonce, CID, (1, 0, 0), 4),
                    )
                    .unwrap(),
                );
            }
        });
        let mut d = CtaphidDevice::open(dev).unwrap();
        let mut ctl = CtapControl {
            idle_timeout: Duration::from_millis(10),
            ..Default::default()
        };
        assert_eq!(d.ctap(&[0x04], &mut ctl).unwrap_err().code(), "timeout");
        d.dev.gone = true;
        assert_eq!(
            d.ctap(&[0x04], &mut CtapControl::default()).unwrap_err(),
            TransportError::DeviceRemoved
        );
    }

    #[test]
    fn init_response_needs_the_nonce() {
        let nonce = [1, 2, 3, 4, 5, 6, 7, 8];
        let r = init_response(&nonce, 7, (5, 4, 3), 0x04);
        assert_eq!(parse_init_response(&nonce, &r).unwrap().version, (5, 4, 3));
        assert!(parse_init_response(&[0; 8], &r).is_none());
        assert!(parse_init_response(&nonce, &r[..10]).is_none());
    }
}
