//! The relay protocol as an agent speaks it (issue 4): the test plays the
//! workstation agent with the credential of a paired `keyward agent` (then
//! stopped), and relays to its own in-process virtual card. Work is
//! delivered only to the agent the session is bound to, for a device it
//! reports; replayed and out-of-order results are refused; an agent cannot
//! act on a session of a device it does not report.

use crate::common::agent;
use crate::support;

use agent::{call_with, paired_agent, wait_session_end};
use keyward_vcard::{ProfileKind, VcardConfig, VirtualCard};
use serde_json::{json, Value};
use support::TestServer;

use support::relay_in_process as relay;

fn result(batch: &Value, responses: Vec<Value>) -> Value {
    json!({ "protocol": 1, "session_id": batch["session_id"], "seq": batch["seq"], "responses": responses })
}

fn device(serial: &str) -> Value {
    json!({ "serial": serial, "device_type": "yubikey5", "firmware": "5.7.1", "applets": ["piv"], "transports": ["in_process"], "reader": "test" })
}

#[test]
fn an_agent_relays_only_its_sessions_on_devices_it_reports_in_sequence() {
    let server = TestServer::start();
    let url = server.url.clone();
    support::seed_piv_standard(&server, "31000201");
    let (s, v) = server.call(
        "POST",
        "/devices",
        Some(
            json!({ "device_type": "yubikey5", "serial": "31000202", "firmware_version": "5.7.1" }),
        ),
    );
    assert_eq!(s, 201, "{v}");

    // Agent A reports 31000201, agent B 31000202; both stopped, the test
    // speaks for them with their credentials (they stay online a minute).
    let mut a = paired_agent(
        &server,
        &["--virtual", "yubikey5:31000201"],
        &[],
        &["31000201"],
    );
    let mut b = paired_agent(
        &server,
        &["--virtual", "yubikey5:31000202"],
        &[],
        &["31000202"],
    );
    let (ca, cb) = (a.credential(), b.credential());
    a.kill();
    b.kill();
    let ca_dir = tempfile::tempdir().unwrap();
    let mut card = VirtualCard::new(
        VcardConfig::new(ProfileKind::Yubikey5)
            .with_serial(31000201)
            .with_ca_dir(ca_dir.path()),
    )
    .unwrap();
    card.power_on();

    // No agent reports a device: `via: agent` is refused before it is touched.
    let (s, e) = server.call(
        "POST",
        "/devices",
        Some(
            json!({ "device_type": "yubikey5", "serial": "31000203", "firmware_version": "5.7.1" }),
        ),
    );
    assert_eq!(s, 201, "{e}");
    let (s, e) = server.call("POST", "/issuance", Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000203", "pin": "735194", "via": "agent" })));
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (409, Some("no_agent_for_device")),
        "{e}"
    );

    let (s, first) = server.call("POST", "/issuance", Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000201", "pin": "735194", "via": "agent" })));
    assert_eq!(s, 201, "{first}");
    let id = first["session_id"].as_str().unwrap().to_string();
    let relay_path = format!("/issuance/{id}/relay");

    // B has no work; A gets batch 1 for its device, at once.
    let (s, w) = call_with(
        &url,
        &cb,
        "POST",
        "/agents/me/work",
        Some(json!({ "wait_seconds": 0 })),
    );
    assert_eq!(
        (s, w["items"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{w}"
    );
    let (s, w) = call_with(
        &url,
        &ca,
        "POST",
        "/agents/me/work",
        Some(json!({ "wait_seconds": 5 })),
    );
    assert_eq!(s, 200, "{w}");
    let item = &w["items"][0];
    assert_eq!(item["serial"], "31000201");
    let batch = item["batch"].clone();
    assert_eq!(
        (batch["session_id"].as_str(), batch["seq"].as_u64()),
        (Some(id.as_str()), Some(1))
    );
    assert_eq!(
        batch, first,
        "the agent gets the batch the session started with"
    );
    // A batch the agent says it runs is not delivered again.
    let (_, w) = call_with(
        &url,
        &ca,
        "POST",
        "/agents/me/work",
        Some(json!({ "wait_seconds": 0, "busy": [{ "session_id": id, "seq": 1 }] })),
    );
    assert_eq!(w["items"].as_array().unwrap().len(), 0, "{w}");

    // Agent B cannot act on A's session.
    let r1 = result(&batch, relay(&mut card, &batch));
    let (s, e) = call_with(&url, &cb, "POST", &relay_path, Some(r1.clone()));
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (403, Some("agent_not_bound")),
        "{e}"
    );
    // A relays batch 1.
    let (s, batch2) = call_with(&url, &ca, "POST", &relay_path, Some(r1.clone()));
    assert_eq!(s, 200, "{batch2}");
    assert_eq!(batch2["seq"], 2);
    // Replayed and out-of-order results are refused and change nothing.
    let (s, e) = call_with(&url, &ca, "POST", &relay_path, Some(r1.clone()));
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (409, Some("sequence_mismatch")),
        "{e}"
    );
    let mut ahead = r1.clone();
    ahead["seq"] = json!(3);
    let (s, e) = call_with(&url, &ca, "POST", &relay_path, Some(ahead));
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (409, Some("sequence_mismatch")),
        "{e}"
    );
    let (_, st) = server.call("GET", &format!("/issuance/{id}"), None);
    assert_eq!(
        (st["status"].as_str(), st["seq"].as_i64()),
        (Some("running"), Some(2))
    );
    // After a dropped connection the agent asks again and gets batch 2.
    // (Through its work endpoint: the person's endpoints refuse its credential.)
    let (s, _) = call_with(&url, &ca, "GET", &format!("/issuance/{id}/batch"), None);
    assert_eq!(s, 401);
    let (_, w) = call_with(
        &url,
        &ca,
        "POST",
        "/agents/me/work",
        Some(json!({ "wait_seconds": 5 })),
    );
    assert_eq!(w["items"][0]["batch"], batch2, "{w}");

    // The device leaves A: A may not act on the session any more, and gets
    // no work for it.
    let (s, v) = call_with(
        &url,
        &ca,
        "PUT",
        "/agents/me/devices",
        Some(json!({ "devices": [] })),
    );
    assert_eq!(
        (s, v["removed"][0].as_str()),
        (200, Some("31000201")),
        "{v}"
    );
    let r2 = result(&batch2, relay(&mut card, &batch2));
    let (s, e) = call_with(&url, &ca, "POST", &relay_path, Some(r2.clone()));
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (403, Some("device_not_reported")),
        "{e}"
    );
    let (_, w) = call_with(
        &url,
        &ca,
        "POST",
        "/agents/me/work",
        Some(json!({ "wait_seconds": 0 })),
    );
    assert_eq!(w["items"].as_array().unwrap().len(), 0, "{w}");
    // Back: the result of batch 2 is accepted, and A runs it to the end.
    let (s, v) = call_with(
        &url,
        &ca,
        "PUT",
        "/agents/me/devices",
        Some(json!({ "devices": [device("31000201")] })),
    );
    assert_eq!(
        (s, v["arrived"][0].as_str()),
        (200, Some("31000201")),
        "{v}"
    );
    let (s, mut batch) = call_with(&url, &ca, "POST", &relay_path, Some(r2));
    assert_eq!(s, 200, "{batch}");
    while batch["state"] == "running" {
        let r = result(&batch, relay(&mut card, &batch));
        let (s, next) = call_with(&url, &ca, "POST", &relay_path, Some(r));
        assert_eq!(s, 200, "{next}");
        batch = next;
    }
    assert_eq!(batch["state"], "issued", "{batch}");
    let st = wait_session_end(&url, &server.token, &id);
    assert_eq!(st["status"], "issued");

    // A session not bound to any agent (relayed locally) refuses agents.
    let (s, local) = server.call("POST", "/issuance", Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000202", "pin": "735194" })));
    assert_eq!(s, 201, "{local}");
    let lid = local["session_id"].as_str().unwrap();
    let (s, e) = call_with(
        &url,
        &cb,
        "POST",
        &format!("/issuance/{lid}/relay"),
        Some(result(&local, vec![])),
    );
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (403, Some("agent_not_bound")),
        "{e}"
    );
    let (_, w) = call_with(
        &url,
        &cb,
        "POST",
        "/agents/me/work",
        Some(json!({ "wait_seconds": 0 })),
    );
    assert_eq!(w["items"].as_array().unwrap().len(), 0, "{w}");
}
