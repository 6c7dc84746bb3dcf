//! Running one batch of device commands, exactly as `keyward issue` does:
//! commands in order, `61xx` completed with GET RESPONSE, stop at the first
//! status word the server did not expect or at a transport error (typed:
//! `device_removed`, `reader_gone`, …). CTAP messages go over ISO 7816 on a
//! card and over CTAPHID on a HID device. Command bytes are never logged.

use std::time::Instant;

use keyward_proto::{RelayBatch, RelayResponse, RelayResult, RELAY_PROTOCOL_VERSION};
use keyward_transport::apdu::{transmit_one, ApduTransport};
use keyward_transport::ctap::{CtapControl, CtapOverIso, CtapTransport};
use keyward_transport::TransportError;

/// The two channels of a device.
pub trait DeviceIo {
    /// One command APDU; the response data and status word.
    fn piv(&mut self, bytes: &[u8]) -> Result<(Vec<u8>, u16), TransportError>;
    /// One CTAP request (command byte + CBOR); the response (status + CBOR).
    fn ctap(&mut self, request: &[u8]) -> Result<Vec<u8>, TransportError>;
}

/// A smart card (PC/SC or in-process): PIV APDUs, and CTAP wrapped in
/// ISO 7816 (`80 10`) after a SELECT of the FIDO application.
pub struct CardIo<T: ApduTransport> {
    iso: CtapOverIso<T>,
    fido_selected: bool,
}

impl<T: ApduTransport> CardIo<T> {
    pub fn new(card: T) -> Self {
        CardIo {
            iso: CtapOverIso::new(card),
            fido_selected: false,
        }
    }
}

impl<T: ApduTransport> DeviceIo for CardIo<T> {
    fn piv(&mut self, bytes: &[u8]) -> Result<(Vec<u8>, u16), TransportError> {
        // Whatever the server selects now, the FIDO application is not
        // selected any more.
        self.fido_selected = false;
        let r = transmit_one(self.iso.inner_mut(), bytes)?;
        Ok((r.data, r.sw))
    }

    fn ctap(&mut self, request: &[u8]) -> Result<Vec<u8>, TransportError> {
        if !self.fido_selected {
            self.iso.select()?;
            self.fido_selected = true;
        }
        self.iso.ctap(request, &mut CtapControl::default())
    }
}

/// A FIDO HID device (hidraw or a virtual device's HID socket).
pub struct HidIo<C: CtapTransport>(pub C);

impl<C: CtapTransport> DeviceIo for HidIo<C> {
    fn piv(&mut self, _bytes: &[u8]) -> Result<(Vec<u8>, u16), TransportError> {
        Err(TransportError::Protocol(
            "this device has no smart card interface on this workstation".into(),
        ))
    }

    fn ctap(&mut self, request: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.0.ctap(request, &mut CtapControl::default())
    }
}

/// PIV on a card, CTAP on the device's HID side when it has one (a USB
/// YubiKey), else over ISO 7816 on the card. A touch may be awaited on the
/// HID side: its keep-alives restart the wait.
pub struct CardWithHid<'a, T: ApduTransport> {
    pub card: CardIo<T>,
    pub hid: Option<&'a mut dyn CtapTransport>,
}

impl<T: ApduTransport> DeviceIo for CardWithHid<'_, T> {
    fn piv(&mut self, bytes: &[u8]) -> Result<(Vec<u8>, u16), TransportError> {
        self.card.piv(bytes)
    }

    fn ctap(&mut self, request: &[u8]) -> Result<Vec<u8>, TransportError> {
        match self.hid.as_mut() {
            Some(hid) => hid.ctap(
                request,
                &mut CtapControl {
                    idle_timeout: std::time::Duration::from_secs(30),
                    ..Default::default()
                },
            ),
            None => self.card.ctap(request),
        }
    }
}

/// What running a batch gave.
pub struct BatchRun {
    pub result: RelayResult,
    /// Time spent in the device (and its transport), milliseconds.
    pub device_ms: f64,
    pub apdus: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// Each command run: its step, bytes out, bytes in, milliseconds.
    pub commands: Vec<CommandCost>,
}

/// What one command cost on the device.
pub struct CommandCost {
    pub step: String,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub ms: f64,
}

/// The relay protocol's names of transport errors.
fn error_code(e: &TransportError) -> &'static str {
    match e {
        TransportError::Protocol(_) => "protocol",
        other => other.code(),
    }
}

/// Runs the batch's commands on the device; the result to post back.
pub fn run_batch(io: &mut dyn DeviceIo, batch: &RelayBatch) -> BatchRun {
    let mut run = BatchRun {
        result: RelayResult {
            protocol: RELAY_PROTOCOL_VERSION,
            session_id: batch.session_id.clone(),
            seq: batch.seq,
            responses: Vec::new(),
            answers: Default::default(),
            transport_error: None,
        },
        device_ms: 0.0,
        apdus: 0,
        bytes_out: 0,
        bytes_in: 0,
        commands: Vec::new(),
    };
    for c in &batch.commands {
        let Ok(bytes) = hex::decode(&c.bytes) else {
            run.result.transport_error = Some("protocol".into());
            break;
        };
        let started = Instant::now();
        let answer = match c.channel.as_str() {
            "piv" => io.piv(&bytes),
            "ctap" => io.ctap(&bytes).map(|r| (r, 0x9000)),
            _ => Err(TransportError::Protocol(format!(
                "unknown channel {:?}",
                c.channel
            ))),
        };
        let ms = started.elapsed().as_secs_f64() * 1e3;
        run.device_ms += ms;
        run.apdus += 1;
        run.bytes_out += bytes.len() as u64;
        run.commands.push(CommandCost {
            step: c.step.clone(),
            bytes_out: bytes.len() as u64,
            bytes_in: answer
                .as_ref()
                .map(|(d, _)| d.len() as u64 + 2)
                .unwrap_or(0),
            ms,
        });
        match answer {
            Ok((data, sw)) => {
                run.bytes_in += data.len() as u64 + 2;
                let sw = format!("{sw:04x}");
                let expected = c.expect.iter().any(|e| e.eq_ignore_ascii_case(&sw));
                run.result.responses.push(RelayResponse {
                    data: hex::encode(&data),
                    sw,
                });
                if !expected {
                    break;
                }
            }
            Err(e) => {
                run.result.transport_error = Some(error_code(&e).to_string());
                break;
            }
        }
    }
    run
}

/// The result of a batch that could not begin: the device could not be
/// reached (typed as every transport error).
pub fn failed(batch: &RelayBatch, e: &TransportError) -> BatchRun {
    struct Gone(TransportError);
    impl DeviceIo for Gone {
        fn piv(&mut self, _: &[u8]) -> Result<(Vec<u8>, u16), TransportError> {
            Err(self.0.clone())
        }
        fn ctap(&mut self, _: &[u8]) -> Result<Vec<u8>, TransportError> {
            Err(self.0.clone())
        }
    }
    run_batch(&mut Gone(e.clone()), batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_proto::RelayCommand;

    struct Scripted(Vec<Result<(Vec<u8>, u16), TransportError>>);
    impl DeviceIo for Scripted {
        fn piv(&mut self, _b: &[u8]) -> Result<(Vec<u8>, u16), TransportError> {
            self.0.remove(0)
        }
        fn ctap(&mut self, _r: &[u8]) -> Result<Vec<u8>, TransportError> {
            self.0.remove(0).map(|(d, _)| d)
        }
    }

    fn batch(n: usize) -> RelayBatch {
        RelayBatch {
            protocol: 1,
            session_id: "s".into(),
            seq: 3,
            commands: (0..n)
                .map(|_| RelayCommand {
                    channel: "piv".into(),
                    bytes: "00a4040000".into(),
                    expect: vec!["9000".into()],
                    step: "x".into(),
                    secret: false,
                })
                .collect(),
            prompts: vec![],
            state: keyward_domain::SessionStatus::Running,
            step: "x".into(),
        }
    }

    #[test]
    fn stops_at_the_first_unexpected_status_word_and_at_removal() {
        let mut io = Scripted(vec![Ok((vec![1], 0x9000)), Ok((vec![], 0x6982))]);
        let run = run_batch(&mut io, &batch(3));
        assert_eq!(run.result.seq, 3);
        assert_eq!(run.result.responses.len(), 2);
        assert_eq!(run.result.responses[1].sw, "6982");
        assert_eq!(run.result.transport_error, None);

        let mut io = Scripted(vec![
            Ok((vec![], 0x9000)),
            Err(TransportError::DeviceRemoved),
        ]);
        let run = run_batch(&mut io, &batch(3));
        assert_eq!(run.result.responses.len(), 1);
        assert_eq!(
            run.result.transport_error.as_deref(),
            Some("device_removed")
        );
    }
}
