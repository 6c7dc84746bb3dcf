//! The issue-5 end-to-end matrix: every combination of "Device initial PIN
//! display mode" (Displayed, Disguised, Not Displayed), "Change PIN during
//! issuance" and device profile (C4000, YubiKey 5) is issued by
//! `keyward issue` to a `keyward vcard` on pcscd's vpcd reader, through one
//! `keyward serve`. Then tools nobody here wrote check each device:
//!
//! - `pkcs11-tool` (OpenSC's PKCS#11 module) logs in with the final PIN and
//!   signs with the PIV Authentication key; `openssl dgst` verifies the
//!   signature with the certificate read from the card;
//! - `openssl verify` accepts each certificate against the root and issuing
//!   CA certificates the server serves at /pki/ca/…, and `openssl x509 -text`
//!   shows the UPN otherName;
//! - the policy's PIN retry count (5, not the factory 3) shows in
//!   `yubico-piv-tool -a status` (YubiKey) and in the status word of an
//!   empty VERIFY sent by `opensc-tool` (both profiles);
//! - the factory PIN (123456) and the factory management key no longer work
//!   (each checked to work before issuance, so the check can fail);
//! - for Not Displayed without a PIN change, the PIN the user reveals with
//!   Get Initial PIN is the one that works.
//!
//! Last, on the same server, a C4000 whose attempt failed is recycled at
//! once by `keyward recycle` and issued to another user, with the same checks.
//!
//! One server for the file, one virtual card per case; the cases run in
//! turn (they share the one vpcd slot) and every case runs even when an
//! earlier one failed, so a failure report names all broken combinations.

use crate::common::pcsc;
use crate::support;

use keyward_transport::apdu::transmit_one;
use keyward_transport::pcsc::Pcsc;
use keyward_vcard::keys::ManagementKey;
use pcsc::{run, run_ok, Vcard, OPENSC_PKCS11};
use serde_json::{json, Value};
use std::time::Instant;
use support::TestServer;

/// Retry counts of the matrix policy: not the factory 3, so that seeing them
/// proves the policy was applied.
const PIN_RETRIES: u8 = 5;
const PUK_RETRIES: u8 = 4;
const FACTORY_PIN: &str = "123456";
const FACTORY_MANAGEMENT_KEY: [u8; 24] = [
    1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8,
];
const SELECT_PIV: &str = "00A4040009A0000003080000100000";
const POLICY: &str = "PIV Matrix";

/// Whether the "Change PIN during issuance" = Yes combinations run. With
/// Not Displayed the server asks for the person's own PIN at the end (the
/// `set_new_pin` prompt, answered from `new_pin`); with Displayed and
/// Disguised the PIN entered at the start already is the person's and no
/// prompt comes (docs/protocol.md): no `new_pin` is given, so a prompt
/// there would fail the case.
const CHANGE_PIN_PROMPTS: bool = true;

#[derive(Debug, Clone, Copy)]
struct Case {
    profile: &'static str,
    mode: &'static str,
    change_pin: bool,
}

impl std::fmt::Display for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} / {} / change PIN {}",
            self.profile,
            self.mode,
            if self.change_pin { "yes" } else { "no" }
        )
    }
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for profile in ["c4000", "yubikey5"] {
        for mode in ["displayed", "disguised", "not_displayed"] {
            for change_pin in [false, true] {
                if change_pin && !CHANGE_PIN_PROMPTS {
                    continue;
                }
                out.push(Case {
                    profile,
                    mode,
                    change_pin,
                });
            }
        }
    }
    out
}

#[test]
fn every_display_mode_and_profile_ends_issued_and_third_party_tools_accept_the_device() {
    let _lock = pcsc::lock();
    for tool in ["pkcs11-tool", "openssl", "yubico-piv-tool", "opensc-tool"] {
        pcsc::require_tool(tool);
    }
    let started = Instant::now();
    let server = TestServer::start();
    seed_policy(&server);
    let ca = CaFiles::fetch(&server);
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for (i, case) in cases().into_iter().enumerate() {
        let serial = 32_000_100 + i as u32;
        let t = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_case(&server, &ca, case, serial)
        }));
        let secs = t.elapsed().as_secs_f64();
        match outcome {
            Ok(counters) => report.push(format!("  {case}: issued in {secs:.1}s; {counters}")),
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                report.push(format!("  {case}: FAILED after {secs:.1}s"));
                failures.push(format!("{case}: {msg}"));
            }
        }
    }
    // Then, on the same server: a failed device recycled at once and
    // issued to another user.
    let t = Instant::now();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        failed_recycled_then_issued_to_another_user(&server, &ca, 32_000_200)
    }));
    let secs = t.elapsed().as_secs_f64();
    let name = "c4000 failed, recycled at once, issued to another user";
    match outcome {
        Ok(counters) => report.push(format!("  {name}: in {secs:.1}s; {counters}")),
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            report.push(format!("  {name}: FAILED after {secs:.1}s"));
            failures.push(format!("{name}: {msg}"));
        }
    }
    eprintln!(
        "issuance matrix ({:.1}s in all):\n{}",
        started.elapsed().as_secs_f64(),
        report.join("\n")
    );
    assert!(
        failures.is_empty(),
        "{} of {} scenarios failed:\n{}",
        failures.len(),
        cases().len() + 1,
        failures.join("\n\n")
    );
}

/// The root and issuing CA certificates the server serves.
struct CaFiles {
    _dir: tempfile::TempDir,
    root: String,
    issuing: String,
}

impl CaFiles {
    fn fetch(server: &TestServer) -> CaFiles {
        let dir = tempfile::tempdir().unwrap();
        let get = |name: &str| {
            let r = server
                .client()
                .get(format!("{}/pki/ca/{name}", server.url))
                .send()
                .unwrap();
            assert_eq!(r.status().as_u16(), 200, "/pki/ca/{name}");
            let path = dir.path().join(name);
            std::fs::write(&path, r.bytes().unwrap()).unwrap();
            path.to_str().unwrap().to_string()
        };
        let (root, issuing) = (get("root.pem"), get("issuing.pem"));
        CaFiles {
            _dir: dir,
            root,
            issuing,
        }
    }
}

fn seed_policy(server: &TestServer) {
    let (s, v) = server.call(
        "POST",
        "/policies",
        Some(json!({
            "name": POLICY, "device_types": ["yubikey5", "c4000"], "management_key": "random", "require_device_attestation": false,
            "pin_application": { "min_length": 6, "max_length": 8, "character_set": "numeric", "max_repeated": 2, "max_sequential": 2,
                                 "pin_retry_count": PIN_RETRIES, "puk_retry_count": PUK_RETRIES },
            "pki_applications": [
                { "name": "PIV Authentication", "slot": "9a", "algorithm": "eccp256", "certificate_authority": "Keyward Issuing CA",
                  "template": { "subject_dn": "CN={display_name},UID={login}", "subject_alt_names": ["upn", "mail"], "validity_days": 365,
                                "key_usage": ["digital_signature"], "extended_key_usage": ["client_auth", "smartcard_logon"] } },
                { "name": "Digital Signature", "slot": "9c", "algorithm": "eccp256", "certificate_authority": "Keyward Issuing CA",
                  "template": { "subject_dn": "CN={display_name}", "subject_alt_names": ["mail"], "validity_days": 365,
                                "key_usage": ["digital_signature", "non_repudiation"], "extended_key_usage": ["email_protection"] } }
            ]
        })),
    );
    assert_eq!(s, 201, "{v}");
}

fn put_setting(server: &TestServer, name: &str, value: &str) {
    let (s, v) = server.call(
        "PUT",
        &format!("/settings/{name}"),
        Some(json!({ "value": value })),
    );
    assert_eq!(s, 200, "setting {name} = {value}: {v}");
}

/// A PIN under the policy (6 digits, no runs of equal or consecutive
/// digits), different per case and per use.
fn pin_for(serial: u32, salt: u32) -> String {
    const PINS: [&str; 12] = [
        "735194", "829361", "946271", "613958", "381746", "250837", "472915", "596038", "147362",
        "915720", "360492", "824613",
    ];
    PINS[((serial as usize) * 2 + salt as usize) % PINS.len()].to_string()
}

/// Issues one case; returns the relay counters of `keyward issue`.
fn run_case(server: &TestServer, ca: &CaFiles, case: Case, serial: u32) -> String {
    let login = add_user(server, &format!("m{serial}"));
    let (card, factory_alg) = add_device_and_card(server, case, serial);
    // Controls: the factory secrets work before issuance.
    assert_eq!(
        verify_pin(FACTORY_PIN),
        0x9000,
        "factory PIN before issuance"
    );
    assert_eq!(
        management_key_status(factory_alg),
        0x9000,
        "factory management key before issuance"
    );
    issue_and_check(server, ca, case, serial, &login, &card, factory_alg)
}

fn add_user(server: &TestServer, login: &str) -> String {
    let upn = format!("{login}@example.com");
    let (s, v) = server.call(
        "POST",
        "/users",
        Some(json!({ "login": login, "display_name": format!("Matrix {login}"), "upn": upn, "email": upn })),
    );
    assert_eq!(s, 201, "{v}");
    login.to_string()
}

fn firmware_of(profile: &str) -> &'static str {
    if profile == "yubikey5" {
        "5.7.1"
    } else {
        "1.0.0"
    }
}

/// The device in the inventory, the case's settings, and its virtual card
/// on the vpcd reader; returns the card and its factory management key
/// algorithm.
fn add_device_and_card(server: &TestServer, case: Case, serial: u32) -> (Vcard, u8) {
    let firmware = firmware_of(case.profile);
    let (s, v) = server.call(
        "POST",
        "/devices",
        Some(json!({ "device_type": case.profile, "serial": serial.to_string(), "firmware_version": firmware })),
    );
    assert_eq!(s, 201, "{v}");
    put_setting(server, "initial_pin_display_mode", case.mode);
    put_setting(
        server,
        "change_pin_during_issuance",
        if case.change_pin { "yes" } else { "no" },
    );

    let serial_s = serial.to_string();
    let card = Vcard::spawn(&[
        "--profile",
        case.profile,
        "--firmware",
        firmware,
        "--serial",
        &serial_s,
    ]);
    let factory_alg = if case.profile == "yubikey5" {
        0x0A
    } else {
        0x03
    };
    (card, factory_alg)
}

/// `keyward issue` for `login`, then the third-party checks; returns the
/// relay counters.
fn issue_and_check(
    server: &TestServer,
    ca: &CaFiles,
    case: Case,
    serial: u32,
    login: &str,
    card: &Vcard,
    factory_alg: u8,
) -> String {
    let upn = format!("{login}@example.com");
    let serial_s = serial.to_string();
    // The answers the person gives.
    let pin = pin_for(serial, 0);
    let new_pin = pin_for(serial, 1);
    let mut answers = String::new();
    if case.mode != "not_displayed" {
        answers.push_str(&format!("pin = \"{pin}\"\n"));
    }
    if case.mode == "disguised" {
        answers.push_str(&format!("confirm_pin = \"{pin}\"\n"));
    }
    let sets_own_pin = case.change_pin && case.mode == "not_displayed";
    if sets_own_pin {
        answers.push_str(&format!("new_pin = \"{new_pin}\"\n"));
    }
    if case.mode == "disguised" {
        // The PIN entered twice must match: a mismatch is refused before the
        // device is touched (exit 3) and leaves it free for the real attempt.
        let mismatch = card.path("mismatch.toml");
        std::fs::write(
            &mismatch,
            format!("pin = \"{pin}\"\nconfirm_pin = \"{new_pin}\"\n"),
        )
        .unwrap();
        let out = std::process::Command::new(support::BIN)
            .arg("issue")
            .args(["--server", &server.url, "--token", &server.token])
            .args(["--user", login, "--policy", POLICY, "--serial", &serial_s])
            .args(["--answers", mismatch.to_str().unwrap(), "--json"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(3), "a PIN mismatch: {text}");
        assert!(text.contains("mismatch"), "{text}");
        let (_, device) = server.call("GET", &format!("/devices/{serial}"), None);
        assert_ne!(device["state"], "in_production", "{device}");
    }
    let answers_file = card.path("answers.toml");
    std::fs::write(&answers_file, answers).unwrap();
    let out = std::process::Command::new(support::BIN)
        .arg("issue")
        .args(["--server", &server.url, "--token", &server.token])
        .args(["--user", login, "--policy", POLICY, "--serial", &serial_s])
        .args(["--answers", answers_file.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let issued: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(issued["state"], "issued", "{issued}");
    assert_eq!(issued["credentials"].as_array().unwrap().len(), 2);
    // Prompt batches are not round trips with the device.
    let rt = issued["counters"]["round_trips"].as_u64().unwrap();
    assert!(rt <= 3, "{rt} round trips for a PIV-only issuance");
    for secret in [&pin, &new_pin] {
        assert!(!stdout.contains(secret.as_str()) && !stderr.contains(secret.as_str()));
    }
    let (_, device) = server.call("GET", &format!("/devices/{serial}"), None);
    assert_eq!(device["state"], "issued", "{device}");

    let final_pin = match (case.mode, sets_own_pin) {
        (_, true) => {
            // The person chose the PIN: nothing is kept for Get Initial PIN.
            let (status, _) = reveal_initial_pin(server, login, serial);
            assert!(
                matches!(status, 404 | 410),
                "Get Initial PIN after the person set their PIN: {status}"
            );
            new_pin.clone()
        }
        ("not_displayed", false) => {
            let (status, revealed) = reveal_initial_pin(server, login, serial);
            assert_eq!(status, 200, "Get Initial PIN");
            revealed.unwrap()
        }
        _ => pin.clone(),
    };

    // The policy's retry counts, before any wrong PIN is tried.
    let verify_status = run_ok(
        "opensc-tool",
        &["-c", "default", "-s", SELECT_PIV, "-s", "00200080"],
    );
    assert!(
        verify_status.contains(&format!("SW1=0x63, SW2=0xC{PIN_RETRIES:X}")),
        "an empty VERIFY must report {PIN_RETRIES} tries left:\n{verify_status}"
    );
    if case.profile == "yubikey5" {
        let status = run_ok("yubico-piv-tool", &["-r", "Virtual", "-a", "status"]);
        assert!(
            status.contains(&format!("Serial Number:\t{serial}")),
            "{status}"
        );
        assert!(
            status.contains(&format!("PIN tries left:\t{PIN_RETRIES}")),
            "{status}"
        );
    }

    // The factory secrets no longer work.
    let wrong = run(
        "pkcs11-tool",
        &[
            "--module",
            OPENSC_PKCS11,
            "--login",
            "--pin",
            FACTORY_PIN,
            "--list-objects",
        ],
    );
    assert!(!wrong.status.success(), "the factory PIN must be refused");
    assert_eq!(verify_pin(FACTORY_PIN), 0x63C0 | u16::from(PIN_RETRIES - 2));
    let refused = management_key_status(factory_alg);
    assert!(
        matches!(refused, 0x6982 | 0x6A86),
        "the factory management key must be refused, got {refused:04X}"
    );

    // pkcs11-tool signs with the PIV Authentication key and the final PIN.
    let data = card.path("data.bin");
    std::fs::write(&data, format!("signed by device {serial}")).unwrap();
    let sig = card.path("data.sig");
    run_ok(
        "pkcs11-tool",
        &[
            "--module",
            OPENSC_PKCS11,
            "--login",
            "--pin",
            &final_pin,
            "--sign",
            "--id",
            "01",
            "--mechanism",
            "ECDSA-SHA256",
            "--signature-format",
            "openssl",
            "-i",
            data.to_str().unwrap(),
            "-o",
            sig.to_str().unwrap(),
        ],
    );
    // Each certificate on the card chains to the CA the server serves.
    for id in ["01", "02"] {
        let der = card.path(&format!("cert{id}.der"));
        let pem = card.path(&format!("cert{id}.pem"));
        run_ok(
            "pkcs11-tool",
            &[
                "--module",
                OPENSC_PKCS11,
                "--read-object",
                "--type",
                "cert",
                "--id",
                id,
                "-o",
                der.to_str().unwrap(),
            ],
        );
        run_ok(
            "openssl",
            &[
                "x509",
                "-inform",
                "DER",
                "-in",
                der.to_str().unwrap(),
                "-out",
                pem.to_str().unwrap(),
            ],
        );
        let ok = run_ok(
            "openssl",
            &[
                "verify",
                "-CAfile",
                &ca.root,
                "-untrusted",
                &ca.issuing,
                pem.to_str().unwrap(),
            ],
        );
        assert!(ok.contains(": OK"), "certificate {id}: {ok}");
    }
    let auth_cert = card.path("cert01.pem");
    let pubkey = card.path("pub.pem");
    run_ok(
        "openssl",
        &[
            "x509",
            "-in",
            auth_cert.to_str().unwrap(),
            "-noout",
            "-pubkey",
            "-out",
            pubkey.to_str().unwrap(),
        ],
    );
    let verified = run_ok(
        "openssl",
        &[
            "dgst",
            "-sha256",
            "-verify",
            pubkey.to_str().unwrap(),
            "-signature",
            sig.to_str().unwrap(),
            data.to_str().unwrap(),
        ],
    );
    assert!(verified.contains("Verified OK"), "{verified}");
    let text = run_ok(
        "openssl",
        &[
            "x509",
            "-in",
            auth_cert.to_str().unwrap(),
            "-noout",
            "-text",
        ],
    );
    assert!(
        text.lines()
            .any(|l| l.contains("UPN") && l.contains(upn.as_str())),
        "the PIV Authentication certificate must carry the UPN otherName {upn}:\n{text}"
    );
    format!(
        "{} round trips, {} APDUs, {} bytes out, {} bytes in",
        issued["counters"]["round_trips"],
        issued["counters"]["apdus"],
        issued["counters"]["bytes_out"],
        issued["counters"]["bytes_in"]
    )
}

/// A C4000 whose first attempt fails (the device goes away in the middle
/// of batch 2) is recycled at once with `keyward recycle`: Available,
/// reason recycled, factory PIN and management key work again. Then it is
/// issued to another user and passes every check of the matrix.
fn failed_recycled_then_issued_to_another_user(
    server: &TestServer,
    ca: &CaFiles,
    serial: u32,
) -> String {
    let case = Case {
        profile: "c4000",
        mode: "displayed",
        change_pin: false,
    };
    let first = add_user(server, &format!("r{serial}a"));
    let second = add_user(server, &format!("r{serial}b"));
    let (card, factory_alg) = add_device_and_card(server, case, serial);
    let (s, batch) = server.call(
        "POST",
        "/issuance",
        Some(json!({ "user": first, "policy": POLICY, "serial": serial.to_string(), "pin": pin_for(serial, 0) })),
    );
    assert_eq!(s, 201, "{batch}");
    let id = batch["session_id"].as_str().unwrap().to_string();
    let end = relay_then_remove(server, &id, batch, 2, 3);
    assert_eq!(end["state"], "failed", "{end}");
    let (_, device) = server.call("GET", &format!("/devices/{serial}"), None);
    assert_eq!(device["state"], "produced", "{device}");

    let out = std::process::Command::new(support::BIN)
        .arg("recycle")
        .args(["--server", &server.url, "--token", &server.token])
        .args(["--serial", &serial.to_string(), "--json"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "keyward recycle: {text}");
    let (_, device) = server.call("GET", &format!("/devices/{serial}"), None);
    assert_eq!(
        (device["state"].as_str(), device["reason"].as_str()),
        (Some("available"), Some("recycled")),
        "{device}"
    );
    assert_eq!(verify_pin(FACTORY_PIN), 0x9000, "factory PIN after recycle");
    assert_eq!(
        management_key_status(factory_alg),
        0x9000,
        "factory management key after recycle"
    );
    issue_and_check(server, ca, case, serial, &second, &card, factory_alg)
}

/// Relays session `id` over PC/SC; at device batch `at` (1-based) only the
/// first `cut` commands (fewer if the batch is shorter), then reports the
/// device removed. Returns the server's last answer.
fn relay_then_remove(
    server: &TestServer,
    id: &str,
    mut batch: Value,
    at: usize,
    cut: usize,
) -> Value {
    let mut t = connect();
    let mut n = 0;
    while batch["state"] == "running" {
        let commands = batch["commands"].as_array().unwrap().clone();
        assert!(!commands.is_empty(), "no prompts expected: {batch}");
        n += 1;
        let limit = if n == at {
            cut.min(commands.len() - 1)
        } else {
            commands.len()
        };
        let mut responses = vec![];
        for c in &commands[..limit] {
            let apdu = hex::decode(c["bytes"].as_str().unwrap()).unwrap();
            let r = transmit_one(&mut t, &apdu).unwrap();
            let sw = format!("{:04x}", r.sw);
            let stop = !c["expect"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e == &json!(sw));
            responses.push(json!({ "data": hex::encode(&r.data), "sw": sw }));
            if stop {
                break;
            }
        }
        let mut result =
            json!({ "protocol": 1, "session_id": id, "seq": batch["seq"], "responses": responses });
        if n == at {
            result["transport_error"] = json!("device_removed");
        }
        let (s, next) = server.call("POST", &format!("/issuance/{id}/relay"), Some(result));
        assert_eq!(s, 200, "{next}");
        batch = next;
    }
    batch
}

/// The card's reader (the one vpcd slot with a card).
fn connect() -> keyward_transport::pcsc::PcscTransport {
    let ctx = Pcsc::establish().unwrap();
    let reader = ctx
        .readers()
        .unwrap()
        .into_iter()
        .find(|r| r.card_present)
        .expect("a reader with the card")
        .name;
    let mut t = ctx.connect(&reader).unwrap();
    let r = transmit_one(&mut t, &hex::decode(SELECT_PIV).unwrap()).unwrap();
    assert_eq!(r.sw, 0x9000, "SELECT PIV");
    t
}

/// VERIFY of the PIV application PIN; returns the status word.
fn verify_pin(pin: &str) -> u16 {
    let mut t = connect();
    let mut data = pin.as_bytes().to_vec();
    data.resize(8, 0xFF);
    let mut apdu = vec![0x00, 0x20, 0x00, 0x80, 0x08];
    apdu.extend_from_slice(&data);
    transmit_one(&mut t, &apdu).unwrap().sw
}

/// Single authentication with the factory management key (GENERAL
/// AUTHENTICATE: the card's challenge, returned encrypted); the status word
/// (6A86 when the card's key is now of another algorithm).
fn management_key_status(algorithm: u8) -> u16 {
    let mut t = connect();
    let key = ManagementKey::new(algorithm, &FACTORY_MANAGEMENT_KEY).unwrap();
    let r = transmit_one(
        &mut t,
        &[0x00, 0x87, algorithm, 0x9B, 0x04, 0x7C, 0x02, 0x81, 0x00],
    )
    .unwrap();
    if r.sw != 0x9000 {
        // 6A86: the card's management key is of another algorithm now.
        return r.sw;
    }
    // 7C len 81 len challenge
    let challenge = &r.data[4..];
    assert_eq!(challenge.len(), key.block_size(), "{:02x?}", r.data);
    let response = key.encrypt_block(challenge);
    let mut inner = vec![0x82, response.len() as u8];
    inner.extend_from_slice(&response);
    let mut apdu = vec![0x00, 0x87, algorithm, 0x9B, (inner.len() + 2) as u8];
    apdu.extend_from_slice(&[0x7C, inner.len() as u8]);
    apdu.extend_from_slice(&inner);
    transmit_one(&mut t, &apdu).unwrap().sw
}

/// The user signs in to self-service and asks for the generated initial
/// PIN with Get Initial PIN: the status and, on 200, the PIN.
fn reveal_initial_pin(server: &TestServer, login: &str, serial: u32) -> (u16, Option<String>) {
    let (_, code) = server.call("POST", &format!("/users/{login}/enrollment-code"), None);
    let http = reqwest::blocking::Client::new();
    let password = format!("{login}-first-passphrase");
    let r = http
        .post(server.api("/auth/enroll"))
        .json(&json!({ "login": login, "code": code["code"], "password": password }))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let r = http
        .post(server.api("/auth/session"))
        .json(&json!({ "login": login, "password": password }))
        .send()
        .unwrap();
    let cookie = r
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let csrf = r.json::<Value>().unwrap()["csrf_token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = http
        .post(server.api(&format!("/me/devices/{serial}/initial-pin")))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let pin = r
        .json::<Value>()
        .ok()
        .and_then(|v| v["pin"].as_str().map(str::to_string));
    (status, pin)
}
