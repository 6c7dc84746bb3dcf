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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Stage {
    /// YubiKey: blocks, reset, check.
    YubiKeyWipe { rounds: u8 },
    /// C4000 and PIV: the witness is requested.
    Witness,
    /// C4000 and PIV: the wipe under the management key.
    Wipe { challenge: Vec<u8> },
    /// The person is asked to reinsert and touch the device.
    FidoPrompt,
    /// authenticatorReset is out.
    FidoReset,
}

/// A recycle between round trips (sealed by the server: it holds keys).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recycling {
    plan: RecyclePlan,
    stage: Stage,
    sent: Batch,
    /// Starts over with an alternative secret (at most once each).
    restarts: u8,
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
        let (stage, batch) = match plan.device_type {
            DeviceType::YubiKey5 => (Stage::YubiKeyWipe { rounds: 1 }, yubikey_wipe(true)),
            _ => (Stage::Witness, witness_batch(&plan)),
        };
        (
            Recycling {
                sent: batch.clone(),
                plan,
                stage,
                restarts: 0,
            },
            batch,
        )
    }

    pub fn plan(&self) -> &RecyclePlan {
        &self.plan
    }

    /// The responses (or, for a prompt batch, the answers) to the batch out now.
    /// `rng`: the mutual authentication's challenge.
    pub fn on_result(
        mut self,
        responses: &[Response],
        answers: &BTreeMap<String, String>,
        rng: &mut dyn RngCore,
    ) -> Result<Next, Failure> {
        match self.stage.clone() {
            Stage::YubiKeyWipe { rounds } => {
                let checked = check(&self.sent, responses);
                if rounds == 1 {
                    identify_yubikey(&self.plan, responses)?;
                }
                match checked {
                    Ok(_) => self.piv_done(),
                    // More tries left than were sent: block on.
                    Err(f) if f.step == "reset PIV" && f.sw == Some(0x6985) => {
                        if rounds >= MAX_BLOCK_ROUNDS {
                            return Err(Failure::new(
                                "device_not_blocked",
                                "reset PIV",
                                "the PIN and PUK did not block: the device refuses the reset",
                            ));
                        }
                        let b = yubikey_wipe(false);
                        self.stage = Stage::YubiKeyWipe { rounds: rounds + 1 };
                        self.sent = b.clone();
                        Ok(Next::Batch(self, b))
                    }
                    Err(f) => Err(f),
                }
            }
            Stage::Witness => {
                let responses = match check(&self.sent, responses) {
                    Ok(r) => r,
                    Err(f) => return self.start_over_or(f),
                };
                if self.plan.device_type == DeviceType::C4000 {
                    identify_c4000(&self.plan, &responses[0].data)?;
                }
                let m = &self.plan.management_key.value;
                let step = "authenticate management key";
                let witness_enc = piv::parse_general_authenticate_response(
                    &responses[responses.len() - 1].data,
                    dyn_auth::WITNESS,
                )
                .ok_or_else(|| Failure::new("bad_response", step, "no witness"))?;
                let witness = m.decrypt_block(witness_enc).ok_or_else(|| {
                    Failure::new(
                        "bad_response",
                        step,
                        "witness length does not match the key",
                    )
                })?;
                let mut challenge = vec![0u8; m.algorithm.block_len()];
                rng.fill_bytes(&mut challenge);
                let b = self.wipe_batch(&witness, &challenge)?;
                self.stage = Stage::Wipe { challenge };
                self.sent = b.clone();
                Ok(Next::Batch(self, b))
            }
            Stage::Wipe { challenge } => match check(&self.sent, responses) {
                Ok(responses) => {
                    let m = &self.plan.management_key.value;
                    let step = "authenticate management key";
                    let answer = piv::parse_general_authenticate_response(
                        &responses[0].data,
                        dyn_auth::RESPONSE,
                    )
                    .ok_or_else(|| Failure::new("bad_response", step, "no response"))?;
                    let expected = m
                        .encrypt_block(&challenge)
                        .ok_or_else(|| Failure::new("bad_response", step, "challenge length"))?;
                    if !bool::from(expected.ct_eq(answer)) {
                        return Err(Failure::new(
                            "device_not_authentic",
                            step,
                            "the device failed mutual authentication",
                        ));
                    }
                    self.piv_done()
                }
                Err(f) => self.start_over_or(f),
            },
            Stage::FidoPrompt => {
                let touch = answers
                    .get(PromptKind::ConfirmTouch.as_str())
                    .map(String::as_str)
                    .unwrap_or("");
                touch_confirmed(touch, "reset FIDO")?;
                let mut b = Batch::default();
                b.push_ctap("reset FIDO", vec![CTAP_RESET]);
                b.prompts.push(Prompt::new(
                    PromptKind::TouchDevice,
                    "reset FIDO",
                    "Touch the device now",
                ));
                self.stage = Stage::FidoReset;
                self.sent = b.clone();
                Ok(Next::Batch(self, b))
            }
            Stage::FidoReset => {
                let responses = check(&self.sent, responses)?;
                match responses[0].data.first() {
                    Some(0x00) => Ok(Next::Done(self.recycled())),
                    Some(&s) => Err(Failure::new(
                        if s == 0x27 {
                            "declined_by_person"
                        } else {
                            "fido_reset_failed"
                        },
                        "reset FIDO",
                        format!("authenticatorReset answered CTAP status {s:02X} (the reset must come within seconds of reinserting the device, with a touch)"),
                    )),
                    None => Err(Failure::new(
                        "bad_response",
                        "reset FIDO",
                        "no CTAP status",
                    )),
                }
            }
        }
    }

    /// A refused secret with an alternative: start over once with it;
    /// otherwise the failure stands.
    fn start_over_or(mut self, f: Failure) -> Result<Next, Failure> {
        let swapped = match (f.step.as_str(), f.sw) {
            // A wrong key, or a key of another algorithm than the device's.
            ("authenticate management key", Some(0x6982 | 0x6A80 | 0x6A86)) => {
                self.plan.management_key.swap()
            }
            ("reset PIN", Some(sw)) if sw & 0xFFF0 == 0x63C0 => self.plan.puk.swap(),
            _ => false,
        };
        if !swapped || self.restarts >= 2 {
            return Err(f);
        }
        self.restarts += 1;
        let b = witness_batch(&self.plan);
        self.stage = Stage::Witness;
        self.sent = b.clone();
        Ok(Next::Batch(self, b))
    }

    /// The PIV application is wiped: the FIDO reset next, or the end.
    fn piv_done(mut self) -> Result<Next, Failure> {
        if !self.plan.fido_reset {
            return Ok(Next::Done(self.recycled()));
        }
        let b = Batch::prompts(vec![
            Prompt::new(
                PromptKind::ReinsertDevice,
                "reset FIDO",
                "Remove the device and insert it again",
            ),
            Prompt::new(
                PromptKind::ConfirmTouch,
                "reset FIDO",
                "Confirm, then touch the device when it blinks: its passkeys will be erased",
            ),
        ]);
        self.stage = Stage::FidoPrompt;
        self.sent = b.clone();
        Ok(Next::Batch(self, b))
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
            "authenticate management key",
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
                &format!("replace key {slot:02X}"),
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
                &format!("delete certificate {slot:02X}"),
                apdu(piv::put_data(tag, &[])),
                OK,
                false,
            );
        }
        for (tag, step) in [(object::CHUID, "delete CHUID"), (object::CCC, "delete CCC")] {
            b.push(step, apdu(piv::put_data(tag, &[])), OK, false);
        }
        let bad = || Failure::new("bad_plan", "reset PIN", "PINs and PUKs are at most 8 bytes");
        b.push(
            "reset PIN",
            apdu(
                piv::reset_retry_counter(p.puk.value.expose().as_bytes(), FACTORY_PIN.as_bytes())
                    .ok_or_else(bad)?,
            ),
            OK,
            true,
        );
        b.push(
            "reset PUK",
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
            b.push("reset retry counts", vec![0x80, 0xE2, 3, 3], OK, false);
            b.push("reset PIN sharing", vec![0x80, 0xE3, 0, 0], OK, false);
            let f = &p.factory_management_key;
            let mut data = vec![f.algorithm.id(), key_ref::MANAGEMENT, f.bytes().len() as u8];
            data.extend_from_slice(f.bytes());
            b.push(
                "restore management key",
                apdu(keyward_card::apdu::CommandApdu::new(0x80, 0xE1, 0, 0).with_data(data)),
                OK,
                true,
            );
        }
        b.push(
            "check factory PIN",
            apdu(piv::verify(key_ref::PIN, Some(FACTORY_PIN.as_bytes())).expect("6 digits")),
            OK,
            true,
        );
        Ok(b)
    }
}

fn witness_batch(plan: &RecyclePlan) -> Batch {
    let mut b = Batch::default();
    if plan.device_type == DeviceType::C4000 {
        b.push(
            "identify device",
            vec![0x80, 0xCA, 0x9F, 0x7F, 0x00],
            OK,
            false,
        );
    }
    b.push("select PIV", apdu(piv::select_piv()), OK, false);
    b.push(
        "authenticate management key",
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
    b.push("select PIV", apdu(piv::select_piv()), OK, false);
    if identify {
        b.push("identify device", apdu(piv::yk_get_serial()), OK, false);
        b.push("identify device", apdu(piv::yk_get_version()), OK, false);
    }
    let wrong = wrong_tries();
    for _ in 0..BLOCK_TRIES {
        b.push(
            "block PIN",
            apdu(piv::verify(key_ref::PIN, Some(&WRONG)).expect("8 bytes")),
            &wrong,
            false,
        );
    }
    for _ in 0..BLOCK_TRIES {
        b.push(
            "block PUK",
            apdu(piv::reset_retry_counter(&WRONG, FACTORY_PIN.as_bytes()).expect("8 bytes")),
            &wrong,
            false,
        );
    }
    b.push("reset PIV", apdu(piv::yk_reset()), OK, false);
    b.push(
        "check factory PIN",
        apdu(piv::verify(key_ref::PIN, Some(FACTORY_PIN.as_bytes())).expect("6 digits")),
        OK,
        true,
    );
    b
}

fn identify_yubikey(plan: &RecyclePlan, responses: &[Response]) -> Result<(), Failure> {
    let serial = responses
        .get(1)
        .filter(|r| r.sw == 0x9000)
        .and_then(|r| r.data.get(..4))
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as u64);
    match serial {
        Some(s) if s == plan.serial => Ok(()),
        Some(s) => Err(Failure::new(
            "device_mismatch",
            "identify device",
            format!(
                "the device in the reader has serial {s}, not {}: was it swapped?",
                plan.serial
            ),
        )),
        None => Err(Failure::new(
            "bad_response",
            "identify device",
            "the device did not return its serial number",
        )),
    }
}

fn identify_c4000(plan: &RecyclePlan, cplc: &[u8]) -> Result<(), Failure> {
    let cplc = keyward_card::tlv::find(cplc, 0x9F7F).unwrap_or(cplc);
    match cplc
        .get(12..16)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as u64)
    {
        Some(s) if s == plan.serial => Ok(()),
        Some(s) => Err(Failure::new(
            "device_mismatch",
            "identify device",
            format!(
                "the device in the reader has serial {s}, not {}: was it swapped?",
                plan.serial
            ),
        )),
        None => Err(Failure::new(
            "bad_response",
            "identify device",
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
        assert_eq!(f.code, "device_mismatch");
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
        let derived = ManagementKey::derive(b"m", 4343, MgmtAlgorithm::Aes192);
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

    #[test]
    fn a_declined_touch_fails_the_fido_reset() {
        let tdes = ManagementKey::factory_default(MgmtAlgorithm::Tdes);
        let state = Recycling {
            plan: RecyclePlan {
                device_type: DeviceType::C4000,
                serial: 1,
                firmware: None,
                management_key: Known::sure(tdes.clone()),
                puk: Known::sure(Secret::new(FACTORY_PUK)),
                factory_management_key: tdes,
                fido_reset: true,
            },
            stage: Stage::Witness,
            sent: Batch::default(),
            restarts: 0,
        };
        let Next::Batch(state, b) = state.piv_done().unwrap() else {
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
        assert_eq!(f.code, "declined_by_person");
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
}
