//! User Portal, issue 7: a self-service account completes the issuance of
//! a device assigned to its own user, through its own paired workstation
//! agent, only when "Who can bind the device to the user?" is User.

use crate::common::agent;
use crate::common::self_service;
use crate::support;

use agent::{paired_agent, wait_session_end};
use self_service::{call_as_user, me_page, sign_in_user};
use serde_json::{json, Value};
use support::TestServer;

fn put_setting(server: &TestServer, key: &str, value: &str) {
    let (s, v) = server.call(
        "PUT",
        &format!("/settings/{key}"),
        Some(json!({ "value": value })),
    );
    assert_eq!(s, 200, "{v}");
}

fn assign(server: &TestServer, user: &str, serial: &str) {
    let (s, v) = server.call(
        "POST",
        "/issuance",
        Some(
            json!({ "user": user, "policy": "PIV Standard", "serial": serial, "action": "assign" }),
        ),
    );
    assert_eq!((s, v["state"].as_str()), (201, Some("assigned")), "{v}");
}

fn code(v: &Value) -> Option<&str> {
    v["error"]["code"].as_str()
}

#[test]
fn a_user_completes_the_issuance_of_their_assigned_device_only_when_allowed() {
    let server = TestServer::start();
    support::seed_piv_standard(&server, "31000710");
    assert_eq!(server.call("POST", "/users", Some(json!({ "login": "bob", "display_name": "Bob Baker", "upn": "bob@example.com", "email": "bob@example.com" }))).0, 201);
    let (s, v) = server.call(
        "POST",
        "/devices",
        Some(
            json!({ "device_type": "yubikey5", "serial": "31000711", "firmware_version": "5.7.1" }),
        ),
    );
    assert_eq!(s, 201, "{v}");
    assign(&server, "alice", "31000710");
    // A token with the user role is linked to no user: refused before the
    // body is read, as every route refuses a role without its permission.
    let user_token = server.token_with_role("user");
    let (s, v) = server.call_as(&user_token, "POST", "/issuance", Some(json!({})));
    assert_eq!((s, code(&v)), (403, Some("forbidden")), "{v}");
    let (s, v) = server.call_as("", "POST", "/issuance", Some(json!({})));
    assert_eq!((s, code(&v)), (401, Some("unauthenticated")), "{v}");
    assign(&server, "bob", "31000711");
    let alice = sign_in_user(&server, "alice");
    // alice's own workstation agent, with both devices connected.
    let _agent = paired_agent(
        &server,
        &[
            "--virtual",
            "yubikey5:31000710",
            "--virtual",
            "yubikey5:31000711",
        ],
        &["--account", "alice"],
        &["31000710", "31000711"],
    );
    let start = |user: &str, serial: &str, via: Option<&str>| {
        let mut body =
            json!({ "user": user, "policy": "PIV Standard", "serial": serial, "pin": "735194" });
        if let Some(via) = via {
            body["via"] = json!(via);
        }
        call_as_user(&server, &alice, "POST", "/issuance", Some(body))
    };

    // who_can_bind = issuance_operator (the default): refused.
    let (s, v) = start("alice", "31000710", Some("agent"));
    assert_eq!(
        (s, code(&v)),
        (403, Some("binding_not_allowed_for_users")),
        "{v}"
    );
    assert!(
        !me_page(&server, &alice).contains("complete-issuance"),
        "no action while operators bind"
    );
    put_setting(&server, "who_can_bind", "user");
    let page = me_page(&server, &alice);
    assert!(
        page.contains(r#"class="complete-issuance primary" data-serial="31000710""#),
        "My devices offers Complete issuance: {page}"
    );
    assert!(
        page.contains("/static/prompts.js"),
        "the shared prompt forms"
    );
    // Another user's device, in their name or in hers: refused.
    let (s, v) = start("bob", "31000711", Some("agent"));
    assert_eq!(
        (s, code(&v)),
        (403, Some("device_not_assigned_to_you")),
        "{v}"
    );
    let (s, v) = start("alice", "31000711", Some("agent"));
    assert_eq!(
        (s, code(&v)),
        (403, Some("device_not_assigned_to_you")),
        "{v}"
    );
    // An unknown device is refused the same way (no probing).
    let (s, v) = start("alice", "31000799", Some("agent"));
    assert_eq!(
        (s, code(&v)),
        (403, Some("device_not_assigned_to_you")),
        "{v}"
    );
    // Not through her own agent: refused.
    let (s, v) = start("alice", "31000710", None);
    assert_eq!(
        (s, code(&v)),
        (403, Some("agent_required_for_users")),
        "{v}"
    );
    // Assigning is an operator's action.
    let (s, v) = call_as_user(
        &server,
        &alice,
        "POST",
        "/issuance",
        Some(
            json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000711", "action": "assign" }),
        ),
    );
    assert_eq!(
        (s, code(&v)),
        (403, Some("assign_not_allowed_for_users")),
        "{v}"
    );
    for serial in ["31000710", "31000711"] {
        let (_, d) = server.call("GET", &format!("/devices/{serial}"), None);
        assert_eq!(d["state"], "assigned", "nothing changed: {d}");
    }

    // Her device, its policy, her agent: issued.
    let (s, first) = start("alice", "31000710", Some("agent"));
    assert_eq!(s, 201, "{first}");
    let id = first["session_id"].as_str().unwrap().to_string();
    let end = wait_session_end(&server.url, &server.token, &id);
    assert_eq!(end["status"], "issued", "{end}");
    let (s, st) = call_as_user(&server, &alice, "GET", &format!("/issuance/{id}"), None);
    assert_eq!((s, st["status"].as_str()), (200, Some("issued")), "{st}");
    let (_, d) = server.call("GET", "/devices/31000711", None);
    assert_eq!(d["state"], "assigned", "bob's device untouched: {d}");
}
