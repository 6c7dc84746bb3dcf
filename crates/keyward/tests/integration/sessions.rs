//! Browser sessions: the first admin's one-time password, forced password
//! change, cookie flags, CSRF on state changes, sign-out; enrollment codes;
//! and that no password ever reaches the log.

use crate::support;

use serde_json::{json, Value};
use support::TestServer;

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().build().unwrap()
}

fn sign_in(server: &TestServer, login: &str, password: &str) -> (u16, Option<String>, Value) {
    let resp = client()
        .post(server.api("/auth/session"))
        .json(&json!({ "login": login, "password": password }))
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    let cookie = resp
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_string());
    (status, cookie, resp.json().unwrap_or(Value::Null))
}

fn with_cookie(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let session = cookie.split(';').next().unwrap();
    let mut req = client()
        .request(method, server.api(path))
        .header("cookie", session);
    if let Some(c) = csrf {
        req = req.header("x-csrf-token", c);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

#[test]
fn first_admin_signs_in_changes_password_and_csrf_is_enforced() {
    let mut server = TestServer::start();
    let otp = server
        .first_admin_password
        .clone()
        .expect("the first start prints the admin's one-time password");

    let (s, _, v) = sign_in(&server, "admin", "wrong-password-123");
    assert_eq!(s, 401);
    assert_eq!(v["error"]["code"], "sign_in_failed");
    let (s, _, v) = sign_in(&server, "nobody", "wrong-password-123");
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("sign_in_failed"))
    );

    let (s, cookie, info) = sign_in(&server, "admin", &otp);
    assert_eq!(s, 200, "{info}");
    let cookie = cookie.unwrap();
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
            && cookie.contains("Path=/"),
        "{cookie}"
    );
    assert_eq!(info["must_change_password"], true);
    let csrf = info["csrf_token"].as_str().unwrap().to_string();

    // Until the password is changed, nothing else.
    let (s, v) = with_cookie(&server, reqwest::Method::GET, "/users", &cookie, None, None);
    assert_eq!(s, 403);
    assert_eq!(v["error"]["code"], "password_change_required");
    let (s, _) = with_cookie(&server, reqwest::Method::GET, "/me", &cookie, None, None);
    assert_eq!(s, 200);

    // State changes need the CSRF token.
    let change = json!({ "current_password": otp, "new_password": "a-much-better-passphrase" });
    let (s, v) = with_cookie(
        &server,
        reqwest::Method::POST,
        "/auth/password",
        &cookie,
        None,
        Some(change.clone()),
    );
    assert_eq!(s, 403);
    assert_eq!(v["error"]["code"], "csrf_token_invalid");
    let (s, v) = with_cookie(
        &server,
        reqwest::Method::POST,
        "/auth/password",
        &cookie,
        Some("forged"),
        Some(change.clone()),
    );
    assert_eq!(s, 403, "{v}");
    let (s, v) = with_cookie(
        &server,
        reqwest::Method::POST,
        "/auth/password",
        &cookie,
        Some(&csrf),
        Some(json!({ "current_password": otp, "new_password": "short" })),
    );
    assert_eq!(s, 400);
    assert_eq!(v["error"]["code"], "password_too_short");
    let (s, v) = with_cookie(
        &server,
        reqwest::Method::POST,
        "/auth/password",
        &cookie,
        Some(&csrf),
        Some(change),
    );
    assert_eq!(s, 204, "{v}");

    let (s, v) = with_cookie(&server, reqwest::Method::GET, "/users", &cookie, None, None);
    assert_eq!(s, 200, "{v}");
    let (s, _) = with_cookie(
        &server,
        reqwest::Method::POST,
        "/users",
        &cookie,
        None,
        Some(json!({ "login": "x", "display_name": "X" })),
    );
    assert_eq!(s, 403);
    let (s, _) = with_cookie(
        &server,
        reqwest::Method::POST,
        "/users",
        &cookie,
        Some(&csrf),
        Some(json!({ "login": "xena", "display_name": "Xena" })),
    );
    assert_eq!(s, 201);

    // The old password no longer works; the new one does.
    assert_eq!(sign_in(&server, "admin", &otp).0, 401);
    assert_eq!(sign_in(&server, "admin", "a-much-better-passphrase").0, 200);

    // Sign-out ends the session.
    let (s, _) = with_cookie(
        &server,
        reqwest::Method::DELETE,
        "/auth/session",
        &cookie,
        Some(&csrf),
        None,
    );
    assert_eq!(s, 204);
    let (s, _) = with_cookie(&server, reqwest::Method::GET, "/users", &cookie, None, None);
    assert_eq!(s, 401);

    // A restart does not print a new password.
    server.stop();
    let log = server.output();
    assert_eq!(
        log.matches(&otp).count(),
        1,
        "the one-time password is printed once and never logged"
    );
    assert!(!log.contains("a-much-better-passphrase"));
}

#[test]
fn a_user_sets_a_first_password_with_an_enrollment_code() {
    let server = TestServer::start();
    assert_eq!(
        server
            .call(
                "POST",
                "/users",
                Some(json!({ "login": "ivy", "display_name": "Ivy" }))
            )
            .0,
        201
    );
    let (s, v) = server.call("POST", "/users/ivy/enrollment-code", None);
    assert_eq!(s, 201, "{v}");
    let code = v["code"].as_str().unwrap().to_string();
    let enroll = |code: &str| {
        client()
            .post(server.api("/auth/enroll"))
            .json(&json!({ "login": "ivy", "code": code, "password": "ivy-first-passphrase" }))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(enroll("AAAA-BBBB-CCCC-DDDD"), 400);
    assert_eq!(enroll(&code), 204);
    // Single use.
    assert_eq!(enroll(&code), 400);
    let (s, _, info) = sign_in(&server, "ivy", "ivy-first-passphrase");
    assert_eq!(s, 200);
    assert_eq!(info["role"], "user");
    assert_eq!(info["must_change_password"], false);
}
