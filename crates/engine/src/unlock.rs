//! Unlock: a PIV PIN that is blocked (or forgotten) is reset with the PUK
//! the server keeps, and the PUK is replaced at once by a new one.
//!
//! ```text
//! prompts: set_new_pin (the server checks it against the policy's PIN
//!          rules before the device sees it)
//! batch 1: [C4000: GET DATA CPLC] SELECT PIV [YubiKey: GET SERIAL]
//!          [YubiKey from 5.3: GET METADATA 81, the PUK's tries left]
//!          → the device is the one expected; a blocked PUK stops here;
//!            the last try is never spent on a PUK the server is not sure of
//! batch 2: SELECT PIV, RESET RETRY COUNTER (PUK + new PIN),
//!          CHANGE REFERENCE DATA 81 (PUK → new PUK)
//! ```
//!
//! Two device round trips. What the device answers teaches the server
//! about its PUK ([`UnlockEnd::puk`]): a wrong PUK swaps an uncertain one
//! for its alternative, a blocked one is remembered (the next unlock is
//! refused before the device is touched: recycle and re-issue).
//!
//! A FIDO application with its own PIN ([`FidoPin::Own`]: a YubiKey, a
//! C4000 in unshared mode) has its own counter, which PIV's unblock does not
//! touch; batch 1 reads it too (clientPIN getPinRetries: nothing secret,
//! nothing changed). CTAP tells two blocks apart:
//!
//! * `PIN_AUTH_BLOCKED` (powerCycleState true, tries left): three wrong PINs
//!   in a row; removing and re-inserting the device clears it. Said in the
//!   end's [`FidoOutcome::NeedsReinsert`]; nothing is reset.
//! * `PIN_BLOCKED` (no tries left): only authenticatorReset clears it, which
//!   the device takes only within 10 s of power-up, with a touch, and which
//!   erases the credentials of every relying party on it. After the PIV
//!   reset the person is told all of that and asked (`reinsert_device`,
//!   `confirm_touch`); confirmed, batch 3 resets FIDO:
//!
//! ```text
//! prompts: reinsert_device, confirm_touch (the warning)
//! batch 3: authenticatorReset (touch)   → FidoOutcome::Reset
//! ```
//!
//! The server then deletes the device's passkeys at their service and the
//! session registers a new one when the policy has a FIDO application
//! ([`crate::session`]). A C4000 sharing its PIN with PIV has one counter:
//! the PIV unblock clears both ([`FidoPin::Shared`], nothing more to do).

use std::collections::BTreeMap;

use keyward_card::ctap::{self, command, ClientPinResponse};
use keyward_card::piv::{self, key_ref};
use keyward_domain::DeviceType;
use serde::{Deserialize, Serialize};

use crate::batch::{check, Batch, Failure, Response};
use crate::failure::{FailureCode, Step};
use crate::knowledge::Known;
use crate::piv::Secret;
use crate::prompt::{touch_confirmed, Prompt, PromptKind};
use crate::recycle::{identify_c4000, identify_yubikey};

const OK: &[u16] = &[0x9000];
/// GET DATA of the CPLC (a C4000's serial).
const GET_CPLC: [u8; 5] = [0x80, 0xCA, 0x9F, 0x7F, 0x00];

/// What the unlock needs, decided by the server from what it keeps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnlockPlan {
    pub device_type: DeviceType,
    pub serial: u64,
    pub firmware: Option<(u8, u8, u8)>,
    /// The PUK as the server knows it (an alternative: not sure which).
    pub puk: Known<Secret>,
    /// The PUK that replaces it.
    pub new_puk: Secret,
    /// The FIDO application's PIN, as the policy has it.
    #[serde(default)]
    pub fido: FidoPin,
}

/// The FIDO application's PIN, as far as an unlock is concerned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FidoPin {
    /// The policy has no FIDO application: FIDO is not looked at.
    #[default]
    Absent,
    /// A C4000 sharing the PIV PIN: one counter, the PIV unblock clears it.
    Shared,
    /// The FIDO application's own PIN and counter: read in batch 1.
    Own,
}

/// What batch 1 read of an own FIDO PIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FidoPinState {
    /// Tries left and no power cycle needed (or FIDO not looked at).
    Usable,
    /// CTAP2_ERR_PIN_AUTH_BLOCKED: remove and re-insert the device.
    AuthBlocked,
    /// CTAP2_ERR_PIN_BLOCKED: only a FIDO reset clears it.
    Blocked,
}

/// What the unlock did about the FIDO PIN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FidoOutcome {
    /// Nothing to do: no own FIDO PIN, or it is usable.
    Untouched,
    /// PIN_AUTH_BLOCKED: the person removes and re-inserts the device.
    NeedsReinsert,
    /// PIN_BLOCKED, and the FIDO application was not reset (why).
    StillBlocked(String),
    /// PIN_BLOCKED: the FIDO application was reset; every credential on it
    /// (passkeys of every relying party) is gone, and it has no PIN.
    Reset,
}

impl UnlockPlan {
    /// GET METADATA 81 answers the PUK's tries on a YubiKey from 5.3.
    fn reads_puk_tries(&self) -> bool {
        self.device_type == DeviceType::YubiKey5 && self.firmware.is_some_and(|f| f >= (5, 3, 0))
    }
}

/// An unlock between round trips, one type per state.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Serialize, Deserialize)]
pub enum Unlock {
    /// The new PIN is asked.
    NewPin(AwaitNewPin),
    /// Batch 1 (identity, PUK tries) is out.
    Check(AwaitCheck),
    /// Batch 2 (the reset and the new PUK) is out.
    Reset(AwaitReset),
    /// The PIV PIN is unlocked, the FIDO PIN blocked: the FIDO reset's
    /// warning is out (reinsert, confirm).
    FidoConfirm(AwaitFidoConfirm),
    /// authenticatorReset is out.
    FidoReset(AwaitFidoReset),
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AwaitNewPin {
    plan: UnlockPlan,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AwaitCheck {
    plan: UnlockPlan,
    new_pin: Secret,
    sent: Batch,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AwaitReset {
    plan: UnlockPlan,
    sent: Batch,
    #[serde(default = "usable")]
    fido: FidoPinState,
}

fn usable() -> FidoPinState {
    FidoPinState::Usable
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AwaitFidoConfirm {
    plan: UnlockPlan,
    /// The PUK as the PIV reset left it.
    puk: Known<Secret>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AwaitFidoReset {
    plan: UnlockPlan,
    puk: Known<Secret>,
    sent: Batch,
}

/// How an unlock ended: its outcome and what the device's PUK is now.
pub struct UnlockEnd {
    pub result: Result<(), Failure>,
    pub puk: Known<Secret>,
    /// The device refused the PUK for good (6983): only a recycle helps.
    pub puk_blocked: bool,
    /// What happened to a FIDO PIN of its own.
    pub fido: FidoOutcome,
}

/// Where a result leads.
pub enum Next {
    Batch(Unlock, Batch),
    End(UnlockEnd),
}

impl Unlock {
    /// The first batch: the new PIN's prompt.
    pub fn start(plan: UnlockPlan) -> (Unlock, Batch) {
        let batch = Batch::prompts(vec![Prompt::new(
            PromptKind::SetNewPin,
            Step::SetNewPin,
            "Choose the new PIN of the device",
        )]);
        (Unlock::NewPin(AwaitNewPin { plan }), batch)
    }

    /// The relayed result of the batch out now (answers already checked by
    /// the server against the PIN rules). `transport_error`: the device
    /// went away during the batch.
    pub fn on_result(
        self,
        responses: &[Response],
        answers: &BTreeMap<String, String>,
        transport_error: bool,
    ) -> Next {
        match self {
            Unlock::NewPin(s) => {
                let plan = s.plan.clone();
                match s.on_answers(answers) {
                    Ok((s, b)) => Next::Batch(Unlock::Check(s), b),
                    Err(f) => Next::End(UnlockEnd::unchanged(&plan, f)),
                }
            }
            Unlock::Check(s) => {
                let plan = s.plan.clone();
                match s.on_responses(responses) {
                    Ok((s, b)) => Next::Batch(Unlock::Reset(s), b),
                    Err((f, blocked)) => Next::End(UnlockEnd {
                        puk_blocked: blocked,
                        ..UnlockEnd::unchanged(&plan, f)
                    }),
                }
            }
            Unlock::Reset(s) => s.on_responses(responses, transport_error),
            Unlock::FidoConfirm(s) => s.on_answers(answers),
            Unlock::FidoReset(s) => Next::End(s.on_responses(responses)),
        }
    }

    /// The plan (for the server: the serial, what it keeps).
    pub fn plan(&self) -> &UnlockPlan {
        match self {
            Unlock::NewPin(s) => &s.plan,
            Unlock::Check(s) => &s.plan,
            Unlock::Reset(s) => &s.plan,
            Unlock::FidoConfirm(s) => &s.plan,
            Unlock::FidoReset(s) => &s.plan,
        }
    }
}

impl UnlockEnd {
    fn unchanged(plan: &UnlockPlan, f: Failure) -> UnlockEnd {
        UnlockEnd {
            result: Err(f),
            puk: plan.puk.clone(),
            puk_blocked: false,
            fido: FidoOutcome::Untouched,
        }
    }
}

impl AwaitNewPin {
    fn on_answers(
        self,
        answers: &BTreeMap<String, String>,
    ) -> Result<(AwaitCheck, Batch), Failure> {
        let pin = answers.get(PromptKind::SetNewPin.as_str()).ok_or_else(|| {
            Failure::new(
                FailureCode::AnswerRequired,
                Step::SetNewPin,
                "the prompt set_new_pin needs an answer",
            )
        })?;
        if piv::pad_pin(pin.as_bytes()).is_none() || pin.is_empty() {
            return Err(Failure::new(
                FailureCode::PinInvalid,
                Step::SetNewPin,
                "a PIV PIN has 1 to 8 characters",
            ));
        }
        let plan = self.plan;
        let mut b = Batch::default();
        if plan.device_type == DeviceType::C4000 {
            b.push(Step::IdentifyDevice, GET_CPLC.to_vec(), OK, false);
        }
        b.push(Step::SelectPiv, piv::select_piv().to_bytes(), OK, false);
        if plan.device_type == DeviceType::YubiKey5 {
            b.push(
                Step::IdentifyDevice,
                piv::yk_get_serial().to_bytes(),
                OK,
                false,
            );
        }
        if plan.reads_puk_tries() {
            b.push(
                Step::ReadPukTries,
                piv::yk_get_metadata(key_ref::PUK).to_bytes(),
                OK,
                false,
            );
        }
        if plan.fido == FidoPin::Own {
            // Protocol 1: every CTAP 2 authenticator has it.
            let req = ctap::platform::get_pin_retries_request(ctap::PinProtocol::V1);
            b.push_ctap(
                Step::ReadFidoPinTries,
                ctap::encode_request(command::CLIENT_PIN, Some(&req.to_value())),
            );
        }
        let sent = b.clone();
        Ok((
            AwaitCheck {
                plan,
                new_pin: Secret::new(pin.as_str()),
                sent,
            },
            b,
        ))
    }
}

impl AwaitCheck {
    /// The device is the one expected and its PUK may be spent: the reset.
    /// Err carries whether the PUK is blocked.
    fn on_responses(self, responses: &[Response]) -> Result<(AwaitReset, Batch), (Failure, bool)> {
        let r = check(&self.sent, responses).map_err(|f| (f, false))?;
        let plan = self.plan;
        match plan.device_type {
            DeviceType::C4000 => identify_c4000(plan.serial, &r[0].data),
            DeviceType::YubiKey5 => identify_yubikey(plan.serial, r),
            DeviceType::Piv => Ok(()),
        }
        .map_err(|f| (f, false))?;
        // The answers of the reading commands, by their step.
        let answer = |step: Step| {
            self.sent
                .commands
                .iter()
                .zip(r)
                .find(|(c, _)| c.step == step)
                .map(|(_, r)| r.data.as_slice())
        };
        if plan.reads_puk_tries() {
            let tries = answer(Step::ReadPukTries)
                .and_then(|d| piv::YkMetadata::parse(d).ok())
                .and_then(|m| m.retries)
                .map(|(_, left)| left);
            match tries {
                Some(0) => {
                    return Err((
                        Failure::new(
                            FailureCode::PukBlocked,
                            Step::ReadPukTries,
                            "the device's PUK is blocked: recycle and re-issue the device",
                        ),
                        true,
                    ))
                }
                Some(1) if plan.puk.alternative.is_some() => {
                    return Err((uncertain(Step::ReadPukTries), false));
                }
                _ => {}
            }
        } else if plan.puk.alternative.is_some() {
            // The tries cannot be read: any try may be the last.
            return Err((uncertain(Step::ReadPukTries), false));
        }
        let fido = answer(Step::ReadFidoPinTries)
            .map(fido_pin_state)
            .unwrap_or(FidoPinState::Usable);
        let reset = piv::reset_retry_counter(
            plan.puk.value.expose().as_bytes(),
            self.new_pin.expose().as_bytes(),
        )
        .ok_or_else(|| {
            (
                Failure::new(
                    FailureCode::PinTooLong,
                    Step::UnblockPin,
                    "a PIN or PUK is too long",
                ),
                false,
            )
        })?;
        let change_puk = piv::change_reference_data(
            key_ref::PUK,
            plan.puk.value.expose().as_bytes(),
            plan.new_puk.expose().as_bytes(),
        )
        .ok_or_else(|| {
            (
                Failure::new(
                    FailureCode::PinTooLong,
                    Step::ChangePuk,
                    "a PUK is too long",
                ),
                false,
            )
        })?;
        let mut b = Batch::default();
        b.push(Step::SelectPiv, piv::select_piv().to_bytes(), OK, false);
        b.push(Step::UnblockPin, reset.to_bytes(), OK, true);
        b.push(Step::ChangePuk, change_puk.to_bytes(), OK, true);
        let sent = b.clone();
        Ok((AwaitReset { plan, sent, fido }, b))
    }
}

/// What getPinRetries says of a FIDO PIN (an answer that is not one, or a
/// CTAP error, leaves FIDO alone: the PIV unlock is what was asked).
fn fido_pin_state(data: &[u8]) -> FidoPinState {
    let Some(0) = data.first() else {
        return FidoPinState::Usable;
    };
    let Ok(Some(v)) = ctap::split_response(data) else {
        return FidoPinState::Usable;
    };
    match ClientPinResponse::from_value(&v) {
        Ok(r) if r.pin_retries == Some(0) => FidoPinState::Blocked,
        Ok(r) if r.power_cycle_state == Some(true) => FidoPinState::AuthBlocked,
        _ => FidoPinState::Usable,
    }
}

fn uncertain(step: Step) -> Failure {
    Failure::new(
        FailureCode::PukUncertain,
        step,
        "the server is not sure of this device's PUK and will not spend what may be its last try: update or recycle the device",
    )
}

impl AwaitReset {
    fn on_responses(self, responses: &[Response], transport_error: bool) -> Next {
        let plan = self.plan;
        let mut puk = plan.puk.clone();
        let sw = |i: usize| responses.get(i).map(|r| r.sw);
        // RESET RETRY COUNTER's answer.
        match sw(1) {
            Some(0x9000) => {
                // The PUK was right: it is sure now.
                puk = Known::sure(plan.puk.value.clone());
            }
            Some(0x6983) => {
                return Next::End(UnlockEnd {
                    result: Err(Failure {
                        code: FailureCode::PukBlocked,
                        step: Step::UnblockPin,
                        sw: Some(0x6983),
                        message: "the device's PUK is blocked: recycle and re-issue the device"
                            .into(),
                    }),
                    puk,
                    puk_blocked: true,
                    fido: FidoOutcome::Untouched,
                });
            }
            Some(s) if s & 0xFFF0 == 0x63C0 => {
                // Wrong: the alternative (if any) is the likelier now.
                puk.swap();
                let left = s & 0x000F;
                return Next::End(UnlockEnd {
                    result: Err(Failure {
                        code: FailureCode::WrongPuk,
                        step: Step::UnblockPin,
                        sw: Some(s),
                        message: format!("the device refused the PUK: {left} tries left"),
                    }),
                    puk,
                    puk_blocked: left == 0,
                    fido: FidoOutcome::Untouched,
                });
            }
            _ => {}
        }
        // CHANGE REFERENCE DATA 81: done, not run, or unknown (the device
        // went away while it was in flight).
        match sw(2) {
            Some(0x9000) => puk = Known::sure(plan.new_puk.clone()),
            None if transport_error && sw(1) == Some(0x9000) => {
                puk.alternative = Some(plan.new_puk.clone());
            }
            _ => {}
        }
        let result = check(&self.sent, responses).map(|_| ());
        let fido = match (&result, self.fido) {
            (Err(_), _) | (Ok(()), FidoPinState::Usable) => FidoOutcome::Untouched,
            (Ok(()), FidoPinState::AuthBlocked) => FidoOutcome::NeedsReinsert,
            // The PIV PIN is unlocked; the FIDO reset is the person's choice.
            (Ok(()), FidoPinState::Blocked) => {
                let b = Batch::prompts(vec![
                    Prompt::new(
                        PromptKind::ReinsertDevice,
                        Step::ResetFido,
                        "The device's PIN is unlocked, but its FIDO PIN is blocked and only a FIDO reset clears it. Remove the device and insert it again",
                    ),
                    Prompt::new(
                        PromptKind::ConfirmTouch,
                        Step::ResetFido,
                        FIDO_RESET_WARNING,
                    ),
                ]);
                return Next::Batch(Unlock::FidoConfirm(AwaitFidoConfirm { plan, puk }), b);
            }
        };
        Next::End(UnlockEnd {
            result,
            puk,
            puk_blocked: false,
            fido,
        })
    }
}

/// What the person is told before a FIDO reset (the device takes it only
/// within 10 s of insertion, with a touch, and it erases everything).
pub const FIDO_RESET_WARNING: &str = "Reset the FIDO application? The reset must come within 10 seconds of inserting the device and needs a touch on the device. It erases every passkey and security-key credential on the device, for every website and service, not only this organisation's; the organisation's passkey is registered again afterwards. Confirm, then touch the device when it blinks";

impl AwaitFidoConfirm {
    fn on_answers(self, answers: &BTreeMap<String, String>) -> Next {
        let touch = answers
            .get(PromptKind::ConfirmTouch.as_str())
            .map(String::as_str)
            .unwrap_or("");
        if touch_confirmed(touch, Step::ResetFido).is_err() {
            return Next::End(UnlockEnd {
                result: Ok(()),
                puk: self.puk,
                puk_blocked: false,
                fido: FidoOutcome::StillBlocked("the person declined the FIDO reset".into()),
            });
        }
        let mut b = Batch::default();
        b.push_ctap(Step::ResetFido, vec![command::RESET]);
        b.prompts.push(Prompt::new(
            PromptKind::TouchDevice,
            Step::ResetFido,
            "Touch the device now",
        ));
        let sent = b.clone();
        Next::Batch(
            Unlock::FidoReset(AwaitFidoReset {
                plan: self.plan,
                puk: self.puk,
                sent,
            }),
            b,
        )
    }
}

impl AwaitFidoReset {
    /// The PIV unlock stands whatever the reset answered.
    fn on_responses(self, responses: &[Response]) -> UnlockEnd {
        let fido = match check(&self.sent, responses).map(|r| r[0].data.first().copied()) {
            Ok(Some(0x00)) => FidoOutcome::Reset,
            Ok(Some(0x27)) => {
                FidoOutcome::StillBlocked("the reset was declined at the device".into())
            }
            Ok(Some(s)) => FidoOutcome::StillBlocked(format!(
                "the device refused the reset (CTAP status {s:02X}): it must come within 10 seconds of inserting the device, with a touch"
            )),
            Ok(None) => FidoOutcome::StillBlocked("the device gave no CTAP status".into()),
            Err(f) => FidoOutcome::StillBlocked(f.message),
        };
        UnlockEnd {
            result: Ok(()),
            puk: self.puk,
            puk_blocked: false,
            fido,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_card::ctap::platform::{get_key_agreement_request, PinSession};
    use keyward_card::ctap::{permission, ClientPinRequest, PinProtocol};
    use keyward_vcard::fido::AlwaysPresent;
    use keyward_vcard::{Firmware, ProfileKind, VcardConfig, VirtualCard};

    fn run(card: &mut VirtualCard, batch: &Batch) -> Vec<Response> {
        let mut out = Vec::new();
        for c in &batch.commands {
            let r = match c.channel {
                crate::batch::Channel::Ctap => Response {
                    data: card.fido_request(&c.bytes, &mut AlwaysPresent),
                    sw: 0x9000,
                },
                crate::batch::Channel::Piv => Response::from_apdu(&card.transmit(&c.bytes)),
            };
            let stop = !c.expect.contains(&r.sw);
            out.push(r);
            if stop {
                break;
            }
        }
        out
    }

    fn card(profile: ProfileKind, serial: u32, firmware: Firmware) -> VirtualCard {
        let dir = tempfile::tempdir().unwrap();
        let mut c = VirtualCard::new(
            VcardConfig::new(profile)
                .with_serial(serial)
                .with_firmware(firmware)
                .with_ca_dir(dir.path()),
        )
        .unwrap();
        c.power_on();
        c
    }

    fn plan(device_type: DeviceType, serial: u64, puk: Known<Secret>) -> UnlockPlan {
        UnlockPlan {
            device_type,
            serial,
            firmware: Some((5, 7, 1)),
            puk,
            new_puk: Secret::new("87654321"),
            fido: FidoPin::Absent,
        }
    }

    /// clientPIN on the card: the CTAP status and the answer.
    fn client_pin(
        card: &mut VirtualCard,
        req: &ClientPinRequest,
    ) -> (u8, Option<ClientPinResponse>) {
        let out = card.fido_request(
            &ctap::encode_request(command::CLIENT_PIN, Some(&req.to_value())),
            &mut AlwaysPresent,
        );
        let body = (out[0] == 0)
            .then(|| ctap::split_response(&out).unwrap())
            .flatten()
            .map(|v| ClientPinResponse::from_value(&v).unwrap());
        (out[0], body)
    }

    fn pin_session(card: &mut VirtualCard) -> PinSession {
        let (_, r) = client_pin(card, &get_key_agreement_request(PinProtocol::V2));
        PinSession::new(
            PinProtocol::V2,
            &r.unwrap().key_agreement.unwrap(),
            &mut rand::rngs::OsRng,
        )
        .unwrap()
    }

    fn set_fido_pin(card: &mut VirtualCard, pin: &str) {
        let s = pin_session(card);
        let req = s.set_pin_request(pin, &mut rand::rngs::OsRng).unwrap();
        assert_eq!(client_pin(card, &req).0, 0);
    }

    /// A wrong FIDO PIN: the CTAP status.
    fn wrong_fido_pin(card: &mut VirtualCard) -> u8 {
        let s = pin_session(card);
        let req = s
            .get_token_with_permissions_request(
                "000000",
                permission::MAKE_CREDENTIAL,
                Some("example.com"),
                &mut rand::rngs::OsRng,
            )
            .unwrap();
        client_pin(card, &req).0
    }

    /// Runs an unlock to its end with these answers.
    fn unlock_with(
        card: &mut VirtualCard,
        plan: UnlockPlan,
        answers: &[(&str, &str)],
    ) -> (UnlockEnd, u32) {
        let (mut s, mut b) = Unlock::start(plan);
        let answers: BTreeMap<String, String> = answers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut trips = 0;
        loop {
            let responses = if b.commands.is_empty() {
                if answers.contains_key("reinsert_device") {
                    card.power_on();
                }
                vec![]
            } else {
                trips += 1;
                run(card, &b)
            };
            match s.on_result(&responses, &answers, false) {
                Next::Batch(n, nb) => (s, b) = (n, nb),
                Next::End(e) => return (e, trips),
            }
        }
    }

    /// A YubiKey with its own FIDO PIN: three wrong tries need a power
    /// cycle (said, nothing reset); eight block it, and only the reset the
    /// person confirms clears it (declined: the PIV unlock stands).
    #[test]
    fn a_blocked_fido_pin_is_told_from_one_that_needs_a_reinsert_and_reset_when_confirmed() {
        let mut c = card(ProfileKind::Yubikey5, 31_000_502, Firmware(5, 7, 1));
        set_fido_pin(&mut c, "135792");
        for _ in 0..2 {
            assert_eq!(wrong_fido_pin(&mut c), 0x31, "PIN_INVALID");
        }
        assert_eq!(wrong_fido_pin(&mut c), 0x34, "PIN_AUTH_BLOCKED");
        let mut p = plan(
            DeviceType::YubiKey5,
            31_000_502,
            Known::sure(Secret::new("12345678")),
        );
        p.fido = FidoPin::Own;
        let (end, trips) = unlock_with(&mut c, p.clone(), &[("set_new_pin", "24681357")]);
        assert!(end.result.is_ok(), "{:?}", end.result.err());
        assert_eq!((end.fido, trips), (FidoOutcome::NeedsReinsert, 2));
        // Blocked for good: 3 + 3 + 2 wrong tries with power cycles between.
        for tries in [3, 2] {
            c.power_on();
            for _ in 0..tries {
                wrong_fido_pin(&mut c);
            }
        }
        c.power_on();
        assert_eq!(wrong_fido_pin(&mut c), 0x32, "PIN_BLOCKED");
        p.puk = end.puk;
        let (end, _) = unlock_with(
            &mut c,
            p.clone(),
            &[("set_new_pin", "24681357"), ("confirm_touch", "false")],
        );
        assert!(end.result.is_ok(), "the PIV unlock stands");
        assert!(
            matches!(&end.fido, FidoOutcome::StillBlocked(why) if why.contains("declined")),
            "{:?}",
            end.fido
        );
        p.puk = end.puk;
        let (end, trips) = unlock_with(
            &mut c,
            p,
            &[
                ("set_new_pin", "24681357"),
                ("reinsert_device", "done"),
                ("confirm_touch", "true"),
            ],
        );
        assert!(end.result.is_ok(), "{:?}", end.result.err());
        assert_eq!((end.fido, trips), (FidoOutcome::Reset, 3));
        let (_, r) = client_pin(
            &mut c,
            &ctap::platform::get_pin_retries_request(PinProtocol::V1),
        );
        assert_eq!(r.unwrap().pin_retries, Some(8), "a reset FIDO application");
    }

    /// A C4000 sharing its PIN: one counter, nothing read of FIDO.
    #[test]
    fn a_shared_fido_pin_is_not_looked_at() {
        let (s, _) = Unlock::start(UnlockPlan {
            fido: FidoPin::Shared,
            ..plan(
                DeviceType::C4000,
                41_000_501,
                Known::sure(Secret::new("12345678")),
            )
        });
        let answers = BTreeMap::from([("set_new_pin".to_string(), "24681357".to_string())]);
        match s.on_result(&[], &answers, false) {
            Next::Batch(_, check) => assert!(check
                .commands
                .iter()
                .all(|c| c.channel == crate::batch::Channel::Piv)),
            Next::End(_) => panic!("the check batch comes next"),
        }
    }

    fn block_pin(card: &mut VirtualCard) {
        for _ in 0..3 {
            card.transmit(&piv::select_piv().to_bytes());
            card.transmit(
                &piv::verify(key_ref::PIN, Some(b"000000"))
                    .unwrap()
                    .to_bytes(),
            );
        }
    }

    /// Runs an unlock to its end with `pin` as the answer.
    fn unlock(card: &mut VirtualCard, plan: UnlockPlan, pin: &str) -> (UnlockEnd, u32) {
        let (mut s, mut b) = Unlock::start(plan);
        let answers = BTreeMap::from([("set_new_pin".to_string(), pin.to_string())]);
        let mut trips = 0;
        loop {
            let responses = if b.commands.is_empty() {
                vec![]
            } else {
                trips += 1;
                run(card, &b)
            };
            match s.on_result(&responses, &answers, false) {
                Next::Batch(n, nb) => (s, b) = (n, nb),
                Next::End(e) => return (e, trips),
            }
        }
    }

    #[test]
    fn a_blocked_pin_is_reset_in_two_round_trips_and_the_puk_replaced() {
        let mut c = card(ProfileKind::Yubikey5, 31_000_500, Firmware(5, 7, 1));
        block_pin(&mut c);
        let (end, trips) = unlock(
            &mut c,
            plan(
                DeviceType::YubiKey5,
                31_000_500,
                Known::sure(Secret::new("12345678")),
            ),
            "24681357",
        );
        assert!(end.result.is_ok(), "{:?}", end.result.err());
        assert_eq!(trips, 2);
        assert_eq!(end.puk, Known::sure(Secret::new("87654321")));
        c.transmit(&piv::select_piv().to_bytes());
        let r = c.transmit(
            &piv::verify(key_ref::PIN, Some(b"24681357"))
                .unwrap()
                .to_bytes(),
        );
        assert_eq!(&r[r.len() - 2..], &[0x90, 0x00], "the new PIN works");
    }

    #[test]
    fn another_device_a_wrong_puk_and_a_blocked_one_are_told_apart() {
        let mut c = card(ProfileKind::Yubikey5, 31_000_501, Firmware(5, 7, 1));
        let (end, _) = unlock(
            &mut c,
            plan(
                DeviceType::YubiKey5,
                31_000_999,
                Known::sure(Secret::new("12345678")),
            ),
            "24681357",
        );
        assert_eq!(end.result.unwrap_err().code, FailureCode::DeviceMismatch);
        // A wrong PUK with an alternative: the alternative comes first next.
        let uncertain = Known {
            value: Secret::new("11111111"),
            alternative: Some(Secret::new("12345678")),
        };
        let (end, _) = unlock(
            &mut c,
            plan(DeviceType::YubiKey5, 31_000_501, uncertain),
            "24681357",
        );
        assert_eq!(end.result.as_ref().unwrap_err().code, FailureCode::WrongPuk);
        assert_eq!(end.puk.value, Secret::new("12345678"));
        // Two tries spent: the last is never spent on an uncertain PUK.
        let (end, _) = unlock(
            &mut c,
            plan(
                DeviceType::YubiKey5,
                31_000_501,
                Known {
                    value: Secret::new("22222222"),
                    alternative: Some(Secret::new("12345678")),
                },
            ),
            "24681357",
        );
        assert_eq!(end.result.as_ref().unwrap_err().code, FailureCode::WrongPuk);
        let (end, trips) = unlock(
            &mut c,
            plan(
                DeviceType::YubiKey5,
                31_000_501,
                Known {
                    value: Secret::new("33333333"),
                    alternative: Some(Secret::new("12345678")),
                },
            ),
            "24681357",
        );
        assert_eq!(
            end.result.as_ref().unwrap_err().code,
            FailureCode::PukUncertain
        );
        assert_eq!(trips, 1, "refused after reading the tries");
        // A sure but wrong PUK spends it: blocked, and said so.
        let (end, _) = unlock(
            &mut c,
            plan(
                DeviceType::YubiKey5,
                31_000_501,
                Known::sure(Secret::new("44444444")),
            ),
            "24681357",
        );
        assert!(end.puk_blocked);
        let (end, trips) = unlock(
            &mut c,
            plan(
                DeviceType::YubiKey5,
                31_000_501,
                Known::sure(Secret::new("12345678")),
            ),
            "24681357",
        );
        assert_eq!(
            end.result.as_ref().unwrap_err().code,
            FailureCode::PukBlocked
        );
        assert!(end.puk_blocked);
        assert_eq!(trips, 1);
    }

    #[test]
    fn a_c4000_is_identified_by_its_cplc_and_unlocked() {
        let mut c = card(ProfileKind::C4000, 41_000_500, Firmware(1, 0, 0));
        block_pin(&mut c);
        let mut p = plan(
            DeviceType::C4000,
            41_000_500,
            Known::sure(Secret::new("12345678")),
        );
        p.firmware = Some((1, 0, 0));
        let (end, trips) = unlock(&mut c, p, "24681357");
        assert!(end.result.is_ok(), "{:?}", end.result.err());
        assert_eq!(trips, 2);
        // An uncertain PUK on a device that cannot tell its tries: refused.
        let mut p = plan(
            DeviceType::C4000,
            41_000_500,
            Known {
                value: Secret::new("87654321"),
                alternative: Some(Secret::new("12345678")),
            },
        );
        p.firmware = Some((1, 0, 0));
        let (end, _) = unlock(&mut c, p, "24681357");
        assert_eq!(end.result.unwrap_err().code, FailureCode::PukUncertain);
    }
}
