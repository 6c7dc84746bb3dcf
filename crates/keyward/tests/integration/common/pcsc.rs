//! Shared support for tests that put a `keyward vcard` on pcscd's vpcd
//! reader and drive it with third-party PC/SC tools.
//!
//! A module of the one integration test binary: `use crate::common::pcsc;`.
//! * [`lock`]: a cross-process lock (flock on /tmp/keyward-pcsc.lock): one
//!   vpcd slot, so one test at a time may own it, whatever the test binary.
//! * [`ensure_pcscd`]: starts `pcscd -f -a` with a vpcd reader.conf when no
//!   pcscd runs, and waits for the vpcd port 35963.
//! * [`require_tool`]: a missing tool fails the test loudly (never a skip).
//! * [`Vcard`]: a spawned `keyward vcard` (its own CA, state and control
//!   socket in a temporary folder), waited for until it prints `ready`,
//!   killed on drop.

#![allow(dead_code)]

use serde_json::{json, Value};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const VPCD_PORT: u16 = 35963;
pub const LOCK_FILE: &str = "/tmp/keyward-pcsc.lock";
pub const OPENSC_PKCS11: &str = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so";

/// Held while a test owns the vpcd slot; released on drop.
pub struct PcscLock {
    _file: File,
}

/// Take the cross-process PC/SC lock (blocks while another test holds it),
/// and make sure pcscd with the vpcd reader runs.
pub fn lock() -> PcscLock {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_FILE)
        .expect("open the PC/SC lock file");
    file.lock().expect("lock the PC/SC lock file");
    ensure_pcscd();
    PcscLock { _file: file }
}

/// A tool must be installed; fail loudly otherwise.
pub fn require_tool(name: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "required tool `{name}` is not installed: apt-get install pcscd vsmartcard-vpcd opensc \
         yubico-piv-tool pcsc-tools openssl"
    );
}

/// Whether something listens on the vpcd port. Checked with `ss` rather
/// than by connecting: a connection would look like a card to vpcd.
fn vpcd_listening() -> bool {
    Command::new("ss")
        .args(["-ltnH"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.contains(&format!(":{VPCD_PORT} ")))
        })
        .unwrap_or(false)
}

/// Start pcscd with the vpcd reader unless it already runs.
pub fn ensure_pcscd() {
    require_tool("pcscd");
    require_tool("ss");
    assert!(
        Path::new("/usr/lib/pcsc/drivers/serial/libifdvpcd.so").exists(),
        "vpcd driver missing: apt-get install vsmartcard-vpcd"
    );
    if vpcd_listening() {
        return;
    }
    let dir = PathBuf::from("/tmp/keyward-pcscd");
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("reader.conf");
    std::fs::write(
        &conf,
        "FRIENDLYNAME \"Virtual PCD\"\nDEVICENAME /dev/null:0x8C7B\n\
         LIBPATH /usr/lib/pcsc/drivers/serial/libifdvpcd.so\nCHANNELID 0x8C7B\n",
    )
    .unwrap();
    std::fs::create_dir_all("/run/pcscd").ok();
    let log = File::create(dir.join("pcscd.log")).unwrap();
    Command::new("pcscd")
        .args(["-f", "-a", "-c"])
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start pcscd");
    let start = Instant::now();
    while !vpcd_listening() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "pcscd did not open the vpcd port {VPCD_PORT}; see /tmp/keyward-pcscd/pcscd.log"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Run a command; returns its output (not checked).
pub fn run(program: &str, args: &[&str]) -> Output {
    require_tool(program);
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"))
}

/// Run a command that must succeed; returns stdout + stderr as text.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{text}",
        out.status
    );
    text
}

/// A running `keyward vcard`, killed on drop.
pub struct Vcard {
    child: Child,
    pub dir: tempfile::TempDir,
}

impl Vcard {
    /// Spawn `keyward vcard --ca-dir {dir}/ca --control {dir}/control
    /// <extra>` and wait for `ready`. `{dir}` in `extra` is replaced by the
    /// device's temporary folder. Hold a [`lock`] while it runs.
    pub fn spawn(extra: &[&str]) -> Vcard {
        let dir = tempfile::tempdir().unwrap();
        Self::spawn_in(dir, extra)
    }

    /// Like [`Vcard::spawn`] in a given folder (a restart keeping `--state`).
    pub fn spawn_in(dir: tempfile::TempDir, extra: &[&str]) -> Vcard {
        let root = dir.path().to_str().unwrap().to_string();
        let extra: Vec<String> = extra.iter().map(|a| a.replace("{dir}", &root)).collect();
        let mut child = Command::new(env!("CARGO_BIN_EXE_keyward"))
            .arg("vcard")
            .arg("--ca-dir")
            .arg(dir.path().join("ca"))
            .arg("--control")
            .arg(dir.path().join("control"))
            .args(&extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn keyward vcard");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.trim() == "ready" {
                    let _ = tx.send(());
                }
            }
        });
        let mut vcard = Vcard { child, dir };
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let status = vcard.child.try_wait();
            panic!("keyward vcard did not print `ready` ({status:?})");
        }
        vcard
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The root certificate of this card's virtual manufacturer CA (PEM file).
    pub fn ca_cert_file(&self) -> PathBuf {
        let out = Command::new(env!("CARGO_BIN_EXE_keyward"))
            .args(["vcard", "ca-cert", "--ca-dir"])
            .arg(self.dir.path().join("ca"))
            .output()
            .expect("keyward vcard ca-cert");
        assert!(out.status.success(), "keyward vcard ca-cert failed");
        let path = self.path("ca-root.pem");
        std::fs::write(&path, &out.stdout).unwrap();
        path
    }

    /// Send one control command (`touch`, `remove`, ...); returns the answer line.
    pub fn control(&self, command: &str) -> String {
        let mut s = UnixStream::connect(self.path("control")).expect("control socket");
        writeln!(s, "{command}").unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        line.trim().to_string()
    }

    /// Stop the process (the card leaves the reader) and give back its folder.
    pub fn stop(mut self) -> tempfile::TempDir {
        self.kill();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Let pcscd notice the card left before the next one attaches.
        std::thread::sleep(Duration::from_millis(300));
    }
}

impl Drop for Vcard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `pkcs11-tool --login --pin PIN --list-objects` through OpenSC's PIV
/// driver (not checked: a refused PIN is an answer too).
pub fn pkcs11_login(pin: &str) -> Output {
    run(
        "pkcs11-tool",
        &[
            "--module",
            OPENSC_PKCS11,
            "--login",
            "--pin",
            pin,
            "--list-objects",
        ],
    )
}

/// pkcs11-tool signs with the PIV Authentication key (id 01) and `pin`;
/// openssl verifies the signature with the certificate read from the card.
/// Files go to `dir`; returns the certificate (PEM) for further checks.
pub fn pkcs11_signs_and_openssl_verifies(dir: &Path, pin: &str) -> PathBuf {
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    std::fs::write(dir.join("data.bin"), b"signed by a device Keyward issued").unwrap();
    run_ok(
        "pkcs11-tool",
        &[
            "--module",
            OPENSC_PKCS11,
            "--login",
            "--pin",
            pin,
            "--sign",
            "--id",
            "01",
            "--mechanism",
            "ECDSA-SHA256",
            "--signature-format",
            "openssl",
            "-i",
            &path("data.bin"),
            "-o",
            &path("data.sig"),
        ],
    );
    run_ok(
        "pkcs11-tool",
        &[
            "--module",
            OPENSC_PKCS11,
            "--read-object",
            "--type",
            "cert",
            "--id",
            "01",
            "-o",
            &path("cert.der"),
        ],
    );
    run_ok(
        "openssl",
        &[
            "x509",
            "-inform",
            "DER",
            "-in",
            &path("cert.der"),
            "-out",
            &path("cert.pem"),
        ],
    );
    run_ok(
        "openssl",
        &[
            "x509",
            "-in",
            &path("cert.pem"),
            "-noout",
            "-pubkey",
            "-out",
            &path("pub.pem"),
        ],
    );
    let verified = run_ok(
        "openssl",
        &[
            "dgst",
            "-sha256",
            "-verify",
            &path("pub.pem"),
            "-signature",
            &path("data.sig"),
            &path("data.bin"),
        ],
    );
    assert!(verified.contains("Verified OK"), "{verified}");
    dir.join("cert.pem")
}

/// Relays batches of session `id` over PC/SC from `batch` on: whole batches
/// while `cut_at` is not reached; at batch number `cut_at` (1-based, counted
/// from `batch`) only the first `cut` commands, then a removed device.
/// Prompt batches are answered from `answers`. Returns the last answer.
pub fn relay_pcsc(
    server: &crate::support::TestServer,
    id: &str,
    mut batch: Value,
    answers: &[(&str, &str)],
    cut_at: Option<(usize, usize)>,
) -> Value {
    let ctx = keyward_transport::pcsc::Pcsc::establish().unwrap();
    let reader = ctx
        .readers()
        .unwrap()
        .into_iter()
        .find(|r| r.card_present)
        .expect("a reader with the card")
        .name;
    let mut card = ctx.connect(&reader).unwrap();
    let mut n = 0;
    while batch["state"] == "running" {
        let commands = batch["commands"].as_array().unwrap().clone();
        let mut result =
            json!({ "protocol": 1, "session_id": id, "seq": batch["seq"], "responses": [] });
        if commands.is_empty() {
            let mut given = serde_json::Map::new();
            for p in batch["prompts"].as_array().unwrap() {
                let kind = p["kind"].as_str().unwrap();
                let v = answers.iter().find(|(k, _)| *k == kind).expect(kind).1;
                given.insert(kind.into(), json!(v));
            }
            result["answers"] = Value::Object(given);
        } else {
            n += 1;
            let limit = match cut_at {
                Some((at, cut)) if at == n => cut,
                _ => commands.len(),
            };
            let mut responses = vec![];
            for c in &commands[..limit] {
                let apdu = hex::decode(c["bytes"].as_str().unwrap()).unwrap();
                let r = keyward_transport::apdu::transmit_one(&mut card, &apdu).unwrap();
                let sw = format!("{:04x}", r.sw);
                let stop = !c["expect"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e == &json!(sw));
                responses.push(json!({ "data": hex::encode(&r.data), "sw": sw }));
                if stop {
                    break;
                }
            }
            result["responses"] = json!(responses);
            if limit < commands.len() {
                result["transport_error"] = json!("device_removed");
            }
        }
        let (s, next) = server.call("POST", &format!("/issuance/{id}/relay"), Some(result));
        assert_eq!(s, 200, "{next}");
        batch = next;
    }
    batch
}
