//! `keyward serve` over TLS (certificate and key files): HTTPS answers, and
//! session cookies carry `Secure`.

use crate::support;

use std::process::Command;

use support::{ServerOptions, TestServer};

#[test]
fn serves_https_with_secure_cookies() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
        ])
        .current_dir(dir.path())
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = TestServer::start_with(ServerOptions {
        args: vec![
            "--tls-cert".into(),
            dir.path().join("cert.pem").display().to_string(),
            "--tls-key".into(),
            dir.path().join("key.pem").display().to_string(),
        ],
        ..Default::default()
    });
    assert!(server.url.starts_with("https://"), "{}", server.url);
    // A self-signed certificate: this test is about serving TLS, not about trust.
    let http = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let r = http.get(format!("{}/healthz", server.url)).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let otp = server.first_admin_password.clone().unwrap();
    let r = http
        .post(server.api("/auth/session"))
        .json(&serde_json::json!({ "login": "admin", "password": otp }))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let cookie = r
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(cookie.contains("; Secure"), "{cookie}");
    // Plain HTTP to the TLS port does not get an answer from the API.
    let plain = reqwest::blocking::Client::new()
        .get(server.url.replace("https://", "http://") + "/healthz")
        .send();
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));
}
