//! Add Device for a user through the API, with the batches relayed to an
//! in-process virtual device the way a client does: the device ends Issued,
//! its certificates chain to the CA the server serves, and replayed or
//! out-of-order results are refused.

use crate::common::self_service;
use crate::support;

use keyward_vcard::{Firmware, ProfileKind, VcardConfig, VirtualCard};
use self_service::{call_as_user, sign_in_user};
use serde_json::{json, Value};
use support::TestServer;

/// Relays every batch until the session ends; returns the last answer.
fn run_to_end(server: &TestServer, card: &mut VirtualCard, id: &str, mut batch: Value) -> Value {
    while batch["state"] == "running" {
        let responses = relay(card, &batch);
        let result =
            json!({ "protocol": 1, "session_id": id, "seq": batch["seq"], "responses": responses });
        let (s, next) = server.call("POST", &format!("/issuance/{id}/relay"), Some(result));
        assert_eq!(s, 200, "{next}");
        batch = next;
    }
    batch
}

use support::relay_in_process as relay;

#[test]
fn a_yubikey_is_issued_through_the_relay_and_its_certificates_verify() {
    let server = TestServer::start();
    support::seed_piv_standard(&server, "31000007");
    let ca_dir = tempfile::tempdir().unwrap();
    let mut card = VirtualCard::new(
        VcardConfig::new(ProfileKind::Yubikey5)
            .with_firmware(Firmware(5, 7, 1))
            .with_serial(31000007)
            .with_ca_dir(ca_dir.path()),
    )
    .unwrap();
    card.power_on();

    // Bad input is refused before the device is touched.
    let (s, v) = server.call("POST", "/issuance", Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000007", "pin": "123456" })));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("pin_sequential_run")),
        "{v}"
    );
    let (s, v) = server.call("POST", "/issuance", Some(json!({ "user": "nobody", "policy": "PIV Standard", "serial": "31000007", "pin": "735194" })));
    assert_eq!(s, 404, "{v}");
    let (_, d) = server.call("GET", "/devices/31000007", None);
    assert_eq!(d["state"], "available");

    let (s, mut batch) = server.call("POST", "/issuance", Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000007", "pin": "735194" })));
    assert_eq!(s, 201, "{batch}");
    let id = batch["session_id"].as_str().unwrap().to_string();
    // The device is taken: a second Add Device for it is a conflict.
    let (s, v) = server.call("POST", "/issuance", Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000007", "pin": "735194" })));
    assert_eq!(s, 409, "{v}");
    assert!(
        !batch.to_string().contains("735194"),
        "no PIN in clear in the batch (it travels inside the APDU hex)"
    );

    let mut round_trips = 0;
    let mut previous: Option<Value> = None;
    while batch["state"] == "running" {
        let responses = relay(&mut card, &batch);
        let result =
            json!({ "protocol": 1, "session_id": id, "seq": batch["seq"], "responses": responses });
        // A result for another batch number is refused and changes nothing.
        let wrong = json!({ "protocol": 1, "session_id": id, "seq": batch["seq"].as_u64().unwrap() + 1, "responses": [] });
        let (s, v) = server.call("POST", &format!("/issuance/{id}/relay"), Some(wrong));
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (409, Some("sequence_mismatch")),
            "{v}"
        );
        // Fetching the current batch again is idempotent.
        let (s, again) = server.call("GET", &format!("/issuance/{id}/batch"), None);
        assert_eq!(s, 200);
        assert_eq!(again["seq"], batch["seq"]);
        let (s, next) = server.call(
            "POST",
            &format!("/issuance/{id}/relay"),
            Some(result.clone()),
        );
        assert_eq!(s, 200, "{next}");
        round_trips += 1;
        previous = Some(result);
        batch = next;
    }
    assert_eq!(batch["state"], "issued", "{batch}");
    assert_eq!(round_trips, 3);
    // Replaying the last result after the session ended is refused.
    let (s, _) = server.call("POST", &format!("/issuance/{id}/relay"), previous);
    assert_eq!(s, 409);

    let (_, d) = server.call("GET", "/devices/31000007", None);
    assert_eq!(d["state"], "issued", "{d}");
    let (s, st) = server.call("GET", &format!("/issuance/{id}"), None);
    assert_eq!(s, 200);
    assert_eq!(st["status"], "issued");
    let creds = st["credentials"].as_array().unwrap();
    assert_eq!(creds.len(), 2, "{st}");

    // The certificate on the card chains to the CA the server publishes.
    let dir = tempfile::tempdir().unwrap();
    let http = server.client();
    std::fs::write(
        dir.path().join("chain.pem"),
        http.get(format!("{}/pki/ca/chain.pem", server.url))
            .send()
            .unwrap()
            .bytes()
            .unwrap(),
    )
    .unwrap();
    let mut resp = card.transmit(
        &keyward_card::piv::get_data(keyward_card::piv::object::AUTHENTICATION_CERT).to_bytes(),
    );
    let mut data = resp[..resp.len() - 2].to_vec();
    while resp[resp.len() - 2] == 0x61 {
        resp = card.transmit(&[0x00, 0xC0, 0x00, 0x00, resp[resp.len() - 1]]);
        data.extend_from_slice(&resp[..resp.len() - 2]);
    }
    let container = keyward_card::tlv::find(&data, 0x53).unwrap();
    let cert = keyward_card::piv::parse_cert_container(container)
        .unwrap()
        .certificate;
    std::fs::write(dir.path().join("leaf.der"), &cert).unwrap();
    let out = std::process::Command::new("openssl")
        .args([
            "x509", "-inform", "DER", "-in", "leaf.der", "-out", "leaf.pem",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = std::process::Command::new("openssl")
        .args(["verify", "-CAfile", "chain.pem", "leaf.pem"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new("openssl")
        .args(["x509", "-in", "leaf.pem", "-noout", "-text"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("alice@example.com"));

    // The new PIN works on the card; the PIN is nowhere in the data folder or the output.
    assert_eq!(
        card.transmit(&keyward_card::piv::select_piv().to_bytes())
            .ends_with(&[0x90, 0x00]),
        true
    );
    let r = card.transmit(
        &keyward_card::piv::verify(0x80, Some(b"735194"))
            .unwrap()
            .to_bytes(),
    );
    assert_eq!(r, vec![0x90, 0x00]);
    let tree = support::read_tree(&server.data_path());
    assert!(!support::contains(&tree, b"735194"));
    assert!(!server.output().contains("735194"));
}

#[test]
fn a_swapped_device_fails_the_attempt_and_leaves_it_produced_failed() {
    let server = TestServer::start();
    support::seed_piv_standard(&server, "31000008");
    let ca_dir = tempfile::tempdir().unwrap();
    // The card in the reader is another one.
    let mut card = VirtualCard::new(
        VcardConfig::new(ProfileKind::Yubikey5)
            .with_serial(31000009)
            .with_ca_dir(ca_dir.path()),
    )
    .unwrap();
    card.power_on();
    let (s, batch) = server.call("POST", "/issuance", Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000008", "pin": "735194" })));
    assert_eq!(s, 201, "{batch}");
    let id = batch["session_id"].as_str().unwrap().to_string();
    let responses = relay(&mut card, &batch);
    let (s, next) = server.call(
        "POST",
        &format!("/issuance/{id}/relay"),
        Some(json!({ "protocol": 1, "session_id": id, "seq": 1, "responses": responses })),
    );
    assert_eq!(s, 200, "{next}");
    assert_eq!(next["state"], "failed");
    let (_, st) = server.call("GET", &format!("/issuance/{id}"), None);
    assert_eq!(st["error"]["code"], "device_mismatch", "{st}");
    assert_eq!(st["error"]["step"], "identify device");
    let (_, d) = server.call("GET", "/devices/31000008", None);
    assert_eq!(
        (d["state"].as_str(), d["reason"].as_str()),
        (Some("produced"), Some("failed")),
        "{d}"
    );

    // Cancel: the device is no longer assigned to the user.
    let (s, st) = server.call("POST", &format!("/issuance/{id}/cancel"), None);
    assert_eq!(s, 200, "{st}");
    assert_eq!(st["status"], "cancelled");
    let (_, d) = server.call("GET", "/devices/31000008", None);
    assert_eq!(
        (d["state"].as_str(), d["reason"].as_str()),
        (Some("produced"), Some("unassigned")),
        "{d}"
    );
    assert!(d["assigned_user"].is_null(), "{d}");
    let (s, v) = server.call("POST", &format!("/issuance/{id}/cancel"), None);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("session_not_failed"))
    );
}

/// Durability: node A starts the session and relays the first batch, then is
/// killed; node B, on the same PostgreSQL with the same KEK, finishes it.
#[test]
fn a_second_server_node_on_the_same_postgresql_finishes_the_session() {
    let Some(opts) = support::shared_postgres_nodes("kw_durable") else {
        return;
    };
    let mut a = TestServer::start_with(opts());
    support::seed_piv_standard(&a, "31000010");
    let ca_dir = tempfile::tempdir().unwrap();
    let mut card = VirtualCard::new(
        VcardConfig::new(ProfileKind::Yubikey5)
            .with_serial(31000010)
            .with_ca_dir(ca_dir.path()),
    )
    .unwrap();
    card.power_on();
    let (s, batch) = a.call("POST", "/issuance", Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000010", "pin": "735194" })));
    assert_eq!(s, 201, "{batch}");
    let id = batch["session_id"].as_str().unwrap().to_string();
    let responses = relay(&mut card, &batch);
    let (s, mut batch) = a.call(
        "POST",
        &format!("/issuance/{id}/relay"),
        Some(json!({ "protocol": 1, "session_id": id, "seq": 1, "responses": responses })),
    );
    assert_eq!(s, 200, "{batch}");
    assert_eq!(batch["seq"], 2);
    let _ = a.child.kill();
    let _ = a.child.wait();

    // Node B: same database, same KEK, its own data folder; the token is B's own
    // bootstrap token, created in the shared store.
    let b = TestServer::start_with(opts());
    let (s, again) = b.call("GET", &format!("/issuance/{id}/batch"), None);
    assert_eq!(s, 200, "{again}");
    assert_eq!(again, batch, "node B serves the batch node A sent");
    batch = run_to_end(&b, &mut card, &id, batch);
    assert_eq!(batch["state"], "issued");
    let (_, d) = b.call("GET", "/devices/31000010", None);
    assert_eq!(d["state"], "issued");
    let out = b.admin(&["audit", "verify"]);
    assert!(out.status.success(), "{}", support::stdout(&out));
}

/// Not Displayed, "Change PIN during issuance" = No: Keyward generates the
/// PIN; the user reveals it once with Get Initial PIN, and it works on the device.
#[test]
fn get_initial_pin_reveals_the_generated_pin_once() {
    let server = TestServer::start();
    support::seed_piv_standard(&server, "31000020");
    assert_eq!(
        server
            .call(
                "PUT",
                "/settings/initial_pin_display_mode",
                Some(json!({ "value": "not_displayed" }))
            )
            .0,
        200
    );
    assert_eq!(
        server
            .call(
                "PUT",
                "/settings/change_pin_during_issuance",
                Some(json!({ "value": "no" }))
            )
            .0,
        200
    );
    let ca_dir = tempfile::tempdir().unwrap();
    let mut card = VirtualCard::new(
        VcardConfig::new(ProfileKind::Yubikey5)
            .with_serial(31000020)
            .with_ca_dir(ca_dir.path()),
    )
    .unwrap();
    card.power_on();

    // A PIN given in Not Displayed mode is refused.
    let (s, v) = server.call("POST", "/issuance", Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000020", "pin": "735194" })));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("pin_not_expected")),
        "{v}"
    );
    let (s, mut batch) = server.call(
        "POST",
        "/issuance",
        Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000020" })),
    );
    assert_eq!(s, 201, "{batch}");
    let id = batch["session_id"].as_str().unwrap().to_string();
    batch = run_to_end(&server, &mut card, &id, batch);
    assert_eq!(batch["state"], "issued");

    // alice gets a password by enrollment code and signs in.
    let (_, code) = server.call("POST", "/users/alice/enrollment-code", None);
    let http = reqwest::blocking::Client::new();
    let r = http.post(server.api("/auth/enroll")).json(&json!({ "login": "alice", "code": code["code"], "password": "alice-first-passphrase" })).send().unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let r = http
        .post(server.api("/auth/session"))
        .json(&json!({ "login": "alice", "password": "alice-first-passphrase" }))
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
    let mine: Value = http
        .get(server.api("/me/devices"))
        .header("cookie", &cookie)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(mine[0]["serial"], "31000020", "{mine}");
    assert_eq!(mine[0]["initial_pin_available"], true);

    let reveal = || {
        http.post(server.api("/me/devices/31000020/initial-pin"))
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf)
            .send()
            .unwrap()
    };
    let r = reveal();
    assert_eq!(r.status().as_u16(), 200);
    let pin = r.json::<Value>().unwrap()["pin"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        (6..=8).contains(&pin.len()) && pin.bytes().all(|b| b.is_ascii_digit()),
        "a PIN under the policy"
    );
    // Once only.
    let r = reveal();
    assert_eq!(r.status().as_u16(), 410);
    assert_eq!(
        r.json::<Value>().unwrap()["error"]["code"],
        "initial_pin_not_available"
    );
    // Another user's device is not found, not refused (no oracle).
    let r = http
        .post(server.api("/me/devices/99999999/initial-pin"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);

    // The revealed PIN works on the device; it was never stored in clear or logged.
    assert!(card
        .transmit(&keyward_card::piv::select_piv().to_bytes())
        .ends_with(&[0x90, 0x00]));
    assert_eq!(
        card.transmit(
            &keyward_card::piv::verify(0x80, Some(pin.as_bytes()))
                .unwrap()
                .to_bytes()
        ),
        vec![0x90, 0x00]
    );
    let tree = support::read_tree(&server.data_path());
    assert!(!support::contains(&tree, pin.as_bytes()));
    assert!(!server.output().contains(&pin));
    let (_, events) = server.call("GET", "/audit?limit=1000", None);
    assert!(events.to_string().contains("device.initial_pin_revealed"));
    assert!(!events.to_string().contains(&pin));
}

/// Relays the first `n` commands of a batch, then reports the device gone.
fn relay_then_remove(card: &mut VirtualCard, batch: &Value, n: usize) -> Value {
    let mut partial = batch.clone();
    partial["commands"] = json!(batch["commands"].as_array().unwrap()[..n].to_vec());
    json!({ "responses": relay(card, &partial), "transport_error": "device_removed" })
}

/// The device is pulled out at a step of each batch in turn; every time the
/// attempt fails cleanly (device Produced, Failed), and Retry after
/// re-insertion ends Issued, with the PIN the issuance set. Certificates of a
/// failed attempt are revoked and listed in the CRL.
#[test]
fn retry_after_the_device_was_removed_at_each_batch_ends_issued() {
    let server = TestServer::start();
    support::seed_piv_standard(&server, "31000030");
    let ca_dir = tempfile::tempdir().unwrap();
    let mut card = VirtualCard::new(
        VcardConfig::new(ProfileKind::Yubikey5)
            .with_serial(31000030)
            .with_ca_dir(ca_dir.path()),
    )
    .unwrap();
    card.power_on();
    let (s, mut batch) = server.call("POST", "/issuance", Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000030", "pin": "735194" })));
    assert_eq!(s, 201, "{batch}");
    let id = batch["session_id"].as_str().unwrap().to_string();
    // Pull the device out: in batch 1 after 1 command, in batch 2 right after
    // CHANGE PUK (5 commands: auth, verify, retries, PUK …), in batch 3 after
    // the first certificate was written.
    for (full_batches, cut) in [(0usize, 1usize), (1, 4), (2, 1)] {
        // Run whole batches of this attempt up to the one to cut.
        for _ in 0..full_batches {
            let responses = relay(&mut card, &batch);
            let (s, next) = server.call("POST", &format!("/issuance/{id}/relay"), Some(json!({ "protocol": 1, "session_id": id, "seq": batch["seq"], "responses": responses })));
            assert_eq!(s, 200, "{next}");
            batch = next;
        }
        let cut_result = relay_then_remove(&mut card, &batch, cut);
        let mut result = json!({ "protocol": 1, "session_id": id, "seq": batch["seq"] });
        result["responses"] = cut_result["responses"].clone();
        result["transport_error"] = cut_result["transport_error"].clone();
        let (s, failed) = server.call("POST", &format!("/issuance/{id}/relay"), Some(result));
        assert_eq!(s, 200, "{failed}");
        assert_eq!(
            failed["state"],
            "failed",
            "batch {}: {failed}",
            full_batches + 1
        );
        let (_, d) = server.call("GET", "/devices/31000030", None);
        assert_eq!(
            (d["state"].as_str(), d["reason"].as_str()),
            (Some("produced"), Some("failed"))
        );
        // The card is put back (powered up again) and the operator clicks Retry.
        card.power_on();
        let (s, again) = server.call("POST", &format!("/issuance/{id}/retry"), None);
        assert_eq!(s, 200, "{again}");
        assert_eq!(again["state"], "running");
        batch = again;
    }
    // The last retry runs to the end.
    batch = run_to_end(&server, &mut card, &id, batch);
    assert_eq!(batch["state"], "issued", "{batch}");
    let (_, d) = server.call("GET", "/devices/31000030", None);
    assert_eq!(d["state"], "issued");
    assert!(card
        .transmit(&keyward_card::piv::select_piv().to_bytes())
        .ends_with(&[0x90, 0x00]));
    assert_eq!(
        card.transmit(
            &keyward_card::piv::verify(0x80, Some(b"735194"))
                .unwrap()
                .to_bytes()
        ),
        vec![0x90, 0x00]
    );
    // Credentials: 2 live certificates, and the ones of the attempt cut in batch 3 revoked.
    let (_, st) = server.call("GET", &format!("/issuance/{id}"), None);
    let creds = st["credentials"].as_array().unwrap();
    let revoked: Vec<_> = creds
        .iter()
        .filter(|c| !c["revoked_at"].is_null())
        .collect();
    let live: Vec<_> = creds.iter().filter(|c| c["revoked_at"].is_null()).collect();
    assert_eq!((live.len(), revoked.len()), (2, 2), "{st}");
    let dir = tempfile::tempdir().unwrap();
    let crl = server
        .client()
        .get(format!("{}/pki/crl/issuing.crl", server.url))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    std::fs::write(dir.path().join("issuing.crl"), &crl).unwrap();
    let out = std::process::Command::new("openssl")
        .args([
            "crl",
            "-inform",
            "DER",
            "-in",
            "issuing.crl",
            "-noout",
            "-text",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_uppercase();
    for r in revoked {
        assert!(
            text.contains(&r["serial"].as_str().unwrap().to_uppercase()),
            "revoked serial missing from the CRL:\n{text}"
        );
    }
    for l in live {
        assert!(!text.contains(&l["serial"].as_str().unwrap().to_uppercase()));
    }
}

/// A session nobody relays for `abandon_after_seconds` is cancelled by the
/// server: the device is no longer assigned to the user and can be recycled.
#[test]
fn an_abandoned_session_is_cancelled_by_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keyward.toml");
    std::fs::write(&config, "abandon_after_seconds = 2\n").unwrap();
    let server = TestServer::start_with(support::ServerOptions {
        args: vec!["--config".into(), config.display().to_string()],
        ..Default::default()
    });
    support::seed_piv_standard(&server, "31000040");
    let ca_dir = tempfile::tempdir().unwrap();
    let mut card = VirtualCard::new(
        VcardConfig::new(ProfileKind::Yubikey5)
            .with_serial(31000040)
            .with_ca_dir(ca_dir.path()),
    )
    .unwrap();
    card.power_on();
    let (s, batch) = server.call("POST", "/issuance", Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000040", "pin": "735194" })));
    assert_eq!(s, 201, "{batch}");
    let id = batch["session_id"].as_str().unwrap().to_string();
    let responses = relay(&mut card, &batch);
    let (s, next) = server.call(
        "POST",
        &format!("/issuance/{id}/relay"),
        Some(json!({ "protocol": 1, "session_id": id, "seq": 1, "responses": responses })),
    );
    assert_eq!(s, 200, "{next}");
    // The client goes away here.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        let (_, st) = server.call("GET", &format!("/issuance/{id}"), None);
        if st["status"] != "running" || std::time::Instant::now() > deadline {
            break st;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    };
    assert_eq!(status["status"], "cancelled", "{status}");
    assert_eq!(status["error"]["code"], "abandoned");
    let (_, d) = server.call("GET", "/devices/31000040", None);
    assert_eq!(
        (d["state"].as_str(), d["reason"].as_str()),
        (Some("produced"), Some("unassigned")),
        "{d}"
    );
    // A late client gets a clear refusal.
    let (s, v) = server.call(
        "POST",
        &format!("/issuance/{id}/relay"),
        Some(json!({ "protocol": 1, "session_id": id, "seq": 2, "responses": [] })),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("session_not_running"))
    );
}

/// "Assign Device": the device is bound to the user with a policy and shows
/// as assigned; issuance completes later, for that user and policy only.
#[test]
fn assign_device_then_complete_the_issuance() {
    let server = TestServer::start();
    support::seed_piv_standard(&server, "31000070");
    assert_eq!(
        server
            .call(
                "POST",
                "/users",
                Some(json!({ "login": "bob", "display_name": "Bob" }))
            )
            .0,
        201
    );
    let (s, v) = server.call("POST", "/issuance", Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000070", "action": "assign" })));
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["state"], "assigned");
    let (_, d) = server.call("GET", "/devices/31000070", None);
    assert_eq!(d["state"], "assigned");
    assert_eq!(d["state_label"], "Assigned");
    // Assigned to alice: not bob's, and not assignable again.
    let (s, v) = server.call("POST", "/issuance", Some(json!({ "user": "bob", "policy": "PIV Standard", "serial": "31000070", "pin": "735194" })));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("device_assigned")),
        "{v}"
    );
    let (s, v) = server.call("POST", "/issuance", Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000070", "action": "assign" })));
    assert_eq!(s, 409, "{v}");
    let (s, v) = server.call("POST", "/issuance", Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000070", "action": "format" })));
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (400, Some("action")),
        "{v}"
    );
    // alice's issuance completes it.
    let ca_dir = tempfile::tempdir().unwrap();
    let mut card = VirtualCard::new(
        VcardConfig::new(ProfileKind::Yubikey5)
            .with_serial(31000070)
            .with_ca_dir(ca_dir.path()),
    )
    .unwrap();
    card.power_on();
    let (s, mut batch) = server.call("POST", "/issuance", Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000070", "pin": "735194" })));
    assert_eq!(s, 201, "{batch}");
    let id = batch["session_id"].as_str().unwrap().to_string();
    batch = run_to_end(&server, &mut card, &id, batch);
    assert_eq!(batch["state"], "issued");
    let (_, d) = server.call("GET", "/devices/31000070", None);
    assert_eq!(d["state"], "issued");
}

/// Relays command batches and answers prompt batches from `answers` (kind →
/// value) until the session ends; returns the last answer and the number of
/// command round trips.
fn run_answering(
    server: &TestServer,
    card: &mut VirtualCard,
    id: &str,
    mut batch: Value,
    answers: &[(&str, &str)],
) -> (Value, usize) {
    let mut trips = 0;
    while batch["state"] == "running" {
        let commands = batch["commands"].as_array().unwrap();
        let mut result =
            json!({ "protocol": 1, "session_id": id, "seq": batch["seq"], "responses": [] });
        if commands.is_empty() {
            let mut given = serde_json::Map::new();
            for p in batch["prompts"].as_array().unwrap() {
                let kind = p["kind"].as_str().unwrap();
                let (_, v) = answers
                    .iter()
                    .find(|(k, _)| *k == kind)
                    .unwrap_or_else(|| panic!("no answer for {kind}"));
                given.insert(kind.into(), json!(v));
            }
            result["answers"] = Value::Object(given);
        } else {
            result["responses"] = json!(relay(card, &batch));
            trips += 1;
        }
        let (s, next) = server.call("POST", &format!("/issuance/{id}/relay"), Some(result));
        assert_eq!(s, 200, "{next}");
        batch = next;
    }
    (batch, trips)
}

fn put_setting(server: &TestServer, key: &str, value: &str) {
    let (s, v) = server.call(
        "PUT",
        &format!("/settings/{key}"),
        Some(json!({ "value": value })),
    );
    assert_eq!(s, 200, "{v}");
}

fn verify_pin(card: &mut VirtualCard, pin: &str) -> Vec<u8> {
    assert!(card
        .transmit(&keyward_card::piv::select_piv().to_bytes())
        .ends_with(&[0x90, 0x00]));
    card.transmit(
        &keyward_card::piv::verify(0x80, Some(pin.as_bytes()))
            .unwrap()
            .to_bytes(),
    )
}

/// Not Displayed with "Change PIN during issuance" = Yes: the last batch
/// waits for the person's PIN (a `set_new_pin` prompt batch); a PIN that
/// breaks the policy's rules is refused rule by rule and changes nothing;
/// a good one is set on the device; still 3 command round trips.
#[test]
fn not_displayed_with_change_pin_sets_the_persons_pin_at_the_end() {
    let server = TestServer::start();
    support::seed_piv_standard(&server, "31000080");
    put_setting(&server, "initial_pin_display_mode", "not_displayed");
    put_setting(&server, "change_pin_during_issuance", "yes");
    let ca_dir = tempfile::tempdir().unwrap();
    let mut card = VirtualCard::new(
        VcardConfig::new(ProfileKind::Yubikey5)
            .with_serial(31000080)
            .with_ca_dir(ca_dir.path()),
    )
    .unwrap();
    card.power_on();
    let (s, mut batch) = server.call(
        "POST",
        "/issuance",
        Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000080" })),
    );
    assert_eq!(s, 201, "{batch}");
    let id = batch["session_id"].as_str().unwrap().to_string();
    let mut trips = 0;
    while batch["commands"].as_array().unwrap().len() > 0 {
        let responses = relay(&mut card, &batch);
        trips += 1;
        let (s, next) = server.call("POST", &format!("/issuance/{id}/relay"), Some(json!({ "protocol": 1, "session_id": id, "seq": batch["seq"], "responses": responses })));
        assert_eq!(s, 200, "{next}");
        batch = next;
    }
    assert_eq!(trips, 2, "the prompt comes after the keys are certified");
    assert_eq!(batch["prompts"][0]["kind"], "set_new_pin", "{batch}");
    // The person's client reads the open prompts from the session too.
    let (_, st) = server.call("GET", &format!("/issuance/{id}"), None);
    assert_eq!(st["prompts"][0]["kind"], "set_new_pin", "{st}");
    let seq = batch["seq"].clone();
    // Missing answer, then a PIN breaking two rules: 400, nothing moves.
    let (s, v) = server.call(
        "POST",
        &format!("/issuance/{id}/relay"),
        Some(json!({ "protocol": 1, "session_id": id, "seq": seq, "responses": [] })),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("answer_required")),
        "{v}"
    );
    let (s, v) = server.call("POST", &format!("/issuance/{id}/relay"), Some(json!({ "protocol": 1, "session_id": id, "seq": seq, "responses": [], "answers": { "set_new_pin": "1234" } })));
    assert_eq!(s, 400, "{v}");
    let failed: Vec<&str> = v["error"]["details"]["failed_rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["pin_too_short", "pin_sequential_run"], "{v}");
    assert_eq!(v["error"]["field"], "answers.set_new_pin");
    assert!(!v.to_string().contains("1234\""), "the PIN is not echoed");
    let (_, again) = server.call("GET", &format!("/issuance/{id}/batch"), None);
    assert_eq!(
        (again["seq"].clone(), again["prompts"][0]["kind"].as_str()),
        (seq.clone(), Some("set_new_pin"))
    );
    // A good PIN: the last batch sets it.
    let (s, next) = server.call("POST", &format!("/issuance/{id}/relay"), Some(json!({ "protocol": 1, "session_id": id, "seq": seq, "responses": [], "answers": { "set_new_pin": "735194" } })));
    assert_eq!(s, 200, "{next}");
    let (end, more) = run_answering(&server, &mut card, &id, next, &[]);
    assert_eq!(end["state"], "issued", "{end}");
    assert_eq!(trips + more, 3, "3 command round trips");
    assert_eq!(verify_pin(&mut card, "735194"), vec![0x90, 0x00]);
    let tree = support::read_tree(&server.data_path());
    assert!(!support::contains(&tree, b"735194"));
    assert!(!server.output().contains("735194"));
}

/// Pulls the device out at command `cut` of the session's batch `n`
/// (1-based): the attempt fails.
fn fail_at(
    server: &TestServer,
    card: &mut VirtualCard,
    id: &str,
    mut batch: Value,
    n: usize,
    cut: usize,
) {
    for _ in 1..n {
        let responses = relay(card, &batch);
        let (s, next) = server.call("POST", &format!("/issuance/{id}/relay"), Some(json!({ "protocol": 1, "session_id": id, "seq": batch["seq"], "responses": responses })));
        assert_eq!(s, 200, "{next}");
        batch = next;
    }
    let cut = relay_then_remove(card, &batch, cut);
    let mut result = json!({ "protocol": 1, "session_id": id, "seq": batch["seq"] });
    result["responses"] = cut["responses"].clone();
    result["transport_error"] = cut["transport_error"].clone();
    let (s, failed) = server.call("POST", &format!("/issuance/{id}/relay"), Some(result));
    assert_eq!(
        (s, failed["state"].as_str()),
        (200, Some("failed")),
        "{failed}"
    );
    card.power_on();
}

fn recycle(server: &TestServer, card: &mut VirtualCard, serial: &str) -> (Value, usize) {
    let (s, batch) = server.call("POST", &format!("/devices/{serial}/recycle"), None);
    assert_eq!(s, 201, "{batch}");
    let id = batch["session_id"].as_str().unwrap().to_string();
    run_answering(server, card, &id, batch, &[])
}

/// A device whose issuance failed half-way (new PIN, PUK and keys on it) is
/// recycled at once: the failed session ends, the YubiKey is wiped in one
/// round trip (PIN and PUK blocked, PIV reset), the device is Available
/// (Recycled), and it is issued to another user.
#[test]
fn a_failed_yubikey_is_recycled_at_once_and_issued_to_another_user() {
    let server = TestServer::start();
    support::seed_piv_standard(&server, "31000090");
    assert_eq!(server.call("POST", "/users", Some(json!({ "login": "bob", "display_name": "Bob Baker", "upn": "bob@example.com", "email": "bob@example.com" }))).0, 201);
    let ca_dir = tempfile::tempdir().unwrap();
    let mut card = VirtualCard::new(
        VcardConfig::new(ProfileKind::Yubikey5)
            .with_serial(31000090)
            .with_ca_dir(ca_dir.path()),
    )
    .unwrap();
    card.power_on();
    let (s, batch) = server.call("POST", "/issuance", Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000090", "pin": "735194" })));
    assert_eq!(s, 201, "{batch}");
    let id = batch["session_id"].as_str().unwrap().to_string();
    fail_at(&server, &mut card, &id, batch, 3, 1);
    // Recycle is refused on an issued or unknown device, allowed here.
    let (s, v) = server.call("POST", "/devices/99999999/recycle", None);
    assert_eq!(s, 404, "{v}");
    let (end, trips) = recycle(&server, &mut card, "31000090");
    assert_eq!(
        (end["state"].as_str(), trips),
        (Some("recycled"), 1),
        "{end}"
    );
    let (_, st) = server.call("GET", &format!("/issuance/{id}"), None);
    assert_eq!(
        st["status"], "cancelled",
        "the failed session was ended: {st}"
    );
    let (_, d) = server.call("GET", "/devices/31000090", None);
    assert_eq!(
        (d["state"].as_str(), d["reason"].as_str()),
        (Some("available"), Some("recycled")),
        "{d}"
    );
    assert_eq!(
        verify_pin(&mut card, "123456"),
        vec![0x90, 0x00],
        "factory PIN"
    );
    let r = card.transmit(
        &keyward_card::piv::get_data(keyward_card::piv::object::AUTHENTICATION_CERT).to_bytes(),
    );
    assert!(r.ends_with(&[0x6A, 0x82]), "no certificate left");
    // Every certificate of the device is revoked.
    let (_, st) = server.call("GET", &format!("/issuance/{id}"), None);
    assert!(
        st["credentials"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| !c["revoked_at"].is_null()),
        "{st}"
    );

    let (s, batch) = server.call("POST", "/issuance", Some(json!({ "user": "bob", "policy": "PIV Standard", "serial": "31000090", "pin": "582039" })));
    assert_eq!(s, 201, "{batch}");
    let id = batch["session_id"].as_str().unwrap().to_string();
    let (end, _) = run_answering(&server, &mut card, &id, batch, &[]);
    let (_, st) = server.call("GET", &format!("/issuance/{id}"), None);
    assert_eq!(end["state"], "issued", "{st}");
    assert_eq!(verify_pin(&mut card, "582039"), vec![0x90, 0x00]);
    // An issued device is not recycled.
    let (s, v) = server.call("POST", "/devices/31000090/recycle", None);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("device_not_recyclable")),
        "{v}"
    );
}

/// A C4000 whose issuance failed after its PUK, PIN, keys and management
/// key changed, then was cancelled: Recycle authenticates with the key the
/// server derived, replaces the keys, deletes the objects, resets PIN and
/// PUK with the PUK the server kept sealed, restores the factory management
/// key; the device is issued again.
#[test]
fn a_cancelled_c4000_is_recycled_to_factory_state() {
    let server = TestServer::start();
    support::seed_piv_standard(&server, "31000091");
    let (s, v) = server.call(
        "POST",
        "/devices",
        Some(json!({ "device_type": "c4000", "serial": "31000092" })),
    );
    assert_eq!(s, 201, "{v}");
    let ca_dir = tempfile::tempdir().unwrap();
    let mut card = VirtualCard::new(
        VcardConfig::new(ProfileKind::C4000)
            .with_serial(31000092)
            .with_ca_dir(ca_dir.path()),
    )
    .unwrap();
    card.power_on();
    let (s, batch) = server.call("POST", "/issuance", Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000092", "pin": "735194" })));
    assert_eq!(s, 201, "{batch}");
    let id = batch["session_id"].as_str().unwrap().to_string();
    // Batch 3: certificates, CHUID, CCC and the new management key went
    // through; the device went away at the read-back.
    fail_at(&server, &mut card, &id, batch, 3, 5);
    let (s, st) = server.call("POST", &format!("/issuance/{id}/cancel"), None);
    assert_eq!((s, st["status"].as_str()), (200, Some("cancelled")), "{st}");
    let (end, trips) = recycle(&server, &mut card, "31000092");
    assert_eq!(
        (end["state"].as_str(), trips),
        (Some("recycled"), 2),
        "{end}"
    );
    let (_, d) = server.call("GET", "/devices/31000092", None);
    assert_eq!(
        (d["state"].as_str(), d["reason"].as_str()),
        (Some("available"), Some("recycled")),
        "{d}"
    );
    assert_eq!(
        verify_pin(&mut card, "123456"),
        vec![0x90, 0x00],
        "factory PIN"
    );
    for tag in [
        keyward_card::piv::object::AUTHENTICATION_CERT,
        keyward_card::piv::object::CHUID,
    ] {
        let r = card.transmit(&keyward_card::piv::get_data(tag).to_bytes());
        assert!(r.ends_with(&[0x6A, 0x82]), "object {tag:06X} deleted");
    }
    // Factory PUK again.
    let r = card.transmit(
        &keyward_card::piv::change_reference_data(0x81, b"12345678", b"12345678")
            .unwrap()
            .to_bytes(),
    );
    assert_eq!(r, vec![0x90, 0x00]);
    // A new issuance starts from factory values and ends Issued.
    let (s, batch) = server.call("POST", "/issuance", Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000092", "pin": "582039" })));
    assert_eq!(s, 201, "{batch}");
    let id = batch["session_id"].as_str().unwrap().to_string();
    let (end, _) = run_answering(&server, &mut card, &id, batch, &[]);
    assert_eq!(end["state"], "issued", "{end}");
    // A recycled device can be recycled only when it is no longer issued;
    // an available device Keyward never had a session with has nothing to recycle.
    let (s, v) = server.call(
        "POST",
        "/devices",
        Some(json!({ "device_type": "c4000", "serial": "31000093" })),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = server.call("POST", "/devices/31000093/recycle", None);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("nothing_to_recycle")),
        "{v}"
    );
}

/// "Enable issuance retry for user": a user may retry their own failed
/// issuance only when it is on (operators always may); they follow and
/// relay their own session, never another user's.
#[test]
fn users_retry_their_own_failed_issuance_only_when_the_setting_is_on() {
    let server = TestServer::start();
    support::seed_piv_standard(&server, "31000120");
    assert_eq!(server.call("POST", "/users", Some(json!({ "login": "bob", "display_name": "Bob Baker", "upn": "bob@example.com", "email": "bob@example.com" }))).0, 201);
    let (s, v) = server.call(
        "POST",
        "/devices",
        Some(
            json!({ "device_type": "yubikey5", "serial": "31000121", "firmware_version": "5.7.1" }),
        ),
    );
    assert_eq!(s, 201, "{v}");
    let ca_dir = tempfile::tempdir().unwrap();
    let mut card = VirtualCard::new(
        VcardConfig::new(ProfileKind::Yubikey5)
            .with_serial(31000120)
            .with_ca_dir(ca_dir.path()),
    )
    .unwrap();
    card.power_on();
    let (s, batch) = server.call("POST", "/issuance", Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000120", "pin": "735194" })));
    assert_eq!(s, 201, "{batch}");
    let id = batch["session_id"].as_str().unwrap().to_string();
    fail_at(&server, &mut card, &id, batch, 2, 3);
    // bob's failed session on another device (the card in the reader is not it).
    let (s, batch) = server.call("POST", "/issuance", Some(json!({ "user": "bob", "policy": "PIV Standard", "serial": "31000121", "pin": "735194" })));
    assert_eq!(s, 201, "{batch}");
    let bobs = batch["session_id"].as_str().unwrap().to_string();
    let (s, v) = server.call("POST", &format!("/issuance/{bobs}/relay"), Some(json!({ "protocol": 1, "session_id": bobs, "seq": 1, "responses": relay(&mut card, &batch) })));
    assert_eq!((s, v["state"].as_str()), (200, Some("failed")), "{v}");

    let alice = sign_in_user(&server, "alice");
    let (s, st) = call_as_user(&server, &alice, "GET", &format!("/issuance/{id}"), None);
    assert_eq!(
        (s, st["status"].as_str()),
        (200, Some("failed")),
        "alice sees her session: {st}"
    );
    let (s, _) = call_as_user(&server, &alice, "GET", &format!("/issuance/{bobs}"), None);
    // Not hers: the same 404 as a session that does not exist (issue 15).
    assert_eq!(s, 404, "not bob's");
    // Off (the default): refused, and nothing changes.
    let (s, v) = call_as_user(
        &server,
        &alice,
        "POST",
        &format!("/issuance/{id}/retry"),
        None,
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("retry_not_enabled_for_users")),
        "{v}"
    );
    let (_, st) = server.call("GET", &format!("/issuance/{id}"), None);
    assert_eq!(st["status"], "failed");
    put_setting(&server, "enable_issuance_retry_for_user", "yes");
    let (s, v) = call_as_user(
        &server,
        &alice,
        "POST",
        &format!("/issuance/{bobs}/retry"),
        None,
    );
    assert_eq!(s, 403, "never another user's session: {v}");
    let (s, batch) = call_as_user(
        &server,
        &alice,
        "POST",
        &format!("/issuance/{id}/retry"),
        None,
    );
    assert_eq!(
        (s, batch["state"].as_str()),
        (200, Some("running")),
        "{batch}"
    );
    // A person never posts device responses (issue 15): the client that
    // relays the device does, here the creator's (the operator's).
    let responses = relay(&mut card, &batch);
    let (s, refused) = call_as_user(
        &server,
        &alice,
        "POST",
        &format!("/issuance/{id}/relay"),
        Some(
            json!({ "protocol": 1, "session_id": id, "seq": batch["seq"], "responses": responses }),
        ),
    );
    assert_eq!(
        (s, refused["error"]["code"].as_str()),
        (403, Some("answers_only")),
        "{refused}"
    );
    let (s, next) = server.call(
        "POST",
        &format!("/issuance/{id}/relay"),
        Some(
            json!({ "protocol": 1, "session_id": id, "seq": batch["seq"], "responses": responses }),
        ),
    );
    assert_eq!(s, 200, "{next}");
    let (end, _) = run_answering(&server, &mut card, &id, next, &[]);
    assert_eq!(end["state"], "issued", "{end}");
    assert_eq!(verify_pin(&mut card, "735194"), vec![0x90, 0x00]);
    // Operators retry whatever the setting.
    put_setting(&server, "enable_issuance_retry_for_user", "no");
    let (s, v) = server.call("POST", &format!("/issuance/{bobs}/retry"), None);
    assert_eq!(s, 200, "{v}");
}

/// YubiKey attestation: ATTEST rides in batch 2 with GENERATE; each key's
/// attestation is verified against the configured roots (here the virtual
/// manufacturer CA) before the key is certified and recorded in the audit
/// trail. Under "Require device attestation", a device whose attestation
/// does not chain to a trusted root fails before anything is certified.
#[test]
fn yubikey_attestation_is_verified_before_certifying() {
    let ca_dir = tempfile::tempdir().unwrap();
    let mut card = VirtualCard::new(
        VcardConfig::new(ProfileKind::Yubikey5)
            .with_serial(31000130)
            .with_ca_dir(ca_dir.path()),
    )
    .unwrap();
    card.power_on();
    let root = ca_dir.path().join("ca-cert.pem");
    assert!(root.exists(), "the virtual manufacturer CA root");
    let conf_dir = tempfile::tempdir().unwrap();
    let config = conf_dir.path().join("keyward.toml");
    std::fs::write(
        &config,
        format!("attestation_roots = [{:?}]\n", root.display().to_string()),
    )
    .unwrap();
    let server = TestServer::start_with(support::ServerOptions {
        args: vec!["--config".into(), config.display().to_string()],
        ..Default::default()
    });
    support::seed_piv_standard(&server, "31000130");
    // The policy's own switch (issue 15): on.
    set_attestation(&server, true);
    let (s, batch) = server.call("POST", "/issuance", Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000130", "pin": "735194" })));
    assert_eq!(s, 201, "{batch}");
    let id = batch["session_id"].as_str().unwrap().to_string();
    let (end, trips) = run_answering(&server, &mut card, &id, batch, &[]);
    assert_eq!((end["state"].as_str(), trips), (Some("issued"), 3), "{end}");
    let (_, events) = server.call("GET", "/audit?limit=1000", None);
    let all = events
        .as_array()
        .or_else(|| events["events"].as_array())
        .or_else(|| events["items"].as_array())
        .unwrap_or_else(|| panic!("{events}"));
    let attested: Vec<&Value> = all
        .iter()
        .filter(|e| e["action"] == "issuance.attestation")
        .collect();
    assert_eq!(attested.len(), 1, "{events}");
    let keys = attested[0]["details"]["slots"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(keys.iter().all(|k| k["attested"] == true), "{keys:?}");

    // Another server trusts no root: required attestation fails the attempt
    // before any certificate is issued.
    let other = TestServer::start();
    support::seed_piv_standard(&other, "31000131");
    set_attestation(&other, true);
    let ca2 = tempfile::tempdir().unwrap();
    let mut card2 = VirtualCard::new(
        VcardConfig::new(ProfileKind::Yubikey5)
            .with_serial(31000131)
            .with_ca_dir(ca2.path()),
    )
    .unwrap();
    card2.power_on();
    let (s, batch) = other.call("POST", "/issuance", Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000131", "pin": "735194" })));
    assert_eq!(s, 201, "{batch}");
    let id = batch["session_id"].as_str().unwrap().to_string();
    let (end, _) = run_answering(&other, &mut card2, &id, batch, &[]);
    assert_eq!(end["state"], "failed", "{end}");
    let (_, st) = other.call("GET", &format!("/issuance/{id}"), None);
    assert_eq!(st["error"]["code"], "attestation_failed", "{st}");
    assert_eq!(st["error"]["step"], "attest key 9A", "{st}");
    assert!(
        st["credentials"].as_array().unwrap().is_empty(),
        "nothing certified: {st}"
    );
    // Not required: the same device is issued, its keys recorded unattested.
    set_attestation(&other, false);
    card2.power_on();
    let (s, batch) = other.call("POST", &format!("/issuance/{id}/retry"), None);
    assert_eq!(s, 200, "{batch}");
    let (end, _) = run_answering(&other, &mut card2, &id, batch, &[]);
    assert_eq!(end["state"], "issued", "{end}");
    let (_, events) = other.call("GET", "/audit?limit=1000", None);
    let text = events.to_string();
    assert!(text.contains("\"attested\":false"), "recorded unattested");
}

/// Sets PIV Standard's "Require device attestation".
fn set_attestation(server: &TestServer, on: bool) {
    let (_, mut p) = server.call("GET", "/policies/PIV%20Standard", None);
    p["require_device_attestation"] = json!(on);
    let (s, v) = server.call("PUT", "/policies/PIV%20Standard", Some(p));
    assert_eq!(s, 200, "{v}");
}

/// Relays one batch, CTAP messages included (over ISO 7816, as on a C4000).
fn relay_with_ctap(card: &mut VirtualCard, batch: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for c in batch["commands"].as_array().unwrap() {
        if c["channel"] == "ctap" {
            let msg = hex::decode(c["bytes"].as_str().unwrap()).unwrap();
            let mut select = vec![0x00, 0xA4, 0x04, 0x00, 0x08];
            select.extend_from_slice(&[0xA0, 0x00, 0x00, 0x06, 0x47, 0x2F, 0x00, 0x01]);
            assert!(card.transmit(&select).ends_with(&[0x90, 0x00]));
            let mut apdu = vec![0x80, 0x10, 0x80, 0x00, msg.len() as u8];
            apdu.extend_from_slice(&msg);
            apdu.push(0);
            let r = card.transmit(&apdu);
            let (data, sw) = r.split_at(r.len() - 2);
            out.push(json!({ "data": hex::encode(data), "sw": hex::encode(sw) }));
            continue;
        }
        let one = json!({ "commands": [c] });
        out.extend(relay(card, &one));
        if !c["expect"]
            .as_array()
            .unwrap()
            .contains(&out.last().unwrap()["sw"])
        {
            break;
        }
    }
    out
}

/// Recycle of a device whose policy used FIDO: after the PIV wipe the
/// person is asked to reinsert and touch the device; declining fails the
/// recycle with declined_by_person (the device record unchanged); a second
/// recycle, confirmed, resets FIDO (authenticatorReset within seconds of the
/// reinsertion) and the device is Available.
#[test]
fn a_fido_reset_asks_to_reinsert_and_touch_and_a_decline_is_declined_by_person() {
    let server = TestServer::start();
    support::seed_piv_standard(&server, "31000140");
    let (s, v) = server.call(
        "POST",
        "/devices",
        Some(json!({ "device_type": "c4000", "serial": "31000141" })),
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
    let ca_dir = tempfile::tempdir().unwrap();
    let mut card = VirtualCard::new(
        VcardConfig::new(ProfileKind::C4000)
            .with_serial(31000141)
            .with_ca_dir(ca_dir.path()),
    )
    .unwrap();
    card.power_on();
    let (s, batch) = server.call("POST", "/issuance", Some(json!({ "user": "alice", "policy": "PIV + Passkey", "serial": "31000141", "pin": "735194" })));
    assert_eq!(s, 201, "{batch}");
    let id = batch["session_id"].as_str().unwrap().to_string();
    fail_at(&server, &mut card, &id, batch, 2, 4);

    let mut recycle_until_prompt = || {
        let (s, mut batch) = server.call("POST", "/devices/31000141/recycle", None);
        assert_eq!(s, 201, "{batch}");
        let rid = batch["session_id"].as_str().unwrap().to_string();
        while !batch["commands"].as_array().unwrap().is_empty() {
            let responses = relay(&mut card, &batch);
            let (s, next) = server.call("POST", &format!("/issuance/{rid}/relay"), Some(json!({ "protocol": 1, "session_id": rid, "seq": batch["seq"], "responses": responses })));
            assert_eq!(s, 200, "{next}");
            batch = next;
        }
        (rid, batch)
    };
    let (rid, prompt) = recycle_until_prompt();
    let kinds: Vec<&str> = prompt["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["reinsert_device", "confirm_touch"], "{prompt}");
    let (s, end) = server.call("POST", &format!("/issuance/{rid}/relay"), Some(json!({ "protocol": 1, "session_id": rid, "seq": prompt["seq"], "responses": [], "answers": { "reinsert_device": "done", "confirm_touch": "false" } })));
    assert_eq!((s, end["state"].as_str()), (200, Some("failed")), "{end}");
    let (_, st) = server.call("GET", &format!("/issuance/{rid}"), None);
    assert_eq!(st["error"]["code"], "declined_by_person", "{st}");
    let (_, d) = server.call("GET", "/devices/31000141", None);
    assert_eq!(
        (d["state"].as_str(), d["reason"].as_str()),
        (Some("produced"), Some("unassigned")),
        "{d}"
    );

    // Again, confirmed: the device is reinserted (powered up) and touched.
    let (rid, prompt) = recycle_until_prompt();
    card.power_on();
    let (s, batch) = server.call("POST", &format!("/issuance/{rid}/relay"), Some(json!({ "protocol": 1, "session_id": rid, "seq": prompt["seq"], "responses": [], "answers": { "reinsert_device": "done", "confirm_touch": "true" } })));
    assert_eq!(s, 200, "{batch}");
    assert_eq!(batch["commands"][0]["channel"], "ctap", "{batch}");
    assert_eq!(batch["prompts"][0]["kind"], "touch_device");
    let responses = relay_with_ctap(&mut card, &batch);
    let (s, end) = server.call("POST", &format!("/issuance/{rid}/relay"), Some(json!({ "protocol": 1, "session_id": rid, "seq": batch["seq"], "responses": responses })));
    assert_eq!((s, end["state"].as_str()), (200, Some("recycled")), "{end}");
    let (_, d) = server.call("GET", "/devices/31000141", None);
    assert_eq!(
        (d["state"].as_str(), d["reason"].as_str()),
        (Some("available"), Some("recycled")),
        "{d}"
    );
}
