//! The simulated tenant over real HTTP, reached by the production Graph
//! client: what it accepts (a registration made by Keyward's FIDO step on
//! the in-process virtual authenticator) and what it refuses as Entra does
//! (registrations sent directly: wrong origin, no user verification, an
//! untrusted attestation CA, an AAGUID outside the allow-list, an expired or
//! reused challenge), its token endpoint, and its injected faults.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use keyward_card::ctap::{self, command};
use keyward_engine::fido::{b64url, CreationRequest, FidoPlan, FidoRegistration, PinSource};
use keyward_engine::{Batch, PromptKind, Response};
use keyward_entra_standin::{Fault, StandinConfig, StandinHandle, StandinUser};
use keyward_graph::model::{decode_b64url, AttestationResponse, PublicKeyCredential};
use keyward_graph::{
    ApiVersion, CreationOptions, GraphClient, GraphConfig, GraphError, NewFido2Method, RetryPolicy,
};
use keyward_vcard::fido::{attestation, AlwaysPresent, FidoAuthenticator, FidoConfig, FidoState};
use sha2::{Digest, Sha256};

const TENANT: &str = "contoso.onmicrosoft.com";
const CLIENT: &str = "00000000-0000-0000-0000-0000000c11e1";
const SECRET: &str = "standin-test-secret";
const UPN: &str = "alice@contoso.com";

fn pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = "-----BEGIN CERTIFICATE-----\n".to_string();
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// A virtual authenticator attested by a fresh CA; returns the CA's PEM.
fn authenticator(config: FidoConfig) -> (FidoAuthenticator, String) {
    let (ca_key, ca_name, ca_root) = attestation::test_ca().unwrap();
    let key =
        attestation::issue_attestation_key(config.aaguid, "Test", 9, &ca_key, &ca_name, vec![])
            .unwrap();
    (
        FidoAuthenticator::new(config, FidoState::default(), Box::new(key)),
        pem(&ca_root),
    )
}

async fn standin(trust: Vec<String>, tweak: impl FnOnce(&mut StandinConfig)) -> StandinHandle {
    let mut cfg = StandinConfig::new(TENANT, CLIENT, SECRET, trust);
    cfg.users.push(StandinUser::new(UPN, "Alice Example"));
    tweak(&mut cfg);
    keyward_entra_standin::serve(cfg).await.unwrap()
}

fn client(s: &StandinHandle, secret: &str) -> GraphClient {
    let mut cfg = GraphConfig::new(
        &s.authority_url(),
        TENANT,
        CLIENT,
        secret,
        "https://graph.microsoft.com/.default",
        &s.graph_url(),
    );
    cfg.retry = RetryPolicy {
        max_retries: 2,
        max_wait: Duration::from_millis(1500),
        default_wait: Duration::from_millis(20),
    };
    GraphClient::new(cfg).unwrap()
}

fn request(o: &CreationOptions) -> CreationRequest {
    let pk = &o.public_key;
    CreationRequest {
        rp_id: pk.rp.id.clone(),
        rp_name: pk.rp.name.clone(),
        user_id: pk.user_id_bytes().unwrap(),
        user_name: pk.user.name.clone(),
        user_display_name: pk.user.display_name.clone(),
        challenge: pk.challenge_bytes().unwrap(),
        algorithms: pk.pub_key_cred_params.iter().map(|p| p.alg).collect(),
        exclude_credentials: pk.exclude_ids(),
    }
}

fn relay(auth: &mut FidoAuthenticator, b: &Batch) -> Vec<Response> {
    b.commands
        .iter()
        .map(|c| Response {
            data: auth.handle(&c.bytes, &mut AlwaysPresent),
            sw: 0x9000,
        })
        .collect()
}

fn method(name: &str, credential_id: &[u8], cdj: &[u8], att: &[u8]) -> NewFido2Method {
    NewFido2Method::new(
        name,
        PublicKeyCredential {
            id: b64url(credential_id),
            response: AttestationResponse {
                client_data_json: b64url(cdj),
                attestation_object: b64url(att),
            },
            client_extension_results: None,
        },
    )
}

/// Keyward's FIDO step against the creationOptions: the Graph body.
fn keyward_registration(auth: &mut FidoAuthenticator, o: &CreationOptions) -> NewFido2Method {
    let plan = FidoPlan {
        pin: PinSource::Unshared,
        cred_protect: 1,
        pin_rules: None,
        touch_sensor: true,
    };
    let (s, b) = FidoRegistration::start(plan);
    let s = s
        .on_responses(&relay(auth, &b), &mut rand::rngs::OsRng)
        .unwrap();
    let pin_kind = s.prompts()[0].kind;
    let answers: BTreeMap<String, String> = [
        (pin_kind.as_str().to_string(), "standin-pin".to_string()),
        (PromptKind::ConfirmTouch.as_str().to_string(), "true".into()),
    ]
    .into();
    let (s, b) = s
        .on_answers(&answers, &request(o), &mut rand::rngs::OsRng)
        .unwrap();
    let (s, b) = s.on_responses(&relay(auth, &b)).unwrap();
    let reg = s.on_responses(&relay(auth, &b)).unwrap();
    method(
        "YubiKey 5 (virtual)",
        &reg.credential_id,
        &reg.client_data_json,
        &reg.attestation_object,
    )
}

/// A registration made directly on the authenticator, with the client data
/// and options chosen by the test (properly signed by the device).
fn direct_registration(
    auth: &mut FidoAuthenticator,
    o: &CreationOptions,
    origin: &str,
    with_pin: Option<&str>,
) -> NewFido2Method {
    let pk = &o.public_key;
    let cdj = format!(
        r#"{{"type":"webauthn.create","challenge":"{}","origin":"{origin}","crossOrigin":false}}"#,
        pk.challenge
    )
    .into_bytes();
    let cdh = Sha256::digest(&cdj).to_vec();
    let mut req = ctap::MakeCredentialRequest {
        client_data_hash: cdh,
        rp: ctap::RpEntity {
            id: pk.rp.id.clone(),
            name: Some(pk.rp.name.clone()),
        },
        user: ctap::UserEntity {
            id: pk.user_id_bytes().unwrap(),
            name: Some(pk.user.name.clone()),
            display_name: Some(pk.user.display_name.clone()),
        },
        algorithms: vec![-7],
        options: ctap::RequestOptions {
            rk: Some(with_pin.is_some()),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut p = AlwaysPresent;
    if let Some(pin) = with_pin {
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
        let set = session
            .set_pin_request(pin, &mut rand::rngs::OsRng)
            .unwrap();
        auth.handle(
            &ctap::encode_request(command::CLIENT_PIN, Some(&set.to_value())),
            &mut p,
        );
        let t = session
            .get_pin_token_request(pin, &mut rand::rngs::OsRng)
            .unwrap();
        let t = auth.handle(
            &ctap::encode_request(command::CLIENT_PIN, Some(&t.to_value())),
            &mut p,
        );
        let token = session
            .decrypt_token(
                &ctap::ClientPinResponse::from_value(&ctap::split_response(&t).unwrap().unwrap())
                    .unwrap(),
            )
            .unwrap();
        token.sign_make_credential(&mut req);
    }
    let r = auth.handle(
        &ctap::encode_request(command::MAKE_CREDENTIAL, Some(&req.to_value())),
        &mut p,
    );
    assert_eq!(r[0], 0, "makeCredential answered {:02X}", r[0]);
    let mc = ctap::MakeCredentialResponse::from_value(&ctap::split_response(&r).unwrap().unwrap())
        .unwrap();
    let ad = ctap::AuthenticatorData::parse(&mc.auth_data).unwrap();
    let att = keyward_engine::fido::attestation_object(&mc);
    method("direct", &ad.attested.unwrap().credential_id, &cdj, &att)
}

fn refused(e: GraphError, needle: &str) {
    match &e {
        GraphError::RegistrationRefused { message, .. } => {
            assert!(message.contains(needle), "{needle:?} not in: {message}")
        }
        other => panic!("expected a refused registration, got {other:?}"),
    }
}

#[tokio::test]
async fn keyward_registration_is_accepted_listed_and_deleted() {
    let (mut auth, ca) = authenticator(FidoConfig::yubikey5((5, 4, 3)));
    let s = standin(vec![ca], |_| {}).await;
    let g = client(&s, SECRET);
    let o = g.creation_options(UPN, None).await.unwrap();
    assert_eq!(o.public_key.rp.id, "login.microsoft.com");
    assert_eq!(
        o.public_key
            .authenticator_selection
            .as_ref()
            .unwrap()
            .user_verification
            .as_deref(),
        Some("required")
    );
    let m = g
        .register(UPN, &keyward_registration(&mut auth, &o))
        .await
        .unwrap();
    assert_eq!(m.attestation_level.as_deref(), Some("attested"));
    let aaguid = uuid::Uuid::from_bytes(auth.config().aaguid);
    assert_eq!(m.aa_guid.as_deref(), Some(aaguid.to_string().as_str()));
    let stored = s.passkeys(UPN);
    assert_eq!(stored.len(), 1);
    assert_eq!(
        decode_b64url(&stored[0].credential_id).unwrap(),
        auth.state().credentials[0].id
    );
    assert_eq!(
        stored[0].public_key_sec1,
        hex(&auth.state().credentials[0].public_key().to_sec1())
    );
    let list = g.list(UPN).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, m.id);
    // The next creationOptions exclude the registered credential.
    let o2 = g.creation_options(UPN, None).await.unwrap();
    assert_eq!(
        o2.public_key.exclude_ids(),
        vec![auth.state().credentials[0].id.clone()]
    );
    assert!(g.delete(UPN, &m.id).await.unwrap());
    assert!(!g.delete(UPN, &m.id).await.unwrap());
    assert!(g.list(UPN).await.unwrap().is_empty());
    s.shutdown().await;
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A manufacturer CA issuing several virtual authenticators.
struct Ca {
    key: p256::ecdsa::SigningKey,
    name: String,
    pem: String,
}

impl Ca {
    fn new() -> Self {
        let (key, name, root) = attestation::test_ca().unwrap();
        Ca {
            key,
            name,
            pem: pem(&root),
        }
    }

    fn device(&self, config: FidoConfig) -> FidoAuthenticator {
        let att = attestation::issue_attestation_key(
            config.aaguid,
            "Test",
            11,
            &self.key,
            &self.name,
            vec![],
        )
        .unwrap();
        FidoAuthenticator::new(config, FidoState::default(), Box::new(att))
    }
}

#[tokio::test]
async fn refuses_what_entra_refuses() {
    let ca = Ca::new();
    let s = standin(vec![ca.pem.clone()], |_| {}).await;
    let g = client(&s, SECRET);

    // A wrong origin.
    let o = g.creation_options(UPN, None).await.unwrap();
    let origin = o.public_key.origin();
    let mut a = ca.device(FidoConfig::c4000((1, 0, 0)));
    let r = direct_registration(&mut a, &o, "https://login.evil.example", Some("1234"));
    refused(g.register(UPN, &r).await.unwrap_err(), "origin");

    // No user verification (no PIN, no token: the UV flag is not set).
    let o = g.creation_options(UPN, None).await.unwrap();
    let mut a = ca.device(FidoConfig::c4000((1, 0, 0)));
    let r = direct_registration(&mut a, &o, &origin, None);
    refused(g.register(UPN, &r).await.unwrap_err(), "User verification");

    // An attestation from a CA the tenant does not trust.
    let stranger_ca = Ca::new();
    let o = g.creation_options(UPN, None).await.unwrap();
    let mut a = stranger_ca.device(FidoConfig::yubikey5((5, 7, 1)));
    let r = direct_registration(&mut a, &o, &origin, Some("5678"));
    refused(g.register(UPN, &r).await.unwrap_err(), "attestation");

    // An expired challenge.
    let o = g.creation_options(UPN, None).await.unwrap();
    let mut a = ca.device(FidoConfig::yubikey5((5, 4, 3)));
    let r = keyward_registration(&mut a, &o);
    s.expire_challenges();
    refused(g.register(UPN, &r).await.unwrap_err(), "expired");

    // A reused challenge: accepted once, refused the second time.
    let o = g.creation_options(UPN, None).await.unwrap();
    let mut a = ca.device(FidoConfig::yubikey5((5, 4, 3)));
    let r = direct_registration(&mut a, &o, &origin, Some("9012"));
    g.register(UPN, &r).await.unwrap();
    refused(g.register(UPN, &r).await.unwrap_err(), "already used");
    assert_eq!(s.passkeys(UPN).len(), 1);

    // A challenge of another user.
    s.add_user(StandinUser::new("bob@contoso.com", "Bob"));
    let o = g.creation_options("bob@contoso.com", None).await.unwrap();
    let mut a = ca.device(FidoConfig::c4000((1, 0, 0)));
    let r = direct_registration(&mut a, &o, &origin, Some("3456"));
    refused(g.register(UPN, &r).await.unwrap_err(), "another user");
    s.shutdown().await;
}

#[tokio::test]
async fn aaguid_allow_list() {
    let ca = Ca::new();
    let yk = FidoConfig::yubikey5((5, 7, 1));
    let allowed = uuid::Uuid::from_bytes(yk.aaguid);
    let s = standin(vec![ca.pem.clone()], |c| {
        c.aaguid_allow_list = Some(vec![allowed]);
    })
    .await;
    let g = client(&s, SECRET);
    let o = g.creation_options(UPN, None).await.unwrap();
    let mut c4000 = ca.device(FidoConfig::c4000((1, 0, 0)));
    let r = keyward_registration(&mut c4000, &o);
    let e = g.register(UPN, &r).await.unwrap_err();
    assert!(e.to_string().contains("AAGUID"), "{e}");
    let o = g.creation_options(UPN, None).await.unwrap();
    let mut key = ca.device(yk);
    g.register(UPN, &keyward_registration(&mut key, &o))
        .await
        .unwrap();
    s.shutdown().await;
}

#[tokio::test]
async fn tokens_users_policy_and_faults() {
    let ca = Ca::new();
    let s = standin(vec![ca.pem.clone()], |_| {}).await;
    // Only the configured client credentials get a token.
    let e = client(&s, "wrong-secret").list(UPN).await.unwrap_err();
    assert!(matches!(e, GraphError::Token { status: 401, .. }), "{e}");
    assert!(e.to_string().contains("AADSTS7000215"));
    let raw = reqwest::Client::new()
        .get(format!(
            "{}/v1.0/users/{UPN}/authentication/fido2Methods",
            s.graph_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 401);

    let g = client(&s, SECRET);
    let e = g.list("nobody@contoso.com").await.unwrap_err();
    assert!(matches!(e, GraphError::UserNotFound { .. }), "{e}");

    // 429 with Retry-After, then success: retried by the client.
    s.push_fault(Fault::throttled(1));
    let before = s.graph_calls();
    let started = std::time::Instant::now();
    g.list(UPN).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(s.graph_calls() - before, 2);
    // 503 twice then success.
    s.push_fault(Fault::unavailable());
    s.push_fault(Fault::unavailable());
    g.list(UPN).await.unwrap();
    // 403: a clear message; cleared, the call works.
    s.push_fault(Fault::forbidden());
    let e = g.creation_options(UPN, None).await.unwrap_err();
    assert!(matches!(e, GraphError::PermissionMissing { .. }), "{e}");
    assert!(e
        .to_string()
        .contains("UserAuthMethod-Passkey.ReadWrite.All"));
    g.creation_options(UPN, None).await.unwrap();
    // Faults through the admin endpoint.
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/admin/faults", s.url()))
        .json(&Fault::forbidden())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(g.list(UPN).await.is_err());
    g.list(UPN).await.unwrap();

    // beta: a custom challenge timeout; v1.0 refuses one.
    let mut cfg = g.config().clone();
    cfg.api_version = ApiVersion::Beta;
    let beta = GraphClient::new(cfg).unwrap();
    let o = beta.creation_options(UPN, Some(60)).await.unwrap();
    let until = time::OffsetDateTime::parse(
        &o.challenge_timeout_date_time,
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let left = until - time::OffsetDateTime::now_utc();
    assert!(left > time::Duration::minutes(55) && left <= time::Duration::minutes(60));
    s.shutdown().await;

    // A tenant whose passkey policy does not allow self-service setup.
    let s = standin(vec![ca.pem.clone()], |c| c.self_service_setup = false).await;
    let e = client(&s, SECRET)
        .creation_options(UPN, None)
        .await
        .unwrap_err();
    assert!(matches!(e, GraphError::SelfServiceNotAllowed { .. }), "{e}");
    s.shutdown().await;
}
