//! The device side of CTAPHID (CTAP 2.1 section 11.2), sans I/O: reports
//! in, reports (or a CTAP request to process) out.
//!
//! * INIT on the broadcast channel allocates a channel; INIT on an
//!   allocated channel resynchronises it.
//! * CBOR requests are handed to the caller ([`Action::Cbor`]), which runs
//!   the authenticator and calls [`CtaphidDevice::response`]. While it runs,
//!   reports go to [`CtaphidDevice::receive_while_busy`]: CANCEL on the
//!   busy channel cancels, other channels get ERR_CHANNEL_BUSY.
//! * PING echoes, WINK answers empty, LOCK locks the device to a channel.
//! * MSG (CTAP1/U2F) is not implemented, INIT says so with the NMSG
//!   capability, and MSG gets ERR_INVALID_CMD.
//! * A message whose continuation packets stop coming gets ERR_MSG_TIMEOUT
//!   ([`CtaphidDevice::poll_timeout`]).

use std::time::{Duration, Instant};

use keyward_card::ctaphid::{
    self, capability, cmd, error, HidError, Packet, Reassembler, REPORT_SIZE,
};

pub type Report = [u8; REPORT_SIZE];

/// A message must be complete this long after its initialization packet.
pub const MESSAGE_TIMEOUT: Duration = Duration::from_millis(1000);
/// LOCK accepts at most 10 seconds.
const MAX_LOCK: u8 = 10;

/// What the transport must do after a report.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do.
    None,
    /// Send these reports.
    Send(Vec<Report>),
    /// Run this CTAP request (command byte + CBOR) and answer with
    /// [`CtaphidDevice::response`] on `cid`.
    Cbor { cid: u32, request: Vec<u8> },
}

/// What a report received while a request is running means.
#[derive(Debug, PartialEq, Eq)]
pub enum BusyAction {
    None,
    /// The platform cancelled the running request.
    Cancel,
    Send(Vec<Report>),
}

#[derive(Debug)]
pub struct CtaphidDevice {
    version: (u8, u8, u8),
    next_cid: u32,
    reassembler: Reassembler,
    message_started: Option<Instant>,
    lock: Option<(u32, Instant)>,
}

impl CtaphidDevice {
    /// `version` is the device version INIT reports (major, minor, build).
    pub fn new(version: (u8, u8, u8)) -> Self {
        Self {
            version,
            next_cid: 1,
            reassembler: Reassembler::new(),
            message_started: None,
            lock: None,
        }
    }

    fn is_allocated(&self, cid: u32) -> bool {
        cid != 0 && cid != ctaphid::BROADCAST_CID && cid < self.next_cid
    }

    fn locked_by_other(&mut self, cid: u32, now: Instant) -> bool {
        match self.lock {
            Some((owner, until)) if now < until => owner != cid,
            Some(_) => {
                self.lock = None;
                false
            }
            None => false,
        }
    }

    /// A response message on `cid`, fragmented into reports.
    pub fn response(&self, cid: u32, command: u8, data: &[u8]) -> Vec<Report> {
        ctaphid::fragment(cid, command, data)
            .unwrap_or_else(|_| vec![ctaphid::error_report(cid, error::OTHER)])
    }

    fn error(cid: u32, code: u8) -> Action {
        Action::Send(vec![ctaphid::error_report(cid, code)])
    }

    /// Handles one report from the platform.
    pub fn receive(&mut self, report: &[u8], now: Instant) -> Action {
        let packet = match Packet::parse(report) {
            Ok(p) => p,
            Err(_) => return Action::None,
        };
        let cid = packet.cid();
        // INIT on the broadcast channel: allocate, even mid-message of
        // another channel (CTAP 2.1 section 11.2.9.1.3).
        if let Packet::Init {
            cmd: cmd::INIT,
            bcnt,
            data,
            ..
        } = packet
        {
            if cid == ctaphid::BROADCAST_CID {
                if bcnt != 8 {
                    return Self::error(cid, error::INVALID_LEN);
                }
                let nonce: [u8; 8] = data[..8].try_into().expect("report has 57 data bytes");
                let new_cid = self.next_cid;
                self.next_cid = self.next_cid.wrapping_add(1).max(1);
                let payload =
                    ctaphid::init_response(&nonce, new_cid, self.version, Self::capabilities());
                return Action::Send(self.response(cid, cmd::INIT, &payload));
            }
            if self.is_allocated(cid) {
                // Resynchronise: abandon this channel's message in progress.
                if self.reassembler.busy_channel() == Some(cid) {
                    self.reassembler.abort();
                    self.message_started = None;
                }
                if bcnt != 8 {
                    return Self::error(cid, error::INVALID_LEN);
                }
                let nonce: [u8; 8] = data[..8].try_into().expect("report has 57 data bytes");
                let payload =
                    ctaphid::init_response(&nonce, cid, self.version, Self::capabilities());
                return Action::Send(self.response(cid, cmd::INIT, &payload));
            }
        }
        if !self.is_allocated(cid) {
            return Self::error(cid, error::INVALID_CHANNEL);
        }
        if self.locked_by_other(cid, now) {
            return Self::error(cid, error::CHANNEL_BUSY);
        }
        let is_init = matches!(packet, Packet::Init { .. });
        let message = match self.reassembler.push(report) {
            Ok(Some(m)) => {
                self.message_started = None;
                m
            }
            Ok(None) => {
                if is_init {
                    self.message_started = Some(now);
                }
                return Action::None;
            }
            // Stray continuation packets are ignored (section 11.2.4).
            Err(HidError::UnexpectedContinuation) => return Action::None,
            Err(e @ HidError::ChannelBusy) => return Self::error(cid, e.code()),
            Err(e) => {
                self.message_started = None;
                return Self::error(cid, e.code());
            }
        };
        self.dispatch(message, now)
    }

    fn capabilities() -> u8 {
        capability::WINK | capability::CBOR | capability::NMSG
    }

    fn dispatch(&mut self, m: ctaphid::Message, now: Instant) -> Action {
        match m.cmd {
            cmd::PING => Action::Send(self.response(m.cid, cmd::PING, &m.data)),
            cmd::WINK => Action::Send(self.response(m.cid, cmd::WINK, &[])),
            cmd::CBOR => {
                if m.data.is_empty() {
                    return Self::error(m.cid, error::INVALID_LEN);
                }
                Action::Cbor {
                    cid: m.cid,
                    request: m.data,
                }
            }
            cmd::LOCK => match m.data.as_slice() {
                [secs] if *secs <= MAX_LOCK => {
                    self.lock =
                        (*secs > 0).then(|| (m.cid, now + Duration::from_secs(*secs as u64)));
                    Action::Send(self.response(m.cid, cmd::LOCK, &[]))
                }
                [_] => Self::error(m.cid, error::INVALID_PAR),
                _ => Self::error(m.cid, error::INVALID_LEN),
            },
            // Nothing is running: a CANCEL has nothing to cancel and gets no answer.
            cmd::CANCEL => Action::None,
            // CTAP1/U2F is not implemented (NMSG); KEEPALIVE and ERROR are
            // device-to-host only.
            _ => Self::error(m.cid, error::INVALID_CMD),
        }
    }

    /// Handles a report that arrives while the request on `busy_cid` runs.
    pub fn receive_while_busy(&mut self, busy_cid: u32, report: &[u8], now: Instant) -> BusyAction {
        let Ok(packet) = Packet::parse(report) else {
            return BusyAction::None;
        };
        let cid = packet.cid();
        match packet {
            Packet::Init {
                cmd: cmd::CANCEL, ..
            } if cid == busy_cid => BusyAction::Cancel,
            Packet::Init { cmd: cmd::INIT, .. } if cid == ctaphid::BROADCAST_CID => {
                match self.receive(report, now) {
                    Action::Send(r) => BusyAction::Send(r),
                    _ => BusyAction::None,
                }
            }
            Packet::Init { .. } if cid == busy_cid => {
                // A new request on the busy channel: the platform gave up on
                // the old one. Treat it as a cancel; the new request is lost,
                // as on a real key that is still processing.
                BusyAction::Cancel
            }
            _ if self.is_allocated(cid) => {
                BusyAction::Send(vec![ctaphid::error_report(cid, error::CHANNEL_BUSY)])
            }
            _ => BusyAction::Send(vec![ctaphid::error_report(cid, error::INVALID_CHANNEL)]),
        }
    }

    /// Checks the message timeout; returns an ERR_MSG_TIMEOUT report if the
    /// message in progress has been abandoned.
    pub fn poll_timeout(&mut self, now: Instant) -> Option<Report> {
        let started = self.message_started?;
        if now.duration_since(started) < MESSAGE_TIMEOUT {
            return None;
        }
        let cid = self.reassembler.busy_channel()?;
        self.reassembler.abort();
        self.message_started = None;
        Some(ctaphid::error_report(cid, error::MSG_TIMEOUT))
    }

    /// A KEEPALIVE report (status UPNEEDED or PROCESSING).
    pub fn keepalive(cid: u32, status: u8) -> Report {
        ctaphid::keepalive_report(cid, status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_card::ctaphid::{fragment, BROADCAST_CID};

    fn init(dev: &mut CtaphidDevice) -> u32 {
        let nonce = [1, 2, 3, 4, 5, 6, 7, 8];
        let req = fragment(BROADCAST_CID, cmd::INIT, &nonce).unwrap();
        let Action::Send(r) = dev.receive(&req[0], Instant::now()) else {
            panic!()
        };
        assert_eq!(&r[0][..4], &BROADCAST_CID.to_be_bytes());
        assert_eq!(r[0][4], cmd::INIT);
        assert_eq!(&r[0][7..15], &nonce);
        assert_eq!(r[0][23] & capability::CBOR, capability::CBOR);
        u32::from_be_bytes(r[0][15..19].try_into().unwrap())
    }

    fn single(action: Action) -> Report {
        match action {
            Action::Send(r) if r.len() == 1 => r[0],
            other => panic!("expected one report, got {other:?}"),
        }
    }

    #[test]
    fn init_allocates_distinct_channels() {
        let mut dev = CtaphidDevice::new((5, 4, 3));
        let a = init(&mut dev);
        let b = init(&mut dev);
        assert_ne!(a, b);
        assert_ne!(a, 0);
    }

    #[test]
    fn ping_cbor_and_errors() {
        let mut dev = CtaphidDevice::new((5, 4, 3));
        let cid = init(&mut dev);
        let now = Instant::now();
        let data: Vec<u8> = (0..150).map(|i| i as u8).collect();
        let reports = fragment(cid, cmd::PING, &data).unwrap();
        assert_eq!(dev.receive(&reports[0], now), Action::None);
        assert_eq!(dev.receive(&reports[1], now), Action::None);
        let Action::Send(out) = dev.receive(&reports[2], now) else {
            panic!()
        };
        assert_eq!(out, fragment(cid, cmd::PING, &data).unwrap());

        let req = fragment(cid, cmd::CBOR, &[0x04]).unwrap();
        assert_eq!(
            dev.receive(&req[0], now),
            Action::Cbor {
                cid,
                request: vec![0x04]
            }
        );

        // Unallocated channel.
        let r = single(dev.receive(&fragment(0x7777, cmd::PING, &[1]).unwrap()[0], now));
        assert_eq!((r[4], r[7]), (cmd::ERROR, error::INVALID_CHANNEL));
        // MSG is not implemented.
        let r = single(dev.receive(&fragment(cid, cmd::MSG, &[0, 1, 0, 0]).unwrap()[0], now));
        assert_eq!((r[4], r[7]), (cmd::ERROR, error::INVALID_CMD));
        // Empty CBOR.
        let r = single(dev.receive(&fragment(cid, cmd::CBOR, &[]).unwrap()[0], now));
        assert_eq!(r[7], error::INVALID_LEN);
        // Sequence error.
        let long = fragment(cid, cmd::PING, &data).unwrap();
        dev.receive(&long[0], now);
        let r = single(dev.receive(&long[2], now));
        assert_eq!(r[7], error::INVALID_SEQ);
        // Other channel while a message is being received.
        let other = init(&mut dev);
        dev.receive(&long[0], now);
        let r = single(dev.receive(&fragment(other, cmd::PING, &[1]).unwrap()[0], now));
        assert_eq!(
            (&r[..4], r[7]),
            (&other.to_be_bytes()[..], error::CHANNEL_BUSY)
        );
        // Timeout of the abandoned message.
        assert!(dev.poll_timeout(now).is_none());
        let r = dev.poll_timeout(now + MESSAGE_TIMEOUT).unwrap();
        assert_eq!(r[7], error::MSG_TIMEOUT);
        // Broadcast channel with another command.
        let r = single(dev.receive(&fragment(BROADCAST_CID, cmd::PING, &[1]).unwrap()[0], now));
        assert_eq!(r[7], error::INVALID_CHANNEL);
    }

    #[test]
    fn host_sent_device_commands_and_bad_init() {
        let mut dev = CtaphidDevice::new((5, 4, 3));
        let cid = init(&mut dev);
        let now = Instant::now();
        for c in [cmd::KEEPALIVE, cmd::ERROR, 0x80 | 0x3F] {
            let r = single(dev.receive(&fragment(cid, c, &[1]).unwrap()[0], now));
            assert_eq!(
                (r[4], r[7]),
                (cmd::ERROR, error::INVALID_CMD),
                "command {c:#x}"
            );
        }
        let r = single(dev.receive(
            &fragment(BROADCAST_CID, cmd::INIT, &[1, 2, 3]).unwrap()[0],
            now,
        ));
        assert_eq!(r[7], error::INVALID_LEN);
        // WINK answers empty on an allocated channel.
        let r = single(dev.receive(&fragment(cid, cmd::WINK, &[]).unwrap()[0], now));
        assert_eq!((r[4], r[5], r[6]), (cmd::WINK, 0, 0));
        // CANCEL with nothing running: no answer.
        assert_eq!(
            dev.receive(&fragment(cid, cmd::CANCEL, &[]).unwrap()[0], now),
            Action::None
        );
        // LOCK with a wrong length.
        let r = single(dev.receive(&fragment(cid, cmd::LOCK, &[1, 2]).unwrap()[0], now));
        assert_eq!(r[7], error::INVALID_LEN);
    }

    #[test]
    fn busy_cancel_and_lock() {
        let mut dev = CtaphidDevice::new((5, 7, 1));
        let a = init(&mut dev);
        let b = init(&mut dev);
        let now = Instant::now();
        let cancel = fragment(a, cmd::CANCEL, &[]).unwrap();
        assert_eq!(
            dev.receive_while_busy(a, &cancel[0], now),
            BusyAction::Cancel
        );
        let BusyAction::Send(r) =
            dev.receive_while_busy(a, &fragment(b, cmd::PING, &[1]).unwrap()[0], now)
        else {
            panic!()
        };
        assert_eq!(r[0][7], error::CHANNEL_BUSY);

        let lock = fragment(a, cmd::LOCK, &[5]).unwrap();
        single(dev.receive(&lock[0], now));
        let r = single(dev.receive(&fragment(b, cmd::PING, &[1]).unwrap()[0], now));
        assert_eq!(r[7], error::CHANNEL_BUSY);
        let r = single(dev.receive(
            &fragment(b, cmd::PING, &[1]).unwrap()[0],
            now + Duration::from_secs(6),
        ));
        assert_eq!(r[4], cmd::PING);
        let r = single(dev.receive(&fragment(a, cmd::LOCK, &[11]).unwrap()[0], now));
        assert_eq!(r[7], error::INVALID_PAR);
    }
}
