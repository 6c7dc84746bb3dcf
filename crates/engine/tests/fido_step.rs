//! The FIDO step against the in-process virtual authenticator (keyward-vcard):
//! the engine's CTAP messages are handled by the virtual device exactly as
//! a relaying client would pass them, with no server.

use std::collections::BTreeMap;

use keyward_card::ctap::{
    self, command, flags, AuthenticatorData, GetAssertionRequest, GetAssertionResponse, StatusCode,
};
use keyward_engine::fido::{
    CreationRequest, FidoPlan, FidoRegistration, PinSource, Registration, STEP_PIN,
};
use keyward_engine::piv::Secret;
use keyward_engine::{Batch, Channel, PromptKind, Response};
use keyward_vcard::fido::{
    attestation, AlwaysPresent, FidoAuthenticator, FidoConfig, FidoState, PresenceOutcome,
    UserPresence,
};
use p256::ecdsa::signature::Verifier;
use sha2::{Digest, Sha256};

const RP: &str = "login.microsoft.com";

fn authenticator(config: FidoConfig) -> (FidoAuthenticator, Vec<u8>) {
    let (ca_key, ca_name, ca_root) = attestation::test_ca().unwrap();
    let key =
        attestation::issue_attestation_key(config.aaguid, "Test", 7, &ca_key, &ca_name, vec![])
            .unwrap();
    (
        FidoAuthenticator::new(config, FidoState::default(), Box::new(key)),
        ca_root,
    )
}

/// Relays a batch as a client does: CTAP answer in `data`, 9000.
fn relay(
    auth: &mut FidoAuthenticator,
    b: &Batch,
    presence: &mut dyn UserPresence,
) -> Vec<Response> {
    b.commands
        .iter()
        .map(|c| {
            assert_eq!(c.channel, Channel::Ctap);
            Response {
                data: auth.handle(&c.bytes, presence),
                sw: 0x9000,
            }
        })
        .collect()
}

fn options() -> CreationRequest {
    CreationRequest {
        rp_id: RP.into(),
        rp_name: "Microsoft".into(),
        user_id: b"object-id-of-alice".to_vec(),
        user_name: "alice@contoso.com".into(),
        user_display_name: "Alice".into(),
        challenge: (0u8..32).collect(),
        algorithms: vec![-7],
        exclude_credentials: vec![],
    }
}

fn answers(pairs: &[(PromptKind, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_string()))
        .collect()
}

/// Runs the whole step; returns the registration.
fn register(
    auth: &mut FidoAuthenticator,
    plan: FidoPlan,
    answer: &[(PromptKind, &str)],
    presence: &mut dyn UserPresence,
) -> Result<Registration, keyward_engine::Failure> {
    let (s, b) = FidoRegistration::start(plan);
    let r = relay(auth, &b, presence);
    let s = s.on_responses(&r, &mut rand::rngs::OsRng)?;
    let (s, b) = s.on_answers(&answers(answer), &options(), &mut rand::rngs::OsRng)?;
    let r = relay(auth, &b, presence);
    let (s, b) = s.on_responses(&r)?;
    let r = relay(auth, &b, presence);
    s.on_responses(&r)
}

fn plan(pin: PinSource, touch: bool) -> FidoPlan {
    FidoPlan {
        pin,
        cred_protect: 1,
        pin_rules: None,
        touch_sensor: touch,
    }
}

/// The attestation verifies with x5c[0] over authData || SHA-256(clientDataJSON),
/// and chains to the CA (signature of x5c[0] by the root).
fn check_attestation(reg: &Registration, ca_root: &[u8]) {
    let v = ctap::decode(&reg.attestation_object).unwrap();
    let m = ctap::MapView::new(&v, "attestationObject").unwrap();
    assert_eq!(m.text_text("fmt").unwrap(), "packed");
    let auth_data = m.text_bytes("authData").unwrap();
    let stmt = ctap::MapView::new(m.get_text("attStmt").unwrap(), "attStmt").unwrap();
    assert_eq!(stmt.text_i64("alg").unwrap(), -7);
    let sig = stmt.text_bytes("sig").unwrap();
    let ciborium::value::Value::Array(x5c) = stmt.get_text("x5c").unwrap() else {
        panic!("x5c")
    };
    let ciborium::value::Value::Bytes(leaf) = &x5c[0] else {
        panic!("x5c[0]")
    };
    use x509_cert::der::Decode;
    let leaf = x509_cert::Certificate::from_der(leaf).unwrap();
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(
        leaf.tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes(),
    )
    .unwrap();
    let signed = [auth_data.as_slice(), &Sha256::digest(&reg.client_data_json)].concat();
    key.verify(
        &signed,
        &p256::ecdsa::DerSignature::from_bytes(&sig).unwrap(),
    )
    .unwrap();
    let root = x509_cert::Certificate::from_der(ca_root).unwrap();
    assert_eq!(leaf.tbs_certificate.issuer, root.tbs_certificate.subject);
    let ad = AuthenticatorData::parse(&auth_data).unwrap();
    assert_eq!(ad.rp_id_hash.as_slice(), Sha256::digest(RP).as_slice());
    assert_ne!(ad.flags & flags::UV, 0);
    assert_ne!(ad.flags & flags::UP, 0);
    let cdj: serde_json::Value = serde_json::from_slice(&reg.client_data_json).unwrap();
    assert_eq!(cdj["type"], "webauthn.create");
    assert_eq!(cdj["origin"], format!("https://{RP}"));
    assert_eq!(
        cdj["challenge"],
        keyward_engine::fido::b64url(&options().challenge)
    );
}

/// The passkey works: a discoverable getAssertion with the PIN, signature
/// checked against the registered public key.
fn assert_passkey_works(auth: &mut FidoAuthenticator, reg: &Registration, pin: &str) {
    let mut p = AlwaysPresent;
    let ka = auth.handle(
        &ctap::encode_request(
            command::CLIENT_PIN,
            Some(&ctap::platform::get_key_agreement_request(ctap::PinProtocol::V1).to_value()),
        ),
        &mut p,
    );
    let ka = ctap::ClientPinResponse::from_value(&ctap::split_response(&ka).unwrap().unwrap())
        .unwrap()
        .key_agreement
        .unwrap();
    let session =
        ctap::platform::PinSession::new(ctap::PinProtocol::V1, &ka, &mut rand::rngs::OsRng)
            .unwrap();
    let req = session
        .get_pin_token_request(pin, &mut rand::rngs::OsRng)
        .unwrap();
    let t = auth.handle(
        &ctap::encode_request(command::CLIENT_PIN, Some(&req.to_value())),
        &mut p,
    );
    assert_eq!(t[0], 0, "PIN accepted");
    let token = session
        .decrypt_token(
            &ctap::ClientPinResponse::from_value(&ctap::split_response(&t).unwrap().unwrap())
                .unwrap(),
        )
        .unwrap();
    let cdh = Sha256::digest(b"assertion client data").to_vec();
    let mut ga = GetAssertionRequest {
        rp_id: RP.into(),
        client_data_hash: cdh.clone(),
        ..Default::default()
    };
    token.sign_get_assertion(&mut ga);
    let a = auth.handle(
        &ctap::encode_request(command::GET_ASSERTION, Some(&ga.to_value())),
        &mut p,
    );
    assert_eq!(a[0], 0, "getAssertion answered {:02X}", a[0]);
    let a = GetAssertionResponse::from_value(&ctap::split_response(&a).unwrap().unwrap()).unwrap();
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&reg.public_key).unwrap();
    let signed = [a.auth_data.as_slice(), &cdh].concat();
    key.verify(
        &signed,
        &p256::ecdsa::DerSignature::from_bytes(&a.signature).unwrap(),
    )
    .unwrap();
    assert_eq!(a.credential.id, reg.credential_id);
}

#[test]
fn unshared_sets_a_new_fido_pin_on_a_yubikey_5_4() {
    let (mut auth, ca) = authenticator(FidoConfig::yubikey5((5, 4, 3)));
    // The prompts: set_fido_pin (nothing set yet) and confirm_touch.
    let (s, b) = FidoRegistration::start(plan(PinSource::Unshared, true));
    assert_eq!(b.len(), 3);
    let s = s
        .on_responses(
            &relay(&mut auth, &b, &mut AlwaysPresent),
            &mut rand::rngs::OsRng,
        )
        .unwrap();
    let kinds: Vec<_> = s.prompts().iter().map(|p| p.kind).collect();
    assert_eq!(kinds, [PromptKind::SetFidoPin, PromptKind::ConfirmTouch]);
    assert!(
        !s.device().token_with_permissions,
        "FIDO_2_1_PRE: getPinToken"
    );
    let (s, b) = s
        .on_answers(
            &answers(&[
                (PromptKind::SetFidoPin, "fido-2468"),
                (PromptKind::ConfirmTouch, "true"),
            ]),
            &options(),
            &mut rand::rngs::OsRng,
        )
        .unwrap();
    assert!(s.sets_pin());
    assert!(b.commands.iter().all(|c| c.secret));
    let (s, b) = s
        .on_responses(&relay(&mut auth, &b, &mut AlwaysPresent))
        .unwrap();
    assert_eq!(b.prompts[0].kind, PromptKind::TouchDevice);
    let reg = s
        .on_responses(&relay(&mut auth, &b, &mut AlwaysPresent))
        .unwrap();
    assert_eq!(reg.aaguid, auth.config().aaguid);
    check_attestation(&reg, &ca);
    let stored = &auth.state().credentials[0];
    assert!(stored.discoverable);
    assert_eq!(stored.cred_protect, 1);
    assert_passkey_works(&mut auth, &reg, "fido-2468");
}

#[test]
fn unshared_enters_an_existing_pin_on_a_yubikey_5_7() {
    let (mut auth, ca) = authenticator(FidoConfig::yubikey5((5, 7, 1)));
    register(
        &mut auth,
        plan(PinSource::Unshared, true),
        &[
            (PromptKind::SetFidoPin, "135790"),
            (PromptKind::ConfirmTouch, "true"),
        ],
        &mut AlwaysPresent,
    )
    .unwrap();
    // A second registration: the PIN exists now, so it is entered; CTAP 2.1
    // uses a token with the mc permission.
    let (s, b) = FidoRegistration::start(plan(PinSource::Unshared, true));
    let s = s
        .on_responses(
            &relay(&mut auth, &b, &mut AlwaysPresent),
            &mut rand::rngs::OsRng,
        )
        .unwrap();
    assert!(s.device().token_with_permissions);
    assert_eq!(s.prompts()[0].kind, PromptKind::EnterFidoPin);
    let mut o = options();
    o.user_id = b"another user".to_vec();
    let (s, b) = s
        .on_answers(
            &answers(&[
                (PromptKind::EnterFidoPin, "135790"),
                (PromptKind::ConfirmTouch, "true"),
            ]),
            &o,
            &mut rand::rngs::OsRng,
        )
        .unwrap();
    assert!(!s.sets_pin());
    let (s, b) = s
        .on_responses(&relay(&mut auth, &b, &mut AlwaysPresent))
        .unwrap();
    let reg = s
        .on_responses(&relay(&mut auth, &b, &mut AlwaysPresent))
        .unwrap();
    check_attestation(&reg, &ca);
}

#[test]
fn shared_pins_on_a_c4000() {
    // The C4000 shares the PIV PIN; here its own PIN store stands in for it,
    // set as the PIV issuance would have.
    let (mut auth, ca) = authenticator(FidoConfig::c4000((1, 0, 0)));
    let mut p = AlwaysPresent;
    let ka = auth.handle(
        &ctap::encode_request(
            command::CLIENT_PIN,
            Some(&ctap::platform::get_key_agreement_request(ctap::PinProtocol::V2).to_value()),
        ),
        &mut p,
    );
    let ka = ctap::ClientPinResponse::from_value(&ctap::split_response(&ka).unwrap().unwrap())
        .unwrap()
        .key_agreement
        .unwrap();
    let session =
        ctap::platform::PinSession::new(ctap::PinProtocol::V2, &ka, &mut rand::rngs::OsRng)
            .unwrap();
    let set = session
        .set_pin_request("24681357", &mut rand::rngs::OsRng)
        .unwrap();
    assert_eq!(
        auth.handle(
            &ctap::encode_request(command::CLIENT_PIN, Some(&set.to_value())),
            &mut p
        ),
        vec![0]
    );
    // PIN set at the start: no PIN prompt, only the confirmation.
    let (s, b) =
        FidoRegistration::start(plan(PinSource::SharedKnown(Secret::new("24681357")), false));
    let s = s
        .on_responses(&relay(&mut auth, &b, &mut p), &mut rand::rngs::OsRng)
        .unwrap();
    let kinds: Vec<_> = s.prompts().iter().map(|p| p.kind).collect();
    assert_eq!(kinds, [PromptKind::ConfirmTouch]);
    let (s, b) = s
        .on_answers(
            &answers(&[(PromptKind::ConfirmTouch, "true")]),
            &options(),
            &mut rand::rngs::OsRng,
        )
        .unwrap();
    let (s, b) = s.on_responses(&relay(&mut auth, &b, &mut p)).unwrap();
    assert!(b.prompts.is_empty(), "a card in a reader is present");
    let reg = s.on_responses(&relay(&mut auth, &b, &mut p)).unwrap();
    check_attestation(&reg, &ca);
    assert_passkey_works(&mut auth, &reg, "24681357");

    // Not Displayed: the initial PIN is shown and must be typed back.
    let (s, b) = FidoRegistration::start(plan(
        PinSource::SharedInitial(Secret::new("24681357")),
        false,
    ));
    let s = s
        .on_responses(&relay(&mut auth, &b, &mut p), &mut rand::rngs::OsRng)
        .unwrap();
    let prompts = s.prompts();
    assert_eq!(prompts[0].kind, PromptKind::ShowInitialPin);
    assert_eq!(prompts[0].value.as_ref().unwrap().expose(), "24681357");
    let wrong = s
        .clone()
        .on_answers(
            &answers(&[
                (PromptKind::ShowInitialPin, "00000000"),
                (PromptKind::ConfirmTouch, "true"),
            ]),
            &options(),
            &mut rand::rngs::OsRng,
        )
        .err()
        .unwrap();
    assert_eq!(wrong.code.as_str(), "initial_pin_mismatch");
    assert!(!format!("{wrong:?}").contains("24681357"));
    let mut o = options();
    o.user_id = b"bob".to_vec();
    let (s, b) = s
        .on_answers(
            &answers(&[
                (PromptKind::ShowInitialPin, "24681357"),
                (PromptKind::ConfirmTouch, "true"),
            ]),
            &o,
            &mut rand::rngs::OsRng,
        )
        .unwrap();
    let (s, b) = s.on_responses(&relay(&mut auth, &b, &mut p)).unwrap();
    s.on_responses(&relay(&mut auth, &b, &mut p)).unwrap();
}

#[test]
fn refusals_and_declines() {
    // A shared PIN on an authenticator without a PIN is refused early.
    let (mut auth, _) = authenticator(FidoConfig::c4000((1, 0, 0)));
    let (s, b) =
        FidoRegistration::start(plan(PinSource::SharedKnown(Secret::new("123456")), false));
    let e = s
        .on_responses(
            &relay(&mut auth, &b, &mut AlwaysPresent),
            &mut rand::rngs::OsRng,
        )
        .err()
        .unwrap();
    assert_eq!(e.code.as_str(), "fido_device_unfit");

    // A new PIN below the device's minimum or over 63 bytes, or against the
    // policy: refused before any command.
    let (s, b) = FidoRegistration::start(FidoPlan {
        pin_rules: Some(keyward_domain::PinApplication {
            min_length: 6,
            ..Default::default()
        }),
        ..plan(PinSource::Unshared, true)
    });
    let s = s
        .on_responses(
            &relay(&mut auth, &b, &mut AlwaysPresent),
            &mut rand::rngs::OsRng,
        )
        .unwrap();
    for bad in ["123", "12345", &"x".repeat(64)] {
        let e = s
            .clone()
            .on_answers(
                &answers(&[
                    (PromptKind::SetFidoPin, bad),
                    (PromptKind::ConfirmTouch, "true"),
                ]),
                &options(),
                &mut rand::rngs::OsRng,
            )
            .err()
            .unwrap();
        assert_eq!(e.code.as_str(), "pin_rules", "{bad}");
        assert_eq!(e.step, STEP_PIN);
    }
    // The person declines in the client.
    let e = s
        .clone()
        .on_answers(
            &answers(&[
                (PromptKind::SetFidoPin, "123456"),
                (PromptKind::ConfirmTouch, "false"),
            ]),
            &options(),
            &mut rand::rngs::OsRng,
        )
        .err()
        .unwrap();
    assert_eq!(e.code.as_str(), "declined_by_person");

    // A USB key whose touch is declined, cancelled by the workstation, or
    // times out.
    struct Never(PresenceOutcome);
    impl UserPresence for Never {
        fn request_user_presence(&mut self) -> PresenceOutcome {
            self.0
        }
    }
    for (outcome, code) in [
        (PresenceOutcome::Declined, "declined_by_person"),
        (PresenceOutcome::Cancelled, "touch_cancelled"),
        (PresenceOutcome::TimedOut, "touch_timeout"),
    ] {
        let (mut auth, _) = authenticator(FidoConfig::yubikey5((5, 4, 3)));
        let e = register(
            &mut auth,
            plan(PinSource::Unshared, true),
            &[
                (PromptKind::SetFidoPin, "123456"),
                (PromptKind::ConfirmTouch, "true"),
            ],
            &mut Never(outcome),
        )
        .err()
        .unwrap();
        assert_eq!(e.code.as_str(), code);
        assert!(auth.state().credentials.is_empty());
    }

    // A wrong PIN.
    let (mut auth, _) = authenticator(FidoConfig::yubikey5((5, 7, 1)));
    register(
        &mut auth,
        plan(PinSource::Unshared, true),
        &[
            (PromptKind::SetFidoPin, "123456"),
            (PromptKind::ConfirmTouch, "true"),
        ],
        &mut AlwaysPresent,
    )
    .unwrap();
    let e = register(
        &mut auth,
        plan(PinSource::Unshared, true),
        &[
            (PromptKind::EnterFidoPin, "654321"),
            (PromptKind::ConfirmTouch, "true"),
        ],
        &mut AlwaysPresent,
    )
    .err()
    .unwrap();
    assert_eq!(e.code.as_str(), "fido_pin_wrong");
    assert_eq!(e.sw, Some(StatusCode::ERR_PIN_INVALID.0 as u16));
}

#[test]
fn states_survive_sealing() {
    // The server seals each state as JSON between round trips.
    let (mut auth, ca) = authenticator(FidoConfig::c4000((1, 0, 0)));
    let (s, b) = FidoRegistration::start(plan(PinSource::Unshared, false));
    let s: keyward_engine::fido::AwaitInfo =
        serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    let s = s
        .on_responses(
            &relay(&mut auth, &b, &mut AlwaysPresent),
            &mut rand::rngs::OsRng,
        )
        .unwrap();
    let s: keyward_engine::fido::AwaitPin =
        serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    let (s, b) = s
        .on_answers(
            &answers(&[
                (PromptKind::SetFidoPin, "4444"),
                (PromptKind::ConfirmTouch, "true"),
            ]),
            &options(),
            &mut rand::rngs::OsRng,
        )
        .unwrap();
    let s: keyward_engine::fido::AwaitToken =
        serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    let (s, b) = s
        .on_responses(&relay(&mut auth, &b, &mut AlwaysPresent))
        .unwrap();
    let s: keyward_engine::fido::AwaitCredential =
        serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    let reg = s
        .on_responses(&relay(&mut auth, &b, &mut AlwaysPresent))
        .unwrap();
    check_attestation(&reg, &ca);
}
