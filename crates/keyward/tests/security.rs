//! Security hardening (issue 15), each defect with the test that failed
//! before its fix: a session belongs to its creator, its bound agent and
//! the person it is for; an API token drives only the agents paired to it;
//! metrics are not served to anyone by default; sign-in, enrollment and
//! pairing requests are braked (429 with Retry-After, audited); expired
//! pairings are purged.

#[path = "common/agent.rs"]
mod agent;
#[path = "common/self_service.rs"]
mod self_service;
mod support;

use serde_json::{json, Value};
use support::{ServerOptions, TestServer};

fn code(r: &(u16, Value)) -> (u16, String) {
    (r.0, r.1["error"]["code"].as_str().unwrap_or("").to_string())
}

/// Item 2: another issuance operator could read the first one's batches
/// (later ones carry the PIN, the PUK and the management key) and feed the
/// session. Now: 404 for anyone but the creator, its agent and the person.
#[test]
fn a_session_belongs_to_its_creator_its_agent_and_its_person() {
    let server = TestServer::start();
    support::seed_piv_standard(&server, "31000501");
    let first = server.token_with_role("issuance_operator");
    let second = server.token_with_role("issuance_operator");
    let (s, batch) = server.call_as(
        &first,
        "POST",
        "/issuance",
        Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000501", "pin": "735194" })),
    );
    assert_eq!(s, 201, "{batch}");
    let id = batch["session_id"].as_str().unwrap().to_string();
    let result = json!({ "protocol": 1, "session_id": id, "seq": 1, "responses": [] });
    // The other operator: the same 404 as for a session that does not exist.
    for (m, p, b) in [
        ("GET", format!("/issuance/{id}"), None),
        ("GET", format!("/issuance/{id}/batch"), None),
        (
            "POST",
            format!("/issuance/{id}/relay"),
            Some(result.clone()),
        ),
    ] {
        let r = server.call_as(&second, m, &p, b);
        assert_eq!(code(&r), (404, "not_found".into()), "{m} {p}: {}", r.1);
    }
    let none = format!("/issuance/{}/batch", uuid_of(1));
    assert_eq!(server.call_as(&second, "GET", &none, None).0, 404);
    // The creator reads it.
    let (s, b) = server.call_as(&first, "GET", &format!("/issuance/{id}/batch"), None);
    assert_eq!(s, 200, "{b}");
    // An administrator reads its status, never its device commands.
    assert_eq!(server.call("GET", &format!("/issuance/{id}"), None).0, 200);
    assert_eq!(
        server.call("GET", &format!("/issuance/{id}/batch"), None).0,
        404
    );
    // The person it is for follows it, and may not post device responses.
    let alice = self_service::sign_in_user(&server, "alice");
    let r = self_service::call_as_user(&server, &alice, "GET", &format!("/issuance/{id}"), None);
    assert_eq!(r.0, 200, "{}", r.1);
    let r = self_service::call_as_user(
        &server,
        &alice,
        "GET",
        &format!("/issuance/{id}/batch"),
        None,
    );
    assert_eq!(r.0, 404, "{}", r.1);
    let with_responses = json!({ "protocol": 1, "session_id": id, "seq": 1,
        "responses": [{ "sw": "9000", "data": "" }] });
    let r = self_service::call_as_user(
        &server,
        &alice,
        "POST",
        &format!("/issuance/{id}/relay"),
        Some(with_responses),
    );
    assert_eq!(code(&r), (403, "answers_only".into()), "{}", r.1);
    // Nothing moved.
    let (_, st) = server.call_as(&first, "GET", &format!("/issuance/{id}"), None);
    assert_eq!(
        (st["seq"].as_i64(), st["status"].as_str()),
        (Some(1), Some("running")),
        "{st}"
    );
}

fn uuid_of(n: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(n)
}

/// Item 3: any API token could drive any agent, a person's own included.
/// Now a token uses only the agents paired to it; an administrator any,
/// audited.
#[test]
fn a_token_drives_only_the_agents_paired_to_it() {
    let server = TestServer::start();
    support::seed_piv_standard(&server, "31000502");
    let owner = server.token_with_role("issuance_operator");
    let other = server.token_with_role("issuance_operator");
    let agent = agent::Agent::spawn(&server.url, &["--virtual", "yubikey5:31000502"]);
    let (s, v) = server.call_as(
        &owner,
        "POST",
        "/agents/approve",
        Some(json!({ "code": agent.pairing_code() })),
    );
    assert_eq!(s, 200, "{v}");
    agent::wait_devices(&server.url, &owner, &["31000502"], true);
    // The other token sees neither the agent nor its device.
    let (_, listed) = server.call_as(&other, "GET", "/agents", None);
    assert!(!listed.to_string().contains(&agent.agent_id()), "{listed}");
    let (_, devices) = server.call_as(&other, "GET", "/agents/devices", None);
    assert!(!devices.to_string().contains("31000502"), "{devices}");
    let start = json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000502", "pin": "735194", "via": "agent" });
    let r = server.call_as(&other, "POST", "/issuance", Some(start.clone()));
    assert_eq!(code(&r), (409, "no_agent_for_device".into()), "{}", r.1);
    let (_, d) = server.call("GET", "/devices/31000502", None);
    assert_eq!(d["state"], "available", "nothing moved");
    // An administrator may, and it is audited.
    let (s, b) = server.call("POST", "/issuance", Some(start));
    assert_eq!(s, 201, "{b}");
    let (_, audit) = server.call("GET", "/audit?limit=1000", None);
    let used = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "agent.use_other")
        .cloned()
        .unwrap_or_else(|| panic!("no agent.use_other in {audit}"));
    assert_eq!(used["details"]["serial"], "31000502", "{used}");
    agent::wait_session_end(
        &server.url,
        &server.token,
        b["session_id"].as_str().unwrap(),
    );
}

/// Item 9: `/metrics` was open to anyone who reached the server. By
/// default it is served to nobody; on an address of its own, or on the
/// main one with its token.
#[test]
fn metrics_are_served_only_where_configured() {
    let server = TestServer::start();
    let http = server.client();
    let get = |url: String, token: Option<&str>| {
        let mut r = http.get(url);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().unwrap()
    };
    assert_eq!(get(format!("{}/metrics", server.url), None).status(), 404);
    assert_eq!(
        get(format!("{}/metrics", server.url), Some(&server.token)).status(),
        404
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let token = "metrics-token-for-the-scraper-0042";
    let server = TestServer::start_with(ServerOptions {
        args: vec!["--metrics-listen".into(), format!("127.0.0.1:{port}")],
        extra_env: vec![("KEYWARD_METRICS_TOKEN".into(), token.into())],
        ..Default::default()
    });
    let own = get(format!("http://127.0.0.1:{port}/metrics"), None);
    assert_eq!(own.status(), 200);
    assert!(own.text().unwrap().contains("keyward_http_requests_total"));
    // Nothing else on the metrics address.
    assert_eq!(
        get(
            format!("http://127.0.0.1:{port}/api/v1/settings"),
            Some(&server.token)
        )
        .status(),
        404
    );
    assert_eq!(get(format!("{}/metrics", server.url), None).status(), 404);
    assert_eq!(
        get(
            format!("{}/metrics", server.url),
            Some("wrong-token-wrong-token-00")
        )
        .status(),
        404
    );
    assert_eq!(
        get(format!("{}/metrics", server.url), Some(token)).status(),
        200
    );
    // The token is a secret: not in the log.
    assert!(!server.output().contains(token));
}

/// Item 5: sign-in had no brake. Now a login's failures and an address's
/// attempts are limited: 429 with Retry-After, audited, and while limited
/// even the right password is not checked.
#[test]
fn sign_in_is_braked_per_login_and_the_brake_is_audited() {
    let server = TestServer::start();
    let (s, created) = server.call(
        "POST",
        "/operators",
        Some(json!({ "login": "olga", "role": "help_desk" })),
    );
    assert_eq!(s, 201, "{created}");
    let otp = created["one_time_password"].as_str().unwrap().to_string();
    let http = reqwest::blocking::Client::new();
    let attempt = |password: &str| {
        let r = http
            .post(server.api("/auth/session"))
            .json(&json!({ "login": "olga", "password": password }))
            .send()
            .unwrap();
        let retry = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        (r.status().as_u16(), retry)
    };
    for _ in 0..5 {
        assert_eq!(attempt("wrong-password-x").0, 401);
    }
    let (status, retry) = attempt("wrong-password-x");
    assert_eq!(status, 429);
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=61).contains(&retry), "{retry}");
    // The right password waits too.
    assert_eq!(attempt(&otp).0, 429);
    let (_, audit) = server.call("GET", "/audit?limit=1000", None);
    let limited: Vec<&Value> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "auth.rate_limited")
        .collect();
    assert_eq!(limited.len(), 1, "audited once a minute: {limited:?}");
    assert_eq!(limited[0]["details"]["attempt"], "sign_in");
    // Another login is not affected.
    let r = http
        .post(server.api("/auth/session"))
        .json(&json!({ "login": "nobody", "password": "x" }))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

/// Item 5: enrollment hashed the new password (argon2, 19 MiB) before it
/// checked the code. Now a wrong code is refused before any hashing, and
/// guessing codes meets the brake.
#[test]
fn enrollment_checks_the_code_before_hashing_and_is_braked() {
    let server = TestServer::start();
    support::seed_piv_standard(&server, "31000503");
    let (_, _) = server.call("POST", "/users/alice/enrollment-code", None);
    let http = reqwest::blocking::Client::new();
    let mut statuses = Vec::new();
    for i in 0..8 {
        let r = http
            .post(server.api("/auth/enroll"))
            .json(&json!({ "login": "alice", "code": format!("AAAA-BBBB-CCCC-{i:04}"), "password": "a-first-passphrase-42" }))
            .send()
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(&statuses[..5], &[400; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
}

/// Item 11: pairing requests were unauthenticated and unlimited. Now a few
/// a minute per address.
#[test]
fn pairing_requests_are_braked_per_address() {
    let server = TestServer::start();
    let http = reqwest::blocking::Client::new();
    let mut statuses = Vec::new();
    for i in 0..12 {
        let r = http
            .post(server.api("/agents/pair"))
            .json(&json!({ "name": format!("ws-{i}") }))
            .send()
            .unwrap();
        statuses.push((r.status().as_u16(), r.headers().contains_key("retry-after")));
    }
    assert!(statuses[..10].iter().all(|s| s.0 == 201), "{statuses:?}");
    assert!(
        statuses[10..].iter().all(|s| *s == (429, true)),
        "{statuses:?}"
    );
}

/// Item 2's root: a session's creator (and the audit trail) names a token
/// by its name, so two live tokens of one name were one party. Refused now.
#[test]
fn two_live_tokens_cannot_share_a_name() {
    let server = TestServer::start();
    let body = json!({ "name": "ci-runner", "role": "issuance_operator" });
    let (s, first) = server.call("POST", "/tokens", Some(body.clone()));
    assert_eq!(s, 201, "{first}");
    let r = server.call("POST", "/tokens", Some(body.clone()));
    assert_eq!(code(&r), (409, "duplicate_name".into()), "{}", r.1);
    // Revoked, the name is free again.
    let id = first["token_info"]["id"].as_str().unwrap();
    assert_eq!(server.call("DELETE", &format!("/tokens/{id}"), None).0, 204);
    assert_eq!(server.call("POST", "/tokens", Some(body)).0, 201);
}
