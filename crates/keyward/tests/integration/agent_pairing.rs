//! Workstation agent pairing (issue 4): the agent prints a pairing code, an
//! administrator approves it with `keyward admin agent approve`, the agent
//! keeps its credential (mode 0600) and reports its devices; an unpaired or
//! revoked agent is refused.

use crate::common::agent;
use crate::support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use agent::{call_with, paired_agent, wait_devices, Agent};
use serde_json::json;
use support::TestServer;

const ALPHABET: &str = "23456789ABCDEFGHJKMNPQRSTUVWXYZ";

#[test]
fn pairing_by_code_then_the_agent_reports_its_virtual_devices() {
    let server = TestServer::start();
    let agent = Agent::spawn(
        &server.url,
        &[
            "--virtual",
            "yubikey5:31000101",
            "--virtual",
            "c4000:31000102",
        ],
    );
    let code = agent.pairing_code();
    // XXXX-XXXX in an alphabet without 0/O, 1/I/L.
    assert_eq!(code.len(), 9, "{code}");
    assert_eq!(&code[4..5], "-");
    assert!(
        code.chars()
            .filter(|c| *c != '-')
            .all(|c| ALPHABET.contains(c)),
        "{code}"
    );
    // Pending: listed, not usable; no credential file yet.
    let (_, list) = server.call("GET", "/agents", None);
    assert_eq!(list[0]["status"], "pending", "{list}");
    assert!(!agent.output().contains("kwa_"));

    // The administrator approves, case and dash not mattering.
    let typed = code.replace('-', "").to_lowercase();
    let out = server.admin(&["agent", "approve", &typed]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    assert!(
        support::stdout(&out).contains("paired to token:"),
        "{}",
        support::stdout(&out)
    );

    let v = wait_devices(&server.url, &server.token, &["31000101", "31000102"], true);
    let devices = v["devices"].as_array().unwrap();
    let yk = devices.iter().find(|d| d["serial"] == "31000101").unwrap();
    assert_eq!(yk["device_type"], "yubikey5");
    assert_eq!(yk["firmware"], "5.7.1");
    assert_eq!(yk["agent_online"], true);
    assert_eq!(yk["transports"], json!(["in_process"]));
    let c4 = devices.iter().find(|d| d["serial"] == "31000102").unwrap();
    assert_eq!(c4["device_type"], "c4000");
    assert_eq!(c4["applets"], json!(["piv", "fido"]));
    assert_eq!(v["agents"][0]["status"], "paired");

    // The credential: in a 0600 file of the state folder, never printed.
    let (path, file) = agent.credential_file();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let credential = file["credential"].as_str().unwrap().to_string();
    assert!(credential.starts_with("kwa_"));
    assert!(!agent.output().contains(&credential));
    assert!(!server.output().contains(&credential));
    // Stored hashed: not in the server's data folder.
    assert!(!support::contains(
        &support::read_tree(&server.data_path()),
        credential.as_bytes()
    ));
    assert!(!support::contains(
        &support::read_tree(&server.data_path()),
        code.as_bytes()
    ));

    // A code works once.
    let out = server.admin(&["agent", "approve", &code]);
    assert!(!out.status.success());
    let (s, e) = server.call("POST", "/agents/approve", Some(json!({ "code": code })));
    assert_eq!(s, 404, "{e}");
    let (s, e) = server.call(
        "POST",
        "/agents/approve",
        Some(json!({ "code": "0000-1111" })),
    );
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (400, Some("code_invalid"))
    );

    // Audit: pairing asked, approved, picked up.
    let (_, audit) = server.call("GET", "/audit?limit=1000", None);
    let text = audit.to_string();
    for action in ["agent.pair_request", "agent.approve", "agent.paired"] {
        assert!(text.contains(action), "{action} missing");
    }
    // The list shows the owner; the table too.
    let out = server.admin(&["agent", "list"]);
    let table = support::stdout(&out);
    assert!(
        table.contains("test-workstation") && table.contains("paired"),
        "{table}"
    );
}

#[test]
fn an_administrator_pairs_an_agent_to_a_users_account() {
    let server = TestServer::start();
    let (s, v) = server.call(
        "POST",
        "/operators",
        Some(json!({ "login": "opal", "role": "issuance_operator" })),
    );
    assert!(s == 201 || s == 200, "{v}");
    let agent = paired_agent(
        &server,
        &["--virtual", "yubikey5:31000103"],
        &["--account", "opal"],
        &["31000103"],
    );
    let (_, list) = server.call("GET", "/agents", None);
    assert_eq!(list[0]["owner"], "account:opal", "{list}");
    // A token with a lower role cannot pair agents to other accounts.
    let helpdesk = server.token_with_role("help_desk");
    let other = Agent::spawn(&server.url, &[]);
    let code = other.pairing_code();
    let (s, e) = call_with(
        &server.url,
        &helpdesk,
        "POST",
        "/agents/approve",
        Some(json!({ "code": code, "account": "opal" })),
    );
    assert_eq!(s, 403, "{e}");
    drop(agent);
}

#[test]
fn unpaired_and_revoked_agents_are_refused() {
    let server = TestServer::start();
    let url = server.url.clone();
    // Unknown credential: 401 on every agent endpoint.
    let fake = "kwa_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    for (m, p, b) in [
        ("GET", "/agents/me", None),
        ("PUT", "/agents/me/devices", Some(json!({ "devices": [] }))),
        (
            "POST",
            "/agents/me/work",
            Some(json!({ "wait_seconds": 0 })),
        ),
    ] {
        let (s, e) = call_with(&url, fake, m, p, b);
        assert_eq!(
            (s, e["error"]["code"].as_str()),
            (401, Some("agent_not_paired")),
            "{p}"
        );
    }
    // An API token is not an agent credential, and the other way round.
    let (s, _) = call_with(&url, &server.token, "GET", "/agents/me", None);
    assert_eq!(s, 401);

    let mut agent = paired_agent(
        &server,
        &["--virtual", "yubikey5:31000104"],
        &[],
        &["31000104"],
    );
    let credential = agent.credential();
    let (s, me) = call_with(&url, &credential, "GET", "/agents/me", None);
    assert_eq!((s, me["status"].as_str()), (200, Some("paired")), "{me}");
    for path in [
        "/users",
        "/devices",
        "/agents",
        "/agents/devices",
        "/tokens",
    ] {
        let (s, _) = call_with(&url, &credential, "GET", path, None);
        assert_eq!(s, 401, "the agent credential must not work on {path}");
    }
    let (s, _) = call_with(
        &url,
        &credential,
        "POST",
        "/issuance",
        Some(json!({ "user": "x", "policy": "y", "serial": "31000104" })),
    );
    assert_eq!(s, 401);

    // Revoked: 403 at once, its devices gone from the lists, the agent stops.
    let id = agent.agent_id();
    let out = server.admin(&["agent", "revoke", &id]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let (s, e) = call_with(&url, &credential, "GET", "/agents/me", None);
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (403, Some("agent_revoked"))
    );
    let (s, _) = call_with(
        &url,
        &credential,
        "PUT",
        "/agents/me/devices",
        Some(json!({ "devices": [] })),
    );
    assert_eq!(s, 403);
    wait_devices(&url, &server.token, &["31000104"], false);
    let status = agent.wait_exit(Duration::from_secs(40));
    assert!(!status.success());
    assert!(
        agent.output().contains("agent_revoked"),
        "{}",
        agent.output()
    );
    let (_, audit) = server.call("GET", "/audit?limit=1000", None);
    assert!(audit.to_string().contains("agent.revoke"));
    // Its credential file is dropped: a new start pairs anew.
    assert!(std::fs::read_dir(agent.state_dir.path())
        .unwrap()
        .flatten()
        .all(|e| !e.file_name().to_string_lossy().starts_with("credential-")));
}
