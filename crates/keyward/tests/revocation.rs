//! Revocation that relying parties see (issue 13): a device moved by a
//! person through the lifecycle service has its certificates revoked, held
//! or released in the same transaction, with the RFC 5280 reason, and the
//! issuing CA's CRL (read with `openssl crl`) shows it at once, on SQLite
//! and on PostgreSQL. The engine's own moves are refused on the state route.

mod support;

use std::process::Command;

use keyward_vcard::{Firmware, ProfileKind, VcardConfig, VirtualCard};
use serde_json::{json, Value};
use support::{ServerOptions, TestServer};

/// Issues a YubiKey to alice with the seeded PIV Standard policy (the
/// device is added to the inventory unless it is there); answers the
/// certificates' serials (hex, as the CRL lists them).
fn issue(server: &TestServer, serial: &str) -> Vec<String> {
    let (s, v) = server.call(
        "POST",
        "/devices",
        Some(json!({ "device_type": "yubikey5", "serial": serial, "firmware_version": "5.7.1" })),
    );
    assert!(s == 201 || s == 409, "{v}");
    let ca_dir = tempfile::tempdir().unwrap();
    let mut card = VirtualCard::new(
        VcardConfig::new(ProfileKind::Yubikey5)
            .with_firmware(Firmware(5, 7, 1))
            .with_serial(serial.parse().unwrap())
            .with_ca_dir(ca_dir.path()),
    )
    .unwrap();
    card.power_on();
    let (s, mut batch) = server.call(
        "POST",
        "/issuance",
        Some(
            json!({ "user": "alice", "policy": "PIV Standard", "serial": serial, "pin": "735194" }),
        ),
    );
    assert_eq!(s, 201, "{batch}");
    let id = batch["session_id"].as_str().unwrap().to_string();
    while batch["state"] == "running" {
        let responses = support::relay_in_process(&mut card, &batch);
        let result =
            json!({ "protocol": 1, "session_id": id, "seq": batch["seq"], "responses": responses });
        let (s, next) = server.call("POST", &format!("/issuance/{id}/relay"), Some(result));
        assert_eq!(s, 200, "{next}");
        batch = next;
    }
    assert_eq!(batch["state"], "issued", "{batch}");
    let (_, st) = server.call("GET", &format!("/issuance/{id}"), None);
    st["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "certificate")
        .map(|c| c["serial"].as_str().unwrap().to_uppercase())
        .collect()
}

fn version(server: &TestServer, serial: &str) -> i64 {
    let (_, d) = server.call("GET", &format!("/devices/{serial}"), None);
    d["version"].as_i64().unwrap()
}

fn move_device(server: &TestServer, serial: &str, to: &str, reason: Option<&str>) -> (u16, Value) {
    let mut body = json!({ "to": to, "expected_version": version(server, serial) });
    if let Some(r) = reason {
        body["reason"] = json!(r);
    }
    server.call("POST", &format!("/devices/{serial}/state"), Some(body))
}

/// The issuing CA's CRL as `openssl crl -text` prints it.
fn crl_text(server: &TestServer) -> String {
    let der = server
        .client()
        .get(format!("{}/pki/crl/issuing.crl", server.url))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("issuing.crl");
    std::fs::write(&path, &der).unwrap();
    let out = Command::new("openssl")
        .args(["crl", "-inform", "DER", "-noout", "-text", "-in"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The reason the CRL gives for `serial` (None: not listed).
fn listed_reason(crl: &str, serial: &str) -> Option<String> {
    let at = crl.find(&format!("Serial Number: {serial}"))?;
    let rest = &crl[at..];
    let end = rest[1..]
        .find("Serial Number:")
        .map(|i| i + 1)
        .unwrap_or(rest.len());
    let entry = &rest[..end];
    Some(
        entry
            .lines()
            .skip_while(|l| !l.contains("CRL Reason Code"))
            .nth(1)
            .map(|l| l.trim().to_string())
            .unwrap_or_default(),
    )
}

fn crl_number(crl: &str) -> u64 {
    let at = crl.find("X509v3 CRL Number:").expect("a CRL number");
    crl[at..].lines().nth(1).unwrap().trim().parse().unwrap()
}

fn lifecycle(server: &TestServer) {
    support::seed_piv_standard(server, "31000101");
    // Stolen: key compromise, in the CRL at once.
    let stolen = issue(server, "31000101");
    assert_eq!(stolen.len(), 2);
    let before = crl_text(server);
    assert!(listed_reason(&before, &stolen[0]).is_none(), "{before}");
    let (s, d) = move_device(server, "31000101", "invalid", Some("stolen"));
    assert_eq!(s, 200, "{d}");
    assert_eq!(
        (d["state"].as_str(), d["reason"].as_str()),
        (Some("invalid"), Some("stolen"))
    );
    let crl = crl_text(server);
    for c in &stolen {
        assert_eq!(
            listed_reason(&crl, c).as_deref(),
            Some("Key Compromise"),
            "{crl}"
        );
    }
    assert!(crl_number(&crl) > crl_number(&before), "CRL numbers grow");

    // Forgotten: on hold; found again: released (absent from the next CRL).
    let forgotten = issue(server, "31000102");
    let (s, d) = move_device(server, "31000102", "invalid", Some("forgotten"));
    assert_eq!(s, 200, "{d}");
    let crl = crl_text(server);
    assert_eq!(
        listed_reason(&crl, &forgotten[0]).as_deref(),
        Some("Certificate Hold"),
        "{crl}"
    );
    let (s, d) = move_device(server, "31000102", "issued", None);
    assert_eq!(s, 200, "{d}");
    let crl = crl_text(server);
    assert!(
        listed_reason(&crl, &forgotten[0]).is_none(),
        "released: {crl}"
    );
    assert!(
        !crl.contains("Remove From CRL"),
        "removeFromCRL is never in a full CRL"
    );

    // Held, then terminated: the final reason replaces the hold.
    let (s, _) = move_device(server, "31000102", "invalid", Some("forgotten"));
    assert_eq!(s, 200);
    let (s, d) = move_device(server, "31000102", "terminated", None);
    assert_eq!(s, 200, "{d}");
    let crl = crl_text(server);
    for c in &forgotten {
        assert_eq!(
            listed_reason(&crl, c).as_deref(),
            Some("Cessation Of Operation"),
            "{crl}"
        );
    }
    // The stolen device's entries stay as they were.
    assert_eq!(
        listed_reason(&crl, &stolen[0]).as_deref(),
        Some("Key Compromise")
    );

    // Damaged: cessation of operation.
    let damaged = issue(server, "31000103");
    let (s, _) = move_device(server, "31000103", "invalid", Some("damaged"));
    assert_eq!(s, 200);
    assert_eq!(
        listed_reason(&crl_text(server), &damaged[0]).as_deref(),
        Some("Cessation Of Operation")
    );

    // The audit record says what the move did.
    let (_, audit) = server.call("GET", "/audit?limit=1000", None);
    let moved = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["action"] == "device.state" && e["target"] == "device:31000101")
        .cloned()
        .unwrap();
    assert_eq!(moved["details"]["certificates_revoked"], 2, "{moved}");
}

#[test]
fn a_person_s_move_revokes_holds_and_releases_with_the_rfc5280_reason_on_sqlite() {
    let server = TestServer::start();
    lifecycle(&server);
}

#[test]
fn a_person_s_move_revokes_holds_and_releases_with_the_rfc5280_reason_on_postgres() {
    let Some(db) = support::postgres_database("revocation") else {
        eprintln!("KEYWARD_TEST_POSTGRES_URL not set: skipped");
        return;
    };
    let server = TestServer::start_with(ServerOptions {
        database_url: Some(db),
        ..Default::default()
    });
    lifecycle(&server);
}

#[test]
fn the_state_route_takes_only_a_person_s_moves() {
    let server = TestServer::start();
    support::seed_piv_standard(&server, "31000104");
    // Issuing is a device session's move, not a person's.
    let (s, v) = move_device(&server, "31000104", "in_production", None);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("transition_not_by_hand")),
        "{v}"
    );
    // Under a running session, a person's move waits for the session.
    let (s, b) = server.call(
        "POST",
        "/issuance",
        Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000104", "pin": "735194" })),
    );
    assert_eq!(s, 201, "{b}");
    let (s, v) = move_device(&server, "31000104", "terminated", None);
    assert_eq!(s, 400, "in production: only the session moves it: {v}");
    let (_, d) = server.call("GET", "/devices/31000104", None);
    assert_eq!(d["state"], "in_production");
}
