//! `keyward issue` with prompts and `keyward recycle`, end to end over
//! pcscd and vpcd with `keyward vcard` devices: Not Displayed with "Change
//! PIN during issuance" = Yes (the person's PIN from `--answers`, a PIN
//! breaking the rules refused rule by rule), and Recycle of a failed
//! YubiKey and of a cancelled C4000, checked by third-party tools
//! (pkcs11-tool, yubico-piv-tool) to be back in factory state.
//! Needs pcscd, vsmartcard-vpcd, opensc, yubico-piv-tool, iproute2.

use crate::common::pcsc;
use crate::support;

use pcsc::{relay_pcsc, run_ok, Vcard};
use serde_json::{json, Value};
use support::TestServer;

use support::cli as keyward;

fn text(o: &std::process::Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn put_setting(server: &TestServer, key: &str, value: &str) {
    let (s, v) = server.call(
        "PUT",
        &format!("/settings/{key}"),
        Some(json!({ "value": value })),
    );
    assert_eq!(s, 200, "{v}");
}

#[test]
fn keyward_issue_sets_the_persons_pin_at_the_end_from_answers() {
    let _lock = pcsc::lock();
    let card = Vcard::spawn(&[
        "--profile",
        "yubikey5",
        "--firmware",
        "5.7.1",
        "--serial",
        "31000111",
    ]);
    let server = TestServer::start();
    support::seed_piv_standard(&server, "31000111");
    put_setting(&server, "initial_pin_display_mode", "not_displayed");
    put_setting(&server, "change_pin_during_issuance", "yes");
    let base = [
        "--user",
        "alice",
        "--policy",
        "PIV Standard",
        "--serial",
        "31000111",
    ];

    // No new_pin in the answers and no terminal: the missing key is named.
    let none = card.path("none.toml");
    std::fs::write(&none, "touch = true\n").unwrap();
    let out = keyward(
        &server,
        "issue",
        &[&base[..], &["--answers", none.to_str().unwrap()]].concat(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("`new_pin`"), "{}", text(&out));
    let session = text(&out)
        .split("session ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .map(str::to_string)
        .expect("the waiting session is named");
    let (_, st) = server.call("GET", &format!("/issuance/{session}"), None);
    assert_eq!(st["prompts"][0]["kind"], "set_new_pin", "{st}");
    let (s, v) = server.call("POST", &format!("/issuance/{session}/cancel"), None);
    assert_eq!(s, 409, "a waiting session is not failed: {v}");

    // A new PIN breaking the rules: refused rule by rule, the prompt stays out.
    let (s, v) = server.call(
        "POST",
        &format!("/issuance/{session}/relay"),
        Some(json!({ "protocol": 1, "session_id": session, "seq": st["seq"], "responses": [], "answers": { "set_new_pin": "111" } })),
    );
    assert_eq!(s, 400, "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    for rule in [
        "at least 6 characters",
        "no character repeated more than 2 times",
    ] {
        assert!(message.contains(rule), "{message}");
    }
    // Answered correctly (as a portal would); the last batch goes over a new
    // connection, which may have lost the management-key authentication of
    // the first: then Retry finishes with the answer kept (no new prompt).
    let (s, batch) = server.call(
        "POST",
        &format!("/issuance/{session}/relay"),
        Some(json!({ "protocol": 1, "session_id": session, "seq": st["seq"], "responses": [], "answers": { "set_new_pin": "735194" } })),
    );
    assert_eq!(s, 200, "{batch}");
    let end = relay_pcsc(&server, &session, batch, &[], None);
    if end["state"] == "failed" {
        let out = keyward(&server, "issue", &["--retry", &session]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    let (_, st) = server.call("GET", &format!("/issuance/{session}"), None);
    assert_eq!(st["status"], "issued", "{st}");
    assert!(
        pcsc::pkcs11_login("735194").status.success(),
        "the person's PIN works"
    );
    assert!(
        !pcsc::pkcs11_login("123456").status.success(),
        "the factory PIN does not"
    );

    // The whole flow through `keyward issue --answers` on a second device.
    drop(card);
    let card = Vcard::spawn(&[
        "--profile",
        "yubikey5",
        "--firmware",
        "5.7.1",
        "--serial",
        "31000112",
    ]);
    let (s, v) = server.call(
        "POST",
        "/devices",
        Some(
            json!({ "device_type": "yubikey5", "serial": "31000112", "firmware_version": "5.7.1" }),
        ),
    );
    assert_eq!(s, 201, "{v}");
    let answers = card.path("answers.json");
    std::fs::write(&answers, r#"{ "new_pin": "582039" }"#).unwrap();
    let out = keyward(
        &server,
        "issue",
        &[
            "--user",
            "alice",
            "--policy",
            "PIV Standard",
            "--serial",
            "31000112",
            "--answers",
            answers.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["state"], "issued", "{report}");
    assert_eq!(
        report["counters"]["round_trips"], 3,
        "prompt batches are not round trips: {report}"
    );
    for k in ["session_id", "serial", "credentials", "error", "counters"] {
        assert!(report.get(k).is_some(), "{k} in {report}");
    }
    assert!(!text(&out).contains("582039"));
    assert!(
        pcsc::pkcs11_login("582039").status.success(),
        "the person's PIN works"
    );
    assert!(
        !pcsc::pkcs11_login("123456").status.success(),
        "the factory PIN does not"
    );
    drop(card);
}

#[test]
fn keyward_recycle_wipes_a_failed_yubikey_which_is_then_issued_to_another_user() {
    let _lock = pcsc::lock();
    // 5.4.3: a 3DES factory management key, which yubico-piv-tool 2.2 needs.
    let card = Vcard::spawn(&[
        "--profile",
        "yubikey5",
        "--firmware",
        "5.4.3",
        "--serial",
        "31000113",
    ]);
    let server = TestServer::start();
    support::seed_piv_standard(&server, "31000100");
    let (s, v) = server.call(
        "POST",
        "/devices",
        Some(
            json!({ "device_type": "yubikey5", "serial": "31000113", "firmware_version": "5.4.3" }),
        ),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(server.call("POST", "/users", Some(json!({ "login": "bob", "display_name": "Bob Baker", "upn": "bob@example.com", "email": "bob@example.com" }))).0, 201);
    let (s, batch) = server.call("POST", "/issuance", Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000113", "pin": "735194" })));
    assert_eq!(s, 201, "{batch}");
    let id = batch["session_id"].as_str().unwrap().to_string();
    // Certificates written, then the device goes away before the management key.
    let end = relay_pcsc(&server, &id, batch, &[], Some((3, 3)));
    assert_eq!(end["state"], "failed", "{end}");
    let status = run_ok("yubico-piv-tool", &["-r", "Virtual", "-a", "status"]);
    assert!(
        status.contains("Slot 9a"),
        "a certificate before the recycle: {status}"
    );

    let out = keyward(&server, "recycle", &["--serial", "31000113", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (report["state"].as_str(), report["reason"].as_str()),
        (Some("available"), Some("recycled")),
        "{report}"
    );
    assert_eq!(report["counters"]["round_trips"], 1, "{report}");
    let status = run_ok("yubico-piv-tool", &["-r", "Virtual", "-a", "status"]);
    assert!(
        !status.contains("Slot 9a") && !status.contains("Slot 9c"),
        "no certificate: {status}"
    );
    assert!(status.contains("PIN tries left:\t3"), "{status}");
    // Factory PIN and factory management key (yubico-piv-tool's default).
    assert!(pcsc::pkcs11_login("123456").status.success());
    run_ok(
        "yubico-piv-tool",
        &[
            "-r", "Virtual", "-a", "generate", "-s", "9e", "-A", "ECCP256",
        ],
    );
    // Recycling again: the device is available and recycles again.
    let out = keyward(&server, "recycle", &["--serial", "31000113"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let answers = card.path("bob.toml");
    std::fs::write(&answers, "pin = \"582039\"\n").unwrap();
    let out = keyward(
        &server,
        "issue",
        &[
            "--user",
            "bob",
            "--policy",
            "PIV Standard",
            "--serial",
            "31000113",
            "--answers",
            answers.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(pcsc::pkcs11_login("582039").status.success());
    // Issued: recycle is refused before the device is touched (exit 3).
    let out = keyward(&server, "recycle", &["--serial", "31000113"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("device_not_recyclable") && text(&out).contains("terminate it first"),
        "{}",
        text(&out)
    );
    // Issue 14: terminated, and at hand: recycle takes it back to stock.
    let out = keyward(&server, "admin", &["device", "terminate", "31000113"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = keyward(&server, "recycle", &["--serial", "31000113"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (_, d) = server.call("GET", "/devices/31000113", None);
    assert_eq!(
        (d["state"].as_str(), d["reason"].as_str()),
        (Some("available"), Some("recycled")),
        "{d}"
    );
    drop(card);
}

#[test]
fn keyward_recycle_returns_a_cancelled_c4000_to_factory_state() {
    let _lock = pcsc::lock();
    let card = Vcard::spawn(&["--profile", "c4000", "--serial", "31000114"]);
    let server = TestServer::start();
    support::seed_piv_standard(&server, "31000101");
    let (s, v) = server.call(
        "POST",
        "/devices",
        Some(json!({ "device_type": "c4000", "serial": "31000114" })),
    );
    assert_eq!(s, 201, "{v}");
    let (s, batch) = server.call("POST", "/issuance", Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000114", "pin": "735194" })));
    assert_eq!(s, 201, "{batch}");
    let id = batch["session_id"].as_str().unwrap().to_string();
    // Certificates, CHUID, CCC and the derived management key written; gone at the read-back.
    let end = relay_pcsc(&server, &id, batch, &[], Some((3, 5)));
    assert_eq!(end["state"], "failed", "{end}");
    let out = keyward(&server, "issue", &["--cancel", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let objects = text(&pcsc::pkcs11_login("735194"));
    assert!(objects.contains("Certificate Object"), "{objects}");

    let out = keyward(&server, "recycle", &["--serial", "31000114", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["state"], "available", "{report}");
    let objects = text(&pcsc::pkcs11_login("123456"));
    assert!(
        pcsc::pkcs11_login("123456").status.success(),
        "factory PIN: {objects}"
    );
    assert!(
        !objects.contains("Certificate Object"),
        "no certificate: {objects}"
    );
    assert!(
        !pcsc::pkcs11_login("735194").status.success(),
        "the user's PIN is gone"
    );
    // Factory PUK: CHANGE REFERENCE DATA from 12345678 accepted (opensc-tool).
    let puk = run_ok(
        "opensc-tool",
        &[
            "-s",
            "00 A4 04 00 09 A0 00 00 03 08 00 00 10 00",
            "-s",
            "00 24 00 81 10 31 32 33 34 35 36 37 38 31 32 33 34 35 36 37 38",
        ],
    );
    assert_eq!(
        puk.matches("SW1=0x90, SW2=0x00").count(),
        2,
        "factory PUK: {puk}"
    );
    drop(card);
}

/// A device whose policy used FIDO: `keyward recycle` is asked to reinsert
/// and touch it; `touch = false` in the answers declines, and the command
/// exits 5 (declined_by_person); a recycle left waiting is started over;
/// confirmed right after a (virtual) reinsertion, FIDO is reset over ISO
/// 7816 and the device is available.
#[test]
fn keyward_recycle_exits_5_when_the_touch_is_declined_and_resets_fido_when_confirmed() {
    let _lock = pcsc::lock();
    let card = Vcard::spawn(&["--profile", "c4000", "--serial", "31000115"]);
    let server = TestServer::start();
    support::seed_piv_standard(&server, "31000102");
    let (s, v) = server.call(
        "POST",
        "/devices",
        Some(json!({ "device_type": "c4000", "serial": "31000115" })),
    );
    assert_eq!(s, 201, "{v}");
    let (s, svc) = server.call(
        "POST",
        "/passkey-services",
        Some(json!({ "name": "Tenant", "tenant_id": "contoso.onmicrosoft.com", "client_id": "00000000-0000-0000-0000-00000000c0de", "client_secret": "not-used-here" })),
    );
    assert_eq!(s, 201, "{svc}");
    let (s, v) = server.call(
        "POST",
        "/policies",
        Some(json!({
            "name": "PIV + Passkey", "device_types": ["c4000"], "management_key": "random",
            "pin_application": { "min_length": 6, "max_length": 8, "character_set": "numeric", "max_repeated": 2, "max_sequential": 2, "pin_retry_count": 3, "puk_retry_count": 3 },
            "pki_applications": [
                { "name": "PIV Authentication", "slot": "9a", "algorithm": "eccp256", "certificate_authority": "Keyward Issuing CA",
                  "template": { "subject_dn": "CN={display_name}", "subject_alt_names": ["upn"], "validity_days": 365,
                                "key_usage": ["digital_signature"], "extended_key_usage": ["client_auth"] } }
            ],
            "fido_application": { "passkey_service_id": svc["id"], "share_device_pin": true, "cred_protect": 1 }
        })),
    );
    assert_eq!(s, 201, "{v}");
    let (s, batch) = server.call("POST", "/issuance", Some(json!({ "user": "alice", "policy": "PIV + Passkey", "serial": "31000115", "pin": "735194" })));
    assert_eq!(s, 201, "{batch}");
    let id = batch["session_id"].as_str().unwrap().to_string();
    let end = relay_pcsc(&server, &id, batch, &[], Some((2, 4)));
    assert_eq!(end["state"], "failed", "{end}");

    let answers = card.path("decline.toml");
    std::fs::write(&answers, "touch = false\n").unwrap();
    let out = keyward(
        &server,
        "recycle",
        &[
            "--serial",
            "31000115",
            "--answers",
            answers.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["error"]["code"], "declined_by_person", "{report}");
    assert_eq!(
        report["state"], "produced",
        "the device record is unchanged: {report}"
    );
    // No answer at all and no terminal: the missing key is named.
    let none = card.path("none.toml");
    std::fs::write(&none, "pin = \"735194\"\n").unwrap();
    let out = keyward(
        &server,
        "recycle",
        &["--serial", "31000115", "--answers", none.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("`touch`"), "{}", text(&out));
    // Confirmed, just after the device was (virtually) reinserted: the FIDO
    // reset comes within its seconds, and the device is available.
    let (_, st) = server.call("GET", "/devices/31000115", None);
    assert_eq!(st["state"], "produced", "{st}");
    assert_eq!(card.control("power-cycle"), "ok");
    let confirm = card.path("confirm.toml");
    std::fs::write(&confirm, "touch = true\n").unwrap();
    let out = keyward(
        &server,
        "recycle",
        &[
            "--serial",
            "31000115",
            "--answers",
            confirm.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "the waiting recycle was ended and started over: {}",
        text(&out)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (report["state"].as_str(), report["session_state"].as_str()),
        (Some("available"), Some("recycled")),
        "{report}"
    );
    drop(card);
}
