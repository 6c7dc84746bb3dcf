//! Issue 16: unlock a blocked PIV PIN with the PUK Keyward keeps.
//!
//! * `keyward unlock` over pcscd and vpcd with `keyward vcard` (YubiKey 5.7.1,
//!   which reads its PUK's tries, and a C4000): the PIN blocked with OpenSC,
//!   unlocked from `--answers new_pin`, then OpenSC's pkcs11-tool logs in
//!   with the new PIN; refusals before the device is touched (exit 3).
//! * The help desk's "Create Unlock Request", completed by the person
//!   through their own workstation agent (SQLite and PostgreSQL): used once,
//!   refused without one, expired, for the wrong role.

use crate::common::agent;
use crate::common::pcsc;
use crate::common::self_service;
use crate::support;

use std::time::{Duration, Instant};

use agent::{paired_agent, wait_session_end};
use pcsc::Vcard;
use self_service::{call_as_user, sign_in_user};
use serde_json::{json, Value};
use support::TestServer;

use support::cli as keyward;

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

/// Blocks the PIV PIN with wrong PINs through OpenSC.
fn block_pin_with_opensc() {
    for _ in 0..4 {
        let _ = pcsc::pkcs11_login("000000");
    }
    assert!(
        !pcsc::pkcs11_login("735194").status.success(),
        "the PIN is blocked"
    );
}

/// `keyward unlock` of a virtual device on pcscd, issued first by
/// `keyward issue` (PIN 735194).
fn unlock_over_pcsc(profile: &str, firmware: &str, serial: &str) {
    let _lock = pcsc::lock();
    pcsc::ensure_pcscd();
    let card = Vcard::spawn(&[
        "--profile",
        profile,
        "--firmware",
        firmware,
        "--serial",
        serial,
    ]);
    let server = TestServer::start();
    if profile == "yubikey5" {
        support::seed_piv_standard(&server, serial);
    } else {
        support::seed_piv_standard(&server, "39999999");
        let (s, v) = server.call(
            "POST",
            "/devices",
            Some(json!({ "device_type": profile, "serial": serial, "firmware_version": firmware })),
        );
        assert_eq!(s, 201, "{v}");
    }
    let answers = card.path("answers.toml");
    std::fs::write(&answers, "pin = \"735194\"\nnew_pin = \"246813\"\n").unwrap();
    let answers = answers.to_str().unwrap();
    let out = keyward(
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
            answers,
            "--json",
        ],
    );
    assert_eq!(report(&out)["state"], "issued", "{}", report(&out));

    // Not blocked yet, but unlock also serves a forgotten PIN.
    block_pin_with_opensc();
    // Without a token of the help desk's: refused.
    let operator = server.token_with_role("issuance_operator");
    let out = std::process::Command::new(support::BIN)
        .args(["unlock", "--server", &server.url, "--token", &operator])
        .args(["--serial", serial, "--answers", answers, "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "the token is refused");

    let out = keyward(
        &server,
        "unlock",
        &["--serial", serial, "--answers", answers, "--json"],
    );
    let r = report(&out);
    assert_eq!(r["state"], "unlocked", "{r}");
    assert_eq!(out.status.code(), Some(0));
    // Two device round trips (for BENCHMARKS.md: the client's counters).
    assert_eq!(r["counters"]["round_trips"], 2, "{r}");
    eprintln!("unlock counters ({profile}): {}", r["counters"]);
    assert!(
        pcsc::pkcs11_login("246813").status.success(),
        "OpenSC logs in with the new PIN"
    );
    // The new PUK is kept: a second unlock works too (after another block).
    block_pin_with_opensc();
    std::fs::write(card.path("again.toml"), "new_pin = \"135792\"\n").unwrap();
    let again = card.path("again.toml");
    let out = keyward(
        &server,
        "unlock",
        &[
            "--serial",
            serial,
            "--answers",
            again.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(report(&out)["state"], "unlocked", "{}", report(&out));
    assert!(pcsc::pkcs11_login("135792").status.success());
    // No PIN or PUK in the server's log.
    let log = server.output();
    for secret in ["246813", "135792", "735194"] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
    // A device that is not issued: refused before it is touched (exit 3).
    let out = server.admin(&["device", "terminate", serial]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let out = keyward(
        &server,
        "unlock",
        &["--serial", serial, "--answers", answers, "--json"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", report(&out));
    assert_eq!(report(&out)["error"]["code"], "device_not_issued");
    drop(card);
}

#[test]
fn keyward_unlock_resets_a_yubikey_pin_and_opensc_logs_in_with_the_new_one() {
    unlock_over_pcsc("yubikey5", "5.7.1", "31000801");
}

#[test]
fn keyward_unlock_resets_a_c4000_pin_and_opensc_logs_in_with_the_new_one() {
    unlock_over_pcsc("c4000", "1.0.0", "41000801");
}

const SERIAL: &str = "31000810";

/// Blocks the PIN through the person's own Change PIN (wrong current PIN).
fn block_pin_by_change_pin(server: &TestServer, who: &(String, String)) {
    for _ in 0..3 {
        let (s, first) = call_as_user(
            server,
            who,
            "POST",
            &format!("/me/devices/{SERIAL}/change-pin"),
            None,
        );
        assert_eq!(s, 201, "{first}");
        let id = first["session_id"].as_str().unwrap().to_string();
        let st = wait_prompts(server, who, &id);
        let (s, v) = call_as_user(
            server,
            who,
            "POST",
            &format!("/issuance/{id}/relay"),
            Some(
                json!({ "protocol": 1, "session_id": id, "seq": st["seq"], "responses": [],
                         "answers": { "enter_pin": "000000", "set_new_pin": "246813" } }),
            ),
        );
        assert_eq!(s, 200, "{v}");
        let end = wait_session_end(&server.url, &server.token, &id);
        assert_eq!(end["status"], "pin_change_failed", "{end}");
    }
}

fn wait_prompts(server: &TestServer, who: &(String, String), id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, st) = call_as_user(server, who, "GET", &format!("/issuance/{id}"), None);
        assert_eq!(s, 200, "{st}");
        if st["prompts"].as_array().is_some_and(|p| !p.is_empty()) {
            return st;
        }
        assert_eq!(st["status"], "running", "{st}");
        assert!(Instant::now() < deadline, "no prompts: {st}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn request_then_person_unlocks(server: TestServer) {
    support::seed_piv_standard(&server, SERIAL);
    let alice = sign_in_user(&server, "alice");
    let _agent = paired_agent(
        &server,
        &["--virtual", &format!("yubikey5:{SERIAL}")],
        &["--account", "alice"],
        &[SERIAL],
    );
    let (s, first) = server.call("POST", "/issuance", Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": SERIAL, "pin": "735194", "via": "agent" })));
    assert_eq!(s, 201, "{first}");
    let issued = wait_session_end(
        &server.url,
        &server.token,
        first["session_id"].as_str().unwrap(),
    );
    assert_eq!(issued["status"], "issued", "{issued}");
    block_pin_by_change_pin(&server, &alice);

    // No request: the person is told to ask the help desk.
    let unlock_mine = || {
        call_as_user(
            &server,
            &alice,
            "POST",
            &format!("/me/devices/{SERIAL}/unlock"),
            None,
        )
    };
    let (s, v) = unlock_mine();
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("no_unlock_request")),
        "{v}"
    );
    // An issuance operator may not create one; the help desk may.
    let operator = server.token_with_role("issuance_operator");
    let path = format!("/devices/{SERIAL}/unlock-requests");
    assert_eq!(server.call_as(&operator, "POST", &path, None).0, 403);
    let help = server.token_with_role("help_desk");
    let (s, req) = server.call_as(&help, "POST", &path, None);
    assert_eq!(s, 201, "{req}");
    let expires = time::OffsetDateTime::parse(
        req["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let left = expires - time::OffsetDateTime::now_utc();
    assert!(
        left > time::Duration::minutes(9) && left <= time::Duration::minutes(10),
        "{left}"
    );

    // The person completes it: the new PIN under the policy's rules.
    let (s, first) = unlock_mine();
    assert_eq!(s, 201, "{first}");
    let id = first["session_id"].as_str().unwrap().to_string();
    let st = wait_prompts(&server, &alice, &id);
    assert_eq!(st["prompts"][0]["kind"], "set_new_pin", "{st}");
    let answer = |pin: &str| {
        call_as_user(
            &server,
            &alice,
            "POST",
            &format!("/issuance/{id}/relay"),
            Some(
                json!({ "protocol": 1, "session_id": id, "seq": st["seq"], "responses": [],
                         "answers": { "set_new_pin": pin } }),
            ),
        )
    };
    let (s, v) = answer("111111");
    assert_eq!(s, 400, "a PIN breaking the rules: {v}");
    let (s, v) = answer("246813");
    assert_eq!(s, 200, "{v}");
    let end = wait_session_end(&server.url, &server.token, &id);
    assert_eq!(end["status"], "unlocked", "{end}");
    // Used once.
    let (s, v) = unlock_mine();
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("no_unlock_request")),
        "{v}"
    );
    // The new PIN works: the person changes it with it.
    let (s, first) = call_as_user(
        &server,
        &alice,
        "POST",
        &format!("/me/devices/{SERIAL}/change-pin"),
        None,
    );
    assert_eq!(s, 201, "{first}");
    let cid = first["session_id"].as_str().unwrap().to_string();
    let st = wait_prompts(&server, &alice, &cid);
    let (s, v) = call_as_user(
        &server,
        &alice,
        "POST",
        &format!("/issuance/{cid}/relay"),
        Some(
            json!({ "protocol": 1, "session_id": cid, "seq": st["seq"], "responses": [],
                     "answers": { "enter_pin": "246813", "set_new_pin": "735194" } }),
        ),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        wait_session_end(&server.url, &server.token, &cid)["status"],
        "pin_changed"
    );

    // The audit trail names each step; no PIN anywhere in it or the log.
    let (_, audit) = server.call("GET", "/audit?limit=1000", None);
    let text = audit.to_string();
    for action in ["device.unlock_request", "unlock.start", "device.unlock"] {
        assert!(text.contains(action), "{action}");
    }
    for secret in ["246813", "735194"] {
        assert!(
            !text.contains(secret) && !server.output().contains(secret),
            "{secret}"
        );
    }
    // Another person learns nothing of the device, its state included:
    // declared forgotten (still alice's), it is "not yours" to bob and
    // "not issued" to alice.
    let out = server.admin(&["device", "incident", SERIAL, "--reason", "forgotten"]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let bob_user = json!({ "login": "bob", "display_name": "Bob Baker" });
    assert_eq!(server.call("POST", "/users", Some(bob_user)).0, 201);
    let bob = sign_in_user(&server, "bob");
    let path = format!("/me/devices/{SERIAL}/unlock");
    let (s, v) = call_as_user(&server, &bob, "POST", &path, None);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("device_not_yours")),
        "{v}"
    );
    let (s, v) = unlock_mine();
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("device_not_issued")),
        "{v}"
    );
}

#[test]
fn a_help_desk_request_is_completed_by_the_person_through_their_agent_on_sqlite() {
    request_then_person_unlocks(TestServer::start());
}

#[test]
fn a_help_desk_request_is_completed_by_the_person_through_their_agent_on_postgres() {
    if let Some(server) = support::postgres_server("unlock_request") {
        request_then_person_unlocks(server);
    }
}

/// An unlock request past its validity is refused (its end written in the
/// store: the clock cannot be moved).
#[test]
fn an_expired_unlock_request_is_refused() {
    let server = TestServer::start();
    support::seed_piv_standard(&server, "31000811");
    let alice = sign_in_user(&server, "alice");
    let _agent = paired_agent(
        &server,
        &["--virtual", "yubikey5:31000811"],
        &["--account", "alice"],
        &["31000811"],
    );
    let (s, first) = server.call("POST", "/issuance", Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000811", "pin": "735194", "via": "agent" })));
    assert_eq!(s, 201, "{first}");
    wait_session_end(
        &server.url,
        &server.token,
        first["session_id"].as_str().unwrap(),
    );
    let (s, v) = server.call("POST", "/devices/31000811/unlock-requests", None);
    assert_eq!(s, 201, "{v}");
    support::sqlite_exec(
        &server.data_path().join("keyward.db"),
        "UPDATE unlock_requests SET expires_at = created_at",
    );
    let (s, v) = call_as_user(&server, &alice, "POST", "/me/devices/31000811/unlock", None);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("no_unlock_request")),
        "{v}"
    );
}

/// `keyward unlock --offline` with its standard input and output piped:
/// the first line it prints (its challenge, or nothing for a YubiKey) and
/// a writer for the response.
struct OfflineTool {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl OfflineTool {
    fn spawn(serial: &str, answers: &std::path::Path) -> OfflineTool {
        let mut child = std::process::Command::new(support::BIN)
            .args(["unlock", "--offline", "--json", "--serial", serial])
            .arg("--answers")
            .arg(answers)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        OfflineTool {
            child,
            lines: std::io::BufRead::lines(std::io::BufReader::new(out)),
        }
    }

    fn next_json(&mut self) -> Value {
        let line = self.lines.next().expect("a line").unwrap();
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("{line}"))
    }

    /// Answers with `value`; the outcome and the exit code.
    fn answer(mut self, value: &str) -> (Value, Option<i32>) {
        use std::io::Write;
        let mut stdin = self.child.stdin.take().unwrap();
        writeln!(stdin, "{value}").unwrap();
        drop(stdin);
        let end = self.next_json();
        let status = self.child.wait().unwrap();
        (end, status.code())
    }
}

fn offline_answer(server: &TestServer, serial: &str, challenge: Option<&str>) -> (u16, Value) {
    let help = server.token_with_role("help_desk");
    server.call_as(
        &help,
        "POST",
        &format!("/devices/{serial}/offline-unlock"),
        Some(json!({ "challenge": challenge })),
    )
}

/// Issue 16, item 4: offline unlock of a C4000 by challenge-response and of
/// a YubiKey by its PUK, each with the tool on pcscd (exclusive) and the
/// help desk's answer from the API; replays and wrong responses refused by
/// the device; the YubiKey's PUK replaced at its next (online) unlock.
#[test]
fn offline_unlock_by_challenge_response_and_by_the_puk() {
    let _lock = pcsc::lock();
    pcsc::ensure_pcscd();
    let server = TestServer::start();
    support::seed_piv_standard(&server, "31000802");
    let (s, v) = server.call(
        "POST",
        "/devices",
        Some(json!({ "device_type": "c4000", "serial": "41000802", "firmware_version": "1.0.0" })),
    );
    assert_eq!(s, 201, "{v}");
    let dir = tempfile::tempdir().unwrap();
    let answers = dir.path().join("answers.toml");
    std::fs::write(&answers, "pin = \"735194\"\nnew_pin = \"246813\"\n").unwrap();
    let a = answers.to_str().unwrap();

    // The C4000.
    let card = Vcard::spawn(&["--profile", "c4000", "--serial", "41000802"]);
    let out = keyward(
        &server,
        "issue",
        &[
            "--user",
            "alice",
            "--policy",
            "PIV Standard",
            "--serial",
            "41000802",
            "--answers",
            a,
            "--json",
        ],
    );
    assert_eq!(report(&out)["state"], "issued", "{}", report(&out));
    block_pin_with_opensc();
    // The help desk needs the challenge, of the right length.
    assert_eq!(offline_answer(&server, "41000802", None).0, 400);
    assert_eq!(offline_answer(&server, "41000802", Some("0011")).0, 400);
    let mut tool = OfflineTool::spawn("41000802", &answers);
    let challenge = tool.next_json()["challenge"].as_str().unwrap().to_string();
    let (s, help) = offline_answer(&server, "41000802", Some(&challenge));
    assert_eq!(s, 200, "{help}");
    assert_eq!(help["kind"], "response");
    assert!(!help["pin_rules"].as_array().unwrap().is_empty(), "{help}");
    let response = help["value"].as_str().unwrap().to_string();
    let (end, code) = tool.answer(&response);
    assert_eq!(
        (end["state"].as_str(), code),
        (Some("unlocked"), Some(0)),
        "{end}"
    );
    assert!(
        pcsc::pkcs11_login("246813").status.success(),
        "the new PIN works"
    );
    // Offline, only the device's limits checked the PIN: an update asks for
    // one under the policy's rules at the device's next online session.
    let (s, pending) = server.call("GET", "/devices/41000802/update-requests", None);
    assert_eq!(s, 200, "{pending}");
    assert_eq!(
        (
            pending["origin"].as_str(),
            pending["changes"][0]["change"].as_str()
        ),
        (Some("offline_unlock"), Some("change_pin")),
        "{pending}"
    );
    std::fs::write(
        dir.path().join("update.toml"),
        "pin = \"246813\"\nnew_pin = \"135792\"\n",
    )
    .unwrap();
    let update_answers = dir.path().join("update.toml");
    let out = keyward(
        &server,
        "update",
        &[
            "--serial",
            "41000802",
            "--answers",
            update_answers.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(report(&out)["state"], "updated", "{}", report(&out));
    assert!(
        pcsc::pkcs11_login("135792").status.success(),
        "the PIN the rules checked"
    );
    let (s, _) = server.call("GET", "/devices/41000802/update-requests", None);
    assert_eq!(s, 404, "done");
    // A replayed response: the device's new challenge is another one.
    block_pin_with_opensc();
    let mut tool = OfflineTool::spawn("41000802", &answers);
    let again = tool.next_json()["challenge"].as_str().unwrap().to_string();
    assert_ne!(again, challenge);
    let (end, code) = tool.answer(&response);
    assert_eq!(
        (end["error"]["code"].as_str(), code),
        (Some("wrong_response"), Some(4)),
        "{end}"
    );
    // The admin CLI gives the response too (to a fresh challenge).
    let mut tool = OfflineTool::spawn("41000802", &answers);
    let challenge = tool.next_json()["challenge"].as_str().unwrap().to_string();
    let out = server.admin(&[
        "device",
        "unlock-response",
        "41000802",
        "--challenge",
        &challenge,
    ]);
    let text = support::stdout(&out);
    let response = text
        .lines()
        .find_map(|l| l.strip_prefix("response: "))
        .unwrap_or_else(|| panic!("{text}{}", support::stderr(&out)))
        .to_string();
    assert!(text.contains("at least 6"), "the PIN rules: {text}");
    let (end, code) = tool.answer(&response);
    assert_eq!(
        (end["state"].as_str(), code),
        (Some("unlocked"), Some(0)),
        "{end}"
    );
    drop(card);

    // The YubiKey: its PUK, disclosed and audited; replaced at the next unlock.
    let card = Vcard::spawn(&[
        "--profile",
        "yubikey5",
        "--firmware",
        "5.7.1",
        "--serial",
        "31000802",
    ]);
    let out = keyward(
        &server,
        "issue",
        &[
            "--user",
            "alice",
            "--policy",
            "PIV Standard",
            "--serial",
            "31000802",
            "--answers",
            a,
            "--json",
        ],
    );
    assert_eq!(report(&out)["state"], "issued", "{}", report(&out));
    block_pin_with_opensc();
    assert_eq!(
        offline_answer(&server, "31000802", Some("00112233")).1["error"]["code"],
        "no_challenge"
    );
    let (s, help) = offline_answer(&server, "31000802", None);
    assert_eq!((s, help["kind"].as_str()), (200, Some("puk")), "{help}");
    let (_, d) = server.call("GET", "/devices/31000802", None);
    assert_eq!(d["puk_rotation_due"], true, "{d}");
    let tool = OfflineTool::spawn("31000802", &answers);
    let (end, code) = tool.answer(help["value"].as_str().unwrap());
    assert_eq!(
        (end["state"].as_str(), code),
        (Some("unlocked"), Some(0)),
        "{end}"
    );
    assert!(pcsc::pkcs11_login("246813").status.success());
    // The next (online) unlock replaces the disclosed PUK.
    block_pin_with_opensc();
    let out = keyward(
        &server,
        "unlock",
        &["--serial", "31000802", "--answers", a, "--json"],
    );
    assert_eq!(report(&out)["state"], "unlocked", "{}", report(&out));
    let (_, d) = server.call("GET", "/devices/31000802", None);
    assert_eq!(d["puk_rotation_due"], false, "{d}");
    let (_, audit) = server.call("GET", "/audit?limit=1000", None);
    let text = audit.to_string();
    for action in [
        "device.offline_unlock",
        "device.puk_disclosed",
        "device.puk_rotated",
    ] {
        assert!(text.contains(action), "{action}");
    }
    assert!(
        !text.contains(help["value"].as_str().unwrap()),
        "no PUK in the audit"
    );
    drop(card);
}

/// Offline unlock is refused where the policy keeps the factory management
/// key (anyone could compute the response) and for generic PIV devices.
#[test]
fn offline_unlock_is_refused_under_the_factory_management_key() {
    let server = TestServer::start();
    support::seed_piv_standard(&server, "39999998");
    let (_, mut p) = server.call("GET", "/policies/PIV%20Standard", None);
    p["name"] = json!("PIV Keep");
    p["management_key"] = json!("keep");
    p.as_object_mut().unwrap().remove("id");
    let (s, v) = server.call("POST", "/policies", Some(p));
    assert_eq!(s, 201, "{v}");
    let (s, v) = server.call(
        "POST",
        "/devices",
        Some(json!({ "device_type": "c4000", "serial": "41000803", "firmware_version": "1.0.0" })),
    );
    assert_eq!(s, 201, "{v}");
    let dir = tempfile::tempdir().unwrap();
    let mut card = keyward_vcard::VirtualCard::new(
        keyward_vcard::VcardConfig::new(keyward_vcard::ProfileKind::C4000)
            .with_serial(41000803)
            .with_ca_dir(dir.path()),
    )
    .unwrap();
    card.power_on();
    let (s, mut batch) = server.call(
        "POST",
        "/issuance",
        Some(
            json!({ "user": "alice", "policy": "PIV Keep", "serial": "41000803", "pin": "735194" }),
        ),
    );
    assert_eq!(s, 201, "{batch}");
    let id = batch["session_id"].as_str().unwrap().to_string();
    while batch["state"] == "running" {
        let responses = support::relay_in_process(&mut card, &batch);
        let (s, next) = server.call(
            "POST",
            &format!("/issuance/{id}/relay"),
            Some(json!({ "protocol": 1, "session_id": id, "seq": batch["seq"], "responses": responses })),
        );
        assert_eq!(s, 200, "{next}");
        batch = next;
    }
    assert_eq!(batch["state"], "issued", "{batch}");
    let (s, v) = offline_answer(&server, "41000803", Some("0011223344556677"));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("factory_management_key")),
        "{v}"
    );
    // An issuance operator may not ask at all.
    let operator = server.token_with_role("issuance_operator");
    let (s, _) = server.call_as(
        &operator,
        "POST",
        "/devices/41000803/offline-unlock",
        Some(json!({ "challenge": "0011223344556677" })),
    );
    assert_eq!(s, 403);
}
