//! Security hardening (issue 15), each defect with the test that failed
//! before its fix: a session belongs to its creator, its bound agent and
//! the person it is for; an API token drives only the agents paired to it;
//! metrics are not served to anyone by default; sign-in, enrollment and
//! pairing requests are braked (429 with Retry-After, audited); expired
//! pairings are purged.

use crate::common::agent;
use crate::common::self_service;
use crate::support;

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

/// Item 5, by address: guessing across logins from one address meets the
/// address's brake (30 attempts a minute) even for a login never tried.
#[test]
fn sign_in_is_braked_per_address_across_logins() {
    let server = TestServer::start();
    let http = reqwest::blocking::Client::new();
    let attempt = |login: &str| {
        http.post(server.api("/auth/session"))
            .json(&json!({ "login": login, "password": "wrong-password-x" }))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    for i in 0..30 {
        assert_eq!(attempt(&format!("guess{i}")), 401, "attempt {i}");
    }
    assert_eq!(attempt("guess-new"), 429, "the address is braked");
    let (_, audit) = server.call("GET", "/audit?limit=1000", None);
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "auth.rate_limited"),
        "audited"
    );
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

fn session_of(server: &TestServer, login: &str, password: &str) -> Option<(String, String)> {
    self_service::sign_in_with(server, login, password)
}

/// Item 4: operators could not be locked out. Now an administrator
/// disables and enables an account, changes its role, resets its password
/// and ends its sessions (API and CLI); one's own password change ends
/// one's other sessions; nobody removes the last administrator.
#[test]
fn an_operator_is_locked_out_and_let_back_in() {
    let server = TestServer::start();
    let (s, created) = server.call(
        "POST",
        "/operators",
        Some(json!({ "login": "olga", "role": "help_desk" })),
    );
    assert_eq!(s, 201, "{created}");
    let otp = created["one_time_password"].as_str().unwrap().to_string();
    let first = session_of(&server, "olga", &otp).unwrap();
    let me =
        |sess: &(String, String)| self_service::call_as_user(&server, sess, "GET", "/me", None);
    assert_eq!(me(&first).0, 200);
    // Her own password change ends her other sessions, not this one.
    let second = session_of(&server, "olga", &otp).unwrap();
    let r = self_service::call_as_user(
        &server,
        &first,
        "POST",
        "/auth/password",
        Some(json!({ "current_password": otp, "new_password": "olga-new-passphrase-1" })),
    );
    assert_eq!(r.0, 204, "{}", r.1);
    assert_eq!(me(&first).0, 200);
    assert_eq!(me(&second).0, 401, "the other session ended");

    // Disabled (the CLI): her session ends at once, she cannot sign in.
    let out = server.admin(&["operator", "disable", "olga", "--json"]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let v: Value = serde_json::from_str(&support::stdout(&out)).unwrap();
    assert_eq!(v["sessions_ended"], 1, "{v}");
    assert_eq!(me(&first).0, 401);
    assert!(session_of(&server, "olga", "olga-new-passphrase-1").is_none());
    let out = server.admin(&["operator", "enable", "olga"]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let third = session_of(&server, "olga", "olga-new-passphrase-1").unwrap();
    // A new role applies to her next request.
    let out = server.admin(&["operator", "set-role", "olga", "issuance_operator"]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    assert_eq!(me(&third).1["role"], "issuance_operator");
    let r = server.call(
        "PUT",
        "/operators/olga/role",
        Some(json!({ "role": "user" })),
    );
    assert_eq!(code(&r), (400, "role_not_allowed".into()));
    // Reset: a one-time password, her sessions end, she must change it.
    let out = server.admin(&["operator", "reset-password", "olga", "--json"]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let v: Value = serde_json::from_str(&support::stdout(&out)).unwrap();
    let otp2 = v["one_time_password"].as_str().unwrap().to_string();
    // (The sink holds the CLI's own output too: only log lines count.)
    let leaked: Vec<String> = server
        .output()
        .lines()
        .filter(|l| {
            ["INFO", "WARN", "ERROR", "DEBUG"]
                .iter()
                .any(|lvl| l.contains(lvl))
        })
        .filter(|l| l.contains(&otp2))
        .map(String::from)
        .collect();
    assert!(leaked.is_empty(), "never in the log: {leaked:?}");
    assert_eq!(me(&third).0, 401);
    assert!(session_of(&server, "olga", "olga-new-passphrase-1").is_none());
    let fourth = session_of(&server, "olga", &otp2).unwrap();
    let r = self_service::call_as_user(&server, &fourth, "GET", "/users", None);
    assert_eq!(code(&r), (403, "password_change_required".into()));
    // Sign out: every session ends.
    let out = server.admin(&["operator", "sign-out", "olga"]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    assert_eq!(me(&fourth).0, 401);
    // The last enabled administrator stays.
    let r = server.call("POST", "/operators/admin/disable", None);
    assert_eq!(code(&r), (409, "last_administrator".into()), "{}", r.1);
    let r = server.call(
        "PUT",
        "/operators/admin/role",
        Some(json!({ "role": "help_desk" })),
    );
    assert_eq!(code(&r), (409, "last_administrator".into()), "{}", r.1);
    let (_, audit) = server.call("GET", "/audit?limit=1000", None);
    for action in [
        "operator.disable",
        "operator.enable",
        "operator.set_role",
        "operator.reset_password",
        "operator.sign_out",
        "auth.password_change",
    ] {
        assert!(audit.to_string().contains(action), "{action}");
    }
}

/// Item 4: API tokens never expired and `last_used_at` was never written.
#[test]
fn tokens_expire_and_record_their_last_use() {
    let server = TestServer::start();
    let (s, v) = server.call(
        "POST",
        "/tokens",
        Some(json!({ "name": "short-lived", "role": "help_desk", "days": 1 })),
    );
    assert_eq!(s, 201, "{v}");
    let expires = time::OffsetDateTime::parse(
        v["token_info"]["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let left = expires - time::OffsetDateTime::now_utc();
    assert!(
        left > time::Duration::hours(23) && left <= time::Duration::days(1),
        "{left}"
    );
    let token = v["token"].as_str().unwrap().to_string();
    assert_eq!(server.call_as(&token, "GET", "/users", None).0, 200);
    let (_, list) = server.call("GET", "/tokens", None);
    let mine = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "short-lived")
        .unwrap()
        .clone();
    assert!(mine["last_used_at"].is_string(), "{mine}");
    // Its day is over (written in the store as the clock cannot be moved):
    // refused, with the reason.
    support::sqlite_exec(
        &server.data_path().join("keyward.db"),
        "UPDATE api_tokens SET expires_at = created_at WHERE name = 'short-lived'",
    );
    let r = server.call_as(&token, "GET", "/users", None);
    assert_eq!(code(&r), (401, "token_expired".into()));
    // Default 90 days; more than the server allows is refused.
    let (_, v) = server.call(
        "POST",
        "/tokens",
        Some(json!({ "name": "default", "role": "help_desk" })),
    );
    let expires = time::OffsetDateTime::parse(
        v["token_info"]["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!((expires - time::OffsetDateTime::now_utc()).whole_days() >= 89);
    let r = server.call(
        "POST",
        "/tokens",
        Some(json!({ "name": "long", "role": "help_desk", "days": 400 })),
    );
    assert_eq!(code(&r), (400, "days_invalid".into()));
}

/// Item 4: `serve` accepted any bootstrap token, however short.
#[test]
fn serve_refuses_a_weak_bootstrap_token() {
    for (token, why) in [
        ("kw_short_token", "fewer than 32 characters"),
        (
            "abcdefghijklmnopqrstuvwxyzabcdefghij",
            "one character class",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(support::BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("KEYWARD_BOOTSTRAP_TOKEN", token)
            .env_remove("KEYWARD_CONFIG")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(
            text.contains("KEYWARD_BOOTSTRAP_TOKEN is refused") && text.contains(why),
            "{text}"
        );
        assert!(
            !text.contains(token),
            "the token itself is not printed: {text}"
        );
    }
}

/// A server with `toml` as its configuration file.
fn with_config(toml: &str, extra: Vec<String>) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyward.toml");
    std::fs::write(&path, toml).unwrap();
    let mut args = vec!["--config".to_string(), path.display().to_string()];
    args.extend(extra);
    let server = TestServer::start_with(ServerOptions {
        args,
        ..Default::default()
    });
    (server, dir)
}

fn addr(server: &TestServer) -> String {
    server.url.trim_start_matches("http://").to_string()
}

/// Reads until the server closes the connection (or `limit` passes):
/// whether it closed.
fn closed_within(stream: &mut std::net::TcpStream, limit: std::time::Duration) -> bool {
    use std::io::Read;
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    let start = std::time::Instant::now();
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return start.elapsed() < limit
            }
            Err(_) => return true,
        }
    }
}

/// Item 6: no HTTP timeouts or limits. A client that trickles its headers
/// a byte a second is disconnected within the header timeout; a silent
/// connection within the idle timeout; a connection beyond
/// `max_connections` at once; a request that takes longer than the request
/// timeout is answered 408.
#[test]
fn slow_silent_and_surplus_connections_are_cut() {
    use std::io::Write;
    let (server, _cfg) = with_config(
        "header_read_timeout_seconds = 2\nidle_timeout_seconds = 3\nmax_connections = 3\nrequest_timeout_seconds = 30\n",
        vec![],
    );
    // Trickled headers: cut within the header timeout (not served, however long).
    let mut slow = std::net::TcpStream::connect(addr(&server)).unwrap();
    let start = std::time::Instant::now();
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut cut = false;
    for b in request.iter() {
        if slow.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1000));
        if start.elapsed() > std::time::Duration::from_secs(8) {
            break;
        }
    }
    let cut = cut || closed_within(&mut slow, std::time::Duration::from_secs(1));
    assert!(cut, "the trickling client was not disconnected");
    assert!(
        start.elapsed() < std::time::Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );
    // Silent: cut within the idle (or header) timeout.
    let mut silent = std::net::TcpStream::connect(addr(&server)).unwrap();
    let start = std::time::Instant::now();
    assert!(closed_within(
        &mut silent,
        std::time::Duration::from_secs(6)
    ));
    assert!(
        start.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    // Three at once; a fourth is closed as it is accepted.
    let held: Vec<_> = (0..3)
        .map(|_| std::net::TcpStream::connect(addr(&server)).unwrap())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut surplus = std::net::TcpStream::connect(addr(&server)).unwrap();
    let _ = surplus.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        closed_within(&mut surplus, std::time::Duration::from_secs(1)),
        "the fourth connection was served"
    );
    drop(held);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let r = server
        .client()
        .get(format!("{}/healthz", server.url))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "slots come back");
}

/// Item 6: a request that runs past the request timeout is answered 408
/// (here a body trickled a byte every two seconds: each byte keeps the
/// connection from idling, the request still ends on time).
#[test]
fn a_request_past_the_request_timeout_is_answered_408() {
    use std::io::{Read, Write};
    let (server, _cfg) = with_config(
        "request_timeout_seconds = 30\nidle_timeout_seconds = 60\n",
        vec![],
    );
    let mut c = std::net::TcpStream::connect(addr(&server)).unwrap();
    c.write_all(b"POST /api/v1/auth/session HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n{")
        .unwrap();
    let start = std::time::Instant::now();
    let trickle = std::thread::spawn({
        let mut c = c.try_clone().unwrap();
        move || {
            while start.elapsed() < std::time::Duration::from_secs(40) {
                if c.write_all(b" ").is_err() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_secs(2));
            }
        }
    });
    c.set_read_timeout(Some(std::time::Duration::from_secs(45)))
        .unwrap();
    let mut head = [0u8; 12];
    c.read_exact(&mut head).unwrap();
    let took = start.elapsed();
    assert_eq!(&head, b"HTTP/1.1 408", "{}", String::from_utf8_lossy(&head));
    assert!(
        took >= std::time::Duration::from_secs(29) && took < std::time::Duration::from_secs(36),
        "{took:?}"
    );
    drop(c);
    let _ = trickle.join();
}

/// Item 6: behind a TLS proxy (`public_url` https) the session cookie was
/// sent without `Secure`, and nothing told browsers to keep to HTTPS. Now:
/// HSTS, `Secure`, and the `__Host-` prefix.
#[test]
fn behind_a_tls_proxy_cookies_are_secure_host_only_and_hsts_is_sent() {
    let server = TestServer::start_with(ServerOptions {
        args: vec!["--public-url".into(), "https://cms.example.test".into()],
        ..Default::default()
    });
    let (s, created) = server.call(
        "POST",
        "/operators",
        Some(json!({ "login": "olga", "role": "help_desk" })),
    );
    assert_eq!(s, 201);
    let r = reqwest::blocking::Client::new()
        .post(server.api("/auth/session"))
        .json(&json!({ "login": "olga", "password": created["one_time_password"] }))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.headers()
            .get("strict-transport-security")
            .is_some_and(|v| v.to_str().unwrap().contains("max-age=")),
        "{:?}",
        r.headers()
    );
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.starts_with("__Host-kw_session="), "{cookie}");
    assert!(
        cookie.contains("; Secure") && cookie.contains("Path=/;"),
        "{cookie}"
    );
    assert!(!cookie.contains("Domain"), "{cookie}");
    let value = cookie
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_string();
    let me = |name: &str| {
        reqwest::blocking::Client::new()
            .get(server.api("/me"))
            .header("cookie", format!("{name}={value}"))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(me("__Host-kw_session"), 200);
    assert_eq!(me("kw_session"), 401, "only the prefixed name counts");
    // Plain HTTP without a TLS proxy: no HSTS.
    let plain = TestServer::start();
    let r = plain
        .client()
        .get(format!("{}/healthz", plain.url))
        .send()
        .unwrap();
    assert!(r.headers().get("strict-transport-security").is_none());
}

/// Item 10: the audit chain's key comes from the KEK, so whoever holds it
/// could rewrite history unnoticed, and nobody without it could check. Now
/// signed checkpoints of an unkeyed hash chain, checked with the public key
/// alone: a record changed in the database afterwards is caught.
#[test]
fn signed_checkpoints_prove_with_the_public_key_alone_that_no_record_changed() {
    let (server, _cfg) = with_config("audit_checkpoint_seconds = 1\n", vec![]);
    for login in ["ann", "ben", "cat"] {
        let (s, _) = server.call(
            "POST",
            "/users",
            Some(json!({ "login": login, "display_name": login })),
        );
        assert_eq!(s, 201);
    }
    let (_, head) = server.call("GET", "/audit?limit=1000", None);
    let last = head["items"].as_array().unwrap().last().unwrap()["seq"]
        .as_i64()
        .unwrap();
    let data = server.data_path();
    let file = data.join("audit-checkpoints.jsonl");
    let key = data.join("audit-signing-key.pem.pub");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let covered = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| t.lines().last().map(String::from))
            .and_then(|l| serde_json::from_str::<Value>(&l).ok())
            .and_then(|c| c["seq"].as_i64())
            .unwrap_or(0);
        if covered >= last {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint covers record {last}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(server.output().contains("audit signed checkpoint"));
    // The private key is the server's alone.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(data.join("audit-signing-key.pem"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o077, 0, "{mode:o}");
    let verify = |key: &std::path::Path| {
        server.admin(&[
            "audit",
            "verify",
            "--checkpoints",
            file.to_str().unwrap(),
            "--public-key",
            key.to_str().unwrap(),
        ])
    };
    let out = verify(&key);
    assert!(
        out.status.success(),
        "{}{}",
        support::stdout(&out),
        support::stderr(&out)
    );
    assert!(
        support::stdout(&out).contains("verified"),
        "{}",
        support::stdout(&out)
    );
    // Another key does not verify them.
    let other = tempfile::tempdir().unwrap();
    let stranger =
        keyward_server::audit_checkpoints::Signer::load_or_create(&other.path().join("k.pem"))
            .unwrap();
    let stranger_key = other.path().join("k.pem.pub");
    assert!(!stranger.public_pem.is_empty());
    let out = verify(&stranger_key);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        support::stdout(&out).contains("does not verify"),
        "{}",
        support::stdout(&out)
    );
    // A record rewritten in the database (by someone past the append-only
    // trigger): caught, naming the checkpoint.
    tamper(&data.join("keyward.db"), 2);
    let out = verify(&key);
    assert_eq!(out.status.code(), Some(1), "{}", support::stdout(&out));
    assert!(
        support::stdout(&out).contains("changed since it was signed"),
        "{}",
        support::stdout(&out)
    );
}

fn tamper(db: &std::path::Path, seq: i64) {
    support::sqlite_exec(
        db,
        &format!(
            "DROP TRIGGER audit_log_no_update; UPDATE audit_log SET actor = 'account:eve' WHERE seq = {seq};"
        ),
    );
}

/// Item 1 (in part): attestation roots that were configured but unreadable
/// were skipped with a warning, so every key went unattested. Now the
/// server does not start (fail closed), for roots and for intermediates.
#[test]
fn unreadable_attestation_roots_stop_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    for (key, path, why) in [
        (
            "attestation_roots",
            dir.path().join("missing.pem"),
            "No such file",
        ),
        ("attestation_roots", garbage.clone(), "holds no certificate"),
        (
            "attestation_intermediates",
            garbage.clone(),
            "holds no certificate",
        ),
        (
            "fido_attestation_roots",
            dir.path().join("missing.pem"),
            "No such file",
        ),
        (
            "fido_attestation_roots",
            garbage.clone(),
            "holds no certificate",
        ),
    ] {
        let cfg = dir.path().join("keyward.toml");
        std::fs::write(&cfg, format!("{key} = [\"{}\"]\n", path.display())).unwrap();
        let data = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(support::BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&cfg)
            .arg("--data-dir")
            .arg(data.path())
            .env_remove("KEYWARD_BOOTSTRAP_TOKEN")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{key}");
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains(key) && text.contains(why), "{key}: {text}");
    }
}

/// Item 1: "Require device attestation" was a setting, off by default, and
/// a policy field nobody read. Now one switch, the policy's: a new policy
/// requires attestation on a YubiKey unless it says `false`, so with no
/// root nothing is certified for a key the device did not prove.
#[test]
fn a_policy_requires_attestation_on_a_yubikey_unless_it_says_no() {
    use keyward_vcard::{ProfileKind, VcardConfig, VirtualCard};
    let server = TestServer::start();
    support::seed_piv_standard(&server, "31000601");
    let (_, mut p) = server.call("GET", "/policies/PIV%20Standard", None);
    p.as_object_mut()
        .unwrap()
        .remove("require_device_attestation");
    let (s, v) = server.call("PUT", "/policies/PIV%20Standard", Some(p));
    assert_eq!(s, 200, "{v}");
    let (_, p) = server.call("GET", "/policies/PIV%20Standard", None);
    assert!(p.get("require_device_attestation").is_none(), "{p}");
    let ca = tempfile::tempdir().unwrap();
    let mut card = VirtualCard::new(
        VcardConfig::new(ProfileKind::Yubikey5)
            .with_serial(31000601)
            .with_ca_dir(ca.path()),
    )
    .unwrap();
    card.power_on();
    let (s, mut batch) = server.call(
        "POST",
        "/issuance",
        Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": "31000601", "pin": "735194" })),
    );
    assert_eq!(s, 201, "{batch}");
    let id = batch["session_id"].as_str().unwrap().to_string();
    while batch["state"] == "running" {
        let responses = support::relay_in_process(&mut card, &batch);
        let (_, next) = server.call(
            "POST",
            &format!("/issuance/{id}/relay"),
            Some(json!({ "protocol": 1, "session_id": id, "seq": batch["seq"], "responses": responses })),
        );
        batch = next;
    }
    assert_eq!(batch["state"], "failed", "{batch}");
    let (_, st) = server.call("GET", &format!("/issuance/{id}"), None);
    assert_eq!(st["error"]["code"], "attestation_failed", "{st}");
    assert!(
        st["credentials"].as_array().unwrap().is_empty(),
        "nothing certified"
    );
    // The retired setting is gone from the API.
    let (_, settings) = server.call("GET", "/settings", None);
    assert!(
        settings.get("require_device_attestation").is_none(),
        "{settings}"
    );
}

/// Item 1: a data folder whose retired setting required attestation comes
/// up with every policy requiring it (and the setting gone).
#[test]
fn the_retired_attestation_setting_moves_into_every_policy() {
    let mut server = TestServer::start();
    support::seed_piv_standard(&server, "31000602");
    server.stop();
    support::sqlite_exec(
        &server.data_path().join("keyward.db"),
        "INSERT INTO settings (key, value, updated_at) VALUES ('require_device_attestation', 'true', '2026-01-01T00:00:00Z')",
    );
    let data = std::mem::replace(&mut server.data_dir, tempfile::tempdir().unwrap());
    drop(server);
    let server = TestServer::start_with(ServerOptions {
        data_dir: Some(data),
        ..Default::default()
    });
    let (_, p) = server.call("GET", "/policies/PIV%20Standard", None);
    assert_eq!(p["require_device_attestation"], true, "{p}");
    assert!(server
        .output()
        .contains("these policies require device attestation"));
}
