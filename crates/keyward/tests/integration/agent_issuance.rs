//! Issuance through a workstation agent (issue 4), driven by `keyward issue`
//! on a machine where the device is not connected: the server delivers the
//! command batches to the paired `keyward agent` that reports the device.
//! A device removed in the middle of a batch gives the server a typed
//! `device_removed` result, and after re-insertion the attempt is retried
//! through the agent to the end.

use crate::common::agent;
use crate::support;

use std::time::Duration;

use agent::{call_with, paired_agent, wait_devices, wait_session_end};
use serde_json::{json, Value};
use support::TestServer;

fn issue(server: &TestServer, args: &[&str]) -> (std::process::Output, Value) {
    // No local device can be found: no pcscd for this process.
    let out = agent::cli_without_pcsc(server, "issue")
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, v)
}

#[test]
fn keyward_issue_runs_through_the_agent_that_reports_the_device() {
    let server = TestServer::start();
    support::seed_piv_standard(&server, "31000301");
    let agent = paired_agent(
        &server,
        &["--virtual", "yubikey5:31000301"],
        &[],
        &["31000301"],
    );
    let answers = tempfile::NamedTempFile::with_suffix(".toml").unwrap();
    std::fs::write(answers.path(), "pin = \"735194\"\n").unwrap();
    let (out, v) = issue(
        &server,
        &[
            "--user",
            "alice",
            "--policy",
            "PIV Standard",
            "--serial",
            "31000301",
            "--answers",
            answers.path().to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}\n{}\nagent:\n{}",
        support::stdout(&out),
        support::stderr(&out),
        agent.output()
    );
    assert_eq!(v["state"], "issued", "{v}");
    assert_eq!(v["serial"], "31000301");
    assert_eq!(v["credentials"].as_array().unwrap().len(), 2, "{v}");
    let (_, d) = server.call("GET", "/devices/31000301", None);
    assert_eq!(d["state"], "issued");
    // The agent relayed the three batches; it never printed a command.
    let log = agent.output();
    assert!(log.contains("batch 3"), "{log}");
    assert!(!log.contains("735194"));
    assert!(
        !log.to_lowercase().contains("00a4"),
        "no APDU in the agent's output"
    );
    // The portal's view: the device and its new inventory state.
    let (_, v) = server.call("GET", "/agents/devices", None);
    let dev = v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["serial"] == "31000301")
        .unwrap()
        .clone();
    assert_eq!(dev["state"], "issued", "{v}");
}

#[test]
fn a_device_removed_mid_batch_fails_typed_and_is_retried_through_the_agent() {
    let server = TestServer::start();
    support::seed_piv_standard(&server, "31000302");
    // Batch 1 has 4 commands: the card leaves at the 3rd command of batch 2.
    let agent = paired_agent(
        &server,
        &["--virtual", "yubikey5:31000302:remove-after=6"],
        &[],
        &["31000302"],
    );
    let (s, first) = server.call("POST", "/issuance", Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000302", "pin": "735194", "via": "agent" })));
    assert_eq!(s, 201, "{first}");
    let id = first["session_id"].as_str().unwrap().to_string();
    let failed = wait_session_end(&server.url, &server.token, &id);
    assert_eq!(failed["status"], "failed", "{failed}");
    // The person sees the cause, not a short batch.
    assert_eq!(failed["error"]["code"], "device_removed", "{failed}");
    // The agent returned the typed transport error with the responses it had.
    agent.wait_output("batch 2 (2 of ", Duration::from_secs(10));
    agent.wait_output("stopped: device_removed", Duration::from_secs(10));
    let (_, d) = server.call("GET", "/devices/31000302", None);
    assert_eq!(
        (d["state"].as_str(), d["reason"].as_str()),
        (Some("produced"), Some("failed"))
    );
    // The agent reports the removal, then the re-insertion.
    wait_devices(&server.url, &server.token, &["31000302"], false);
    agent.control("31000302", "insert");
    wait_devices(&server.url, &server.token, &["31000302"], true);
    // Retry (same device, policy and PIN) with `keyward issue --retry`: the
    // session is bound to the agent, so the CLI follows it there (no local
    // reader here) and the agent relays it to the end.
    let (out, report) = issue(&server, &["--retry", &id]);
    assert!(
        out.status.success(),
        "{report}\n{}\nagent:\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.output()
    );
    assert_eq!(report["state"], "issued", "{report}");
    let done = wait_session_end(&server.url, &server.token, &id);
    assert_eq!(
        done["status"],
        "issued",
        "{done}\nagent:\n{}",
        agent.output()
    );
    let (_, d) = server.call("GET", "/devices/31000302", None);
    assert_eq!(d["state"], "issued");
    // The agent's credential never worked for the person's own endpoints.
    let (s, _) = call_with(
        &server.url,
        &agent.credential(),
        "POST",
        &format!("/issuance/{id}/retry"),
        None,
    );
    assert_eq!(s, 401);
}
