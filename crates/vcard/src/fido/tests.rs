//! Authenticator tests, written as a platform would drive it: through the
//! shared codecs of keyward-card, with real PIN protocol crypto.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ciborium::Value;
use keyward_card::ctap::*;
use p256::ecdsa::signature::Verifier;
use rand::rngs::OsRng;
use std::result::Result;

use super::{
    attestation, AlwaysPresent, Clock, FidoAuthenticator, FidoConfig, FidoPinStore, FidoState,
    LocalPinStore, PinVerification, PresenceOutcome, UserPresence,
};
use sha2::Digest;

struct TestClock(Mutex<Instant>);

impl Clock for TestClock {
    fn now(&self) -> Instant {
        *self.0.lock().unwrap()
    }
}

impl TestClock {
    fn advance(&self, d: Duration) {
        *self.0.lock().unwrap() += d;
    }
}

struct Scripted(Vec<PresenceOutcome>, usize);

impl UserPresence for Scripted {
    fn request_user_presence(&mut self) -> PresenceOutcome {
        self.1 += 1;
        if self.0.is_empty() {
            PresenceOutcome::Confirmed
        } else {
            self.0.remove(0)
        }
    }
}

struct Platform {
    auth: FidoAuthenticator,
    clock: Arc<TestClock>,
    ca_root: Vec<u8>,
}

fn platform(config: FidoConfig) -> Platform {
    let (ca_key, ca_name, ca_root) = attestation::test_ca().unwrap();
    let att =
        attestation::issue_attestation_key(config.aaguid, "Test", 7, &ca_key, &ca_name, vec![])
            .unwrap();
    let clock = Arc::new(TestClock(Mutex::new(Instant::now())));
    Platform {
        auth: FidoAuthenticator::with_clock(
            config,
            FidoState::default(),
            Box::new(att),
            clock.clone(),
        ),
        clock,
        ca_root,
    }
}

fn yk(fw: (u8, u8, u8)) -> Platform {
    platform(FidoConfig::yubikey5(fw))
}

impl Platform {
    fn call_with(
        &mut self,
        cmd: u8,
        params: Option<Value>,
        presence: &mut dyn UserPresence,
    ) -> Result<Option<Value>, StatusCode> {
        let resp = self
            .auth
            .handle(&encode_request(cmd, params.as_ref()), presence);
        assert!(!resp.is_empty());
        if resp[0] == 0 && resp.len() > 1 {
            // Everything the authenticator emits is canonical.
            assert!(is_canonical(&decode(&resp[1..]).unwrap()));
        }
        split_response(&resp).map_err(|e| e.status)
    }

    fn call(&mut self, cmd: u8, params: Option<Value>) -> Result<Option<Value>, StatusCode> {
        self.call_with(cmd, params, &mut AlwaysPresent)
    }

    fn info(&mut self) -> GetInfoResponse {
        GetInfoResponse::from_value(&self.call(command::GET_INFO, None).unwrap().unwrap()).unwrap()
    }

    fn client_pin(&mut self, req: ClientPinRequest) -> Result<ClientPinResponse, StatusCode> {
        self.call(command::CLIENT_PIN, Some(req.to_value()))
            .map(|v| {
                v.map(|v| ClientPinResponse::from_value(&v).unwrap())
                    .unwrap_or_default()
            })
    }

    fn shared(&mut self, protocol: PinProtocol) -> (CoseEc2Key, SharedSecret) {
        let ka = self
            .client_pin(ClientPinRequest {
                pin_uv_auth_protocol: Some(protocol.number()),
                sub_command: client_pin::GET_KEY_AGREEMENT,
                ..Default::default()
            })
            .unwrap()
            .key_agreement
            .unwrap();
        platform_key_agreement(protocol, &ka, &mut OsRng).unwrap()
    }

    fn set_pin(&mut self, protocol: PinProtocol, pin: &str) -> Result<(), StatusCode> {
        let (key, shared) = self.shared(protocol);
        let enc = protocol
            .encrypt(&shared, &pad_pin(pin.as_bytes()).unwrap(), &mut OsRng)
            .unwrap();
        self.client_pin(ClientPinRequest {
            pin_uv_auth_protocol: Some(protocol.number()),
            sub_command: client_pin::SET_PIN,
            key_agreement: Some(key),
            pin_uv_auth_param: Some(protocol.authenticate_shared(&shared, &enc)),
            new_pin_enc: Some(enc),
            ..Default::default()
        })
        .map(|_| ())
    }

    fn change_pin(
        &mut self,
        protocol: PinProtocol,
        old: &str,
        new: &str,
    ) -> Result<(), StatusCode> {
        let (key, shared) = self.shared(protocol);
        let new_enc = protocol
            .encrypt(&shared, &pad_pin(new.as_bytes()).unwrap(), &mut OsRng)
            .unwrap();
        let hash_enc = protocol
            .encrypt(&shared, &pin_hash16(old.as_bytes()), &mut OsRng)
            .unwrap();
        let param =
            protocol.authenticate_shared(&shared, &[new_enc.as_slice(), &hash_enc].concat());
        self.client_pin(ClientPinRequest {
            pin_uv_auth_protocol: Some(protocol.number()),
            sub_command: client_pin::CHANGE_PIN,
            key_agreement: Some(key),
            pin_uv_auth_param: Some(param),
            new_pin_enc: Some(new_enc),
            pin_hash_enc: Some(hash_enc),
            ..Default::default()
        })
        .map(|_| ())
    }

    /// getPinToken (permissions None) or getPinUvAuthTokenUsingPinWithPermissions.
    fn token(
        &mut self,
        protocol: PinProtocol,
        pin: &str,
        permissions: Option<u8>,
        rp_id: Option<&str>,
    ) -> Result<Vec<u8>, StatusCode> {
        let (key, shared) = self.shared(protocol);
        let hash_enc = protocol
            .encrypt(&shared, &pin_hash16(pin.as_bytes()), &mut OsRng)
            .unwrap();
        let resp = self.client_pin(ClientPinRequest {
            pin_uv_auth_protocol: Some(protocol.number()),
            sub_command: if permissions.is_some() {
                client_pin::GET_PIN_UV_AUTH_TOKEN_USING_PIN_WITH_PERMISSIONS
            } else {
                client_pin::GET_PIN_TOKEN
            },
            key_agreement: Some(key),
            pin_hash_enc: Some(hash_enc),
            permissions,
            rp_id: rp_id.map(str::to_string),
            ..Default::default()
        })?;
        Ok(protocol
            .decrypt(&shared, &resp.pin_uv_auth_token.unwrap())
            .unwrap())
    }

    fn retries(&mut self) -> ClientPinResponse {
        self.client_pin(ClientPinRequest {
            sub_command: client_pin::GET_PIN_RETRIES,
            pin_uv_auth_protocol: Some(1),
            ..Default::default()
        })
        .unwrap()
    }

    fn make_credential(
        &mut self,
        req: &MakeCredentialRequest,
    ) -> Result<MakeCredentialResponse, StatusCode> {
        self.call(command::MAKE_CREDENTIAL, Some(req.to_value()))
            .map(|v| MakeCredentialResponse::from_value(&v.unwrap()).unwrap())
    }

    fn get_assertion(
        &mut self,
        req: &GetAssertionRequest,
    ) -> Result<GetAssertionResponse, StatusCode> {
        self.call(command::GET_ASSERTION, Some(req.to_value()))
            .map(|v| GetAssertionResponse::from_value(&v.unwrap()).unwrap())
    }

    fn cred_mgmt(
        &mut self,
        cmd: u8,
        protocol: PinProtocol,
        token: &[u8],
        sub: u8,
        params: Option<CredMgmtSubCommandParams>,
    ) -> Result<CredentialManagementResponse, StatusCode> {
        let mut req = CredentialManagementRequest {
            sub_command: sub,
            params,
            pin_uv_auth_protocol: Some(protocol.number()),
            pin_uv_auth_param: None,
        };
        req.pin_uv_auth_param = Some(protocol.authenticate(token, &req.auth_message()));
        self.call(cmd, Some(req.to_value())).map(|v| {
            v.map(|v| CredentialManagementResponse::from_value(&v).unwrap())
                .unwrap_or_default()
        })
    }
}

fn mc_request(rp: &str, user: &[u8], rk: bool) -> MakeCredentialRequest {
    MakeCredentialRequest {
        client_data_hash: vec![0x11; 32],
        rp: RpEntity {
            id: rp.into(),
            name: Some("RP".into()),
        },
        user: UserEntity {
            id: user.to_vec(),
            name: Some("alice@example.com".into()),
            display_name: Some("Alice".into()),
        },
        algorithms: vec![cose::ES256],
        options: RequestOptions {
            rk: Some(rk),
            up: None,
            uv: None,
        },
        ..Default::default()
    }
}

fn with_pin(
    mut req: MakeCredentialRequest,
    protocol: PinProtocol,
    token: &[u8],
) -> MakeCredentialRequest {
    req.pin_uv_auth_param = Some(protocol.authenticate(token, &req.client_data_hash));
    req.pin_uv_auth_protocol = Some(protocol.number());
    req
}

fn ga_request(rp: &str, allow: Option<Vec<Vec<u8>>>) -> GetAssertionRequest {
    GetAssertionRequest {
        rp_id: rp.into(),
        client_data_hash: vec![0x22; 32],
        allow_list: allow.map(|l| {
            l.into_iter()
                .map(|id| CredentialDescriptor { id })
                .collect()
        }),
        ..Default::default()
    }
}

fn verify_assertion(resp: &GetAssertionResponse, public_key: &CoseEc2Key, client_data_hash: &[u8]) {
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&public_key.to_sec1()).unwrap();
    let sig = p256::ecdsa::DerSignature::from_bytes(&resp.signature).unwrap();
    vk.verify(
        &[resp.auth_data.as_slice(), client_data_hash].concat(),
        &sig,
    )
    .unwrap();
}

#[test]
fn get_info_follows_profile_and_firmware() {
    let mut old = yk((5, 4, 3));
    let info = old.info();
    assert_eq!(info.versions, vec!["FIDO_2_0", "FIDO_2_1_PRE"]);
    assert!(
        !info.versions.iter().any(|v| v == "U2F_V2"),
        "no CTAP1, so no U2F_V2"
    );
    assert_eq!(info.option("credentialMgmtPreview"), Some(true));
    assert_eq!(info.option("credMgmt"), None);
    assert_eq!(info.option("pinUvAuthToken"), None);
    assert_eq!(info.option("clientPin"), Some(false));
    assert_eq!(info.option("rk"), Some(true));
    assert_eq!(info.pin_uv_auth_protocols, vec![2, 1]);
    assert_eq!(info.algorithms, vec![cose::ES256]);
    assert_eq!(info.firmware_version, Some(0x050403));
    assert_eq!(info.extensions, vec!["credProtect", "hmac-secret"]);

    let mut new = yk((5, 7, 1));
    let info = new.info();
    assert_eq!(info.versions, vec!["FIDO_2_0", "FIDO_2_1"]);
    assert_eq!(info.option("credMgmt"), Some(true));
    assert_eq!(info.option("pinUvAuthToken"), Some(true));
    assert_eq!(info.option("credentialMgmtPreview"), None);

    let mut card = platform(FidoConfig::c4000((1, 0, 0)));
    let info = card.info();
    assert_eq!(info.versions, vec!["FIDO_2_0", "FIDO_2_1"]);
    assert_ne!(info.aaguid, new.info().aaguid);
    new.set_pin(PinProtocol::V2, "1234").unwrap();
    assert_eq!(new.info().option("clientPin"), Some(true));
}

#[test]
fn client_pin_set_change_and_tokens() {
    for protocol in [PinProtocol::V1, PinProtocol::V2] {
        let mut p = yk((5, 7, 1));
        assert_eq!(p.retries().pin_retries, Some(8));
        // PIN shorter than minPINLength.
        assert_eq!(
            p.set_pin(protocol, "123"),
            Err(StatusCode::ERR_PIN_POLICY_VIOLATION)
        );
        // changePIN and tokens before a PIN exists.
        assert_eq!(
            p.change_pin(protocol, "1234", "5678"),
            Err(StatusCode::ERR_PIN_NOT_SET)
        );
        assert_eq!(
            p.token(protocol, "1234", None, None),
            Err(StatusCode::ERR_PIN_NOT_SET)
        );
        p.set_pin(protocol, "1234").unwrap();
        assert_eq!(
            p.set_pin(protocol, "9999"),
            Err(StatusCode::ERR_NOT_ALLOWED)
        );
        assert_eq!(p.token(protocol, "1234", None, None).unwrap().len(), 32);
        p.change_pin(protocol, "1234", "abcdef").unwrap();
        assert_eq!(
            p.token(protocol, "1234", None, None),
            Err(StatusCode::ERR_PIN_INVALID)
        );
        assert_eq!(p.retries().pin_retries, Some(7));
        p.token(
            protocol,
            "abcdef",
            Some(permission::CREDENTIAL_MANAGEMENT),
            None,
        )
        .unwrap();
        assert_eq!(p.retries().pin_retries, Some(8));
        // Permissions.
        assert_eq!(
            p.token(protocol, "abcdef", Some(0), None),
            Err(StatusCode::ERR_INVALID_PARAMETER)
        );
        assert_eq!(
            p.token(protocol, "abcdef", Some(permission::BIO_ENROLLMENT), None),
            Err(StatusCode::ERR_UNAUTHORIZED_PERMISSION)
        );
        assert_eq!(
            p.token(protocol, "abcdef", Some(permission::MAKE_CREDENTIAL), None),
            Err(StatusCode::ERR_MISSING_PARAMETER)
        );
    }
}

#[test]
fn client_pin_rejects_bad_requests() {
    let mut p = yk((5, 7, 1));
    // Missing protocol, unknown protocol, unknown subcommand.
    assert_eq!(
        p.client_pin(ClientPinRequest {
            sub_command: client_pin::GET_KEY_AGREEMENT,
            ..Default::default()
        }),
        Err(StatusCode::ERR_MISSING_PARAMETER)
    );
    assert_eq!(
        p.client_pin(ClientPinRequest {
            sub_command: client_pin::GET_KEY_AGREEMENT,
            pin_uv_auth_protocol: Some(3),
            ..Default::default()
        }),
        Err(StatusCode::ERR_INVALID_PARAMETER)
    );
    assert_eq!(
        p.client_pin(ClientPinRequest {
            sub_command: 0x42,
            pin_uv_auth_protocol: Some(1),
            ..Default::default()
        }),
        Err(StatusCode::ERR_INVALID_SUBCOMMAND)
    );
    // setPIN with a wrong pinUvAuthParam.
    let (key, shared) = p.shared(PinProtocol::V2);
    let enc = PinProtocol::V2
        .encrypt(&shared, &pad_pin(b"1234").unwrap(), &mut OsRng)
        .unwrap();
    assert_eq!(
        p.client_pin(ClientPinRequest {
            pin_uv_auth_protocol: Some(2),
            sub_command: client_pin::SET_PIN,
            key_agreement: Some(key),
            pin_uv_auth_param: Some(vec![0; 32]),
            new_pin_enc: Some(enc),
            ..Default::default()
        }),
        Err(StatusCode::ERR_PIN_AUTH_INVALID)
    );
    // The 2.1 subcommand is not offered by the preview firmware.
    let mut old = yk((5, 4, 3));
    old.set_pin(PinProtocol::V1, "1234").unwrap();
    assert_eq!(
        old.token(
            PinProtocol::V1,
            "1234",
            Some(permission::CREDENTIAL_MANAGEMENT),
            None
        ),
        Err(StatusCode::ERR_INVALID_SUBCOMMAND)
    );
}

#[test]
fn wrong_pins_count_down_need_power_cycle_and_block() {
    let mut p = yk((5, 7, 1));
    p.set_pin(PinProtocol::V2, "1234").unwrap();
    assert_eq!(
        p.token(PinProtocol::V2, "0000", None, None),
        Err(StatusCode::ERR_PIN_INVALID)
    );
    assert_eq!(
        p.token(PinProtocol::V2, "0000", None, None),
        Err(StatusCode::ERR_PIN_INVALID)
    );
    assert_eq!(
        p.token(PinProtocol::V2, "0000", None, None),
        Err(StatusCode::ERR_PIN_AUTH_BLOCKED)
    );
    assert_eq!(p.retries().pin_retries, Some(5));
    assert_eq!(p.retries().power_cycle_state, Some(true));
    // Even the right PIN is refused until a power cycle, without counting.
    assert_eq!(
        p.token(PinProtocol::V2, "1234", None, None),
        Err(StatusCode::ERR_PIN_AUTH_BLOCKED)
    );
    assert_eq!(p.retries().pin_retries, Some(5));
    p.auth.power_cycle();
    assert_eq!(p.retries().power_cycle_state, Some(false));
    p.token(PinProtocol::V2, "1234", None, None).unwrap();
    assert_eq!(p.retries().pin_retries, Some(8));
    // Eight wrong PINs block it for good.
    for round in 0..3 {
        for _ in 0..3 {
            let _ = p.token(PinProtocol::V2, "0000", None, None);
            if p.retries().pin_retries == Some(0) {
                break;
            }
        }
        p.auth.power_cycle();
        let _ = round;
    }
    assert_eq!(p.retries().pin_retries, Some(0));
    assert_eq!(
        p.token(PinProtocol::V2, "1234", None, None),
        Err(StatusCode::ERR_PIN_BLOCKED)
    );
    assert_eq!(
        p.change_pin(PinProtocol::V2, "1234", "5678"),
        Err(StatusCode::ERR_PIN_BLOCKED)
    );
}

#[test]
fn make_credential_without_and_with_pin_and_get_assertion() {
    let mut p = yk((5, 4, 3));
    let made = p
        .make_credential(&mc_request("example.com", b"u1", false))
        .unwrap();
    assert_eq!(made.fmt, "packed");
    let ad = AuthenticatorData::parse(&made.auth_data).unwrap();
    assert_eq!(
        ad.flags & (flags::UP | flags::UV | flags::AT),
        flags::UP | flags::AT
    );
    let attested = ad.attested.unwrap();
    assert_eq!(attested.aaguid, p.auth.config().aaguid);

    // The packed attestation signature verifies with the x5c leaf key.
    use der::Decode;
    let cert = x509_cert::Certificate::from_der(&made.att_stmt.x5c[0]).unwrap();
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes();
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(spki).unwrap();
    let sig = p256::ecdsa::DerSignature::from_bytes(&made.att_stmt.sig).unwrap();
    vk.verify(&[made.auth_data.as_slice(), &[0x11; 32]].concat(), &sig)
        .unwrap();
    assert!(cert
        .tbs_certificate
        .subject
        .to_string()
        .contains("OU=Authenticator Attestation"));
    assert_ne!(made.att_stmt.x5c[0], p.ca_root);

    let got = p
        .get_assertion(&ga_request(
            "example.com",
            Some(vec![attested.credential_id.clone()]),
        ))
        .unwrap();
    verify_assertion(&got, &attested.public_key, &[0x22; 32]);
    // A non-discoverable credential is not found without an allow list.
    assert_eq!(
        p.get_assertion(&ga_request("example.com", None))
            .unwrap_err(),
        StatusCode::ERR_NO_CREDENTIALS
    );
    assert_eq!(
        p.get_assertion(&ga_request("other.com", Some(vec![attested.credential_id])))
            .unwrap_err(),
        StatusCode::ERR_NO_CREDENTIALS
    );

    // Once a PIN is set, makeCredential needs it.
    p.set_pin(PinProtocol::V1, "1234").unwrap();
    assert_eq!(
        p.make_credential(&mc_request("example.com", b"u2", true))
            .unwrap_err(),
        StatusCode::ERR_PUAT_REQUIRED
    );
    let token = p.token(PinProtocol::V1, "1234", None, None).unwrap();
    let mut bad = with_pin(
        mc_request("example.com", b"u2", true),
        PinProtocol::V1,
        &token,
    );
    bad.pin_uv_auth_param.as_mut().unwrap()[0] ^= 1;
    assert_eq!(
        p.make_credential(&bad).unwrap_err(),
        StatusCode::ERR_PIN_AUTH_INVALID
    );
    let made = p
        .make_credential(&with_pin(
            mc_request("example.com", b"u2", true),
            PinProtocol::V1,
            &token,
        ))
        .unwrap();
    let ad = AuthenticatorData::parse(&made.auth_data).unwrap();
    assert_eq!(ad.flags & flags::UV, flags::UV);
    let key = ad.attested.unwrap().public_key;

    let mut ga = ga_request("example.com", None);
    ga.pin_uv_auth_param = Some(PinProtocol::V1.authenticate(&token, &ga.client_data_hash));
    ga.pin_uv_auth_protocol = Some(1);
    let got = p.get_assertion(&ga).unwrap();
    verify_assertion(&got, &key, &[0x22; 32]);
    assert_eq!(
        got.user.as_ref().unwrap().name.as_deref(),
        Some("alice@example.com")
    );
    assert!(AuthenticatorData::parse(&got.auth_data).unwrap().sign_count > ad.sign_count);
}

#[test]
fn ctap21_tokens_carry_permissions_and_rp_binding() {
    let mut p = yk((5, 7, 1));
    p.set_pin(PinProtocol::V2, "1234").unwrap();
    // A credential-management token cannot make credentials.
    let cm = p
        .token(
            PinProtocol::V2,
            "1234",
            Some(permission::CREDENTIAL_MANAGEMENT),
            None,
        )
        .unwrap();
    assert_eq!(
        p.make_credential(&with_pin(
            mc_request("example.com", b"u", true),
            PinProtocol::V2,
            &cm
        ))
        .unwrap_err(),
        StatusCode::ERR_PIN_AUTH_INVALID
    );
    // A token bound to another RP is refused.
    let t = p
        .token(
            PinProtocol::V2,
            "1234",
            Some(permission::MAKE_CREDENTIAL),
            Some("other.com"),
        )
        .unwrap();
    assert_eq!(
        p.make_credential(&with_pin(
            mc_request("example.com", b"u", true),
            PinProtocol::V2,
            &t
        ))
        .unwrap_err(),
        StatusCode::ERR_PIN_AUTH_INVALID
    );
    // The mc permission is used up by one makeCredential.
    let t = p
        .token(
            PinProtocol::V2,
            "1234",
            Some(permission::MAKE_CREDENTIAL),
            Some("example.com"),
        )
        .unwrap();
    p.make_credential(&with_pin(
        mc_request("example.com", b"u", true),
        PinProtocol::V2,
        &t,
    ))
    .unwrap();
    assert_eq!(
        p.make_credential(&with_pin(
            mc_request("example.com", b"v", true),
            PinProtocol::V2,
            &t
        ))
        .unwrap_err(),
        StatusCode::ERR_PIN_AUTH_INVALID
    );
    // A getPinToken token does not manage credentials in CTAP 2.1...
    let t = p.token(PinProtocol::V2, "1234", None, None).unwrap();
    assert_eq!(
        p.cred_mgmt(
            command::CREDENTIAL_MANAGEMENT,
            PinProtocol::V2,
            &t,
            cred_mgmt::GET_CREDS_METADATA,
            None
        )
        .unwrap_err(),
        StatusCode::ERR_PIN_AUTH_INVALID
    );
    // ...but does in the FIDO_2_1_PRE preview (0x41), where 0x0A does not exist.
    let mut old = yk((5, 4, 3));
    old.set_pin(PinProtocol::V1, "1234").unwrap();
    let t = old.token(PinProtocol::V1, "1234", None, None).unwrap();
    let meta = old
        .cred_mgmt(
            command::CREDENTIAL_MANAGEMENT_PREVIEW,
            PinProtocol::V1,
            &t,
            cred_mgmt::GET_CREDS_METADATA,
            None,
        )
        .unwrap();
    assert_eq!(meta.existing_resident_credentials_count, Some(0));
    assert_eq!(
        meta.max_possible_remaining_resident_credentials_count,
        Some(25)
    );
    assert_eq!(
        old.cred_mgmt(
            command::CREDENTIAL_MANAGEMENT,
            PinProtocol::V1,
            &t,
            cred_mgmt::GET_CREDS_METADATA,
            None
        )
        .unwrap_err(),
        StatusCode::ERR_INVALID_COMMAND
    );
}

#[test]
fn exclude_list_and_cred_protect() {
    let mut p = yk((5, 7, 1));
    let mut req = mc_request("example.com", b"u", true);
    req.extensions.cred_protect = Some(cred_protect::USER_VERIFICATION_REQUIRED);
    req.extensions.hmac_secret = Some(true);
    let made = p.make_credential(&req).unwrap();
    let ad = AuthenticatorData::parse(&made.auth_data).unwrap();
    let ext = ad.extensions.unwrap();
    let ext = MapView::new(&ext, "ext").unwrap();
    assert_eq!(ext.text_i64("credProtect").unwrap(), 3);
    assert_eq!(ext.text_bool_opt("hmac-secret").unwrap(), Some(true));
    let id = ad.attested.unwrap().credential_id;

    // credProtect 3: invisible without UV, even with the allow list.
    assert_eq!(
        p.get_assertion(&ga_request("example.com", Some(vec![id.clone()])))
            .unwrap_err(),
        StatusCode::ERR_NO_CREDENTIALS
    );
    // ...and so not excluded without UV.
    let mut again = mc_request("example.com", b"other", false);
    again.exclude_list = Some(vec![CredentialDescriptor { id: id.clone() }]);
    p.make_credential(&again).unwrap();

    // credProtect 2 is found with an allow list, not without.
    let mut req = mc_request("two.example", b"u", true);
    req.extensions.cred_protect = Some(2);
    let made = p.make_credential(&req).unwrap();
    let id2 = AuthenticatorData::parse(&made.auth_data)
        .unwrap()
        .attested
        .unwrap()
        .credential_id;
    p.get_assertion(&ga_request("two.example", Some(vec![id2.clone()])))
        .unwrap();
    assert_eq!(
        p.get_assertion(&ga_request("two.example", None))
            .unwrap_err(),
        StatusCode::ERR_NO_CREDENTIALS
    );

    // Exclude list hit: a touch, then CREDENTIAL_EXCLUDED.
    let mut excl = mc_request("two.example", b"x", false);
    excl.exclude_list = Some(vec![CredentialDescriptor { id: id2 }]);
    let mut presence = Scripted(vec![], 0);
    let r = p.call_with(
        command::MAKE_CREDENTIAL,
        Some(excl.to_value()),
        &mut presence,
    );
    assert_eq!(r.unwrap_err(), StatusCode::ERR_CREDENTIAL_EXCLUDED);
    assert_eq!(presence.1, 1);
    // Invalid credProtect value.
    let mut bad = mc_request("example.com", b"u", false).to_value();
    if let Value::Map(m) = &mut bad {
        m.push((
            Value::Integer(6.into()),
            Value::Map(vec![(
                Value::Text("credProtect".into()),
                Value::Integer(9.into()),
            )]),
        ));
    }
    assert_eq!(
        p.call(command::MAKE_CREDENTIAL, Some(bad)).unwrap_err(),
        StatusCode::ERR_INVALID_OPTION
    );
}

#[test]
fn make_credential_rejects_bad_parameters() {
    let mut p = yk((5, 7, 1));
    let mut r = mc_request("example.com", b"u", false);
    r.algorithms = vec![-257];
    assert_eq!(
        p.make_credential(&r).unwrap_err(),
        StatusCode::ERR_UNSUPPORTED_ALGORITHM
    );
    let mut r = mc_request("example.com", b"u", false);
    r.options.uv = Some(true);
    assert_eq!(
        p.make_credential(&r).unwrap_err(),
        StatusCode::ERR_INVALID_OPTION
    );
    let mut r = mc_request("example.com", b"u", false);
    r.options.up = Some(false);
    assert_eq!(
        p.make_credential(&r).unwrap_err(),
        StatusCode::ERR_INVALID_OPTION
    );
    let mut r = mc_request("example.com", b"u", false);
    r.client_data_hash = vec![1; 5];
    assert_eq!(
        p.make_credential(&r).unwrap_err(),
        StatusCode::ERR_INVALID_LENGTH
    );
    let mut r = mc_request("example.com", b"u", false);
    r.pin_uv_auth_param = Some(vec![1; 32]);
    assert_eq!(
        p.make_credential(&r).unwrap_err(),
        StatusCode::ERR_MISSING_PARAMETER
    );
    r.pin_uv_auth_protocol = Some(2);
    assert_eq!(
        p.make_credential(&r).unwrap_err(),
        StatusCode::ERR_PIN_NOT_SET
    );
    // Zero-length pinUvAuthParam: touch, then PIN_NOT_SET.
    r.pin_uv_auth_param = Some(vec![]);
    assert_eq!(
        p.make_credential(&r).unwrap_err(),
        StatusCode::ERR_PIN_NOT_SET
    );
    // Missing parameters and garbage.
    assert_eq!(
        p.call(command::MAKE_CREDENTIAL, None).unwrap_err(),
        StatusCode::ERR_MISSING_PARAMETER
    );
    assert_eq!(
        p.auth
            .handle(&[command::MAKE_CREDENTIAL, 0xA1], &mut AlwaysPresent),
        vec![StatusCode::ERR_INVALID_CBOR.0]
    );
    assert_eq!(
        p.auth.handle(&[], &mut AlwaysPresent),
        vec![StatusCode::ERR_INVALID_LENGTH.0]
    );
    assert_eq!(
        p.auth.handle(&[0x55], &mut AlwaysPresent),
        vec![StatusCode::ERR_INVALID_COMMAND.0]
    );
    assert_eq!(
        p.auth.handle(&vec![4; 5000], &mut AlwaysPresent),
        vec![StatusCode::ERR_REQUEST_TOO_LARGE.0]
    );
}

#[test]
fn presence_outcomes_map_to_ctap_errors() {
    let mut p = yk((5, 7, 1));
    for (outcome, status) in [
        (PresenceOutcome::Declined, StatusCode::ERR_OPERATION_DENIED),
        (PresenceOutcome::Cancelled, StatusCode::ERR_KEEPALIVE_CANCEL),
        (
            PresenceOutcome::TimedOut,
            StatusCode::ERR_USER_ACTION_TIMEOUT,
        ),
    ] {
        let mut presence = Scripted(vec![outcome], 0);
        let r = p.call_with(
            command::MAKE_CREDENTIAL,
            Some(mc_request("e.com", b"u", true).to_value()),
            &mut presence,
        );
        assert_eq!(r.unwrap_err(), status);
        let mut presence = Scripted(vec![outcome], 0);
        assert_eq!(
            p.call_with(command::SELECTION, None, &mut presence)
                .unwrap_err(),
            status
        );
    }
    assert!(
        p.auth.state().credentials.is_empty(),
        "nothing made without a touch"
    );
    // A C4000 has no touch sensor: presence is never asked.
    let mut card = platform(FidoConfig::c4000((1, 0, 0)));
    let mut presence = Scripted(vec![PresenceOutcome::Declined], 0);
    card.call_with(
        command::MAKE_CREDENTIAL,
        Some(mc_request("e.com", b"u", true).to_value()),
        &mut presence,
    )
    .unwrap();
    assert_eq!(presence.1, 0);
    // selection does not exist before CTAP 2.1.
    assert_eq!(
        yk((5, 4, 3)).call(command::SELECTION, None).unwrap_err(),
        StatusCode::ERR_INVALID_COMMAND
    );
}

#[test]
fn get_next_assertion_walks_discoverable_credentials() {
    let mut p = yk((5, 7, 1));
    for u in [b"a", b"b", b"c"] {
        p.make_credential(&mc_request("example.com", u, true))
            .unwrap();
    }
    assert_eq!(
        p.call(command::GET_NEXT_ASSERTION, None).unwrap_err(),
        StatusCode::ERR_NOT_ALLOWED
    );
    let first = p.get_assertion(&ga_request("example.com", None)).unwrap();
    assert_eq!(first.number_of_credentials, Some(3));
    assert_eq!(first.user.as_ref().unwrap().id, b"c", "most recent first");
    assert_eq!(
        first.user.as_ref().unwrap().name,
        None,
        "no user details without UV"
    );
    let mut seen = vec![first.credential.id];
    for _ in 0..2 {
        let next = GetAssertionResponse::from_value(
            &p.call(command::GET_NEXT_ASSERTION, None).unwrap().unwrap(),
        )
        .unwrap();
        seen.push(next.credential.id);
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 3);
    assert_eq!(
        p.call(command::GET_NEXT_ASSERTION, None).unwrap_err(),
        StatusCode::ERR_NOT_ALLOWED
    );
    // Expiry and interruption.
    p.get_assertion(&ga_request("example.com", None)).unwrap();
    p.clock.advance(Duration::from_secs(31));
    assert_eq!(
        p.call(command::GET_NEXT_ASSERTION, None).unwrap_err(),
        StatusCode::ERR_NOT_ALLOWED
    );
    p.get_assertion(&ga_request("example.com", None)).unwrap();
    p.info();
    assert_eq!(
        p.call(command::GET_NEXT_ASSERTION, None).unwrap_err(),
        StatusCode::ERR_NOT_ALLOWED
    );
}

#[test]
fn hmac_secret_outputs_are_stable_per_credential() {
    let mut p = yk((5, 7, 1));
    let mut req = mc_request("example.com", b"u", true);
    req.extensions.hmac_secret = Some(true);
    p.make_credential(&req).unwrap();
    let run = |p: &mut Platform| {
        let protocol = PinProtocol::V2;
        let (key, shared) = p.shared(protocol);
        let salt_enc = protocol.encrypt(&shared, &[7u8; 32], &mut OsRng).unwrap();
        let mut ga = ga_request("example.com", None);
        ga.extensions.hmac_secret = Some(HmacSecretInput {
            key_agreement: key,
            salt_auth: protocol.authenticate_shared(&shared, &salt_enc),
            salt_enc,
            pin_uv_auth_protocol: Some(2),
        });
        let got = p.get_assertion(&ga).unwrap();
        let ext = AuthenticatorData::parse(&got.auth_data)
            .unwrap()
            .extensions
            .unwrap();
        let out = MapView::new(&ext, "ext")
            .unwrap()
            .text_bytes("hmac-secret")
            .unwrap();
        protocol.decrypt(&shared, &out).unwrap()
    };
    let a = run(&mut p);
    let b = run(&mut p);
    assert_eq!(a.len(), 32);
    assert_eq!(a, b);

    // A wrong saltAuth is refused; salts of a wrong length too.
    let protocol = PinProtocol::V2;
    let (key, shared) = p.shared(protocol);
    let salt_enc = protocol.encrypt(&shared, &[7u8; 32], &mut OsRng).unwrap();
    let mut ga = ga_request("example.com", None);
    ga.extensions.hmac_secret = Some(HmacSecretInput {
        key_agreement: key.clone(),
        salt_auth: vec![0; 32],
        salt_enc,
        pin_uv_auth_protocol: Some(2),
    });
    assert_eq!(
        p.get_assertion(&ga).unwrap_err(),
        StatusCode::ERR_PIN_AUTH_INVALID
    );
    let salt_enc = protocol.encrypt(&shared, &[7u8; 48], &mut OsRng).unwrap();
    ga.extensions.hmac_secret = Some(HmacSecretInput {
        key_agreement: key,
        salt_auth: protocol.authenticate_shared(&shared, &salt_enc),
        salt_enc,
        pin_uv_auth_protocol: Some(2),
    });
    assert_eq!(
        p.get_assertion(&ga).unwrap_err(),
        StatusCode::ERR_INVALID_LENGTH
    );

    // A credential made without hmac-secret gives no output (and no error).
    p.make_credential(&mc_request("plain.example", b"u", true))
        .unwrap();
    let (key, shared) = p.shared(protocol);
    let salt_enc = protocol.encrypt(&shared, &[7u8; 32], &mut OsRng).unwrap();
    let mut ga = ga_request("plain.example", None);
    ga.extensions.hmac_secret = Some(HmacSecretInput {
        key_agreement: key,
        salt_auth: protocol.authenticate_shared(&shared, &salt_enc),
        salt_enc,
        pin_uv_auth_protocol: Some(2),
    });
    let got = p.get_assertion(&ga).unwrap();
    assert_eq!(
        AuthenticatorData::parse(&got.auth_data).unwrap().extensions,
        None
    );
}

#[test]
fn credential_management_enumerates_and_deletes() {
    let mut p = yk((5, 7, 1));
    p.set_pin(PinProtocol::V2, "1234").unwrap();
    for (rp, user) in [
        ("a.example", b"1"),
        ("a.example", b"2"),
        ("b.example", b"3"),
    ] {
        let t = p
            .token(
                PinProtocol::V2,
                "1234",
                Some(permission::MAKE_CREDENTIAL),
                Some(rp),
            )
            .unwrap();
        p.make_credential(&with_pin(mc_request(rp, user, true), PinProtocol::V2, &t))
            .unwrap();
    }
    let t = p
        .token(
            PinProtocol::V2,
            "1234",
            Some(permission::CREDENTIAL_MANAGEMENT),
            None,
        )
        .unwrap();
    let cm = command::CREDENTIAL_MANAGEMENT;
    let v2 = PinProtocol::V2;
    let meta = p
        .cred_mgmt(cm, v2, &t, cred_mgmt::GET_CREDS_METADATA, None)
        .unwrap();
    assert_eq!(meta.existing_resident_credentials_count, Some(3));
    assert_eq!(
        meta.max_possible_remaining_resident_credentials_count,
        Some(97)
    );

    let first = p
        .cred_mgmt(cm, v2, &t, cred_mgmt::ENUMERATE_RPS_BEGIN, None)
        .unwrap();
    assert_eq!(first.total_rps, Some(2));
    let next = p
        .call(
            cm,
            Some(
                CredentialManagementRequest {
                    sub_command: cred_mgmt::ENUMERATE_RPS_GET_NEXT_RP,
                    ..Default::default()
                }
                .to_value(),
            ),
        )
        .unwrap();
    let next = CredentialManagementResponse::from_value(&next.unwrap()).unwrap();
    let mut rps = vec![first.rp.unwrap().id, next.rp.unwrap().id];
    rps.sort();
    assert_eq!(rps, vec!["a.example", "b.example"]);
    assert_eq!(
        p.call(
            cm,
            Some(
                CredentialManagementRequest {
                    sub_command: cred_mgmt::ENUMERATE_RPS_GET_NEXT_RP,
                    ..Default::default()
                }
                .to_value()
            )
        )
        .unwrap_err(),
        StatusCode::ERR_NOT_ALLOWED
    );

    let hash = sha2::Sha256::digest(b"a.example").to_vec();
    let params = CredMgmtSubCommandParams {
        rp_id_hash: Some(hash),
        ..Default::default()
    };
    let c1 = p
        .cred_mgmt(
            cm,
            v2,
            &t,
            cred_mgmt::ENUMERATE_CREDENTIALS_BEGIN,
            Some(params),
        )
        .unwrap();
    assert_eq!(c1.total_credentials, Some(2));
    assert_eq!(c1.cred_protect, Some(1));
    let c2 = CredentialManagementResponse::from_value(
        &p.call(
            cm,
            Some(
                CredentialManagementRequest {
                    sub_command: cred_mgmt::ENUMERATE_CREDENTIALS_GET_NEXT_CREDENTIAL,
                    ..Default::default()
                }
                .to_value(),
            ),
        )
        .unwrap()
        .unwrap(),
    )
    .unwrap();
    assert_ne!(c1.credential_id, c2.credential_id);
    assert_eq!(
        p.cred_mgmt(
            cm,
            v2,
            &t,
            cred_mgmt::ENUMERATE_CREDENTIALS_BEGIN,
            Some(CredMgmtSubCommandParams::default())
        )
        .unwrap_err(),
        StatusCode::ERR_MISSING_PARAMETER
    );
    assert_eq!(
        p.cred_mgmt(
            cm,
            v2,
            &t,
            cred_mgmt::ENUMERATE_CREDENTIALS_BEGIN,
            Some(CredMgmtSubCommandParams {
                rp_id_hash: Some(vec![0; 32]),
                ..Default::default()
            })
        )
        .unwrap_err(),
        StatusCode::ERR_NO_CREDENTIALS
    );

    let del = CredMgmtSubCommandParams {
        credential_id: c1.credential_id.clone(),
        ..Default::default()
    };
    p.cred_mgmt(cm, v2, &t, cred_mgmt::DELETE_CREDENTIAL, Some(del.clone()))
        .unwrap();
    assert_eq!(
        p.cred_mgmt(cm, v2, &t, cred_mgmt::DELETE_CREDENTIAL, Some(del))
            .unwrap_err(),
        StatusCode::ERR_NO_CREDENTIALS
    );
    let meta = p
        .cred_mgmt(cm, v2, &t, cred_mgmt::GET_CREDS_METADATA, None)
        .unwrap();
    assert_eq!(meta.existing_resident_credentials_count, Some(2));

    // Without a pinUvAuthParam, or with a wrong one.
    let req = CredentialManagementRequest {
        sub_command: cred_mgmt::GET_CREDS_METADATA,
        pin_uv_auth_protocol: Some(2),
        ..Default::default()
    };
    assert_eq!(
        p.call(cm, Some(req.to_value())).unwrap_err(),
        StatusCode::ERR_PUAT_REQUIRED
    );
    assert_eq!(
        p.cred_mgmt(cm, v2, &[0; 32], cred_mgmt::GET_CREDS_METADATA, None)
            .unwrap_err(),
        StatusCode::ERR_PIN_AUTH_INVALID
    );
    assert_eq!(
        p.cred_mgmt(cm, v2, &t, 0x33, None).unwrap_err(),
        StatusCode::ERR_INVALID_SUBCOMMAND
    );
}

#[test]
fn reset_only_within_ten_seconds_of_power_up_and_with_presence() {
    let mut p = yk((5, 7, 1));
    p.set_pin(PinProtocol::V2, "1234").unwrap();
    let t = p
        .token(
            PinProtocol::V2,
            "1234",
            Some(permission::MAKE_CREDENTIAL),
            Some("example.com"),
        )
        .unwrap();
    p.make_credential(&with_pin(
        mc_request("example.com", b"u", true),
        PinProtocol::V2,
        &t,
    ))
    .unwrap();
    p.clock.advance(Duration::from_secs(11));
    assert_eq!(
        p.call(command::RESET, None).unwrap_err(),
        StatusCode::ERR_NOT_ALLOWED
    );
    p.auth.power_cycle();
    let mut declined = Scripted(vec![PresenceOutcome::Declined], 0);
    assert_eq!(
        p.call_with(command::RESET, None, &mut declined)
            .unwrap_err(),
        StatusCode::ERR_OPERATION_DENIED
    );
    let mut timeout = Scripted(vec![PresenceOutcome::TimedOut], 0);
    assert_eq!(
        p.call_with(command::RESET, None, &mut timeout).unwrap_err(),
        StatusCode::ERR_USER_ACTION_TIMEOUT
    );
    assert_eq!(p.info().option("clientPin"), Some(true));
    p.clock.advance(Duration::from_secs(9));
    p.call(command::RESET, None).unwrap();
    assert_eq!(p.info().option("clientPin"), Some(false));
    assert!(p.auth.state().credentials.is_empty());
}

#[test]
fn external_pin_store_is_used_and_state_round_trips() {
    struct Shared {
        inner: LocalPinStore,
        resets: usize,
    }
    impl FidoPinStore for Shared {
        fn is_pin_set(&self) -> bool {
            self.inner.is_pin_set()
        }
        fn pin_retries(&self) -> u8 {
            self.inner.pin_retries()
        }
        fn verify_pin_hash(&mut self, h: &[u8; 16]) -> PinVerification {
            self.inner.verify_pin_hash(h)
        }
        fn set_pin(&mut self, pin: &[u8]) -> Result<(), StatusCode> {
            if !(6..=8).contains(&pin.len()) {
                return Err(StatusCode::ERR_PIN_POLICY_VIOLATION);
            }
            self.inner.set_pin(pin)
        }
        fn min_pin_length(&self) -> Option<u8> {
            Some(6)
        }
        fn on_authenticator_reset(&mut self) {
            self.resets += 1;
        }
    }
    let mut p = platform(FidoConfig::c4000((1, 0, 0)));
    let mut shared = Shared {
        inner: LocalPinStore::default(),
        resets: 0,
    };
    shared.inner.set_pin(b"123456").unwrap();
    let info = p
        .auth
        .handle_cbor(&[command::GET_INFO], Some(&mut shared), &mut AlwaysPresent);
    let info = GetInfoResponse::from_value(&decode(&info[1..]).unwrap()).unwrap();
    assert_eq!(info.option("clientPin"), Some(true));
    assert_eq!(info.min_pin_length, Some(6));
    assert_eq!(
        p.info().option("clientPin"),
        Some(false),
        "own store untouched"
    );

    let reset = p
        .auth
        .handle_cbor(&[command::RESET], Some(&mut shared), &mut AlwaysPresent);
    assert_eq!(reset, vec![0]);
    assert_eq!(shared.resets, 1);
    assert!(
        shared.inner.is_pin_set(),
        "a FIDO reset leaves the shared PIV PIN alone"
    );

    p.make_credential(&mc_request("example.com", b"u", true))
        .unwrap();
    let json = serde_json::to_string(p.auth.state()).unwrap();
    let back: FidoState = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, p.auth.state());
}

#[test]
fn malformed_requests_never_panic() {
    let mut p = yk((5, 7, 1));
    let samples: Vec<Vec<u8>> = vec![
        vec![command::CLIENT_PIN, 0xA1, 0x02, 0x02],
        vec![command::CLIENT_PIN, 0xA2, 0x01, 0x03, 0x02, 0x02],
        vec![
            command::CLIENT_PIN,
            0xA3,
            0x01,
            0x02,
            0x02,
            0x03,
            0x03,
            0xA0,
        ],
        vec![command::GET_ASSERTION, 0xA0],
        vec![command::GET_ASSERTION, 0x80],
        vec![command::CREDENTIAL_MANAGEMENT, 0xA1, 0x01, 0x18, 0xFF],
        vec![
            command::MAKE_CREDENTIAL,
            0xA4,
            0x01,
            0x40,
            0x02,
            0xA0,
            0x03,
            0xA0,
            0x04,
            0x80,
        ],
    ];
    for s in samples {
        let r = p.auth.handle(&s, &mut AlwaysPresent);
        assert_ne!(r[0], 0, "{s:02X?} must fail");
    }
}

#[test]
fn unsupported_commands_options_and_subcommands_are_refused() {
    let mut p = yk((5, 7, 1));
    for cmd in [
        command::BIO_ENROLLMENT,
        command::LARGE_BLOBS,
        command::CONFIG,
        0x40,
        0xFF,
    ] {
        assert_eq!(
            p.call(cmd, None).unwrap_err(),
            StatusCode::ERR_INVALID_COMMAND,
            "command {cmd:#x}"
        );
    }
    // clientPIN without subCommand; built-in UV subcommands (no UV sensor).
    let no_sub = Value::Map(vec![(Value::Integer(1.into()), Value::Integer(1.into()))]);
    assert_eq!(
        p.call(command::CLIENT_PIN, Some(no_sub)).unwrap_err(),
        StatusCode::ERR_MISSING_PARAMETER
    );
    for sub in [
        client_pin::GET_PIN_UV_AUTH_TOKEN_USING_UV_WITH_PERMISSIONS,
        client_pin::GET_UV_RETRIES,
    ] {
        let r = p.client_pin(ClientPinRequest {
            pin_uv_auth_protocol: Some(2),
            sub_command: sub,
            ..Default::default()
        });
        assert_eq!(r.unwrap_err(), StatusCode::ERR_INVALID_SUBCOMMAND);
    }
    p.set_pin(PinProtocol::V2, "1234").unwrap();
    // changePIN with a wrong current PIN counts down.
    assert_eq!(
        p.change_pin(PinProtocol::V2, "9999", "5678"),
        Err(StatusCode::ERR_PIN_INVALID)
    );
    assert_eq!(p.retries().pin_retries, Some(7));
    // getPinToken takes no permissions.
    let (key, shared) = p.shared(PinProtocol::V2);
    let hash_enc = PinProtocol::V2
        .encrypt(&shared, &pin_hash16(b"1234"), &mut OsRng)
        .unwrap();
    let r = p.client_pin(ClientPinRequest {
        pin_uv_auth_protocol: Some(2),
        sub_command: client_pin::GET_PIN_TOKEN,
        key_agreement: Some(key),
        pin_hash_enc: Some(hash_enc),
        permissions: Some(permission::MAKE_CREDENTIAL),
        ..Default::default()
    });
    assert_eq!(r.unwrap_err(), StatusCode::ERR_INVALID_PARAMETER);

    // getAssertion options.
    let mut ga = ga_request("example.com", None);
    ga.options.rk = Some(true);
    assert_eq!(
        p.get_assertion(&ga).unwrap_err(),
        StatusCode::ERR_UNSUPPORTED_OPTION
    );
    let mut ga = ga_request("example.com", None);
    ga.options.uv = Some(true);
    assert_eq!(
        p.get_assertion(&ga).unwrap_err(),
        StatusCode::ERR_INVALID_OPTION
    );
    // getAssertion with a token lacking the ga permission.
    let t = p
        .token(
            PinProtocol::V2,
            "1234",
            Some(permission::CREDENTIAL_MANAGEMENT),
            None,
        )
        .unwrap();
    let mut ga = ga_request("example.com", None);
    ga.pin_uv_auth_param = Some(PinProtocol::V2.authenticate(&t, &ga.client_data_hash));
    ga.pin_uv_auth_protocol = Some(2);
    assert_eq!(
        p.get_assertion(&ga).unwrap_err(),
        StatusCode::ERR_PIN_AUTH_INVALID
    );

    // Credential enumeration "next" without "begin"; updateUserInformation.
    let cm = command::CREDENTIAL_MANAGEMENT;
    let next = CredentialManagementRequest {
        sub_command: cred_mgmt::ENUMERATE_CREDENTIALS_GET_NEXT_CREDENTIAL,
        ..Default::default()
    };
    assert_eq!(
        p.call(cm, Some(next.to_value())).unwrap_err(),
        StatusCode::ERR_NOT_ALLOWED
    );
    let mc = p
        .token(
            PinProtocol::V2,
            "1234",
            Some(permission::MAKE_CREDENTIAL),
            Some("example.com"),
        )
        .unwrap();
    let made = p
        .make_credential(&with_pin(
            mc_request("example.com", b"u", true),
            PinProtocol::V2,
            &mc,
        ))
        .unwrap();
    let id = AuthenticatorData::parse(&made.auth_data)
        .unwrap()
        .attested
        .unwrap()
        .credential_id;
    // One token at a time: the mc token replaced the cm one.
    let t = p
        .token(
            PinProtocol::V2,
            "1234",
            Some(permission::CREDENTIAL_MANAGEMENT),
            None,
        )
        .unwrap();
    let wrong_user = CredMgmtSubCommandParams {
        credential_id: Some(CredentialDescriptor { id: id.clone() }),
        user: Some(UserEntity {
            id: b"someone else".to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        p.cred_mgmt(
            cm,
            PinProtocol::V2,
            &t,
            cred_mgmt::UPDATE_USER_INFORMATION,
            Some(wrong_user)
        )
        .unwrap_err(),
        StatusCode::ERR_INVALID_PARAMETER
    );
    let rename = CredMgmtSubCommandParams {
        credential_id: Some(CredentialDescriptor { id }),
        user: Some(UserEntity {
            id: b"u".to_vec(),
            name: Some("renamed".into()),
            display_name: None,
        }),
        ..Default::default()
    };
    p.cred_mgmt(
        cm,
        PinProtocol::V2,
        &t,
        cred_mgmt::UPDATE_USER_INFORMATION,
        Some(rename.clone()),
    )
    .unwrap();
    // updateUserInformation does not exist in the preview.
    let mut old = yk((5, 4, 3));
    old.set_pin(PinProtocol::V1, "1234").unwrap();
    let t = old.token(PinProtocol::V1, "1234", None, None).unwrap();
    assert_eq!(
        old.cred_mgmt(
            command::CREDENTIAL_MANAGEMENT_PREVIEW,
            PinProtocol::V1,
            &t,
            cred_mgmt::UPDATE_USER_INFORMATION,
            Some(rename)
        )
        .unwrap_err(),
        StatusCode::ERR_INVALID_SUBCOMMAND
    );
}
