//! Add Device for a user through the API, with the batches relayed to an
//! in-process virtual device the way a client does: the device ends Issued,
//! its certificates chain to the CA the server serves, and replayed or
//! out-of-order results are refused.

mod support;

use keyward_vcard::{Firmware, ProfileKind, VcardConfig, VirtualCard};
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

fn relay(card: &mut VirtualCard, batch: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for c in batch["commands"].as_array().unwrap() {
        assert_eq!(c["channel"], "piv");
        let apdu = hex::decode(c["bytes"].as_str().unwrap()).unwrap();
        let mut resp = card.transmit(&apdu);
        let mut data = resp[..resp.len() - 2].to_vec();
        let mut sw = u16::from_be_bytes([resp[resp.len() - 2], resp[resp.len() - 1]]);
        while sw >> 8 == 0x61 {
            resp = card.transmit(&[0x00, 0xC0, 0x00, 0x00, (sw & 0xFF) as u8]);
            data.extend_from_slice(&resp[..resp.len() - 2]);
            sw = u16::from_be_bytes([resp[resp.len() - 2], resp[resp.len() - 1]]);
        }
        let sw_hex = format!("{sw:04x}");
        let expected = c["expect"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == &json!(sw_hex));
        out.push(json!({ "data": hex::encode(&data), "sw": sw_hex }));
        if !expected {
            break;
        }
    }
    out
}

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
    let url = match std::env::var("KEYWARD_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => u,
        _ if std::env::var_os("CI").is_some() => {
            panic!("CI is set but KEYWARD_TEST_POSTGRES_URL is not")
        }
        _ => {
            eprintln!("SKIPPED: set KEYWARD_TEST_POSTGRES_URL to run against PostgreSQL");
            return;
        }
    };
    let name = format!("kw_durable_{}", support::uuid_like());
    let out = std::process::Command::new("psql")
        .arg(&url)
        .arg("-c")
        .arg(format!("CREATE DATABASE {name}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db = format!("{}/{name}", url.rsplit_once('/').unwrap().0);
    let kek = "a2V5d2FyZC1zaGFyZWQta2VrLWZvci10d28tbm9kZXM="; // 32 bytes, both nodes
    let opts = || support::ServerOptions {
        database_url: Some(db.clone()),
        extra_env: vec![("KEYWARD_KEK".into(), kek.into())],
        ..Default::default()
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
