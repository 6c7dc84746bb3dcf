//! ISO/IEC 7816-4 command and response APDUs.
//!
//! A command APDU is `CLA INS P1 P2 [Lc data] [Le]` in one of the seven
//! cases of ISO 7816-3/-4 (1, 2S, 3S, 4S, 2E, 3E, 4E). Le is kept as the
//! number of bytes the host accepts: a short Le of `00` means 256 and an
//! extended Le of `0000` means 65536, as the standard says.

use thiserror::Error;

/// Status words (SW1-SW2) used by ISO 7816-4, PIV and the FIDO ISO binding.
pub mod sw {
    pub const SUCCESS: u16 = 0x9000;
    /// CTAP over ISO 7816: the authenticator is still working (keep-alive).
    pub const FIDO_KEEPALIVE: u16 = 0x9100;
    /// `61xx`: xx more response bytes are available with GET RESPONSE.
    pub const BYTES_REMAINING_BASE: u16 = 0x6100;
    /// `63Cx`: verification failed, x tries left.
    pub const VERIFY_FAILED_BASE: u16 = 0x63C0;
    pub const WARNING_NVM_UNCHANGED: u16 = 0x6200;
    pub const MEMORY_FAILURE: u16 = 0x6581;
    pub const WRONG_LENGTH: u16 = 0x6700;
    pub const LAST_COMMAND_OF_CHAIN_EXPECTED: u16 = 0x6883;
    pub const CHAINING_NOT_SUPPORTED: u16 = 0x6884;
    pub const SECURITY_STATUS_NOT_SATISFIED: u16 = 0x6982;
    pub const AUTH_METHOD_BLOCKED: u16 = 0x6983;
    pub const DATA_INVALID: u16 = 0x6984;
    pub const CONDITIONS_NOT_SATISFIED: u16 = 0x6985;
    pub const COMMAND_NOT_ALLOWED: u16 = 0x6986;
    pub const INCORRECT_DATA: u16 = 0x6A80;
    pub const FUNCTION_NOT_SUPPORTED: u16 = 0x6A81;
    pub const FILE_NOT_FOUND: u16 = 0x6A82;
    pub const NOT_ENOUGH_MEMORY: u16 = 0x6A84;
    pub const INCORRECT_P1P2: u16 = 0x6A86;
    pub const REFERENCE_DATA_NOT_FOUND: u16 = 0x6A88;
    pub const WRONG_P1P2: u16 = 0x6B00;
    pub const INS_NOT_SUPPORTED: u16 = 0x6D00;
    pub const CLA_NOT_SUPPORTED: u16 = 0x6E00;
    pub const NO_PRECISE_DIAGNOSIS: u16 = 0x6F00;

    /// `63Cx` for `tries` remaining (clamped to 15).
    pub fn verify_failed(tries: u8) -> u16 {
        VERIFY_FAILED_BASE | u16::from(tries.min(15))
    }

    /// `61xx` for `remaining` bytes (xx = 00 when 256 or more remain).
    pub fn bytes_remaining(remaining: usize) -> u16 {
        BYTES_REMAINING_BASE
            | if remaining >= 256 {
                0
            } else {
                remaining as u16
            }
    }
}

/// INS of GET RESPONSE (ISO 7816-4).
pub const INS_GET_RESPONSE: u8 = 0xC0;
/// CLA bit saying "more command APDUs of this chain follow".
pub const CLA_CHAINING: u8 = 0x10;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ApduError {
    #[error("command APDU shorter than its 4-byte header")]
    TooShort,
    #[error("command APDU length fields do not match its size")]
    BadLength,
    #[error("response APDU shorter than its status word")]
    NoStatusWord,
}

/// A parsed command APDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandApdu {
    pub cla: u8,
    pub ins: u8,
    pub p1: u8,
    pub p2: u8,
    pub data: Vec<u8>,
    /// Maximum response length the host accepts; `None` when absent.
    pub le: Option<usize>,
    /// Whether the APDU used (or will use) extended length fields.
    pub extended: bool,
}

impl CommandApdu {
    pub fn new(cla: u8, ins: u8, p1: u8, p2: u8) -> Self {
        CommandApdu {
            cla,
            ins,
            p1,
            p2,
            data: Vec::new(),
            le: None,
            extended: false,
        }
    }

    pub fn with_data(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.data = data.into();
        self
    }

    /// Set Le; 256 encodes as short `00`, 65536 as extended `0000`.
    pub fn with_le(mut self, le: usize) -> Self {
        self.le = Some(le);
        self
    }

    pub fn extended(mut self, extended: bool) -> Self {
        self.extended = extended;
        self
    }

    /// The chaining bit of CLA: more parts of this command follow.
    pub fn is_chained(&self) -> bool {
        self.cla & CLA_CHAINING != 0
    }

    /// Parse any of the seven ISO 7816 cases.
    pub fn parse(bytes: &[u8]) -> Result<CommandApdu, ApduError> {
        if bytes.len() < 4 {
            return Err(ApduError::TooShort);
        }
        let mut apdu = CommandApdu::new(bytes[0], bytes[1], bytes[2], bytes[3]);
        let body = &bytes[4..];
        match body.len() {
            0 => {}
            1 => apdu.le = Some(short_le(body[0])),
            _ if body[0] != 0 => {
                // Short case 3 or 4.
                let lc = body[0] as usize;
                match body.len() - 1 {
                    n if n == lc => apdu.data = body[1..].to_vec(),
                    n if n == lc + 1 => {
                        apdu.data = body[1..1 + lc].to_vec();
                        apdu.le = Some(short_le(body[1 + lc]));
                    }
                    _ => return Err(ApduError::BadLength),
                }
            }
            3 => {
                // Extended case 2: 00 Le1 Le2.
                apdu.extended = true;
                apdu.le = Some(extended_le(body[1], body[2]));
            }
            n if n >= 3 => {
                apdu.extended = true;
                let lc = u16::from_be_bytes([body[1], body[2]]) as usize;
                if lc == 0 {
                    return Err(ApduError::BadLength);
                }
                match n - 3 {
                    m if m == lc => apdu.data = body[3..].to_vec(),
                    m if m == lc + 2 => {
                        apdu.data = body[3..3 + lc].to_vec();
                        apdu.le = Some(extended_le(body[3 + lc], body[4 + lc]));
                    }
                    _ => return Err(ApduError::BadLength),
                }
            }
            _ => return Err(ApduError::BadLength),
        }
        Ok(apdu)
    }

    /// Encode; uses extended length fields when asked or when needed.
    pub fn to_bytes(&self) -> Vec<u8> {
        let extended = self.extended || self.data.len() > 255 || self.le.is_some_and(|l| l > 256);
        let mut out = Vec::with_capacity(self.data.len() + 9);
        out.extend_from_slice(&[self.cla, self.ins, self.p1, self.p2]);
        if extended {
            if !self.data.is_empty() {
                out.push(0);
                out.extend_from_slice(&(self.data.len() as u16).to_be_bytes());
                out.extend_from_slice(&self.data);
            }
            if let Some(le) = self.le {
                if self.data.is_empty() {
                    out.push(0);
                }
                let le = if le >= 65536 { 0 } else { le as u16 };
                out.extend_from_slice(&le.to_be_bytes());
            }
        } else {
            if !self.data.is_empty() {
                out.push(self.data.len() as u8);
                out.extend_from_slice(&self.data);
            }
            if let Some(le) = self.le {
                out.push(if le >= 256 { 0 } else { le as u8 });
            }
        }
        out
    }

    /// Split into short APDUs with command chaining (CLA bit 0x10 on all but
    /// the last), `chunk` data bytes each. Le goes on the last one.
    pub fn to_chained_short(&self, chunk: usize) -> Vec<Vec<u8>> {
        let chunk = chunk.clamp(1, 255);
        if self.data.len() <= chunk {
            return vec![self.clone().extended(false).to_bytes()];
        }
        let parts: Vec<&[u8]> = self.data.chunks(chunk).collect();
        let last = parts.len() - 1;
        parts
            .iter()
            .enumerate()
            .map(|(i, part)| {
                let mut apdu =
                    CommandApdu::new(self.cla, self.ins, self.p1, self.p2).with_data(part.to_vec());
                if i < last {
                    apdu.cla |= CLA_CHAINING;
                } else {
                    apdu.le = self.le.map(|l| l.min(256));
                }
                apdu.to_bytes()
            })
            .collect()
    }
}

fn short_le(b: u8) -> usize {
    if b == 0 {
        256
    } else {
        b as usize
    }
}

fn extended_le(hi: u8, lo: u8) -> usize {
    match u16::from_be_bytes([hi, lo]) {
        0 => 65536,
        n => n as usize,
    }
}

/// A response APDU: data then SW1-SW2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseApdu {
    pub data: Vec<u8>,
    pub sw: u16,
}

impl ResponseApdu {
    pub fn new(data: Vec<u8>, sw: u16) -> Self {
        ResponseApdu { data, sw }
    }

    pub fn success(data: Vec<u8>) -> Self {
        ResponseApdu::new(data, sw::SUCCESS)
    }

    pub fn status(sw: u16) -> Self {
        ResponseApdu::new(Vec::new(), sw)
    }

    pub fn parse(bytes: &[u8]) -> Result<ResponseApdu, ApduError> {
        if bytes.len() < 2 {
            return Err(ApduError::NoStatusWord);
        }
        let (data, swb) = bytes.split_at(bytes.len() - 2);
        Ok(ResponseApdu::new(
            data.to_vec(),
            u16::from_be_bytes([swb[0], swb[1]]),
        ))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() + 2);
        out.extend_from_slice(&self.data);
        out.extend_from_slice(&self.sw.to_be_bytes());
        out
    }

    pub fn sw1(&self) -> u8 {
        (self.sw >> 8) as u8
    }

    pub fn sw2(&self) -> u8 {
        self.sw as u8
    }

    pub fn is_success(&self) -> bool {
        self.sw == sw::SUCCESS
    }

    /// `61xx`: more data waits for GET RESPONSE.
    pub fn has_more(&self) -> bool {
        self.sw1() == 0x61
    }

    /// Tries left when the SW is `63Cx`.
    pub fn tries_left(&self) -> Option<u8> {
        (self.sw & 0xFFF0 == sw::VERIFY_FAILED_BASE).then_some((self.sw & 0x0F) as u8)
    }
}

/// GET RESPONSE for the `61xx` continuation (`xx` = 0 asks for 256).
pub fn get_response(le: u8) -> CommandApdu {
    CommandApdu::new(0x00, INS_GET_RESPONSE, 0, 0).with_le(short_le(le))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_cases() {
        let c1 = CommandApdu::parse(&[0, 0xA4, 4, 0]).unwrap();
        assert_eq!(c1.le, None);
        assert!(c1.data.is_empty());
        let c2 = CommandApdu::parse(&[0, 0xCA, 0, 0, 0]).unwrap();
        assert_eq!(c2.le, Some(256));
        let c3 = CommandApdu::parse(&[0, 0x20, 0, 0x80, 2, 1, 2]).unwrap();
        assert_eq!(c3.data, vec![1, 2]);
        assert_eq!(c3.le, None);
        let c4 = CommandApdu::parse(&[0, 0x20, 0, 0x80, 2, 1, 2, 0x10]).unwrap();
        assert_eq!(c4.le, Some(16));
        let e2 = CommandApdu::parse(&[0, 0xCB, 0x3F, 0xFF, 0, 0, 0]).unwrap();
        assert_eq!(e2.le, Some(65536));
        assert!(e2.extended);
        let e3 = CommandApdu::parse(&[0, 0xDB, 0x3F, 0xFF, 0, 0, 2, 9, 9]).unwrap();
        assert_eq!(e3.data, vec![9, 9]);
        assert_eq!(e3.le, None);
        let e4 = CommandApdu::parse(&[0, 0xDB, 0x3F, 0xFF, 0, 0, 2, 9, 9, 1, 0]).unwrap();
        assert_eq!(e4.le, Some(256));
    }

    #[test]
    fn rejects_bad_lengths() {
        assert_eq!(CommandApdu::parse(&[0, 1, 2]), Err(ApduError::TooShort));
        assert_eq!(
            CommandApdu::parse(&[0, 0x20, 0, 0x80, 5, 1]),
            Err(ApduError::BadLength)
        );
        assert_eq!(
            CommandApdu::parse(&[0, 0x20, 0, 0x80, 0, 0, 5, 1]),
            Err(ApduError::BadLength)
        );
        assert_eq!(
            CommandApdu::parse(&[0, 0x20, 0, 0x80, 0, 0]),
            Err(ApduError::BadLength)
        );
    }

    #[test]
    fn round_trips_short_and_extended() {
        for apdu in [
            CommandApdu::new(0, 0xA4, 4, 0)
                .with_data(vec![1, 2, 3])
                .with_le(256),
            CommandApdu::new(0, 0xCB, 0x3F, 0xFF).with_le(65536),
            CommandApdu::new(0, 0xDB, 0x3F, 0xFF).with_data(vec![7; 300]),
            CommandApdu::new(0, 0xDB, 0x3F, 0xFF)
                .with_data(vec![7; 300])
                .with_le(1000),
            CommandApdu::new(0x80, 0x10, 0x80, 0),
        ] {
            let bytes = apdu.to_bytes();
            let mut parsed = CommandApdu::parse(&bytes).unwrap();
            parsed.extended = apdu.extended || parsed.extended;
            assert_eq!(parsed.data, apdu.data);
            assert_eq!(parsed.le, apdu.le);
        }
    }

    #[test]
    fn chains_long_data() {
        let apdu = CommandApdu::new(0x80, 0x10, 0x80, 0)
            .with_data(vec![5; 600])
            .with_le(256);
        let parts = apdu.to_chained_short(250);
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0][0], 0x90);
        assert_eq!(parts[2][0], 0x80);
        assert_eq!(*parts[2].last().unwrap(), 0);
    }

    #[test]
    fn response_helpers() {
        let r = ResponseApdu::parse(&[1, 2, 0x63, 0xC2]).unwrap();
        assert_eq!(r.data, vec![1, 2]);
        assert_eq!(r.tries_left(), Some(2));
        assert_eq!(sw::bytes_remaining(300), 0x6100);
        assert_eq!(sw::bytes_remaining(20), 0x6114);
        assert!(ResponseApdu::parse(&[0x90]).is_err());
        assert_eq!(ResponseApdu::success(vec![1]).to_bytes(), vec![1, 0x90, 0]);
    }
}
