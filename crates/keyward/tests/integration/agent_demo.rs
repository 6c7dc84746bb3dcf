//! `keyward demo` runs a workstation agent in-process with two virtual
//! devices of fixed serials (yubikey5 10000001, c4000 20000001), already
//! paired to the demo operator and to alice, opening no PC/SC or HID device;
//! `keyward issue` issues one through it.

use crate::common::agent;
use crate::support;

use agent::wait_devices;
use support::{ServerOptions, TestServer};

#[test]
fn the_demo_agent_serves_its_virtual_devices_already_paired() {
    let server = TestServer::start_with(ServerOptions {
        subcommand: "demo",
        // No pcscd for the demo: its agent must not need one.
        extra_env: vec![(
            "PCSCLITE_CSOCK_NAME".into(),
            "/nonexistent/keyward-demo-pcscd.comm".into(),
        )],
        ..Default::default()
    });
    // The serials are printed after the URL line: wait for them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !(server.output().contains("yubikey5  serial 10000001")
        && server.output().contains("c4000     serial 20000001"))
    {
        assert!(std::time::Instant::now() < deadline, "{}", server.output());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let v = wait_devices(&server.url, &server.token, &["10000001", "20000001"], true);
    let mut owners: Vec<String> = v["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["owner"].as_str().unwrap().to_string())
        .collect();
    owners.sort();
    assert_eq!(owners, ["account:alice", "account:operator"], "{v}");
    for d in v["devices"].as_array().unwrap() {
        assert_eq!(d["transports"], serde_json::json!(["in_process"]));
        assert_eq!(d["state"], "available", "{d}");
    }

    let answers = tempfile::NamedTempFile::with_suffix(".toml").unwrap();
    std::fs::write(answers.path(), "pin = \"735194\"\n").unwrap();
    let out = std::process::Command::new(support::BIN)
        .args([
            "issue",
            "--server",
            &server.url,
            "--token",
            &server.token,
            "--json",
        ])
        .args([
            "--user",
            "alice",
            "--policy",
            "PIV Standard",
            "--serial",
            "20000001",
        ])
        .arg("--answers")
        .arg(answers.path())
        .env(
            "PCSCLITE_CSOCK_NAME",
            "/nonexistent/keyward-demo-pcscd.comm",
        )
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        out.status.success(),
        "{}{}\nserver:\n{}",
        support::stdout(&out),
        support::stderr(&out),
        server.output()
    );
    assert_eq!(report["state"], "issued", "{report}");
    let (_, d) = server.call("GET", "/devices/20000001", None);
    assert_eq!(d["state"], "issued");

    // The USB YubiKey takes its passkey's CTAP on its FIDO (HID) side.
    std::fs::write(
        answers.path(),
        "pin = \"735194\"\nfido_pin = \"864213\"\ntouch = \"true\"\n",
    )
    .unwrap();
    let out = demo_issue(
        &server,
        &[
            "--user",
            "alice",
            "--policy",
            "PIV + Passkey (unshared PIN)",
            "--serial",
            "10000001",
        ],
        answers.path(),
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        out.status.success(),
        "{}{}\nserver:\n{}",
        support::stdout(&out),
        support::stderr(&out),
        server.output()
    );
    assert_eq!(report["state"], "issued", "{report}");
    let (_, d) = server.call("GET", "/devices/10000001", None);
    assert_eq!(d["state"], "issued");
}

/// `keyward issue --json ARGS --answers FILE` against the demo, no pcscd.
fn demo_issue(
    server: &TestServer,
    args: &[&str],
    answers: &std::path::Path,
) -> std::process::Output {
    std::process::Command::new(support::BIN)
        .args([
            "issue",
            "--server",
            &server.url,
            "--token",
            &server.token,
            "--json",
        ])
        .args(args)
        .arg("--answers")
        .arg(answers)
        .env(
            "PCSCLITE_CSOCK_NAME",
            "/nonexistent/keyward-demo-pcscd.comm",
        )
        .output()
        .unwrap()
}
