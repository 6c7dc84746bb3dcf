//! Revocation that relying parties see (issue 13): a device moved by a
//! person through the lifecycle service has its certificates revoked, held
//! or released in the same transaction, with the RFC 5280 reason, and the
//! issuing CA's CRL (read with `openssl crl`) shows it at once, on SQLite
//! and on PostgreSQL. The engine's own moves are refused on the state route.
//!
//! After issuance, part 1 (issue 14): Declare incident, Suspend / Resume,
//! Restore, Terminate and Replace Device (permanent and temporary) as
//! actions of their own, each proven by `openssl ocsp` against the served
//! responder, with every refusal (wrong state, wrong role, version
//! conflict, someone else's device) changing nothing.

use crate::common::self_service;
use crate::support;

use keyward_vcard::{Firmware, ProfileKind, VcardConfig, VirtualCard};
use serde_json::{json, Value};
use support::{openssl, TestServer};

/// Issues a YubiKey to alice with the seeded PIV Standard policy (the
/// device is added to the inventory unless it is there); answers the
/// certificates' serials (hex, as the CRL lists them).
fn issue(server: &TestServer, serial: &str) -> Vec<String> {
    serials(&issue_with(
        server,
        serial,
        json!({ "policy": "PIV Standard" }),
    ))
}

fn serials(certificates: &[Value]) -> Vec<String> {
    certificates
        .iter()
        .map(|c| c["serial"].as_str().unwrap().to_uppercase())
        .collect()
}

/// [`issue`] with more of the start request (`replaces`, …); answers the
/// certificates as the session lists them.
fn issue_with(server: &TestServer, serial: &str, extra: Value) -> Vec<Value> {
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
    let mut start = json!({ "user": "alice", "serial": serial, "pin": "735194" });
    for (k, v) in extra.as_object().unwrap() {
        start[k] = v.clone();
    }
    let (s, mut batch) = server.call("POST", "/issuance", Some(start));
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
        .cloned()
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
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("issuing.crl"),
        server.fetch("/pki/crl/issuing.crl"),
    )
    .unwrap();
    let (ok, text) = openssl(
        dir.path(),
        &[
            "crl",
            "-inform",
            "DER",
            "-noout",
            "-text",
            "-in",
            "issuing.crl",
        ],
    );
    assert!(ok, "{text}");
    text
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

/// The CA files an OCSP client needs: the issuing CA and root (PEM) and
/// the chain.
fn ca_files(server: &TestServer, dir: &std::path::Path) {
    for f in ["issuing.pem", "chain.pem", "root.pem"] {
        std::fs::write(dir.join(f), server.fetch(&format!("/pki/ca/{f}"))).unwrap();
    }
}

/// `openssl ocsp` asks the server about `serial` (hex) with a nonce and
/// verifies the answer against the chain; answers its report.
fn ocsp(server: &TestServer, serial: &str, issuer: &str) -> String {
    ocsp_with(server, serial, issuer, &[])
}

fn ocsp_with(server: &TestServer, serial: &str, issuer: &str, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    ca_files(server, dir.path());
    let serial = format!("0x{serial}");
    let url = format!("{}/pki/ocsp", server.url);
    let mut args = vec!["ocsp"];
    args.extend(extra);
    args.extend([
        "-issuer",
        issuer,
        "-serial",
        &serial,
        "-url",
        &url,
        "-CAfile",
        "chain.pem",
    ]);
    openssl(dir.path(), &args).1
}

pub(crate) fn ocsp_says(server: &TestServer, serial: &str) -> String {
    let report = ocsp(server, serial, "issuing.pem");
    assert!(report.contains("Response verify OK"), "{report}");
    assert!(!report.contains("WARNING"), "the nonce is echoed: {report}");
    let line = report
        .lines()
        .find(|l| {
            l.to_uppercase()
                .starts_with(&format!("0X{}:", serial.to_uppercase()))
        })
        .unwrap_or_else(|| panic!("{report}"));
    let status = line.split(':').nth(1).unwrap().trim().to_string();
    match report.lines().find(|l| l.trim().starts_with("Reason:")) {
        Some(r) => format!("{status} {}", r.trim().trim_start_matches("Reason:").trim()),
        None => status,
    }
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
    assert_eq!(ocsp_says(server, &stolen[0]), "revoked keyCompromise");
    // A CertID hashed with SHA-256 is answered too.
    let report = ocsp_with(server, &stolen[1], "issuing.pem", &["-sha256"]);
    assert!(
        report.contains("Response verify OK") && report.contains(": revoked"),
        "{report}"
    );

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
    assert_eq!(
        ocsp_says(server, &forgotten[1]),
        "revoked cessationOfOperation"
    );
    // A serial the CA never issued; a CertID of another issuer.
    assert_eq!(ocsp_says(server, "0BADC0DE"), "unknown");
    let report = ocsp(server, &stolen[0], "root.pem");
    assert!(report.contains("unauthorized"), "{report}");
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
    if let Some(server) = support::postgres_server("revocation") {
        lifecycle(&server);
    }
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

#[test]
fn a_revocation_on_one_node_is_in_the_other_node_s_crl_and_ocsp_within_a_second() {
    let Some(node) = support::shared_postgres_nodes("revocation_nodes") else {
        eprintln!("KEYWARD_TEST_POSTGRES_URL not set: skipped");
        return;
    };
    let a = TestServer::start_with(node());
    let b = TestServer::start_with(node());
    support::seed_piv_standard(&a, "31000111");
    let certs = issue(&a, "31000111");
    // Node B has signed its CRL (and cached it) before the revocation.
    assert!(listed_reason(&crl_text(&b), &certs[0]).is_none());
    assert_eq!(ocsp_says(&b, &certs[0]), "good");
    let (s, v) = move_device(&a, "31000111", "invalid", Some("lost"));
    assert_eq!(s, 200, "{v}");
    let revoked = std::time::Instant::now();
    let seen = loop {
        let crl = crl_text(&b);
        if listed_reason(&crl, &certs[0]).as_deref() == Some("Key Compromise") {
            break revoked.elapsed();
        }
        assert!(
            revoked.elapsed() < std::time::Duration::from_secs(1),
            "node B's CRL still lacks the revocation after 1 s: {crl}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    eprintln!("revocation on node A seen in node B's CRL after {seen:?}");
    assert_eq!(ocsp_says(&b, &certs[0]), "revoked keyCompromise");
}

#[test]
fn ocsp_answers_get_requests_and_refuses_garbage() {
    let server = TestServer::start();
    support::seed_piv_standard(&server, "31000121");
    let certs = issue(&server, "31000121");
    let dir = tempfile::tempdir().unwrap();
    ca_files(&server, dir.path());
    // A request made by openssl, sent base64 in the URL (RFC 6960 A.1).
    let serial = format!("0x{}", certs[0]);
    let (ok, text) = openssl(
        dir.path(),
        &[
            "ocsp",
            "-no_nonce",
            "-issuer",
            "issuing.pem",
            "-serial",
            &serial,
            "-reqout",
            "req.der",
        ],
    );
    assert!(ok, "{text}");
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(dir.path().join("req.der")).unwrap());
    let url_safe: String = b64
        .chars()
        .map(|c| match c {
            '+' => "%2B".to_string(),
            '/' => "%2F".to_string(),
            '=' => "%3D".to_string(),
            c => c.to_string(),
        })
        .collect();
    let resp = server
        .client()
        .get(format!("{}/pki/ocsp/{url_safe}", server.url))
        .send()
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/ocsp-response");
    std::fs::write(dir.path().join("resp.der"), resp.bytes().unwrap()).unwrap();
    let (_, report) = openssl(
        dir.path(),
        &[
            "ocsp",
            "-respin",
            "resp.der",
            "-issuer",
            "issuing.pem",
            "-serial",
            &serial,
            "-CAfile",
            "chain.pem",
        ],
    );
    assert!(report.contains("Response verify OK"), "{report}");
    assert!(report.contains(": good"), "{report}");
    // Not an OCSP request: malformedRequest, unsigned.
    let garbage = server
        .client()
        .post(format!("{}/pki/ocsp", server.url))
        .body(vec![1u8, 2, 3])
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(garbage.as_ref(), &[0x30, 0x03, 0x0A, 0x01, 0x01]);
}

#[test]
fn the_root_crl_covers_the_issuing_ca_whose_certificate_names_it() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    ca_files(&server, dir.path());
    std::fs::write(
        dir.path().join("root.crl"),
        server.fetch("/pki/crl/root.crl"),
    )
    .unwrap();
    let run = |args: &[&str]| openssl(dir.path(), args);
    // Signed by the root.
    let (ok, text) = run(&[
        "crl", "-inform", "DER", "-in", "root.crl", "-CAfile", "root.pem", "-noout",
    ]);
    assert!(ok && text.contains("verify OK"), "{text}");
    // The issuing CA's certificate names it, and checks out against it.
    let (_, text) = run(&["x509", "-in", "issuing.pem", "-noout", "-text"]);
    assert!(
        text.contains(&format!("URI:{}/pki/crl/root.crl", server.url)),
        "{text}"
    );
    let (ok, _) = run(&[
        "crl",
        "-inform",
        "DER",
        "-in",
        "root.crl",
        "-out",
        "root-crl.pem",
    ]);
    assert!(ok);
    let (ok, text) = run(&[
        "verify",
        "-crl_check",
        "-CAfile",
        "root.pem",
        "-CRLfile",
        "root-crl.pem",
        "issuing.pem",
    ]);
    assert!(ok && text.contains("issuing.pem: OK"), "{text}");
}

#[test]
fn bad_urls_lists_certificates_that_relying_parties_cannot_check() {
    let server = TestServer::start();
    support::seed_piv_standard(&server, "31000131");
    let certs = issue(&server, "31000131");
    // This test server's public address is loopback: no other machine can
    // reach its CRL or OCSP responder.
    let out = server.admin(&["report", "bad-urls", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", support::stderr(&out));
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    // Per certificate: the CRL distribution point, OCSP and caIssuers.
    assert_eq!(rows.len(), 3 * certs.len(), "{rows:?}");
    assert!(rows.iter().all(|r| r["problem"] == "loopback"), "{rows:?}");
    assert!(rows
        .iter()
        .any(|r| r["url"].as_str().unwrap().ends_with("/pki/ocsp")));
    assert!(rows.iter().all(|r| r["device"] == "31000131"));
    // Jobs from the CLI: no revocation pending here (the daily renewal
    // scan is always scheduled).
    let out = server.admin(&["job", "list", "--json"]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let jobs: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        jobs.as_array()
            .unwrap()
            .iter()
            .all(|j| j["kind"] == "renewal_scan"),
        "{jobs}"
    );
}

/// The server on SQLite, and on a fresh PostgreSQL database when one is
/// configured (`KEYWARD_TEST_POSTGRES_URL`).
fn on_both(prefix: &str, test: impl Fn(&TestServer)) {
    test(&TestServer::start());
    if let Some(server) = support::postgres_server(prefix) {
        test(&server);
    }
}

#[test]
fn incident_restore_and_terminate_are_actions_of_their_own() {
    on_both("incident_actions", incident_restore_and_terminate);
}

fn incident_restore_and_terminate(server: &TestServer) {
    support::seed_piv_standard(server, "31000141");
    let certs = issue(server, "31000141");
    // From the CLI: forgotten (on hold), restored (released), lost (revoked).
    let out = server.admin(&[
        "device",
        "incident",
        "31000141",
        "--reason",
        "forgotten",
        "--json",
    ]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    assert_eq!(ocsp_says(server, &certs[0]), "revoked certificateHold");
    let out = server.admin(&[
        "device",
        "restore",
        "31000141",
        "--note",
        "found at reception",
    ]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    assert_eq!(ocsp_says(server, &certs[0]), "good");
    // Not an incident reason; a stale version: refused, nothing moves.
    let v = version(server, "31000141");
    let (s, e) = server.call(
        "POST",
        "/devices/31000141/incident",
        Some(json!({ "reason": "recycled", "expected_version": v })),
    );
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (400, Some("reason_not_allowed")),
        "{e}"
    );
    let (s, e) = server.call(
        "POST",
        "/devices/31000141/incident",
        Some(json!({ "reason": "lost", "expected_version": v - 1 })),
    );
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (409, Some("version_conflict")),
        "{e}"
    );
    // Restore takes a forgotten device only.
    let (s, e) = server.call(
        "POST",
        "/devices/31000141/restore",
        Some(json!({ "expected_version": v })),
    );
    assert_eq!(s, 400, "{e}");
    let (s, d) = server.call(
        "POST",
        "/devices/31000141/incident",
        Some(json!({ "reason": "lost", "note": "left on the train", "expected_version": v })),
    );
    assert_eq!((s, d["reason"].as_str()), (200, Some("lost")), "{d}");
    assert_eq!(ocsp_says(server, &certs[0]), "revoked keyCompromise");
    let out = server.admin(&["device", "terminate", "31000141"]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let (_, d) = server.call("GET", "/devices/31000141", None);
    assert_eq!(d["state"], "terminated");
    // Revoked for good before: the reason stays keyCompromise.
    assert_eq!(ocsp_says(server, &certs[0]), "revoked keyCompromise");
}

fn device(server: &TestServer, serial: &str) -> Value {
    let (s, d) = server.call("GET", &format!("/devices/{serial}"), None);
    assert_eq!(s, 200, "{d}");
    d
}

fn act(server: &TestServer, serial: &str, action: &str, extra: Value) -> (u16, Value) {
    let mut body = json!({ "expected_version": version(server, serial) });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    server.call("POST", &format!("/devices/{serial}/{action}"), Some(body))
}

fn code(r: &(u16, Value)) -> (u16, String) {
    (r.0, r.1["error"]["code"].as_str().unwrap_or("").to_string())
}

/// Suspend / Resume, a temporary replacement then Original found, a
/// permanent replacement, and a permanent one while a temporary device is
/// out: each step checked with `openssl ocsp`, each refusal changing nothing.
fn after_issuance(server: &TestServer) {
    support::seed_piv_standard(server, "31000301");
    let a = issue(server, "31000301");

    // Suspend (the CLI): on hold; the device stays issued, marked suspended.
    let out = server.admin(&[
        "device", "suspend", "31000301", "--note", "on leave", "--json",
    ]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let d = device(server, "31000301");
    assert_eq!(
        (d["state"].as_str(), d["suspended"].as_bool()),
        (Some("issued"), Some(true)),
        "{d}"
    );
    assert_eq!(ocsp_says(server, &a[0]), "revoked certificateHold");
    assert_eq!(ocsp_says(server, &a[1]), "revoked certificateHold");
    // Refused, nothing changes: again; forgotten on a suspended device; a stale version.
    let v = version(server, "31000301");
    assert_eq!(
        code(&act(server, "31000301", "suspend", json!({}))),
        (400, "already_suspended".into())
    );
    assert_eq!(
        code(&act(
            server,
            "31000301",
            "incident",
            json!({ "reason": "forgotten" })
        )),
        (400, "device_suspended".into())
    );
    let stale = server.call(
        "POST",
        "/devices/31000301/resume",
        Some(json!({ "expected_version": v - 1 })),
    );
    assert_eq!(code(&stale), (409, "version_conflict".into()));
    assert_eq!(version(server, "31000301"), v);
    assert_eq!(ocsp_says(server, &a[0]), "revoked certificateHold");
    // Resume (the API): valid again.
    let (s, d) = act(server, "31000301", "resume", json!({ "note": "back" }));
    assert_eq!(s, 200, "{d}");
    assert_eq!(d["suspended"], false);
    assert_eq!(ocsp_says(server, &a[0]), "good");
    assert_eq!(
        code(&act(server, "31000301", "resume", json!({}))),
        (400, "not_suspended".into())
    );

    // Replace, temporary: the original is declared forgotten (on hold), the
    // new device lasts the policy's temporary_validity_days (7).
    let (s, v) = server.call(
        "POST",
        "/devices",
        Some(
            json!({ "device_type": "yubikey5", "serial": "31000302", "firmware_version": "5.7.1" }),
        ),
    );
    assert_eq!(s, 201, "{v}");
    let t_certs = issue_with(
        server,
        "31000302",
        json!({ "replaces": "31000301", "replace_reason": "forgotten" }),
    );
    let t = serials(&t_certs);
    let orig = device(server, "31000301");
    assert_eq!(
        (orig["state"].as_str(), orig["reason"].as_str()),
        (Some("invalid"), Some("forgotten"))
    );
    assert_eq!(ocsp_says(server, &a[0]), "revoked certificateHold");
    assert_eq!(ocsp_says(server, &t[0]), "good");
    let temp = device(server, "31000302");
    assert_eq!(temp["replacement"]["reason"], "forgotten", "{temp}");
    let until = time::OffsetDateTime::parse(
        temp["replacement"]["until"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let days = (until - time::OffsetDateTime::now_utc()).whole_hours();
    assert!((7 * 24 - 1..=7 * 24).contains(&days), "{days} hours");
    // Its certificates end with it.
    assert_eq!(t_certs.len(), 2);
    for c in &t_certs {
        let na = time::OffsetDateTime::parse(
            c["not_after"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        assert!(
            (na - until).abs() < time::Duration::hours(1),
            "{na} vs {until}"
        );
    }
    // Its end is a job, due then.
    let (_, jobs) = server.call("GET", "/jobs?device=31000302", None);
    assert!(
        jobs.to_string().contains("expire_temporary_device"),
        "{jobs}"
    );
    // A second temporary device for the same original: refused.
    let (s, v) = server.call(
        "POST",
        "/devices",
        Some(
            json!({ "device_type": "yubikey5", "serial": "31000303", "firmware_version": "5.7.1" }),
        ),
    );
    assert_eq!(s, 201, "{v}");
    let r = server.call(
        "POST",
        "/issuance",
        Some(json!({ "user": "alice", "serial": "31000303", "pin": "735194", "replaces": "31000301", "replace_reason": "forgotten" })),
    );
    assert_eq!(code(&r), (409, "temporary_already_out".into()), "{}", r.1);
    assert_eq!(device(server, "31000303")["state"], "available");
    // Original found: released; the temporary device is terminated, its
    // certificates revoked.
    let out = server.admin(&["device", "restore", "31000301"]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    assert_eq!(ocsp_says(server, &a[0]), "good");
    assert_eq!(device(server, "31000302")["state"], "terminated");
    assert_eq!(ocsp_says(server, &t[0]), "revoked cessationOfOperation");

    // Replace, permanent (the CLI of the issue is `keyward issue --replaces`,
    // tested on pcscd; here the API): lost is declared as the session
    // starts, and the original is terminated when the new device is issued.
    let p = serials(&issue_with(
        server,
        "31000303",
        json!({ "replaces": "31000301", "replace_reason": "lost" }),
    ));
    let orig = device(server, "31000301");
    assert_eq!(orig["state"], "terminated", "{orig}");
    assert_eq!(ocsp_says(server, &a[0]), "revoked keyCompromise");
    assert_eq!(ocsp_says(server, &p[0]), "good");
    let notes: Vec<&str> = orig["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["note"].as_str())
        .collect();
    assert!(notes.contains(&"replaced by device 31000303"), "{notes:?}");

    // A permanent replacement while a temporary device is out ends both.
    for serial in ["31000304", "31000305"] {
        let (s, v) = server.call(
            "POST",
            "/devices",
            Some(
                json!({ "device_type": "yubikey5", "serial": serial, "firmware_version": "5.7.1" }),
            ),
        );
        assert_eq!(s, 201, "{v}");
    }
    let t2 = serials(&issue_with(
        server,
        "31000304",
        json!({ "replaces": "31000303", "replace_reason": "forgotten" }),
    ));
    let p2 = serials(&issue_with(
        server,
        "31000305",
        json!({ "replaces": "31000303", "replace_reason": "stolen" }),
    ));
    assert_eq!(device(server, "31000303")["state"], "terminated");
    assert_eq!(device(server, "31000304")["state"], "terminated");
    assert_eq!(ocsp_says(server, &p[0]), "revoked cessationOfOperation");
    assert_eq!(ocsp_says(server, &t2[0]), "revoked cessationOfOperation");
    assert_eq!(ocsp_says(server, &p2[0]), "good");

    // Refusals of Replace, nothing changes: a reason that is no incident,
    // none, the device itself, someone else's device.
    let r = server.call(
        "POST",
        "/issuance",
        Some(json!({ "user": "alice", "serial": "31000305", "replaces": "31000305", "replace_reason": "lost" })),
    );
    assert_eq!(code(&r), (400, "replaces_itself".into()), "{}", r.1);
    let (s, _) = server.call(
        "POST",
        "/devices",
        Some(
            json!({ "device_type": "yubikey5", "serial": "31000306", "firmware_version": "5.7.1" }),
        ),
    );
    assert_eq!(s, 201);
    for (body, want) in [
        (
            json!({ "replaces": "31000305", "replace_reason": "recycled" }),
            (400, "reason_not_allowed"),
        ),
        (json!({ "replaces": "31000305" }), (400, "reason_required")),
        (
            json!({ "replaces": "31000301", "replace_reason": "lost" }),
            (409, "device_not_users"),
        ),
    ] {
        let mut start = json!({ "user": "alice", "serial": "31000306", "pin": "735194" });
        for (k, v) in body.as_object().unwrap() {
            start[k] = v.clone();
        }
        let r = server.call("POST", "/issuance", Some(start));
        assert_eq!(code(&r), (want.0, want.1.to_string()), "{}", r.1);
    }
    assert_eq!(device(server, "31000306")["state"], "available");
    assert_eq!(device(server, "31000305")["state"], "issued");
    assert_eq!(ocsp_says(server, &p2[0]), "good");

    // Recycle of an issued device is refused and names Terminate.
    let r = server.call("POST", "/devices/31000305/recycle", None);
    assert_eq!(code(&r), (409, "device_not_recyclable".into()));
    assert!(
        r.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("terminate it first"),
        "{}",
        r.1
    );
}

#[test]
fn suspend_resume_replace_and_restore_on_sqlite() {
    let server = TestServer::start();
    after_issuance(&server);
}

#[test]
fn suspend_resume_replace_and_restore_on_postgres() {
    if let Some(server) = support::postgres_server("after_issuance") {
        after_issuance(&server);
    }
}

/// Who may do what: the help desk suspends, declares and replaces; an
/// issuance operator replaces but neither suspends nor declares; a person
/// reports only their own device, lost or stolen only.
#[test]
fn roles_and_a_person_s_own_device() {
    on_both("lifecycle_roles", roles_and_own_device);
}

fn roles_and_own_device(server: &TestServer) {
    support::seed_piv_standard(server, "31000401");
    let mine = issue(server, "31000401");
    let help_desk = server.token_with_role("help_desk");
    let operator = server.token_with_role("issuance_operator");
    let v = version(server, "31000401");
    let body = json!({ "expected_version": v });
    for (token, action, want) in [
        (&operator, "suspend", 403),
        (&operator, "terminate", 403),
        (&operator, "restore", 403),
    ] {
        let (s, e) = server.call_as(
            token,
            "POST",
            &format!("/devices/31000401/{action}"),
            Some(body.clone()),
        );
        assert_eq!(s, want, "issuance_operator {action}: {e}");
        assert_eq!(
            e["error"]["details"]["required_permission"]
                .as_str()
                .map(|p| p.starts_with("devices.")),
            Some(true),
            "{e}"
        );
    }
    let (s, e) = server.call_as(
        &operator,
        "POST",
        "/devices/31000401/incident",
        Some(json!({ "reason": "lost", "expected_version": v })),
    );
    assert_eq!(s, 403, "{e}");
    assert_eq!(version(server, "31000401"), v, "nothing changed");
    // The help desk suspends and resumes.
    let (s, e) = server.call_as(
        &help_desk,
        "POST",
        "/devices/31000401/suspend",
        Some(body.clone()),
    );
    assert_eq!(s, 200, "{e}");
    let (s, e) = server.call_as(
        &help_desk,
        "POST",
        "/devices/31000401/resume",
        Some(json!({ "expected_version": v + 1 })),
    );
    assert_eq!(s, 200, "{e}");
    // Replace needs devices.replace: a person's account has not.
    let user_token = server.token_with_role("user");
    let (s, e) = server.call_as(
        &user_token,
        "POST",
        "/issuance",
        Some(json!({ "user": "alice", "serial": "31000402", "replaces": "31000401", "replace_reason": "lost", "via": "agent" })),
    );
    assert_eq!(s, 403, "{e}");

    // Bob's device, and alice's own account.
    assert_eq!(
        server
            .call(
                "POST",
                "/users",
                Some(json!({ "login": "bob", "display_name": "Bob", "upn": "bob@example.com" }))
            )
            .0,
        201
    );
    let (s, _) = server.call(
        "POST",
        "/devices",
        Some(
            json!({ "device_type": "yubikey5", "serial": "31000403", "firmware_version": "5.7.1" }),
        ),
    );
    assert_eq!(s, 201);
    let alice = self_service::sign_in_user(server, "alice");
    let v = version(server, "31000401");
    for (serial, reason, want) in [
        ("31000401", "damaged", "reason_not_allowed_for_users"),
        ("31000401", "forgotten", "reason_not_allowed_for_users"),
        ("31000403", "lost", "device_not_yours"),
        ("99999999", "lost", "device_not_yours"),
    ] {
        let r = self_service::call_as_user(
            server,
            &alice,
            "POST",
            &format!("/devices/{serial}/incident"),
            Some(json!({ "reason": reason, "expected_version": v })),
        );
        assert_eq!(
            code(&r),
            (403, want.to_string()),
            "{serial} {reason}: {}",
            r.1
        );
    }
    for action in ["suspend", "terminate", "restore"] {
        let r = self_service::call_as_user(
            server,
            &alice,
            "POST",
            &format!("/devices/31000401/{action}"),
            Some(json!({ "expected_version": v })),
        );
        assert_eq!(r.0, 403, "{action}: {}", r.1);
    }
    assert_eq!(version(server, "31000401"), v, "nothing changed");
    assert_eq!(ocsp_says(server, &mine[0]), "good");
    // Her own device, lost: revoked for good.
    let r = self_service::call_as_user(
        server,
        &alice,
        "POST",
        "/devices/31000401/incident",
        Some(json!({ "reason": "lost", "note": "left on the bus", "expected_version": v })),
    );
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(ocsp_says(server, &mine[0]), "revoked keyCompromise");
    let (_, audit) = server.call("GET", "/audit?limit=1000", None);
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "device.state"
                && e["target"] == "device:31000401"
                && e["actor"].as_str().unwrap_or("").contains("alice")),
        "the person is the actor"
    );
}

#[test]
fn every_incident_reason_and_the_remaining_refusals() {
    on_both("incident_reasons", incident_reasons);
}

/// Each incident reason through its route, with `openssl ocsp` after each
/// (stolen on a suspended device: the held certificates get their final
/// reason; damaged; expired), Terminate of a suspended device (the held
/// certificates revoked `cessationOfOperation`), and the refusals the other
/// tests leave out, each changing nothing: Suspend of a device not issued,
/// Terminate and Restore with a stale version or in the wrong state, a
/// replacement whose original cannot be replaced for that reason.
fn incident_reasons(server: &TestServer) {
    support::seed_piv_standard(server, "31000151");
    let stolen = issue(server, "31000151");
    let damaged = issue(server, "31000152");
    let expired = issue(server, "31000153");
    let terminated = issue(server, "31000154");

    // Stolen while suspended: on hold, then revoked keyCompromise.
    assert_eq!(act(server, "31000151", "suspend", json!({})).0, 200);
    assert_eq!(ocsp_says(server, &stolen[0]), "revoked certificateHold");
    let (s, d) = act(
        server,
        "31000151",
        "incident",
        json!({ "reason": "stolen" }),
    );
    assert_eq!((s, d["reason"].as_str()), (200, Some("stolen")), "{d}");
    for c in &stolen {
        assert_eq!(ocsp_says(server, c), "revoked keyCompromise");
    }
    // Damaged: cessationOfOperation. Expired: the certificates not yet
    // expired (all of them here) superseded.
    let (s, d) = act(
        server,
        "31000152",
        "incident",
        json!({ "reason": "damaged" }),
    );
    assert_eq!((s, d["state"].as_str()), (200, Some("invalid")), "{d}");
    assert_eq!(
        ocsp_says(server, &damaged[0]),
        "revoked cessationOfOperation"
    );
    let (s, d) = act(
        server,
        "31000153",
        "incident",
        json!({ "reason": "expired" }),
    );
    assert_eq!((s, d["reason"].as_str()), (200, Some("expired")), "{d}");
    for c in &expired {
        assert_eq!(ocsp_says(server, c), "revoked superseded");
    }

    // Terminate of a suspended device: the held certificates for good.
    assert_eq!(act(server, "31000154", "suspend", json!({})).0, 200);
    let v = version(server, "31000154");
    let stale = server.call(
        "POST",
        "/devices/31000154/terminate",
        Some(json!({ "expected_version": v - 1 })),
    );
    assert_eq!(
        code(&stale),
        (409, "version_conflict".into()),
        "{}",
        stale.1
    );
    assert_eq!(version(server, "31000154"), v, "nothing moved");
    assert_eq!(ocsp_says(server, &terminated[0]), "revoked certificateHold");
    let (s, d) = act(server, "31000154", "terminate", json!({}));
    assert_eq!((s, d["state"].as_str()), (200, Some("terminated")), "{d}");
    for c in &terminated {
        assert_eq!(ocsp_says(server, c), "revoked cessationOfOperation");
    }
    // Terminated: no second Terminate, no Restore, no Suspend.
    for action in ["terminate", "restore", "suspend"] {
        let v = version(server, "31000154");
        let r = act(server, "31000154", action, json!({}));
        assert!(r.0 == 400 || r.0 == 409, "{action}: {}", r.1);
        assert_eq!(version(server, "31000154"), v, "{action} changed nothing");
    }

    // Suspend of a device in the inventory, not issued: refused.
    let (s, v) = server.call(
        "POST",
        "/devices",
        Some(
            json!({ "device_type": "yubikey5", "serial": "31000159", "firmware_version": "5.7.1" }),
        ),
    );
    assert_eq!(s, 201, "{v}");
    let r = act(server, "31000159", "suspend", json!({}));
    assert!(r.0 == 400 || r.0 == 409, "{}", r.1);
    assert_eq!(device(server, "31000159")["state"], "available");

    // Restore of a forgotten device with a stale version: refused.
    let forgotten = issue(server, "31000155");
    assert_eq!(
        act(
            server,
            "31000155",
            "incident",
            json!({ "reason": "forgotten" })
        )
        .0,
        200
    );
    let v = version(server, "31000155");
    let stale = server.call(
        "POST",
        "/devices/31000155/restore",
        Some(json!({ "expected_version": v - 1 })),
    );
    assert_eq!(
        code(&stale),
        (409, "version_conflict".into()),
        "{}",
        stale.1
    );
    assert_eq!(ocsp_says(server, &forgotten[0]), "revoked certificateHold");

    // A damaged device replaced as lost: its incident is another one.
    let (s, v) = server.call(
        "POST",
        "/devices",
        Some(
            json!({ "device_type": "yubikey5", "serial": "31000156", "firmware_version": "5.7.1" }),
        ),
    );
    assert_eq!(s, 201, "{v}");
    let (s, e) = server.call(
        "POST",
        "/issuance",
        Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000156", "pin": "735194",
                     "replaces": "31000152", "replace_reason": "lost" })),
    );
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (409, Some("original_not_replaceable")),
        "{e}"
    );
    assert_eq!(
        device(server, "31000156")["state"],
        "available",
        "nothing started"
    );
    assert_eq!(device(server, "31000152")["reason"], "damaged");
}
