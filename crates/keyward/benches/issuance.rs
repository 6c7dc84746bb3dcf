//! Issuance benchmark (issue 5; not run by .ci/run):
//! `cargo bench -p keyward --bench issuance` (release profile).
//!
//! The real server (`keyward serve`, SQLite, its own data folder) on
//! loopback; in-process virtual YubiKeys (keyward-vcard, no PC/SC) in this
//! process, driven the way `keyward issue` drives a device: Add Device, then
//! every batch relayed to the card until the session ends.
//!
//! 1. Throughput: full PIV issuance (policy "PIV Standard": 9A and 9C on
//!    P-256, certificates from the embedded CA, CHUID, CCC, per-device
//!    management key, database) of N devices (KEYWARD_BENCH_ISSUANCES,
//!    default 2000) by W client workers (KEYWARD_BENCH_WORKERS, default 8).
//!    Reports issuances per second, the virtual device's own time (inside
//!    `VirtualCard::transmit`) separately, CPU of the server and of this
//!    process per issuance, HTTP requests, device batches, APDUs and bytes.
//! 2. Memory: 1,000 concurrent sessions (KEYWARD_BENCH_SESSIONS), one client
//!    thread each: all opened at once and held past their first batch, then
//!    all finished at once; server resident memory sampled every 10 ms
//!    (VmRSS) and its peak (VmHWM).
//!
//! 3. Throughput again with the server in this process: its axum router
//!    called without TCP (tower `oneshot`), fresh SQLite; CPU of this one
//!    process per issuance (KEYWARD_BENCH_IN_PROCESS=0 skips it).
//!
//! Cards are created before the clock starts (a factory-new card makes its
//! attestation keys). Set KEYWARD_BENCH_PAUSE=1 to print the server's PID and
//! wait 5 s before the throughput phase (to attach `perf record -p PID`).

use keyward_vcard::{Firmware, ManufacturerCa, ProfileKind, VcardConfig, VirtualCard};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_keyward");
const TOKEN: &str = "kw_bench_token_issuance_0123456789abcdefghijklmnop";
const PIN: &str = "735194";

struct Server {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `keyward serve` trusting `attestation_root` (PEM) for YubiKey PIV attestation.
fn start_server(attestation_root: &std::path::Path) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keyward.toml");
    std::fs::write(
        &config,
        format!(
            "attestation_roots = [{:?}]\n",
            attestation_root.display().to_string()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("KEYWARD_BOOTSTRAP_TOKEN", TOKEN)
        .env(
            "KEYWARD_LOG",
            std::env::var("KEYWARD_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("KEYWARD_CONFIG", &config)
        .env_remove("KEYWARD_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(match std::env::var_os("KEYWARD_BENCH_SERVER_STDERR") {
            Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
            None => Stdio::null(),
        })
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines.next().expect("server exited").unwrap();
        if let Some(u) = line.strip_prefix("keyward listening on ") {
            break u.to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Server {
        child,
        url,
        _dir: dir,
    }
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

struct Api {
    http: reqwest::blocking::Client,
    base: String,
    /// In-process mode: the server's router in this process, called
    /// without TCP (tower `oneshot`), on the server's runtime.
    local: Option<(axum::Router, tokio::runtime::Handle)>,
}

impl Api {
    fn new(base: &str) -> Api {
        Api {
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
            base: base.to_string(),
            local: None,
        }
    }

    fn in_process(router: axum::Router, rt: tokio::runtime::Handle) -> Api {
        Api {
            local: Some((router, rt)),
            ..Api::new("http://in-process")
        }
    }

    /// One request to the in-process router: status and body.
    fn local_call(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Option<(u16, Vec<u8>)> {
        use tower::ServiceExt as _;
        let (router, rt) = self.local.as_ref()?;
        let req = axum::http::Request::builder()
            .method(method)
            .uri(format!("/api/v1{path}"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", content_type)
            .body(axum::body::Body::from(body))
            .unwrap();
        // The request runs as a task on the server's runtime, as a request
        // from the network would; this thread waits for its answer only.
        let router = router.clone();
        let task = rt.spawn(async move {
            let resp = router.oneshot(req).await.unwrap();
            let status = resp.status().as_u16();
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            (status, bytes.to_vec())
        });
        Some(rt.block_on(task).unwrap())
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let bytes = body
            .as_ref()
            .map_or_else(Vec::new, |b| serde_json::to_vec(b).unwrap());
        if let Some((s, out)) = self.local_call(method, path, "application/json", bytes) {
            return (s, serde_json::from_slice(&out).unwrap_or(Value::Null));
        }
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(m, format!("{}/api/v1{path}", self.base))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().unwrap();
        let s = r.status().as_u16();
        (s, r.json().unwrap_or(Value::Null))
    }

    fn csv(&self, path: &str, body: String) {
        if let Some((s, out)) = self.local_call("POST", path, "text/csv", body.clone().into_bytes())
        {
            assert!(
                (200..300).contains(&s),
                "{path}: {}",
                String::from_utf8_lossy(&out)
            );
            return;
        }
        let r = self
            .http
            .post(format!("{}/api/v1{path}", self.base))
            .bearer_auth(TOKEN)
            .header("content-type", "text/csv")
            .body(body)
            .send()
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.text().unwrap());
    }
}

#[derive(Default, Clone, Copy)]
struct Counters {
    http_requests: u64,
    device_batches: u64,
    apdus: u64,
    bytes_out: u64,
    bytes_in: u64,
    device: Duration,
}

impl Counters {
    fn add(&mut self, o: &Counters) {
        self.http_requests += o.http_requests;
        self.device_batches += o.device_batches;
        self.apdus += o.apdus;
        self.bytes_out += o.bytes_out;
        self.bytes_in += o.bytes_in;
        self.device += o.device;
    }
}

/// Runs one batch on the card (up to the first unexpected status word),
/// as `keyward issue` does; GET RESPONSE for 61xx.
fn run_batch(card: &mut VirtualCard, batch: &Value, c: &mut Counters) -> Vec<Value> {
    let mut out = Vec::new();
    c.device_batches += 1;
    for cmd in batch["commands"].as_array().unwrap() {
        assert_eq!(cmd["channel"], "piv");
        let apdu = hex::decode(cmd["bytes"].as_str().unwrap()).unwrap();
        let t = Instant::now();
        let mut resp = card.transmit(&apdu);
        c.apdus += 1;
        c.bytes_out += apdu.len() as u64;
        c.bytes_in += resp.len() as u64;
        let mut data = resp[..resp.len() - 2].to_vec();
        let mut sw = u16::from_be_bytes([resp[resp.len() - 2], resp[resp.len() - 1]]);
        while sw >> 8 == 0x61 {
            resp = card.transmit(&[0x00, 0xC0, 0x00, 0x00, (sw & 0xFF) as u8]);
            c.apdus += 1;
            c.bytes_out += 5;
            c.bytes_in += resp.len() as u64;
            data.extend_from_slice(&resp[..resp.len() - 2]);
            sw = u16::from_be_bytes([resp[resp.len() - 2], resp[resp.len() - 1]]);
        }
        c.device += t.elapsed();
        let sw_hex = format!("{sw:04x}");
        let expected = cmd["expect"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == &json!(sw_hex));
        out.push(json!({ "data": hex::encode(&data), "sw": sw_hex }));
        if !expected {
            break;
        }
    }
    out
}

/// Add Device; returns the first batch.
fn add_device(api: &Api, user: &str, serial: u32, c: &mut Counters) -> Value {
    c.http_requests += 1;
    let (s, batch) = api.call(
        "POST",
        "/issuance",
        Some(json!({ "user": user, "policy": "PIV Standard", "serial": serial.to_string(), "pin": PIN })),
    );
    assert_eq!(s, 201, "Add Device {serial}: {batch}");
    batch
}

/// Relays one batch and returns the server's next answer.
fn relay(api: &Api, card: &mut VirtualCard, batch: &Value, c: &mut Counters) -> Value {
    let id = batch["session_id"].as_str().unwrap().to_string();
    let responses = run_batch(card, batch, c);
    c.http_requests += 1;
    let (s, next) = api.call(
        "POST",
        &format!("/issuance/{id}/relay"),
        Some(
            json!({ "protocol": 1, "session_id": id, "seq": batch["seq"], "responses": responses }),
        ),
    );
    assert_eq!(s, 200, "relay: {next}");
    let mut next = next;
    if next.get("session_id").is_none() {
        next["session_id"] = json!(id);
    }
    next
}

fn finish(api: &Api, card: &mut VirtualCard, mut batch: Value, c: &mut Counters) {
    while batch["state"] == "running" {
        batch = relay(api, card, &batch, c);
    }
    assert_eq!(batch["state"], "issued", "{batch}");
}

fn seed(api: &Api, first_serial: u32, n: usize) {
    let mut users = String::from("login,upn,display_name,email\n");
    let mut devices = String::from("device_type,serial,firmware_version\n");
    for i in 0..n {
        let s = first_serial + i as u32;
        users.push_str(&format!(
            "b{s},b{s}@example.com,Bench User {s},b{s}@example.com\n"
        ));
        devices.push_str(&format!("yubikey5,{s},5.7.1\n"));
    }
    api.csv("/users/import", users);
    api.csv("/devices/import", devices);
}

fn cards(ca: &ManufacturerCa, first_serial: u32, n: usize) -> Vec<VirtualCard> {
    let threads = 2;
    let chunks: Vec<Vec<u32>> = (0..threads)
        .map(|t| {
            (0..n)
                .filter(|i| i % threads == t)
                .map(|i| first_serial + i as u32)
                .collect()
        })
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|serials| {
                s.spawn(move || {
                    serials
                        .into_iter()
                        .map(|serial| {
                            let mut card = VirtualCard::with_ca(
                                VcardConfig::new(ProfileKind::Yubikey5)
                                    .with_firmware(Firmware(5, 7, 1))
                                    .with_serial(serial),
                                ca,
                            )
                            .unwrap();
                            card.power_on();
                            card
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<VirtualCard> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort_by_key(|c| c.config().serial);
        all
    })
}

/// Devices in `state`, counted through the paged inventory API.
fn count_devices(api: &Api, state: &str) -> usize {
    let mut n = 0;
    let mut after = String::new();
    loop {
        let (s, page) = api.call(
            "GET",
            &format!("/devices?state={state}&limit=500{after}"),
            None,
        );
        assert_eq!(s, 200, "{page}");
        n += page["items"].as_array().map_or(0, |a| a.len());
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => return n,
        }
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The policy and settings of the run, then a warm-up (connections,
/// SQLite pages, CA keys) on 50 devices.
fn prepare(api: &Api, ca: &ManufacturerCa) {
    let (s, v) = api.call(
        "POST",
        "/policies",
        Some(json!({
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
    for (k, v) in [
        ("initial_pin_display_mode", "displayed"),
        ("change_pin_during_issuance", "no"),
    ] {
        let (s, r) = api.call(
            "PUT",
            &format!("/settings/{k}"),
            Some(json!({ "value": v })),
        );
        assert_eq!(s, 200, "{k}: {r}");
    }

    let warm = 50;
    seed(api, 50_000_000, warm);
    for mut card in cards(&ca, 50_000_000, warm) {
        let serial = card.config().serial;
        let mut c = Counters::default();
        let b = add_device(api, &format!("b{serial}"), serial, &mut c);
        finish(api, &mut card, b, &mut c);
    }
}

/// 3. The same throughput with the server in this process: its router
/// called without TCP (`tower::ServiceExt::oneshot`), a fresh SQLite data
/// folder, the same policy, settings and warm-up. Only this process's CPU
/// can be measured (server, virtual cards and client together).
fn in_process(ca: &ManufacturerCa, ca_pem: &std::path::Path, n: usize, workers: usize) {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut config = keyward_server::config::Config::load(
        None,
        keyward_server::config::Overrides {
            data_dir: Some(dir.path().join("data")),
            listen: Some("127.0.0.1:0".parse().unwrap()),
            ..Default::default()
        },
    )
    .unwrap();
    config.attestation_roots = vec![ca_pem.to_path_buf()];
    let server = rt
        .block_on(keyward_server::Server::start(
            config,
            keyward_server::StartOptions {
                bootstrap_token: Some(TOKEN.into()),
                allow_weak_bootstrap_token: false,
            },
        ))
        .unwrap();
    let router = keyward_server::app::router(server.state.clone());
    let api = Api::in_process(router.clone(), rt.handle().clone());
    prepare(&api, ca);
    let first = 60_000_000;
    seed(&api, first, n);
    let queue = Arc::new(Mutex::new(cards(ca, first, n)));
    let total = Arc::new(Mutex::new(Counters::default()));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let cpu0 = cpu_seconds("self");
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..workers {
            let (queue, total, latencies) = (queue.clone(), total.clone(), latencies.clone());
            let api = Api::in_process(router.clone(), rt.handle().clone());
            s.spawn(move || {
                let mut mine = Counters::default();
                loop {
                    let Some(mut card) = queue.lock().unwrap().pop() else {
                        break;
                    };
                    let serial = card.config().serial;
                    let started = Instant::now();
                    let b = add_device(&api, &format!("b{serial}"), serial, &mut mine);
                    finish(&api, &mut card, b, &mut mine);
                    latencies.lock().unwrap().push(started.elapsed());
                }
                total.lock().unwrap().add(&mine);
            });
        }
    });
    let wall = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds("self") - cpu0;
    let c = *total.lock().unwrap();
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3;
    println!(
        "\n3. the same, server in this process (router called without TCP), {n} devices, {workers} workers:"
    );
    println!(
        "  {:.1} issuances/s ({wall:.2} s wall); latency per issuance p50 {:.1} ms, p99 {:.1} ms",
        n as f64 / wall,
        p(0.5),
        p(0.99)
    );
    println!(
        "  CPU of this process (server + virtual cards + client) {:.2} ms per issuance, of which the virtual device's own time {:.2} ms",
        cpu * 1e3 / n as f64,
        c.device.as_secs_f64() * 1e3 / n as f64
    );
    server.stop();
    drop(rt);
}

fn main() {
    let n = env_usize("KEYWARD_BENCH_ISSUANCES", 2000);
    let workers = env_usize("KEYWARD_BENCH_WORKERS", 8);
    let sessions = env_usize("KEYWARD_BENCH_SESSIONS", 1000);
    // The virtual manufacturer CA of the cards, trusted by the server: each
    // key's attestation verifies (as with Yubico's root for real devices).
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = ManufacturerCa::load_or_create(&ca_dir.path().join("ca")).unwrap();
    if env_usize("KEYWARD_BENCH_LOOPBACK", 1) == 0 {
        in_process(
            &ca,
            &ca_dir.path().join("ca").join("ca-cert.pem"),
            n,
            workers,
        );
        return;
    }
    let server = start_server(&ca_dir.path().join("ca").join("ca-cert.pem"));
    let pid = server.child.id();
    let api = Api::new(&server.url);
    prepare(&api, &ca);

    // 1. Throughput.
    let first = 40_000_000;
    let t = Instant::now();
    seed(&api, first, n);
    let seeded = t.elapsed();
    let t = Instant::now();
    let queue: Vec<VirtualCard> = cards(&ca, first, n);
    let made = t.elapsed();
    println!(
        "setup: {n} users + devices imported in {:.2} s; {n} factory-new virtual cards made in {:.2} s (not timed below)",
        seeded.as_secs_f64(),
        made.as_secs_f64()
    );
    if std::env::var_os("KEYWARD_BENCH_PAUSE").is_some() {
        println!("server PID {pid}; starting in 5 s");
        std::thread::sleep(Duration::from_secs(5));
    }
    let queue = Arc::new(Mutex::new(queue));
    let total = Arc::new(Mutex::new(Counters::default()));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let server_cpu0 = cpu_seconds(&pid.to_string());
    let self_cpu0 = cpu_seconds("self");
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..workers {
            let (queue, total, latencies) = (queue.clone(), total.clone(), latencies.clone());
            let base = server.url.clone();
            s.spawn(move || {
                let api = Api::new(&base);
                let mut mine = Counters::default();
                loop {
                    let Some(mut card) = queue.lock().unwrap().pop() else {
                        break;
                    };
                    let serial = card.config().serial;
                    let started = Instant::now();
                    let b = add_device(&api, &format!("b{serial}"), serial, &mut mine);
                    finish(&api, &mut card, b, &mut mine);
                    latencies.lock().unwrap().push(started.elapsed());
                }
                total.lock().unwrap().add(&mine);
            });
        }
    });
    let wall = t.elapsed().as_secs_f64();
    let server_cpu = cpu_seconds(&pid.to_string()) - server_cpu0;
    let self_cpu = cpu_seconds("self") - self_cpu0;
    let c = *total.lock().unwrap();
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3;
    let per = |x: u64| x as f64 / n as f64;
    println!(
        "\n1. full PIV issuance, {n} devices, {workers} workers, SQLite, loopback, {} cores:",
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    println!(
        "  {:.1} issuances/s ({wall:.2} s wall); latency per issuance p50 {:.1} ms, p99 {:.1} ms",
        n as f64 / wall,
        p(0.5),
        p(0.99)
    );
    println!(
        "  server CPU {:.2} ms per issuance; this process (virtual cards + HTTP client) {:.2} ms per issuance",
        server_cpu * 1e3 / n as f64,
        self_cpu * 1e3 / n as f64
    );
    println!(
        "  virtual device's own time (inside VirtualCard::transmit): {:.2} ms per issuance ({:.1}% of the CPU time of both processes)",
        c.device.as_secs_f64() * 1e3 / n as f64,
        100.0 * c.device.as_secs_f64() / (server_cpu + self_cpu)
    );
    println!(
        "  per issuance: {:.1} HTTP requests (Add Device + relays), {:.1} device batches (client-server round trips carrying device responses), {:.1} APDUs, {:.0} bytes to the device, {:.0} bytes from it",
        per(c.http_requests),
        per(c.device_batches),
        per(c.apdus),
        per(c.bytes_out),
        per(c.bytes_in)
    );
    println!(
        "  server resident memory after: {} KiB (peak {} KiB)",
        proc_status_kib(pid, "VmRSS:"),
        proc_status_kib(pid, "VmHWM:")
    );

    // The attestation outcome of the last keys, from the audit trail.
    let (_, events) = api.call("GET", "/audit?limit=200", None);
    let events: Vec<&Value> = events
        .as_array()
        .or_else(|| events["events"].as_array())
        .or_else(|| events["items"].as_array())
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let att: Vec<&&Value> = events
        .iter()
        .filter(|e| e.to_string().contains("issuance.attestation"))
        .collect();
    let unattested = att
        .iter()
        .filter(|e| e.to_string().contains("unattested"))
        .count();
    println!(
        "  attestation (last 200 audit events): {} key outcomes recorded, {unattested} unattested",
        att.len()
    );

    // 2. Sessions open at once, each driven by its own client thread (one
    // shared HTTP client, so up to `sessions` connections): all Add Device
    // calls and first relays run concurrently; every session then waits,
    // past its first batch, until all are open; then all finish at once. A
    // monitor samples the server's VmRSS every 10 ms.
    let first = 45_000_000;
    seed(&api, first, sessions);
    let cards2 = cards(&ca, first, sessions);
    let rss_before = proc_status_kib(pid, "VmRSS:");
    let shared = Arc::new(Api::new(&server.url));
    let all_open = Arc::new(std::sync::Barrier::new(sessions + 1));
    let go_on = Arc::new(std::sync::Barrier::new(sessions + 1));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let max_rss = Arc::new(AtomicUsize::new(0));
    let monitor = {
        let (done, max_rss) = (done.clone(), max_rss.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                max_rss.fetch_max(proc_status_kib(pid, "VmRSS:") as usize, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let t = Instant::now();
    let handles: Vec<_> = cards2
        .into_iter()
        .map(|mut card| {
            let (api, all_open, go_on) = (shared.clone(), all_open.clone(), go_on.clone());
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let mut c = Counters::default();
                    let serial = card.config().serial;
                    let b = add_device(&api, &format!("b{serial}"), serial, &mut c);
                    let b = relay(&api, &mut card, &b, &mut c);
                    assert_eq!(b["state"], "running");
                    all_open.wait();
                    go_on.wait();
                    finish(&api, &mut card, b, &mut c);
                })
                .unwrap()
        })
        .collect();
    all_open.wait();
    let opened = t.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    let listed = count_devices(&api, "in_production");
    let rss_open = proc_status_kib(pid, "VmRSS:");
    let max_opening = max_rss.load(Ordering::SeqCst);
    go_on.wait();
    for h in handles {
        h.join().unwrap();
    }
    let finished = t.elapsed() - opened;
    done.store(true, Ordering::SeqCst);
    monitor.join().unwrap();
    println!(
        "\n2. {sessions} concurrent sessions (one client thread each; opened in {:.2} s, all finished in {:.2} s more):",
        opened.as_secs_f64(),
        finished.as_secs_f64()
    );
    println!("  devices listed in_production while all were open: {listed}");
    println!(
        "  server resident memory: {} KiB before; {} KiB ({:.1} MB) with all {sessions} open; max sampled while opening {} KiB, while opening and finishing {} KiB ({:.1} MB)",
        rss_before,
        rss_open,
        rss_open as f64 / 1024.0,
        max_opening,
        max_rss.load(Ordering::SeqCst),
        max_rss.load(Ordering::SeqCst) as f64 / 1024.0
    );
    println!(
        "  after all finished issued: VmRSS {} KiB, VmHWM (peak over the whole run) {} KiB ({:.1} MB)",
        proc_status_kib(pid, "VmRSS:"),
        proc_status_kib(pid, "VmHWM:"),
        proc_status_kib(pid, "VmHWM:") as f64 / 1024.0
    );
    drop(server);
    if env_usize("KEYWARD_BENCH_IN_PROCESS", 1) != 0 {
        in_process(
            &ca,
            &ca_dir.path().join("ca").join("ca-cert.pem"),
            n,
            workers,
        );
    }
}
