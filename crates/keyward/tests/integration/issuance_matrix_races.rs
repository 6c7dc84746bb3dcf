//! Issue 5, concurrency: two operators racing Add Device for one device,
//! released at the same instant, get exactly one session and one clear
//! conflict (409), round after round. No device is touched (the checks
//! before anything touches the device decide), so no PC/SC is needed.

use crate::support;

use serde_json::{json, Value};
use std::sync::{Arc, Barrier};
use support::TestServer;

const ROUNDS: u32 = 12;

#[test]
fn two_concurrent_add_device_calls_for_one_device_give_exactly_one_conflict() {
    let server = TestServer::start();
    support::seed_piv_standard(&server, "33000000");
    assert_eq!(
        server
            .call(
                "POST",
                "/users",
                Some(json!({ "login": "bob", "display_name": "Bob Baker", "upn": "bob@example.com", "email": "bob@example.com" }))
            )
            .0,
        201
    );
    let operators = [
        server.token_with_role("issuance_operator"),
        server.token_with_role("issuance_operator"),
    ];
    let server = Arc::new(server);
    for round in 0..ROUNDS {
        let serial = (33_000_001 + round).to_string();
        let (s, v) = server.call(
            "POST",
            "/devices",
            Some(
                json!({ "device_type": "yubikey5", "serial": serial, "firmware_version": "5.7.1" }),
            ),
        );
        assert_eq!(s, 201, "{v}");
        // Operator 1 issues the device to alice, operator 2 to bob (or, every
        // other round, both to alice).
        let users = if round % 2 == 0 {
            ["alice", "bob"]
        } else {
            ["alice", "alice"]
        };
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = (0..2)
            .map(|i| {
                let (server, barrier, token) =
                    (server.clone(), barrier.clone(), operators[i].clone());
                let body = json!({ "user": users[i], "policy": "PIV Standard", "serial": serial, "pin": "735194" });
                std::thread::spawn(move || {
                    barrier.wait();
                    server.call_as(&token, "POST", "/issuance", Some(body))
                })
            })
            .collect();
        let results: Vec<(u16, Value)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let mut statuses: Vec<u16> = results.iter().map(|(s, _)| *s).collect();
        statuses.sort_unstable();
        assert_eq!(
            statuses,
            vec![201, 409],
            "round {round}: exactly one Add Device wins: {results:?}"
        );
        let (_, conflict) = results.iter().find(|(s, _)| *s == 409).unwrap();
        let code = conflict["error"]["code"].as_str().unwrap_or_default();
        assert!(
            !code.is_empty() && conflict["error"]["message"].as_str().is_some(),
            "a clear conflict error: {conflict}"
        );
        let (_, winner) = results.iter().find(|(s, _)| *s == 201).unwrap();
        let id = winner["session_id"].as_str().unwrap();
        // One device, one active session: the device is in production for the winner.
        let (s, session) = server.call("GET", &format!("/issuance/{id}"), None);
        assert_eq!(s, 200, "{session}");
        let (_, device) = server.call("GET", &format!("/devices/{serial}"), None);
        assert_eq!(device["state"], "in_production", "{device}");
    }
}
