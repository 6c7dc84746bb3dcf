//! Recycle: a device back to factory state, so it can be issued again.
//!
//! ```text
//! YubiKey 5     batch 1: SELECT PIV, GET SERIAL, GET VERSION, wrong VERIFY
//!                        until the PIN blocks, wrong RESET RETRY COUNTER
//!                        until the PUK blocks, RESET (INS FB), VERIFY of
//!                        the factory PIN (proves the reset)
//!                        (a PIN that takes more tries than sent: another
//!                        round of the same)
//! C4000, PIV    batch 1: [CPLC] SELECT PIV, management-key witness request
//!               batch 2: mutual authentication, GENERATE over each slot
//!                        (the old keys are gone), PUT DATA empty for the
//!                        certificates, CHUID and CCC (deleted), RESET RETRY
//!                        COUNTER with the PUK to the factory PIN, CHANGE PUK
//!                        to the factory PUK, [C4000 vendor commands: retry
//!                        counts 3/3, PIN not shared, factory management key],
//!                        VERIFY of the factory PIN
//! FIDO (when the device's policy used it): a prompt batch
//!                        (`reinsert_device`, `confirm_touch`), then
//!                        authenticatorReset, which the device accepts only
//!                        within seconds of power-up and with a touch
//! ```
//!
//! A management key or PUK whose last change had an unknown effect (the
//! device went away mid-command) has an alternative: when the likelier value
//! is refused, the recycle starts over once with the other.

use std::collections::BTreeMap;

use keyward_card::piv::{self, alg, dyn_auth, key_ref, object};
use keyward_domain::DeviceType;
use rand_core::RngCore;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::batch::{check, Batch, Failure, Response};
use crate::failure::{FailureCode, Step};
use crate::knowledge::Known;
use crate::mgmt_key::ManagementKey;
use crate::piv::Secret;
use crate::plan::{FACTORY_PIN, FACTORY_PUK};
use crate::prompt::{touch_confirmed, Prompt, PromptKind};

const OK: &[u16] = &[0x9000];
/// Wrong tries sent per round: the most a C4000 counter holds and more
/// than any Keyward policy sets; a YubiKey set higher takes more rounds.
const BLOCK_TRIES: usize = 15;
/// Rounds of blocking before giving up (a YubiKey counter holds up to 255).
const MAX_BLOCK_ROUNDS: u8 = 18;
/// CTAP authenticatorReset.
const CTAP_RESET: u8 = 0x07;
/// The PIV key slots a recycle replaces on devices without a reset command.
pub const KEY_SLOTS: [u8; 4] = [0x9A, 0x9C, 0x9D, 0x9E];

/// What the server knows of the device before the wipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecyclePlan {
    pub device_type: DeviceType,
    pub serial: u64,
    /// The firmware the inventory records (YubiKey: checked with GET VERSION).
    pub firmware: Option<(u8, u8, u8)>,
    /// The management key on the device now (C4000 and PIV).
    pub management_key: Known<ManagementKey>,
    /// The PUK on the device now (C4000 and PIV: it resets the PIN).
    pub puk: Known<Secret>,
    /// The management key a factory-new device of this type has.
    pub factory_management_key: ManagementKey,
    /// Reset the FIDO application too (the device has one and its policy used it).
    pub fido_reset: bool,
}

/// The device's secrets after the recycle: factory values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recycled {
    pub management_key: ManagementKey,
    pub pin: Secret,
    pub puk: Secret,
}

/// A recycle between round trips, one type per state (sealed by the
/// server: it holds keys).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "Sealed", into = "Sealed")]
pub enum Recycling {
    /// YubiKey: the PIN and PUK blocked, the reset, the check.
    YubiKeyWipe(YubiKeyWipe),
    /// C4000 and PIV: the witness is requested.
    Witness(AwaitWitness),
    /// C4000 and PIV: the wipe under the management key.
    Wipe(AwaitWipe),
    /// The person is asked to reinsert and touch the device.
    FidoPrompt(AwaitTouch),
    /// authenticatorReset is out.
    FidoReset(AwaitReset),
}

/// What every state carries: the plan, the batch out, and how often the
/// recycle started over with an alternative secret (at most once each).
#[derive(Debug, Clone)]
struct Carry {
    plan: RecyclePlan,
    sent: Batch,
    restarts: u8,
}

#[derive(Debug, Clone)]
pub struct YubiKeyWipe {
    carry: Carry,
    /// Rounds of blocking sent so far.
    rounds: u8,
}

#[derive(Debug, Clone)]
pub struct AwaitWitness {
    carry: Carry,
}

#[derive(Debug, Clone)]
pub struct AwaitWipe {
    carry: Carry,
    challenge: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct AwaitTouch {
    carry: Carry,
}

#[derive(Debug, Clone)]
pub struct AwaitReset {
    carry: Carry,
}

/// Where a result leads.
pub enum Next {
    Batch(Recycling, Batch),
    Done(Recycled),
}

fn apdu(c: keyward_card::apdu::CommandApdu) -> Vec<u8> {
    c.to_bytes()
}

fn wrong_tries() -> Vec<u16> {
    let mut v: Vec<u16> = (0..16).map(|n| 0x63C0 | n).collect();
    v.push(0x6983);
    v
}

/// A PIN or PUK no policy allows (8 zero bytes): a try that always fails.
const WRONG: [u8; 8] = [0; 8];

impl Recycling {
    pub fn start(plan: RecyclePlan) -> (Recycling, Batch) {
        let carry = |sent: &Batch| Carry {
            plan: plan.clone(),
            sent: sent.clone(),
            restarts: 0,
        };
        match plan.device_type {
            DeviceType::YubiKey5 => {
                let b = yubikey_wipe(true);
                let carry = carry(&b);
                (Recycling::YubiKeyWipe(YubiKeyWipe { carry, rounds: 1 }), b)
            }
            _ => {
                let b = witness_batch(&plan);
                let carry = carry(&b);
                (Recycling::Witness(AwaitWitness { carry }), b)
            }
        }
    }

    pub fn plan(&self) -> &RecyclePlan {
        let carry = match self {
            Recycling::YubiKeyWipe(s) => &s.carry,
            Recycling::Witness(s) => &s.carry,
            Recycling::Wipe(s) => &s.carry,
            Recycling::FidoPrompt(s) => &s.carry,
            Recycling::FidoReset(s) => &s.carry,
        };
        &carry.plan
    }

    /// The responses (or, for a prompt batch, the answers) to the batch out now.
    /// `rng`: the mutual authentication's challenge.
    pub fn on_result(
        self,
        responses: &[Response],
        answers: &BTreeMap<String, String>,
        rng: &mut dyn RngCore,
    ) -> Result<Next, Failure> {
        match self {
            Recycling::YubiKeyWipe(s) => s.on_responses(responses),
            Recycling::Witness(s) => s.on_responses(responses, rng),
            Recycling::Wipe(s) => s.on_responses(responses),
            Recycling::FidoPrompt(s) => s.on_answers(answers),
            Recycling::FidoReset(s) => s.on_responses(responses),
        }
    }
}

impl YubiKeyWipe {
    fn on_responses(self, responses: &[Response]) -> Result<Next, Failure> {
        let checked = check(&self.carry.sent, responses);
        if self.rounds == 1 {
            identify_yubikey(self.carry.plan.serial, responses)?;
        }
        match checked {
            Ok(_) => self.carry.piv_done(),
            // More tries left than were sent: block on.
            Err(f) if f.step == Step::ResetPiv && f.sw == Some(0x6985) => {
                if self.rounds >= MAX_BLOCK_ROUNDS {
                    return Err(Failure::new(
                        FailureCode::DeviceNotBlocked,
                        Step::ResetPiv,
                        "the PIN and PUK did not block: the device refuses the reset",
                    ));
                }
                let rounds = self.rounds + 1;
                self.carry.send(yubikey_wipe(false), |carry| {
                    Recycling::YubiKeyWipe(YubiKeyWipe { carry, rounds })
                })
            }
            Err(f) => Err(f),
        }
    }
}

impl AwaitWitness {
    fn on_responses(self, responses: &[Response], rng: &mut dyn RngCore) -> Result<Next, Failure> {
        let carry = self.carry;
        let responses = match check(&carry.sent, responses) {
            Ok(r) => r,
            Err(f) => return carry.start_over_or(f),
        };
        if carry.plan.device_type == DeviceType::C4000 {
            identify_c4000(carry.plan.serial, &responses[0].data)?;
        }
        let m = &carry.plan.management_key.value;
        let step = Step::AuthenticateManagementKey;
        let witness_enc = piv::parse_general_authenticate_response(
            &responses[responses.len() - 1].data,
            dyn_auth::WITNESS,
        )
        .ok_or_else(|| Failure::new(FailureCode::BadResponse, step, "no witness"))?;
        let witness = m.decrypt_block(witness_enc).ok_or_else(|| {
            Failure::new(
                FailureCode::BadResponse,
                step,
                "witness length does not match the key",
            )
        })?;
        let mut challenge = vec![0u8; m.algorithm.block_len()];
        rng.fill_bytes(&mut challenge);
        let b = carry.wipe_batch(&witness, &challenge)?;
        carry.send(b, |carry| Recycling::Wipe(AwaitWipe { carry, challenge }))
    }
}

impl AwaitWipe {
    fn on_responses(self, responses: &[Response]) -> Result<Next, Failure> {
        let responses = match check(&self.carry.sent, responses) {
            Ok(r) => r,
            Err(f) => return self.carry.start_over_or(f),
        };
        let m = &self.carry.plan.management_key.value;
        let step = Step::AuthenticateManagementKey;
        let answer =
            piv::parse_general_authenticate_response(&responses[0].data, dyn_auth::RESPONSE)
                .ok_or_else(|| Failure::new(FailureCode::BadResponse, step, "no response"))?;
        let expected = m
            .encrypt_block(&self.challenge)
            .ok_or_else(|| Failure::new(FailureCode::BadResponse, step, "challenge length"))?;
        if !bool::from(expected.ct_eq(answer)) {
            return Err(Failure::new(
                FailureCode::DeviceNotAuthentic,
                step,
                "the device failed mutual authentication",
            ));
        }
        self.carry.piv_done()
    }
}

impl AwaitTouch {
    fn on_answers(self, answers: &BTreeMap<String, String>) -> Result<Next, Failure> {
        let touch = answers
            .get(PromptKind::ConfirmTouch.as_str())
            .map(String::as_str)
            .unwrap_or("");
        touch_confirmed(touch, Step::ResetFido)?;
        let mut b = Batch::default();
        b.push_ctap(Step::ResetFido, vec![CTAP_RESET]);
        b.prompts.push(Prompt::new(
            PromptKind::TouchDevice,
            Step::ResetFido,
            "Touch the device now",
        ));
        self.carry
            .send(b, |carry| Recycling::FidoReset(AwaitReset { carry }))
    }
}

impl AwaitReset {
    fn on_responses(self, responses: &[Response]) -> Result<Next, Failure> {
        let responses = check(&self.carry.sent, responses)?;
        match responses[0].data.first() {
            Some(0x00) => Ok(Next::Done(self.carry.recycled())),
            Some(&s) => Err(Failure::new(
                if s == 0x27 {
                    FailureCode::DeclinedByPerson
                } else {
                    FailureCode::FidoResetFailed
                },
                Step::ResetFido,
                format!("authenticatorReset answered CTAP status {s:02X} (the reset must come within seconds of reinserting the device, with a touch)"),
            )),
            None => Err(Failure::new(
                FailureCode::BadResponse,
                Step::ResetFido,
                "no CTAP status",
            )),
        }
    }
}

impl Carry {
    /// The next state, with `batch` out.
    fn send(
        mut self,
        batch: Batch,
        state: impl FnOnce(Carry) -> Recycling,
    ) -> Result<Next, Failure> {
        self.sent = batch.clone();
        Ok(Next::Batch(state(self), batch))
    }

    /// A refused secret with an alternative: start over once with it;
    /// otherwise the failure stands.
    fn start_over_or(mut self, f: Failure) -> Result<Next, Failure> {
        let swapped = match (f.step, f.sw) {
            // A wrong key, or a key of another algorithm than the device's.
            (Step::AuthenticateManagementKey, Some(0x6982 | 0x6A80 | 0x6A86)) => {
                self.plan.management_key.swap()
            }
            (Step::ResetPin, Some(sw)) if sw & 0xFFF0 == 0x63C0 => self.plan.puk.swap(),
            _ => false,
        };
        if !swapped || self.restarts >= 2 {
            return Err(f);
        }
        self.restarts += 1;
        let b = witness_batch(&self.plan);
        self.send(b, |carry| Recycling::Witness(AwaitWitness { carry }))
    }

    /// The PIV application is wiped: the FIDO reset next, or the end.
    fn piv_done(self) -> Result<Next, Failure> {
        if !self.plan.fido_reset {
            return Ok(Next::Done(self.recycled()));
        }
        let b = Batch::prompts(vec![
            Prompt::new(
                PromptKind::ReinsertDevice,
                Step::ResetFido,
                "Remove the device and insert it again",
            ),
            Prompt::new(
                PromptKind::ConfirmTouch,
                Step::ResetFido,
                "Confirm, then touch the device when it blinks: its passkeys will be erased",
            ),
        ]);
        self.send(b, |carry| Recycling::FidoPrompt(AwaitTouch { carry }))
    }

    fn recycled(&self) -> Recycled {
        let management_key = match self.plan.device_type {
            // Reset, or the vendor command, restores the factory key.
            DeviceType::YubiKey5 | DeviceType::C4000 => self.plan.factory_management_key.clone(),
            DeviceType::Piv => self.plan.management_key.value.clone(),
        };
        Recycled {
            management_key,
            pin: Secret::new(FACTORY_PIN),
            puk: Secret::new(FACTORY_PUK),
        }
    }

    fn wipe_batch(&self, witness: &[u8], challenge: &[u8]) -> Result<Batch, Failure> {
        let p = &self.plan;
        let m = &p.management_key.value;
        let mut b = Batch::default();
        b.push(
            Step::AuthenticateManagementKey,
            apdu(piv::general_authenticate(
                m.algorithm.id(),
                key_ref::MANAGEMENT,
                &[
                    (dyn_auth::WITNESS, witness),
                    (dyn_auth::CHALLENGE, challenge),
                    (dyn_auth::RESPONSE, &[]),
                ],
            )),
            OK,
            true,
        );
        // A new key over each slot: the user's keys are gone for good.
        for slot in KEY_SLOTS {
            b.push(
                Step::ReplaceKey(slot),
                apdu(piv::generate(
                    alg::ECC_P256,
                    slot,
                    piv::policy::PIN_DEFAULT,
                    piv::policy::TOUCH_DEFAULT,
                )),
                OK,
                false,
            );
        }
        for slot in KEY_SLOTS {
            let tag = object::cert_for_slot(slot).expect("a standard slot");
            b.push(
                Step::DeleteCertificate(slot),
                apdu(piv::put_data(tag, &[])),
                OK,
                false,
            );
        }
        for (tag, step) in [
            (object::CHUID, Step::DeleteChuid),
            (object::CCC, Step::DeleteCcc),
        ] {
            b.push(step, apdu(piv::put_data(tag, &[])), OK, false);
        }
        let bad = || {
            Failure::new(
                FailureCode::BadPlan,
                Step::ResetPin,
                "PINs and PUKs are at most 8 bytes",
            )
        };
        b.push(
            Step::ResetPin,
            apdu(
                piv::reset_retry_counter(p.puk.value.expose().as_bytes(), FACTORY_PIN.as_bytes())
                    .ok_or_else(bad)?,
            ),
            OK,
            true,
        );
        b.push(
            Step::ResetPuk,
            apdu(
                piv::change_reference_data(
                    key_ref::PUK,
                    p.puk.value.expose().as_bytes(),
                    FACTORY_PUK.as_bytes(),
                )
                .ok_or_else(bad)?,
            ),
            OK,
            true,
        );
        if p.device_type == DeviceType::C4000 {
            // The vendor commands of the C4000 profile (docs/vcard.md V1-V3):
            // factory retry counts, PIN not shared with FIDO, factory key last.
            b.push(Step::ResetRetryCounts, vec![0x80, 0xE2, 3, 3], OK, false);
            b.push(Step::ResetPinSharing, vec![0x80, 0xE3, 0, 0], OK, false);
            let f = &p.factory_management_key;
            let mut data = vec![f.algorithm.id(), key_ref::MANAGEMENT, f.bytes().len() as u8];
            data.extend_from_slice(f.bytes());
            b.push(
                Step::RestoreManagementKey,
                apdu(keyward_card::apdu::CommandApdu::new(0x80, 0xE1, 0, 0).with_data(data)),
                OK,
                true,
            );
        }
        b.push(
            Step::CheckFactoryPin,
            apdu(piv::verify(key_ref::PIN, Some(FACTORY_PIN.as_bytes())).expect("6 digits")),
            OK,
            true,
        );
        Ok(b)
    }
}

/// The sealed form of a recycle (as sessions sealed before the states were
/// types carry it).
#[derive(Serialize, Deserialize)]
struct Sealed {
    plan: RecyclePlan,
    stage: SealedStage,
    sent: Batch,
    restarts: u8,
}

#[derive(Serialize, Deserialize)]
enum SealedStage {
    YubiKeyWipe { rounds: u8 },
    Witness,
    Wipe { challenge: Vec<u8> },
    FidoPrompt,
    FidoReset,
}

impl From<Sealed> for Recycling {
    fn from(s: Sealed) -> Recycling {
        let carry = Carry {
            plan: s.plan,
            sent: s.sent,
            restarts: s.restarts,
        };
        match s.stage {
            SealedStage::YubiKeyWipe { rounds } => {
                Recycling::YubiKeyWipe(YubiKeyWipe { carry, rounds })
            }
            SealedStage::Witness => Recycling::Witness(AwaitWitness { carry }),
            SealedStage::Wipe { challenge } => Recycling::Wipe(AwaitWipe { carry, challenge }),
            SealedStage::FidoPrompt => Recycling::FidoPrompt(AwaitTouch { carry }),
            SealedStage::FidoReset => Recycling::FidoReset(AwaitReset { carry }),
        }
    }
}

impl From<Recycling> for Sealed {
    fn from(r: Recycling) -> Sealed {
        let (carry, stage) = match r {
            Recycling::YubiKeyWipe(s) => (s.carry, SealedStage::YubiKeyWipe { rounds: s.rounds }),
            Recycling::Witness(s) => (s.carry, SealedStage::Witness),
            Recycling::Wipe(s) => (
                s.carry,
                SealedStage::Wipe {
                    challenge: s.challenge,
                },
            ),
            Recycling::FidoPrompt(s) => (s.carry, SealedStage::FidoPrompt),
            Recycling::FidoReset(s) => (s.carry, SealedStage::FidoReset),
        };
        Sealed {
            plan: carry.plan,
            stage,
            sent: carry.sent,
            restarts: carry.restarts,
        }
    }
}

fn witness_batch(plan: &RecyclePlan) -> Batch {
    let mut b = Batch::default();
    if plan.device_type == DeviceType::C4000 {
        b.push(
            Step::IdentifyDevice,
            vec![0x80, 0xCA, 0x9F, 0x7F, 0x00],
            OK,
            false,
        );
    }
    b.push(Step::SelectPiv, apdu(piv::select_piv()), OK, false);
    b.push(
        Step::AuthenticateManagementKey,
        apdu(piv::general_authenticate(
            plan.management_key.value.algorithm.id(),
            key_ref::MANAGEMENT,
            &[(dyn_auth::WITNESS, &[])],
        )),
        OK,
        false,
    );
    b
}

/// YubiKey: block the PIN and the PUK with tries that always fail, then
/// RESET, then prove the factory PIN works. `identify`: the first round
/// also selects PIV and reads the serial and firmware.
fn yubikey_wipe(identify: bool) -> Batch {
    let mut b = Batch::default();
    b.push(Step::SelectPiv, apdu(piv::select_piv()), OK, false);
    if identify {
        b.push(Step::IdentifyDevice, apdu(piv::yk_get_serial()), OK, false);
        b.push(Step::IdentifyDevice, apdu(piv::yk_get_version()), OK, false);
    }
    let wrong = wrong_tries();
    for _ in 0..BLOCK_TRIES {
        b.push(
            Step::BlockPin,
            apdu(piv::verify(key_ref::PIN, Some(&WRONG)).expect("8 bytes")),
            &wrong,
            false,
        );
    }
    for _ in 0..BLOCK_TRIES {
        b.push(
            Step::BlockPuk,
            apdu(piv::reset_retry_counter(&WRONG, FACTORY_PIN.as_bytes()).expect("8 bytes")),
            &wrong,
            false,
        );
    }
    b.push(Step::ResetPiv, apdu(piv::yk_reset()), OK, false);
    b.push(
        Step::CheckFactoryPin,
        apdu(piv::verify(key_ref::PIN, Some(FACTORY_PIN.as_bytes())).expect("6 digits")),
        OK,
        true,
    );
    b
}

/// The serial a YubiKey's GET SERIAL (the second response of a batch that
/// begins SELECT PIV, GET SERIAL) gives must be `expected`.
pub(crate) fn identify_yubikey(expected: u64, responses: &[Response]) -> Result<(), Failure> {
    let serial = responses
        .get(1)
        .filter(|r| r.sw == 0x9000)
        .and_then(|r| r.data.get(..4))
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as u64);
    match serial {
        Some(s) if s == expected => Ok(()),
        Some(s) => Err(Failure::new(
            FailureCode::DeviceMismatch,
            Step::IdentifyDevice,
            format!(
                "the device in the reader has serial {s}, not {}: was it swapped?",
                expected
            ),
        )),
        None => Err(Failure::new(
            FailureCode::BadResponse,
            Step::IdentifyDevice,
            "the device did not return its serial number",
        )),
    }
}

/// The serial in a C4000's CPLC data (GET DATA 9F7F) must be `expected`.
pub(crate) fn identify_c4000(expected: u64, cplc: &[u8]) -> Result<(), Failure> {
    let cplc = keyward_card::tlv::find(cplc, 0x9F7F).unwrap_or(cplc);
    match cplc
        .get(12..16)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as u64)
    {
        Some(s) if s == expected => Ok(()),
        Some(s) => Err(Failure::new(
            FailureCode::DeviceMismatch,
            Step::IdentifyDevice,
            format!(
                "the device in the reader has serial {s}, not {}: was it swapped?",
                expected
            ),
        )),
        None => Err(Failure::new(
            FailureCode::BadResponse,
            Step::IdentifyDevice,
            "the device did not return its CPLC data",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mgmt_key::MgmtAlgorithm;
    use keyward_vcard::{Firmware, ProfileKind, VcardConfig, VirtualCard};

    fn run(card: &mut VirtualCard, batch: &Batch) -> Vec<Response> {
        let mut out = Vec::new();
        for c in &batch.commands {
            let r = Response::from_apdu(&card.transmit(&c.bytes));
            let stop = !c.expect.contains(&r.sw);
            out.push(r);
            if stop {
                break;
            }
        }
        out
    }

    fn ok(card: &mut VirtualCard, apdu: keyward_card::apdu::CommandApdu) {
        let r = card.transmit(&apdu.to_bytes());
        assert_eq!(&r[r.len() - 2..], &[0x90, 0x00], "{apdu:?}");
    }

    fn drive(card: &mut VirtualCard, plan: RecyclePlan) -> (Recycled, usize) {
        let (mut state, mut batch) = Recycling::start(plan);
        let mut trips = 0;
        loop {
            let responses = run(card, &batch);
            trips += 1;
            match state
                .on_result(&responses, &BTreeMap::new(), &mut rand::rngs::OsRng)
                .unwrap()
            {
                Next::Batch(s, b) => (state, batch) = (s, b),
                Next::Done(r) => return (r, trips),
            }
        }
    }

    fn factory_verify(card: &mut VirtualCard) -> Vec<u8> {
        card.transmit(&piv::select_piv().to_bytes());
        card.transmit(
            &piv::verify(key_ref::PIN, Some(b"123456"))
                .unwrap()
                .to_bytes(),
        )
    }

    #[test]
    fn a_yubikey_with_an_unknown_pin_is_reset_in_one_round_trip() {
        let ca = tempfile::tempdir().unwrap();
        let mut card = VirtualCard::new(
            VcardConfig::new(ProfileKind::Yubikey5)
                .with_firmware(Firmware(5, 7, 1))
                .with_serial(4242)
                .with_ca_dir(ca.path()),
        )
        .unwrap();
        card.power_on();
        ok(&mut card, piv::select_piv());
        ok(
            &mut card,
            piv::change_reference_data(key_ref::PIN, b"123456", b"735194").unwrap(),
        );
        ok(
            &mut card,
            piv::change_reference_data(key_ref::PUK, b"12345678", b"90817263").unwrap(),
        );
        let aes = ManagementKey::factory_default(MgmtAlgorithm::Aes192);
        let plan = RecyclePlan {
            device_type: DeviceType::YubiKey5,
            serial: 4242,
            firmware: Some((5, 7, 1)),
            management_key: Known::sure(aes.clone()),
            puk: Known::sure(Secret::new("unknown")),
            factory_management_key: aes,
            fido_reset: false,
        };
        let (done, trips) = drive(&mut card, plan.clone());
        assert_eq!((done.pin.expose(), trips), ("123456", 1));
        assert_eq!(factory_verify(&mut card), vec![0x90, 0x00]);
        // Another serial in the reader is refused before anything blocks.
        let mut other = plan;
        other.serial = 1;
        let (state, batch) = Recycling::start(other);
        let f = state
            .on_result(
                &run(&mut card, &batch),
                &BTreeMap::new(),
                &mut rand::rngs::OsRng,
            )
            .err()
            .unwrap();
        assert_eq!(f.code.as_str(), "device_mismatch");
    }

    #[test]
    fn a_c4000_gets_new_keys_no_objects_and_factory_secrets() {
        let ca = tempfile::tempdir().unwrap();
        let mut card = VirtualCard::new(
            VcardConfig::new(ProfileKind::C4000)
                .with_serial(4343)
                .with_ca_dir(ca.path()),
        )
        .unwrap();
        card.power_on();
        let tdes = ManagementKey::factory_default(MgmtAlgorithm::Tdes);
        let derived = ManagementKey::derive(b"m", 4343, MgmtAlgorithm::Aes192, 1);
        // Personalise by hand: management key, PUK, PIN, a certificate object.
        ok(&mut card, piv::select_piv());
        let w = card.transmit(
            &piv::general_authenticate(alg::TDES, key_ref::MANAGEMENT, &[(dyn_auth::WITNESS, &[])])
                .to_bytes(),
        );
        let witness = tdes
            .decrypt_block(
                piv::parse_general_authenticate_response(&w[..w.len() - 2], dyn_auth::WITNESS)
                    .unwrap(),
            )
            .unwrap();
        let r = card.transmit(
            &piv::general_authenticate(
                alg::TDES,
                key_ref::MANAGEMENT,
                &[
                    (dyn_auth::WITNESS, &witness),
                    (dyn_auth::CHALLENGE, &[1; 8]),
                    (dyn_auth::RESPONSE, &[]),
                ],
            )
            .to_bytes(),
        );
        assert_eq!(&r[r.len() - 2..], &[0x90, 0x00]);
        ok(
            &mut card,
            piv::put_data(
                object::AUTHENTICATION_CERT,
                &piv::cert_container(b"not really", false),
            ),
        );
        let mut data = vec![alg::AES_192, key_ref::MANAGEMENT, 24];
        data.extend_from_slice(derived.bytes());
        ok(
            &mut card,
            keyward_card::apdu::CommandApdu::new(0x80, 0xE1, 0, 0).with_data(data),
        );
        ok(
            &mut card,
            piv::change_reference_data(key_ref::PUK, b"12345678", b"90817263").unwrap(),
        );
        ok(
            &mut card,
            piv::change_reference_data(key_ref::PIN, b"123456", b"735194").unwrap(),
        );
        // The last management key change had an unknown effect: the factory
        // key is the likelier value, the derived one the alternative.
        let plan = RecyclePlan {
            device_type: DeviceType::C4000,
            serial: 4343,
            firmware: None,
            management_key: Known {
                value: tdes.clone(),
                alternative: Some(derived),
            },
            puk: Known::sure(Secret::new("90817263")),
            factory_management_key: tdes.clone(),
            fido_reset: false,
        };
        let (done, trips) = drive(&mut card, plan);
        assert_eq!(
            trips, 3,
            "witness refused (another algorithm), witness, wipe"
        );
        assert_eq!(done.management_key, tdes);
        assert_eq!(factory_verify(&mut card), vec![0x90, 0x00]);
        let r = card.transmit(&piv::get_data(object::AUTHENTICATION_CERT).to_bytes());
        assert_eq!(&r[r.len() - 2..], &[0x6A, 0x82], "the certificate is gone");
        // The factory PUK and management key work again.
        ok(
            &mut card,
            piv::change_reference_data(key_ref::PUK, b"12345678", b"12345678").unwrap(),
        );
    }

    /// A C4000 at factory values.
    fn factory_c4000(fido_reset: bool) -> RecyclePlan {
        let tdes = ManagementKey::factory_default(MgmtAlgorithm::Tdes);
        RecyclePlan {
            device_type: DeviceType::C4000,
            serial: 1,
            firmware: None,
            management_key: Known::sure(tdes.clone()),
            puk: Known::sure(Secret::new(FACTORY_PUK)),
            factory_management_key: tdes,
            fido_reset,
        }
    }

    #[test]
    fn a_declined_touch_fails_the_fido_reset() {
        let carry = Carry {
            plan: factory_c4000(true),
            sent: Batch::default(),
            restarts: 0,
        };
        let Next::Batch(state, b) = carry.piv_done().unwrap() else {
            panic!("a prompt batch")
        };
        assert!(b.awaits_answers());
        let kinds: Vec<_> = b.prompts.iter().map(|p| p.kind).collect();
        assert_eq!(
            kinds,
            [PromptKind::ReinsertDevice, PromptKind::ConfirmTouch]
        );
        let mut answers = BTreeMap::new();
        answers.insert("reinsert_device".to_string(), "done".to_string());
        answers.insert("confirm_touch".to_string(), "false".to_string());
        let f = state
            .clone()
            .on_result(&[], &answers, &mut rand::rngs::OsRng)
            .err()
            .unwrap();
        assert_eq!(f.code.as_str(), "declined_by_person");
        answers.insert("confirm_touch".to_string(), "true".to_string());
        let Next::Batch(_, b) = state
            .on_result(&[], &answers, &mut rand::rngs::OsRng)
            .unwrap()
        else {
            panic!("the reset batch")
        };
        assert_eq!(b.commands[0].bytes, vec![CTAP_RESET]);
        assert_eq!(b.prompts[0].kind, PromptKind::TouchDevice);
    }

    #[test]
    fn a_recycle_seals_as_before_its_states_were_types() {
        let (state, _) = Recycling::start(factory_c4000(false));
        let v = serde_json::to_value(&state).unwrap();
        assert_eq!(v["stage"], "Witness", "{v}");
        assert_eq!(v["restarts"], 0);
        let back: Recycling = serde_json::from_value(v).unwrap();
        assert!(matches!(back, Recycling::Witness(_)));
    }
}
