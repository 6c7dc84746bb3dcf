//! Shared support for the workstation agent tests (`agent_*.rs`): a spawned
//! `keyward agent` with in-process virtual devices (`--virtual`, no PC/SC,
//! no hidraw) or on pcscd ([`paired_pcsc_agent`]), its pairing code, its
//! output, and its credential file.
//!
//! A module of the one integration test binary: `use crate::common::agent;`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Agent {
    pub child: Child,
    pub state_dir: tempfile::TempDir,
    /// Folder of the virtual devices' control sockets (`SERIAL.sock`).
    pub control_dir: PathBuf,
    /// Everything the agent printed (stdout and stderr).
    pub output: Arc<Mutex<String>>,
    stdout: mpsc::Receiver<String>,
}

fn pump(
    r: impl std::io::Read + Send + 'static,
    sink: Arc<Mutex<String>>,
    tx: Option<mpsc::Sender<String>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
            drop(s);
            if let Some(tx) = &tx {
                let _ = tx.send(line);
            }
        }
    });
}

impl Agent {
    /// `keyward agent --server URL --state-dir TMP --no-pcsc --no-hidraw
    /// --virtual-control TMP/control` plus `args` (e.g. `--virtual yubikey5:N`).
    pub fn spawn(server_url: &str, args: &[&str]) -> Agent {
        Self::spawn_with(server_url, false, args)
    }

    /// [`Agent::spawn`]; with `pcsc` the agent looks at pcscd's readers
    /// too (no `--no-pcsc`): a `keyward vcard` on vpcd is its device.
    pub fn spawn_with(server_url: &str, pcsc: bool, args: &[&str]) -> Agent {
        let state_dir = tempfile::tempdir().unwrap();
        let control_dir = state_dir.path().join("control");
        let mut child = Command::new(env!("CARGO_BIN_EXE_keyward"))
            .arg("agent")
            .arg("--server")
            .arg(server_url)
            .arg("--state-dir")
            .arg(state_dir.path())
            .arg("--name")
            .arg("test-workstation")
            .args(if pcsc { &[][..] } else { &["--no-pcsc"][..] })
            .args(["--no-hidraw", "--virtual-control"])
            .arg(&control_dir)
            .args(args)
            .env_remove("KEYWARD_SERVER")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keyward agent");
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        pump(child.stdout.take().unwrap(), output.clone(), Some(tx));
        pump(child.stderr.take().unwrap(), output.clone(), None);
        Agent {
            child,
            state_dir,
            control_dir,
            output,
            stdout: rx,
        }
    }

    /// The code of the `pairing code: XXXX-XXXX` line.
    pub fn pairing_code(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .stdout
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no pairing code; agent output:\n{}", self.output()));
            if let Some(code) = line.strip_prefix("pairing code: ") {
                return code.trim().to_string();
            }
        }
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits until the agent printed `needle`.
    pub fn wait_output(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.output().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "agent did not print {needle:?}; output:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The credential file's content (one per server).
    pub fn credential_file(&self) -> (PathBuf, Value) {
        let entry = std::fs::read_dir(self.state_dir.path())
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("credential-"))
            .unwrap_or_else(|| panic!("no credential file; agent output:\n{}", self.output()));
        let v = serde_json::from_slice(&std::fs::read(entry.path()).unwrap()).unwrap();
        (entry.path(), v)
    }

    pub fn credential(&self) -> String {
        self.credential_file().1["credential"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn agent_id(&self) -> String {
        self.credential_file().1["agent_id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// One command to a virtual device's control socket (`remove`, `insert`).
    pub fn control(&self, serial: &str, command: &str) {
        use std::io::Write;
        let path = self.control_dir.join(format!("{serial}.sock"));
        let mut s = std::os::unix::net::UnixStream::connect(&path)
            .unwrap_or_else(|e| panic!("control socket {}: {e}", path.display()));
        s.write_all(format!("{command}\n").as_bytes()).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ok", "{command}: {line}");
    }

    /// Waits for the agent to exit; its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not exit; output:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An authenticated request with any bearer (agent credential or token).
pub fn call_with(
    url: &str,
    bearer: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = client.request(m, format!("{url}/api/v1{path}"));
    if !bearer.is_empty() {
        req = req.bearer_auth(bearer);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().unwrap();
    let s = r.status().as_u16();
    let text = r.text().unwrap();
    (
        s,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Polls `GET /agents/devices` (with `bearer`) until `serials` are all
/// listed (or, with `present` false, none of them); the answer.
pub fn wait_devices(url: &str, bearer: &str, serials: &[&str], present: bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, v) = call_with(url, bearer, "GET", "/agents/devices", None);
        assert_eq!(s, 200, "{v}");
        let listed: Vec<&str> = v["devices"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|d| d["serial"].as_str())
            .collect();
        if serials.iter().all(|s| listed.contains(s) == present) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "devices {serials:?} (present: {present}) not as expected: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `GET /issuance/{id}` until the session is no longer running.
pub fn wait_session_end(url: &str, token: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (s, v) = call_with(url, token, "GET", &format!("/issuance/{id}"), None);
        assert_eq!(s, 200, "{v}");
        if v["status"] != "running" {
            return v;
        }
        assert!(Instant::now() < deadline, "session still running: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Spawns an agent with `args`, approves its code with `keyward admin agent
/// approve` (plus `approve_args`), and waits until `serials` are reported.
pub fn paired_agent(
    server: &crate::support::TestServer,
    args: &[&str],
    approve_args: &[&str],
    serials: &[&str],
) -> Agent {
    paired(
        server,
        Agent::spawn(&server.url, args),
        approve_args,
        serials,
    )
}

/// [`paired_agent`] for an agent on pcscd (its devices in PC/SC readers,
/// `--hid-socket` in `args` for a USB key's FIDO side).
pub fn paired_pcsc_agent(
    server: &crate::support::TestServer,
    args: &[&str],
    approve_args: &[&str],
    serials: &[&str],
) -> Agent {
    paired(
        server,
        Agent::spawn_with(&server.url, true, args),
        approve_args,
        serials,
    )
}

fn paired(
    server: &crate::support::TestServer,
    agent: Agent,
    approve_args: &[&str],
    serials: &[&str],
) -> Agent {
    let code = agent.pairing_code();
    let mut approve = vec!["agent", "approve", code.as_str()];
    approve.extend_from_slice(approve_args);
    let out = server.admin(&approve);
    assert!(
        out.status.success(),
        "approve failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    wait_devices(&server.url, &server.token, serials, true);
    agent
}

/// `keyward SUB --server URL --token TOKEN` on a client that has no PC/SC
/// of its own (pcsc-lite pointed at a socket that does not exist), so a
/// device session can only run through an agent. Add arguments and run.
pub fn cli_without_pcsc(server: &crate::support::TestServer, sub: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyward"));
    cmd.arg(sub)
        .args(["--server", &server.url, "--token", &server.token])
        .env_remove("KEYWARD_SERVER")
        .env_remove("KEYWARD_TOKEN")
        .env(
            "PCSCLITE_CSOCK_NAME",
            "/nonexistent/keyward-test-pcscd.comm",
        );
    cmd
}
