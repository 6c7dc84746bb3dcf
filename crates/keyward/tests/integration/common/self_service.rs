//! A self-service account in tests: signed in through enrollment, calling
//! the API with its session cookie and CSRF token.

// Each test file uses a part of these helpers.
#![allow(dead_code)]

use serde_json::{json, Value};

use crate::support::TestServer;

/// Signs `login` in to its self-service account (enrollment code, then a
/// password); returns the session cookie and CSRF token.
pub fn sign_in_user(server: &TestServer, login: &str) -> (String, String) {
    let (_, code) = server.call("POST", &format!("/users/{login}/enrollment-code"), None);
    let http = reqwest::blocking::Client::new();
    let r = http
        .post(server.api("/auth/enroll"))
        .json(&json!({ "login": login, "code": code["code"], "password": "a-first-passphrase-42" }))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    sign_in_with(server, login, "a-first-passphrase-42").expect("signed in")
}

/// Signs `login` in with `password`: its session cookie and CSRF token, or
/// `None` when refused.
pub fn sign_in_with(server: &TestServer, login: &str, password: &str) -> Option<(String, String)> {
    let r = reqwest::blocking::Client::new()
        .post(server.api("/auth/session"))
        .json(&json!({ "login": login, "password": password }))
        .send()
        .unwrap();
    if r.status().as_u16() != 200 {
        return None;
    }
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let csrf = r.json::<Value>().unwrap()["csrf_token"]
        .as_str()
        .unwrap()
        .to_string();
    Some((cookie, csrf))
}

pub fn call_as_user(
    server: &TestServer,
    (cookie, csrf): &(String, String),
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let http = reqwest::blocking::Client::new();
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = http
        .request(m, server.api(path))
        .header("cookie", cookie)
        .header("x-csrf-token", csrf);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().unwrap();
    let s = r.status().as_u16();
    (s, r.json().unwrap_or(Value::Null))
}

/// The User Portal's "My devices" page as the signed-in person sees it.
pub fn me_page(server: &TestServer, (cookie, _): &(String, String)) -> String {
    let r = reqwest::blocking::Client::new()
        .get(format!("{}/me", server.url))
        .header("cookie", cookie)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.text().unwrap()
}

/// A new operator account of `role`, signed in with its password changed
/// (no longer the one-time password): its session cookie and CSRF token.
pub fn sign_in_operator(server: &TestServer, login: &str, role: &str) -> (String, String) {
    sign_in_operator_linked(server, login, role, None)
}

/// [`sign_in_operator`], the account linked to the user `user`.
pub fn sign_in_operator_linked(
    server: &TestServer,
    login: &str,
    role: &str,
    user: Option<&str>,
) -> (String, String) {
    let (s, v) = server.call(
        "POST",
        "/operators",
        Some(json!({ "login": login, "role": role, "user_login": user })),
    );
    assert_eq!(s, 201, "{v}");
    let otp = v["one_time_password"].as_str().unwrap().to_string();
    let session = sign_in_with(server, login, &otp).expect("signed in");
    let new = format!("{login}-a-new-passphrase-42");
    let (s, v) = call_as_user(
        server,
        &session,
        "POST",
        "/auth/password",
        Some(json!({ "current_password": otp, "new_password": new })),
    );
    assert_eq!(s, 204, "{v}");
    sign_in_with(server, login, &new).expect("signed in again")
}

/// A portal page's HTML (status and body) with a signed-in session.
pub fn page_as(server: &TestServer, (cookie, _): &(String, String), path: &str) -> (u16, String) {
    let r = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}{path}", server.url))
        .header("cookie", cookie.as_str())
        .send()
        .unwrap();
    (r.status().as_u16(), r.text().unwrap())
}
