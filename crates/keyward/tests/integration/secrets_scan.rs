//! No secret in clear anywhere: a unique PIN is planted in an issuance, and
//! the PUK and the per-device management key the server chose are taken from
//! the device commands the client relays (where they must be); then the SQLite
//! file with its -wal, a pg_dump of the PostgreSQL store, and all the server's
//! output are searched for each as ASCII or raw bytes, hex and base64. A
//! planted canary that is stored in clear on purpose must be found, which
//! proves the search itself works.

use crate::support;

use keyward_vcard::{ProfileKind, VcardConfig, VirtualCard};
use serde_json::{json, Value};
use support::{ServerOptions, TestServer};

const PIN: &str = "58203917";
const CANARY: &str = "Canary Zebra Quux";

fn forms(secret: &str) -> Vec<Vec<u8>> {
    use base64::Engine;
    vec![
        secret.as_bytes().to_vec(),
        hex::encode(secret).into_bytes(),
        hex::encode_upper(secret).into_bytes(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(secret)
            .into_bytes(),
        base64::engine::general_purpose::STANDARD
            .encode(secret)
            .into_bytes(),
    ]
}

/// The secrets of one issuance, as the device received them.
#[derive(Default)]
struct Planted {
    puk: Option<Vec<u8>>,
    management_key: Option<Vec<u8>>,
}

impl Planted {
    /// Learns the new PUK (CHANGE REFERENCE DATA for the PUK: old || new,
    /// each padded with FF to 8 bytes) and the new management key (YubiKey
    /// SET MANAGEMENT KEY: algorithm, 9B, length, key) from a command APDU.
    fn learn(&mut self, apdu: &[u8]) {
        if apdu.len() < 5 {
            return;
        }
        let data = &apdu[5..];
        match (apdu[1], apdu[2], apdu[3]) {
            (0x24, 0x00, 0x81) if data.len() == 16 => {
                let new: Vec<u8> = data[8..].iter().copied().filter(|b| *b != 0xFF).collect();
                self.puk = Some(new);
            }
            (0xFF, 0xFF, 0xFF | 0xFE) if data.len() > 3 && data[1] == 0x9B => {
                let len = data[2] as usize;
                self.management_key = Some(data[3..3 + len].to_vec());
            }
            _ => {}
        }
    }
}

fn relay_learning(card: &mut VirtualCard, batch: &Value, planted: &mut Planted) -> Vec<Value> {
    let mut out = Vec::new();
    for c in batch["commands"].as_array().unwrap() {
        let apdu = hex::decode(c["bytes"].as_str().unwrap()).unwrap();
        planted.learn(&apdu);
        let mut resp = card.transmit(&apdu);
        let mut data = resp[..resp.len() - 2].to_vec();
        while resp[resp.len() - 2] == 0x61 {
            resp = card.transmit(&[0x00, 0xC0, 0x00, 0x00, resp[resp.len() - 1]]);
            data.extend_from_slice(&resp[..resp.len() - 2]);
        }
        let sw = format!("{:02x}{:02x}", resp[resp.len() - 2], resp[resp.len() - 1]);
        let stop = !c["expect"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == &json!(sw));
        out.push(json!({ "data": hex::encode(&data), "sw": sw }));
        if stop {
            break;
        }
    }
    out
}

fn issue(server: &TestServer, serial: u32) -> Planted {
    support::seed_piv_standard(server, &serial.to_string());
    let (s, v) = server.call(
        "PATCH",
        "/users/alice",
        Some(json!({ "display_name": CANARY })),
    );
    assert_eq!(s, 200, "{v}");
    let ca = tempfile::tempdir().unwrap();
    let mut card = VirtualCard::new(
        VcardConfig::new(ProfileKind::Yubikey5)
            .with_serial(serial)
            .with_ca_dir(ca.path()),
    )
    .unwrap();
    card.power_on();
    let (s, mut batch) = server.call("POST", "/issuance", Some(json!({ "user": "alice", "policy": "PIV Standard", "serial": serial.to_string(), "pin": PIN })));
    assert_eq!(s, 201, "{batch}");
    let id = batch["session_id"].as_str().unwrap().to_string();
    let mut planted = Planted::default();
    while batch["state"] == "running" {
        let responses = relay_learning(&mut card, &batch, &mut planted);
        let (s, next) = server.call("POST", &format!("/issuance/{id}/relay"), Some(json!({ "protocol": 1, "session_id": id, "seq": batch["seq"], "responses": responses })));
        assert_eq!(s, 200, "{next}");
        batch = next;
    }
    assert_eq!(batch["state"], "issued");
    assert!(planted.puk.is_some(), "the issuance set no PUK");
    assert!(
        planted.management_key.is_some(),
        "the issuance set no management key"
    );
    planted
}

/// Every form a secret could be written in.
fn secret_forms(planted: &Planted) -> Vec<(String, Vec<u8>)> {
    use base64::Engine;
    let mut out: Vec<(String, Vec<u8>)> = forms(PIN)
        .into_iter()
        .map(|f| ("the PIN".to_string(), f))
        .collect();
    for (name, raw) in [
        ("the PUK", planted.puk.clone().unwrap()),
        (
            "the management key",
            planted.management_key.clone().unwrap(),
        ),
    ] {
        for form in [
            raw.clone(),
            hex::encode(&raw).into_bytes(),
            hex::encode_upper(&raw).into_bytes(),
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(&raw)
                .into_bytes(),
            base64::engine::general_purpose::STANDARD
                .encode(&raw)
                .into_bytes(),
        ] {
            out.push((name.to_string(), form));
        }
    }
    out
}

fn assert_clean(what: &str, haystack: &[u8], planted: &Planted) {
    assert!(
        support::contains(haystack, CANARY.as_bytes()),
        "{what}: the canary must be found, or the search proves nothing"
    );
    for (name, form) in secret_forms(planted) {
        assert!(
            !support::contains(haystack, &form),
            "{what}: {name} appears as {:?}",
            String::from_utf8_lossy(&form)
        );
    }
}

#[test]
fn no_pin_in_the_sqlite_files_or_the_output() {
    let server = TestServer::start();
    let planted = issue(&server, 31000050);
    // The -wal file is part of the data folder and read with it.
    let files = support::read_tree(&server.data_path());
    assert!(std::fs::read_dir(server.data_path()).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with("-wal")));
    assert_clean("SQLite files", &files, &planted);
    let out = server.output();
    for (name, form) in secret_forms(&planted) {
        assert!(
            !support::contains(out.as_bytes(), &form),
            "server output shows {name}"
        );
    }
}

#[test]
fn no_pin_in_a_pg_dump() {
    let Some(db) = support::postgres_database("kw_secrets") else {
        return;
    };
    let server = TestServer::start_with(ServerOptions {
        database_url: Some(db.clone()),
        ..Default::default()
    });
    let planted = issue(&server, 31000051);
    let dump = std::process::Command::new("pg_dump")
        .arg(&db)
        .output()
        .expect("pg_dump (postgresql-client)");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    assert_clean("pg_dump", &dump.stdout, &planted);
}
