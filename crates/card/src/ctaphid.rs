//! CTAPHID framing (CTAP 2.1 section 11.2): 64-byte HID reports, channels,
//! initialization and continuation packets.
//!
//! Pure and shared by the virtual device (keyward-vcard `ctaphid_device`) and
//! Keyward's HID client: [`fragment`] cuts a message into reports,
//! [`Reassembler`] puts one back together with the sequence checks the
//! standard asks for, and [`Packet::parse`] reads a single report.

/// Size of a CTAPHID report (full-speed USB HID, no report ID).
pub const REPORT_SIZE: usize = 64;
/// Payload bytes of an initialization packet (64 - cid 4 - cmd 1 - bcnt 2).
pub const INIT_DATA_SIZE: usize = REPORT_SIZE - 7;
/// Payload bytes of a continuation packet (64 - cid 4 - seq 1).
pub const CONT_DATA_SIZE: usize = REPORT_SIZE - 5;
/// Largest message: one initialization packet and 128 continuation packets.
pub const MAX_MESSAGE_SIZE: usize = INIT_DATA_SIZE + 128 * CONT_DATA_SIZE;
/// The broadcast channel, used for CTAPHID_INIT only.
pub const BROADCAST_CID: u32 = 0xFFFF_FFFF;
/// CTAPHID protocol version reported by INIT.
pub const PROTOCOL_VERSION: u8 = 2;

/// CTAPHID commands as they appear on the wire (initialization bit 0x80 set).
pub mod cmd {
    pub const PING: u8 = 0x81;
    pub const MSG: u8 = 0x83;
    pub const LOCK: u8 = 0x84;
    pub const INIT: u8 = 0x86;
    pub const WINK: u8 = 0x88;
    pub const CBOR: u8 = 0x90;
    pub const CANCEL: u8 = 0x91;
    pub const KEEPALIVE: u8 = 0xBB;
    pub const ERROR: u8 = 0xBF;
}

/// CTAPHID_ERROR codes.
pub mod error {
    pub const INVALID_CMD: u8 = 0x01;
    pub const INVALID_PAR: u8 = 0x02;
    pub const INVALID_LEN: u8 = 0x03;
    pub const INVALID_SEQ: u8 = 0x04;
    pub const MSG_TIMEOUT: u8 = 0x05;
    pub const CHANNEL_BUSY: u8 = 0x06;
    pub const LOCK_REQUIRED: u8 = 0x0A;
    pub const INVALID_CHANNEL: u8 = 0x0B;
    pub const OTHER: u8 = 0x7F;
}

/// CTAPHID_KEEPALIVE status bytes.
pub mod keepalive {
    pub const PROCESSING: u8 = 1;
    pub const UPNEEDED: u8 = 2;
}

/// CTAPHID_INIT capability flags.
pub mod capability {
    pub const WINK: u8 = 0x01;
    pub const CBOR: u8 = 0x04;
    /// The device does NOT implement CTAPHID_MSG (no CTAP1/U2F).
    pub const NMSG: u8 = 0x08;
}

/// A framing error, carrying the CTAPHID_ERROR code to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HidError {
    #[error("report is not {REPORT_SIZE} bytes")]
    ReportSize,
    #[error("continuation packet out of sequence")]
    InvalidSeq,
    #[error("message length above {MAX_MESSAGE_SIZE} bytes")]
    InvalidLen,
    #[error("continuation packet without an initialization packet")]
    UnexpectedContinuation,
    #[error("packet from another channel while a message is being received")]
    ChannelBusy,
    #[error("invalid channel id")]
    InvalidChannel,
}

impl HidError {
    /// The CTAPHID_ERROR code for this error.
    pub fn code(self) -> u8 {
        match self {
            HidError::ReportSize | HidError::InvalidLen => error::INVALID_LEN,
            HidError::InvalidSeq | HidError::UnexpectedContinuation => error::INVALID_SEQ,
            HidError::ChannelBusy => error::CHANNEL_BUSY,
            HidError::InvalidChannel => error::INVALID_CHANNEL,
        }
    }
}

/// One parsed HID report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    Init {
        cid: u32,
        cmd: u8,
        bcnt: u16,
        data: &'a [u8],
    },
    Cont {
        cid: u32,
        seq: u8,
        data: &'a [u8],
    },
}

impl<'a> Packet<'a> {
    /// Parses a 64-byte report. The data slices are the whole rest of the
    /// report; [`Reassembler`] trims them to the message length.
    pub fn parse(report: &'a [u8]) -> Result<Self, HidError> {
        if report.len() != REPORT_SIZE {
            return Err(HidError::ReportSize);
        }
        let cid = u32::from_be_bytes([report[0], report[1], report[2], report[3]]);
        if report[4] & 0x80 != 0 {
            Ok(Packet::Init {
                cid,
                cmd: report[4],
                bcnt: u16::from_be_bytes([report[5], report[6]]),
                data: &report[7..],
            })
        } else {
            Ok(Packet::Cont {
                cid,
                seq: report[4],
                data: &report[5..],
            })
        }
    }

    pub fn cid(&self) -> u32 {
        match self {
            Packet::Init { cid, .. } | Packet::Cont { cid, .. } => *cid,
        }
    }
}

/// A complete CTAPHID message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub cid: u32,
    pub cmd: u8,
    pub data: Vec<u8>,
}

/// Cuts a message into 64-byte reports (zero padded).
pub fn fragment(cid: u32, cmd: u8, data: &[u8]) -> Result<Vec<[u8; REPORT_SIZE]>, HidError> {
    if data.len() > MAX_MESSAGE_SIZE {
        return Err(HidError::InvalidLen);
    }
    let mut reports = Vec::with_capacity(1 + data.len() / CONT_DATA_SIZE);
    let mut first = [0u8; REPORT_SIZE];
    first[..4].copy_from_slice(&cid.to_be_bytes());
    first[4] = cmd | 0x80;
    first[5..7].copy_from_slice(&(data.len() as u16).to_be_bytes());
    let n = data.len().min(INIT_DATA_SIZE);
    first[7..7 + n].copy_from_slice(&data[..n]);
    reports.push(first);
    for (seq, chunk) in data[n..].chunks(CONT_DATA_SIZE).enumerate() {
        let mut r = [0u8; REPORT_SIZE];
        r[..4].copy_from_slice(&cid.to_be_bytes());
        r[4] = seq as u8;
        r[5..5 + chunk.len()].copy_from_slice(chunk);
        reports.push(r);
    }
    Ok(reports)
}

/// Builds a CTAPHID_ERROR report.
pub fn error_report(cid: u32, code: u8) -> [u8; REPORT_SIZE] {
    fragment(cid, cmd::ERROR, &[code]).expect("one byte fits")[0]
}

/// Builds a CTAPHID_KEEPALIVE report.
pub fn keepalive_report(cid: u32, status: u8) -> [u8; REPORT_SIZE] {
    fragment(cid, cmd::KEEPALIVE, &[status]).expect("one byte fits")[0]
}

/// Reassembles one message at a time from reports, checking that
/// continuation packets come from the same channel with sequence numbers
/// 0, 1, 2, ... as CTAP 2.1 section 11.2.4 requires.
#[derive(Debug, Default, Clone)]
pub struct Reassembler {
    pending: Option<Pending>,
}

#[derive(Debug, Clone)]
struct Pending {
    cid: u32,
    cmd: u8,
    expected: usize,
    next_seq: u8,
    data: Vec<u8>,
}

impl Reassembler {
    pub fn new() -> Self {
        Self::default()
    }

    /// The channel of the message being received, if one is in progress.
    pub fn busy_channel(&self) -> Option<u32> {
        self.pending.as_ref().map(|p| p.cid)
    }

    /// Forgets the message in progress (after a timeout or an abort).
    pub fn abort(&mut self) {
        self.pending = None;
    }

    /// Feeds one report. Returns the complete message once its last packet
    /// arrived. On error the message in progress is dropped, except for a
    /// packet of another channel ([`HidError::ChannelBusy`]), which leaves
    /// the message in progress untouched.
    pub fn push(&mut self, report: &[u8]) -> Result<Option<Message>, HidError> {
        match Packet::parse(report)? {
            Packet::Init {
                cid,
                cmd,
                bcnt,
                data,
            } => {
                if let Some(p) = &self.pending {
                    if p.cid != cid {
                        return Err(HidError::ChannelBusy);
                    }
                    // A new initialization packet on the same channel restarts
                    // the transaction (the spec's resynchronisation rule).
                }
                let expected = bcnt as usize;
                if expected > MAX_MESSAGE_SIZE {
                    self.pending = None;
                    return Err(HidError::InvalidLen);
                }
                let n = expected.min(INIT_DATA_SIZE);
                let pending = Pending {
                    cid,
                    cmd,
                    expected,
                    next_seq: 0,
                    data: data[..n].to_vec(),
                };
                self.pending = Some(pending);
                Ok(self.take_if_complete())
            }
            Packet::Cont { cid, seq, data } => {
                let Some(p) = self.pending.as_mut() else {
                    return Err(HidError::UnexpectedContinuation);
                };
                if p.cid != cid {
                    return Err(HidError::ChannelBusy);
                }
                if seq != p.next_seq || seq > 0x7F {
                    self.pending = None;
                    return Err(HidError::InvalidSeq);
                }
                p.next_seq = p.next_seq.wrapping_add(1);
                let n = (p.expected - p.data.len()).min(CONT_DATA_SIZE);
                p.data.extend_from_slice(&data[..n]);
                Ok(self.take_if_complete())
            }
        }
    }

    fn take_if_complete(&mut self) -> Option<Message> {
        match &self.pending {
            Some(p) if p.data.len() == p.expected => {
                let p = self.pending.take().expect("checked");
                Some(Message {
                    cid: p.cid,
                    cmd: p.cmd,
                    data: p.data,
                })
            }
            _ => None,
        }
    }
}

/// The payload of a CTAPHID_INIT response (17 bytes).
pub fn init_response(
    nonce: &[u8; 8],
    new_cid: u32,
    version: (u8, u8, u8),
    capabilities: u8,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(17);
    out.extend_from_slice(nonce);
    out.extend_from_slice(&new_cid.to_be_bytes());
    out.push(PROTOCOL_VERSION);
    out.push(version.0);
    out.push(version.1);
    out.push(version.2);
    out.push(capabilities);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_and_reassemble_round_trip_at_boundaries() {
        for len in [
            0,
            1,
            INIT_DATA_SIZE,
            INIT_DATA_SIZE + 1,
            INIT_DATA_SIZE + CONT_DATA_SIZE,
            1000,
            MAX_MESSAGE_SIZE,
        ] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let reports = fragment(0x0102_0304, cmd::CBOR, &data).unwrap();
            let mut r = Reassembler::new();
            let mut out = None;
            for (i, rep) in reports.iter().enumerate() {
                let got = r.push(rep).unwrap();
                if i + 1 < reports.len() {
                    assert!(got.is_none());
                } else {
                    out = got;
                }
            }
            let m = out.unwrap();
            assert_eq!((m.cid, m.cmd, m.data), (0x0102_0304, cmd::CBOR, data));
        }
        assert_eq!(
            fragment(1, cmd::CBOR, &vec![0; MAX_MESSAGE_SIZE + 1]),
            Err(HidError::InvalidLen)
        );
    }

    #[test]
    fn sequence_errors_are_reported() {
        let data = vec![0xAA; 200];
        let reports = fragment(7, cmd::MSG, &data).unwrap();
        let mut r = Reassembler::new();
        r.push(&reports[0]).unwrap();
        assert_eq!(r.push(&reports[2]), Err(HidError::InvalidSeq));
        assert_eq!(r.busy_channel(), None);
        assert_eq!(r.push(&reports[1]), Err(HidError::UnexpectedContinuation));

        r.push(&reports[0]).unwrap();
        let other = fragment(8, cmd::PING, &[1]).unwrap();
        assert_eq!(r.push(&other[0]), Err(HidError::ChannelBusy));
        assert_eq!(r.busy_channel(), Some(7));
        assert_eq!(r.push(&[0u8; 10]), Err(HidError::ReportSize));
        assert_eq!(HidError::InvalidSeq.code(), error::INVALID_SEQ);
    }

    #[test]
    fn oversized_length_is_rejected() {
        let mut rep = [0u8; REPORT_SIZE];
        rep[4] = cmd::CBOR;
        rep[5] = 0xFF;
        rep[6] = 0xFF;
        assert_eq!(Reassembler::new().push(&rep), Err(HidError::InvalidLen));
    }
}
