//! In-process timing of the virtual FIDO authenticator (issue 3 benchmark):
//! makeCredential (ES256 key generation + packed attestation signature) and
//! getAssertion (one ES256 signature), with and without a PIN/UV auth token,
//! plus the pure CBOR codec. Not a test; run once:
//!
//!     cargo run -p keyward-vcard --example fido_bench [--release]
//!
//! Prints the median and 90th percentile of each operation.

use std::time::{Duration, Instant};

use keyward_card::ctap::*;
use keyward_vcard::fido::{attestation, AlwaysPresent, FidoAuthenticator, FidoConfig, FidoState};

const RUNS: usize = 200;

fn stats(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let median = samples[samples.len() / 2];
    let p90 = samples[samples.len() * 9 / 10];
    println!(
        "| {name} | {:.1} µs | {:.1} µs | {} |",
        median.as_secs_f64() * 1e6,
        p90.as_secs_f64() * 1e6,
        samples.len()
    );
}

fn time(mut f: impl FnMut()) -> Vec<Duration> {
    for _ in 0..10 {
        f();
    }
    (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect()
}

fn main() {
    let (ca_key, ca_name, _) = attestation::test_ca().unwrap();
    let config = FidoConfig::yubikey5((5, 7, 1));
    let att =
        attestation::issue_attestation_key(config.aaguid, "Bench", 1, &ca_key, &ca_name, vec![])
            .unwrap();
    let mut auth = FidoAuthenticator::new(config, FidoState::default(), Box::new(att));

    let mc = MakeCredentialRequest {
        client_data_hash: vec![1; 32],
        rp: RpEntity {
            id: "bench.example".into(),
            name: None,
        },
        user: UserEntity {
            id: vec![1; 16],
            name: Some("bench".into()),
            display_name: None,
        },
        algorithms: vec![cose::ES256],
        options: RequestOptions {
            rk: Some(false),
            up: None,
            uv: None,
        },
        ..Default::default()
    };
    let mc_bytes = encode_request(command::MAKE_CREDENTIAL, Some(&mc.to_value()));
    println!("| Operation (in-process, {RUNS} runs) | median | p90 | runs |");
    println!("|---|---|---|---|");
    stats(
        "getInfo",
        time(|| {
            let r = auth.handle(&[command::GET_INFO], &mut AlwaysPresent);
            assert_eq!(r[0], 0);
        }),
    );
    let mut last = Vec::new();
    stats(
        "makeCredential (ES256, packed attestation, no PIN)",
        time(|| {
            last = auth.handle(&mc_bytes, &mut AlwaysPresent);
            assert_eq!(last[0], 0);
        }),
    );
    let made = MakeCredentialResponse::from_value(&decode(&last[1..]).unwrap()).unwrap();
    let id = AuthenticatorData::parse(&made.auth_data)
        .unwrap()
        .attested
        .unwrap()
        .credential_id;
    let ga = GetAssertionRequest {
        rp_id: "bench.example".into(),
        client_data_hash: vec![2; 32],
        allow_list: Some(vec![CredentialDescriptor { id }]),
        ..Default::default()
    };
    let ga_bytes = encode_request(command::GET_ASSERTION, Some(&ga.to_value()));
    stats(
        "getAssertion (allow list, one ES256 signature)",
        time(|| {
            let r = auth.handle(&ga_bytes, &mut AlwaysPresent);
            assert_eq!(r[0], 0);
        }),
    );
    let big = decode(&mc_bytes[1..]).unwrap();
    stats(
        "CBOR decode + canonical encode of a makeCredential request",
        time(|| {
            let v = decode(&mc_bytes[1..]).unwrap();
            let _ = encode_canonical(&v);
        }),
    );
    let _ = big;

    // With a PIN: clientPIN getPinUvAuthTokenUsingPinWithPermissions, then
    // makeCredential with the token (what an issuance does).
    let protocol = PinProtocol::V2;
    let shared_with = |auth: &mut FidoAuthenticator| {
        let req = ClientPinRequest {
            pin_uv_auth_protocol: Some(2),
            sub_command: client_pin::GET_KEY_AGREEMENT,
            ..Default::default()
        };
        let r = auth.handle(
            &encode_request(command::CLIENT_PIN, Some(&req.to_value())),
            &mut AlwaysPresent,
        );
        let ka = ClientPinResponse::from_value(&decode(&r[1..]).unwrap())
            .unwrap()
            .key_agreement
            .unwrap();
        platform_key_agreement(protocol, &ka, &mut rand::rngs::OsRng).unwrap()
    };
    let (key, shared) = shared_with(&mut auth);
    let enc = protocol
        .encrypt(
            &shared,
            &pad_pin(b"123456").unwrap(),
            &mut rand::rngs::OsRng,
        )
        .unwrap();
    let set = ClientPinRequest {
        pin_uv_auth_protocol: Some(2),
        sub_command: client_pin::SET_PIN,
        key_agreement: Some(key),
        pin_uv_auth_param: Some(protocol.authenticate_shared(&shared, &enc)),
        new_pin_enc: Some(enc),
        ..Default::default()
    };
    assert_eq!(
        auth.handle(
            &encode_request(command::CLIENT_PIN, Some(&set.to_value())),
            &mut AlwaysPresent
        ),
        vec![0]
    );
    stats("clientPIN getKeyAgreement + getPinUvAuthToken (platform ECDH included) + makeCredential with PIN", time(|| {
        let (key, shared) = shared_with(&mut auth);
        let req = ClientPinRequest {
            pin_uv_auth_protocol: Some(2),
            sub_command: client_pin::GET_PIN_UV_AUTH_TOKEN_USING_PIN_WITH_PERMISSIONS,
            key_agreement: Some(key),
            pin_hash_enc: Some(protocol.encrypt(&shared, &pin_hash16(b"123456"), &mut rand::rngs::OsRng).unwrap()),
            permissions: Some(permission::MAKE_CREDENTIAL),
            rp_id: Some("bench.example".into()),
            ..Default::default()
        };
        let r = auth.handle(&encode_request(command::CLIENT_PIN, Some(&req.to_value())), &mut AlwaysPresent);
        let token = protocol
            .decrypt(&shared, &ClientPinResponse::from_value(&decode(&r[1..]).unwrap()).unwrap().pin_uv_auth_token.unwrap())
            .unwrap();
        let mut m = mc.clone();
        m.pin_uv_auth_param = Some(protocol.authenticate(&token, &m.client_data_hash));
        m.pin_uv_auth_protocol = Some(2);
        let r = auth.handle(&encode_request(command::MAKE_CREDENTIAL, Some(&m.to_value())), &mut AlwaysPresent);
        assert_eq!(r[0], 0);
    }));
}
