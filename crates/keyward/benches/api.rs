//! API benchmarks (not run by .ci/run): `cargo bench -p keyward --bench api`.
//!
//! 1. A small GET authenticated by API token: latency percentiles measured by
//!    the client over loopback with keep-alive (an upper bound of server time),
//!    and the server's own mean from its /metrics histogram.
//! 2. Idle resident memory of `keyward serve` (VmRSS).
//! 3. `keyward admin user import` of N users (default 1,000,000; set
//!    KEYWARD_BENCH_USERS) into SQLite, end to end.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_keyward");

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

/// `/metrics` on the main address answers this token only.
const METRICS_TOKEN: &str = "bench-metrics-token-0123456789";

fn start(token: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("KEYWARD_BOOTSTRAP_TOKEN", token)
        .env("KEYWARD_METRICS_TOKEN", METRICS_TOKEN)
        .env("KEYWARD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
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

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn main() {
    let token = "kw_bench_token_0123456789abcdefghijklmnopqrstuvwxyz";
    let server = start(token);
    let http = reqwest::blocking::Client::builder().build().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss = rss_kib(server.child.id());

    // 1. token-authenticated small GET
    let url = format!("{}/api/v1/settings", server.url);
    for _ in 0..500 {
        http.get(&url)
            .bearer_auth(token)
            .send()
            .unwrap()
            .bytes()
            .unwrap();
    }
    let before = http
        .get(format!("{}/metrics", server.url))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .unwrap()
        .text()
        .unwrap();
    let n = 20_000;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = http.get(&url).bearer_auth(token).send().unwrap();
        assert!(r.status().is_success());
        r.bytes().unwrap();
        samples.push(t.elapsed());
    }
    let after = http
        .get(format!("{}/metrics", server.url))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .unwrap()
        .text()
        .unwrap();
    samples.sort();
    let server_mean_us = (metric(&after, "keyward_http_request_duration_seconds_sum")
        - metric(&before, "keyward_http_request_duration_seconds_sum"))
        / (metric(&after, "keyward_http_request_duration_seconds_count")
            - metric(&before, "keyward_http_request_duration_seconds_count")
            - 1.0)
        * 1e6;
    let under_1ms = metric(
        &after,
        "keyward_http_request_duration_seconds_bucket{le=\"0.001\"}",
    ) / metric(&after, "keyward_http_request_duration_seconds_count");
    println!("token GET /api/v1/settings, {n} requests, client-side over loopback:");
    println!(
        "  p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms",
        pct(&samples, 0.5),
        pct(&samples, 0.99),
        pct(&samples, 0.999),
        pct(&samples, 1.0)
    );
    println!(
        "  server time mean {server_mean_us:.1} us; share of all requests served in <= 1 ms: {:.4}",
        under_1ms
    );
    println!(
        "idle resident memory after start: {} KiB ({:.1} MB)",
        idle_rss,
        idle_rss as f64 / 1024.0
    );
    println!(
        "resident memory after {n} requests: {} KiB",
        rss_kib(server.child.id())
    );

    // 3. import users through the CLI
    let users: usize = std::env::var("KEYWARD_BENCH_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("users.csv");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&csv).unwrap());
        writeln!(f, "login,upn,display_name,email").unwrap();
        for i in 0..users {
            writeln!(
                f,
                "user{i:07},user{i:07}@example.com,User {i},user{i:07}@example.com"
            )
            .unwrap();
        }
    }
    let t = Instant::now();
    let out = Command::new(BIN)
        .args([
            "admin",
            "--server",
            &server.url,
            "--token",
            token,
            "user",
            "import",
        ])
        .arg(&csv)
        .output()
        .unwrap();
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "keyward admin user import of {users} users (SQLite): {:.1} s ({:.0} users/s)",
        took.as_secs_f64(),
        users as f64 / took.as_secs_f64()
    );
    println!(
        "resident memory after the import: {} KiB",
        rss_kib(server.child.id())
    );
    // search right after import, through the API
    let mut samples = Vec::new();
    for i in 0..2000 {
        let prefix = format!("user{:04}", (i * 7919) % 10_000.min(users.max(1)));
        let t = Instant::now();
        let r = http
            .get(format!(
                "{}/api/v1/users?prefix={prefix}&limit=50",
                server.url
            ))
            .bearer_auth(token)
            .send()
            .unwrap();
        assert!(r.status().is_success());
        r.bytes().unwrap();
        samples.push(t.elapsed());
    }
    samples.sort();
    println!("GET /api/v1/users?prefix=…&limit=50 over {users} users: p50 {:.3} ms p99 {:.3} ms (client-side)", pct(&samples, 0.5), pct(&samples, 0.99));
}
