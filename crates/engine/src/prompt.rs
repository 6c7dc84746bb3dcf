//! Prompts put to the person at the device, and their answers.
//!
//! A batch with device commands may carry informational prompts (shown while
//! the commands run, never answered); a batch with no commands carries
//! prompts that must be answered before the session goes on. Each kind is
//! answered under its own name in `RelayResult.answers`; the server checks
//! answers (PIN rules) before it builds the commands that carry them.

use serde::{Deserialize, Serialize};

use crate::batch::Failure;
use crate::failure::{FailureCode, Step};
use crate::piv::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptKind {
    EnterPin,
    ConfirmPin,
    SetNewPin,
    SetFidoPin,
    EnterFidoPin,
    /// Shows a PIN the person needs (value); answered by typing it back.
    ShowInitialPin,
    /// "Confirm and touch the device": answered `true` or `false` (declined).
    ConfirmTouch,
    /// "Remove and reinsert the device": answered `done`.
    ReinsertDevice,
    /// Informational: touch the device now (next to commands; never answered).
    TouchDevice,
}

impl PromptKind {
    pub const ALL: [PromptKind; 9] = [
        PromptKind::EnterPin,
        PromptKind::ConfirmPin,
        PromptKind::SetNewPin,
        PromptKind::SetFidoPin,
        PromptKind::EnterFidoPin,
        PromptKind::ShowInitialPin,
        PromptKind::ConfirmTouch,
        PromptKind::ReinsertDevice,
        PromptKind::TouchDevice,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PromptKind::EnterPin => "enter_pin",
            PromptKind::ConfirmPin => "confirm_pin",
            PromptKind::SetNewPin => "set_new_pin",
            PromptKind::SetFidoPin => "set_fido_pin",
            PromptKind::EnterFidoPin => "enter_fido_pin",
            PromptKind::ShowInitialPin => "show_initial_pin",
            PromptKind::ConfirmTouch => "confirm_touch",
            PromptKind::ReinsertDevice => "reinsert_device",
            PromptKind::TouchDevice => "touch_device",
        }
    }

    pub fn parse(s: &str) -> Option<PromptKind> {
        PromptKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The key of `keyward issue --answers` that answers this kind.
    pub fn answers_key(self) -> Option<&'static str> {
        Some(match self {
            PromptKind::EnterPin => "pin",
            PromptKind::ConfirmPin => "confirm_pin",
            PromptKind::SetNewPin => "new_pin",
            PromptKind::SetFidoPin => "fido_pin",
            PromptKind::EnterFidoPin => "fido_current_pin",
            PromptKind::ConfirmTouch => "touch",
            PromptKind::ShowInitialPin | PromptKind::ReinsertDevice | PromptKind::TouchDevice => {
                return None
            }
        })
    }

    /// Whether the answer is a secret (never logged or echoed).
    pub fn secret(self) -> bool {
        matches!(
            self,
            PromptKind::EnterPin
                | PromptKind::ConfirmPin
                | PromptKind::SetNewPin
                | PromptKind::SetFidoPin
                | PromptKind::EnterFidoPin
                | PromptKind::ShowInitialPin
        )
    }
}

/// One prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prompt {
    pub kind: PromptKind,
    /// The step of the session the prompt belongs to.
    pub step: Step,
    pub message: String,
    /// `show_initial_pin`: the PIN to show.
    #[serde(default)]
    pub value: Option<Secret>,
}

impl Prompt {
    pub fn new(kind: PromptKind, step: Step, message: impl Into<String>) -> Prompt {
        Prompt {
            kind,
            step,
            message: message.into(),
            value: None,
        }
    }
}

/// The answer to a `confirm_touch` prompt: `true` goes on, `false` is the
/// person declining, which fails the attempt with `declined_by_person`.
pub fn touch_confirmed(answer: &str, step: Step) -> Result<(), Failure> {
    match answer.trim() {
        "true" | "yes" => Ok(()),
        _ => Err(Failure::new(
            FailureCode::DeclinedByPerson,
            step,
            "the person declined to confirm and touch the device",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_map_to_answer_keys() {
        for k in PromptKind::ALL {
            assert_eq!(PromptKind::parse(k.as_str()), Some(k));
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::json!(k.as_str())
            );
        }
        assert_eq!(PromptKind::SetNewPin.answers_key(), Some("new_pin"));
        assert_eq!(
            PromptKind::EnterFidoPin.answers_key(),
            Some("fido_current_pin")
        );
        assert_eq!(PromptKind::ConfirmTouch.answers_key(), Some("touch"));
    }

    #[test]
    fn a_declined_touch_is_declined_by_person() {
        assert!(touch_confirmed("true", Step::ResetFido).is_ok());
        let f = touch_confirmed("false", Step::ResetFido).unwrap_err();
        assert_eq!(
            (f.code.as_str(), f.step),
            ("declined_by_person", Step::ResetFido)
        );
    }
}
