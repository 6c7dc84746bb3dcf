//! Every route of the API checks authentication and the role: read from the
//! server's own OpenAPI document, each route answers 401 without credentials
//! and 403 for a caller whose role lacks its permission.

use crate::support;

use serde_json::Value;
use support::TestServer;

/// Routes anyone may call (sign-in, enrollment by code).
const PUBLIC: &[(&str, &str)] = &[
    ("post", "/api/v1/auth/session"),
    ("post", "/api/v1/auth/enroll"),
    // A workstation agent asks to pair, then polls with its pairing secret.
    ("post", "/api/v1/agents/pair"),
    ("post", "/api/v1/agents/pair/poll"),
];
/// Routes of the workstation agent's own credential (`kwa_…`): API tokens and
/// sessions of any role are not agent credentials (401).
const AGENT_ONLY: &[(&str, &str)] = &[
    ("get", "/api/v1/agents/me"),
    ("put", "/api/v1/agents/me/devices"),
    ("post", "/api/v1/agents/me/work"),
];
/// Self-service routes: only the `user` role has them.
const SELF_SERVICE: &[(&str, &str)] = &[
    ("get", "/api/v1/me/devices"),
    ("post", "/api/v1/me/devices/{serial}/initial-pin"),
    ("post", "/api/v1/me/devices/{serial}/change-pin"),
    ("post", "/api/v1/me/devices/{serial}/pin-check"),
    ("post", "/api/v1/me/devices/{serial}/unlock"),
    ("post", "/api/v1/me/devices/{serial}/update"),
];
/// A device session's own routes: its creator, its bound agent and the
/// person it is for; to anyone else the session does not exist (404), so a
/// session's id tells nothing (issue 15).
const SESSION_OWNED: &[(&str, &str)] = &[
    ("get", "/api/v1/issuance/{id}"),
    ("get", "/api/v1/issuance/{id}/batch"),
];
/// Routes every signed-in caller may use, whatever the role.
const ANY_ROLE: &[(&str, &str)] = &[
    ("get", "/api/v1/me"),
    ("delete", "/api/v1/auth/session"),
    ("post", "/api/v1/auth/password"),
    // Operators and users alike pair their own agents and see their devices;
    // each sees and revokes only the agents it owns (administrators: all).
    ("get", "/api/v1/agents"),
    ("post", "/api/v1/agents/approve"),
    ("post", "/api/v1/agents/{id}/revoke"),
    ("get", "/api/v1/agents/devices"),
];

fn routes(server: &TestServer) -> Vec<(String, String)> {
    let doc: Value = server
        .client()
        .get(server.api("/openapi.json"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                out.push((method.to_string(), path.clone()));
            }
        }
    }
    assert!(
        out.len() >= 25,
        "expected the whole API in the document, got {}",
        out.len()
    );
    out
}

fn concrete(path: &str) -> String {
    path.replace("{login}", "alice")
        .replace("{serial}", "12345678")
        .replace("{name}", "some-name")
        .replace("{key}", "initial_pin_display_mode")
        .replace("{id}", "00000000-0000-0000-0000-000000000000")
}

fn send(server: &TestServer, token: &str, method: &str, path: &str) -> (u16, Value) {
    let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    let mut req = server
        .client()
        .request(m, format!("{}{}", server.url, concrete(path)));
    if !token.is_empty() {
        req = req.bearer_auth(token);
    }
    if method != "get" && method != "delete" {
        req = req.header("content-type", "application/json").body("{}");
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

#[test]
fn every_route_refuses_unauthenticated_callers_with_401() {
    let server = TestServer::start();
    for (method, path) in routes(&server) {
        if PUBLIC.contains(&(method.as_str(), path.as_str())) {
            continue;
        }
        let (status, body) = send(&server, "", &method, &path);
        assert_eq!(status, 401, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "unauthenticated", "{method} {path}");
        let (status, _) = send(&server, "kw_not_a_real_token", &method, &path);
        assert_eq!(status, 401, "{method} {path} with a wrong token");
    }
}

#[test]
fn every_route_refuses_a_role_without_its_permission_with_403() {
    let server = TestServer::start();
    let user_token = server.token_with_role("user");
    let help_desk = server.token_with_role("help_desk");
    let mut checked = 0;
    for (method, path) in routes(&server) {
        let key = (method.as_str(), path.as_str());
        if PUBLIC.contains(&key) || ANY_ROLE.contains(&key) {
            continue;
        }
        if AGENT_ONLY.contains(&key) {
            let (status, body) = send(&server, &user_token, &method, &path);
            assert_eq!(
                status, 401,
                "user role on an agent route: {method} {path}: {body}"
            );
            continue;
        }
        if SESSION_OWNED.contains(&key) {
            let (status, body) = send(&server, &user_token, &method, &path);
            assert_eq!(status, 404, "user role: {method} {path}: {body}");
            let (status, body) = send(&server, &help_desk, &method, &path);
            assert_eq!(status, 404, "help_desk: {method} {path}: {body}");
            continue;
        }
        if SELF_SERVICE.contains(&key) {
            // Operators have no self-service.
            let (status, body) = send(&server, &help_desk, &method, &path);
            assert_eq!(status, 403, "help_desk: {method} {path}: {body}");
            continue;
        }
        // A self-service user may call none of the administration routes.
        let (status, body) = send(&server, &user_token, &method, &path);
        assert_eq!(status, 403, "user role: {method} {path}: {body}");
        assert_eq!(body["error"]["code"], "forbidden", "{method} {path}");
        assert!(body["error"]["details"]["required_permission"].is_string());
        checked += 1;
    }
    assert!(checked >= 20);
    // Help Desk: no settings, policies, operators, tokens or audit changes.
    for (method, path) in [
        ("put", "/api/v1/settings/{key}"),
        ("post", "/api/v1/policies"),
        ("post", "/api/v1/operators"),
        ("post", "/api/v1/tokens"),
        ("get", "/api/v1/audit"),
        ("post", "/api/v1/users"),
        ("post", "/api/v1/passkey-services"),
    ] {
        let (status, body) = send(&server, &help_desk, method, path);
        assert_eq!(status, 403, "help_desk: {method} {path}: {body}");
    }
    // …but may read users.
    let (status, _) = send(&server, &help_desk, "get", "/api/v1/users");
    assert_eq!(status, 200);
}

#[test]
fn a_revoked_token_is_refused() {
    let server = TestServer::start();
    let (s, v) = server.call(
        "POST",
        "/tokens",
        Some(serde_json::json!({"name": "temp", "role": "help_desk"})),
    );
    assert_eq!(s, 201);
    let token = v["token"].as_str().unwrap().to_string();
    let id = v["token_info"]["id"].as_str().unwrap().to_string();
    assert_eq!(server.call_as(&token, "GET", "/users", None).0, 200);
    assert_eq!(server.call("DELETE", &format!("/tokens/{id}"), None).0, 204);
    assert_eq!(server.call_as(&token, "GET", "/users", None).0, 401);
}

/// The tool people run on an OpenAPI document before generating a client
/// (openapi-spec-validator, from PyPI, installed by `.ci/deps` in its own
/// virtual environment) accepts the served document. It refused it before
/// every operation had its own operationId.
#[test]
fn the_openapi_document_passes_openapi_spec_validator() {
    let validator = std::env::var_os("KEYWARD_OPENAPI_VALIDATOR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME");
            std::path::Path::new(&home)
                .join(".cache/keyward-ci/openapi-venv/bin/openapi-spec-validator")
        });
    assert!(
        validator.is_file(),
        "{} is missing: run .ci/deps (it installs openapi-spec-validator in a virtual environment)",
        validator.display()
    );
    let server = TestServer::start();
    let doc = server
        .client()
        .get(server.api("/openapi.json"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let file = tempfile::NamedTempFile::with_suffix(".json").unwrap();
    std::fs::write(file.path(), doc).unwrap();
    let out = std::process::Command::new(&validator)
        .arg(file.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openapi-spec-validator: {text}");
    assert!(text.contains("OK"), "{text}");
}

/// What a caller gets from a route, as the RBAC table writes it: `-` the
/// route lets it through (any answer but 401, 403 and 404 to an empty
/// body), `N` 401, `F` 403, `X` 404 (a session's own route: to others
/// the session does not exist).
fn outcome(status: u16) -> char {
    match status {
        401 => 'N',
        403 => 'F',
        404 => 'X',
        _ => '-',
    }
}

/// Issue 15: every route × no credentials and every role, with the
/// expected answer in one table. A route missing from the table, or in the
/// table but not served, fails the test. Columns: none, administrator,
/// issuance_operator, help_desk, user (a token of the role; a person's own
/// routes need a linked account, which a token has not).
const RBAC: &[(&str, &str, &str)] = &[
    ("get", "/api/v1/agents", "N----"),
    ("post", "/api/v1/agents/approve", "N----"),
    ("get", "/api/v1/agents/devices", "N----"),
    ("get", "/api/v1/agents/me", "NNNNN"),
    ("put", "/api/v1/agents/me/devices", "NNNNN"),
    ("post", "/api/v1/agents/me/work", "NNNNN"),
    ("post", "/api/v1/agents/pair", "-----"),
    ("post", "/api/v1/agents/pair/poll", "-----"),
    ("post", "/api/v1/agents/{id}/revoke", "NXXXX"),
    ("get", "/api/v1/audit", "N-FFF"),
    ("get", "/api/v1/audit/verify", "N-FFF"),
    ("post", "/api/v1/auth/enroll", "-----"),
    ("post", "/api/v1/auth/password", "N----"),
    ("post", "/api/v1/auth/session", "-----"),
    ("delete", "/api/v1/auth/session", "N----"),
    ("get", "/api/v1/device-types", "N---F"),
    ("get", "/api/v1/devices", "N---F"),
    ("post", "/api/v1/devices", "N--FF"),
    ("post", "/api/v1/devices/import", "N--FF"),
    ("get", "/api/v1/devices/{serial}", "NXXXF"),
    ("post", "/api/v1/devices/{serial}/incident", "N-F-F"),
    ("get", "/api/v1/devices/{serial}/policies", "NXXXF"),
    ("post", "/api/v1/devices/{serial}/offline-unlock", "NXFXF"),
    ("post", "/api/v1/devices/{serial}/recycle", "NXXXF"),
    ("post", "/api/v1/devices/{serial}/restore", "N-F-F"),
    ("post", "/api/v1/devices/{serial}/resume", "N-F-F"),
    ("post", "/api/v1/devices/{serial}/state", "N-F-F"),
    ("post", "/api/v1/devices/{serial}/suspend", "N-F-F"),
    ("post", "/api/v1/devices/{serial}/terminate", "N-F-F"),
    ("post", "/api/v1/devices/{serial}/unlock", "NXFXF"),
    ("post", "/api/v1/devices/{serial}/unlock-requests", "NXFXF"),
    ("post", "/api/v1/devices/{serial}/update", "NXXXF"),
    ("get", "/api/v1/devices/{serial}/update-preview", "NXXXF"),
    ("get", "/api/v1/devices/{serial}/update-requests", "NXXXF"),
    ("post", "/api/v1/devices/{serial}/update-requests", "NXXXF"),
    (
        "delete",
        "/api/v1/devices/{serial}/update-requests",
        "NXXXF",
    ),
    ("post", "/api/v1/me/devices/{serial}/update", "NFFFF"),
    ("get", "/api/v1/update-requests", "N---F"),
    ("get", "/api/v1/requests", "N---F"),
    ("post", "/api/v1/requests", "N---F"),
    ("get", "/api/v1/requests/{id}", "NXXXF"),
    ("post", "/api/v1/requests/{id}/approve", "NXXXF"),
    ("post", "/api/v1/requests/{id}/cancel", "NXXXF"),
    ("post", "/api/v1/requests/{id}/deny", "NXXXF"),
    ("post", "/api/v1/requests/import", "N--FF"),
    ("get", "/api/v1/request-batches/{id}", "NXXXF"),
    ("post", "/api/v1/update-requests/scan", "N---F"),
    ("post", "/api/v1/issuance", "N---F"),
    ("get", "/api/v1/issuance/{id}", "NXXXX"),
    ("get", "/api/v1/issuance/{id}/batch", "NXXXX"),
    ("post", "/api/v1/issuance/{id}/cancel", "NXXFF"),
    ("post", "/api/v1/issuance/{id}/relay", "N--FF"),
    ("post", "/api/v1/issuance/{id}/retry", "NXXFF"),
    ("get", "/api/v1/jobs", "N---F"),
    ("post", "/api/v1/jobs/{id}/close", "NXFFF"),
    ("get", "/api/v1/me", "N----"),
    ("get", "/api/v1/me/devices", "NFFFF"),
    ("post", "/api/v1/me/devices/{serial}/change-pin", "NFFFF"),
    ("post", "/api/v1/me/devices/{serial}/initial-pin", "NFFFF"),
    ("post", "/api/v1/me/devices/{serial}/pin-check", "NFFF-"),
    ("post", "/api/v1/me/devices/{serial}/unlock", "NFFFF"),
    ("get", "/api/v1/operators", "N-FFF"),
    ("post", "/api/v1/operators", "N-FFF"),
    ("post", "/api/v1/operators/{login}/disable", "NXFFF"),
    ("post", "/api/v1/operators/{login}/enable", "NXFFF"),
    ("post", "/api/v1/operators/{login}/reset-password", "NXFFF"),
    ("put", "/api/v1/operators/{login}/role", "N-FFF"),
    ("post", "/api/v1/operators/{login}/sign-out", "NXFFF"),
    ("get", "/api/v1/passkey-services", "N--FF"),
    ("post", "/api/v1/passkey-services", "N-FFF"),
    ("get", "/api/v1/passkey-services/{name}", "NXXFF"),
    ("post", "/api/v1/passkey-services/{name}/test", "N-FFF"),
    ("get", "/api/v1/policies", "N---F"),
    ("post", "/api/v1/policies", "N-FFF"),
    ("get", "/api/v1/policies/{name}", "NXXXF"),
    ("put", "/api/v1/policies/{name}", "N-FFF"),
    ("delete", "/api/v1/policies/{name}", "NXFFF"),
    ("post", "/api/v1/policies/{name}/pin-check", "N---F"),
    ("get", "/api/v1/policies/{name}/pin-rules", "NXXXF"),
    ("get", "/api/v1/reports/bad-urls", "N---F"),
    ("get", "/api/v1/roles", "N-FFF"),
    ("get", "/api/v1/settings", "N---F"),
    ("put", "/api/v1/settings/{key}", "N-FFF"),
    ("get", "/api/v1/tokens", "N-FFF"),
    ("post", "/api/v1/tokens", "N-FFF"),
    ("delete", "/api/v1/tokens/{id}", "NXFFF"),
    ("get", "/api/v1/users", "N---F"),
    ("post", "/api/v1/users", "N-FFF"),
    ("post", "/api/v1/users/import", "N-FFF"),
    ("get", "/api/v1/users/{login}", "NXXXF"),
    ("patch", "/api/v1/users/{login}", "NXFFF"),
    ("post", "/api/v1/users/{login}/enrollment-code", "NXFFF"),
];

#[test]
fn the_rbac_table_covers_every_route_and_role() {
    let server = TestServer::start();
    let tokens = [
        String::new(),
        server.token.clone(),
        server.token_with_role("issuance_operator"),
        server.token_with_role("help_desk"),
        server.token_with_role("user"),
    ];
    let served = routes(&server);
    let mut got = Vec::new();
    for (method, path) in &served {
        let row: String = tokens
            .iter()
            .map(|t| outcome(send(&server, t, method, path).0))
            .collect();
        got.push((method.clone(), path.clone(), row));
    }
    if std::env::var_os("KEYWARD_PRINT_RBAC").is_some() {
        for (m, p, r) in &got {
            println!("    (\"{m}\", \"{p}\", \"{r}\"),");
        }
    }
    let mut problems = Vec::new();
    for (m, p, r) in &got {
        match RBAC.iter().find(|(tm, tp, _)| tm == m && tp == p) {
            None => problems.push(format!("{m} {p}: not in the table (answers {r})")),
            Some((_, _, want)) if want != r => {
                problems.push(format!("{m} {p}: expected {want}, got {r}"))
            }
            Some(_) => {}
        }
    }
    for (m, p, _) in RBAC {
        if !served.iter().any(|(sm, sp)| sm == m && sp == p) {
            problems.push(format!("{m} {p}: in the table, not served"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
