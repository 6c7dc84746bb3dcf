//! `keyward issue` end to end: a virtual YubiKey on pcscd through vpcd,
//! `keyward serve`, and the CLI relaying the server's batches over real
//! PC/SC. Then tools nobody here wrote check the device: pkcs11-tool signs
//! with the PIN set during issuance, openssl verifies the signature with the
//! certificate on the card and the certificate against the CA the server
//! serves, and yubico-piv-tool shows the policy's retry counts.

use crate::common::pcsc;
use crate::support;

use pcsc::{run, run_ok, Vcard, OPENSC_PKCS11};
use support::TestServer;

fn issue(server: &TestServer, args: &[&str]) -> std::process::Output {
    std::process::Command::new(support::BIN)
        .arg("issue")
        .args(["--server", &server.url, "--token", &server.token])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn keyward_issue_personalises_a_yubikey_over_pcsc_that_third_party_tools_accept() {
    let _lock = pcsc::lock();
    pcsc::ensure_pcscd();
    let card = Vcard::spawn(&[
        "--profile",
        "yubikey5",
        "--firmware",
        "5.7.1",
        "--serial",
        "31000011",
    ]);
    let server = TestServer::start();
    support::seed_piv_standard(&server, "31000011");
    let answers = card.path("answers.toml");
    std::fs::write(&answers, "pin = \"735194\"\n").unwrap();

    // A policy that does not exist: refused before the device is touched (exit 3).
    let out = issue(
        &server,
        &[
            "--user",
            "alice",
            "--policy",
            "Nope",
            "--serial",
            "31000011",
            "--answers",
            answers.to_str().unwrap(),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = issue(
        &server,
        &[
            "--user",
            "alice",
            "--policy",
            "PIV Standard",
            "--serial",
            "31000011",
            "--answers",
            answers.to_str().unwrap(),
            "--json",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["state"], "issued");
    assert_eq!(report["serial"], "31000011");
    assert_eq!(report["counters"]["round_trips"], 3, "{report}");
    // Counters per step add up to the totals.
    let steps = report["counters"]["steps"]
        .as_object()
        .expect("counters per step");
    assert!(steps.len() >= 3, "{report}");
    for key in ["apdus", "bytes_out", "bytes_in"] {
        let sum: u64 = steps.values().map(|s| s[key].as_u64().unwrap()).sum();
        assert_eq!(
            sum,
            report["counters"][key].as_u64().unwrap(),
            "{key}: {report}"
        );
    }
    assert_eq!(report["credentials"].as_array().unwrap().len(), 2);
    assert!(!stdout.contains("735194") && !String::from_utf8_lossy(&out.stderr).contains("735194"));

    // pkcs11-tool signs with the PIV Authentication key and the new PIN,
    // and openssl verifies it with the certificate read from the card.
    let cert = pcsc::pkcs11_signs_and_openssl_verifies(card.dir.path(), "735194");
    // The certificate chains to the CA the server serves and names the user.
    let chain = card.path("chain.pem");
    std::fs::write(
        &chain,
        server
            .client()
            .get(format!("{}/pki/ca/chain.pem", server.url))
            .send()
            .unwrap()
            .bytes()
            .unwrap(),
    )
    .unwrap();
    let ok = run_ok(
        "openssl",
        &[
            "verify",
            "-CAfile",
            chain.to_str().unwrap(),
            cert.to_str().unwrap(),
        ],
    );
    assert!(ok.contains(": OK"), "{ok}");
    let text = run_ok(
        "openssl",
        &["x509", "-in", cert.to_str().unwrap(), "-noout", "-text"],
    );
    assert!(text.contains("alice@example.com"), "{text}");

    // The factory PIN no longer works; the policy's retry counts are set.
    let wrong = run(
        "pkcs11-tool",
        &[
            "--module",
            OPENSC_PKCS11,
            "--login",
            "--pin",
            "123456",
            "--list-objects",
        ],
    );
    assert!(!wrong.status.success(), "the factory PIN must be refused");
    let status = run_ok("yubico-piv-tool", &["-r", "Virtual", "-a", "status"]);
    assert!(status.contains("Serial Number:\t31000011"), "{status}");
    let (_, device) = server.call("GET", "/devices/31000011", None);
    assert_eq!(device["state"], "issued");

    // --cancel acts on failed sessions only, and says why it refuses.
    let session = report["session_id"].as_str().unwrap();
    let out = issue(&server, &["--cancel", session]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("session_not_failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A first attempt stops when the device goes away (the relay reports the
/// transport error); `keyward issue --retry` finishes the session on the same
/// device, which ends Issued with the PIN of the first attempt.
#[test]
fn keyward_issue_retry_finishes_a_failed_session() {
    let _lock = pcsc::lock();
    pcsc::ensure_pcscd();
    let card = Vcard::spawn(&[
        "--profile",
        "yubikey5",
        "--firmware",
        "5.7.1",
        "--serial",
        "31000012",
    ]);
    let server = TestServer::start();
    support::seed_piv_standard(&server, "31000012");
    let (s, batch) = server.call(
        "POST",
        "/issuance",
        Some(serde_json::json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000012", "pin": "735194" })),
    );
    assert_eq!(s, 201, "{batch}");
    let id = batch["session_id"].as_str().unwrap().to_string();
    // Relay only the first command over PC/SC, then report the device gone.
    let pcsc_ctx = keyward_transport::pcsc::Pcsc::establish().unwrap();
    let reader = pcsc_ctx
        .readers()
        .unwrap()
        .into_iter()
        .find(|r| r.card_present)
        .expect("a reader with the card")
        .name;
    let mut t = pcsc_ctx.connect(&reader).unwrap();
    let first = hex::decode(batch["commands"][0]["bytes"].as_str().unwrap()).unwrap();
    let r = keyward_transport::apdu::transmit_one(&mut t, &first).unwrap();
    drop(t);
    let result = serde_json::json!({
        "protocol": 1, "session_id": id, "seq": batch["seq"],
        "responses": [{ "data": hex::encode(&r.data), "sw": format!("{:04x}", r.sw) }],
        "transport_error": "device_removed",
    });
    let (s, failed) = server.call("POST", &format!("/issuance/{id}/relay"), Some(result));
    assert_eq!(
        (s, failed["state"].as_str()),
        (200, Some("failed")),
        "{failed}"
    );

    let out = issue(&server, &["--retry", &id, "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["state"], "issued", "{report}");
    let ok = run_ok(
        "pkcs11-tool",
        &[
            "--module",
            OPENSC_PKCS11,
            "--login",
            "--pin",
            "735194",
            "--list-objects",
        ],
    );
    assert!(ok.contains("Certificate Object"), "{ok}");
    drop(card);
}

/// Issue 14: `keyward issue --replaces OLD --reason damaged` on pcscd: the
/// old device's incident is declared as the session starts, the new device
/// gets the old one's policy (no `--policy`), and the old device is
/// terminated when the new one is issued.
#[test]
fn keyward_issue_replaces_a_damaged_device_with_its_policy() {
    let _lock = pcsc::lock();
    pcsc::ensure_pcscd();
    let server = TestServer::start();
    support::seed_piv_standard(&server, "31000013");
    let (s, v) = server.call(
        "POST",
        "/devices",
        Some(serde_json::json!({ "device_type": "yubikey5", "serial": "31000014", "firmware_version": "5.7.1" })),
    );
    assert_eq!(s, 201, "{v}");
    let old = Vcard::spawn(&[
        "--profile",
        "yubikey5",
        "--firmware",
        "5.7.1",
        "--serial",
        "31000013",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let answers = dir.path().join("answers.toml");
    std::fs::write(&answers, "pin = \"735194\"\n").unwrap();
    let answers = answers.to_str().unwrap().to_string();
    let out = issue(
        &server,
        &[
            "--user",
            "alice",
            "--policy",
            "PIV Standard",
            "--serial",
            "31000013",
            "--answers",
            &answers,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", support::stderr(&out));
    drop(old);
    let new = Vcard::spawn(&[
        "--profile",
        "yubikey5",
        "--firmware",
        "5.7.1",
        "--serial",
        "31000014",
    ]);
    // --reason goes with --replaces only, and names an incident.
    let out = issue(
        &server,
        &[
            "--user", "alice", "--serial", "31000014", "--reason", "damaged",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", support::stderr(&out));
    let out = issue(
        &server,
        &[
            "--user",
            "alice",
            "--serial",
            "31000014",
            "--replaces",
            "31000013",
            "--reason",
            "broken",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", support::stderr(&out));
    let out = issue(
        &server,
        &[
            "--user",
            "alice",
            "--serial",
            "31000014",
            "--replaces",
            "31000013",
            "--reason",
            "damaged",
            "--answers",
            &answers,
            "--json",
        ],
    );
    let stdout = support::stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        support::stderr(&out)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["state"], "issued", "{report}");
    let (_, d) = server.call("GET", "/devices/31000013", None);
    assert_eq!(d["state"], "terminated", "{d}");
    let moves: Vec<(String, String)> = d["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["to_state"].as_str().unwrap().to_string(),
                h["to_reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(
        moves.ends_with(&[
            ("invalid".into(), "damaged".into()),
            ("terminated".into(), String::new())
        ]),
        "{moves:?}"
    );
    let (_, d) = server.call("GET", "/devices/31000014", None);
    assert_eq!(d["state"], "issued");
    assert_eq!(d["replacement"]["reason"], "damaged", "{d}");
    let (_, policy) = server.call("GET", "/policies/PIV%20Standard", None);
    assert_eq!(d["device_policy"], policy["id"], "the old device's policy");
    drop(new);
}
