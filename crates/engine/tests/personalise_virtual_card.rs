//! The PIV personalisation run against the in-process virtual card (YubiKey 5
//! at two firmware levels, and a C4000), with the embedded CA certifying the
//! generated keys. Then the card is checked the way a relying party would:
//! the new PIN works, the factory PIN and management key do not, the derived
//! management key does, and the objects read back as written.

use keyward_card::piv::{self, alg, dyn_auth, key_ref, object};
use keyward_domain::{
    CertificateTemplate, DeviceType, ExtendedKeyUsage, KeyAlgorithm, KeyUsage, PivSlot,
    PkiApplication, SanSource, User, UserStatus,
};
use keyward_engine::piv::{Certified, ChuidPlan, KeySpec, PivIssuance, PivPlan, Secret};
use keyward_engine::{Batch, ManagementKey, MgmtAlgorithm, Response};
use keyward_pki::{CertificateAuthority, EmbeddedCa, LeafRequest};
use keyward_vcard::config::{Firmware, ProfileKind, VcardConfig};
use keyward_vcard::VirtualCard;

/// Relays a batch like a client: in order, stopping at the first unexpected status word.
fn relay(card: &mut VirtualCard, batch: &Batch) -> Vec<Response> {
    let mut out = Vec::new();
    for c in &batch.commands {
        let mut r = Response::from_apdu(&card.transmit(&c.bytes));
        // GET RESPONSE for long answers, as a PC/SC client does.
        while r.sw >> 8 == 0x61 {
            let more =
                Response::from_apdu(&card.transmit(&[0x00, 0xC0, 0x00, 0x00, (r.sw & 0xFF) as u8]));
            let mut data = r.data.clone();
            data.extend(more.data);
            r = Response { data, sw: more.sw };
        }
        let stop = !c.expect.contains(&r.sw);
        out.push(r);
        if stop {
            break;
        }
    }
    out
}

fn user() -> User {
    User {
        id: uuid::Uuid::new_v4(),
        login: "alice".into(),
        upn: Some("alice@example.com".into()),
        display_name: "Alice Archer".into(),
        email: Some("alice@example.com".into()),
        attributes: Default::default(),
        status: UserStatus::Active,
    }
}

fn app(slot: PivSlot) -> PkiApplication {
    PkiApplication {
        name: format!("slot {slot}"),
        slot,
        algorithm: KeyAlgorithm::EccP256,
        certificate_authority: "Keyward Issuing CA".into(),
        template: CertificateTemplate {
            subject_dn: "CN={display_name}".into(),
            subject_alt_names: vec![SanSource::Upn],
            validity_days: 365,
            key_usage: vec![KeyUsage::DigitalSignature],
            extended_key_usage: vec![
                ExtendedKeyUsage::ClientAuth,
                ExtendedKeyUsage::SmartcardLogon,
            ],
        },
        renewal_window_days: None,
        renewal: None,
    }
}

fn sw(card: &mut VirtualCard, apdu: Vec<u8>) -> u16 {
    Response::from_apdu(&card.transmit(&apdu)).sw
}

/// Mutual authentication with `key`: true if the card accepts it.
fn authenticates(card: &mut VirtualCard, key: &ManagementKey) -> bool {
    let r = Response::from_apdu(
        &card.transmit(
            &piv::general_authenticate(
                key.algorithm.id(),
                key_ref::MANAGEMENT,
                &[(dyn_auth::WITNESS, &[])],
            )
            .to_bytes(),
        ),
    );
    if r.sw != 0x9000 {
        return false;
    }
    let enc = piv::parse_general_authenticate_response(&r.data, dyn_auth::WITNESS).unwrap();
    let witness = key.decrypt_block(enc).unwrap();
    let challenge = vec![7u8; key.algorithm.block_len()];
    let r = Response::from_apdu(
        &card.transmit(
            &piv::general_authenticate(
                key.algorithm.id(),
                key_ref::MANAGEMENT,
                &[
                    (dyn_auth::WITNESS, &witness),
                    (dyn_auth::CHALLENGE, &challenge),
                    (dyn_auth::RESPONSE, &[]),
                ],
            )
            .to_bytes(),
        ),
    );
    r.sw == 0x9000
}

fn personalise(profile: ProfileKind, firmware: Firmware, factory: MgmtAlgorithm, serial: u32) {
    let ca_dir = tempfile::tempdir().unwrap();
    let config = VcardConfig::new(profile)
        .with_firmware(firmware)
        .with_serial(serial)
        .with_ca_dir(ca_dir.path());
    let mut card = VirtualCard::new(config).unwrap();
    card.power_on();
    let device_type = match profile {
        ProfileKind::Yubikey5 => DeviceType::YubiKey5,
        ProfileKind::C4000 => DeviceType::C4000,
    };
    let new_key_alg = if factory == MgmtAlgorithm::Tdes
        && firmware < Firmware(5, 4, 2)
        && profile == ProfileKind::Yubikey5
    {
        MgmtAlgorithm::Tdes
    } else {
        MgmtAlgorithm::Aes192
    };
    let new_key = ManagementKey::derive(b"test master key", serial as u64, new_key_alg, 1);
    let plan = PivPlan {
        device_type,
        serial: serial as u64,
        current_management_key: ManagementKey::factory_default(factory),
        new_management_key: Some(new_key.clone()),
        current_pin: Secret::new("123456"),
        current_puk: Secret::new("12345678"),
        new_pin: Secret::new("735194"),
        new_puk: Secret::new("90817263"),
        retries: Some((3, 3)),
        keys: vec![
            KeySpec {
                slot: 0x9A,
                algorithm: alg::ECC_P256,
            },
            KeySpec {
                slot: 0x9C,
                algorithm: alg::ECC_P256,
            },
        ],
        chuid: ChuidPlan {
            guid: [0x42; 16],
            credential_number: 123456,
            expiration: "20351231".into(),
        },
        firmware: None,
        final_pin: None,
        fido_pin_sharing: None,
    };
    let now = time::OffsetDateTime::now_utc();
    let ca = EmbeddedCa::generate("Test", None, now).unwrap();

    let (state, batch) = PivIssuance::start(plan);
    let responses = relay(&mut card, &batch);
    let (state, batch) = state
        .on_responses(&responses, &mut rand::rngs::OsRng)
        .unwrap();
    let responses = relay(&mut card, &batch);
    let state = state.on_responses(&responses).unwrap();
    assert_eq!(state.keys().len(), 2);
    let mut certificates = Vec::new();
    for k in state.keys() {
        let slot = if k.slot == 0x9A {
            PivSlot::Authentication
        } else {
            PivSlot::Signature
        };
        let req = LeafRequest::from_template(&app(slot), &user(), None, &k.spki_der).unwrap();
        certificates.push((k.slot, ca.issue(&req, now).unwrap().der));
    }
    let chuid_signature = ca.sign_chuid(&state.chuid_to_sign().unwrap()).unwrap();
    let (state, batch) = state
        .with_certificates(Certified {
            certificates: certificates.clone(),
            chuid_signature,
        })
        .unwrap();
    let responses = relay(&mut card, &batch);
    let done = state.on_responses(&responses).unwrap();
    assert_eq!(done.counters.batches, 3, "three client round trips");
    assert_eq!(done.certificates, certificates);

    // The card as a relying party sees it.
    assert_eq!(sw(&mut card, piv::select_piv().to_bytes()), 0x9000);
    assert_eq!(
        sw(
            &mut card,
            piv::verify(key_ref::PIN, Some(b"123456"))
                .unwrap()
                .to_bytes()
        ),
        0x63C2,
        "factory PIN refused, 3 retries set"
    );
    assert_eq!(
        sw(
            &mut card,
            piv::verify(key_ref::PIN, Some(b"735194"))
                .unwrap()
                .to_bytes()
        ),
        0x9000,
        "new PIN works"
    );
    assert!(
        !authenticates(&mut card, &ManagementKey::factory_default(factory)),
        "factory management key refused"
    );
    assert!(
        authenticates(&mut card, &new_key),
        "derived management key works"
    );
    let r = Response::from_apdu(
        &card.transmit(
            &piv::get_data(object::AUTHENTICATION_CERT)
                .extended(true)
                .with_le(65536)
                .to_bytes(),
        ),
    );
    let mut data = r.data.clone();
    let mut swv = r.sw;
    while swv >> 8 == 0x61 {
        let more =
            Response::from_apdu(&card.transmit(&[0x00, 0xC0, 0x00, 0x00, (swv & 0xFF) as u8]));
        data.extend(more.data);
        swv = more.sw;
    }
    let container = keyward_card::tlv::find(&data, 0x53).unwrap();
    let parsed = piv::parse_cert_container(container).unwrap();
    assert_eq!(parsed.certificate, certificates[0].1);
}

#[test]
fn yubikey_5_7_with_aes_factory_key() {
    personalise(
        ProfileKind::Yubikey5,
        Firmware(5, 7, 1),
        MgmtAlgorithm::Aes192,
        31000001,
    );
}

#[test]
fn yubikey_5_4_with_3des_factory_key() {
    personalise(
        ProfileKind::Yubikey5,
        Firmware(5, 4, 3),
        MgmtAlgorithm::Tdes,
        31000002,
    );
}

#[test]
fn c4000_through_its_card_management_commands() {
    personalise(
        ProfileKind::C4000,
        Firmware(1, 0, 0),
        MgmtAlgorithm::Tdes,
        41000003,
    );
}

#[test]
fn a_swapped_device_and_a_wrong_factory_pin_stop_with_clear_failures() {
    let ca_dir = tempfile::tempdir().unwrap();
    let mut card = VirtualCard::new(
        VcardConfig::new(ProfileKind::Yubikey5)
            .with_serial(5)
            .with_ca_dir(ca_dir.path()),
    )
    .unwrap();
    card.power_on();
    let plan = |serial: u64, pin: &str| PivPlan {
        device_type: DeviceType::YubiKey5,
        serial,
        current_management_key: ManagementKey::factory_default(MgmtAlgorithm::Aes192),
        new_management_key: None,
        current_pin: Secret::new(pin),
        current_puk: Secret::new("12345678"),
        new_pin: Secret::new("735194"),
        new_puk: Secret::new("90817263"),
        retries: None,
        keys: vec![KeySpec {
            slot: 0x9A,
            algorithm: alg::ECC_P256,
        }],
        chuid: ChuidPlan {
            guid: [1; 16],
            credential_number: 1,
            expiration: "20351231".into(),
        },
        firmware: None,
        final_pin: None,
        fido_pin_sharing: None,
    };
    let (state, batch) = PivIssuance::start(plan(6, "123456"));
    let f = state
        .on_responses(&relay(&mut card, &batch), &mut rand::rngs::OsRng)
        .unwrap_err();
    assert_eq!(
        (f.code.as_str(), f.step.to_string().as_str()),
        ("device_mismatch", "identify device")
    );

    // The inventory records another firmware than the device runs.
    let mut wrong_fw = plan(5, "123456");
    wrong_fw.firmware = Some((5, 4, 3));
    let (state, batch) = PivIssuance::start(wrong_fw);
    let f = state
        .on_responses(&relay(&mut card, &batch), &mut rand::rngs::OsRng)
        .unwrap_err();
    assert_eq!(f.code.as_str(), "device_mismatch");
    assert!(f.message.contains("firmware 5.7.1"), "{}", f.message);

    let (state, batch) = PivIssuance::start(plan(5, "999999"));
    let (state, batch) = state
        .on_responses(&relay(&mut card, &batch), &mut rand::rngs::OsRng)
        .unwrap();
    let f = state.on_responses(&relay(&mut card, &batch)).unwrap_err();
    assert_eq!(
        (f.code.as_str(), f.step.to_string().as_str(), f.sw),
        ("unexpected_status", "verify PIN", Some(0x63C2))
    );
    assert!(
        !format!("{batch:?}").contains("999999"),
        "secret commands are not printed"
    );
}
