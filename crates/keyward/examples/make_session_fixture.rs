//! Makes the fixture of `crates/keyward/tests/sealed_session_upgrade.rs`: a
//! data folder in which an issuance session, sealed by the release that ran
//! this, waits in the middle (Not Displayed with "Change PIN during
//! issuance": the keys are generated and certified, the person's new PIN is
//! still to come), and the state of the virtual YubiKey it runs on. Run once
//! per sealed-state format, with the release whose sessions must still
//! finish after an upgrade, and commit the result:
//!
//! ```text
//! cargo build -p keyward
//! cargo run -p keyward --example make_session_fixture -- \
//!     target/debug/keyward crates/keyward/tests/fixtures/session-v1
//! ```
//!
//! With `--issued` (the upgrade fixture of `tests/integration/upgrade.rs`,
//! `fixtures/release-2026-12-06`, made by release c2cb1fd): first two
//! devices issued to the end, a C4000 to bob and a YubiKey to alice (their
//! cards' states kept as `vcard-SERIAL.json`), then the session left in the
//! middle as above.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use keyward_transport::in_process::InProcessCard;
use keyward_vcard::{ProfileKind, VcardConfig, VcardHandle, VirtualCard};

// The agent's own batch runner (as examples/agent_relay_overhead.rs uses it).
#[path = "../src/agent/relay.rs"]
#[allow(dead_code)]
mod relay;
use serde_json::{json, Value};

const TOKEN: &str = "kw_fixture_bootstrap_token_0000000000000000";
const SERIAL: u32 = 31_000_900;
/// The devices `--issued` issues to the end.
const ISSUED_C4000: u32 = 41_000_901;
const ISSUED_YUBIKEY: u32 = 31_000_902;

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().collect();
    let issued = args.iter().any(|a| a == "--issued");
    args.retain(|a| a != "--issued");
    anyhow::ensure!(
        args.len() == 3,
        "usage: make_session_fixture [--issued] KEYWARD_BIN OUT_DIR"
    );
    let (bin, out) = (PathBuf::from(&args[1]), PathBuf::from(&args[2]));
    anyhow::ensure!(!out.exists(), "{} exists already", out.display());
    std::fs::create_dir_all(&out)?;
    let data = out.join("data");
    let mut server = Command::new(&bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("KEYWARD_BOOTSTRAP_TOKEN", TOKEN)
        .env_remove("KEYWARD_KEK")
        .env_remove("KEYWARD_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut url = String::new();
    for line in BufReader::new(server.stdout.take().expect("stdout")).lines() {
        if let Some(u) = line?.strip_prefix("keyward listening on ") {
            url = u.trim().to_string();
            break;
        }
    }
    anyhow::ensure!(!url.is_empty(), "the server did not start");
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let call = |method: reqwest::Method, path: &str, body: Value| -> anyhow::Result<Value> {
        let r = http
            .request(method, format!("{url}/api/v1{path}"))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()?;
        let status = r.status();
        let v: Value = r.json()?;
        anyhow::ensure!(status.is_success(), "{path}: {status} {v}");
        Ok(v)
    };
    use reqwest::Method;
    call(
        Method::POST,
        "/users",
        json!({ "login": "alice", "display_name": "Alice Archer", "upn": "alice@example.com", "email": "alice@example.com" }),
    )?;
    call(
        Method::POST,
        "/devices",
        json!({ "device_type": "yubikey5", "serial": SERIAL.to_string(), "firmware_version": "5.7.1" }),
    )?;
    call(
        Method::POST,
        "/policies",
        json!({
            "name": "PIV Standard", "device_types": ["yubikey5", "c4000"], "management_key": "random", "require_device_attestation": false,
            "pin_application": { "min_length": 6, "max_length": 8, "character_set": "numeric", "max_repeated": 2, "max_sequential": 2, "pin_retry_count": 3, "puk_retry_count": 3 },
            "pki_applications": [
                { "name": "PIV Authentication", "slot": "9a", "algorithm": "eccp256", "certificate_authority": "Keyward Issuing CA",
                  "template": { "subject_dn": "CN={display_name},UID={login}", "subject_alt_names": ["upn"], "validity_days": 365,
                                "key_usage": ["digital_signature"], "extended_key_usage": ["client_auth", "smartcard_logon"] } }
            ]
        }),
    )?;
    let ca = out.join("vcard-ca");
    if issued {
        call(
            Method::PUT,
            "/settings/initial_pin_display_mode",
            json!({ "value": "displayed" }),
        )?;
        call(
            Method::POST,
            "/users",
            json!({ "login": "bob", "display_name": "Bob Baker", "upn": "bob@example.com", "email": "bob@example.com" }),
        )?;
        for (profile, serial, firmware, user) in [
            (ProfileKind::C4000, ISSUED_C4000, "1.0.0", "bob"),
            (ProfileKind::Yubikey5, ISSUED_YUBIKEY, "5.7.1", "alice"),
        ] {
            let device_type = if profile == ProfileKind::C4000 {
                "c4000"
            } else {
                "yubikey5"
            };
            call(
                Method::POST,
                "/devices",
                json!({ "device_type": device_type, "serial": serial.to_string(), "firmware_version": firmware }),
            )?;
            let card = VcardHandle::new(VirtualCard::new(
                VcardConfig::new(profile)
                    .with_serial(serial)
                    .with_ca_dir(&ca),
            )?);
            let mut io = relay::CardIo::new(InProcessCard::new(card.clone(), "fixture"));
            let mut batch = call(
                Method::POST,
                "/issuance",
                json!({ "user": user, "policy": "PIV Standard", "serial": serial.to_string(), "pin": "735194" }),
            )?;
            let id = batch["session_id"].as_str().unwrap_or_default().to_string();
            while batch["state"] == "running" {
                let typed: keyward_proto::RelayBatch = serde_json::from_value(batch.clone())?;
                let run = relay::run_batch(&mut io, &typed);
                batch = call(
                    Method::POST,
                    &format!("/issuance/{id}/relay"),
                    serde_json::to_value(&run.result)?,
                )?;
            }
            anyhow::ensure!(batch["state"] == "issued", "{serial} not issued: {batch}");
            card.with_card(|c| c.save(&out.join(format!("vcard-{serial}.json"))))?;
        }
    }
    for (key, value) in [
        ("initial_pin_display_mode", "not_displayed"),
        ("change_pin_during_issuance", "yes"),
    ] {
        call(
            Method::PUT,
            &format!("/settings/{key}"),
            json!({ "value": value }),
        )?;
    }
    let card = VcardHandle::new(VirtualCard::new(
        VcardConfig::new(ProfileKind::Yubikey5)
            .with_serial(SERIAL)
            .with_ca_dir(&ca),
    )?);
    let mut io = relay::CardIo::new(InProcessCard::new(card.clone(), "fixture"));
    let mut batch = call(
        Method::POST,
        "/issuance",
        json!({ "user": "alice", "policy": "PIV Standard", "serial": SERIAL.to_string() }),
    )?;
    let id = batch["session_id"].as_str().unwrap_or_default().to_string();
    while !batch["commands"]
        .as_array()
        .map(Vec::is_empty)
        .unwrap_or(true)
    {
        let typed: keyward_proto::RelayBatch = serde_json::from_value(batch.clone())?;
        let run = relay::run_batch(&mut io, &typed);
        batch = call(
            Method::POST,
            &format!("/issuance/{id}/relay"),
            serde_json::to_value(&run.result)?,
        )?;
    }
    anyhow::ensure!(
        batch["prompts"][0]["kind"] == "set_new_pin",
        "expected to wait for the new PIN: {batch}"
    );
    card.with_card(|c| c.save(&out.join("vcard-state.json")))?;
    std::fs::write(
        out.join("session.json"),
        serde_json::to_vec_pretty(
            &json!({ "session_id": id, "serial": SERIAL.to_string(), "seq": batch["seq"] }),
        )?,
    )?;
    // Stopped as an operator would (SIGTERM); the folder is kept whole, the
    // write-ahead log included if SQLite left one.
    terminate(server.id());
    server.wait()?;
    println!("fixture written to {}", out.display());
    Ok(())
}

/// SIGTERM, as `kill` sends it.
fn terminate(pid: u32) {
    let _ = Command::new("kill").arg(pid.to_string()).status();
}
