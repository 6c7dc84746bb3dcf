//! Third-party verification of the virtual FIDO authenticator: python-fido2
//! (Debian's python3-fido2 0.9.1) drives `keyward vcard` over its virtual
//! HID socket (yubikey5 `--transport usb`) and over PC/SC through pcscd's
//! vpcd (c4000, yubikey5 `--transport nfc`).
//!
//! The checks themselves are in tests/python/fido_check.py. A missing tool
//! (python3-fido2, python3-pyscard, pcscd, vpcd) fails the test loudly.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::pcsc;

use pcsc::Vcard;

const PYTHON: &str = "/usr/bin/python3";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/fido_check.py")
}

/// Fails loudly when python-fido2 is not installed.
fn require_python_fido2() {
    let out = Command::new(PYTHON)
        .args([
            "-c",
            "import fido2, fido2.hid, fido2.ctap2; print(fido2.__version__)",
        ])
        .output()
        .unwrap_or_else(|e| panic!("{PYTHON} missing ({e}); install python3-fido2"));
    assert!(
        out.status.success(),
        "python-fido2 missing: apt-get install python3-fido2 python3-pyscard\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run_check(args: &[&str]) {
    let out = Command::new(PYTHON)
        .arg(script())
        .args(args)
        .output()
        .expect("run fido_check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("ALL CHECKS PASSED"),
        "python-fido2 check failed:\n{stdout}\n{stderr}"
    );
}

fn hid_device(firmware: &str, presence: &str) -> Vcard {
    Vcard::spawn(&[
        "--profile",
        "yubikey5",
        "--firmware",
        firmware,
        "--transport",
        "usb",
        "--vpcd",
        "none",
        "--presence",
        presence,
        "--hid-socket",
        "{dir}/hid.sock",
    ])
}

#[test]
fn python_fido2_over_hid_socket_yubikey5_5_4_3() {
    require_python_fido2();
    let v = hid_device("5.4.3", "auto");
    let hid = v.path("hid.sock");
    let ca = v.ca_cert_file();
    run_check(&[
        "--hid-socket",
        hid.to_str().unwrap(),
        "--version",
        "FIDO_2_1_PRE",
        "--absent-version",
        "FIDO_2_1",
        "--absent-version",
        "U2F_V2",
        "--ca-pem",
        ca.to_str().unwrap(),
    ]);
}

#[test]
fn python_fido2_over_hid_socket_yubikey5_5_7_1() {
    require_python_fido2();
    let v = hid_device("5.7.1", "auto");
    let hid = v.path("hid.sock");
    let ca = v.ca_cert_file();
    run_check(&[
        "--hid-socket",
        hid.to_str().unwrap(),
        "--version",
        "FIDO_2_1",
        "--absent-version",
        "FIDO_2_1_PRE",
        "--ca-pem",
        ca.to_str().unwrap(),
    ]);
}

/// Manual presence over HID: python-fido2 sees KEEPALIVE while waiting;
/// `touch` confirms, `decline` gives OPERATION_DENIED, `remove` closes the
/// socket.
#[test]
fn manual_presence_touch_decline_and_remove_over_hid() {
    require_python_fido2();
    let v = hid_device("5.7.1", "manual");
    let hid = v.path("hid.sock");
    let code = r#"
import sys, time, threading
sys.path.insert(0, sys.argv[2])
from fido_check import SocketHidConnection
from fido2.hid import CtapHidDevice
from fido2.hid.base import HidDescriptor
from fido2.ctap import CtapError
from fido2.ctap2 import Ctap2
dev = CtapHidDevice(HidDescriptor(sys.argv[1], 0x1050, 0x0407, 64, 64), SocketHidConnection(sys.argv[1]))
ctap = Ctap2(dev)
seen = []
print("waiting", flush=True)
ctap.selection(on_keepalive=seen.append)
print("selected keepalives=%d" % len(seen), flush=True)
try:
    ctap.selection()
    print("declined: no error")
except CtapError as e:
    print("declined: %s" % e.code.name, flush=True)
print("waiting again", flush=True)
try:
    ctap.selection()
    print("removed: no error", flush=True)
except CtapError as e:
    print("removed: %s" % e.code.name, flush=True)
except Exception as e:
    print("removed: closed", flush=True)
"#;
    let mut child = Command::new(PYTHON)
        .args(["-c", code, hid.to_str().unwrap()])
        .arg(script().parent().unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "waiting");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(v.control("touch"), "ok");
    line.clear();
    out.read_line(&mut line).unwrap();
    let n: usize = line
        .trim()
        .strip_prefix("selected keepalives=")
        .expect(&line)
        .parse()
        .unwrap();
    // python-fido2 reports a keep-alive status only when it changes.
    assert!(n >= 1, "KEEPALIVE(UPNEEDED) while waiting: {n}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(v.control("decline"), "ok");
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "declined: OPERATION_DENIED");
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "waiting again");
    std::thread::sleep(Duration::from_millis(2500));
    // Pulled out while waiting for a touch: the wait ends at once.
    let started = std::time::Instant::now();
    assert_eq!(v.control("remove"), "ok");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "remove waited for the touch timeout"
    );
    line.clear();
    out.read_line(&mut line).unwrap();
    // A device pulled out answers nothing (not CTAP2_ERR_KEEPALIVE_CANCEL,
    // which a client would read as a cancel): the socket just closes.
    assert_eq!(line.trim(), "removed: closed");
    assert!(child.wait().unwrap().success());

    std::thread::sleep(Duration::from_millis(300));
    assert!(
        UnixStream::connect(&hid).is_err(),
        "HID socket closed on remove"
    );
}

/// python-fido2 over PC/SC (`fido2.pcsc.CtapPcscDevice`) through pcscd's
/// vpcd reader.
fn pcsc_check(profile_args: &[&str], check_args: &[&str]) {
    require_python_fido2();
    let out = Command::new(PYTHON)
        .args(["-c", "import smartcard.System"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pyscard missing: apt-get install python3-pyscard"
    );
    let _lock = pcsc::lock();
    let mut args = vec!["--vpcd", "127.0.0.1:35963"];
    args.extend_from_slice(profile_args);
    let v = Vcard::spawn(&args);
    let ca = v.ca_cert_file();
    let mut full = vec![
        "--reader",
        "Virtual PCD 00 00",
        "--ca-pem",
        ca.to_str().unwrap(),
    ];
    full.extend_from_slice(check_args);
    run_check(&full);
}

#[test]
fn python_fido2_over_pcsc_c4000() {
    pcsc_check(
        &["--profile", "c4000"],
        &["--version", "FIDO_2_1", "--absent-version", "U2F_V2"],
    );
}

#[test]
fn python_fido2_over_pcsc_yubikey5_nfc_5_4_3() {
    pcsc_check(
        &[
            "--profile",
            "yubikey5",
            "--firmware",
            "5.4.3",
            "--transport",
            "nfc",
        ],
        &[
            "--version",
            "FIDO_2_1_PRE",
            "--absent-version",
            "FIDO_2_1",
            "--absent-version",
            "U2F_V2",
        ],
    );
}

#[test]
fn python_fido2_over_pcsc_yubikey5_nfc_5_7_1() {
    pcsc_check(
        &[
            "--profile",
            "yubikey5",
            "--firmware",
            "5.7.1",
            "--transport",
            "nfc",
        ],
        &["--version", "FIDO_2_1", "--absent-version", "FIDO_2_1_PRE"],
    );
}

/// `--state FILE`: PIN and a discoverable credential survive a restart.
#[test]
fn fido_state_persists_across_restart() {
    require_python_fido2();
    let args = [
        "--profile",
        "yubikey5",
        "--firmware",
        "5.7.1",
        "--vpcd",
        "none",
        "--hid-socket",
        "{dir}/hid.sock",
        "--state",
        "{dir}/state.json",
    ];
    let persist = script().with_file_name("fido_persist.py");
    let phase = |v: &Vcard, phase: &str| {
        let out = Command::new(PYTHON)
            .arg(&persist)
            .arg(phase)
            .arg(v.path("hid.sock"))
            .arg(v.path("credential.json"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{phase}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let v = Vcard::spawn(&args);
    phase(&v, "make");
    let dir = v.stop();
    let v = Vcard::spawn_in(dir, &args);
    phase(&v, "assert");
}

/// Recycling a FIDO device: reset is refused 10 s after power-up and
/// accepted right after a power cycle (control `power-cycle`), clearing the PIN.
#[test]
fn reset_window_reopens_after_power_cycle() {
    require_python_fido2();
    let v = hid_device("5.4.3", "auto");
    let hid = v.path("hid.sock");
    let code = r#"
import sys, time
sys.path.insert(0, sys.argv[2])
from fido_check import SocketHidConnection
from fido2.hid import CtapHidDevice
from fido2.hid.base import HidDescriptor
from fido2.ctap import CtapError
from fido2.ctap2 import Ctap2
from fido2.ctap2.pin import ClientPin
dev = CtapHidDevice(HidDescriptor(sys.argv[1], 0x1050, 0x0407, 64, 64), SocketHidConnection(sys.argv[1]))
ctap = Ctap2(dev)
ClientPin(ctap).set_pin("271828")
time.sleep(10.5)
try:
    ctap.reset()
    print("late reset accepted", flush=True)
except CtapError as e:
    print("late reset: %s" % e.code.name, flush=True)
sys.stdin.readline()
ctap.reset()
print("reset ok, clientPin=%s" % ctap.get_info().options["clientPin"], flush=True)
"#;
    let mut child = Command::new(PYTHON)
        .args(["-c", code, hid.to_str().unwrap()])
        .arg(script().parent().unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "late reset: NOT_ALLOWED");
    assert_eq!(v.control("power-cycle"), "ok");
    use std::io::Write as _;
    writeln!(child.stdin.as_mut().unwrap()).unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "reset ok, clientPin=False");
    assert!(child.wait().unwrap().success());
}
