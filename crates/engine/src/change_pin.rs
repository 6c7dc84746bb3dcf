//! Change PIN: the person changes their PIV PIN on an issued device.
//!
//! ```text
//! batch 1: SELECT PIV (the device is there and answers)
//! batch 2: prompts `enter_pin` (current) and `set_new_pin` (the server
//!          checks the new PIN against the device policy's PIN rules before
//!          it builds the next batch)
//! batch 3: SELECT PIV, CHANGE REFERENCE DATA 80 24 00 80 with the current
//!          and the new PIN, each padded to 8 bytes with FF
//! ```
//!
//! A wrong current PIN answers 63Cx: the attempt fails with the tries the
//! device has left (its own retry counter is the only lock-out).

use std::collections::BTreeMap;

use keyward_card::piv::{self, key_ref};
use serde::{Deserialize, Serialize};

use crate::batch::{check, Batch, Failure, Response};
use crate::failure::{FailureCode, Step};
use crate::prompt::{Prompt, PromptKind};

const STEP_SELECT: Step = Step::SelectPiv;
const STEP_PROMPT: Step = Step::EnterCurrentAndNewPin;
const STEP_CHANGE: Step = Step::ChangePin;

/// A PIN change between round trips, one type per state (holds no secret:
/// the PINs only ride in the batch out, which the server seals with the
/// session).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "Sealed", into = "Sealed")]
pub enum PinChange {
    /// SELECT PIV is out.
    Select(AwaitSelect),
    /// The prompts for the current and the new PIN are out.
    Pins(AwaitPins),
    /// CHANGE REFERENCE DATA is out.
    Change(AwaitChange),
}

#[derive(Debug, Clone)]
pub struct AwaitSelect {
    sent: Batch,
}

#[derive(Debug, Clone)]
pub struct AwaitPins {
    sent: Batch,
}

#[derive(Debug, Clone)]
pub struct AwaitChange {
    sent: Batch,
}

/// Where a result leads.
pub enum Next {
    Batch(PinChange, Batch),
    Done,
}

fn wrong_pin_statuses() -> Vec<u16> {
    let mut v: Vec<u16> = vec![0x9000];
    v.extend((0..16).map(|n| 0x63C0 | n));
    v.push(0x6983);
    v
}

impl PinChange {
    pub fn start() -> (PinChange, Batch) {
        let mut batch = Batch::default();
        batch.push(STEP_SELECT, piv::select_piv().to_bytes(), &[0x9000], false);
        let sent = batch.clone();
        (PinChange::Select(AwaitSelect { sent }), batch)
    }

    /// The responses (or, for the prompt batch, the answers, already
    /// checked by the server against the PIN rules) to the batch out now.
    pub fn on_result(
        self,
        responses: &[Response],
        answers: &BTreeMap<String, String>,
    ) -> Result<Next, Failure> {
        match self {
            PinChange::Select(s) => {
                let (next, batch) = s.on_responses(responses)?;
                Ok(Next::Batch(PinChange::Pins(next), batch))
            }
            PinChange::Pins(s) => {
                let (next, batch) = s.on_answers(answers)?;
                Ok(Next::Batch(PinChange::Change(next), batch))
            }
            PinChange::Change(s) => s.on_responses(responses).map(|()| Next::Done),
        }
    }
}

impl AwaitSelect {
    /// The device is there and answers: the prompts.
    pub fn on_responses(self, responses: &[Response]) -> Result<(AwaitPins, Batch), Failure> {
        check(&self.sent, responses)?;
        let batch = Batch::prompts(vec![
            Prompt::new(
                PromptKind::EnterPin,
                STEP_PROMPT,
                "Enter the current PIN of the device",
            ),
            Prompt::new(
                PromptKind::SetNewPin,
                STEP_PROMPT,
                "Choose the new PIN of the device",
            ),
        ]);
        let sent = batch.clone();
        Ok((AwaitPins { sent }, batch))
    }
}

impl AwaitPins {
    /// The current and the new PIN: the change.
    pub fn on_answers(
        self,
        answers: &BTreeMap<String, String>,
    ) -> Result<(AwaitChange, Batch), Failure> {
        let answer = |kind: PromptKind| {
            answers.get(kind.as_str()).ok_or_else(|| {
                Failure::new(
                    FailureCode::AnswerRequired,
                    STEP_PROMPT,
                    format!("the prompt {} needs an answer", kind.as_str()),
                )
            })
        };
        let current = answer(PromptKind::EnterPin)?;
        let new = answer(PromptKind::SetNewPin)?;
        let change = piv::change_reference_data(key_ref::PIN, current.as_bytes(), new.as_bytes())
            .ok_or_else(|| {
            Failure::new(
                FailureCode::PinInvalid,
                STEP_PROMPT,
                "a PIV PIN has 1 to 8 characters",
            )
        })?;
        let mut batch = Batch::default();
        batch.push(STEP_SELECT, piv::select_piv().to_bytes(), &[0x9000], false);
        batch.push(STEP_CHANGE, change.to_bytes(), &wrong_pin_statuses(), true);
        let sent = batch.clone();
        Ok((AwaitChange { sent }, batch))
    }
}

impl AwaitChange {
    /// The device's answer: changed, or the current PIN was wrong.
    pub fn on_responses(self, responses: &[Response]) -> Result<(), Failure> {
        let r = check(&self.sent, responses)?;
        let sw = r[1].sw;
        let failure = |code, message: String| Failure {
            code,
            step: STEP_CHANGE,
            sw: Some(sw),
            message,
        };
        match sw {
            0x9000 => Ok(()),
            0x6983 | 0x63C0 => Err(failure(
                FailureCode::PinBlocked,
                "the current PIN was wrong and the PIN is now blocked: ask an operator to unblock or recycle the device".into(),
            )),
            _ => Err(failure(
                FailureCode::WrongPin,
                format!("the current PIN is wrong: {} tries left", sw & 0x000F),
            )),
        }
    }
}

/// The sealed form of a PIN change (as sessions sealed before the states
/// were types carry it).
#[derive(Serialize, Deserialize)]
struct Sealed {
    stage: SealedStage,
    sent: Batch,
}

#[derive(Serialize, Deserialize)]
enum SealedStage {
    Select,
    Prompt,
    Change,
}

impl From<Sealed> for PinChange {
    fn from(s: Sealed) -> PinChange {
        let sent = s.sent;
        match s.stage {
            SealedStage::Select => PinChange::Select(AwaitSelect { sent }),
            SealedStage::Prompt => PinChange::Pins(AwaitPins { sent }),
            SealedStage::Change => PinChange::Change(AwaitChange { sent }),
        }
    }
}

impl From<PinChange> for Sealed {
    fn from(p: PinChange) -> Sealed {
        let (stage, sent) = match p {
            PinChange::Select(s) => (SealedStage::Select, s.sent),
            PinChange::Pins(s) => (SealedStage::Prompt, s.sent),
            PinChange::Change(s) => (SealedStage::Change, s.sent),
        };
        Sealed { stage, sent }
    }
}

/// The tries left a failure reports (63Cx), if any.
pub fn tries_left(f: &Failure) -> Option<u8> {
    match f.sw {
        Some(sw) if sw & 0xFFF0 == 0x63C0 => Some((sw & 0x000F) as u8),
        Some(0x6983) => Some(0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Response {
        Response {
            data: vec![],
            sw: 0x9000,
        }
    }

    fn to_change(current: &str, new: &str) -> (PinChange, Batch) {
        let (e, b) = PinChange::start();
        assert_eq!(b.len(), 1);
        let Ok(Next::Batch(e, b)) = e.on_result(&[ok()], &BTreeMap::new()) else {
            panic!("prompts expected")
        };
        assert!(b.awaits_answers());
        let answers = BTreeMap::from([
            ("enter_pin".to_string(), current.to_string()),
            ("set_new_pin".to_string(), new.to_string()),
        ]);
        let Ok(Next::Batch(e, b)) = e.on_result(&[], &answers) else {
            panic!("the change expected")
        };
        (e, b)
    }

    #[test]
    fn the_change_carries_both_pins_padded() {
        let (e, b) = to_change("123456", "24681357");
        let crd = &b.commands[1];
        assert!(crd.secret);
        assert_eq!(&crd.bytes[..5], &[0x00, 0x24, 0x00, 0x80, 0x10]);
        assert_eq!(&crd.bytes[5..13], b"123456\xFF\xFF");
        assert_eq!(&crd.bytes[13..21], b"24681357");
        assert!(matches!(
            e.on_result(&[ok(), ok()], &BTreeMap::new()),
            Ok(Next::Done)
        ));
    }

    #[test]
    fn a_wrong_current_pin_fails_with_the_tries_left() {
        let (e, _) = to_change("111111", "24681357");
        let wrong = Response {
            data: vec![],
            sw: 0x63C2,
        };
        let Err(f) = e.on_result(&[ok(), wrong], &BTreeMap::new()) else {
            panic!("failure expected")
        };
        assert_eq!((f.code.as_str(), tries_left(&f)), ("wrong_pin", Some(2)));
        assert!(!f.message.contains("111111"));
    }

    #[test]
    fn a_pin_change_seals_as_before_its_states_were_types() {
        let (e, _) = PinChange::start();
        let Ok(Next::Batch(e, _)) = e.on_result(&[ok()], &BTreeMap::new()) else {
            panic!("prompts expected")
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["stage"], "Prompt", "{v}");
        let back: PinChange = serde_json::from_value(v).unwrap();
        assert!(matches!(back, PinChange::Pins(_)));
    }
}
