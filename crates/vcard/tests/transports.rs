//! The transports at the edge of the card: vpcd client, control socket,
//! in-process handle and state file.

use keyward_card::apdu::{sw, ResponseApdu};
use keyward_card::piv::{self, key_ref};
use keyward_vcard::presence::Presence;
use keyward_vcard::{
    CardRemoved, ManufacturerCa, ProfileKind, VcardConfig, VcardHandle, VirtualCard,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::Duration;

fn card(dir: &std::path::Path) -> VirtualCard {
    let ca = ManufacturerCa::load_or_create(&dir.join("ca")).unwrap();
    VirtualCard::with_ca(
        VcardConfig::new(ProfileKind::Yubikey5).with_ca_dir(dir.join("ca")),
        &ca,
    )
    .unwrap()
}

fn sw_of(handle: &VcardHandle, apdu: &keyward_card::apdu::CommandApdu) -> u16 {
    ResponseApdu::parse(&handle.transmit(&apdu.to_bytes()).unwrap())
        .unwrap()
        .sw
}

fn write_frame(s: &mut std::net::TcpStream, payload: &[u8]) {
    let mut out = (payload.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    s.write_all(&out).unwrap();
}

fn read_frame(s: &mut std::net::TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).ok()?;
    let mut data = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut data).ok()?;
    Some(data)
}

#[test]
fn vpcd_client_frames_remove_and_insert() {
    let dir = tempfile::tempdir().unwrap();
    let handle = VcardHandle::new(card(dir.path()));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::channel();
    keyward_vcard::vpcd::run(handle.clone(), &addr, move || tx.send(()).unwrap()).unwrap();
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write_frame(&mut s, &[0x01]); // power on: no reply
    write_frame(&mut s, &[0x04]);
    assert_eq!(read_frame(&mut s).unwrap(), handle.atr());
    rx.recv_timeout(Duration::from_secs(5))
        .expect("ready after the ATR");
    write_frame(&mut s, &piv::select_piv().to_bytes());
    let r = ResponseApdu::parse(&read_frame(&mut s).unwrap()).unwrap();
    assert_eq!(r.sw, sw::SUCCESS);
    write_frame(
        &mut s,
        &piv::verify(key_ref::PIN, Some(b"123456"))
            .unwrap()
            .to_bytes(),
    );
    assert_eq!(read_frame(&mut s).unwrap(), vec![0x90, 0x00]);
    write_frame(&mut s, &[0x02]); // reset: the PIN is forgotten
    write_frame(&mut s, &piv::verify(key_ref::PIN, None).unwrap().to_bytes());
    assert_eq!(read_frame(&mut s).unwrap(), vec![0x63, 0xC3]);
    write_frame(&mut s, &[0x00]);
    write_frame(&mut s, &[0x04]);
    assert_eq!(read_frame(&mut s).unwrap(), handle.atr(), "ATR at any time");
    // remove: the card leaves the reader (the connection closes).
    handle.remove();
    assert!(read_frame(&mut s).is_none());
    // insert: it comes back.
    handle.insert();
    listener.set_nonblocking(false).unwrap();
    let (mut s2, _) = listener.accept().unwrap();
    s2.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write_frame(&mut s2, &[0x04]);
    assert_eq!(read_frame(&mut s2).unwrap(), handle.atr());
}

#[test]
fn control_socket_commands() {
    let dir = tempfile::tempdir().unwrap();
    let handle = VcardHandle::new(card(dir.path()));
    let path = dir.path().join("control");
    keyward_vcard::control::serve(handle.clone(), &path).unwrap();
    let s = UnixStream::connect(&path).unwrap();
    let mut writer = s.try_clone().unwrap();
    let mut reader = BufReader::new(s);
    let mut ask = |cmd: &str| {
        writeln!(writer, "{cmd}").unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        line.trim_end().to_string()
    };
    assert_eq!(ask("touch"), "ok");
    assert_eq!(ask("decline"), "ok");
    assert_eq!(ask("remove"), "ok");
    assert!(!handle.is_inserted());
    assert_eq!(ask("power-cycle"), "error card removed");
    assert_eq!(ask("insert"), "ok");
    assert!(handle.is_inserted());
    assert_eq!(ask("power-cycle"), "ok");
    assert!(ask("explode").starts_with("error unknown command"));
    assert_eq!(ask(""), "error empty command");
    // A mistyped FIDO PIN: none is set yet, then three in a row need a
    // power cycle, and eight block it.
    assert_eq!(ask("wrong-fido-pin"), "ok PIN_NOT_SET");
    set_fido_pin(&handle, "135792");
    assert_eq!(ask("wrong-fido-pin"), "ok PIN_INVALID");
    assert_eq!(ask("wrong-fido-pin"), "ok PIN_INVALID");
    assert_eq!(ask("wrong-fido-pin"), "ok PIN_AUTH_BLOCKED");
    assert_eq!(ask("wrong-fido-pin"), "ok PIN_AUTH_BLOCKED");
    for answers in [
        ["PIN_INVALID", "PIN_INVALID", "PIN_AUTH_BLOCKED"],
        ["PIN_INVALID", "PIN_BLOCKED", "PIN_BLOCKED"],
    ] {
        assert_eq!(ask("power-cycle"), "ok");
        for want in answers {
            assert_eq!(ask("wrong-fido-pin"), format!("ok {want}"));
        }
    }
}

/// setPIN through the handle, as a platform does.
fn set_fido_pin(handle: &VcardHandle, pin: &str) {
    use keyward_card::ctap::platform::{get_key_agreement_request, PinSession};
    use keyward_card::ctap::{self, command, ClientPinResponse, PinProtocol};
    let ask = |req: &ctap::ClientPinRequest| {
        let message = ctap::encode_request(command::CLIENT_PIN, Some(&req.to_value()));
        handle
            .fido_request(&message, &mut keyward_vcard::fido::AlwaysPresent)
            .unwrap()
    };
    let out = ask(&get_key_agreement_request(PinProtocol::V1));
    let v = ctap::split_response(&out).unwrap().unwrap();
    let key = ClientPinResponse::from_value(&v)
        .unwrap()
        .key_agreement
        .unwrap();
    let session = PinSession::new(PinProtocol::V1, &key, &mut rand::rngs::OsRng).unwrap();
    let req = session
        .set_pin_request(pin, &mut rand::rngs::OsRng)
        .unwrap();
    assert_eq!(ask(&req)[0], 0);
}

#[test]
fn handle_remove_insert_and_power_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let handle = VcardHandle::new(card(dir.path()));
    let status = piv::verify(key_ref::PIN, None).unwrap();
    assert_eq!(
        sw_of(
            &handle,
            &piv::verify(key_ref::PIN, Some(b"123456")).unwrap()
        ),
        sw::SUCCESS
    );
    assert_eq!(sw_of(&handle, &status), sw::SUCCESS);
    handle.power_cycle();
    assert_eq!(sw_of(&handle, &status), 0x63C3);
    let generation = handle.generation();
    handle.remove();
    assert_eq!(handle.transmit(&status.to_bytes()), Err(CardRemoved));
    assert_eq!(
        handle.fido_request(&[0x04], &mut keyward_vcard::fido::AlwaysPresent),
        Err(CardRemoved)
    );
    assert!(handle.generation() > generation);
    handle.insert();
    assert_eq!(sw_of(&handle, &status), 0x63C3);
    assert!(handle.wait_inserted(Duration::from_millis(10)));
    // FIDO through the handle: getInfo answers status 00.
    let info = handle
        .fido_request(&[0x04], &mut keyward_vcard::fido::AlwaysPresent)
        .unwrap();
    assert_eq!(info[0], 0x00);
    // Touch and decline are forwarded to the presence (nobody waits: false).
    assert!(!handle.touch());
    assert!(!handle.decline());
}

#[test]
fn handle_from_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = VcardConfig::new(ProfileKind::C4000)
        .with_serial(77)
        .with_ca_dir(dir.path().join("ca"));
    let handle = VcardHandle::from_config(config).unwrap();
    let r =
        ResponseApdu::parse(&handle.transmit(&[0x80, 0xCA, 0x9F, 0x7F, 0x00]).unwrap()).unwrap();
    assert_eq!(&r.data[3 + 12..3 + 16], &77u32.to_be_bytes());
    // The CA folder was created on first use.
    assert!(dir.path().join("ca/ca-cert.pem").exists());
}

#[test]
fn handle_persists_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let handle = VcardHandle::with_options(card(dir.path()), Some(path.clone()), Presence::auto());
    let change = piv::change_reference_data(key_ref::PIN, b"123456", b"13579135").unwrap();
    assert_eq!(sw_of(&handle, &change), sw::SUCCESS);
    assert!(path.exists());
    let back = VirtualCard::load_or_new(VcardConfig::new(ProfileKind::Yubikey5), &path).unwrap();
    let handle = VcardHandle::new(back);
    assert_eq!(
        sw_of(
            &handle,
            &piv::verify(key_ref::PIN, Some(b"13579135")).unwrap()
        ),
        sw::SUCCESS
    );
    // The state is the card's secrets (PINs, keys): owner-only.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
}
