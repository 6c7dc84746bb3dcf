//! Test support: start `keyward serve` (the real binary, through
//! `CARGO_BIN_EXE_keyward`) on a free port with its own data folder, and talk
//! to its API.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_keyward");

pub struct TestServer {
    pub child: Child,
    pub url: String,
    pub token: String,
    pub data_dir: tempfile::TempDir,
    /// Everything the process printed (stdout and stderr), for secret searches.
    pub output: Arc<Mutex<String>>,
    pub first_admin_password: Option<String>,
}

pub struct ServerOptions {
    /// The data folder (default: a new empty one).
    pub data_dir: Option<tempfile::TempDir>,
    pub database_url: Option<String>,
    pub extra_env: Vec<(String, String)>,
    pub args: Vec<String>,
    pub subcommand: &'static str,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            data_dir: None,
            database_url: None,
            extra_env: vec![],
            args: vec![],
            subcommand: "serve",
        }
    }
}

fn pump(
    reader: impl Read + Send + 'static,
    sink: Arc<Mutex<String>>,
    lines: Option<std::sync::mpsc::Sender<String>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            sink.lock().unwrap().push_str(&line);
            sink.lock().unwrap().push('\n');
            if let Some(tx) = &lines {
                let _ = tx.send(line);
            }
        }
    });
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_with(ServerOptions::default())
    }

    pub fn start_with(mut opts: ServerOptions) -> TestServer {
        let data_dir = opts
            .data_dir
            .take()
            .unwrap_or_else(|| tempfile::tempdir().unwrap());
        let token = format!("kw_test_{}_{}", uuid_like(), uuid_like());
        let mut cmd = Command::new(BIN);
        cmd.arg(opts.subcommand)
            .arg("--data-dir")
            .arg(data_dir.path())
            .arg("--listen")
            .arg("127.0.0.1:0")
            .args(&opts.args)
            .env("KEYWARD_BOOTSTRAP_TOKEN", &token)
            .env_remove("KEYWARD_CONFIG")
            .env_remove("KEYWARD_DATABASE_URL")
            .env("KEYWARD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(url) = &opts.database_url {
            cmd.arg("--database-url").arg(url);
        }
        for (k, v) in &opts.extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn keyward");
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        pump(child.stdout.take().unwrap(), output.clone(), Some(tx));
        pump(child.stderr.take().unwrap(), output.clone(), None);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut url = None;
        let mut first_admin_password = None;
        while url.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| {
                let _ = child.kill();
                panic!("server did not start; output:\n{}", output.lock().unwrap())
            });
            if let Some(p) = line.strip_prefix("created operator 'admin' with one-time password: ")
            {
                first_admin_password = Some(p.trim().to_string());
            }
            if let Some(u) = line.strip_prefix("keyward listening on ") {
                url = Some(u.trim().to_string());
            }
            if let Some(u) = line.strip_prefix("Keyward demo is running at ") {
                url = Some(u.trim().to_string());
            }
        }
        TestServer {
            child,
            url: url.unwrap(),
            token,
            data_dir,
            output,
            first_admin_password,
        }
    }

    pub fn data_path(&self) -> PathBuf {
        self.data_dir.path().to_path_buf()
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1{}", self.url, path)
    }

    pub fn client(&self) -> reqwest::blocking::Client {
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap()
    }

    /// GET/POST/… with the bootstrap administrator token.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        self.call_as(&self.token.clone(), method, path, body)
    }

    pub fn call_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.client().request(m, self.api(path));
        if !token.is_empty() {
            req = req.bearer_auth(token);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    /// Sends a raw body with a content type.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, serde_json::Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = self
            .client()
            .request(m, self.api(path))
            .bearer_auth(&self.token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    /// Creates an API token with `role`, returns its value.
    pub fn token_with_role(&self, role: &str) -> String {
        let (s, v) = self.call(
            "POST",
            "/tokens",
            Some(serde_json::json!({ "name": format!("t-{role}-{}", uuid_like()), "role": role })),
        );
        assert_eq!(s, 201, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    /// Runs `keyward admin …` against this server.
    pub fn admin(&self, args: &[&str]) -> std::process::Output {
        self.admin_stdin(args, None)
    }

    pub fn admin_stdin(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        use std::io::Write;
        let mut child = Command::new(BIN)
            .arg("admin")
            .args(args)
            .env("KEYWARD_SERVER", &self.url)
            .env("KEYWARD_TOKEN", &self.token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            let mut input = child.stdin.take().unwrap();
            if let Some(s) = stdin {
                input.write_all(s.as_bytes()).unwrap();
            }
        }
        let out = child.wait_with_output().unwrap();
        self.output
            .lock()
            .unwrap()
            .push_str(&String::from_utf8_lossy(&out.stdout));
        self.output
            .lock()
            .unwrap()
            .push_str(&String::from_utf8_lossy(&out.stderr));
        out
    }

    pub fn stop(&mut self) {
        unsafe {
            libc_kill(self.child.id() as i32, 15);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `openssl ARGS` in `dir`: whether it succeeded, and what it wrote
/// (stdout, then stderr).
pub fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed (.ci/deps)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

impl TestServer {
    /// GET of a path outside the API (`/pki/…`): the body.
    pub fn fetch(&self, path: &str) -> Vec<u8> {
        self.client()
            .get(format!("{}{path}", self.url))
            .send()
            .unwrap()
            .bytes()
            .unwrap()
            .to_vec()
    }
}

pub fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}{:x}", n, std::process::id())
}

pub fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// All files below `dir` concatenated (for secret searches in the data folder).
pub fn read_tree(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(read_tree(&p));
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.extend(bytes);
            }
        }
    }
    out
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Seeds alice, a yubikey5 5.7.1 device with `serial` in the inventory, the
/// "PIV Standard" policy (9A and 9C on P-256, per-device management key,
/// retries 3) and the Displayed PIN mode.
pub fn seed_piv_standard(server: &TestServer, serial: &str) {
    assert_eq!(server.call("POST", "/users", Some(serde_json::json!({ "login": "alice", "display_name": "Alice Archer", "upn": "alice@example.com", "email": "alice@example.com" }))).0, 201);
    let (s, v) = server.call(
        "POST",
        "/devices",
        Some(serde_json::json!({ "device_type": "yubikey5", "serial": serial, "firmware_version": "5.7.1" })),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = server.call(
        "POST",
        "/policies",
        Some(serde_json::json!({
            "name": "PIV Standard", "device_types": ["yubikey5", "c4000"], "management_key": "random", "require_device_attestation": false,
            "pin_application": { "min_length": 6, "max_length": 8, "character_set": "numeric", "max_repeated": 2, "max_sequential": 2, "pin_retry_count": 3, "puk_retry_count": 3 },
            "pki_applications": [
                { "name": "PIV Authentication", "slot": "9a", "algorithm": "eccp256", "certificate_authority": "Keyward Issuing CA",
                  "template": { "subject_dn": "CN={display_name},UID={login}", "subject_alt_names": ["upn", "mail"], "validity_days": 365,
                                "key_usage": ["digital_signature"], "extended_key_usage": ["client_auth", "smartcard_logon"] } },
                { "name": "Digital Signature", "slot": "9c", "algorithm": "eccp256", "certificate_authority": "Keyward Issuing CA",
                  "template": { "subject_dn": "CN={display_name}", "subject_alt_names": ["mail"], "validity_days": 365,
                                "key_usage": ["digital_signature", "non_repudiation"], "extended_key_usage": ["email_protection"] } }
            ]
        })),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        server
            .call(
                "PUT",
                "/settings/initial_pin_display_mode",
                Some(serde_json::json!({ "value": "displayed" }))
            )
            .0,
        200
    );
}

/// A server on a fresh PostgreSQL database ([`postgres_database`]); `None`
/// (the test is skipped, and says so) when no server is configured
/// outside CI.
pub fn postgres_server(prefix: &str) -> Option<TestServer> {
    postgres_database(prefix).map(|url| {
        TestServer::start_with(ServerOptions {
            database_url: Some(url),
            ..Default::default()
        })
    })
}

/// A fresh database on the test PostgreSQL server (`KEYWARD_TEST_POSTGRES_URL`,
/// set by `.ci/run`), named `PREFIX_…`; `None` (the test is skipped, and says
/// so) when no server is configured outside CI.
pub fn postgres_database(prefix: &str) -> Option<String> {
    let url = match std::env::var("KEYWARD_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => u,
        _ if std::env::var_os("CI").is_some() => {
            panic!("CI is set but KEYWARD_TEST_POSTGRES_URL is not")
        }
        _ => {
            eprintln!("SKIPPED: set KEYWARD_TEST_POSTGRES_URL to run against PostgreSQL");
            return None;
        }
    };
    let name = format!("{prefix}_{}", uuid_like());
    let out = Command::new("psql")
        .arg(&url)
        .arg("-c")
        .arg(format!("CREATE DATABASE {name}"))
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(format!("{}/{name}", url.rsplit_once('/').unwrap().0))
}

/// Runs a relay batch's PIV commands on an in-process virtual card as a
/// client would (`61xx` completed with GET RESPONSE, stop at the first
/// status word the batch does not expect); the responses to post back.
pub fn relay_in_process(
    card: &mut keyward_vcard::VirtualCard,
    batch: &serde_json::Value,
) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for c in batch["commands"].as_array().unwrap() {
        assert_eq!(c["channel"], "piv");
        let apdu = hex::decode(c["bytes"].as_str().unwrap()).unwrap();
        let mut resp = card.transmit(&apdu);
        let mut data = resp[..resp.len() - 2].to_vec();
        let mut sw = u16::from_be_bytes([resp[resp.len() - 2], resp[resp.len() - 1]]);
        while sw >> 8 == 0x61 {
            resp = card.transmit(&[0x00, 0xC0, 0x00, 0x00, (sw & 0xFF) as u8]);
            data.extend_from_slice(&resp[..resp.len() - 2]);
            sw = u16::from_be_bytes([resp[resp.len() - 2], resp[resp.len() - 1]]);
        }
        let sw_hex = format!("{sw:04x}");
        let go_on = c["expect"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.as_str() == Some(sw_hex.as_str()));
        out.push(serde_json::json!({ "data": hex::encode(&data), "sw": sw_hex }));
        if !go_on {
            break;
        }
    }
    out
}

/// Options for server nodes sharing one fresh PostgreSQL database
/// (`postgres_database(prefix)`) and one KEK, as several nodes of one
/// installation run; `None` when no PostgreSQL is configured (skipped).
pub fn shared_postgres_nodes(prefix: &str) -> Option<impl Fn() -> ServerOptions> {
    let db = postgres_database(prefix)?;
    let kek = "a2V5d2FyZC1zaGFyZWQta2VrLWZvci10d28tbm9kZXM="; // 32 bytes, every node
    Some(move || ServerOptions {
        database_url: Some(db.clone()),
        extra_env: vec![("KEYWARD_KEK".into(), kek.into())],
        ..Default::default()
    })
}

/// Runs `sql` on a server's SQLite store file behind its back (what a test
/// cannot do through the API: move a clock, tamper with a record).
pub fn sqlite_exec(db: &Path, sql: &str) {
    let url = format!("sqlite://{}", db.display());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            use sqlx::Connection;
            let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::raw_sql(sql).execute(&mut c).await.unwrap();
        });
}

/// `keyward SUB --server URL --token TOKEN ARGS…` with no standard input.
pub fn cli(server: &TestServer, sub: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg(sub)
        .args(["--server", &server.url, "--token", &server.token])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}
