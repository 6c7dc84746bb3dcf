//! Issue 18, approvals: a policy that requires approval for issuance puts
//! Add Device on hold until a second operator approves the request; each
//! refusal (an issuance without a request, a pending or denied one carried
//! out, one carried out twice, approval by the requester, by the recipient,
//! by an API token) on SQLite and PostgreSQL, through the API and the CLI.

use crate::common::self_service::{call_as_user, sign_in_operator, sign_in_operator_linked};
use crate::support;

use serde_json::{json, Value};
use support::TestServer;

fn start(server: &TestServer, serial: &str, request: Option<&str>) -> (u16, Value) {
    server.call(
        "POST",
        "/issuance",
        Some(json!({ "user": "alice", "policy": "PIV Approved", "serial": serial, "pin": "735194", "request": request })),
    )
}

/// Relays the session of `batch` to its end on an in-process virtual
/// YubiKey 5.7.1 with `serial` (its manufacturer CA in `dir`).
fn finish_in_process(
    server: &TestServer,
    dir: &std::path::Path,
    serial: u32,
    mut b: Value,
) -> Value {
    let mut card = keyward_vcard::VirtualCard::new(
        keyward_vcard::VcardConfig::new(keyward_vcard::ProfileKind::Yubikey5)
            .with_serial(serial)
            .with_firmware(keyward_vcard::Firmware(5, 7, 1))
            .with_ca_dir(dir.join(format!("virtual-ca-{serial}"))),
    )
    .unwrap();
    card.power_on();
    let id = b["session_id"].as_str().unwrap().to_string();
    while b["state"] == "running" {
        let responses = support::relay_in_process(&mut card, &b);
        let (s, next) = server.call(
            "POST",
            &format!("/issuance/{id}/relay"),
            Some(
                json!({ "protocol": 1, "session_id": id, "seq": b["seq"], "responses": responses }),
            ),
        );
        assert_eq!(s, 200, "{next}");
        b = next;
    }
    b
}

fn approvals(server: TestServer) {
    support::seed_piv_standard(&server, "31000180");
    let (s, v) = server.call(
        "POST",
        "/devices",
        Some(
            json!({ "device_type": "yubikey5", "serial": "31000181", "firmware_version": "5.7.1" }),
        ),
    );
    assert_eq!(s, 201, "{v}");
    let (_, mut policy) = server.call("GET", "/policies/PIV%20Standard", None);
    policy["name"] = json!("PIV Approved");
    policy["approval_required_for"] = json!(["issuance"]);
    policy.as_object_mut().unwrap().remove("id");
    let (s, v) = server.call("POST", "/policies", Some(policy));
    assert_eq!(s, 201, "{v}");
    let requester = sign_in_operator(&server, "requester", "issuance_operator");
    let approver = sign_in_operator(&server, "approver", "issuance_operator");
    let alice_op = sign_in_operator_linked(&server, "alice-op", "issuance_operator", Some("alice"));

    // Without a request: on hold.
    let (s, v) = start(&server, "31000180", None);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("approval_required")),
        "{v}"
    );
    // Request Issuance (no device named: any device collects it).
    let (s, r) = call_as_user(
        &server,
        &requester,
        "POST",
        "/requests",
        Some(json!({ "user": "alice", "policy": "PIV Approved" })),
    );
    assert_eq!((s, r["state"].as_str()), (201, Some("pending")), "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    let (s, v) = start(&server, "31000180", Some(&id));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("request_not_approved")),
        "{v}"
    );
    // Nobody but a second person approves.
    let approve = |who: &(String, String)| {
        call_as_user(
            &server,
            who,
            "POST",
            &format!("/requests/{id}/approve"),
            Some(json!({})),
        )
    };
    let (s, v) = approve(&requester);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("approver_is_requester")),
        "{v}"
    );
    let (s, v) = approve(&alice_op);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("approver_is_recipient")),
        "{v}"
    );
    let (s, v) = server.call("POST", &format!("/requests/{id}/approve"), Some(json!({})));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("approver_not_a_person")),
        "{v}"
    );
    let out = server.admin(&["request", "approve", &id]);
    assert!(!out.status.success(), "a token's approval through the CLI");
    assert!(
        support::stderr(&out).contains("approver_not_a_person")
            || support::stderr(&out).contains("person"),
        "{}",
        support::stderr(&out)
    );
    let (s, v) = approve(&approver);
    assert_eq!(
        (s, v["state"].as_str(), v["decided_by"].as_str()),
        (200, Some("approved"), Some("account:approver")),
        "{v}"
    );
    let (s, v) = call_as_user(
        &server,
        &approver,
        "POST",
        &format!("/requests/{id}/deny"),
        Some(json!({})),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("request_not_pending")),
        "{v}"
    );
    // Carried out once.
    let (s, v) = start(&server, "31000180", Some(&id));
    assert_eq!(s, 201, "{v}");
    let dir = tempfile::tempdir().unwrap();
    let end = finish_in_process(&server, dir.path(), 31_000_180, v.clone());
    assert_eq!(end["state"], "issued", "{end}");
    let (_, r) = server.call("GET", &format!("/requests/{id}"), None);
    assert_eq!(
        (r["state"].as_str(), r["session"].as_str()),
        (Some("used"), v["session_id"].as_str()),
        "{r}"
    );
    let (s, v) = start(&server, "31000181", Some(&id));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("request_used")),
        "{v}"
    );
    // A denied request is not carried out.
    let out = server.admin(&[
        "request",
        "create",
        "--user",
        "alice",
        "--policy",
        "PIV Approved",
        "--serial",
        "31000181",
        "--json",
    ]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let denied = r["id"].as_str().unwrap().to_string();
    let (s, v) = call_as_user(
        &server,
        &approver,
        "POST",
        &format!("/requests/{denied}/deny"),
        Some(json!({ "note": "not this one" })),
    );
    assert_eq!((s, v["state"].as_str()), (200, Some("denied")), "{v}");
    let (s, v) = start(&server, "31000181", Some(&denied));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("request_not_approved")),
        "{v}"
    );
    // A replacement under a policy that requires approval for it is held
    // too (the first device, issued above, is replaced by the second).
    let (_, mut replaced) = server.call("GET", "/policies/PIV%20Approved", None);
    replaced["approval_required_for"] = json!(["issuance", "replacement"]);
    let (s, v) = server.call("PUT", "/policies/PIV%20Approved", Some(replaced));
    assert_eq!(s, 200, "{v}");
    let (s, v) = server.call(
        "POST",
        "/issuance",
        Some(json!({ "user": "alice", "serial": "31000181", "pin": "735194", "replaces": "31000180", "replace_reason": "lost" })),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("approval_required")),
        "{v}"
    );
    // The list of what waits, and the audit.
    let out = server.admin(&["request", "list", "--state", "denied", "--json"]);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let audit = server.call("GET", "/audit?limit=1000", None).1.to_string();
    for action in ["request.create", "request.approve", "request.deny"] {
        assert!(audit.contains(&format!("\"{action}\"")), "{action} audited");
    }
}

#[test]
fn an_issuance_waits_for_a_second_operator_s_approval_on_sqlite() {
    approvals(TestServer::start());
}

#[test]
fn an_issuance_waits_for_a_second_operator_s_approval_on_postgres() {
    if let Some(server) = support::postgres_server("requests_approval") {
        approvals(server);
    }
}

/// Issue 18, part 3: an unknown device. With the setting No, `keyward
/// issue` is refused before the device is touched, saying how to import it;
/// with Yes, the device is imported from its own identification (type,
/// serial, firmware; audited) and issued at once.
fn auto_import(server: TestServer) {
    use crate::common::pcsc::{self, Vcard};
    let _lock = pcsc::lock();
    pcsc::ensure_pcscd();
    let serial = "31000191";
    let card = Vcard::spawn(&[
        "--profile",
        "yubikey5",
        "--firmware",
        "5.7.1",
        "--serial",
        serial,
    ]);
    support::seed_piv_standard(&server, "31000190");
    let answers = card.path("answers.toml");
    std::fs::write(&answers, "pin = \"735194\"\n").unwrap();
    let issue = || {
        support::cli(
            &server,
            "issue",
            &[
                "--user",
                "alice",
                "--policy",
                "PIV Standard",
                "--serial",
                serial,
                "--answers",
                answers.to_str().unwrap(),
                "--json",
            ],
        )
    };
    let (s, v) = server.call(
        "PUT",
        "/settings/auto_import_unknown_devices",
        Some(json!({ "value": "no" })),
    );
    assert_eq!(s, 200, "{v}");
    let out = issue();
    let r: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", support::stderr(&out)));
    assert_eq!(
        (out.status.code(), r["error"]["code"].as_str()),
        (Some(3), Some("device_not_in_inventory")),
        "{r}"
    );
    assert!(
        r["error"]["message"].as_str().unwrap().contains("import"),
        "{r}"
    );
    let (s, _) = server.call("GET", &format!("/devices/{serial}"), None);
    assert_eq!(s, 404, "nothing imported");
    let (s, v) = server.call(
        "PUT",
        "/settings/auto_import_unknown_devices",
        Some(json!({ "value": "yes" })),
    );
    assert_eq!(s, 200, "{v}");
    let out = issue();
    let r: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", support::stderr(&out)));
    assert_eq!(r["state"], "issued", "{r}");
    let (_, d) = server.call("GET", &format!("/devices/{serial}"), None);
    assert_eq!(
        (
            d["device_type"].as_str(),
            d["firmware_version"].as_str(),
            d["state"].as_str()
        ),
        (Some("yubikey5"), Some("5.7.1"), Some("issued")),
        "{d}"
    );
    let audit = server.call("GET", "/audit?limit=1000", None).1.to_string();
    assert!(audit.contains("\"device.auto_import\""), "audited");
}

#[test]
fn an_unknown_device_is_refused_or_imported_at_issuance_by_the_setting_on_sqlite() {
    auto_import(TestServer::start());
}

#[test]
fn an_unknown_device_is_refused_or_imported_at_issuance_by_the_setting_on_postgres() {
    if let Some(server) = support::postgres_server("requests_auto_import") {
        auto_import(server);
    }
}

/// Issue 18, part 2: bulk issuance. A CSV of login,policy[,serial] with a
/// bad row is refused whole (nothing written), and written in part with
/// --partial (the bad row named); the batch's requests are collected as
/// devices arrive (Add Device carries the matching request out) and the
/// batch shows its progress.
fn bulk(server: TestServer) {
    support::seed_piv_standard(&server, "31000185");
    let (s, v) = server.call(
        "POST",
        "/users",
        Some(json!({ "login": "bob", "display_name": "Bob Baker", "upn": "bob@example.com" })),
    );
    assert_eq!(s, 201, "{v}");
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("batch.csv");
    std::fs::write(
        &csv,
        "login,policy,serial\nalice,PIV Standard,31000185\nnobody,PIV Standard,\nbob,PIV Standard,\n",
    )
    .unwrap();
    let out = server.admin(&["request", "import", csv.to_str().unwrap(), "--json"]);
    assert!(!out.status.success(), "all or nothing: refused");
    assert!(
        support::stderr(&out).contains("import_rejected")
            || support::stderr(&out).contains("refused"),
        "{}",
        support::stderr(&out)
    );
    let (_, all) = server.call("GET", "/requests", None);
    assert_eq!(all.as_array().unwrap().len(), 0, "nothing written: {all}");
    let out = server.admin(&[
        "request",
        "import",
        csv.to_str().unwrap(),
        "--partial",
        "--json",
    ]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(made["imported"], 2, "{made}");
    assert_eq!(made["rejected"][0]["row"], 2, "{made}");
    let batch = made["batch"].as_str().unwrap().to_string();
    // alice's device arrives: Add Device collects her request.
    let (s, b) = server.call(
        "POST",
        "/issuance",
        Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000185", "pin": "735194" })),
    );
    assert_eq!(s, 201, "{b}");
    let b = finish_in_process(&server, dir.path(), 31_000_185, b);
    assert_eq!(b["state"], "issued", "{b}");
    let out = server.admin(&["request", "batch", &batch, "--json"]);
    let progress: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", support::stderr(&out)));
    assert_eq!(
        (
            progress["issued"].as_u64(),
            progress["failed"].as_u64(),
            progress["waiting"].as_u64()
        ),
        (Some(1), Some(0), Some(1)),
        "{progress}"
    );
}

#[test]
fn a_bulk_batch_is_imported_collected_and_followed_on_sqlite() {
    bulk(TestServer::start());
}

#[test]
fn a_bulk_batch_is_imported_collected_and_followed_on_postgres() {
    if let Some(server) = support::postgres_server("requests_bulk") {
        bulk(server);
    }
}
