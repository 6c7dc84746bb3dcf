//! Update: an issued device brought to its (possibly new) policy, as the
//! applied changes of its update request say (`keyward_domain::update`):
//! certificates added, renewed or removed, the PIN changed, a passkey
//! registered. The PIV part is here; the passkey is the FIDO step of
//! [`crate::session`], its probe riding on the last PIV batch.
//!
//! ```text
//! [prompts: enter_pin, set_new_pin]          a PIN change (rules checked
//!                                            by the server first)
//! batch 1: [C4000: CPLC] SELECT PIV [YubiKey: GET SERIAL, GET VERSION]
//!          [CHANGE REFERENCE DATA 80: current → new PIN]
//!          [GET DATA of each same-key slot's certificate]
//!          [9D retired: GET DATA Key History, GET METADATA 9D and 82..95]
//!          [GENERAL AUTHENTICATE: witness request]     (keys to write)
//! batch 2: GENERAL AUTHENTICATE: witness + challenge,
//!          [MOVE KEY 9D → the next retired slot]
//!          GENERATE each new key [YubiKey: ATTEST, attestation certificate]
//!          → [VerifyAttestation] → Certify (new keys and same-key keys)
//! batch 3: [GENERAL AUTHENTICATE answer, when nothing was generated]
//!          PUT DATA each certificate, PUT DATA (empty) each removed slot,
//!          [the old 9D certificate in its retired slot's object, Key History]
//!          GET DATA of each written object (read back)
//! ```
//!
//! A new Key Management key must not destroy the old one (it decrypts mail
//! sent before): on a device that moves keys (a YubiKey from 5.7) the old
//! key moves to the next retired slot (SP 800-73-4: retired keys with their
//! certificates on the card take 82 upward, and the Key History object
//! counts them), its certificate is written to that slot's object and Key
//! History counts one more, so OpenSC and the mail client still find it.
//! The decision is taken from what the device holds (the keys' public
//! halves by GET METADATA), not from the record alone: an attempt that
//! failed after the move finds the old key already retired and goes on.
//!
//! A renewal with the same key needs no new key: the certificate on record
//! is compared with the one the device holds (a device that holds another
//! has been changed outside Keyward: refused), and its public key is
//! certified again. With nothing generated, batch 2 is the writes (two
//! round trips); a PIN change alone is one.
//!
//! A failure leaves the update request pending: the next update does it
//! all again from what the device holds (keys generated anew; the
//! certificates certified in the failed attempt are revoked with its end).

use std::collections::BTreeMap;

use keyward_card::piv::{self, dyn_auth, key_ref, object, slot, PublicKeyTemplate};
use keyward_domain::DeviceType;
use rand_core::RngCore;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::batch::{check, Batch, Failure, Response};
use crate::failure::{FailureCode, Step};
use crate::mgmt_key::ManagementKey;
use crate::piv::{spki_der, Certified, GeneratedKey, KeySpec, Secret};
use crate::prompt::{Prompt, PromptKind};
use crate::recycle::{identify_c4000, identify_yubikey};

const OK: &[u16] = &[0x9000];
/// GET DATA of the CPLC (a C4000's serial).
const GET_CPLC: [u8; 5] = [0x80, 0xCA, 0x9F, 0x7F, 0x00];

/// A certificate renewed for the key the device holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SameKey {
    pub slot: u8,
    pub algorithm: u8,
    /// The certificate on record (DER): the device must hold this one.
    #[serde(with = "crate::b64")]
    pub certificate: Vec<u8>,
    /// Its public key (DER SubjectPublicKeyInfo), certified again.
    #[serde(with = "crate::b64")]
    pub spki_der: Vec<u8>,
}

/// The Key Management key that a new 9D key sends to a retired slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retire {
    /// The certificate on record for the old key (DER): written to the
    /// retired slot's object.
    #[serde(with = "crate::b64")]
    pub certificate: Vec<u8>,
    /// Its public key (DER SubjectPublicKeyInfo): how the old key is found.
    #[serde(with = "crate::b64")]
    pub spki_der: Vec<u8>,
    /// Decided from the device's answers to batch 1.
    #[serde(default)]
    pub decided: Option<Retirement>,
}

/// Where the old key goes, as batch 1 found the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retirement {
    /// The retired slot (82 to 95).
    pub to: u8,
    /// The key is still in 9D (else an earlier attempt moved it).
    pub move_key: bool,
    /// The Key History object to write (the value of tag 53).
    #[serde(with = "crate::b64")]
    pub key_history: Vec<u8>,
}

/// What the update does on the device, decided by the server from the
/// request's applied changes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdatePlan {
    pub device_type: DeviceType,
    pub serial: u64,
    pub firmware: Option<(u8, u8, u8)>,
    /// The device's management key, needed when anything is written (the
    /// server refuses an update when it is not sure of it).
    pub management_key: Option<ManagementKey>,
    /// The person enters the current PIN and chooses a new one.
    pub pin_change: bool,
    /// New keys: certificates added, or renewed with a new key.
    pub generate: Vec<KeySpec>,
    /// Certificates renewed for the key the device holds.
    pub same_key: Vec<SameKey>,
    /// Slots whose certificate is removed.
    pub remove: Vec<u8>,
    /// A new 9D key (in `generate`) keeps the old one in a retired slot.
    #[serde(default)]
    pub retire: Option<Retire>,
}

impl UpdatePlan {
    /// Whether anything is written with the management key.
    fn writes(&self) -> bool {
        !self.generate.is_empty() || !self.same_key.is_empty() || !self.remove.is_empty()
    }
}

/// An update's PIV part between round trips, one type per state.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Serialize, Deserialize)]
pub enum Update {
    /// The PIN prompts are out.
    Pins(AwaitPins),
    /// Batch 1 (identity, PIN change, certificates, witness) is out.
    Check(AwaitCheck),
    /// Batch 2 (mutual authentication, new keys) is out.
    Keys(AwaitKeys),
    /// The server verifies the new keys' attestations.
    Attested(AwaitCertified),
    /// The server certifies the keys.
    Certified(AwaitCertified),
    /// The writes batch is out.
    Writes(AwaitWrites),
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AwaitPins {
    plan: UpdatePlan,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AwaitCheck {
    plan: UpdatePlan,
    sent: Batch,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AwaitKeys {
    plan: UpdatePlan,
    sent: Batch,
    challenge: Vec<u8>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AwaitCertified {
    plan: UpdatePlan,
    /// The keys to certify: the new ones first, then the same-key ones.
    keys: Vec<GeneratedKey>,
    /// Slots whose new key's attestation verified.
    #[serde(default)]
    attested: Vec<u8>,
    /// The mutual authentication's answer still to send (nothing was
    /// generated: batch 2 is the writes).
    #[serde(default)]
    pending_auth: Option<Vec<u8>>,
    #[serde(default)]
    challenge: Vec<u8>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AwaitWrites {
    plan: UpdatePlan,
    sent: Batch,
    #[serde(with = "crate::b64::keyed")]
    certificates: Vec<(u8, Vec<u8>)>,
    attested: Vec<u8>,
    /// Objects written (tag, the value of 53) and checked on read-back.
    #[serde(with = "crate::b64::keyed")]
    written: Vec<(u32, Vec<u8>)>,
    /// The mutual authentication rides here (nothing was generated).
    #[serde(default)]
    challenge: Option<Vec<u8>>,
}

/// The PIV part is done.
#[derive(Debug)]
pub struct UpdateDone {
    /// The certificates written, by slot.
    pub certificates: Vec<(u8, Vec<u8>)>,
    /// The slots whose new key's attestation verified.
    pub attested: Vec<u8>,
    /// An old key moved: (from, to) — 9D to its retired slot.
    pub retired: Option<(u8, u8)>,
}

/// Where a result leads.
pub enum Next {
    /// A batch for the device or the person; `last`: the last of the PIV
    /// part (the FIDO step's probe may ride on it).
    Send(Update, Batch, bool),
    /// New keys on a device that attests: the server verifies them.
    Attest {
        state: Update,
        keys: Vec<GeneratedKey>,
        device_certificate: Option<Vec<u8>>,
    },
    /// The keys are certified by the server's CA.
    Certify(Update, Vec<GeneratedKey>),
    Done(UpdateDone),
    /// The attempt failed; `certificates`: those certified in it (revoked).
    Failed(Failure, Vec<(u8, Vec<u8>)>),
}

impl Update {
    /// The first batch: the PIN prompts, or batch 1 (`last`: the PIV part
    /// has no other). Refused before the device is touched: a slot without
    /// a certificate object.
    pub fn start(plan: UpdatePlan) -> Result<(Update, Batch, bool), Failure> {
        if plan.pin_change {
            let b = Batch::prompts(vec![
                Prompt::new(
                    PromptKind::EnterPin,
                    Step::EnterCurrentAndNewPin,
                    "Enter the current PIN of the device",
                ),
                Prompt::new(
                    PromptKind::SetNewPin,
                    Step::EnterCurrentAndNewPin,
                    "Choose a new PIN: the policy's PIN rules ask for a change",
                ),
            ]);
            return Ok((Update::Pins(AwaitPins { plan }), b, false));
        }
        batch_one(plan, None)
    }

    /// The relayed result of the batch out now.
    pub fn on_relayed(
        self,
        responses: &[Response],
        answers: &BTreeMap<String, String>,
        rng: &mut dyn RngCore,
    ) -> Next {
        match self {
            Update::Pins(s) => {
                let (Some(current), Some(new)) = (
                    answers.get(PromptKind::EnterPin.as_str()),
                    answers.get(PromptKind::SetNewPin.as_str()),
                ) else {
                    return Next::Failed(
                        Failure::new(
                            FailureCode::AnswerRequired,
                            Step::EnterCurrentAndNewPin,
                            "the prompts enter_pin and set_new_pin need answers",
                        ),
                        vec![],
                    );
                };
                match batch_one(
                    s.plan,
                    Some((Secret::new(current.as_str()), Secret::new(new.as_str()))),
                ) {
                    Ok((s, b, last)) => Next::Send(s, b, last),
                    Err(f) => Next::Failed(f, vec![]),
                }
            }
            Update::Check(s) => s.on_responses(responses, rng),
            Update::Keys(s) => s.on_responses(responses),
            Update::Writes(s) => s.on_responses(responses),
            Update::Attested(s) | Update::Certified(s) => Next::Failed(
                Failure::new(
                    FailureCode::Internal,
                    Step::CertifyKeys,
                    "the update waits for the server, not the device",
                ),
                s.keys_certified(),
            ),
        }
    }

    /// The server verified the new keys' attestations (one outcome per new
    /// key, in order): certified next, or refused when required.
    pub fn on_attested(self, outcomes: &[Result<(), String>], required: bool) -> Next {
        let Update::Attested(mut s) = self else {
            return out_of_order();
        };
        let new_keys = s.plan.generate.len();
        for (k, o) in s.keys.iter().take(new_keys).zip(outcomes) {
            match o {
                Ok(()) => s.attested.push(k.slot),
                Err(why) if required => {
                    return Next::Failed(
                        Failure::new(
                            FailureCode::AttestationFailed,
                            Step::AttestKey(k.slot),
                            format!("the device did not prove it generated the key: {why}"),
                        ),
                        vec![],
                    )
                }
                Err(_) => {}
            }
        }
        let keys = s.keys.clone();
        Next::Certify(Update::Certified(s), keys)
    }

    /// The server certified the keys: the writes.
    pub fn on_certified(self, certified: Result<Certified, Failure>) -> Next {
        let Update::Certified(s) = self else {
            return out_of_order();
        };
        match certified {
            Err(f) => Next::Failed(f, vec![]),
            Ok(c) => s.writes(c),
        }
    }

    pub fn plan(&self) -> &UpdatePlan {
        match self {
            Update::Pins(s) => &s.plan,
            Update::Check(s) => &s.plan,
            Update::Keys(s) => &s.plan,
            Update::Attested(s) | Update::Certified(s) => &s.plan,
            Update::Writes(s) => &s.plan,
        }
    }
}

fn out_of_order() -> Next {
    Next::Failed(
        Failure::new(
            FailureCode::Internal,
            Step::CertifyKeys,
            "the update does not take this input now",
        ),
        vec![],
    )
}

/// Batch 1: identity, the PIN change, the same-key certificates to compare,
/// the witness request. `last`: nothing follows it on the device.
fn batch_one(
    plan: UpdatePlan,
    pins: Option<(Secret, Secret)>,
) -> Result<(Update, Batch, bool), Failure> {
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
    if let Some((current, new)) = &pins {
        let change = piv::change_reference_data(
            key_ref::PIN,
            current.expose().as_bytes(),
            new.expose().as_bytes(),
        )
        .ok_or_else(|| {
            Failure::new(
                FailureCode::PinTooLong,
                Step::ChangePin,
                "PINs are at most 8 bytes",
            )
        })?;
        b.push(Step::ChangePin, change.to_bytes(), OK, true);
    }
    for k in &plan.same_key {
        let tag = cert_object(k.slot, Step::ReadCertificate(k.slot))?;
        b.push(
            Step::ReadCertificate(k.slot),
            piv::get_data(tag).extended(true).with_le(65536).to_bytes(),
            OK,
            false,
        );
    }
    if plan.retire.is_some() {
        if plan.device_type != DeviceType::YubiKey5
            || !plan.generate.iter().any(|k| k.slot == slot::KEY_MANAGEMENT)
        {
            return Err(Failure::new(
                FailureCode::BadPlan,
                Step::RetireKey(slot::KEY_MANAGEMENT),
                "a key moves to a retired slot only on a YubiKey, and only when 9D gets a new key",
            ));
        }
        b.push(
            Step::ReadKeyHistory,
            piv::get_data(object::KEY_HISTORY).to_bytes(),
            &[0x9000, 0x6A82],
            false,
        );
        for s in
            std::iter::once(slot::KEY_MANAGEMENT).chain(slot::RETIRED_FIRST..=slot::RETIRED_LAST)
        {
            b.push(
                Step::ReadKey(s),
                piv::yk_get_metadata(s).to_bytes(),
                &[0x9000, 0x6A88],
                false,
            );
        }
    }
    let last = !plan.writes();
    if !last {
        let m = plan.management_key.as_ref().ok_or_else(|| {
            Failure::new(
                FailureCode::BadPlan,
                Step::AuthenticateManagementKey,
                "the update writes to the device and its management key is not known",
            )
        })?;
        b.push(
            Step::AuthenticateManagementKey,
            piv::general_authenticate(
                m.algorithm.id(),
                key_ref::MANAGEMENT,
                &[(dyn_auth::WITNESS, &[])],
            )
            .to_bytes(),
            OK,
            false,
        );
    }
    let sent = b.clone();
    Ok((Update::Check(AwaitCheck { plan, sent }), b, last))
}

fn cert_object(slot: u8, step: Step) -> Result<u32, Failure> {
    object::cert_for_slot(slot).ok_or_else(|| {
        Failure::new(
            FailureCode::BadSlot,
            step,
            format!("slot {slot:02X} has no certificate object"),
        )
    })
}

/// A wrong current PIN: the device's tries left, said.
fn pin_failure(f: Failure) -> Failure {
    match f.sw {
        Some(sw) if f.step == Step::ChangePin && sw & 0xFFF0 == 0x63C0 => {
            let mut f = f;
            f.code = FailureCode::WrongPin;
            f.message = format!("the current PIN is wrong: {} tries left", sw & 0x0F);
            f
        }
        Some(0x6983) if f.step == Step::ChangePin => {
            let mut f = f;
            f.code = FailureCode::PinBlocked;
            f.message = "the PIN is blocked: unlock the device first".into();
            f
        }
        _ => f,
    }
}

impl AwaitCheck {
    fn on_responses(self, responses: &[Response], rng: &mut dyn RngCore) -> Next {
        let r = match check(&self.sent, responses) {
            Ok(r) => r,
            Err(f) => return Next::Failed(pin_failure(f), vec![]),
        };
        let plan = self.plan;
        let identified = match plan.device_type {
            DeviceType::C4000 => identify_c4000(plan.serial, &r[0].data),
            DeviceType::YubiKey5 => identify_yubikey(plan.serial, r),
            DeviceType::Piv => Ok(()),
        };
        if let Err(f) = identified {
            return Next::Failed(f, vec![]);
        }
        let by_step = |step: Step| {
            self.sent
                .commands
                .iter()
                .zip(r)
                .find(|(c, _)| c.step == step)
                .map(|(_, r)| r.data.as_slice())
        };
        // The same-key certificates: the device holds the ones on record.
        for k in &plan.same_key {
            let held = by_step(Step::ReadCertificate(k.slot))
                .and_then(|d| keyward_card::tlv::find(d, 0x53))
                .and_then(|v| piv::parse_cert_container(v).ok())
                .map(|c| c.certificate);
            if held.as_deref() != Some(k.certificate.as_slice()) {
                return Next::Failed(
                    Failure::new(
                        FailureCode::CertificateMismatch,
                        Step::ReadCertificate(k.slot),
                        format!(
                            "slot {:02X} holds another certificate than the one on record: its key cannot be renewed as it is (recycle and re-issue, or renew with a new key)",
                            k.slot
                        ),
                    ),
                    vec![],
                );
            }
        }
        let mut plan = plan;
        if let Some(retire) = plan.retire.as_mut() {
            match retirement(retire, &by_step) {
                Ok(decided) => retire.decided = Some(decided),
                Err(f) => return Next::Failed(f, vec![]),
            }
        }
        if !plan.writes() {
            return Next::Done(UpdateDone {
                certificates: vec![],
                attested: vec![],
                retired: None,
            });
        }
        // The mutual authentication: the witness decrypted, a challenge.
        let step = Step::AuthenticateManagementKey;
        let Some(m) = plan.management_key.as_ref() else {
            return Next::Failed(
                Failure::new(
                    FailureCode::BadPlan,
                    step,
                    "the management key is not known",
                ),
                vec![],
            );
        };
        let witness =
            piv::parse_general_authenticate_response(&r[r.len() - 1].data, dyn_auth::WITNESS)
                .and_then(|w| m.decrypt_block(w));
        let Some(witness) = witness else {
            return Next::Failed(
                Failure::new(
                    FailureCode::BadResponse,
                    step,
                    "no usable witness in the GENERAL AUTHENTICATE response",
                ),
                vec![],
            );
        };
        let mut challenge = vec![0u8; m.algorithm.block_len()];
        rng.fill_bytes(&mut challenge);
        let auth = piv::general_authenticate(
            m.algorithm.id(),
            key_ref::MANAGEMENT,
            &[
                (dyn_auth::WITNESS, &witness),
                (dyn_auth::CHALLENGE, &challenge),
                (dyn_auth::RESPONSE, &[]),
            ],
        )
        .to_bytes();
        let same_key: Vec<GeneratedKey> = plan
            .same_key
            .iter()
            .map(|k| GeneratedKey {
                slot: k.slot,
                algorithm: k.algorithm,
                spki_der: k.spki_der.clone(),
                attestation: None,
            })
            .collect();
        if plan.generate.is_empty() {
            // Nothing to generate: certified now, the authentication rides
            // on the writes.
            let state = AwaitCertified {
                plan,
                keys: same_key.clone(),
                attested: vec![],
                pending_auth: Some(auth),
                challenge,
            };
            return Next::Certify(Update::Certified(state), same_key);
        }
        let mut b = Batch::default();
        b.push(step, auth, OK, true);
        // The old 9D key leaves before the new one is generated over it.
        if let Some(r) = plan
            .retire
            .as_ref()
            .and_then(|r| r.decided.as_ref())
            .filter(|r| r.move_key)
        {
            b.push(
                Step::RetireKey(slot::KEY_MANAGEMENT),
                piv::yk_move_key(r.to, slot::KEY_MANAGEMENT).to_bytes(),
                OK,
                false,
            );
        }
        for k in &plan.generate {
            b.push(
                Step::GenerateKey(k.slot),
                piv::generate(
                    k.algorithm,
                    k.slot,
                    piv::policy::PIN_DEFAULT,
                    piv::policy::TOUCH_DEFAULT,
                )
                .to_bytes(),
                OK,
                false,
            );
        }
        if plan.device_type == DeviceType::YubiKey5 {
            for k in &plan.generate {
                b.push(
                    Step::AttestKey(k.slot),
                    piv::yk_attest(k.slot).to_bytes(),
                    &[0x9000, 0x6A80, 0x6A88, 0x6D00],
                    false,
                );
            }
            b.push(
                Step::ReadAttestationCertificate,
                piv::get_data(object::YK_ATTESTATION_CERT)
                    .extended(true)
                    .with_le(65536)
                    .to_bytes(),
                &[0x9000, 0x6A82],
                false,
            );
        }
        let sent = b.clone();
        Next::Send(
            Update::Keys(AwaitKeys {
                plan,
                sent,
                challenge,
            }),
            b,
            false,
        )
    }
}

/// The card's answer to the challenge proves it knows the management key.
fn authenticated(
    m: Option<&ManagementKey>,
    challenge: &[u8],
    answer: &[u8],
) -> Result<(), Failure> {
    let step = Step::AuthenticateManagementKey;
    let m = m.ok_or_else(|| {
        Failure::new(
            FailureCode::BadPlan,
            step,
            "the management key is not known",
        )
    })?;
    let card =
        piv::parse_general_authenticate_response(answer, dyn_auth::RESPONSE).ok_or_else(|| {
            Failure::new(
                FailureCode::BadResponse,
                step,
                "no response to the challenge",
            )
        })?;
    let expected = m
        .encrypt_block(challenge)
        .ok_or_else(|| Failure::new(FailureCode::BadResponse, step, "challenge length"))?;
    if bool::from(expected.ct_eq(card)) {
        Ok(())
    } else {
        Err(Failure::new(
            FailureCode::DeviceNotAuthentic,
            step,
            "the device failed mutual authentication",
        ))
    }
}

impl AwaitKeys {
    fn on_responses(self, responses: &[Response]) -> Next {
        let r = match check(&self.sent, responses) {
            Ok(r) => r,
            Err(f) => return Next::Failed(f, vec![]),
        };
        let plan = self.plan;
        if let Err(f) = authenticated(plan.management_key.as_ref(), &self.challenge, &r[0].data) {
            return Next::Failed(f, vec![]);
        }
        let by_step = |step: Step| {
            self.sent
                .commands
                .iter()
                .zip(r)
                .find(|(c, _)| c.step == step)
                .map(|(_, r)| r)
        };
        let mut keys = Vec::new();
        for spec in &plan.generate {
            let step = Step::GenerateKey(spec.slot);
            let key = by_step(step)
                .ok_or_else(|| "no public key".to_string())
                .and_then(|r| {
                    PublicKeyTemplate::parse(&r.data).map_err(|e| format!("public key: {e:?}"))
                })
                .and_then(|t| spki_der(spec.algorithm, &t));
            match key {
                Ok(spki_der) => keys.push(GeneratedKey {
                    slot: spec.slot,
                    algorithm: spec.algorithm,
                    spki_der,
                    attestation: by_step(Step::AttestKey(spec.slot))
                        .filter(|r| r.sw == 0x9000 && !r.data.is_empty())
                        .map(|r| r.data.clone()),
                }),
                Err(m) => {
                    return Next::Failed(Failure::new(FailureCode::BadResponse, step, m), vec![])
                }
            }
        }
        let device_certificate = by_step(Step::ReadAttestationCertificate)
            .filter(|r| r.sw == 0x9000)
            .and_then(|r| keyward_card::tlv::find(&r.data, 0x53).map(<[u8]>::to_vec));
        let new_keys = keys.clone();
        keys.extend(plan.same_key.iter().map(|k| GeneratedKey {
            slot: k.slot,
            algorithm: k.algorithm,
            spki_der: k.spki_der.clone(),
            attestation: None,
        }));
        let attests = plan.device_type == DeviceType::YubiKey5;
        let state = AwaitCertified {
            plan,
            keys: keys.clone(),
            attested: vec![],
            pending_auth: None,
            challenge: vec![],
        };
        if attests {
            Next::Attest {
                state: Update::Attested(state),
                keys: new_keys,
                device_certificate,
            }
        } else {
            Next::Certify(Update::Certified(state), keys)
        }
    }
}

impl AwaitCertified {
    /// Nothing certified yet in this state.
    fn keys_certified(&self) -> Vec<(u8, Vec<u8>)> {
        Vec::new()
    }

    /// Batch 3: the certificates written, removed slots emptied, all read
    /// back.
    fn writes(self, certified: Certified) -> Next {
        let mut b = Batch::default();
        let challenge = self.pending_auth.as_ref().map(|_| self.challenge.clone());
        if let Some(auth) = self.pending_auth {
            b.push(Step::AuthenticateManagementKey, auth, OK, true);
        }
        let mut written = Vec::new();
        for k in &self.keys {
            let Some((_, der)) = certified.certificates.iter().find(|(s, _)| *s == k.slot) else {
                return Next::Failed(
                    Failure::new(
                        FailureCode::CertificateMissing,
                        Step::WriteCertificates,
                        format!("no certificate for slot {:02X}", k.slot),
                    ),
                    certified.certificates,
                );
            };
            if let Err(f) = write_certificate(&mut b, &mut written, k.slot, der) {
                return Next::Failed(f, certified.certificates);
            }
        }
        for slot in &self.plan.remove {
            let tag = match cert_object(*slot, Step::DeleteCertificate(*slot)) {
                Ok(t) => t,
                Err(f) => return Next::Failed(f, certified.certificates),
            };
            b.push(
                Step::DeleteCertificate(*slot),
                piv::put_data(tag, &[]).to_bytes(),
                OK,
                false,
            );
            written.push((tag, Vec::new()));
        }
        // The old 9D key's certificate in its retired slot's object, and
        // Key History counting it.
        if let Some((r, decided)) = self
            .plan
            .retire
            .as_ref()
            .and_then(|r| Some((r, r.decided.as_ref()?)))
        {
            if let Err(f) = write_certificate(&mut b, &mut written, decided.to, &r.certificate) {
                return Next::Failed(f, certified.certificates);
            }
            b.push(
                Step::WriteKeyHistory,
                piv::put_data(object::KEY_HISTORY, &decided.key_history).to_bytes(),
                OK,
                false,
            );
            written.push((object::KEY_HISTORY, decided.key_history.clone()));
        }
        for (tag, value) in &written {
            // An emptied object reads back empty or not found.
            let expect: &[u16] = if value.is_empty() {
                &[0x9000, 0x6A82]
            } else {
                OK
            };
            b.push(
                Step::ReadBack,
                piv::get_data(*tag).extended(true).with_le(65536).to_bytes(),
                expect,
                false,
            );
        }
        let sent = b.clone();
        Next::Send(
            Update::Writes(AwaitWrites {
                plan: self.plan,
                sent,
                certificates: certified.certificates,
                attested: self.attested,
                written,
                challenge,
            }),
            b,
            true,
        )
    }
}

impl AwaitWrites {
    fn on_responses(self, responses: &[Response]) -> Next {
        let r = match check(&self.sent, responses) {
            Ok(r) => r,
            Err(f) => return Next::Failed(f, self.certificates),
        };
        if let Some(challenge) = &self.challenge {
            if let Err(f) = authenticated(self.plan.management_key.as_ref(), challenge, &r[0].data)
            {
                return Next::Failed(f, self.certificates);
            }
        }
        let reads = &r[r.len() - self.written.len()..];
        for ((tag, value), r) in self.written.iter().zip(reads) {
            let got = keyward_card::tlv::find(&r.data, 0x53).unwrap_or(&[]);
            if got != value.as_slice() {
                return Next::Failed(
                    Failure::new(
                        FailureCode::ReadBackMismatch,
                        Step::ReadBack,
                        format!("object {tag:06X} reads back different from what was written"),
                    ),
                    self.certificates,
                );
            }
        }
        let retired = self
            .plan
            .retire
            .as_ref()
            .and_then(|r| r.decided.as_ref())
            .map(|d| (slot::KEY_MANAGEMENT, d.to));
        Next::Done(UpdateDone {
            certificates: self.certificates,
            attested: self.attested,
            retired,
        })
    }
}

/// PUT DATA of `der` in the certificate object of `slot`, noted in
/// `written` for the read-back.
fn write_certificate(
    b: &mut Batch,
    written: &mut Vec<(u32, Vec<u8>)>,
    slot: u8,
    der: &[u8],
) -> Result<(), Failure> {
    let tag = cert_object(slot, Step::WriteCertificate(slot))?;
    let container = piv::cert_container(der, false);
    b.push(
        Step::WriteCertificate(slot),
        piv::put_data(tag, &container)
            .extended(container.len() > 255)
            .to_bytes(),
        OK,
        false,
    );
    written.push((tag, container));
    Ok(())
}

/// The public key (DER SubjectPublicKeyInfo) in a GET METADATA answer.
fn metadata_key(data: &[u8]) -> Option<Vec<u8>> {
    let algorithm = *keyward_card::tlv::find(data, 0x01)?.first()?;
    let template = PublicKeyTemplate::parse(keyward_card::tlv::find(data, 0x04)?).ok()?;
    spki_der(algorithm, &template).ok()
}

/// Where the old 9D key goes, from batch 1's answers: still in 9D, the next
/// retired slot after those Key History counts (it must be empty); already
/// in a retired slot (an earlier attempt moved it), that one.
fn retirement<'a>(
    retire: &Retire,
    by_step: &impl Fn(Step) -> Option<&'a [u8]>,
) -> Result<Retirement, Failure> {
    let history = by_step(Step::ReadKeyHistory)
        .and_then(|d| keyward_card::tlv::find(d, 0x53))
        .filter(|v| !v.is_empty());
    let (on_card, off_card, url) = match history {
        None => (0, 0, None),
        Some(v) => piv::parse_key_history(v).ok_or_else(|| {
            Failure::new(
                FailureCode::BadResponse,
                Step::ReadKeyHistory,
                "the Key History object is unreadable",
            )
        })?,
    };
    if off_card > 0 {
        return Err(Failure::new(
            FailureCode::RetiredSlotsUnusable,
            Step::ReadKeyHistory,
            format!("the device keeps {off_card} retired key(s) whose certificates are off the card (Key History): Keyward does not renumber them; renew 9D with the same key"),
        ));
    }
    let key_in = |s: u8| by_step(Step::ReadKey(s)).and_then(metadata_key);
    let holds_old = |s: u8| key_in(s).as_deref() == Some(retire.spki_der.as_slice());
    let history_after =
        |to: u8| piv::key_history(on_card.max(to - slot::RETIRED_FIRST + 1), 0, url.as_deref());
    if holds_old(slot::KEY_MANAGEMENT) {
        let count = usize::from(slot::RETIRED_LAST - slot::RETIRED_FIRST) + 1;
        if usize::from(on_card) >= count {
            return Err(Failure::new(
                FailureCode::RetiredSlotsUnusable,
                Step::ReadKeyHistory,
                "all 20 retired slots keep old keys: renew 9D with the same key, or recycle and re-issue the device",
            ));
        }
        let to = slot::RETIRED_FIRST + on_card;
        if by_step(Step::ReadKey(to)).is_some_and(|d| !d.is_empty()) {
            return Err(Failure::new(
                FailureCode::RetiredSlotsUnusable,
                Step::ReadKey(to),
                format!("retired slot {to:02X} holds a key that the Key History object does not count: Keyward does not overwrite it"),
            ));
        }
        return Ok(Retirement {
            to,
            move_key: true,
            key_history: history_after(to),
        });
    }
    match (slot::RETIRED_FIRST..=slot::RETIRED_LAST).find(|s| holds_old(*s)) {
        Some(to) => Ok(Retirement {
            to,
            move_key: false,
            key_history: history_after(to),
        }),
        None => Err(Failure::new(
            FailureCode::KeyMissing,
            Step::ReadKey(slot::KEY_MANAGEMENT),
            "the Key Management key on record is neither in 9D nor in a retired slot: recycle and re-issue the device",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::pkcs8::EncodePublicKey;

    /// A P-256 key: (its GET METADATA answer, its SubjectPublicKeyInfo).
    fn key(seed: u8) -> (Vec<u8>, Vec<u8>) {
        let secret = p256::SecretKey::from_slice(&[seed; 32]).unwrap();
        let public = secret.public_key();
        let point = public.to_sec1_bytes().to_vec();
        let mut metadata = keyward_card::tlv::encode(0x01, &[piv::alg::ECC_P256]);
        keyward_card::tlv::push(
            &mut metadata,
            0x04,
            &PublicKeyTemplate::Ec { point }.encode_inner(),
        );
        (
            metadata,
            public.to_public_key_der().unwrap().as_bytes().to_vec(),
        )
    }

    fn retire(spki_der: Vec<u8>) -> Retire {
        Retire {
            certificate: vec![0x30, 0x00],
            spki_der,
            decided: None,
        }
    }

    /// Batch 1's answers: Key History (`None`: not found) and the keys by slot.
    fn decide(
        r: &Retire,
        history: Option<Vec<u8>>,
        keys: &[(u8, Vec<u8>)],
    ) -> Result<Retirement, Failure> {
        let history = history.map(|h| keyward_card::tlv::encode(0x53, &h));
        let by_step = |step: Step| -> Option<&[u8]> {
            match step {
                Step::ReadKeyHistory => Some(history.as_deref().unwrap_or(&[])),
                Step::ReadKey(s) => Some(
                    keys.iter()
                        .find(|(k, _)| *k == s)
                        .map(|(_, m)| m.as_slice())
                        .unwrap_or(&[]),
                ),
                _ => None,
            }
        };
        retirement(r, &by_step)
    }

    #[test]
    fn the_old_key_goes_to_the_slot_after_those_key_history_counts() {
        let (old, spki) = key(1);
        let (other, _) = key(2);
        let r = retire(spki);
        let d = decide(&r, None, &[(0x9D, old.clone())]).unwrap();
        assert_eq!((d.to, d.move_key), (0x82, true));
        assert_eq!(piv::parse_key_history(&d.key_history), Some((1, 0, None)));
        // Two retired already (with a URL kept).
        let h = piv::key_history(2, 0, Some("http://x/"));
        let keys = [
            (0x9D, old.clone()),
            (0x82, other.clone()),
            (0x83, other.clone()),
        ];
        let d = decide(&r, Some(h), &keys).unwrap();
        assert_eq!((d.to, d.move_key), (0x84, true));
        assert_eq!(
            piv::parse_key_history(&d.key_history),
            Some((3, 0, Some("http://x/".into())))
        );
    }

    #[test]
    fn an_earlier_attempt_that_moved_the_key_is_finished_not_repeated() {
        let (old, spki) = key(1);
        let (new, _) = key(3);
        let r = retire(spki);
        // Moved, a new key generated in 9D, Key History not yet written.
        let d = decide(&r, None, &[(0x9D, new), (0x82, old)]).unwrap();
        assert_eq!((d.to, d.move_key), (0x82, false));
        assert_eq!(piv::parse_key_history(&d.key_history), Some((1, 0, None)));
    }

    #[test]
    fn what_keyward_will_not_overwrite_or_cannot_find_is_refused() {
        let (old, spki) = key(1);
        let (other, _) = key(2);
        let r = retire(spki);
        // A key in 82 that Key History does not count.
        let f = decide(&r, None, &[(0x9D, old.clone()), (0x82, other.clone())]).unwrap_err();
        assert_eq!(
            (f.code, f.step),
            (FailureCode::RetiredSlotsUnusable, Step::ReadKey(0x82))
        );
        // Retired keys whose certificates are off the card.
        let f = decide(
            &r,
            Some(piv::key_history(0, 1, None)),
            &[(0x9D, old.clone())],
        )
        .unwrap_err();
        assert_eq!(f.code, FailureCode::RetiredSlotsUnusable);
        // Every retired slot used.
        let f = decide(&r, Some(piv::key_history(20, 0, None)), &[(0x9D, old)]).unwrap_err();
        assert_eq!(f.code, FailureCode::RetiredSlotsUnusable);
        assert!(f.message.contains("all 20"), "{}", f.message);
        // The key on record is nowhere.
        let f = decide(&r, None, &[(0x9D, other)]).unwrap_err();
        assert_eq!(f.code, FailureCode::KeyMissing);
        // An unreadable Key History.
        let f = decide(&r, Some(vec![0xC1]), &[]).unwrap_err();
        assert_eq!(f.code, FailureCode::BadResponse);
    }
}
