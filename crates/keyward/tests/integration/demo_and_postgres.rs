//! `keyward demo` seeds its data and the admin CLI works against it; the
//! server runs on a real PostgreSQL server as well as on SQLite.

use crate::support;

use support::{stdout, ServerOptions, TestServer};

#[test]
fn demo_prints_sign_ins_and_seeds_users_policies_and_settings() {
    let mut server = TestServer::start_with(ServerOptions {
        subcommand: "demo",
        ..Default::default()
    });
    // Wait for the sign-in lines (printed right after the URL line).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !server.output().contains("Stop with Ctrl-C") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = server.output();
    assert!(out.contains("DEMO-ONLY"), "{out}");
    assert!(out.contains("alice / demo-alice-only"), "{out}");
    assert!(out.contains("operator / demo-operator-only"), "{out}");
    // The server's own first administrator is explained (issue 19).
    assert!(
        out.contains("The 'admin' account above is the server's own first administrator"),
        "{out}"
    );

    let users = stdout(&server.admin(&["--json", "user", "list"]));
    let v: serde_json::Value = serde_json::from_str(&users).unwrap();
    let logins: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["login"].as_str().unwrap())
        .collect();
    assert_eq!(logins, vec!["alice", "bob", "carol"]);
    assert_eq!(v["items"][0]["upn"], "alice@example.com");

    let policy = stdout(&server.admin(&["--json", "policy", "show", "PIV Standard"]));
    let p: serde_json::Value = serde_json::from_str(&policy).unwrap();
    assert_eq!(
        p["device_types"],
        serde_json::json!(["c4000", "yubikey5", "piv"])
    );
    assert_eq!(p["pin_application"]["pin_retry_count"], 3);
    assert_eq!(p["pki_applications"][0]["slot"], "9a");
    assert_eq!(p["pki_applications"][1]["slot"], "9c");

    let settings: serde_json::Value =
        serde_json::from_str(&stdout(&server.admin(&["--json", "settings", "show"]))).unwrap();
    assert_eq!(settings["initial_pin_display_mode"], "displayed");
    assert_eq!(settings["change_pin_during_issuance"], false);
    assert_eq!(settings["auto_import_unknown_devices"], true);

    // The demo operator can sign in.
    let resp = server
        .client()
        .post(server.api("/auth/session"))
        .json(&serde_json::json!({ "login": "operator", "password": "demo-operator-only" }))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    // Issue 19: `PUT /settings/{key}` takes what `GET /settings` returns.
    let put = |key: &str, value: serde_json::Value| {
        server.call(
            "PUT",
            &format!("/settings/{key}"),
            Some(serde_json::json!({ "value": value })),
        )
    };
    let (s, v) = put(
        "change_pin_during_issuance",
        settings["change_pin_during_issuance"].clone(),
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = put("unlock_request_minutes", serde_json::json!(15));
    assert_eq!(
        (s, v["unlock_request_minutes"].as_u64()),
        (200, Some(15)),
        "{v}"
    );
    let (s, v) = put("unlock_request_minutes", serde_json::json!([15]));
    assert_eq!(s, 400, "{v}");

    // Issue 19: SIGTERM stops the demo at once, an open long-poll of the
    // devices list included (it held the graceful stop for 10 s).
    let (_, devices) = server.call("GET", "/agents/devices", None);
    let since = devices["version"].as_u64().unwrap();
    let url = server.api(&format!("/agents/devices?since={since}&wait=25"));
    let token = server.token.clone();
    let poll = std::thread::spawn(move || {
        reqwest::blocking::Client::builder()
            .timeout(std::time::Duration::from_secs(40))
            .build()
            .unwrap()
            .get(url)
            .bearer_auth(token)
            .send()
            .map(|r| r.status().as_u16())
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let asked = std::time::Instant::now();
    server.stop();
    let stopped = asked.elapsed();
    assert!(
        stopped < std::time::Duration::from_secs(5),
        "the demo took {stopped:?} to stop"
    );
    let _ = poll.join();
}

#[test]
fn the_server_runs_on_postgresql() {
    let Some(db) = support::postgres_database("kw_e2e") else {
        return;
    };
    let server = TestServer::start_with(ServerOptions {
        database_url: Some(db.clone()),
        ..Default::default()
    });
    let (s, v) = server.call(
        "POST",
        "/users",
        Some(serde_json::json!({ "login": "pg-user", "display_name": "On Postgres" })),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = server.call("GET", "/users?prefix=pg", None);
    assert_eq!(s, 200);
    assert_eq!(v["items"][0]["login"], "pg-user");
    let out = server.admin(&["audit", "verify"]);
    assert!(out.status.success(), "{}", stdout(&out));
    // No SQLite file was made: the store is the PostgreSQL database.
    assert!(!server.data_path().join("keyward.db").exists());
    // And the password in the URL never reaches the output.
    if let Some(pw) = db
        .split("://")
        .nth(1)
        .and_then(|r| r.split('@').next())
        .and_then(|c| c.split(':').nth(1))
    {
        assert!(!server.output().contains(&format!(":{pw}@")));
    }
}
