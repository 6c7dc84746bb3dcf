//! Revocation benchmark (issue 13; not run by .ci/run):
//! `cargo bench -p keyward --bench revocation` (release profile).
//!
//! The real server in this process (SQLite in a temp folder), reached over
//! loopback HTTP with keep-alive:
//!
//! 1. CRL: 100,000 revoked certificates (KEYWARD_BENCH_REVOKED) written to
//!    the store, then the issuing CA's CRL fetched: the first fetch reads
//!    them and signs (regeneration), the next ones are served from cache;
//!    its size.
//! 2. OCSP: POSTs of one request (made by `openssl ocsp -reqout`, with a
//!    nonce-free CertID of a revoked certificate) from W client threads
//!    (KEYWARD_BENCH_WORKERS, default 8) for N requests
//!    (KEYWARD_BENCH_OCSP, default 20,000): answers per second and the
//!    latency percentiles; every answer signed afresh.
//! 3. With KEYWARD_BENCH_POSTGRES_URL (a database the bench may fill): two
//!    nodes on it; a device is declared lost on node A and node B's CRL and
//!    OCSP are polled until they show it (20 times): the latency.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const TOKEN: &str = "kw_bench_token_revocation_0123456789abcdefghijklmnop";

struct Node {
    url: String,
    state: keyward_server::app::AppState,
}

fn start(
    rt: &tokio::runtime::Runtime,
    data: &std::path::Path,
    db: Option<&str>,
    kek: &str,
) -> Node {
    let config = keyward_server::config::Config::load(
        None,
        keyward_server::config::Overrides {
            data_dir: Some(data.to_path_buf()),
            listen: Some("127.0.0.1:0".parse().unwrap()),
            database_url: db.map(str::to_string),
            kek: Some(kek.to_string()),
            ..Default::default()
        },
    )
    .unwrap();
    rt.block_on(async {
        let server = keyward_server::Server::start(
            config,
            keyward_server::StartOptions {
                bootstrap_token: Some(TOKEN.into()),
                allow_weak_bootstrap_token: false,
            },
        )
        .await
        .unwrap();
        let node = Node {
            url: server.url.clone(),
            state: server.state.clone(),
        };
        // Kept running on the runtime's threads.
        std::mem::forget(server);
        node
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Writes `n` revoked certificates of one device and session straight into
/// the store's SQLite file (the bench's setup, not what it measures).
fn fill_revoked(rt: &tokio::runtime::Runtime, db_url: &str, n: usize) -> Vec<String> {
    use sqlx::Connection;
    rt.block_on(async {
        let mut c = sqlx::SqliteConnection::connect(db_url).await.unwrap();
        let (device, user, policy): (Vec<u8>, Vec<u8>, Vec<u8>) = {
            let device: Vec<u8> = sqlx::query_scalar("SELECT id FROM devices LIMIT 1")
                .fetch_one(&mut c)
                .await
                .unwrap();
            let user: Vec<u8> = sqlx::query_scalar("SELECT id FROM users LIMIT 1")
                .fetch_one(&mut c)
                .await
                .unwrap();
            let policy: Vec<u8> = sqlx::query_scalar("SELECT id FROM device_policies LIMIT 1")
                .fetch_one(&mut c)
                .await
                .unwrap();
            (device, user, policy)
        };
        let now = time::OffsetDateTime::now_utc();
        let session = uuid::Uuid::new_v4();
        sqlx::query(
            "INSERT INTO issuance_sessions (id, device_id, user_id, policy_id, action, status, step, seq, sealed_state, created_by, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 'issue', 'issued', 'done', 9, x'00', 'bench', $5, $5)",
        )
        .bind(session)
        .bind(&device)
        .bind(&user)
        .bind(&policy)
        .bind(now)
        .execute(&mut c)
        .await
        .unwrap();
        let mut serials = Vec::with_capacity(n);
        let mut tx = c.begin().await.unwrap();
        for i in 0..n {
            let serial = format!("{:032x}", 0x4b57_0000_0000_0000_0000_0000_0000_0000u128 + i as u128);
            sqlx::query(
                "INSERT INTO credentials (id, device_id, session_id, kind, slot, serial, created_at, revoked_at, revocation_reason) \
                 VALUES ($1, $2, $3, 'certificate', '9a', $4, $5, $5, 1)",
            )
            .bind(uuid::Uuid::new_v4())
            .bind(&device)
            .bind(session)
            .bind(&serial)
            .bind(now)
            .execute(&mut *tx)
            .await
            .unwrap();
            serials.push(serial);
        }
        tx.commit().await.unwrap();
        serials
    })
}

fn main() {
    let revoked_n: usize = std::env::var("KEYWARD_BENCH_REVOKED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let workers: usize = std::env::var("KEYWARD_BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let ocsp_n: usize = std::env::var("KEYWARD_BENCH_OCSP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let kek = "YmVuY2gtcmV2b2NhdGlvbi1rZWstMzItYnl0ZXMtISE=";
    let dir = tempfile::tempdir().unwrap();
    let node = start(&rt, &dir.path().join("data"), None, kek);
    rt.block_on(keyward_server::demo::seed(&node.state))
        .unwrap();
    rt.block_on(keyward_server::demo::seed_demo_devices(&node.state))
        .unwrap();
    let db_url = format!(
        "sqlite://{}?mode=rw",
        dir.path().join("data/keyward.db").display()
    );
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();

    // 1. The CRL.
    let serials = fill_revoked(&rt, &db_url, revoked_n);
    node.state.pki.invalidate_crl();
    let crl_url = format!("{}/pki/crl/issuing.crl", node.url);
    let t = Instant::now();
    let crl = http.get(&crl_url).send().unwrap().bytes().unwrap();
    let first = t.elapsed();
    let mut cached = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let again = http.get(&crl_url).send().unwrap().bytes().unwrap();
        cached.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(again.len(), crl.len());
    }
    cached.sort_by(f64::total_cmp);
    println!(
        "1. CRL of {revoked_n} revoked certificates: regenerated (store read, sign, encode, HTTP) in {:.0} ms; {:.1} MB; from cache p50 {:.1} ms",
        first.as_secs_f64() * 1e3,
        crl.len() as f64 / 1e6,
        percentile(&cached, 0.5)
    );

    // 2. OCSP.
    let files = tempfile::tempdir().unwrap();
    let issuing = http
        .get(format!("{}/pki/ca/issuing.pem", node.url))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    std::fs::write(files.path().join("issuing.pem"), &issuing).unwrap();
    let req = files.path().join("req.der");
    let out = Command::new("openssl")
        .args(["ocsp", "-no_nonce", "-issuer"])
        .arg(files.path().join("issuing.pem"))
        .args([
            "-serial",
            &format!("0x{}", serials[revoked_n / 2]),
            "-reqout",
        ])
        .arg(&req)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let request = Arc::new(std::fs::read(&req).unwrap());
    let ocsp_url = format!("{}/pki/ocsp", node.url);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let (request, url, next) = (request.clone(), ocsp_url.clone(), next.clone());
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::new();
                let mut lat = Vec::new();
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < ocsp_n {
                    let t = Instant::now();
                    let r = http
                        .post(&url)
                        .header("content-type", "application/ocsp-request")
                        .body(request.as_ref().clone())
                        .send()
                        .unwrap()
                        .bytes()
                        .unwrap();
                    assert!(r.len() > 100, "a signed answer");
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                }
                lat
            })
        })
        .collect();
    let mut lat: Vec<f64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let wall = started.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    println!(
        "2. OCSP: {:.0} answers/s ({} requests, {workers} workers, keep-alive, {:.2} s); latency p50 {:.2} ms, p99 {:.2} ms",
        lat.len() as f64 / wall,
        lat.len(),
        wall,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );

    // 3. Two nodes on PostgreSQL.
    let Ok(pg) = std::env::var("KEYWARD_BENCH_POSTGRES_URL") else {
        println!("3. two nodes: skipped (set KEYWARD_BENCH_POSTGRES_URL)");
        return;
    };
    let a = start(&rt, &dir.path().join("a"), Some(&pg), kek);
    let b = start(&rt, &dir.path().join("b"), Some(&pg), kek);
    rt.block_on(keyward_server::demo::seed(&a.state)).unwrap();
    let call =
        |node: &Node, method: reqwest::Method, path: &str, body: Option<Value>| -> (u16, Value) {
            let mut r = http
                .request(method, format!("{}/api/v1{path}", node.url))
                .bearer_auth(TOKEN);
            if let Some(b) = body {
                r = r.json(&b);
            }
            let r = r.send().unwrap();
            let s = r.status().as_u16();
            (s, r.json().unwrap_or(Value::Null))
        };
    let _ = call;
    let mut seen = Vec::new();
    for i in 0..20u32 {
        // A device issued straight in the store (the bench's setup): one
        // certificate on record.
        let serial = format!("{}", 77_000_000 + i);
        let (s, d) = call(
            &a,
            reqwest::Method::POST,
            "/devices",
            Some(json!({ "device_type": "c4000", "serial": serial })),
        );
        assert_eq!(s, 201, "{d}");
        let cert_serial = rt.block_on(issue_in_store(&pg, &serial));
        // Node B has its CRL cached before the revocation.
        let _ = http.get(format!("{}/pki/crl/issuing.crl", b.url)).send();
        let (_, d) = call(
            &a,
            reqwest::Method::GET,
            &format!("/devices/{serial}"),
            None,
        );
        let (s, v) = call(
            &a,
            reqwest::Method::POST,
            &format!("/devices/{serial}/state"),
            Some(json!({ "to": "invalid", "reason": "lost", "expected_version": d["version"] })),
        );
        assert_eq!(s, 200, "{v}");
        let t = Instant::now();
        loop {
            let crl = http
                .get(format!("{}/pki/crl/issuing.crl", b.url))
                .send()
                .unwrap()
                .bytes()
                .unwrap();
            if contains(&crl, &hex::decode(&cert_serial).unwrap()) {
                break;
            }
            if t.elapsed() > Duration::from_secs(5) {
                let on_a = http
                    .get(format!("{}/pki/crl/issuing.crl", a.url))
                    .send()
                    .unwrap()
                    .bytes()
                    .unwrap();
                let row = rt.block_on(async {
                    use sqlx::Connection;
                    let mut c = sqlx::PgConnection::connect(&pg).await.unwrap();
                    sqlx::query_as::<_, (Option<time::OffsetDateTime>, Option<i64>)>(
                        "SELECT revoked_at, revocation_reason FROM credentials WHERE serial = $1",
                    )
                    .bind(&cert_serial)
                    .fetch_one(&mut c)
                    .await
                    .unwrap()
                });
                panic!(
                    "not seen after 5 s: serial {cert_serial}, in A's CRL: {}, row: {row:?}, device move: {v}",
                    contains(&on_a, &hex::decode(&cert_serial).unwrap())
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        seen.push(t.elapsed().as_secs_f64() * 1e3);
    }
    seen.sort_by(f64::total_cmp);
    println!(
        "3. two nodes on PostgreSQL: a revocation on node A in node B's CRL after p50 {:.1} ms, max {:.1} ms (20 revocations)",
        percentile(&seen, 0.5),
        seen[seen.len() - 1]
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Marks a device issued with one certificate on record, straight in the
/// PostgreSQL store (setup). Answers the certificate's serial (hex).
async fn issue_in_store(pg: &str, serial: &str) -> String {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(pg).await.unwrap();
    let device: uuid::Uuid = sqlx::query_scalar("SELECT id FROM devices WHERE serial = $1")
        .bind(serial)
        .fetch_one(&mut c)
        .await
        .unwrap();
    let user: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users LIMIT 1")
        .fetch_one(&mut c)
        .await
        .unwrap();
    let policy: uuid::Uuid = sqlx::query_scalar("SELECT id FROM device_policies LIMIT 1")
        .fetch_one(&mut c)
        .await
        .unwrap();
    let now = time::OffsetDateTime::now_utc();
    let session = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO issuance_sessions (id, device_id, user_id, policy_id, action, status, step, seq, sealed_state, created_by, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, 'issue', 'issued', 'done', 9, '\\x00', 'bench', $5, $5)",
    )
    .bind(session)
    .bind(device)
    .bind(user)
    .bind(policy)
    .bind(now)
    .execute(&mut c)
    .await
    .unwrap();
    sqlx::query("UPDATE devices SET state = 'issued', assigned_user = $1, device_policy = $2, version = version + 1 WHERE id = $3")
        .bind(user)
        .bind(policy)
        .bind(device)
        .execute(&mut c)
        .await
        .unwrap();
    // A positive serial whose first byte is not zero (as DER writes it).
    let cert = format!(
        "{:032x}",
        (uuid::Uuid::new_v4().as_u128() >> 2) | (1u128 << 124)
    );
    sqlx::query(
        "INSERT INTO credentials (id, device_id, session_id, kind, slot, serial, created_at) VALUES ($1, $2, $3, 'certificate', '9a', $4, $5)",
    )
    .bind(uuid::Uuid::new_v4())
    .bind(device)
    .bind(session)
    .bind(&cert)
    .bind(now)
    .execute(&mut c)
    .await
    .unwrap();
    cert
}
