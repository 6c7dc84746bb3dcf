//! A self-service account in tests: signed in through enrollment, calling
//! the API with its session cookie and CSRF token.

// Each test file uses a part of these helpers.
#![allow(dead_code)]

use serde_json::{json, Value};

use super::support::TestServer;

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
