//! A session sealed by an earlier release finishes after the upgrade
//! (issue 12, item 3). `fixtures/session-v1` was made by the release before
//! sealed session states carried a format number
//! (`examples/make_session_fixture.rs`): a data folder in which an issuance
//! (Not Displayed, "Change PIN during issuance") waits for the person's new
//! PIN, its keys generated and certified, and the state of the virtual
//! YubiKey it runs on. Today's server opens the store, reads the sealed
//! state, takes the answer and finishes the issuance (the card, restarted,
//! forgot the management key's authentication: the last batch fails and
//! Retry finishes it, as after any restart); the PIN set is the card's.

use crate::support;

use std::path::Path;

use keyward_vcard::{ProfileKind, VcardConfig, VirtualCard};
use serde_json::{json, Value};
use support::{ServerOptions, TestServer};

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

use support::relay_in_process as relay;

/// Relays batches until the session stops asking for the device.
fn relay_to_end(server: &TestServer, card: &mut VirtualCard, id: &str, mut batch: Value) -> Value {
    while !batch["commands"].as_array().unwrap().is_empty() {
        let responses = relay(card, &batch);
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
fn a_session_sealed_by_the_release_before_finishes_after_the_upgrade() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/session-v1");
    let work = tempfile::tempdir().unwrap();
    copy_dir(&fixture, work.path());
    let data = tempfile::tempdir().unwrap();
    copy_dir(&work.path().join("data"), data.path());
    let session: Value =
        serde_json::from_slice(&std::fs::read(work.path().join("session.json")).unwrap()).unwrap();
    let id = session["session_id"].as_str().unwrap().to_string();
    // The fixture's session is old: the abandoned-session sweeper must not
    // cancel it before the test answers.
    let config = work.path().join("keyward.toml");
    std::fs::write(&config, "abandon_after_seconds = 315360000\n").unwrap();
    let server = TestServer::start_with(ServerOptions {
        data_dir: Some(data),
        args: vec!["--config".into(), config.to_str().unwrap().into()],
        ..Default::default()
    });

    let (s, st) = server.call("GET", &format!("/issuance/{id}"), None);
    assert_eq!(s, 200, "{st}");
    assert_eq!(
        (st["status"].as_str(), st["prompts"][0]["kind"].as_str()),
        (Some("running"), Some("set_new_pin")),
        "{st}"
    );
    let state_file = work.path().join("vcard-state.json");
    let mut card = VirtualCard::load_or_new(
        VcardConfig::new(ProfileKind::Yubikey5)
            .with_serial(session["serial"].as_str().unwrap().parse().unwrap())
            .with_ca_dir(work.path().join("vcard-ca")),
        &state_file,
    )
    .unwrap();
    card.power_on();
    let (s, next) = server.call(
        "POST",
        &format!("/issuance/{id}/relay"),
        Some(
            json!({ "protocol": 1, "session_id": id, "seq": st["seq"], "responses": [],
                     "answers": { "set_new_pin": "735194" } }),
        ),
    );
    assert_eq!(s, 200, "the old sealed state takes the answer: {next}");
    let mut end = relay_to_end(&server, &mut card, &id, next);
    if end["state"] == "failed" {
        let (s, batch) = server.call("POST", &format!("/issuance/{id}/retry"), Some(json!({})));
        assert_eq!(s, 200, "{batch}");
        end = relay_to_end(&server, &mut card, &id, batch);
    }
    assert_eq!(end["state"], "issued", "{end}");
    let (_, d) = server.call(
        "GET",
        &format!("/devices/{}", session["serial"].as_str().unwrap()),
        None,
    );
    assert_eq!(d["state"], "issued", "{d}");
    // The PIN the person chose is the card's.
    card.transmit(&[
        0x00, 0xA4, 0x04, 0x00, 0x09, 0xA0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00,
    ]);
    let verify = card.transmit(&[
        0x00, 0x20, 0x00, 0x80, 0x08, b'7', b'3', b'5', b'1', b'9', b'4', 0xFF, 0xFF,
    ]);
    assert_eq!(verify, vec![0x90, 0x00]);
    // The audit trail written by the release before and by this one verifies.
    let (s, audit) = server.call("GET", "/audit/verify", None);
    assert_eq!((s, audit["ok"].as_bool()), (200, Some(true)), "{audit}");
}
