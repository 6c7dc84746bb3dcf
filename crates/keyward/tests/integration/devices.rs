//! `keyward devices` and the device transports against virtual devices:
//! `keyward vcard` on pcscd's vpcd reader (Debian's vpcd gives two slots,
//! ports 35963 and 35964: one card each), its HID socket, and Debian's
//! `vicc` as a card that is not a PIV card.
//!
//! Needs: pcscd, vsmartcard-vpcd, vsmartcard-vpicc (vicc), iproute2 (ss).
//! A missing tool fails the test. The tests hold the shared cross-process
//! PC/SC lock while they use the vpcd slots.

use crate::common::pcsc as shared;
use crate::support;

use keyward_transport::apdu::{self, BatchStop};
use keyward_transport::card::piv;
use keyward_transport::ctap::{get_info, CtapOverIso};
use keyward_transport::ctaphid::CtaphidDevice;
use keyward_transport::discover::{discover, DiscoveryOptions};
use keyward_transport::hid::HidSocketDevice;
use keyward_transport::pcsc::Pcsc;
use keyward_transport::TransportError;
use serde_json::Value;
use shared::Vcard;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SLOT0: &str = "127.0.0.1:35963";
const SLOT1: &str = "127.0.0.1:35964";

fn keyward_devices(extra: &[&str]) -> (Vec<Value>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .arg("devices")
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("run keyward devices");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "keyward devices {extra:?} failed: {stdout}{stderr}"
    );
    if extra.contains(&"--json") {
        let v: Value =
            serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
        (v.as_array().expect("a JSON array").clone(), stderr)
    } else {
        (Vec::new(), stdout)
    }
}

/// Polls `keyward devices --json` until `n` devices are listed (pcscd
/// reports a new card within a second or so).
fn wait_for_devices(n: usize, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    let start = Instant::now();
    loop {
        let (devices, _) = keyward_devices(&args);
        if devices.len() >= n || start.elapsed() > Duration::from_secs(20) {
            return devices;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn by_serial<'a>(devices: &'a [Value], serial: &str) -> &'a Value {
    devices
        .iter()
        .find(|d| d["serial"] == serial)
        .unwrap_or_else(|| panic!("no device with serial {serial} in {devices:#?}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn devices_lists_a_c4000_and_a_usb_yubikey_seen_through_reader_and_hid_socket() {
    let _lock = shared::lock();
    let c4000 = Vcard::spawn(&[
        "--profile",
        "c4000",
        "--serial",
        "20000001",
        "--vpcd",
        SLOT0,
    ]);
    let yubikey = Vcard::spawn(&[
        "--profile",
        "yubikey5",
        "--firmware",
        "5.4.3",
        "--serial",
        "10000002",
        "--transport",
        "usb",
        "--vpcd",
        SLOT1,
        "--hid-socket",
        "{dir}/hid",
    ]);
    let hid = yubikey.path("hid");
    let hid = hid.to_str().unwrap();

    let devices = wait_for_devices(2, &["--hid-socket", hid]);
    assert_eq!(devices.len(), 2, "one entry per device: {devices:#?}");

    let c = by_serial(&devices, "20000001");
    assert_eq!(c["device_type"], "c4000");
    assert_eq!(c["firmware"], "1.0.0");
    assert_eq!(strings(&c["applets"]), ["piv", "fido"]);
    assert_eq!(strings(&c["transports"]), ["pcsc"]);
    assert_eq!(c["supported"], true);
    assert_eq!(c["reason"], Value::Null);
    assert_eq!(c["state"], Value::Null);
    assert!(c["reader"].as_str().unwrap().contains("Virtual PCD"), "{c}");

    // The USB YubiKey: PIV through its reader, FIDO only through CTAPHID.
    let y = by_serial(&devices, "10000002");
    assert_eq!(y["device_type"], "yubikey5");
    assert_eq!(y["firmware"], "5.4.3");
    assert_eq!(strings(&y["applets"]), ["piv", "fido"]);
    assert_eq!(strings(&y["transports"]), ["pcsc", "hid"]);
    assert_eq!(y["supported"], true);
    assert_ne!(y["reader"], c["reader"]);

    // Without its HID socket the same YubiKey shows PIV only.
    let (devices, _) = keyward_devices(&["--json"]);
    let y = by_serial(&devices, "10000002");
    assert_eq!(strings(&y["applets"]), ["piv"]);
    assert_eq!(strings(&y["transports"]), ["pcsc"]);

    // The table for people.
    let (_, table) = keyward_devices(&["--hid-socket", hid]);
    assert!(table.starts_with("READER"), "{table}");
    for needle in [
        "c4000", "20000001", "yubikey5", "10000002", "5.4.3", "pcsc,hid",
    ] {
        assert!(table.contains(needle), "{needle} missing in:\n{table}");
    }

    // A HID socket that is not there is a warning, not an error.
    let (devices, stderr) = keyward_devices(&["--json", "--hid-socket", "/nonexistent/hid"]);
    assert_eq!(devices.len(), 2);
    assert!(stderr.contains("/nonexistent/hid"), "{stderr}");

    // CTAP over ISO 7816 through PC/SC reaches the C4000's authenticator.
    let reader = c["reader"].as_str().unwrap();
    let pcsc = Pcsc::establish().unwrap();
    let mut fido = CtapOverIso::new(pcsc.connect(reader).unwrap());
    let info = get_info(&mut fido).unwrap();
    assert_eq!(info.firmware_version, Some(0x010000));
    drop(c4000);
}

/// `vicc` (vsmartcard-vpicc) from Debian: its Python package is installed
/// one folder too deep and imports the removed `sha` module without
/// PyCrypto, so it runs with both put right on PYTHONPATH.
struct Vicc {
    child: Child,
    _shim: tempfile::TempDir,
}

impl Vicc {
    fn spawn(card_type: &str, port: &str) -> Vicc {
        shared::require_tool("vicc");
        let pkg = Path::new("/usr/lib/python3/site-packages/virtualsmartcard");
        assert!(
            pkg.join("virtualsmartcard").is_dir()
                || Path::new("/usr/lib/python3/dist-packages/virtualsmartcard").is_dir(),
            "python3-virtualsmartcard missing: apt-get install vsmartcard-vpicc"
        );
        let shim = tempfile::tempdir().unwrap();
        std::fs::write(
            shim.path().join("sha.py"),
            "import hashlib\ndigest_size = 20\n\ndef new(data=b\"\"):\n    return hashlib.sha1(data)\n",
        )
        .unwrap();
        let pythonpath = format!("{}:{}", pkg.display(), shim.path().display());
        let child = Command::new("/usr/bin/python3")
            .arg("/usr/bin/vicc")
            .args(["-t", card_type, "-H", "127.0.0.1", "-P", port])
            .env("PYTHONPATH", pythonpath)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start vicc");
        Vicc { child, _shim: shim }
    }
}

impl Drop for Vicc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_card_without_piv_is_listed_as_unsupported_with_the_reason() {
    let _lock = shared::lock();
    let _yubikey = Vcard::spawn(&[
        "--profile",
        "yubikey5",
        "--serial",
        "10000009",
        "--vpcd",
        SLOT0,
    ]);
    let _vicc = Vicc::spawn("iso7816", &SLOT1[SLOT1.rfind(':').unwrap() + 1..]);

    let devices = wait_for_devices(2, &[]);
    assert_eq!(devices.len(), 2, "{devices:#?}");
    let other = devices
        .iter()
        .find(|d| d["serial"] != "10000009")
        .expect("the vicc card");
    assert_eq!(other["device_type"], "unsupported");
    assert_eq!(other["supported"], false);
    assert_eq!(other["serial"], Value::Null);
    assert_eq!(strings(&other["transports"]), ["pcsc"]);
    let reason = other["reason"].as_str().expect("a reason");
    assert!(reason.contains("no PIV application"), "{reason}");
    // The supported device next to it is unaffected.
    assert_eq!(by_serial(&devices, "10000009")["device_type"], "yubikey5");
}

/// The reader of the card with `serial`, found by discovery.
fn reader_of(serial: u32) -> String {
    let start = Instant::now();
    loop {
        let found = discover(&DiscoveryOptions {
            hidraw: false,
            ..Default::default()
        });
        if let Some(d) = found
            .devices
            .iter()
            .find(|d| d.identity.serial == Some(serial))
        {
            return d.reader.clone().expect("a PC/SC reader");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no card with serial {serial}: {found:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_card_removed_mid_batch_gives_device_removed_and_works_after_insert() {
    let _lock = shared::lock();
    let card = Vcard::spawn(&[
        "--profile",
        "c4000",
        "--serial",
        "20000003",
        "--vpcd",
        SLOT0,
    ]);
    let reader = reader_of(20_000_003);
    let pcsc = Pcsc::establish().unwrap();
    let mut t = pcsc.connect(&reader).unwrap();

    let mut batch = vec![piv::select_piv()];
    batch.extend(std::iter::repeat_n(
        piv::get_data(piv::object::DISCOVERY),
        40,
    ));

    let complete = apdu::transmit_batch(&mut t, &batch, |_, r| r.is_success());
    assert_eq!(complete.stop, None);
    assert_eq!(complete.responses.len(), batch.len());

    // The card leaves the reader after the 20th command of the batch.
    let removed = apdu::transmit_batch(&mut t, &batch, |i, r| {
        if i == 20 {
            assert_eq!(card.control("remove"), "ok");
            // Wait until pcscd has seen the card go, so the next command
            // meets an empty reader rather than racing the removal.
            let start = Instant::now();
            while pcsc
                .readers()
                .unwrap()
                .iter()
                .any(|x| x.name == reader && x.card_present)
            {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "pcscd still sees the card"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        r.is_success()
    });
    assert_eq!(removed.responses.len(), 21);
    assert!(removed.responses.iter().all(|r| r.is_success()));
    assert_eq!(
        removed.stop,
        Some(BatchStop::Transport {
            index: 21,
            error: TransportError::DeviceRemoved
        })
    );
    // The transport stays disconnected: nothing is sent to whatever card comes next.
    assert_eq!(
        apdu::transmit(&mut t, &piv::select_piv()).unwrap_err(),
        TransportError::DeviceRemoved
    );
    assert!(!t.is_connected());
    assert_eq!(
        t.reconnect(Duration::from_millis(300)).unwrap_err().code(),
        "timeout"
    );

    assert_eq!(card.control("insert"), "ok");
    t.reconnect(Duration::from_secs(20))
        .expect("reconnect after insert");
    let again = apdu::transmit_batch(&mut t, &batch, |_, r| r.is_success());
    assert_eq!(again.stop, None, "{:?}", again.responses.last());
    assert_eq!(again.responses.len(), batch.len());
}

#[test]
fn ctaphid_over_the_hid_socket_and_unplug() {
    // No PC/SC here: the card is not attached to vpcd.
    let card = Vcard::spawn(&[
        "--profile",
        "yubikey5",
        "--firmware",
        "5.7.1",
        "--vpcd",
        "none",
        "--hid-socket",
        "{dir}/hid",
    ]);
    let path = card.path("hid");
    let mut dev = CtaphidDevice::open(HidSocketDevice::open(&path).unwrap()).unwrap();
    assert_eq!(dev.info().version, (5, 7, 1));
    assert_eq!(dev.ping(&[0x5A; 300]).unwrap(), vec![0x5A; 300]);
    let info = get_info(&mut dev).unwrap();
    assert_eq!(info.firmware_version, Some(0x050701));
    assert!(info.versions.contains(&"FIDO_2_1".to_string()));

    assert_eq!(card.control("remove"), "ok");
    assert_eq!(
        get_info(&mut dev).unwrap_err(),
        TransportError::DeviceRemoved
    );
    assert_eq!(card.control("insert"), "ok");
    // Plugged in again: a new open and a new channel.
    let start = Instant::now();
    let mut dev = loop {
        match HidSocketDevice::open(&path).and_then(CtaphidDevice::open) {
            Ok(d) => break d,
            Err(e) => {
                assert!(start.elapsed() < Duration::from_secs(10), "{e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    assert!(get_info(&mut dev).is_ok());
}

#[test]
fn devices_with_a_server_adds_the_inventory_state() {
    let server = support::TestServer::start();
    let (status, body) = server.call(
        "POST",
        "/devices",
        Some(serde_json::json!({ "device_type": "c4000", "serial": "20000005", "firmware_version": "1.0.0" })),
    );
    assert_eq!(status, 201, "{body}");
    let (_, registered) = server.call("GET", "/devices/20000005", None);
    let state = registered["state"].as_str().expect("a state").to_string();

    let _lock = shared::lock();
    let _c4000 = Vcard::spawn(&[
        "--profile",
        "c4000",
        "--serial",
        "20000005",
        "--vpcd",
        SLOT0,
    ]);
    let _yubikey = Vcard::spawn(&[
        "--profile",
        "yubikey5",
        "--serial",
        "10000005",
        "--vpcd",
        SLOT1,
    ]);
    wait_for_devices(2, &[]);
    let (devices, _) =
        keyward_devices(&["--json", "--server", &server.url, "--token", &server.token]);
    assert_eq!(devices.len(), 2, "{devices:#?}");
    assert_eq!(by_serial(&devices, "20000005")["state"], state.as_str());
    // Not in the inventory: null.
    assert_eq!(by_serial(&devices, "10000005")["state"], Value::Null);

    let (_, table) = keyward_devices(&["--server", &server.url, "--token", &server.token]);
    assert!(
        table.contains("STATE") && table.contains("not in inventory"),
        "{table}"
    );

    // A refused token is an error, not a listing without states.
    let out = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args([
            "devices",
            "--json",
            "--server",
            &server.url,
            "--token",
            "kw_wrong",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn transactions_and_exclusive_access_keep_other_programs_out() {
    let _lock = shared::lock();
    let _card = Vcard::spawn(&[
        "--profile",
        "c4000",
        "--serial",
        "20000007",
        "--vpcd",
        SLOT0,
    ]);
    let reader = reader_of(20_000_007);
    let pcsc = Pcsc::establish().unwrap();
    let mut ours = pcsc.connect(&reader).unwrap();
    // Another program: its own PC/SC context and connection.
    let mut other = Pcsc::establish().unwrap().connect(&reader).unwrap();

    // pcscd holds the other program's command until the transaction ends.
    let batch = vec![piv::select_piv(), piv::get_data(piv::object::DISCOVERY)];
    let (outcome, other_done, ended) = ours
        .with_transaction(|t| {
            let outcome = apdu::transmit_batch(t, &batch, |_, r| r.is_success());
            let other_thread = std::thread::spawn(move || {
                let r = apdu::transmit(&mut other, &piv::select_piv());
                (r, Instant::now())
            });
            std::thread::sleep(Duration::from_millis(500));
            let more = apdu::transmit_batch(t, &batch, |_, r| r.is_success());
            assert_eq!(more.stop, None);
            (outcome, other_thread, Instant::now())
        })
        .unwrap();
    assert_eq!(outcome.stop, None);
    let (other_result, other_at) = other_done.join().unwrap();
    assert!(other_result.unwrap().is_success());
    assert!(
        other_at >= ended,
        "the other program got in during the transaction"
    );

    // Exclusive access: another connection is a typed sharing violation,
    // and `keyward devices` lists the device as in use, not as an error.
    drop(ours);
    let exclusive = pcsc.connect_exclusive(&reader).unwrap();
    let refused = Pcsc::establish().unwrap().connect(&reader).err();
    assert_eq!(refused, Some(TransportError::SharingViolation));
    let (devices, _) = keyward_devices(&["--json"]);
    let busy = devices
        .iter()
        .find(|d| d["reader"] == reader.as_str())
        .expect("the busy card is listed");
    assert_eq!(busy["supported"], false);
    assert!(
        busy["reason"]
            .as_str()
            .unwrap()
            .contains("in use by another program"),
        "{busy}"
    );
    drop(exclusive);
    let (devices, _) = keyward_devices(&["--json"]);
    assert_eq!(by_serial(&devices, "20000007")["device_type"], "c4000");
}
