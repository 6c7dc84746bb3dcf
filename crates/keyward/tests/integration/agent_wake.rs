//! The store's change feed wakes the agents' long-polls (issue 12, item 6):
//! any session change, whatever the route that made it, and on PostgreSQL
//! whichever node made it (LISTEN/NOTIFY). Before, only a POST whose URL
//! contained "issuance" woke them on the node that served it; a recycle, a
//! PIN change or another node's work waited for the long-poll's 5-second
//! re-read of the store.
//!
//! The test plays the agent itself with a paired agent's credential (the
//! agent process is stopped after it reported its device), so that it can
//! time its own long-poll.

use crate::common::agent;
use crate::support;

use std::time::{Duration, Instant};

use agent::{call_with, paired_agent};
use serde_json::{json, Value};
use support::TestServer;

/// The re-read interval the wake-up must beat by far.
const RECHECK: Duration = Duration::from_secs(5);

/// A paired agent's credential; the agent reported `serial` and is stopped.
fn agent_credential(server: &TestServer, serial: &str) -> String {
    let mut agent = paired_agent(
        server,
        &["--virtual", &format!("yubikey5:{serial}")],
        &[],
        &[serial],
    );
    let credential = agent.credential();
    agent.kill();
    credential
}

/// Long-polls `POST /agents/me/work` on `url` in a thread (25 s at most);
/// the answer and when it came.
fn long_poll(url: &str, credential: &str) -> std::thread::JoinHandle<(Value, Instant)> {
    let (url, credential) = (url.to_string(), credential.to_string());
    std::thread::spawn(move || {
        let (s, v) = call_with(
            &url,
            &credential,
            "POST",
            "/agents/me/work",
            Some(json!({ "wait_seconds": 25 })),
        );
        assert_eq!(s, 200, "{v}");
        (v, Instant::now())
    })
}

#[test]
fn a_recycle_wakes_the_agents_long_poll_at_once() {
    let server = TestServer::start();
    let serial = "31000601";
    support::seed_piv_standard(&server, serial);
    let credential = agent_credential(&server, serial);
    // An issuance through the agent that fails at its first batch.
    let (s, v) = server.call("POST", "/issuance", Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": serial, "pin": "735194", "via": "agent" })));
    assert_eq!(s, 201, "{v}");
    let id = v["session_id"].as_str().unwrap().to_string();
    let (s, work) = call_with(
        &server.url,
        &credential,
        "POST",
        "/agents/me/work",
        Some(json!({ "wait_seconds": 0 })),
    );
    assert_eq!(s, 200, "{work}");
    let seq = work["items"][0]["batch"]["seq"].clone();
    let (s, v) = call_with(
        &server.url,
        &credential,
        "POST",
        &format!("/issuance/{id}/relay"),
        Some(
            json!({ "protocol": 1, "session_id": id, "seq": seq, "responses": [], "transport_error": "device_removed" }),
        ),
    );
    assert_eq!((s, v["state"].as_str()), (200, Some("failed")), "{v}");

    // Waiting for work; the recycle is started by its own route.
    let poll = long_poll(&server.url, &credential);
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let (s, v) = server.call(
        "POST",
        &format!("/devices/{serial}/recycle"),
        Some(json!({ "via": "agent" })),
    );
    assert_eq!(s, 201, "{v}");
    let (work, at) = poll.join().unwrap();
    let latency = at.duration_since(started);
    eprintln!("recycle started -> the agent holds the work: {latency:?}");
    assert_eq!(
        work["items"][0]["batch"]["session_id"], v["session_id"],
        "{work}"
    );
    assert!(
        latency < RECHECK / 3,
        "the long-poll waited for its re-read: {latency:?}"
    );
}

#[test]
fn an_issuance_on_another_postgresql_node_wakes_the_agents_long_poll_at_once() {
    let Some(opts) = support::shared_postgres_nodes("kw_wake") else {
        return;
    };
    let a = TestServer::start_with(opts());
    let b = TestServer::start_with(opts());
    let serial = "31000602";
    support::seed_piv_standard(&a, serial);
    let credential = agent_credential(&a, serial);
    let poll = long_poll(&a.url, &credential);
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let (s, v) = b.call("POST", "/issuance", Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": serial, "pin": "735194", "via": "agent" })));
    assert_eq!(s, 201, "{v}");
    let (work, at) = poll.join().unwrap();
    let latency = at.duration_since(started);
    eprintln!("issuance started on node B -> the agent's long-poll on node A answers: {latency:?}");
    assert_eq!(
        work["items"][0]["batch"]["session_id"], v["session_id"],
        "{work}"
    );
    assert!(
        latency < RECHECK / 3,
        "node A's long-poll waited for its re-read: {latency:?}"
    );
}
