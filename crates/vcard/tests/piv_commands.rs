//! Every command the virtual card accepts, with its negative cases
//! (docs/vcard.md names the test covering each row).

use keyward_card::apdu::{sw, CommandApdu, ResponseApdu};
use keyward_card::piv::{self, alg, dyn_auth, key_ref, object, policy, slot};
use keyward_card::tlv;
use keyward_vcard::piv::DEFAULT_MANAGEMENT_KEY;
use keyward_vcard::{Firmware, ManufacturerCa, ProfileKind, Transport, VcardConfig, VirtualCard};
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use std::sync::OnceLock;

fn ca() -> &'static (tempfile::TempDir, ManufacturerCa) {
    static CA: OnceLock<(tempfile::TempDir, ManufacturerCa)> = OnceLock::new();
    CA.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let ca = ManufacturerCa::load_or_create(&dir.path().join("ca")).unwrap();
        (dir, ca)
    })
}

fn card_with(profile: ProfileKind, fw: Option<&str>, transport: Transport) -> VirtualCard {
    let mut config = VcardConfig::new(profile)
        .with_serial(12_345_678)
        .with_transport(transport)
        .with_ca_dir(ca().0.path().join("ca"));
    if let Some(fw) = fw {
        config = config.with_firmware(fw.parse::<Firmware>().unwrap());
    }
    let mut card = VirtualCard::with_ca(config, &ca().1).unwrap();
    card.power_on();
    card
}

fn yk(fw: &str) -> VirtualCard {
    card_with(ProfileKind::Yubikey5, Some(fw), Transport::Usb)
}

fn c4000() -> VirtualCard {
    card_with(ProfileKind::C4000, None, Transport::Usb)
}

fn tx(card: &mut VirtualCard, apdu: &CommandApdu) -> ResponseApdu {
    ResponseApdu::parse(&card.transmit(&apdu.to_bytes())).unwrap()
}

fn raw(card: &mut VirtualCard, bytes: &[u8]) -> ResponseApdu {
    ResponseApdu::parse(&card.transmit(bytes)).unwrap()
}

fn sw_of(card: &mut VirtualCard, apdu: &CommandApdu) -> u16 {
    tx(card, apdu).sw
}

/// Send, then follow 61xx with GET RESPONSE.
fn tx_full(card: &mut VirtualCard, apdu: &CommandApdu) -> ResponseApdu {
    let mut r = tx(card, apdu);
    let mut data = std::mem::take(&mut r.data);
    while r.has_more() {
        r = tx(card, &keyward_card::apdu::get_response(r.sw2()));
        data.extend_from_slice(&r.data);
    }
    ResponseApdu::new(data, r.sw)
}

fn mgmt_key_of(card: &mut VirtualCard) -> keyward_vcard::keys::ManagementKey {
    card.piv().state.management_key.clone()
}

/// Mutual authentication with the card's current management key.
fn auth(card: &mut VirtualCard) {
    let key = mgmt_key_of(card);
    assert_eq!(mutual_auth(card, key.algorithm, &key.key), sw::SUCCESS);
}

fn mutual_auth(card: &mut VirtualCard, algorithm: u8, key: &[u8]) -> u16 {
    let mk = keyward_vcard::keys::ManagementKey::new(algorithm, key).unwrap();
    let r = tx(
        card,
        &piv::general_authenticate(algorithm, key_ref::MANAGEMENT, &[(dyn_auth::WITNESS, &[])]),
    );
    if r.sw != sw::SUCCESS {
        return r.sw;
    }
    let witness = piv::parse_general_authenticate_response(&r.data, dyn_auth::WITNESS).unwrap();
    let plain = mk.decrypt_block(witness);
    let challenge = vec![0x5A; mk.block_size()];
    let r = tx(
        card,
        &piv::general_authenticate(
            algorithm,
            key_ref::MANAGEMENT,
            &[
                (dyn_auth::WITNESS, &plain),
                (dyn_auth::CHALLENGE, &challenge),
            ],
        ),
    );
    if r.sw == sw::SUCCESS {
        let resp = piv::parse_general_authenticate_response(&r.data, dyn_auth::RESPONSE).unwrap();
        assert_eq!(
            resp,
            mk.encrypt_block(&challenge),
            "card proved the wrong key"
        );
    }
    r.sw
}

fn verify_pin(card: &mut VirtualCard, pin: &[u8]) -> u16 {
    sw_of(card, &piv::verify(key_ref::PIN, Some(pin)).unwrap())
}

fn generate(card: &mut VirtualCard, algorithm: u8, slot: u8) -> piv::PublicKeyTemplate {
    let r = tx_full(card, &piv::generate(algorithm, slot, 0, 0));
    assert_eq!(r.sw, sw::SUCCESS, "GENERATE {algorithm:02X} in {slot:02X}");
    piv::PublicKeyTemplate::parse(&r.data).unwrap()
}

fn p256_verify(public: &piv::PublicKeyTemplate, hash: &[u8], der_sig: &[u8]) {
    let piv::PublicKeyTemplate::Ec { point } = public else {
        panic!("not EC")
    };
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(point).unwrap();
    let sig = p256::ecdsa::Signature::from_der(der_sig).unwrap();
    vk.verify_prehash(hash, &sig).unwrap();
}

fn sign(card: &mut VirtualCard, algorithm: u8, slot: u8, input: &[u8]) -> ResponseApdu {
    tx_full(card, &piv::sign(algorithm, slot, input))
}

fn sig_of(r: &ResponseApdu) -> Vec<u8> {
    piv::parse_general_authenticate_response(&r.data, dyn_auth::RESPONSE)
        .unwrap()
        .to_vec()
}

// ---------------------------------------------------------------- ISO layer

#[test]
fn iso_malformed_unknown_class_and_instruction() {
    let mut c = yk("5.7.1");
    assert_eq!(raw(&mut c, &[0x00, 0xA4]).sw, sw::WRONG_LENGTH);
    assert_eq!(
        raw(&mut c, &[0x00, 0xCB, 0x3F, 0xFF, 0x05, 0x5C]).sw,
        sw::WRONG_LENGTH
    );
    assert_eq!(
        raw(&mut c, &[0xA0, 0xCB, 0x3F, 0xFF]).sw,
        sw::CLA_NOT_SUPPORTED
    );
    assert_eq!(
        raw(&mut c, &[0x0C, 0xCB, 0x3F, 0xFF]).sw,
        sw::CLA_NOT_SUPPORTED
    );
    assert_eq!(
        raw(&mut c, &[0x00, 0x42, 0x00, 0x00]).sw,
        sw::INS_NOT_SUPPORTED
    );
    // A proprietary class on a YubiKey: no vendor commands.
    assert_eq!(
        raw(&mut c, &[0x80, 0xE1, 0x00, 0x00]).sw,
        sw::CLA_NOT_SUPPORTED
    );
    assert_eq!(
        raw(&mut c, &[0x00, 0xC0, 0x00, 0x00, 0x00]).sw,
        sw::CONDITIONS_NOT_SATISFIED
    );
}

#[test]
fn iso_select_by_aid() {
    let mut c = yk("5.7.1");
    let r = tx(&mut c, &piv::select_piv());
    assert_eq!(r.sw, sw::SUCCESS);
    assert_eq!(r.data[0], 0x61);
    let r = tx(&mut c, &piv::select_aid(&piv::PIV_AID_PREFIX));
    assert_eq!(r.sw, sw::SUCCESS);
    assert_eq!(
        sw_of(&mut c, &piv::select_aid(&[0xA0, 0, 0, 0, 0x62])),
        sw::FILE_NOT_FOUND
    );
    assert_eq!(
        sw_of(&mut c, &piv::select_aid(&[0xA0, 0, 0])),
        sw::FILE_NOT_FOUND
    );
    // Selection by file identifier: no file system.
    assert_eq!(
        raw(&mut c, &[0x00, 0xA4, 0x00, 0x00, 0x02, 0x3F, 0x00]).sw,
        sw::FILE_NOT_FOUND
    );
    assert_eq!(
        raw(&mut c, &[0x00, 0xA4, 0x04, 0x10, 0x05, 0xA0, 0, 0, 3, 8]).sw,
        sw::INCORRECT_P1P2
    );
    // USB YubiKey: no FIDO over ISO 7816; the card manager is a C4000 thing.
    assert_eq!(
        sw_of(&mut c, &piv::select_aid(&piv::FIDO_AID)),
        sw::FILE_NOT_FOUND
    );
    assert_eq!(
        sw_of(&mut c, &piv::select_aid(&piv::GP_ISD_AID)),
        sw::FILE_NOT_FOUND
    );
}

#[test]
fn iso_command_chaining_and_get_response() {
    let mut c = yk("5.7.1");
    auth(&mut c);
    let value = vec![0xAB; 700];
    let put = piv::put_data(object::PRINTED_INFORMATION, &value);
    for part in put.to_chained_short(200) {
        let r = raw(&mut c, &part);
        assert_eq!(r.sw, sw::SUCCESS);
    }
    assert_eq!(verify_pin(&mut c, b"123456"), sw::SUCCESS);
    // Short Le: 61xx and GET RESPONSE.
    let r = tx(&mut c, &piv::get_data(object::PRINTED_INFORMATION));
    assert_eq!(r.data.len(), 256);
    assert_eq!(r.sw, 0x6100);
    let full = tx_full(&mut c, &piv::get_data(object::PRINTED_INFORMATION));
    assert_eq!(full.sw, sw::SUCCESS);
    assert_eq!(full.data, tlv::encode(0x53, &value));
    // GET RESPONSE with a small Le serves in pieces.
    let _ = tx(&mut c, &piv::get_data(object::PRINTED_INFORMATION));
    let r = tx(&mut c, &keyward_card::apdu::get_response(16));
    assert_eq!(r.data.len(), 16);
    assert!(r.has_more());
    // GET RESPONSE with P1/P2 other than 0 is refused (and drops the rest).
    let _ = tx(&mut c, &piv::get_data(object::PRINTED_INFORMATION));
    assert_eq!(
        raw(&mut c, &[0x00, 0xC0, 0x01, 0x00, 0x00]).sw,
        sw::INCORRECT_P1P2
    );
    // Any other command drops the pending response.
    let _ = tx(&mut c, &piv::yk_get_version());
    assert_eq!(
        sw_of(&mut c, &keyward_card::apdu::get_response(0)),
        sw::CONDITIONS_NOT_SATISFIED
    );
    // Extended Le: everything at once.
    let ext = piv::get_data(object::PRINTED_INFORMATION)
        .with_le(65536)
        .extended(true);
    let r = tx(&mut c, &ext);
    assert_eq!(r.sw, sw::SUCCESS);
    assert_eq!(r.data.len(), tlv::encode(0x53, &value).len());
    // Extended command data without chaining.
    let r = tx(
        &mut c,
        &piv::put_data(object::KEY_HISTORY, &[1u8; 400]).extended(true),
    );
    assert_eq!(r.sw, sw::SUCCESS);
    // A chain broken by another instruction.
    let parts = piv::put_data(object::CHUID, &[2u8; 300]).to_chained_short(200);
    assert_eq!(raw(&mut c, &parts[0]).sw, sw::SUCCESS);
    let other = piv::verify(key_ref::PIN, None).unwrap();
    assert_eq!(sw_of(&mut c, &other), sw::LAST_COMMAND_OF_CHAIN_EXPECTED);
}

// ---------------------------------------------------------------- GET / PUT DATA

#[test]
fn get_data_objects_and_access() {
    let mut c = yk("5.7.1");
    let r = tx(&mut c, &piv::get_data(object::DISCOVERY));
    assert_eq!(r.sw, sw::SUCCESS);
    assert!(piv::parse_discovery_object(&r.data).is_ok());
    assert_eq!(
        sw_of(&mut c, &piv::get_data(object::CHUID)),
        sw::FILE_NOT_FOUND
    );
    assert_eq!(sw_of(&mut c, &piv::get_data(0x5FC1FF)), sw::FILE_NOT_FOUND);
    let bad = CommandApdu::new(0, 0xCB, 0x3F, 0xFF).with_data(vec![0x5D, 1, 0x7E]);
    assert_eq!(sw_of(&mut c, &bad), sw::INCORRECT_DATA);
    let bad_p = CommandApdu::new(0, 0xCB, 0x3F, 0x00).with_data(piv::tag_list(object::CHUID));
    assert_eq!(sw_of(&mut c, &bad_p), sw::INCORRECT_P1P2);
    // Printed information needs the PIN (SP 800-73-4 table 3).
    auth(&mut c);
    let printed = piv::PrintedInformation {
        name: "Ada".into(),
        ..Default::default()
    };
    assert_eq!(
        sw_of(
            &mut c,
            &piv::put_data(object::PRINTED_INFORMATION, &printed.encode())
        ),
        sw::SUCCESS
    );
    assert_eq!(
        sw_of(&mut c, &piv::get_data(object::PRINTED_INFORMATION)),
        sw::SECURITY_STATUS_NOT_SATISFIED
    );
    assert_eq!(verify_pin(&mut c, b"123456"), sw::SUCCESS);
    assert_eq!(
        sw_of(&mut c, &piv::get_data(object::PRINTED_INFORMATION)),
        sw::SUCCESS
    );
    // The attestation certificate object of a YubiKey.
    let r = tx_full(&mut c, &piv::get_data(object::YK_ATTESTATION_CERT));
    assert_eq!(r.sw, sw::SUCCESS);
}

#[test]
fn put_data_needs_management_key_and_valid_objects() {
    let mut c = yk("5.7.1");
    let chuid = piv::Chuid {
        fascn: piv::non_federal_fascn(1),
        guid: [1; 16],
        expiration: *b"20351231",
        signature: vec![],
    };
    let put = piv::put_data(object::CHUID, &chuid.encode());
    assert_eq!(sw_of(&mut c, &put), sw::SECURITY_STATUS_NOT_SATISFIED);
    assert_eq!(verify_pin(&mut c, b"123456"), sw::SUCCESS);
    assert_eq!(
        sw_of(&mut c, &put),
        sw::SECURITY_STATUS_NOT_SATISFIED,
        "PIN is not enough"
    );
    auth(&mut c);
    assert_eq!(sw_of(&mut c, &put), sw::SUCCESS);
    let r = tx(&mut c, &piv::get_data(object::CHUID));
    assert_eq!(
        piv::Chuid::parse(tlv::expect(&r.data, 0x53).unwrap()).unwrap(),
        chuid
    );
    for (tag, value) in [
        (object::CCC, piv::ccc(&[7; 21])),
        (
            object::AUTHENTICATION_CERT,
            piv::cert_container(&[0x30, 0x00], false),
        ),
        (object::KEY_HISTORY, piv::key_history(0, 0, None)),
        (object::SECURITY_OBJECT, piv::security_object(&[1], &[2])),
        (
            object::DISCOVERY,
            tlv::expect(&piv::discovery_object([0x60, 0x10]), 0x7E)
                .unwrap()
                .to_vec(),
        ),
    ] {
        assert_eq!(
            sw_of(&mut c, &piv::put_data(tag, &value)),
            sw::SUCCESS,
            "{tag:X}"
        );
        assert_eq!(sw_of(&mut c, &piv::get_data(tag)), sw::SUCCESS, "{tag:X}");
    }
    // Unknown object, malformed data, too large, delete.
    assert_eq!(
        sw_of(&mut c, &piv::put_data(0x5FC1FF, &[1])),
        sw::INCORRECT_DATA
    );
    let junk =
        CommandApdu::new(0, 0xDB, 0x3F, 0xFF).with_data(vec![0x5C, 3, 0x5F, 0xC1, 0x02, 0x54, 0]);
    assert_eq!(sw_of(&mut c, &junk), sw::INCORRECT_DATA);
    assert_eq!(
        sw_of(
            &mut c,
            &CommandApdu::new(0, 0xDB, 0x3F, 0xFF).with_data(vec![0x5C])
        ),
        sw::INCORRECT_DATA
    );
    let big = piv::put_data(object::FACIAL_IMAGE, &vec![0u8; 5000]).extended(true);
    assert_eq!(sw_of(&mut c, &big), sw::NOT_ENOUGH_MEMORY);
    assert_eq!(
        sw_of(
            &mut c,
            &CommandApdu::new(0, 0xDB, 0x3F, 0x00).with_data(vec![0x7E, 0])
        ),
        sw::INCORRECT_P1P2
    );
    assert_eq!(
        sw_of(&mut c, &piv::put_data(object::CHUID, &[])),
        sw::SUCCESS
    );
    assert_eq!(
        sw_of(&mut c, &piv::get_data(object::CHUID)),
        sw::FILE_NOT_FOUND
    );
}

// ---------------------------------------------------------------- PIN and PUK

#[test]
fn verify_counts_blocks_and_reports_status() {
    let mut c = yk("5.7.1");
    let status = piv::verify(key_ref::PIN, None).unwrap();
    assert_eq!(sw_of(&mut c, &status), 0x63C3);
    assert_eq!(verify_pin(&mut c, b"000000"), 0x63C2);
    assert_eq!(
        sw_of(&mut c, &status),
        0x63C2,
        "the status query does not count"
    );
    assert_eq!(verify_pin(&mut c, b"123456"), sw::SUCCESS);
    assert_eq!(sw_of(&mut c, &status), sw::SUCCESS);
    assert_eq!(sw_of(&mut c, &piv::verify_reset(key_ref::PIN)), sw::SUCCESS);
    assert_eq!(sw_of(&mut c, &status), 0x63C3);
    // Wrong length, wrong reference, wrong P1.
    let short = CommandApdu::new(0, 0x20, 0, 0x80).with_data(b"1234".to_vec());
    assert_eq!(sw_of(&mut c, &short), sw::INCORRECT_DATA);
    assert_eq!(
        sw_of(
            &mut c,
            &piv::verify(key_ref::PUK, Some(b"12345678")).unwrap()
        ),
        sw::REFERENCE_DATA_NOT_FOUND
    );
    assert_eq!(
        sw_of(
            &mut c,
            &piv::verify(key_ref::GLOBAL_PIN, Some(b"123456")).unwrap()
        ),
        sw::REFERENCE_DATA_NOT_FOUND
    );
    assert_eq!(raw(&mut c, &[0, 0x20, 0x01, 0x80]).sw, sw::INCORRECT_P1P2);
    // Block.
    assert_eq!(verify_pin(&mut c, b"000000"), 0x63C2);
    assert_eq!(verify_pin(&mut c, b"000000"), 0x63C1);
    assert_eq!(verify_pin(&mut c, b"000000"), 0x63C0);
    assert_eq!(verify_pin(&mut c, b"123456"), sw::AUTH_METHOD_BLOCKED);
    assert_eq!(sw_of(&mut c, &status), sw::AUTH_METHOD_BLOCKED);
    // Power cycle keeps the counter.
    c.power_off();
    c.power_on();
    assert_eq!(verify_pin(&mut c, b"123456"), sw::AUTH_METHOD_BLOCKED);
}

#[test]
fn change_reference_data_for_pin_and_puk() {
    let mut c = yk("5.7.1");
    let change = |k, o: &[u8], n: &[u8]| piv::change_reference_data(k, o, n).unwrap();
    assert_eq!(
        sw_of(&mut c, &change(key_ref::PIN, b"000000", b"654321")),
        0x63C2
    );
    assert_eq!(
        sw_of(&mut c, &change(key_ref::PIN, b"123456", b"654321")),
        sw::SUCCESS
    );
    assert_eq!(verify_pin(&mut c, b"654321"), sw::SUCCESS);
    assert_eq!(verify_pin(&mut c, b"123456"), 0x63C2);
    // New PIN too short or too long (padding wrong) is refused without counting.
    assert_eq!(
        sw_of(&mut c, &change(key_ref::PIN, b"654321", b"12345")),
        sw::INCORRECT_DATA
    );
    let bad_pad = CommandApdu::new(0, 0x24, 0, 0x80)
        .with_data([&piv::pad_pin(b"654321").unwrap()[..], b"1234\xff567"].concat());
    assert_eq!(sw_of(&mut c, &bad_pad), sw::INCORRECT_DATA);
    assert_eq!(
        sw_of(
            &mut c,
            &CommandApdu::new(0, 0x24, 0, 0x80).with_data(vec![0; 8])
        ),
        sw::INCORRECT_DATA
    );
    assert_eq!(
        sw_of(&mut c, &change(0x9B, b"654321", b"123456")),
        sw::REFERENCE_DATA_NOT_FOUND
    );
    assert_eq!(
        raw(
            &mut c,
            &[[0, 0x24, 1, 0x80, 16].as_slice(), &[0xFF; 16]].concat()
        )
        .sw,
        sw::INCORRECT_P1P2
    );
    // PUK.
    assert_eq!(
        sw_of(&mut c, &change(key_ref::PUK, b"00000000", b"87654321")),
        0x63C2
    );
    assert_eq!(
        sw_of(&mut c, &change(key_ref::PUK, b"12345678", b"87654321")),
        sw::SUCCESS
    );
    for expected in [0x63C2, 0x63C1, 0x63C0] {
        assert_eq!(
            sw_of(&mut c, &change(key_ref::PUK, b"00000000", b"11111111")),
            expected
        );
    }
    assert_eq!(
        sw_of(&mut c, &change(key_ref::PUK, b"87654321", b"11111111")),
        sw::AUTH_METHOD_BLOCKED
    );
}

#[test]
fn reset_retry_counter_unblocks_with_the_puk() {
    let mut c = yk("5.7.1");
    for _ in 0..3 {
        verify_pin(&mut c, b"000000");
    }
    assert_eq!(verify_pin(&mut c, b"123456"), sw::AUTH_METHOD_BLOCKED);
    let rrc = |puk: &[u8], pin: &[u8]| piv::reset_retry_counter(puk, pin).unwrap();
    assert_eq!(sw_of(&mut c, &rrc(b"00000000", b"222222")), 0x63C2);
    assert_eq!(sw_of(&mut c, &rrc(b"12345678", b"222")), sw::INCORRECT_DATA);
    let wrong_ref = CommandApdu::new(0, 0x2C, 0, 0x81).with_data(vec![0xFF; 16]);
    assert_eq!(sw_of(&mut c, &wrong_ref), sw::REFERENCE_DATA_NOT_FOUND);
    assert_eq!(
        sw_of(
            &mut c,
            &CommandApdu::new(0, 0x2C, 0, 0x80).with_data(vec![0xFF; 8])
        ),
        sw::INCORRECT_DATA
    );
    assert_eq!(sw_of(&mut c, &rrc(b"12345678", b"222222")), sw::SUCCESS);
    assert_eq!(verify_pin(&mut c, b"222222"), sw::SUCCESS);
    // A blocked PUK cannot unblock.
    for _ in 0..3 {
        sw_of(&mut c, &rrc(b"00000000", b"222222"));
    }
    assert_eq!(
        sw_of(&mut c, &rrc(b"12345678", b"333333")),
        sw::AUTH_METHOD_BLOCKED
    );
}

// ---------------------------------------------------------------- management key

#[test]
fn management_key_mutual_and_single_authentication() {
    // 3DES factory key before 5.7.
    let mut c = yk("5.4.3");
    assert_eq!(mgmt_key_of(&mut c).algorithm, alg::TDES);
    assert_eq!(
        mutual_auth(&mut c, alg::TDES, &DEFAULT_MANAGEMENT_KEY),
        sw::SUCCESS
    );
    assert_eq!(
        mutual_auth(&mut c, alg::TDES, &[9u8; 24]),
        sw::SECURITY_STATUS_NOT_SATISFIED
    );
    assert_eq!(
        mutual_auth(&mut c, alg::AES_192, &DEFAULT_MANAGEMENT_KEY),
        sw::INCORRECT_P1P2
    );
    // Step 2 without step 1.
    let ga = piv::general_authenticate(
        alg::TDES,
        0x9B,
        &[(dyn_auth::WITNESS, &[1; 8]), (dyn_auth::CHALLENGE, &[2; 8])],
    );
    assert_eq!(sw_of(&mut c, &ga), sw::CONDITIONS_NOT_SATISFIED);
    let junk = CommandApdu::new(0, 0x87, alg::TDES, 0x9B).with_data(vec![0x7D, 0]);
    assert_eq!(sw_of(&mut c, &junk), sw::INCORRECT_DATA);
    // Single (challenge-response) authentication.
    let mk = keyward_vcard::keys::ManagementKey::new(alg::TDES, &DEFAULT_MANAGEMENT_KEY).unwrap();
    let r = tx(
        &mut c,
        &piv::general_authenticate(alg::TDES, 0x9B, &[(dyn_auth::CHALLENGE, &[])]),
    );
    let challenge = piv::parse_general_authenticate_response(&r.data, dyn_auth::CHALLENGE)
        .unwrap()
        .to_vec();
    let good = mk.encrypt_block(&challenge);
    let resp = piv::general_authenticate(alg::TDES, 0x9B, &[(dyn_auth::RESPONSE, &good)]);
    assert_eq!(sw_of(&mut c, &resp), sw::SUCCESS);
    assert!(c.piv().session.management_authenticated);
    let _ = tx(
        &mut c,
        &piv::general_authenticate(alg::TDES, 0x9B, &[(dyn_auth::CHALLENGE, &[])]),
    );
    let bad = piv::general_authenticate(alg::TDES, 0x9B, &[(dyn_auth::RESPONSE, &[0u8; 8])]);
    assert_eq!(sw_of(&mut c, &bad), sw::SECURITY_STATUS_NOT_SATISFIED);
    // AES-192 factory key from 5.7.
    let mut c = yk("5.7.1");
    assert_eq!(mgmt_key_of(&mut c).algorithm, alg::AES_192);
    assert_eq!(
        mutual_auth(&mut c, alg::AES_192, &DEFAULT_MANAGEMENT_KEY),
        sw::SUCCESS
    );
    assert_eq!(
        mutual_auth(&mut c, alg::TDES, &DEFAULT_MANAGEMENT_KEY),
        sw::INCORRECT_P1P2
    );
}

#[test]
fn set_management_key_is_gated_by_firmware_and_authentication() {
    let mut c = yk("5.4.1");
    let aes = piv::yk_set_management_key(alg::AES_128, &[3u8; 16], false);
    assert_eq!(sw_of(&mut c, &aes), sw::SECURITY_STATUS_NOT_SATISFIED);
    auth(&mut c);
    assert_eq!(sw_of(&mut c, &aes), sw::INCORRECT_DATA, "AES needs 5.4.2");
    let tdes = piv::yk_set_management_key(alg::TDES, &[4u8; 24], false);
    assert_eq!(sw_of(&mut c, &tdes), sw::SUCCESS);
    assert_eq!(
        mutual_auth(&mut c, alg::TDES, &DEFAULT_MANAGEMENT_KEY),
        sw::SECURITY_STATUS_NOT_SATISFIED
    );
    assert_eq!(mutual_auth(&mut c, alg::TDES, &[4u8; 24]), sw::SUCCESS);
    // Wrong length, wrong P1/P2.
    assert_eq!(
        sw_of(
            &mut c,
            &piv::yk_set_management_key(alg::TDES, &[4u8; 16], false)
        ),
        sw::INCORRECT_DATA
    );
    assert_eq!(
        raw(&mut c, &[0, 0xFF, 0xFF, 0x00, 1, 3]).sw,
        sw::INCORRECT_P1P2
    );
    let mut c = yk("5.4.2");
    auth(&mut c);
    for (a, len) in [(alg::AES_128, 16), (alg::AES_192, 24), (alg::AES_256, 32)] {
        let key = vec![a; len];
        assert_eq!(
            sw_of(&mut c, &piv::yk_set_management_key(a, &key, true)),
            sw::SUCCESS
        );
        assert_eq!(mutual_auth(&mut c, a, &key), sw::SUCCESS, "AES {a:02X}");
    }
}

// ---------------------------------------------------------------- keys

#[test]
fn generate_needs_management_key_and_a_supported_algorithm() {
    let mut c = yk("5.4.3");
    let g = piv::generate(alg::ECC_P256, slot::AUTHENTICATION, 0, 0);
    assert_eq!(sw_of(&mut c, &g), sw::SECURITY_STATUS_NOT_SATISFIED);
    auth(&mut c);
    assert_eq!(
        sw_of(&mut c, &piv::generate(alg::RSA_3072, 0x9A, 0, 0)),
        sw::INCORRECT_DATA,
        "RSA 3072 needs 5.7"
    );
    assert_eq!(
        sw_of(&mut c, &piv::generate(alg::AES_128, 0x9A, 0, 0)),
        sw::INCORRECT_DATA
    );
    assert_eq!(
        sw_of(&mut c, &piv::generate(alg::ECC_P256, 0x9B, 0, 0)),
        sw::INCORRECT_P1P2
    );
    assert_eq!(
        sw_of(&mut c, &piv::generate(alg::ECC_P256, 0x9A, 9, 0)),
        sw::INCORRECT_DATA
    );
    let junk = CommandApdu::new(0, 0x47, 0, 0x9A).with_data(vec![0xAC, 1, 0x80]);
    assert_eq!(sw_of(&mut c, &junk), sw::INCORRECT_DATA);
    assert_eq!(
        raw(&mut c, &[0, 0x47, 1, 0x9A, 5, 0xAC, 3, 0x80, 1, 0x11]).sw,
        sw::INCORRECT_P1P2
    );
    let p384 = generate(&mut c, alg::ECC_P384, slot::RETIRED_FIRST);
    assert!(matches!(p384, piv::PublicKeyTemplate::Ec { ref point } if point.len() == 97));
    let rsa = generate(&mut c, alg::RSA_2048, slot::KEY_MANAGEMENT);
    assert!(matches!(rsa, piv::PublicKeyTemplate::Rsa { ref modulus, .. } if modulus.len() == 256));
}

#[test]
fn rsa_3072_from_firmware_5_7_and_on_the_c4000() {
    let mut c = yk("5.7.1");
    auth(&mut c);
    let k = generate(&mut c, alg::RSA_3072, slot::AUTHENTICATION);
    assert!(matches!(k, piv::PublicKeyTemplate::Rsa { ref modulus, .. } if modulus.len() == 384));
    let mut c = c4000();
    auth(&mut c);
    assert_eq!(
        sw_of(&mut c, &piv::generate(alg::RSA_4096, 0x9A, 0, 0)),
        sw::INCORRECT_DATA,
        "C4000 has no RSA 4096"
    );
    assert_eq!(
        sw_of(&mut c, &piv::generate(alg::RSA_1024, 0x9A, 0, 0)),
        sw::INCORRECT_DATA
    );
}

#[test]
fn signing_needs_the_pin_and_9c_needs_it_every_time() {
    let mut c = yk("5.7.1");
    auth(&mut c);
    let k9a = generate(&mut c, alg::ECC_P256, slot::AUTHENTICATION);
    let k9c = generate(&mut c, alg::ECC_P256, slot::SIGNATURE);
    let k9e = generate(&mut c, alg::ECC_P256, slot::CARD_AUTHENTICATION);
    let hash = [7u8; 32];
    assert_eq!(
        sign(&mut c, alg::ECC_P256, 0x9A, &hash).sw,
        sw::SECURITY_STATUS_NOT_SATISFIED
    );
    // 9E: card authentication needs no PIN.
    let r = sign(&mut c, alg::ECC_P256, 0x9E, &hash);
    assert_eq!(r.sw, sw::SUCCESS);
    p256_verify(&k9e, &hash, &sig_of(&r));
    assert_eq!(verify_pin(&mut c, b"123456"), sw::SUCCESS);
    for _ in 0..2 {
        let r = sign(&mut c, alg::ECC_P256, 0x9A, &hash);
        assert_eq!(r.sw, sw::SUCCESS);
        p256_verify(&k9a, &hash, &sig_of(&r));
    }
    // 9C: once per VERIFY.
    let r = sign(&mut c, alg::ECC_P256, 0x9C, &hash);
    assert_eq!(r.sw, sw::SUCCESS);
    p256_verify(&k9c, &hash, &sig_of(&r));
    assert_eq!(
        sign(&mut c, alg::ECC_P256, 0x9C, &hash).sw,
        sw::SECURITY_STATUS_NOT_SATISFIED
    );
    assert_eq!(verify_pin(&mut c, b"123456"), sw::SUCCESS);
    assert_eq!(sign(&mut c, alg::ECC_P256, 0x9C, &hash).sw, sw::SUCCESS);
    // Empty slot, algorithm mismatch, malformed template, non-key slot.
    assert_eq!(
        sign(&mut c, alg::ECC_P256, 0x9D, &hash).sw,
        sw::INCORRECT_DATA
    );
    assert_eq!(
        sign(&mut c, alg::ECC_P384, 0x9A, &hash).sw,
        sw::INCORRECT_P1P2
    );
    assert_eq!(
        sign(&mut c, alg::ECC_P256, 0x80, &hash).sw,
        sw::INCORRECT_P1P2
    );
    let no_82 = piv::general_authenticate(alg::ECC_P256, 0x9A, &[(dyn_auth::CHALLENGE, &hash)]);
    assert_eq!(sw_of(&mut c, &no_82), sw::INCORRECT_DATA);
    let empty = piv::general_authenticate(
        alg::ECC_P256,
        0x9A,
        &[(dyn_auth::RESPONSE, &[]), (dyn_auth::CHALLENGE, &[])],
    );
    assert_eq!(sw_of(&mut c, &empty), sw::INCORRECT_DATA);
    // A power cycle forgets the PIN.
    c.power_off();
    c.power_on();
    assert_eq!(
        sign(&mut c, alg::ECC_P256, 0x9A, &hash).sw,
        sw::SECURITY_STATUS_NOT_SATISFIED
    );
}

#[test]
fn rsa_signature_decryption_and_p384() {
    use rsa::traits::PublicKeyParts;
    let mut c = yk("5.7.1");
    auth(&mut c);
    let piv::PublicKeyTemplate::Rsa { modulus, exponent } = generate(&mut c, alg::RSA_2048, 0x9D)
    else {
        panic!()
    };
    let public = rsa::RsaPublicKey::new(
        rsa::BigUint::from_bytes_be(&modulus),
        rsa::BigUint::from_bytes_be(&exponent),
    )
    .unwrap();
    assert_eq!(public.size(), 256);
    verify_pin(&mut c, b"123456");
    // PKCS#1 v1.5 signature block for a SHA-256 hash.
    let digest = [3u8; 32];
    let prefix: [u8; 19] = [
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    ];
    let mut block = vec![0x00, 0x01];
    block.resize(256 - prefix.len() - digest.len() - 1, 0xFF);
    block.push(0);
    block.extend_from_slice(&prefix);
    block.extend_from_slice(&digest);
    let r = sign(&mut c, alg::RSA_2048, 0x9D, &block);
    assert_eq!(r.sw, sw::SUCCESS);
    let sig = sig_of(&r);
    let verifier = rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(public.clone());
    use rsa::signature::hazmat::PrehashVerifier as _;
    verifier
        .verify_prehash(
            &digest,
            &rsa::pkcs1v15::Signature::try_from(sig.as_slice()).unwrap(),
        )
        .unwrap();
    // Decryption: the raw private operation undoes an encryption.
    let secret = b"session key";
    let ct = public
        .encrypt(&mut rand::rngs::OsRng, rsa::Pkcs1v15Encrypt, secret)
        .unwrap();
    let r = sign(&mut c, alg::RSA_2048, 0x9D, &ct);
    assert_eq!(r.sw, sw::SUCCESS);
    assert!(sig_of(&r).ends_with(secret));
    // Input of the wrong size.
    assert_eq!(
        sign(&mut c, alg::RSA_2048, 0x9D, &[1u8; 255]).sw,
        sw::INCORRECT_DATA
    );
    // P-384.
    auth(&mut c);
    let piv::PublicKeyTemplate::Ec { point } = generate(&mut c, alg::ECC_P384, 0x9A) else {
        panic!()
    };
    let r = sign(&mut c, alg::ECC_P384, 0x9A, &[9u8; 48]);
    assert_eq!(r.sw, sw::SUCCESS);
    let vk = p384::ecdsa::VerifyingKey::from_sec1_bytes(&point).unwrap();
    vk.verify_prehash(
        &[9u8; 48],
        &p384::ecdsa::Signature::from_der(&sig_of(&r)).unwrap(),
    )
    .unwrap();
}

#[test]
fn ecdh_on_the_key_management_slot() {
    let mut c = yk("5.7.1");
    auth(&mut c);
    let piv::PublicKeyTemplate::Ec { point } = generate(&mut c, alg::ECC_P256, 0x9D) else {
        panic!()
    };
    let peer = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let ecdh = piv::ecdh(alg::ECC_P256, 0x9D, &peer.public_key().to_sec1_bytes());
    assert_eq!(sw_of(&mut c, &ecdh), sw::SECURITY_STATUS_NOT_SATISFIED);
    verify_pin(&mut c, b"123456");
    let r = tx(&mut c, &ecdh);
    assert_eq!(r.sw, sw::SUCCESS);
    let card_pub = p256::PublicKey::from_sec1_bytes(&point).unwrap();
    let expect = p256::ecdh::diffie_hellman(peer.to_nonzero_scalar(), card_pub.as_affine());
    assert_eq!(sig_of(&r), expect.raw_secret_bytes().to_vec());
    assert_eq!(
        sw_of(&mut c, &piv::ecdh(alg::ECC_P256, 0x9D, &[4, 1, 2])),
        sw::INCORRECT_DATA
    );
    generate(&mut c, alg::RSA_1024, 0x82);
    assert_eq!(
        sw_of(&mut c, &piv::ecdh(alg::RSA_1024, 0x82, &point)),
        sw::CONDITIONS_NOT_SATISFIED
    );
}

// ---------------------------------------------------------------- YubiKey extensions

#[test]
fn yubikey_version_serial_and_metadata_gate() {
    let mut c = yk("5.2.7");
    assert_eq!(tx(&mut c, &piv::yk_get_version()).data, vec![5, 2, 7]);
    assert_eq!(
        tx(&mut c, &piv::yk_get_serial()).data,
        12_345_678u32.to_be_bytes().to_vec()
    );
    assert_eq!(
        sw_of(&mut c, &piv::yk_get_metadata(key_ref::PIN)),
        sw::INS_NOT_SUPPORTED,
        "metadata needs 5.3"
    );
    let mut c = yk("5.3.0");
    let r = tx(&mut c, &piv::yk_get_metadata(key_ref::PIN));
    assert_eq!(r.sw, sw::SUCCESS);
    assert_eq!(tlv::find(&r.data, 0x06), Some(&[3u8, 3][..]));
    assert_eq!(tlv::find(&r.data, 0x05), Some(&[1u8][..]));
    let r = tx(&mut c, &piv::yk_get_metadata(key_ref::MANAGEMENT));
    assert_eq!(tlv::find(&r.data, 0x01), Some(&[alg::TDES][..]));
    assert_eq!(
        sw_of(&mut c, &piv::yk_get_metadata(0x9A)),
        sw::REFERENCE_DATA_NOT_FOUND
    );
    assert_eq!(
        sw_of(&mut c, &piv::yk_get_metadata(0x42)),
        sw::REFERENCE_DATA_NOT_FOUND
    );
    assert_eq!(raw(&mut c, &[0, 0xF7, 1, 0x80]).sw, sw::INCORRECT_P1P2);
    auth(&mut c);
    let public = generate(&mut c, alg::ECC_P256, 0x9A);
    let r = tx(&mut c, &piv::yk_get_metadata(0x9A));
    assert_eq!(tlv::find(&r.data, 0x01), Some(&[alg::ECC_P256][..]));
    assert_eq!(
        tlv::find(&r.data, 0x02),
        Some(&[policy::PIN_ONCE, policy::TOUCH_NEVER][..])
    );
    assert_eq!(tlv::find(&r.data, 0x03), Some(&[1u8][..]));
    assert_eq!(
        tlv::find(&r.data, 0x04).unwrap(),
        &public.encode_inner()[..]
    );
    let r = tx(&mut c, &piv::yk_get_metadata(slot::ATTESTATION));
    assert_eq!(r.sw, sw::SUCCESS);
}

#[test]
fn move_key_needs_firmware_5_7_and_the_management_key() {
    let mut c = yk("5.6.9");
    auth(&mut c);
    generate(&mut c, alg::ECC_P256, 0x9D);
    assert_eq!(
        sw_of(&mut c, &piv::yk_move_key(0x82, 0x9D)),
        sw::INS_NOT_SUPPORTED,
        "MOVE KEY needs 5.7"
    );
    let mut c = yk("5.7.1");
    assert_eq!(
        sw_of(&mut c, &piv::yk_move_key(0x82, 0x9D)),
        sw::SECURITY_STATUS_NOT_SATISFIED
    );
    auth(&mut c);
    assert_eq!(
        sw_of(&mut c, &piv::yk_move_key(0x82, 0x9D)),
        sw::REFERENCE_DATA_NOT_FOUND,
        "nothing to move"
    );
    let piv::PublicKeyTemplate::Ec { point } = generate(&mut c, alg::ECC_P256, 0x9D) else {
        panic!()
    };
    assert_eq!(
        sw_of(&mut c, &piv::yk_move_key(0xF9, 0x9D)),
        sw::INCORRECT_P1P2
    );
    assert_eq!(
        sw_of(&mut c, &piv::yk_move_key(0x9D, 0x9D)),
        sw::INCORRECT_P1P2
    );
    assert_eq!(sw_of(&mut c, &piv::yk_move_key(0x82, 0x9D)), sw::SUCCESS);
    // 9D is empty; 82 holds the key with its policies and origin, and still
    // agrees keys with the PIN.
    assert_eq!(
        sw_of(&mut c, &piv::yk_get_metadata(0x9D)),
        sw::REFERENCE_DATA_NOT_FOUND
    );
    let r = tx(&mut c, &piv::yk_get_metadata(0x82));
    assert_eq!(tlv::find(&r.data, 0x03), Some(&[1u8][..]), "generated");
    assert_eq!(
        tlv::find(&r.data, 0x04).unwrap(),
        &piv::PublicKeyTemplate::Ec {
            point: point.clone()
        }
        .encode_inner()[..]
    );
    verify_pin(&mut c, b"123456");
    let peer = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let r = tx(
        &mut c,
        &piv::ecdh(alg::ECC_P256, 0x82, &peer.public_key().to_sec1_bytes()),
    );
    let card_pub = p256::PublicKey::from_sec1_bytes(&point).unwrap();
    let expect = p256::ecdh::diffie_hellman(peer.to_nonzero_scalar(), card_pub.as_affine());
    assert_eq!(sig_of(&r), expect.raw_secret_bytes().to_vec());
    // P1 = FF deletes.
    assert_eq!(sw_of(&mut c, &piv::yk_move_key(0xFF, 0x82)), sw::SUCCESS);
    assert_eq!(
        sw_of(&mut c, &piv::yk_get_metadata(0x82)),
        sw::REFERENCE_DATA_NOT_FOUND
    );
}

#[test]
fn set_pin_retries_needs_management_key_and_verified_pin() {
    let mut c = yk("5.7.1");
    let retries = piv::yk_set_pin_retries(5, 4);
    assert_eq!(sw_of(&mut c, &retries), sw::SECURITY_STATUS_NOT_SATISFIED);
    auth(&mut c);
    assert_eq!(
        sw_of(&mut c, &retries),
        sw::SECURITY_STATUS_NOT_SATISFIED,
        "without a verified PIN"
    );
    let mut c = yk("5.7.1");
    verify_pin(&mut c, b"123456");
    assert_eq!(
        sw_of(&mut c, &retries),
        sw::SECURITY_STATUS_NOT_SATISFIED,
        "without the management key"
    );
    auth(&mut c);
    assert_eq!(
        sw_of(&mut c, &piv::yk_set_pin_retries(0, 4)),
        sw::INCORRECT_P1P2
    );
    // Change PIN first, then SET PIN RETRIES resets it to the default.
    let change = piv::change_reference_data(key_ref::PIN, b"123456", b"999999").unwrap();
    assert_eq!(sw_of(&mut c, &change), sw::SUCCESS);
    assert_eq!(sw_of(&mut c, &retries), sw::SUCCESS);
    assert_eq!(
        sw_of(&mut c, &piv::verify(key_ref::PIN, None).unwrap()),
        0x63C5
    );
    assert_eq!(verify_pin(&mut c, b"999999"), 0x63C4);
    assert_eq!(verify_pin(&mut c, b"123456"), sw::SUCCESS);
    let r = tx(&mut c, &piv::yk_get_metadata(key_ref::PUK));
    assert_eq!(tlv::find(&r.data, 0x06), Some(&[4u8, 4][..]));
}

#[test]
fn reset_only_when_pin_and_puk_are_blocked() {
    let mut c = yk("5.7.1");
    auth(&mut c);
    generate(&mut c, alg::ECC_P256, 0x9A);
    assert_eq!(
        sw_of(&mut c, &piv::yk_reset()),
        sw::CONDITIONS_NOT_SATISFIED
    );
    for _ in 0..3 {
        verify_pin(&mut c, b"000000");
    }
    assert_eq!(
        sw_of(&mut c, &piv::yk_reset()),
        sw::CONDITIONS_NOT_SATISFIED,
        "PUK not blocked"
    );
    for _ in 0..3 {
        sw_of(
            &mut c,
            &piv::reset_retry_counter(b"00000000", b"111111").unwrap(),
        );
    }
    assert_eq!(raw(&mut c, &[0, 0xFB, 1, 0]).sw, sw::INCORRECT_P1P2);
    assert_eq!(sw_of(&mut c, &piv::yk_reset()), sw::SUCCESS);
    assert_eq!(verify_pin(&mut c, b"123456"), sw::SUCCESS);
    assert!(c.piv().state.keys.is_empty());
    // The attestation key survives.
    assert_eq!(
        sw_of(&mut c, &piv::yk_get_metadata(slot::ATTESTATION)),
        sw::SUCCESS
    );
}

#[test]
fn attest_generated_keys_only() {
    use der::{Decode, Encode};
    let mut c = yk("5.7.1");
    assert_eq!(
        sw_of(&mut c, &piv::yk_attest(0x9A)),
        sw::REFERENCE_DATA_NOT_FOUND
    );
    assert_eq!(sw_of(&mut c, &piv::yk_attest(0x9B)), sw::INCORRECT_P1P2);
    auth(&mut c);
    let public = generate(&mut c, alg::ECC_P256, 0x9A);
    let r = tx_full(&mut c, &piv::yk_attest(0x9A));
    assert_eq!(r.sw, sw::SUCCESS);
    let cert = x509_cert::Certificate::from_der(&r.data).unwrap();
    let piv::PublicKeyTemplate::Ec { point } = public else {
        panic!()
    };
    assert_eq!(
        cert.tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes(),
        &point[..]
    );
    let exts = cert.tbs_certificate.extensions.clone().unwrap();
    let ext = |oid: &str| {
        exts.iter()
            .find(|e| e.extn_id.to_string() == oid)
            .map(|e| e.extn_value.as_bytes().to_vec())
    };
    assert_eq!(ext("1.3.6.1.4.1.41482.3.3"), Some(vec![5, 7, 1]));
    assert_eq!(
        ext("1.3.6.1.4.1.41482.3.7"),
        Some(
            der::asn1::Uint::new(&12_345_678u32.to_be_bytes())
                .unwrap()
                .to_der()
                .unwrap()
        )
    );
    // Signed by the F9 key, whose certificate is signed by the manufacturer CA.
    let f9 = tx_full(&mut c, &piv::get_data(object::YK_ATTESTATION_CERT));
    let f9 = piv::parse_cert_container(tlv::expect(&f9.data, 0x53).unwrap())
        .unwrap()
        .certificate;
    let f9 = x509_cert::Certificate::from_der(&f9).unwrap();
    let check = |cert: &x509_cert::Certificate, issuer: &x509_cert::Certificate| {
        use p256::ecdsa::signature::Verifier;
        let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(
            issuer
                .tbs_certificate
                .subject_public_key_info
                .subject_public_key
                .raw_bytes(),
        )
        .unwrap();
        let sig = p256::ecdsa::DerSignature::from_bytes(cert.signature.raw_bytes()).unwrap();
        vk.verify(&cert.tbs_certificate.to_der().unwrap(), &sig)
            .unwrap();
        assert_eq!(cert.tbs_certificate.issuer, issuer.tbs_certificate.subject);
    };
    check(&cert, &f9);
    let root = x509_cert::Certificate::from_der(&ca().1.root_der()).unwrap();
    check(&f9, &root);
    // Imported keys cannot be attested.
    let import = piv::yk_import_ec_key(alg::ECC_P256, 0x9C, &[0x11; 32]);
    assert_eq!(sw_of(&mut c, &import), sw::SUCCESS);
    assert_eq!(sw_of(&mut c, &piv::yk_attest(0x9C)), sw::INCORRECT_DATA);
}

#[test]
fn import_key_needs_management_key() {
    let mut c = yk("5.7.1");
    let scalar = [0x22u8; 32];
    let import = piv::yk_import_ec_key(alg::ECC_P256, 0x9A, &scalar);
    assert_eq!(sw_of(&mut c, &import), sw::SECURITY_STATUS_NOT_SATISFIED);
    auth(&mut c);
    assert_eq!(
        sw_of(&mut c, &piv::yk_import_ec_key(alg::ECC_P256, 0x9B, &scalar)),
        sw::INCORRECT_P1P2
    );
    assert_eq!(
        sw_of(
            &mut c,
            &piv::yk_import_ec_key(alg::ECC_P256, 0x9A, &[0u8; 32])
        ),
        sw::INCORRECT_DATA
    );
    assert_eq!(
        sw_of(&mut c, &piv::yk_import_ec_key(alg::AES_128, 0x9A, &scalar)),
        sw::INCORRECT_P1P2
    );
    assert_eq!(
        sw_of(
            &mut c,
            &CommandApdu::new(0, 0xFE, alg::RSA_2048, 0x9A).with_data(vec![0x01, 1, 1])
        ),
        sw::INCORRECT_DATA
    );
    assert_eq!(sw_of(&mut c, &import), sw::SUCCESS);
    verify_pin(&mut c, b"123456");
    let r = sign(&mut c, alg::ECC_P256, 0x9A, &[1u8; 32]);
    let sk = p256::SecretKey::from_slice(&scalar).unwrap();
    let public = piv::PublicKeyTemplate::Ec {
        point: sk.public_key().to_sec1_bytes().to_vec(),
    };
    p256_verify(&public, &[1u8; 32], &sig_of(&r));
    let r = tx(&mut c, &piv::yk_get_metadata(0x9A));
    assert_eq!(tlv::find(&r.data, 0x03), Some(&[2u8][..]));
}

// ---------------------------------------------------------------- C4000

#[test]
fn c4000_has_cplc_and_no_yubikey_extensions() {
    let mut c = c4000();
    for ins in [0xFD, 0xF8, 0xFF, 0xFE, 0xFB, 0xFA, 0xF9, 0xF7] {
        assert_eq!(
            raw(&mut c, &[0, ins, 0, 0]).sw,
            sw::INS_NOT_SUPPORTED,
            "{ins:02X}"
        );
    }
    let r = raw(&mut c, &[0x80, 0xCA, 0x9F, 0x7F, 0x00]);
    assert_eq!(r.sw, sw::SUCCESS);
    let cplc = tlv::expect(&r.data, 0x9F7F).unwrap();
    assert_eq!(cplc.len(), 42);
    assert_eq!(&cplc[12..16], &12_345_678u32.to_be_bytes());
    // Answered whatever application is selected, and by the card manager itself.
    assert_eq!(sw_of(&mut c, &piv::select_aid(&piv::FIDO_AID)), sw::SUCCESS);
    assert_eq!(raw(&mut c, &[0x00, 0xCA, 0x9F, 0x7F, 0x00]).sw, sw::SUCCESS);
    assert_eq!(
        sw_of(&mut c, &piv::select_aid(&piv::GP_ISD_AID)),
        sw::SUCCESS
    );
    assert_eq!(raw(&mut c, &[0x80, 0xCA, 0x9F, 0x7F, 0x00]).sw, sw::SUCCESS);
    assert_eq!(
        raw(&mut c, &[0x80, 0xCA, 0x00, 0x66, 0x00]).sw,
        sw::REFERENCE_DATA_NOT_FOUND
    );
    assert_eq!(
        raw(
            &mut c,
            &[0x80, 0x50, 0x00, 0x00, 0x08, 1, 2, 3, 4, 5, 6, 7, 8]
        )
        .sw,
        sw::INS_NOT_SUPPORTED
    );
    // A YubiKey has no CPLC.
    let mut y = yk("5.7.1");
    assert_eq!(
        raw(&mut y, &[0x80, 0xCA, 0x9F, 0x7F, 0x00]).sw,
        sw::CLA_NOT_SUPPORTED
    );
    assert_eq!(
        raw(&mut y, &[0x00, 0xCA, 0x9F, 0x7F, 0x00]).sw,
        sw::INS_NOT_SUPPORTED
    );
}

#[test]
fn c4000_vendor_commands_need_the_management_key() {
    use keyward_vcard::c4000::{
        VENDOR_SET_MANAGEMENT_KEY, VENDOR_SET_PIN_SHARING, VENDOR_SET_RETRY_COUNTS,
    };
    let mut c = c4000();
    let mut key_cmd = vec![alg::AES_256];
    tlv::push(&mut key_cmd, 0x9B, &[6u8; 32]);
    let set_key =
        CommandApdu::new(0x80, VENDOR_SET_MANAGEMENT_KEY, 0, 0).with_data(key_cmd.clone());
    let retries = CommandApdu::new(0x80, VENDOR_SET_RETRY_COUNTS, 5, 7);
    let share = CommandApdu::new(0x80, VENDOR_SET_PIN_SHARING, 1, 0);
    for cmd in [&set_key, &retries, &share] {
        assert_eq!(sw_of(&mut c, cmd), sw::SECURITY_STATUS_NOT_SATISFIED);
    }
    // Under the interindustry class they are unknown instructions.
    assert_eq!(
        sw_of(&mut c, &CommandApdu::new(0, VENDOR_SET_RETRY_COUNTS, 5, 7)),
        sw::INS_NOT_SUPPORTED
    );
    auth(&mut c);
    assert_eq!(
        sw_of(
            &mut c,
            &CommandApdu::new(0x80, VENDOR_SET_RETRY_COUNTS, 0, 7)
        ),
        sw::INCORRECT_P1P2
    );
    assert_eq!(
        sw_of(
            &mut c,
            &CommandApdu::new(0x80, VENDOR_SET_RETRY_COUNTS, 5, 16)
        ),
        sw::INCORRECT_P1P2
    );
    assert_eq!(
        sw_of(
            &mut c,
            &CommandApdu::new(0x80, VENDOR_SET_PIN_SHARING, 2, 0)
        ),
        sw::INCORRECT_P1P2
    );
    assert_eq!(
        sw_of(
            &mut c,
            &CommandApdu::new(0x80, VENDOR_SET_MANAGEMENT_KEY, 1, 0).with_data(key_cmd.clone())
        ),
        sw::INCORRECT_P1P2
    );
    assert_eq!(
        sw_of(
            &mut c,
            &CommandApdu::new(0x80, VENDOR_SET_MANAGEMENT_KEY, 0, 0).with_data(vec![
                alg::AES_256,
                0x9B,
                1,
                0
            ])
        ),
        sw::INCORRECT_DATA
    );
    assert_eq!(sw_of(&mut c, &retries), sw::SUCCESS);
    assert_eq!(
        sw_of(&mut c, &piv::verify(key_ref::PIN, None).unwrap()),
        0x63C5
    );
    assert_eq!(sw_of(&mut c, &share), sw::SUCCESS);
    assert!(c.piv().state.pin_shared_with_fido);
    assert_eq!(sw_of(&mut c, &set_key), sw::SUCCESS);
    assert_eq!(mutual_auth(&mut c, alg::AES_256, &[6u8; 32]), sw::SUCCESS);
    // C4000 PINs: 4 to 8 characters, alphanumeric.
    let change = piv::change_reference_data(key_ref::PIN, b"123456", b"ab12").unwrap();
    assert_eq!(sw_of(&mut c, &change), sw::SUCCESS);
    assert_eq!(verify_pin(&mut c, b"ab12"), sw::SUCCESS);
}

// ---------------------------------------------------------------- FIDO over ISO 7816

/// authenticatorClientPIN getPINRetries (protocol 1): CBOR {1: 1, 2: 1}.
const GET_PIN_RETRIES: [u8; 6] = [0x06, 0xA2, 0x01, 0x01, 0x02, 0x01];

fn ctap(card: &mut VirtualCard, request: &[u8]) -> ResponseApdu {
    tx_full(
        card,
        &CommandApdu::new(0x80, 0x10, 0x80, 0x00)
            .with_data(request.to_vec())
            .with_le(256),
    )
}

#[test]
fn fido_applet_over_iso_7816() {
    let mut c = c4000();
    // SELECT without and with Le.
    assert_eq!(
        raw(
            &mut c,
            &[[0u8, 0xA4, 4, 0, 8].as_slice(), &piv::FIDO_AID].concat()
        )
        .data,
        b"FIDO_2_0"
    );
    let r = tx(&mut c, &piv::select_aid(&piv::FIDO_AID));
    assert_eq!((r.data.as_slice(), r.sw), (&b"FIDO_2_0"[..], sw::SUCCESS));
    // getInfo: status 00 and a CBOR map.
    let r = ctap(&mut c, &[0x04]);
    assert_eq!(r.sw, sw::SUCCESS);
    assert_eq!(r.data[0], 0x00);
    assert_eq!(r.data[1] & 0xE0, 0xA0);
    // Chained CTAP message.
    let req = CommandApdu::new(0x80, 0x10, 0x80, 0x00)
        .with_data(GET_PIN_RETRIES.to_vec())
        .with_le(256);
    let parts = req.to_chained_short(2);
    for part in &parts[..parts.len() - 1] {
        assert_eq!(raw(&mut c, part).sw, sw::SUCCESS);
    }
    let r = raw(&mut c, parts.last().unwrap());
    assert_eq!(&r.data[..4], &[0x00, 0xA2, 0x03, 0x08]);
    // Keep-alive poll with nothing pending, unknown instructions and class.
    assert_eq!(
        raw(&mut c, &[0x80, 0x11, 0, 0]).sw,
        sw::CONDITIONS_NOT_SATISFIED
    );
    assert_eq!(raw(&mut c, &[0x80, 0x12, 0, 0]).sw, sw::INS_NOT_SUPPORTED);
    assert_eq!(raw(&mut c, &[0x00, 0x01, 0, 0]).sw, sw::INS_NOT_SUPPORTED);
    assert_eq!(raw(&mut c, &[0x80, 0x10, 0x80, 0x00]).sw, sw::WRONG_LENGTH);
    // Back to PIV: selecting another application ended the PIV security status.
    assert_eq!(sw_of(&mut c, &piv::select_piv()), sw::SUCCESS);
    assert_eq!(verify_pin(&mut c, b"123456"), sw::SUCCESS);
    assert_eq!(sw_of(&mut c, &piv::select_aid(&piv::FIDO_AID)), sw::SUCCESS);
    assert_eq!(sw_of(&mut c, &piv::select_piv()), sw::SUCCESS);
    assert_eq!(
        sw_of(&mut c, &piv::verify(key_ref::PIN, None).unwrap()),
        0x63C3
    );
    // Re-selecting PIV itself keeps it.
    assert_eq!(verify_pin(&mut c, b"123456"), sw::SUCCESS);
    assert_eq!(sw_of(&mut c, &piv::select_piv()), sw::SUCCESS);
    assert_eq!(
        sw_of(&mut c, &piv::verify(key_ref::PIN, None).unwrap()),
        sw::SUCCESS
    );
    // A YubiKey over NFC answers FIDO over ISO 7816 too; over USB it does not.
    let mut nfc = card_with(ProfileKind::Yubikey5, Some("5.4.3"), Transport::Nfc);
    assert_eq!(
        sw_of(&mut nfc, &piv::select_aid(&piv::FIDO_AID)),
        sw::SUCCESS
    );
    assert_eq!(ctap(&mut nfc, &[0x04]).data[0], 0x00);
}

#[test]
fn c4000_shared_pin_uses_the_piv_retry_counter() {
    let mut c = c4000();
    auth(&mut c);
    let share = CommandApdu::new(0x80, keyward_vcard::c4000::VENDOR_SET_PIN_SHARING, 1, 0);
    assert_eq!(sw_of(&mut c, &share), sw::SUCCESS);
    verify_pin(&mut c, b"000000");
    tx(&mut c, &piv::select_aid(&piv::FIDO_AID));
    // One counter: a wrong PIV PIN shows in FIDO's retries.
    assert_eq!(
        &ctap(&mut c, &GET_PIN_RETRIES).data[..4],
        &[0x00, 0xA2, 0x03, 0x02]
    );
}

// ---------------------------------------------------------------- state

#[test]
fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.json");
    let mut c = yk("5.7.1");
    auth(&mut c);
    let public = generate(&mut c, alg::ECC_P256, 0x9A);
    let change = piv::change_reference_data(key_ref::PIN, b"123456", b"24682468").unwrap();
    assert_eq!(sw_of(&mut c, &change), sw::SUCCESS);
    assert!(c.take_dirty());
    c.save(&path).unwrap();
    let config = VcardConfig::new(ProfileKind::C4000).with_ca_dir(ca().0.path().join("ca"));
    let mut back = VirtualCard::load_or_new(config, &path).unwrap();
    assert_eq!(
        back.config().profile,
        ProfileKind::Yubikey5,
        "identity comes from the state"
    );
    assert_eq!(back.config().serial, 12_345_678);
    assert_eq!(verify_pin(&mut back, b"123456"), 0x63C2);
    assert_eq!(verify_pin(&mut back, b"24682468"), sw::SUCCESS);
    let r = sign(&mut back, alg::ECC_P256, 0x9A, &[4u8; 32]);
    p256_verify(&public, &[4u8; 32], &sig_of(&r));
    // Absent file: factory new; corrupt file: an error.
    let fresh = VirtualCard::load_or_new(
        VcardConfig::new(ProfileKind::C4000).with_ca_dir(ca().0.path().join("ca")),
        &dir.path().join("none.json"),
    )
    .unwrap();
    assert_eq!(fresh.config().profile, ProfileKind::C4000);
    std::fs::write(dir.path().join("bad.json"), b"{").unwrap();
    assert!(VirtualCard::load_or_new(
        VcardConfig::new(ProfileKind::C4000),
        &dir.path().join("bad.json")
    )
    .is_err());
}

#[test]
fn atrs_have_valid_check_bytes() {
    for c in [yk("5.7.1"), c4000()] {
        let atr = c.atr();
        assert_eq!(atr[0], 0x3B);
        assert_eq!(atr[1..].iter().fold(0u8, |a, b| a ^ b), 0, "TCK");
    }
    // The YubiKey 5 NFC ATR as OpenSC knows it.
    assert_eq!(yk("5.7.1").atr().last(), Some(&0x40));
}

// ---------------------------------------------------------------- robustness

/// Random and mutated command APDUs in every applet and security state:
/// always a status word, never a panic.
#[test]
fn random_apdus_get_status_words_not_panics() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5EED);
    let seeds: Vec<Vec<u8>> = vec![
        piv::select_piv().to_bytes(),
        piv::select_aid(&piv::FIDO_AID).to_bytes(),
        piv::get_data(object::CHUID).to_bytes(),
        piv::put_data(object::CHUID, &[1, 2, 3]).to_bytes(),
        piv::verify(key_ref::PIN, Some(b"123456"))
            .unwrap()
            .to_bytes(),
        piv::generate(alg::ECC_P256, 0x9A, 0, 0).to_bytes(),
        piv::sign(alg::ECC_P256, 0x9A, &[1; 32]).to_bytes(),
        piv::general_authenticate(alg::TDES, 0x9B, &[(dyn_auth::WITNESS, &[])]).to_bytes(),
        piv::yk_import_ec_key(alg::ECC_P256, 0x9A, &[3; 32]).to_bytes(),
        vec![0x80, 0x10, 0x80, 0x00, 0x01, 0x04, 0x00],
        vec![0x80, 0xCA, 0x9F, 0x7F, 0x00],
    ];
    for mut c in [
        yk("5.7.1"),
        c4000(),
        card_with(ProfileKind::Yubikey5, Some("5.2.7"), Transport::Nfc),
    ] {
        auth(&mut c);
        verify_pin(&mut c, b"123456");
        for i in 0..4000 {
            let apdu: Vec<u8> = if i % 2 == 0 {
                let len = rng.gen_range(0..300);
                (0..len).map(|_| rng.gen()).collect()
            } else {
                let mut a = seeds[rng.gen_range(0..seeds.len())].clone();
                for _ in 0..rng.gen_range(1..4) {
                    if a.is_empty() {
                        break;
                    }
                    let at = rng.gen_range(0..a.len());
                    match rng.gen_range(0..3) {
                        0 => a[at] = rng.gen(),
                        1 => {
                            a.truncate(at);
                        }
                        _ => a.insert(at, rng.gen()),
                    }
                }
                // Keep the class sane half the time so the applets are reached.
                if !a.is_empty() && rng.gen_bool(0.5) {
                    a[0] &= 0x90;
                }
                a
            };
            let r = c.transmit(&apdu);
            assert!(r.len() >= 2, "no status word for {apdu:02X?}");
        }
    }
}
