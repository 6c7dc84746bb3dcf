//! A whole device session of the engine (`keyward_engine::session`):
//! Add Device, or a follow-up of a device it left (Recycle, Change PIN,
//! Unlock, Update with its retired-slot and passkey parts), played with
//! device responses, answers, transport errors and the server's effect
//! results all taken from the fuzzer's bytes: what a malicious agent or
//! device could send. The session is sealed and unsealed between steps as
//! the server keeps it. Any panic is a finding; refusals and failed endings
//! are the expected answers to garbage.
#![no_main]

use keyward_domain::{Device, DevicePolicy, DeviceState, DeviceType, DisplayMode, FirmwareVersion, Serial, User, UserStatus};
use keyward_engine::fido::CreationRequest;
use keyward_engine::session::Answers;
use keyward_engine::{Context, DeviceSession, Effect, Failure, FailureCode, Input, NewIssuance, RegisteredMethod, Response, Step};
use libfuzzer_sys::fuzz_target;
use rand::rngs::StdRng;
use rand::SeedableRng;

/// The fuzzer's bytes, read as needed (zeros once they run out).
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn take(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a.to_vec()
    }
    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

fn policy(fido: Option<bool>) -> DevicePolicy {
    let mut p = serde_json::json!({
        "name": "Staff", "device_types": ["c4000", "yubikey5"], "management_key": "random",
        "pin_application": { "min_length": 6, "max_length": 8, "character_set": "numeric" },
        "pki_applications": [
            { "name": "PIV Authentication", "slot": "9a", "algorithm": "eccp256", "certificate_authority": "Keyward Issuing CA",
              "template": { "subject_dn": "CN={display_name}", "subject_alt_names": ["upn"], "validity_days": 365,
                            "key_usage": ["digital_signature"], "extended_key_usage": ["client_auth"] } }
        ],
    });
    if let Some(shared) = fido {
        p["fido_application"] = serde_json::json!({
            "passkey_service_id": uuid::Uuid::from_u128(7), "share_device_pin": shared, "cred_protect": 1
        });
    }
    serde_json::from_value(p).expect("a valid policy")
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let c4000 = b.byte() & 1 == 0;
    let fido = match b.byte() % 3 {
        0 => None,
        1 => Some(false),
        _ => Some(c4000),
    };
    let policy = policy(fido);
    let device = Device {
        id: uuid::Uuid::from_u128(2),
        device_type: if c4000 { DeviceType::C4000 } else { DeviceType::YubiKey5 },
        serial: Serial(31_000_141),
        firmware_version: (!c4000).then_some(FirmwareVersion { major: 5, minor: 7, patch: 1 }),
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
    let user = User {
        id: uuid::Uuid::from_u128(1),
        login: "alice".into(),
        upn: Some("alice@contoso.com".into()),
        display_name: "Alice Archer".into(),
        email: None,
        attributes: Default::default(),
        status: UserStatus::Active,
    };
    let now = time::OffsetDateTime::from_unix_timestamp(1_796_000_000).expect("a time");
    let mut rng = StdRng::seed_from_u64(u64::from(b.byte()));
    let mode = match b.byte() % 3 {
        0 => DisplayMode::Displayed,
        1 => DisplayMode::Disguised,
        _ => DisplayMode::NotDisplayed,
    };
    let pin = (mode != DisplayMode::NotDisplayed).then_some("735194");
    let kind = b.byte() % 5;
    let Ok((issue, first)) = DeviceSession::start_issue(
        NewIssuance {
            policy: &policy,
            device: &device,
            user_login: "alice",
            display_mode: mode,
            change_pin_during_issuance: b.byte() & 1 == 1,
            pin,
            confirm_pin: pin,
            master_key: b"master key of the fuzzer",
        },
        now,
        &mut rng,
    ) else {
        return;
    };
    let Some((mut session, mut batch)) =
        session_of_kind(kind, issue, first, &device, &policy, &user, now, &mut rng, &mut b)
    else {
        return;
    };
    for _ in 0..40 {
        // The client's result for the batch: some responses, maybe a cut.
        let mut responses = Vec::new();
        for c in &batch.commands {
            if b.byte() % 16 == 0 {
                break;
            }
            let len = usize::from(b.byte());
            let data = b.take(len);
            let sw = match b.byte() % 4 {
                0 => u16::from_be_bytes([b.byte(), b.byte()]),
                _ => c.expect.first().copied().unwrap_or(0x9000),
            };
            responses.push(Response { data, sw });
        }
        let answers: Answers = batch
            .prompts
            .iter()
            .map(|p| {
                let a = match b.byte() % 3 {
                    0 => "735194".to_string(),
                    1 => String::from_utf8_lossy(&b.take(8)).into_owned(),
                    _ => "true".to_string(),
                };
                (p.kind.as_str().to_string(), a)
            })
            .collect();
        let transport_error = match b.byte() % 8 {
            0 => Some("device_removed"),
            1 => Some("timeout"),
            _ => None,
        };
        let mut input = Input::Relayed {
            responses: &responses,
            answers: &answers,
            transport_error,
        };
        let effect = loop {
            let sealed = serde_json::to_vec(&session).expect("a session seals");
            session = serde_json::from_slice(&sealed).expect("a sealed session opens");
            let mut cx = Context {
                policy: &policy,
                user: &user,
                now,
                rng: &mut rng,
            };
            let Ok(effect) = session.step(input, &mut cx) else {
                return;
            };
            input = match effect {
                Effect::VerifyAttestation { keys, .. } => Input::Attested {
                    outcomes: keys
                        .iter()
                        .map(|_| if b.byte() % 4 == 0 { Err("bad".into()) } else { Ok(()) })
                        .collect(),
                    required: b.byte() & 1 == 1,
                },
                Effect::Certify { keys, .. } => {
                    if b.byte() % 8 == 0 {
                        Input::Certified(Err(Failure::new(FailureCode::CertificateTemplate, Step::CertifyKeys, "no")))
                    } else {
                        let len = usize::from(b.byte()) * 4;
                        let der = b.take(len);
                        Input::Certified(Ok(keyward_engine::piv::Certified {
                            certificates: keys.iter().map(|k| (k.slot, der.clone())).collect(),
                            chuid_signature: b.take(64),
                        }))
                    }
                }
                Effect::FetchCreationOptions { .. } => Input::CreationOptions(Ok((
                    "alice@contoso.com".into(),
                    CreationRequest {
                        rp_id: "login.microsoft.com".into(),
                        rp_name: "Microsoft".into(),
                        user_id: b.take(16),
                        user_name: "alice@contoso.com".into(),
                        user_display_name: "Alice Archer".into(),
                        challenge: b.take(32),
                        algorithms: vec![-7],
                        exclude_credentials: vec![],
                    },
                ))),
                Effect::VerifyPasskeyAttestation { .. } => Input::PasskeyAttested {
                    outcome: if b.byte() % 4 == 0 { Err("bad".into()) } else { Ok(()) },
                    required: b.byte() & 1 == 1,
                },
                Effect::RegisterPasskey { .. } => Input::Registered(Ok(RegisteredMethod {
                    id: "m".into(),
                    aaguid: None,
                })),
                other => break other,
            };
        };
        match effect {
            Effect::Send(next) => batch = next,
            _ => return,
        }
        if b.done() {
            return;
        }
    }
});

/// The session to play: the Add Device session itself (kind 0), or a
/// follow-up of the device it left after a first batch cut short (the
/// secrets it keeps are the factory ones): Recycle, Change PIN, Unlock,
/// Update.
#[allow(clippy::too_many_arguments)]
fn session_of_kind(
    kind: u8,
    mut issue: DeviceSession,
    first: keyward_engine::Batch,
    device: &Device,
    policy: &DevicePolicy,
    user: &User,
    now: time::OffsetDateTime,
    rng: &mut StdRng,
    b: &mut Bytes<'_>,
) -> Option<(DeviceSession, keyward_engine::Batch)> {
    if kind == 0 {
        return Some((issue, first));
    }
    let mut cx = Context { policy, user, now, rng };
    let cut = Input::Relayed {
        responses: &[],
        answers: &Answers::new(),
        transport_error: Some("device_removed"),
    };
    match issue.step(cut, &mut cx) {
        Ok(Effect::End(_)) => {}
        _ => return None,
    }
    let last = issue;
    let firmware = device.firmware_version;
    match kind {
        1 => Some(DeviceSession::recycle(&last, device.device_type, firmware, b.byte() & 1 == 1)),
        2 => Some(DeviceSession::change_pin(&last)),
        3 => {
            let fido = match b.byte() % 3 {
                0 => keyward_engine::unlock::FidoPin::Absent,
                1 => keyward_engine::unlock::FidoPin::Shared,
                _ => keyward_engine::unlock::FidoPin::Own,
            };
            DeviceSession::unlock(
                &last,
                device.device_type,
                firmware,
                keyward_engine::piv::Secret::new("12345678"),
                fido,
            )
            .ok()
        }
        _ => {
            use keyward_engine::piv::KeySpec;
            let flags = b.byte();
            let mut generate = Vec::new();
            if flags & 1 == 1 {
                generate.push(KeySpec { slot: 0x9A, algorithm: 0x11 });
            }
            let retire = flags & 2 == 2 && device.device_type == DeviceType::YubiKey5;
            if retire || flags & 4 == 4 {
                generate.push(KeySpec { slot: 0x9D, algorithm: 0x11 });
            }
            let len = usize::from(b.byte());
            let same_key = if flags & 8 == 8 {
                vec![keyward_engine::update::SameKey {
                    slot: 0x9C,
                    algorithm: 0x11,
                    certificate: b.take(len),
                    spki_der: b.take(91),
                }]
            } else {
                vec![]
            };
            let plan = keyward_engine::update::UpdatePlan {
                device_type: device.device_type,
                serial: device.serial.0,
                firmware: firmware.map(|f| (f.major as u8, f.minor as u8, f.patch as u8)),
                management_key: last.kept().map(|k| k.management_key.value.clone()),
                pin_change: flags & 16 == 16,
                generate,
                same_key,
                remove: if flags & 32 == 32 { vec![0x9E] } else { vec![] },
                retire: retire.then(|| keyward_engine::update::Retire {
                    certificate: b.take(len),
                    spki_der: b.take(91),
                    decided: None,
                }),
            };
            let passkey = flags & 64 == 64 && policy.fido_application.is_some();
            DeviceSession::update(&last, plan, passkey, &mut cx).ok()
        }
    }
}
