//! Recycle through a workstation agent (issue 4): `keyward recycle` for a
//! device that is not connected here asks `POST /devices/{serial}/recycle`
//! with `via` the paired agent that reports the device, which relays the
//! recycle session's batches as it relays an issuance's.

use crate::common::agent;
use crate::support;

use agent::{paired_agent, wait_devices, wait_session_end};
use serde_json::json;
use support::TestServer;

#[test]
fn a_failed_device_is_recycled_through_the_agent_that_reports_it() {
    let server = TestServer::start();
    support::seed_piv_standard(&server, "31000310");
    // The card leaves in batch 2 (after the PIN and PUK changed): failed.
    let agent = paired_agent(
        &server,
        &["--virtual", "yubikey5:31000310:remove-after=6"],
        &[],
        &["31000310"],
    );
    let (s, first) = server.call("POST", "/issuance", Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000310", "pin": "735194", "via": "agent" })));
    assert_eq!(s, 201, "{first}");
    let id = first["session_id"].as_str().unwrap().to_string();
    let failed = wait_session_end(&server.url, &server.token, &id);
    assert_eq!(failed["status"], "failed", "{failed}");
    wait_devices(&server.url, &server.token, &["31000310"], false);
    agent.control("31000310", "insert");
    wait_devices(&server.url, &server.token, &["31000310"], true);

    // An unknown via is refused before anything changes.
    let (s, v) = server.call(
        "POST",
        "/devices/31000310/recycle",
        Some(json!({ "via": "nobody" })),
    );
    assert_eq!(s, 400, "{v}");
    let (_, st) = server.call("GET", &format!("/issuance/{id}"), None);
    assert_eq!(
        st["status"], "failed",
        "the failed session is still there: {st}"
    );

    // `keyward recycle` where the device is not connected: through the agent.
    let out = agent::cli_without_pcsc(&server, "recycle")
        .args(["--serial", "31000310", "--json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}\nagent:\n{}",
        support::stdout(&out),
        support::stderr(&out),
        agent.output()
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["session_state"], "recycled", "{report}");
    assert_eq!(report["state"], "available", "{report}");
    let rid = report["session_id"].as_str().unwrap().to_string();
    let done = wait_session_end(&server.url, &server.token, &rid);
    assert_eq!(done["status"], "recycled", "{done}");
    let (_, d) = server.call("GET", "/devices/31000310", None);
    assert_eq!(
        (d["state"].as_str(), d["reason"].as_str()),
        (Some("available"), Some("recycled")),
        "{d}"
    );
    let (_, st) = server.call("GET", &format!("/issuance/{id}"), None);
    assert_eq!(st["status"], "cancelled", "{st}");
}
