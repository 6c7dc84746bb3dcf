//! Whole device sessions through `keyward_engine::session`, with no server,
//! HTTP or Graph: the in-process virtual device answers the batches, the
//! embedded CA carries out Certify, a fixed creationOptions and Graph
//! method stand for Entra ID, the clock is fixed and the random source
//! seeded. Each test asserts the effects in the order the machine asked
//! for them, and what the device holds at the end.

use std::collections::BTreeMap;

use keyward_card::piv::{self, key_ref};
use keyward_domain::{
    Device, DevicePolicy, DeviceState, DeviceType, DisplayMode, FirmwareVersion, Serial,
    SessionStatus, User, UserStatus,
};
use keyward_engine::fido::CreationRequest;
use keyward_engine::plan::{initial_pin, piv_plan, PlanSecrets};
use keyward_engine::session::Answers;
use keyward_engine::{
    Batch, Channel, Context, DeviceMove, DeviceSession, Effect, Ending, FailureCode, Input, Prompt,
    PromptKind, Refusal, RegisteredMethod, Response, Step,
};
use keyward_pki::{CertificateAuthority, EmbeddedCa, LeafRequest};
use keyward_vcard::config::{ProfileKind, VcardConfig};
use keyward_vcard::fido::AlwaysPresent;
use keyward_vcard::VirtualCard;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::json;
use time::macros::datetime;

const NOW: time::OffsetDateTime = datetime!(2026-12-06 12:00 UTC);

fn user() -> User {
    User {
        id: uuid::Uuid::from_u128(1),
        login: "alice".into(),
        upn: Some("alice@contoso.com".into()),
        display_name: "Alice Archer".into(),
        email: None,
        attributes: Default::default(),
        status: UserStatus::Active,
    }
}

/// A policy with a 9A certificate, and a FIDO application when `fido` is
/// `Some(shared)`.
fn policy(fido: Option<bool>) -> DevicePolicy {
    let mut p = json!({
        "name": "Staff", "device_types": ["c4000", "yubikey5"], "management_key": "random",
        "pin_application": { "min_length": 6, "max_length": 8, "character_set": "numeric" },
        "pki_applications": [
            { "name": "PIV Authentication", "slot": "9a", "algorithm": "eccp256", "certificate_authority": "Keyward Issuing CA",
              "template": { "subject_dn": "CN={display_name}", "subject_alt_names": ["upn"], "validity_days": 365,
                            "key_usage": ["digital_signature"], "extended_key_usage": ["client_auth"] } }
        ],
    });
    if let Some(shared) = fido {
        p["fido_application"] = json!({
            "passkey_service_id": uuid::Uuid::from_u128(7), "share_device_pin": shared, "cred_protect": 1
        });
    }
    serde_json::from_value(p).unwrap()
}

/// One device and what the session's effects are carried out with.
struct Bench {
    card: VirtualCard,
    device: Device,
    ca: EmbeddedCa,
    rng: StdRng,
    policy: DevicePolicy,
    user: User,
    /// The effects asked for, in order (`send <step>` for a batch).
    effects: Vec<String>,
    _ca_dir: tempfile::TempDir,
}

impl Bench {
    fn new(profile: ProfileKind, fido: Option<bool>) -> Bench {
        let ca_dir = tempfile::tempdir().unwrap();
        let serial = 31_000_141;
        let mut card = VirtualCard::new(
            VcardConfig::new(profile)
                .with_serial(serial)
                .with_ca_dir(ca_dir.path()),
        )
        .unwrap();
        card.power_on();
        let device = Device {
            id: uuid::Uuid::from_u128(2),
            device_type: match profile {
                ProfileKind::C4000 => DeviceType::C4000,
                _ => DeviceType::YubiKey5,
            },
            serial: Serial(serial as u64),
            firmware_version: (profile == ProfileKind::Yubikey5).then_some(FirmwareVersion {
                major: 5,
                minor: 7,
                patch: 1,
            }),
            atr: None,
            state: DeviceState::InProduction,
            reason: None,
            assigned_user: None,
            device_policy: None,
            version: 1,
            suspended: false,
            passkey_reregistration: false,
            puk_rotation_due: false,
            replacement: None,
        };
        Bench {
            card,
            device,
            ca: EmbeddedCa::generate("Keyward Issuing CA", None, NOW).unwrap(),
            rng: StdRng::seed_from_u64(12),
            policy: policy(fido),
            user: user(),
            effects: Vec::new(),
            _ca_dir: ca_dir,
        }
    }

    /// An Issue session: `pin` Displayed, or Not Displayed (generated) with
    /// or without "Change PIN during issuance".
    fn issue(&mut self, pin: Option<&str>, change_pin_at_end: bool) -> (DeviceSession, Batch) {
        let mode = match pin {
            Some(_) => DisplayMode::Displayed,
            None => DisplayMode::NotDisplayed,
        };
        let pin =
            initial_pin(mode, &self.policy.pin_application, pin, None, &mut self.rng).unwrap();
        let initial = (pin.generated && !change_pin_at_end).then(|| pin.pin.clone());
        let plan = piv_plan(
            &self.policy,
            &self.device,
            PlanSecrets {
                pin: pin.pin,
                puk: keyward_engine::piv::Secret::new("13572468"),
                master_key: b"master key of the bench",
                chuid_guid: [7; 16],
                credential_number: 4711,
                expiration: "20311206".into(),
            },
        )
        .unwrap();
        DeviceSession::issue(
            plan,
            "alice",
            "Staff",
            initial,
            pin.generated && change_pin_at_end,
        )
    }

    /// Relays a batch as a client does, stopping at the first unexpected
    /// status word; `cut`: the device leaves after that many commands.
    fn relay(&mut self, batch: &Batch, cut: Option<usize>) -> Vec<Response> {
        let mut out = Vec::new();
        for (i, c) in batch.commands.iter().enumerate() {
            if cut == Some(i) {
                break;
            }
            let r = match c.channel {
                Channel::Ctap => Response {
                    data: self.card.fido_request(&c.bytes, &mut AlwaysPresent),
                    sw: 0x9000,
                },
                Channel::Piv => {
                    let mut r = Response::from_apdu(&self.card.transmit(&c.bytes));
                    while r.sw >> 8 == 0x61 {
                        let get = [0x00, 0xC0, 0x00, 0x00, (r.sw & 0xFF) as u8];
                        let more = Response::from_apdu(&self.card.transmit(&get));
                        r.data.extend(more.data);
                        r.sw = more.sw;
                    }
                    r
                }
            };
            let stop = !c.expect.contains(&r.sw);
            out.push(r);
            if stop {
                break;
            }
        }
        out
    }

    /// Carries out a server-side effect (attestation, CA, Graph); `None`
    /// for a batch or the end.
    fn carry_out(&mut self, effect: &Effect) -> Option<Input<'static>> {
        Some(match effect {
            Effect::VerifyAttestation { keys, .. } => {
                self.effects.push("verify attestation".into());
                Input::Attested {
                    outcomes: keys.iter().map(|_| Ok(())).collect(),
                    required: true,
                }
            }
            Effect::Certify {
                keys,
                chuid_to_sign,
            } => {
                self.effects.push("certify".into());
                let certificates = keys
                    .iter()
                    .map(|k| {
                        let app = &self.policy.pki_applications[0];
                        let req =
                            LeafRequest::from_template(app, &self.user, None, &k.spki_der).unwrap();
                        (k.slot, self.ca.issue(&req, NOW).unwrap().der)
                    })
                    .collect();
                Input::Certified(Ok(keyward_engine::piv::Certified {
                    certificates,
                    chuid_signature: self.ca.sign_chuid(chuid_to_sign).unwrap(),
                }))
            }
            Effect::FetchCreationOptions { .. } => {
                self.effects.push("fetch creation options".into());
                Input::CreationOptions(Ok(("alice@contoso.com".into(), creation_options())))
            }
            Effect::VerifyPasskeyAttestation { registration } => {
                self.effects.push("verify passkey attestation".into());
                assert!(!registration.attestation_object.is_empty());
                Input::PasskeyAttested {
                    outcome: Ok(()),
                    required: true,
                }
            }
            Effect::RegisterPasskey { display_name, .. } => {
                self.effects.push("register passkey".into());
                assert_eq!(display_name, "Crescendo C4000 31000141");
                Input::Registered(Ok(RegisteredMethod {
                    id: "graph-method-1".into(),
                    aaguid: None,
                }))
            }
            Effect::Send(_) | Effect::End(_) => return None,
        })
    }

    /// Runs `session` from `batch` to its end: prompts answered by
    /// `answer`, device batches relayed (`cut_at`: the device leaves in the
    /// batch of that step, after its first command).
    fn run(
        &mut self,
        session: &mut DeviceSession,
        mut batch: Batch,
        answer: &dyn Fn(&Prompt) -> Option<String>,
        cut_at: Option<&str>,
    ) -> Ending {
        loop {
            self.effects.push(format!("send {}", batch.step()));
            let answers: Answers = batch
                .prompts
                .iter()
                .filter(|_| batch.awaits_answers())
                .filter_map(|p| answer(p).map(|a| (p.kind.as_str().to_string(), a)))
                .collect();
            let cut = (cut_at == Some(batch.step().as_str())).then_some(1);
            let responses = self.relay(&batch, cut);
            let mut effect = self.step(
                session,
                Input::Relayed {
                    responses: &responses,
                    answers: &answers,
                    transport_error: cut.map(|_| "device_removed"),
                },
            );
            while let Some(input) = self.carry_out(&effect) {
                effect = self.step(session, input);
            }
            match effect {
                Effect::Send(next) => batch = next,
                Effect::End(ending) => {
                    self.effects.push(format!("end {}", ending.status));
                    return ending;
                }
                _ => unreachable!("carried out above"),
            }
        }
    }

    fn step(&mut self, session: &mut DeviceSession, input: Input<'_>) -> Effect {
        let (policy, user) = (self.policy.clone(), self.user.clone());
        let mut cx = Context {
            policy: &policy,
            user: &user,
            now: NOW,
            rng: &mut self.rng,
        };
        // Sealed and unsealed between steps, as the server keeps it.
        let sealed = serde_json::to_vec(&*session).unwrap();
        *session = serde_json::from_slice(&sealed).unwrap();
        session.step(input, &mut cx).unwrap()
    }

    /// The PIN verifies on the device.
    fn pin_verifies(&mut self, pin: &str) -> bool {
        self.card.transmit(&piv::select_piv().to_bytes());
        let verify = piv::verify(key_ref::PIN, Some(pin.as_bytes())).unwrap();
        Response::from_apdu(&self.card.transmit(&verify.to_bytes())).sw == 0x9000
    }

    fn take_effects(&mut self) -> Vec<String> {
        std::mem::take(&mut self.effects)
    }
}

fn creation_options() -> CreationRequest {
    CreationRequest {
        rp_id: "login.microsoft.com".into(),
        rp_name: "Microsoft".into(),
        user_id: b"object-id-of-alice".to_vec(),
        user_name: "alice@contoso.com".into(),
        user_display_name: "Alice Archer".into(),
        challenge: (0u8..32).collect(),
        algorithms: vec![-7],
        exclude_credentials: vec![],
    }
}

fn answers(pairs: &'static [(PromptKind, &'static str)]) -> impl Fn(&Prompt) -> Option<String> {
    move |p| {
        pairs
            .iter()
            .find(|(kind, _)| *kind == p.kind)
            .map(|(_, a)| a.to_string())
    }
}

/// Shared PIN, Not Displayed, with Change PIN: the person confirms, types
/// the PIN shown back and chooses their own.
fn shown_pin_typed_back(p: &Prompt) -> Option<String> {
    match p.kind {
        PromptKind::ConfirmTouch => Some("true".into()),
        PromptKind::SetNewPin => Some("86420975".into()),
        PromptKind::ShowInitialPin => p.value.as_ref().map(|v| v.expose().to_string()),
        _ => None,
    }
}

fn none(_: &Prompt) -> Option<String> {
    None
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The PIV part of an issuance on a C4000, up to the writes.
const C4000_PIV: [&str; 4] = [
    "send identify device",
    "send authenticate management key",
    "certify",
    "send write certificate 9A",
];

/// A C4000 issuance with a passkey: the PIV part, then the FIDO step whose
/// prompt batch begins at `prompts_step`, then `before_end` and the end.
fn c4000_with_passkey(prompts_step: &str, before_end: &[&str]) -> Vec<String> {
    let mut want = strings(&C4000_PIV);
    want.push(format!("send {prompts_step}"));
    want.extend(strings(&[
        "fetch creation options",
        "send FIDO: PIN",
        "send FIDO: register the passkey",
        "verify passkey attestation",
        "register passkey",
    ]));
    want.extend(strings(before_end));
    want.push("end issued".into());
    want
}

#[test]
fn piv_only_on_a_c4000_certifies_without_a_round_trip_and_ends_issued() {
    let mut b = Bench::new(ProfileKind::C4000, None);
    let (mut s, batch) = b.issue(Some("24681357"), false);
    let end = b.run(&mut s, batch, &none, None);
    let mut want = strings(&C4000_PIV);
    want.push("end issued".into());
    assert_eq!(b.take_effects(), want);
    assert_eq!(
        (end.status, end.device, end.step.as_str()),
        (SessionStatus::Issued, DeviceMove::Issued, "done")
    );
    assert_eq!(end.certificates.len(), 1);
    assert!(!end.revoked && end.passkey.is_none() && end.initial_pin.is_none());
    assert_eq!(end.at, NOW);
    assert!(b.pin_verifies("24681357"));
    // The session is over: nothing more moves it.
    let mut cx = Context {
        policy: &b.policy,
        user: &b.user,
        now: NOW,
        rng: &mut b.rng,
    };
    let relayed = Input::Relayed {
        responses: &[],
        answers: &BTreeMap::new(),
        transport_error: None,
    };
    assert_eq!(s.step(relayed, &mut cx).unwrap_err(), Refusal::Finished);
}

/// Issue 15, item 1: a YubiKey recorded as a generic PIV device (whose
/// keys are not attested) is refused at the first batch: the importer
/// cannot choose a type that skips attestation. A real generic card (a
/// C4000 recorded as generic PIV answers no YubiKey version) goes on.
#[test]
fn a_yubikey_recorded_as_generic_piv_is_refused_at_identification() {
    let generic = |profile| {
        let mut b = Bench::new(profile, None);
        b.device.device_type = DeviceType::Piv;
        b.device.firmware_version = None;
        b.policy = serde_json::from_value(json!({
            "name": "Generic", "device_types": ["piv"], "management_key": "keep",
            "pin_application": { "min_length": 6, "max_length": 8, "character_set": "numeric" },
            "pki_applications": [
                { "name": "PIV Authentication", "slot": "9a", "algorithm": "eccp256", "certificate_authority": "Keyward Issuing CA",
                  "template": { "subject_dn": "CN={display_name}", "subject_alt_names": ["upn"], "validity_days": 365,
                                "key_usage": ["digital_signature"], "extended_key_usage": ["client_auth"] } }
            ],
        }))
        .unwrap();
        b
    };
    let mut b = generic(ProfileKind::Yubikey5);
    let (mut s, batch) = b.issue(Some("24681357"), false);
    let end = b.run(&mut s, batch, &none, None);
    assert_eq!(end.status, SessionStatus::Failed, "{end:?}");
    let f = end.failure.unwrap();
    assert_eq!(
        (f.code, f.step),
        (FailureCode::DeviceMismatch, Step::IdentifyDevice)
    );
    assert!(
        f.message.contains("identifies as a YubiKey"),
        "{}",
        f.message
    );
    assert!(end.certificates.is_empty());

    let mut b = generic(ProfileKind::C4000);
    let (mut s, batch) = b.issue(Some("24681357"), false);
    let end = b.run(&mut s, batch, &none, None);
    assert_eq!(end.status, SessionStatus::Issued, "{end:?}");
}

#[test]
fn a_yubikey_has_its_keys_attested_before_they_are_certified() {
    let mut b = Bench::new(ProfileKind::Yubikey5, None);
    let (mut s, batch) = b.issue(Some("24681357"), false);
    let end = b.run(&mut s, batch, &none, None);
    assert_eq!(
        b.take_effects(),
        strings(&[
            "send select PIV",
            "send authenticate management key",
            "verify attestation",
            "certify",
            "send write certificate 9A",
            "end issued"
        ])
    );
    assert_eq!(end.status, SessionStatus::Issued);
    assert!(b.pin_verifies("24681357"));
}

#[test]
fn an_unattested_key_under_required_attestation_fails_before_anything_is_certified() {
    let mut b = Bench::new(ProfileKind::Yubikey5, None);
    let (mut s, batch) = b.issue(Some("24681357"), false);
    b.effects.push(format!("send {}", batch.step()));
    let r = b.relay(&batch, None);
    let relayed = |r| Input::Relayed {
        responses: r,
        answers: Box::leak(Box::new(BTreeMap::new())),
        transport_error: None,
    };
    let Effect::Send(batch) = b.step(&mut s, relayed(&r)) else {
        panic!("batch 2")
    };
    let r = b.relay(&batch, None);
    assert!(matches!(
        b.step(&mut s, relayed(&r)),
        Effect::VerifyAttestation {
            serial: 31_000_141,
            ..
        }
    ));
    let Effect::End(end) = b.step(
        &mut s,
        Input::Attested {
            outcomes: vec![Err("the attestation names serial 1, not 31000141".into())],
            required: true,
        },
    ) else {
        panic!("the attempt ends")
    };
    let f = end.failure.unwrap();
    assert_eq!(
        (f.code, f.step, end.status, end.device),
        (
            FailureCode::AttestationFailed,
            Step::AttestKey(0x9A),
            SessionStatus::Failed,
            DeviceMove::Failed
        )
    );
    assert!(end.certificates.is_empty(), "nothing was certified");
}

#[test]
fn fido_with_the_shared_device_pin_registers_the_passkey_in_three_round_trips() {
    let mut b = Bench::new(ProfileKind::C4000, Some(true));
    let (mut s, batch) = b.issue(Some("24681357"), false);
    let end = b.run(
        &mut s,
        batch,
        &answers(&[(PromptKind::ConfirmTouch, "true")]),
        None,
    );
    assert_eq!(
        b.take_effects(),
        c4000_with_passkey("FIDO: register the passkey", &[])
    );
    let passkey = end.passkey.expect("the passkey goes on record");
    assert_eq!(
        (
            passkey.graph_id.as_str(),
            passkey.entra_user.as_str(),
            passkey.passkey_service_id
        ),
        (
            "graph-method-1",
            "alice@contoso.com",
            uuid::Uuid::from_u128(7)
        )
    );
    assert_eq!(end.certificates.len(), 1);
    assert!(!end.revoked);
}

#[test]
fn fido_with_its_own_pin_asks_the_person_to_set_it() {
    let mut b = Bench::new(ProfileKind::C4000, Some(false));
    let (mut s, batch) = b.issue(Some("24681357"), false);
    let end = b.run(
        &mut s,
        batch,
        &answers(&[
            (PromptKind::SetFidoPin, "975318"),
            (PromptKind::ConfirmTouch, "true"),
        ]),
        None,
    );
    assert_eq!(b.take_effects(), c4000_with_passkey("FIDO: PIN", &[]));
    assert!(end.passkey.is_some());
}

#[test]
fn not_displayed_without_change_keeps_the_generated_pin_for_get_initial_pin() {
    let mut b = Bench::new(ProfileKind::C4000, None);
    let (mut s, batch) = b.issue(None, false);
    let end = b.run(&mut s, batch, &none, None);
    let pin = end.initial_pin.expect("kept for Get Initial PIN");
    assert!(b.pin_verifies(pin.expose()));
    let mut want = strings(&C4000_PIV);
    want.push("end issued".into());
    assert_eq!(b.take_effects(), want);
}

#[test]
fn not_displayed_with_change_asks_the_persons_pin_after_certifying() {
    let mut b = Bench::new(ProfileKind::C4000, None);
    let (mut s, batch) = b.issue(None, true);
    let end = b.run(
        &mut s,
        batch,
        &answers(&[(PromptKind::SetNewPin, "86420975")]),
        None,
    );
    assert_eq!(
        b.take_effects(),
        strings(&[
            "send identify device",
            "send authenticate management key",
            "certify",
            "send set new PIN",
            "send write certificate 9A",
            "end issued"
        ])
    );
    assert!(end.initial_pin.is_none(), "the person chose their own");
    assert!(b.pin_verifies("86420975"));
}

#[test]
fn not_displayed_with_change_and_a_shared_pin_changes_it_after_the_registration() {
    let mut b = Bench::new(ProfileKind::C4000, Some(true));
    let (mut s, batch) = b.issue(None, true);
    // The registration shows the initial PIN; the person types it back,
    // then chooses their own, which one last batch sets.
    let end = b.run(&mut s, batch, &shown_pin_typed_back, None);
    assert_eq!(
        b.take_effects(),
        c4000_with_passkey("FIDO: PIN", &["send set new PIN", "send set new PIN"])
    );
    assert!(end.passkey.is_some() && end.initial_pin.is_none());
    assert!(b.pin_verifies("86420975"));
}

#[test]
fn a_device_removed_in_the_writes_fails_the_attempt_and_retry_finishes_it() {
    let mut b = Bench::new(ProfileKind::C4000, None);
    let (mut s, batch) = b.issue(Some("24681357"), false);
    let end = b.run(&mut s, batch, &none, Some("write certificate 9A"));
    let f = end.failure.clone().unwrap();
    assert_eq!(
        (f.code, end.status, end.device),
        (
            FailureCode::DeviceRemoved,
            SessionStatus::Failed,
            DeviceMove::Failed
        )
    );
    assert!(end.revoked, "the attempt's certificates are revoked");
    assert_eq!(end.certificates.len(), 1);
    let mut want = strings(&C4000_PIV);
    want.push("end failed".into());
    assert_eq!(b.take_effects(), want);

    let batch = s.retry().expect("a failed attempt is retried");
    let end = b.run(&mut s, batch, &none, None);
    assert_eq!(end.status, SessionStatus::Issued);
    let mut want = strings(&C4000_PIV);
    want.push("end issued".into());
    assert_eq!(b.take_effects(), want);
    assert!(b.pin_verifies("24681357"));
    assert!(
        s.retry().is_none(),
        "an issued session keeps nothing to retry"
    );
}

#[test]
fn cancel_after_a_failure_ends_the_session_for_good() {
    let mut b = Bench::new(ProfileKind::C4000, Some(true));
    let (mut s, batch) = b.issue(Some("24681357"), false);
    // The person declines the registration: the attempt fails after its
    // certificates were issued, and they are revoked.
    let end = b.run(
        &mut s,
        batch,
        &answers(&[(PromptKind::ConfirmTouch, "false")]),
        None,
    );
    let f = end.failure.unwrap();
    assert_eq!(f.code, FailureCode::DeclinedByPerson);
    assert!(end.revoked && end.certificates.len() == 1);
    let (certificates, passkey) = s.cancel();
    assert!(certificates.is_empty() && passkey.is_none());
    assert!(s.retry().is_none());
}

#[test]
fn recycle_after_issuance_returns_the_device_to_factory_values() {
    let mut b = Bench::new(ProfileKind::C4000, None);
    let (mut s, batch) = b.issue(Some("24681357"), false);
    b.run(&mut s, batch, &none, None);
    b.take_effects();
    let (mut r, batch) = DeviceSession::recycle(&s, DeviceType::C4000, None, false);
    let end = b.run(&mut r, batch, &none, None);
    assert_eq!(
        (end.status, end.device, end.failure),
        (SessionStatus::Recycled, DeviceMove::Recycled, None)
    );
    assert!(b.pin_verifies("123456"), "the factory PIN");
    assert_eq!(b.effects.last().map(String::as_str), Some("end recycled"));
}

#[test]
fn change_pin_takes_the_current_and_the_new_pin_and_counts_wrong_tries() {
    let mut b = Bench::new(ProfileKind::C4000, None);
    let (mut s, batch) = b.issue(Some("24681357"), false);
    b.run(&mut s, batch, &none, None);
    b.take_effects();

    let (mut c, batch) = DeviceSession::change_pin(&s);
    let wrong = answers(&[
        (PromptKind::EnterPin, "11111111"),
        (PromptKind::SetNewPin, "97531864"),
    ]);
    let end = b.run(&mut c, batch, &wrong, None);
    assert_eq!(end.status, SessionStatus::PinChangeFailed);
    assert_eq!(end.tries_left, Some(2));
    assert_eq!(end.failure.unwrap().code, FailureCode::WrongPin);

    let (mut c, batch) = DeviceSession::change_pin(&s);
    let right = answers(&[
        (PromptKind::EnterPin, "24681357"),
        (PromptKind::SetNewPin, "97531864"),
    ]);
    let end = b.run(&mut c, batch, &right, None);
    assert_eq!(end.status, SessionStatus::PinChanged);
    assert_eq!(
        b.take_effects()[4..],
        strings(&[
            "send select PIV",
            "send enter the current and the new PIN",
            "send select PIV",
            "end pin_changed"
        ])
    );
    assert!(b.pin_verifies("97531864"));
}

#[test]
fn an_input_the_state_does_not_take_is_refused_and_changes_nothing() {
    let mut b = Bench::new(ProfileKind::C4000, None);
    let (mut s, batch) = b.issue(Some("24681357"), false);
    let mut cx = Context {
        policy: &b.policy,
        user: &b.user,
        now: NOW,
        rng: &mut b.rng,
    };
    let early = Input::Certified(Err(keyward_engine::Failure::new(
        FailureCode::Internal,
        Step::CertifyKeys,
        "early",
    )));
    assert!(matches!(
        s.step(early, &mut cx),
        Err(Refusal::OutOfOrder(_))
    ));
    // The session goes on from where it was.
    assert_eq!(s.batch(), &batch);
    let end = b.run(&mut s, batch, &none, None);
    assert_eq!(end.status, SessionStatus::Issued);
}

#[test]
fn answers_that_break_the_pin_rules_are_refused_before_anything_moves() {
    let mut b = Bench::new(ProfileKind::C4000, None);
    let (mut s, batch) = b.issue(None, true);
    // Up to the set_new_pin prompt.
    let mut batch = batch;
    loop {
        let r = b.relay(&batch, None);
        let mut effect = b.step(
            &mut s,
            Input::Relayed {
                responses: &r,
                answers: &BTreeMap::new(),
                transport_error: None,
            },
        );
        while let Some(input) = b.carry_out(&effect) {
            effect = b.step(&mut s, input);
        }
        let Effect::Send(next) = effect else {
            panic!("still running")
        };
        batch = next;
        if batch.awaits_answers() {
            break;
        }
    }
    let short: Answers = [("set_new_pin".to_string(), "12".to_string())].into();
    let refused = s.check_answers(&short, &b.policy).unwrap_err();
    assert_eq!(refused.field, "answers.set_new_pin");
    let missing = s.check_answers(&BTreeMap::new(), &b.policy).unwrap_err();
    assert_eq!(missing.code, "answer_required");
    let good: Answers = [("set_new_pin".to_string(), "86420975".to_string())].into();
    assert!(s.check_answers(&good, &b.policy).is_ok());
}

#[test]
fn a_failure_after_the_registration_deletes_the_passkey_again() {
    let mut b = Bench::new(ProfileKind::C4000, Some(true));
    let (mut s, batch) = b.issue(None, true);
    // The device leaves during the PIN change that follows the registration.
    let end = b.run(&mut s, batch, &shown_pin_typed_back, Some("set new PIN"));
    let f = end.failure.unwrap();
    assert_eq!(
        (f.code, end.status, end.revoked),
        (FailureCode::DeviceRemoved, SessionStatus::Failed, true)
    );
    assert_eq!(
        end.passkey.map(|p| p.graph_id),
        Some("graph-method-1".into()),
        "recorded revoked and deleted at its service"
    );
    assert_eq!(end.certificates.len(), 1);
}

/// Wrong FIDO PINs until the card answers PIN_BLOCKED (3 + 3 + 2 tries,
/// with the power cycles PIN_AUTH_BLOCKED asks for).
fn block_fido_pin(card: &mut VirtualCard) {
    use keyward_card::ctap::platform::{get_key_agreement_request, PinSession};
    use keyward_card::ctap::{self, command, permission, ClientPinResponse, PinProtocol};
    let client_pin = |card: &mut VirtualCard, req: &ctap::ClientPinRequest| {
        card.fido_request(
            &ctap::encode_request(command::CLIENT_PIN, Some(&req.to_value())),
            &mut AlwaysPresent,
        )
    };
    let mut status = 0;
    while status != 0x32 {
        if status == 0x34 {
            card.power_on();
        }
        let out = client_pin(card, &get_key_agreement_request(PinProtocol::V1));
        let v = ctap::split_response(&out).unwrap().unwrap();
        let key = ClientPinResponse::from_value(&v)
            .unwrap()
            .key_agreement
            .unwrap();
        let session = PinSession::new(PinProtocol::V1, &key, &mut rand::rngs::OsRng).unwrap();
        let req = session
            .get_token_with_permissions_request(
                "000000",
                permission::MAKE_CREDENTIAL,
                Some("login.microsoft.com"),
                &mut rand::rngs::OsRng,
            )
            .unwrap();
        status = client_pin(card, &req)[0];
        assert!([0x31, 0x32, 0x34].contains(&status), "{status:02X}");
    }
}

/// Issue 16: an unlock of a device whose own FIDO PIN is blocked unlocks
/// PIV, resets FIDO when the person confirms (reinserted, touched), and
/// registers the policy's passkey again with a new FIDO PIN, in the same
/// session; the ending says the old passkeys are erased and the new one
/// is recorded.
#[test]
fn an_unlock_resets_a_blocked_fido_pin_and_registers_the_passkey_again() {
    let mut b = Bench::new(ProfileKind::C4000, Some(false));
    let (mut s, batch) = b.issue(Some("24681357"), false);
    let issued = b.run(
        &mut s,
        batch,
        &answers(&[
            (PromptKind::SetFidoPin, "975318"),
            (PromptKind::ConfirmTouch, "true"),
        ]),
        None,
    );
    assert!(issued.passkey.is_some());
    b.take_effects();
    block_fido_pin(&mut b.card);
    b.card.power_on();
    let (mut u, batch) = DeviceSession::unlock(
        &s,
        DeviceType::C4000,
        None,
        keyward_engine::piv::Secret::new("86421357"),
        keyward_engine::unlock::FidoPin::Own,
    )
    .unwrap();
    let end = b.run(
        &mut u,
        batch,
        &answers(&[
            (PromptKind::SetNewPin, "13572468"),
            (PromptKind::ReinsertDevice, "done"),
            (PromptKind::ConfirmTouch, "true"),
            (PromptKind::SetFidoPin, "864297"),
        ]),
        None,
    );
    assert_eq!(
        (end.status, end.device, end.failure.as_ref().map(|f| f.code)),
        (SessionStatus::Unlocked, DeviceMove::Stays, None)
    );
    assert!(end.passkeys_erased);
    assert_eq!(end.passkey_reregistration, Some(false));
    assert!(end.passkey.is_some(), "the new passkey is recorded");
    assert_eq!(
        u.notice().map(|n| n.code.as_str()),
        Some("passkey_registered_again")
    );
    assert_eq!(
        b.take_effects(),
        strings(&[
            "send set new PIN",
            "send identify device",
            "send select PIV",
            "send reset FIDO",
            "send reset FIDO",
            "send FIDO: read the authenticator",
            "send FIDO: PIN",
            "fetch creation options",
            "send FIDO: PIN",
            "send FIDO: register the passkey",
            "verify passkey attestation",
            "register passkey",
            "end unlocked",
        ])
    );
    assert!(b.pin_verifies("13572468"), "the new PIV PIN");
}

/// The same, declined: the PIV PIN is unlocked, FIDO is left blocked and
/// the notice says so; nothing is erased.
#[test]
fn an_unlock_whose_fido_reset_is_declined_unlocks_piv_and_says_fido_stays_blocked() {
    let mut b = Bench::new(ProfileKind::C4000, Some(false));
    let (mut s, batch) = b.issue(Some("24681357"), false);
    b.run(
        &mut s,
        batch,
        &answers(&[
            (PromptKind::SetFidoPin, "975318"),
            (PromptKind::ConfirmTouch, "true"),
        ]),
        None,
    );
    block_fido_pin(&mut b.card);
    let (mut u, batch) = DeviceSession::unlock(
        &s,
        DeviceType::C4000,
        None,
        keyward_engine::piv::Secret::new("86421357"),
        keyward_engine::unlock::FidoPin::Own,
    )
    .unwrap();
    let end = b.run(
        &mut u,
        batch,
        &answers(&[
            (PromptKind::SetNewPin, "13572468"),
            (PromptKind::ReinsertDevice, "done"),
            (PromptKind::ConfirmTouch, "false"),
        ]),
        None,
    );
    assert_eq!(end.status, SessionStatus::Unlocked);
    assert!(!end.passkeys_erased && end.passkey.is_none());
    assert_eq!(
        u.notice().map(|n| n.code.as_str()),
        Some("fido_pin_still_blocked")
    );
    assert!(b.pin_verifies("13572468"));
}

/// An update of the device `issued` left: the plan from the kept
/// management key.
fn update_plan(b: &Bench, issued: &DeviceSession) -> keyward_engine::update::UpdatePlan {
    keyward_engine::update::UpdatePlan {
        device_type: b.device.device_type,
        serial: b.device.serial.0,
        firmware: None,
        management_key: Some(issued.kept().unwrap().management_key.value.clone()),
        pin_change: false,
        generate: vec![],
        same_key: vec![],
        remove: vec![],
        retire: None,
    }
}

fn start_update(
    b: &mut Bench,
    issued: &DeviceSession,
    plan: keyward_engine::update::UpdatePlan,
    passkey: bool,
) -> (DeviceSession, Batch) {
    let (policy, user) = (b.policy.clone(), b.user.clone());
    let mut cx = Context {
        policy: &policy,
        user: &user,
        now: NOW,
        rng: &mut b.rng,
    };
    DeviceSession::update(issued, plan, passkey, &mut cx).unwrap()
}

/// The certificate in slot 9A as the device holds it.
fn slot_9a_certificate(b: &mut Bench) -> Vec<u8> {
    b.card.transmit(&piv::select_piv().to_bytes());
    let get = piv::get_data(piv::object::AUTHENTICATION_CERT)
        .extended(true)
        .with_le(65536);
    let r = Response::from_apdu(&b.card.transmit(&get.to_bytes()));
    let v = keyward_card::tlv::find(&r.data, 0x53).unwrap().to_vec();
    piv::parse_cert_container(&v).unwrap().certificate
}

/// Issue 17: a renewal with a new key and a PIN change in one update:
/// the PIN prompts, then three device round trips (identity and PIN
/// change with the witness; the new key; the writes), the new
/// certificate on the device, the new PIN verifying.
#[test]
fn an_update_renews_with_a_new_key_and_changes_the_pin() {
    let mut b = Bench::new(ProfileKind::C4000, None);
    let (mut s, batch) = b.issue(Some("24681357"), false);
    let issued = b.run(&mut s, batch, &none, None);
    let old = slot_9a_certificate(&mut b);
    assert_eq!(issued.certificates[0].1, old);
    b.take_effects();
    let mut plan = update_plan(&b, &s);
    plan.pin_change = true;
    plan.generate = vec![keyward_engine::piv::KeySpec {
        slot: 0x9A,
        algorithm: 0x11,
    }];
    let (mut u, batch) = start_update(&mut b, &s, plan, false);
    let end = b.run(
        &mut u,
        batch,
        &answers(&[
            (PromptKind::EnterPin, "24681357"),
            (PromptKind::SetNewPin, "13572468"),
        ]),
        None,
    );
    assert_eq!(
        (end.status, end.failure.as_ref().map(|f| f.code)),
        (SessionStatus::Updated, None)
    );
    assert_eq!(
        b.take_effects(),
        strings(&[
            "send enter the current and the new PIN",
            "send identify device",
            "send authenticate management key",
            "certify",
            "send write certificate 9A",
            "end updated",
        ])
    );
    let new = slot_9a_certificate(&mut b);
    assert_ne!(new, old, "a new certificate");
    assert_eq!(end.certificates, vec![(0x9A, new)]);
    assert!(!end.revoked);
    assert!(b.pin_verifies("13572468"));
}

/// The same key renewed: the device's certificate compared with the one on
/// record, certified again, written: two round trips, the key unchanged.
/// A device holding another certificate is refused.
#[test]
fn an_update_renews_for_the_same_key_in_two_round_trips() {
    use der::{Decode, Encode};
    let mut b = Bench::new(ProfileKind::C4000, None);
    let (mut s, batch) = b.issue(Some("24681357"), false);
    b.run(&mut s, batch, &none, None);
    let old = slot_9a_certificate(&mut b);
    let spki = |der: &[u8]| {
        x509_cert::Certificate::from_der(der)
            .unwrap()
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .unwrap()
    };
    let old_spki = spki(&old);
    let same = |certificate: Vec<u8>| keyward_engine::update::SameKey {
        slot: 0x9A,
        algorithm: 0x11,
        spki_der: old_spki.clone(),
        certificate,
    };
    b.take_effects();
    let mut plan = update_plan(&b, &s);
    plan.same_key = vec![same(old.clone())];
    let (mut u, batch) = start_update(&mut b, &s, plan.clone(), false);
    let end = b.run(&mut u, batch, &none, None);
    assert_eq!(end.status, SessionStatus::Updated, "{:?}", end.failure);
    assert_eq!(
        b.take_effects(),
        strings(&[
            "send identify device",
            "certify",
            "send authenticate management key",
            "end updated",
        ])
    );
    let new = slot_9a_certificate(&mut b);
    assert_ne!(new, old);
    assert_eq!(spki(&new), spki(&old), "the same key");
    // The record says `old`, the device holds `new`: refused, nothing written.
    let mut plan = update_plan(&b, &s);
    plan.same_key = vec![same(old)];
    let (mut u, batch) = start_update(&mut b, &s, plan, false);
    let end = b.run(&mut u, batch, &none, None);
    assert_eq!(
        (end.status, end.failure.map(|f| f.code)),
        (
            SessionStatus::UpdateFailed,
            Some(FailureCode::CertificateMismatch)
        )
    );
    assert_eq!(slot_9a_certificate(&mut b), new);
}

/// A passkey added to an issued device: three device round trips (the
/// identity with the FIDO probe, the PIN token, makeCredential).
#[test]
fn an_update_adds_a_passkey_in_three_round_trips() {
    let mut b = Bench::new(ProfileKind::C4000, None);
    let (mut s, batch) = b.issue(Some("24681357"), false);
    b.run(&mut s, batch, &none, None);
    b.take_effects();
    // The policy gains a FIDO application with its own PIN.
    b.policy = policy(Some(false));
    let plan = update_plan(&b, &s);
    let (mut u, batch) = start_update(&mut b, &s, plan, true);
    let end = b.run(
        &mut u,
        batch,
        &answers(&[
            (PromptKind::SetFidoPin, "975318"),
            (PromptKind::ConfirmTouch, "true"),
        ]),
        None,
    );
    assert_eq!(end.status, SessionStatus::Updated, "{:?}", end.failure);
    assert!(end.passkey.is_some());
    assert_eq!(end.passkey_reregistration, Some(false));
    // Device round trips: the identity with the FIDO probe, the PIN token
    // (the second "FIDO: PIN"; the first is the prompt batch), makeCredential.
    assert_eq!(
        b.take_effects(),
        strings(&[
            "send identify device",
            "send FIDO: PIN",
            "fetch creation options",
            "send FIDO: PIN",
            "send FIDO: register the passkey",
            "verify passkey attestation",
            "register passkey",
            "end updated",
        ])
    );
}
