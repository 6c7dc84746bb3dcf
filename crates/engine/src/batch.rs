//! What travels between the engine and a relaying client: device commands
//! with the status words they may answer, and the responses.

use serde::{Deserialize, Serialize};

pub use crate::failure::{Failure, FailureCode, Step};

/// Which application of the device a command is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// A command APDU to the card (PIV, card manager, vendor commands).
    Piv,
    /// A CTAP message (over ISO 7816 or CTAPHID, the client's choice).
    Ctap,
}

/// One device command.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub channel: Channel,
    #[serde(with = "crate::b64")]
    pub bytes: Vec<u8>,
    /// Status words that let the batch go on; any other stops it there.
    pub expect: Vec<u16>,
    /// The step this command belongs to, for progress and error reports.
    pub step: Step,
    /// The bytes carry a secret (PIN, PUK, key): clients must not log them.
    pub secret: bool,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Command");
        d.field("channel", &self.channel).field("step", &self.step);
        if self.secret {
            d.field(
                "bytes",
                &format_args!("<{} secret bytes>", self.bytes.len()),
            );
        } else {
            d.field("bytes", &self.bytes);
        }
        d.field("expect", &self.expect).finish()
    }
}

/// Commands to run in order, stopping at the first unexpected status word;
/// or, with no commands, prompts the person must answer (a prompt batch).
/// Prompts next to commands are informational (shown while they run).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub commands: Vec<Command>,
    #[serde(default)]
    pub prompts: Vec<crate::prompt::Prompt>,
}

impl Batch {
    /// A batch of prompts the person answers (no device command).
    pub fn prompts(prompts: Vec<crate::prompt::Prompt>) -> Batch {
        Batch {
            commands: Vec::new(),
            prompts,
        }
    }

    /// Prompts that wait for answers: those of a batch without commands.
    pub fn awaits_answers(&self) -> bool {
        self.commands.is_empty() && !self.prompts.is_empty()
    }

    /// The step shown for this batch: its first command's, else its first
    /// prompt's (empty for an empty batch).
    pub fn step(&self) -> String {
        self.commands
            .first()
            .map(|c| c.step)
            .or_else(|| self.prompts.first().map(|p| p.step))
            .map(|s| s.to_string())
            .unwrap_or_default()
    }

    pub fn push(&mut self, step: Step, apdu: Vec<u8>, expect: &[u16], secret: bool) {
        self.commands.push(Command {
            channel: Channel::Piv,
            bytes: apdu,
            expect: expect.to_vec(),
            step,
            secret,
        });
    }

    /// A CTAP message (command byte + CBOR) for the FIDO application.
    pub fn push_ctap(&mut self, step: Step, message: Vec<u8>) {
        self.commands.push(Command {
            channel: Channel::Ctap,
            bytes: message,
            expect: vec![0x9000],
            step,
            secret: false,
        });
    }

    pub fn len(&self) -> usize {
        self.commands.len()
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// Bytes sent to the device.
    pub fn bytes_out(&self) -> usize {
        self.commands.iter().map(|c| c.bytes.len()).sum()
    }
}

/// A device's answer to one command: data and status word.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    #[serde(with = "crate::b64")]
    pub data: Vec<u8>,
    pub sw: u16,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Response({} bytes, {:04X})", self.data.len(), self.sw)
    }
}

impl Response {
    /// Splits a response APDU (data || SW1 SW2).
    pub fn from_apdu(bytes: &[u8]) -> Response {
        if bytes.len() < 2 {
            return Response {
                data: Vec::new(),
                sw: 0x6F00,
            };
        }
        let (data, sw) = bytes.split_at(bytes.len() - 2);
        Response {
            data: data.to_vec(),
            sw: u16::from_be_bytes([sw[0], sw[1]]),
        }
    }
}

/// Checks the responses of `batch`: one per command, each with an expected
/// status word. Returns the responses, or the failure of the first command
/// that did not answer as expected (a short list means the client stopped
/// there, or the device went away).
pub fn check<'a>(batch: &Batch, responses: &'a [Response]) -> Result<&'a [Response], Failure> {
    for (i, cmd) in batch.commands.iter().enumerate() {
        let Some(r) = responses.get(i) else {
            return Err(Failure::new(
                FailureCode::IncompleteBatch,
                cmd.step,
                format!(
                    "the device answered {} of {} commands",
                    responses.len(),
                    batch.len()
                ),
            ));
        };
        if !cmd.expect.contains(&r.sw) {
            let mut f = Failure::new(FailureCode::UnexpectedStatus, cmd.step, describe_sw(r.sw));
            f.sw = Some(r.sw);
            return Err(f);
        }
    }
    if responses.len() > batch.len() {
        return Err(Failure::new(
            FailureCode::BadResponse,
            Step::Relay,
            "more responses than commands",
        ));
    }
    Ok(responses)
}

/// A person-readable meaning of an ISO 7816 / PIV status word.
pub fn describe_sw(sw: u16) -> String {
    let what = match sw {
        0x6982 => "security status not satisfied".to_string(),
        0x6983 => "authentication method blocked".to_string(),
        0x6A80 => "incorrect data".to_string(),
        0x6A81 => "function not supported".to_string(),
        0x6A82 => "file or application not found".to_string(),
        0x6A86 => "incorrect P1/P2".to_string(),
        0x6D00 => "instruction not supported".to_string(),
        0x6E00 => "class not supported".to_string(),
        0x6700 => "wrong length".to_string(),
        0x6985 => "conditions of use not satisfied".to_string(),
        0x6F00 => "no precise diagnosis (device removed?)".to_string(),
        s if s & 0xFFF0 == 0x63C0 => format!("verification failed, {} tries left", s & 0x0F),
        _ => "unexpected status".to_string(),
    };
    format!("device answered {sw:04X}: {what}")
}
