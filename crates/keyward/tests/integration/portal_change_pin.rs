//! User Portal, issue 7: change my PIN through my agent. A small device
//! session (action change_pin) relayed by the workstation agent that reports
//! the device; the person answers the current and the new PIN.

use crate::common::agent;
use crate::common::self_service;
use crate::support;

use std::time::{Duration, Instant};

use agent::{paired_agent, wait_session_end};
use self_service::{call_as_user, me_page, sign_in_user};
use serde_json::{json, Value};
use support::TestServer;

const SERIAL: &str = "31000720";

/// Starts a PIN change as `who` and waits for its prompts.
fn start(server: &TestServer, who: &(String, String)) -> (String, Value) {
    let (s, first) = call_as_user(
        server,
        who,
        "POST",
        &format!("/me/devices/{SERIAL}/change-pin"),
        None,
    );
    assert_eq!(s, 201, "{first}");
    let id = first["session_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, st) = call_as_user(server, who, "GET", &format!("/issuance/{id}"), None);
        assert_eq!(s, 200, "{st}");
        if st["prompts"].as_array().is_some_and(|p| !p.is_empty()) {
            let kinds: Vec<_> = st["prompts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["kind"].as_str().unwrap().to_string())
                .collect();
            assert_eq!(kinds, ["enter_pin", "set_new_pin"], "{st}");
            return (id, st);
        }
        assert_eq!(st["status"], "running", "{st}");
        assert!(Instant::now() < deadline, "no prompts: {st}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn answer(
    server: &TestServer,
    who: &(String, String),
    id: &str,
    st: &Value,
    current: &str,
    new: &str,
) -> (u16, Value) {
    call_as_user(
        server,
        who,
        "POST",
        &format!("/issuance/{id}/relay"),
        Some(
            json!({ "protocol": 1, "session_id": id, "seq": st["seq"], "responses": [],
                     "answers": { "enter_pin": current, "set_new_pin": new } }),
        ),
    )
}

/// A whole PIN change; returns the session's end.
fn change_pin(server: &TestServer, who: &(String, String), current: &str, new: &str) -> Value {
    let (id, st) = start(server, who);
    let (s, v) = answer(server, who, &id, &st, current, new);
    assert_eq!(s, 200, "{v}");
    wait_session_end(&server.url, &server.token, &id)
}

#[test]
fn a_user_changes_their_pin_through_their_agent() {
    let server = TestServer::start();
    support::seed_piv_standard(&server, SERIAL);
    let alice = sign_in_user(&server, "alice");
    let _agent = paired_agent(
        &server,
        &["--virtual", &format!("yubikey5:{SERIAL}")],
        &["--account", "alice"],
        &[SERIAL],
    );
    // Not issued yet: refused.
    let (s, v) = call_as_user(
        &server,
        &alice,
        "POST",
        &format!("/me/devices/{SERIAL}/change-pin"),
        None,
    );
    assert_eq!(s, 403, "not hers yet: {v}");
    let (s, first) = server.call("POST", "/issuance", Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": SERIAL, "pin": "735194", "via": "agent" })));
    assert_eq!(s, 201, "{first}");
    let issued = wait_session_end(
        &server.url,
        &server.token,
        first["session_id"].as_str().unwrap(),
    );
    assert_eq!(issued["status"], "issued", "{issued}");

    // Another user's account may not change it.
    assert_eq!(server.call("POST", "/users", Some(json!({ "login": "bob", "display_name": "Bob Baker", "upn": "bob@example.com", "email": "bob@example.com" }))).0, 201);
    let bob = sign_in_user(&server, "bob");
    let (s, v) = call_as_user(
        &server,
        &bob,
        "POST",
        &format!("/me/devices/{SERIAL}/change-pin"),
        None,
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("device_not_yours")),
        "{v}"
    );

    // My devices offers Change PIN; the new PIN's rules are checked live
    // against the device's policy, for its own user only.
    let page = me_page(&server, &alice);
    assert!(
        page.contains(&format!(
            r#"class="change-pin" data-mode="change" data-serial="{SERIAL}""#
        )),
        "{page}"
    );
    let check = |who: &(String, String), pin: &str| {
        call_as_user(
            &server,
            who,
            "POST",
            &format!("/me/devices/{SERIAL}/pin-check"),
            Some(json!({ "pin": pin })),
        )
    };
    let (s, v) = check(&alice, "111111");
    assert_eq!((s, v["valid"].as_bool()), (200, Some(false)), "{v}");
    assert!(v["rules"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["rule"] == "max_repeated" && r["passed"] == false));
    let (s, v) = check(&alice, "24681357");
    assert_eq!((s, v["valid"].as_bool()), (200, Some(true)), "{v}");
    let (s, v) = check(&bob, "24681357");
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("device_not_yours")),
        "{v}"
    );

    // A new PIN that breaks the policy's rules is refused (400) before the
    // device is touched; the same prompts stay out.
    let (id, st) = start(&server, &alice);
    let (s, v) = answer(&server, &alice, &id, &st, "735194", "111111");
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["details"]["failed_rules"].is_array(),
        "the rules it breaks: {v}"
    );
    let (_, again) = call_as_user(&server, &alice, "GET", &format!("/issuance/{id}"), None);
    assert_eq!(
        (again["status"].as_str(), again["seq"].clone()),
        (Some("running"), st["seq"].clone()),
        "{again}"
    );
    // Answered right: the PIN changes on the device.
    let (s, v) = answer(&server, &alice, &id, &st, "735194", "24681357");
    assert_eq!(s, 200, "{v}");
    let end = wait_session_end(&server.url, &server.token, &id);
    assert_eq!(end["status"], "pin_changed", "{end}");
    assert_eq!(end["action"], "change_pin", "{end}");

    // The old PIN is refused by the device now, with the tries left.
    let end = change_pin(&server, &alice, "735194", "13572468");
    assert_eq!(end["status"], "pin_change_failed", "{end}");
    assert_eq!(end["error"]["code"], "wrong_pin", "{end}");
    assert_eq!(end["error"]["tries_left"], 2, "{end}");
    assert!(!end.to_string().contains("735194"), "no PIN in the report");
    // The new PIN is the device's: changing it back works (and the
    // successful VERIFY inside CHANGE REFERENCE DATA resets the counter).
    let end = change_pin(&server, &alice, "24681357", "13572468");
    assert_eq!(end["status"], "pin_changed", "{end}");

    // The device stays Issued; the audit trail has the change, no PIN.
    let (_, d) = server.call("GET", &format!("/devices/{SERIAL}"), None);
    assert_eq!(d["state"], "issued", "{d}");
    let (s, audit) = server.call("GET", "/audit?limit=500", None);
    assert_eq!(s, 200, "{audit}");
    let text = audit.to_string();
    assert!(text.contains("device.change_pin"), "{text}");
    for pin in ["24681357", "13572468"] {
        assert!(!text.contains(pin), "no PIN in the audit trail");
    }
}
