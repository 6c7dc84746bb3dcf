//! The workstation agent on the real stack (issue 11): `keyward agent`
//! looking at pcscd's readers, a `keyward vcard` on vpcd as its device, and
//! `keyward issue` / `keyward recycle` on a client with no PC/SC of its own
//! (pcsc-lite pointed at a socket that does not exist), so every device
//! command goes through the agent over real PC/SC. For a C4000, a USB
//! YubiKey 5 (PIV on pcscd, FIDO on a HID socket) and a YubiKey 5 over NFC:
//!
//! 1. an issuance waiting for the person's new PIN (the agent holds the
//!    device across the pause) while the device is taken out and put back:
//!    the last batch fails typed, the agent lets the card go without a
//!    reset, pcscd sees the card again; cancelled, pkcs11-tool finds the
//!    factory PIN replaced;
//! 2. Recycle through the agent: pkcs11-tool logs in with the factory PIN
//!    and finds no certificate;
//! 3. a PIV issuance through the agent (three batches, the management key's
//!    witness in one and its answer in the next: fails if the card is reset
//!    between batches): pkcs11-tool logs in with the PIN and signs, openssl
//!    verifies the signature with the certificate on the card;
//! 4. the person's Change PIN through their agent: pkcs11-tool logs in with
//!    the new PIN, and not with the old one.

use crate::common::agent;
use crate::common::pcsc;
use crate::common::self_service;
use crate::support;

use std::process::Output;
use std::time::{Duration, Instant};

use agent::{paired_pcsc_agent, wait_session_end, Agent};
use pcsc::Vcard;
use self_service::{call_as_user, sign_in_user};
use serde_json::{json, Value};
use support::TestServer;

/// `keyward SUB … ARGS` on a client with no PC/SC: through the agent only.
fn keyward_remote(server: &TestServer, sub: &str, args: &[&str]) -> Output {
    agent::cli_without_pcsc(server, sub)
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!("{}\n{}", support::stdout(o), support::stderr(o))
}

fn put_setting(server: &TestServer, key: &str, value: &str) {
    let (s, v) = server.call(
        "PUT",
        &format!("/settings/{key}"),
        Some(json!({ "value": value })),
    );
    assert_eq!(s, 200, "{v}");
}

/// Waits until session `id` shows prompts; their kinds.
fn wait_prompts(server: &TestServer, id: &str) -> (Value, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (s, st) = server.call("GET", &format!("/issuance/{id}"), None);
        assert_eq!(s, 200, "{st}");
        let kinds: Vec<String> = st["prompts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["kind"].as_str().map(str::to_string))
            .collect();
        if !kinds.is_empty() {
            return (st, kinds);
        }
        assert_eq!(st["status"], "running", "{st}");
        assert!(Instant::now() < deadline, "no prompts: {st}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The person changes their PIN through their agent (User Portal's route).
fn change_pin(server: &TestServer, who: &(String, String), serial: &str, old: &str, new: &str) {
    let (s, first) = call_as_user(
        server,
        who,
        "POST",
        &format!("/me/devices/{serial}/change-pin"),
        None,
    );
    assert_eq!(s, 201, "{first}");
    let id = first["session_id"].as_str().unwrap().to_string();
    let (st, kinds) = wait_prompts(server, &id);
    assert_eq!(kinds, ["enter_pin", "set_new_pin"], "{st}");
    let (s, v) = call_as_user(
        server,
        who,
        "POST",
        &format!("/issuance/{id}/relay"),
        Some(
            json!({ "protocol": 1, "session_id": id, "seq": st["seq"], "responses": [],
                     "answers": { "enter_pin": old, "set_new_pin": new } }),
        ),
    );
    assert_eq!(s, 200, "{v}");
    let end = wait_session_end(&server.url, &server.token, &id);
    assert_eq!(end["status"], "pin_changed", "{end}");
}

/// The whole PIV life of one device through an agent over PC/SC (see the
/// module's comment). `vcard_args` start the card; `hid` is its HID
/// socket's name in the card's folder (a USB YubiKey).
fn piv_life_through_the_agent(device_type: &str, serial: &str, vcard_args: &[&str], hid: bool) {
    let _lock = pcsc::lock();
    let mut args = vec!["--serial", serial];
    args.extend_from_slice(vcard_args);
    if hid {
        args.extend_from_slice(&["--hid-socket", "{dir}/hid.sock"]);
    }
    let card = Vcard::spawn(&args);
    let server = TestServer::start();
    if device_type == "yubikey5" {
        support::seed_piv_standard(&server, serial);
    } else {
        support::seed_piv_standard(&server, "39999999");
        let (s, v) = server.call(
            "POST",
            "/devices",
            Some(json!({ "device_type": device_type, "serial": serial })),
        );
        assert_eq!(s, 201, "{v}");
    }
    let alice = sign_in_user(&server, "alice");
    let hid_socket = card.path("hid.sock");
    let mut agent_args = vec![];
    if hid {
        agent_args.extend_from_slice(&["--hid-socket", hid_socket.to_str().unwrap()]);
    }
    let agent: Agent = paired_pcsc_agent(&server, &agent_args, &["--account", "alice"], &[serial]);

    // 1. The person sets their PIN at the end: the session pauses there,
    //    the agent holding the device. The device leaves and comes back in
    //    the pause: the held connection is over, so the last batch fails
    //    typed (not with a status word from a card that forgot the session),
    //    the agent lets go without a reset, and pcscd sees the card again.
    put_setting(&server, "initial_pin_display_mode", "not_displayed");
    put_setting(&server, "change_pin_during_issuance", "yes");
    let (s, first) = server.call(
        "POST",
        "/issuance",
        Some(
            json!({ "user": "alice", "policy": "PIV Standard", "serial": serial, "via": "agent" }),
        ),
    );
    assert_eq!(s, 201, "{first}");
    let id = first["session_id"].as_str().unwrap().to_string();
    let (st, kinds) = wait_prompts(&server, &id);
    assert_eq!(kinds, ["set_new_pin"], "{st}");
    agent.wait_output(&format!("session {id}: running"), Duration::from_secs(10));
    assert_eq!(card.control("remove"), "ok");
    agent::wait_devices(&server.url, &server.token, &[serial], false);
    assert_eq!(card.control("insert"), "ok");
    agent::wait_devices(&server.url, &server.token, &[serial], true);
    assert!(
        !agent.output().contains(&format!("session {id}: device")),
        "the hold outlives a pause for the person:\n{}",
        agent.output()
    );
    let (s, v) = server.call(
        "POST",
        &format!("/issuance/{id}/relay"),
        Some(
            json!({ "protocol": 1, "session_id": id, "seq": st["seq"], "responses": [],
                     "answers": { "set_new_pin": "591736" } }),
        ),
    );
    assert_eq!(s, 200, "{v}");
    let failed = wait_session_end(&server.url, &server.token, &id);
    assert_eq!(failed["status"], "failed", "{failed}");
    let code = failed["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        code == "device_removed" || code == "card_reset",
        "{failed}\nagent:\n{}",
        agent.output()
    );
    agent.wait_output(
        &format!("session {id}: device {serial} released (left as it is)"),
        Duration::from_secs(10),
    );
    let out = keyward_remote(&server, "issue", &["--cancel", &id]);
    assert!(out.status.success(), "{}", text(&out));
    // The session's first batches replaced the factory PIN.
    assert!(
        !pcsc::pkcs11_login("123456").status.success(),
        "the factory PIN still works"
    );

    // 2. Recycle through the agent.
    let out = keyward_remote(&server, "recycle", &["--serial", serial, "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\nagent:\n{}",
        text(&out),
        agent.output()
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["state"], "available", "{report}");
    let factory = pcsc::pkcs11_login("123456");
    assert!(factory.status.success(), "factory PIN: {}", text(&factory));
    assert!(
        !text(&factory).contains("Certificate Object"),
        "no certificate left: {}",
        text(&factory)
    );

    // 3. A PIV issuance through the agent.
    put_setting(&server, "initial_pin_display_mode", "displayed");
    put_setting(&server, "change_pin_during_issuance", "no");
    let answers = card.path("answers.toml");
    std::fs::write(&answers, "pin = \"735194\"\n").unwrap();
    let out = keyward_remote(
        &server,
        "issue",
        &[
            "--user",
            "alice",
            "--policy",
            "PIV Standard",
            "--serial",
            serial,
            "--answers",
            answers.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\nagent:\n{}",
        text(&out),
        agent.output()
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["state"], "issued", "{report}");
    assert_eq!(
        report["credentials"].as_array().unwrap().len(),
        2,
        "{report}"
    );
    let issued_id = report["session_id"].as_str().unwrap();
    agent.wait_output(
        &format!("session {issued_id}: device {serial} released (reset)"),
        Duration::from_secs(10),
    );
    pcsc::pkcs11_signs_and_openssl_verifies(card.dir.path(), "735194");

    // 4. The person's Change PIN through their agent.
    change_pin(&server, &alice, serial, "735194", "24681357");
    assert!(pcsc::pkcs11_login("24681357").status.success());
    assert!(
        !pcsc::pkcs11_login("735194").status.success(),
        "the old PIN is refused"
    );
    pcsc::pkcs11_signs_and_openssl_verifies(card.dir.path(), "24681357");

    // Nothing secret in the agent's output, and no APDU.
    let log = agent.output();
    for secret in ["735194", "24681357"] {
        assert!(!log.contains(secret), "{secret} in the agent's output");
    }
    assert!(!log.to_lowercase().contains("00a40400"), "{log}");
    drop(agent);
    drop(card);
}

#[test]
fn c4000_through_an_agent_over_pcsc() {
    piv_life_through_the_agent("c4000", "41000501", &["--profile", "c4000"], false);
}

#[test]
fn usb_yubikey_through_an_agent_over_pcsc_and_its_hid_socket() {
    piv_life_through_the_agent(
        "yubikey5",
        "31000501",
        &["--profile", "yubikey5", "--firmware", "5.7.1"],
        true,
    );
}

#[test]
fn nfc_yubikey_through_an_agent_over_pcsc() {
    piv_life_through_the_agent(
        "yubikey5",
        "31000502",
        &[
            "--profile",
            "yubikey5",
            "--firmware",
            "5.7.1",
            "--transport",
            "nfc",
        ],
        false,
    );
}
