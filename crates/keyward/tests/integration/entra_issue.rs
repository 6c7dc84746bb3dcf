//! Issue 6 end to end: `keyward issue` issues a virtual device on pcscd/vpcd
//! with a policy whose FIDO application registers a passkey with a
//! Passkey-Enabled Service; the service is the simulated Entra ID tenant
//! (keyward-entra-standin) reached by the production Graph client over real
//! HTTP. python-fido2 then signs in with the passkey (getAssertion with the
//! right PIN), and the signature verifies with the public key the tenant
//! stored. Device rules refuse before the device is touched (exit 3).

use crate::common::agent;
use crate::common::pcsc;
use crate::common::self_service;
use crate::support;

use std::process::Output;

use keyward_entra_standin::{Fault, StandinConfig, StandinHandle, StandinUser};
use pcsc::Vcard;
use serde_json::{json, Value};
use support::TestServer;

const PYTHON: &str = "/usr/bin/python3";
const UPN: &str = "alice@example.com";
const SECRET: &str = "entra-e2e-client-secret-4711";
const CLIENT_ID: &str = "5b1a4c0e-6a55-4d7c-9a61-2f3c9d7e0a11";

/// A simulated tenant trusting the card's manufacturer CA, on its own
/// runtime (kept alive by the returned value).
struct Tenant {
    handle: StandinHandle,
    _rt: tokio::runtime::Runtime,
}

fn tenant(card: &Vcard) -> Tenant {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let ca = std::fs::read_to_string(card.ca_cert_file()).unwrap();
    let mut cfg = StandinConfig::new("contoso.onmicrosoft.com", CLIENT_ID, SECRET, vec![ca]);
    cfg.users.push(StandinUser::new(UPN, "Alice Archer"));
    let handle = rt.block_on(keyward_entra_standin::serve(cfg)).unwrap();
    Tenant { handle, _rt: rt }
}

/// Users, the device, the Passkey-Enabled Service and a policy
/// "PIV Standard" + FIDO application.
fn seed(
    server: &TestServer,
    t: &Tenant,
    device_type: &str,
    serial: &str,
    firmware: &str,
    shared: bool,
) {
    seed_with(
        server,
        t,
        (device_type, serial, firmware),
        shared,
        json!({}),
        json!({}),
    );
}

/// [`seed`] with extra fields for the user and for the service.
fn seed_with(
    server: &TestServer,
    t: &Tenant,
    (device_type, serial, firmware): (&str, &str, &str),
    shared: bool,
    user_extra: Value,
    service_extra: Value,
) {
    let mut user =
        json!({ "login": "alice", "display_name": "Alice Archer", "upn": UPN, "email": UPN });
    user.as_object_mut()
        .unwrap()
        .extend(user_extra.as_object().unwrap().clone());
    let (s, v) = server.call("POST", "/users", Some(user));
    assert_eq!(s, 201, "{v}");
    let (s, v) = server.call(
        "POST",
        "/devices",
        Some(json!({ "device_type": device_type, "serial": serial, "firmware_version": firmware })),
    );
    assert_eq!(s, 201, "{v}");
    let mut service = json!({
        "name": "Simulated tenant", "tenant_id": "contoso.onmicrosoft.com", "client_id": CLIENT_ID,
        "client_secret": SECRET, "authority_url": t.handle.authority_url(), "graph_url": t.handle.graph_url(),
        "scope": "https://graph.microsoft.com/.default",
    });
    service
        .as_object_mut()
        .unwrap()
        .extend(service_extra.as_object().unwrap().clone());
    let (s, v) = server.call("POST", "/passkey-services", Some(service));
    assert_eq!(s, 201, "{v}");
    let service_id = v["id"].as_str().unwrap().to_string();
    let (s, v) = server.call(
        "POST",
        "/policies",
        Some(json!({
            "name": "PIV + Passkey", "device_types": [device_type], "management_key": "random", "require_device_attestation": false,
            "pin_application": { "min_length": 6, "max_length": 8, "character_set": "numeric", "max_repeated": 2, "max_sequential": 2, "pin_retry_count": 3, "puk_retry_count": 3 },
            "pki_applications": [
                { "name": "PIV Authentication", "slot": "9a", "algorithm": "eccp256", "certificate_authority": "Keyward Issuing CA",
                  "template": { "subject_dn": "CN={display_name},UID={login}", "subject_alt_names": ["upn"], "validity_days": 365,
                                "key_usage": ["digital_signature"], "extended_key_usage": ["client_auth", "smartcard_logon"] } }
            ],
            "fido_application": { "passkey_service_id": service_id, "passkey_service_name": "Simulated tenant",
                                  "share_device_pin": shared, "cred_protect": 1 }
        })),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        server
            .call(
                "PUT",
                "/settings/initial_pin_display_mode",
                Some(json!({ "value": "displayed" }))
            )
            .0,
        200
    );
}

fn issue(server: &TestServer, card: &Vcard, serial: &str, answers: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "--user",
        "alice",
        "--policy",
        "PIV + Passkey",
        "--serial",
        serial,
    ];
    args.extend_from_slice(extra);
    run_issue(server, card, answers, &args)
}

/// `keyward issue --answers FILE --json ARGS`.
fn run_issue(server: &TestServer, card: &Vcard, answers: &str, args: &[&str]) -> Output {
    let file = card.path("answers.toml");
    std::fs::write(&file, answers).unwrap();
    std::process::Command::new(support::BIN)
        .arg("issue")
        .args(["--server", &server.url, "--token", &server.token])
        .args(["--answers", file.to_str().unwrap(), "--json"])
        .args(args)
        .output()
        .unwrap()
}

/// `keyward issue` of "PIV + Passkey" on a client without PC/SC: through a
/// `keyward agent` on pcscd (`agent_args`: a USB key's HID socket), paired
/// first. Returns the run and the agent (kept alive by the caller).
fn issue_via_agent(
    server: &TestServer,
    card: &Vcard,
    serial: &str,
    answers: &str,
    agent_args: &[&str],
) -> (Output, agent::Agent) {
    let agent = agent::paired_pcsc_agent(server, agent_args, &[], &[serial]);
    let file = card.path("answers.toml");
    std::fs::write(&file, answers).unwrap();
    // No PC/SC here: only the agent reaches the device.
    let out = agent::cli_without_pcsc(server, "issue")
        .args(["--answers", file.to_str().unwrap(), "--json"])
        .args(["--user", "alice", "--policy", "PIV + Passkey"])
        .args(["--serial", serial])
        .output()
        .unwrap();
    (out, agent)
}

fn report(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&stdout).unwrap_or_else(|_| {
        panic!(
            "no JSON report (exit {:?})\n{stdout}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// python-fido2 over PC/SC: getAssertion for the passkey's rp.id with `pin`,
/// verified with the public key the tenant stored.
/// The `--json` report of a run that must have ended `issued` (its stderr
/// shown otherwise).
fn issued(out: &Output) -> Value {
    let r = report(out);
    assert_eq!(
        r["state"],
        "issued",
        "{r}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    r
}

fn assert_passkey_signs_in(t: &Tenant, pin: &str) {
    passkey_signs_in(t, pin, &[]);
}

/// The same over a virtual USB key's HID socket.
fn passkey_signs_in(t: &Tenant, pin: &str, extra: &[&str]) {
    let keys = t.handle.passkeys(UPN);
    assert_eq!(keys.len(), 1, "one passkey at the tenant: {keys:?}");
    let script = format!(
        "{}/tests/python/entra_assert.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let run = || {
        std::process::Command::new(PYTHON)
            .arg(&script)
            .args([
                "--reader",
                "Virtual",
                "--rp",
                "login.microsoft.com",
                "--pin",
                pin,
            ])
            // `--name=value`: a base64url id may begin with '-', which argparse
            // would take for an option (seen once in 64 runs).
            .arg(format!("--credential-id={}", keys[0].credential_id))
            .arg(format!("--public-key={}", keys[0].public_key_sec1))
            .args(extra)
            .output()
            .unwrap_or_else(|e| panic!("{PYTHON}: {e}; install python3-fido2 python3-pyscard"))
    };
    let ok = |out: &std::process::Output| {
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("assertion verified")
    };
    let mut out = run();
    if !ok(&out) {
        // pcscd may still be settling the card the client just released:
        // report the first try and try once more (a wrong key fails both).
        eprintln!(
            "first getAssertion try failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_secs(1));
        out = run();
    }
    assert!(
        ok(&out),
        "python-fido2 getAssertion failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn passkeys_on_record(r: &Value) -> Vec<Value> {
    r["credentials"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["kind"] == "passkey")
        .cloned()
        .collect()
}

#[test]
fn c4000_shared_pin_set_at_the_start() {
    let _lock = pcsc::lock();
    pcsc::ensure_pcscd();
    let serial = "41000021";
    let card = Vcard::spawn(&["--profile", "c4000", "--serial", serial]);
    let t = tenant(&card);
    let server = TestServer::start();
    seed(&server, &t, "c4000", serial, "1.0.0", true);
    let tokens_before = t.handle.tokens_issued();
    let calls_before = t.handle.graph_calls();
    let out = issue(
        &server,
        &card,
        serial,
        "pin = \"735194\"\ntouch = \"true\"\n",
        &[],
    );
    let r = issued(&out);
    let pk = passkeys_on_record(&r);
    assert_eq!(pk.len(), 1, "{r}");
    // creationOptions and the registration: two Graph calls on one token
    // (the server keeps the service's client and its token cache).
    assert_eq!(t.handle.graph_calls() - calls_before, 2);
    assert_eq!(t.handle.tokens_issued() - tokens_before, 1);
    // The PIV issuance takes 3 device round trips; the FIDO step adds 2
    // (its probe rides along the PIV writes), besides the person's prompt.
    assert_eq!(r["counters"]["round_trips"], 5, "{r}");
    // For BENCHMARKS.md: the client's counters and the Graph calls' time.
    eprintln!("issuance counters: {}", r["counters"]);
    for line in server.output().lines().filter(|l| l.contains("graph_ms")) {
        eprintln!("{line}");
    }
    let at_tenant = t.handle.passkeys(UPN);
    assert_eq!(pk[0]["serial"], at_tenant[0].id);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("735194"));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("735194"));
    assert_passkey_signs_in(&t, "735194");
}

#[test]
fn c4000_unshared_sets_a_fido_pin_and_faults_are_survived() {
    let _lock = pcsc::lock();
    pcsc::ensure_pcscd();
    let serial = "41000022";
    let card = Vcard::spawn(&["--profile", "c4000", "--serial", serial]);
    let t = tenant(&card);
    let server = TestServer::start();
    seed(&server, &t, "c4000", serial, "1.0.0", false);
    // Graph throttles once: retried after Retry-After, the issuance goes on.
    t.handle.push_fault(Fault::throttled(1));
    let out = issue(
        &server,
        &card,
        serial,
        "pin = \"735194\"\nfido_pin = \"864213\"\ntouch = \"true\"\n",
        &[],
    );
    let r = issued(&out);
    assert_eq!(passkeys_on_record(&r).len(), 1);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("864213"));
    assert_passkey_signs_in(&t, "864213");
    // No client secret, token or PIN in any server log line; the canary
    // (the session's id, logged with the Graph timings) shows the search
    // reads the log.
    let log = server.output();
    let canary = r["session_id"].as_str().unwrap();
    assert!(log.contains(canary), "the canary is in the log:\n{log}");
    for secret in [SECRET, "735194", "864213", "standin."] {
        assert!(!log.contains(secret), "{secret} in the server log");
    }
}

/// C4000 unshared, its FIDO application already has a PIN (set over PC/SC
/// by python-fido2 before the issuance): the person enters it
/// (enter_fido_pin), nobody sets one, and that PIN signs in.
#[test]
fn c4000_unshared_with_a_fido_pin_already_set() {
    let _lock = pcsc::lock();
    pcsc::ensure_pcscd();
    let serial = "41000028";
    let card = Vcard::spawn(&["--profile", "c4000", "--serial", serial]);
    let out = std::process::Command::new(PYTHON)
        .args([
            "-c",
            "import sys, types; sys.path.insert(0, sys.argv[1]); from fido_check import open_device; from fido2.ctap2 import Ctap2; from fido2.ctap2.pin import ClientPin; d = open_device(types.SimpleNamespace(hid_socket=None, reader='Virtual')); ClientPin(Ctap2(d)).set_pin(sys.argv[2]); print('set')",
        ])
        .arg(format!("{}/tests/python", env!("CARGO_MANIFEST_DIR")))
        .arg("246813")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("set"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = tenant(&card);
    let server = TestServer::start();
    seed(&server, &t, "c4000", serial, "1.0.0", false);
    // No fido_pin in the answers: a set_fido_pin prompt would fail the run.
    let out = issue(
        &server,
        &card,
        serial,
        "pin = \"735194\"\nfido_current_pin = \"246813\"\ntouch = \"true\"\n",
        &[],
    );
    let r = issued(&out);
    assert_eq!(passkeys_on_record(&r).len(), 1);
    assert_passkey_signs_in(&t, "246813");
}

#[test]
fn declined_then_retry() {
    let _lock = pcsc::lock();
    pcsc::ensure_pcscd();
    let serial = "41000024";
    let card = Vcard::spawn(&["--profile", "c4000", "--serial", serial]);
    let t = tenant(&card);
    let server = TestServer::start();
    seed(&server, &t, "c4000", serial, "1.0.0", false);
    // The person declines "Verify this device and confirm the registration".
    let answers = "pin = \"735194\"\nfido_pin = \"864213\"\ntouch = \"false\"\n";
    let out = issue(&server, &card, serial, answers, &[]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = report(&out);
    assert!(r.to_string().contains("declined_by_person"), "{r}");
    assert!(t.handle.passkeys(UPN).is_empty());
    let session = r["session_id"].as_str().unwrap().to_string();
    // Retry: the same prompts, confirmed this time (the answers file has
    // both FIDO PIN keys: which one is asked depends on the device).
    let out = run_issue(
        &server,
        &card,
        "fido_current_pin = \"864213\"\nfido_pin = \"864213\"\ntouch = \"true\"\n",
        &["--retry", &session],
    );
    issued(&out);
    assert_passkey_signs_in(&t, "864213");
}

#[test]
fn forbidden_then_retry() {
    let _lock = pcsc::lock();
    pcsc::ensure_pcscd();
    let serial = "41000023";
    let card = Vcard::spawn(&["--profile", "c4000", "--serial", serial]);
    let t = tenant(&card);
    let server = TestServer::start();
    seed(&server, &t, "c4000", serial, "1.0.0", true);
    // 403 at creationOptions: the attempt fails with a clear message.
    t.handle.push_fault(Fault::forbidden());
    let out = issue(
        &server,
        &card,
        serial,
        "pin = \"735194\"\ntouch = \"true\"\n",
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = report(&out);
    let text = r.to_string();
    assert!(
        text.contains("UserAuthMethod-Passkey.ReadWrite.All"),
        "the permission is named: {r}"
    );
    let session = r["session_id"].as_str().unwrap().to_string();
    // Retry after the fault is cleared ends issued.
    let out = run_issue(&server, &card, "touch = \"true\"\n", &["--retry", &session]);
    issued(&out);
    assert_eq!(t.handle.passkeys(UPN).len(), 1);
    assert_passkey_signs_in(&t, "735194");
}

#[test]
fn device_rules_refuse_before_the_device_is_touched() {
    let _lock = pcsc::lock();
    pcsc::ensure_pcscd();
    let serial = "31000027";
    let card = Vcard::spawn(&[
        "--profile",
        "yubikey5",
        "--firmware",
        "5.2.7",
        "--serial",
        serial,
    ]);
    let t = tenant(&card);
    let server = TestServer::start();
    // YubiKey 5.2.7 with an unshared FIDO policy: firmware too old.
    seed(&server, &t, "yubikey5", serial, "5.2.7", false);
    let out = issue(
        &server,
        &card,
        serial,
        "pin = \"735194\"\nfido_pin = \"864213\"\ntouch = \"true\"\n",
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(err.contains("5.3"), "names the firmware rule: {err}");
    assert_eq!(t.handle.graph_calls(), 0);
    // "Test connection": a token, then the user's passkeys.
    let (st, v) = server.call(
        "POST",
        "/passkey-services/Simulated%20tenant/test",
        Some(json!({ "user": UPN })),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["verdict"], "ok", "{v}");
    assert_eq!(v["fido2_methods"], 0, "{v}");
    let (_, v) = server.call(
        "POST",
        "/passkey-services/Simulated%20tenant/test",
        Some(json!({ "user": "nobody@example.com" })),
    );
    assert_eq!(v["verdict"], "graph_failed", "{v}");
    assert!(v["message"].as_str().unwrap().contains("not found"), "{v}");
    // A policy sharing the PIN on a YubiKey cannot even be saved.
    let (s, v) = server.call(
        "POST",
        "/policies",
        Some(json!({
            "name": "Shared on YubiKey", "device_types": ["yubikey5"], "require_device_attestation": false,
            "pin_application": { "min_length": 6, "max_length": 8, "character_set": "numeric" },
            "fido_application": { "passkey_service_id": uuid_of_service(&server), "share_device_pin": true }
        })),
    );
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("share_device_pin"), "{v}");
}

fn uuid_of_service(server: &TestServer) -> String {
    let (s, v) = server.call("GET", "/passkey-services", None);
    assert_eq!(s, 200, "{v}");
    v[0]["id"].as_str().unwrap().to_string()
}

fn put_setting(server: &TestServer, key: &str, value: &str) {
    let (s, v) = server.call(
        "PUT",
        &format!("/settings/{key}"),
        Some(json!({ "value": value })),
    );
    assert_eq!(s, 200, "{v}");
}

/// Get Initial PIN in self-service, as the user.
fn reveal_initial_pin(server: &TestServer, login: &str, serial: &str) -> String {
    let (_, code) = server.call("POST", &format!("/users/{login}/enrollment-code"), None);
    let http = reqwest::blocking::Client::new();
    let password = format!("{login}-first-passphrase");
    let r = http
        .post(server.api("/auth/enroll"))
        .json(&json!({ "login": login, "code": code["code"], "password": password }))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let r = http
        .post(server.api("/auth/session"))
        .json(&json!({ "login": login, "password": password }))
        .send()
        .unwrap();
    let cookie = r.headers()["set-cookie"]
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
    let r = http
        .post(server.api(&format!("/me/devices/{serial}/initial-pin")))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "Get Initial PIN");
    r.json::<Value>().unwrap()["pin"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn c4000_shared_pin_not_displayed_without_change_shows_the_initial_pin() {
    let _lock = pcsc::lock();
    pcsc::ensure_pcscd();
    let serial = "41000025";
    let card = Vcard::spawn(&["--profile", "c4000", "--serial", serial]);
    let t = tenant(&card);
    let server = TestServer::start();
    seed(&server, &t, "c4000", serial, "1.0.0", true);
    put_setting(&server, "initial_pin_display_mode", "not_displayed");
    put_setting(&server, "change_pin_during_issuance", "no");
    // The registration prompt shows the initial PIN; the client types it
    // back (keyward issue answers with the shown value); nobody else is asked.
    let out = issue(&server, &card, serial, "touch = \"true\"\n", &[]);
    let r = issued(&out);
    assert_eq!(passkeys_on_record(&r).len(), 1);
    // Get Initial PIN stays available, and that PIN signs in with the passkey.
    let pin = reveal_initial_pin(&server, "alice", serial);
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&pin));
    assert_passkey_signs_in(&t, &pin);
}

#[test]
fn c4000_shared_pin_not_displayed_with_change_uses_the_persons_pin() {
    let _lock = pcsc::lock();
    pcsc::ensure_pcscd();
    let serial = "41000026";
    let card = Vcard::spawn(&["--profile", "c4000", "--serial", serial]);
    let t = tenant(&card);
    let server = TestServer::start();
    seed(&server, &t, "c4000", serial, "1.0.0", true);
    put_setting(&server, "initial_pin_display_mode", "not_displayed");
    put_setting(&server, "change_pin_during_issuance", "yes");
    let out = issue(
        &server,
        &card,
        serial,
        "new_pin = \"582046\"\ntouch = \"true\"\n",
        &[],
    );
    let r = issued(&out);
    assert_eq!(passkeys_on_record(&r).len(), 1);
    assert_passkey_signs_in(&t, "582046");
}

/// Shared PIN, Not Displayed, Change PIN = Yes, in order: the registration
/// shows the initial PIN (typed back by the client), the passkey is
/// registered, THEN the person is asked for their device PIN; the device is
/// removed during the last batch (the PIN change), and Cancel leaves the
/// passkey deleted at the tenant and revoked on record.
#[test]
fn c4000_shared_pin_change_comes_after_the_registration_and_cancel_deletes_the_passkey() {
    let _lock = pcsc::lock();
    pcsc::ensure_pcscd();
    let serial = "41000027";
    let card = Vcard::spawn(&["--profile", "c4000", "--serial", serial]);
    let t = tenant(&card);
    let server = TestServer::start();
    seed(&server, &t, "c4000", serial, "1.0.0", true);
    put_setting(&server, "initial_pin_display_mode", "not_displayed");
    put_setting(&server, "change_pin_during_issuance", "yes");
    // No new_pin in the answers: keyward issue stops at the set_new_pin
    // prompt, which must come after the registration.
    let out = issue(&server, &card, serial, "touch = \"true\"\n", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{stderr}");
    let id = stderr
        .split("session ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no session id in: {stderr}"))
        .to_string();
    let (_, status) = server.call("GET", &format!("/issuance/{id}"), None);
    assert_eq!(status["status"], "running", "{status}");
    let kinds: Vec<&str> = status["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["set_new_pin"], "{status}");
    assert_eq!(
        t.handle.passkeys(UPN).len(),
        1,
        "the passkey is registered before the device PIN is asked for"
    );
    // The new PIN is checked against the policy's rules first.
    let (s, refused) = server.call(
        "POST",
        &format!("/issuance/{id}/relay"),
        Some(
            json!({ "protocol": 1, "session_id": id, "seq": status["seq"], "responses": [],
            "answers": { "set_new_pin": "1" } }),
        ),
    );
    assert_eq!(s, 400, "{refused}");
    let (s, batch) = server.call(
        "POST",
        &format!("/issuance/{id}/relay"),
        Some(
            json!({ "protocol": 1, "session_id": id, "seq": status["seq"], "responses": [],
            "answers": { "set_new_pin": "582046" } }),
        ),
    );
    assert_eq!(s, 200, "{batch}");
    let commands = batch["commands"].as_array().unwrap();
    assert_eq!(
        commands.len(),
        2,
        "SELECT PIV, CHANGE REFERENCE DATA: {batch}"
    );
    assert!(commands[1]["bytes"]
        .as_str()
        .unwrap()
        .starts_with("00240080"));
    // The device is taken out before the PIN change reaches it.
    let (s, failed) = server.call(
        "POST",
        &format!("/issuance/{id}/relay"),
        Some(
            json!({ "protocol": 1, "session_id": id, "seq": batch["seq"], "responses": [],
            "transport_error": "device_removed" }),
        ),
    );
    assert_eq!(
        (s, failed["state"].as_str()),
        (200, Some("failed")),
        "{failed}"
    );
    let out = std::process::Command::new(support::BIN)
        .arg("issue")
        .args(["--server", &server.url, "--token", &server.token])
        .args(["--cancel", &id, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        t.handle.passkeys(UPN).is_empty(),
        "the passkey is deleted at the tenant"
    );
    let (_, status) = server.call("GET", &format!("/issuance/{id}"), None);
    assert_eq!(status["status"], "cancelled", "{status}");
    let passkeys: Vec<&Value> = status["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "passkey")
        .collect();
    assert_eq!(passkeys.len(), 1, "{status}");
    assert!(!passkeys[0]["revoked_at"].is_null(), "revoked: {status}");
    drop(card);
}

#[test]
fn yubikey_5_4_3_nfc_unshared() {
    let _lock = pcsc::lock();
    pcsc::ensure_pcscd();
    let serial = "31000028";
    let card = Vcard::spawn(&[
        "--profile",
        "yubikey5",
        "--firmware",
        "5.4.3",
        "--transport",
        "nfc",
        "--serial",
        serial,
    ]);
    let t = tenant(&card);
    let server = TestServer::start();
    seed(&server, &t, "yubikey5", serial, "5.4.3", false);
    let out = issue(
        &server,
        &card,
        serial,
        "pin = \"735194\"\nfido_pin = \"973152\"\ntouch = \"true\"\n",
        &[],
    );
    let r = issued(&out);
    assert_eq!(passkeys_on_record(&r).len(), 1);
    assert_passkey_signs_in(&t, "973152");
}

/// Issue 15: attestation required (the policy's switch on) with the virtual
/// manufacturer CA as PIV and FIDO root: every certificate and the passkey
/// are recorded attested, and the User page says so. A server that trusts
/// no FIDO root fails the attempt at the passkey, before Graph sees the
/// registration.
#[test]
fn yubikey_attestation_required_for_piv_and_passkey() {
    let _lock = pcsc::lock();
    pcsc::ensure_pcscd();
    let conf = tempfile::tempdir().unwrap();
    // A server trusting `card`'s manufacturer CA for PIV (and for FIDO with
    // `fido_roots`), seeded with `serial` under "PIV + Passkey",
    // attestation required.
    let server_for = |card: &Vcard, t: &Tenant, serial: &str, fido_roots: bool| {
        let root = card.ca_cert_file().display().to_string();
        let file = conf.path().join(format!("keyward-{serial}.toml"));
        let mut text = format!("attestation_roots = [{root:?}]\n");
        if fido_roots {
            text.push_str(&format!("fido_attestation_roots = [{root:?}]\n"));
        }
        std::fs::write(&file, text).unwrap();
        let server = TestServer::start_with(support::ServerOptions {
            args: vec!["--config".into(), file.display().to_string()],
            ..Default::default()
        });
        seed(&server, t, "yubikey5", serial, "5.4.3", false);
        let (_, mut p) = server.call("GET", "/policies/PIV%20%2B%20Passkey", None);
        p["require_device_attestation"] = json!(true);
        let (s, v) = server.call("PUT", "/policies/PIV%20%2B%20Passkey", Some(p));
        assert_eq!(s, 200, "{v}");
        server
    };
    let spawn = |serial: &str| {
        Vcard::spawn(&[
            "--profile",
            "yubikey5",
            "--firmware",
            "5.4.3",
            "--transport",
            "nfc",
            "--serial",
            serial,
        ])
    };
    let answers = "pin = \"735194\"\nfido_pin = \"973152\"\ntouch = \"true\"\n";

    // Both roots: issued, every credential attested, on the User page too.
    let card = spawn("31000027");
    let t = tenant(&card);
    let server = server_for(&card, &t, "31000027", true);
    let r = issued(&issue(&server, &card, "31000027", answers, &[]));
    let credentials = r["credentials"].as_array().unwrap();
    assert_eq!(credentials.len(), 2, "{r}");
    assert!(
        credentials.iter().all(|c| c["attested"] == true),
        "{credentials:?}"
    );
    let admin = self_service::sign_in_operator(&server, "admin2", "administrator");
    let (s, page) = self_service::page_as(&server, &admin, "/users/alice");
    assert_eq!(s, 200, "{page}");
    assert_eq!(page.matches(">attested<").count(), 2, "{page}");
    // Issue 19: a certificate by its purpose; who issued it by name, not
    // by the audit trail's identifier.
    assert!(
        page.contains("certificate: PIV Authentication (9A)"),
        "{page}"
    );
    assert!(page.contains("by API token bootstrap"), "{page}");
    assert!(!page.contains("token:bootstrap"), "{page}");
    assert_passkey_signs_in(&t, "973152");
    drop(server);
    drop(card);

    // No FIDO root: the PIV keys attest, the passkey cannot; Graph never
    // sees the registration.
    let card = spawn("31000026");
    let refusing = server_for(&card, &t, "31000026", false);
    let calls_before = t.handle.graph_calls();
    let r = report(&issue(&refusing, &card, "31000026", answers, &[]));
    assert_eq!(r["state"], "failed", "{r}");
    assert_eq!(r["error"]["code"], "attestation_failed", "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("passkey"),
        "{r}"
    );
    // creationOptions only: no registration POST; still the one passkey.
    assert_eq!(t.handle.graph_calls() - calls_before, 1);
    assert_eq!(t.handle.passkeys(UPN).len(), 1);
}

/// A USB YubiKey: PIV over PC/SC, FIDO over CTAPHID on its HID socket.
fn yubikey_usb(firmware: &str, preset_fido_pin: Option<&str>) {
    let _lock = pcsc::lock();
    pcsc::ensure_pcscd();
    let serial = if firmware == "5.7.1" {
        "31000029"
    } else {
        "31000030"
    };
    let card = Vcard::spawn(&[
        "--profile",
        "yubikey5",
        "--firmware",
        firmware,
        "--serial",
        serial,
        "--hid-socket",
        "{dir}/hid.sock",
    ]);
    let hid = card.path("hid.sock");
    let hid = hid.to_str().unwrap();
    if let Some(pin) = preset_fido_pin {
        let out = std::process::Command::new(PYTHON)
            .args(["-c", "import sys; sys.path.insert(0, sys.argv[1]); from fido_check import SocketHidConnection; from fido2.hid import CtapHidDevice; from fido2.hid.base import HidDescriptor; from fido2.ctap2 import Ctap2; from fido2.ctap2.pin import ClientPin; d = CtapHidDevice(HidDescriptor(sys.argv[2], 0x1050, 0x0407, 64, 64), SocketHidConnection(sys.argv[2])); ClientPin(Ctap2(d)).set_pin(sys.argv[3]); print('set')"])
            .arg(format!("{}/tests/python", env!("CARGO_MANIFEST_DIR")))
            .args([hid, pin])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("set"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let t = tenant(&card);
    let server = TestServer::start();
    seed(&server, &t, "yubikey5", serial, firmware, false);
    let answers = match preset_fido_pin {
        Some(pin) => format!("pin = \"735194\"\nfido_current_pin = \"{pin}\"\ntouch = \"true\"\n"),
        None => "pin = \"735194\"\nfido_pin = \"973152\"\ntouch = \"true\"\n".to_string(),
    };
    let out = issue(&server, &card, serial, &answers, &["--hid-socket", hid]);
    let r = issued(&out);
    assert_eq!(passkeys_on_record(&r).len(), 1);
    passkey_signs_in(
        &t,
        preset_fido_pin.unwrap_or("973152"),
        &["--hid-socket", hid],
    );
}

#[test]
fn yubikey_5_4_3_usb_unshared_sets_a_fido_pin() {
    yubikey_usb("5.4.3", None);
}

#[test]
fn yubikey_5_4_3_usb_unshared_with_a_fido_pin_already_set() {
    yubikey_usb("5.4.3", Some("24680"));
}

#[test]
fn yubikey_5_7_1_usb_unshared() {
    yubikey_usb("5.7.1", None);
}

#[test]
fn beta_api_and_users_matched_by_object_id() {
    let _lock = pcsc::lock();
    pcsc::ensure_pcscd();
    let serial = "41000031";
    let card = Vcard::spawn(&["--profile", "c4000", "--serial", serial]);
    let t = tenant(&card);
    // Entra knows alice by an object ID that is not her UPN's user.
    let entra = StandinUser::new("alice.archer@contoso.example", "Alice Archer");
    t.handle.add_user(entra.clone());
    let server = TestServer::start();
    seed_with(
        &server,
        &t,
        ("c4000", serial, "1.0.0"),
        true,
        json!({ "attributes": { "entra_object_id": entra.id.to_string() } }),
        json!({ "api_version": "beta", "challenge_timeout_minutes": 60, "user_id_attribute": "entra_object_id" }),
    );
    let out = issue(
        &server,
        &card,
        serial,
        "pin = \"735194\"\ntouch = \"true\"\n",
        &[],
    );
    issued(&out);
    assert_eq!(t.handle.passkeys(&entra.id.to_string()).len(), 1);
    assert!(t.handle.passkeys(UPN).is_empty());
    // v1.0 takes no longer challenge timeout: refused when saved.
    let (s, v) = server.call(
        "POST",
        "/passkey-services",
        Some(
            json!({ "name": "Other", "tenant_id": "contoso.onmicrosoft.com", "client_id": CLIENT_ID,
                     "client_secret": SECRET, "challenge_timeout_minutes": 60 }),
        ),
    );
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("challenge_timeout_minutes"), "{v}");
}

/// Issue 11: a passkey issuance through a workstation agent over real
/// PC/SC (the agent holds the card across batches: a reset between them
/// would lose the management key's witness and the FIDO PIN token); then
/// python-fido2 signs in with `pin`. `vcard_args` after the serial; a USB
/// key's HID socket is given to the agent and to python-fido2.
fn passkey_through_the_agent(
    (device_type, serial, firmware): (&str, &str, &str),
    vcard_args: &[&str],
    shared: bool,
    answers: &str,
    pin: &str,
) {
    let _lock = pcsc::lock();
    let mut args = vec!["--serial", serial];
    args.extend_from_slice(vcard_args);
    let card = Vcard::spawn(&args);
    let hid = vcard_args
        .contains(&"--hid-socket")
        .then(|| card.path("hid.sock").to_str().unwrap().to_string());
    let hid_args: Vec<&str> = hid
        .as_deref()
        .map(|h| vec!["--hid-socket", h])
        .unwrap_or_default();
    let t = tenant(&card);
    let server = TestServer::start();
    seed(&server, &t, device_type, serial, firmware, shared);
    let (out, agent) = issue_via_agent(&server, &card, serial, answers, &hid_args);
    let r = report(&out);
    assert_eq!(
        r["state"],
        "issued",
        "{r}\n{}\nagent:\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.output()
    );
    assert_eq!(passkeys_on_record(&r).len(), 1, "{r}");
    assert!(
        !agent.output().contains(pin),
        "no PIN in the agent's output"
    );
    agent.wait_output("released (reset)", std::time::Duration::from_secs(10));
    // The agent held the HID socket while the session ran; it let go.
    drop(agent);
    passkey_signs_in(&t, pin, &hid_args);
}

#[test]
fn c4000_shared_pin_through_an_agent_over_pcsc() {
    passkey_through_the_agent(
        ("c4000", "41000521", "1.0.0"),
        &["--profile", "c4000"],
        true,
        "pin = \"735194\"\ntouch = \"true\"\n",
        "735194",
    );
}

#[test]
fn c4000_unshared_through_an_agent_over_pcsc() {
    passkey_through_the_agent(
        ("c4000", "41000522", "1.0.0"),
        &["--profile", "c4000"],
        false,
        "pin = \"735194\"\nfido_pin = \"864213\"\ntouch = \"true\"\n",
        "864213",
    );
}

#[test]
fn usb_yubikey_unshared_through_an_agent_over_pcsc_and_its_hid_socket() {
    passkey_through_the_agent(
        ("yubikey5", "31000521", "5.7.1"),
        &[
            "--profile",
            "yubikey5",
            "--firmware",
            "5.7.1",
            "--hid-socket",
            "{dir}/hid.sock",
        ],
        false,
        "pin = \"735194\"\nfido_pin = \"973152\"\ntouch = \"true\"\n",
        "973152",
    );
}

#[test]
fn nfc_yubikey_unshared_through_an_agent_over_pcsc() {
    passkey_through_the_agent(
        ("yubikey5", "31000522", "5.7.1"),
        &[
            "--profile",
            "yubikey5",
            "--firmware",
            "5.7.1",
            "--transport",
            "nfc",
        ],
        false,
        "pin = \"735194\"\nfido_pin = \"973152\"\ntouch = \"true\"\n",
        "973152",
    );
}

/// `clientPin` in the authenticator's getInfo, read by python-fido2 over
/// PC/SC: whether a FIDO PIN is set.
fn fido_pin_is_set() -> bool {
    let out = std::process::Command::new(PYTHON)
        .args([
            "-c",
            "import sys, types; sys.path.insert(0, sys.argv[1]); from fido_check import open_device; from fido2.ctap2 import Ctap2; d = open_device(types.SimpleNamespace(hid_socket=None, reader='Virtual')); print('clientPin', Ctap2(d).get_info().options.get('clientPin'))",
        ])
        .arg(format!("{}/tests/python", env!("CARGO_MANIFEST_DIR")))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("clientPin"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.contains("clientPin True")
}

/// Issue 11: a C4000 whose passkey issuance failed (taken out while the
/// session waited for the person's touch) is recycled through the agent
/// over PC/SC: the recycle asks the person to take the device out and put
/// it back, and the agent runs the FIDO reset on a new connection.
#[test]
fn c4000_recycled_through_an_agent_over_pcsc_with_its_fido_reset() {
    let _lock = pcsc::lock();
    let serial = "41000523";
    let card = Vcard::spawn(&["--profile", "c4000", "--serial", serial]);
    let t = tenant(&card);
    let server = TestServer::start();
    seed(&server, &t, "c4000", serial, "1.0.0", true);
    let agent = agent::paired_pcsc_agent(&server, &[], &[], &[serial]);
    let (s, first) = server.call(
        "POST",
        "/issuance",
        Some(json!({ "user": "alice", "policy": "PIV + Passkey", "serial": serial, "pin": "735194", "via": "agent" })),
    );
    assert_eq!(s, 201, "{first}");
    let id = first["session_id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let st = loop {
        let (_, st) = server.call("GET", &format!("/issuance/{id}"), None);
        if st["prompts"].as_array().is_some_and(|p| !p.is_empty()) {
            break st;
        }
        assert_eq!(st["status"], "running", "{st}\nagent:\n{}", agent.output());
        assert!(std::time::Instant::now() < deadline, "no prompt: {st}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    // Out and back in while the session waits for the person.
    assert_eq!(card.control("remove"), "ok");
    agent::wait_devices(&server.url, &server.token, &[serial], false);
    assert_eq!(card.control("insert"), "ok");
    agent::wait_devices(&server.url, &server.token, &[serial], true);
    let mut answers = serde_json::Map::new();
    for p in st["prompts"].as_array().unwrap() {
        let kind = p["kind"].as_str().unwrap();
        let value = match kind {
            "confirm_touch" => "true",
            other => panic!("unexpected prompt {other}: {st}"),
        };
        answers.insert(kind.to_string(), json!(value));
    }
    let (s, v) = server.call(
        "POST",
        &format!("/issuance/{id}/relay"),
        Some(json!({ "protocol": 1, "session_id": id, "seq": st["seq"], "responses": [], "answers": answers })),
    );
    assert_eq!(s, 200, "{v}");
    let failed = agent::wait_session_end(&server.url, &server.token, &id);
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(fido_pin_is_set(), "the failed session set the FIDO PIN");

    let file = card.path("recycle.toml");
    std::fs::write(&file, "touch = true\n").unwrap();
    let out = agent::cli_without_pcsc(&server, "recycle")
        .args([
            "--serial",
            serial,
            "--answers",
            file.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    let r = report(&out);
    assert_eq!(
        (r["state"].as_str(), r["session_state"].as_str()),
        (Some("available"), Some("recycled")),
        "{r}\n{}\nagent:\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.output()
    );
    // The FIDO reset ran on a new connection after the reinsert prompt.
    let log = agent.output();
    let rid = r["session_id"].as_str().unwrap();
    assert!(
        log.contains(&format!("session {rid}: running (step reset FIDO)")),
        "{log}"
    );
    drop(agent);
    assert!(!fido_pin_is_set(), "FIDO reset: no PIN any more");
}

/// Issue 12, item 8: a USB YubiKey 5.7.1 (PIV on pcscd, FIDO on its HID
/// socket, `--presence manual`) pulled out while the passkey registration
/// waits for its touch. `keyward issue` ends `device_removed` (exit 4,
/// retryable), not `declined_by_person`: the removed device answers
/// nothing. Put back, pcscd sees the card again, and Retry finishes
/// (touched this time); python-fido2 signs in with the passkey.
#[test]
fn usb_yubikey_pulled_out_during_the_touch_wait_is_device_removed_then_retried() {
    let _lock = pcsc::lock();
    let serial = "31000531";
    let card = Vcard::spawn(&[
        "--profile",
        "yubikey5",
        "--firmware",
        "5.7.1",
        "--serial",
        serial,
        "--presence",
        "manual",
        "--hid-socket",
        "{dir}/hid.sock",
    ]);
    let hid = card.path("hid.sock");
    let hid = hid.to_str().unwrap().to_string();
    let t = tenant(&card);
    let server = TestServer::start();
    seed(&server, &t, "yubikey5", serial, "5.7.1", false);
    let file = card.path("answers.toml");
    std::fs::write(
        &file,
        "pin = \"735194\"\nfido_pin = \"973152\"\ntouch = \"true\"\n",
    )
    .unwrap();
    let run = |extra: &[&str]| {
        std::process::Command::new(support::BIN)
            .arg("issue")
            .args(["--server", &server.url, "--token", &server.token])
            .args(["--answers", file.to_str().unwrap(), "--json"])
            .args(["--hid-socket", &hid])
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let child = run(&[
        "--user",
        "alice",
        "--policy",
        "PIV + Passkey",
        "--serial",
        serial,
    ]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while card.control("presence") != "ok waiting" {
        assert!(
            std::time::Instant::now() < deadline,
            "the registration never waited for a touch"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(card.control("remove"), "ok");
    let out = child.wait_with_output().unwrap();
    let r = report(&out);
    assert_eq!(
        (out.status.code(), r["error"]["code"].as_str()),
        (Some(4), Some("device_removed")),
        "{r}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = r["session_id"].as_str().unwrap().to_string();

    // Back in: pcscd lists the card again (the client's disconnect of the
    // removed card no longer asks pcscd for a reset it cannot do).
    assert_eq!(card.control("insert"), "ok");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let found =
            keyward_transport::discover::discover(&keyward_transport::discover::DiscoveryOptions {
                hidraw: false,
                ..Default::default()
            });
        if found
            .devices
            .iter()
            .any(|d| d.identity.serial.map(|s| s.to_string()).as_deref() == Some(serial))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pcscd does not see the card again: {found:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Retry, touching the device while it runs. The first attempt set the
    // FIDO PIN before the touch: the retry asks for it.
    std::fs::write(
        &file,
        "pin = \"735194\"\nfido_current_pin = \"973152\"\ntouch = \"true\"\n",
    )
    .unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let toucher = {
        let done = done.clone();
        let control = card.path("control");
        std::thread::spawn(move || {
            use std::io::{BufRead, Write};
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(mut s) = std::os::unix::net::UnixStream::connect(&control) {
                    let _ = writeln!(s, "presence");
                    let mut line = String::new();
                    let _ = std::io::BufReader::new(&s).read_line(&mut line);
                    if line.trim() == "ok waiting" {
                        let _ = writeln!(s, "touch");
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        })
    };
    let out = run(&["--retry", &id]).wait_with_output().unwrap();
    let r = issued(&out);
    assert_eq!(passkeys_on_record(&r).len(), 1, "{r}");
    // The assertion needs a touch too.
    passkey_signs_in(&t, "973152", &["--hid-socket", &hid]);
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    toucher.join().unwrap();
}

/// Waits until session `id` waits for the person (its prompts) or ends.
fn prompts_or_end(server: &TestServer, id: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (_, st) = server.call("GET", &format!("/issuance/{id}"), None);
        if st["status"] != "running" || st["prompts"].as_array().is_some_and(|p| !p.is_empty()) {
            return st;
        }
        assert!(std::time::Instant::now() < deadline, "stuck: {st}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Answers every open prompt of `st` from `answers` (kind, value).
fn answer_prompts(server: &TestServer, id: &str, st: &Value, answers: &[(&str, &str)]) {
    let mut given = serde_json::Map::new();
    for p in st["prompts"].as_array().unwrap() {
        let kind = p["kind"].as_str().unwrap();
        // The initial PIN shown is typed back to authenticate the registration.
        let value = match p["value"].as_str() {
            Some(shown) if kind == "show_initial_pin" => shown,
            _ => {
                answers
                    .iter()
                    .find(|(k, _)| *k == kind)
                    .unwrap_or_else(|| panic!("no answer for {kind}: {st}"))
                    .1
            }
        };
        given.insert(kind.to_string(), json!(value));
    }
    let (s, v) = server.call(
        "POST",
        &format!("/issuance/{id}/relay"),
        Some(json!({ "protocol": 1, "session_id": id, "seq": st["seq"], "responses": [], "answers": given })),
    );
    assert_eq!(s, 200, "{v}");
}

/// Issue 12, item 8: a C4000 on pcscd, issued through an agent, is taken out
/// and put back while the session waits for the person at the prompts
/// `pause`. The next batch fails `device_removed` (the agent's connection
/// is over), the device is seen again, Retry finishes the issuance through
/// the agent, and the tenant holds one passkey that python-fido2 signs in
/// with (`fido_pin`).
fn pulled_out_while_waiting_for_the_person(
    serial: &str,
    shared: bool,
    settings: &[(&str, &str)],
    start: Value,
    pause: &[&str],
    answers: &[(&str, &str)],
    fido_pin: &str,
) {
    let _lock = pcsc::lock();
    let card = Vcard::spawn(&["--profile", "c4000", "--serial", serial]);
    let t = tenant(&card);
    let server = TestServer::start();
    seed(&server, &t, "c4000", serial, "1.0.0", shared);
    for (k, v) in settings {
        put_setting(&server, k, v);
    }
    let agent = agent::paired_pcsc_agent(&server, &[], &[], &[serial]);
    let mut body =
        json!({ "user": "alice", "policy": "PIV + Passkey", "serial": serial, "via": "agent" });
    body.as_object_mut()
        .unwrap()
        .extend(start.as_object().unwrap().clone());
    let (s, first) = server.call("POST", "/issuance", Some(body));
    assert_eq!(s, 201, "{first}");
    let id = first["session_id"].as_str().unwrap().to_string();
    // Answered until the pause the test is about.
    let st = loop {
        let st = prompts_or_end(&server, &id);
        assert_eq!(st["status"], "running", "{st}\nagent:\n{}", agent.output());
        let kinds: Vec<&str> = st["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["kind"].as_str().unwrap())
            .collect();
        if kinds == pause {
            break st;
        }
        answer_prompts(&server, &id, &st, answers);
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(card.control("remove"), "ok");
    agent::wait_devices(&server.url, &server.token, &[serial], false);
    assert_eq!(card.control("insert"), "ok");
    agent::wait_devices(&server.url, &server.token, &[serial], true);
    answer_prompts(&server, &id, &st, answers);
    let failed = prompts_or_end(&server, &id);
    assert_eq!(
        (failed["status"].as_str(), failed["error"]["code"].as_str()),
        (Some("failed"), Some("device_removed")),
        "{failed}\nagent:\n{}",
        agent.output()
    );
    let (s, v) = server.call("POST", &format!("/issuance/{id}/retry"), Some(json!({})));
    assert_eq!(s, 200, "{v}");
    let end = loop {
        let st = prompts_or_end(&server, &id);
        if st["status"] != "running" {
            break st;
        }
        answer_prompts(&server, &id, &st, answers);
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(end["status"], "issued", "{end}\nagent:\n{}", agent.output());
    agent.wait_output("released (reset)", std::time::Duration::from_secs(10));
    drop(agent);
    assert_passkey_signs_in(&t, fido_pin);
}

#[test]
fn pulled_out_while_the_fido_pin_is_asked_then_retried() {
    pulled_out_while_waiting_for_the_person(
        "41000541",
        false,
        &[],
        json!({ "pin": "735194" }),
        &["set_fido_pin", "confirm_touch"],
        &[
            ("set_fido_pin", "864213"),
            ("enter_fido_pin", "864213"),
            ("confirm_touch", "true"),
        ],
        "864213",
    );
}

#[test]
fn pulled_out_after_the_graph_registration_then_retried() {
    pulled_out_while_waiting_for_the_person(
        "41000542",
        true,
        &[
            ("initial_pin_display_mode", "not_displayed"),
            ("change_pin_during_issuance", "yes"),
        ],
        json!({}),
        &["set_new_pin"],
        &[("set_new_pin", "735194"), ("confirm_touch", "true")],
        "735194",
    );
}

/// A C4000 issued with a passkey, then reported stolen while Graph is down
/// (every call answers 503): the device is Invalid at once; answers once its
/// passkey-deletion job has been tried and failed.
fn stolen_while_graph_is_down(serial: &str) -> (Vcard, Tenant, TestServer, Value) {
    let card = Vcard::spawn(&["--profile", "c4000", "--serial", serial]);
    let t = tenant(&card);
    let server = TestServer::start();
    seed(&server, &t, "c4000", serial, "1.0.0", true);
    let out = issue(
        &server,
        &card,
        serial,
        "pin = \"735194\"\ntouch = \"true\"\n",
        &[],
    );
    assert_eq!(passkeys_on_record(&issued(&out)).len(), 1);
    assert_eq!(t.handle.passkeys(UPN).len(), 1);
    for _ in 0..200 {
        t.handle.push_fault(Fault::unavailable());
    }
    let (_, d) = server.call("GET", &format!("/devices/{serial}"), None);
    let (s, d) = server.call(
        "POST",
        &format!("/devices/{serial}/state"),
        Some(json!({ "to": "invalid", "reason": "stolen", "expected_version": d["version"] })),
    );
    assert_eq!((s, d["state"].as_str()), (200, Some("invalid")), "{d}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let job = loop {
        let (s, jobs) = server.call("GET", &format!("/jobs?device={serial}"), None);
        assert_eq!(s, 200, "{jobs}");
        let jobs = jobs.as_array().unwrap().clone();
        assert_eq!(jobs.len(), 1, "{jobs:?}");
        if jobs[0]["attempts"].as_u64() >= Some(1) && jobs[0]["last_error"].is_string() {
            break jobs[0].clone();
        }
        assert!(std::time::Instant::now() < deadline, "{jobs:?}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(job["kind"], "delete_passkey", "{job}");
    assert_eq!(
        t.handle.passkeys(UPN).len(),
        1,
        "still there while Graph is down"
    );
    (card, t, server, job)
}

/// Issue 13: a stolen device's passkey is deleted at Entra ID by a durable
/// job. Graph is down when the device is reported stolen: the job waits,
/// failing with back-off; the server restarts meanwhile; once Graph answers
/// again the job deletes the passkey.
#[test]
fn a_stolen_device_s_passkey_is_deleted_once_graph_is_back_across_a_restart() {
    let _lock = pcsc::lock();
    pcsc::ensure_pcscd();
    let serial = "41000091";
    let (_card, t, mut server, _job) = stolen_while_graph_is_down(serial);
    // The server restarts; Graph comes back.
    server.stop();
    let data = std::mem::replace(&mut server.data_dir, tempfile::tempdir().unwrap());
    drop(server);
    let server = TestServer::start_with(support::ServerOptions {
        data_dir: Some(data),
        ..Default::default()
    });
    t.handle.clear_faults();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !t.handle.passkeys(UPN).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the passkey was not deleted after Graph came back"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (_, done) = server.call("GET", &format!("/jobs?device={serial}&state=done"), None);
    assert_eq!(done.as_array().unwrap().len(), 1, "{done}");
    let (_, pending) = server.call("GET", &format!("/jobs?device={serial}"), None);
    assert!(pending.as_array().unwrap().is_empty(), "{pending}");
}

/// A job that keeps failing is closed by an administrator (the passkey was
/// deleted in Entra ID some other way): audited, and never tried again.
#[test]
fn a_stuck_job_is_closed_by_hand_and_not_tried_again() {
    let _lock = pcsc::lock();
    pcsc::ensure_pcscd();
    let serial = "41000092";
    let (_card, t, server, job) = stolen_while_graph_is_down(serial);
    let id = job["id"].as_str().unwrap();
    let out = server.admin(&["job", "close", id, "--json"]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let closed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(closed["state"], "closed", "{closed}");
    // Not pending any more; closing again is refused.
    let (_, pending) = server.call("GET", &format!("/jobs?device={serial}"), None);
    assert!(pending.as_array().unwrap().is_empty(), "{pending}");
    let (s, v) = server.call("POST", &format!("/jobs/{id}/close"), None);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("job_not_pending")),
        "{v}"
    );
    // Graph back: past the time it would have been tried again (and the
    // worker's idle look), the closed job has not run.
    t.handle.clear_faults();
    let next_at = time::OffsetDateTime::parse(
        job["next_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let wait = next_at - time::OffsetDateTime::now_utc() + time::Duration::seconds(6);
    if wait.is_positive() {
        std::thread::sleep(std::time::Duration::try_from(wait).unwrap());
    }
    assert_eq!(t.handle.passkeys(UPN).len(), 1);
    let (_, audit) = server.call("GET", "/audit?limit=1000", None);
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "job.close" && e["target"] == format!("device:{serial}")),
        "{audit}"
    );
}

/// Issue 14: Suspend deletes the device's passkey at Entra ID (Graph has no
/// "disable") and flags the device for a passkey registered again; Resume
/// releases the certificates' hold and leaves the flag for the update.
#[test]
fn suspend_deletes_the_passkey_and_flags_the_device_and_resume_keeps_the_flag() {
    let _lock = pcsc::lock();
    pcsc::ensure_pcscd();
    let serial = "41000095";
    let card = Vcard::spawn(&["--profile", "c4000", "--serial", serial]);
    let t = tenant(&card);
    let server = TestServer::start();
    seed(&server, &t, "c4000", serial, "1.0.0", true);
    let out = issue(
        &server,
        &card,
        serial,
        "pin = \"735194\"\ntouch = \"true\"\n",
        &[],
    );
    issued(&out);
    assert_eq!(t.handle.passkeys(UPN).len(), 1);
    let out = server.admin(&["device", "suspend", serial, "--note", "on leave"]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !t.handle.passkeys(UPN).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the passkey was not deleted"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (_, d) = server.call("GET", &format!("/devices/{serial}"), None);
    assert_eq!(
        (
            d["state"].as_str(),
            d["suspended"].as_bool(),
            d["passkey_reregistration"].as_bool()
        ),
        (Some("issued"), Some(true), Some(true)),
        "{d}"
    );
    let out = server.admin(&["device", "resume", serial]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let (_, d) = server.call("GET", &format!("/devices/{serial}"), None);
    assert_eq!(
        (
            d["suspended"].as_bool(),
            d["passkey_reregistration"].as_bool()
        ),
        (Some(false), Some(true)),
        "{d}"
    );
    let (_, done) = server.call("GET", &format!("/jobs?device={serial}&state=done"), None);
    assert_eq!(done.as_array().unwrap().len(), 1, "{done}");
}

/// python-fido2 blocks the FIDO PIN over PC/SC: wrong PINs, the device
/// power-cycled at each PIN_AUTH_BLOCKED, until PIN_BLOCKED.
fn block_fido_pin(card: &Vcard) {
    let script = format!(
        "{}/tests/python/fido_block_pin.py",
        env!("CARGO_MANIFEST_DIR")
    );
    for _ in 0..4 {
        let out = std::process::Command::new(PYTHON)
            .args([&script, "--reader", "Virtual"])
            .output()
            .unwrap();
        match out.status.code() {
            Some(0) => return,
            Some(2) => assert_eq!(card.control("power-cycle"), "ok"),
            _ => panic!(
                "blocking the FIDO PIN: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
    panic!("the FIDO PIN did not block");
}

/// Issue 16, a blocked FIDO PIN: a C4000 with its own FIDO PIN, issued
/// with a passkey; python-fido2 blocks that PIN (PIN_BLOCKED). `keyward
/// unlock` resets the PIV PIN, then, confirmed right after a reinsertion,
/// resets the FIDO application: the old passkey is deleted at the tenant
/// by the job runner, a new one is registered in the same session with the
/// new FIDO PIN, python-fido2 signs in with it, and OpenSC logs in with the
/// new PIV PIN.
fn fido_reset_by_unlock(server: TestServer) {
    let _lock = pcsc::lock();
    pcsc::ensure_pcscd();
    let serial = "41000096";
    let card = Vcard::spawn(&["--profile", "c4000", "--serial", serial]);
    let t = tenant(&card);
    seed(&server, &t, "c4000", serial, "1.0.0", false);
    let out = issue(
        &server,
        &card,
        serial,
        "pin = \"735194\"\nfido_pin = \"864213\"\ntouch = \"true\"\n",
        &[],
    );
    issued(&out);
    let old = t.handle.passkeys(UPN);
    assert_eq!(old.len(), 1);
    block_fido_pin(&card);
    // Reinserted: the FIDO reset must come within 10 s.
    assert_eq!(card.control("power-cycle"), "ok");
    let answers = card.path("unlock.toml");
    std::fs::write(
        &answers,
        "new_pin = \"246813\"\ntouch = \"true\"\nfido_pin = \"975310\"\n",
    )
    .unwrap();
    let out = support::cli(
        &server,
        "unlock",
        &[
            "--serial",
            serial,
            "--answers",
            answers.to_str().unwrap(),
            "--json",
        ],
    );
    let r = report(&out);
    assert_eq!(
        (
            out.status.code(),
            r["state"].as_str(),
            r["notice"]["code"].as_str()
        ),
        (Some(0), Some("unlocked"), Some("passkey_registered_again")),
        "{r}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(passkeys_on_record(&r).len(), 1, "the new passkey: {r}");
    // The old passkey is deleted at the tenant by a job, the new one stays.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let now = t.handle.passkeys(UPN);
        if now.len() == 1 && now[0].credential_id != old[0].credential_id {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the old passkey was not replaced: {now:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (_, d) = server.call("GET", &format!("/devices/{serial}"), None);
    assert_eq!(d["passkey_reregistration"], false, "{d}");
    assert_passkey_signs_in(&t, "975310");
    let login = pcsc::pkcs11_login("246813");
    assert!(
        login.status.success(),
        "OpenSC logs in with the new PIN: {}",
        String::from_utf8_lossy(&login.stderr)
    );
    let (_, audit) = server.call("GET", "/audit?limit=1000", None);
    assert!(
        audit.to_string().contains("passkey_registered_again"),
        "{audit}"
    );
}

#[test]
fn an_unlock_resets_a_blocked_fido_pin_and_registers_the_passkey_again_on_sqlite() {
    fido_reset_by_unlock(TestServer::start());
}

#[test]
fn an_unlock_resets_a_blocked_fido_pin_and_registers_the_passkey_again_on_postgres() {
    if let Some(server) = support::postgres_server("unlock_fido_reset") {
        fido_reset_by_unlock(server);
    }
}

/// PIN_AUTH_BLOCKED (three wrong FIDO PINs in a row) is not a reset: the
/// unlock says to reinsert the device, and nothing is erased. A USB
/// YubiKey: its FIDO application answers CTAPHID, which a PC/SC session
/// does not power-cycle (a card reset of an NFC key would clear the state).
#[test]
fn an_unlock_tells_a_fido_pin_that_needs_a_reinsert() {
    let _lock = pcsc::lock();
    pcsc::ensure_pcscd();
    let serial = "31000097";
    let card = Vcard::spawn(&[
        "--profile",
        "yubikey5",
        "--firmware",
        "5.7.1",
        "--serial",
        serial,
        "--hid-socket",
        "{dir}/hid.sock",
    ]);
    let hid = card.path("hid.sock");
    let hid = hid.to_str().unwrap();
    let t = tenant(&card);
    let server = TestServer::start();
    seed(&server, &t, "yubikey5", serial, "5.7.1", false);
    let out = issue(
        &server,
        &card,
        serial,
        "pin = \"735194\"\nfido_pin = \"973152\"\ntouch = \"true\"\n",
        &["--hid-socket", hid],
    );
    issued(&out);
    let script = format!(
        "{}/tests/python/fido_block_pin.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let block = std::process::Command::new(PYTHON)
        .args([&script, "--hid-socket", hid])
        .output()
        .unwrap();
    assert_eq!(
        block.status.code(),
        Some(2),
        "PIN_AUTH_BLOCKED: {}",
        String::from_utf8_lossy(&block.stdout)
    );
    let answers = card.path("unlock.toml");
    std::fs::write(&answers, "new_pin = \"246813\"\n").unwrap();
    let out = support::cli(
        &server,
        "unlock",
        &[
            "--serial",
            serial,
            "--answers",
            answers.to_str().unwrap(),
            "--hid-socket",
            hid,
            "--json",
        ],
    );
    let r = report(&out);
    assert_eq!(
        (r["state"].as_str(), r["notice"]["code"].as_str()),
        (Some("unlocked"), Some("fido_pin_needs_reinsert")),
        "{r}"
    );
    assert_eq!(t.handle.passkeys(UPN).len(), 1, "nothing erased");
    // Reinserted, the FIDO PIN works again.
    assert_eq!(card.control("remove"), "ok");
    assert_eq!(card.control("insert"), "ok");
    passkey_signs_in(&t, "973152", &["--hid-socket", hid]);
}

/// Issue 17, passkey re-registration: a suspended device's passkey is
/// deleted and the device flagged; after Resume, Request Update lists the
/// passkey to register, and `keyward update` registers it again (the PIN
/// the FIDO application shares with PIV entered): python-fido2 signs in with
/// it, and the flag is cleared.
#[test]
fn an_update_registers_again_the_passkey_a_suspension_deleted() {
    let _lock = pcsc::lock();
    pcsc::ensure_pcscd();
    let serial = "41000098";
    let card = Vcard::spawn(&["--profile", "c4000", "--serial", serial]);
    let t = tenant(&card);
    let server = TestServer::start();
    seed(&server, &t, "c4000", serial, "1.0.0", true);
    let out = issue(
        &server,
        &card,
        serial,
        "pin = \"735194\"\ntouch = \"true\"\n",
        &[],
    );
    issued(&out);
    let out = server.admin(&["device", "suspend", serial]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !t.handle.passkeys(UPN).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the passkey was not deleted"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = server.admin(&["device", "resume", serial]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let out = server.admin(&["device", "request-update", serial, "--json"]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["changes"][0]["change"], "add_passkey", "{v}");
    let answers = card.path("update.toml");
    std::fs::write(
        &answers,
        "fido_current_pin = \"735194\"\ntouch = \"true\"\n",
    )
    .unwrap();
    let out = support::cli(
        &server,
        "update",
        &[
            "--serial",
            serial,
            "--answers",
            answers.to_str().unwrap(),
            "--json",
        ],
    );
    let r = report(&out);
    assert_eq!(
        (out.status.code(), r["state"].as_str()),
        (Some(0), Some("updated")),
        "{r}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(passkeys_on_record(&r).len(), 1, "{r}");
    // identify with the FIDO probe, the PIN token, makeCredential.
    assert_eq!(r["counters"]["round_trips"], 3, "{r}");
    eprintln!("update adding a passkey: {}", r["counters"]);
    let (_, d) = server.call("GET", &format!("/devices/{serial}"), None);
    assert_eq!(d["passkey_reregistration"], false, "{d}");
    assert_passkey_signs_in(&t, "735194");
}
