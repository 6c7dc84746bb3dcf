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
//!          [GENERAL AUTHENTICATE: witness request]     (keys to write)
//! batch 2: GENERAL AUTHENTICATE: witness + challenge,
//!          GENERATE each new key [YubiKey: ATTEST, attestation certificate]
//!          → [VerifyAttestation] → Certify (new keys and same-key keys)
//! batch 3: [GENERAL AUTHENTICATE answer, when nothing was generated]
//!          PUT DATA each certificate, PUT DATA (empty) each removed slot,
//!          GET DATA of each written object (read back)
//! ```
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

use keyward_card::piv::{self, dyn_auth, key_ref, object, PublicKeyTemplate};
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
        if !plan.writes() {
            return Next::Done(UpdateDone {
                certificates: vec![],
                attested: vec![],
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
            let tag = match cert_object(k.slot, Step::WriteCertificate(k.slot)) {
                Ok(t) => t,
                Err(f) => return Next::Failed(f, certified.certificates),
            };
            let container = piv::cert_container(der, false);
            b.push(
                Step::WriteCertificate(k.slot),
                piv::put_data(tag, &container)
                    .extended(container.len() > 255)
                    .to_bytes(),
                OK,
                false,
            );
            written.push((tag, container));
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
        Next::Done(UpdateDone {
            certificates: self.certificates,
            attested: self.attested,
        })
    }
}
