//! The person's answers to a prompt batch, checked before the session
//! moves: a refused answer changes nothing and leaves the same prompts out,
//! so the person can answer again (the server answers 400).

use keyward_domain::{DevicePolicy, PinRuleCheck};
use subtle::ConstantTimeEq;

use crate::batch::Batch;
use crate::fido::{fido_pin_problems, AwaitPin};
use crate::prompt::PromptKind;
use crate::session::Answers;

/// Why an answer was refused.
#[derive(Debug, Clone)]
pub struct Refused {
    /// Stable code (`answer_required`, a PIN rule's code, `pin_mismatch`, …).
    pub code: String,
    pub message: String,
    /// The answer refused: `answers.<prompt kind>`.
    pub field: String,
    pub rules: RefusedRules,
}

/// The rules a refused PIN breaks, for the person to see each one.
#[derive(Debug, Clone)]
pub enum RefusedRules {
    None,
    /// The device policy's PIN rules.
    Pin(Vec<PinRuleCheck>),
    /// The FIDO application's rules (the device's minimum length, CTAP's
    /// limits, the policy's rules), in words.
    Fido(Vec<String>),
}

fn refused(kind: PromptKind, code: &str, message: impl Into<String>) -> Refused {
    Refused {
        code: code.into(),
        message: message.into(),
        field: format!("answers.{}", kind.as_str()),
        rules: RefusedRules::None,
    }
}

/// Every prompt of `batch` answered, and each answer well-formed: a new
/// PIN meets the policy's rules, a confirmation is `true` or `false`, an
/// initial PIN is typed back exactly.
pub fn check(batch: &Batch, answers: &Answers, policy: &DevicePolicy) -> Result<(), Refused> {
    for p in &batch.prompts {
        let kind = p.kind.as_str();
        let Some(answer) = answers.get(kind) else {
            let key = p
                .kind
                .answers_key()
                .map(|k| format!(" (`{k}` in an answers file)"))
                .unwrap_or_default();
            return Err(refused(
                p.kind,
                "answer_required",
                format!("the prompt {kind} needs an answer{key}"),
            ));
        };
        match p.kind {
            PromptKind::SetNewPin => {
                let failed: Vec<PinRuleCheck> = policy
                    .pin_application
                    .check(answer)
                    .into_iter()
                    .filter(|c| !c.passed)
                    .collect();
                if let Some(first) = failed.first() {
                    let rules: Vec<&str> = failed.iter().map(|c| c.description.as_str()).collect();
                    let mut r = refused(
                        p.kind,
                        &first.code,
                        format!("the new PIN must have: {}", rules.join("; ")),
                    );
                    r.rules = RefusedRules::Pin(failed);
                    return Err(r);
                }
            }
            PromptKind::ConfirmTouch if !matches!(answer.as_str(), "true" | "false") => {
                return Err(refused(
                    p.kind,
                    "answer_invalid",
                    "confirm_touch is answered true (confirm) or false (decline)",
                ));
            }
            PromptKind::ShowInitialPin => {
                let shown = p.value.as_ref().map(|v| v.expose()).unwrap_or("");
                if !bool::from(shown.as_bytes().ct_eq(answer.as_bytes())) {
                    return Err(refused(
                        p.kind,
                        "pin_mismatch",
                        "type the PIN shown back exactly",
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// A new FIDO PIN against the device's minimum length and the policy.
pub(crate) fn check_fido_pin(
    p: &AwaitPin,
    answers: &Answers,
    policy: &DevicePolicy,
) -> Result<(), Refused> {
    let Some(pin) = answers.get(PromptKind::SetFidoPin.as_str()) else {
        return Ok(());
    };
    let problems = fido_pin_problems(
        pin,
        p.device().min_pin_length,
        Some(&policy.pin_application),
    );
    if problems.is_empty() {
        return Ok(());
    }
    let mut r = refused(
        PromptKind::SetFidoPin,
        "fido_pin_rules",
        format!("the FIDO PIN must meet: {}", problems.join("; ")),
    );
    r.rules = RefusedRules::Fido(problems);
    Err(r)
}

/// Change PIN: the current PIN a PIV PIN can be.
pub(crate) fn check_current_pin(answers: &Answers) -> Result<(), Refused> {
    let current = answers
        .get(PromptKind::EnterPin.as_str())
        .map(String::as_str)
        .unwrap_or("");
    if current.is_empty() || current.len() > 8 {
        return Err(refused(
            PromptKind::EnterPin,
            "pin_invalid",
            "the current PIN has 1 to 8 characters",
        ));
    }
    Ok(())
}
