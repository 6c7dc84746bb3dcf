//! Upgrades (issue 19, part 2): a data folder written by the release of
//! 2026-12-06 (commit c2cb1fd, before migration 0013; made by
//! `examples/make_session_fixture.rs --issued`): users, two devices issued
//! (a C4000 to bob, a YubiKey to alice, their virtual cards' states kept) and
//! an issuance left in the middle (waiting for the person's new PIN). Today's
//! server opens it: its migrations run, the audit trail of both releases
//! verifies, the devices and credentials are all there and can be updated,
//! and the session left in the middle is finished, or cancelled.

use crate::support;

use std::path::Path;

use keyward_vcard::{ProfileKind, VcardConfig, VirtualCard};
use serde_json::{json, Value};
use support::{ServerOptions, TestServer};

const FIXTURE: &str = "tests/fixtures/release-2026-12-06";

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The fixture copied (the committed one stays as the release wrote it)
/// and today's server on it.
fn upgraded() -> (tempfile::TempDir, TestServer, Value) {
    let work = tempfile::tempdir().unwrap();
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE),
        work.path(),
    );
    let session: Value =
        serde_json::from_slice(&std::fs::read(work.path().join("session.json")).unwrap()).unwrap();
    // The session is old: the abandoned-session sweeper must not cancel it
    // before the test answers.
    let config = work.path().join("keyward.toml");
    std::fs::write(&config, "abandon_after_seconds = 315360000\n").unwrap();
    let data = tempfile::tempdir().unwrap();
    copy_dir(&work.path().join("data"), data.path());
    let server = TestServer::start_with(ServerOptions {
        data_dir: Some(data),
        args: vec!["--config".into(), config.to_str().unwrap().into()],
        ..Default::default()
    });
    (work, server, session)
}

fn card(work: &Path, profile: ProfileKind, serial: &str, file: &str) -> VirtualCard {
    let mut card = VirtualCard::load_or_new(
        VcardConfig::new(profile)
            .with_serial(serial.parse().unwrap())
            .with_ca_dir(work.join("vcard-ca")),
        &work.join(file),
    )
    .unwrap();
    card.power_on();
    card
}

/// Relays `batch` and its successors in process until the session ends
/// or waits for a person.
fn relay_to_end(server: &TestServer, card: &mut VirtualCard, mut batch: Value) -> Value {
    let id = batch["session_id"].as_str().unwrap().to_string();
    while batch["state"] == "running" && !batch["commands"].as_array().unwrap().is_empty() {
        let responses = support::relay_in_process(card, &batch);
        let (s, next) = server.call(
            "POST",
            &format!("/issuance/{id}/relay"),
            Some(json!({ "protocol": 1, "session_id": id, "seq": batch["seq"], "responses": responses })),
        );
        assert_eq!(s, 200, "{next}");
        batch = next;
    }
    batch
}

#[test]
fn a_data_folder_of_the_release_before_opens_verifies_and_its_devices_are_updated() {
    let (work, server, session) = upgraded();
    // Migrations ran: the data is all there, the new routes work on it.
    let (s, users) = server.call("GET", "/users", None);
    assert_eq!(s, 200, "{users}");
    let logins: Vec<&str> = users["items"]
        .as_array()
        .or(users.as_array())
        .unwrap()
        .iter()
        .filter_map(|u| u["login"].as_str())
        .collect();
    assert!(
        logins.contains(&"alice") && logins.contains(&"bob"),
        "{users}"
    );
    for serial in ["41000901", "31000902"] {
        let (_, d) = server.call("GET", &format!("/devices/{serial}"), None);
        assert_eq!(d["state"], "issued", "{d}");
        let (s, v) = server.call("GET", &format!("/devices/{serial}/update-requests"), None);
        assert_eq!(s, 404, "no request yet: {v}");
    }
    let out = server.admin(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "the audit of both releases verifies: {}{}",
        support::stdout(&out),
        support::stderr(&out)
    );
    // A device issued by the release before is renewed by today's update
    // (the management key and certificates it kept are read as they were).
    let at = (time::OffsetDateTime::now_utc() + time::Duration::days(340))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let out = server.admin(&["device", "renewal-scan", "--at", &at, "--json"]);
    let scan: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}{}", support::stdout(&out), support::stderr(&out)));
    let requested: Vec<&str> = scan["requested"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        requested.contains(&"41000901") && requested.contains(&"31000902"),
        "{scan}"
    );
    let mut c4000 = card(
        work.path(),
        ProfileKind::C4000,
        "41000901",
        "vcard-41000901.json",
    );
    let (s, batch) = server.call("POST", "/devices/41000901/update", Some(json!({})));
    assert_eq!(s, 201, "{batch}");
    let end = relay_to_end(&server, &mut c4000, batch);
    assert_eq!(end["state"], "updated", "{end}");
    // The session left in the middle by the release before is finished.
    let id = session["session_id"].as_str().unwrap();
    let (s, st) = server.call("GET", &format!("/issuance/{id}"), None);
    assert_eq!(s, 200, "{st}");
    assert_eq!(st["prompts"][0]["kind"], "set_new_pin", "{st}");
    let mut yubikey = card(
        work.path(),
        ProfileKind::Yubikey5,
        "31000900",
        "vcard-state.json",
    );
    let (s, next) = server.call(
        "POST",
        &format!("/issuance/{id}/relay"),
        Some(
            json!({ "protocol": 1, "session_id": id, "seq": st["seq"], "responses": [],
                     "answers": { "set_new_pin": "735194" } }),
        ),
    );
    assert_eq!(s, 200, "{next}");
    let mut end = relay_to_end(&server, &mut yubikey, next);
    if end["state"] == "failed" {
        // The card, reloaded, forgot its management-key authentication, as
        // after any restart: Retry finishes it.
        let (s, batch) = server.call("POST", &format!("/issuance/{id}/retry"), Some(json!({})));
        assert_eq!(s, 200, "{batch}");
        end = relay_to_end(&server, &mut yubikey, batch);
    }
    assert_eq!(end["state"], "issued", "{end}");
    let out = server.admin(&["audit", "verify"]);
    assert!(out.status.success(), "{}", support::stderr(&out));
}

#[test]
fn the_session_the_release_before_left_in_the_middle_can_be_cancelled() {
    let work = tempfile::tempdir().unwrap();
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE),
        work.path(),
    );
    let session: Value =
        serde_json::from_slice(&std::fs::read(work.path().join("session.json")).unwrap()).unwrap();
    let id = session["session_id"].as_str().unwrap();
    let serial = session["serial"].as_str().unwrap();
    // Nobody answers it: today's sweeper cancels it as abandoned (its
    // certificates revoked), and the device can be issued again.
    let config = work.path().join("keyward.toml");
    std::fs::write(&config, "abandon_after_seconds = 1\n").unwrap();
    let data = tempfile::tempdir().unwrap();
    copy_dir(&work.path().join("data"), data.path());
    let server = TestServer::start_with(ServerOptions {
        data_dir: Some(data),
        args: vec!["--config".into(), config.to_str().unwrap().into()],
        ..Default::default()
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let st = loop {
        let (s, st) = server.call("GET", &format!("/issuance/{id}"), None);
        assert_eq!(s, 200, "{st}");
        if st["status"] == "cancelled" {
            break st;
        }
        assert!(std::time::Instant::now() < deadline, "not cancelled: {st}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(st["error"]["code"], "abandoned", "{st}");
    let (_, d) = server.call("GET", &format!("/devices/{serial}"), None);
    assert_ne!(d["state"], "in_production", "the device is free again: {d}");
    let out = server.admin(&["audit", "verify"]);
    assert!(out.status.success(), "{}", support::stderr(&out));
}
