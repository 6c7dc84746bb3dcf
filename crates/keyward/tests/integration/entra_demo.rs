//! `keyward demo` with passkeys: it seeds "PIV + Passkey (shared PIN)" and
//! "PIV + Passkey (unshared PIN)" against its simulated tenant (an
//! in-process Entra ID stand-in), and `keyward issue` registers a passkey
//! there through the demo's workstation agent.

use crate::common::agent;
use crate::support;

use agent::wait_devices;
use serde_json::json;
use support::{ServerOptions, TestServer};

#[test]
fn the_demo_registers_a_passkey_with_its_simulated_tenant() {
    let server = TestServer::start_with(ServerOptions {
        subcommand: "demo",
        extra_env: vec![(
            "PCSCLITE_CSOCK_NAME".into(),
            "/nonexistent/keyward-demo-pcscd.comm".into(),
        )],
        ..Default::default()
    });
    // The banner names the simulated tenant (printed once the demo is up).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !server.output().contains("the simulated tenant") && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = server.output();
    assert!(out.contains("the simulated tenant"), "{out}");
    for name in ["PIV + Passkey (shared PIN)", "PIV + Passkey (unshared PIN)"] {
        let (s, v) = server.call(
            "GET",
            &format!("/policies/{}", name.replace(' ', "%20")),
            None,
        );
        assert_eq!(s, 200, "{name}: {v}");
        assert_eq!(v["fido_application"]["cred_protect"], 1, "{v}");
        assert_eq!(
            v["fido_application"]["passkey_service_name"],
            "simulated tenant"
        );
    }
    let (s, v) = server.call(
        "GET",
        "/policies/PIV%20%2B%20Passkey%20(unshared%20PIN)",
        None,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["device_types"], json!(["c4000", "yubikey5"]));
    wait_devices(&server.url, &server.token, &["10000001", "20000001"], true);

    let answers = tempfile::NamedTempFile::with_suffix(".toml").unwrap();
    std::fs::write(answers.path(), "pin = \"735194\"\ntouch = \"true\"\n").unwrap();
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
            "PIV + Passkey (shared PIN)",
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
    assert_eq!(
        report["state"],
        "issued",
        "{}{}\nserver:\n{}",
        support::stdout(&out),
        support::stderr(&out),
        server.output()
    );
    let passkeys: Vec<_> = report["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "passkey")
        .collect();
    assert_eq!(passkeys.len(), 1, "{report}");
    // The simulated tenant lists it (Test connection counts alice's passkeys).
    let (_, user) = server.call("GET", "/users/alice", None);
    let upn = user["upn"].as_str().unwrap().to_string();
    let (s, v) = server.call(
        "POST",
        "/passkey-services/simulated%20tenant/test",
        Some(json!({ "user": upn })),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["verdict"], "ok", "{v}");
    assert_eq!(v["fido2_methods"], 1, "{v}");
}
