//! The admin CLI against a running server: users, operators, devices,
//! policies, settings, Passkey-Enabled Services, tokens and the audit trail,
//! including tamper detection.

use crate::support;

use std::process::Command;

use support::{stderr, stdout, TestServer};

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        stdout(out),
        stderr(out)
    );
    stdout(out)
}

#[test]
fn users_devices_policies_settings_and_tokens_through_the_cli() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();

    ok(&server.admin(&[
        "user",
        "add",
        "alice",
        "--display-name",
        "Alice Archer",
        "--upn",
        "alice@example.com",
        "--attr",
        "objectSid=S-1-5-21-7",
    ]));
    let csv = dir.path().join("users.csv");
    std::fs::write(&csv, "login,upn,display_name,email\nbob,bob@example.com,Bob Baker,bob@example.com\ncarol,carol@example.com,Carol Chen,\n").unwrap();
    let out = ok(&server.admin(&["user", "import", csv.to_str().unwrap()]));
    assert!(out.contains("imported 2"), "{out}");
    let out = ok(&server.admin(&["user", "list", "--prefix", "b"]));
    assert!(
        out.contains("LOGIN") && out.contains("bob") && !out.contains("carol"),
        "{out}"
    );
    let out = ok(&server.admin(&["--json", "user", "show", "alice"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["attributes"]["objectSid"], "S-1-5-21-7");

    // A bad import names the row and writes nothing.
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "login,display_name\ndave,Dave\nno way,Bad\n").unwrap();
    let out = server.admin(&["user", "import", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("row 2"), "{}", stderr(&out));
    assert!(!server.admin(&["user", "show", "dave"]).status.success());

    let out = ok(&server.admin(&["operator", "add", "olga", "--role", "help_desk"]));
    assert!(out.contains("one-time password: "), "{out}");
    let out = ok(&server.admin(&["operator", "list"]));
    assert!(out.contains("olga") && out.contains("help_desk"), "{out}");

    let devices = dir.path().join("devices.csv");
    std::fs::write(
        &devices,
        "device_type,serial,firmware_version\nyubikey5,10000001,5.7.1\nc4000,20000001,\n",
    )
    .unwrap();
    ok(&server.admin(&["device", "import", devices.to_str().unwrap()]));
    let out = ok(&server.admin(&["device", "list", "--device-type", "c4000"]));
    assert!(
        out.contains("20000001") && !out.contains("10000001"),
        "{out}"
    );
    let out = ok(&server.admin(&["device", "show", "10000001"]));
    assert!(out.contains("available"), "{out}");

    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        r#"
[[policy]]
name = "CLI Policy"
description = "from a TOML file"
device_types = ["yubikey5", "c4000"]
[policy.pin_application]
min_length = 6
max_length = 8
character_set = "numeric"
max_repeated = 2
pin_retry_count = 3
puk_retry_count = 3
"#,
    )
    .unwrap();
    let out = ok(&server.admin(&["policy", "import", policy.to_str().unwrap()]));
    assert!(out.contains("created policy 'CLI Policy'"), "{out}");
    let out = ok(&server.admin(&["policy", "import", policy.to_str().unwrap()]));
    assert!(out.contains("replaced policy 'CLI Policy'"), "{out}");
    let out = ok(&server.admin(&["policy", "list"]));
    assert!(out.contains("CLI Policy"), "{out}");

    ok(&server.admin(&["settings", "set", "initial_pin_display_mode", "disguised"]));
    ok(&server.admin(&["settings", "set", "change_pin_during_issuance", "no"]));
    let out = ok(&server.admin(&["--json", "settings", "show"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["initial_pin_display_mode"], "disguised");
    assert_eq!(v["change_pin_during_issuance"], false);
    let out = server.admin(&["settings", "set", "who_can_bind", "everyone"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("who_can_bind"), "{}", stderr(&out));

    let secret = "passkey-client-secret-canary-7391";
    let out = server.admin_stdin(
        &[
            "passkey-service",
            "add",
            "--name",
            "Contoso",
            "--tenant-id",
            "contoso.onmicrosoft.com",
            "--client-id",
            "11111111-2222-3333-4444-555555555555",
            "--client-secret-stdin",
            "--authority-url",
            "http://127.0.0.1:9",
            "--graph-url",
            "http://127.0.0.1:9",
        ],
        Some(secret),
    );
    let shown = ok(&out);
    assert!(!shown.contains(secret));
    let out = ok(&server.admin(&["passkey-service", "list"]));
    assert!(out.contains("Contoso"), "{out}");
    // Plain http is refused for a non-loopback host.
    let out = server.admin_stdin(
        &[
            "passkey-service",
            "add",
            "--name",
            "Bad",
            "--tenant-id",
            "contoso.onmicrosoft.com",
            "--client-id",
            "11111111-2222-3333-4444-555555555555",
            "--client-secret-stdin",
            "--graph-url",
            "http://graph.example.com",
        ],
        Some("x"),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("graph_url"), "{}", stderr(&out));
    // Test connection against a closed port: a clear verdict, exit 1.
    let out = server.admin(&[
        "passkey-service",
        "test",
        "Contoso",
        "--user",
        "alice@example.com",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("token_failed"), "{}", stdout(&out));

    let out = ok(&server.admin(&[
        "token",
        "create",
        "--role",
        "issuance_operator",
        "--name",
        "automation",
    ]));
    let token = out.trim().to_string();
    assert!(token.starts_with("kw_"), "{token}");
    let out = Command::new(support::BIN)
        .args([
            "admin",
            "--server",
            &server.url,
            "--token",
            &token,
            "user",
            "list",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = Command::new(support::BIN)
        .args([
            "admin",
            "--server",
            &server.url,
            "--token",
            &token,
            "settings",
            "set",
            "who_can_bind",
            "user",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("403"), "{}", stderr(&out));

    let out = ok(&server.admin(&["audit", "verify"]));
    assert!(out.contains("audit trail intact"), "{out}");
    // The client secret and the API tokens are nowhere in the data folder (the
    // SQLite file with its -wal), and the secret is in no output.
    let data = support::read_tree(&server.data_path());
    assert!(
        support::contains(&data, b"Contoso"),
        "the search must find what is stored in clear"
    );
    assert!(!support::contains(&data, secret.as_bytes()));
    assert!(!server.output().contains(secret));
    assert!(!support::contains(&data, token.as_bytes()));
    assert!(!support::contains(&data, server.token.as_bytes()));
}

fn sqlite(db: &std::path::Path, sql: &str) {
    let script = format!(
        "import sqlite3,sys\nc=sqlite3.connect(sys.argv[1], timeout=30)\nc.executescript(sys.argv[2])\nc.commit()\n"
    );
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .arg(db)
        .arg(sql)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn audit_verify_detects_changed_and_truncated_records() {
    let server = TestServer::start();
    for login in ["u1", "u2", "u3", "u4"] {
        ok(&server.admin(&["user", "add", login, "--display-name", login]));
    }
    let out = ok(&server.admin(&["audit", "verify"]));
    assert!(out.contains("intact"), "{out}");
    let db = server.data_path().join("keyward.db");

    // An attacker drops the append-only triggers and edits a record.
    sqlite(
        &db,
        "DROP TRIGGER IF EXISTS audit_log_no_update; DROP TRIGGER IF EXISTS audit_log_no_delete; \
                 CREATE TABLE saved AS SELECT target FROM audit_log WHERE seq = 3; \
                 UPDATE audit_log SET target = 'user:mallory' WHERE seq = 3;",
    );
    let out = server.admin(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("3"), "{}", stdout(&out));
    sqlite(
        &db,
        "UPDATE audit_log SET target = (SELECT target FROM saved) WHERE seq = 3; DROP TABLE saved;",
    );
    let restored = server.admin(&["--json", "audit", "verify"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&restored)).unwrap();
    // Restoring the exact text restores the MAC.
    assert_eq!(v["ok"], true, "{v}");

    // Removing the newest record is caught by the head row.
    sqlite(
        &db,
        "DELETE FROM audit_log WHERE seq = (SELECT MAX(seq) FROM audit_log);",
    );
    let out = server.admin(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).to_lowercase().contains("truncat")
            || stdout(&out).to_lowercase().contains("missing"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn print_config_redacts_secrets() {
    let out = Command::new(support::BIN)
        .args([
            "serve",
            "--print-config",
            "--database-url",
            "postgres://kw:hunter2secret@db.internal/kw",
        ])
        .env(
            "KEYWARD_KEK",
            "c2VjcmV0LWtlay12YWx1ZS1mb3ItdGVzdHMtMDEyMzQ1Njc=",
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("listen = \"127.0.0.1:8080\""), "{text}");
    assert!(text.contains("data_dir = \"./keyward-data\""), "{text}");
    assert!(!text.contains("hunter2secret"), "{text}");
    assert!(
        !text.contains("c2VjcmV0LWtlay12YWx1ZS1mb3ItdGVzdHMtMDEyMzQ1Njc="),
        "{text}"
    );
    assert!(text.contains("<redacted>"));
}

/// The policy example in docs/cli.md imports as it is.
#[test]
fn the_policy_example_in_the_docs_imports() {
    let server = TestServer::start();
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/cli.md")).unwrap();
    let start = doc
        .find("```toml\n[[policy]]")
        .expect("policy example in docs/cli.md")
        + "```toml\n".len();
    let end = start + doc[start..].find("```").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("example.toml");
    std::fs::write(&file, &doc[start..end]).unwrap();
    let out = ok(&server.admin(&["policy", "import", file.to_str().unwrap()]));
    assert!(out.contains("created policy 'PIV Standard'"), "{out}");
    let shown: serde_json::Value = serde_json::from_str(&ok(&server.admin(&[
        "--json",
        "policy",
        "show",
        "PIV Standard",
    ])))
    .unwrap();
    assert_eq!(
        shown["pki_applications"][0]["template"]["extended_key_usage"],
        serde_json::json!(["client_auth", "smartcard_logon"])
    );
}

/// `keyward issue --action assign` binds a device without touching it.
#[test]
fn keyward_issue_action_assign() {
    let server = TestServer::start();
    support::seed_piv_standard(&server, "31000080");
    let run = |args: &[&str]| {
        Command::new(support::BIN)
            .arg("issue")
            .args(["--server", &server.url, "--token", &server.token])
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&[
        "--action",
        "assign",
        "--user",
        "alice",
        "--policy",
        "PIV Standard",
        "--serial",
        "31000080",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["state"], "assigned");
    let (_, d) = server.call("GET", "/devices/31000080", None);
    assert_eq!(d["state"], "assigned");
    // Again: refused before any device is touched (exit 3).
    let out = run(&[
        "--action",
        "assign",
        "--user",
        "alice",
        "--policy",
        "PIV Standard",
        "--serial",
        "31000080",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("device_assigned"), "{}", stderr(&out));
}

/// Certificates carry the server's address: listening on anything but
/// loopback needs `public_url` (issue 13), and `serve` says so at once.
#[test]
fn serve_on_a_non_loopback_address_needs_a_public_url() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(support::BIN)
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(data.path())
        .env_remove("KEYWARD_PUBLIC_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("public_url") && err.contains("0.0.0.0"),
        "{err}"
    );
    let out = Command::new(support::BIN)
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--public-url",
            "https://cms.example.com",
            "--print-config",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("public_url = \"https://cms.example.com\""));
}
