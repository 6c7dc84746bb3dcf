//! Issue 19, part 1: `keyward backup` of a running SQLite server under load
//! and `keyward restore` into a new data folder: a server started there has
//! every record, the audit trail verifies, and its CRL numbers stay above
//! the ones published before.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::support;
use serde_json::json;
use support::{ServerOptions, TestServer};

const PASSPHRASE: &str = "correct horse battery staple 42";

fn keyward(args: &[&str], passphrase: Option<&str>) -> std::process::Output {
    let mut cmd = std::process::Command::new(support::BIN);
    cmd.args(args).stdin(std::process::Stdio::null());
    match passphrase {
        Some(p) => cmd.env("KEYWARD_BACKUP_PASSPHRASE", p),
        None => cmd.env_remove("KEYWARD_BACKUP_PASSPHRASE"),
    };
    cmd.env_remove("KEYWARD_KEK").output().unwrap()
}

fn crl_number(server: &TestServer) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let crl = server
        .client()
        .get(format!("{}/pki/crl/issuing.crl", server.url))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    std::fs::write(dir.path().join("c.crl"), &crl).unwrap();
    let (ok, text) = support::openssl(
        dir.path(),
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            "c.crl",
            "-noout",
            "-crlnumber",
        ],
    );
    assert!(ok, "{text}");
    let hex = text
        .trim()
        .trim_start_matches("crlNumber=")
        .trim_start_matches("0x");
    u64::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("{text}"))
}

#[test]
fn a_backup_under_load_restores_into_a_server_with_every_record() {
    let server = TestServer::start();
    support::seed_piv_standard(&server, "31000901");
    let data = server.data_path();
    let before = crl_number(&server);

    // Load: users created while the backup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let created = Arc::new(AtomicUsize::new(0));
    let load = {
        let (url, token, stop, created) = (
            server.api("/users"),
            server.token.clone(),
            stop.clone(),
            created.clone(),
        );
        std::thread::spawn(move || {
            let http = reqwest::blocking::Client::new();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let r = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({ "login": format!("load{n}"), "display_name": format!("Load {n}") }))
                    .send()
                    .unwrap();
                assert_eq!(r.status().as_u16(), 201);
                created.store(n, Ordering::SeqCst);
            }
        })
    };
    while created.load(Ordering::SeqCst) < 5 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out_dir = tempfile::tempdir().unwrap();
    let file = out_dir.path().join("keyward.backup");
    let file_s = file.to_str().unwrap();
    let data_s = data.to_str().unwrap();
    let at_start = created.load(Ordering::SeqCst);
    let out = keyward(
        &["backup", "--data-dir", data_s, "--out", file_s],
        Some(PASSPHRASE),
    );
    assert!(out.status.success(), "{}", support::stderr(&out));
    stop.store(true, Ordering::SeqCst);
    load.join().unwrap();
    // Without a passphrase and no terminal: refused, named.
    let again = out_dir.path().join("again.backup");
    let out = keyward(
        &[
            "backup",
            "--data-dir",
            data_s,
            "--out",
            again.to_str().unwrap(),
        ],
        None,
    );
    assert!(!out.status.success());
    assert!(
        support::stderr(&out).contains("KEYWARD_BACKUP_PASSPHRASE"),
        "{}",
        support::stderr(&out)
    );
    // The file is private and encrypted (age): no record in clear.
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.starts_with(b"age-encryption.org/v1"));
    assert!(!support::contains(&bytes, b"alice@example.com"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    // Restore: refused with a wrong passphrase or into a folder in use.
    let target = tempfile::tempdir().unwrap();
    let restored = target.path().join("data");
    let restored_s = restored.to_str().unwrap();
    let out = keyward(
        &["restore", file_s, "--data-dir", restored_s],
        Some("not the passphrase at all"),
    );
    assert!(!out.status.success());
    assert!(
        support::stderr(&out).contains("passphrase"),
        "{}",
        support::stderr(&out)
    );
    let out = keyward(&["restore", file_s, "--data-dir", data_s], Some(PASSPHRASE));
    assert!(
        support::stderr(&out).contains("not empty"),
        "{}",
        support::stderr(&out)
    );
    let out = keyward(
        &["restore", file_s, "--data-dir", restored_s],
        Some(PASSPHRASE),
    );
    assert!(out.status.success(), "{}", support::stderr(&out));
    let said = support::stdout(&out);
    assert!(
        said.contains("revocations") && said.contains("WARNING"),
        "{said}"
    );

    // A server on the restored folder has the records of the backup's moment.
    let kek = std::fs::read_to_string(data.join("kek")).unwrap();
    drop(server);
    let holder = tempfile::tempdir().unwrap();
    std::fs::remove_dir(holder.path()).unwrap();
    std::fs::rename(&restored, holder.path()).unwrap();
    assert_eq!(
        std::fs::read_to_string(holder.path().join("kek")).unwrap(),
        kek
    );
    let server = TestServer::start_with(ServerOptions {
        data_dir: Some(holder),
        ..Default::default()
    });
    let (s, alice) = server.call("GET", "/users/alice", None);
    assert_eq!(
        (s, alice["upn"].as_str()),
        (200, Some("alice@example.com")),
        "{alice}"
    );
    for n in 1..=at_start {
        let (s, v) = server.call("GET", &format!("/users/load{n}"), None);
        assert_eq!(s, 200, "load{n}: {v}");
    }
    let (s, d) = server.call("GET", "/devices/31000901", None);
    assert_eq!(s, 200, "{d}");
    let (_, settings) = server.call("GET", "/settings", None);
    assert_eq!(settings["initial_pin_display_mode"], "displayed");
    let out = server.admin(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}{}",
        support::stdout(&out),
        support::stderr(&out)
    );
    assert!(crl_number(&server) > before, "CRL numbers never go back");
}

/// The PostgreSQL procedure of docs/operations.md, once: `pg_dump -Fc`, a new
/// database, `pg_restore`, a server on it with the same KEK; every record
/// there and the audit trail verifies.
#[test]
fn the_postgresql_procedure_dump_restore_and_verify() {
    let Some(url) = support::postgres_database("backup_src") else {
        return;
    };
    // One KEK for both servers (as `KEYWARD_KEK` on a PostgreSQL node).
    let kek = (
        "KEYWARD_KEK".to_string(),
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".to_string(),
    );
    let server = TestServer::start_with(ServerOptions {
        database_url: Some(url.clone()),
        extra_env: vec![kek.clone()],
        ..Default::default()
    });
    support::seed_piv_standard(&server, "31000902");
    drop(server);
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("keyward.dump");
    let out = std::process::Command::new("pg_dump")
        .args(["--format=custom", "--no-owner", "--file"])
        .arg(&dump)
        .arg(&url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", support::stderr(&out));
    let target = support::postgres_database("backup_dst").unwrap();
    let out = std::process::Command::new("pg_restore")
        .args(["--no-owner", "--dbname", &target])
        .arg(&dump)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", support::stderr(&out));
    let server = TestServer::start_with(ServerOptions {
        database_url: Some(target),
        extra_env: vec![kek],
        ..Default::default()
    });
    let (s, alice) = server.call("GET", "/users/alice", None);
    assert_eq!(s, 200, "{alice}");
    let (s, d) = server.call("GET", "/devices/31000902", None);
    assert_eq!(s, 200, "{d}");
    let out = server.admin(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}{}",
        support::stdout(&out),
        support::stderr(&out)
    );
}
