//! The APDU transport trait and the ISO 7816-4 transmission rules every
//! transport shares: command chaining for long commands, `61xx` + GET
//! RESPONSE for long responses, and `6Cxx` (wrong Le: send again with the
//! Le the card asks for).

use crate::error::TransportError;
use keyward_card::apdu::{self, CommandApdu, ResponseApdu, CLA_CHAINING};
use keyward_domain::Transport;

/// The largest response [`transmit`] assembles from `61xx` pieces (an
/// extended APDU's maximum plus one short response of slack).
pub const MAX_RESPONSE: usize = 65_536 + 256;
/// Data bytes per command of a chain (python-fido2 and yubico-piv-tool use
/// 250-255; 255 is the short APDU maximum).
pub const CHAIN_CHUNK: usize = 255;

/// Sends one command APDU and returns the response APDU exactly as the
/// card gave it (no GET RESPONSE, no chaining: see [`transmit`]).
pub trait ApduTransport: Send {
    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError>;
    /// Which canonical transport this is (`pcsc`, `in_process`).
    fn transport(&self) -> Transport;
    /// The reader name (PC/SC) or another human-readable locator.
    fn name(&self) -> String;
    /// The card's answer to reset.
    fn atr(&self) -> Vec<u8>;
}

impl<T: ApduTransport + ?Sized> ApduTransport for Box<T> {
    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        (**self).transmit_raw(command)
    }
    fn transport(&self) -> Transport {
        (**self).transport()
    }
    fn name(&self) -> String {
        (**self).name()
    }
    fn atr(&self) -> Vec<u8> {
        (**self).atr()
    }
}

impl<T: ApduTransport + ?Sized> ApduTransport for &mut T {
    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        (**self).transmit_raw(command)
    }
    fn transport(&self) -> Transport {
        (**self).transport()
    }
    fn name(&self) -> String {
        (**self).name()
    }
    fn atr(&self) -> Vec<u8> {
        (**self).atr()
    }
}

fn parse_response(raw: &[u8]) -> Result<ResponseApdu, TransportError> {
    ResponseApdu::parse(raw).map_err(|_| {
        TransportError::protocol(format!(
            "a response APDU of {} bytes has no status word",
            raw.len()
        ))
    })
}

/// The command APDUs that carry `command` over the wire: itself when it is
/// short (or marked extended by the caller), else short APDUs with command
/// chaining. Without `extended`, Le is capped at 256 and longer answers come
/// through `61xx` + GET RESPONSE.
pub fn wire_commands(command: &CommandApdu) -> Vec<Vec<u8>> {
    if command.extended {
        return vec![command.to_bytes()];
    }
    let mut short = command.clone();
    short.le = short.le.map(|l| l.min(256));
    short.to_chained_short(CHAIN_CHUNK)
}

/// Sends `command` with the ISO 7816-4 rules above and returns the whole
/// response (data of every `61xx` piece joined; the final status word).
/// A chain the card refuses part-way returns the refusing response.
pub fn transmit<T: ApduTransport + ?Sized>(
    t: &mut T,
    command: &CommandApdu,
) -> Result<ResponseApdu, TransportError> {
    let parts = wire_commands(command);
    let (last, chain) = parts.split_last().expect("at least one command");
    for part in chain {
        let r = parse_response(&t.transmit_raw(part)?)?;
        if !r.is_success() {
            return Ok(r);
        }
    }
    transmit_one(t, last)
}

/// One command APDU (already encoded) with `6Cxx` and `61xx` handling.
pub fn transmit_one<T: ApduTransport + ?Sized>(
    t: &mut T,
    bytes: &[u8],
) -> Result<ResponseApdu, TransportError> {
    let mut r = parse_response(&t.transmit_raw(bytes)?)?;
    if r.sw1() == 0x6C {
        // Wrong Le: the card says how many bytes it has; ask again once.
        if let Ok(mut c) = CommandApdu::parse(bytes) {
            if c.cla & CLA_CHAINING == 0 {
                c.le = Some(if r.sw2() == 0 { 256 } else { r.sw2() as usize });
                r = parse_response(&t.transmit_raw(&c.to_bytes())?)?;
            }
        }
    }
    let mut data = std::mem::take(&mut r.data);
    let mut sw = r.sw;
    while sw >> 8 == 0x61 {
        if data.len() > MAX_RESPONSE {
            return Err(TransportError::protocol(format!(
                "the response grew beyond {MAX_RESPONSE} bytes through GET RESPONSE"
            )));
        }
        let more = parse_response(&t.transmit_raw(&apdu::get_response(sw as u8).to_bytes())?)?;
        data.extend_from_slice(&more.data);
        sw = more.sw;
    }
    Ok(ResponseApdu::new(data, sw))
}

/// Why a batch stopped before its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchStop {
    /// Command `index` got a status word the caller did not expect; its
    /// response is the last one in [`BatchOutcome::responses`].
    UnexpectedStatus { index: usize, sw: u16 },
    /// Command `index` got no response.
    Transport { index: usize, error: TransportError },
}

/// The responses of a batch, up to where it stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    pub responses: Vec<ResponseApdu>,
    /// `None` when every command ran and got an expected status word.
    pub stop: Option<BatchStop>,
}

/// Sends `commands` in order; stops at the first transport error or at the
/// first response `expected(index, response)` refuses.
pub fn transmit_batch<T: ApduTransport + ?Sized>(
    t: &mut T,
    commands: &[CommandApdu],
    expected: impl Fn(usize, &ResponseApdu) -> bool,
) -> BatchOutcome {
    let mut responses = Vec::with_capacity(commands.len());
    for (index, command) in commands.iter().enumerate() {
        match transmit(t, command) {
            Ok(r) => {
                let ok = expected(index, &r);
                let sw = r.sw;
                responses.push(r);
                if !ok {
                    return BatchOutcome {
                        responses,
                        stop: Some(BatchStop::UnexpectedStatus { index, sw }),
                    };
                }
            }
            Err(error) => {
                return BatchOutcome {
                    responses,
                    stop: Some(BatchStop::Transport { index, error }),
                }
            }
        }
    }
    BatchOutcome {
        responses,
        stop: None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A card that answers from a script and records what it was sent.
    pub struct Scripted {
        pub answers: VecDeque<Result<Vec<u8>, TransportError>>,
        pub sent: Vec<Vec<u8>>,
    }

    impl Scripted {
        pub fn new(answers: &[&[u8]]) -> Self {
            Scripted {
                answers: answers.iter().map(|a| Ok(a.to_vec())).collect(),
                sent: Vec::new(),
            }
        }
    }

    impl ApduTransport for Scripted {
        fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
            self.sent.push(command.to_vec());
            self.answers
                .pop_front()
                .unwrap_or_else(|| Err(TransportError::protocol("script exhausted")))
        }
        fn transport(&self) -> Transport {
            Transport::InProcess
        }
        fn name(&self) -> String {
            "scripted".into()
        }
        fn atr(&self) -> Vec<u8> {
            vec![0x3B, 0x00]
        }
    }

    #[test]
    fn get_response_joins_pieces() {
        let mut t = Scripted::new(&[&[1, 2, 0x61, 0x02], &[3, 4, 0x61, 0x01], &[5, 0x90, 0x00]]);
        let r = transmit(&mut t, &CommandApdu::new(0, 0xCB, 0x3F, 0xFF).with_le(256)).unwrap();
        assert_eq!(r, ResponseApdu::success(vec![1, 2, 3, 4, 5]));
        assert_eq!(t.sent[1], vec![0x00, 0xC0, 0x00, 0x00, 0x02]);
        assert_eq!(t.sent[2], vec![0x00, 0xC0, 0x00, 0x00, 0x01]);
    }

    #[test]
    fn wrong_le_is_sent_again_with_the_card_length() {
        let mut t = Scripted::new(&[&[0x6C, 0x05], &[1, 2, 3, 4, 5, 0x90, 0x00]]);
        let r = transmit(&mut t, &CommandApdu::new(0, 0xFD, 0, 0).with_le(2)).unwrap();
        assert_eq!(r.data.len(), 5);
        assert_eq!(t.sent[1], vec![0x00, 0xFD, 0x00, 0x00, 0x05]);
    }

    #[test]
    fn long_commands_are_chained_and_refusal_stops_the_chain() {
        let data = vec![0xAB; 600];
        let mut t = Scripted::new(&[&[0x90, 0x00], &[0x90, 0x00], &[0x90, 0x00]]);
        let c = CommandApdu::new(0, 0xDB, 0x3F, 0xFF).with_data(data.clone());
        assert!(transmit(&mut t, &c).unwrap().is_success());
        assert_eq!(t.sent.len(), 3);
        assert_eq!(t.sent[0][0], 0x10);
        assert_eq!(t.sent[1][0], 0x10);
        assert_eq!(t.sent[2][0], 0x00);
        let sent: usize = t.sent.iter().map(|s| s[4] as usize).sum();
        assert_eq!(sent, 600);

        let mut t = Scripted::new(&[&[0x6A, 0x84]]);
        let r = transmit(&mut t, &c).unwrap();
        assert_eq!(r.sw, 0x6A84);
        assert_eq!(t.sent.len(), 1);
    }

    #[test]
    fn extended_commands_go_as_they_are() {
        let c = CommandApdu::new(0, 0xDB, 0x3F, 0xFF)
            .with_data(vec![1; 300])
            .extended(true);
        assert_eq!(wire_commands(&c).len(), 1);
        assert_eq!(wire_commands(&c)[0][4], 0x00);
    }

    #[test]
    fn missing_status_word_is_a_protocol_error() {
        let mut t = Scripted::new(&[&[0x90]]);
        let e = transmit(&mut t, &CommandApdu::new(0, 0xA4, 4, 0)).unwrap_err();
        assert_eq!(e.code(), "protocol_error");
    }

    #[test]
    fn batch_stops_at_unexpected_status_and_transport_error() {
        let cmds = vec![CommandApdu::new(0, 0xCB, 0x3F, 0xFF); 3];
        let mut t = Scripted::new(&[&[0x90, 0x00], &[0x6A, 0x82], &[0x90, 0x00]]);
        let out = transmit_batch(&mut t, &cmds, |_, r| r.is_success());
        assert_eq!(out.responses.len(), 2);
        assert_eq!(
            out.stop,
            Some(BatchStop::UnexpectedStatus {
                index: 1,
                sw: 0x6A82
            })
        );

        let mut t = Scripted::new(&[&[0x90, 0x00]]);
        t.answers.push_back(Err(TransportError::DeviceRemoved));
        let out = transmit_batch(&mut t, &cmds, |_, _| true);
        assert_eq!(out.responses.len(), 1);
        assert_eq!(
            out.stop,
            Some(BatchStop::Transport {
                index: 1,
                error: TransportError::DeviceRemoved
            })
        );
    }
}
