//! Issue 17 end to end over pcscd and vpcd with `keyward vcard` devices:
//! Request Update (the applied changes, Cancel Update Request), `keyward
//! update` carrying a pending request out, certificate renewal under each
//! mode (openssl checks the new certificates; OCSP shows the superseded
//! one revoked, the same-key one left to expire), the renewal scan with the
//! time passed in, a policy whose PIN rules force a PIN change (OpenSC logs
//! in with the new PIN), and an update cut short and finished by the next.

use crate::common::pcsc;
use crate::revocation::ocsp_says;
use crate::support;

use pcsc::{relay_pcsc, Vcard};
use serde_json::{json, Value};
use support::TestServer;

use support::cli as keyward;

const SERIAL: &str = "41000170";

fn report(o: &std::process::Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
        panic!(
            "no JSON report (exit {:?}):\n{}\n{}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

/// The policy "Staff": 9A (a new key on renewal) and 9D (the same key).
fn staff(name: &str, min_pin: u8, slots: &[(&str, &str)]) -> Value {
    let apps: Vec<Value> = slots
        .iter()
        .map(|(slot, alg)| json!({
            "name": format!("Slot {slot}"), "slot": slot, "algorithm": alg, "certificate_authority": "Keyward Issuing CA",
            "template": { "subject_dn": "CN={display_name},UID={login}", "subject_alt_names": ["upn"], "validity_days": 365,
                          "key_usage": ["digital_signature", "key_encipherment"], "extended_key_usage": ["client_auth"] } }))
        .collect();
    json!({
        "name": name, "device_types": ["c4000", "yubikey5"], "management_key": "random",
        "pin_application": { "min_length": min_pin, "max_length": 8, "character_set": "numeric", "pin_retry_count": 3, "puk_retry_count": 3 },
        "pki_applications": apps,
    })
}

/// alice, the C4000 `SERIAL`, "Staff" (9A, 9D) and "Staff 8" (9A P-384,
/// 9C; 8-digit PINs); the device issued under "Staff" by `keyward issue`.
/// Answers the certificates issued: (slot, serial).
fn issued(server: &TestServer, card: &Vcard) -> Vec<(String, String)> {
    assert_eq!(server.call("POST", "/users", Some(json!({ "login": "alice", "display_name": "Alice Archer", "upn": "alice@example.com" }))).0, 201);
    let (s, v) = server.call(
        "POST",
        "/devices",
        Some(json!({ "device_type": "c4000", "serial": SERIAL, "firmware_version": "1.0.0" })),
    );
    assert_eq!(s, 201, "{v}");
    for p in [
        staff("Staff", 6, &[("9a", "eccp256"), ("9d", "eccp256")]),
        staff("Staff 8", 8, &[("9a", "eccp384"), ("9c", "eccp256")]),
    ] {
        let (s, v) = server.call("POST", "/policies", Some(p));
        assert_eq!(s, 201, "{v}");
    }
    certificates(&issue_displayed(server, card, "alice", "Staff", SERIAL))
}

/// `keyward issue` of `serial` to `user` under `policy` with the PIN
/// displayed (735194); answers its `--json` report, issued.
fn issue_displayed(
    server: &TestServer,
    card: &Vcard,
    user: &str,
    policy: &str,
    serial: &str,
) -> Value {
    let (s, v) = server.call(
        "PUT",
        "/settings/initial_pin_display_mode",
        Some(json!({ "value": "displayed" })),
    );
    assert_eq!(s, 200, "{v}");
    let answers = card.path("issue.toml");
    std::fs::write(&answers, "pin = \"735194\"\n").unwrap();
    let out = keyward(
        server,
        "issue",
        &[
            "--user",
            user,
            "--policy",
            policy,
            "--serial",
            serial,
            "--answers",
            answers.to_str().unwrap(),
            "--json",
        ],
    );
    let r = report(&out);
    assert_eq!(r["state"], "issued", "{r}");
    r
}

/// The certificates of a `--json` report: (slot, serial), by slot.
fn certificates(r: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = r["credentials"]
        .as_array()
        .unwrap_or(&vec![])
        .iter()
        .filter(|c| c["kind"] == "certificate")
        .map(|c| {
            (
                c["slot"].as_str().unwrap().to_string(),
                c["serial"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// `keyward update` with `answers` (TOML).
fn update(server: &TestServer, card: &Vcard, answers: &str) -> (Option<i32>, Value) {
    update_serial(server, card, SERIAL, answers)
}

/// OpenSC reads each certificate the update wrote from the device (its
/// serial is the one on record) and openssl verifies it against the CA
/// chain.
fn openssl_verifies(server: &TestServer, written: &[(String, String)]) {
    assert!(!written.is_empty());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("chain.pem"),
        server.fetch("/pki/ca/chain.pem"),
    )
    .unwrap();
    for (slot, serial) in written {
        // OpenSC's PIV object ids.
        let id = match slot.as_str() {
            "9a" => "01",
            "9c" => "02",
            "9d" => "03",
            _ => "04",
        };
        let held = opensc_certificate(dir.path(), id, slot);
        assert!(
            held.contains(&serial.to_uppercase()),
            "slot {slot} holds the certificate on record ({serial}): {held}"
        );
        let (ok, out) = support::openssl(
            dir.path(),
            &["verify", "-CAfile", "chain.pem", &format!("{slot}.pem")],
        );
        assert!(ok, "{out}");
    }
}

/// Renewal: the scan at a time inside the window requests the update;
/// `keyward update` renews 9A with a new key (the old certificate revoked
/// superseded, OCSP says so) and 9D for the same key (the old one left to
/// expire: OCSP good); openssl verifies the new certificates.
fn renewal(server: TestServer) {
    let _lock = pcsc::lock();
    pcsc::ensure_pcscd();
    let card = Vcard::spawn(&["--profile", "c4000", "--serial", SERIAL]);
    let before = issued(&server, &card);
    assert_eq!(before.len(), 2, "{before:?}");
    // Today: nothing inside the 42-day window.
    let out = server.admin(&["device", "renewal-scan", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["requested"], json!([]), "{v}");
    // 330 days on: 35 days left.
    let at = (time::OffsetDateTime::now_utc() + time::Duration::days(330))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let out = server.admin(&["device", "renewal-scan", "--at", &at, "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["requested"], json!([SERIAL]), "{v}");
    let (s, pending) = server.call("GET", &format!("/devices/{SERIAL}/update-requests"), None);
    assert_eq!(s, 200, "{pending}");
    assert_eq!(pending["origin"], "renewal");
    let modes: Vec<(String, String)> = pending["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["slot"].as_str().unwrap().to_string(),
                c["mode"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        modes,
        [
            ("9a".to_string(), "rekey".to_string()),
            ("9d".to_string(), "same_key".to_string())
        ],
        "{pending}"
    );
    // Scanned again: the pending request stands, no second one.
    let out = server.admin(&["device", "renewal-scan", "--at", &at, "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["requested"], json!([]), "{v}");

    let (code, r) = update(&server, &card, "");
    assert_eq!(
        (code, r["state"].as_str()),
        (Some(0), Some("updated")),
        "{r}"
    );
    // 9A with a new key: identity and witness, the key, the writes.
    assert_eq!(r["counters"]["round_trips"], 3, "{r}");
    eprintln!("renewal counters: {}", r["counters"]);
    let after = certificates(&r);
    openssl_verifies(&server, &after);
    assert_eq!(after.len(), 2, "{after:?}");
    let old_9a = &before[0].1;
    let old_9d = &before[1].1;
    assert!(!after.iter().any(|(_, s)| s == old_9a), "9A replaced");
    assert!(!after.iter().any(|(_, s)| s == old_9d), "9D replaced");
    assert_eq!(ocsp_says(&server, old_9a), "revoked superseded");
    assert_eq!(ocsp_says(&server, old_9d), "good", "left to expire");
    for (_, serial) in &after {
        assert_eq!(ocsp_says(&server, serial), "good");
    }
    let (s, _) = server.call("GET", &format!("/devices/{SERIAL}/update-requests"), None);
    assert_eq!(s, 404, "the request is done");
    // The same-key renewal kept the key: pkcs11-tool still signs with the
    // PIN and openssl verifies with the new certificate.
    pcsc::pkcs11_signs_and_openssl_verifies(card.path("").as_path(), "735194");

    // "Staff" now renews 9D with a new key: a C4000 cannot keep the old
    // one in a retired slot, so the scan requests nothing for it and says
    // why (a certificate would otherwise expire in silence).
    let mut p = staff("Staff", 6, &[("9a", "eccp256"), ("9d", "eccp256")]);
    p["pki_applications"][1]["renewal"] = json!("rekey");
    let (s, v) = server.call("PUT", "/policies/Staff", Some(p));
    assert_eq!(s, 200, "{v}");
    let at = (time::OffsetDateTime::now_utc() + time::Duration::days(700))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let out = server.admin(&["device", "renewal-scan", "--at", &at, "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["requested"], json!([]), "{v}");
    assert_eq!(v["refused"][0]["serial"], SERIAL, "{v}");
    assert_eq!(
        v["refused"][0]["code"], "renewal_rekey_key_management",
        "{v}"
    );
    assert!(
        v["refused"][0]["message"]
            .as_str()
            .unwrap()
            .contains("YubiKey from firmware 5.7"),
        "{v}"
    );
}

#[test]
fn a_renewal_scan_requests_updates_and_keyward_update_renews_under_each_mode_on_sqlite() {
    renewal(TestServer::start());
}

#[test]
fn a_renewal_scan_requests_updates_and_keyward_update_renews_under_each_mode_on_postgres() {
    if let Some(server) = support::postgres_server("update_renewal") {
        renewal(server);
    }
}

/// Request Update to another policy: the applied changes listed (9A renewed
/// with a P-384 key, 9C added, 9D removed, the PIN changed for the new
/// rules); cancelled, then requested again; an update cut short in its
/// writes fails and leaves the request pending; the next one finishes it,
/// with the new PIN (OpenSC logs in with it).
fn policy_change(server: TestServer) {
    let _lock = pcsc::lock();
    pcsc::ensure_pcscd();
    let card = Vcard::spawn(&["--profile", "c4000", "--serial", SERIAL]);
    let before = issued(&server, &card);
    let out = server.admin(&[
        "device",
        "request-update",
        SERIAL,
        "--policy",
        "Staff 8",
        "--preview",
        "--json",
    ]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let preview: Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<&str> = preview["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["change"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "renew_certificate",
            "add_certificate",
            "remove_certificate",
            "change_pin"
        ],
        "{preview}"
    );
    let (s, _) = server.call("GET", &format!("/devices/{SERIAL}/update-requests"), None);
    assert_eq!(s, 404, "a preview requests nothing");
    let out = server.admin(&["device", "request-update", SERIAL, "--policy", "Staff 8"]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    assert!(
        support::stdout(&out).contains("Change the PIN"),
        "{}",
        support::stdout(&out)
    );
    // A second request while one is pending: refused.
    let (s, v) = server.call(
        "POST",
        &format!("/devices/{SERIAL}/update-requests"),
        Some(json!({ "policy": "Staff 8" })),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("update_pending")),
        "{v}"
    );
    let out = server.admin(&["device", "cancel-update", SERIAL]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let (s, _) = server.call("GET", &format!("/devices/{SERIAL}/update-requests"), None);
    assert_eq!(s, 404, "cancelled");
    let (code, r) = update(&server, &card, "");
    assert_eq!(
        (code, r["error"]["code"].as_str()),
        (Some(3), Some("not_found")),
        "{r}"
    );
    let (s, v) = server.call(
        "POST",
        &format!("/devices/{SERIAL}/update-requests"),
        Some(json!({ "policy": "Staff 8" })),
    );
    assert_eq!(s, 201, "{v}");

    // Carried out over the API, the device leaving in the writes batch.
    let (s, batch) = server.call(
        "POST",
        &format!("/devices/{SERIAL}/update"),
        Some(json!({})),
    );
    assert_eq!(s, 201, "{batch}");
    let id = batch["session_id"].as_str().unwrap().to_string();
    let end = relay_pcsc(
        &server,
        &id,
        batch,
        &[("enter_pin", "735194"), ("set_new_pin", "24681357")],
        Some((3, 2)),
    );
    assert_eq!(end["state"], "update_failed", "{end}");
    let (_, st) = server.call("GET", &format!("/issuance/{id}"), None);
    assert_eq!(st["error"]["code"], "device_removed", "{st}");
    let (s, pending) = server.call("GET", &format!("/devices/{SERIAL}/update-requests"), None);
    assert_eq!(s, 200, "still pending: {pending}");
    assert_eq!(
        ocsp_says(&server, &before[0].1),
        "good",
        "nothing replaced on record"
    );
    // The PIN changed in the first batch: the next update asks it again
    // under the new rules and finishes the rest.
    let (code, r) = update(
        &server,
        &card,
        "pin = \"24681357\"\nnew_pin = \"13572468\"\n",
    );
    assert_eq!(
        (code, r["state"].as_str()),
        (Some(0), Some("updated")),
        "{r}"
    );
    let after = certificates(&r);
    openssl_verifies(&server, &after);
    let slots: Vec<&str> = after.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(slots, ["9a", "9c"], "{after:?}");
    assert_eq!(ocsp_says(&server, &before[0].1), "revoked superseded");
    assert_eq!(
        ocsp_says(&server, &before[1].1),
        "revoked cessationOfOperation"
    );
    let (_, d) = server.call("GET", &format!("/devices/{SERIAL}"), None);
    let (_, p) = server.call("GET", "/policies/Staff%208", None);
    assert_eq!(
        d["device_policy"], p["id"],
        "the device is under Staff 8: {d}"
    );
    assert!(
        pcsc::pkcs11_login("13572468").status.success(),
        "OpenSC logs in with the new PIN"
    );
    // Done: nothing pending, nothing left to request.
    let (s, v) = server.call(
        "POST",
        &format!("/devices/{SERIAL}/update-requests"),
        Some(json!({})),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("nothing_to_update")),
        "{v}"
    );
    let audit = server.call("GET", "/audit?limit=1000", None).1.to_string();
    for action in [
        "device.update_request",
        "device.update_request_cancelled",
        "update.fail",
        "device.update",
    ] {
        assert!(audit.contains(&format!("\"{action}\"")), "{action} audited");
    }
    for pin in ["735194", "24681357", "13572468"] {
        assert!(
            !audit.contains(pin) && !server.output().contains(pin),
            "{pin} leaked"
        );
    }
}

#[test]
fn request_update_to_another_policy_cancel_a_half_done_update_and_finish_it_on_sqlite() {
    policy_change(TestServer::start());
}

#[test]
fn request_update_to_another_policy_cancel_a_half_done_update_and_finish_it_on_postgres() {
    if let Some(server) = support::postgres_server("update_policy") {
        policy_change(server);
    }
}

const YK_SERIAL: &str = "31000171";

/// A YubiKey 5.7 issued to bob under "Mail" (9A P-256; 9D RSA 2048 renewed
/// with a new key). Answers the certificates issued, (slot, serial), and
/// the issuance's session id.
fn yubikey_issued(server: &TestServer, card: &Vcard) -> (Vec<(String, String)>, String) {
    assert_eq!(
        server
            .call(
                "POST",
                "/users",
                Some(
                    json!({ "login": "bob", "display_name": "Bob Baker", "upn": "bob@example.com" })
                )
            )
            .0,
        201
    );
    let (s, v) = server.call(
        "POST",
        "/devices",
        Some(
            json!({ "device_type": "yubikey5", "serial": YK_SERIAL, "firmware_version": "5.7.1" }),
        ),
    );
    assert_eq!(s, 201, "{v}");
    let mut p = staff("Mail", 6, &[("9a", "eccp256"), ("9d", "rsa2048")]);
    p["pki_applications"][1]["renewal"] = json!("rekey");
    p["require_device_attestation"] = json!(false);
    let (s, v) = server.call("POST", "/policies", Some(p));
    assert_eq!(s, 201, "{v}");
    let r = issue_displayed(server, card, "bob", "Mail", YK_SERIAL);
    (
        certificates(&r),
        r["session_id"].as_str().unwrap().to_string(),
    )
}

/// OpenSC reads the certificate of PIV object `id` (03: 9D, 05: the first
/// retired Key Management key, which it lists only when Key History counts
/// it) into `dir/name.pem`, and answers its serial.
fn opensc_certificate(dir: &std::path::Path, id: &str, name: &str) -> String {
    let der = dir.join(format!("{name}.der"));
    pcsc::run_ok(
        "pkcs11-tool",
        &[
            "--module",
            pcsc::OPENSC_PKCS11,
            "--read-object",
            "--type",
            "cert",
            "--id",
            id,
            "-o",
            der.to_str().unwrap(),
        ],
    );
    let (ok, out) = support::openssl(
        dir,
        &[
            "x509",
            "-inform",
            "DER",
            "-in",
            &format!("{name}.der"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
    assert!(ok, "{out}");
    let (ok, text) = support::openssl(
        dir,
        &["x509", "-in", &format!("{name}.pem"), "-serial", "-noout"],
    );
    assert!(ok, "{text}");
    text.trim().trim_start_matches("serial=").to_uppercase()
}

/// 9D renewed with a new key on a YubiKey 5.7: the old key moves to the
/// retired slot 82 and keeps decrypting. The first attempt is cut right
/// after MOVE KEY (the old key retired, 9D empty, nothing written); its
/// Retry (a new update session of the pending request) finds the old key in
/// 82 and finishes. Then: OCSP says the old 9D
/// certificate is superseded; the record shows it in slot 82; OpenSC lists
/// it as the first retired key (Key History counts it), and decrypts with
/// the old key what openssl encrypted to the old certificate; the new 9D
/// certificate verifies.
fn key_management_rekey(server: TestServer) {
    let _lock = pcsc::lock();
    pcsc::ensure_pcscd();
    let card = Vcard::spawn(&["--profile", "yubikey5", "--serial", YK_SERIAL]);
    let (before, issuance) = yubikey_issued(&server, &card);
    let old_9d = before.iter().find(|(s, _)| s == "9d").unwrap().1.clone();
    let at = (time::OffsetDateTime::now_utc() + time::Duration::days(330))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let out = server.admin(&["device", "renewal-scan", "--at", &at, "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["requested"], json!([YK_SERIAL]), "{v}");
    let (_, pending) = server.call(
        "GET",
        &format!("/devices/{YK_SERIAL}/update-requests"),
        None,
    );
    let lines = pending["changes"].to_string();
    assert!(
        lines.contains("retired slot"),
        "the change says where the old key goes: {pending}"
    );

    // Cut after MOVE KEY, the second command of batch 2.
    let (s, batch) = server.call(
        "POST",
        &format!("/devices/{YK_SERIAL}/update"),
        Some(json!({})),
    );
    assert_eq!(s, 201, "{batch}");
    let id = batch["session_id"].as_str().unwrap().to_string();
    let end = relay_pcsc(&server, &id, batch, &[], Some((2, 2)));
    assert_eq!(end["state"], "update_failed", "{end}");
    assert_eq!(
        ocsp_says(&server, &old_9d),
        "good",
        "nothing replaced on record"
    );

    // Retry, as for an issuance: a new update session of the pending
    // request (its first batch names it).
    let (s, batch) = server.call("POST", &format!("/issuance/{id}/retry"), None);
    assert_eq!(s, 200, "{batch}");
    let retried = batch["session_id"].as_str().unwrap().to_string();
    assert_ne!(retried, id);
    let end = relay_pcsc(&server, &retried, batch, &[], None);
    assert_eq!(end["state"], "updated", "{end}");
    let (s, v) = server.call("POST", &format!("/issuance/{retried}/retry"), None);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("session_not_failed")),
        "{v}"
    );
    let (_, r) = server.call("GET", &format!("/issuance/{retried}"), None);
    let after: Vec<(String, String)> = r["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["slot"].as_str().unwrap().to_string(),
                c["serial"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(after.len(), 2, "{r}");
    let new_9d = after.iter().find(|(s, _)| s == "9d").unwrap().1.clone();
    assert_ne!(new_9d, old_9d);
    assert_eq!(ocsp_says(&server, &old_9d), "revoked superseded");
    assert_eq!(ocsp_says(&server, &new_9d), "good");
    let (_, issued) = server.call("GET", &format!("/issuance/{issuance}"), None);
    let creds = &issued["credentials"];
    let retired: Vec<&Value> = creds
        .as_array()
        .unwrap_or_else(|| panic!("{issued}"))
        .iter()
        .filter(|c| c["serial"].as_str().unwrap().eq_ignore_ascii_case(&old_9d))
        .collect();
    assert_eq!(retired.len(), 1, "{creds}");
    assert_eq!(
        retired[0]["slot"], "82",
        "the record follows the key: {creds}"
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("chain.pem"),
        server.fetch("/pki/ca/chain.pem"),
    )
    .unwrap();
    assert_eq!(
        opensc_certificate(dir.path(), "03", "new9d"),
        new_9d.to_uppercase()
    );
    assert_eq!(
        opensc_certificate(dir.path(), "05", "old9d"),
        old_9d.to_uppercase()
    );
    let (ok, out) = support::openssl(dir.path(), &["verify", "-CAfile", "chain.pem", "new9d.pem"]);
    assert!(ok, "{out}");
    // Mail encrypted to the old certificate still opens with the old key.
    std::fs::write(dir.path().join("mail.txt"), b"sent before the new key").unwrap();
    let (ok, out) = support::openssl(
        dir.path(),
        &[
            "pkeyutl",
            "-encrypt",
            "-certin",
            "-inkey",
            "old9d.pem",
            "-in",
            "mail.txt",
            "-out",
            "mail.enc",
        ],
    );
    assert!(ok, "{out}");
    pcsc::run_ok(
        "pkcs11-tool",
        &[
            "--module",
            pcsc::OPENSC_PKCS11,
            "--login",
            "--pin",
            "735194",
            "--decrypt",
            "--id",
            "05",
            "-m",
            "RSA-PKCS",
            "--input-file",
            dir.path().join("mail.enc").to_str().unwrap(),
            "--output-file",
            dir.path().join("mail.out").to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read(dir.path().join("mail.out")).unwrap(),
        b"sent before the new key"
    );

    // A year on, 9D renewed again by `keyward update`: the second key goes
    // to 83, Key History counts two, OpenSC lists both.
    let at = (time::OffsetDateTime::now_utc() + time::Duration::days(700))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let out = server.admin(&["device", "renewal-scan", "--at", &at, "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["requested"], json!([YK_SERIAL]), "{v}");
    let (code, r) = update_serial(&server, &card, YK_SERIAL, "");
    assert_eq!(
        (code, r["state"].as_str()),
        (Some(0), Some("updated")),
        "{r}"
    );
    // Identity, Key History and the keys' metadata, the witness; the move
    // and the new keys; the writes.
    assert_eq!(r["counters"]["round_trips"], 3, "{r}");
    eprintln!("9D rekey with retirement counters: {}", r["counters"]);
    let third_9d = certificates(&r)
        .into_iter()
        .find(|(s, _)| s == "9d")
        .unwrap()
        .1;
    assert_eq!(
        opensc_certificate(dir.path(), "03", "third9d"),
        third_9d.to_uppercase()
    );
    assert_eq!(
        opensc_certificate(dir.path(), "05", "old9d-again"),
        old_9d.to_uppercase()
    );
    assert_eq!(
        opensc_certificate(dir.path(), "06", "second9d"),
        new_9d.to_uppercase()
    );
    assert_eq!(ocsp_says(&server, &new_9d), "revoked superseded");

    let audit = server.call("GET", "/audit?limit=1000", None).1.to_string();
    assert!(audit.contains("\"device.update\""), "audited");
}

/// `keyward update` of device `serial` with `answers` (TOML).
fn update_serial(
    server: &TestServer,
    card: &Vcard,
    serial: &str,
    answers: &str,
) -> (Option<i32>, Value) {
    let file = card.path("update.toml");
    std::fs::write(&file, answers).unwrap();
    let out = keyward(
        server,
        "update",
        &[
            "--serial",
            serial,
            "--answers",
            file.to_str().unwrap(),
            "--json",
        ],
    );
    (out.status.code(), report(&out))
}

#[test]
fn a_new_key_management_key_keeps_the_old_one_in_a_retired_slot_on_sqlite() {
    key_management_rekey(TestServer::start());
}

#[test]
fn a_new_key_management_key_keeps_the_old_one_in_a_retired_slot_on_postgres() {
    if let Some(server) = support::postgres_server("update_retired") {
        key_management_rekey(server);
    }
}
